//! The bench's own PostgreSQL work: its panel database (created, migrated, always dropped with
//! every bot database derived from it), the connection sampler and the insert baseline.

use botvisor::tasks::Tasks;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokio_util::sync::CancellationToken;

/// How often the sampler asks `pg_stat_activity` for the daemon's bot-database connections.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// Where the bench's databases live: a server URL without database, plus an sslmode.
#[derive(Clone, Debug)]
pub struct Server {
    /// `postgres://user@host:port`, no database part.
    pub url: String,
    /// An explicit sslmode (`prefer`, `disable`, …), or empty for a plain URL.
    pub sslmode: String,
}

impl Server {
    /// The URL of database `db` on this server.
    pub fn url_of(&self, db: &str) -> String {
        if self.sslmode.is_empty() {
            format!("{}/{db}", self.url)
        } else {
            format!("{}/{db}?sslmode={}", self.url, self.sslmode)
        }
    }

    /// Connection options for database `db`.
    pub fn options(&self, db: &str) -> anyhow::Result<PgConnectOptions> {
        let url = self.url_of(db);
        url.parse::<PgConnectOptions>()
            .map(|o| botvisor::settings::without_loopback_tls(&url, o))
            .with_context(|| format!("{url} is not a PostgreSQL URL"))
    }

    /// One connection to database `db`.
    pub async fn connect(&self, db: &str) -> anyhow::Result<PgConnection> {
        self.options(db)?
            .application_name("botvisor-bench")
            .connect()
            .await
            .with_context(|| {
                format!(
                    "cannot connect to {}: PostgreSQL must be running (see README)",
                    self.url_of(db)
                )
            })
    }
}

/// The bench's panel database; dropped, with every `<panel>_bot_%` database, by
/// [`PanelDb::drop_all`] or, if that never ran (a panic), when this value is dropped.
pub struct PanelDb {
    /// Its name, `botvisor_bench_<pid>`.
    pub name: String,
    server: Server,
    dropped: AtomicBool,
}

impl PanelDb {
    /// Creates the panel database (dropping a leftover of the same name first) and migrates it.
    pub async fn create(server: &Server) -> anyhow::Result<Self> {
        let name = format!("botvisor_bench_{}", std::process::id());
        let db = Self {
            name: name.clone(),
            server: server.clone(),
            dropped: AtomicBool::new(false),
        };
        db.drop_databases().await?;
        let mut conn = server.connect("postgres").await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        conn.close().await.ok();
        botvisor::schema::apply(&botvisor::schema::PANEL, &server.options(&name)?)
            .await
            .context("cannot migrate the bench's panel database")?;
        Ok(db)
    }

    /// The panel URL handed to the daemon.
    pub fn url(&self) -> String {
        self.server.url_of(&self.name)
    }

    /// The `LIKE` pattern of the daemon's bot databases.
    pub fn bot_pattern(&self) -> String {
        format!("{}\\_bot\\_%", self.name.replace('_', "\\_"))
    }

    /// Sessions PostgreSQL counted on the daemon's bot databases so far
    /// (`pg_stat_database.sessions`). A backend that went idle reports its counts within
    /// `PGSTAT_IDLE_INTERVAL` (10 s), so with `settle` this waits 11 s before reading.
    pub async fn bot_sessions(&self, settle: bool) -> anyhow::Result<i64> {
        if settle {
            tokio::time::sleep(std::time::Duration::from_secs(11)).await;
        }
        sessions(&self.server, &self.bot_pattern()).await
    }

    /// Drops the panel database and every bot database derived from it.
    pub async fn drop_all(&self) -> anyhow::Result<()> {
        self.drop_databases().await?;
        self.dropped.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn drop_databases(&self) -> anyhow::Result<()> {
        let mut conn = self.server.connect("postgres").await?;
        // The panel first: a daemon still running cannot then start (and create) more bots.
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT datname FROM pg_database WHERE datname = $1 OR datname LIKE $2 \
             ORDER BY datname = $1 DESC",
        )
        .bind(&self.name)
        .bind(self.bot_pattern())
        .fetch_all(&mut conn)
        .await?;
        for db in names {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await
            .with_context(|| format!("cannot drop database {db}"))?;
        }
        conn.close().await.ok();
        Ok(())
    }
}

impl Drop for PanelDb {
    fn drop(&mut self) {
        if self.dropped.load(Ordering::Relaxed) {
            return;
        }
        let db = Self {
            name: self.name.clone(),
            server: self.server.clone(),
            dropped: AtomicBool::new(true),
        };
        // Drop may run inside the runtime; a private runtime on a helper thread does the work.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            if let Err(e) = rt.block_on(db.drop_databases()) {
                eprintln!("bench: cleanup failed: {e:#}");
            }
        })
        .join();
    }
}

/// The peak of the daemon's connections to bot databases, sampled until stopped.
pub struct Sampler {
    peak: Arc<AtomicI64>,
    samples: Arc<AtomicU64>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Starts sampling `SELECT count(*) FROM pg_stat_activity WHERE datname LIKE pattern`.
    pub async fn start(server: &Server, pattern: String) -> anyhow::Result<Self> {
        let mut conn = server.connect("postgres").await?;
        let peak = Arc::new(AtomicI64::new(0));
        let samples = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let task = {
            let (peak, samples, stop) = (peak.clone(), samples.clone(), stop.clone());
            Tasks::new(stop.clone()).spawn("pg-sampler", async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let n: Result<i64, _> = sqlx::query_scalar(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE $1",
                    )
                    .bind(&pattern)
                    .fetch_one(&mut conn)
                    .await;
                    if let Ok(n) = n {
                        peak.fetch_max(n, Ordering::Relaxed);
                        samples.fetch_add(1, Ordering::Relaxed);
                    }
                }
                conn.close().await.ok();
            })
        };
        Ok(Self {
            peak,
            samples,
            stop,
            task,
        })
    }

    /// Stops sampling and returns the peak and the sample count.
    pub async fn finish(self) -> (i64, u64) {
        self.stop.cancel();
        let peak = (self.peak, self.samples);
        let _ = self.task.await;
        (
            peak.0.load(Ordering::Relaxed),
            peak.1.load(Ordering::Relaxed),
        )
    }
}

/// What the baseline measured.
pub struct Baseline {
    /// Inserts committed per second.
    pub inserts_per_s: f64,
    /// Inserts committed in the window.
    pub inserts: u64,
    /// Where the CPU went in the window.
    pub cpu: crate::cpu::Usage,
}

/// pgbench-style ceiling: single-row autocommit INSERTs from `connections` connections for
/// `secs` seconds into a scratch table of database `db` (the panel database, so its backends
/// count as the run's own in the CPU split).
pub async fn baseline(
    server: &Server,
    db: &str,
    connections: u32,
    secs: f64,
) -> anyhow::Result<Baseline> {
    let mut setup = server.connect(db).await?;
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_baseline; \
         CREATE TABLE bench_baseline (id bigserial PRIMARY KEY, v bigint NOT NULL)",
    )
    .execute(&mut setup)
    .await
    .context("cannot create the baseline table")?;
    // Connect everyone first: connection setup is not part of the ceiling.
    let conns = futures::future::try_join_all((0..connections).map(|_| server.connect(db))).await?;
    let start = Arc::new(tokio::sync::Barrier::new(conns.len() + 1));
    let inserts = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let spawner = Tasks::new(stop.clone());
    let mut workers = Vec::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let (start, inserts, stop) = (start.clone(), inserts.clone(), stop.clone());
        workers.push(spawner.spawn(format!("baseline-{i}"), async move {
            start.wait().await;
            let mut v = i as i64;
            while !stop.is_cancelled() {
                sqlx::query("INSERT INTO bench_baseline (v) VALUES ($1)")
                    .bind(v)
                    .execute(&mut conn)
                    .await?;
                inserts.fetch_add(1, Ordering::Relaxed);
                v += 1;
            }
            conn.close().await.ok();
            Ok::<_, sqlx::Error>(())
        }));
    }
    start.wait().await;
    let t0 = Instant::now();
    let n0 = inserts.load(Ordering::Relaxed);
    // No daemon runs yet: pid 0 reads as nothing.
    let before = crate::cpu::Snapshot::take(0, db);
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let n = inserts.load(Ordering::Relaxed) - n0;
    let after = crate::cpu::Snapshot::take(0, db);
    let elapsed = t0.elapsed().as_secs_f64();
    stop.cancel();
    for w in workers {
        w.await?.context("a baseline insert failed")?;
    }
    sqlx::raw_sql("DROP TABLE bench_baseline")
        .execute(&mut setup)
        .await?;
    setup.close().await.ok();
    Ok(Baseline {
        inserts_per_s: n as f64 / elapsed,
        inserts: n,
        cpu: before.usage(&after, elapsed),
    })
}

/// Sessions PostgreSQL counted so far on the databases whose names match `pattern`
/// (`pg_stat_database.sessions`: a backend's count reaches it when the backend ends, or
/// within 10 s while it lives).
pub async fn sessions(server: &Server, pattern: &str) -> anyhow::Result<i64> {
    let mut conn = server.connect("postgres").await?;
    let n: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(sessions), 0)::bigint FROM pg_stat_database WHERE datname LIKE $1",
    )
    .bind(pattern)
    .fetch_one(&mut conn)
    .await?;
    conn.close().await.ok();
    Ok(n)
}

/// `CHECKPOINT`, so the provisioning's WAL (`CREATE DATABASE` logs every new database whole)
/// does not start a WAL-triggered checkpoint inside a measured window; returns its seconds.
/// A role that may not checkpoint gets a warning, and the run goes on.
pub async fn checkpoint(server: &Server) -> anyhow::Result<Option<f64>> {
    let mut conn = server.connect("postgres").await?;
    let t0 = std::time::Instant::now();
    let done = match sqlx::query("CHECKPOINT").execute(&mut conn).await {
        Ok(_) => Some(t0.elapsed().as_secs_f64()),
        Err(e) => {
            eprintln!(
                "bench: warning: CHECKPOINT refused ({e}); a checkpoint may fall inside a window"
            );
            None
        }
    };
    conn.close().await.ok();
    Ok(done)
}
