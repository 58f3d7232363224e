//! Faults on the PostgreSQL side that the engine must ride out: every session of the bot's
//! database and the daemon's panel sessions killed mid-traffic (what a server restart does to
//! them), and a storm of notifications.

mod common;

use common::eventually;
use common::harness::{DEADLINE, Harness};

/// The default answer to `/help` (the bots here have no texts).
const HELP: &str = "Send /start to begin.";

/// Ends every session of `database` but this test's own, as a server restart would.
async fn kill_sessions(h: &Harness, database: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid() \
         AND (application_name LIKE 'botvisor%' OR datname <> current_database())",
    )
    .bind(database)
    .fetch_one(&h.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_killed_mid_traffic_lose_nothing() {
    const CHATS: i64 = 40;
    let mut h = Harness::start(&[]).await;
    let (id, t) = h.add_bot("restart", 6101).await;
    h.wait_state(id, "running").await;
    let bot_db = h.bot_database(id);
    let panel_db = h.panel.name.clone();
    for chat in 1..=CHATS {
        h.say(&t, chat, "/help");
        if chat % 10 == 0 {
            // Kill the bot database's sessions and the daemon's panel sessions, twice over the
            // traffic, while updates are being stored, handled and answered.
            let killed = kill_sessions(&h, &bot_db).await + kill_sessions(&h, &panel_db).await;
            eprintln!("after chat {chat}: {killed} sessions killed");
        }
    }
    for chat in 1..=CHATS {
        h.reply(&t, chat, 0, |s| s == HELP).await;
    }
    let pool = h.bot_pool(id).await;
    eventually(DEADLINE, "every update processed once", || async {
        let (rows, done): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(processed_at) FROM inbox")
                .fetch_one(&pool)
                .await
                .unwrap();
        (rows == CHATS && done == CHATS).then_some(())
    })
    .await;
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE role = 'user'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(users, CHATS, "a message was handled twice or not at all");
    pool.close().await;
    // The bot answers again after the last kill.
    let after = h.last_seq(&t, 99);
    h.say(&t, 99, "/help");
    h.reply(&t, 99, after, |s| s == HELP).await;
    assert!(h.stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_storm_restarts_nothing() {
    let mut h = Harness::start(&[]).await;
    let (id, t) = h.add_bot("storm", 6201).await;
    h.wait_state(id, "running").await;
    h.say(&t, 1, "/help");
    h.reply(&t, 1, 0, |s| s == HELP).await;
    let get_me = h.sandbox.stats().calls(&t, "getMe");
    // 2,000 notifications, each in its own transaction (identical ones within one transaction
    // are delivered once), about this bot and about every bot.
    for i in 0..2000 {
        let payload = if i % 2 == 0 {
            id.to_string()
        } else {
            String::new()
        };
        sqlx::query("SELECT pg_notify('reload_config', $1)")
            .bind(payload)
            .execute(&h.pool)
            .await
            .unwrap();
    }
    let after = h.last_seq(&t, 2);
    h.say(&t, 2, "/help");
    h.reply(&t, 2, after, |s| s == HELP).await;
    // Reloads swap the snapshot; the poller was never restarted.
    assert_eq!(h.sandbox.stats().calls(&t, "getMe"), get_me);
    assert!(h.stop().await.clean());
}
