//! `botvisor migrate`: panel and bot migrations applied, inspected and linted.

use std::io::Write;

use serde_json::json;

use super::{CliError, MigrateAction};
use crate::botdb::BotDbTarget;
use crate::mask::error_line;
use crate::panel::{self, BotRecord, store};
use crate::schema::{self, MigrationState, MigrationStatus};
use crate::settings::Settings;

pub(super) fn lint(paths: &[std::path::PathBuf], out: &mut dyn Write) -> Result<(), CliError> {
    let findings =
        crate::schema::lint::run_lint(paths).map_err(|e| CliError::input(error_line(&e)))?;
    for f in &findings {
        writeln!(out, "{f}")?;
    }
    if findings.is_empty() {
        writeln!(out, "no findings")?;
        Ok(())
    } else {
        Err(CliError::failure(format!(
            "{} migration statement(s) would break the previous binary; see docs/migrations.md",
            findings.len()
        )))
    }
}

fn migration_error(e: schema::MigrationError) -> CliError {
    match e {
        schema::MigrationError::Connect { .. } => CliError::input(error_line(&e)),
        other => CliError::failure(error_line(&other)),
    }
}

/// Seals the bot tokens still in clear (the clear column is emptied, not dropped). Needs the
/// master key only when there is a token to seal.
async fn seal_clear_tokens(
    settings: &Settings,
    options: &sqlx::postgres::PgConnectOptions,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let pool = panel::connect(options, 2).await?;
    let result = async {
        let clear = store::clear_token_count(&pool).await?;
        if clear == 0 {
            return Ok(());
        }
        let keys = settings.keyring().map_err(|e| {
            CliError::failure(format!(
                "cannot seal {clear} bot token(s) still in clear: {}",
                error_line(&e)
            ))
        })?;
        let sealed = store::seal_clear_tokens(&pool, &keys).await?;
        writeln!(
            out,
            "bot tokens sealed with master key {}: {sealed} (their clear column is now empty)",
            keys.current().id()
        )?;
        Ok(())
    }
    .await;
    pool.close().await;
    result
}

pub(super) async fn migrate(
    args: &super::MigrateArgs,
    settings: &Settings,
    options: &sqlx::postgres::PgConnectOptions,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match &args.action {
        None => {
            let applied = schema::apply_counted(&schema::PANEL, options)
                .await
                .map_err(migration_error)?;
            let status = schema::status(&schema::PANEL, options)
                .await
                .map_err(migration_error)?;
            if applied == 0 {
                writeln!(
                    out,
                    "panel: nothing to apply ({} migrations, all applied before)",
                    status.len()
                )?;
            } else {
                writeln!(
                    out,
                    "panel migrations applied: {applied} new ({} in total)",
                    status.len()
                )?;
            }
            seal_clear_tokens(settings, options, out).await?;
            if args.all_bots {
                migrate_all_bots(settings, options, args.concurrency as usize, out).await?;
            }
        }
        Some(MigrateAction::Status {
            bot,
            all_bots,
            json,
        }) => {
            let mut reports: Vec<(String, Vec<MigrationStatus>)> = Vec::new();
            let targets = match (bot, all_bots) {
                (Some(id), _) => {
                    let pool = panel::connect(options, 2).await?;
                    let bot = store::get_bot(&pool, *id).await;
                    pool.close().await;
                    let bot = bot?;
                    vec![bot_target(settings, &bot)?]
                }
                (None, true) => {
                    let status = schema::status(&schema::PANEL, options)
                        .await
                        .map_err(migration_error)?;
                    reports.push(("panel".into(), status));
                    all_targets(settings, options).await?
                }
                (None, false) => {
                    let status = schema::status(&schema::PANEL, options)
                        .await
                        .map_err(migration_error)?;
                    reports.push(("panel".into(), status));
                    Vec::new()
                }
            };
            let mut missing = Vec::new();
            let total = targets.len();
            let show_progress = *all_bots && !*json;
            for (i, target) in targets.into_iter().enumerate() {
                let label = if show_progress {
                    format!(
                        "[{}/{total}] bot {} ({})",
                        i + 1,
                        target.bot_id,
                        target.database
                    )
                } else {
                    format!("bot {} ({})", target.bot_id, target.database)
                };
                if !target
                    .exists()
                    .await
                    .map_err(|e| CliError::input(error_line(&e)))?
                {
                    missing.push(label);
                    continue;
                }
                let status = schema::status(&schema::BOT, &target.options)
                    .await
                    .map_err(migration_error)?;
                reports.push((label, status));
            }
            if *json {
                let value: serde_json::Value = reports
                    .iter()
                    .map(|(label, s)| json!({"database": label, "migrations": s}))
                    .chain(
                        missing
                            .iter()
                            .map(|label| json!({"database": label, "missing": true})),
                    )
                    .collect();
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                )?;
            } else {
                for (label, status) in &reports {
                    writeln!(out, "== {label}")?;
                    print_migrations(status, out)?;
                }
                for label in &missing {
                    writeln!(
                        out,
                        "== {label}: database not created yet (created on first start)"
                    )?;
                }
                if show_progress {
                    let bots = &reports[1..];
                    let pending = bots
                        .iter()
                        .filter(|(_, s)| s.iter().any(|m| m.state != MigrationState::Applied))
                        .count();
                    writeln!(
                        out,
                        "{total} bot databases: {} up to date, {pending} with pending or \
                         unusual migrations, {} not created yet",
                        bots.len() - pending,
                        missing.len()
                    )?;
                }
            }
        }
        Some(MigrateAction::Lint { .. }) => unreachable!("handled before settings are loaded"),
    }
    Ok(())
}

pub(super) fn bot_target(settings: &Settings, bot: &BotRecord) -> Result<BotDbTarget, CliError> {
    BotDbTarget::resolve_on(
        settings,
        bot.id,
        bot.db_server.as_deref(),
        bot.database.as_deref(),
    )
    .map_err(|e| CliError::input(error_line(&e)))
}

async fn all_targets(
    settings: &Settings,
    options: &sqlx::postgres::PgConnectOptions,
) -> Result<Vec<BotDbTarget>, CliError> {
    let pool = panel::connect(options, 2).await?;
    let bots = store::list_bots(&pool).await;
    pool.close().await;
    bots?.iter().map(|b| bot_target(settings, b)).collect()
}

/// Applies bot migrations to every existing bot database, `concurrency` at a time, printing
/// each database as it finishes (`[12/45] …`) and a one-line summary.
async fn migrate_all_bots(
    settings: &Settings,
    options: &sqlx::postgres::PgConnectOptions,
    concurrency: usize,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    use futures::StreamExt;
    let targets = all_targets(settings, options).await?;
    let total = targets.len();
    if total == 0 {
        writeln!(out, "no bots registered: no bot database to migrate")?;
        return Ok(());
    }
    // Ok(None): no database yet; Ok(Some(n)): n migrations applied.
    let mut results = futures::stream::iter(targets)
        .map(|target| async move {
            let result = match target.exists().await {
                Ok(false) => Ok(None),
                Ok(true) => schema::apply_counted(&schema::BOT, &target.options)
                    .await
                    .map(Some)
                    .map_err(|e| error_line(&e)),
                Err(e) => Err(error_line(&e)),
            };
            (target, result)
        })
        .buffer_unordered(concurrency);
    let (mut done, mut migrated, mut applied, mut current, mut missing, mut failed) =
        (0, 0, 0, 0, 0, 0);
    while let Some((target, result)) = results.next().await {
        done += 1;
        let label = format!(
            "[{done}/{total}] bot {} ({})",
            target.bot_id, target.database
        );
        match result {
            Ok(Some(0)) => {
                current += 1;
                writeln!(out, "{label}: up to date")?;
            }
            Ok(Some(n)) => {
                migrated += 1;
                applied += n;
                writeln!(out, "{label}: migrated ({n} applied)")?;
            }
            Ok(None) => {
                missing += 1;
                writeln!(
                    out,
                    "{label}: no database yet (created and migrated on first start)"
                )?;
            }
            Err(e) => {
                failed += 1;
                writeln!(out, "{label}: FAILED: {e}")?;
            }
        }
    }
    if applied == 0 && failed == 0 {
        writeln!(
            out,
            "{total} bot databases: nothing to apply ({current} up to date, {missing} not created yet)"
        )?;
    } else {
        writeln!(
            out,
            "{total} bot databases: {migrated} migrated ({applied} migrations applied), \
             {current} up to date, {missing} not created yet, {failed} failed"
        )?;
    }
    if failed > 0 {
        return Err(CliError::failure(format!(
            "{failed} of {total} bot databases failed to migrate"
        )));
    }
    Ok(())
}

fn print_migrations(status: &[MigrationStatus], out: &mut dyn Write) -> Result<(), CliError> {
    writeln!(
        out,
        "{:<8} {:<32} {:<26} STATE",
        "VERSION", "NAME", "APPLIED_AT"
    )?;
    for m in status {
        let at = m
            .applied_at
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|| "-".into());
        let state = serde_json::to_value(m.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        writeln!(out, "{:<8} {:<32} {:<26} {}", m.version, m.name, at, state)?;
    }
    Ok(())
}
