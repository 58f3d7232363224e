//! The HTTP listener of `botvisor serve` (issue 16 item 1): `/healthz` answers while the
//! process lives, `/readyz` once the first reconcile is done and the panel answers. The panel
//! outage case is `resilience_panel::readyz_follows_the_panel`.

mod common;

use common::harness::Harness;

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
