//! Update ids that start again lower (Telegram after a week without updates; a restarted
//! sandbox, as `scripts/dev.sh` does — issue 19.2): no new update is dropped by the old
//! offset or shadowed by an old inbox row.

mod common;

use std::time::Duration;

use botvisor::panel::store;
use common::eventually;
use common::harness::Harness;

/// Resets the sandbox's ids to 1 once the bot confirmed everything.
async fn reset_ids(h: &Harness, t: &str) {
    eventually(Duration::from_secs(30), "ids reset", || async {
        h.sandbox.reset_update_ids(t, 1, false).ok()
    })
    .await;
}

async fn answered(h: &Harness, t: &str, chats: std::ops::RangeInclusive<i64>, after: u64) {
    for chat in chats {
        h.reply(t, chat, after, |_| true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_restarting_lower_while_the_bot_runs_lose_nothing() {
    let mut h = Harness::start(&[("BOTVISOR__TELEGRAM__POLL_TIMEOUT_SECS", "1")]).await;
    let (id, t) = h.add_bot("restart", 9401).await;
    h.wait_state(id, "running").await;
    for chat in 1..=5 {
        h.say(&t, chat, "/start");
    }
    answered(&h, &t, 1..=5, 0).await;
    let seq = (1..=5).map(|c| h.last_seq(&t, c)).max().unwrap();

    reset_ids(&h, &t).await;
    for chat in 1..=5 {
        assert!(h.say(&t, chat, "/start") <= 5, "ids did not restart");
    }
    answered(&h, &t, 1..=5, seq).await;

    let pool = h.bot_pool(id).await;
    let (inbox, processed): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(processed_at) FROM inbox")
            .fetch_one(&pool)
            .await
            .unwrap();
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox_parked")
        .fetch_one(&pool)
        .await
        .unwrap();
    let offset: i64 = sqlx::query_scalar("SELECT value FROM bot_state WHERE key LIKE 'offset:%'")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert_eq!((inbox, processed, parked), (5, 5, 5));
    assert_eq!(offset, 6);
    assert!(h.stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_sandbox_behind_the_stored_offset_loses_nothing() {
    // Issue 19.2: the bot answered 17 messages, then the dev loop restarted with a fresh
    // sandbox (ids from 1 again) while the bot database kept offset 18.
    let mut h = Harness::start(&[("BOTVISOR__TELEGRAM__POLL_TIMEOUT_SECS", "1")]).await;
    let (id, t) = h.add_bot("devloop", 9402).await;
    h.wait_state(id, "running").await;
    for chat in 1..=17 {
        h.say(&t, chat, "/start");
    }
    answered(&h, &t, 1..=17, 0).await;
    let seq = (1..=17).map(|c| h.last_seq(&t, c)).max().unwrap();
    store::set_enabled(&h.pool, id, false).await.unwrap();
    h.wait_state(id, "stopped").await;

    // The fresh sandbox: ids start at 1, and its first messages arrive before the bot polls.
    h.sandbox.reset_update_ids(&t, 1, true).unwrap();
    for chat in 1..=3 {
        h.say(&t, chat, "/start");
    }
    store::set_enabled(&h.pool, id, true).await.unwrap();
    answered(&h, &t, 1..=3, seq).await;
    for chat in 4..=6 {
        h.say(&t, chat, "/start");
    }
    answered(&h, &t, 4..=6, seq).await;
    let pool = h.bot_pool(id).await;
    let (inbox, processed): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(processed_at) FROM inbox")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!((inbox, processed), (6, 6));
    assert!(h.stop().await.clean());
}
