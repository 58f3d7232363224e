//! The webhook entrance: the second way into a bot's inbox, for bots in webhook mode.
//!
//! `POST /telegram/{bot id}` (served by `app::http`) finds the bot's [`Entrance`] in the
//! process-wide [`WebhookRoutes`]; the entrance checks the `X-Telegram-Bot-Api-Secret-Token`
//! header in constant time, reserves a place in the bot's processor channel (none free: the
//! intake is saturated, answer 503), stores the update in the inbox through the same
//! `botdb::store::store_batch` as the poller — the transaction is committed before the HTTP
//! answer — and only then hands the parsed update to the processor. A body that cannot be
//! parsed is stored poisoned (answered 200, so Telegram does not send it forever); one without
//! a readable `update_id` cannot be stored by key and is logged (also 200). A redelivery of a
//! stored update is a duplicate: not handed on again.
//!
//! The run registers its entrance only after the replay of stored updates, and the route is
//! removed as the run's intake ends (a request then gets 503 and Telegram retries later), so
//! every update reaches the processor in the inbox's order and only while the run lives.
//!
//! [`keep_webhook`] is the run's companion loop in webhook mode: it sets the webhook once the
//! entrance is open, then checks `getWebhookInfo` every [`CHECK_EVERY`] (spread by bot id), sets
//! it again when Telegram lost it or it points elsewhere (or the modules' update kinds
//! changed), and reports what it saw upward (`bot show`, `status`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use teloxide::types::Update;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{parse, truncate};
use crate::botdb::budget::BotPool;
use crate::botdb::store::{self, InboxRow, Stored};
use crate::content::snapshot::SharedSnapshot;
use crate::modules::Registry;
use crate::runtime::{Failures, RunFailure};
use crate::telegram::{RawUpdate, SetWebhook, TelegramApi, TelegramError};
use crate::telemetry::metrics::{self, PoisonedAt};
use crate::token::BotToken;

/// How often a bot in webhook mode checks `getWebhookInfo`.
pub const CHECK_EVERY: Duration = Duration::from_secs(60);
/// The test hook: when this variable is `1`, an accepted webhook update is held forever
/// after its connection is acquired and before its transaction (tests kill the process
/// there: `tests/webhook.rs::a_kill_before_the_commit_loses_nothing`).
pub const STALL_ENV: &str = "BOTVISOR_TEST_WEBHOOK_STALL_BEFORE_COMMIT";
/// First delay before retrying a failed `setWebhook`; doubled up to [`SET_RETRY_MAX`].
const SET_RETRY_START: Duration = Duration::from_secs(1);
/// Longest delay between `setWebhook` attempts.
const SET_RETRY_MAX: Duration = Duration::from_secs(60);

/// A bot's webhook secret token (`secret_token` of `setWebhook`): 48 hex characters (Telegram
/// allows 1-256 of `[A-Za-z0-9_-]`). Never printed: `Debug` shows `****`.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(****)")
    }
}

impl WebhookSecret {
    /// A new random secret (24 random bytes in hex).
    pub fn generate() -> Self {
        use ring::rand::SecureRandom;
        use std::fmt::Write;
        let mut bytes = [0u8; 24];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system's random source works");
        let mut text = String::with_capacity(48);
        for b in bytes {
            let _ = write!(text, "{b:02x}");
        }
        Self(text)
    }

    /// A stored secret, if it is one Telegram accepts (1-256 of `[A-Za-z0-9_-]`).
    pub fn from_stored(text: String) -> Option<Self> {
        let ok = (1..=256).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        ok.then_some(Self(text))
    }

    /// The secret itself, to seal it or send it to Telegram.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `header` is this secret, compared in constant time.
    pub fn matches(&self, header: Option<&[u8]>) -> bool {
        use subtle::ConstantTimeEq;
        match header {
            Some(given) => bool::from(self.0.as_bytes().ct_eq(given)),
            None => false,
        }
    }
}

/// A bot's webhook, as its run needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSpec {
    /// `{public_url}/telegram/{bot id}`.
    pub url: String,
    /// The secret Telegram sends back with every update.
    pub secret: WebhookSecret,
    /// `max_connections` of `setWebhook`.
    pub max_connections: u32,
}

/// What `getWebhookInfo` said last, reported upward to the bot's status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookState {
    /// The URL Telegram has (empty: none).
    pub url: String,
    /// Updates Telegram has not delivered yet.
    pub pending_update_count: i64,
    /// Telegram's latest delivery error, with its Unix time.
    pub last_error: Option<(i64, String)>,
}

/// The entrances of this process's bots in webhook mode, by panel id.
#[derive(Debug, Clone, Default)]
pub struct WebhookRoutes {
    routes: Arc<RwLock<HashMap<i64, Arc<Entrance>>>>,
    unauthorized: Arc<AtomicU64>,
}

impl WebhookRoutes {
    /// The entrance of bot `bot_id`, if it runs here in webhook mode.
    pub fn get(&self, bot_id: i64) -> Option<Arc<Entrance>> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&bot_id)
            .cloned()
    }

    /// Counts a request refused for a wrong or missing secret; returns the new total.
    pub fn count_unauthorized(&self) -> u64 {
        self.unauthorized.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Requests refused for a wrong or missing secret since the start.
    pub fn unauthorized(&self) -> u64 {
        self.unauthorized.load(Ordering::Relaxed)
    }

    /// Bots with an open entrance.
    pub fn len(&self) -> usize {
        self.routes.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no bot has an open entrance.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn open(&self, entrance: Arc<Entrance>) -> RouteGuard {
        let bot_id = entrance.bot_id;
        self.routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(bot_id, Arc::clone(&entrance));
        RouteGuard {
            routes: self.clone(),
            entrance,
        }
    }
}

/// Removes its entrance from the routes when dropped (unless a newer one replaced it).
pub(crate) struct RouteGuard {
    routes: WebhookRoutes,
    entrance: Arc<Entrance>,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        let mut routes = self
            .routes
            .routes
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if routes
            .get(&self.entrance.bot_id)
            .is_some_and(|e| Arc::ptr_eq(e, &self.entrance))
        {
            routes.remove(&self.entrance.bot_id);
        }
    }
}

/// What became of an accepted webhook request (each is answered 200).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Stored and handed to the processor.
    Stored,
    /// Stored already (a redelivery): not handed on again.
    Duplicate,
    /// Stored poisoned: it cannot be parsed.
    Poisoned,
    /// No readable `update_id`: logged, not stored.
    WithoutId,
}

/// Why a webhook request is refused.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The processor's channel is full: Telegram should retry later (503).
    #[error("the bot's intake is saturated")]
    Saturated,
    /// The run is stopping (503).
    #[error("the bot is stopping")]
    Stopping,
    /// The bot's database could not store the update (503).
    #[error("the bot's database cannot store the update: {0}")]
    Database(String),
}

/// One bot's webhook entrance for the duration of one run.
#[derive(Debug)]
pub struct Entrance {
    bot_id: i64,
    telegram_id: i64,
    secret: WebhookSecret,
    db: BotPool,
    processor: mpsc::Sender<Box<Update>>,
    stop: CancellationToken,
}

impl Entrance {
    /// Whether `header` (`X-Telegram-Bot-Api-Secret-Token`) is this bot's secret.
    pub fn secret_matches(&self, header: Option<&[u8]>) -> bool {
        self.secret.matches(header)
    }

    /// The bot's panel id.
    pub fn bot_id(&self) -> i64 {
        self.bot_id
    }

    /// Stores the update in `body` and hands it to the processor; see the module docs.
    pub async fn accept(&self, body: &[u8]) -> Result<Accepted, AcceptError> {
        if self.stop.is_cancelled() {
            return Err(AcceptError::Stopping);
        }
        let permit = match self.processor.try_reserve() {
            Ok(p) => p,
            Err(mpsc::error::TrySendError::Full(())) => return Err(AcceptError::Saturated),
            Err(mpsc::error::TrySendError::Closed(())) => return Err(AcceptError::Stopping),
        };
        let raw = RawUpdate::from_bytes(body);
        let element = parse::read_element(&raw);
        let Some(update_id) = element.update_id else {
            tracing::error!(
                bot_id = self.bot_id,
                raw = %truncate(&raw.text),
                "a webhook request without a readable update_id; answered 200 and not stored"
            );
            return Ok(Accepted::WithoutId);
        };
        let (row, update) = match element.update {
            Ok(update) => (
                InboxRow {
                    update_id,
                    chat_id: update.chat().map(|c| c.id.0),
                    payload: element.payload,
                    error: None,
                },
                Some(update),
            ),
            Err(error) => {
                metrics::update_poisoned(
                    self.bot_id,
                    update_id,
                    PoisonedAt::Intake,
                    &error,
                    Some(&truncate(&raw.text)),
                );
                (
                    InboxRow {
                        update_id,
                        chat_id: None,
                        payload: element.payload,
                        error: Some(error),
                    },
                    None,
                )
            }
        };
        let mut conn = self
            .db
            .acquire()
            .await
            .map_err(|e| AcceptError::Database(crate::mask::error_line(&e)))?;
        if stall_before_commit() {
            tracing::warn!(
                bot_id = self.bot_id,
                update_id,
                "webhook update held before its commit (test hook {STALL_ENV})"
            );
            std::future::pending::<()>().await;
        }
        // No offset: webhook updates may arrive concurrently and out of order, and an offset
        // set from one of them could make a lower id look like a restart of the ids.
        let stored = store::store_batch(&mut conn, self.telegram_id, &[row], None)
            .await
            .map_err(|e| AcceptError::Database(crate::mask::error_line(&e)))?;
        drop(conn);
        let inserted = match stored {
            Stored::Stored { inserted, .. } => inserted.contains(&update_id),
            Stored::Blocked(r) => {
                return Err(AcceptError::Database(format!(
                    "update ids restarted at {} below the stored offset {:?}; waiting for {} \
                     updates from before the restart to be processed",
                    r.first_new_id, r.stored_offset, r.unprocessed
                )));
            }
        };
        if inserted {
            metrics::updates_received(self.bot_id, 1);
        }
        match (inserted, update) {
            (false, _) => {
                tracing::debug!(
                    bot_id = self.bot_id,
                    update_id,
                    "webhook redelivery of a stored update"
                );
                Ok(Accepted::Duplicate)
            }
            (true, Some(update)) => {
                permit.send(Box::new(update));
                Ok(Accepted::Stored)
            }
            (true, None) => Ok(Accepted::Poisoned),
        }
    }
}

fn stall_before_commit() -> bool {
    static STALL: OnceLock<bool> = OnceLock::new();
    *STALL.get_or_init(|| std::env::var(STALL_ENV).is_ok_and(|v| v == "1"))
}

/// What the run's webhook loop works with.
pub(crate) struct Keeper {
    pub api: TelegramApi,
    pub token: BotToken,
    pub bot_id: i64,
    pub telegram_id: i64,
    pub spec: WebhookSpec,
    pub db: BotPool,
    pub routes: WebhookRoutes,
    pub snapshot: SharedSnapshot,
    pub registry: Registry,
    pub report: watch::Sender<Option<WebhookState>>,
    pub failures: Failures,
    pub stop: CancellationToken,
}

impl Keeper {
    /// Opens the entrance once `replayed` fires (the stored updates went to the processor
    /// first), sets the webhook and keeps it set until the run stops; the entrance closes
    /// when `intake_done` is cancelled (the processor then drains and ends).
    pub(crate) async fn run(
        self,
        processor: mpsc::Sender<Box<Update>>,
        replayed: oneshot::Receiver<()>,
        intake_done: CancellationToken,
    ) {
        tokio::select! {
            r = replayed => if r.is_err() { return },
            () = self.stop.cancelled() => return,
        }
        let entrance = Arc::new(Entrance {
            bot_id: self.bot_id,
            telegram_id: self.telegram_id,
            secret: self.spec.secret.clone(),
            db: self.db.clone(),
            processor,
            stop: self.stop.clone(),
        });
        let guard = self.routes.open(entrance);
        tokio::select! {
            () = self.keep() => {}
            () = self.stop.cancelled() => {}
        }
        // Requests in flight finish on their own reference; new ones get 503 from here on.
        intake_done.cancelled().await;
        drop(guard);
    }

    async fn keep(&self) {
        let mut set_for: Option<Vec<&'static str>> = None;
        let mut delay = SET_RETRY_START;
        // Spread the checks of many bots over the period.
        let spread = CHECK_EVERY.mul_f64((self.bot_id.unsigned_abs() % 997) as f64 / 997.0);
        let mut next_check = tokio::time::Instant::now() + spread;
        loop {
            let allowed = self.registry.allowed_updates(&self.snapshot.load());
            if set_for.as_ref() != Some(&allowed) {
                // The Bot API calls are boxed: between them the loop's state holds only its
                // timer (docs/performance.md, "Idle memory per bot").
                match Box::pin(self.set(&allowed)).await {
                    Ok(()) => {
                        set_for = Some(allowed);
                        delay = SET_RETRY_START;
                        Box::pin(self.check(&mut set_for)).await;
                        next_check = tokio::time::Instant::now() + CHECK_EVERY + spread / 10;
                    }
                    Err(TelegramError::Unauthorized) => {
                        self.failures.report(RunFailure::Unauthorized);
                        return;
                    }
                    Err(e) => {
                        let wait = match e {
                            TelegramError::RetryAfter(w) => w,
                            _ => delay,
                        };
                        tracing::warn!(bot_id = self.bot_id, error = %crate::mask::error_line(&e), retry_in = ?wait, "setWebhook failed");
                        delay = (delay * 2).min(SET_RETRY_MAX);
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                }
            }
            tokio::time::sleep_until(next_check).await;
            next_check = tokio::time::Instant::now() + CHECK_EVERY;
            Box::pin(self.check(&mut set_for)).await;
        }
    }

    async fn set(&self, allowed: &[&'static str]) -> Result<(), TelegramError> {
        self.api
            .set_webhook(
                &self.token,
                SetWebhook {
                    url: &self.spec.url,
                    secret_token: self.spec.secret.expose(),
                    allowed_updates: allowed,
                    max_connections: self.spec.max_connections,
                },
            )
            .await?;
        tracing::info!(bot_id = self.bot_id, url = %self.spec.url, "webhook set");
        Ok(())
    }

    /// `getWebhookInfo`: reports it, and forgets the webhook as set (so the loop sets it
    /// again) when Telegram has another URL or none.
    async fn check(&self, set_for: &mut Option<Vec<&'static str>>) {
        match self.api.get_webhook_info(&self.token).await {
            Ok(info) => {
                if info.url != self.spec.url {
                    tracing::warn!(
                        bot_id = self.bot_id,
                        telegram_url = %info.url,
                        url = %self.spec.url,
                        "the webhook is missing or points elsewhere; setting it again"
                    );
                    *set_for = None;
                }
                let state = WebhookState {
                    url: info.url,
                    pending_update_count: info.pending_update_count,
                    last_error: info.last_error_date.zip(info.last_error_message),
                };
                self.report.send_if_modified(|old| {
                    let changed = old.as_ref() != Some(&state);
                    *old = Some(state);
                    changed
                });
            }
            Err(TelegramError::Unauthorized) => self.failures.report(RunFailure::Unauthorized),
            Err(e) => {
                tracing::warn!(bot_id = self.bot_id, error = %crate::mask::error_line(&e), "getWebhookInfo failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_random_valid_and_never_printed() {
        let a = WebhookSecret::generate();
        let b = WebhookSecret::generate();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 48);
        assert_eq!(
            WebhookSecret::from_stored(a.expose().to_owned()),
            Some(a.clone())
        );
        assert!(!format!("{a:?}").contains(a.expose()));
        assert!(a.matches(Some(a.expose().as_bytes())));
        assert!(!a.matches(Some(b.expose().as_bytes())));
        assert!(!a.matches(Some(&a.expose().as_bytes()[..47])));
        assert!(!a.matches(None));
        assert_eq!(WebhookSecret::from_stored("a b".into()), None);
    }
}
