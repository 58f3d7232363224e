//! The global connection budget against a real PostgreSQL: the cap holds under load across
//! many databases, idle connections are reaped to zero, eviction, timeouts, close, connect
//! failures and failed transactions.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use botvisor::botdb::budget::{BotPool, BudgetError, ConnectionBudget};
use botvisor::tasks::Tasks;
use common::{TestDb, eventually, server_url};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use sqlx::{Connection, Executor};
use tokio_util::sync::CancellationToken;

/// A generous deadline for conditions polled with `eventually`.
const DEADLINE: Duration = Duration::from_secs(20);

/// Creates `count` databases `{db.name}_b{i}` and returns their names.
async fn create_databases(db: &TestDb, count: usize) -> Vec<String> {
    let mut admin = PgConnection::connect(&db.url).await.unwrap();
    let mut names = Vec::new();
    for i in 0..count {
        let name = format!("{}_b{i}", db.name);
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .await
            .unwrap();
        names.push(name);
    }
    admin.close().await.unwrap();
    names
}

/// Options for database `name` on the test server, without TLS: the local server accepts
/// TLS, and a rustls handshake in a debug build costs ≈ 90 ms per connect (≈ 10 ms without),
/// which would dominate the churn these tests cause.
fn options(name: &str) -> PgConnectOptions {
    format!("{}/{name}", server_url())
        .parse::<PgConnectOptions>()
        .unwrap()
        .ssl_mode(PgSslMode::Disable)
}

/// Server-side sessions on the databases `{db.name}_b*` (the test's own admin connections
/// use `{db.name}` itself, which the pattern does not match).
async fn server_sessions<'e>(admin: impl sqlx::PgExecutor<'e>, test_db: &str) -> i64 {
    let pattern = format!("{}\\_b%", test_db.replace('_', "\\_"));
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname LIKE $1")
        .bind(pattern)
        .fetch_one(admin)
        .await
        .unwrap()
}

/// Polls until the broker and the server both report no connection to the test's databases.
async fn assert_all_closed(budget: &ConnectionBudget, db: &TestDb) {
    let admin = db.pool().await;
    eventually(DEADLINE, "every connection closed", || async {
        let open = budget.open_connections();
        (open == 0 && server_sessions(&admin, &db.name).await == 0).then_some(())
    })
    .await;
    admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_databases_never_exceed_the_budget() {
    const DATABASES: usize = 40;
    const TASKS_PER_DATABASE: usize = 4;
    const BUDGET: usize = 8;
    let db = TestDb::create("budget40").await;
    let names = create_databases(&db, DATABASES).await;
    let budget = ConnectionBudget::new(
        BUDGET as u32,
        Duration::from_millis(300),
        Duration::from_secs(60),
    );
    let pools: Vec<BotPool> = names
        .iter()
        .map(|n| budget.database(options(n), 2))
        .collect();
    for pool in &pools {
        let mut conn = pool.acquire().await.unwrap();
        conn.execute("CREATE TABLE t (id serial PRIMARY KEY, task int NOT NULL)")
            .await
            .unwrap();
    }

    let stop = CancellationToken::new();
    let broker_peak = Arc::new(AtomicUsize::new(0));
    let per_db_peak = Arc::new(AtomicUsize::new(0));
    let broker_watcher = tokio::spawn({
        let (stop, budget, pools) = (stop.clone(), budget.clone(), pools.clone());
        let (broker_peak, per_db_peak) = (broker_peak.clone(), per_db_peak.clone());
        async move {
            while !stop.is_cancelled() {
                broker_peak.fetch_max(budget.open_connections(), Ordering::Relaxed);
                for pool in &pools {
                    per_db_peak.fetch_max(pool.open_connections(), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let mut admin = PgConnection::connect(&db.url).await.unwrap();
    let server_watcher = tokio::spawn({
        let (stop, name) = (stop.clone(), db.name.clone());
        async move {
            let (mut peak, mut samples) = (0, 0);
            while !stop.is_cancelled() {
                peak = peak.max(server_sessions(&mut admin, &name).await);
                samples += 1;
            }
            (peak, samples)
        }
    });

    let workers: Vec<_> = (0..DATABASES * TASKS_PER_DATABASE)
        .map(|task| {
            let pool = pools[task % DATABASES].clone();
            tokio::spawn(async move {
                let mut conn = pool.acquire().await?;
                sqlx::query("SELECT pg_sleep(0.01)")
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
                sqlx::query("INSERT INTO t (task) VALUES ($1)")
                    .bind(task as i32)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
                anyhow::Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap().unwrap();
    }
    stop.cancel();
    broker_watcher.await.unwrap();
    let (server_peak, samples) = server_watcher.await.unwrap();

    let broker_peak = broker_peak.load(Ordering::Relaxed);
    assert!(broker_peak <= BUDGET, "broker peak {broker_peak}");
    // The broker's count is exact. The server may list a backend for a moment after the
    // broker closed it (the process is still exiting when the replacement connects), so its
    // view is allowed one exiting backend on top of the budget.
    assert!(
        server_peak <= BUDGET as i64 + 1,
        "server peak {server_peak} over {samples} samples"
    );
    assert!(server_peak > 0 && samples > 0, "the watcher saw the load");
    assert!(per_db_peak.load(Ordering::Relaxed) <= 2);
    let mut rows = 0;
    for pool in &pools {
        let mut conn = pool.acquire().await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        rows += n;
    }
    assert_eq!(rows, (DATABASES * TASKS_PER_DATABASE) as i64);

    // Activity stopped: the reaper brings everything down to zero, so no slot leaked.
    let shutdown = CancellationToken::new();
    let tasks = Tasks::new(shutdown.clone());
    tasks.spawn("connection-budget", budget.clone().run(shutdown.clone()));
    assert_all_closed(&budget, &db).await;
    assert!(pools.iter().all(|p| p.open_connections() == 0));
    shutdown.cancel();
    assert!(tasks.wait(Duration::from_secs(5)).await.is_empty());
}

#[tokio::test]
async fn idle_connections_are_reaped_to_zero() {
    let db = TestDb::create("budget_idle").await;
    let names = create_databases(&db, 3).await;
    let budget = ConnectionBudget::new(4, Duration::from_millis(300), Duration::from_secs(10));
    let pools: Vec<BotPool> = names
        .iter()
        .map(|n| budget.database(options(n), 2))
        .collect();
    let shutdown = CancellationToken::new();
    let tasks = Tasks::new(shutdown.clone());
    tasks.spawn("connection-budget", budget.clone().run(shutdown.clone()));

    for pool in &pools {
        let mut conn = pool.acquire().await.unwrap();
        conn.execute("SELECT 1").await.unwrap();
    }
    let mut admin = PgConnection::connect(&db.url).await.unwrap();
    assert_eq!(budget.open_connections(), 3);
    assert_eq!(server_sessions(&mut admin, &db.name).await, 3);

    assert_all_closed(&budget, &db).await;
    assert!(pools.iter().all(|p| p.open_connections() == 0));
    shutdown.cancel();
    assert!(tasks.wait(Duration::from_secs(5)).await.is_empty());
}

#[tokio::test]
async fn eviction_serves_a_third_database_at_once() {
    let db = TestDb::create("budget_evict").await;
    let names = create_databases(&db, 3).await;
    // The idle timeout and the acquire timeout are far beyond the test's deadline: success
    // can only come from eviction.
    let budget = ConnectionBudget::new(2, Duration::from_secs(3600), Duration::from_secs(3600));
    let pools: Vec<BotPool> = names
        .iter()
        .map(|n| budget.database(options(n), 2))
        .collect();
    for pool in &pools[..2] {
        let mut conn = pool.acquire().await.unwrap();
        conn.execute("SELECT 1").await.unwrap();
    }
    assert_eq!(budget.open_connections(), 2);

    let mut conn = tokio::time::timeout(DEADLINE, pools[2].acquire())
        .await
        .expect("eviction, not the idle timeout")
        .unwrap();
    conn.execute("SELECT 1").await.unwrap();
    assert_eq!(budget.open_connections(), 2);
    // The least recently used one (database 0) was evicted.
    let open: Vec<usize> = pools.iter().map(BotPool::open_connections).collect();
    assert_eq!(open, [0, 1, 1]);
}

#[tokio::test]
async fn acquire_times_out_when_the_budget_is_held() {
    let db = TestDb::create("budget_timeout").await;
    let names = create_databases(&db, 2).await;
    let budget = ConnectionBudget::new(1, Duration::from_secs(3600), Duration::from_millis(300));
    let (a, b) = (
        budget.database(options(&names[0]), 1),
        budget.database(options(&names[1]), 1),
    );
    let held = a.acquire().await.unwrap();

    let error = b.acquire().await.unwrap_err();
    assert!(matches!(error, BudgetError::Timeout { .. }), "{error:?}");
    assert!(error.is_transient());
    // The database's own limit times out the same way.
    let error = a.acquire().await.unwrap_err();
    assert!(matches!(error, BudgetError::Timeout { .. }), "{error:?}");

    drop(held);
    b.acquire().await.unwrap();
    assert_eq!((a.open_connections(), b.open_connections()), (0, 1));
}

#[tokio::test]
async fn close_refuses_acquires_and_closes_returned_connections() {
    let db = TestDb::create("budget_close").await;
    let names = create_databases(&db, 1).await;
    let budget = ConnectionBudget::new(4, Duration::from_secs(3600), Duration::from_secs(10));
    let pool = budget.database(options(&names[0]), 2);
    let held = pool.acquire().await.unwrap();
    drop(pool.acquire().await.unwrap());
    assert_eq!(pool.open_connections(), 2);

    pool.close().await;
    assert_eq!(pool.open_connections(), 1, "the idle one is closed at once");
    let error = pool.acquire().await.unwrap_err();
    assert!(matches!(error, BudgetError::Closed), "{error:?}");
    assert!(!error.is_transient());

    drop(held);
    assert_eq!(pool.open_connections(), 0);
    assert_all_closed(&budget, &db).await;
}

#[tokio::test]
async fn connect_failure_is_transient_and_masked() {
    let budget = ConnectionBudget::new(2, Duration::from_secs(3600), Duration::from_secs(5));
    let options: PgConnectOptions = "postgres://bot:s3cret-pw@127.0.0.1:1/bot_db"
        .parse()
        .unwrap();
    let pool = budget.database(options, 2);

    let error = pool.acquire().await.unwrap_err();
    let BudgetError::Connect { url, .. } = &error else {
        panic!("expected Connect, got {error:?}");
    };
    assert_eq!(url, "postgres://bot@127.0.0.1:1/bot_db");
    assert!(error.is_transient());
    let chain = format!("{:#}", anyhow::Error::from(error));
    let debug = format!("{chain} {:?}", pool);
    assert!(!debug.contains("s3cret"), "{debug}");
    assert!(chain.contains("cannot connect to postgres://bot@127.0.0.1:1/bot_db"));
    assert_eq!(
        budget.open_connections(),
        0,
        "the failed connect freed its slot"
    );
}

#[tokio::test]
async fn failed_transaction_is_not_reused_broken() {
    let db = TestDb::create("budget_tx").await;
    let names = create_databases(&db, 1).await;
    let budget = ConnectionBudget::new(2, Duration::from_secs(3600), Duration::from_secs(10));
    let pool = budget.database(options(&names[0]), 1);

    let mut conn = pool.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let failed = sqlx::query("SELECT 1 / 0").execute(&mut *tx).await;
    assert!(failed.is_err());
    drop(tx);
    drop(conn);

    let mut conn = pool.acquire().await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    assert!(!conn.is_in_transaction());
    // The same connection was reused, flushed of its rollback.
    assert_eq!(pool.open_connections(), 1);

    // A discarded connection is closed, not reused.
    conn.discard();
    assert_eq!(pool.open_connections(), 0);
    assert_eq!(budget.open_connections(), 0);
}
