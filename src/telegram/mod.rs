//! The Bot API as botvisor uses it: one shared HTTP client, teloxide `Bot`s for sending, and a
//! raw `getUpdates` that returns each update as its own text, so one unparsable update can
//! never fail a whole batch.
//!
//! The `result` array is split into elements before any element is parsed: first with
//! `serde_json`'s `RawValue` (exact text, and it does not decode strings, so a lone UTF-16
//! surrogate escape such as `\ud800` passes), and when the body is not even valid JSON as a
//! whole (an element that is not JSON, truncated, or not UTF-8) with a tolerant byte scanner,
//! `split_result`. Proved by `telegram::tests::the_result_array_is_split_before_parsing` and
//! `tests/intake_corpus.rs`.
//!
//! - [`TelegramError`]: the one classification of a failed call, whichever path made it
//!   (teloxide's typed errors, or our raw calls' HTTP answers);
//! - [`Request`] and [`Lane`]: what a bot wants sent, as data (queued in the outbox);
//! - [`Messenger`] (in `send`): one bot's calls — a single attempt of a [`Request`] for the
//!   sender, and retried calls (`setMyCommands`) for the rest; outcomes as [`Delivery`]
//!   records.

mod error;
mod outgoing;
mod send;

pub use error::TelegramError;
pub use outgoing::{Lane, Request};
pub use send::{CallOutcome, Delivery, DeliveryOutcome, Messenger, SendError};

use std::time::Duration;

use serde::Deserialize;
use teloxide::Bot;

use crate::mask::redact;
use crate::token::BotToken;

/// Extra time the HTTP request gets beyond the long-poll timeout.
const POLL_GRACE: Duration = Duration::from_secs(5);
/// Time a short raw call (setWebhook, getWebhookInfo, …) gets.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The Bot API endpoint plus the process-wide HTTP client.
#[derive(Debug, Clone)]
pub struct TelegramApi {
    client: reqwest::Client,
    base: url::Url,
}

/// One element of a getUpdates `result`, as Telegram sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawUpdate {
    /// The element's text (invalid UTF-8, if any, replaced by U+FFFD).
    pub text: String,
    /// Whether the element was valid UTF-8 (an element that was not is never dispatched).
    pub utf8: bool,
}

impl RawUpdate {
    /// An element from its bytes (invalid UTF-8 replaced, and remembered).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => Self {
                text: text.to_owned(),
                utf8: true,
            },
            Err(_) => Self {
                text: String::from_utf8_lossy(bytes).into_owned(),
                utf8: false,
            },
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default)]
    result: Option<Vec<Box<serde_json::value::RawValue>>>,
    #[serde(default)]
    error_code: Option<u16>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
}

#[derive(Deserialize)]
struct Parameters {
    #[serde(default)]
    retry_after: Option<u64>,
}

impl TelegramApi {
    /// Builds the shared client for `base` (e.g. `https://api.telegram.org`).
    pub fn new(base: url::Url) -> Result<Self, reqwest::Error> {
        let client = teloxide::net::default_reqwest_settings()
            .pool_idle_timeout(Duration::from_secs(90))
            .build()?;
        Ok(Self { client, base })
    }

    /// A teloxide `Bot` for `token` sharing this client and base URL.
    pub fn bot(&self, token: &BotToken) -> Bot {
        Bot::with_client(token.expose(), self.client.clone()).set_api_url(self.base.clone())
    }

    /// `getUpdates`, returning the raw text of each update (`offset: None` confirms nothing).
    pub async fn get_updates(
        &self,
        token: &BotToken,
        offset: Option<i64>,
        limit: u8,
        timeout: Duration,
        allowed_updates: &[&str],
    ) -> Result<Vec<RawUpdate>, TelegramError> {
        let url = format!(
            "{}/bot{}/getUpdates",
            self.base.as_str().trim_end_matches('/'),
            token.expose()
        );
        let mut body = serde_json::json!({
            "limit": limit,
            "timeout": timeout.as_secs(),
            "allowed_updates": allowed_updates,
        });
        if let Some(offset) = offset {
            body["offset"] = offset.into();
        }
        let response = self
            .client
            .post(url)
            .json(&body)
            .timeout(timeout + POLL_GRACE)
            .send()
            .await
            .map_err(|e| TelegramError::Transient(redact(&e.without_url().to_string())))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| TelegramError::Transient(redact(&e.without_url().to_string())))?;
        let envelope: Envelope = match serde_json::from_slice(&bytes) {
            Ok(e) => e,
            Err(_) if status.is_success() && split_result(&bytes).is_some() => {
                let elements = split_result(&bytes).unwrap_or_default();
                return Ok(elements.into_iter().map(RawUpdate::from_bytes).collect());
            }
            Err(_) if status.is_server_error() => {
                return Err(TelegramError::Transient(format!("HTTP {status}")));
            }
            Err(e) => {
                return Err(TelegramError::Transient(format!(
                    "HTTP {status} with an unreadable body: {e}"
                )));
            }
        };
        if envelope.ok {
            let result = envelope.result.unwrap_or_default();
            return Ok(result
                .into_iter()
                .map(|raw| RawUpdate {
                    text: raw.get().to_owned(),
                    utf8: true,
                })
                .collect());
        }
        let code = envelope.error_code.unwrap_or(status.as_u16());
        let retry_after = envelope
            .parameters
            .and_then(|p| p.retry_after)
            .map(Duration::from_secs);
        Err(TelegramError::from_answer(
            code,
            envelope.description.unwrap_or_default(),
            retry_after,
        ))
    }
}

/// What `getWebhookInfo` says about a bot's webhook.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct WebhookInfo {
    /// The webhook URL; empty when none is set.
    #[serde(default)]
    pub url: String,
    /// Updates waiting to be delivered.
    #[serde(default)]
    pub pending_update_count: i64,
    /// Unix time of the latest delivery error.
    #[serde(default)]
    pub last_error_date: Option<i64>,
    /// Telegram's description of the latest delivery error.
    #[serde(default)]
    pub last_error_message: Option<String>,
}

/// A webhook to set (`setWebhook`).
#[derive(Debug, Clone, Copy)]
pub struct SetWebhook<'a> {
    /// The HTTPS URL Telegram POSTs updates to.
    pub url: &'a str,
    /// Sent back in `X-Telegram-Bot-Api-Secret-Token` with every update.
    pub secret_token: &'a str,
    /// The update kinds wanted.
    pub allowed_updates: &'a [&'a str],
    /// Most simultaneous HTTPS connections Telegram opens for this bot (1-100).
    pub max_connections: u32,
}

impl TelegramApi {
    /// `setWebhook` (pending updates are kept: `drop_pending_updates` false).
    pub async fn set_webhook(
        &self,
        token: &BotToken,
        webhook: SetWebhook<'_>,
    ) -> Result<(), TelegramError> {
        let body = serde_json::json!({
            "url": webhook.url,
            "secret_token": webhook.secret_token,
            "allowed_updates": webhook.allowed_updates,
            "max_connections": webhook.max_connections,
            "drop_pending_updates": false,
        });
        self.call(token, "setWebhook", &body).await.map(drop)
    }

    /// `deleteWebhook` without dropping pending updates (polling gets them next).
    pub async fn delete_webhook(&self, token: &BotToken) -> Result<(), TelegramError> {
        let body = serde_json::json!({ "drop_pending_updates": false });
        self.call(token, "deleteWebhook", &body).await.map(drop)
    }

    /// `getWebhookInfo`.
    pub async fn get_webhook_info(&self, token: &BotToken) -> Result<WebhookInfo, TelegramError> {
        let value = self
            .call(token, "getWebhookInfo", &serde_json::json!({}))
            .await?;
        serde_json::from_value(value)
            .map_err(|e| TelegramError::Transient(format!("unreadable getWebhookInfo: {e}")))
    }

    /// One raw Bot API call with a JSON body, returning its `result`.
    async fn call(
        &self,
        token: &BotToken,
        method: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, TelegramError> {
        #[derive(Deserialize)]
        struct Answer {
            ok: bool,
            #[serde(default)]
            result: serde_json::Value,
            #[serde(default)]
            error_code: Option<u16>,
            #[serde(default)]
            description: Option<String>,
            #[serde(default)]
            parameters: Option<Parameters>,
        }
        let url = format!(
            "{}/bot{}/{method}",
            self.base.as_str().trim_end_matches('/'),
            token.expose()
        );
        let response = self
            .client
            .post(url)
            .json(body)
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| TelegramError::Transient(redact(&e.without_url().to_string())))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| TelegramError::Transient(redact(&e.without_url().to_string())))?;
        let answer: Answer = match serde_json::from_slice(&bytes) {
            Ok(a) => a,
            Err(_) if status.is_server_error() => {
                return Err(TelegramError::Transient(format!("HTTP {status}")));
            }
            Err(e) => {
                return Err(TelegramError::Transient(format!(
                    "HTTP {status} with an unreadable body: {e}"
                )));
            }
        };
        if answer.ok {
            return Ok(answer.result);
        }
        let code = answer.error_code.unwrap_or(status.as_u16());
        let retry_after = answer
            .parameters
            .and_then(|p| p.retry_after)
            .map(Duration::from_secs);
        Err(TelegramError::from_answer(
            code,
            redact(&answer.description.unwrap_or_default()),
            retry_after,
        ))
    }
}

/// Splits the `result` array of a successful getUpdates body that is not valid JSON as a
/// whole into its elements' bytes; `None` when the body has no `"ok":true` and `"result":[`.
///
/// Elements are read one JSON value at a time (strings are skipped undecoded, so lone
/// surrogates and invalid UTF-8 pass). Where no value can be read (text that is not JSON,
/// truncated JSON), the element runs up to the next comma that is followed by an object which
/// reads whole and is itself followed by `,` or `]` — the next element; without one, it runs
/// to the end of the array.
fn split_result(body: &[u8]) -> Option<Vec<&[u8]>> {
    if !contains_ok_true(body) {
        return None;
    }
    let array = &body[find_result_array(body)?..];
    let mut elements = Vec::new();
    let mut at = skip_space(array, 0);
    if array.get(at) == Some(&b']') {
        return Some(elements);
    }
    while at < array.len() {
        let end = match value_end(array, at) {
            Some(end) => end,
            None => next_element(array, at).unwrap_or_else(|| array_end(array, at)),
        };
        elements.push(trim(&array[at..end]));
        let after = skip_space(array, end);
        match array.get(after) {
            Some(b',') => at = skip_space(array, after + 1),
            _ => break,
        }
    }
    Some(elements)
}

/// Where the JSON value starting at `at` ends, if one reads whole and is followed by `,` or
/// `]`.
fn value_end(array: &[u8], at: usize) -> Option<usize> {
    let mut values =
        serde_json::Deserializer::from_slice(&array[at..]).into_iter::<serde::de::IgnoredAny>();
    values.next()?.ok()?;
    let end = at + values.byte_offset();
    matches!(array.get(skip_space(array, end)), Some(b',' | b']')).then_some(end)
}

/// The end of an unreadable element starting at `at`: the next comma followed by an element
/// that reads whole.
fn next_element(array: &[u8], at: usize) -> Option<usize> {
    (at + 1..array.len()).find(|&comma| {
        array[comma] == b','
            && array.get(skip_space(array, comma + 1)) == Some(&b'{')
            && value_end(array, skip_space(array, comma + 1)).is_some()
    })
}

/// The end of the array's last element: before the closing `]` (and the envelope's `}`).
fn array_end(array: &[u8], at: usize) -> usize {
    let mut piece = trim(&array[at..]);
    if let Some(rest) = piece.strip_suffix(b"}")
        && let Some(rest) = trim(rest).strip_suffix(b"]")
    {
        piece = trim(rest);
    } else if let Some(rest) = piece.strip_suffix(b"]") {
        piece = trim(rest);
    }
    at + (piece.as_ptr() as usize - array[at..].as_ptr() as usize) + piece.len()
}

fn skip_space(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

fn contains_ok_true(body: &[u8]) -> bool {
    let compact: Vec<u8> = body
        .iter()
        .take(64)
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    compact.windows(9).any(|w| w == br#""ok":true"#)
}

/// The index just after the `[` of `"result":[`.
fn find_result_array(body: &[u8]) -> Option<usize> {
    const KEY: &[u8] = br#""result""#;
    let at = body.windows(KEY.len()).position(|w| w == KEY)?;
    let i = skip_space(body, at + KEY.len());
    (body.get(i) == Some(&b':')).then_some(())?;
    let i = skip_space(body, i + 1);
    (body.get(i) == Some(&b'[')).then_some(i + 1)
}

fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_array_is_split_before_parsing() {
        type Case<'a> = (&'a [u8], Option<Vec<&'a [u8]>>);
        let cases: [Case; 9] = [
            (br#"{"ok":true,"result":[]}"#, Some(vec![])),
            (
                br#"{"ok":true,"result":[{"update_id":1},not json,{"update_id":2}]}"#,
                Some(vec![br#"{"update_id":1}"#, b"not json", br#"{"update_id":2}"#]),
            ),
            (
                br#"{"ok": true, "result": [ {"update_id":1,"m":{"text":"a,]}\"x"}} , 7 ]}"#,
                Some(vec![br#"{"update_id":1,"m":{"text":"a,]}\"x"}}"#, b"7"]),
            ),
            (
                b"{\"ok\":true,\"result\":[{\"update_id\":8,\xff\xfe},{\"update_id\":9}]}",
                Some(vec![b"{\"update_id\":8,\xff\xfe}", br#"{"update_id":9}"#]),
            ),
            // Truncated: a brace never closes, so the array is cut at update starts.
            (
                br#"{"ok":true,"result":[{"update_id":7,"message":,{"update_id":8}]}"#,
                Some(vec![br#"{"update_id":7,"message":"#, br#"{"update_id":8}"#]),
            ),
            // An unterminated string.
            (
                br#"{"ok":true,"result":[{"update_id":7,"t":"abc,{"update_id":8,"t":"d"}]}"#,
                Some(vec![br#"{"update_id":7,"t":"abc"#, br#"{"update_id":8,"t":"d"}"#]),
            ),
            // The next element need not start with update_id (the sandbox sorts keys).
            (
                br#"{"ok":true,"result":[{"update_id":7,"m":{"c":,{"m":{"t":"a"},"update_id":8},42]}"#,
                Some(vec![br#"{"update_id":7,"m":{"c":"#, br#"{"m":{"t":"a"},"update_id":8}"#, b"42"]),
            ),
            (br#"{"ok":false,"error_code":401}"#, None),
            (b"<html>bad gateway</html>", None),
        ];
        for (body, want) in cases {
            assert_eq!(
                split_result(body),
                want,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn raw_value_keeps_elements_with_lone_surrogates_exact() {
        let body = br#"{"ok":true,"result":[{"update_id":5,"message":{"text":"\ud800"}}, {"update_id":6}]}"#;
        let envelope: Envelope = serde_json::from_slice(body).unwrap();
        let texts: Vec<&str> = envelope
            .result
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|r| r.get())
            .collect();
        assert_eq!(
            texts,
            [
                r#"{"update_id":5,"message":{"text":"\ud800"}}"#,
                r#"{"update_id":6}"#
            ]
        );
    }
}
