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

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{parse, truncate};
use crate::botdb::budget::BotPool;
use crate::botdb::store::{self, InboxRow, Stored};
use crate::content::snapshot::SharedSnapshot;
use crate::modules::{Quiet, Registry};
use crate::runtime::dispatch::Work;
use crate::runtime::{Failures, RunFailure};
use crate::telegram::{RawUpdate, SetWebhook, TelegramApi, TelegramError};
use crate::telemetry::metrics::{self, PoisonedAt};
use crate::token::BotToken;

/// The webhook loop's name in the run's [`Quiet`]: it waits once the webhook is set.
pub const QUIET_PART: &str = "webhook";
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct WebhookState {
    /// The URL Telegram has (empty: none).
    pub url: String,
    /// Updates Telegram has not delivered yet.
    pub pending_update_count: i64,
    /// Telegram's latest delivery error, with its Unix time.
    pub last_error: Option<(i64, String)>,
}

/// How a bot in webhook mode is reached here.
#[derive(Debug, Clone)]
pub enum Route {
    /// Its run is live: the entrance stores and hands on.
    Open(Arc<Entrance>),
    /// It is dormant (docs/webhooks.md, "Dormant bots"): a request rings, the bot's run
    /// starts and opens its entrance, and the request goes in there.
    Asleep(Arc<Doorbell>),
}

impl Route {
    /// Whether `header` (`X-Telegram-Bot-Api-Secret-Token`) is this bot's secret.
    pub fn secret_matches(&self, header: Option<&[u8]>) -> bool {
        match self {
            Route::Open(e) => e.secret_matches(header),
            Route::Asleep(d) => d.secret.matches(header),
        }
    }
}

/// What a dormant bot keeps at the webhook door: its secret and a bell.
#[derive(Debug)]
pub struct Doorbell {
    secret: WebhookSecret,
    bell: tokio::sync::Notify,
}

impl Doorbell {
    /// A bell for a bot whose webhook carries `secret`.
    pub fn new(secret: WebhookSecret) -> Self {
        Self {
            secret,
            bell: tokio::sync::Notify::new(),
        }
    }

    /// Wakes the bot (kept until it waits, if it does not yet).
    pub fn ring(&self) {
        self.bell.notify_one();
    }

    /// Resolves once the bell rang.
    pub async fn rung(&self) {
        self.bell.notified().await;
    }

    /// Forgets a ring kept from before (a run starts and takes every request).
    pub fn clear(&self) {
        use futures::FutureExt;
        let _ = self.bell.notified().now_or_never();
    }

    /// Whether this bell opens to `secret` (a new secret needs a new bell).
    pub fn is_for(&self, secret: &WebhookSecret) -> bool {
        &self.secret == secret
    }
}

impl WebhookState {
    /// A fingerprint of it (a sleeping bot keeps a number, not the texts).
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

/// The entrances of this process's bots in webhook mode, by panel id.
#[derive(Debug, Clone, Default)]
pub struct WebhookRoutes {
    routes: Arc<RwLock<HashMap<i64, Route>>>,
    unauthorized: Arc<AtomicU64>,
    /// Notified whenever a route opens, falls asleep or closes (requests waiting for a
    /// dormant bot's entrance look again).
    changed: Arc<tokio::sync::Notify>,
}

impl WebhookRoutes {
    /// How bot `bot_id` is reached, if it runs here in webhook mode.
    pub fn get(&self, bot_id: i64) -> Option<Route> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&bot_id)
            .cloned()
    }

    /// Resolves at the next change of any route; create it before looking at a route (then
    /// `enable` it) so no change in between is missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
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
        self.count(false)
    }

    /// Bots in webhook mode that are dormant here.
    pub fn asleep(&self) -> usize {
        self.count(true)
    }

    fn count(&self, asleep: bool) -> usize {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|r| matches!(r, Route::Asleep(_)) == asleep)
            .count()
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
            .insert(bot_id, Route::Open(Arc::clone(&entrance)));
        self.changed.notify_waiters();
        RouteGuard {
            routes: self.clone(),
            entrance,
        }
    }

    /// Bot `bot_id` falls asleep: requests ring `doorbell` until its next run opens its
    /// entrance (the route it replaces finishes the requests it has).
    pub fn fall_asleep(&self, bot_id: i64, doorbell: Arc<Doorbell>) {
        self.routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(bot_id, Route::Asleep(doorbell));
        self.changed.notify_waiters();
    }

    /// Removes bot `bot_id`'s route if it is still asleep at `doorbell` (the bot stops, or
    /// leaves webhook mode, without waking).
    pub fn close_asleep(&self, bot_id: i64, doorbell: &Arc<Doorbell>) {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        if matches!(routes.get(&bot_id), Some(Route::Asleep(d)) if Arc::ptr_eq(d, doorbell)) {
            routes.remove(&bot_id);
            drop(routes);
            self.changed.notify_waiters();
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
        if matches!(routes.get(&self.entrance.bot_id), Some(Route::Open(e)) if Arc::ptr_eq(e, &self.entrance))
        {
            routes.remove(&self.entrance.bot_id);
            drop(routes);
            self.routes.changed.notify_waiters();
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
    processor: mpsc::Sender<Work>,
    stop: CancellationToken,
    quiet: Arc<Quiet>,
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
        // Before the stop is looked at: a run that fell asleep meanwhile sees it and runs
        // again at once (see `runtime::doze`).
        self.quiet.touch();
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
        conn.vouch();
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
                permit.send(Work::Stored(Box::new(update)));
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
    pub quiet: Arc<Quiet>,
    /// What is known to be set already (a run woken from dormancy: the previous run's
    /// [`Kept`]); `None`: set the webhook first.
    pub kept: Option<Kept>,
}

/// What a run's webhook loop leaves for the next run of the same spec: the update kinds the
/// webhook is set for, and when it is next checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// `allowed_updates` the webhook was set with ([`fingerprint`]: a sleeping bot keeps a
    /// number, not a list).
    pub set_for: u64,
    /// When `getWebhookInfo` is due.
    pub next_check: tokio::time::Instant,
}

/// A fingerprint of an `allowed_updates` list.
fn fingerprint(allowed: &[&'static str]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    allowed.hash(&mut h);
    h.finish()
}

impl Keeper {
    /// Opens the entrance once `replayed` fires (the stored updates went to the processor
    /// first), sets the webhook and keeps it set until the run stops; the entrance closes
    /// when `intake_done` is cancelled (the processor then drains and ends).
    pub(crate) async fn run(
        mut self,
        processor: mpsc::Sender<Work>,
        replayed: oneshot::Receiver<()>,
        intake_done: CancellationToken,
    ) -> Option<Kept> {
        tokio::select! {
            r = replayed => if r.is_err() { return None },
            () = self.stop.cancelled() => return None,
        }
        let entrance = Arc::new(Entrance {
            bot_id: self.bot_id,
            telegram_id: self.telegram_id,
            secret: self.spec.secret.clone(),
            db: self.db.clone(),
            processor,
            stop: self.stop.clone(),
            quiet: Arc::clone(&self.quiet),
        });
        let guard = self.routes.open(entrance);
        let stop = self.stop.clone();
        tokio::select! {
            () = self.keep() => {}
            () = stop.cancelled() => {}
        }
        // Requests in flight finish on their own reference; new ones get 503 from here on
        // (or ring the bell of a bot that fell asleep).
        intake_done.cancelled().await;
        drop(guard);
        self.kept
    }

    async fn keep(&mut self) {
        let (mut set_for, mut next_check): (Option<u64>, _) = match self.kept.take() {
            Some(kept) => (Some(kept.set_for), kept.next_check),
            // Spread the checks of many bots over the period.
            None => (None, tokio::time::Instant::now() + spread(self.bot_id)),
        };
        let mut delay = SET_RETRY_START;
        loop {
            self.keep_for_next(set_for, next_check);
            if set_for.is_none() {
                self.quiet.busy(QUIET_PART);
            }
            let allowed = self.registry.allowed_updates(&self.snapshot.load());
            if set_for != Some(fingerprint(&allowed)) {
                // The Bot API calls are boxed: between them the loop's state holds only its
                // timer (docs/performance.md, "Idle memory per bot").
                match Box::pin(self.set(&allowed)).await {
                    Ok(()) => {
                        set_for = Some(fingerprint(&allowed));
                        delay = SET_RETRY_START;
                        Box::pin(self.check(&mut set_for)).await;
                        next_check =
                            tokio::time::Instant::now() + CHECK_EVERY + spread(self.bot_id) / 10;
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
            self.keep_for_next(set_for, next_check);
            // Set: nothing to do but the periodic check, which a dormant bot's slot does.
            self.quiet.waiting(QUIET_PART, None);
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

    /// What the next run may take over, should this one fall asleep.
    fn keep_for_next(&mut self, set_for: Option<u64>, next_check: tokio::time::Instant) {
        self.kept = set_for.map(|set_for| Kept {
            set_for,
            next_check,
        });
    }

    /// `getWebhookInfo`: reports it, and forgets the webhook as set (so the loop sets it
    /// again) when Telegram has another URL or none.
    async fn check(&self, set_for: &mut Option<u64>) {
        match check_webhook(&self.api, &self.token, self.bot_id, &self.spec).await {
            Ok((state, in_place)) => {
                if !in_place {
                    *set_for = None;
                }
                self.report.send_if_modified(|old| {
                    let changed = old.as_ref() != Some(&state);
                    *old = Some(state);
                    changed
                });
            }
            Err(TelegramError::Unauthorized) => self.failures.report(RunFailure::Unauthorized),
            Err(_) => {}
        }
    }
}

/// What a sleeping bot's `getWebhookInfo` found ([`look`]).
#[derive(Debug)]
pub enum Look {
    /// Telegram answered: what it said, and whether the webhook is in place.
    Seen(WebhookState, bool),
    /// The token was revoked.
    Revoked,
    /// The call failed (logged); try again at the next check.
    Failed,
}

/// [`check_webhook`] for a sleeping bot's slot (the control plane names no Telegram type).
pub async fn look(api: &TelegramApi, token: &BotToken, bot_id: i64, spec: &WebhookSpec) -> Look {
    match check_webhook(api, token, bot_id, spec).await {
        Ok((state, in_place)) => Look::Seen(state, in_place),
        Err(TelegramError::Unauthorized) => Look::Revoked,
        Err(_) => Look::Failed,
    }
}

/// Spreads the webhook checks of many bots over [`CHECK_EVERY`].
fn spread(bot_id: i64) -> Duration {
    CHECK_EVERY.mul_f64((bot_id.unsigned_abs() % 997) as f64 / 997.0)
}

/// `getWebhookInfo` for bot `bot_id`: what Telegram says, and whether the webhook is in place
/// (Telegram has `spec`'s URL; otherwise this is logged). Errors other than a revoked token are
/// logged here.
pub async fn check_webhook(
    api: &TelegramApi,
    token: &BotToken,
    bot_id: i64,
    spec: &WebhookSpec,
) -> Result<(WebhookState, bool), TelegramError> {
    match api.get_webhook_info(token).await {
        Ok(info) => {
            let in_place = info.url == spec.url;
            if !in_place {
                tracing::warn!(
                    bot_id,
                    telegram_url = %info.url,
                    url = %spec.url,
                    "the webhook is missing or points elsewhere; setting it again"
                );
            }
            let state = WebhookState {
                url: info.url,
                pending_update_count: info.pending_update_count,
                last_error: info.last_error_date.zip(info.last_error_message),
            };
            Ok((state, in_place))
        }
        Err(TelegramError::Unauthorized) => Err(TelegramError::Unauthorized),
        Err(e) => {
            tracing::warn!(bot_id, error = %crate::mask::error_line(&e), "getWebhookInfo failed");
            Err(e)
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
