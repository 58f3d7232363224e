//! Prometheus metrics of `botvisor serve`, scraped from `/metrics` of a real process with bots
//! talking to the sandbox: the exposition text is parsed and the counters must have moved by
//! exactly what happened (docs/operations.md, "Metrics").

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use botvisor::content::manifest::Manifest;
use botvisor::panel::store::{self, NewBot};
use botvisor::sandbox::{Fault, InjectMessage, SandboxHandle};
use botvisor::token::BotToken;
use common::process::ServeProcess;
use common::{TestDb, eventually, free_address, token};

/// One sample of the exposition: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed scrape: the samples, and the `# TYPE` of each metric family.
#[derive(Debug, Default)]
struct Scrape {
    samples: Vec<Sample>,
    types: BTreeMap<String, String>,
}

/// Parses the Prometheus text exposition format (version 0.0.4) as far as botvisor writes it:
/// `# HELP` / `# TYPE` lines, and samples with optional labels (values without escapes).
/// Panics on anything else, so a malformed exposition fails the test.
fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            scrape.types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment line: {line}");
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                let mut labels = BTreeMap::new();
                for pair in body.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or_else(|| panic!("unquoted label value in {line}"));
                    labels.insert(k.to_owned(), v.to_owned());
                }
                (name.to_owned(), labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        scrape.samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    // Every sample belongs to a family with a # TYPE line.
    for s in &scrape.samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                s.name
                    .strip_suffix(suffix)
                    .filter(|f| scrape.types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(&s.name);
        assert!(
            scrape.types.contains_key(family),
            "no # TYPE for {}",
            s.name
        );
    }
    scrape
}

impl Scrape {
    /// The value of the one sample `name` whose labels include `labels`; None if absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(
            found.len() <= 1,
            "{name} {labels:?} is ambiguous: {found:?}"
        );
        found.first().map(|s| s.value)
    }

    /// The sum of every sample `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Whether any series carries `bot_id`.
    fn has_bot(&self, bot_id: i64) -> bool {
        let id = bot_id.to_string();
        self.samples
            .iter()
            .any(|s| s.labels.get("bot_id") == Some(&id))
    }

    /// Checks a histogram: buckets ascend in `le` and never decrease, `+Inf` equals `_count`;
    /// returns the count.
    fn histogram(&self, name: &str) -> f64 {
        assert_eq!(
            self.types.get(name).map(String::as_str),
            Some("histogram"),
            "{name} is a histogram"
        );
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|s| s.name == format!("{name}_bucket"))
            .map(|s| {
                let le = &s.labels["le"];
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                (le, s.value)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.len() >= 2, "{name} has buckets");
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name} buckets are cumulative: {buckets:?}"
        );
        let count = self.value(&format!("{name}_count"), &[]).expect("_count");
        let inf = buckets.last().unwrap();
        assert!(inf.0.is_infinite(), "{name} has a +Inf bucket");
        assert_eq!(inf.1, count, "{name}: +Inf bucket = _count");
        let sum = self.value(&format!("{name}_sum"), &[]).expect("_sum");
        assert!(sum >= 0.0, "{name}_sum");
        count
    }
}

async fn scrape(client: &reqwest::Client, addr: &str) -> Option<Scrape> {
    let response = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    Some(parse(&response.text().await.ok()?))
}

/// Sends `/start` in `chat` and waits for the bot's answer there.
async fn ask(sb: &SandboxHandle, bot_token: &str, chat: i64) {
    let before = sb.sent(bot_token, chat, 0).unwrap().len();
    sb.inject_message(InjectMessage::private(bot_token, chat, "/start"))
        .unwrap();
    eventually(Duration::from_secs(30), "the bot answers", || async {
        (sb.sent(bot_token, chat, 0).unwrap().len() > before).then_some(())
    })
    .await;
}

async fn add_bot(pool: &sqlx::PgPool, panel: &TestDb, name: &str, t: &str) -> i64 {
    store::add_bot(
        pool,
        &panel.keys(),
        &NewBot {
            name,
            token: &BotToken::parse(t).unwrap(),
            enabled: true,
            database: None,
            manifest: &Manifest::default(),
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_what_happened_and_a_removed_bots_series_leave() {
    let panel = TestDb::create("bvt_metrics").await;
    botvisor::schema::apply(&botvisor::schema::PANEL, &panel.url.parse().unwrap())
        .await
        .unwrap();
    let (sb, api_url, stop_sandbox) = common::harness::start_sandbox().await;
    let (ta, tb) = (token(8101), token(8102));
    sb.register_bot(&ta, None).unwrap();
    sb.register_bot(&tb, None).unwrap();
    let pool = panel.pool().await;
    let a = add_bot(&pool, &panel, "counted", &ta).await;
    let b = add_bot(&pool, &panel, "removed", &tb).await;

    let addr = free_address();
    let mut env = panel.env();
    env.insert("BOTVISOR_TELEGRAM_API_URL".into(), api_url);
    env.insert("BOTVISOR__TELEGRAM__POLL_TIMEOUT_SECS".into(), "1".into());
    env.insert("BOTVISOR__HTTP__LISTEN".into(), addr.clone());
    env.insert("BOTVISOR__METRICS__IDLE_TIMEOUT_SECS".into(), "10".into());
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("serve.log");
    let serve = ServeProcess::start(&env, Some(&log));
    let client = reqwest::Client::new();
    let (sa, sb_id) = (a.to_string(), b.to_string());

    // Both bots running, as their state series and the bots-by-state gauge say.
    eventually(Duration::from_secs(60), "both bots running", || async {
        let m = scrape(&client, &addr).await?;
        let running = |id: &str| {
            m.value(
                "botvisor_bot_state",
                &[("bot_id", id), ("state", "running")],
            )
        };
        (running(&sa) == Some(1.0)
            && running(&sb_id) == Some(1.0)
            && m.value("botvisor_bots", &[("state", "running")]) == Some(2.0))
        .then_some(())
    })
    .await;

    // N messages to bot A, each answered once.
    const N: i64 = 5;
    for chat in 1..=N {
        ask(&sb, &ta, chat).await;
    }
    // One more while Telegram answers the reply's first attempt with a 429: it is counted, the
    // reply is sent after retry_after all the same.
    sb.add_fault(Fault {
        token: Some(ta.clone()),
        method: Some("sendMessage".into()),
        status: 429,
        retry_after: Some(1),
        count: Some(1),
        ..Fault::default()
    })
    .unwrap();
    ask(&sb, &ta, N + 1).await;
    // An update that cannot be parsed: stored (received), kept as poisoned, not processed.
    sb.inject_raw(&ta, r#"{"update_id": 5000, "message": "not an object"}"#)
        .unwrap();
    // One message to bot B, so it has counters too.
    ask(&sb, &tb, 1).await;
    let sent_a: i64 = (1..=N + 1)
        .map(|chat| sb.sent(&ta, chat, 0).unwrap().len() as i64)
        .sum();

    let m = eventually(Duration::from_secs(30), "the counters settle", || async {
        let m = scrape(&client, &addr).await?;
        let c = |name: &str| m.value(name, &[("bot_id", &sa)]);
        (c("botvisor_updates_received_total") == Some((N + 2) as f64)
            && c("botvisor_updates_processed_total") == Some((N + 1) as f64)
            && c("botvisor_updates_poisoned_total") == Some(1.0))
        .then_some(m)
    })
    .await;
    let on_a = |name: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![("bot_id", sa.as_str())];
        labels.extend_from_slice(extra);
        m.value(name, &labels)
    };
    assert_eq!(
        on_a("botvisor_sends_total", &[("outcome", "sent")]),
        Some(sent_a as f64),
        "every reply the sandbox recorded counted once as sent"
    );
    assert_eq!(on_a("botvisor_telegram_429_total", &[]), Some(1.0));
    assert_eq!(on_a("botvisor_sends_total", &[("outcome", "failed")]), None);
    assert_eq!(
        m.value("botvisor_updates_received_total", &[("bot_id", &sb_id)]),
        Some(1.0)
    );

    // Histograms are global (no bot label), consistent, and counted what happened: every send
    // attempt (the 429 included) took a send call; every reply of A and B was timed from its
    // update.
    for s in &m.samples {
        if s.name.ends_with("_seconds_bucket")
            || s.name.ends_with("_seconds_count")
            || s.name.ends_with("_seconds_sum")
        {
            assert!(!s.labels.contains_key("bot_id"), "{s:?}");
        }
    }
    let attempts = m.sum("botvisor_sends_total", &[]) + m.sum("botvisor_telegram_429_total", &[]);
    assert_eq!(m.histogram("botvisor_send_seconds"), attempts);
    let replies = m.sum("botvisor_sends_total", &[("outcome", "sent")]);
    assert_eq!(m.histogram("botvisor_update_reply_seconds"), replies);
    assert!(m.histogram("botvisor_db_acquire_seconds") >= (N + 1) as f64);
    assert!(m.histogram("botvisor_reconcile_seconds") >= 1.0);
    assert_eq!(m.value("botvisor_instances", &[]), Some(1.0));
    let budget = m
        .value("botvisor_db_connection_budget", &[])
        .expect("budget");
    let open = m.value("botvisor_db_connections_open", &[]).expect("open");
    assert!(budget >= 1.0 && open <= budget, "{open} of {budget}");
    assert!(on_a("botvisor_outbox_depth", &[]).is_some());

    // Bot B removed: all its series leave within the idle timeout (10 s here); A's state stays,
    // refreshed while A exists, although A is idle as long.
    store::remove_bot(&pool, b).await.unwrap();
    eventually(
        Duration::from_secs(60),
        "the removed bot's series are gone",
        || async {
            let m = scrape(&client, &addr).await?;
            (!m.has_bot(b)).then_some(m)
        },
    )
    .await;
    let m = scrape(&client, &addr).await.expect("scrape");
    assert_eq!(
        m.value(
            "botvisor_bot_state",
            &[("bot_id", &sa), ("state", "running")]
        ),
        Some(1.0),
        "a live bot's state series stays"
    );
    assert_eq!(m.value("botvisor_bots", &[("state", "running")]), Some(1.0));

    serve.signal("TERM");
    assert_eq!(serve.wait().await, Some(0));
    stop_sandbox.cancel();
}

#[test]
fn the_parser_reads_what_prometheus_reads() {
    let text = "# HELP x_total Things.\n# TYPE x_total counter\nx_total{bot_id=\"1\",outcome=\"sent\"} 3\n\
                # TYPE h_seconds histogram\nh_seconds_bucket{le=\"0.1\"} 1\nh_seconds_bucket{le=\"+Inf\"} 2\n\
                h_seconds_sum 0.3\nh_seconds_count 2\n# TYPE g gauge\ng 1.5\n";
    let m = parse(text);
    assert_eq!(m.value("x_total", &[("bot_id", "1")]), Some(3.0));
    assert_eq!(m.value("g", &[]), Some(1.5));
    assert_eq!(m.histogram("h_seconds"), 2.0);
    assert!(m.has_bot(1) && !m.has_bot(2));
}
