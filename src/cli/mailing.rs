//! `botvisor broadcast …` and `botvisor schedule …`: parse, call the service layer
//! ([`crate::admin::broadcasts`], [`crate::admin::schedules`]), print.

use std::io::Write;

use super::{BroadcastCommand, CliError, ContentArgs, ScheduleCommand};
use crate::admin::Admin;
use crate::admin::broadcasts::{BroadcastRequest, BroadcastView, Content};
use crate::admin::schedules::{JobRequest, Target, Timing};

fn content(args: &ContentArgs) -> Result<Content<'_>, CliError> {
    match (&args.text, &args.text_key) {
        (Some(text), None) => Ok(Content::Text(text)),
        (None, Some(key)) => Ok(Content::TextKey(key)),
        _ => Err(CliError::input("give exactly one of --text and --text-key")),
    }
}

fn json(out: &mut dyn Write, value: &impl serde::Serialize) -> Result<(), CliError> {
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    )?;
    Ok(())
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(|| "-".into(), |t| t.to_rfc3339())
}

pub(super) async fn broadcast(
    cmd: &BroadcastCommand,
    admin: &Admin,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match cmd {
        BroadcastCommand::Start {
            id,
            content: c,
            audience,
            at,
            buttons,
        } => {
            let buttons = buttons
                .as_deref()
                .map(|p| {
                    std::fs::read_to_string(p)
                        .map_err(|e| CliError::input(format!("cannot read {}: {e}", p.display())))
                })
                .transpose()?;
            let started = admin
                .start_broadcast(
                    *id,
                    &BroadcastRequest {
                        content: content(c)?,
                        audience,
                        at: at.as_deref(),
                        buttons: buttons.as_deref(),
                    },
                )
                .await?;
            writeln!(out, "{}", started.id)?;
        }
        BroadcastCommand::List { id, json: as_json } => {
            let all = admin.list_broadcasts(*id).await?;
            if *as_json {
                return json(out, &all);
            }
            writeln!(
                out,
                "{:<6} {:<10} {:<16} {:>7} {:>7} {:>7} {:>7} {:>7}  CONTENT",
                "ID", "STATE", "AUDIENCE", "TOTAL", "SENT", "FAILED", "BLOCKED", "PENDING"
            )?;
            for b in &all {
                writeln!(
                    out,
                    "{:<6} {:<10} {:<16} {:>7} {:>7} {:>7} {:>7} {:>7}  {}",
                    b.id,
                    b.state,
                    b.audience,
                    b.counts.total,
                    b.counts.sent,
                    b.counts.failed,
                    b.counts.blocked,
                    b.counts.pending,
                    b.content
                )?;
            }
            writeln!(out, "{} broadcasts", all.len())?;
        }
        BroadcastCommand::Status {
            id,
            bid,
            json: as_json,
        } => {
            let b = admin.broadcast_status(*id, *bid).await?;
            if *as_json {
                return json(out, &b);
            }
            write_status(&b, out)?;
        }
        BroadcastCommand::Pause { id, bid } => {
            admin.pause_broadcast(*id, *bid).await?;
            writeln!(out, "broadcast {bid} paused")?;
        }
        BroadcastCommand::Resume { id, bid } => {
            admin.resume_broadcast(*id, *bid).await?;
            writeln!(out, "broadcast {bid} resumed")?;
        }
        BroadcastCommand::Cancel { id, bid } => {
            admin.cancel_broadcast(*id, *bid).await?;
            writeln!(out, "broadcast {bid} cancelled")?;
        }
        BroadcastCommand::Report { id, bid, csv } => {
            let lines = admin.broadcast_report(*id, *bid).await?;
            let mut text = String::from("user_id,outcome,error,time\n");
            for l in &lines {
                let error = l.error.as_deref().unwrap_or("").replace('"', "\"\"");
                text.push_str(&format!(
                    "{},{},\"{error}\",{}\n",
                    l.user_id,
                    l.outcome,
                    l.time.map(|t| t.to_rfc3339()).unwrap_or_default()
                ));
            }
            match csv {
                Some(path) => {
                    std::fs::write(path, text).map_err(|e| {
                        CliError::failure(format!("cannot write {}: {e}", path.display()))
                    })?;
                    writeln!(
                        out,
                        "{} recipients written to {}",
                        lines.len(),
                        path.display()
                    )?;
                }
                None => write!(out, "{text}")?,
            }
        }
    }
    Ok(())
}

fn write_status(b: &BroadcastView, out: &mut dyn Write) -> Result<(), CliError> {
    writeln!(out, "id:          {}", b.id)?;
    writeln!(out, "state:       {}", b.state)?;
    writeln!(out, "audience:    {}", b.audience)?;
    writeln!(out, "content:     {}", b.content)?;
    writeln!(out, "total:       {}", b.counts.total)?;
    writeln!(out, "sent:        {}", b.counts.sent)?;
    writeln!(out, "failed:      {}", b.counts.failed)?;
    writeln!(out, "blocked:     {}", b.counts.blocked)?;
    writeln!(out, "pending:     {}", b.counts.pending)?;
    writeln!(out, "start_at:    {}", b.start_at.to_rfc3339())?;
    writeln!(out, "started_at:  {}", time(b.started_at))?;
    writeln!(out, "finished_at: {}", time(b.finished_at))?;
    writeln!(out, "rate:        {} msg/s", b.rate)?;
    writeln!(out, "resumed:     {}", b.resumed)?;
    Ok(())
}

pub(super) async fn schedule(
    cmd: &ScheduleCommand,
    admin: &Admin,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match cmd {
        ScheduleCommand::Add {
            id,
            at,
            in_,
            cron,
            tz,
            chat,
            audience,
            content: c,
            broadcast,
            misfire,
        } => {
            let timing = match (at, in_, cron) {
                (Some(t), None, None) => Timing::At(t),
                (None, Some(d), None) => Timing::In(d),
                (None, None, Some(e)) => Timing::Cron(e),
                _ => return Err(CliError::input("give exactly one of --at, --in and --cron")),
            };
            let target = match (chat, audience) {
                (Some(c), _) => Target::Chat(*c),
                (None, Some(a)) => Target::Audience(a),
                (None, None) => Target::None,
            };
            let job = admin
                .add_job(
                    *id,
                    &JobRequest {
                        timing,
                        tz: tz.as_deref(),
                        target,
                        content: content(c)?,
                        broadcast: *broadcast,
                        misfire: misfire.as_deref(),
                    },
                )
                .await?;
            writeln!(out, "{}", job.id)?;
        }
        ScheduleCommand::List { id, json: as_json } => {
            let jobs = admin.list_jobs(*id).await?;
            if *as_json {
                return json(out, &jobs);
            }
            writeln!(
                out,
                "{:<6} {:<5} {:<26} {:<16} {:<7} {:<26} {:<30} TARGET / CONTENT",
                "ID", "KIND", "SCHEDULE", "TZ", "PAUSED", "NEXT (UTC)", "NEXT (LOCAL)"
            )?;
            for j in &jobs {
                writeln!(
                    out,
                    "{:<6} {:<5} {:<26} {:<16} {:<7} {:<26} {:<30} {} / {}",
                    j.id,
                    j.kind,
                    j.schedule,
                    j.tz,
                    if j.paused { "yes" } else { "no" },
                    time(j.next_run_utc),
                    j.next_run_local.as_deref().unwrap_or("-"),
                    j.target,
                    j.content
                )?;
            }
            writeln!(out, "{} jobs", jobs.len())?;
        }
        ScheduleCommand::Remove { id, job } => {
            admin.remove_job(*id, *job).await?;
            writeln!(out, "job {job} removed")?;
        }
        ScheduleCommand::Pause { id, job } => {
            admin.pause_job(*id, *job, true).await?;
            writeln!(out, "job {job} paused")?;
        }
        ScheduleCommand::Resume { id, job } => {
            admin.pause_job(*id, *job, false).await?;
            writeln!(out, "job {job} resumed")?;
        }
        ScheduleCommand::Runs {
            id,
            job,
            json: as_json,
        } => {
            let runs = admin.job_runs(*id, *job).await?;
            if *as_json {
                return json(out, &runs);
            }
            writeln!(
                out,
                "{:<26} {:<26} {:<10} {:>9}  DETAIL",
                "DUE", "STARTED", "OUTCOME", "LATE_MS"
            )?;
            for r in &runs {
                writeln!(
                    out,
                    "{:<26} {:<26} {:<10} {:>9}  {}",
                    r.due_at.to_rfc3339(),
                    r.started_at.to_rfc3339(),
                    r.outcome,
                    r.late_ms,
                    r.detail.as_deref().unwrap_or("")
                )?;
            }
            writeln!(out, "{} runs", runs.len())?;
        }
    }
    Ok(())
}
