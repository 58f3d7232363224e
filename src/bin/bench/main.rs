//! `bench`: many bots under real load, with figures anyone can reproduce (docs/performance.md).
//!
//! The bench drives botvisor the way an operator experiences it: bots are rows in a panel
//! database of its own (`botvisor_bench_<pid>`), Telegram is the in-process sandbox, the bot
//! databases live on the local PostgreSQL. Phases, in order:
//!
//! 1. `--baseline`: single-row INSERT transactions from `--budget` connections (the ceiling);
//! 2. the daemon starts with 0 bots (RSS, threads), then `--bots` are added and all run idle
//!    (RSS, threads again);
//! 3. traffic: `--active` bots × `--chats` chats send `/start`, closed loop (`--rate 0`: the
//!    next message in a chat once the previous one is answered, and no sooner than
//!    [`CHAT_GAP`] after it) or open loop at `--rate`; then, with `--half`, open loop at half
//!    the maximum; with `--overload`, closed loop again over 4 × `--active` bots with a quarter
//!    of the chats each (the same chats in all, spread over more bot databases);
//! 4. `--rate-limits`: a burst into one chat and a stream over many chats of one bot, with the
//!    sandbox enforcing Telegram's limits; time until all are answered, and the 429s;
//! 5. reload: a text change, then `/start` until the reply shows it;
//! 6. add → answer: `--add` bots added one by one, each asked `/start` right after its commit;
//! 7. cold start: the daemon is stopped and a fresh one started; time until every bot polls
//!    (with `--webhook`, every bot runs in webhook mode, and the cold start waits for each
//!    bot's setWebhook instead).
//!
//! `--metrics-scrape` runs none of these: it times a `/metrics` render with `--bots` bots'
//! series in this process (see `scrape`).
//!
//! `--instances N` replaces all of that with the several-instances figure (`instances`): N
//! `botvisor serve` processes share the panel; shares, kill -9 takeover, duplicates, 409s.
//!
//! The daemon sends through an outbox that keeps Telegram's limits (one message per
//! [`PRIVATE_PERIOD`] per private chat after a burst, one per [`BOT_PERIOD`] per bot), so the
//! traffic spreads over many chats, each sending at most once per [`CHAT_GAP`]: the latencies
//! then measure the engine, not the limits (docs/performance.md).
//!
//! Besides throughput and latency, the bench reports machine-independent costs: CPU
//! microseconds of PostgreSQL and of the daemon per update, and of PostgreSQL per single-row
//! insert in the baseline (from `/proc`, see `cpu`). A sampler counts the daemon's connections
//! to bot databases in `pg_stat_activity` during the whole run. The output is a table, then one
//! JSON object on the last line of stdout. The panel database and every bot database are
//! dropped at the end, on error and on Ctrl-C.

#![allow(clippy::print_stdout)]

mod cpu;
mod daemon;
mod instances;
mod pg;
mod scrape;
mod stock;

use botvisor::tasks::Tasks;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use botvisor::content::manifest::Manifest;
use botvisor::panel::access::NewAudit;
use botvisor::panel::store::{self, NewBot};
use botvisor::runtime::outbox::limits::{BOT_PERIOD, PRIVATE_BURST, PRIVATE_PERIOD};
use botvisor::sandbox::{InjectMessage, Sandbox, SandboxConfig, SandboxHandle};
use botvisor::token::BotToken;
use clap::Parser;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use daemon::{Mode, Running};
use pg::{PanelDb, Sampler, Server};

/// Most bots the bench registers (issue 16's figure is 10,000 webhook bots in one process;
/// each has its own database of ≈ 7.4 MB: docs/performance.md tells how to give them room).
const MAX_BOTS: u32 = 10_000;
/// How long any single reply may take before it counts as lost.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Numeric id of the first benchmark bot's token; added bots start at `ADDED_BASE`.
const BOT_BASE: u64 = 100_000;
/// Numeric id of the first bot added while the daemon runs.
const ADDED_BASE: u64 = 500_000;
/// The chat the add → answer phase talks in (apart from the traffic chats).
const PROBE_CHAT: i64 = 900_000;
/// The first chat of the reload phase; every attempt talks in a chat of its own, so the chat's
/// sending limit never holds a reply back.
const RELOAD_CHAT: i64 = 910_000;
/// The chat of the first messages after a cold start.
const COLD_PROBE_CHAT: i64 = 920_000;
/// How many bots get a message right after a cold start.
const COLD_PROBES: usize = 16;
/// The first chat of the rate-limit phases.
const LIMITS_CHAT: i64 = 800_000;
/// Least time between two messages of one traffic chat in the closed loop: above the sender's
/// per-chat period, so a chat's own limit never holds a reply back and the latencies measure
/// the engine (users do not send faster either).
const CHAT_GAP: Duration = Duration::from_millis(PRIVATE_PERIOD.as_millis() as u64 + 50);
/// Messages of the rate-limit phase into one chat (and the seconds they are sent over).
const ONE_CHAT_MESSAGES: (u32, f64) = (100, 2.0);
/// The rate-limit phase over one bot: chats, messages per second, seconds.
const ONE_BOT_STREAM: (u32, f64, f64) = (200, 60.0, 5.0);

/// Benchmark botvisor: bots registered through the panel, traffic through the sandbox, the
/// local PostgreSQL. Prints a table and, as the last line, one JSON object.
#[derive(Debug, Clone, Parser)]
#[command(name = "bench", version)]
struct Args {
    /// Bots registered and running (at most 10000).
    #[arg(long, default_value_t = 100)]
    bots: u32,
    /// Bots receiving traffic (the first K registered); 16 = what the default budget of 32
    /// connections holds at 2 per bot.
    #[arg(long, default_value_t = 16)]
    active: u32,
    /// Chats per active bot, each one user sending `/start` at most once per 1.1 s (Telegram
    /// lets a bot answer a chat about once a second); 32 chats reach a bot's ≈ 29/s limit.
    #[arg(long, default_value_t = 32)]
    chats: u32,
    /// Updates per second offered, spread evenly over the chats; 0 = closed-loop maximum
    /// (each chat sends its next message as soon as the previous one was answered).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds of measured traffic (after a warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Where the daemon runs: in this process, or `botvisor serve` as a child process; or, as
    /// the reference for `daemon_cpu_us_per_update`, a stock teloxide host with no database
    /// (`stock_host`, traffic phases only).
    #[arg(long, value_enum, default_value_t = Mode::Inproc)]
    daemon: Mode,
    /// Also measure PostgreSQL's single-row insert ceiling from `--budget` connections.
    #[arg(long)]
    baseline: bool,
    /// The daemon's connection budget for bot databases (and the baseline's connection count).
    #[arg(long, default_value_t = 32)]
    budget: u32,
    /// Bots added one by one while the daemon runs (add → answer).
    #[arg(long, default_value_t = 20)]
    add: u32,
    /// Text changes timed in the reload phase.
    #[arg(long, default_value_t = 20)]
    reloads: u32,
    /// After the closed-loop maximum, run a second traffic phase open loop at half of it and
    /// report that phase's latencies (the target is p99 at half the maximum load).
    #[arg(long)]
    half: bool,
    /// After the first traffic phase, run one more closed loop over 4 × `--active` bots with
    /// `--chats` / 4 chats each (at least 1), and report its throughput over the first's.
    #[arg(long)]
    overload: bool,
    /// Let the sandbox enforce Telegram's sending limits (429 above them) and run the
    /// rate-limit phases: 100 messages into one chat in 2 s, and 60 messages/s for 5 s over 200
    /// chats of one bot; report the time until all are answered and the 429s.
    #[arg(long)]
    rate_limits: bool,
    /// Skip the cold-start phase.
    #[arg(long)]
    no_cold_start: bool,
    /// Run every bot in webhook mode: the daemon's HTTP listener on a free loopback port,
    /// `public_url` pointing at it, the sandbox delivering by webhook (docs/webhooks.md). The
    /// cold start then waits for every bot's setWebhook instead of its getUpdates.
    #[arg(long)]
    webhook: bool,
    /// With `--webhook`: the daemon's `telegram.webhook_idle_after_secs` (0: bots never fall
    /// asleep; unset: the daemon's default). The idle RSS is then measured once every bot is
    /// asleep (the daemon's `botvisor_bots_dormant`; docs/webhooks.md, "Dormant bots"), and the
    /// traffic that follows wakes the active ones.
    #[arg(long)]
    idle_after: Option<u64>,
    /// With `--webhook`: after the traffic phases, switch the active bots to polling
    /// (`bot set-mode ID polling`, as an operator would), wait until each one polls, and run
    /// the first phase again: webhook against polling intake on the same run.
    #[arg(long)]
    compare_polling: bool,
    /// PostgreSQL server, without a database part.
    #[arg(
        long,
        env = "BOTVISOR_BENCH_PG",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pg: String,
    /// sslmode of every connection (the daemon's too); empty: a plain URL, as an operator
    /// writes it (botvisor then uses no TLS to a loopback server).
    #[arg(long, default_value = "")]
    sslmode: String,
    /// A few seconds at small sizes, every phase once (the test suite runs this).
    #[arg(long)]
    smoke: bool,
    /// Only time a `/metrics` render with `--bots` bots' worth of series (botvisor's own
    /// recorder in this process; no database, no daemon) and report its time and size.
    #[arg(long)]
    metrics_scrape: bool,
    /// Instead of the phases above: N `botvisor serve` processes (N ≥ 2) share the panel's
    /// `--bots`; report each one's share, the time until a kill -9'd instance's bots answer
    /// again, duplicates and the sandbox's 409s (needs `cargo build --release --bins`).
    #[arg(long, default_value_t = 0)]
    instances: u32,
}

impl Args {
    /// Applies `--smoke` and checks the knobs.
    fn resolved(mut self) -> anyhow::Result<Self> {
        if self.metrics_scrape {
            if self.bots == 0 || self.bots > 100_000 {
                bail!("--bots must be between 1 and 100000 with --metrics-scrape");
            }
            return Ok(self);
        }
        if self.smoke {
            self.bots = 8;
            self.active = 2;
            self.chats = 4;
            self.rate = 0.0;
            self.duration = 1.5;
            self.add = 2;
            self.reloads = 2;
            self.baseline = true;
            self.half = true;
            self.overload = true;
            self.rate_limits = true;
        }
        if self.daemon == Mode::Stock {
            if self.smoke {
                self.overload = false;
                self.rate_limits = false;
            }
            let panel_only = [
                (self.overload, "--overload"),
                (self.rate_limits, "--rate-limits"),
                (self.webhook, "--webhook"),
                (self.compare_polling, "--compare-polling"),
                (self.idle_after.is_some(), "--idle-after"),
                (self.instances > 0, "--instances"),
            ];
            if let Some((_, flag)) = panel_only.iter().find(|(set, _)| *set) {
                bail!(
                    "--daemon stock runs the traffic phases only (no panel, no limits): drop {flag}"
                );
            }
            // Reload, add and cold start need botvisor's panel.
            self.add = 0;
            self.reloads = 0;
            self.no_cold_start = true;
        }
        if self.bots == 0 || self.bots > MAX_BOTS {
            bail!("--bots must be between 1 and {MAX_BOTS}");
        }
        if self.active == 0 || self.active > self.bots {
            bail!("--active must be between 1 and --bots ({})", self.bots);
        }
        if self.chats == 0 {
            bail!("--chats must be at least 1");
        }
        if self.rate < 0.0 || self.duration <= 0.0 {
            bail!("--rate must be 0 or more and --duration more than 0");
        }
        if self.budget == 0 {
            bail!("--budget must be at least 1");
        }
        if self.overload && self.overload_bots() > self.bots {
            bail!(
                "--overload needs --bots at least 4 x --active ({})",
                self.overload_bots()
            );
        }
        if self.instances == 1 {
            bail!("--instances needs at least 2");
        }
        if self.rate_limits && self.bots < 2 {
            bail!("--rate-limits needs at least 2 bots");
        }
        if self.idle_after.is_some() && !self.webhook {
            bail!("--idle-after needs --webhook (only bots in webhook mode fall asleep)");
        }
        if self.compare_polling && !self.webhook {
            bail!("--compare-polling needs --webhook (it compares the two modes)");
        }
        Ok(self)
    }

    /// Bots of the overload phase.
    fn overload_bots(&self) -> u32 {
        self.active * 4
    }

    /// Chats per bot in the overload phase: the same chats in all as the first phase.
    fn overload_chats(&self) -> u32 {
        (self.chats / 4).max(1)
    }

    /// The rate-limit phase into one chat: messages and the seconds they are sent over.
    fn one_chat(&self) -> (u32, f64) {
        if self.smoke {
            (PRIVATE_BURST + 1, 0.2)
        } else {
            ONE_CHAT_MESSAGES
        }
    }

    /// The rate-limit phase over one bot: chats, messages per second, seconds.
    fn one_bot(&self) -> (u32, f64, f64) {
        if self.smoke {
            (20, ONE_BOT_STREAM.1, 0.5)
        } else {
            ONE_BOT_STREAM
        }
    }

    /// Seconds of unmeasured traffic before the window.
    fn warmup(&self) -> f64 {
        if self.smoke { 0.5 } else { 2.0 }
    }

    /// Seconds the baseline runs.
    fn baseline_secs(&self) -> f64 {
        if self.smoke { 1.0 } else { 5.0 }
    }
}

/// A well-formed token for bot user id `id` (unique per id).
fn token(id: u64) -> String {
    format!("{id}:AAH{:0>32}", format!("{id:x}bench"))
}

/// Nearest-rank percentile of sorted `v` (milliseconds).
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Rounds to `places` decimals for the report.
fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

/// Everything measured; `None` = not measured in this run.
#[derive(Debug, Default)]
struct Figures {
    updates_per_s: Option<f64>,
    baseline_inserts_per_s: Option<f64>,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
    latency_at_half: bool,
    /// Per traffic phase: its name, figures and where the CPU went.
    phases: Vec<(String, String, String)>,
    /// PostgreSQL CPU µs per update in the first traffic phase.
    pg_cpu_us_per_update: Option<f64>,
    /// PostgreSQL CPU µs per insert in the baseline.
    baseline_pg_cpu_us_per_insert: Option<f64>,
    /// The baseline's CPU split.
    baseline_cpu: Option<String>,
    /// The daemon's CPU µs per update in the first traffic phase.
    daemon_cpu_us_per_update: Option<f64>,
    /// Every bot running, no traffic: where the CPU went (the fixed cost that the per-update
    /// figures spread over the replies of their window).
    idle_cpu: Option<cpu::Usage>,
    /// Throughput of the overload phase.
    overload_updates_per_s: Option<f64>,
    /// Throughput of the first phase run again with the active bots polling
    /// (`--compare-polling`; in the table only, as `bots_dormant`).
    polling_updates_per_s: Option<f64>,
    /// The ceiling Telegram's limits and the chats' pacing put on the first phase.
    limits_ceiling_per_s: Option<f64>,
    /// 429s the sandbox gave in the whole run (with `--rate-limits`).
    rate_limited: Option<u64>,
    /// Seconds until every message of the one-chat burst was answered.
    rate_limit_one_chat_s: Option<f64>,
    /// Seconds until every message of the one-bot stream was answered.
    rate_limit_one_bot_s: Option<f64>,
    /// The rate-limit phases, described.
    rate_limit_phases: Vec<String>,
    rss_idle_kib_per_bot: Option<f64>,
    rss_kib: Option<(u64, u64)>,
    /// Bots asleep when the idle RSS was measured (`--idle-after`; in the table only: the
    /// JSON line keeps the keys every run measures).
    bots_dormant: Option<u64>,
    threads: Option<u64>,
    threads_at_zero: Option<u64>,
    provision_s: Option<f64>,
    pg_connections_peak: Option<i64>,
    pg_samples: u64,
    add_to_answer_p50_ms: Option<f64>,
    add_to_answer_p95_ms: Option<f64>,
    add_to_answer_max_ms: Option<f64>,
    reload_p50_ms: Option<f64>,
    reload_p95_ms: Option<f64>,
    cold_start_s: Option<f64>,
    cold_start_bots: usize,
    /// Connections the daemon opened to bot databases from the start until 11 s after every
    /// bot ran again, per bot (sessions counted by PostgreSQL in `pg_stat_database`).
    cold_start_connects_per_bot: Option<f64>,
    /// Where the machine's CPU went during the cold start.
    cold_start_cpu: Option<String>,
    /// From the start until every bot reported itself running again (its database checked:
    /// a polling bot's check follows its first poll, docs/architecture.md "Deferred start").
    cold_start_running_s: Option<f64>,
    /// `/start` sent to [`COLD_PROBES`] bots spread over the fleet once every bot polls:
    /// until each answered.
    cold_start_answer_p50_ms: Option<f64>,
    cold_start_answer_max_ms: Option<f64>,
    stop_s: Option<f64>,
    drained: Option<bool>,
    /// The `--instances` figures.
    instances: Option<Value>,
}

impl Figures {
    fn json(&self) -> Value {
        if let Some(v) = &self.instances {
            return v.clone();
        }
        let r = |v: Option<f64>, p| v.map(|v| round(v, p));
        let ratio = match (self.updates_per_s, self.baseline_inserts_per_s) {
            (Some(u), Some(b)) if b > 0.0 => Some(round(u / b, 3)),
            _ => None,
        };
        let over = |a: Option<f64>, b: Option<f64>, p| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(round(a / b, p)),
            _ => None,
        };
        json!({
            "pg_cpu_us_per_update": r(self.pg_cpu_us_per_update, 1),
            "baseline_pg_cpu_us_per_insert": r(self.baseline_pg_cpu_us_per_insert, 1),
            "pg_cost_ratio": over(self.pg_cpu_us_per_update, self.baseline_pg_cpu_us_per_insert, 2),
            "daemon_cpu_us_per_update": r(self.daemon_cpu_us_per_update, 1),
            "idle_daemon_cores": r(self.idle_cpu.map(|u| u.daemon), 4),
            "idle_pg_cores": r(self.idle_cpu.map(|u| u.postgres()), 4),
            "overload_updates_per_s": r(self.overload_updates_per_s, 1),
            "overload_factor": over(self.overload_updates_per_s, self.updates_per_s, 3),
            "rate_limited": self.rate_limited,
            "rate_limit_one_chat_s": r(self.rate_limit_one_chat_s, 2),
            "rate_limit_one_bot_s": r(self.rate_limit_one_bot_s, 2),
            "updates_per_s": r(self.updates_per_s, 1),
            "baseline_inserts_per_s": r(self.baseline_inserts_per_s, 1),
            "ratio": ratio,
            "p50_ms": r(self.p50_ms, 2),
            "p95_ms": r(self.p95_ms, 2),
            "p99_ms": r(self.p99_ms, 2),
            "rss_idle_kib_per_bot": r(self.rss_idle_kib_per_bot, 1),
            "threads": self.threads,
            "pg_connections_peak": self.pg_connections_peak,
            "add_to_answer_p50_ms": r(self.add_to_answer_p50_ms, 1),
            "add_to_answer_p95_ms": r(self.add_to_answer_p95_ms, 1),
            "reload_p95_ms": r(self.reload_p95_ms, 1),
            "cold_start_s": r(self.cold_start_s, 3),
            "cold_start_connects_per_bot": r(self.cold_start_connects_per_bot, 2),
            "cold_start_running_s": r(self.cold_start_running_s, 3),
            "cold_start_answer_p50_ms": r(self.cold_start_answer_p50_ms, 1),
            "cold_start_answer_max_ms": r(self.cold_start_answer_max_ms, 1),
        })
    }

    fn table(&self, args: &Args) -> String {
        if let Some(Value::Object(v)) = &self.instances {
            let mut out = String::from("botvisor bench --instances\n");
            for (k, v) in v {
                out.push_str(&format!("{k:<36} {v}\n"));
            }
            return out;
        }
        let f = |v: Option<f64>, unit: &str| match v {
            Some(v) => format!("{v:.1} {unit}"),
            None => "not measured".to_owned(),
        };
        let mode = match args.daemon {
            Mode::Inproc => "inproc",
            Mode::Process => "process",
            Mode::Stock => "stock teloxide host",
        };
        let mut rows: Vec<(String, String, &str)> = vec![
            (
                "updates/s (end to end)".into(),
                f(self.updates_per_s, "/s"),
                "",
            ),
            (
                "  ceiling of the limits".into(),
                f(self.limits_ceiling_per_s, "/s"),
                "",
            ),
            (
                "baseline inserts/s".into(),
                f(self.baseline_inserts_per_s, "/s"),
                "",
            ),
            (
                "ratio".into(),
                self.json()["ratio"]
                    .as_f64()
                    .map_or("not measured".into(), |v| format!("{v:.3}")),
                "",
            ),
            (
                "pg cpu per update".into(),
                f(self.pg_cpu_us_per_update, "us"),
                "",
            ),
            (
                "pg cpu per baseline insert".into(),
                f(self.baseline_pg_cpu_us_per_insert, "us"),
                "",
            ),
            (
                "  baseline cpu (cores)".into(),
                self.baseline_cpu.clone().unwrap_or("not measured".into()),
                "",
            ),
            (
                "pg cost ratio".into(),
                self.json()["pg_cost_ratio"]
                    .as_f64()
                    .map_or("not measured".into(), |v| format!("{v:.2}")),
                "<= 3",
            ),
            (
                "daemon cpu per update".into(),
                f(self.daemon_cpu_us_per_update, "us"),
                "<= 100 us",
            ),
            (
                "idle cpu, every bot running (cores)".into(),
                self.idle_cpu
                    .map_or("not measured".into(), |u| u.describe()),
                "",
            ),
            (
                "overload updates/s".into(),
                f(self.overload_updates_per_s, "/s"),
                "",
            ),
            (
                "same phase, bots polling".into(),
                f(self.polling_updates_per_s, "/s"),
                "<= updates/s (webhook)",
            ),
            (
                "overload factor".into(),
                self.json()["overload_factor"]
                    .as_f64()
                    .map_or("not measured".into(), |v| format!("{v:.3}")),
                ">= 0.5",
            ),
            (
                "latency measured at".into(),
                if self.latency_at_half {
                    "half the maximum (second phase)".into()
                } else {
                    "the rate of the first phase".into()
                },
                "",
            ),
            ("latency p50".into(), f(self.p50_ms, "ms"), ""),
            ("latency p95".into(), f(self.p95_ms, "ms"), ""),
            (
                "latency p99".into(),
                f(self.p99_ms, "ms"),
                "<= 25 ms at half the maximum",
            ),
            (
                "RSS per idle bot".into(),
                f(self.rss_idle_kib_per_bot, "KiB"),
                "<= 256 KiB",
            ),
            (
                "  bots asleep then".into(),
                self.bots_dormant
                    .map_or("not measured".into(), |n| n.to_string()),
                "",
            ),
            (
                "  RSS 0 bots / N bots".into(),
                self.rss_kib
                    .map_or("not measured".into(), |(a, b)| format!("{a} / {b} KiB")),
                "",
            ),
            (
                "threads (N bots)".into(),
                self.threads
                    .map_or("not measured".into(), |t| t.to_string()),
                "flat in N",
            ),
            (
                "  threads (0 bots)".into(),
                self.threads_at_zero
                    .map_or("not measured".into(), |t| t.to_string()),
                "",
            ),
            (
                "  all N bots running after".into(),
                f(self.provision_s, "s"),
                "",
            ),
            (
                "pg connections peak".into(),
                self.pg_connections_peak.map_or("not measured".into(), |p| {
                    format!("{p} ({} samples)", self.pg_samples)
                }),
                "<= budget",
            ),
            (
                "add -> answer p50".into(),
                f(self.add_to_answer_p50_ms, "ms"),
                "",
            ),
            (
                "add -> answer p95".into(),
                f(self.add_to_answer_p95_ms, "ms"),
                "<= 300 ms",
            ),
            (
                "  add -> answer max".into(),
                f(self.add_to_answer_max_ms, "ms"),
                "",
            ),
            ("reload p50".into(), f(self.reload_p50_ms, "ms"), ""),
            ("reload p95".into(), f(self.reload_p95_ms, "ms"), "<= 50 ms"),
            (
                "cold start".into(),
                match self.cold_start_s {
                    Some(s) => format!("{s:.2} s ({} bots)", self.cold_start_bots),
                    None => "not measured".into(),
                },
                "<= 5 s for 1000",
            ),
            (
                "  every bot running again".into(),
                match self.cold_start_running_s {
                    Some(s) => format!("{s:.2} s"),
                    None => "not measured".into(),
                },
                "",
            ),
            (
                format!("  first answer, {COLD_PROBES} bots"),
                match (self.cold_start_answer_p50_ms, self.cold_start_answer_max_ms) {
                    (Some(p50), Some(max)) => format!("p50 {p50:.1} ms, max {max:.1} ms"),
                    _ => "not measured".into(),
                },
                "",
            ),
            (
                "  connections per bot in it".into(),
                match self.cold_start_connects_per_bot {
                    Some(c) => format!("{c:.2}"),
                    None => "not measured".into(),
                },
                "",
            ),
            (
                "  cpu in it (cores)".into(),
                self.cold_start_cpu.clone().unwrap_or("not measured".into()),
                "",
            ),
            (
                "  stop (drain) before it".into(),
                match (self.stop_s, self.drained) {
                    (Some(s), Some(d)) => {
                        format!("{s:.2} s, {}", if d { "clean" } else { "NOT clean" })
                    }
                    _ => "not measured".into(),
                },
                "",
            ),
        ];
        rows.push((
            "429s (rate limits)".into(),
            self.rate_limited
                .map_or("not measured".into(), |n| n.to_string()),
            "0",
        ));
        rows.push((
            "one chat: all answered after".into(),
            f(self.rate_limit_one_chat_s, "s"),
            "",
        ));
        rows.push((
            "one bot: all answered after".into(),
            f(self.rate_limit_one_bot_s, "s"),
            "",
        ));
        for p in &self.rate_limit_phases {
            rows.push(("  rate-limit phase".into(), p.clone(), ""));
        }
        for (name, figures, cpu) in &self.phases {
            rows.push((format!("traffic: {name}"), figures.clone(), ""));
            rows.push(("  cpu (cores)".into(), cpu.clone(), ""));
        }
        if args.daemon == Mode::Inproc {
            rows.push((
                "note".into(),
                "inproc: RSS and threads are the bench process (daemon + sandbox + driver)".into(),
                "",
            ));
        }
        let mut out = format!(
            "botvisor bench: {} bots, {} active x {} chats, daemon {mode}, budget {}, \
             sslmode {}, {} cores\n",
            args.bots,
            args.active,
            args.chats,
            args.budget,
            args.sslmode,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
        for (name, value, target) in rows {
            out.push_str(&format!("{name:<28} {value:<34} {target}\n"));
        }
        out
    }
}

/// The bench's state that outlives an error, so cleanup always finds it.
#[derive(Default)]
struct Ctx {
    panel: Option<PanelDb>,
    daemon: Option<Running>,
    sandbox_stop: CancellationToken,
    sampler: Option<Sampler>,
}

impl Ctx {
    /// Stops the daemon, the sampler and the sandbox; drops every database.
    async fn cleanup(&mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        if let Some(d) = self.daemon.take()
            && let Err(e) = d.stop().await
        {
            result = Err(e);
        }
        if let Some(s) = self.sampler.take() {
            s.finish().await;
        }
        self.sandbox_stop.cancel();
        if let Some(p) = self.panel.take() {
            p.drop_all().await?;
        }
        result
    }
}

/// One bot of the run.
#[derive(Clone, Debug)]
struct Bot {
    id: i64,
    token: String,
}

/// A connection to the bench's panel database and the sandbox.
struct World {
    pool: PgPool,
    sandbox: SandboxHandle,
}

impl World {
    async fn add_bot(&self, name: &str, token: &str) -> anyhow::Result<i64> {
        let parsed = BotToken::parse(token).context("bench token")?;
        let keys = botvisor::crypto::Keyring::load(&daemon::key_file()?)?;
        Ok(store::add_bot(
            &self.pool,
            &keys,
            &NewBot {
                name,
                token: &parsed,
                enabled: true,
                database: None,
                manifest: &Manifest::default(),
            },
        )
        .await?)
    }

    fn say(&self, token: &str, chat: i64, text: &str) -> anyhow::Result<()> {
        self.sandbox.inject_message(InjectMessage {
            language_code: Some("en".into()),
            ..InjectMessage::private(token, chat, text)
        })?;
        Ok(())
    }

    /// Waits for the bot's next message in `chat` after `cursor`; returns its text and seq.
    async fn next_message(
        &self,
        token: &str,
        chat: i64,
        cursor: u64,
        timeout: Duration,
    ) -> anyhow::Result<Option<(String, u64)>> {
        let deadline = Instant::now() + timeout;
        let mut cursor = cursor;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let events = self.sandbox.wait_sent(token, chat, cursor, left).await?;
            for e in events {
                cursor = cursor.max(e.seq);
                if e.method == "sendMessage" {
                    return Ok(Some((e.text().unwrap_or_default().to_owned(), e.seq)));
                }
            }
        }
    }

    async fn running(&self) -> anyhow::Result<usize> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM bot_status WHERE state = 'running'")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as usize)
    }

    /// Switches `bots` to polling as `bot set-mode ID polling` does, and waits until each one
    /// has called getUpdates since (the daemon restarts it and deletes its webhook first).
    async fn switch_to_polling(&self, bots: &[Bot]) -> anyhow::Result<()> {
        let stats = self.sandbox.stats();
        let before: Vec<u64> = bots
            .iter()
            .map(|b| stats.calls(&b.token, "getUpdates"))
            .collect();
        for b in bots {
            let audit = NewAudit {
                actor: "bench",
                action: "bot.set_mode",
                bot_id: Some(b.id),
                target: "",
                before: None,
                after: Some(json!({ "mode": "polling" })),
            };
            store::set_mode_audited(&self.pool, b.id, Some("polling"), &audit).await?;
        }
        let t0 = Instant::now();
        loop {
            let stats = self.sandbox.stats();
            let waiting = bots
                .iter()
                .zip(&before)
                .filter(|(b, n)| stats.calls(&b.token, "getUpdates") <= **n)
                .count();
            if waiting == 0 {
                eprintln!(
                    "bench: {} bots polling after {:.1} s",
                    bots.len(),
                    t0.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("{waiting} of {} bots not polling after 60 s", bots.len());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every one of `tokens` called `method` since `before` (sandbox counters),
    /// polling every 10 ms; fails when `d` exits or at `deadline`.
    async fn wait_called(
        &self,
        tokens: &[&str],
        method: &str,
        before: &botvisor::sandbox::Stats,
        d: &mut Running,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        loop {
            let now = self.sandbox.stats();
            let waiting = tokens
                .iter()
                .filter(|t| now.calls(t, method) <= before.calls(t, method))
                .count();
            if waiting == 0 {
                return Ok(());
            }
            d.check_alive()?;
            if Instant::now() > deadline {
                bail!("{waiting} bots had not called {method} by the deadline");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `n` bots report `running`; returns the time it took.
    async fn wait_running(
        &self,
        n: usize,
        daemon: &mut Running,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        loop {
            let running = self.running().await?;
            if running >= n {
                return Ok(t0.elapsed());
            }
            daemon.check_alive()?;
            if t0.elapsed() > limit {
                bail!("only {running} of {n} bots running after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = match Args::parse().resolved() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    botvisor::telemetry::init(&botvisor::settings::LogSettings {
        // Dropping hundreds of databases trips sqlx's slow-statement warning; it is expected.
        filter: "warn,sqlx=error".into(),
        format: botvisor::settings::LogFormat::Text,
    });
    if args.metrics_scrape {
        let (table, json) = scrape::run(args.bots);
        print!("{table}");
        println!("{json}");
        return std::process::ExitCode::SUCCESS;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let mut ctx = Ctx::default();
        let outcome = tokio::select! {
            r = run(&args, &mut ctx) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        // The daemon is stopped before the figures are printed (dropping a thousand databases
        // takes a while, the figures need not wait for it).
        let stopped = match ctx.daemon.take() {
            Some(d) => d.stop().await.map(drop),
            None => Ok(()),
        };
        let mut code = std::process::ExitCode::SUCCESS;
        match outcome {
            Ok(figures) => {
                print!("{}", figures.table(&args));
                println!("{}", figures.json());
            }
            Err(e) => {
                eprintln!("bench: {e:#}");
                code = std::process::ExitCode::FAILURE;
            }
        }
        if let Err(e) = stopped.and(ctx.cleanup().await) {
            eprintln!("bench: cleanup: {e:#}");
            code = std::process::ExitCode::FAILURE;
        }
        code
    })
}

/// Polls the daemon's `/metrics` until `botvisor_bots_dormant` reaches 99 % of `bots` (or
/// `limit` passes: an error); returns it. Not all: a dormant bot still wakes for its hourly
/// prune (`bot_database.prune_every_secs`, spread over the hour by bot id) and stays awake
/// `--idle-after` seconds, so a few of many bots are awake at any moment.
async fn wait_dormant(url: &str, bots: u64, limit: Duration) -> anyhow::Result<u64> {
    let enough = bots - bots / 100;
    let deadline = Instant::now() + limit;
    let client = reqwest::Client::new();
    let mut last = 0;
    loop {
        let text = client
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        last = text
            .lines()
            .find_map(|l| l.strip_prefix("botvisor_bots_dormant "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(last, |v| v as u64);
        if last >= enough {
            return Ok(last);
        }
        if Instant::now() >= deadline {
            bail!("only {last} of {bots} bots fell asleep within {limit:?} (waiting for {enough})");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs every phase; `ctx` keeps what cleanup needs.
async fn run(args: &Args, ctx: &mut Ctx) -> anyhow::Result<Figures> {
    let mut fig = Figures::default();
    let server = Server {
        url: args.pg.trim_end_matches('/').to_owned(),
        sslmode: args.sslmode.clone(),
    };
    let panel = ctx.panel.insert(PanelDb::create(&server).await?);
    let panel_name = panel.name.clone();
    let panel_url = panel.url();
    let pattern = panel.bot_pattern();
    let bot_pattern = pattern.clone();
    eprintln!("bench: panel database {panel_name}");

    if args.baseline {
        eprintln!(
            "bench: baseline, {} connections, {} s",
            args.budget,
            args.baseline_secs()
        );
        let b = pg::baseline(&server, &panel_name, args.budget, args.baseline_secs()).await?;
        fig.baseline_inserts_per_s = Some(b.inserts_per_s);
        fig.baseline_pg_cpu_us_per_insert = b.cpu.pg_us_per(b.inserts);
        fig.baseline_cpu = Some(b.cpu.describe());
    }

    let sandbox = Sandbox::bind(SandboxConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        accept_any_token: false,
        enforce_rate_limits: args.rate_limits,
    })
    .await?;
    let api_url = sandbox.api_url().to_string();
    let handle = sandbox.handle();
    Tasks::new(ctx.sandbox_stop.clone()).spawn("sandbox", sandbox.run(ctx.sandbox_stop.clone()));
    let world = World {
        pool: sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(server.options(&panel_name)?)
            .await?,
        sandbox: handle,
    };
    let mut bots: Vec<Bot> = (0..u64::from(args.bots))
        .map(|i| Bot {
            id: 0,
            token: token(BOT_BASE + i),
        })
        .collect();
    for b in &bots {
        world.sandbox.register_bot(&b.token, None)?;
    }
    if args.instances > 0 {
        for (i, b) in bots.iter_mut().enumerate() {
            b.id = world.add_bot(&format!("bench{i}"), &b.token).await?;
        }
        let env = daemon::environment(&panel_url, &api_url, args.budget);
        fig.instances = Some(instances::run(&world, &bots, &env, args.instances, ctx).await?);
        return Ok(fig);
    }
    ctx.sampler = Some(Sampler::start(&server, pattern).await?);

    // Phase 2: 0 bots, then N idle bots (a stock host gets them all at once).
    let env = if args.daemon == Mode::Stock {
        stock::start(ctx, &world, &bots, &api_url).await?;
        HashMap::new()
    } else {
        let urls = (panel_name.as_str(), panel_url.as_str(), api_url.as_str());
        idle_fleet(args, ctx, &world, &mut bots, urls, &mut fig).await?
    };
    let pid = ctx.daemon.as_ref().expect("daemon").pid();
    if let Some(secs) = pg::checkpoint(&server).await? {
        eprintln!("bench: checkpoint after provisioning, {secs:.1} s");
    }
    // The fixed cost of the running fleet: CPU with every bot running and nothing sent.
    let idle_window = Duration::from_secs(if args.smoke { 1 } else { 5 });
    let before = cpu::Snapshot::take(pid, &panel_name);
    tokio::time::sleep(idle_window).await;
    fig.idle_cpu = Some(before.usage(
        &cpu::Snapshot::take(pid, &panel_name),
        idle_window.as_secs_f64(),
    ));

    // Phase 3: traffic at the rate asked for (the maximum by default), then at half of it,
    // then over four times as many bots.
    let load = Load {
        args,
        world: &world,
        daemon_pid: pid,
        panel: &panel_name,
        server: &server,
        bot_pattern: &bot_pattern,
    };
    let active = &bots[..args.active as usize];
    let main = load.traffic(active, args.chats, args.rate).await?;
    fig.updates_per_s = Some(main.updates_per_s);
    fig.limits_ceiling_per_s = Some(main.ceiling);
    fig.pg_cpu_us_per_update = main.cpu.pg_us_per(main.replies);
    fig.daemon_cpu_us_per_update = main.cpu.daemon_us_per(main.replies);
    let half = if args.half && args.rate == 0.0 {
        Some(
            load.traffic(active, args.chats, main.updates_per_s / 2.0)
                .await?,
        )
    } else {
        None
    };
    let overload = if args.overload {
        let many = &bots[..args.overload_bots() as usize];
        Some(load.traffic(many, args.overload_chats(), 0.0).await?)
    } else {
        None
    };
    fig.overload_updates_per_s = overload.as_ref().map(|p| p.updates_per_s);
    let polling = if args.compare_polling {
        world.switch_to_polling(active).await?;
        let p = load.traffic(active, args.chats, 0.0).await?;
        fig.polling_updates_per_s = Some(p.updates_per_s);
        Some(p)
    } else {
        None
    };
    let measured = half.as_ref().unwrap_or(&main);
    fig.p50_ms = percentile(&measured.latencies_ms, 50.0);
    fig.p95_ms = percentile(&measured.latencies_ms, 95.0);
    fig.p99_ms = percentile(&measured.latencies_ms, 99.0);
    fig.latency_at_half = half.is_some();
    fig.phases = [
        ("first", Some(&main)),
        ("half", half.as_ref()),
        ("overload", overload.as_ref()),
        ("polling", polling.as_ref()),
    ]
    .into_iter()
    .filter_map(|(name, p)| p.map(|p| (name.to_owned(), p.describe(), p.cpu.describe())))
    .collect();
    ctx.daemon.as_mut().expect("daemon").check_alive()?;

    // Phase 4: Telegram's limits enforced by the sandbox: one chat flooded, one bot streaming.
    if args.rate_limits {
        let (n, secs) = args.one_chat();
        let (chats, per_s, stream_secs) = args.one_bot();
        let one_chat = limits_phase(&world, &bots[0].token, &[LIMITS_CHAT], n, secs);
        let stream_chats: Vec<i64> = (1..=i64::from(chats)).map(|c| LIMITS_CHAT + c).collect();
        let total = (per_s * stream_secs).round() as u32;
        let one_bot = limits_phase(&world, &bots[1].token, &stream_chats, total, stream_secs);
        eprintln!(
            "bench: rate limits: {n} messages into one chat in {secs} s; {total} over {chats} \
             chats of one bot at {per_s}/s"
        );
        let (a, b) = tokio::join!(one_chat, one_bot);
        let (a, b) = (a?, b?);
        fig.rate_limit_one_chat_s = Some(a.answered_s);
        fig.rate_limit_one_bot_s = Some(b.answered_s);
        fig.rate_limit_phases = vec![
            format!("one chat: {n} in {secs} s, {}", a.describe()),
            format!(
                "one bot: {total} over {chats} chats at {per_s}/s, {}",
                b.describe()
            ),
        ];
        ctx.daemon.as_mut().expect("daemon").check_alive()?;
    }

    // Phase 5: reload.
    let mut reloads = Vec::new();
    let probe = &bots[0];
    let mut chat = RELOAD_CHAT;
    for i in 0..args.reloads {
        let text = format!("v{i}");
        store::set_text(&world.pool, probe.id, "start", "en", &text).await?;
        let t0 = Instant::now();
        loop {
            chat += 1;
            world.say(&probe.token, chat, "/start")?;
            let (got, _) = world
                .next_message(&probe.token, chat, 0, REPLY_TIMEOUT)
                .await?
                .context("no reply during the reload phase")?;
            if got == text {
                reloads.push(ms(t0.elapsed()));
                break;
            }
            if t0.elapsed() > REPLY_TIMEOUT {
                bail!("the text change {text:?} was not used within {REPLY_TIMEOUT:?}");
            }
        }
    }
    let reloads = sorted(reloads);
    fig.reload_p50_ms = percentile(&reloads, 50.0);
    fig.reload_p95_ms = percentile(&reloads, 95.0);

    // Phase 6: add → answer.
    let mut adds = Vec::new();
    let mut all_tokens: Vec<String> = bots.iter().map(|b| b.token.clone()).collect();
    for j in 0..u64::from(args.add) {
        let t = token(ADDED_BASE + j);
        world.sandbox.register_bot(&t, None)?;
        world.add_bot(&format!("added{j}"), &t).await?;
        let t0 = Instant::now();
        world.say(&t, PROBE_CHAT, "/start")?;
        world
            .next_message(&t, PROBE_CHAT, 0, REPLY_TIMEOUT)
            .await?
            .with_context(|| format!("added bot {j} did not answer within {REPLY_TIMEOUT:?}"))?;
        adds.push(ms(t0.elapsed()));
        all_tokens.push(t);
    }
    let adds = sorted(adds);
    fig.add_to_answer_p50_ms = percentile(&adds, 50.0);
    fig.add_to_answer_p95_ms = percentile(&adds, 95.0);
    fig.add_to_answer_max_ms = adds.last().copied();

    // Phase 7: cold start.
    if !args.no_cold_start {
        let d = ctx.daemon.take().expect("daemon");
        let t0 = Instant::now();
        fig.drained = Some(d.stop().await?);
        fig.stop_s = Some(t0.elapsed().as_secs_f64());
        let before = world.sandbox.stats();
        let panel = ctx.panel.as_ref().expect("panel database");
        let sessions_before = panel.bot_sessions(false).await?;
        let t0 = Instant::now();
        let d = ctx.daemon.insert(Running::start(args.daemon, &env).await?);
        let cpu_before = cpu::Snapshot::take(d.pid(), &panel.name);
        let limit = Duration::from_secs(120 + all_tokens.len() as u64 / 4);
        // A polling bot is back once it polls; a webhook bot once it set its webhook.
        let intake = if args.webhook {
            "setWebhook"
        } else {
            "getUpdates"
        };
        let tokens: Vec<&str> = all_tokens.iter().map(String::as_str).collect();
        world
            .wait_called(&tokens, intake, &before, d, t0 + limit)
            .await
            .context("cold start")?;
        fig.cold_start_s = Some(t0.elapsed().as_secs_f64());
        fig.cold_start_cpu = Some(
            cpu_before
                .usage(
                    &cpu::Snapshot::take(d.pid(), &panel.name),
                    t0.elapsed().as_secs_f64(),
                )
                .describe(),
        );
        fig.cold_start_bots = all_tokens.len();
        // Every bot polls: a few of them get a message at once (their checks, if still queued,
        // go ahead), while the rest of the checks go on; then until every bot runs again.
        let probes: Vec<&String> = all_tokens
            .iter()
            .step_by((all_tokens.len() / COLD_PROBES).max(1))
            .take(COLD_PROBES)
            .collect();
        let asked = Instant::now();
        for t in &probes {
            world.say(t, COLD_PROBE_CHAT, "/start")?;
        }
        let answers = futures::future::try_join_all(probes.iter().map(|t| async {
            world
                .next_message(t, COLD_PROBE_CHAT, 0, REPLY_TIMEOUT)
                .await?
                .context("a bot did not answer its first message after the cold start")?;
            anyhow::Ok(ms(asked.elapsed()))
        }));
        let running = async {
            while world.running().await? < all_tokens.len() {
                if t0.elapsed() > limit {
                    bail!("cold start: not every bot running after {limit:?}");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(t0.elapsed().as_secs_f64())
        };
        let (answers, running) = tokio::try_join!(answers, running)?;
        let answers = sorted(answers);
        fig.cold_start_answer_p50_ms = percentile(&answers, 50.0);
        fig.cold_start_answer_max_ms = answers.last().copied();
        fig.cold_start_running_s = Some(running);
        let sessions = panel.bot_sessions(true).await? - sessions_before;
        fig.cold_start_connects_per_bot = Some(sessions as f64 / all_tokens.len() as f64);
    }

    if args.rate_limits {
        let stats = world.sandbox.stats();
        fig.rate_limited = Some(stats.bots.values().map(|b| b.rate_limited).sum());
    }
    let (peak, samples) = ctx.sampler.take().expect("sampler").finish().await;
    fig.pg_connections_peak = Some(peak);
    fig.pg_samples = samples;
    world.pool.close().await;
    Ok(fig)
}

/// Phase 2 with `botvisor`: the daemon with 0 bots, then `bots` registered in its panel until
/// every one runs; the idle footprint goes to `fig`. Returns the daemon's environment.
async fn idle_fleet(
    args: &Args,
    ctx: &mut Ctx,
    world: &World,
    bots: &mut [Bot],
    (panel_name, panel_url, api_url): (&str, &str, &str),
    fig: &mut Figures,
) -> anyhow::Result<HashMap<String, String>> {
    let mut env = daemon::environment(panel_url, api_url, args.budget);
    let mut metrics_url = None;
    if args.webhook {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let listen = format!("127.0.0.1:{port}");
        env.insert(
            "BOTVISOR__HTTP__PUBLIC_URL".into(),
            format!("http://{listen}"),
        );
        metrics_url = Some(format!("http://{listen}/metrics"));
        env.insert("BOTVISOR__HTTP__LISTEN".into(), listen);
        env.insert("BOTVISOR__TELEGRAM__DEFAULT_MODE".into(), "webhook".into());
        if let Some(secs) = args.idle_after {
            env.insert(
                "BOTVISOR__TELEGRAM__WEBHOOK_IDLE_AFTER_SECS".into(),
                secs.to_string(),
            );
        }
        eprintln!("bench: webhook mode");
    }
    let d = ctx.daemon.insert(Running::start(args.daemon, &env).await?);
    wait_panel_connected(&world.pool, panel_name, d).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let zero = daemon::proc_status(d.pid());
    let t0 = Instant::now();
    for (i, b) in bots.iter_mut().enumerate() {
        b.id = world.add_bot(&format!("bench{i}"), &b.token).await?;
    }
    // Provisioning a new bot (CREATE DATABASE, migrations) runs at 5-20 a second here.
    let limit = Duration::from_secs(120 + u64::from(args.bots) / 2);
    world.wait_running(bots.len(), d, limit).await?;
    fig.provision_s = Some(t0.elapsed().as_secs_f64());
    eprintln!(
        "bench: {} bots running after {:.1} s",
        bots.len(),
        t0.elapsed().as_secs_f64()
    );
    if let (Some(secs), Some(url)) = (args.idle_after.filter(|&s| s > 0), &metrics_url) {
        let limit = Duration::from_secs(secs * 2 + 60 + u64::from(args.bots) / 10);
        let t = Instant::now();
        let asleep = wait_dormant(url, bots.len() as u64, limit).await?;
        fig.bots_dormant = Some(asleep);
        eprintln!(
            "bench: {asleep} bots asleep after {:.1} s more",
            t.elapsed().as_secs_f64()
        );
        // The allocator gives freed pages back over its decay time (jemalloc: 10 s): measure
        // once the RSS stopped falling (five readings a second apart within 1 %, 12 s on at
        // the earliest), at most 40 s on.
        let t = Instant::now();
        let mut readings: Vec<u64> = Vec::new();
        while t.elapsed() < Duration::from_secs(40) {
            if let Some((rss, _)) = daemon::proc_status(d.pid()) {
                readings.push(rss);
            }
            if let [.., a, _, _, _, e] = readings[..]
                && e as f64 >= a as f64 * 0.99
                && t.elapsed() >= Duration::from_secs(12)
            {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        eprintln!(
            "bench: RSS settled after {:.1} s: {readings:?} KiB",
            t.elapsed().as_secs_f64()
        );
    }
    // Idle: let the provisioning connections time out of nothing; just settle briefly.
    tokio::time::sleep(Duration::from_secs(if args.smoke { 1 } else { 3 })).await;
    let full = daemon::proc_status(d.pid());
    if let (Some((rss0, th0)), Some((rss_n, th_n))) = (zero, full) {
        fig.rss_kib = Some((rss0, rss_n));
        fig.rss_idle_kib_per_bot = Some((rss_n as f64 - rss0 as f64) / bots.len() as f64);
        fig.threads_at_zero = Some(th0);
        fig.threads = Some(th_n);
    }
    Ok(env)
}

/// Waits until the daemon holds a connection to the panel (it LISTENs before its first pass).
async fn wait_panel_connected(
    pool: &PgPool,
    panel: &str,
    daemon: &mut Running,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = 'botvisor-panel'",
        )
        .bind(panel)
        .fetch_one(pool)
        .await?;
        if n > 0 {
            return Ok(());
        }
        daemon.check_alive()?;
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("the daemon did not connect to the panel within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What one chat measured.
#[derive(Default)]
struct ChatResult {
    latencies_ms: Vec<f64>,
    replies_in_window: u64,
    lost: u64,
}

/// What one traffic phase measured.
struct Phase {
    /// Offered rate (open loop), or `None` for the closed loop.
    offered: Option<f64>,
    /// Bots and chats per bot.
    shape: (usize, u32),
    /// The most Telegram's limits and the chats' pacing let through, per second.
    ceiling: f64,
    updates_per_s: f64,
    /// Latencies in milliseconds, sorted.
    latencies_ms: Vec<f64>,
    /// Replies received in the window.
    replies: u64,
    lost: u64,
    cpu: cpu::Usage,
    /// Sessions opened on the bot databases in the window (`pg_stat_database.sessions`; a
    /// live backend's count may lag up to 10 s).
    connections_opened: Option<i64>,
}

impl Phase {
    fn describe(&self) -> String {
        let p = |q| percentile(&self.latencies_ms, q).unwrap_or(f64::NAN);
        format!(
            "{} bots x {} chats, {:.1} /s ({}; limits allow {:.0} /s), p50 {:.1} / p95 {:.1} / \
             p99 {:.1} ms, {} replies, {} lost; pg {} us, daemon {} us per update; {} \
             connections opened",
            self.shape.0,
            self.shape.1,
            self.updates_per_s,
            self.offered
                .map_or("closed loop".into(), |r| format!("{r:.1} /s offered")),
            self.ceiling,
            p(50.0),
            p(95.0),
            p(99.0),
            self.replies,
            self.lost,
            self.cpu
                .pg_us_per(self.replies)
                .map_or("-".into(), |v| format!("{v:.0}")),
            self.cpu
                .daemon_us_per(self.replies)
                .map_or("-".into(), |v| format!("{v:.0}")),
            self.connections_opened.map_or("-".into(), |n| format!(
                "{n} ({:.1}/s)",
                n as f64 / self.cpu.wall.max(f64::EPSILON)
            )),
        )
    }
}

/// The most replies per second Telegram's limits let through to `bots` bots with `chats`
/// chats each, when every chat sends at most once per `gap`.
fn ceiling(bots: usize, chats: u32, gap: Duration) -> f64 {
    let per_bot = (f64::from(chats) / gap.as_secs_f64()).min(1.0 / BOT_PERIOD.as_secs_f64());
    per_bot * bots as f64
}

/// What the traffic phases share.
struct Load<'a> {
    args: &'a Args,
    world: &'a World,
    daemon_pid: u32,
    /// The panel database's name (the CPU split's "ours").
    panel: &'a str,
    /// The server, and the pattern of the bot databases' names (connections opened).
    server: &'a Server,
    bot_pattern: &'a str,
}

impl Load<'_> {
    /// Phase 3: `/start` from `chats` chats of each of `bots`; latency injection → reply
    /// recorded. `rate` 0 is the closed loop (each chat paced to one message per
    /// [`CHAT_GAP`]). Chats are interleaved across bots (chat 1 of every bot, then chat 2 …),
    /// so each bot's share of the load is spread evenly over time, as its limit requires.
    async fn traffic(&self, bots: &[Bot], chats: u32, rate: f64) -> anyhow::Result<Phase> {
        let args = self.args;
        let all: Vec<(String, i64)> = (1..=i64::from(chats))
            .flat_map(|c| bots.iter().map(move |b| (b.token.clone(), c)))
            .collect();
        let n = all.len();
        let start = Instant::now();
        let window_start = start + Duration::from_secs_f64(args.warmup());
        let window_end = window_start + Duration::from_secs_f64(args.duration);
        let period = (rate > 0.0).then(|| Duration::from_secs_f64(n as f64 / rate));
        let limit = ceiling(bots.len(), chats, period.unwrap_or(CHAT_GAP).max(CHAT_GAP));
        if let Some(p) = period
            && p < PRIVATE_PERIOD
        {
            eprintln!(
                "bench: warning: each chat sends every {p:?}, faster than Telegram lets a bot \
                 answer it ({PRIVATE_PERIOD:?}): latencies will measure the limits"
            );
        }
        eprintln!(
            "bench: traffic on {} bots x {chats} chats for {:.1} s (+{:.1} s warm-up), {}",
            bots.len(),
            args.duration,
            args.warmup(),
            if rate > 0.0 {
                format!("{rate:.1} updates/s offered")
            } else {
                "closed loop".into()
            }
        );
        let spawner = Tasks::new(CancellationToken::new());
        let (daemon_pid, panel) = (self.daemon_pid, self.panel.to_owned());
        let (server, pattern) = (self.server.clone(), self.bot_pattern.to_owned());
        let cpu_probe = spawner.spawn("cpu-probe", async move {
            tokio::time::sleep_until(window_start.into()).await;
            let a = cpu::Snapshot::take(daemon_pid, &panel);
            let s0 = pg::sessions(&server, &pattern).await.ok();
            tokio::time::sleep_until(window_end.into()).await;
            let b = cpu::Snapshot::take(daemon_pid, &panel);
            let s1 = pg::sessions(&server, &pattern).await.ok();
            let opened = s0.zip(s1).map(|(a, b)| b - a);
            (
                a.usage(&b, (window_end - window_start).as_secs_f64()),
                opened,
            )
        });
        let mut tasks = Vec::with_capacity(n);
        for (i, (token, chat)) in all.into_iter().enumerate() {
            let sandbox = self.world.sandbox.clone();
            let share = i as f64 / n as f64;
            tasks.push(spawner.spawn("chat", async move {
                match period {
                    Some(p) => {
                        open_chat(
                            &sandbox,
                            &token,
                            chat,
                            p,
                            p.mul_f64(share),
                            window_start,
                            window_end,
                        )
                        .await
                    }
                    None => {
                        let first = start + CHAT_GAP.mul_f64(share);
                        closed_chat(&sandbox, &token, chat, first, window_start, window_end).await
                    }
                }
            }));
        }
        let mut latencies = Vec::new();
        let mut replies = 0;
        let mut lost = 0;
        for t in tasks {
            let r = t.await??;
            latencies.extend(r.latencies_ms);
            replies += r.replies_in_window;
            lost += r.lost;
        }
        if lost > 0 {
            bail!("{lost} messages were not answered within {REPLY_TIMEOUT:?}");
        }
        let (cpu, connections_opened) = cpu_probe.await?;
        Ok(Phase {
            offered: (rate > 0.0).then_some(rate),
            shape: (bots.len(), chats),
            ceiling: limit,
            updates_per_s: replies as f64 / args.duration,
            latencies_ms: sorted(latencies),
            replies,
            lost,
            cpu,
            connections_opened,
        })
    }
}

/// What a rate-limit phase measured.
struct LimitsPhase {
    /// Seconds from the first message to the last reply.
    answered_s: f64,
    /// 429s the sandbox gave this bot during the phase.
    rate_limited: u64,
}

impl LimitsPhase {
    fn describe(&self) -> String {
        format!(
            "all answered after {:.2} s, {} x 429",
            self.answered_s, self.rate_limited
        )
    }
}

/// Phase 4: `total` messages to `token`, spread evenly over `secs` and round-robin over
/// `chats`; waits until every one was answered.
async fn limits_phase(
    world: &World,
    token: &str,
    chats: &[i64],
    total: u32,
    secs: f64,
) -> anyhow::Result<LimitsPhase> {
    let before = world.sandbox.stats().rate_limited(token);
    let step = Duration::from_secs_f64(secs / f64::from(total.max(1)));
    let t0 = Instant::now();
    // Per chat: messages sent, replies seen, and the cursor after the last reply seen.
    let mut owed: std::collections::HashMap<i64, (u64, u64, u64)> =
        std::collections::HashMap::new();
    for k in 0..total {
        tokio::time::sleep_until((t0 + step * k).into()).await;
        let chat = chats[k as usize % chats.len()];
        world.say(token, chat, "/start")?;
        owed.entry(chat).or_default().0 += 1;
    }
    // Everything is answered by then unless the limits are broken: a chat gets one message per
    // period after its burst, the bot one per BOT_PERIOD.
    let worst = PRIVATE_PERIOD.mul_f64(f64::from(total)) + BOT_PERIOD * total;
    let deadline = t0 + Duration::from_secs_f64(secs) + worst + REPLY_TIMEOUT;
    loop {
        for (chat, (want, got, cursor)) in owed.iter_mut() {
            if *got < *want {
                let events = world.sandbox.sent(token, *chat, *cursor)?;
                *got += replies_in(&events, cursor) as u64;
            }
        }
        if owed.values().all(|(want, got, _)| got >= want) {
            break;
        }
        if Instant::now() > deadline {
            let missing: u64 = owed.values().map(|(w, g, _)| w.saturating_sub(*g)).sum();
            bail!("rate limits: {missing} of {total} messages not answered within {worst:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(LimitsPhase {
        answered_s: t0.elapsed().as_secs_f64(),
        rate_limited: world.sandbox.stats().rate_limited(token) - before,
    })
}

fn inject(sandbox: &SandboxHandle, token: &str, chat: i64) -> anyhow::Result<()> {
    sandbox.inject_message(InjectMessage {
        language_code: Some("en".into()),
        ..InjectMessage::private(token, chat, "/start")
    })?;
    Ok(())
}

/// Counts `replies` sendMessage events from `events`, advancing `cursor`.
fn replies_in(events: &[botvisor::sandbox::SentEvent], cursor: &mut u64) -> usize {
    let mut n = 0;
    for e in events {
        *cursor = (*cursor).max(e.seq);
        if e.method == "sendMessage" {
            n += 1;
        }
    }
    n
}

/// Closed loop: from `first` on, the next `/start` goes out as soon as the previous one was
/// answered, but no sooner than [`CHAT_GAP`] after it.
async fn closed_chat(
    sandbox: &SandboxHandle,
    token: &str,
    chat: i64,
    first: Instant,
    window_start: Instant,
    window_end: Instant,
) -> anyhow::Result<ChatResult> {
    let mut r = ChatResult::default();
    // Replies of an earlier phase in the same chat are not this phase's.
    let mut cursor = sandbox.sent(token, chat, 0)?.last().map_or(0, |e| e.seq);
    let mut next = first;
    loop {
        tokio::time::sleep_until(next.into()).await;
        if Instant::now() >= window_end {
            break;
        }
        let sent = Instant::now();
        next = sent + CHAT_GAP;
        inject(sandbox, token, chat)?;
        let mut got = 0;
        while got == 0 {
            let left = REPLY_TIMEOUT.saturating_sub(sent.elapsed());
            if left.is_zero() {
                r.lost += 1;
                return Ok(r);
            }
            let events = sandbox.wait_sent(token, chat, cursor, left).await?;
            got = replies_in(&events, &mut cursor);
        }
        let now = Instant::now();
        if sent >= window_start && now <= window_end {
            r.latencies_ms.push(ms(now - sent));
        }
        if now >= window_start && now <= window_end {
            r.replies_in_window += 1;
        }
    }
    Ok(r)
}

/// Open loop: a `/start` every `period` whatever the answers; replies matched in order.
async fn open_chat(
    sandbox: &SandboxHandle,
    token: &str,
    chat: i64,
    period: Duration,
    offset: Duration,
    window_start: Instant,
    window_end: Instant,
) -> anyhow::Result<ChatResult> {
    let mut r = ChatResult::default();
    // Replies of an earlier phase in the same chat are not this phase's.
    let mut cursor = sandbox.sent(token, chat, 0)?.last().map_or(0, |e| e.seq);
    let mut outstanding = std::collections::VecDeque::new();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    loop {
        let now = Instant::now();
        if now >= window_end && outstanding.is_empty() {
            return Ok(r);
        }
        if now >= window_end + REPLY_TIMEOUT {
            r.lost += outstanding.len() as u64;
            return Ok(r);
        }
        tokio::select! {
            _ = tick.tick(), if now < window_end => {
                inject(sandbox, token, chat)?;
                outstanding.push_back(Instant::now());
            }
            events = sandbox.wait_sent(token, chat, cursor, Duration::from_millis(500)) => {
                let n = replies_in(&events?, &mut cursor);
                let now = Instant::now();
                for _ in 0..n {
                    let Some(sent) = outstanding.pop_front() else { break };
                    if sent >= window_start && now <= window_end {
                        r.latencies_ms.push(ms(now - sent));
                    }
                    if now >= window_start && now <= window_end {
                        r.replies_in_window += 1;
                    }
                }
            }
        }
    }
}
