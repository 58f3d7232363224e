//! Shared helpers for integration tests: a fresh panel database per test on the local
//! PostgreSQL, dropped (with every bot database derived from it) when the test ends.

#![allow(dead_code)]

pub mod cli;
pub mod web;

use std::collections::HashMap;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

/// The server every test uses; override with `BOTVISOR_TEST_PG` (a URL without database).
pub fn server_url() -> String {
    std::env::var("BOTVISOR_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A uniquely named database name for this process and test.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}_{}_{n}_{:x}", std::process::id(), nanos % 0xffff)
}

/// A fresh, empty database; it and every database whose name starts with its name and `_`
/// are dropped when this value is dropped.
///
/// Each one comes with its own master key file (mode 0600, in a temporary directory removed
/// with it), named in [`TestDb::env`] as `BOTVISOR_MASTER_KEY_FILE`: every daemon and CLI a
/// test starts from this environment seals and opens secrets with it.
pub struct TestDb {
    pub name: String,
    pub url: String,
    /// The master key file of this test.
    pub key_file: std::path::PathBuf,
    _key_dir: std::sync::Arc<tempfile::TempDir>,
}

/// A fresh master key file in a new temporary directory.
pub fn master_key_file() -> (std::sync::Arc<tempfile::TempDir>, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory for the master key");
    let path = dir.path().join("master.key");
    botvisor::crypto::init_key_file(&path).expect("write a test master key");
    (std::sync::Arc::new(dir), path)
}

impl TestDb {
    /// Creates a database named uniquely from `prefix`.
    pub async fn create(prefix: &str) -> Self {
        let name = unique_name(prefix);
        let mut conn = maintenance().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.ok();
        let url = format!("{}/{name}", server_url());
        let (_key_dir, key_file) = master_key_file();
        Self {
            name,
            url,
            key_file,
            _key_dir,
        }
    }

    /// The master keys of this test (see [`TestDb`]).
    pub fn keys(&self) -> botvisor::crypto::Keyring {
        botvisor::crypto::Keyring::load(&self.key_file).expect("the test's master key")
    }

    /// A small pool to this database.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.url)
            .await
            .expect("connect to test database")
    }

    /// Environment for a botvisor child process or `Settings::load` pointing at this database
    /// and its master key file.
    ///
    /// Tests run side by side against one server (`max_connections` = 100 here and in CI), so
    /// each test daemon gets a small fixed connection budget instead of "auto" (which would let
    /// every one of them take 85); a test may set its own.
    pub fn env(&self) -> HashMap<String, String> {
        [
            ("BOTVISOR_PANEL_URL".to_string(), self.url.clone()),
            (
                "BOTVISOR__BOT_DATABASE__CONNECTION_BUDGET".to_string(),
                "12".to_string(),
            ),
            (
                botvisor::crypto::KEY_FILE_ENV.to_string(),
                self.key_file.display().to_string(),
            ),
        ]
        .into()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        drop_databases_named(&server_url(), &self.name);
    }
}

/// Drops, when dropped, database `name` and every database named after it on `server` (a
/// server other than the test server; [`TestDb`] cleans up its own).
pub struct DatabasesOn {
    pub server: String,
    pub name: String,
}

impl Drop for DatabasesOn {
    fn drop(&mut self) {
        drop_databases_named(&self.server, &self.name);
    }
}

/// Drops database `name` and every database whose name starts with `name` and `_` on
/// `server` (a URL without database); quietly does nothing when the server does not answer.
/// Runs outside async context (in `Drop`): a private runtime on a helper thread.
pub fn drop_databases_named(server: &str, name: &str) {
    let (server, name) = (server.to_owned(), name.to_owned());
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let Ok(mut conn) = format!("{server}/postgres")
                .parse::<PgConnectOptions>()
                .unwrap()
                .connect()
                .await
            else {
                return;
            };
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT datname FROM pg_database WHERE datname = $1 OR datname LIKE $2",
            )
            .bind(&name)
            .bind(format!("{}\\_%", name.replace('_', "\\_")))
            .fetch_all(&mut conn)
            .await
            .unwrap_or_default();
            for db in names {
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await;
            }
        });
    })
    .join();
}

async fn maintenance() -> sqlx::PgConnection {
    maintenance_on(&server_url()).await
}

async fn maintenance_on(server: &str) -> sqlx::PgConnection {
    format!("{server}/postgres")
        .parse::<PgConnectOptions>()
        .unwrap()
        .connect()
        .await
        .expect("PostgreSQL must be running on 127.0.0.1:5432 (see README)")
}

/// Whether a database exists.
pub async fn database_exists(name: &str) -> bool {
    database_exists_on(&server_url(), name).await
}

/// Whether database `name` exists on `server` (a URL without database).
pub async fn database_exists_on(server: &str, name: &str) -> bool {
    let mut conn = maintenance_on(server).await;
    let exists = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    exists
}

/// The result of one CLI run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "expected success: {self:?}");
        &self.stdout
    }

    /// Asserts exit code 2 with a message containing `needle`.
    #[track_caller]
    pub fn bad_input(&self, needle: &str) {
        assert_eq!(self.code, 2, "expected exit code 2: {self:?}");
        assert!(
            self.stderr.contains(needle),
            "stderr should mention {needle:?}: {self:?}"
        );
        assert_eq!(
            self.stderr.trim().lines().count(),
            1,
            "one line on stderr: {self:?}"
        );
    }
}

/// Runs the botvisor binary with only the given environment (plus PATH) and an empty
/// settings file, so nothing on the machine leaks in.
pub fn botvisor(env: &HashMap<String, String>, args: &[&str]) -> Run {
    botvisor_with_input(env, args, b"")
}

/// [`botvisor`] run off the test's runtime thread, so a daemon the test runs on that thread
/// keeps working meanwhile (an in-place import or a move waits for it to stop the bot).
pub async fn botvisor_off_thread(env: &HashMap<String, String>, args: &[&str]) -> Run {
    let env = env.clone();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        botvisor(&env, &args)
    })
    .await
    .unwrap()
}

/// [`botvisor`] with `input` on standard input (e.g. a password for `--password-stdin`).
pub fn botvisor_stdin(env: &HashMap<String, String>, args: &[&str], input: &str) -> Run {
    botvisor_with_input(env, args, input.as_bytes())
}

/// [`botvisor`] with `input` on its standard input.
pub fn botvisor_with_input(env: &HashMap<String, String>, args: &[&str], input: &[u8]) -> Run {
    use std::io::Write;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let mut child = botvisor_command(env, dir.path())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run botvisor");
    let mut stdin = child.stdin.take().expect("piped stdin");
    // A command that does not read its input may exit first: a broken pipe is fine.
    let _ = stdin.write_all(input);
    drop(stdin);
    Run::from(child.wait_with_output().expect("run botvisor"))
}

/// The botvisor binary with only `env` (plus PATH) and an empty settings file in `dir`.
pub fn botvisor_command(env: &HashMap<String, String>, dir: &std::path::Path) -> Command {
    let config = dir.join("botvisor.toml");
    std::fs::write(&config, "").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_botvisor"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .arg("--config")
        .arg(&config);
    cmd
}

/// A loopback address with a free port (for a server the test starts).
pub fn free_address() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the bot database `db` has processed every stored update and delivered every
/// queued request.
pub async fn settled(db: &sqlx::PgPool) {
    eventually(
        Duration::from_secs(60),
        "inbox processed and outbox delivered",
        || async {
            let (inbox, outbox): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM inbox WHERE processed_at IS NULL), \
                        (SELECT count(*) FROM outbox WHERE done_at IS NULL)",
            )
            .fetch_one(db)
            .await
            .unwrap();
            (inbox == 0 && outbox == 0).then_some(())
        },
    )
    .await;
}

/// A well-formed token for bot user id `id` (unique per id).
pub fn token(id: u64) -> String {
    format!("{id}:AAH{:0>32}", format!("{id:x}test"))
}
pub mod harness;
pub mod process;

/// Waits until scheduled job `job` of bot `id` has a recorded run, then checks it ran once,
/// was sent, and on time (due ± 1 s).
pub async fn ran_once_on_time(admin: &botvisor::admin::Admin, id: i64, job: i64) {
    let runs = eventually(harness::DEADLINE, "the run recorded", || async {
        let runs = admin.job_runs(id, job).await.unwrap();
        (!runs.is_empty()).then_some(runs)
    })
    .await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].outcome, "sent");
    assert!(runs[0].late_ms < 1000, "due ± 1 s: {runs:?}");
}
