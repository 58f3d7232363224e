//! The HTTP listener of `botvisor serve` (issue 16 item 1): `/healthz` answers while the
//! process lives, `/readyz` once the first reconcile is done, the panel answers and the
//! instance owns its share of the bots. The panel outage case is
//! `resilience_panel::readyz_follows_the_panel`.

mod common;

use botvisor::content::manifest::Manifest;
use botvisor::panel::store::{self, NewBot, OWNERSHIP_SPACE};
use botvisor::token::BotToken;
use common::harness::{DEADLINE, Harness};
use common::{eventually, token};
use sqlx::Connection;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_answer_200_on_a_healthy_daemon() {
    let mut h = Harness::start(&[("BOTVISOR__HTTP__LISTEN", "127.0.0.1:0")]).await;
    let addr = h.http_addr.expect("the listener is bound");
    let client = reqwest::Client::new();

    let health = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok\n");

    let ready = client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(body["panel_reachable"], true, "{body}");
    assert_eq!(body["reconciled"], true, "{body}");

    let missing = client
        .get(format!("http://{addr}/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_listen_address_there_is_no_listener() {
    let mut h = Harness::start(&[]).await;
    assert_eq!(h.http_addr, None);
    h.stop().await;
}

/// `/readyz` is 503 while a bot of this instance's share is locked by another session (past
/// the grace), says so in `reasons`, and is 200 again once the lock is released and the
/// instance took the bot (issue 16: "the instance owns what it should").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_instance_to_own_its_share() {
    let mut h = Harness::start(&[("BOTVISOR__HTTP__LISTEN", "127.0.0.1:0")]).await;
    let addr = h.http_addr.expect("the listener is bound");
    let client = reqwest::Client::new();
    let readyz = || {
        let client = client.clone();
        async move {
            let r = client
                .get(format!("http://{addr}/readyz"))
                .send()
                .await
                .unwrap();
            let code = r.status().as_u16();
            (code, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (code, body) = readyz().await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["reasons"], serde_json::json!([]), "{body}");

    // A bot added disabled, its ownership lock taken by another session, then enabled: it is
    // this instance's share (the only instance), but the lock cannot be had.
    let t = token(7101);
    h.sandbox.register_bot(&t, Some("owned_bot")).unwrap();
    let id = store::add_bot(
        &h.pool,
        &h.panel.keys(),
        &NewBot {
            name: "owned",
            token: &BotToken::parse(&t).unwrap(),
            enabled: false,
            database: None,
            manifest: &Manifest::default(),
        },
    )
    .await
    .unwrap();
    let mut other = sqlx::PgConnection::connect(&h.panel.url).await.unwrap();
    let key = (OWNERSHIP_SPACE << 32) | id;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert!(locked);
    store::set_enabled(&h.pool, id, true).await.unwrap();

    let body = eventually(DEADLINE, "/readyz 503 for the share not owned", || async {
        let (code, body) = readyz().await;
        (code == 503).then_some(body)
    })
    .await;
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["panel_reachable"], true, "{body}");
    assert_eq!(body["assigned"], 1, "{body}");
    assert_eq!(body["owned"], 0, "{body}");
    assert_eq!(body["unowned"], serde_json::json!([id]), "{body}");
    let reasons = body["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "only the ownership check fails: {body}");
    assert!(
        reasons[0]
            .as_str()
            .unwrap()
            .starts_with("owns 0 of the 1 bots of its share"),
        "{body}"
    );

    // Released: the next pass takes it, the bot runs here and the instance is ready.
    let unlocked: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert!(unlocked);
    let body = eventually(DEADLINE, "/readyz 200 once the bot is owned", || async {
        let (code, body) = readyz().await;
        (code == 200).then_some(body)
    })
    .await;
    assert_eq!(body["owned"], 1, "{body}");
    assert_eq!(body["unowned_count"], 0, "{body}");
    h.wait_state(id, "running").await;
    other.close().await.unwrap();
    h.stop().await;
}
