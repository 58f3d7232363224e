//! Prometheus metrics: every name, unit and description in one place, and one small function
//! per observable event that the code calls where the event happens.
//!
//! The recorder is the [`metrics`] facade's global one (a process has one `/metrics`),
//! installed by [`install`] from `serve`; before that, and in processes that never install it
//! (the CLI, tests that drive the library in-process), every function here is a no-op.
//! `/metrics` renders it through [`Metrics::render`] on `serve`'s own HTTP listener — the
//! exporter's own listener is not compiled in.
//!
//! Events that are also logged are logged here, by the same call that counts them ("logging
//! and counting of one event happen in one place"): [`update_poisoned`], [`rate_limited`],
//! [`send_refused`], [`send_retry`], [`send_given_up`]. The others are count-only, because the
//! event has no log line of its own (an update stored, a message sent).
//!
//! Labels: per bot only `bot_id` (plus `outcome` for sends and `state` for the bot's state) —
//! never a chat or a user. Histograms are global. Series that are not updated for
//! `metrics.idle_timeout_secs` (a removed bot, a long-idle one) are dropped at the next scrape;
//! the per-bot state gauge is refreshed by the control loop while the bot is known, so it stays
//! while the bot exists and leaves with it (test `tests/metrics.rs`).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

/// Updates the intake stored (polling or webhook), per bot.
pub const UPDATES_RECEIVED: &str = "botvisor_updates_received_total";
/// Updates whose unit of work committed, per bot.
pub const UPDATES_PROCESSED: &str = "botvisor_updates_processed_total";
/// Updates kept as poisoned (unparsable, or their handler panicked or refused them), per bot.
pub const UPDATES_POISONED: &str = "botvisor_updates_poisoned_total";
/// Outbox requests by what came of an attempt, per bot and `outcome`.
pub const SENDS: &str = "botvisor_sends_total";
/// 429 Too Many Requests answers from Telegram, per bot.
pub const RATE_LIMITED: &str = "botvisor_telegram_429_total";
/// Webhook requests answered with an error, per bot and `reason` (unauthorized: wrong or
/// missing secret, 401; saturated: intake full, 503; unavailable: database out of reach or the
/// bot not running here, 503).
pub const WEBHOOK_REJECTED: &str = "botvisor_webhook_rejected_total";
/// 1 for the bot's current state (label `state`), 0 for a state it left, per bot.
pub const BOT_STATE: &str = "botvisor_bot_state";
/// Requests the bot's sender holds pending (loaded from the outbox, in flight), per bot.
pub const OUTBOX_DEPTH: &str = "botvisor_outbox_depth";
/// Bots of this instance by state (label `state`).
pub const BOTS: &str = "botvisor_bots";
/// Gauge: bots in webhook mode asleep here (idle, holding no run; docs/webhooks.md, "Dormant
/// bots"). They count as `running` in [`BOTS`].
pub const BOTS_DORMANT: &str = "botvisor_bots_dormant";
/// Connections open to bot databases through the global budget.
pub const DB_CONNECTIONS_OPEN: &str = "botvisor_db_connections_open";
/// The global connection budget (`bot_database.connection_budget`).
pub const DB_CONNECTION_BUDGET: &str = "botvisor_db_connection_budget";
/// Live `serve` instances sharing the panel, as this instance sees them.
pub const INSTANCES: &str = "botvisor_instances";
/// Time from the unit of work taking an update to Telegram accepting its reply.
pub const UPDATE_REPLY_SECONDS: &str = "botvisor_update_reply_seconds";
/// Time of one Bot API send call (any outcome).
pub const SEND_SECONDS: &str = "botvisor_send_seconds";
/// Time a bot waited for a database connection from the budget.
pub const DB_ACQUIRE_SECONDS: &str = "botvisor_db_acquire_seconds";
/// Time of one reconcile pass of the control loop.
pub const RECONCILE_SECONDS: &str = "botvisor_reconcile_seconds";

/// Every state a bot's [`BOT_STATE`] and [`BOTS`] may carry (`bot_status.state`).
pub const STATES: &[&str] = &[
    "starting",
    "running",
    "degraded",
    "backoff",
    "failed",
    "auth_failed",
    "quarantined",
    "stopped",
];

/// Buckets of the latency histograms seen by a user (update → reply, one send): 5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of the connection acquire wait: 100 µs (an idle connection) to 10 s (the timeout).
const ACQUIRE_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
];
/// Buckets of a reconcile pass: 1 ms (nothing to do) to 60 s (thousands of bots starting).
const RECONCILE_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0,
];

/// How often histogram samples are folded into their buckets between scrapes.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static INSTALLED: OnceLock<Metrics> = OnceLock::new();

/// The installed recorder: renders the exposition text.
#[derive(Clone, Debug)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    /// The Prometheus text exposition of every live series (drops idle ones first).
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds histogram samples into their buckets; call every [`UPKEEP_EVERY`].
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Runs [`Self::upkeep`] every [`UPKEEP_EVERY`] until `shutdown`.
    pub async fn run(self, shutdown: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = every.tick() => self.upkeep(),
            }
        }
    }
}

/// The recorder this process renders, once [`install`] ran.
pub fn installed() -> Option<Metrics> {
    INSTALLED.get().cloned()
}

/// Builds the Prometheus recorder (series idle for `idle_timeout` are dropped), makes it the
/// process's global recorder and describes every metric. A second call returns the first
/// recorder; so does a call after another recorder was installed by someone else (then nothing
/// is recorded into ours, which renders empty).
pub fn install(idle_timeout: Duration) -> Metrics {
    INSTALLED
        .get_or_init(|| {
            let recorder = builder(idle_timeout).build_recorder();
            let metrics = Metrics {
                handle: recorder.handle(),
            };
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
            }
            describe();
            metrics
        })
        .clone()
}

/// The exporter's configuration: bucket boundaries per histogram, idle eviction.
pub fn builder(idle_timeout: Duration) -> PrometheusBuilder {
    let buckets = [
        (UPDATE_REPLY_SECONDS, LATENCY_BUCKETS),
        (SEND_SECONDS, LATENCY_BUCKETS),
        (DB_ACQUIRE_SECONDS, ACQUIRE_BUCKETS),
        (RECONCILE_SECONDS, RECONCILE_BUCKETS),
    ];
    let mut builder =
        PrometheusBuilder::new().idle_timeout(MetricKindMask::ALL, Some(idle_timeout));
    for (name, values) in buckets {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.into()), values)
            .unwrap_or_else(|_| unreachable!("bucket lists are not empty"));
    }
    builder
}

/// Registers every metric's unit and description (the `# HELP` lines).
pub fn describe() {
    describe_counter!(
        UPDATES_RECEIVED,
        Unit::Count,
        "Updates the intake stored, per bot."
    );
    describe_counter!(
        UPDATES_PROCESSED,
        Unit::Count,
        "Updates whose unit of work committed, per bot."
    );
    describe_counter!(
        UPDATES_POISONED,
        Unit::Count,
        "Updates kept as poisoned (unparsable, or the handler panicked or refused them), per bot."
    );
    describe_counter!(
        SENDS,
        Unit::Count,
        "Outbox send attempts by outcome (sent, blocked, chat_not_found, thread_not_found, failed, retry), per bot."
    );
    describe_counter!(
        RATE_LIMITED,
        Unit::Count,
        "429 Too Many Requests answers from Telegram (sends and getUpdates), per bot."
    );
    describe_counter!(
        WEBHOOK_REJECTED,
        Unit::Count,
        "Webhook requests answered with an error (reason unauthorized 401, saturated or unavailable 503), per bot."
    );
    describe_gauge!(
        BOT_STATE,
        "1 for the bot's current state (label state), 0 for a state it has just left."
    );
    describe_gauge!(
        OUTBOX_DEPTH,
        Unit::Count,
        "Requests the bot's sender holds pending (loaded from the outbox, at most one page of 256, plus in flight)."
    );
    describe_gauge!(BOTS, Unit::Count, "Bots of this instance by state.");
    describe_gauge!(
        BOTS_DORMANT,
        Unit::Count,
        "Bots in webhook mode asleep (idle, no run held; counted as running in botvisor_bots)."
    );
    describe_gauge!(
        DB_CONNECTIONS_OPEN,
        Unit::Count,
        "Connections open to bot databases through the global budget."
    );
    describe_gauge!(
        DB_CONNECTION_BUDGET,
        Unit::Count,
        "The global connection budget (bot_database.connection_budget)."
    );
    describe_gauge!(
        INSTANCES,
        Unit::Count,
        "Live serve instances sharing the panel database, as this instance sees them."
    );
    describe_histogram!(
        UPDATE_REPLY_SECONDS,
        Unit::Seconds,
        "From the unit of work taking an update to Telegram accepting its reply."
    );
    describe_histogram!(
        SEND_SECONDS,
        Unit::Seconds,
        "One Bot API send call, any outcome."
    );
    describe_histogram!(
        DB_ACQUIRE_SECONDS,
        Unit::Seconds,
        "Wait for a bot database connection from the global budget."
    );
    describe_histogram!(
        RECONCILE_SECONDS,
        Unit::Seconds,
        "One reconcile pass of the control loop."
    );
}

fn bot(bot_id: i64) -> String {
    bot_id.to_string()
}

/// `count` updates of `bot_id` were stored by the intake (new ones only, not re-deliveries).
pub fn updates_received(bot_id: i64, count: u64) {
    if count > 0 {
        counter!(UPDATES_RECEIVED, "bot_id" => bot(bot_id)).increment(count);
    }
}

/// `count` updates of `bot_id` were processed: their unit of work committed.
pub fn updates_processed(bot_id: i64, count: u64) {
    if count > 0 {
        counter!(UPDATES_PROCESSED, "bot_id" => bot(bot_id)).increment(count);
    }
}

/// Where an update was found unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoisonedAt {
    /// At intake: it cannot be parsed (the raw text is logged, truncated).
    Intake,
    /// In the unit of work: the handler panicked or refused it.
    Handler,
}

/// An update of `bot_id` was kept as poisoned: logs it and counts it.
pub fn update_poisoned(
    bot_id: i64,
    update_id: i64,
    at: PoisonedAt,
    error: &str,
    raw: Option<&str>,
) {
    match (at, raw) {
        (PoisonedAt::Intake, Some(raw)) => {
            tracing::warn!(bot_id, update_id, %error, raw, "poisoned update")
        }
        (PoisonedAt::Intake, None) => tracing::warn!(bot_id, update_id, %error, "poisoned update"),
        (PoisonedAt::Handler, _) => tracing::error!(bot_id, update_id, %error, "update poisoned"),
    }
    counter!(UPDATES_POISONED, "bot_id" => bot(bot_id)).increment(1);
}

/// What came of one send attempt, as [`SENDS`] labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Telegram accepted it.
    Sent,
    /// The user blocked the bot (403).
    Blocked,
    /// 400 chat not found.
    ChatNotFound,
    /// 400 message thread not found.
    ThreadNotFound,
    /// Refused for good (recorded as failed).
    Failed,
    /// A network or server error: tried again after a pause.
    Retry,
}

impl SendOutcome {
    /// The `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            SendOutcome::Sent => "sent",
            SendOutcome::Blocked => "blocked",
            SendOutcome::ChatNotFound => "chat_not_found",
            SendOutcome::ThreadNotFound => "thread_not_found",
            SendOutcome::Failed => "failed",
            SendOutcome::Retry => "retry",
        }
    }
}

/// Counts one send attempt of `bot_id` that ended with `outcome` (no log line: a delivery or a
/// block is not news); the refusals that are logged go through [`send_refused`],
/// [`send_retry`] and [`send_given_up`].
pub fn send_attempt(bot_id: i64, outcome: SendOutcome) {
    counter!(SENDS, "bot_id" => bot(bot_id), "outcome" => outcome.as_str()).increment(1);
}

/// Telegram refused a request of `bot_id` for good (`outcome` one of chat_not_found,
/// thread_not_found, failed): logs it and counts it.
pub fn send_refused(bot_id: i64, chat_id: i64, method: &str, outcome: SendOutcome, error: &str) {
    tracing::warn!(bot_id, chat_id, method, %error, "Telegram refused the request");
    send_attempt(bot_id, outcome);
}

/// A send of `bot_id` failed with a network or server error and is retried after `retry_in`:
/// logs it and counts it.
pub fn send_retry(bot_id: i64, method: &str, error: &str, retry_in: Duration) {
    tracing::warn!(bot_id, method, %error, ?retry_in, "send failed; retrying");
    send_attempt(bot_id, SendOutcome::Retry);
}

/// Telegram kept refusing a request of `bot_id` with an error nobody can name: logs that the
/// sender gives up on it and counts it as failed.
pub fn send_given_up(bot_id: i64, method: &str, error: &str, attempts: i32) {
    tracing::error!(bot_id, method, %error, attempts, "Telegram kept refusing the request; giving up on it");
    send_attempt(bot_id, SendOutcome::Failed);
}

/// Telegram answered a call of `bot_id` with 429: logs it and counts it. `method` is the Bot
/// API method (`getUpdates` for the intake).
pub fn rate_limited(bot_id: i64, method: &str, retry_after: Duration) {
    if method == "getUpdates" {
        tracing::warn!(
            bot_id,
            method,
            ?retry_after,
            "Telegram asked to slow down; the intake pauses"
        );
    } else {
        tracing::warn!(
            bot_id,
            method,
            ?retry_after,
            "Telegram asked to slow down; the sender pauses"
        );
    }
    counter!(RATE_LIMITED, "bot_id" => bot(bot_id)).increment(1);
}

/// Why a webhook request was answered with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookRejection {
    /// Wrong or missing secret token: 401.
    Unauthorized,
    /// The bot's intake is full: 503 with `Retry-After`.
    Saturated,
    /// The bot's database is out of reach or the bot does not run here: 503.
    Unavailable,
}

impl WebhookRejection {
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookRejection::Unauthorized => "unauthorized",
            WebhookRejection::Saturated => "saturated",
            WebhookRejection::Unavailable => "unavailable",
        }
    }
}

/// A webhook request for `bot_id` (a bot running here in webhook mode: never an id taken from
/// an unknown path, which would let anyone create series) was answered with an error: logs it
/// — at `warn`, but a saturated intake at `debug`, as it answers every request while it lasts —
/// and counts it. `detail` says what exactly (no secret in it).
pub fn webhook_rejected(bot_id: i64, reason: WebhookRejection, detail: &str) {
    let why = reason.as_str();
    if reason == WebhookRejection::Saturated {
        tracing::debug!(
            bot_id,
            reason = why,
            detail,
            "webhook request refused for now"
        );
    } else {
        tracing::warn!(bot_id, reason = why, detail, "webhook request refused");
    }
    counter!(WEBHOOK_REJECTED, "bot_id" => bot(bot_id), "reason" => why).increment(1);
}

/// Makes the series every bot has — its outbox depth, its `starting` and `running` states — as
/// its slot is made, with the rest of what a bot keeps: made in its first run, they would sit
/// among the run's freed memory and keep those pages resident while the bot sleeps
/// (docs/webhooks.md, "Dormant bots"). What the bot has not reached reads 0.
pub fn bot_series(bot_id: i64) {
    gauge!(OUTBOX_DEPTH, "bot_id" => bot(bot_id)).set(0.0);
    gauge!(BOT_STATE, "bot_id" => bot(bot_id), "state" => "running").set(0.0);
    gauge!(BOT_STATE, "bot_id" => bot(bot_id), "state" => "starting").set(1.0);
}

/// The bot's state changed from `from` (if it had one) to `to`, or is confirmed (`from ==
/// Some(to)`); `to == None` when the bot is gone from this instance.
pub fn bot_state(bot_id: i64, from: Option<&'static str>, to: Option<&'static str>) {
    if let Some(from) = from
        && Some(from) != to
    {
        gauge!(BOT_STATE, "bot_id" => bot(bot_id), "state" => from).set(0.0);
    }
    if let Some(to) = to {
        gauge!(BOT_STATE, "bot_id" => bot(bot_id), "state" => to).set(1.0);
    }
}

/// The number of this instance's bots in each state (`(state, count)`, every state of
/// [`STATES`] that is not listed is 0).
pub fn bots_by_state(counts: &[(&'static str, usize)]) {
    for state in STATES {
        let n = counts
            .iter()
            .filter(|(s, _)| s == state)
            .map(|(_, n)| *n)
            .sum::<usize>();
        gauge!(BOTS, "state" => *state).set(n as f64);
    }
}

/// The bots in webhook mode asleep here.
pub fn bots_dormant(count: usize) {
    gauge!(BOTS_DORMANT).set(count as f64);
}

/// The requests `bot_id`'s sender holds pending.
pub fn outbox_depth(bot_id: i64, depth: usize) {
    gauge!(OUTBOX_DEPTH, "bot_id" => bot(bot_id)).set(depth as f64);
}

/// The connections open through the global budget, and the budget.
pub fn db_connections(open: usize, budget: u32) {
    gauge!(DB_CONNECTIONS_OPEN).set(open as f64);
    gauge!(DB_CONNECTION_BUDGET).set(f64::from(budget));
}

/// The live instances sharing the panel.
pub fn instances(count: usize) {
    gauge!(INSTANCES).set(count as f64);
}

/// An update's reply was accepted by Telegram `elapsed` after its unit of work took it.
pub fn update_replied(elapsed: Duration) {
    histogram!(UPDATE_REPLY_SECONDS).record(elapsed);
}

/// One Bot API send call took `elapsed`.
pub fn send_took(elapsed: Duration) {
    histogram!(SEND_SECONDS).record(elapsed);
}

/// A bot waited `elapsed` for a database connection from the budget.
pub fn db_acquire_waited(elapsed: Duration) {
    histogram!(DB_ACQUIRE_SECONDS).record(elapsed);
}

/// One reconcile pass took `elapsed`.
pub fn reconcile_took(elapsed: Duration) {
    histogram!(RECONCILE_SECONDS).record(elapsed);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name is a valid Prometheus metric name and counters end in `_total`.
    #[test]
    fn names_follow_prometheus_conventions() {
        let counters = [
            WEBHOOK_REJECTED,
            UPDATES_RECEIVED,
            UPDATES_PROCESSED,
            UPDATES_POISONED,
            SENDS,
            RATE_LIMITED,
        ];
        for name in counters {
            assert!(name.ends_with("_total"), "{name}");
        }
        let all = counters.iter().chain(&[
            BOT_STATE,
            OUTBOX_DEPTH,
            BOTS,
            DB_CONNECTIONS_OPEN,
            DB_CONNECTION_BUDGET,
            INSTANCES,
            UPDATE_REPLY_SECONDS,
            SEND_SECONDS,
            DB_ACQUIRE_SECONDS,
            RECONCILE_SECONDS,
        ]);
        for name in all {
            assert!(name.starts_with("botvisor_"), "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
        }
    }

    /// The builder accepts every bucket list (none is empty, all ascend).
    #[test]
    fn bucket_lists_ascend() {
        for list in [LATENCY_BUCKETS, ACQUIRE_BUCKETS, RECONCILE_BUCKETS] {
            assert!(list.windows(2).all(|w| w[0] < w[1]));
        }
        let _ = builder(Duration::from_secs(60)).build_recorder();
    }
}
