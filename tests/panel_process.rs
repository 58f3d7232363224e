//! `botvisor panel` as a process, as systemd runs it: SIGTERM ends it cleanly (exit 0), and
//! the daemon keeps answering while the panel restarts.

mod common;

use std::time::Duration;

use common::free_address;
use common::harness::Harness;
use common::process::ServeProcess;

/// Waits until the panel at `addr` serves its sign-in page.
async fn wait_up(addr: &str) {
    let url = format!("http://{addr}/login");
    common::eventually(Duration::from_secs(30), "the panel to answer", || {
        let url = url.clone();
        async move {
            let r = reqwest::get(&url).await.ok()?;
            r.status().is_success().then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn sigterm_stops_the_panel_cleanly_and_the_bots_keep_answering() {
    let h = Harness::start(&[]).await;
    let (id, bot_token) = h.add_bot("steady", 7701).await;
    h.wait_state(id, "running").await;
    let env = h.panel.env();
    let addr = free_address();
    let log = tempfile::NamedTempFile::new().unwrap();

    let panel = ServeProcess::start_args(&env, Some(log.path()), &["panel", "--listen", &addr]);
    wait_up(&addr).await;
    panel.signal("TERM");
    let code = tokio::time::timeout(Duration::from_secs(20), panel.wait())
        .await
        .expect("the panel exits within 20 s of SIGTERM");
    let log_text = std::fs::read_to_string(log.path()).unwrap();
    assert_eq!(code, Some(0), "clean exit; log:\n{log_text}");
    assert!(log_text.contains("SIGTERM"), "{log_text}");

    // With the panel down, the bot answers; and again once the panel is back.
    let chat = 77;
    let after = h.last_seq(&bot_token, chat);
    h.say(&bot_token, chat, "/start");
    h.reply(&bot_token, chat, after, |_| true).await;
    let again = ServeProcess::start_args(&env, None, &["panel", "--listen", &addr]);
    wait_up(&addr).await;
    let after = h.last_seq(&bot_token, chat);
    h.say(&bot_token, chat, "/start");
    h.reply(&bot_token, chat, after, |_| true).await;
    again.signal("TERM");
    assert_eq!(again.wait().await, Some(0));
}
