//! The supervisor against real PostgreSQL and the in-process sandbox: bots start, stop,
//! restart and reload on the fly, each with its own database.

mod common;

use std::time::{Duration, Instant};

use botvisor::content::manifest::Manifest;
use botvisor::panel::store;
use botvisor::token::BotToken;
use common::harness::{DEADLINE, Harness};
use common::{database_exists, eventually, token};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_added_while_running_answers_start() {
    let mut h = Harness::start(&[]).await;
    let mut latencies = Vec::new();
    for i in 0..12u64 {
        let t = token(5000 + i);
        h.sandbox.register_bot(&t, None).unwrap();
        let committed = Instant::now();
        let id = h
            .add_registered(&format!("bot{i}"), &t, &Manifest::default())
            .await;
        h.say(&t, 77, "/start");
        let reply = h.reply(&t, 77, 0, |_| true).await;
        latencies.push(committed.elapsed());
        assert_eq!(reply.text(), Some("Hello, User 77!"));
        h.wait_state(id, "running").await;
    }
    latencies.sort();
    eprintln!(
        "add -> answer over {} bots: p50 {:?}, p95 {:?} (goal p95 <= 300 ms; figures in docs/performance.md come from the bench)",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95)
    );
    let status = store::get_status(&h.pool, 1).await.unwrap().unwrap();
    assert_eq!(
        status.telegram_username.as_deref(),
        Some("sandbox_5000_bot")
    );
    assert!(h.stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_change_is_used_without_restarting_the_poller() {
    let mut h = Harness::start(&[]).await;
    let (id, t) = h.add_bot("texts", 6001).await;
    store::set_text(&h.pool, id, "start", "en", "Welcome, {first_name}")
        .await
        .unwrap();
    h.wait_state(id, "running").await;
    // The text was set while the bot started: its reload may land after the first update.
    eventually(DEADLINE, "the first text in use", || async {
        let after = h.last_seq(&t, 10);
        h.say(&t, 10, "/start");
        let r = h.reply(&t, 10, after, |_| true).await;
        (r.text() == Some("Welcome, User 10")).then_some(())
    })
    .await;
    let get_me_before = h.sandbox.stats().calls(&t, "getMe");

    store::set_text(&h.pool, id, "start", "en", "Changed for {first_name}")
        .await
        .unwrap();
    // The next reply uses it (poll: the reload is asynchronous to the commit).
    eventually(DEADLINE, "reply with the new text", || async {
        let after = h.last_seq(&t, 10);
        h.say(&t, 10, "/start");
        let r = h.reply(&t, 10, after, |_| true).await;
        (r.text() == Some("Changed for User 10")).then_some(())
    })
    .await;
    let stats = h.sandbox.stats();
    assert_eq!(
        stats.calls(&t, "getMe"),
        get_me_before,
        "the poller was restarted"
    );
    // Texts are per language, falling back to the default language.
    store::set_text(&h.pool, id, "help", "ru", "Помощь")
        .await
        .unwrap();
    store::set_text(&h.pool, id, "help", "en", "Help")
        .await
        .unwrap();
    let ru = botvisor::sandbox::InjectMessage {
        language_code: Some("ru".into()),
        ..botvisor::sandbox::InjectMessage::private(&t, 11, "/help")
    };
    eventually(DEADLINE, "russian help", || async {
        let after = h.last_seq(&t, 11);
        h.sandbox.inject_message(ru.clone()).unwrap();
        let r = h.reply(&t, 11, after, |_| true).await;
        (r.text() == Some("Помощь")).then_some(())
    })
    .await;
    let de = botvisor::sandbox::InjectMessage {
        language_code: Some("de".into()),
        ..botvisor::sandbox::InjectMessage::private(&t, 12, "/help")
    };
    // The two texts were committed separately: the reload of the second may follow the first.
    eventually(DEADLINE, "english help as the fallback", || async {
        let after = h.last_seq(&t, 12);
        h.sandbox.inject_message(de.clone()).unwrap();
        let r = h.reply(&t, 12, after, |_| true).await;
        (r.text() == Some("Help")).then_some(())
    })
    .await;
    assert_eq!(h.sandbox.stats().calls(&t, "getMe"), get_me_before);
    assert!(h.stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_and_remove_stop_the_bot_and_drop_database_removes_it() {
    let mut h = Harness::start(&[]).await;
    let (id, t) = h.add_bot("stopper", 6101).await;
    h.wait_state(id, "running").await;
    store::set_enabled(&h.pool, id, false).await.unwrap();
    h.wait_state(id, "stopped").await;
    eventually(DEADLINE, "no long poll left", || async {
        let s = h.sandbox.stats();
        (s.bots.get(&t).map_or(0, |b| b.long_polls) == 0).then_some(())
    })
    .await;
    // A message sent while disabled waits at Telegram, and is answered once enabled again.
    let polls = h.sandbox.stats().calls(&t, "getUpdates");
    h.say(&t, 5, "/start");
    store::set_enabled(&h.pool, id, true).await.unwrap();
    h.reply(&t, 5, 0, |_| true).await;
    assert!(h.sandbox.stats().calls(&t, "getUpdates") > polls);

    // Remove through the CLI, with --drop-database, while the daemon runs.
    let db = h.bot_database(id);
    assert!(database_exists(&db).await);
    let out = common::botvisor(
        &h.panel.env(),
        &["bot", "remove", &id.to_string(), "--drop-database", "--yes"],
    );
    assert!(out.ok().contains("dropped"), "{out:?}");
    assert!(!database_exists(&db).await);
    eventually(DEADLINE, "the removed bot stopped polling", || async {
        let s = h.sandbox.stats();
        (s.bots.get(&t).map_or(0, |b| b.long_polls) == 0).then_some(())
    })
    .await;
    assert_eq!(h.counts.borrow().total, 0);
    assert!(h.stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_change_never_causes_a_409() {
    let mut h = Harness::start(&[]).await;
    let (id, t1) = h.add_bot("rotating", 6201).await;
    h.say(&t1, 3, "/start");
    h.reply(&t1, 3, 0, |_| true).await;
    let t2 = token(6202);
    h.sandbox.register_bot(&t2, None).unwrap();
    store::set_token(&h.pool, &h.panel.keys(), id, &BotToken::parse(&t2).unwrap())
        .await
        .unwrap();
    h.say(&t2, 3, "/start");
    h.reply(&t2, 3, 0, |_| true).await;
    // And back to the first token: its old poller is long gone, so no conflict either.
    store::set_token(&h.pool, &h.panel.keys(), id, &BotToken::parse(&t1).unwrap())
        .await
        .unwrap();
    let after = h.last_seq(&t1, 3);
    h.say(&t1, 3, "/help");
    h.reply(&t1, 3, after, |_| true).await;
    let stats = h.sandbox.stats();
    assert_eq!(stats.conflicts(&t1), 0);
    assert_eq!(stats.conflicts(&t2), 0);
    assert!(h.stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bots_have_two_isolated_databases() {
    let mut h = Harness::start(&[]).await;
    let (a, ta) = h.add_bot("alpha", 6301).await;
    let (b, tb) = h.add_bot("beta", 6302).await;
    h.say(&ta, 100, "/start");
    h.say(&tb, 200, "/start");
    h.reply(&ta, 100, 0, |_| true).await;
    h.reply(&tb, 200, 0, |_| true).await;
    assert_ne!(h.bot_database(a), h.bot_database(b));
    let pa = h.bot_pool(a).await;
    let pb = h.bot_pool(b).await;
    let users = |pool: sqlx::PgPool| async move {
        let ids: Vec<i64> = sqlx::query_scalar("SELECT user_id FROM users ORDER BY user_id")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        ids
    };
    assert_eq!(users(pa).await, vec![100]);
    assert_eq!(users(pb).await, vec![200]);
    assert!(h.stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_fails_without_a_hot_loop_and_a_new_token_recovers() {
    let mut h = Harness::start(&[]).await;
    let (id, t) = h.add_bot("revoked", 6401).await;
    let (_other, to) = h.add_bot("healthy", 6402).await;
    h.wait_state(id, "running").await;
    h.sandbox.revoke_bot(&t).unwrap();
    let detail = h.wait_state(id, "auth_failed").await;
    assert!(detail.contains("401"), "{detail}");
    let calls =
        |s: &botvisor::sandbox::Stats| s.bots.get(&t).map_or(0, |b| b.calls.values().sum::<u64>());
    let after_failure = calls(&h.sandbox.stats());
    // The other bot keeps serving; meanwhile the revoked one makes no more calls.
    for i in 0..5 {
        let after = h.last_seq(&to, 9);
        h.say(&to, 9, &format!("/start {i}"));
        h.reply(&to, 9, after, |_| true).await;
    }
    assert_eq!(
        calls(&h.sandbox.stats()),
        after_failure,
        "the revoked bot kept calling"
    );
    assert!(after_failure < 10, "{after_failure} calls before giving up");
    // A new token brings it back.
    let t2 = token(6403);
    h.sandbox.register_bot(&t2, None).unwrap();
    store::set_token(&h.pool, &h.panel.keys(), id, &BotToken::parse(&t2).unwrap())
        .await
        .unwrap();
    h.wait_state(id, "running").await;
    h.say(&t2, 9, "/start");
    h.reply(&t2, 9, 0, |_| true).await;
    assert!(h.stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_migration_fails_that_bot_only() {
    let mut h = Harness::start(&[]).await;
    // The next bot id is predictable in a fresh panel: create its database with a conflicting
    // object before the bot exists.
    let (ok_id, ok_token) = h.add_bot("fine", 6501).await;
    let broken_db = h.bot_database(ok_id + 1);
    {
        let admin = h.panel.pool().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{broken_db}\""
        )))
        .execute(&admin)
        .await
        .unwrap();
        admin.close().await;
        let conflicting = sqlx::PgPool::connect(&format!("{}/{broken_db}", common::server_url()))
            .await
            .unwrap();
        sqlx::query("CREATE TABLE users (something_else int)")
            .execute(&conflicting)
            .await
            .unwrap();
        conflicting.close().await;
    }
    let (broken_id, _) = h.add_bot("broken", 6502).await;
    assert_eq!(broken_id, ok_id + 1);
    let detail = h.wait_state(broken_id, "failed").await;
    assert!(detail.contains("migrat"), "{detail}");
    assert!(detail.contains("users"), "{detail}");
    h.say(&ok_token, 1, "/start");
    h.reply(&ok_token, 1, 0, |_| true).await;
    assert!(h.stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_added_while_the_listen_connection_is_down_still_starts() {
    let mut h = Harness::start(&[]).await;
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = $1 AND application_name = 'botvisor-panel'",
    )
    .bind(&h.panel.name)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert!(killed >= 1, "the daemon's panel connections were not found");
    let (id, t) = h.add_bot("late", 6601).await;
    h.say(&t, 4, "/start");
    h.reply(&t, 4, 0, |_| true).await;
    h.wait_state(id, "running").await;
    assert!(h.stop().await.clean());
}

fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_bots_stay_within_the_connection_budget_and_threads_stay_flat() {
    const BOTS: u64 = 200;
    const BUDGET: i64 = 8;
    let mut h = Harness::start(&[("BOTVISOR__BOT_DATABASE__CONNECTION_BUDGET", "8")]).await;
    let prefix = format!("{}_bot_%", h.panel.name);
    let sampler_pool = h.panel.pool().await;
    let stop_sampling = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let stop = stop_sampling.clone();
        let prefix = prefix.clone();
        let budget = h.budget.clone();
        tokio::spawn(async move {
            let mut peak = 0i64;
            let mut held_peak = 0usize;
            while !stop.is_cancelled() {
                held_peak = held_peak.max(budget.open_connections());
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE $1",
                )
                .bind(&prefix)
                .fetch_one(&sampler_pool)
                .await
                .unwrap();
                peak = peak.max(n);
                tokio::task::yield_now().await;
            }
            sampler_pool.close().await;
            (peak, held_peak)
        })
    };
    let mut threads_at_20 = 0;
    let mut tokens = Vec::new();
    for i in 0..BOTS {
        let (_, t) = h.add_bot(&format!("many{i}"), 7000 + i).await;
        tokens.push(t);
        if i == 19 {
            eventually(Duration::from_secs(120), "20 bots running", || async {
                (h.counts.borrow().running == 20).then_some(())
            })
            .await;
            threads_at_20 = thread_count();
        }
    }
    eventually(Duration::from_secs(240), "all bots running", || async {
        (h.counts.borrow().running == BOTS as usize).then_some(())
    })
    .await;
    // Every bot answers (each needs its database), still within the budget.
    for (i, t) in tokens.iter().enumerate().step_by(20) {
        h.say(t, 42, "/start");
        h.reply(t, 42, 0, |_| true).await;
        assert!(i < BOTS as usize);
    }
    let threads_at_200 = thread_count();
    stop_sampling.cancel();
    let (peak, held_peak) = sampler.await.unwrap();
    eprintln!(
        "connections to bot databases: held peak {held_peak}, pg_stat_activity peak {peak} (budget {BUDGET}); threads {threads_at_20} at 20 bots, {threads_at_200} at {BOTS}"
    );
    assert!(
        held_peak as i64 <= BUDGET,
        "the daemon held {held_peak}, over the budget {BUDGET}"
    );
    // The server may still list a backend for a moment after the daemon closed it (evicted to
    // make room), so its view gets one exiting backend of slack.
    assert!(
        peak <= BUDGET + 1,
        "pg_stat_activity peak {peak} over the budget {BUDGET}"
    );
    assert!(
        threads_at_200 <= threads_at_20 + 2,
        "threads grew with the bot count: {threads_at_20} -> {threads_at_200}"
    );
    assert!(h.stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_every_update_in_flight() {
    let mut h = Harness::start(&[]).await;
    let (id, t) = h.add_bot("drain", 6701).await;
    h.wait_state(id, "running").await;
    for chat in 1..=40 {
        h.say(&t, chat, "/start");
    }
    // Stop as soon as the first answer is out: the rest are in flight.
    h.reply(&t, 1, 0, |_| true).await;
    let report = h.stop().await;
    assert!(report.clean(), "{report:?}");
    let pool = h.bot_pool(id).await;
    let (total, processed): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(processed_at) FROM inbox")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!(total, processed, "stored updates left unprocessed at exit");
    // Every stored update was answered; the ones never fetched still wait at Telegram.
    let answered = (1..=40)
        .filter(|chat| !h.sandbox.sent(&t, *chat, 0).unwrap().is_empty())
        .count() as i64;
    assert_eq!(answered, total);
    let pending = h
        .sandbox
        .stats()
        .bots
        .get(&t)
        .map_or(0, |b| b.pending_updates) as i64;
    assert_eq!(answered + pending, 40);
}
