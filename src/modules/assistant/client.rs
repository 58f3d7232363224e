//! One call to an OpenAI-compatible `POST {base_url}/chat/completions`, with a timeout, and
//! its failure classified for the job's retries. The API key goes only into the
//! `Authorization` header: no error text, log line or stored row ever holds it.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::Value;

/// Longest `Retry-After` honoured from a provider's 429; a longer one is cut to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// One message of the conversation sent to the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: &'static str,
    /// The text.
    pub content: String,
}

/// Why a call brought no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Worth trying again later: a 429 (with the provider's wait, if it gave one), a 5xx, a
    /// timeout or a network failure.
    #[error("{reason}")]
    Retryable {
        /// What happened.
        reason: String,
        /// How long the provider asked us to wait.
        retry_after: Option<Duration>,
    },
    /// Trying again will not help: a 4xx other than 429, or an answer without text.
    #[error("{0}")]
    Fatal(String),
}

/// Asks the model; returns its answer's text.
pub async fn complete(
    client: &reqwest::Client,
    base_url: &str,
    key: Option<&SecretString>,
    body: &Value,
    timeout: Duration,
) -> Result<String, CallError> {
    let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
    let mut request = client.post(url).json(body).timeout(timeout);
    if let Some(key) = key {
        request = request.bearer_auth(key.expose_secret());
    }
    let response = request.send().await.map_err(|e| network(e, timeout))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
    let text = response.text().await.map_err(|e| network(e, timeout))?;
    let json: Option<Value> = serde_json::from_str(&text).ok();
    if !status.is_success() {
        let message = json
            .as_ref()
            .and_then(|j| j["error"]["message"].as_str())
            .unwrap_or("no error message");
        let mut reason = crate::mask::redact(&format!("HTTP {}: {message}", status.as_u16()));
        // A provider may quote the key it refused; the reason is logged and stored.
        if let Some(key) = key
            .map(ExposeSecret::expose_secret)
            .filter(|k| !k.is_empty())
        {
            reason = reason.replace(key, "****");
        }
        return Err(if status.as_u16() == 429 || status.is_server_error() {
            CallError::Retryable {
                reason,
                retry_after,
            }
        } else {
            CallError::Fatal(reason)
        });
    }
    json.as_ref()
        .and_then(|j| j["choices"][0]["message"]["content"].as_str())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| CallError::Fatal("the answer holds no message text".into()))
}

/// A failure before an HTTP answer: retryable, without the URL in its text.
fn network(e: reqwest::Error, timeout: Duration) -> CallError {
    let e = e.without_url();
    let reason = if e.is_timeout() {
        format!("no answer within {} s", timeout.as_secs())
    } else {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        crate::mask::redact(&text)
    };
    CallError::Retryable {
        reason,
        retry_after: None,
    }
}
