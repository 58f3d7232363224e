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
