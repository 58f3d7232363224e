//! An in-process botvisor daemon against a fresh panel database and an in-process sandbox.

use std::collections::HashMap;
use std::time::Duration;

use botvisor::app::{Daemon, ShutdownReport};
use botvisor::content::manifest::Manifest;
use botvisor::control::BotCounts;
use botvisor::modules::Registry;
use botvisor::panel::store::{self, NewBot};
use botvisor::sandbox::{InjectMessage, Sandbox, SandboxConfig, SandboxHandle, SentEvent};
use botvisor::settings::Settings;
use botvisor::token::BotToken;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{TestDb, eventually, token};

/// Generous deadline for anything a test waits for.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Runs an in-process sandbox on a free loopback port until the returned token is cancelled.
pub async fn start_sandbox() -> (SandboxHandle, String, CancellationToken) {
    start_sandbox_with(false).await
}

/// [`start_sandbox`], enforcing Telegram's send limits when `rate_limits` is set.
pub async fn start_sandbox_with(rate_limits: bool) -> (SandboxHandle, String, CancellationToken) {
    let stop = CancellationToken::new();
    let sandbox = Sandbox::bind(SandboxConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        accept_any_token: false,
        enforce_rate_limits: rate_limits,
    })
    .await
    .unwrap();
    let handle = sandbox.handle();
    let url = sandbox.api_url().to_string();
    tokio::spawn(sandbox.run(stop.clone()));
    (handle, url, stop)
}

/// A running daemon with its panel and sandbox.
pub struct Harness {
    pub panel: TestDb,
    pub pool: PgPool,
    pub sandbox: SandboxHandle,
    pub sandbox_url: String,
    pub settings: Settings,
    pub counts: tokio::sync::watch::Receiver<BotCounts>,
    pub budget: botvisor::botdb::budget::ConnectionBudget,
    /// Every bot-database server's budget (the first is `budget`).
    pub budgets: botvisor::botdb::ServerBudgets,
    /// The daemon's HTTP listener (`BOTVISOR__HTTP__LISTEN` in the extra settings).
    pub http_addr: Option<std::net::SocketAddr>,
    shutdown: CancellationToken,
    sandbox_stop: CancellationToken,
    daemon: Option<JoinHandle<Result<ShutdownReport, botvisor::app::DaemonError>>>,
}

/// Extra settings for a harness, as `BOTVISOR__…` variables.
pub type Extra<'a> = &'a [(&'a str, &'a str)];

impl Harness {
    /// Starts everything; returns once the daemon finished its first reconcile.
    pub async fn start(extra: Extra<'_>) -> Self {
        Self::start_with(extra, Registry::standard()).await
    }

    /// [`Harness::start`] with the modules of `registry`.
    pub async fn start_with(extra: Extra<'_>, registry: Registry) -> Self {
        Self::start_full(extra, registry, false).await
    }

    /// [`Harness::start_with`] against a sandbox that enforces Telegram's send limits.
    pub async fn start_rate_limited(extra: Extra<'_>, registry: Registry) -> Self {
        Self::start_full(extra, registry, true).await
    }

    async fn start_full(extra: Extra<'_>, registry: Registry, rate_limits: bool) -> Self {
        // `TEST_LOG=debug` shows the daemon's log while debugging a test.
        botvisor::telemetry::init(&botvisor::settings::LogSettings {
            filter: std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
            ..Default::default()
        });
        let panel = TestDb::create("bvt_sup").await;
        let (handle, sandbox_url, sandbox_stop) = start_sandbox_with(rate_limits).await;
        let mut env: HashMap<String, String> = panel.env();
        env.insert("BOTVISOR_TELEGRAM_API_URL".into(), sandbox_url.clone());
        // Only notifications and reconnects should drive the tests, not the periodic resync.
        env.insert(
            "BOTVISOR__SUPERVISOR__RESYNC_INTERVAL_SECS".into(),
            "3600".into(),
        );
        env.insert("BOTVISOR__SUPERVISOR__INSTANCE".into(), "test".into());
        env.insert("BOTVISOR__TELEGRAM__POLL_TIMEOUT_SECS".into(), "5".into());
        for (k, v) in extra {
            env.insert((*k).into(), (*v).into());
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("botvisor.toml");
        std::fs::write(&file, "").unwrap();
        let settings = Settings::load(Some(&file), &env).unwrap();
        let shutdown = CancellationToken::new();
        let (daemon, handles) = Daemon::start_with(settings.clone(), registry, shutdown.clone())
            .await
            .unwrap();
        let daemon = tokio::spawn(daemon.run());
        tokio::time::timeout(DEADLINE, handles.ready)
            .await
            .unwrap()
            .unwrap();
        let pool = panel.pool().await;
        Self {
            panel,
            pool,
            sandbox: handle,
            sandbox_url,
            settings,
            counts: handles.counts,
            budget: handles.budget,
            budgets: handles.budgets,
            http_addr: handles.http_addr,
            shutdown,
            sandbox_stop,
            daemon: Some(daemon),
        }
    }

    /// Registers `token_id`'s token in the sandbox and adds a bot to the panel.
    pub async fn add_bot(&self, name: &str, token_id: u64) -> (i64, String) {
        let t = token(token_id);
        self.sandbox
            .register_bot(&t, Some(&format!("{name}_bot")))
            .unwrap();
        let id = self.add_registered(name, &t, &Manifest::default()).await;
        (id, t)
    }

    /// Adds a bot whose token is already registered (or deliberately not).
    pub async fn add_registered(&self, name: &str, t: &str, manifest: &Manifest) -> i64 {
        self.insert_bot(name, t, manifest, true).await
    }

    /// Inserts a panel row for a bot with token `t`.
    async fn insert_bot(&self, name: &str, t: &str, manifest: &Manifest, enabled: bool) -> i64 {
        store::add_bot(
            &self.pool,
            &self.panel.keys(),
            &NewBot {
                name,
                token: &BotToken::parse(t).unwrap(),
                enabled,
                database: None,
                manifest,
            },
        )
        .await
        .unwrap()
    }

    /// Adds a bot with `manifest`, `texts` (`key, lang, value`) and `secrets` (`name, value`),
    /// enabled only once all are written (so its first run uses them), and waits until it
    /// runs.
    pub async fn add_configured(
        &self,
        name: &str,
        token_id: u64,
        manifest: serde_json::Value,
        texts: &[(&str, &str, &str)],
        secrets: &[(&str, &str)],
    ) -> (i64, String) {
        let t = token(token_id);
        self.sandbox
            .register_bot(&t, Some(&format!("{name}_bot")))
            .unwrap();
        let manifest = Manifest::from_value(&manifest).unwrap();
        let id = self.insert_bot(name, &t, &manifest, false).await;
        let texts: Vec<(String, String, String)> = texts
            .iter()
            .map(|(k, l, v)| (k.to_string(), l.to_string(), v.to_string()))
            .collect();
        if !texts.is_empty() {
            store::import_texts(&self.pool, id, &texts).await.unwrap();
        }
        let admin = botvisor::admin::Admin::new(
            self.pool.clone(),
            std::sync::Arc::new(self.settings.clone()),
        );
        for (secret, value) in secrets {
            admin.set_secret(id, secret, value).await.unwrap();
        }
        store::set_enabled(&self.pool, id, true).await.unwrap();
        self.wait_state(id, "running").await;
        (id, t)
    }

    /// Sends `text` from user `chat` to the bot.
    pub fn say(&self, token: &str, chat: i64, text: &str) -> i64 {
        self.sandbox
            .inject_message(InjectMessage::private(token, chat, text))
            .unwrap()
    }

    /// Waits until the bot sent a message in `chat` after `after` whose text satisfies `pred`.
    pub async fn reply(
        &self,
        token: &str,
        chat: i64,
        after: u64,
        pred: impl Fn(&str) -> bool,
    ) -> SentEvent {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut cursor = after;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !left.is_zero(),
                "no matching reply in chat {chat}; sandbox stats for the bot: {:?}; events: {:?}",
                self.sandbox.stats().bots.get(token),
                self.sandbox.sent(token, chat, 0)
            );
            let events = self
                .sandbox
                .wait_sent(token, chat, cursor, left)
                .await
                .unwrap();
            for e in events {
                cursor = cursor.max(e.seq);
                if e.text().is_some_and(&pred) {
                    return e;
                }
            }
        }
    }

    /// Waits for the first event in `chat` after `after` that `pred` accepts (`what` names
    /// it in the failure).
    pub async fn event(
        &self,
        t: &str,
        chat: i64,
        after: u64,
        what: &str,
        pred: impl Fn(&SentEvent) -> bool,
    ) -> SentEvent {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut cursor = after;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !left.is_zero(),
                "no {what} in chat {chat}; events: {:#?}",
                self.sandbox.sent(t, chat, after)
            );
            for e in self.sandbox.wait_sent(t, chat, cursor, left).await.unwrap() {
                cursor = cursor.max(e.seq);
                if pred(&e) {
                    return e;
                }
            }
        }
    }

    /// The latest sequence number of what the bot did in `chat` (0 when nothing).
    pub fn last_seq(&self, token: &str, chat: i64) -> u64 {
        self.sandbox
            .sent(token, chat, 0)
            .unwrap()
            .last()
            .map_or(0, |e| e.seq)
    }

    /// Waits until the bot's status has `state`; returns the detail.
    pub async fn wait_state(&self, id: i64, state: &str) -> String {
        eventually(DEADLINE, &format!("bot {id} state {state}"), || async {
            store::get_status(&self.pool, id)
                .await
                .unwrap()
                .filter(|s| s.state == state)
                .map(|s| s.detail)
        })
        .await
    }

    /// The bot's database name under the default naming rule.
    pub fn bot_database(&self, id: i64) -> String {
        format!("{}_bot_{id}", self.panel.name)
    }

    /// A pool to the bot's database.
    pub async fn bot_pool(&self, id: i64) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&format!(
                "{}/{}",
                super::server_url(),
                self.bot_database(id)
            ))
            .await
            .unwrap()
    }

    /// Starts the daemon's shutdown without waiting for it ([`Harness::stop`] waits).
    #[allow(dead_code)] // Not every test binary uses it.
    pub fn begin_stop(&self) {
        self.shutdown.cancel();
    }

    /// Cancels the daemon and waits for it to drain.
    pub async fn stop(&mut self) -> ShutdownReport {
        self.shutdown.cancel();
        let report = self.daemon.take().unwrap().await.unwrap().unwrap();
        self.pool.close().await;
        report
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.sandbox_stop.cancel();
    }
}
