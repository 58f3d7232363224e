//! The delivery engine through the sandbox: answers are committed to the outbox and sent after
//! the commit (no transaction open across a Telegram call), within Telegram's limits (zero
//! 429s from a sandbox that enforces them), with a 429's `retry_after` honoured exactly and
//! replies overtaking a running mailing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use botvisor::content::manifest::{Manifest, ManifestError};
use botvisor::content::snapshot::Section;
use botvisor::modules::{Flow, Module, ModuleError, Registry, SentCx, UpdateCx};
use botvisor::sandbox::{Fault, Hold, InjectMessage};
use botvisor::telegram::{Delivery, Lane, Request};
use common::eventually;
use common::harness::{DEADLINE, Harness};
use futures::future::BoxFuture;
use sqlx::PgPool;
use teloxide::types::{ChatId, UpdateKind};
use tokio::time::Instant;

/// The default answer to `/help` (the bots here have no texts).
const HELP: &str = "Send /start to begin.";

/// A test module: `/mail` queues one bulk message to every known user but the sender.
struct Mailer;

impl Module for Mailer {
    fn name(&self) -> &'static str {
        "mailer"
    }

    fn load(&self, _manifest: &Manifest) -> Result<Option<Section>, ManifestError> {
        Ok(Some(Arc::new(())))
    }

    fn on_update<'a>(
        &'a self,
        cx: &'a mut UpdateCx<'_>,
    ) -> BoxFuture<'a, Result<Flow, ModuleError>> {
        Box::pin(async move {
            let UpdateKind::Message(msg) = &cx.update.kind else {
                return Ok(Flow::Continue);
            };
            if msg.text() != Some("/mail") {
                return Ok(Flow::Continue);
            }
            let users: Vec<i64> = sqlx::query_scalar(
                "SELECT user_id FROM users WHERE user_id <> $1 ORDER BY user_id",
            )
            .bind(msg.chat.id.0)
            .fetch_all(cx.tx()?)
            .await?;
            for user in users {
                let request = Request::text_message(format!("news for {user}"));
                cx.queue(Lane::Bulk, ChatId(user), Some(user), &request)
                    .await?;
            }
            Ok(Flow::Stop)
        })
    }
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_transaction_is_open_while_telegram_holds_a_send() {
    let mut h = Harness::start(&[]).await;
    let (id, t) = h.add_bot("held", 5101).await;
    h.wait_state(id, "running").await;
    let hold = h
        .sandbox
        .add_hold(Hold {
            token: Some(t.clone()),
            method: Some("sendMessage".into()),
            count: Some(1),
            max_ms: None,
        })
        .unwrap();
    h.say(&t, 11, "/help");
    eventually(DEADLINE, "the send to be held", || async {
        h.sandbox
            .holds()
            .iter()
            .any(|x| x.hold_id == hold && x.waiting == 1)
            .then_some(())
    })
    .await;
    // While Telegram holds the send, the update is committed and no connection of the bot's
    // database sits in a transaction.
    let pool = h.bot_pool(id).await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM inbox WHERE processed_at IS NULL"
        )
        .await,
        0
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM outbox WHERE done_at IS NULL").await,
        1
    );
    let db = h.bot_database(id);
    let in_tx: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
         AND state IN ('idle in transaction', 'idle in transaction (aborted)')",
    )
    .bind(&db)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(in_tx, 0, "a transaction stayed open across the held send");
    // The history records the answer only once Telegram accepted it.
    assert_eq!(
        count(&pool, "SELECT count(*) FROM messages WHERE role = 'bot'").await,
        0
    );
    h.sandbox.release_hold(hold).unwrap();
    h.reply(&t, 11, 0, |s| s == HELP).await;
    eventually(DEADLINE, "the send recorded", || async {
        let sent = count(
            &pool,
            "SELECT count(*) FROM outbox WHERE outcome = 'sent' AND message_id IS NOT NULL",
        )
        .await;
        let history = count(&pool, "SELECT count(*) FROM messages WHERE role = 'bot'").await;
        (sent == 1 && history == 1).then_some(())
    })
    .await;
    pool.close().await;
    assert!(h.stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_keep_within_telegrams_limits() {
    let mut h = Harness::start_rate_limited(&[], Registry::standard()).await;
    let (_, t) = h.add_bot("limits", 5201).await;
    // One chat asks ten times at once: a burst, then one answer a second.
    for _ in 0..10 {
        h.say(&t, 21, "/help");
    }
    // Sixty chats ask at once: more than the bot's 30 a second.
    for chat in 1000..1060 {
        h.say(&t, chat, "/help");
    }
    eventually(DEADLINE, "every question answered", || async {
        let one_chat = h
            .sandbox
            .sent(&t, 21, 0)
            .unwrap()
            .iter()
            .filter(|e| e.text() == Some(HELP))
            .count();
        let mut others = 0;
        for chat in 1000..1060 {
            if h.sandbox
                .sent(&t, chat, 0)
                .unwrap()
                .iter()
                .any(|e| e.text() == Some(HELP))
            {
                others += 1;
            }
        }
        (one_chat == 10 && others == 60).then_some(())
    })
    .await;
    let stats = h.sandbox.stats();
    assert_eq!(stats.rate_limited(&t), 0, "the sandbox answered 429");
    assert_eq!(stats.calls(&t, "sendMessage"), 70);
    assert!(h.stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_that_bot_for_exactly_retry_after() {
    let mut h = Harness::start(&[]).await;
    let (_, slow) = h.add_bot("slowed", 5301).await;
    let (_, other) = h.add_bot("other", 5302).await;
    // Both bots answer once, so both are polling.
    h.say(&slow, 31, "/help");
    h.reply(&slow, 31, 0, |s| s == HELP).await;
    h.say(&other, 32, "/help");
    h.reply(&other, 32, 0, |s| s == HELP).await;
    let calls_before = h.sandbox.stats().calls(&slow, "sendMessage");
    h.sandbox
        .add_fault(Fault {
            token: Some(slow.clone()),
            method: Some("sendMessage".into()),
            status: 429,
            description: None,
            retry_after: Some(3),
            count: Some(1),
            delay_ms: None,
        })
        .unwrap();
    let after = h.last_seq(&slow, 31);
    let asked = Instant::now();
    h.say(&slow, 31, "/help");
    // Meanwhile another bot answers at once.
    let other_after = h.last_seq(&other, 32);
    let other_asked = Instant::now();
    h.say(&other, 32, "/help");
    h.reply(&other, 32, other_after, |s| s == HELP).await;
    let other_took = other_asked.elapsed();
    h.reply(&slow, 31, after, |s| s == HELP).await;
    let took = asked.elapsed();
    eprintln!("429 retry_after=3: answered after {took:?}; the other bot after {other_took:?}");
    assert!(took >= Duration::from_secs(3), "{took:?}");
    assert!(other_took < Duration::from_secs(3), "{other_took:?}");
    // Exactly one refused call and one that went through.
    assert_eq!(
        h.sandbox.stats().calls(&slow, "sendMessage") - calls_before,
        2
    );
    assert!(h.stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_overtake_a_running_mailing() {
    const USERS: i64 = 150;
    let mut h = Harness::start_rate_limited(&[], Registry::standard().with(Arc::new(Mailer))).await;
    let (id, t) = h.add_bot("mailing", 5401).await;
    h.wait_state(id, "running").await;
    // Users who wrote once (core answers plain text with nothing).
    for user in 0..USERS {
        h.sandbox
            .inject_message(InjectMessage::private(&t, 10_000 + user, "hi"))
            .unwrap();
    }
    let pool = h.bot_pool(id).await;
    eventually(DEADLINE, "every user registered", || async {
        (count(&pool, "SELECT count(*) FROM users").await == USERS).then_some(())
    })
    .await;
    h.say(&t, 10_000, "/mail");
    eventually(DEADLINE, "the mailing under way", || async {
        (count(
            &pool,
            "SELECT count(*) FROM outbox WHERE lane = 2 AND outcome = 'sent'",
        )
        .await
            >= 20)
            .then_some(())
    })
    .await;
    let after = h.last_seq(&t, 77);
    let asked = Instant::now();
    h.say(&t, 77, "/help");
    h.reply(&t, 77, after, |s| s == HELP).await;
    let took = asked.elapsed();
    let left = count(
        &pool,
        "SELECT count(*) FROM outbox WHERE lane = 2 AND done_at IS NULL",
    )
    .await;
    eprintln!("reply during a mailing of {USERS}: {took:?}, {left} mailing sends still queued");
    assert!(
        left > 0,
        "the mailing was over before the reply; nothing was overtaken"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    eventually(DEADLINE, "the whole mailing sent", || async {
        (count(
            &pool,
            "SELECT count(*) FROM outbox WHERE lane = 2 AND outcome = 'sent'",
        )
        .await
            == USERS - 1)
            .then_some(())
    })
    .await;
    assert_eq!(
        h.sandbox.stats().rate_limited(&t),
        0,
        "the sandbox answered 429"
    );
    pool.close().await;
    assert!(h.stop().await.clean());
}

/// A test module whose first `on_sent` step, once armed, waits until the test opens the gate:
/// it holds the bot's sender inside the record of a result.
struct Gate {
    armed: std::sync::atomic::AtomicBool,
    entered: std::sync::atomic::AtomicBool,
    open: tokio::sync::Semaphore,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            armed: Default::default(),
            entered: Default::default(),
            open: tokio::sync::Semaphore::new(0),
        }
    }
}

impl Module for Gate {
    fn name(&self) -> &'static str {
        "gate"
    }

    fn load(&self, _manifest: &Manifest) -> Result<Option<Section>, ManifestError> {
        Ok(Some(Arc::new(())))
    }

    fn on_sent<'a>(
        &'a self,
        _cx: &'a mut SentCx<'_>,
        _deliveries: &'a [Delivery],
    ) -> BoxFuture<'a, Result<(), ModuleError>> {
        use std::sync::atomic::Ordering::SeqCst;
        Box::pin(async move {
            if self.armed.swap(false, SeqCst) {
                self.entered.store(true, SeqCst);
                let _permit = self.open.acquire().await;
            }
            Ok(())
        })
    }
}

/// The stop's drain begins once the processor handed its last requests to the sender; a
/// sender busy recording a result at that moment still sends them before it ends (they wait
/// in its hand-over channel, and it reads the outbox when it sees the drain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_handed_over_while_the_sender_records_are_sent_before_the_stop() {
    use std::sync::atomic::Ordering::SeqCst;
    let gate = Arc::new(Gate::default());
    let mut h = Harness::start_with(&[], Registry::standard().with(gate.clone())).await;
    let (id, t) = h.add_bot("gate", 5403).await;
    h.wait_state(id, "running").await;
    gate.armed.store(true, SeqCst);
    h.say(&t, 1, "/help");
    h.reply(&t, 1, 0, |s| s == HELP).await;
    eventually(DEADLINE, "the sender held in its record", || async {
        gate.entered.load(SeqCst).then_some(())
    })
    .await;
    // Processed and handed over while the sender is held; the last one right before the
    // stop, so the listener's last call confirms it.
    let pool = h.bot_pool(id).await;
    for chat in 2..=6 {
        h.say(&t, chat, "/help");
        eventually(DEADLINE, "the update processed", || async {
            (count(&pool, "SELECT count(processed_at) FROM inbox").await == chat).then_some(())
        })
        .await;
    }
    pool.close().await;
    let polls = || {
        h.sandbox
            .stats()
            .bots
            .get(&t)
            .and_then(|b| b.calls.get("getUpdates").copied())
            .unwrap_or(0)
    };
    let before = polls();
    h.begin_stop();
    // The listener's last call (the confirmation) ends the intake; the processor, with
    // nothing left, ends right after it and the drain begins.
    eventually(DEADLINE, "the listener's last call", || async {
        (polls() > before).then_some(())
    })
    .await;
    gate.open.add_permits(1);
    let report = h.stop().await;
    assert!(report.clean(), "{report:?}");
    for chat in 2..=6 {
        assert!(
            !h.sandbox.sent(&t, chat, 0).unwrap().is_empty(),
            "chat {chat} was not answered before the stop"
        );
    }
}

/// Whether the inbox row of chat `chat`'s update, the user's history row and the stored offset
/// were all written by one transaction (the offset row is rewritten by every stored batch, so
/// this holds only for the last batch stored).
async fn stored_and_processed_together(pool: &PgPool, chat: i64) -> bool {
    sqlx::query_scalar(
        "SELECT (SELECT xmin::text FROM inbox WHERE chat_id = $1) \
                = (SELECT xmin::text FROM bot_state WHERE key LIKE 'offset:%') \
            AND (SELECT xmin::text FROM inbox WHERE chat_id = $1) \
                = (SELECT xmin::text FROM messages WHERE chat_id = $1 AND role = 'user')",
    )
    .bind(chat)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A fetched batch whose steps only write is stored, processed and its offset recorded by one
/// statement: its inbox row is written once, already processed, in the transaction that wrote
/// the user's history row and the offset. A batch whose step reads the database (`/mail`) is
/// stored first and processed in a transaction of its own. Both are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_batch_whose_steps_only_write_is_stored_and_processed_in_one_statement() {
    let h = Harness::start_with(&[], Registry::standard().with(Arc::new(Mailer))).await;
    let (id, t) = h.add_bot("fresh", 5404).await;
    h.wait_state(id, "running").await;
    let pool = h.bot_pool(id).await;

    h.say(&t, 1, "/help");
    h.reply(&t, 1, 0, |s| s == HELP).await;
    assert!(stored_and_processed_together(&pool, 1).await);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM inbox WHERE processed_at IS NULL"
        )
        .await,
        0
    );

    h.say(&t, 2, "/mail");
    h.reply(&t, 1, 0, |s| s == "news for 1").await;
    assert!(
        !stored_and_processed_together(&pool, 2).await,
        "a step that reads needs the stored update's own transaction"
    );
    let processed_with_history: bool = sqlx::query_scalar(
        "SELECT (SELECT xmin::text FROM inbox WHERE chat_id = 2) \
              = (SELECT xmin::text FROM messages WHERE chat_id = 2 AND role = 'user')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(processed_with_history, "marked processed with its effects");
}

/// Under a backlog the sender records its results in groups: thirty chats asking at once are
/// answered one per send slot of the bot (≈ 35 ms), and each result waits up to
/// `RECORD_LINGER` (100 ms) for the next ones, so the thirty rows are marked done by far fewer
/// transactions; every answer's history row is kept all the same. A result that finds
/// nothing else queued or in flight is recorded at once (the last one, here: the outbox holds
/// no pending row as soon as its answer is seen, within the test's deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlogs_results_are_recorded_in_groups() {
    let h = Harness::start(&[]).await;
    let (id, t) = h.add_bot("grouped", 5405).await;
    h.wait_state(id, "running").await;
    let pool = h.bot_pool(id).await;
    let chats = 3000..3030;
    for chat in chats.clone() {
        h.say(&t, chat, "/help");
    }
    for chat in chats.clone() {
        h.reply(&t, chat, 0, |s| s == HELP).await;
    }
    eventually(DEADLINE, "every answer recorded", || async {
        (count(&pool, "SELECT count(*) FROM outbox WHERE done_at IS NULL").await == 0).then_some(())
    })
    .await;
    let (rows, groups): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT xmin::text) FROM outbox WHERE outcome = 'sent'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rows, 30);
    assert!(
        groups <= 20,
        "30 results of a backlog recorded by {groups} transactions"
    );
    let history = count(
        &pool,
        "SELECT count(*) FROM messages WHERE role = 'bot' AND chat_id BETWEEN 3000 AND 3029",
    )
    .await;
    assert_eq!(history, 30, "every answer in history");
}
