//! The one classification of a failed Bot API call.
//!
//! Two paths produce failures: teloxide's typed [`RequestError`] (every send) and our raw calls
//! (`getUpdates`), which see the HTTP answer. Both map into [`TelegramError`] here — by type or
//! by Telegram's error code, never by message text — so the restart policy, the intake and the
//! send interface decide on the same facts.

use std::time::Duration;

use teloxide::RequestError;
use teloxide::errors::ApiError;

use crate::mask::redact;

/// Telegram's description of a send into a forum topic that does not exist (any more).
const THREAD_NOT_FOUND: &str = "Bad Request: message thread not found";

/// Why a Bot API call failed, classified for whoever retries it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TelegramError {
    /// 401/404: the token is invalid or revoked. Fatal until the token changes.
    #[error("Telegram rejected the token (401 Unauthorized): it is invalid or was revoked")]
    Unauthorized,
    /// 403: the user blocked the bot or was deactivated; mark them and move on.
    #[error("Telegram refused: {0}")]
    Blocked(String),
    /// 429: wait exactly this long before the next call.
    #[error("Telegram asked to retry after {0:?}")]
    RetryAfter(Duration),
    /// 400 "chat not found": the chat does not exist or the bot is not in it.
    #[error("Telegram refused: chat not found")]
    ChatNotFound,
    /// 400 "message thread not found": the forum topic was deleted (or never existed).
    #[error("Telegram refused: message thread not found")]
    ThreadNotFound,
    /// 409: another poller or a webhook is using this token.
    #[error("Telegram answered 409 Conflict: {0}")]
    Conflict(String),
    /// Telegram refused this particular request (400 etc.): retrying will not help.
    #[error("Telegram refused the request ({code}): {description}")]
    Rejected {
        /// Bot API error code.
        code: u16,
        /// Telegram's description.
        description: String,
    },
    /// A network failure, a timeout, a 5xx or an unreadable answer: retry later.
    #[error("Bot API request failed: {0}")]
    Transient(String),
    /// An error teloxide does not know (`ApiError::Unknown`): it hides the HTTP status, so a
    /// server error (500) and an unfamiliar refusal look the same. Retry a few times, then
    /// treat it as refused.
    #[error("Telegram answered an unknown error: {0}")]
    Unknown(String),
}

impl TelegramError {
    /// Classifies a teloxide error (by type, never by message text).
    pub fn from_request(e: &RequestError) -> Self {
        match e {
            RequestError::Api(ApiError::BotBlocked | ApiError::UserDeactivated) => {
                TelegramError::Blocked(redact(&e.to_string()))
            }
            RequestError::Api(ApiError::InvalidToken) => TelegramError::Unauthorized,
            RequestError::Api(ApiError::ChatNotFound) => TelegramError::ChatNotFound,
            RequestError::RetryAfter(secs) => TelegramError::RetryAfter(secs.duration()),
            RequestError::Network(e) => TelegramError::Transient(redact(&e.to_string())),
            RequestError::Io(e) => TelegramError::Transient(redact(&e.to_string())),
            RequestError::InvalidJson { .. } => {
                TelegramError::Transient("invalid JSON answer".into())
            }
            RequestError::MigrateToChatId(_) => TelegramError::Rejected {
                code: 400,
                description: redact(&e.to_string()),
            },
            // teloxide 0.17 has no variant for a deleted forum topic; its text is Telegram's
            // fixed description, so it is classified here, once (teloxide-core's own
            // `ApiError` variants are matched on these descriptions too).
            RequestError::Api(ApiError::Unknown(text)) if text == THREAD_NOT_FOUND => {
                TelegramError::ThreadNotFound
            }
            RequestError::Api(ApiError::Unknown(text)) => TelegramError::Unknown(redact(text)),
            RequestError::Api(other) => TelegramError::Rejected {
                code: 400,
                description: redact(&other.to_string()),
            },
        }
    }

    /// Classifies an error answer of a raw call by its Bot API error code.
    pub fn from_answer(code: u16, description: String, retry_after: Option<Duration>) -> Self {
        match code {
            401 | 404 => TelegramError::Unauthorized,
            403 => TelegramError::Blocked(description),
            409 => TelegramError::Conflict(description),
            429 => TelegramError::RetryAfter(retry_after.unwrap_or(Duration::from_secs(1))),
            c if c >= 500 => TelegramError::Transient(format!("{c}: {description}")),
            400 if description == THREAD_NOT_FOUND => TelegramError::ThreadNotFound,
            c => TelegramError::Rejected {
                code: c,
                description,
            },
        }
    }

    /// Whether retrying with the same token cannot help.
    pub fn is_fatal(&self) -> bool {
        matches!(self, TelegramError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_classify_by_code() {
        let cases = [
            (401, TelegramError::Unauthorized),
            (404, TelegramError::Unauthorized),
            (403, TelegramError::Blocked("x".into())),
            (409, TelegramError::Conflict("x".into())),
            (429, TelegramError::RetryAfter(Duration::from_secs(7))),
            (502, TelegramError::Transient("502: x".into())),
            (
                400,
                TelegramError::Rejected {
                    code: 400,
                    description: "x".into(),
                },
            ),
        ];
        for (code, expected) in cases {
            let got = TelegramError::from_answer(code, "x".into(), Some(Duration::from_secs(7)));
            assert_eq!(got, expected, "{code}");
        }
        assert!(TelegramError::Unauthorized.is_fatal());
        assert!(!TelegramError::Transient(String::new()).is_fatal());
    }
}
