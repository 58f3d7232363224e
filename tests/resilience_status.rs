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
