//! The scheduler against real PostgreSQL: misfires and exactly-once claims with a controlled
//! clock (no waiting), and a job added at runtime reaching a chat through the daemon.

mod common;

use std::sync::Arc;

use botvisor::admin::Admin;
use botvisor::admin::broadcasts::Content;
use botvisor::admin::schedules::{JobRequest, Target, Timing};
use botvisor::content::snapshot::Snapshot;
use botvisor::modules::Registry;
use botvisor::modules::scheduler::{fire_due, store};
use chrono::{DateTime, TimeDelta, Utc};
use common::cli::CliPanel;
use common::eventually;
use common::harness::Harness;

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
    let runs = eventually(common::harness::DEADLINE, "the run recorded", || async {
        let runs = admin.job_runs(id, job.id).await.unwrap();
        (!runs.is_empty()).then_some(runs)
    })
    .await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].outcome, "sent");
    assert!(runs[0].late_ms < 1000, "due ± 1 s: {runs:?}");
    let jobs = admin.list_jobs(id).await.unwrap();
    assert_eq!(jobs[0].next_run_utc, None, "a one-off runs once");
}
