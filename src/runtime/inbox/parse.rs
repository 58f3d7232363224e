//! Parsing one update on its own, with teloxide's panics caught.

use std::panic::AssertUnwindSafe;

use teloxide::types::{Update, UpdateKind};

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
