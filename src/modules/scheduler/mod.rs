//! The scheduler module: one-off and cron jobs per bot, persisted in the bot's database and
//! added or removed at runtime (`botvisor schedule …`, through `admin::schedules`).
//!
//! - **Exactly once per occurrence**: [`fire_due`] claims an occurrence by moving the job's
//!   `next_due` on (compare-and-set) and inserting its run (primary key `(job, due)`) in the
//!   same transaction as its effects (messages queued in the outbox's scheduled lane, or a
//!   broadcast created), so a crash, a restart or a second instance can neither lose nor
//!   repeat it.
//! - **Misfires**: an occurrence claimed more than [`MISFIRE_GRACE`] after its time (the bot
//!   was down) runs once marked `late` with how late (`run-once`) or is recorded `skipped`
//!   (`skip`); a cron job's next occurrence is computed from now, so downtime never causes a
//!   burst of missed occurrences.
//! - **No polling**: the job ([`job::run`]) sleeps until the earliest `next_due`, and is woken
//!   by `bot_wake '<id>:scheduler'` when an operator changes a job.
//! - **Time**: cron expressions by croner (5 fields, or 6 with seconds), in an IANA zone by
//!   chrono-tz; daylight-saving changes follow croner's documented rules. The time source is a
//!   [`Clock`], so tests drive it by hand.

mod job;
pub mod store;

use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use futures::future::BoxFuture;
use sqlx::PgConnection;
use teloxide::types::ChatId;

use super::broadcast::{self, Audience, render_for};
use super::{JobCx, Module, ModuleError, enqueue};
use crate::content::manifest::{Manifest, ManifestError};
use crate::content::snapshot::{Section, Snapshot};
use crate::telegram::{Lane, Request};
use store::ScheduleJob;

/// The module's name.
pub const NAME: &str = "scheduler";

/// How late an occurrence may be claimed and still count as on time; later, it is a misfire
/// (the bot was down): run once marked `late`, or `skipped`, as the job says.
pub const MISFIRE_GRACE: TimeDelta = TimeDelta::seconds(10);

/// Occurrences handled per pass (the rest in the next pass, at once).
const BATCH: i64 = 100;

/// The scheduler's time source.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The scheduler module.
#[derive(Clone)]
pub struct Scheduler {
    clock: Arc<dyn Clock>,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scheduler")
    }
}

impl Scheduler {
    /// A scheduler reading the time from `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self { clock }
    }
}

impl Module for Scheduler {
    fn name(&self) -> &'static str {
        NAME
    }

    fn load(&self, _manifest: &Manifest) -> Result<Option<Section>, ManifestError> {
        Ok(Some(Arc::new(())))
    }

    fn job(&self, cx: JobCx) -> Option<BoxFuture<'static, Result<(), ModuleError>>> {
        Some(Box::pin(job::run(cx, Arc::clone(&self.clock))))
    }
}

/// Parses a cron expression (5 fields, or 6 with seconds first); the error names the field
/// and its position (1-based character column) when one field is at fault.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let parser = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build();
    let error = match parser.parse(expr) {
        Ok(cron) => return Ok(cron),
        Err(e) => e.to_string(),
    };
    let fields: Vec<(usize, &str)> = expr
        .char_indices()
        .filter(|&(i, c)| {
            !c.is_whitespace() && (i == 0 || expr[..i].ends_with(char::is_whitespace))
        })
        .map(|(i, _)| {
            let rest = &expr[i..];
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            (i, &rest[..end])
        })
        .collect();
    let names: &[&str] = match fields.len() {
        5 => &["minute", "hour", "day of month", "month", "day of week"],
        6 => &[
            "second",
            "minute",
            "hour",
            "day of month",
            "month",
            "day of week",
        ],
        n => {
            return Err(format!(
                "invalid cron expression {expr:?}: {n} fields; use 5 (minute hour day-of-month month day-of-week) or 6 (with seconds first)"
            ));
        }
    };
    for (k, (at, field)) in fields.iter().enumerate() {
        let probe: Vec<&str> = (0..fields.len())
            .map(|j| if j == k { *field } else { "*" })
            .collect();
        if let Err(e) = parser.parse(&probe.join(" ")) {
            return Err(format!(
                "invalid cron expression {expr:?}: {} field {field:?} at position {}: {e}",
                names[k],
                at + 1
            ));
        }
    }
    Err(format!("invalid cron expression {expr:?}: {error}"))
}

/// Parses an IANA time zone name.
pub fn parse_zone(name: &str) -> Result<Tz, String> {
    Tz::from_str(name).map_err(|_| {
        format!("unknown time zone {name:?}: use an IANA name such as Europe/Berlin or UTC")
    })
}

/// The first occurrence of `cron` in `tz` strictly after `after`.
pub fn next_after(cron: &Cron, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&after.with_timezone(&tz), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// One occurrence [`fire_due`] claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    /// The job.
    pub job_id: i64,
    /// The occurrence's time.
    pub due_at: DateTime<Utc>,
    /// sent, broadcast, late, skipped or failed.
    pub outcome: String,
    /// How late it was claimed, in milliseconds.
    pub late_ms: i64,
}

/// What a pass of [`fire_due`] did.
#[derive(Debug, Clone, Default)]
pub struct Pass {
    /// The occurrences claimed, in due order.
    pub fired: Vec<Fired>,
    /// Whether it queued messages (wake the sender).
    pub queued: bool,
    /// Whether it started a broadcast (wake the broadcast job).
    pub broadcasts: bool,
}

/// Claims and runs every occurrence due at `now` (see the module docs); each in its own
/// transaction with its effects. `origin` names the module the requests come from.
pub async fn fire_due(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    snapshot: &Snapshot,
    origin: &str,
) -> Result<Pass, ModuleError> {
    let mut pass = Pass::default();
    for job in store::due(conn, now, BATCH).await? {
        let Some(due) = job.next_due else { continue };
        let late = (now - due).max(TimeDelta::zero());
        let next = match job.kind.as_str() {
            "cron" => {
                let cron = job.cron.as_deref().map(parse_cron);
                let tz = parse_zone(&job.tz).unwrap_or(Tz::UTC);
                match cron {
                    Some(Ok(cron)) => next_after(&cron, tz, due.max(now)),
                    _ => None,
                }
            }
            _ => None,
        };
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        if !store::advance(&mut tx, job.id, due, next).await? {
            continue;
        }
        let misfire = late > MISFIRE_GRACE;
        let (outcome, detail) = if misfire && job.misfire == "skip" {
            (
                "skipped",
                Some(format!("missed by {} s", late.num_seconds())),
            )
        } else {
            match act(&mut tx, &job, snapshot, origin).await? {
                Ok(Acted::Queued(n)) => {
                    pass.queued |= n > 0;
                    (
                        if misfire { "late" } else { "sent" },
                        Some(format!("{n} messages queued")),
                    )
                }
                Ok(Acted::Broadcast(id, n)) => {
                    pass.broadcasts = true;
                    (
                        if misfire { "late" } else { "broadcast" },
                        Some(format!("broadcast {id} to {n} users")),
                    )
                }
                Err(reason) => ("failed", Some(reason)),
            }
        };
        let late_ms = late.num_milliseconds();
        if !store::insert_run(&mut tx, job.id, due, outcome, late_ms, detail.as_deref()).await? {
            // Claimed already (another instance won the race): nothing of this commits.
            continue;
        }
        tx.commit().await?;
        pass.fired.push(Fired {
            job_id: job.id,
            due_at: due,
            outcome: outcome.into(),
            late_ms,
        });
    }
    Ok(pass)
}

/// What running an occurrence did.
enum Acted {
    /// Messages queued in the scheduled lane.
    Queued(usize),
    /// A broadcast started: (id, recipients).
    Broadcast(i64, i64),
}

/// Runs one occurrence's effect inside its claim's transaction; `Err` is a reason recorded as
/// the run's failure (the occurrence is not retried).
async fn act(
    tx: &mut PgConnection,
    job: &ScheduleJob,
    snapshot: &Snapshot,
    origin: &str,
) -> Result<Result<Acted, String>, ModuleError> {
    let admins = &snapshot.manifest.admins;
    let audience: Option<Audience> = match job.audience.as_deref().map(str::parse) {
        Some(Ok(a)) => Some(a),
        Some(Err(e)) => return Ok(Err(e)),
        None => None,
    };
    if job.broadcast {
        let audience = audience.unwrap_or(Audience::All);
        let audience_text = audience.to_string();
        let id = broadcast::store::create(
            tx,
            &broadcast::store::NewBroadcast {
                text: job.text.as_deref(),
                text_key: job.text_key.as_deref(),
                audience: &audience_text,
                created_by: "schedule",
                ..Default::default()
            },
        )
        .await?;
        let n = broadcast::store::freeze(tx, id, &audience, admins)
            .await?
            .unwrap_or(0);
        return Ok(Ok(Acted::Broadcast(id, n)));
    }
    let recipients = match (job.chat_id, &audience) {
        (Some(chat), _) => broadcast::store::member(tx, chat).await?,
        (None, Some(audience)) => broadcast::store::members(tx, audience, admins).await?,
        (None, None) => return Ok(Err("the job has neither a chat nor an audience".into())),
    };
    let mut queued = 0;
    for r in &recipients {
        let vars = broadcast::vars(r, snapshot);
        let lang = r.language_code.as_deref();
        let Some(text) = render_for(
            snapshot,
            job.text.as_deref(),
            job.text_key.as_deref(),
            lang,
            &vars,
        ) else {
            return Ok(Err(format!(
                "text {} has no value",
                job.text_key.as_deref().unwrap_or("-")
            )));
        };
        let request = Request::text_message(text);
        let user = (r.user_id > 0).then_some(r.user_id);
        enqueue(
            tx,
            origin,
            Lane::Scheduled,
            ChatId(r.user_id),
            user,
            &request,
        )
        .await?;
        queued += 1;
    }
    Ok(Ok(Acted::Queued(queued)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn cron_errors_name_the_field_and_its_position() {
        assert!(parse_cron("*/5 * * * *").is_ok());
        assert!(parse_cron("0 30 9 * * MON-FRI").is_ok());
        let e = parse_cron("0 25 * * *").unwrap_err();
        assert!(e.contains("hour field \"25\" at position 3"), "{e}");
        let e = parse_cron("0 9 * * MON x").unwrap_err();
        assert!(
            e.contains("day of week field \"x\" at position 13") || e.contains("at position"),
            "{e}"
        );
        let e = parse_cron("* *").unwrap_err();
        assert!(e.contains("2 fields"), "{e}");
        assert!(
            parse_zone("Mars/Olympus")
                .unwrap_err()
                .contains("unknown time zone")
        );
    }

    /// Daylight-saving changes, as croner documents them: a fixed time in the spring-forward
    /// gap runs at the first valid time after it, the same day; a fixed time in the fall-back
    /// overlap runs once; an interval job skips the gap.
    #[test]
    fn daylight_saving_follows_crons_rules() {
        let berlin = parse_zone("Europe/Berlin").unwrap();
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST.
        let daily_0230 = parse_cron("30 2 * * *").unwrap();
        let next = next_after(&daily_0230, berlin, utc("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(
            next,
            utc("2026-03-29T01:00:00Z"),
            "03:00 CEST, the first valid time"
        );
        let after = next_after(&daily_0230, berlin, next).unwrap();
        assert_eq!(
            after,
            utc("2026-03-30T00:30:00Z"),
            "02:30 CEST the next day"
        );
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice, runs once.
        let first = next_after(&daily_0230, berlin, utc("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(
            first,
            utc("2026-10-25T00:30:00Z"),
            "02:30 CEST, the first pass"
        );
        let second = next_after(&daily_0230, berlin, first).unwrap();
        assert_eq!(
            second,
            utc("2026-10-26T01:30:00Z"),
            "not again at 02:30 CET"
        );
        // Every 30 minutes: the gap's times do not exist, the overlap's happen twice.
        let half_hourly = parse_cron("*/30 * * * *").unwrap();
        let mut t = utc("2026-03-29T00:00:00Z");
        let mut spring = Vec::new();
        for _ in 0..4 {
            t = next_after(&half_hourly, berlin, t).unwrap();
            spring.push(t.with_timezone(&berlin).format("%H:%M %Z").to_string());
        }
        assert_eq!(
            spring,
            ["01:30 CET", "03:00 CEST", "03:30 CEST", "04:00 CEST"]
        );
        let mut t = utc("2026-10-24T23:45:00Z");
        let mut autumn = Vec::new();
        for _ in 0..4 {
            t = next_after(&half_hourly, berlin, t).unwrap();
            autumn.push(t.with_timezone(&berlin).format("%H:%M %Z").to_string());
        }
        assert_eq!(
            autumn,
            ["02:00 CEST", "02:30 CEST", "02:00 CET", "02:30 CET"]
        );
        // A zone without DST keeps the wall time.
        let tokyo = parse_zone("Asia/Tokyo").unwrap();
        let nine = parse_cron("0 9 * * *").unwrap();
        let t = next_after(&nine, tokyo, utc("2026-03-29T00:00:00Z")).unwrap();
        assert_eq!(t, tokyo.with_ymd_and_hms(2026, 3, 30, 9, 0, 0).unwrap());
    }
}
