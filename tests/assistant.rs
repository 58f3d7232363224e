//! The assistant module end to end: a daemon, the sandbox's Bot API and its OpenAI-compatible
//! endpoint, the bot's own database, the CLI. docs/assistant.md names these tests.

mod common;

use std::collections::HashMap;

use botvisor::content::manifest::Manifest;
use botvisor::panel::store::{self, NewBot};
use botvisor::sandbox::{AiFault, AiRequest, InjectMessage, SentKind};
use botvisor::token::BotToken;
use common::harness::{DEADLINE, Harness};
use common::process::ServeProcess;
use common::{TestDb, botvisor, botvisor_with_input, eventually, settled, token};
use serde_json::{Value, json};

/// The API key every test stores as the bot's secret `openai`.
const KEY: &str = "sk-test-Zq81xKv0secret";

/// An assistant section against the sandbox at `sandbox_url` (ending in `/`), with `extra`
/// fields.
fn manifest(sandbox_url: &str, extra: Value) -> Value {
    let mut section = json!({
        "base_url": format!("{sandbox_url}v1"),
        "model": "sandbox-echo",
        "api_key_secret": "openai",
        "system_prompt": "prompt",
        "failure_text": "sorry",
    });
    for (k, v) in extra.as_object().unwrap() {
        section[k] = v.clone();
    }
    json!({ "assistant": section })
}

const TEXTS: &[(&str, &str, &str)] = &[
    ("prompt", "en", "Answer in English."),
    ("prompt", "ru", "Отвечай по-русски."),
    ("sorry", "en", "The assistant is resting."),
];

/// A message from user `user` in language `lang`.
fn from(t: &str, user: i64, lang: &str, text: &str) -> InjectMessage {
    InjectMessage {
        language_code: Some(lang.into()),
        ..InjectMessage::private(t, user, text)
    }
}

/// The messages of a recorded model request as `role: content`.
fn conversation(r: &AiRequest) -> Vec<String> {
    r.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}: {}",
                m["role"].as_str().unwrap(),
                m["content"].as_str().unwrap()
            )
        })
        .collect()
}

/// Asks `text` as `user` and waits for the bot's answer satisfying `pred`.
async fn ask(h: &Harness, t: &str, user: i64, lang: &str, text: &str, want: &str) {
    let before = h.last_seq(t, user);
    h.sandbox.inject_message(from(t, user, lang, text)).unwrap();
    h.reply(t, user, before, |x| x == want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_gets_the_prompt_and_the_context_and_answers_go_to_history_once() {
    let h = Harness::start(&[]).await;
    let (id, t) = h
        .add_configured(
            "assistant",
            17101,
            manifest(
                &h.sandbox_url,
                json!({"max_context_messages": 3, "max_reply_tokens": 50,
                    "daily_limit_per_user": 4, "limit_text": "limit"}),
            ),
            &[TEXTS, &[("limit", "en", "Enough for today.")]].concat(),
            &[("openai", KEY)],
        )
        .await;
    let user = 701;
    ask(&h, &t, user, "en", "hello", "echo: hello").await;
    ask(&h, &t, user, "en", "how are you", "echo: how are you").await;
    ask(&h, &t, user, "en", "third one", "echo: third one").await;

    // The request has the key, the model, the reply limit, the system prompt in the user's
    // language and the newest context (3 messages: the question and the two before it),
    // oldest first.
    let requests = h.sandbox.ai_requests(None);
    assert_eq!(requests.len(), 3);
    let last = &requests[2];
    assert_eq!(last.key.as_deref(), Some(KEY));
    assert_eq!(last.body["model"], "sandbox-echo");
    assert_eq!(last.body["max_tokens"], 50);
    assert_eq!(
        conversation(last),
        [
            "system: Answer in English.",
            "user: how are you",
            "assistant: echo: how are you",
            "user: third one"
        ]
    );

    // /reset starts a new context; the history keeps everything.
    let before = h.last_seq(&t, user);
    h.sandbox
        .inject_message(from(&t, user, "en", "/reset"))
        .unwrap();
    h.reply(&t, user, before, |x| x == "Let's start a new conversation.")
        .await;
    // That reply enters the history when its send is recorded (history's `on_sent`), a
    // moment after the sandbox has it: the next message waits for that, or the history's
    // order below would depend on which commit came first.
    let db = h.bot_pool(id).await;
    settled(&db).await;
    ask(&h, &t, user, "en", "fresh start", "echo: fresh start").await;
    let requests = h.sandbox.ai_requests(None);
    assert_eq!(
        conversation(&requests[3]),
        ["system: Answer in English.", "user: fresh start"]
    );

    // A Russian-speaking user gets the Russian prompt.
    ask(&h, &t, 702, "ru", "привет", "echo: привет").await;
    assert_eq!(
        conversation(&h.sandbox.ai_requests(None)[4])[0],
        "system: Отвечай по-русски."
    );

    // The fifth question of the day is over the limit: the limit text, no model call.
    ask(&h, &t, user, "en", "one more", "Enough for today.").await;
    assert_eq!(h.sandbox.ai_requests(None).len(), 5);

    // `botvisor history --json` prints exactly {role, content, timestamp}, each answer once.
    settled(&db).await;
    let run = botvisor(
        &h.panel.env(),
        &[
            "history",
            &id.to_string(),
            "--chat",
            &user.to_string(),
            "--json",
        ],
    );
    let out = run.ok();
    assert!(!out.contains(KEY) && !run.stderr.contains(KEY));
    let history: Vec<Value> = serde_json::from_str(out).unwrap();
    let mut shape: Vec<String> = Vec::new();
    for entry in &history {
        let keys: Vec<&String> = entry.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["content", "role", "timestamp"], "{entry}");
        shape.push(format!(
            "{}: {}",
            entry["role"].as_str().unwrap(),
            entry["content"].as_str().unwrap()
        ));
    }
    assert_eq!(
        shape,
        [
            "user: hello",
            "assistant: echo: hello",
            "user: how are you",
            "assistant: echo: how are you",
            "user: third one",
            "assistant: echo: third one",
            "user: /reset",
            "bot: Let's start a new conversation.",
            "user: fresh start",
            "assistant: echo: fresh start",
            "user: one more",
            "bot: Enough for today.",
        ]
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_429_500_and_timeouts_are_retried_then_answered_with_the_failure_text() {
    let h = Harness::start(&[]).await;
    let (id, t) = h
        .add_configured(
            "assistant_faults",
            17102,
            manifest(&h.sandbox_url, json!({"timeout_secs": 1})),
            TEXTS,
            &[("openai", KEY)],
        )
        .await;
    let statuses = || -> Vec<u16> {
        h.sandbox
            .ai_requests(None)
            .iter()
            .map(|r| r.status)
            .collect()
    };

    // A 429 (Retry-After 1) is waited out; the second call answers.
    h.sandbox
        .add_ai_fault(AiFault {
            status: 429,
            count: Some(1),
            ..Default::default()
        })
        .unwrap();
    ask(&h, &t, 801, "en", "first", "echo: first").await;
    assert_eq!(statuses(), [429, 200]);

    // 500s three times: three attempts, then the configured failure text.
    h.sandbox
        .add_ai_fault(AiFault {
            status: 500,
            count: Some(3),
            ..Default::default()
        })
        .unwrap();
    ask(&h, &t, 801, "en", "second", "The assistant is resting.").await;
    assert_eq!(statuses(), [429, 200, 500, 500, 500]);

    // A model slower than timeout_secs three times: the same.
    h.sandbox
        .add_ai_fault(AiFault {
            status: 200,
            count: Some(3),
            delay_ms: Some(3000),
            ..Default::default()
        })
        .unwrap();
    ask(&h, &t, 802, "en", "slow", "The assistant is resting.").await;
    assert_eq!(statuses().len(), 8);
    // The typing indicator was on while the model worked.
    let typing = h
        .sandbox
        .sent(&t, 802, 0)
        .unwrap()
        .iter()
        .filter(|e| matches!(&e.kind, SentKind::ChatAction { action } if action == "typing"))
        .count();
    assert!(typing >= 3, "typing indicators: {typing}");

    // The failures are kept with the request, without the key.
    let db = h.bot_pool(id).await;
    settled(&db).await;
    let rows: Vec<(String, i32, Option<String>)> =
        sqlx::query_as("SELECT outcome, attempts, error FROM assistant_requests ORDER BY id")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!((rows[0].0.as_str(), rows[0].1), ("answered", 1));
    assert_eq!(rows[1].0, "failed");
    assert!(
        rows[1].2.as_deref().unwrap().contains("HTTP 500"),
        "{rows:?}"
    );
    assert!(
        rows[2]
            .2
            .as_deref()
            .unwrap()
            .contains("no answer within 1 s"),
        "{rows:?}"
    );
    assert!(!format!("{rows:?}").contains(KEY));
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_gets_the_failure_text_without_a_call() {
    let h = Harness::start(&[]).await;
    let (_, t) = h
        .add_configured(
            "assistant_nokey",
            17103,
            manifest(&h.sandbox_url, json!({})),
            TEXTS,
            &[],
        )
        .await;
    ask(&h, &t, 901, "en", "hello?", "The assistant is resting.").await;
    assert!(h.sandbox.ai_requests(None).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_the_model_call_is_in_flight_loses_nothing_and_answers_once() {
    let panel = TestDb::create("bvt_assist").await;
    botvisor::schema::apply(&botvisor::schema::PANEL, &panel.url.parse().unwrap())
        .await
        .unwrap();
    let (sb, api_url, stop_sandbox) = common::harness::start_sandbox().await;
    let t = token(17104);
    sb.register_bot(&t, None).unwrap();
    let pool = panel.pool().await;
    let manifest = Manifest::from_value(&manifest(&api_url, json!({}))).unwrap();
    let id = store::add_bot(
        &pool,
        &panel.keys(),
        &NewBot {
            name: "killed",
            token: &BotToken::parse(&t).unwrap(),
            enabled: true,
            database: None,
            manifest: &manifest,
        },
    )
    .await
    .unwrap();
    let mut env: HashMap<String, String> = panel.env();
    let set = botvisor_with_input(
        &env,
        &["secret", "set", &id.to_string(), "openai", "--stdin"],
        KEY.as_bytes(),
    );
    set.ok();
    assert!(!set.stdout.contains(KEY) && !set.stderr.contains(KEY));
    env.insert("BOTVISOR_TELEGRAM_API_URL".into(), api_url.clone());
    env.insert("BOTVISOR__TELEGRAM__POLL_TIMEOUT_SECS".into(), "1".into());
    env.insert("RUST_LOG".into(), "debug,hyper=info,h2=info".into());
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("serve.log");

    // The first call takes 30 s: the daemon is killed while it is in flight.
    sb.add_ai_fault(AiFault {
        status: 200,
        count: Some(1),
        delay_ms: Some(30_000),
        ..Default::default()
    })
    .unwrap();
    let serve = ServeProcess::start(&env, Some(&log));
    let user = 1001;
    sb.inject_message(from(&t, user, "en", "are you alive?"))
        .unwrap();
    eventually(DEADLINE, "the model call in flight", || async {
        (sb.ai_requests(None).len() == 1).then_some(())
    })
    .await;
    serve.signal("KILL");
    serve.wait().await;

    // The next run asks again and answers once.
    let serve = ServeProcess::start(&env, Some(&log));
    eventually(DEADLINE, "the answer", || async {
        sb.sent(&t, user, 0)
            .unwrap()
            .iter()
            .any(|e| e.text() == Some("echo: are you alive?"))
            .then_some(())
    })
    .await;
    let db = sqlx::PgPool::connect(&format!("{}/{}_bot_{id}", common::server_url(), panel.name))
        .await
        .unwrap();
    settled(&db).await;
    let answers = sb
        .sent(&t, user, 0)
        .unwrap()
        .iter()
        .filter(|e| e.text() == Some("echo: are you alive?"))
        .count();
    assert_eq!(answers, 1, "answered once");
    let roles: Vec<String> =
        sqlx::query_scalar("SELECT role FROM messages WHERE chat_id = $1 ORDER BY id")
            .bind(user)
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(roles, ["user", "assistant"]);
    assert_eq!(sb.ai_requests(None).len(), 2);
    serve.signal("TERM");
    assert_eq!(serve.wait().await, Some(0));
    db.close().await;

    // The key reached the provider and nothing else: not the log (at debug level), not the
    // CLI.
    assert_eq!(sb.ai_requests(None)[1].key.as_deref(), Some(KEY));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.is_empty());
    assert!(!text.contains(KEY), "the key is in the daemon's log");
    let list = botvisor(&panel.env(), &["secret", "list", &id.to_string()]);
    assert!(list.ok().contains("openai") && !list.stdout.contains(KEY));
    pool.close().await;
    stop_sandbox.cancel();
}
