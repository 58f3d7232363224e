//! Load generator for the sandbox: API calls per second and concurrent long polls.
//!
//! The sandbox runs on its own OS thread with a current-thread tokio runtime, so it uses at
//! most one core; the clients run on a separate runtime. Run it in release mode, ideally pinned:
//!
//! ```text
//! cargo build --release --bin sandbox_load
//! taskset -c 0,1 target/release/sandbox_load [clients] [seconds] [long_polls]
//! ```
//!
//! Phase 1: `clients` keep-alive connections call sendMessage and getMe in turn for `seconds`.
//! Phase 2: `long_polls` bots each hold a getUpdates(timeout=30) open; once the sandbox counts
//! them all, phase 1 runs again for a second with the polls held, then one update per bot is
//! injected and the time until every poll has returned is measured.

#![allow(clippy::print_stdout)]

use botvisor::tasks::Tasks;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use botvisor::sandbox::{InjectMessage, Sandbox, SandboxConfig, SandboxHandle};
use tokio_util::sync::CancellationToken;

fn token(id: u64) -> String {
    format!("{id}:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw_")
}

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Hammers sendMessage/getMe from `clients` connections for `secs`; returns calls per second.
async fn hammer(base: &str, handle: &SandboxHandle, clients: u64, secs: f64) -> f64 {
    let done = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let spawner = Tasks::new(CancellationToken::new());
    let mut tasks = Vec::new();
    for c in 0..clients {
        let t = token(1_000 + c);
        handle.register_bot(&t, None).expect("register");
        handle
            .inject_message(InjectMessage::private(&t, 77, "hi"))
            .expect("inject");
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .expect("client");
        let send_url = format!("{base}bot{t}/sendMessage");
        let me_url = format!("{base}bot{t}/getMe");
        let (done, calls, errors) = (done.clone(), calls.clone(), errors.clone());
        tasks.push(spawner.spawn("load-client", async move {
            let body = br#"{"chat_id":77,"text":"load test message"}"#.to_vec();
            let mut i = 0u64;
            while !done.load(Ordering::Relaxed) {
                let r = if i.is_multiple_of(2) {
                    client
                        .post(&send_url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                } else {
                    client.get(&me_url).send().await
                };
                match r {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    done.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let n = calls.load(Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let errors = errors.load(Ordering::Relaxed);
    assert_eq!(errors, 0, "{errors} calls failed");
    n as f64 / elapsed
}

/// CPU seconds (user + system) used so far by thread `tid` of this process, from /proc.
fn thread_cpu(tid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    // Fields after the parenthesised name: state is field 3, utime 14, stime 15 (in ticks).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // rest starts at field 3, so utime (14) is index 11 and stime (15) index 12; 100 ticks/s.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

fn main() {
    let clients = arg(1, 64);
    let secs = arg(2, 5);
    let polls = arg(3, 2000);

    // The sandbox: one thread, one current-thread runtime — at most one core.
    let (tx, rx) = std::sync::mpsc::channel();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("sandbox runtime");
        rt.block_on(async move {
            let sandbox = Sandbox::bind(SandboxConfig {
                listen: "127.0.0.1:0".parse().expect("address"),
                accept_any_token: false,
                enforce_rate_limits: false,
            })
            .await
            .expect("bind");
            let tid = std::fs::read_link("/proc/thread-self")
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            tx.send((sandbox.api_url(), sandbox.handle(), tid))
                .expect("send");
            sandbox.run(stop).await.expect("run");
        });
    });
    let (url, handle, tid) = rx.recv().expect("sandbox started");
    let base = url.to_string();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("client runtime");
    rt.block_on(async move {
        let cpu0 = thread_cpu(&tid);
        let rate = hammer(&base, &handle, clients, secs as f64).await;
        let cpu = thread_cpu(&tid) - cpu0;
        let total = rate * secs as f64;
        println!(
            "phase 1: {clients} keep-alive clients, {secs} s: {rate:.0} calls/s wall clock; \
             sandbox thread used {cpu:.2} CPU s = {:.0} calls per sandbox CPU second",
            total / cpu.max(0.01)
        );

        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(polls as usize)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let spawner = Tasks::new(CancellationToken::new());
        let mut held = Vec::new();
        for p in 0..polls {
            let t = token(100_000 + p);
            handle.register_bot(&t, None).expect("register");
            let url = format!("{base}bot{t}/getUpdates");
            let client = client.clone();
            held.push(spawner.spawn("long-poll", async move {
                let r = client
                    .post(url)
                    .json(&serde_json::json!({"timeout": 30}))
                    .send()
                    .await
                    .expect("long poll");
                let v: serde_json::Value = r.json().await.expect("json");
                v["result"].as_array().map_or(0, Vec::len)
            }));
        }
        let start = Instant::now();
        while handle.stats().long_polls < polls {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "long polls did not all register"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "phase 2: {polls} concurrent long polls held open after {:.2} s",
            start.elapsed().as_secs_f64()
        );
        let cpu0 = thread_cpu(&tid);
        let rate = hammer(&base, &handle, clients, 2.0).await;
        let cpu = thread_cpu(&tid) - cpu0;
        println!(
            "phase 2: {rate:.0} calls/s wall clock with the {polls} long polls held; \
             {:.0} calls per sandbox CPU second",
            rate * 2.0 / cpu.max(0.01)
        );
        let start = Instant::now();
        for p in 0..polls {
            handle
                .inject_message(InjectMessage::private(&token(100_000 + p), 5, "wake"))
                .expect("inject");
        }
        let mut delivered = 0;
        for h in held {
            delivered += h.await.expect("poll task");
        }
        println!(
            "phase 2: {delivered}/{polls} long polls answered with their update in {:.0} ms",
            start.elapsed().as_secs_f64() * 1000.0
        );
    });
    shutdown.cancel();
    let _ = server.join();
}
