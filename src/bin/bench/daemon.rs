//! The daemon under test: in this process (`Daemon::start`) or the real `botvisor serve`
//! binary as a child process, with the figures read from `/proc/<pid>/status`.

use botvisor::tasks::Tasks;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use botvisor::app::{Daemon, DaemonError, ShutdownReport};
use botvisor::settings::Settings;
use tokio_util::sync::CancellationToken;

/// How long a daemon gets to drain on stop before the bench gives up on it.
const STOP_DEADLINE: Duration = Duration::from_secs(40);

/// Where the daemon runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `Daemon::start` in the bench's own process (shares it with the sandbox).
    Inproc,
    /// `botvisor serve` spawned from next to the bench executable.
    Process,
    /// Not botvisor: the reference, a stock teloxide host with no database
    /// (`stock_host`, spawned from next to the bench executable); the traffic phases only.
    Stock,
}

/// A running daemon.
pub enum Running {
    /// In this process.
    Inproc {
        /// Cancels the daemon.
        shutdown: CancellationToken,
        /// `Daemon::run`.
        run: tokio::task::JoinHandle<Result<ShutdownReport, DaemonError>>,
    },
    /// A child process (killed if the bench drops it).
    Process {
        /// The child.
        child: tokio::process::Child,
    },
}

/// jemalloc's run-time options (`botvisor` is built with tikv-jemallocator, whose variable
/// carries this prefix); passed on to the daemon when the bench has it.
const MALLOC_CONF: &str = "_RJEM_MALLOC_CONF";

/// The daemon's settings as environment variables, common to both modes.
pub fn environment(panel_url: &str, api_url: &str, budget: u32) -> HashMap<String, String> {
    [
        ("BOTVISOR_PANEL_URL", panel_url.to_owned()),
        ("BOTVISOR_TELEGRAM_API_URL", api_url.to_owned()),
        (
            "BOTVISOR__BOT_DATABASE__CONNECTION_BUDGET",
            budget.to_string(),
        ),
        ("BOTVISOR__SUPERVISOR__INSTANCE", "bench".to_owned()),
        // BOTVISOR_BENCH_LOG_FILTER sets the child's filter (its log file is named at the end
        // of a run), e.g. `info` to see when each bot started.
        (
            "BOTVISOR__LOG__FILTER",
            std::env::var("BOTVISOR_BENCH_LOG_FILTER").unwrap_or_else(|_| "warn".to_owned()),
        ),
        ("BOTVISOR__LOG__FORMAT", "text".to_owned()),
        (
            botvisor::crypto::KEY_FILE_ENV,
            key_file().map_or_else(|_| String::new(), |p| p.display().to_string()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The bench's master key file (created on first use, in the temporary directory).
pub fn key_file() -> anyhow::Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("botvisor-bench-{}.key", std::process::id()));
    if !path.exists() {
        botvisor::crypto::init_key_file(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(path)
}

/// An empty settings file, so `/etc/botvisor/botvisor.toml` never leaks into a run.
fn empty_settings_file() -> anyhow::Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("botvisor-bench-{}.toml", std::process::id()));
    std::fs::write(&path, "").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// The executable `name` next to this one (`target/<profile>/<name>`).
fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find the bench executable")?;
    let path = me.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} does not exist: build it first (cargo build --release --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// The executable `name` next to this one as a child: a clean environment (PATH, and the
/// allocator's options and tokio's worker count for experiments, docs/performance.md), no
/// input or output, its stderr appended to [`log_path`], killed if the bench drops it.
fn child_command(name: &str) -> anyhow::Result<tokio::process::Command> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path())?;
    let mut command = tokio::process::Command::new(sibling_binary(name)?);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for name in [MALLOC_CONF, "TOKIO_WORKER_THREADS"] {
        if let Ok(value) = std::env::var(name) {
            command.env(name, value);
        }
    }
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    Ok(command)
}

/// Where the child's log goes.
pub fn log_path() -> PathBuf {
    std::env::temp_dir().join(format!("botvisor-bench-{}.log", std::process::id()))
}

impl Running {
    /// Starts a daemon with `env` (see [`environment`]).
    pub async fn start(mode: Mode, env: &HashMap<String, String>) -> anyhow::Result<Self> {
        let config = empty_settings_file()?;
        match mode {
            Mode::Inproc => {
                let settings = Settings::load(Some(&config), env)?;
                let shutdown = CancellationToken::new();
                let (daemon, _handles) = Daemon::start(settings, shutdown.clone()).await?;
                let run = Tasks::new(shutdown.clone()).spawn("daemon", daemon.run());
                Ok(Self::Inproc { shutdown, run })
            }
            Mode::Process => {
                let child = child_command("botvisor")?
                    .envs(env)
                    .arg("--config")
                    .arg(&config)
                    .arg("serve")
                    .spawn()
                    .context("cannot spawn botvisor serve")?;
                Ok(Self::Process { child })
            }
            Mode::Stock => bail!("a stock host is started with Running::stock"),
        }
    }

    /// Starts the stock teloxide host (`stock_host`) for `tokens` against `api_url`.
    pub fn stock(api_url: &str, tokens: &[&str]) -> anyhow::Result<Self> {
        let file =
            std::env::temp_dir().join(format!("botvisor-bench-{}.tokens", std::process::id()));
        std::fs::write(&file, tokens.join("\n"))
            .with_context(|| format!("cannot write {}", file.display()))?;
        let child = child_command("stock_host")?
            .arg(api_url)
            .arg(&file)
            .spawn()
            .context("cannot spawn stock_host")?;
        Ok(Self::Process { child })
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        match self {
            Self::Inproc { .. } => std::process::id(),
            Self::Process { child } => child.id().unwrap_or(0),
        }
    }

    /// Fails when a child daemon has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Inproc { run, .. } if run.is_finished() => {
                bail!("the in-process daemon stopped")
            }
            Self::Process { child } => match child.try_wait()? {
                Some(status) => bail!(
                    "botvisor serve exited with {status}; its log is {}",
                    log_path().display()
                ),
                None => Ok(()),
            },
            Self::Inproc { .. } => Ok(()),
        }
    }

    /// kill -9 of a child daemon (the in-process one cannot be killed alone).
    pub fn kill(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Process { child } => Ok(child.start_kill()?),
            Self::Inproc { .. } => bail!("an in-process daemon cannot be killed alone"),
        }
    }

    /// Stops the daemon (SIGTERM for a child) and waits for it; returns whether it drained.
    pub async fn stop(self) -> anyhow::Result<bool> {
        match self {
            Self::Inproc { shutdown, run } => {
                shutdown.cancel();
                let report = tokio::time::timeout(STOP_DEADLINE, run)
                    .await
                    .context("the in-process daemon did not stop")???;
                Ok(report.clean())
            }
            Self::Process { mut child } => {
                if let Some(pid) = child.id() {
                    // kill(1): the crate forbids unsafe code, so no libc::kill.
                    let _ = tokio::process::Command::new("kill")
                        .arg("-TERM")
                        .arg(pid.to_string())
                        .status()
                        .await;
                }
                match tokio::time::timeout(STOP_DEADLINE, child.wait()).await {
                    Ok(status) => Ok(status?.success()),
                    Err(_) => {
                        child.kill().await.ok();
                        bail!("botvisor serve did not stop within {STOP_DEADLINE:?}")
                    }
                }
            }
        }
    }
}

/// `VmRSS` (KiB) and `Threads` of process `pid`, from `/proc/<pid>/status`.
pub fn proc_status(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("Threads:")?))
}
