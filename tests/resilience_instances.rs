//! Two `serve` processes on one panel (issue 13 item 3): the second notices the first's live
//! heartbeat, logs one line naming it, runs no bots and writes no `bot_status`; stopping it
//! leaves the first's rows alone; once the first stops, the second takes over.

mod common;

use std::time::Duration;

use botvisor::content::manifest::Manifest;
use botvisor::panel::store::{self, NewBot};
use botvisor::token::BotToken;
use common::process::ServeProcess;
use common::{TestDb, eventually};

const DEADLINE: Duration = Duration::from_secs(60);

fn env(
    panel: &TestDb,
    sandbox_url: &str,
    instance: &str,
) -> std::collections::HashMap<String, String> {
    let mut env = panel.env();
    env.insert("BOTVISOR_TELEGRAM_API_URL".into(), sandbox_url.into());
    env.insert("BOTVISOR__TELEGRAM__POLL_TIMEOUT_SECS".into(), "2".into());
    env.insert("BOTVISOR__SUPERVISOR__INSTANCE".into(), instance.into());
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_stands_by() {
    let panel = TestDb::create("bvt_two").await;
    let pool = panel.pool().await;
    let (sandbox, url, sandbox_stop) = common::harness::start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let alpha = ServeProcess::start(
        &env(&panel, &url, "alpha"),
        Some(&dir.path().join("alpha.log")),
    );

    let t = common::token(913_101);
    sandbox.register_bot(&t, Some("two_bot")).unwrap();
    // The panel's tables exist once alpha applied its migrations.
    let id = eventually(DEADLINE, "bot added", || async {
        store::add_bot(
            &pool,
            &panel.keys(),
            &NewBot {
                name: "two",
                token: &BotToken::parse(&t).unwrap(),
                enabled: true,
                database: None,
                manifest: &Manifest::default(),
            },
        )
        .await
        .ok()
    })
    .await;
    let running_on = |instance: &'static str| {
        let pool = pool.clone();
        async move {
            store::get_status(&pool, id)
                .await
                .unwrap()
                .filter(|s| s.state == "running" && s.instance == instance)
        }
    };
    eventually(DEADLINE, "running on alpha", || running_on("alpha")).await;

    let beta_log = dir.path().join("beta.log");
    let beta = ServeProcess::start(&env(&panel, &url, "beta"), Some(&beta_log));
    let line = eventually(DEADLINE, "beta names alpha", || {
        let log = std::fs::read_to_string(&beta_log).unwrap_or_default();
        let found = log
            .lines()
            .find(|l| l.contains("another botvisor instance") && l.contains("alpha"))
            .map(str::to_owned);
        async move { found }
    })
    .await;
    assert!(line.contains("other_pid"), "{line}");
    // Beta has decided (it logged) and its loop has turned; the bot is still alpha's.
    sandbox
        .inject_message(botvisor::sandbox::InjectMessage::private(&t, 5, "/start"))
        .unwrap();
    assert!(
        !sandbox
            .wait_sent(&t, 5, 0, DEADLINE)
            .await
            .unwrap()
            .is_empty()
    );
    let log = std::fs::read_to_string(&beta_log).unwrap();
    assert_eq!(log.matches("another botvisor instance").count(), 1, "{log}");

    beta.signal("TERM");
    assert_eq!(beta.wait().await, Some(0));
    let status = store::get_status(&pool, id).await.unwrap().unwrap();
    assert_eq!(
        (status.state.as_str(), status.instance.as_str()),
        ("running", "alpha"),
        "the standby instance wrote bot_status"
    );

    // A standby takes over once the running instance stops.
    let beta = ServeProcess::start(&env(&panel, &url, "beta"), Some(&beta_log));
    eventually(DEADLINE, "beta stands by again", || {
        let log = std::fs::read_to_string(&beta_log).unwrap_or_default();
        let n = log.matches("another botvisor instance").count();
        async move { (n == 2).then_some(()) }
    })
    .await;
    alpha.signal("TERM");
    assert_eq!(alpha.wait().await, Some(0));
    eventually(DEADLINE, "running on beta", || running_on("beta")).await;
    let instances: Vec<String> = sqlx::query_scalar("SELECT name FROM instances")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(instances, ["beta"]);
    beta.signal("TERM");
    assert_eq!(beta.wait().await, Some(0));
    sandbox_stop.cancel();
}
