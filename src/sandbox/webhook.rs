//! Webhook delivery: one loop per bot with a webhook, POSTing its updates in order.
//!
//! The loop takes the oldest pending update, POSTs it as JSON (a raw update verbatim) with the
//! `X-Telegram-Bot-Api-Secret-Token` header when a secret is set, and removes it only after a
//! 2xx answer. On failure it records `last_error_date` / `last_error_message` (shown by
//! getWebhookInfo) and retries the same update after a capped exponential backoff. It ends
//! when the webhook is deleted or replaced (its generation changes), the bot is revoked, or the
//! sandbox stops. Deliveries are sequential: `max_connections` is stored and reported only.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::mask_token;
use super::state::{BotEntry, Shared, webhook_next, webhook_result};

/// First retry delay after a failed delivery.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest retry delay; Telegram waits longer, the sandbox keeps tests fast.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Delivers `bot`'s updates to its webhook of `generation` until cancelled or replaced.
pub(crate) async fn deliver(
    shared: Arc<Shared>,
    bot: Arc<BotEntry>,
    generation: u64,
    cancel: CancellationToken,
) {
    let token = mask_token(&bot.token);
    let mut backoff = RETRY_FIRST;
    loop {
        let notified = bot.updates.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let next = match webhook_next(&bot, generation) {
            Err(()) => return,
            Ok(n) => n,
        };
        let Some((update_id, body, url, secret)) = next else {
            tokio::select! {
                () = &mut notified => continue,
                () = cancel.cancelled() => return,
            }
        };
        // Sent as bytes, so a raw update goes out exactly as it was injected.
        let mut request = shared
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_bytes());
        if let Some(s) = &secret {
            request = request.header("X-Telegram-Bot-Api-Secret-Token", s);
        }
        let outcome = tokio::select! {
            r = request.send() => r,
            () = cancel.cancelled() => return,
        };
        let error = match outcome {
            Ok(resp) if resp.status().is_success() => None,
            Ok(resp) => Some(format!(
                "Wrong response from the webhook: {}",
                resp.status()
            )),
            Err(e) if e.is_connect() => Some("Connection refused".to_owned()),
            Err(e) if e.is_timeout() => Some("Read timeout expired".to_owned()),
            Err(e) => Some(format!("Connection error: {e}")),
        };
        let failed = error.is_some();
        if failed {
            tracing::debug!(token = %token, update_id, error = ?error, "webhook delivery failed");
        }
        if !webhook_result(&bot, generation, update_id, error) {
            return;
        }
        if failed {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = cancel.cancelled() => return,
            }
            backoff = (backoff * 2).min(RETRY_MAX);
        } else {
            backoff = RETRY_FIRST;
        }
    }
}
