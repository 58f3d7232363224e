//! The global connection budget: one cap on the connections the daemon holds to all bot
//! databases together, whatever the number of bots.
//!
//! sqlx's `PgPool` cannot enforce a cap across pools (an idle pooled connection stays open
//! after release), so [`ConnectionBudget`] brokers raw [`PgConnection`]s itself. Each bot gets
//! a [`BotPool`] from [`ConnectionBudget::database`]; [`BotPool::acquire`] hands out a
//! [`BudgetConn`] that goes back to the idle list when dropped.
//!
//! # How an acquire proceeds
//! Within one deadline (the acquire timeout):
//! 1. take a permit of the database's own semaphore (`max_connections` in use at once);
//! 2. reuse the most recently returned idle connection of the same database (pinging it first
//!    when it was idle longer than [`PING_AFTER_IDLE`] or was returned with a queued rollback;
//!    a failed ping closes it and its slot is used to connect afresh);
//! 3. else take a free slot of the budget and connect;
//! 4. else evict the least recently used idle connection of another database (closed
//!    gracefully, outside the lock) and connect with its slot (test
//!    `eviction_serves_a_third_database_at_once`);
//! 5. else wait until a slot is freed or a connection is returned, then start over at step 2.
//!    Waiters are woken one at a time in arrival order (fair-ish: a newcomer can still take a
//!    slot first).
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
//! - The state lives behind one `std::sync::Mutex` held only for short, non-async sections;
//!   connecting, pinging and closing happen outside it.

use std::collections::VecDeque;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::schema::describe;

/// Idle time after which a connection is pinged before it is handed out again.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(5);

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
    /// Woken (one waiter at a time) when a slot is freed or a connection becomes idle.
    changed: Notify,
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
    /// Creates a budget of `budget` connections (at least 1).
    ///
    /// Idle connections are closed after `idle_timeout` (by [`Self::reap_idle`] or
    /// [`Self::run`]); an acquire, connecting included, fails after `acquire_timeout`.
    pub fn new(budget: u32, idle_timeout: Duration, acquire_timeout: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                budget: budget.max(1) as usize,
                idle_timeout,
                acquire_timeout,
                state: Mutex::new(State::default()),
                changed: Notify::new(),
            }),
        }
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
                open: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// Connections currently open (connecting, in use, idle or closing) across all databases.
    pub fn open_connections(&self) -> usize {
        self.shared.lock().open
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
    /// Set (under the state lock) by [`BotPool::close`].
    closed: AtomicBool,
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
    /// Acquires a connection to this database within the acquire timeout.
    ///
    /// Fails with [`BudgetError::Timeout`] when no connection became available in time (test
    /// `acquire_times_out_when_the_budget_is_held`), [`BudgetError::Connect`] when connecting
    /// failed, [`BudgetError::Closed`] after [`Self::close`].
    pub async fn acquire(&self) -> Result<BudgetConn, BudgetError> {
        let deadline = Instant::now() + self.shared.acquire_timeout;
        if self.db.closed.load(Ordering::Acquire) {
            return Err(BudgetError::Closed);
        }
        let permit = match timeout_at(deadline, Arc::clone(&self.db.in_use).acquire_owned()).await {
            Err(_) => return Err(self.timeout()),
            Ok(Err(_)) => return Err(BudgetError::Closed),
            Ok(Ok(permit)) => permit,
        };
        let slot = match self.claim(deadline).await? {
            Claim::Slot(slot) => slot,
            Claim::Evict(live) => {
                tracing::debug!(evicted = %live.db.url, for_db = %self.db.url, "evicting an idle connection");
                live.close().await
            }
            Claim::Idle(mut live) => {
                let stale = live.returned_at.elapsed() > PING_AFTER_IDLE;
                if !(stale || live.dirty) {
                    return Ok(self.wrap(live, permit));
                }
                match timeout_at(deadline, live.conn.ping()).await {
                    Ok(Ok(())) => {
                        live.dirty = false;
                        return Ok(self.wrap(live, permit));
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(url = %self.db.url, %error, "dropping a connection that failed its ping");
                        live.into_slot()
                    }
                    // Out of time; the connection may be mid-ping, so it is dropped.
                    Err(_) => return Err(self.timeout()),
                }
            }
        };
        self.connect(slot, deadline)
            .await
            .map(|live| self.wrap(live, permit))
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
        // Waiters of this database re-check and fail with Closed; the others wait again.
        self.shared.changed.notify_waiters();
        close_all(idle).await;
    }

    /// This database's open connections (in use, idle or being closed).
    pub fn open_connections(&self) -> usize {
        self.db.open.load(Ordering::Acquire)
    }

    fn timeout(&self) -> BudgetError {
        BudgetError::Timeout {
            url: self.db.url.clone(),
            timeout: self.shared.acquire_timeout,
        }
    }

    fn wrap(&self, live: Live, permit: OwnedSemaphorePermit) -> BudgetConn {
        BudgetConn {
            live: Some(live),
            shared: Arc::clone(&self.shared),
            _permit: permit,
        }
    }

    /// Steps 2–5 of an acquire: an idle connection of ours, a free slot, a victim, or a wait.
    async fn claim(&self, deadline: Instant) -> Result<Claim, BudgetError> {
        loop {
            // Registered before the state is inspected, so a change made after the inspection
            // wakes this waiter (or one before it) instead of being lost.
            let changed = self.shared.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
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
                if state.open < self.shared.budget {
                    state.open += 1;
                    return Ok(Claim::Slot(Slot {
                        shared: Arc::downgrade(&self.shared),
                    }));
                }
                if let Some(victim) = state.idle.pop_front() {
                    return Ok(Claim::Evict(victim));
                }
            }
            if timeout_at(deadline, changed).await.is_err() {
                return Err(self.timeout());
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
            dirty: false,
        })
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
            shared.lock().open -= 1;
            shared.changed.notify_one();
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
    /// Returned with output still queued (a dropped transaction's ROLLBACK): flush it with a
    /// ping before handing the connection out again.
    dirty: bool,
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
/// `Transaction` queued a ROLLBACK is flushed with a ping before it is reused (test
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
        let rejected = {
            let mut state = self.shared.lock();
            if live.db.closed.load(Ordering::Acquire) || live.conn.is_in_transaction() {
                Some(live)
            } else {
                // `should_flush` is doc(hidden) in sqlx 0.9 but public on `Connection`: it
                // tells that a dropped `Transaction` queued a ROLLBACK not yet sent.
                live.dirty = live.conn.should_flush();
                live.returned_at = Instant::now();
                state.idle.push_back(live);
                None
            }
        };
        match rejected {
            // Dropped outside the lock; its slot wakes a waiter.
            Some(live) => drop(live),
            None => self.shared.changed.notify_one(),
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

    #[tokio::test]
    async fn a_database_handle_opens_nothing() {
        let budget = ConnectionBudget::new(2, Duration::from_secs(1), Duration::from_secs(1));
        let pool = budget.database("postgres://u@127.0.0.1:1/x".parse().unwrap(), 2);
        assert_eq!((budget.open_connections(), pool.open_connections()), (0, 0));
        assert_eq!(budget.reap_idle().await, 0);
    }
}
