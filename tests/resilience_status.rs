//! `bot_status` tells what a bot does now (issue 13 item 3): a bot whose database refuses
//! connections is `degraded` with PostgreSQL's own words and since when, and `running` again
//! once the database is back.

mod common;

use botvisor::panel::store;
use common::harness::{DEADLINE, Harness};

async fn allow_connections(h: &Harness, database: &str, allow: bool) {
    let sql = format!("ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS {allow}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&h.pool)
        .await
        .unwrap();
    if !allow {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(database)
            .execute(&h.pool)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_database_degrades_the_bot() {
    let mut h = Harness::start(&[]).await;
    let (id, t) = h.add_bot("degrading", 913_201).await;
    h.wait_state(id, "running").await;
    h.say(&t, 11, "/start");
    h.reply(&t, 11, 0, |_| true).await;

    let database = h.bot_database(id);
    allow_connections(&h, &database, false).await;
    // An update must be stored: the listener now fails on every attempt.
    h.say(&t, 11, "/start");
    // The first failures may be the killed pooled connections ("broken pipe"); the detail
    // follows the cause and ends on PostgreSQL's refusal.
    let detail = common::eventually(DEADLINE, "degraded with PostgreSQL's reason", || async {
        store::get_status(&h.pool, id)
            .await
            .unwrap()
            .filter(|s| {
                s.state == "degraded" && s.detail.contains("is not currently accepting connections")
            })
            .map(|s| s.detail)
    })
    .await;
    assert!(detail.contains("since 20"), "no since in: {detail}");

    allow_connections(&h, &database, true).await;
    let detail = h.wait_state(id, "running").await;
    assert_eq!(detail, "");
    h.stop().await;
}

/// The owner writes each bot's traffic to `bot_status` every traffic interval (scaled to a
/// minute), and an idle bot's unchanged figures are not written again: what the web panel's
/// overview shows without opening any bot database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_writes_each_bots_traffic_to_its_status() {
    let mut h = Harness::start(&[("BOTVISOR__SUPERVISOR__TRAFFIC_INTERVAL_SECS", "2")]).await;
    let (id, t) = h.add_bot("busy", 913_301).await;
    h.wait_state(id, "running").await;
    for chat in 1..=3 {
        h.say(&t, chat, "/start");
    }
    for chat in 1..=3 {
        h.reply(&t, chat, 0, |_| true).await;
    }
    // Three updates and three replies in one 2 s interval (or split over two): 90 per minute
    // when they fall in one interval, less per interval otherwise — never zero in all.
    let (updates, sent) = common::eventually(DEADLINE, "traffic written", || async {
        let s = store::get_status(&h.pool, id).await.unwrap()?;
        let traffic = (s.updates_per_min?, s.sent_per_min?);
        s.traffic_at?;
        (traffic.0 > 0 && traffic.1 > 0).then_some(traffic)
    })
    .await;
    assert!(
        updates <= 90 && sent <= 90,
        "{updates}/{sent} per minute from 3 updates"
    );
    // Idle again: the figures drop to zero once, then stay unwritten.
    let idle_at = common::eventually(DEADLINE, "idle traffic written", || async {
        let s = store::get_status(&h.pool, id).await.unwrap()?;
        (s.updates_per_min == Some(0) && s.sent_per_min == Some(0)).then_some(s.traffic_at?)
    })
    .await;
    // Two more intervals pass (the bot's status heartbeat of the test: wait for the daemon's
    // instance row to beat twice past them) without a new write.
    let beat = |h: &Harness| {
        let pool = h.pool.clone();
        async move {
            sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
                "SELECT max(heartbeat_at) FROM instances",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    common::eventually(DEADLINE, "two intervals after the idle write", || async {
        (beat(&h).await > idle_at + chrono::TimeDelta::seconds(5)).then_some(())
    })
    .await;
    let s = store::get_status(&h.pool, id).await.unwrap().unwrap();
    assert_eq!(
        s.traffic_at,
        Some(idle_at),
        "unchanged idle figures were written again"
    );
    h.stop().await;
}

/// A panel database with `n` disabled bots (ids returned) and a pool of `max` connections
/// whose statements time out after `timeout_ms`.
async fn status_panel(
    n: u64,
    max: u32,
    timeout_ms: u32,
) -> (common::TestDb, sqlx::PgPool, Vec<i64>) {
    use botvisor::panel::store::NewBot;
    let panel = common::TestDb::create("bvt_status").await;
    botvisor::schema::apply(&botvisor::schema::PANEL, &panel.url.parse().unwrap())
        .await
        .unwrap();
    let setup = panel.pool().await;
    let mut ids = Vec::new();
    for i in 0..n {
        let token = botvisor::token::BotToken::parse(&common::token(920_000 + i)).unwrap();
        let manifest = botvisor::content::manifest::Manifest::default();
        let bot = NewBot {
            name: &format!("status{i}"),
            token: &token,
            enabled: false,
            database: None,
            manifest: &manifest,
        };
        ids.push(store::add_bot(&setup, &panel.keys(), &bot).await.unwrap());
    }
    setup.close().await;
    let options: sqlx::postgres::PgConnectOptions = panel.url.parse().unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options.options([("statement_timeout", timeout_ms.to_string())]))
        .await
        .unwrap();
    (panel, pool, ids)
}

async fn states(pool: &sqlx::PgPool) -> std::collections::BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("SELECT state, count(*) FROM bot_status GROUP BY state")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// A cold start of many bots writes two states each within moments: they go out batched
/// (a statement per write timed out on the panel pool, and bots ran shown `starting`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_writes_of_many_bots_at_once_are_all_written() {
    use botvisor::control::status::{BotState, StatusBatch, StatusReporter};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let (_panel, pool, ids) = status_panel(400, 1, 10_000).await;
    let tasks = botvisor::tasks::Tasks::new(tokio_util::sync::CancellationToken::new());
    let batch = StatusBatch::new(pool.clone(), "test".into(), tasks);
    let writes = ids.iter().map(|&id| {
        let reporter = StatusReporter::new(Arc::clone(&batch), id, Arc::new(AtomicBool::new(true)));
        async move {
            reporter.set(BotState::Starting, "", None, true).await;
            reporter
                .set(BotState::Running, "", Some("status_bot"), false)
                .await;
        }
    });
    futures::future::join_all(writes).await;
    assert_eq!(states(&pool).await, [("running".to_string(), 400)].into());
    let started: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM bot_status WHERE started_at IS NOT NULL \
         AND telegram_username = 'status_bot'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(started, 400, "each row has its run's start and username");
}

/// A state write that fails (the panel is locked, or away) is written again later, without
/// another change of the bot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_status_write_is_written_later() {
    use botvisor::control::status::{BotState, StatusBatch, StatusReporter};
    use sqlx::Connection;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let (panel, pool, ids) = status_panel(2, 2, 300).await;
    let tasks = botvisor::tasks::Tasks::new(tokio_util::sync::CancellationToken::new());
    let batch = StatusBatch::new(pool.clone(), "test".into(), tasks);
    let reporter =
        |id| StatusReporter::new(Arc::clone(&batch), id, Arc::new(AtomicBool::new(true)));
    reporter(ids[0])
        .set(BotState::Starting, "", None, true)
        .await;

    let mut conn = sqlx::PgConnection::connect(&panel.url).await.unwrap();
    let mut lock = conn.begin().await.unwrap();
    sqlx::query("LOCK TABLE bot_status IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    // Both writes fail behind the lock (statement timeout): they are kept.
    reporter(ids[0])
        .set(BotState::Running, "", None, false)
        .await;
    reporter(ids[1])
        .set(BotState::Failed, "no database", None, true)
        .await;
    lock.rollback().await.unwrap();
    conn.close().await.unwrap();

    common::eventually(DEADLINE, "both states written by the retry", || async {
        let s = states(&pool).await;
        (s == [("running".to_string(), 1), ("failed".to_string(), 1)].into()).then_some(())
    })
    .await;
    let detail: String = sqlx::query_scalar("SELECT detail FROM bot_status WHERE bot_id = $1")
        .bind(ids[1])
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(detail, "no database");
}
