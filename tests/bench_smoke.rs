//! The benchmark's smoke mode, so `cargo run --release --bin bench` never rots
//! (docs/performance.md): every phase runs once at a tiny size against the local PostgreSQL,
//! and every figure of the JSON line — the machine-independent costs, the overload factor and
//! the rate-limit phases' figures included — is present and finite.

use std::process::Command;

/// Every key of the bench's JSON line (docs/performance.md).
const KEYS: &[&str] = &[
    "updates_per_s",
    "baseline_inserts_per_s",
    "ratio",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "rss_idle_kib_per_bot",
    "threads",
    "pg_connections_peak",
    "add_to_answer_p50_ms",
    "add_to_answer_p95_ms",
    "reload_p95_ms",
    "cold_start_s",
    "cold_start_connects_per_bot",
    "cold_start_running_s",
    "cold_start_answer_p50_ms",
    "cold_start_answer_max_ms",
    "pg_cpu_us_per_update",
    "baseline_pg_cpu_us_per_insert",
    "pg_cost_ratio",
    "daemon_cpu_us_per_update",
    "idle_daemon_cores",
    "idle_pg_cores",
    "overload_updates_per_s",
    "overload_factor",
    "rate_limited",
    "rate_limit_one_chat_s",
    "rate_limit_one_bot_s",
];

/// Runs the bench with `args`; its table (stdout), its JSON line and that line's text.
fn bench(args: &[&str]) -> (String, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(args)
        .output()
        .expect("run the bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let last = stdout
        .trim_end()
        .lines()
        .last()
        .expect("some output")
        .to_owned();
    let json: serde_json::Value = serde_json::from_str(&last)
        .unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"));
    (stdout, json, last)
}

fn smoke(mode: &str) {
    let (_, json, last) = bench(&["--smoke", "--daemon", mode]);
    let object = json.as_object().expect("a JSON object");
    for key in KEYS {
        let value = object
            .get(*key)
            .unwrap_or_else(|| panic!("key {key} missing: {last}"));
        assert!(
            value.is_number() || value.is_null(),
            "{key} is neither a number nor null: {last}"
        );
    }
    assert_eq!(object.len(), KEYS.len(), "unexpected keys: {last}");
    // The smoke run measures everything (--baseline, --half, --overload and --rate-limits
    // included), so nothing may be null, and every figure is a finite number.
    for key in KEYS {
        let value = object[*key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} not measured: {last}"));
        assert!(value.is_finite(), "{key} is not finite: {last}");
    }
}

#[test]
fn smoke_in_process() {
    smoke("inproc");
}

#[test]
fn smoke_with_the_serve_binary() {
    smoke("process");
}

/// `--daemon stock` measures the reference, a stock teloxide host with no database, by
/// the same traffic phases: they are measured, and everything that needs botvisor's panel or
/// databases is reported as not measured.
#[test]
fn smoke_with_the_stock_teloxide_host() {
    let (stdout, json, last) = bench(&["--smoke", "--daemon", "stock"]);
    for key in [
        "updates_per_s",
        "p50_ms",
        "p99_ms",
        "daemon_cpu_us_per_update",
        "idle_daemon_cores",
        "baseline_inserts_per_s",
    ] {
        let value = json[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} not measured: {last}"));
        assert!(value.is_finite() && value >= 0.0, "{key}: {last}");
    }
    assert!(json["updates_per_s"].as_f64() > Some(0.0), "{last}");
    for key in [
        "add_to_answer_p50_ms",
        "reload_p95_ms",
        "cold_start_s",
        "overload_factor",
        "rate_limited",
        "rss_idle_kib_per_bot",
    ] {
        assert!(
            json[key].is_null(),
            "{key} measured without botvisor: {last}"
        );
    }
    assert!(
        stdout.contains("stock teloxide host"),
        "the table names the host: {stdout}"
    );
}

/// `--metrics-scrape` renders botvisor's recorder with every per-bot series of the given bots
/// and reports the render's time and size; every series of every bot is in the text.
#[test]
fn metrics_scrape_mode_reports_time_and_size() {
    let (_, json, last) = bench(&["--metrics-scrape", "--bots", "50"]);
    assert_eq!(json["metrics_scrape_bots"], 50, "{last}");
    // 10 series per bot: received, processed, five send outcomes, two state series (the one
    // left and the current one), the outbox depth.
    let samples = json["metrics_scrape_samples"].as_u64().expect("samples");
    assert!(samples >= 50 * 10, "{last}");
    let bytes = json["metrics_scrape_bytes"].as_u64().expect("bytes");
    assert!(bytes > 0 && bytes < 1024 * 1024, "{last}");
    assert!(json["metrics_scrape_p50_ms"].as_f64().is_some(), "{last}");
}
