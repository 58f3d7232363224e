//! `botvisor operator …`, and the versions of texts and manifests (`text history|rollback`,
//! `config history|rollback`): parse, call the service layer, print.

use std::io::{BufRead, Write};

use super::{CliError, ConfigCommand, OperatorCommand, TextCommand};
use crate::admin::Admin;
use crate::admin::manifests::ManifestChange;
use crate::admin::operators::Role;

/// Prints `value` as pretty JSON.
fn print_json(value: &impl serde::Serialize, out: &mut dyn Write) -> Result<(), CliError> {
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    )?;
    Ok(())
}

/// The first line of standard input (the password), without its line break.
fn read_password() -> Result<String, CliError> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::input(format!("cannot read the password from stdin: {e}")))?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        return Err(CliError::input(
            "no password on standard input: pipe it in, e.g. `printf '%s\\n' \"$PW\" | botvisor operator …`",
        ));
    }
    Ok(password)
}

pub(super) async fn operator(
    cmd: &OperatorCommand,
    admin: &Admin,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match cmd {
        OperatorCommand::Add {
            login, role, bots, ..
        } => {
            let role = Role::parse(role)?;
            let password = read_password()?;
            admin.add_operator(login, role, bots, &password).await?;
            writeln!(out, "operator {login} added ({})", role.as_str())?;
        }
        OperatorCommand::List { json } => {
            let ops = admin.list_operators().await?;
            if *json {
                print_json(&ops, out)?;
            } else {
                writeln!(out, "{:<24} {:<7} BOTS", "LOGIN", "ROLE")?;
                for o in &ops {
                    let bots = if o.role == "editor" {
                        o.bots
                            .iter()
                            .map(i64::to_string)
                            .collect::<Vec<_>>()
                            .join(",")
                    } else {
                        "all".to_owned()
                    };
                    writeln!(out, "{:<24} {:<7} {bots}", o.login, o.role)?;
                }
            }
        }
        OperatorCommand::Remove { login } => {
            admin.remove_operator(login).await?;
            writeln!(out, "operator {login} removed")?;
        }
        OperatorCommand::Passwd { login } => {
            let password = read_password()?;
            admin.set_operator_password(login, &password).await?;
            writeln!(out, "password of {login} changed; its sessions ended")?;
        }
        OperatorCommand::Key { login } => {
            let key = admin.new_api_key(login).await?;
            writeln!(out, "{key}")?;
            eprintln!("this key is shown once; only its hash is kept");
        }
        OperatorCommand::Audit { limit, json } => {
            let entries = admin.audit_log(*limit, None).await?;
            if *json {
                print_json(&entries, out)?;
            } else {
                for e in &entries {
                    let bot = e.bot_id.map(|b| format!(" bot {b}")).unwrap_or_default();
                    let show = |v: &Option<sqlx::types::Json<serde_json::Value>>| {
                        v.as_ref().map_or("-".to_owned(), |v| v.0.to_string())
                    };
                    writeln!(
                        out,
                        "{} {} {}{bot} {} {} -> {}",
                        e.at.format("%Y-%m-%d %H:%M:%S"),
                        e.actor,
                        e.action,
                        e.target,
                        show(&e.before),
                        show(&e.after)
                    )?;
                }
            }
        }
    }
    Ok(())
}

pub(super) async fn text_versions(
    cmd: &TextCommand,
    admin: &Admin,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match cmd {
        TextCommand::History {
            id,
            key,
            lang,
            json,
        } => {
            let versions = admin.text_history(*id, key, lang.as_deref()).await?;
            if *json {
                print_json(&versions, out)?;
            } else if versions.is_empty() {
                writeln!(out, "no versions")?;
            } else {
                writeln!(
                    out,
                    "{:<8} {:<20} {:<20} VALUE",
                    "VERSION", "AT (UTC)", "BY"
                )?;
                for v in &versions {
                    let value = v
                        .value
                        .as_deref()
                        .map_or("(deleted)".to_owned(), |s| s.replace('\n', "\\n"));
                    writeln!(
                        out,
                        "{:<8} {:<20} {:<20} {value}",
                        v.version,
                        v.at.format("%Y-%m-%d %H:%M:%S"),
                        v.actor
                    )?;
                }
            }
        }
        TextCommand::Rollback {
            id,
            key,
            number: version,
            lang,
        } => {
            let lang = admin
                .rollback_text(*id, key, lang.as_deref(), *version)
                .await?;
            writeln!(
                out,
                "text {key} [{lang}] of bot {id} rolled back to version {version}"
            )?;
        }
        _ => unreachable!("only versions commands come here"),
    }
    Ok(())
}

pub(super) async fn manifest_versions(
    cmd: &ConfigCommand,
    admin: &Admin,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match cmd {
        ConfigCommand::History { id, json } => {
            let versions = admin.manifest_history(*id).await?;
            if *json {
                print_json(&versions, out)?;
            } else {
                writeln!(
                    out,
                    "{:<8} {:<20} {:<20} CHANGES",
                    "VERSION", "AT (UTC)", "BY"
                )?;
                for v in &versions {
                    let empty = serde_json::json!({});
                    let before = v.previous.as_ref().map_or(&empty, |p| &p.0);
                    let change = ManifestChange::between(before, &v.manifest.0);
                    let mut parts = Vec::new();
                    for (sign, keys) in [
                        ('+', &change.added),
                        ('-', &change.removed),
                        ('~', &change.changed),
                    ] {
                        parts.extend(keys.iter().map(|k| format!("{sign}{k}")));
                    }
                    let changes = if parts.is_empty() {
                        "-".to_owned()
                    } else {
                        parts.join(" ")
                    };
                    writeln!(
                        out,
                        "{:<8} {:<20} {:<20} {changes}",
                        v.version,
                        v.at.format("%Y-%m-%d %H:%M:%S"),
                        v.actor
                    )?;
                }
            }
        }
        ConfigCommand::Rollback {
            id,
            number: version,
        } => {
            let change = admin.rollback_manifest(*id, *version).await?;
            super::admin::write_change(&change, out)?;
            writeln!(out, "manifest of bot {id} rolled back to version {version}")?;
        }
        _ => unreachable!("only versions commands come here"),
    }
    Ok(())
}
