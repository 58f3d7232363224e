//! Shared helpers of the sandbox tests: start a sandbox on 127.0.0.1:0, make tokens and bots.

#![allow(dead_code)]

use std::time::Duration;

use botvisor::sandbox::{Sandbox, SandboxConfig, SandboxHandle};
use reqwest::{Client, StatusCode};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A sandbox running in the background; shut down when dropped.
pub struct Running {
    pub handle: SandboxHandle,
    pub url: url::Url,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Running {
    /// `http://127.0.0.1:PORT/sandbox/<path>`.
    pub fn control(&self, path: &str) -> String {
        format!("{}sandbox/{path}", self.url)
    }

    /// `http://127.0.0.1:PORT/bot<token>/<method>`.
    pub fn method(&self, token: &str, method: &str) -> String {
        format!("{}bot{token}/{method}", self.url)
    }

    /// A teloxide bot for `token` pointed at this sandbox.
    pub fn bot(&self, token: &str) -> teloxide::Bot {
        let client = teloxide::net::default_reqwest_settings()
            .build()
            .expect("reqwest client");
        teloxide::Bot::with_client(token, client).set_api_url(self.url.clone())
    }
}

/// Starts a sandbox with the given options.
pub async fn start_with(accept_any_token: bool, enforce_rate_limits: bool) -> Running {
    let sandbox = Sandbox::bind(SandboxConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        accept_any_token,
        enforce_rate_limits,
    })
    .await
    .expect("bind sandbox");
    let handle = sandbox.handle();
    let url = sandbox.api_url();
    let shutdown = CancellationToken::new();
    tokio::spawn(sandbox.run(shutdown.clone()));
    Running {
        handle,
        url,
        shutdown,
    }
}

/// Starts a default sandbox (registered tokens only, no rate limits).
pub async fn start() -> Running {
    start_with(false, false).await
}

/// A well-formed token for bot `id`.
pub fn token(id: u64) -> String {
    format!("{id}:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw_")
}

/// Polls `check` until it returns `Some`, failing after `deadline`.
pub async fn eventually<T>(deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "condition not met within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// POSTs `body` to the control endpoint `path`; the status and the JSON answer.
pub async fn post(sb: &Running, path: &str, body: Value) -> (StatusCode, Value) {
    let r = Client::new()
        .post(sb.control(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

/// Calls Bot API `method` with `t`'s token and a JSON body; the status and the JSON answer.
pub async fn call(sb: &Running, t: &str, method: &str, body: Value) -> (StatusCode, Value) {
    let r = Client::new()
        .post(sb.method(t, method))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

/// Asserts `status` with an `error` message containing `needle`.
pub fn assert_error(got: (StatusCode, Value), status: StatusCode, needle: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    let msg = got.1["error"].as_str().unwrap_or_default();
    assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
}
