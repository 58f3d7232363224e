//! Nothing lost: `botvisor serve` killed with SIGKILL at random moments while numbered messages
//! stream in, and a Bot API that fails with 500s and timeouts for a while.

mod common;

use std::time::{Duration, Instant};

use botvisor::content::manifest::Manifest;
use botvisor::panel::store::{self, NewBot};
use botvisor::sandbox::{Fault, InjectMessage};
use botvisor::token::BotToken;
use common::harness::Harness;
use common::process::ServeProcess;
use common::{TestDb, eventually, token};

/// A small deterministic generator (xorshift), seeded per run and printed for replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing() {
    const MESSAGES: i64 = 300;
    const KILLS: usize = 20;
    let seed = std::env::var("BOTVISOR_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("kill test seed: {seed} (replay with BOTVISOR_KILL_SEED={seed})");
    let mut rng = Rng(seed);

    let panel = TestDb::create("bvt_kill").await;
    botvisor::schema::apply(&botvisor::schema::PANEL, &panel.url.parse().unwrap())
        .await
        .unwrap();
    let (sb, api_url, stop_sandbox) = common::harness::start_sandbox().await;
    let t = token(8001);
    sb.register_bot(&t, None).unwrap();
    let pool = panel.pool().await;
    let id = store::add_bot(
        &pool,
        &panel.keys(),
        &NewBot {
            name: "durable",
            token: &BotToken::parse(&t).unwrap(),
            enabled: true,
            database: None,
            manifest: &Manifest::default(),
        },
    )
    .await
    .unwrap();

    let mut env = panel.env();
    env.insert("BOTVISOR_TELEGRAM_API_URL".into(), api_url);
    env.insert("BOTVISOR__TELEGRAM__POLL_TIMEOUT_SECS".into(), "1".into());
    env.insert(
        "BOTVISOR__SUPERVISOR__SHUTDOWN_DEADLINE_SECS".into(),
        "10".into(),
    );
    env.insert("RUST_LOG".into(), "botvisor=info,warn".into());
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("serve.log");

    // Numbered messages, one chat each, paced irregularly while the daemon is killed.
    let injector = {
        let sb = sb.clone();
        let t = t.clone();
        let mut rng = Rng(seed.rotate_left(17) | 1);
        tokio::spawn(async move {
            for chat in 1..=MESSAGES {
                sb.inject_message(InjectMessage::private(&t, chat, "/start"))
                    .unwrap();
                // Pacing the load, not synchronising: the kills must land mid-stream.
                tokio::time::sleep(Duration::from_millis(rng.between(0, 40))).await;
            }
        })
    };
    for _ in 0..KILLS {
        let serve = ServeProcess::start(&env, Some(&log));
        // The moment of the kill is the thing under test.
        tokio::time::sleep(Duration::from_millis(rng.between(50, 900))).await;
        serve.signal("KILL");
        serve.wait().await;
    }
    injector.await.unwrap();

    let serve = ServeProcess::start(&env, Some(&log));
    let bot_db = format!("{}/{}_bot_{id}", common::server_url(), panel.name);
    let bot_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&bot_db)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(180),
        "every message processed and every answer sent",
        || async {
            let (rows, done): (i64, i64) =
                sqlx::query_as("SELECT count(*), count(processed_at) FROM inbox")
                    .fetch_one(&bot_pool)
                    .await
                    .unwrap();
            let unsent: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE done_at IS NULL")
                    .fetch_one(&bot_pool)
                    .await
                    .unwrap();
            (rows == MESSAGES && done == MESSAGES && unsent == 0).then_some(())
        },
    )
    .await;
    serve.signal("TERM");
    assert_eq!(serve.wait().await, Some(0), "log: {}", log.display());

    // Exactly once in the bot database: one user message per chat, none poisoned.
    let per_chat: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT chat_id, count(*) FROM messages WHERE role = 'user' GROUP BY chat_id ORDER BY chat_id",
    )
    .fetch_all(&bot_pool)
    .await
    .unwrap();
    assert_eq!(per_chat.len() as i64, MESSAGES);
    assert!(
        per_chat.iter().all(|(_, n)| *n == 1),
        "processed twice: {per_chat:?}"
    );
    let poisoned: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE error IS NOT NULL")
        .fetch_one(&bot_pool)
        .await
        .unwrap();
    assert_eq!(poisoned, 0);
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&bot_pool)
        .await
        .unwrap();
    assert_eq!(users, MESSAGES);
    bot_pool.close().await;

    // Answered at least once; a repeat is only possible when a kill fell between a send and
    // its commit.
    let mut duplicates = 0;
    for chat in 1..=MESSAGES {
        let answers = sb.sent(&t, chat, 0).unwrap().len();
        if answers == 0 {
            let logged = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = logged.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "chat {chat} was never answered; the log's end:\n{}",
                tail.join("\n")
            );
        }
        duplicates += answers - 1;
    }
    eprintln!(
        "{KILLS} SIGKILLs over {MESSAGES} messages: all processed exactly once, {duplicates} duplicate answers"
    );
    assert_eq!(sb.stats().bots[&t].pending_updates, 0);
    // Twenty-one daemon runs' logs, and not one full token in them.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("bot status"),
        "the log is empty: {}",
        log.display()
    );
    assert!(
        !logged.contains(t.split_once(':').unwrap().1),
        "a token reached the log"
    );
    pool.close().await;
    stop_sandbox.cancel();
}

/// CPU time (user + system) this process used so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of /proc/pid/stat (11 and 12 after the name).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_failures_and_timeouts_lose_nothing_and_back_off() {
    let mut h = Harness::start(&[("BOTVISOR__TELEGRAM__POLL_TIMEOUT_SECS", "1")]).await;
    let (id, t) = h.add_bot("faulty", 8101).await;
    h.wait_state(id, "running").await;
    let polls = |h: &Harness| h.sandbox.stats().calls(&t, "getUpdates");

    // getUpdates answers 500 until cleared: the listener backs off (1 s, 2 s, 4 s …).
    h.sandbox
        .add_fault(Fault {
            token: Some(t.clone()),
            method: Some("getUpdates".into()),
            status: 500,
            ..Fault::default()
        })
        .unwrap();
    let before = polls(&h);
    let cpu_before = cpu_time();
    let started = Instant::now();
    for chat in 1..=5 {
        h.say(&t, chat, "/start");
    }
    eventually(Duration::from_secs(30), "three failed polls", || async {
        (polls(&h) >= before + 3).then_some(())
    })
    .await;
    let elapsed = started.elapsed();
    let cpu = cpu_time() - cpu_before;
    let failed_polls = polls(&h) - before;
    eprintln!("{failed_polls} failed polls in {elapsed:?}, CPU {cpu:?}");
    assert!(
        failed_polls <= 5,
        "{failed_polls} polls in {elapsed:?}: no backoff"
    );
    assert!(
        elapsed >= Duration::from_secs(2),
        "retried too fast: {elapsed:?}"
    );
    assert!(cpu < elapsed / 2, "CPU {cpu:?} over {elapsed:?}: spinning");

    // The faults clear: the waiting messages are fetched and answered.
    h.sandbox.clear_faults();
    for chat in 1..=5 {
        h.reply(&t, chat, 0, |_| true).await;
    }
    // One poll times out (the answer comes later than the client waits for it)…
    h.sandbox
        .add_fault(Fault {
            token: Some(t.clone()),
            method: Some("getUpdates".into()),
            status: 200,
            delay_ms: Some(6_500),
            count: Some(1),
            ..Fault::default()
        })
        .unwrap();
    h.say(&t, 6, "/start");
    h.reply(&t, 6, 0, |_| true).await;
    // …and one send fails with 500 (teloxide waits 10 s after a 5xx, then we retry).
    h.sandbox
        .add_fault(Fault {
            token: Some(t.clone()),
            method: Some("sendMessage".into()),
            status: 500,
            count: Some(1),
            ..Fault::default()
        })
        .unwrap();
    h.say(&t, 7, "/start");
    h.reply(&t, 7, 0, |_| true).await;
    let pool = h.bot_pool(id).await;
    let (rows, done): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(processed_at) FROM inbox")
            .fetch_one(&pool)
            .await
            .unwrap();
    let user_messages: i64 =
        sqlx::query_scalar("SELECT count(*) FROM messages WHERE role = 'user'")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!((rows, done, user_messages), (7, 7, 7));
    assert!(h.stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparsable_stored_update_is_poisoned_and_blocks_nothing() {
    let mut h = Harness::start(&[]).await;
    let (id, t) = h.add_bot("poison", 8201).await;
    h.wait_state(id, "running").await;
    store::set_enabled(&h.pool, id, false).await.unwrap();
    h.wait_state(id, "stopped").await;
    // An update stored by an earlier run that teloxide cannot parse.
    let pool = h.bot_pool(id).await;
    sqlx::query(
        "INSERT INTO inbox (telegram_bot_id, update_id, payload) \
         VALUES (8201, 1000000, '{\"update_id\": 1000000, \"message\": {\"message_id\": \"not a number\"}}')",
    )
    .execute(&pool)
    .await
    .unwrap();
    store::set_enabled(&h.pool, id, true).await.unwrap();
    h.say(&t, 5, "/start");
    h.reply(&t, 5, 0, |_| true).await;
    let (processed, error): (bool, Option<String>) = sqlx::query_as(
        "SELECT processed_at IS NOT NULL, error FROM inbox WHERE update_id = 1000000",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(processed);
    assert!(error.unwrap_or_default().contains("update"));
    pool.close().await;
    assert!(h.stop().await.clean());
}
