//! Tests of the operations files: `scripts/update.sh` end to end against a local bare git
//! remote with fake `cargo`, `systemctl` and `botvisor` (tests/fixtures/ops/);
//! `scripts/backup.sh` and `scripts/restore.sh` on real databases of the local PostgreSQL;
//! the systemd units (required keys, and `systemd-analyze verify` where installed); and
//! shellcheck on the scripts where installed.
//!
//! Every test works in its own temporary directory and databases named uniquely, which a
//! guard drops even when the test fails, so the tests run in parallel.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use tempfile::TempDir;

mod common;
use common::free_address;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/ops").join(name)
}

fn script(name: &str) -> PathBuf {
    root().join("scripts").join(name)
}

fn text(out: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command and returns its output, failing the test when it cannot be started.
fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed.
fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `tool` is installed; in CI (`CI=true`, where `.ci/run` installs it) a missing tool
/// fails the test instead of skipping it.
fn available(tool: &str, package: &str) -> bool {
    if have(tool) {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{tool} is not installed and CI=true: .ci/run installs {package}"
    );
    eprintln!("skipped: {tool} is not installed (apt-get install {package})");
    false
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------
// update.sh
// ---------------------------------------------------------------------------------------

/// A deployment in a temporary directory: a bare remote, a clone the "developer" pushes
/// from, the operator's checkout, an installed binary and the logs of the fakes.
struct Deploy {
    tmp: TempDir,
}

impl Deploy {
    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn git(&self, dir: &str, args: &[&str]) -> String {
        ok(Command::new("git")
            .args(args)
            .current_dir(self.path(dir))
            .env("GIT_AUTHOR_NAME", "ops test")
            .env("GIT_AUTHOR_EMAIL", "ops@test.invalid")
            .env("GIT_COMMITTER_NAME", "ops test")
            .env("GIT_COMMITTER_EMAIL", "ops@test.invalid"))
        .trim()
        .to_string()
    }

    /// The fake binary's source for a version and a health answer.
    fn fake_binary(version: &str, health: &str) -> String {
        fs::read_to_string(fixture("fake-botvisor.sh"))
            .unwrap()
            .replace("@VERSION@", version)
            .replace("@HEALTH@", health)
    }

    /// Remote with commit v1, the operator's checkout of it, and v1 installed.
    fn new() -> Self {
        let d = Deploy {
            tmp: tempfile::tempdir().unwrap(),
        };
        fs::create_dir_all(d.path("bin")).unwrap();
        d.git(".", &["init", "-q", "--bare", "-b", "main", "remote.git"]);
        d.git(".", &["clone", "-q", "remote.git", "dev"]);
        fs::write(d.path("dev/.gitignore"), "/target\n").unwrap();
        d.commit("v1", "healthy", false);
        d.git(".", &["clone", "-q", "remote.git", "checkout"]);
        fs::write(d.installed(), Self::fake_binary("v1", "healthy")).unwrap();
        ok(Command::new("chmod").arg("755").arg(d.installed()));
        d
    }

    /// Commits (and pushes) a version of the fake project.
    fn commit(&self, version: &str, health: &str, build_fails: bool) -> String {
        fs::write(
            self.path("dev/botvisor.sh"),
            Self::fake_binary(version, health),
        )
        .unwrap();
        let marker = self.path("dev/BUILD_FAILS");
        if build_fails {
            fs::write(&marker, "").unwrap();
        } else if marker.exists() {
            fs::remove_file(&marker).unwrap();
        }
        self.git("dev", &["add", "-A"]);
        self.git(
            "dev",
            &["commit", "-q", "-m", &format!("release {version}")],
        );
        self.git("dev", &["push", "-q", "origin", "main"]);
        self.git("dev", &["rev-parse", "HEAD"])
    }

    fn installed(&self) -> PathBuf {
        self.path("bin/botvisor")
    }

    fn installed_version(&self) -> String {
        version_of(&self.installed())
    }

    fn head(&self) -> String {
        self.git("checkout", &["rev-parse", "HEAD"])
    }

    fn log(&self, name: &str) -> String {
        fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// The fake systemctl's calls other than `show` (setup and health checks): the starts,
    /// stops and restarts.
    fn systemctl_actions(&self) -> Vec<String> {
        self.log("systemctl.log")
            .lines()
            .filter(|l| !l.starts_with("show"))
            .map(str::to_string)
            .collect()
    }

    /// How many times the fake cargo built.
    fn builds(&self) -> usize {
        self.log("cargo.log")
            .lines()
            .filter(|l| *l == "cargo build --release --locked")
            .count()
    }

    fn update(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg(script("update.sh"))
            .args(args)
            .env("REPO_DIR", self.path("checkout"))
            .env("INSTALL_PATH", self.installed())
            .env("SYSTEMCTL", fixture("fake-systemctl"))
            .env("CARGO", fixture("fake-cargo"))
            .env("HEALTH_TIMEOUT", "5")
            .env("HEALTH_SETTLE", "0")
            .env("UPDATE_CONFIG", self.path("no-update.env"))
            .env("ENV_FILE", self.path("no-env"))
            .env("BOTVISOR_CONFIG", self.path("no-botvisor.toml"))
            .env("UPDATE_LOCK", self.path("update.lock"))
            .env("FAKE_SYSTEMCTL_LOG", self.path("systemctl.log"))
            .env("FAKE_CARGO_LOG", self.path("cargo.log"))
            .env("FAKE_BOTVISOR_LOG", self.path("botvisor.log"))
            .env("FAKE_SERVICE_BINARY", self.installed())
            .env_remove("ADMIN_PANEL_UNIT")
            // The web panel's unit is covered by its own tests below.
            .env("PANEL_UNIT", "")
            .env_remove("BACKUP_BEFORE_MIGRATE")
            .env_remove("CARGO_TARGET_DIR");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        run(&mut cmd)
    }
}

/// The VERSION line of a fake binary.
fn version_of(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VERSION="))
        .unwrap()
        .to_string()
}

#[test]
fn update_restarts_the_web_panel_when_its_unit_is_installed() {
    let d = Deploy::new();
    d.commit("v2", "healthy", false);
    let out = d.update(
        &[],
        &[
            ("PANEL_UNIT", "botvisor-panel"),
            ("BACKUP_BEFORE_MIGRATE", "0"),
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(
        d.systemctl_actions(),
        ["restart botvisor", "restart botvisor-panel"],
        "{all}"
    );
    assert!(
        all.contains("botvisor-panel is active and running"),
        "{all}"
    );
}

#[test]
fn update_goes_on_without_a_web_panel_unit() {
    let d = Deploy::new();
    d.commit("v2", "healthy", false);
    let out = d.update(
        &[],
        &[
            ("PANEL_UNIT", "botvisor-panel"),
            ("BACKUP_BEFORE_MIGRATE", "0"),
            ("FAKE_MISSING_UNITS", "botvisor-panel"),
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(d.systemctl_actions(), ["restart botvisor"], "{all}");
    assert!(all.contains("botvisor-panel is not installed"), "{all}");
}

#[test]
fn update_happy_path_installs_keeps_previous_and_restarts() {
    let d = Deploy::new();
    let old = d.head();
    let new = d.commit("v2", "healthy", false);
    let out = d.update(
        &[],
        &[
            ("ADMIN_PANEL_UNIT", "botvisor-admin"),
            ("BACKUP_BEFORE_MIGRATE", "1"),
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(d.head(), new, "checkout fast-forwarded");
    assert_eq!(d.installed_version(), "v2", "new binary installed");
    assert_eq!(
        version_of(&d.path("bin/botvisor.prev")),
        "v1",
        "previous kept"
    );
    assert_eq!(d.builds(), 1);
    // Backup before migrating, migrations by the NEW binary before the restart.
    assert_eq!(
        d.systemctl_actions(),
        [
            "start botvisor-backup.service",
            "restart botvisor",
            "restart botvisor-admin"
        ],
        "{all}"
    );
    let botvisor = d.log("botvisor.log");
    assert!(botvisor.contains("v2 migrate\n"), "{botvisor}");
    assert!(botvisor.contains("v2 migrate --all-bots\n"), "{botvisor}");
    assert!(!botvisor.contains("v1 migrate"), "{botvisor}");
    // Summary: old -> new commit, time, bots.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{} -> {}", &old[..10], &new[..10])),
        "{all}"
    );
    assert!(stdout.contains("took:"), "{all}");
    assert!(
        stdout.contains("1 running of 2 enabled (3 registered)"),
        "{all}"
    );
    assert!(stdout.contains("2 two: backoff"), "{all}");
    // No stray temporary files next to the binary.
    let mut names: Vec<String> = fs::read_dir(d.path("bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["botvisor", "botvisor.prev"]);
}

#[test]
fn update_without_all_bots_migrates_the_panel_and_says_so() {
    let d = Deploy::new();
    d.commit("v2", "healthy", false);
    let out = d.update(&[], &[("FAKE_NO_ALL_BOTS", "1")]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let botvisor = d.log("botvisor.log");
    assert!(botvisor.contains("v2 migrate\n"), "{botvisor}");
    assert!(!botvisor.contains("--all-bots\n"), "{botvisor}");
    assert!(all.contains("no 'migrate --all-bots'"), "{all}");
}

#[test]
fn update_build_failure_leaves_everything_as_it_was() {
    let d = Deploy::new();
    let old = d.head();
    d.commit("v2", "healthy", true);
    let out = d.update(&[], &[]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("UPDATE FAILED: the build failed"), "{all}");
    assert_eq!(d.installed_version(), "v1");
    assert!(!d.path("bin/botvisor.prev").exists());
    assert_eq!(d.head(), old, "checkout put back");
    assert!(d.systemctl_actions().is_empty(), "nothing restarted");
    assert!(!d.log("botvisor.log").contains("migrate"), "no migrations");
}

#[test]
fn update_failed_migration_installs_nothing() {
    let d = Deploy::new();
    d.commit("v2", "healthy", false);
    let out = d.update(&[], &[("FAKE_MIGRATE_FAILS", "1")]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("panel migrations failed"), "{all}");
    assert_eq!(d.installed_version(), "v1");
    assert_eq!(
        d.systemctl_actions(),
        ["start botvisor-backup.service"],
        "backed up, nothing restarted"
    );
}

#[test]
fn update_unhealthy_start_rolls_back() {
    let d = Deploy::new();
    let old = d.head();
    d.commit("v2", "unhealthy", false);
    let out = d.update(&[], &[]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("ROLLING BACK"), "{all}");
    assert!(all.contains("UPDATE FAILED: ROLLED BACK"), "{all}");
    assert_eq!(d.installed_version(), "v1", "previous binary back");
    assert_eq!(d.head(), old, "checkout back at the installed version");
    let systemctl = d.log("systemctl.log");
    let restarts = systemctl
        .lines()
        .filter(|l| *l == "restart botvisor")
        .count();
    assert_eq!(
        restarts, 2,
        "restarted with the new, then the old:\n{systemctl}"
    );
}

#[test]
fn update_refuses_a_dirty_tree() {
    let d = Deploy::new();
    let old = d.head();
    d.commit("v2", "healthy", false);
    fs::write(d.path("checkout/botvisor.sh"), "edited on the server\n").unwrap();
    let out = d.update(&[], &[]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("uncommitted changes"), "{all}");
    assert_eq!(d.head(), old);
    assert_eq!(d.installed_version(), "v1");
    assert_eq!(d.log("cargo.log"), "");
    assert!(d.systemctl_actions().is_empty());
}

#[test]
fn update_refuses_a_diverged_branch() {
    let d = Deploy::new();
    d.commit("v2", "healthy", false);
    fs::write(d.path("checkout/local.txt"), "a local commit\n").unwrap();
    d.git("checkout", &["add", "local.txt"]);
    d.git("checkout", &["commit", "-q", "-m", "local"]);
    let local = d.head();
    let out = d.update(&[], &[]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("diverged"), "{all}");
    assert_eq!(d.head(), local);
    assert_eq!(d.installed_version(), "v1");
    assert_eq!(d.log("cargo.log"), "");
}

#[test]
fn update_dry_run_changes_nothing() {
    let d = Deploy::new();
    let old = d.head();
    d.commit("v2", "healthy", false);
    let out = d.update(&["--dry-run"], &[]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("plan (--dry-run"), "{all}");
    assert!(
        all.contains("release v2"),
        "the incoming commit is listed: {all}"
    );
    assert_eq!(d.head(), old);
    assert_eq!(d.installed_version(), "v1");
    assert!(!d.path("bin/botvisor.prev").exists());
    assert_eq!(d.log("cargo.log"), "");
    assert!(d.systemctl_actions().is_empty());
    assert_eq!(d.log("botvisor.log"), "");
    // The plan's steps are numbered 1, 2, 3, … and include the backup (on by default).
    let numbers: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim_start().split_once(". "))
        .filter_map(|(n, _)| n.parse().ok())
        .collect();
    assert_eq!(
        numbers,
        (1..=numbers.len() as u32).collect::<Vec<_>>(),
        "{all}"
    );
    assert!(numbers.len() >= 6, "{all}");
    assert!(all.contains("start botvisor-backup.service"), "{all}");
}

#[test]
fn update_dry_run_checks_the_setup_and_a_real_run_refuses_it() {
    let d = Deploy::new();
    let old = d.head();
    d.commit("v2", "healthy", false);
    fs::remove_file(d.installed()).unwrap();
    let env = [("FAKE_MISSING_UNITS", "botvisor botvisor-backup.service")];
    let out = d.update(&["--dry-run"], &env);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("--dry-run found 3 problem(s)"), "{all}");
    assert!(all.contains("no botvisor binary at"), "{all}");
    assert!(all.contains("unit botvisor is not installed"), "{all}");
    assert!(
        all.contains("backup unit botvisor-backup.service is not installed"),
        "{all}"
    );
    // The same setup stops a real update before it changes anything.
    let out = d.update(&[], &env);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("3 problem(s) with the setup"), "{all}");
    assert_eq!(d.head(), old);
    assert_eq!(d.builds(), 0);
    assert!(d.systemctl_actions().is_empty());
    // Without the backup the remaining problems are still reported.
    let out = d.update(
        &["--dry-run"],
        &[
            ("FAKE_MISSING_UNITS", "botvisor"),
            ("BACKUP_BEFORE_MIGRATE", "0"),
        ],
    );
    assert!(text(&out).contains("found 2 problem(s)"), "{}", text(&out));
}

#[test]
fn update_with_nothing_new_builds_installs_and_restarts_nothing() {
    let d = Deploy::new();
    // No incoming commit and no record of what is installed: one build shows the installed
    // binary is already this commit's, so nothing is installed or restarted.
    let out = d.update(&[], &[]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("already up to date"), "{all}");
    assert_eq!(d.builds(), 1);
    assert!(d.systemctl_actions().is_empty(), "{all}");
    assert!(!d.path("bin/botvisor.prev").exists(), "{all}");
    assert!(!d.log("botvisor.log").contains("migrate"), "{all}");

    // A real update, then another with nothing new: no build, no restart, and the rollback
    // binary is still the previous version.
    d.commit("v2", "healthy", false);
    let out = d.update(&[], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(d.builds(), 2);
    let restarts = d.systemctl_actions().len();
    for args in [&[][..], &["--dry-run"][..]] {
        let out = d.update(args, &[]);
        let all = text(&out);
        assert!(out.status.success(), "{all}");
        assert!(all.contains("already up to date"), "{all}");
    }
    assert_eq!(d.builds(), 2, "nothing rebuilt");
    assert_eq!(d.systemctl_actions().len(), restarts, "nothing restarted");
    assert_eq!(d.installed_version(), "v2");
    assert_eq!(version_of(&d.path("bin/botvisor.prev")), "v1");
}

#[test]
fn update_keeps_the_rollback_binary_when_the_build_is_unchanged() {
    let d = Deploy::new();
    d.commit("v2", "healthy", false);
    assert!(d.update(&[], &[]).status.success());
    // A commit that does not change the binary (documentation only).
    fs::write(d.path("dev/NOTES"), "docs only\n").unwrap();
    d.git("dev", &["add", "NOTES"]);
    d.git("dev", &["commit", "-q", "-m", "docs only"]);
    d.git("dev", &["push", "-q", "origin", "main"]);
    let out = d.update(&[], &[]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("left as it was"), "{all}");
    assert_eq!(d.installed_version(), "v2");
    assert_eq!(
        version_of(&d.path("bin/botvisor.prev")),
        "v1",
        "the rollback binary is still the older version: {all}"
    );
}

#[test]
fn update_takes_the_binary_from_cargos_target_dir() {
    let d = Deploy::new();
    d.commit("v2", "healthy", false);
    let elsewhere = d.path("elsewhere");
    let out = d.update(&[], &[("CARGO_TARGET_DIR", elsewhere.to_str().unwrap())]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(d.installed_version(), "v2");
    assert!(elsewhere.join("release/botvisor").exists(), "{all}");
    assert!(!d.path("checkout/target").exists(), "{all}");
}

#[test]
fn update_backs_up_before_migrating_by_default() {
    let d = Deploy::new();
    d.commit("v2", "healthy", false);
    // BACKUP_BEFORE_MIGRATE is unset here (Deploy::update removes it).
    let out = d.update(&[], &[("FAKE_BACKUP_FAILS", "1")]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("the backup failed"), "{all}");
    assert_eq!(d.systemctl_actions(), ["start botvisor-backup.service"]);
    assert!(
        !d.log("botvisor.log").contains("migrate"),
        "no migration without a backup"
    );
    assert_eq!(d.installed_version(), "v1");

    let out = d.update(&[], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        d.systemctl_actions(),
        [
            "start botvisor-backup.service",
            "start botvisor-backup.service",
            "restart botvisor"
        ]
    );
}

// ---------------------------------------------------------------------------------------
// backup.sh / restore.sh
// ---------------------------------------------------------------------------------------

/// The server every test uses; override with `BOTVISOR_TEST_PG` (a URL without database).
fn server_url() -> String {
    std::env::var("BOTVISOR_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Databases whose names start with a unique prefix; all of them (including copies the
/// scripts make, `<name>_restored_*` and `<name>_old_*`) are dropped on drop.
struct Dbs {
    prefix: String,
}

impl Dbs {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let prefix = format!(
            "ops_{}_{}_{:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos % 0xffff
        );
        Dbs { prefix }
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.prefix)
    }

    fn url(&self, db: &str) -> String {
        format!("{}/{db}", server_url())
    }

    /// Runs SQL in a database, returning unaligned output; `None` with the error printed.
    ///
    /// The server is shared with other test suites: a connection refused for "too many
    /// clients" is tried again a few times (a retry, not a wait for an event).
    fn try_sql(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut delay = std::time::Duration::from_millis(100);
        loop {
            let out = run(Command::new("psql")
                .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
                .arg(format!("--dbname={}", self.url(db)))
                .args(["-c", sql]));
            if out.status.success() {
                return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string());
            }
            let busy = String::from_utf8_lossy(&out.stderr).contains("too many clients");
            if !busy || delay > std::time::Duration::from_secs(5) {
                return Err(format!("psql {sql:?} in {db} failed:\n{}", text(&out)));
            }
            std::thread::sleep(delay);
            delay *= 2;
        }
    }

    /// Runs SQL in a database that must succeed, returning unaligned output.
    fn sql(&self, db: &str, sql: &str) -> String {
        self.try_sql(db, sql).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Creates a database with a table `t` of `rows` rows of varied content.
    fn create(&self, suffix: &str, rows: u32) -> String {
        let db = self.name(suffix);
        self.sql("postgres", &format!("CREATE DATABASE \"{db}\""));
        self.sql(
            &db,
            &format!(
                "CREATE TABLE t (id bigserial PRIMARY KEY, v text NOT NULL, j jsonb, at timestamptz);
                 INSERT INTO t (v, j, at) SELECT md5(g::text) || ' ''quoted'' ' || g,
                   jsonb_build_object('n', g, 'db', '{suffix}'), '2024-01-01'::timestamptz + g * interval '1 hour'
                 FROM generate_series(1, {rows}) g;
                 CREATE TABLE empty_one (id int PRIMARY KEY);"
            ),
        );
        db
    }

    /// Row count and a checksum of every row of `t`.
    fn fingerprint(&self, db: &str) -> (String, String) {
        (
            self.sql(db, "SELECT count(*) FROM t"),
            self.sql(
                db,
                "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM t",
            ),
        )
    }

    fn exists(&self, db: &str) -> bool {
        self.sql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
        ) == "1"
    }

    fn try_all(&self) -> Result<Vec<String>, String> {
        let names = self.try_sql(
            "postgres",
            &format!(
                "SELECT datname FROM pg_database WHERE left(datname, {}) = '{}' ORDER BY 1",
                self.prefix.len(),
                self.prefix
            ),
        )?;
        Ok(names.lines().map(str::to_string).collect())
    }

    fn all(&self) -> Vec<String> {
        self.try_all().unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Dbs {
    /// Drops every database of this test; never panics (it may run during a panic).
    fn drop(&mut self) {
        match self.try_all() {
            Ok(names) => {
                for db in names {
                    if let Err(e) = self.try_sql(
                        "postgres",
                        &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
                    ) {
                        eprintln!("cleanup: {e}");
                    }
                }
            }
            Err(e) => eprintln!("cleanup: cannot list databases {}*: {e}", self.prefix),
        }
    }
}

/// backup.sh with the panel and an explicit list of bot databases.
fn backup(dbs: &Dbs, panel: &str, bots: &[&str], dir: &Path, extra: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(script("backup.sh"))
        .env("BOTVISOR_PANEL_URL", dbs.url(panel))
        .env("BACKUP_DATABASES", bots.join(" "))
        .env("BACKUP_DIR", dir)
        .env_remove("BOTVISOR__BOT_DATABASE__SERVER_URL")
        .env_remove("JOURNAL_STREAM");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

/// The run directories under `dir` (daily/ or weekly/), sorted.
fn runs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn backup_then_restore_gives_equal_content() {
    let dbs = Dbs::new();
    let panel = dbs.create("panel", 5);
    let b1 = dbs.create("bot_1", 300);
    let b2 = dbs.create("bot_2", 40);
    let tmp = tempfile::tempdir().unwrap();
    let out = backup(&dbs, &panel, &[&b1, &b2], tmp.path(), &[]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let daily = runs(&tmp.path().join("daily"));
    assert_eq!(daily.len(), 1, "{all}");
    let run_dir = tmp.path().join("daily").join(&daily[0]);
    for db in [&panel, &b1, &b2] {
        let f = run_dir.join(format!("{db}.dump"));
        assert!(fs::metadata(&f).unwrap().len() > 0, "{f:?}");
    }
    assert!(!run_dir.join("FAILED").exists());
    assert_eq!(
        runs(&tmp.path().join("weekly")).len(),
        1,
        "first run of the week kept"
    );

    // Restore bot 1 into a new database, named explicitly, and into a derived name.
    let copy = dbs.name("bot_1_copy");
    let out = run(Command::new("bash")
        .arg(script("restore.sh"))
        .args(["--into", &copy])
        .arg(run_dir.join(format!("{b1}.dump")))
        .env("BOTVISOR_PANEL_URL", dbs.url(&panel)));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("verified"), "{}", text(&out));
    assert_eq!(dbs.fingerprint(&copy), dbs.fingerprint(&b1));
    assert_eq!(dbs.fingerprint(&copy).0, "300");

    let out = run(Command::new("bash")
        .arg(script("restore.sh"))
        .arg(run_dir.join(format!("{panel}.dump")))
        .arg("--panel")
        .env("BOTVISOR_PANEL_URL", dbs.url(&panel)));
    assert!(out.status.success(), "{}", text(&out));
    let restored: Vec<String> = dbs
        .all()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{panel}_restored_")))
        .collect();
    assert_eq!(restored.len(), 1, "{:?}", dbs.all());
    assert_eq!(dbs.fingerprint(&restored[0]), dbs.fingerprint(&panel));
    // The live databases are untouched.
    assert_eq!(dbs.fingerprint(&b1).0, "300");

    // Restoring over an existing name is refused.
    let out = run(Command::new("bash")
        .arg(script("restore.sh"))
        .args(["--into", &b2])
        .arg(run_dir.join(format!("{b1}.dump")))
        .env("BOTVISOR_PANEL_URL", dbs.url(&panel)));
    assert!(!out.status.success());
    assert!(text(&out).contains("already exists"), "{}", text(&out));
    assert_eq!(dbs.fingerprint(&b2).0, "40");
}

#[test]
fn backup_fails_loudly_on_a_missing_database_but_saves_the_rest() {
    let dbs = Dbs::new();
    let panel = dbs.create("panel", 3);
    let b1 = dbs.create("bot_1", 10);
    let missing = dbs.name("bot_missing");
    let tmp = tempfile::tempdir().unwrap();
    let out = backup(&dbs, &panel, &[&missing, &b1], tmp.path(), &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "BACKUP FAILED: bot database: pg_dump of {missing}"
        )),
        "{all}"
    );
    assert!(
        stderr.contains("BACKUP FAILED: 1 of 3 databases not saved"),
        "{all}"
    );
    let run_dir = tmp
        .path()
        .join("daily")
        .join(&runs(&tmp.path().join("daily"))[0]);
    assert!(
        run_dir.join(format!("{b1}.dump")).exists(),
        "the others are saved"
    );
    assert!(run_dir.join(format!("{panel}.dump")).exists());
    assert!(
        fs::read_to_string(run_dir.join("FAILED"))
            .unwrap()
            .contains(&missing)
    );
    assert!(
        runs(&tmp.path().join("weekly")).is_empty(),
        "a failed run is not a weekly"
    );
}

/// The real botvisor binary this test run was built with.
fn botvisor_bin() -> &'static str {
    env!("CARGO_BIN_EXE_botvisor")
}

/// A sandbox-style token: `<digits>:<35 characters>`.
fn token(n: u32) -> String {
    format!("{n}:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0")
}

/// A panel database migrated by the real binary; returns its name.
fn real_panel(dbs: &Dbs) -> String {
    let panel = dbs.name("panel");
    dbs.sql("postgres", &format!("CREATE DATABASE \"{panel}\""));
    ok(Command::new(botvisor_bin())
        .arg("migrate")
        .env("BOTVISOR_PANEL_URL", dbs.url(&panel)));
    panel
}

/// backup.sh finding the bot databases itself, through the real botvisor CLI.
fn backup_discovering(dbs: &Dbs, panel: &str, dir: &Path, extra: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(script("backup.sh"))
        .env("BOTVISOR_PANEL_URL", dbs.url(panel))
        .env("BOTVISOR", botvisor_bin())
        .env("BOTVISOR_CONFIG", dir.join("no-botvisor.toml"))
        .env("BACKUP_DIR", dir)
        .env_remove("BACKUP_DATABASES")
        .env_remove("BOTVISOR__BOT_DATABASE__SERVER_URL")
        .env_remove("BOTVISOR__BOT_DATABASE__NAME_TEMPLATE")
        .env_remove("JOURNAL_STREAM");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

#[test]
fn backup_saves_orphaned_bot_databases_and_flags_them() {
    let dbs = Dbs::new();
    let panel = real_panel(&dbs);
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("master.key");
    botvisor::crypto::init_key_file(&key).unwrap();
    let add = |name: &str, n: u32| -> String {
        ok(Command::new(botvisor_bin())
            .args(["bot", "add", "--name", name, "--token", &token(n)])
            .env("BOTVISOR_PANEL_URL", dbs.url(&panel))
            .env(botvisor::crypto::KEY_FILE_ENV, &key))
        .trim()
        .to_string()
    };
    let live_id = add("live", 1);
    let _never_started = add("never_started", 2);
    // The default template is {panel_db}_bot_{id}; `dbs.create` prefixes the test's name,
    // and the panel is `<prefix>_panel`.
    let live = dbs.create(&format!("panel_bot_{live_id}"), 20);
    let orphan = dbs.create("panel_bot_9999", 7);
    let not_a_bot = dbs.create("panel_bot_9999_old_20240101", 1);
    let tmp = tempfile::tempdir().unwrap();
    let out = backup_discovering(&dbs, &panel, tmp.path(), &[]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("1/3 panel: {panel} OK")), "{all}");
    assert!(
        stdout.contains(&format!("2/3 bot {live_id} (live): {live} OK")),
        "{all}"
    );
    assert!(
        stdout.contains(&format!(
            "3/3 orphan (no bot in the panel uses it): {orphan} OK"
        )),
        "{all}"
    );
    assert!(stdout.contains("does not exist yet"), "{all}");
    assert!(
        stdout.contains(&format!(
            "OK: 3 of 3 databases saved (1 orphan(s): {orphan})"
        )),
        "{all}"
    );
    let run_dir = tmp
        .path()
        .join("daily")
        .join(&runs(&tmp.path().join("daily"))[0]);
    for db in [&panel, &live, &orphan] {
        assert!(run_dir.join(format!("{db}.dump")).exists(), "{db}: {all}");
    }
    assert!(!run_dir.join(format!("{not_a_bot}.dump")).exists(), "{all}");
    assert_eq!(
        fs::read_to_string(run_dir.join("ORPHANS")).unwrap(),
        format!("{orphan}\n")
    );
}

#[test]
fn backup_skips_bots_placed_on_another_server_loudly() {
    let dbs = Dbs::new();
    let panel = real_panel(&dbs);
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("master.key");
    botvisor::crypto::init_key_file(&key).unwrap();
    // Two servers: the panel's, and one the backup does not reach (placement only writes the
    // panel, so it need not answer).
    let here = dbs.url(&panel);
    let here = &here[..here.rfind('/').unwrap()];
    let elsewhere = "postgres://postgres@192.0.2.1:5433";
    let servers = format!(r#"["{here}", "{elsewhere}"]"#);
    let add = |name: &str, n: u32| -> String {
        ok(Command::new(botvisor_bin())
            .args(["bot", "add", "--name", name, "--token", &token(n)])
            .env("BOTVISOR_PANEL_URL", dbs.url(&panel))
            .env("BOTVISOR__BOT_DATABASE__SERVERS", &servers)
            .env(botvisor::crypto::KEY_FILE_ENV, &key))
        .trim()
        .to_string()
    };
    let near_id = add("near", 1);
    let far_id = add("far", 2);
    let near = dbs.create(&format!("panel_bot_{near_id}"), 5);
    let tmp = tempfile::tempdir().unwrap();
    let out = backup_discovering(
        &dbs,
        &panel,
        tmp.path(),
        &[("BOTVISOR__BOT_DATABASE__SERVERS", &servers)],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("2/2 bot {near_id} (near): {near} OK")),
        "{all}"
    );
    assert!(
        all.contains(&format!(
            "BACKUP SKIPPED: bot {far_id} (far): its database is on another server ({elsewhere})"
        )),
        "{all}"
    );
}

#[test]
fn backup_of_the_panel_alone_counts_it_saved() {
    let dbs = Dbs::new();
    let panel = real_panel(&dbs);
    let tmp = tempfile::tempdir().unwrap();
    let out = backup_discovering(&dbs, &panel, tmp.path(), &[]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("backup: 1/1 panel"), "{all}");
    assert!(all.contains("OK: 1 of 1 databases saved"), "{all}");

    // Without a botvisor binary the bot list is a problem, but the panel was saved and the
    // summary says so.
    let missing = tmp.path().join("no-botvisor");
    let out = backup_discovering(
        &dbs,
        &panel,
        tmp.path(),
        &[("BOTVISOR", missing.to_str().unwrap())],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("BACKUP FAILED: could not list bots"), "{all}");
    assert!(
        all.contains("BACKUP FAILED: 1 of 1 databases saved; 2 other problem(s)"),
        "{all}"
    );
    assert!(!all.contains("not saved"), "{all}");
}

#[test]
fn backup_has_help_and_reads_the_env_file_as_systemd_does() {
    let out = run(Command::new("bash")
        .arg(script("backup.sh"))
        .arg("--help")
        .env_remove("BOTVISOR_PANEL_URL")
        .env_remove("DATABASE_URL"));
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("Usage:"), "{all}");
    assert!(all.contains("BACKUP_KEEP_DAILY"), "{all}");
    let out = run(Command::new("bash").arg(script("backup.sh")).arg("--bogus"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // The shipped env.example, comment lines and all, with this test's panel URL.
    let dbs = Dbs::new();
    let panel = dbs.create("panel", 3);
    let tmp = tempfile::tempdir().unwrap();
    let example = fs::read_to_string(root().join("deploy/env.example")).unwrap();
    assert!(example.lines().any(|l| l.starts_with('#')));
    let env_file: String = example
        .lines()
        .map(|l| {
            if l.starts_with("BOTVISOR_PANEL_URL=") {
                format!("BOTVISOR_PANEL_URL={}", dbs.url(&panel))
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(tmp.path().join("env"), env_file).unwrap();
    let out = run(Command::new("bash")
        .arg(script("backup.sh"))
        .arg("--env-file")
        .arg(tmp.path().join("env"))
        .env_remove("BOTVISOR_PANEL_URL")
        .env_remove("DATABASE_URL")
        .env_remove("BOTVISOR__BOT_DATABASE__SERVER_URL")
        .env("BACKUP_DATABASES", "")
        .env("BACKUP_DIR", tmp.path().join("dumps")));
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains(&format!("1/1 panel: {panel} OK")), "{all}");
}

#[test]
fn backup_fails_loudly_on_a_corrupt_dump() {
    let dbs = Dbs::new();
    let panel = dbs.create("panel", 2000);
    let tmp = tempfile::tempdir().unwrap();
    let pg_dump = fixture("truncating-pg_dump");
    let out = backup(
        &dbs,
        &panel,
        &[],
        tmp.path(),
        &[("PG_DUMP", pg_dump.to_str().unwrap())],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(&format!(
            "BACKUP FAILED: panel: dump of {panel} does not read back"
        )),
        "{all}"
    );
    let run_dir = tmp
        .path()
        .join("daily")
        .join(&runs(&tmp.path().join("daily"))[0]);
    assert!(
        !run_dir.join(format!("{panel}.dump")).exists(),
        "no bad dump left as good"
    );
}

#[test]
fn backup_rotation_keeps_n_daily_and_m_weekly() {
    let dbs = Dbs::new();
    let panel = dbs.create("panel", 1);
    let tmp = tempfile::tempdir().unwrap();
    // Mondays and a Wednesday of January 2024: ISO weeks 1, 1, 2, 3, 4.
    for date in [
        "2024-01-01",
        "2024-01-03",
        "2024-01-08",
        "2024-01-15",
        "2024-01-22",
    ] {
        let out = backup(
            &dbs,
            &panel,
            &[],
            tmp.path(),
            &[
                ("BACKUP_DATE", &format!("{date} 03:30")),
                ("BACKUP_KEEP_DAILY", "3"),
                ("BACKUP_KEEP_WEEKLY", "2"),
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(
        runs(&tmp.path().join("daily")),
        [
            "2024-01-08_033000",
            "2024-01-15_033000",
            "2024-01-22_033000"
        ]
    );
    assert_eq!(runs(&tmp.path().join("weekly")), ["2024-W03", "2024-W04"]);
}

#[test]
fn restore_swap_replaces_live_bot_database() {
    let dbs = Dbs::new();
    let panel = dbs.create("panel", 1);
    let live = dbs.create("bot_1", 50);
    let tmp = tempfile::tempdir().unwrap();
    let out = backup(&dbs, &panel, &[&live], tmp.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let backed_up = dbs.fingerprint(&live);
    // After the backup the live database changes (the damage we want to undo).
    dbs.sql(&live, "DELETE FROM t WHERE id > 10");
    let damaged = dbs.fingerprint(&live);

    // The fake botvisor plays the CLI: bot 1 is enabled and running on `live`.
    let state = tmp.path().join("state");
    fs::create_dir(&state).unwrap();
    fs::write(state.join("state"), "running\n").unwrap();
    fs::write(state.join("enabled"), "true\n").unwrap();
    let fake = tmp.path().join("botvisor");
    fs::write(&fake, Deploy::fake_binary("live", "healthy")).unwrap();
    ok(Command::new("chmod").arg("755").arg(&fake));

    let dump = tmp
        .path()
        .join("daily")
        .join(&runs(&tmp.path().join("daily"))[0])
        .join(format!("{live}.dump"));
    let out = run(Command::new("bash")
        .arg(script("restore.sh"))
        .args(["--bot", "1", "--swap"])
        .arg(&dump)
        .env("BOTVISOR_PANEL_URL", dbs.url(&panel))
        .env("BOTVISOR", &fake)
        .env("BOTVISOR_CONFIG", tmp.path().join("none.toml"))
        .env("FAKE_STATE_DIR", &state)
        .env("FAKE_BOT_DB", &live)
        .env("FAKE_BOTVISOR_LOG", tmp.path().join("botvisor.log")));
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(
        dbs.fingerprint(&live),
        backed_up,
        "live name holds the backup"
    );
    let old: Vec<String> = dbs
        .all()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{live}_old_")))
        .collect();
    assert_eq!(old.len(), 1, "{:?}", dbs.all());
    assert_eq!(dbs.fingerprint(&old[0]), damaged, "previous database kept");
    // The printed drop command names the server and works as printed.
    let hint = all
        .lines()
        .find_map(|l| l.split_once("drop the previous database: ").map(|(_, c)| c))
        .unwrap_or_else(|| panic!("tells how to drop it: {all}"));
    assert!(
        hint.starts_with(&format!("psql '{}/postgres'", server_url())),
        "{hint}"
    );
    ok(Command::new("bash").args(["-c", hint]));
    assert!(!dbs.exists(&old[0]), "{hint}");
    let calls = fs::read_to_string(tmp.path().join("botvisor.log")).unwrap();
    let disable = calls.find("bot disable 1").expect("disabled");
    let enable = calls.find("bot enable 1").expect("enabled again");
    assert!(disable < enable, "{calls}");
    assert_eq!(
        fs::read_to_string(state.join("enabled")).unwrap().trim(),
        "true"
    );
    assert!(dbs.exists(&live));
}

// ---------------------------------------------------------------------------------------
// dev.sh
// ---------------------------------------------------------------------------------------

/// scripts/dev.sh running in its own process group, its stdout read up to the line saying
/// that `botvisor serve` starts.
struct DevRun {
    child: std::process::Child,
    /// stdout up to and including the "dev: panel …" line.
    printed: Vec<String>,
}

impl DevRun {
    fn start(dbs: &Dbs, dir: &Path, sandbox: &str) -> DevRun {
        Self::start_with_panel(dbs, dir, sandbox, &free_address())
    }

    fn start_with_panel(dbs: &Dbs, dir: &Path, sandbox: &str, panel: &str) -> DevRun {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("bash")
            .arg(script("dev.sh"))
            .env("DEV_DB", dbs.name("dev"))
            .env("SANDBOX_ADDR", sandbox)
            .env("PANEL_ADDR", panel)
            .env("CARGO", fixture("fake-cargo"))
            .env("FAKE_CARGO_BIN", botvisor_bin())
            .env("FAKE_CARGO_LOG", dir.join("cargo.log"))
            .env("CARGO_TARGET_DIR", dir.join("target-elsewhere"))
            .env_remove("BOTVISOR_PANEL_URL")
            .env_remove("DATABASE_URL")
            .env_remove("DEMO_TOKEN")
            .stdout(std::process::Stdio::piped())
            .stderr(fs::File::create(dir.join("dev.stderr")).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut printed = Vec::new();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            let Some(line) = lines.next() else {
                let _ = child.wait();
                panic!(
                    "dev.sh ended before starting serve:\n{}\n--- stderr\n{}",
                    printed.join("\n"),
                    fs::read_to_string(dir.join("dev.stderr")).unwrap_or_default()
                );
            };
            let line = line.unwrap();
            let done = line.starts_with("dev: panel ");
            printed.push(line);
            if done {
                return DevRun { child, printed };
            }
        }
    }

    /// The printed command groups: runs of indented lines, comments left out.
    fn command_groups(&self) -> Vec<Vec<String>> {
        let mut groups: Vec<Vec<String>> = vec![Vec::new()];
        for line in &self.printed {
            if let Some(cmd) = line.strip_prefix("  ") {
                if !cmd.trim_start().starts_with('#') {
                    groups.last_mut().unwrap().push(cmd.to_string());
                }
            } else if !groups.last().unwrap().is_empty() {
                groups.push(Vec::new());
            }
        }
        groups.retain(|g| !g.is_empty());
        groups
    }

    /// Stops dev.sh and what it started (the whole process group: sandbox and daemon), and
    /// waits for it; dropping the value does the same, so a failing test leaves nothing
    /// running.
    fn stop(self) {
        drop(self);
    }
}

impl Drop for DevRun {
    fn drop(&mut self) {
        use std::time::{Duration, Instant};
        // dev.sh prints the line `start` waits for just before it starts `serve`, so a stop
        // right after a start can signal the group before `serve` exists; dev.sh then waits
        // for a `serve` nobody stopped (seen once: the suite hung here). Signal the group
        // until dev.sh has ended, so a process started after one signal gets the next; after
        // 30 s, kill it.
        let pgid = format!("-{}", self.child.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut next_signal = Instant::now();
        loop {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                let _ = Command::new("kill").args(["-KILL", "--", &pgid]).status();
                let _ = self.child.wait();
                return;
            }
            if now >= next_signal {
                let _ = Command::new("kill").args(["-TERM", "--", &pgid]).status();
                next_signal = now + Duration::from_secs(2);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs printed commands in bash and returns their output lines (each ends with `echo`).
fn run_commands(cmds: &[String]) -> Vec<String> {
    let out = ok(Command::new("bash")
        .args(["-euo", "pipefail", "-c"])
        .arg(cmds.join("\n")));
    out.lines().map(str::to_string).collect()
}

/// The sandbox's record of what the bot sent to chat 1, after `after`, waiting up to 10 s.
fn sent_after(sandbox: &str, token: &str, after: u64) -> Vec<serde_json::Value> {
    let body = ok(Command::new("curl").arg("-s").arg(format!(
        "http://{sandbox}/sandbox/sent?token={token}&chat_id=1&after={after}&wait_ms=10000"
    )));
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["events"].as_array().cloned().unwrap_or_default()
}

/// Reads the bot's events (each read waits for new ones) until one has `text`; returns
/// every event seen. Gives up after six empty 10-second waits.
fn events_until(sandbox: &str, token: &str, text: &str) -> Vec<serde_json::Value> {
    let mut seen: Vec<serde_json::Value> = Vec::new();
    for _ in 0..6 {
        let after = seen.last().and_then(|e| e["seq"].as_u64()).unwrap_or(0);
        seen.extend(sent_after(sandbox, token, after));
        if seen.iter().any(|e| e["text"] == text) {
            return seen;
        }
    }
    panic!("no event with text {text:?}: {seen:?}");
}

#[test]
fn dev_prints_commands_that_talk_to_the_demo_bot() {
    if !available("curl", "curl") {
        return;
    }
    let dbs = Dbs::new();
    let tmp = tempfile::tempdir().unwrap();
    let sandbox = free_address();
    let token = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0";

    // First run: the binary is found in CARGO_TARGET_DIR (not target/debug), the demo bot
    // is registered and the commands carry its real token; the web panel runs, and its
    // printed credentials sign in.
    let panel = free_address();
    let dev = DevRun::start_with_panel(&dbs, tmp.path(), &sandbox, &panel);
    let printed = dev.printed.join("\n");
    assert!(
        printed.contains(&format!(
            "dev: web panel http://{panel}/ - sign in as admin / botvisor-dev-password"
        )),
        "{printed}"
    );
    let session = run(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"login": "admin", "password": "botvisor-dev-password"}"#,
        &format!("http://{panel}/api/v1/session"),
    ]));
    assert_eq!(
        String::from_utf8_lossy(&session.stdout),
        "200",
        "sign-in with the printed credentials"
    );
    assert!(printed.contains("registered the demo bot"), "{printed}");
    assert!(printed.contains(token), "the real token: {printed}");
    assert!(!printed.contains("****"), "{printed}");
    assert!(printed.contains("wait_ms="), "{printed}");
    let groups = dev.command_groups();
    assert_eq!(groups.len(), 3, "{printed}");
    // README shows the same commands, for the default address.
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    for cmd in groups.concat() {
        let documented = cmd.replace(&sandbox, "127.0.0.1:8081");
        assert!(
            readme.lines().any(|l| l == documented),
            "README lacks {documented}"
        );
    }

    // Group 1: /start, then a read that waits for the answer.
    let out = run_commands(&groups[0]);
    assert!(out[0].contains("update_id"), "{out:?}");
    assert!(out[1].contains("\"events\""), "{out:?}");
    let events = events_until(&sandbox, token, "Main menu");
    assert!(
        events
            .iter()
            .any(|e| e["text"].as_str().is_some_and(|t| t.starts_with("Hello"))),
        "the greeting: {events:?}"
    );
    let last_seq = events.last().unwrap()["seq"].as_u64().unwrap();

    // Group 2: press "About"; the last read shows only what came after.
    let out = run_commands(&groups[1]);
    assert!(out[0].contains("update_id"), "{out:?}");
    let after: serde_json::Value = serde_json::from_str(&out[1]).unwrap();
    let new_events = after["events"].as_array().unwrap();
    assert!(!new_events.is_empty(), "{out:?}");
    assert!(
        new_events
            .iter()
            .all(|e| e["seq"].as_u64().unwrap() > last_seq),
        "{out:?}"
    );
    let events = events_until(&sandbox, token, "About us");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "edit" && e["text"] == "About us"),
        "the menu was edited in place: {events:?}"
    );

    // Group 3: the assistant answers /ask from the sandbox's model (its key a bot secret).
    let out = run_commands(&groups[2]);
    assert!(out[0].contains("update_id"), "{out:?}");
    events_until(&sandbox, token, "echo: What is botvisor?");
    dev.stop();

    // Second run: nothing registered again, the same commands printed.
    let again = DevRun::start(&dbs, tmp.path(), &sandbox);
    let printed2 = again.printed.join("\n");
    assert!(!printed2.contains("registered the demo bot"), "{printed2}");
    assert_eq!(again.command_groups(), groups, "{printed2}");
    again.stop();
    let bots = ok(Command::new(botvisor_bin())
        .args(["bot", "list"])
        .env("BOTVISOR_PANEL_URL", dbs.url(&dbs.name("dev"))));
    assert_eq!(
        bots.lines().filter(|l| l.contains("demo")).count(),
        1,
        "{bots}"
    );
    // dev.sh's build went through cargo, and the binary came from where cargo reported.
    assert!(
        fs::read_to_string(tmp.path().join("cargo.log"))
            .unwrap()
            .contains("metadata --format-version 1 --no-deps --locked")
    );
}

// ---------------------------------------------------------------------------------------
// systemd units and shellcheck
// ---------------------------------------------------------------------------------------

/// The `key=value` settings of a unit file, in order, comments and sections skipped.
fn unit_keys(name: &str) -> Vec<(String, String)> {
    fs::read_to_string(root().join("deploy").join(name))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn value<'a>(keys: &'a [(String, String)], key: &str) -> &'a str {
    keys.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("{key} missing"))
}

#[test]
fn units_have_required_keys() {
    let s = unit_keys("botvisor.service");
    for (key, want) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("Restart", "on-failure"),
        ("User", "botvisor"),
        ("Group", "botvisor"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("EnvironmentFile", "-/etc/botvisor/env"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("CapabilityBoundingSet", ""),
        (
            "ExecStart",
            "/usr/local/bin/botvisor --config /etc/botvisor/botvisor.toml serve",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ] {
        assert_eq!(value(&s, key), want, "botvisor.service {key}");
    }
    let num = |k: &str| -> u64 { value(&s, k).parse().unwrap() };
    assert!(num("WatchdogSec") >= 15, "daemon pings well within it");
    assert!(num("TimeoutStopSec") > 20, "above shutdown_deadline_secs");
    assert!(num("LimitNOFILE") >= 65536);
    assert!(num("StartLimitBurst") >= 3, "survives a few quick crashes");
    assert!(num("StartLimitIntervalSec") >= num("RestartSec") * num("StartLimitBurst"));

    // The web panel's unit: hardened like the daemon's, its own command.
    let p = unit_keys("botvisor-panel.service");
    for key in [
        "Restart",
        "User",
        "Group",
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "EnvironmentFile",
        "RestrictAddressFamilies",
        "CapabilityBoundingSet",
        "SystemCallFilter",
        "MemoryDenyWriteExecute",
    ] {
        assert_eq!(
            value(&p, key),
            value(&s, key),
            "botvisor-panel.service {key}"
        );
    }
    assert_eq!(
        value(&p, "ExecStart"),
        "/usr/local/bin/botvisor --config /etc/botvisor/botvisor.toml panel"
    );

    let b = unit_keys("botvisor-backup.service");
    assert_eq!(value(&b, "Type"), "oneshot");
    assert_eq!(value(&b, "User"), "botvisor");
    assert!(value(&b, "ExecStart").ends_with("scripts/backup.sh"));
    let t = unit_keys("botvisor-backup.timer");
    assert!(!value(&t, "OnCalendar").is_empty());
    assert_eq!(value(&t, "Persistent"), "true");
    assert!(!value(&t, "RandomizedDelaySec").is_empty());
}

#[test]
fn units_pass_systemd_analyze_verify() {
    if !available("systemd-analyze", "systemd") {
        return;
    }
    // verify insists that ExecStart= programs exist; point the daemon's at a stand-in.
    let tmp = tempfile::tempdir().unwrap();
    let stand_in = tmp.path().join("botvisor");
    fs::write(&stand_in, "#!/bin/sh\n").unwrap();
    ok(Command::new("chmod").arg("755").arg(&stand_in));
    let mut units = Vec::new();
    for name in [
        "botvisor.service",
        "botvisor-panel.service",
        "botvisor-backup.service",
        "botvisor-backup.timer",
    ] {
        let body = fs::read_to_string(root().join("deploy").join(name))
            .unwrap()
            .replace("/usr/local/bin/botvisor", stand_in.to_str().unwrap());
        let path = tmp.path().join(name);
        fs::write(&path, body).unwrap();
        units.push(path);
    }
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units));
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    // Unknown or misspelt keys are only warnings; treat them as errors.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("Unknown"), "{all}");
    assert!(!stderr.contains("ignoring"), "{all}");
}

#[test]
fn scripts_are_shellcheck_clean() {
    if !available("shellcheck", "shellcheck") {
        return;
    }
    let mut files: Vec<PathBuf> = [
        "update.sh",
        "backup.sh",
        "restore.sh",
        "dev.sh",
        "test.sh",
        "pg-up.sh",
    ]
    .iter()
    .map(|s| script(s))
    .collect();
    files.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci/run"));
    files.push(script("lib/pg.sh"));
    files.push(script("lib/cargo.sh"));
    files.push(script("lib/env.sh"));
    for f in [
        "fake-botvisor.sh",
        "fake-cargo",
        "fake-systemctl",
        "truncating-pg_dump",
    ] {
        files.push(fixture(f));
    }
    // -x follows `source`d files (scripts/lib/pg.sh), whose paths are relative to the root.
    let out = run(Command::new("shellcheck")
        .arg("-x")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(&files));
    assert!(out.status.success(), "{}", text(&out));
}
