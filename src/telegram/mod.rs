//! The Bot API as botvisor uses it: one shared HTTP client, teloxide `Bot`s for sending, and a
//! raw `getUpdates` that returns each update as JSON so one unparsable update can never fail a
//! whole batch.
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

/// The Bot API endpoint plus the process-wide HTTP client.
#[derive(Debug, Clone)]
pub struct TelegramApi {
    client: reqwest::Client,
    base: url::Url,
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
    ) -> Result<Vec<serde_json::Value>, TelegramError> {
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
            return Ok(envelope.result.unwrap_or_default());
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
