//! `botvisor serve` as a child process, as systemd runs it.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};

/// A running `botvisor serve`.
pub struct ServeProcess {
    pub child: Child,
    _dir: tempfile::TempDir,
}

impl ServeProcess {
    /// Starts `botvisor serve` with exactly `env` (plus PATH) and an empty settings file;
    /// its log goes to `log` if given.
    pub fn start(env: &HashMap<String, String>, log: Option<&std::path::Path>) -> Self {
        Self::start_args(env, log, &["serve"])
    }

    /// Starts `botvisor ARGS…` (a long-running command such as `panel`) the same way.
    pub fn start_args(
        env: &HashMap<String, String>,
        log: Option<&std::path::Path>,
        args: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let stderr = match log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap(),
            ),
            None => Stdio::null(),
        };
        let child = super::botvisor_command(env, dir.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn botvisor");
        Self { child, _dir: dir }
    }

    /// Sends a signal (`TERM`, `KILL`, `HUP`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit (blocking, on a helper thread) and returns its code.
    pub async fn wait(mut self) -> Option<i32> {
        tokio::task::spawn_blocking(move || {
            let status = self.child.wait().unwrap();
            status.code()
        })
        .await
        .unwrap()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A migrated panel, an in-process sandbox and the environment that runs `botvisor serve` as
/// a child process against them (its log appended to one file across restarts).
pub struct ServeSetup {
    /// The panel database.
    pub panel: super::TestDb,
    /// A pool to it.
    pub pool: sqlx::PgPool,
    /// The sandbox.
    pub sandbox: botvisor::sandbox::SandboxHandle,
    /// The daemon's environment.
    pub env: HashMap<String, String>,
    /// The daemon's log.
    pub log: std::path::PathBuf,
    _logs: tempfile::TempDir,
    stop_sandbox: tokio_util::sync::CancellationToken,
}

impl ServeSetup {
    /// A fresh panel (name prefix `prefix`) and a sandbox enforcing Telegram's send limits
    /// when `rate_limits` is set.
    pub async fn new(prefix: &str, rate_limits: bool) -> Self {
        let panel = super::TestDb::create(prefix).await;
        botvisor::schema::apply(&botvisor::schema::PANEL, &panel.url.parse().unwrap())
            .await
            .unwrap();
        let (sandbox, api_url, stop_sandbox) =
            super::harness::start_sandbox_with(rate_limits).await;
        let pool = panel.pool().await;
        let mut env = panel.env();
        env.insert("BOTVISOR_TELEGRAM_API_URL".into(), api_url);
        env.insert("BOTVISOR__TELEGRAM__POLL_TIMEOUT_SECS".into(), "1".into());
        env.insert("RUST_LOG".into(), "botvisor=info,warn".into());
        let logs = tempfile::tempdir().unwrap();
        let log = logs.path().join("serve.log");
        Self {
            panel,
            pool,
            sandbox,
            env,
            log,
            _logs: logs,
            stop_sandbox,
        }
    }

    /// Registers `token_id`'s token in the sandbox and adds an enabled bot to the panel.
    pub async fn add_bot(&self, name: &str, token_id: u64) -> (i64, String) {
        let t = super::token(token_id);
        self.sandbox.register_bot(&t, None).unwrap();
        let id = botvisor::panel::store::add_bot(
            &self.pool,
            &self.panel.keys(),
            &botvisor::panel::store::NewBot {
                name,
                token: &botvisor::token::BotToken::parse(&t).unwrap(),
                enabled: true,
                database: None,
                manifest: &botvisor::content::manifest::Manifest::default(),
            },
        )
        .await
        .unwrap();
        (id, t)
    }

    /// Starts `botvisor serve`.
    pub fn start(&self) -> ServeProcess {
        ServeProcess::start(&self.env, Some(&self.log))
    }

    /// The URL of bot `id`'s database (the default naming rule).
    pub fn bot_url(&self, id: i64) -> String {
        format!("{}/{}_bot_{id}", super::server_url(), self.panel.name)
    }
}

impl Drop for ServeSetup {
    fn drop(&mut self) {
        self.stop_sandbox.cancel();
    }
}
