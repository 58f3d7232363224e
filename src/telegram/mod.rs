//! The Bot API as botvisor uses it: one shared HTTP client, teloxide `Bot`s for sending, and a
//! raw `getUpdates` that returns each update as JSON so one unparsable update can never fail a
//! whole batch.

use std::time::Duration;

use serde::Deserialize;
use teloxide::Bot;
use teloxide::RequestError;
use teloxide::errors::ApiError;

use crate::mask::redact;
use crate::token::BotToken;

/// Extra time the HTTP request gets beyond the long-poll timeout.
const POLL_GRACE: Duration = Duration::from_secs(5);

/// The Bot API endpoint plus the process-wide HTTP client.
#[derive(Debug, Clone)]
pub struct TelegramApi {
    client: reqwest::Client,
    base: url::Url,
}

/// Why a raw Bot API call failed, classified for the restart policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiCallError {
    /// 401/404: the token is invalid or revoked. Fatal until the token changes.
    #[error("Telegram rejected the token (401 Unauthorized): it is invalid or was revoked")]
    Unauthorized,
    /// 409: another poller or a webhook is using this token.
    #[error("Telegram answered 409 Conflict: {0}")]
    Conflict(String),
    /// 429: wait this long.
    #[error("Telegram asked to retry after {0:?}")]
    RetryAfter(Duration),
    /// Another error answer.
    #[error("Telegram answered {code}: {description}")]
    Api {
        /// HTTP/Bot API error code.
        code: u16,
        /// Telegram's description.
        description: String,
    },
    /// Network failure, timeout, 5xx or an unreadable body.
    #[error("Bot API request failed: {0}")]
    Transport(String),
}

impl ApiCallError {
    /// Whether retrying with the same token cannot help.
    pub fn is_fatal(&self) -> bool {
        matches!(self, ApiCallError::Unauthorized)
    }
}

#[derive(Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default)]
    result: Option<Vec<serde_json::Value>>,
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

    /// `getUpdates`, returning the raw JSON of each update.
    pub async fn get_updates(
        &self,
        token: &BotToken,
        offset: Option<i64>,
        limit: u8,
        timeout: Duration,
        allowed_updates: &[&str],
    ) -> Result<Vec<serde_json::Value>, ApiCallError> {
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
            .map_err(|e| ApiCallError::Transport(redact(&e.without_url().to_string())))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ApiCallError::Transport(redact(&e.without_url().to_string())))?;
        let envelope: Envelope = match serde_json::from_slice(&bytes) {
            Ok(e) => e,
            Err(_) if status.is_server_error() => {
                return Err(ApiCallError::Transport(format!("HTTP {status}")));
            }
            Err(e) => {
                return Err(ApiCallError::Transport(format!(
                    "HTTP {status} with an unreadable body: {e}"
                )));
            }
        };
        if envelope.ok {
            return Ok(envelope.result.unwrap_or_default());
        }
        let code = envelope.error_code.unwrap_or(status.as_u16());
        let description = envelope.description.unwrap_or_default();
        Err(match code {
            401 | 404 => ApiCallError::Unauthorized,
            409 => ApiCallError::Conflict(description),
            429 => ApiCallError::RetryAfter(Duration::from_secs(
                envelope.parameters.and_then(|p| p.retry_after).unwrap_or(1),
            )),
            c if c >= 500 => ApiCallError::Transport(format!("{c}: {description}")),
            c => ApiCallError::Api {
                code: c,
                description,
            },
        })
    }
}

/// How the handler should treat a teloxide send error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendFailure {
    /// The user blocked the bot (403): mark them and move on.
    Blocked,
    /// The token is no longer valid: the bot must stop.
    Unauthorized,
    /// Wait and retry.
    RetryAfter(Duration),
    /// A network or server problem: retry later.
    Transient(String),
    /// Telegram refused this particular request (400 etc.): retrying will not help.
    Rejected(String),
    /// An error teloxide does not know (`ApiError::Unknown`): it hides the HTTP status, so a
    /// server error (500) and an unfamiliar refusal look the same. Retry a few times, then
    /// treat it as refused.
    Unknown(String),
}

/// Classifies a teloxide error (by type, never by message text).
pub fn classify_send_error(e: &RequestError) -> SendFailure {
    match e {
        RequestError::Api(ApiError::BotBlocked | ApiError::UserDeactivated) => SendFailure::Blocked,
        RequestError::Api(ApiError::InvalidToken) => SendFailure::Unauthorized,
        RequestError::RetryAfter(secs) => SendFailure::RetryAfter(secs.duration()),
        RequestError::Network(e) => SendFailure::Transient(redact(&e.to_string())),
        RequestError::Io(e) => SendFailure::Transient(redact(&e.to_string())),
        RequestError::InvalidJson { .. } => SendFailure::Transient("invalid JSON answer".into()),
        RequestError::MigrateToChatId(_) => SendFailure::Rejected(redact(&e.to_string())),
        RequestError::Api(ApiError::Unknown(text)) => SendFailure::Unknown(redact(text)),
        RequestError::Api(other) => SendFailure::Rejected(redact(&other.to_string())),
    }
}
