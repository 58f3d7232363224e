//! Webhook mode (issue 16 item 2), through the sandbox's webhook delivery and direct POSTs to
//! the daemon's listener: the secret is enforced (401), the bot answers through its webhook,
//! an unparsable body is stored poisoned and answered 200, a redelivery is handled once, a
//! saturated intake answers 503 with `Retry-After`, switching modes both ways loses nothing,
//! a `serve` killed with SIGKILL between receipt and commit gets the update again from
//! Telegram and handles it once, and an idle bot falls asleep and wakes for what needs it.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use botvisor::admin::Admin;
use botvisor::admin::broadcasts::Content;
use botvisor::admin::schedules::{JobRequest, Target, Timing};
use botvisor::content::manifest::{Manifest, ManifestError};
use botvisor::content::snapshot::Section;
use botvisor::modules::{Flow, Module, ModuleError, Registry, UpdateCx};
use botvisor::panel::store;
use botvisor::sandbox::InjectMessage;
use common::eventually;
use common::harness::{DEADLINE, Harness};
use common::process::ServeSetup;
use futures::future::BoxFuture;
use secrecy::ExposeSecret;

/// A harness whose daemon listens on a free port, with `public_url` pointing at it.
async fn start(default_mode: &str, registry: Registry) -> (Harness, String) {
    start_idle(default_mode, registry, "0").await
}

/// [`start`] with `telegram.webhook_idle_after_secs` (`"0"`: bots never fall asleep).
async fn start_idle(default_mode: &str, registry: Registry, idle_after: &str) -> (Harness, String) {
    let addr = common::free_address();
    let url = format!("http://{addr}");
    let h = Harness::start_with(
        &[
            ("BOTVISOR__HTTP__LISTEN", &addr),
            ("BOTVISOR__HTTP__PUBLIC_URL", &url),
            ("BOTVISOR__TELEGRAM__DEFAULT_MODE", default_mode),
            ("BOTVISOR__TELEGRAM__WEBHOOK_IDLE_AFTER_SECS", idle_after),
        ],
        registry,
    )
    .await;
    (h, url)
}

/// Waits until the daemon counts `n` bots asleep.
async fn wait_dormant(h: &Harness, n: usize) {
    eventually(DEADLINE, &format!("{n} bots asleep"), || async {
        (h.counts.borrow().dormant == n).then_some(())
    })
    .await;
}

/// The sandbox's count of `method` calls made with `t`.
fn calls(h: &Harness, t: &str, method: &str) -> u64 {
    h.sandbox.stats().calls(t, method)
}

/// An idle bot in webhook mode falls asleep — no run held, still `running` — and wakes for
/// what needs it (docs/webhooks.md, "Dormant bots"): a webhook request (answered, without
/// asking Telegram `getMe`, `setMyCommands` or `setWebhook` again; a request with a wrong
/// secret is refused without waking it), a job an operator adds (sent on time, the bot asleep
/// until then), and a switch to polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_bot_falls_asleep_and_wakes_for_an_update_a_job_and_a_mode_switch() {
    let (mut h, url) = start_idle("webhook", Registry::standard(), "1").await;
    let (id, t) = h.add_bot("dozy", 916_010).await;
    h.wait_state(id, "running").await;
    let hook = format!("{url}/telegram/{id}");
    wait_webhook(&h.sandbox_url, &t, &hook).await;
    h.say(&t, 601, "/start");
    h.reply(&t, 601, 0, |_| true).await;
    wait_dormant(&h, 1).await;
    assert_eq!(
        h.counts.borrow().running,
        1,
        "an asleep bot counts as running"
    );

    // A wrong secret is refused at the door and wakes nobody.
    let body = message_update(916_010_001, 601, "/start");
    assert_eq!(post(&hook, Some("wrong"), &body).await.status(), 401);
    assert_eq!(h.counts.borrow().dormant, 1);

    // An update wakes it; the run takes over what the last one learned from Telegram.
    let before = ["getMe", "setMyCommands", "setWebhook"].map(|m| calls(&h, &t, m));
    let seq = h.last_seq(&t, 601);
    h.say(&t, 601, "/help");
    h.reply(&t, 601, seq, |_| true).await;
    let after = ["getMe", "setMyCommands", "setWebhook"].map(|m| calls(&h, &t, m));
    assert_eq!(
        before, after,
        "getMe, setMyCommands, setWebhook calls before and after waking"
    );
    wait_dormant(&h, 1).await;

    // A job added while it sleeps: the operator's wake-up starts a run, the run sleeps again
    // until the job's time, and the message goes out on time, once.
    let admin = Admin::new(h.pool.clone(), Arc::new(h.settings.clone()));
    let seq = h.last_seq(&t, 601);
    let job = admin
        .add_job(
            id,
            &JobRequest {
                timing: Timing::In("4s"),
                tz: None,
                target: Target::Chat(601),
                content: Content::Text("Reminder while asleep"),
                broadcast: false,
                misfire: None,
            },
        )
        .await
        .unwrap();
    h.reply(&t, 601, seq, |x| x == "Reminder while asleep")
        .await;
    common::ran_once_on_time(&admin, id, job.id).await;
    wait_dormant(&h, 1).await;

    // A switch to polling while asleep: the bell goes, the bot polls.
    admin.set_mode(id, "polling").await.unwrap();
    wait_webhook(&h.sandbox_url, &t, "").await;
    wait_dormant(&h, 0).await;
    let seq = h.last_seq(&t, 601);
    h.say(&t, 601, "/start");
    h.reply(&t, 601, seq, |_| true).await;
    assert_eq!(h.counts.borrow().dormant, 0, "a polling bot never sleeps");
    h.stop().await;
}

/// What the sandbox's getWebhookInfo says for `token`.
async fn webhook_info(sandbox_url: &str, token: &str) -> serde_json::Value {
    let url = format!(
        "{}/bot{token}/getWebhookInfo",
        sandbox_url.trim_end_matches('/')
    );
    let body: serde_json::Value = reqwest::Client::new()
        .post(url)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["result"].clone()
}

/// Waits until Telegram (the sandbox) has `want` as the bot's webhook URL.
async fn wait_webhook(sandbox_url: &str, token: &str, want: &str) {
    eventually(DEADLINE, &format!("webhook url {want:?}"), || async {
        let info = webhook_info(sandbox_url, token).await;
        (info["url"] == want).then_some(())
    })
    .await;
}

/// The bot's webhook secret, opened from the panel with the test's key.
async fn secret(h: &Harness, id: i64) -> String {
    let bot = store::get_bot(&h.pool, id).await.unwrap();
    let sealed = bot
        .webhook_secret_sealed
        .expect("a webhook secret is stored");
    h.panel
        .keys()
        .open_string(&botvisor::panel::webhook_secret_aad(id), &sealed)
        .unwrap()
        .expose_secret()
        .to_owned()
}

async fn post(url: &str, secret: Option<&str>, body: &str) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(s) = secret {
        request = request.header("X-Telegram-Bot-Api-Secret-Token", s);
    }
    request.send().await.unwrap()
}

/// A private text message update as Telegram sends it.
fn message_update(update_id: i64, chat: i64, text: &str) -> String {
    serde_json::json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id % 1_000_000,
            "date": 1_700_000_000,
            "chat": {"id": chat, "type": "private", "first_name": "Tester"},
            "from": {"id": chat, "is_bot": false, "first_name": "Tester"},
            "text": text
        }
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_is_enforced_and_the_bot_answers_through_its_webhook() {
    let (mut h, url) = start("webhook", Registry::standard()).await;
    let (id, t) = h.add_bot("hook", 916_001).await;
    h.wait_state(id, "running").await;
    let hook = format!("{url}/telegram/{id}");
    assert!(!hook.contains(&t), "the token is never in the webhook URL");
    wait_webhook(&h.sandbox_url, &t, &hook).await;
    let info = webhook_info(&h.sandbox_url, &t).await;
    assert_eq!(info["max_connections"], 40, "{info}");

    // Delivered by the sandbox with the secret: answered.
    h.say(&t, 501, "/start");
    h.reply(&t, 501, 0, |_| true).await;

    // Without the secret, or with a wrong one: 401, and nothing is stored.
    let body = message_update(916_000_001, 501, "/start");
    assert_eq!(post(&hook, None, &body).await.status(), 401);
    assert_eq!(post(&hook, Some("wrong"), &body).await.status(), 401);
    let real = secret(&h, id).await;
    let almost = format!("{}x", &real[..real.len() - 1]);
    assert_eq!(post(&hook, Some(&almost), &body).await.status(), 401);
    let db = h.bot_pool(id).await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE update_id = $1")
        .bind(916_000_001_i64)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(stored, 0, "a refused request stored an update");

    // A bot that does not run here in webhook mode: 503 with Retry-After.
    let other = post(&format!("{url}/telegram/{}", id + 1000), Some(&real), &body).await;
    assert_eq!(other.status(), 503);
    assert_eq!(other.headers()["retry-after"], "5");

    // bot show reports the webhook as Telegram sees it.
    let admin = Admin::new(h.pool.clone(), Arc::new(h.settings.clone()));
    let view = eventually(DEADLINE, "webhook info in bot show", || async {
        admin.show_bot(id).await.unwrap().webhook
    })
    .await;
    assert_eq!(view.url, hook);
    assert_eq!(view.pending_update_count, Some(0));
    db.close().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparsable_body_is_stored_poisoned_and_a_redelivery_is_handled_once() {
    let (mut h, url) = start("webhook", Registry::standard()).await;
    let (id, t) = h.add_bot("poison", 916_002).await;
    h.wait_state(id, "running").await;
    let hook = format!("{url}/telegram/{id}");
    wait_webhook(&h.sandbox_url, &t, &hook).await;
    let real = secret(&h, id).await;
    // The chat exists in the sandbox once the user wrote.
    h.say(&t, 502, "/start");
    let first = h.reply(&t, 502, 0, |_| true).await;

    // Not an update teloxide can read: 200, kept poisoned with the reason.
    let bad = r#"{"update_id": 916000010, "message": {"oops": true}}"#;
    assert_eq!(post(&hook, Some(&real), bad).await.status(), 200);
    // Not even JSON, no update_id: 200 too (logged; nothing to store it by).
    assert_eq!(post(&hook, Some(&real), "not json").await.status(), 200);
    let db = h.bot_pool(id).await;
    let error: Option<String> =
        sqlx::query_scalar("SELECT error FROM inbox WHERE update_id = 916000010")
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(error.is_some_and(|e| !e.is_empty()), "stored poisoned");

    // The same update twice (Telegram redelivers after a lost answer): handled once.
    let update = message_update(916_000_011, 502, "/start");
    assert_eq!(post(&hook, Some(&real), &update).await.status(), 200);
    assert_eq!(post(&hook, Some(&real), &update).await.status(), 200);
    h.reply(&t, 502, first.seq, |_| true).await;
    eventually(DEADLINE, "the update processed", || async {
        let processed: Option<bool> = sqlx::query_scalar(
            "SELECT processed_at IS NOT NULL FROM inbox WHERE update_id = 916000011",
        )
        .fetch_optional(&db)
        .await
        .unwrap();
        processed.filter(|p| *p)
    })
    .await;
    common::settled(&db).await;
    let greetings = |events: &[botvisor::sandbox::SentEvent]| {
        events
            .iter()
            .filter(|e| e.seq > first.seq && e.text().is_some())
            .count()
    };
    let after_one = greetings(&h.sandbox.sent(&t, 502, 0).unwrap());
    // A third /start through the sandbox makes the same answer once more: the count of what
    // the duplicate pair produced equals what one /start produces.
    let before = h.last_seq(&t, 502);
    h.say(&t, 502, "/start");
    h.reply(&t, 502, before, |_| true).await;
    common::settled(&db).await;
    let one_start = h
        .sandbox
        .sent(&t, 502, before)
        .unwrap()
        .iter()
        .filter(|e| e.text().is_some())
        .count();
    assert_eq!(
        after_one, one_start,
        "the redelivered update was answered twice"
    );
    db.close().await;
    h.stop().await;
}

/// Holds every update until released, and stops the chain (nothing is sent).
struct Blocker {
    gate: Arc<tokio::sync::Semaphore>,
}

impl Module for Blocker {
    fn name(&self) -> &'static str {
        "blocker"
    }

    fn load(&self, _manifest: &Manifest) -> Result<Option<Section>, ManifestError> {
        Ok(Some(Arc::new(()) as Section))
    }

    fn on_update<'a>(
        &'a self,
        _cx: &'a mut UpdateCx<'_>,
    ) -> BoxFuture<'a, Result<Flow, ModuleError>> {
        Box::pin(async move {
            let _permit = self.gate.acquire().await.expect("never closed");
            Ok(Flow::Stop)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_intake_answers_503_with_retry_after_and_loses_nothing() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let registry = Registry::new(vec![Arc::new(Blocker {
        gate: Arc::clone(&gate),
    })]);
    let (mut h, url) = start("webhook", registry).await;
    let (id, t) = h.add_bot("busy", 916_003).await;
    h.wait_state(id, "running").await;
    let hook = format!("{url}/telegram/{id}");
    wait_webhook(&h.sandbox_url, &t, &hook).await;
    let real = secret(&h, id).await;

    // The processor holds the first update; the channel behind it fills up.
    let mut accepted = Vec::new();
    let mut refused = None;
    for n in 0..4000_i64 {
        let update_id = 916_100_000 + n;
        let r = post(&hook, Some(&real), &message_update(update_id, 503, "hi")).await;
        match r.status().as_u16() {
            200 => accepted.push(update_id),
            503 => {
                refused = Some((update_id, r.headers()["retry-after"].clone()));
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let (refused_id, retry_after) = refused.expect("a 503 once the intake is saturated");
    assert_eq!(retry_after, "5");
    assert!(accepted.len() >= 1024, "only {} accepted", accepted.len());
    let db = h.bot_pool(id).await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE update_id = $1")
        .bind(refused_id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(stored, 0, "a refused update was stored");

    // Released: every accepted update is processed, and the refused one is taken on retry.
    gate.add_permits(1 << 20);
    let again = message_update(refused_id, 503, "hi");
    eventually(DEADLINE, "the refused update accepted on retry", || async {
        let code = post(&hook, Some(&real), &again).await.status().as_u16();
        assert!(code == 200 || code == 503, "unexpected {code}");
        (code == 200).then_some(())
    })
    .await;
    let want = accepted.len() as i64 + 1;
    eventually(DEADLINE, "every accepted update processed", || async {
        let processed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM inbox WHERE update_id >= 916100000 AND processed_at IS NOT NULL",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        (processed == want).then_some(())
    })
    .await;
    db.close().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_modes_both_ways_loses_no_update() {
    let (mut h, url) = start("polling", Registry::standard()).await;
    let (id, t) = h.add_bot("switch", 916_004).await;
    h.wait_state(id, "running").await;
    let admin = Admin::new(h.pool.clone(), Arc::new(h.settings.clone()));
    let mut chats = Vec::new();
    let say = |h: &Harness, chats: &mut Vec<i64>| {
        let chat = 60_000 + chats.len() as i64;
        h.sandbox
            .inject_message(InjectMessage::private(&t, chat, "/start"))
            .unwrap();
        chats.push(chat);
    };
    for _ in 0..3 {
        say(&h, &mut chats);
    }
    // Polling → webhook while updates keep coming.
    admin.set_mode(id, "webhook").await.unwrap();
    for _ in 0..5 {
        say(&h, &mut chats);
    }
    let hook = format!("{url}/telegram/{id}");
    wait_webhook(&h.sandbox_url, &t, &hook).await;
    for _ in 0..3 {
        say(&h, &mut chats);
    }
    for &chat in &chats {
        h.reply(&t, chat, 0, |_| true).await;
    }
    // Webhook → polling while updates keep coming.
    admin.set_mode(id, "polling").await.unwrap();
    for _ in 0..5 {
        say(&h, &mut chats);
    }
    wait_webhook(&h.sandbox_url, &t, "").await;
    for _ in 0..3 {
        say(&h, &mut chats);
    }
    for &chat in &chats {
        h.reply(&t, chat, 0, |_| true).await;
    }
    let db = h.bot_pool(id).await;
    common::settled(&db).await;
    let (rows, processed): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(processed_at) FROM inbox WHERE error IS NULL")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(rows, chats.len() as i64, "every update stored once");
    assert_eq!(processed, rows, "every update processed");
    let info = webhook_info(&h.sandbox_url, &t).await;
    assert_eq!(info["pending_update_count"], 0, "{info}");
    db.close().await;
    h.stop().await;
}

/// The line `serve` logs for its listener, once it appears.
async fn wait_log(log: &std::path::Path, needle: &str) {
    eventually(DEADLINE, needle, || async {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(needle)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_before_the_commit_loses_nothing() {
    let mut setup = ServeSetup::new("bvt_hookkill", false).await;
    let addr = common::free_address();
    let url = format!("http://{addr}");
    let api_url = setup.env["BOTVISOR_TELEGRAM_API_URL"].clone();
    let extra: HashMap<String, String> = [
        ("BOTVISOR__HTTP__LISTEN", addr.as_str()),
        ("BOTVISOR__HTTP__PUBLIC_URL", url.as_str()),
        ("BOTVISOR__TELEGRAM__DEFAULT_MODE", "webhook"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    setup.env.extend(extra);
    let mut stalling = setup.env.clone();
    stalling.insert(
        botvisor::runtime::inbox::webhook::STALL_ENV.into(),
        "1".into(),
    );
    let (id, t) = setup.add_bot("kill", 916_005).await;
    let serve = common::process::ServeProcess::start(&stalling, Some(&setup.log));
    let hook = format!("{url}/telegram/{id}");
    wait_webhook(&api_url, &t, &hook).await;

    setup
        .sandbox
        .inject_message(InjectMessage::private(&t, 701, "/start"))
        .unwrap();
    wait_log(&setup.log, "webhook update held before its commit").await;
    serve.signal("KILL");
    assert_eq!(serve.wait().await, None, "killed by a signal");
    let db = sqlx::PgPool::connect(&setup.bot_url(id)).await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(stored, 0, "nothing was committed before the kill");
    assert!(
        setup.sandbox.sent(&t, 701, 0).unwrap().is_empty(),
        "answered before the commit"
    );

    // Telegram (the sandbox) keeps redelivering; the next serve stores and answers it once.
    let serve = setup.start();
    setup.sandbox.wait_sent(&t, 701, 0, DEADLINE).await.unwrap();
    common::settled(&db).await;
    let (rows, processed): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(processed_at) FROM inbox")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!((rows, processed), (1, 1));
    let info = webhook_info(&api_url, &t).await;
    assert_eq!(info["pending_update_count"], 0, "{info}");
    serve.signal("TERM");
    assert_eq!(serve.wait().await, Some(0));
    db.close().await;
}
