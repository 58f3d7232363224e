//! `botvisor secret`: a bot's sealed secrets — set from standard input, list names, remove.

use std::io::{Read, Write};

use super::{CliError, SecretCommand};
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
