//! Reading one element of a getUpdates `result` on its own: its id, the payload to store, and
//! the update parsed with teloxide's panics caught.

use std::panic::AssertUnwindSafe;

use serde::Deserialize;
use serde::de::IgnoredAny;
use teloxide::types::{Update, UpdateKind};

use crate::telegram::RawUpdate;

/// One element, read.
#[derive(Debug)]
pub struct Element {
    /// Its `update_id`, when readable: the top-level integer of a JSON object, or, when the
    /// text is not valid JSON, the first `"update_id": <integer>` in it.
    pub update_id: Option<i64>,
    /// The payload to store (see `botdb::store::InboxRow::payload`).
    pub payload: String,
    /// The parsed update, or why it cannot be dispatched.
    pub update: Result<Update, String>,
}

/// Reads one raw element: never fails, never panics.
pub fn read_element(raw: &RawUpdate) -> Element {
    let update = if raw.utf8 {
        parse_for_handlers(&raw.text)
    } else {
        Err("the update is not valid UTF-8".to_owned())
    };
    Element {
        update_id: read_update_id(&raw.text),
        payload: stored_payload(raw),
        update,
    }
}

/// [`parse_update`], with every U+0000 replaced by U+FFFD: PostgreSQL's text refuses U+0000,
/// so a module storing such a text would fail on every replay (the stored payload keeps the
/// exact text).
pub fn parse_for_handlers(text: &str) -> Result<Update, String> {
    if !text.contains("\\u0000") {
        return parse_update(text);
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(mut value) => {
            replace_nul(&mut value);
            parse_update(&value.to_string())
        }
        Err(_) => parse_update(text),
    }
}

/// The payload of a stored element: its own text when `jsonb` takes it unchanged in meaning,
/// else a JSON string holding the exact text.
pub fn stored_payload(raw: &RawUpdate) -> String {
    let storable = raw.utf8
        && serde_json::from_str::<serde_json::Value>(&raw.text).is_ok_and(|v| !has_nul(&v));
    if storable {
        raw.text.clone()
    } else {
        serde_json::Value::String(raw.text.clone()).to_string()
    }
}

/// The text to parse from a stored payload (the inverse of [`stored_payload`]).
pub fn payload_text(payload: &serde_json::Value) -> String {
    match payload {
        serde_json::Value::String(raw) => raw.clone(),
        other => other.to_string(),
    }
}

/// PostgreSQL's `jsonb` refuses `\u0000` in strings and keys.
fn has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(has_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Replaces U+0000 by U+FFFD in every string and key.
fn replace_nul(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => *s = s.replace('\0', "\u{fffd}"),
        serde_json::Value::Array(a) => a.iter_mut().for_each(replace_nul),
        serde_json::Value::Object(o) => {
            let entries = std::mem::take(o);
            for (k, mut v) in entries {
                replace_nul(&mut v);
                o.insert(k.replace('\0', "\u{fffd}"), v);
            }
        }
        _ => {}
    }
}

/// The `update_id` of an element, when readable (see [`Element::update_id`]).
pub fn read_update_id(text: &str) -> Option<i64> {
    #[derive(Deserialize)]
    struct Probe {
        update_id: i64,
    }
    // serde_json skips the other fields without decoding their strings, so a lone surrogate
    // elsewhere does not matter.
    if let Ok(probe) = serde_json::from_str::<Probe>(text) {
        return Some(probe.update_id);
    }
    if serde_json::from_str::<IgnoredAny>(text).is_ok() {
        // Valid JSON without a top-level integer update_id (missing, a string, too big).
        return None;
    }
    let at = text.find("\"update_id\"")?;
    let rest = text[at + "\"update_id\"".len()..].trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    let sign = usize::from(rest.starts_with('-'));
    let digits = rest[sign..].bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    rest[..sign + digits].parse().ok()
}

/// Parses one update on its own, catching the panics some legal updates cause in
/// teloxide-core's deserialisers.
///
/// It parses from text, not from a `serde_json::Value`: teloxide's `UpdateKind` visitor first
/// asks for a borrowed key and, when that fails (as it always does from a `Value`), the key is
/// already consumed and the update comes out as `UpdateKind::Error`.
pub fn parse_update(json: &str) -> Result<Update, String> {
    let result =
        std::panic::catch_unwind(AssertUnwindSafe(|| serde_json::from_str::<Update>(json)));
    match result {
        Ok(Ok(update)) => match &update.kind {
            UpdateKind::Error(raw) => Err(format!(
                "unsupported update: {}",
                truncate(&raw.to_string())
            )),
            _ => Ok(update),
        },
        Ok(Err(e)) => Err(format!("cannot parse update: {e}")),
        Err(panic) => Err(format!(
            "parsing the update panicked: {}",
            panic_message(&panic)
        )),
    }
}

/// The message of a caught panic.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_ids_are_read_when_readable() {
        let cases = [
            (r#"{"update_id":5,"message":{"text":"\ud800"}}"#, Some(5)),
            (r#"{"message":{"text":"x"},"update_id": 12}"#, Some(12)),
            (r#"{"update_id":7,"message":"#, Some(7)),
            (r#"{"update_id" : -3}"#, Some(-3)),
            ("not json at all", None),
            (r#"{"message":{"update_id":3}}"#, None),
            (r#"{"update_id":"9"}"#, None),
            (r#"{"update_id":1e3}"#, None),
            (r#"{"update_id":99999999999999999999}"#, None),
            (r#"[{"update_id":4}]"#, None),
            (r#"{"update_id":9223372036854775807}"#, Some(i64::MAX)),
        ];
        for (text, want) in cases {
            assert_eq!(read_update_id(text), want, "{text}");
        }
    }

    #[test]
    fn handlers_never_see_a_nul_character() {
        let raw = RawUpdate {
            text: r#"{"update_id": 5, "message": {"message_id": 1, "date": 0,
                "chat": {"id": 7, "type": "private", "first_name": "A"},
                "from": {"id": 7, "is_bot": false, "first_name": "A"}, "text": "a\u0000b"}}"#
                .to_owned(),
            utf8: true,
        };
        let element = read_element(&raw);
        let update = element.update.unwrap();
        let teloxide::types::UpdateKind::Message(msg) = update.kind else {
            panic!("not a message")
        };
        assert_eq!(msg.text(), Some("a\u{fffd}b"));
        assert!(element.payload.starts_with('"'), "{}", element.payload);
    }

    #[test]
    fn payloads_postgres_cannot_take_are_stored_as_their_exact_text() {
        let raw = |text: &str, utf8| RawUpdate {
            text: text.to_owned(),
            utf8,
        };
        let cases = [
            (
                raw(r#"{"update_id":1}"#, true),
                r#"{"update_id":1}"#.to_owned(),
            ),
            (
                raw(r#"{"update_id":2,"t":"\ud800"}"#, true),
                serde_json::to_string(r#"{"update_id":2,"t":"\ud800"}"#).unwrap(),
            ),
            (
                raw(r#"{"update_id":3,"t":"a\u0000"}"#, true),
                serde_json::to_string(r#"{"update_id":3,"t":"a\u0000"}"#).unwrap(),
            ),
            (
                raw("{\"update_id\":4}", false),
                "\"{\\\"update_id\\\":4}\"".to_owned(),
            ),
            (raw("not json", true), "\"not json\"".to_owned()),
        ];
        for (raw, want) in cases {
            let stored = stored_payload(&raw);
            assert_eq!(stored, want);
            let value: serde_json::Value = serde_json::from_str(&stored).unwrap();
            assert_eq!(payload_text(&value).len(), raw.text.len(), "{stored}");
        }
    }

    #[test]
    fn parses_updates_one_by_one_and_reports_bad_ones() {
        let good = r#"{"update_id": 5, "message": {"message_id": 1, "date": 0,
            "chat": {"id": 7, "type": "private", "first_name": "A"},
            "from": {"id": 7, "is_bot": false, "first_name": "A"}, "text": "/start"}}"#;
        let update = parse_update(good).unwrap();
        assert_eq!(update.id.0, 5);
        assert_eq!(update.chat().map(|c| c.id.0), Some(7));
        let cases = [
            (
                r#"{"update_id": 6, "message": {"message_id": "x"}}"#,
                "update",
            ),
            (r#"{"update_id": 7}"#, "unsupported update"),
            ("not json", "cannot parse"),
        ];
        for (json, needle) in cases {
            let err = parse_update(json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
}
