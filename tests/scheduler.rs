//! The scheduler against real PostgreSQL: misfires and exactly-once claims with a controlled
//! clock (no waiting), and a job added at runtime reaching a chat through the daemon.

mod common;

use std::sync::Arc;
use std::time::Duration;

use botvisor::admin::Admin;
use botvisor::admin::broadcasts::Content;
use botvisor::admin::schedules::{JobRequest, Target, Timing};
use botvisor::content::snapshot::Snapshot;
use botvisor::modules::Registry;
use botvisor::modules::scheduler::{fire_due, store};
use botvisor::runtime::outbox::RECORD_LINGER;
use botvisor::runtime::outbox::limits::BOT_PERIOD;
use chrono::{DateTime, TimeDelta, Utc};
use common::cli::CliPanel;
use common::eventually;
use common::harness::Harness;
use common::process::ServeSetup;

fn snapshot() -> Snapshot {
    let registry = Registry::standard();
    let manifest = registry.parse_manifest("{}").unwrap();
    registry
        .load(Snapshot::new((1, 0, None), "b".into(), manifest, []))
        .unwrap()
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn add(
    conn: &mut sqlx::PgConnection,
    kind: &str,
    cron: Option<&str>,
    due: DateTime<Utc>,
    misfire: &str,
) -> i64 {
    store::add(
        conn,
        &store::NewJob {
            kind,
            run_at: (kind == "once").then_some(due),
            cron,
            tz: "UTC",
            chat_id: Some(42),
            text: Some("tick"),
            misfire,
            next_due: Some(due),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

/// After two hours of downtime: a one-off with `run-once` runs once marked late (with how
/// late), one with `skip` is recorded skipped, and a per-minute cron job runs once and
/// continues from now — no burst of the 120 missed occurrences.
#[tokio::test]
async fn misfires_run_once_late_or_are_skipped_and_cron_never_bursts() {
    let panel = CliPanel::new("bvt_sched").await;
    let id = panel.add("s", 9201, &[]);
    let pool = panel.create_bot_database(id).await;
    let mut conn = pool.acquire().await.unwrap();
    let t0 = at("2030-01-01T10:00:00Z");
    let once = add(&mut conn, "once", None, t0, "run-once").await;
    let skip = add(&mut conn, "once", None, t0, "skip").await;
    let cron = add(&mut conn, "cron", Some("* * * * *"), t0, "run-once").await;
    let s = snapshot();

    // On time (within the grace): each runs once, nothing is late.
    let pass = fire_due(&mut conn, t0, &s, "scheduler").await.unwrap();
    assert_eq!(pass.fired.len(), 3);
    assert!(
        pass.fired
            .iter()
            .all(|f| f.late_ms == 0 && f.outcome == "sent")
    );
    let next: Option<DateTime<Utc>> = store::get(&mut conn, cron).await.unwrap().unwrap().next_due;
    assert_eq!(next, Some(at("2030-01-01T10:01:00Z")));
    // The same instant again: nothing more (each occurrence once).
    assert!(
        fire_due(&mut conn, t0, &s, "scheduler")
            .await
            .unwrap()
            .fired
            .is_empty()
    );

    // Two hours of downtime.
    let t1 = t0 + TimeDelta::hours(2);
    let later_once = add(
        &mut conn,
        "once",
        None,
        t0 + TimeDelta::minutes(5),
        "run-once",
    )
    .await;
    let later_skip = add(&mut conn, "once", None, t0 + TimeDelta::minutes(5), "skip").await;
    let pass = fire_due(&mut conn, t1, &s, "scheduler").await.unwrap();
    let outcome = |job: i64| {
        pass.fired
            .iter()
            .filter(|f| f.job_id == job)
            .map(|f| (f.outcome.clone(), f.late_ms))
            .collect::<Vec<_>>()
    };
    assert_eq!(outcome(later_once), [("late".to_owned(), 115 * 60 * 1000)]);
    assert_eq!(
        outcome(later_skip),
        [("skipped".to_owned(), 115 * 60 * 1000)]
    );
    assert_eq!(outcome(cron), [("late".to_owned(), 119 * 60 * 1000)]);
    assert!(outcome(once).is_empty() && outcome(skip).is_empty());
    let next = store::get(&mut conn, cron).await.unwrap().unwrap().next_due;
    assert_eq!(next, Some(at("2030-01-01T12:01:00Z")), "continues from now");
    let runs = store::runs(&mut conn, cron).await.unwrap();
    assert_eq!(runs.len(), 2);
    // Every message the runs queued is in the outbox's scheduled lane: 1+1+1 on time, 1 for
    // the late one-off, 1 for the late cron run; the skipped one queued nothing.
    let queued: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE lane = 1 AND origin = 'scheduler'")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(queued, 5);
    drop(conn);
    pool.close().await;
}

/// Two daemons (or a restarted one) claiming the same due occurrences at once: each runs
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_run_each_occurrence_exactly_once() {
    let panel = CliPanel::new("bvt_sched2").await;
    let id = panel.add("s", 9202, &[]);
    let pool = panel.create_bot_database(id).await;
    let t0 = at("2030-01-01T10:00:00Z");
    {
        let mut conn = pool.acquire().await.unwrap();
        for k in 0..50 {
            add(
                &mut conn,
                "once",
                None,
                t0 + TimeDelta::milliseconds(k * 10),
                "run-once",
            )
            .await;
        }
    }
    let claim = |pool: sqlx::PgPool| async move {
        let mut conn = pool.acquire().await.unwrap();
        let s = snapshot();
        let mut fired = 0;
        for _ in 0..5 {
            fired += fire_due(&mut conn, t0 + TimeDelta::seconds(1), &s, "scheduler")
                .await
                .unwrap()
                .fired
                .len();
        }
        fired
    };
    let (a, b, c) = tokio::join!(
        tokio::spawn(claim(pool.clone())),
        tokio::spawn(claim(pool.clone())),
        tokio::spawn(claim(pool.clone()))
    );
    assert_eq!(a.unwrap() + b.unwrap() + c.unwrap(), 50);
    let (runs, queued): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM schedule_runs), (SELECT count(*) FROM outbox)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((runs, queued), (50, 50));
    pool.close().await;
}

/// A job added while the bot runs wakes its scheduler at once and is sent on time, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_added_at_runtime_is_sent_on_time() {
    let h = Harness::start(&[]).await;
    let (id, t) = h.add_bot("sched", 9203).await;
    h.wait_state(id, "running").await;
    h.say(&t, 8001, "/start");
    h.reply(&t, 8001, 0, |_| true).await;
    let admin = Admin::new(h.pool.clone(), Arc::new(h.settings.clone()));
    let job = admin
        .add_job(
            id,
            &JobRequest {
                timing: Timing::In("2s"),
                tz: None,
                target: Target::Chat(8001),
                content: Content::Text("Reminder for {first_name}"),
                broadcast: false,
                misfire: None,
            },
        )
        .await
        .unwrap();
    h.reply(&t, 8001, 0, |x| x.starts_with("Reminder for"))
        .await;
    common::ran_once_on_time(&admin, id, job.id).await;
    let jobs = admin.list_jobs(id).await.unwrap();
    assert_eq!(jobs[0].next_run_utc, None, "a one-off runs once");
}

/// One observed scheduled message: its bot, chat, due time and when the sandbox had it.
struct Seen {
    due: DateTime<Utc>,
    at: Option<DateTime<Utc>>,
    copies: usize,
}

/// Watches the sandbox until every job's message arrived (or `deadline`): when each was
/// first seen, and how many copies came.
async fn watch(
    sb: &botvisor::sandbox::SandboxHandle,
    tokens: &[String],
    jobs: &mut [(usize, i64, String, Seen)],
    deadline: std::time::Duration,
) {
    let end = std::time::Instant::now() + deadline;
    loop {
        let now = Utc::now();
        let mut left = 0;
        for (bot, chat, text, seen) in jobs.iter_mut() {
            let copies = sb
                .sent(&tokens[*bot], *chat, 0)
                .unwrap()
                .iter()
                .filter(|e| e.text() == Some(text.as_str()))
                .count();
            if copies > 0 && seen.at.is_none() {
                seen.at = Some(now);
            }
            seen.copies = copies;
            if copies == 0 {
                left += 1;
            }
        }
        if left == 0 || std::time::Instant::now() >= end {
            return;
        }
        // Polling the in-process sandbox: this sets the figure's resolution (≈ 10 ms).
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Lateness of each job (first seen − due), sorted, in milliseconds.
fn lateness(jobs: &[(usize, i64, String, Seen)]) -> Vec<i64> {
    let mut late: Vec<i64> = jobs
        .iter()
        .map(|(_, _, _, s)| s.at.map_or(i64::MAX, |at| (at - s.due).num_milliseconds()))
        .collect();
    late.sort_unstable();
    late
}

fn pct(sorted: &[i64], p: usize) -> i64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// The scheduler's figure with `botvisor serve` as a real child process: one-off jobs due
/// within the same 10 s across many bots arrive within 1 s of their time, each exactly once
/// (one run per job, one message per job); then the same again with the daemon killed
/// (SIGKILL) in the middle of the window and restarted at once: every job still runs exactly
/// once, those due while it was down run late by the downtime. CI runs 5 bots × 10 jobs;
/// `BOTVISOR_MEASURE_SCHEDULER=20` gives the 20 bots × 10 = 200 jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_due_together_across_bots_fire_on_time_once_even_across_a_kill() {
    const PER_BOT: i64 = 10;
    let bots: usize = std::env::var("BOTVISOR_MEASURE_SCHEDULER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let setup = ServeSetup::new("bvt_sfig", true).await;
    let sb = &setup.sandbox;
    let mut ids = Vec::new();
    let mut tokens = Vec::new();
    for b in 0..bots {
        let (id, t) = setup.add_bot(&format!("clock{b}"), 9300 + b as u64).await;
        ids.push(id);
        tokens.push(t);
    }
    let serve = setup.start();
    // Each chat writes first (no answer to plain text), so the sandbox knows it.
    for t in &tokens {
        for chat in 1..=PER_BOT {
            sb.inject_message(botvisor::sandbox::InjectMessage::private(t, chat, "hi"))
                .unwrap();
        }
    }
    // One connection at a time to the bots' databases: the server's 100 are shared.
    let mut urls = Vec::new();
    for id in &ids {
        let url = setup.bot_url(*id);
        let db = eventually(common::harness::DEADLINE, "a bot's database", || async {
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .ok()
        })
        .await;
        eventually(common::harness::DEADLINE, "users registered", || async {
            let k: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
                .fetch_one(&db)
                .await
                .unwrap_or(0);
            (k == PER_BOT).then_some(())
        })
        .await;
        db.close().await;
        urls.push(url);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("botvisor.toml");
    std::fs::write(&file, "").unwrap();
    let settings = botvisor::settings::Settings::load(Some(&file), &setup.panel.env()).unwrap();
    let admin = Admin::new(setup.pool.clone(), Arc::new(settings));
    let total = bots * PER_BOT as usize;

    // Adds one job per (bot, chat), due spread evenly over the 10 s from `start`.
    let add_all = |phase: &'static str, start: DateTime<Utc>| {
        let admin = &admin;
        let ids = &ids;
        async move {
            let mut jobs = Vec::new();
            for k in 0..total {
                let (bot, chat) = (k % bots, (k / bots) as i64 + 1);
                let due = start + TimeDelta::milliseconds((k as i64 * 10_000) / total as i64);
                let text = format!("{phase} job {bot}-{chat}");
                let at = due.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                admin
                    .add_job(
                        ids[bot],
                        &JobRequest {
                            timing: Timing::At(&at),
                            tz: None,
                            target: Target::Chat(chat),
                            content: Content::Text(&text),
                            broadcast: false,
                            misfire: None,
                        },
                    )
                    .await
                    .unwrap();
                jobs.push((
                    bot,
                    chat,
                    text,
                    Seen {
                        due,
                        at: None,
                        copies: 0,
                    },
                ));
            }
            assert!(Utc::now() < start, "adding the jobs took past their time");
            jobs
        }
    };
    // Time to add every job before the first is due (each add opens the bot's database).
    let lead = TimeDelta::seconds(5) + TimeDelta::milliseconds(100) * total as i32;
    // Undisturbed: every job within 1 s of its time.
    let mut calm = add_all("calm", Utc::now() + lead).await;
    watch(sb, &tokens, &mut calm, Duration::from_secs(60)).await;
    let late = lateness(&calm);
    let calm_dups: usize = calm.iter().map(|j| j.3.copies.saturating_sub(1)).sum();
    eprintln!(
        "scheduler: {total} one-off jobs due within 10 s across {bots} bots: lateness p50 {} ms, \
         p99 {} ms, max {} ms; duplicates {calm_dups}",
        pct(&late, 50),
        pct(&late, 99),
        late[late.len() - 1]
    );
    assert!(late[late.len() - 1] <= 1000, "late beyond 1 s: {late:?}");
    assert_eq!(calm_dups, 0);

    // Killed in the middle of the window and restarted at once.
    let start = Utc::now() + lead;
    let mut crash = add_all("crash", start).await;
    let kill_at = start + TimeDelta::seconds(5);
    let crash_and_restart = async {
        tokio::time::sleep((kill_at - Utc::now()).to_std().unwrap_or_default()).await;
        serve.signal("KILL");
        serve.wait().await;
        let killed = Utc::now();
        (killed, setup.start())
    };
    let ((killed, restarted), ()) = tokio::join!(
        crash_and_restart,
        watch(sb, &tokens, &mut crash, Duration::from_secs(120))
    );
    let serve = restarted;
    let dups: usize = crash.iter().map(|j| j.3.copies.saturating_sub(1)).sum();
    let missing = crash.iter().filter(|j| j.3.copies == 0).count();
    // Each bot is back when its first message after the kill arrived (the bots of a restarted
    // daemon start one after another); a job due before that and not delivered before the
    // kill runs late by the time until its bot was back.
    let back: Vec<DateTime<Utc>> = (0..bots)
        .map(|b| {
            crash
                .iter()
                .filter(|j| j.0 == b)
                .filter_map(|j| j.3.at.filter(|at| *at > killed))
                .min()
                .unwrap_or(killed)
        })
        .collect();
    let down_ms = back
        .iter()
        .map(|b| (*b - killed).num_milliseconds())
        .max()
        .unwrap_or(0);
    let (mut up, mut down): (Vec<i64>, Vec<(i64, i64)>) = (Vec::new(), Vec::new());
    for (bot, _, _, s) in &crash {
        let l = s.at.map_or(i64::MAX, |at| (at - s.due).num_milliseconds());
        // Untouched by the kill: delivered before it, or due after its bot was back.
        if s.at.is_some_and(|at| at < killed) || s.due > back[*bot] {
            up.push(l)
        } else {
            down.push((l, (back[*bot] - s.due).num_milliseconds()))
        }
    }
    up.sort_unstable();
    eprintln!(
        "scheduler with a SIGKILL mid-window: {total} jobs, {missing} missing, {dups} duplicates; \
         every bot back within {down_ms} ms of the kill; untouched by the kill: p99 {} ms, max {} ms ({} jobs); \
         caught by it: max {} ms late ({} jobs)",
        if up.is_empty() { 0 } else { pct(&up, 99) },
        up.last().copied().unwrap_or(0),
        up.len(),
        down.iter().map(|d| d.0).max().unwrap_or(0),
        down.len()
    );
    assert_eq!(missing, 0);
    assert!(
        up.iter().all(|l| *l <= 1000),
        "untouched by the kill yet late beyond 1 s: {up:?}"
    );
    assert!(
        down.iter().all(|(late, wait)| *late <= wait + 1000),
        "late beyond its bot's downtime + 1 s: {down:?}"
    );
    // A message repeats only when the kill fell between its send and its mark: at most the
    // send in flight then and those whose results waited for their group (`RECORD_LINGER`),
    // per bot.
    let per_kill = 1 + RECORD_LINGER.div_duration_f64(BOT_PERIOD).ceil() as usize;
    assert!(dups <= bots * per_kill, "{dups} duplicates");
    // Exactly one run per job, across both phases and the kill.
    let mut runs = Vec::new();
    for url in &urls {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
            .await
            .unwrap();
        let per_job: Vec<i64> = sqlx::query_scalar(
            "SELECT count(r.job_id) FROM schedule_jobs j \
             LEFT JOIN schedule_runs r ON r.job_id = j.id GROUP BY j.id",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        runs.extend(per_job);
        sqlx::Connection::close(conn).await.ok();
    }
    assert_eq!(runs.len(), 2 * total);
    assert!(runs.iter().all(|n| *n == 1), "runs per job: {runs:?}");

    serve.signal("TERM");
    assert_eq!(serve.wait().await, Some(0), "log: {}", setup.log.display());
}
