//! A polling bot's deferred start (docs/architecture.md, "Deferred start"; issue 12's cold
//! start): the bot polls before its database is checked, touches nothing of it until the
//! check is done, a bot with an update goes ahead of the check queue, and what an earlier run
//! left in the inbox is still handled before anything new.

mod common;

use std::time::Duration;

use botvisor::botdb::store::{self as botdb_store, InboxRow};
use botvisor::panel::store;
use botvisor::token::BotToken;
use common::harness::Harness;
use common::{database_exists, eventually};
use sqlx::Connection;

const DEADLINE: Duration = Duration::from_secs(30);

/// A backend of `database` waits for a lock (the start's check behind the test's lock).
async fn check_blocked(h: &Harness, database: &str) -> bool {
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
    )
    .bind(database)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    waiting > 0
}

/// Locks the migrations table, which a start's check reads, on `conn` (until the returned
/// transaction ends); returns `conn`'s backend pid too.
async fn lock_migrations(
    conn: &mut sqlx::PgConnection,
) -> (i32, sqlx::Transaction<'_, sqlx::Postgres>) {
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let mut lock = conn.begin().await.unwrap();
    sqlx::query("LOCK TABLE _sqlx_migrations IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    (pid, lock)
}

/// Backends of `database` other than `mine`.
async fn sessions_but(h: &Harness, database: &str, mine: i32) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> $2")
        .bind(database)
        .bind(mine)
        .fetch_one(&h.pool)
        .await
        .unwrap()
}

async fn state(h: &Harness, id: i64) -> String {
    store::get_status(&h.pool, id)
        .await
        .unwrap()
        .map(|s| s.state)
        .unwrap_or_default()
}

/// The default answer to `/help` (the bots here have no texts).
const HELP: &str = "Send /start to begin.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_polls_before_its_check_and_one_with_an_update_goes_first() {
    // A budget of 2 has one check turn: the first bot's blocked check holds it.
    let mut h = Harness::start(&[
        ("BOTVISOR__BOT_DATABASE__CONNECTION_BUDGET", "2"),
        ("BOTVISOR__TELEGRAM__POLL_TIMEOUT_SECS", "1"),
    ])
    .await;
    let (a, ta) = h.add_bot("deferred_a", 9501).await;
    h.wait_state(a, "running").await;
    h.say(&ta, 1, "/start");
    h.reply(&ta, 1, 0, |_| true).await;
    h.say(&ta, 2, "/start");
    let second = h.reply(&ta, 2, 0, |_| true).await;
    store::set_enabled(&h.pool, a, false).await.unwrap();
    h.wait_state(a, "stopped").await;

    // What an earlier run left: an update stored, not processed.
    let a_db = h.bot_database(a);
    let url = format!("{}/{a_db}", common::server_url());
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let telegram_id = i64::try_from(BotToken::parse(&ta).unwrap().bot_user_id()).unwrap();
    let leftover = InboxRow {
        update_id: 1_000_000,
        chat_id: Some(2),
        payload: serde_json::json!({
            "update_id": 1_000_000,
            "message": {
                "message_id": 1000, "date": 1_700_000_000,
                "chat": {"id": 2, "type": "private", "first_name": "u"},
                "from": {"id": 2, "is_bot": false, "first_name": "u"},
                "text": "/start",
                "entities": [{"type": "bot_command", "offset": 0, "length": 6}]
            }
        })
        .to_string(),
        error: None,
    };
    botdb_store::store_batch(&mut conn, telegram_id, &[leftover], None)
        .await
        .unwrap();
    let (mine, lock) = lock_migrations(&mut conn).await;

    let polls = |t: &str| h.sandbox.stats().calls(t, "getUpdates");
    let before = polls(&ta);
    store::set_enabled(&h.pool, a, true).await.unwrap();
    eventually(
        DEADLINE,
        "bot a polls while its check is blocked",
        || async { (polls(&ta) > before && check_blocked(&h, &a_db).await).then_some(()) },
    )
    .await;
    assert_ne!(
        state(&h, a).await,
        "running",
        "a bot is reported running only once its database is checked"
    );

    // A new bot waits for the check turn bot a holds, polling meanwhile; its database is not
    // even created.
    let (b, tb) = h.add_bot("deferred_b", 9502).await;
    eventually(DEADLINE, "bot b polls", || async {
        (polls(&tb) > 0).then_some(())
    })
    .await;
    assert!(
        !database_exists(&h.bot_database(b)).await,
        "bot b's check waits for its turn"
    );
    // An update makes its check urgent: it is answered while bot a's check still waits.
    h.say(&tb, 1, "/start");
    h.reply(&tb, 1, 0, |_| true).await;
    h.wait_state(b, "running").await;
    assert!(check_blocked(&h, &a_db).await, "bot a's check still waits");
    assert_ne!(state(&h, a).await, "running");
    assert_eq!(
        sessions_but(&h, &a_db, mine).await,
        1,
        "nothing of bot a but its check has touched its database (no job, no sender load)"
    );

    // Bot a gets an update while blocked, in the chat of what the earlier run left; once the
    // lock goes, it answers what the earlier run left and then the new update (a chat's order
    // holds: the replay goes before the batch its first poll brought), and reports itself
    // running.
    h.say(&ta, 2, "/help");
    lock.rollback().await.unwrap();
    let left = h.reply(&ta, 2, second.seq, |s| s != HELP).await;
    let help = h.reply(&ta, 2, second.seq, |s| s == HELP).await;
    assert!(
        left.seq < help.seq,
        "the leftover update is answered before the newer one of its chat"
    );
    h.wait_state(a, "running").await;
    let processed: bool =
        sqlx::query_scalar("SELECT processed_at IS NOT NULL FROM inbox WHERE update_id = 1000000")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(processed, "the leftover update was handled");
    conn.close().await.unwrap();
    assert!(h.stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_stopped_before_its_check_ends_without_touching_its_database() {
    let mut h = Harness::start(&[("BOTVISOR__TELEGRAM__POLL_TIMEOUT_SECS", "1")]).await;
    let (a, ta) = h.add_bot("deferred_stop", 9503).await;
    h.wait_state(a, "running").await;
    store::set_enabled(&h.pool, a, false).await.unwrap();
    h.wait_state(a, "stopped").await;

    let a_db = h.bot_database(a);
    let url = format!("{}/{a_db}", common::server_url());
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let (backend_pid, lock) = lock_migrations(&mut conn).await;
    let before = h.sandbox.stats().calls(&ta, "getUpdates");
    store::set_enabled(&h.pool, a, true).await.unwrap();
    eventually(
        DEADLINE,
        "the bot polls while its check is blocked",
        || async {
            (h.sandbox.stats().calls(&ta, "getUpdates") > before && check_blocked(&h, &a_db).await)
                .then_some(())
        },
    )
    .await;
    // Disabled during its check: the run ends at once, without waiting for the check.
    store::set_enabled(&h.pool, a, false).await.unwrap();
    h.wait_state(a, "stopped").await;
    assert!(
        check_blocked(&h, &a_db).await,
        "stopped while its check waited"
    );
    // The abandoned check's connection was closed with the run: its backend ends once the
    // lock lets it notice (a backend waiting for a lock does not read its socket).
    lock.rollback().await.unwrap();
    eventually(DEADLINE, "no connection of the daemon left", || async {
        (sessions_but(&h, &a_db, backend_pid).await == 0).then_some(())
    })
    .await;
    conn.close().await.unwrap();
    assert!(h.stop().await.clean());
}
