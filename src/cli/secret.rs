//! `botvisor secret`: a bot's sealed secrets — set from standard input, list names, remove;
//! `botvisor user`: one user's rows exported or erased.

use std::io::{Read, Write};

use super::{CliError, SecretCommand, UserCommand};
use crate::admin::Admin;

pub(super) async fn run(
    cmd: &SecretCommand,
    admin: &Admin,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match cmd {
        SecretCommand::Set { id, name, stdin } => {
            if !stdin {
                return Err(CliError::input(
                    "pass the value on standard input with --stdin (a value on the command \
                     line would be seen by ps and kept in shell history)",
                ));
            }
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .map_err(|e| CliError::input(format!("cannot read the value from stdin: {e}")))?;
            let value = value
                .strip_suffix('\n')
                .map(|v| v.strip_suffix('\r').unwrap_or(v))
                .unwrap_or(&value);
            admin.set_secret(*id, name, value).await?;
            writeln!(out, "secret {name} of bot {id} set")?;
        }
        SecretCommand::List { id, json } => {
            let secrets = admin.list_secrets(*id).await?;
            if *json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&secrets).unwrap_or_default()
                )?;
            } else if secrets.is_empty() {
                writeln!(out, "bot {id} has no secrets")?;
            } else {
                let width = secrets
                    .iter()
                    .map(|s| s.name.len())
                    .max()
                    .unwrap_or(0)
                    .max(4);
                writeln!(out, "{:width$}  UPDATED_AT", "NAME")?;
                for s in &secrets {
                    writeln!(out, "{:width$}  {}", s.name, s.updated_at.to_rfc3339())?;
                }
            }
        }
        SecretCommand::Remove { id, name } => {
            admin.remove_secret(*id, name).await?;
            writeln!(out, "secret {name} of bot {id} removed")?;
        }
    }
    Ok(())
}

pub(super) async fn user(
    cmd: &UserCommand,
    admin: &Admin,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match cmd {
        UserCommand::Export { id, user_id } => {
            let rows = admin.export_user(*id, *user_id).await?;
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&rows).unwrap_or_default()
            )?;
        }
        UserCommand::Erase { id, user_id, yes } => {
            let erased = admin.erase_user(*id, *user_id, *yes).await?;
            let total: u64 = erased.iter().map(|e| e.rows).sum();
            for e in &erased {
                writeln!(out, "{}: {}", e.table, e.rows)?;
            }
            writeln!(
                out,
                "user {user_id}: {total} rows erased from bot {id}'s database"
            )?;
        }
    }
    Ok(())
}
