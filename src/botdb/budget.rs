//! The global connection budget: one cap on the connections the daemon holds to all bot
//! databases together, whatever the number of bots.
//!
//! sqlx's `PgPool` cannot enforce a cap across pools (an idle pooled connection stays open
//! after release), so [`ConnectionBudget`] brokers raw [`PgConnection`]s itself. Each bot gets
//! a [`BotPool`] from [`ConnectionBudget::database`]; [`BotPool::acquire`] hands out a
//! [`BudgetConn`] that goes back to the idle list when dropped.
//!
//! # Running bots first, provisioning after
//! Two kinds of acquire share the budget: a running bot's ([`BotPool::acquire`]) and a
//! provisioning's ([`BotPool::acquire_for_provisioning`], creating a database and migrating
//! it). A provisioning first takes a [`ProvisionTurn`] from [`ConnectionBudget::provision_turn`]:
//! at most `provision_concurrency` turns are out at once, handed out in arrival order, so
//! 200 bots added at once queue there instead of in front of running bots. With its turn, a
//! provisioning's acquire
//! - takes a free slot or evicts only while no running bot's acquire waits for the budget,
//!   and a freed slot or returned connection wakes a waiting running acquire first (test
//!   `running_bots_are_served_before_queued_provisionings`);
//! - evicts a connection a running bot used only once it has been idle for at least
//!   [`PROVISION_EVICTS_AFTER_IDLE`] (test
//!   `provisioning_evicts_only_connections_idle_for_a_while`); one last used by a provisioning
//!   (a new bot's migration), or by a bot that has not handled an update since it started
//!   ([`BotPool::mark_warm`]: its start-up reads, which no message waits for), it may evict at
//!   once (test `a_starting_bots_connection_is_evicted_at_once`). In a cold start of 1,000
//!   bots, the start-up reads' connections protected for 250 ms paced the next bots' checks to
//!   about 60 bots a second.
//!
//! # How an acquire proceeds
//! Within one deadline (the acquire timeout):
//! 1. take a permit of the database's own semaphore (`max_connections` in use at once);
//! 2. reuse the most recently returned idle connection of the same database, checked first
//!    with a ping (one round trip, no query: what sqlx's own pool does by default). A server
//!    restart or `pg_terminate_backend` ends idle sessions without the broker noticing; a
//!    connection whose ping fails (or does not answer within [`PING_TIMEOUT`]) is dropped and
//!    its slot connects afresh within the same acquire (test
//!    `a_connection_killed_while_idle_is_replaced_on_the_first_try`). No ping for one whose
//!    last holder vouched for it ([`BudgetConn::vouch`]: its statements succeeded) and
//!    returned it less than [`ALIVE_BYPASS`] ago: a running bot's intake, unit of work and
//!    sender vouch, so a busy bot pays no pings;
//! 3. else take a free slot of the budget and connect;
//! 4. else evict the least recently used idle connection of another database that has no
//!    acquire under way (closed gracefully, outside the lock) and connect with its slot (test
//!    `eviction_serves_a_third_database_at_once`). A bot with work queued keeps its idle
//!    connection for that work (test `a_bot_with_work_keeps_its_connection`): when more bots
//!    are active than the budget holds, bots finish what they hold and the others wait, instead
//!    of every bot reconnecting for every message;
//! 5. else wait until a slot is freed, a connection is returned or a bot's last acquire ends,
//!    then start over at step 2. Running waiters are woken one at a time in arrival order
//!    (fair-ish: a newcomer can still take a slot first); provisioning waiters (at most one per
//!    turn) are woken together, and only when no running acquire waits.
//!
//! # The loop it runs
//! [`ConnectionBudget::run`] calls [`ConnectionBudget::reap_idle`] every `idle_timeout / 2`
//! (at least every second) and closes the idle connections older than the idle timeout, so
//! an idle bot holds zero connections; on shutdown it closes every idle connection.
//!
//! # Invariants
//! - Every open connection owns one slot of the budget from the moment its connect starts until
//!   its close finished or its socket was dropped; slots are RAII guards, so no path (error,
//!   panic, cancelled future) leaks one. Hence [`ConnectionBudget::open_connections`] never
//!   exceeds the budget, eviction included (test `forty_databases_never_exceed_the_budget`), and
//!   returns to zero once everything is returned and reaped (test
//!   `idle_connections_are_reaped_to_zero`).
//! - A database never has more than its `max_connections` open (idle connections are reused
//!   before a new one is opened, and a new one is opened only under a permit).
//! - Only idle connections are evicted; a connection in use is never taken from its holder.
//! - The state lives behind one `std::sync::Mutex` held only for short, non-async sections;
//!   connecting, pinging and closing happen outside it. The waiter counts are atomics that are
//!   raised under the lock (so a releaser that changed the state afterwards sees them) and
//!   lowered without it (so a cancelled acquire can lower them from `Drop`).

use std::collections::VecDeque;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::schema::describe;
use crate::telemetry::metrics;

/// Provisionings that may hold connections at once unless
/// [`ConnectionBudget::with_provision_concurrency`] sets another number.
pub const DEFAULT_PROVISION_CONCURRENCY: u32 = 2;

/// Shortest idle time of a connection that a provisioning may evict.
///
/// A running bot that returned its connection less than this ago is likely to need it for its
/// next message; closing it would make that message pay for a reconnect. Short enough that a
/// cold start, whose bots each check their database and then go quiet, is not paced by it:
/// at 1 s, a budget of 32 connections checked about 32 bots a second.
pub const PROVISION_EVICTS_AFTER_IDLE: Duration = Duration::from_millis(250);

/// Longest a connection kept for its database's next acquire
/// ([`BudgetConn::keep_for_next_acquire`]) is spared from eviction while nobody takes it.
pub const KEPT_AT_MOST: Duration = Duration::from_secs(2);

/// Longest wait for the ping that checks an idle connection before it is handed out; a
/// connection that does not answer in time is replaced by a fresh one.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// How recently a vouched connection ([`BudgetConn::vouch`]) must have been returned to be
/// handed out again without a ping (HikariCP's `aliveBypassWindowMs`, same default).
///
/// A running bot's intake, unit of work and sender each acquire once per update; their pings
/// were three of an update's six round trips to PostgreSQL. The cost: a server restart within
/// this window after a vouched return fails the next holder's first statement (the run
/// restarts and replays, as when a restart hits a connection in use) instead of being
/// replaced by the ping.
pub const ALIVE_BYPASS: Duration = Duration::from_millis(500);

/// Longest wait for a graceful close (Terminate) before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest period of the reaper loop, whatever the idle timeout.
const MAX_REAP_PERIOD: Duration = Duration::from_secs(1);

/// Shortest period of the reaper loop, so a tiny idle timeout cannot make it spin.
const MIN_REAP_PERIOD: Duration = Duration::from_millis(10);

/// Errors of acquiring a connection through the budget.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// No connection became available within the acquire timeout: the database's
    /// `max_connections` or the global budget stayed exhausted. Raise
    /// `bot_database.connection_budget` if this happens under normal load.
    #[error(
        "no connection to {url} within {timeout:?}: the bot's connection limit or the global \
         connection budget stayed exhausted"
    )]
    Timeout {
        /// The masked URL of the database (`postgres://user@host:port/db`).
        url: String,
        /// The acquire timeout that passed.
        timeout: Duration,
    },
    /// Connecting to the database failed (or did not finish within the acquire timeout).
    #[error("cannot connect to {url}")]
    Connect {
        /// The masked URL of the database (`postgres://user@host:port/db`, never a password).
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The database's pool was closed with [`BotPool::close`].
    #[error("the bot's database pool is closed")]
    Closed,
}

impl BudgetError {
    /// Whether trying again later may succeed without a change of configuration.
    ///
    /// Timeouts and network failures are transient; a closed pool, bad credentials, a missing
    /// database or a bad option are not (test `connect_failure_is_transient_and_masked`).
    pub fn is_transient(&self) -> bool {
        match self {
            BudgetError::Timeout { .. } => true,
            BudgetError::Closed => false,
            BudgetError::Connect { source, .. } => match source {
                sqlx::Error::Configuration(_) => false,
                // Class 08 (connection exception), 53 (insufficient resources, such as
                // too_many_connections) and 57 (operator intervention, such as
                // cannot_connect_now) go away by themselves; auth or a missing database do not.
                sqlx::Error::Database(e) => e.code().is_some_and(|c| {
                    c.starts_with("08") || c.starts_with("53") || c.starts_with("57")
                }),
                _ => true,
            },
        }
    }
}

/// A snapshot of the budget's counters, for tests, logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetStats {
    /// The budget: most connections open at once.
    pub budget: usize,
    /// Connections open (connecting, in use, idle or closing).
    pub open: usize,
    /// Idle connections.
    pub idle: usize,
    /// Running bots' acquires waiting for a slot or an idle connection.
    pub running_waiting: usize,
    /// Provisionings' acquires waiting for a slot or an idle connection.
    pub provisioning_waiting: usize,
    /// Provisionings waiting for their turn ([`ConnectionBudget::provision_turn`]).
    pub provisions_queued: usize,
}

/// The broker of connections to every bot database, capped at one budget.
///
/// Cheap to clone (an `Arc` inside); every clone is the same budget.
#[derive(Clone)]
pub struct ConnectionBudget {
    shared: Arc<Shared>,
}

struct Shared {
    budget: usize,
    idle_timeout: Duration,
    acquire_timeout: Duration,
    state: Mutex<State>,
    /// Running acquires waiting in step 5; raised under the state lock.
    running_waiting: AtomicUsize,
    /// Provisioning acquires waiting in step 5; raised under the state lock.
    provisioning_waiting: AtomicUsize,
    /// Wakes one waiting running acquire (oldest first) when a slot is freed or a connection
    /// may be evicted.
    running: Notify,
    /// Wakes every waiting provisioning acquire, when no running acquire waits.
    provisioning: Notify,
    /// Provisioning turns, see [`ProvisionTurn`].
    turns: Arc<Semaphore>,
    /// The number of turns `turns` was sized to.
    turn_limit: AtomicUsize,
    /// Provisionings waiting for a turn (a provisioning or a check turn).
    turns_queued: AtomicUsize,
    /// Check turns, see [`ConnectionBudget::check_turn`]: half the budget's slots.
    checks: Arc<Semaphore>,
    /// How long a provisioning spares a connection returned by a warm bot, in milliseconds
    /// ([`PROVISION_EVICTS_AFTER_IDLE`] unless [`ConnectionBudget::with_provision_evicts_after`]
    /// set another).
    provision_evicts_after_ms: std::sync::atomic::AtomicU64,
    /// How recently a vouched connection must have been returned to skip its ping, in
    /// milliseconds ([`ALIVE_BYPASS`] unless [`ConnectionBudget::with_alive_bypass`] set another).
    alive_bypass_ms: std::sync::atomic::AtomicU64,
    /// Whether [`ConnectionBudget::run`] sets the connection gauges (with several servers the
    /// daemon sets them to the sum of every server's budget instead).
    reports_metrics: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct State {
    /// Slots taken: connections connecting, in use, idle or being closed.
    open: usize,
    /// Idle connections of every database, least recently returned first. At most `budget`.
    idle: VecDeque<Live>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Tells waiters that a slot was freed or a connection may be evicted: one running waiter
    /// if any waits, else every provisioning waiter. The choice is made under the lock (the
    /// guard passed in), the notification sent after releasing it.
    fn wake(&self, state: MutexGuard<'_, State>) {
        let running = self.running_waiting.load(Ordering::Acquire) > 0;
        drop(state);
        if running {
            self.running.notify_one();
        } else {
            self.provisioning.notify_waiters();
        }
    }
}

impl fmt::Debug for ConnectionBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionBudget")
            .field("budget", &self.shared.budget)
            .field("open", &self.open_connections())
            .finish()
    }
}

impl ConnectionBudget {
    /// Creates a budget of `budget` connections (at least 1), with
    /// [`DEFAULT_PROVISION_CONCURRENCY`] provisioning turns.
    ///
    /// Idle connections are closed after `idle_timeout` (by [`Self::reap_idle`] or
    /// [`Self::run`]); an acquire, connecting included, fails after `acquire_timeout`.
    pub fn new(budget: u32, idle_timeout: Duration, acquire_timeout: Duration) -> Self {
        let turns = DEFAULT_PROVISION_CONCURRENCY as usize;
        Self {
            shared: Arc::new(Shared {
                budget: budget.max(1) as usize,
                idle_timeout,
                acquire_timeout,
                state: Mutex::new(State::default()),
                running_waiting: AtomicUsize::new(0),
                provisioning_waiting: AtomicUsize::new(0),
                running: Notify::new(),
                provisioning: Notify::new(),
                turns: Arc::new(Semaphore::new(turns)),
                turn_limit: AtomicUsize::new(turns),
                turns_queued: AtomicUsize::new(0),
                checks: Arc::new(Semaphore::new((budget / 2).max(1) as usize)),
                reports_metrics: std::sync::atomic::AtomicBool::new(true),
                provision_evicts_after_ms: std::sync::atomic::AtomicU64::new(
                    PROVISION_EVICTS_AFTER_IDLE.as_millis() as u64,
                ),
                alive_bypass_ms: std::sync::atomic::AtomicU64::new(ALIVE_BYPASS.as_millis() as u64),
            }),
        }
    }

    /// Leaves the connection gauges to the caller (the daemon sums several servers' budgets).
    pub fn without_metrics(self) -> Self {
        self.shared.reports_metrics.store(false, Ordering::Release);
        self
    }

    /// Sets how long a provisioning spares a connection a warm bot returned (instead of
    /// [`PROVISION_EVICTS_AFTER_IDLE`]; tests make it long to tell spared connections apart).
    pub fn with_provision_evicts_after(self, spared: Duration) -> Self {
        self.shared
            .provision_evicts_after_ms
            .store(spared.as_millis() as u64, Ordering::Release);
        self
    }

    /// Sets how recently a vouched connection must have been returned to be handed out without
    /// a ping (instead of [`ALIVE_BYPASS`]; zero pings every idle connection).
    pub fn with_alive_bypass(self, window: Duration) -> Self {
        self.shared
            .alive_bypass_ms
            .store(window.as_millis() as u64, Ordering::Release);
        self
    }

    /// Sets how many provisionings may hold connections at once (at least 1)
    /// (`bot_database.provision_concurrency`).
    ///
    /// Meant right after [`Self::new`]: lowering it while turns are out lowers it only by the
    /// turns that are free at that moment.
    pub fn with_provision_concurrency(self, turns: u32) -> Self {
        let turns = turns.max(1) as usize;
        let old = self.shared.turn_limit.swap(turns, Ordering::AcqRel);
        if turns > old {
            self.shared.turns.add_permits(turns - old);
        } else {
            let forgotten = self.shared.turns.forget_permits(old - turns);
            self.shared
                .turn_limit
                .fetch_add(old - turns - forgotten, Ordering::AcqRel);
        }
        self
    }

    /// A handle for one bot database; opens nothing until its first acquire.
    ///
    /// At most `max_connections` (at least 1) of its connections are in use at once.
    pub fn database(&self, options: PgConnectOptions, max_connections: u32) -> BotPool {
        let max = max_connections.max(1) as usize;
        BotPool {
            shared: Arc::clone(&self.shared),
            db: Arc::new(Database {
                url: describe(&options),
                options,
                in_use: Arc::new(Semaphore::new(max)),
                max,
                held: AtomicUsize::new(0),
                open: AtomicUsize::new(0),
                pending: AtomicUsize::new(0),
                returned: Notify::new(),
                closed: AtomicBool::new(false),
                warm: AtomicBool::new(false),
            }),
        }
    }

    /// Waits for a provisioning's turn to acquire connections (with
    /// [`BotPool::acquire_for_provisioning`]).
    ///
    /// At most `provision_concurrency` turns are out at once; they are handed out in arrival
    /// order. There is no deadline: a provisioning waits for its turn however long the queue
    /// (drop the future to give up); its acquires are bounded by the acquire timeout as usual.
    pub async fn provision_turn(&self) -> Result<ProvisionTurn, BudgetError> {
        let _queued = Counted::new(&self.shared.turns_queued);
        match Arc::clone(&self.shared.turns).acquire_owned().await {
            Ok(permit) => Ok(ProvisionTurn { _permit: permit }),
            // The turn semaphore is never closed; treat it like a closed pool all the same.
            Err(_) => Err(BudgetError::Closed),
        }
    }

    /// Waits for a check turn: the turn of a bot start's quick check that its database exists
    /// and is migrated (one connection, one query), acquired like a provisioning with
    /// [`BotPool::acquire_for_provisioning`] — running bots first — but not behind the
    /// `provision_concurrency` turns of the slow work (creating and migrating). Half as many
    /// check turns are out at once as the budget has connections (the connections they keep
    /// for their bots' first reads never take the whole budget), so a cold start of many bots
    /// checks them that many at a time while a queue of new databases waits for its turns
    /// (counted in [`BudgetStats::provisions_queued`] while waiting).
    pub async fn check_turn(&self) -> Result<ProvisionTurn, BudgetError> {
        let _queued = Counted::new(&self.shared.turns_queued);
        match Arc::clone(&self.shared.checks).acquire_owned().await {
            Ok(permit) => Ok(ProvisionTurn { _permit: permit }),
            Err(_) => Err(BudgetError::Closed),
        }
    }

    /// Connections currently open (connecting, in use, idle or closing) across all databases.
    pub fn open_connections(&self) -> usize {
        self.shared.lock().open
    }

    /// A snapshot of the budget's counters.
    pub fn stats(&self) -> BudgetStats {
        let state = self.shared.lock();
        BudgetStats {
            budget: self.shared.budget,
            open: state.open,
            idle: state.idle.len(),
            running_waiting: self.shared.running_waiting.load(Ordering::Acquire),
            provisioning_waiting: self.shared.provisioning_waiting.load(Ordering::Acquire),
            provisions_queued: self.shared.turns_queued.load(Ordering::Acquire),
        }
    }

    /// Closes the idle connections that were idle longer than the idle timeout; returns how
    /// many it closed.
    pub async fn reap_idle(&self) -> usize {
        let now = Instant::now();
        let expired: Vec<Live> = {
            let mut state = self.shared.lock();
            let mut expired = Vec::new();
            // The list is ordered by return time, so the expired ones are at the front.
            while state
                .idle
                .front()
                .is_some_and(|l| now.duration_since(l.returned_at) >= self.shared.idle_timeout)
            {
                expired.extend(state.idle.pop_front());
            }
            expired
        };
        close_all(expired).await
    }

    /// Runs [`Self::reap_idle`] every `idle_timeout / 2` (at least every second) until
    /// `shutdown` is cancelled, then closes every idle connection.
    pub async fn run(self, shutdown: CancellationToken) {
        let period = (self.shared.idle_timeout / 2).clamp(MIN_REAP_PERIOD, MAX_REAP_PERIOD);
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticks.tick() => {
                    let closed = self.reap_idle().await;
                    if self.shared.reports_metrics.load(Ordering::Acquire) {
                        metrics::db_connections(self.open_connections(), self.shared.budget as u32);
                    }
                    if closed > 0 {
                        tracing::debug!(closed, open = self.open_connections(), "closed idle bot database connections");
                    }
                }
            }
        }
        let idle: Vec<Live> = self.shared.lock().idle.drain(..).collect();
        let closed = close_all(idle).await;
        tracing::debug!(closed, "closed idle bot database connections on shutdown");
    }
}

/// A provisioning's turn to acquire connections, from [`ConnectionBudget::provision_turn`];
/// the turn passes on when this is dropped.
#[derive(Debug)]
pub struct ProvisionTurn {
    _permit: OwnedSemaphorePermit,
}

/// A starting bot's hold on its database ([`BotPool::hold_start`]): while it lives, the
/// database's idle connection is spared from eviction (for at most [`KEPT_AT_MOST`] after
/// its return) and the bot's acquires take turns on one connection (one of its
/// `max_connections` permits is held), so the start's reads — the module jobs' first passes,
/// the intake's replay, the sender's first load — share the connection of the start's check
/// instead of each paying a connect (test `a_starting_bots_reads_share_one_connection`). A
/// run lets go after the sender's first load, and after [`KEPT_AT_MOST`] at the latest.
pub struct StartHold {
    shared: Arc<Shared>,
    db: Arc<Database>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl fmt::Debug for StartHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartHold")
            .field("url", &self.db.url)
            .finish()
    }
}

impl Drop for StartHold {
    fn drop(&mut self) {
        self.db.held.fetch_sub(1, Ordering::AcqRel);
        // Its idle connection may be evicted now: waiters look again.
        let state = self.shared.lock();
        self.shared.wake(state);
    }
}

/// Who asks for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// A running bot: served first.
    Running,
    /// A provisioning holding a [`ProvisionTurn`]: served when no running bot waits.
    Provisioning,
}

/// One bot database's handle on the budget. Cheap to clone.
#[derive(Clone)]
pub struct BotPool {
    shared: Arc<Shared>,
    db: Arc<Database>,
}

/// A database's part of the state that needs no lock.
struct Database {
    /// Masked URL, for errors and logs.
    url: String,
    options: PgConnectOptions,
    /// `max_connections` permits; a [`BudgetConn`] holds one.
    in_use: Arc<Semaphore>,
    /// This database's open connections.
    open: AtomicUsize,
    /// Acquires of this database under way (waiting for a permit, a slot or an idle
    /// connection): while there are any, its idle connections are kept for them, not evicted.
    pending: AtomicUsize,
    /// Wakes this database's waiters when one of its connections is returned while
    /// acquires are under way, or when the pool is closed.
    returned: Notify,
    /// Set (under the state lock) by [`BotPool::close`].
    closed: AtomicBool,
    /// Its `max_connections`.
    max: usize,
    /// Live [`StartHold`]s: while there are any, its idle connections are spared.
    held: AtomicUsize,
    /// Set by [`BotPool::mark_warm`]: the bot handles traffic, so its returned connections are
    /// spared from provisionings for [`PROVISION_EVICTS_AFTER_IDLE`].
    warm: AtomicBool,
}

impl fmt::Debug for BotPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BotPool")
            .field("url", &self.db.url)
            .field("open", &self.open_connections())
            .finish()
    }
}

/// What a claim on the budget yielded.
enum Claim {
    /// An idle connection of this database.
    Idle(Live),
    /// A slot to connect with.
    Slot(Slot),
    /// An idle connection of another database, to close for its slot.
    Evict(Live),
}

impl BotPool {
    /// Acquires a connection to this database within the acquire timeout, as a running bot.
    ///
    /// Fails with [`BudgetError::Timeout`] when no connection became available in time (test
    /// `acquire_times_out_when_the_budget_is_held`), [`BudgetError::Connect`] when connecting
    /// failed, [`BudgetError::Closed`] after [`Self::close`].
    pub async fn acquire(&self) -> Result<BudgetConn, BudgetError> {
        self.acquire_as(Class::Running).await
    }

    /// Acquires a connection for provisioning (creating or migrating a database) within the
    /// acquire timeout: served only while no running bot waits for the budget, and evicting a
    /// connection a running bot used only once it has been idle for at least
    /// [`PROVISION_EVICTS_AFTER_IDLE`].
    ///
    /// Fails like [`Self::acquire`].
    pub async fn acquire_for_provisioning(
        &self,
        _turn: &ProvisionTurn,
    ) -> Result<BudgetConn, BudgetError> {
        self.acquire_as(Class::Provisioning).await
    }

    /// Holds this database for a bot's start ([`StartHold`]); drop the hold once the start's
    /// reads are done.
    pub fn hold_start(&self) -> StartHold {
        self.db.held.fetch_add(1, Ordering::AcqRel);
        // With one permit only, holding it would leave the bot none.
        let permit = (self.db.max > 1)
            .then(|| Arc::clone(&self.db.in_use).try_acquire_owned().ok())
            .flatten();
        StartHold {
            shared: Arc::clone(&self.shared),
            db: Arc::clone(&self.db),
            _permit: permit,
        }
    }

    /// Marks the bot as handling traffic (its unit of work calls this): from now on a
    /// connection it returns is likely needed again for its next message, so a provisioning
    /// evicts it only after [`PROVISION_EVICTS_AFTER_IDLE`]. Before, its connections (a start's
    /// reads) may be evicted at once.
    pub fn mark_warm(&self) {
        self.db.warm.store(true, Ordering::Relaxed);
    }

    /// Closes this database's idle connections; later acquires fail with
    /// [`BudgetError::Closed`] and connections in use are closed when they are returned
    /// (test `close_refuses_acquires_and_closes_returned_connections`).
    pub async fn close(&self) {
        let idle: Vec<Live> = {
            let mut state = self.shared.lock();
            self.db.closed.store(true, Ordering::Release);
            let mut mine = Vec::new();
            for live in std::mem::take(&mut state.idle) {
                if Arc::ptr_eq(&live.db.0, &self.db) {
                    mine.push(live);
                } else {
                    state.idle.push_back(live);
                }
            }
            mine
        };
        self.db.in_use.close();
        // Waiters of this database re-check and fail with Closed; the freed slots wake others.
        self.db.returned.notify_waiters();
        close_all(idle).await;
    }

    /// This database's open connections (in use, idle or being closed).
    pub fn open_connections(&self) -> usize {
        self.db.open.load(Ordering::Acquire)
    }

    async fn acquire_as(&self, class: Class) -> Result<BudgetConn, BudgetError> {
        let started = Instant::now();
        let acquired = self.acquire_within(class).await;
        metrics::db_acquire_waited(started.elapsed());
        acquired
    }

    async fn acquire_within(&self, class: Class) -> Result<BudgetConn, BudgetError> {
        let deadline = Instant::now() + self.shared.acquire_timeout;
        if self.db.closed.load(Ordering::Acquire) {
            return Err(BudgetError::Closed);
        }
        let _pending = Pending::start(self);
        let permit = match timeout_at(deadline, Arc::clone(&self.db.in_use).acquire_owned()).await {
            Err(_) => return Err(self.timeout()),
            Ok(Err(_)) => return Err(BudgetError::Closed),
            Ok(Ok(permit)) => permit,
        };
        let slot = match self.claim(class, deadline).await? {
            Claim::Slot(slot) => slot,
            Claim::Evict(live) => {
                tracing::debug!(
                    evicted = %live.db.url,
                    for_db = %self.db.url,
                    ?class,
                    "evicting an idle connection"
                );
                live.close().await
            }
            Claim::Idle(live)
                if live.vouched && live.returned_at.elapsed() < self.alive_bypass() =>
            {
                return Ok(self.wrap(live, permit, class));
            }
            Claim::Idle(live) => match self.check(live, deadline).await {
                Ok(live) => return Ok(self.wrap(live, permit, class)),
                Err(slot) => slot,
            },
        };
        self.connect(slot, deadline)
            .await
            .map(|live| self.wrap(live, permit, class))
    }

    fn alive_bypass(&self) -> Duration {
        Duration::from_millis(self.shared.alive_bypass_ms.load(Ordering::Acquire))
    }

    fn timeout(&self) -> BudgetError {
        BudgetError::Timeout {
            url: self.db.url.clone(),
            timeout: self.shared.acquire_timeout,
        }
    }

    fn wrap(&self, mut live: Live, permit: OwnedSemaphorePermit, class: Class) -> BudgetConn {
        live.running = class == Class::Running && self.db.warm.load(Ordering::Relaxed);
        live.kept = false;
        live.vouched = false;
        BudgetConn {
            live: Some(live),
            shared: Arc::clone(&self.shared),
            _permit: permit,
        }
    }

    /// Checks an idle connection with a ping before it is handed out: returns it alive, or
    /// drops it and returns its slot for a fresh connect.
    ///
    /// The ping also flushes a ROLLBACK queued by a dropped `Transaction` (test
    /// `failed_transaction_is_not_reused_broken`).
    async fn check(&self, mut live: Live, deadline: Instant) -> Result<Live, Slot> {
        let limit = deadline.min(Instant::now() + PING_TIMEOUT);
        let error = match timeout_at(limit, live.conn.ping()).await {
            Ok(Ok(())) => return Ok(live),
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {PING_TIMEOUT:?}"),
        };
        tracing::debug!(
            url = %self.db.url,
            %error,
            idle = ?live.returned_at.elapsed(),
            "replacing an idle connection that failed its ping"
        );
        Err(live.into_slot())
    }

    /// Steps 2–5 of an acquire: an idle connection of ours, a free slot, a victim, or a wait.
    async fn claim(&self, class: Class, deadline: Instant) -> Result<Claim, BudgetError> {
        // Counts this acquire among the waiters from its first wait until it returns.
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            // Registered before the state is inspected, so a change made after the inspection
            // wakes this waiter (or one before it) instead of being lost.
            let woken = match class {
                Class::Running => self.shared.running.notified(),
                Class::Provisioning => self.shared.provisioning.notified(),
            };
            let returned = self.db.returned.notified();
            let (mut woken, mut returned) = (std::pin::pin!(woken), std::pin::pin!(returned));
            woken.as_mut().enable();
            returned.as_mut().enable();
            let mut recheck_at = deadline;
            {
                let mut state = self.shared.lock();
                if self.db.closed.load(Ordering::Acquire) {
                    return Err(BudgetError::Closed);
                }
                let mine = state
                    .idle
                    .iter()
                    .rposition(|l| Arc::ptr_eq(&l.db.0, &self.db));
                if let Some(live) = mine.and_then(|i| state.idle.remove(i)) {
                    return Ok(Claim::Idle(live));
                }
                let served = class == Class::Running
                    || self.shared.running_waiting.load(Ordering::Acquire) == 0;
                if served {
                    if state.open < self.shared.budget {
                        state.open += 1;
                        return Ok(Claim::Slot(Slot {
                            shared: Arc::downgrade(&self.shared),
                        }));
                    }
                    let now = Instant::now();
                    let spared = Duration::from_millis(
                        self.shared
                            .provision_evicts_after_ms
                            .load(Ordering::Acquire),
                    );
                    let victim = state.idle.iter().position(|l| {
                        if l.db.pending.load(Ordering::Acquire) > 0 {
                            return false;
                        }
                        if l.kept || l.db.held.load(Ordering::Acquire) > 0 {
                            let until = l.returned_at + KEPT_AT_MOST;
                            if until > now {
                                recheck_at = recheck_at.min(until);
                                return false;
                            }
                        }
                        match class {
                            Class::Running => true,
                            Class::Provisioning if !l.running => true,
                            Class::Provisioning => {
                                let ripe = l.returned_at + spared;
                                recheck_at = recheck_at.min(ripe);
                                ripe <= now
                            }
                        }
                    });
                    if let Some(victim) = victim.and_then(|i| state.idle.remove(i)) {
                        return Ok(Claim::Evict(victim));
                    }
                }
                if Instant::now() >= deadline {
                    return Err(self.timeout());
                }
                if waiting.is_none() {
                    waiting = Some(Waiting::start(&self.shared, class));
                }
            }
            tokio::select! {
                () = woken => {}
                () = returned => {}
                () = sleep_until(recheck_at) => {}
            }
        }
    }

    /// Opens a connection with `slot`, bounded by the acquire deadline.
    async fn connect(&self, slot: Slot, deadline: Instant) -> Result<Live, BudgetError> {
        let connect_error = |source| BudgetError::Connect {
            url: self.db.url.clone(),
            source,
        };
        let conn = match timeout_at(deadline, self.db.options.connect()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(source)) => return Err(connect_error(source)),
            Err(_) => {
                return Err(connect_error(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connecting did not finish within the acquire timeout",
                ))));
            }
        };
        self.db.open.fetch_add(1, Ordering::AcqRel);
        Ok(Live {
            conn,
            db: DbCount(Arc::clone(&self.db)),
            slot,
            returned_at: Instant::now(),
            running: false,
            kept: false,
            vouched: false,
        })
    }
}

/// Counts one acquire of a database as under way while it lives; when the last one ends and
/// the database has idle connections, waiters are woken, since those may now be evicted.
struct Pending<'a> {
    pool: &'a BotPool,
}

impl<'a> Pending<'a> {
    fn start(pool: &'a BotPool) -> Self {
        pool.db.pending.fetch_add(1, Ordering::AcqRel);
        Self { pool }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.pool.db.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let state = self.pool.shared.lock();
            if state
                .idle
                .iter()
                .any(|l| Arc::ptr_eq(&l.db.0, &self.pool.db))
            {
                self.pool.shared.wake(state);
            }
        }
    }
}

/// Counts one acquire among the waiters of its class while it lives. Started under the state
/// lock; when the last running waiter leaves, the provisioning waiters re-check, as wake-ups
/// went to running waiters while there were any.
struct Waiting<'a> {
    shared: &'a Shared,
    class: Class,
}

impl<'a> Waiting<'a> {
    fn start(shared: &'a Shared, class: Class) -> Self {
        let waiting = Self { shared, class };
        waiting.counter().fetch_add(1, Ordering::AcqRel);
        waiting
    }

    fn counter(&self) -> &AtomicUsize {
        match self.class {
            Class::Running => &self.shared.running_waiting,
            Class::Provisioning => &self.shared.provisioning_waiting,
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let last = self.counter().fetch_sub(1, Ordering::AcqRel) == 1;
        if last && self.class == Class::Running {
            self.shared.provisioning.notify_waiters();
        }
    }
}

/// Counts itself in a counter while it lives.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One slot of the budget; freeing it (on drop) wakes a waiter.
///
/// Holds a `Weak` so that idle connections stored in the state do not keep it alive.
struct Slot {
    shared: Weak<Shared>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            let mut state = shared.lock();
            state.open -= 1;
            shared.wake(state);
        }
    }
}

/// Counts one open connection of a database while it lives.
struct DbCount(Arc<Database>);

impl Drop for DbCount {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Deref for DbCount {
    type Target = Database;
    fn deref(&self) -> &Database {
        &self.0
    }
}

/// An open connection with its slot. Fields drop in order: the socket closes before the
/// counts go down.
struct Live {
    conn: PgConnection,
    db: DbCount,
    slot: Slot,
    /// When it was last returned (or opened).
    returned_at: Instant,
    /// Last used by a running bot that handles traffic (not by a provisioning, nor by a start's
    /// reads), so a provisioning evicts it only after [`PROVISION_EVICTS_AFTER_IDLE`].
    running: bool,
    /// Kept for its database's next acquire: evicted by nobody for [`KEPT_AT_MOST`] after
    /// its return ([`BudgetConn::keep_for_next_acquire`]).
    kept: bool,
    /// Its last holder's statements succeeded ([`BudgetConn::vouch`]): handed out again
    /// without a ping if returned less than [`ALIVE_BYPASS`] ago.
    vouched: bool,
}

impl Live {
    /// Closes the connection gracefully and keeps its slot.
    async fn close(self) -> Slot {
        let Live { conn, db, slot, .. } = self;
        // Terminate, bounded; on timeout the future (and the socket) is dropped.
        let _ = timeout(CLOSE_TIMEOUT, conn.close()).await;
        drop(db);
        slot
    }

    /// Drops the connection (its socket closes) and keeps its slot.
    fn into_slot(self) -> Slot {
        let Live { conn, db, slot, .. } = self;
        drop(conn);
        drop(db);
        slot
    }
}

/// Closes `lives` concurrently, freeing their slots; returns how many.
async fn close_all(lives: Vec<Live>) -> usize {
    let n = lives.len();
    futures::future::join_all(lives.into_iter().map(Live::close)).await;
    n
}

/// A connection acquired from a [`BotPool`]; returns to the pool's idle list when dropped.
///
/// Derefs to [`PgConnection`], so `conn.begin()` and `sqlx::query(..).execute(&mut *conn)`
/// work. A connection dropped while a transaction is still open is closed; one whose dropped
/// `Transaction` queued a ROLLBACK is flushed by the ping that checks it before reuse (test
/// `failed_transaction_is_not_reused_broken`).
pub struct BudgetConn {
    live: Option<Live>,
    shared: Arc<Shared>,
    /// The database's `max_connections` permit; dropped after the connection is back on the
    /// idle list, so a waiter of the same database finds it there.
    _permit: OwnedSemaphorePermit,
}

impl fmt::Debug for BudgetConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetConn")
            .field("url", &self.live.as_ref().map(|l| l.db.url.as_str()))
            .finish()
    }
}

impl BudgetConn {
    /// Closes the connection instead of returning it to the idle list; use it after an error
    /// that may have broken the connection.
    pub fn discard(mut self) {
        drop(self.live.take());
    }

    /// Keeps the connection, once returned, for its database's next acquire: no acquire
    /// evicts it for [`KEPT_AT_MOST`] unless its own database's takes it first. For the
    /// connection of a start's check ([`crate::botdb::BotDbTarget::provision_within`]), so
    /// the bot's first reads find it — in a cold start of many bots, every idle connection
    /// is otherwise evicted within moments by the next bot's check.
    pub fn keep_for_next_acquire(&mut self) {
        if let Some(live) = self.live.as_mut() {
            live.running = true;
            live.kept = true;
        }
    }

    /// Says that this holder's statements succeeded and left no transaction open: if the
    /// connection is acquired again within [`ALIVE_BYPASS`] of its return, it is handed out
    /// without the ping (test `a_vouched_connection_skips_the_ping_and_is_checked_after_a_failure`).
    /// Call it after the last statement; a holder that did not vouch gets its connection
    /// checked, so one that failed is replaced on the next acquire.
    pub fn vouch(&mut self) {
        if let Some(live) = self.live.as_mut() {
            live.vouched = !live.conn.is_in_transaction();
        }
    }

    fn live(&self) -> &Live {
        self.live
            .as_ref()
            .expect("a BudgetConn holds its connection until dropped")
    }
}

impl Deref for BudgetConn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.live().conn
    }
}

impl DerefMut for BudgetConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self
            .live
            .as_mut()
            .expect("a BudgetConn holds its connection until dropped")
            .conn
    }
}

impl Drop for BudgetConn {
    /// Returns the connection to its database's idle list, or closes it.
    ///
    /// A returned connection wakes its own database's waiters when that database has
    /// acquires under way (they are served from it), and the budget's waiters otherwise.
    ///
    /// A drop cannot await a graceful close, so a connection that must not be reused (pool
    /// closed, transaction still open) is dropped: its socket closes at once and the server
    /// ends the session on the EOF as it would on Terminate (logging at DEBUG1 only, outside a
    /// transaction). Its slot is freed at the same moment. Handing it to a background closer
    /// instead would keep a slot occupied by a connection nobody can use and would depend on a
    /// task that may not be running.
    fn drop(&mut self) {
        let Some(mut live) = self.live.take() else {
            return;
        };
        let mut state = self.shared.lock();
        if live.db.closed.load(Ordering::Acquire) || live.conn.is_in_transaction() {
            drop(state);
            // Dropped outside the lock; its slot wakes a waiter.
            drop(live);
            return;
        }
        let db = Arc::clone(&live.db.0);
        live.returned_at = Instant::now();
        state.idle.push_back(live);
        if db.pending.load(Ordering::Acquire) > 0 {
            drop(state);
            db.returned.notify_one();
        } else {
            self.shared.wake(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_error(source: sqlx::Error) -> BudgetError {
        BudgetError::Connect {
            url: "postgres://u@h:5432/d".into(),
            source,
        }
    }

    #[test]
    fn transient_errors_are_classified_from_types() {
        let cases = [
            (
                BudgetError::Timeout {
                    url: String::new(),
                    timeout: Duration::from_secs(1),
                },
                true,
            ),
            (BudgetError::Closed, false),
            (
                connect_error(sqlx::Error::Io(
                    std::io::ErrorKind::ConnectionRefused.into(),
                )),
                true,
            ),
            (
                connect_error(sqlx::Error::Configuration("bad option".into())),
                false,
            ),
        ];
        for (error, transient) in cases {
            assert_eq!(error.is_transient(), transient, "{error}");
        }
    }

    #[test]
    fn the_default_provision_concurrency_matches_the_settings() {
        let settings = crate::settings::BotDatabaseSettings::default();
        assert_eq!(
            settings.provision_concurrency,
            DEFAULT_PROVISION_CONCURRENCY
        );
    }

    #[tokio::test]
    async fn a_database_handle_opens_nothing() {
        let budget = ConnectionBudget::new(2, Duration::from_secs(1), Duration::from_secs(1));
        let pool = budget.database("postgres://u@127.0.0.1:1/x".parse().unwrap(), 2);
        assert_eq!((budget.open_connections(), pool.open_connections()), (0, 0));
        assert_eq!(budget.reap_idle().await, 0);
    }
}
