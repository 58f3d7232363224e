//! `--metrics-scrape`: the cost of one `/metrics` scrape with many bots' series.
//!
//! Installs botvisor's own Prometheus recorder (the buckets, descriptions and idle timeout
//! `serve` uses) in this process and records, through the same functions the daemon calls,
//! every per-bot series a busy bot has — updates received, processed and poisoned, sends of
//! each outcome, 429s, its state (the current one and the one it left) and its outbox depth —
//! for `--bots` bots, plus samples in each global histogram. Then it renders the exposition
//! text [`RENDERS`] times, as `/metrics` does, and reports the time of a render (p50, max) and
//! the size of the text. The HTTP round trip is not included (one local request, well under a
//! millisecond next to the render). Beside the wall time it reports the CPU time of the
//! rendering thread (`/proc/thread-self/schedstat`), which a loaded machine does not inflate:
//! on a quiet machine the wall time of a render is its CPU time.

use std::time::{Duration, Instant};

use botvisor::telemetry::metrics::{self, PoisonedAt, SendOutcome};
use serde_json::{Value, json};

/// Renders timed.
const RENDERS: usize = 30;

/// Records every series of `bots` bots, renders, and returns (table, JSON).
pub fn run(bots: u32) -> (String, Value) {
    let recorder = metrics::install(Duration::from_secs(3600));
    let filled = Instant::now();
    for id in 1..=i64::from(bots) {
        metrics::updates_received(id, 1_000 + id as u64);
        metrics::updates_processed(id, 1_000 + id as u64);
        metrics::send_attempt(id, SendOutcome::Sent);
        metrics::send_attempt(id, SendOutcome::Blocked);
        metrics::send_attempt(id, SendOutcome::ChatNotFound);
        metrics::send_attempt(id, SendOutcome::Failed);
        metrics::send_attempt(id, SendOutcome::Retry);
        metrics::bot_state(id, Some("starting"), Some("running"));
        metrics::outbox_depth(id, (id % 7) as usize);
        metrics::db_acquire_waited(Duration::from_micros(100 + id as u64));
        metrics::send_took(Duration::from_millis(20 + (id % 50) as u64));
        metrics::update_replied(Duration::from_millis(30 + (id % 90) as u64));
    }
    // The rarer events: logged as well as counted, so for a few bots only (a log line each).
    for id in (1..=i64::from(bots)).step_by(100) {
        metrics::update_poisoned(id, 1, PoisonedAt::Handler, "bench", None);
        metrics::rate_limited(id, "sendMessage", Duration::from_secs(1));
    }
    metrics::bots_by_state(&[("running", bots as usize)]);
    metrics::db_connections(32, 32);
    metrics::instances(1);
    metrics::reconcile_took(Duration::from_millis(12));
    let fill_ms = filled.elapsed().as_secs_f64() * 1000.0;
    let mut times = Vec::with_capacity(RENDERS);
    let mut cpu = Vec::with_capacity(RENDERS);
    let mut size = 0;
    let mut lines = 0;
    for _ in 0..RENDERS {
        let started = Instant::now();
        let cpu_before = thread_cpu_ns();
        let text = recorder.render();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        if let (Some(a), Some(b)) = (cpu_before, thread_cpu_ns()) {
            cpu.push(b.saturating_sub(a) as f64 / 1e6);
        }
        size = text.len();
        lines = text.lines().filter(|l| !l.starts_with('#')).count();
    }
    times.sort_by(f64::total_cmp);
    let p50 = times[times.len() / 2];
    let max = times[times.len() - 1];
    cpu.sort_by(f64::total_cmp);
    let cpu_p50 = cpu.get(cpu.len() / 2).copied();
    let cpu_max = cpu.last().copied();
    let table = format!(
        "metrics scrape: {bots} bots, {lines} samples, {size} bytes ({:.1} KiB); render p50 \
         {p50:.2} ms, max {max:.2} ms over {RENDERS} renders (target: <= 50 ms, < 1 MiB); CPU \
         per render p50 {} ms, max {} ms; recording took {fill_ms:.1} ms\n",
        size as f64 / 1024.0,
        cpu_p50.map_or("?".into(), |v| format!("{v:.2}")),
        cpu_max.map_or("?".into(), |v| format!("{v:.2}")),
    );
    let json = json!({
        "metrics_scrape_bots": bots,
        "metrics_scrape_samples": lines,
        "metrics_scrape_bytes": size,
        "metrics_scrape_p50_ms": (p50 * 100.0).round() / 100.0,
        "metrics_scrape_max_ms": (max * 100.0).round() / 100.0,
        "metrics_scrape_cpu_p50_ms": cpu_p50.map(|v| (v * 100.0).round() / 100.0),
        "metrics_scrape_cpu_max_ms": cpu_max.map(|v| (v * 100.0).round() / 100.0),
        "metrics_scrape_ok": max <= 50.0 && size < 1024 * 1024,
    });
    (table, json)
}

/// CPU time of the calling thread so far, in nanoseconds (the first field of
/// `/proc/thread-self/schedstat`); None where that file does not exist.
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}
