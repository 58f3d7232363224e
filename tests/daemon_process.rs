//! `botvisor serve` as systemd runs it: READY / STATUS / WATCHDOG on NOTIFY_SOCKET, and a
//! clean exit 0 on SIGTERM.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::TestDb;
use common::process::ServeProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_systemd_and_stops_cleanly_on_sigterm() {
    let panel = TestDb::create("bvt_notify_sock").await;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut env = panel.env();
    env.insert(
        "NOTIFY_SOCKET".into(),
        socket_path.to_string_lossy().into_owned(),
    );
    // 300 ms watchdog: the daemon pings every 100 ms while its loop turns.
    env.insert("WATCHDOG_USEC".into(), "300000".into());
    env.insert(
        "BOTVISOR_TELEGRAM_API_URL".into(),
        "http://127.0.0.1:9".into(),
    );
    let serve = ServeProcess::start(&env, None);

    let messages = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            let Ok(n) = socket.recv(&mut buf) else {
                continue;
            };
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done =
                text.contains("WATCHDOG=1") && seen.iter().any(|m: &String| m.contains("READY=1"));
            seen.push(text);
            if done {
                break;
            }
        }
        (seen, socket)
    })
    .await
    .unwrap();
    let (seen, socket) = messages;
    let all = seen.join("\n");
    assert!(all.contains("READY=1"), "{all}");
    assert!(
        all.contains("STATUS=bots: 0 running, 0 starting, 0 failed"),
        "{all}"
    );
    assert!(all.contains("WATCHDOG=1"), "{all}");

    serve.signal("TERM");
    let stopping = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = socket.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1")
            {
                return true;
            }
        }
        false
    });
    assert!(stopping.await.unwrap(), "no STOPPING=1 after SIGTERM");
    assert_eq!(serve.wait().await, Some(0));
}
