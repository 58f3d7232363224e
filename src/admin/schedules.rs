//! Scheduled jobs: the operators' rules (times, zones, cron expressions, targets, content),
//! written to the bot's own database; the running bot's scheduler is woken through
//! `NOTIFY bot_wake, '<id>:scheduler'`.

use chrono::{DateTime, NaiveDateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use super::broadcasts::Content;
use super::{Admin, AdminError};
use crate::content::manifest::Manifest;
use crate::modules::broadcast::Audience;
use crate::modules::scheduler::store::{self, NewJob, RunRecord, ScheduleJob};
use crate::modules::scheduler::{NAME, next_after, parse_cron, parse_zone};

/// When a job runs.
#[derive(Debug, Clone, Copy)]
pub enum Timing<'a> {
    /// Once, at TIME (RFC 3339, or `YYYY-MM-DD HH:MM` in the job's zone).
    At(&'a str),
    /// Once, after DURATION (`90s`, `15m`, `2h`, `1d`, `1h30m`).
    In(&'a str),
    /// At every occurrence of a cron expression in the job's zone.
    Cron(&'a str),
}

/// Whom a job sends to.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// One chat.
    Chat(i64),
    /// An audience (`all`, `lang:CODE`, `active-days:N`, `admins`).
    Audience(&'a str),
    /// Nobody named: only with `broadcast` (then everyone).
    None,
}

/// A job an operator asks for.
#[derive(Debug, Clone, Copy)]
pub struct JobRequest<'a> {
    /// When.
    pub timing: Timing<'a>,
    /// The IANA zone times are read in (default UTC).
    pub tz: Option<&'a str>,
    /// Whom.
    pub target: Target<'a>,
    /// What.
    pub content: Content<'a>,
    /// Start a broadcast at each occurrence instead of sending directly.
    pub broadcast: bool,
    /// `run-once` (default) or `skip`.
    pub misfire: Option<&'a str>,
}

/// A job as every interface shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobView {
    /// Its id.
    pub id: i64,
    /// once or cron.
    pub kind: String,
    /// The cron expression, or the one-off's time in UTC.
    pub schedule: String,
    /// The zone.
    pub tz: String,
    /// `chat:ID`, `audience:…`, with `+broadcast` when it starts broadcasts.
    pub target: String,
    /// `text: …` or `text-key: KEY`.
    pub content: String,
    /// run-once or skip.
    pub misfire: String,
    /// Whether it is paused.
    pub paused: bool,
    /// Its next run in UTC (none: a one-off that ran).
    pub next_run_utc: Option<DateTime<Utc>>,
    /// Its next run in its zone.
    pub next_run_local: Option<String>,
}

impl JobView {
    fn new(j: ScheduleJob) -> Self {
        let tz = parse_zone(&j.tz).unwrap_or(Tz::UTC);
        let schedule = match (&j.cron, j.run_at) {
            (Some(c), _) => c.clone(),
            (None, Some(at)) => at.to_rfc3339(),
            _ => "-".into(),
        };
        let mut target = match (j.chat_id, &j.audience) {
            (Some(c), _) => format!("chat:{c}"),
            (None, Some(a)) => format!("audience:{a}"),
            (None, None) => "audience:all".into(),
        };
        if j.broadcast {
            target.push_str(" +broadcast");
        }
        let content = match (&j.text, &j.text_key) {
            (Some(t), _) => format!("text: {}", t.chars().take(40).collect::<String>()),
            (None, Some(k)) => format!("text-key: {k}"),
            _ => "-".into(),
        };
        Self {
            id: j.id,
            kind: j.kind,
            schedule,
            tz: j.tz,
            target,
            content,
            misfire: j.misfire,
            paused: j.paused,
            next_run_utc: j.next_due,
            next_run_local: j.next_due.map(|t| {
                t.with_timezone(&tz)
                    .format("%Y-%m-%d %H:%M:%S %Z")
                    .to_string()
            }),
        }
    }
}

/// Reads TIME: RFC 3339, or `YYYY-MM-DD HH:MM` (or `…:SS`) in `tz`; it must lie after `now`.
pub fn parse_time(text: &str, tz: Tz, now: DateTime<Utc>) -> Result<DateTime<Utc>, AdminError> {
    let at = match DateTime::parse_from_rfc3339(text.trim()) {
        Ok(t) => t.with_timezone(&Utc),
        Err(_) => {
            let naive = NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M")
                .or_else(|_| NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M:%S"))
                .map_err(|_| {
                    AdminError::Invalid(format!(
                        "invalid time {text:?}: use RFC 3339 (2030-01-31T09:00:00+01:00) or \"YYYY-MM-DD HH:MM\" in --tz"
                    ))
                })?;
            tz.from_local_datetime(&naive)
                .earliest()
                .ok_or_else(|| {
                    AdminError::Invalid(format!(
                        "time {text:?} does not exist in {tz} (a daylight-saving gap)"
                    ))
                })?
                .with_timezone(&Utc)
        }
    };
    if at <= now {
        return Err(AdminError::Invalid(format!(
            "time {text:?} is in the past ({} UTC now)",
            now.format("%Y-%m-%d %H:%M:%S")
        )));
    }
    Ok(at)
}

/// Reads a duration such as `90s`, `15m`, `2h`, `1d` or `1h30m` (at least one second).
pub fn parse_duration(text: &str) -> Result<TimeDelta, AdminError> {
    let bad = || {
        AdminError::Invalid(format!(
            "invalid duration {text:?}: use a number with s, m, h or d, e.g. 90s, 15m, 1h30m"
        ))
    };
    let mut total = TimeDelta::zero();
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        let part = match c {
            's' => TimeDelta::try_seconds(n),
            'm' => TimeDelta::try_minutes(n),
            'h' => TimeDelta::try_hours(n),
            'd' => TimeDelta::try_days(n),
            _ => None,
        }
        .ok_or_else(bad)?;
        total = total.checked_add(&part).ok_or_else(bad)?;
    }
    if !digits.is_empty() || total < TimeDelta::seconds(1) {
        return Err(bad());
    }
    Ok(total)
}

impl Admin {
    /// Adds a scheduled job to bot `id`; returns it.
    pub async fn add_job(&self, id: i64, req: &JobRequest<'_>) -> Result<JobView, AdminError> {
        let tz_name = req.tz.unwrap_or("UTC");
        let tz = parse_zone(tz_name).map_err(AdminError::Invalid)?;
        let misfire = req.misfire.unwrap_or("run-once");
        if !matches!(misfire, "run-once" | "skip") {
            return Err(AdminError::Invalid(format!(
                "invalid --misfire {misfire:?}: use run-once or skip"
            )));
        }
        let now = Utc::now();
        let (kind, run_at, cron, next_due) = match req.timing {
            Timing::At(text) => {
                let at = parse_time(text, tz, now)?;
                ("once", Some(at), None, Some(at))
            }
            Timing::In(text) => {
                let at = now + parse_duration(text)?;
                ("once", Some(at), None, Some(at))
            }
            Timing::Cron(expr) => {
                let parsed = parse_cron(expr).map_err(AdminError::Invalid)?;
                let next = next_after(&parsed, tz, now).ok_or_else(|| {
                    AdminError::Invalid(format!("cron expression {expr:?} never occurs"))
                })?;
                ("cron", None, Some(expr.trim()), Some(next))
            }
        };
        let audience = match req.target {
            Target::Audience(a) => Some(a.parse::<Audience>().map_err(AdminError::Invalid)?),
            Target::Chat(_) if req.broadcast => {
                return Err(AdminError::Invalid(
                    "--broadcast goes to an audience, not to one --chat".into(),
                ));
            }
            Target::Chat(_) => None,
            Target::None if req.broadcast => Some(Audience::All),
            Target::None => {
                return Err(AdminError::Invalid(
                    "say whom to send to: --chat CHAT_ID or --audience …".into(),
                ));
            }
        };
        self.check_content(id, req.content).await?;
        let (mut conn, bot) = self.bot_conn(id).await?;
        let manifest = Manifest::from_value(&bot.manifest.0)?;
        let result = async {
            if let Some(a) = &audience {
                Self::audience_size(&mut conn, id, a, &manifest).await?;
            }
            let (text, text_key) = match req.content {
                Content::Text(t) => (Some(t), None),
                Content::TextKey(k) => (None, Some(k)),
            };
            let audience_text = audience.as_ref().map(ToString::to_string);
            let job = NewJob {
                kind,
                run_at,
                cron,
                tz: tz.name(),
                chat_id: match req.target {
                    Target::Chat(c) => Some(c),
                    _ => None,
                },
                audience: audience_text.as_deref(),
                text,
                text_key,
                broadcast: req.broadcast,
                misfire,
                next_due,
            };
            let job_id = store::add(&mut conn, &job).await?;
            Ok::<_, AdminError>(store::get(&mut conn, job_id).await?)
        }
        .await;
        conn.close().await;
        let job = JobView::new(result?.ok_or(AdminError::Invalid("the job vanished".into()))?);
        self.wake(id, NAME).await?;
        self.audit(
            "schedule.add",
            Some(id),
            &format!("job {}", job.id),
            None,
            serde_json::to_value(&job).ok(),
        )
        .await?;
        Ok(job)
    }

    /// Every job of bot `id`.
    pub async fn list_jobs(&self, id: i64) -> Result<Vec<JobView>, AdminError> {
        let (mut conn, _) = self.bot_conn(id).await?;
        let jobs = store::list(&mut conn).await;
        conn.close().await;
        Ok(jobs?.into_iter().map(JobView::new).collect())
    }

    /// Removes a job (and its runs).
    pub async fn remove_job(&self, id: i64, job: i64) -> Result<(), AdminError> {
        let (mut conn, _) = self.bot_conn(id).await?;
        let removed = store::remove(&mut conn, job).await;
        conn.close().await;
        if !removed? {
            return Err(not_found(id, job));
        }
        self.wake(id, NAME).await?;
        self.audit(
            "schedule.remove",
            Some(id),
            &format!("job {job}"),
            None,
            None,
        )
        .await
    }

    /// One job of bot `id`.
    pub async fn get_job(&self, id: i64, job: i64) -> Result<JobView, AdminError> {
        let (mut conn, _) = self.bot_conn(id).await?;
        let found = store::get(&mut conn, job).await;
        conn.close().await;
        found?.map(JobView::new).ok_or_else(|| not_found(id, job))
    }

    /// Pauses (`true`) or resumes a job; a resumed cron job continues from its next
    /// occurrence after now (no burst of the ones missed while paused).
    pub async fn pause_job(&self, id: i64, job: i64, paused: bool) -> Result<(), AdminError> {
        let (mut conn, _) = self.bot_conn(id).await?;
        let result = async {
            let Some(j) = store::get(&mut conn, job).await? else {
                return Ok(false);
            };
            let next = match (paused, &j.cron) {
                (false, Some(expr)) => parse_cron(expr)
                    .ok()
                    .and_then(|c| next_after(&c, parse_zone(&j.tz).unwrap_or(Tz::UTC), Utc::now())),
                _ => None,
            };
            store::set_paused(&mut conn, job, paused, next).await
        }
        .await;
        conn.close().await;
        if !result? {
            return Err(not_found(id, job));
        }
        self.wake(id, NAME).await?;
        let action = if paused {
            "schedule.pause"
        } else {
            "schedule.resume"
        };
        self.audit(
            action,
            Some(id),
            &format!("job {job}"),
            Some(serde_json::Value::from(!paused)),
            Some(serde_json::Value::from(paused)),
        )
        .await
    }

    /// A job's runs: due, started, outcome.
    pub async fn job_runs(&self, id: i64, job: i64) -> Result<Vec<RunRecord>, AdminError> {
        let (mut conn, _) = self.bot_conn(id).await?;
        let result = async {
            if store::get(&mut conn, job).await?.is_none() {
                return Ok(None);
            }
            Ok::<_, sqlx::Error>(Some(store::runs(&mut conn, job).await?))
        }
        .await;
        conn.close().await;
        result?.ok_or_else(|| not_found(id, job))
    }
}

fn not_found(id: i64, job: i64) -> AdminError {
    AdminError::NotFound {
        id,
        what: "job",
        item: job,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_are_read_as_operators_write_them() {
        let now = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
        let berlin = parse_zone("Europe/Berlin").unwrap();
        let t = parse_time("2030-06-01 09:00", berlin, now).unwrap();
        assert_eq!(t, Utc.with_ymd_and_hms(2030, 6, 1, 7, 0, 0).unwrap());
        let t = parse_time("2030-06-01T09:00:00+02:00", Tz::UTC, now).unwrap();
        assert_eq!(t, Utc.with_ymd_and_hms(2030, 6, 1, 7, 0, 0).unwrap());
        let e = parse_time("2029-12-31 23:00", Tz::UTC, now).unwrap_err();
        assert!(e.to_string().contains("in the past"), "{e}");
        let e = parse_time("2030-03-31 02:30", berlin, now).unwrap_err();
        assert!(e.to_string().contains("daylight-saving gap"), "{e}");
        assert!(parse_time("tomorrow", Tz::UTC, now).is_err());
        assert_eq!(parse_duration("90s").unwrap(), TimeDelta::seconds(90));
        assert_eq!(parse_duration("1h30m").unwrap(), TimeDelta::minutes(90));
        assert_eq!(parse_duration("2d").unwrap(), TimeDelta::days(2));
        for bad in ["", "5", "5x", "0s", "m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
