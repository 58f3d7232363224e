//! `botvisor bot move ID --server URL`: a bot's database to another of the configured
//! servers (`bot_database.servers`).
//!
//! The order (docs/operations.md, "Moving a bot to another server"): disable the bot and wait
//! until it stopped; dump its database (`pg_dump`, row counts taken in the dumped snapshot);
//! restore into a staging database on the new server and compare the row counts; rename the
//! staging database to the bot's database name; switch `bots.db_server` with a `bot.move`
//! audit entry in one transaction (the commit point); enable the bot again if it was. The old
//! database stays where it was, marked as moved away, until `--drop-old`.
//!
//! A failure before the switch drops what was made on the new server and enables the bot
//! again on its old server, its data untouched. The bot's database (while the bot is stopped)
//! and every database the move makes carry a comment (a [`MoveMarker`]), so running the same
//! move again after a crash finishes it (the switch happened) or starts it over (it did not),
//! and enables the bot again if it was enabled before the first run. The dump and restore reuse the export and
//! import machinery of [`super::archive`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::archive::{PgTools, Scratch, dump_database};
use super::{Admin, AdminError};
use crate::botdb::{BotDbTarget, DbServer};
use crate::mask::{error_line, mask_url};
use crate::panel::{BotRecord, store};

/// Suffix of the database on the new server a move restores into before the rename.
pub const STAGING_SUFFIX: &str = "_move";
/// How a database comment marks a database a move is making (JSON follows).
const MOVING_PREFIX: &str = "botvisor move ";
/// How a database comment marks the old database a move left behind (JSON follows).
const MOVED_PREFIX: &str = "botvisor moved away ";

/// What a database comment says about a move in progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveMarker {
    /// The bot moved.
    bot_id: i64,
    /// The server key it is moved from.
    from: String,
    /// The server key it is moved to.
    to: String,
    /// Whether the bot was enabled before the move began.
    was_enabled: bool,
}

/// What a database comment says about an old database a move left behind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MovedMarker {
    /// The bot moved.
    bot_id: i64,
    /// The server key it went to.
    to: String,
    /// When.
    at: DateTime<Utc>,
}

/// A database as a move finds it.
#[derive(Debug)]
enum State {
    /// It does not exist.
    Absent,
    /// A move of this bot is making it.
    Moving(MoveMarker),
    /// A move of this bot left it behind.
    Moved,
    /// It exists, not marked by a move of this bot.
    Other,
}

async fn inspect(db: &BotDbTarget, id: i64) -> Result<State, AdminError> {
    let Some(comment) = db.comment().await? else {
        return Ok(State::Absent);
    };
    let comment = comment.unwrap_or_default();
    if let Some(m) = comment
        .strip_prefix(MOVING_PREFIX)
        .and_then(|json| serde_json::from_str::<MoveMarker>(json).ok())
        .filter(|m| m.bot_id == id)
    {
        return Ok(State::Moving(m));
    }
    if comment
        .strip_prefix(MOVED_PREFIX)
        .and_then(|json| serde_json::from_str::<MovedMarker>(json).ok())
        .is_some_and(|m| m.bot_id == id)
    {
        return Ok(State::Moved);
    }
    Ok(State::Other)
}

/// The steps of a move after which a crash leaves a distinct state (for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveStep {
    /// The bot is disabled and stopped.
    Stopped,
    /// The copy is restored on the new server under the staging name and verified.
    Restored,
    /// The copy has the bot's database name on the new server.
    Renamed,
    /// The panel points at the new server (committed).
    Switched,
}

/// How to move.
#[derive(Debug, Clone, Default)]
pub struct MoveOptions<'a> {
    /// The server to move to (one of the configured ones, matched by user, host and port);
    /// `None` with `drop_old`: only drop the old copies earlier moves kept.
    pub server: Option<&'a str>,
    /// Drop the old database once the move committed (or, without `server`, every old copy
    /// of the bot's database an earlier move kept).
    pub drop_old: bool,
    /// For tests: stop right after this step, leaving what a crash there would leave.
    pub halt_after: Option<MoveStep>,
}

/// What a move did.
#[derive(Debug, Clone, Serialize)]
pub struct MoveReport {
    /// The bot.
    pub id: i64,
    /// The server it was on (masked), when it moved.
    pub from: Option<String>,
    /// The server it is on now (masked).
    pub to: String,
    /// Its database's name (the same on both servers).
    pub database: String,
    /// Tables whose row counts matched (`None`: the bot had no database yet, nothing copied).
    pub tables_verified: Option<usize>,
    /// The old database, kept: `name on server`.
    pub old_kept: Option<String>,
    /// Old databases dropped, `name on server`.
    pub dropped: Vec<String>,
    /// Whether the bot is enabled (it is again if it was before the move).
    pub enabled: bool,
    /// Whether this run finished an interrupted move.
    pub resumed: bool,
    /// What else happened, for the operator.
    pub notes: Vec<String>,
}

fn marker_text<T: Serialize>(prefix: &str, m: &T) -> String {
    format!("{prefix}{}", serde_json::to_string(m).unwrap_or_default())
}

impl Admin {
    /// Moves bot `id`'s database to `opts.server` (see the module docs), or with only
    /// `opts.drop_old` drops the old copies earlier moves kept. A server that is not
    /// configured is refused before anything is touched.
    pub async fn move_bot(
        &self,
        id: i64,
        opts: &MoveOptions<'_>,
        tools: &PgTools,
    ) -> Result<MoveReport, AdminError> {
        let bot = store::get_bot(&self.pool, id).await?;
        let Some(url) = opts.server else {
            if opts.drop_old {
                return self.drop_moved_copies(&bot).await;
            }
            return Err(AdminError::Invalid(
                "give --server URL (one of bot_database.servers) to move the bot, or \
                 --drop-old to drop the old copies earlier moves kept"
                    .into(),
            ));
        };
        let servers = crate::botdb::servers(&self.settings)
            .map_err(|e| AdminError::Invalid(e.to_string()))?;
        let to = crate::botdb::find_server(&self.settings, url)
            .map_err(AdminError::Invalid)?
            .ok_or_else(|| {
                let list: Vec<String> = servers.iter().map(DbServer::masked).collect();
                AdminError::Invalid(format!(
                    "{} is not one of the configured bot database servers ({}): list it in \
                     bot_database.servers first; nothing was moved",
                    mask_url(url),
                    list.join(", ")
                ))
            })?;
        if bot.database.as_deref().is_some_and(|d| d.contains("://")) {
            return Err(AdminError::Invalid(format!(
                "bot {id}'s database override is a URL naming its own server; change the \
                 override instead; nothing was moved"
            )));
        }
        let from = self.bot_target(&bot)?;
        let Some(lock) = store::try_lock_import(&self.pool, id).await? else {
            return Err(AdminError::Invalid(format!(
                "an import into or a move of bot {id} is running; wait for it to finish \
                 (nothing was moved)"
            )));
        };
        let result = self.move_locked(&bot, &from, &to, opts, tools).await;
        let _ = sqlx::Connection::close(lock).await;
        result
    }

    /// [`Admin::move_bot`] once the bot's lock is held.
    async fn move_locked(
        &self,
        bot: &BotRecord,
        from: &BotDbTarget,
        to: &DbServer,
        opts: &MoveOptions<'_>,
        tools: &PgTools,
    ) -> Result<MoveReport, AdminError> {
        let id = bot.id;
        let dest = BotDbTarget::on_server(&self.settings, id, to, bot.database.as_deref())
            .map_err(AdminError::Invalid)?;
        let staging = dest.sibling(STAGING_SUFFIX);
        let dest_state = inspect(&dest, id).await?;
        if from.server_key == to.key {
            return match dest_state {
                State::Moving(m) => self.finish(bot, &dest, to, m, opts, None, true).await,
                _ => Err(AdminError::Invalid(format!(
                    "bot {id}'s database is on {} already; nothing was moved",
                    to.masked()
                ))),
            };
        }
        let staging_state = inspect(&staging, id).await?;
        let mut notes = Vec::new();
        for (db, state) in [(&dest, &dest_state), (&staging, &staging_state)] {
            match state {
                State::Other => {
                    return Err(AdminError::Invalid(format!(
                        "database {} exists on {} and is not botvisor's copy of bot {id}; \
                         rename or drop it, then move again (nothing was moved)",
                        db.database,
                        to.masked()
                    )));
                }
                State::Moved => {
                    return Err(AdminError::Invalid(format!(
                        "{} on {} is an old copy of bot {id}'s database kept by an earlier \
                         move; drop it with `botvisor bot move {id} --drop-old`, then move \
                         again (nothing was moved)",
                        db.database,
                        to.masked()
                    )));
                }
                // Left by an interrupted move that did not switch: start over.
                State::Moving(_) => {
                    db.drop_database().await?;
                    notes.push(format!(
                        "dropped {} on {}, left by an interrupted move",
                        db.database,
                        to.masked()
                    ));
                }
                State::Absent => {}
            }
        }
        // The bot's own database carries the marker while the bot is stopped, so a run after
        // a crash knows whether to enable it again.
        let from_state = inspect(from, id).await?;
        let was_enabled = [&dest_state, &staging_state, &from_state]
            .into_iter()
            .find_map(|s| match s {
                State::Moving(m) => Some(m.was_enabled),
                _ => None,
            })
            .unwrap_or(bot.enabled);
        let marker = MoveMarker {
            bot_id: id,
            from: from.server_key.clone(),
            to: to.key.clone(),
            was_enabled,
        };
        let halt = |step: MoveStep| {
            if opts.halt_after == Some(step) {
                Err(AdminError::ArchiveFailed(format!(
                    "halted after step {step:?}, as a crash there would"
                )))
            } else {
                Ok(())
            }
        };
        let undo =
            |reason: String| self.undo_move(id, from, to, &staging, &dest, was_enabled, reason);

        // 1. Stop the bot: disabled through the panel, and its status says so.
        if from.exists().await?
            && let Err(e) = from
                .set_comment(Some(&marker_text(MOVING_PREFIX, &marker)))
                .await
        {
            return Err(undo(error_line(&e)).await);
        }
        if store::get_bot(&self.pool, id).await?.enabled {
            store::set_enabled(&self.pool, id, false).await?;
        }
        if let Err(reason) = self.wait_stopped(id).await {
            return Err(undo(reason).await);
        }
        halt(MoveStep::Stopped)?;

        // 2. Copy: dump, restore beside the final name, verify, rename.
        let mut verified = None;
        if from.exists().await? {
            let copied = async {
                let scratch = Scratch::new(&std::env::temp_dir()).map_err(|e| error_line(&e))?;
                let dump = scratch.0.join("database.dump");
                let counts = dump_database(from, &dump, tools).await?;
                let text = marker_text(MOVING_PREFIX, &marker);
                self.restore_staging(&staging, &text, &dump, Some(&counts), tools)
                    .await
            }
            .await;
            match copied {
                Ok(n) => verified = n,
                Err(reason) => return Err(undo(reason).await),
            }
            halt(MoveStep::Restored)?;
            if let Err(e) = staging.rename_to(&dest.database).await {
                return Err(undo(error_line(&e)).await);
            }
        }
        halt(MoveStep::Renamed)?;

        // 3. Switch the panel row, with its audit entry: the commit point.
        let entry = self.audit_entry(
            "bot.move",
            Some(id),
            "",
            Some(serde_json::json!({ "server": self.server_masked(&from.server_key) })),
            Some(serde_json::json!({ "server": to.masked(), "database": dest.database })),
        );
        if let Err(e) = store::set_db_server_audited(
            &self.pool,
            id,
            bot.db_server.as_deref(),
            Some(&to.key),
            &entry,
        )
        .await
        {
            return Err(undo(error_line(&e)).await);
        }
        halt(MoveStep::Switched)?;
        let mut report = self
            .finish(bot, &dest, to, marker, opts, verified, false)
            .await?;
        notes.append(&mut report.notes);
        report.notes = notes;
        Ok(report)
    }

    /// After the switch: unmarks the copy, marks the old database as moved away (or drops it
    /// with `drop_old`), and enables the bot again if it was.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        bot: &BotRecord,
        dest: &BotDbTarget,
        to: &DbServer,
        marker: MoveMarker,
        opts: &MoveOptions<'_>,
        verified: Option<usize>,
        resumed: bool,
    ) -> Result<MoveReport, AdminError> {
        let id = bot.id;
        let mut notes = Vec::new();
        if resumed {
            notes.push(format!(
                "finished the interrupted move of bot {id} to {}",
                to.masked()
            ));
        }
        if dest.exists().await? {
            dest.set_comment(None).await?;
        }
        let old = crate::botdb::servers(&self.settings)
            .ok()
            .and_then(|list| list.into_iter().find(|s| s.key == marker.from))
            .and_then(|s| {
                BotDbTarget::on_server(&self.settings, id, &s, bot.database.as_deref()).ok()
            });
        let mut old_kept = None;
        let mut dropped = Vec::new();
        if let Some(old) = old.as_ref() {
            let place = format!(
                "{} on {}",
                old.database,
                self.server_masked(&old.server_key)
            );
            let exists = old.exists().await?;
            if exists && opts.drop_old {
                old.drop_database().await?;
                dropped.push(place);
            } else if exists {
                let moved = MovedMarker {
                    bot_id: id,
                    to: to.key.clone(),
                    at: Utc::now(),
                };
                if let Err(e) = old
                    .set_comment(Some(&marker_text(MOVED_PREFIX, &moved)))
                    .await
                {
                    notes.push(format!(
                        "warning: could not mark the old database {place} as moved away ({})",
                        error_line(&e)
                    ));
                }
                old_kept = Some(place);
            }
        }
        if marker.was_enabled && !store::get_bot(&self.pool, id).await?.enabled {
            store::set_enabled(&self.pool, id, true).await?;
        }
        Ok(MoveReport {
            id,
            from: Some(self.server_masked(&marker.from)),
            to: to.masked(),
            database: dest.database.clone(),
            tables_verified: verified,
            old_kept,
            dropped,
            enabled: marker.was_enabled,
            resumed,
            notes,
        })
    }

    /// Before the switch: drops what the move made on the new server and enables the bot
    /// again if it was; the error says the bot stays where it was.
    #[allow(clippy::too_many_arguments)]
    async fn undo_move(
        &self,
        id: i64,
        from: &BotDbTarget,
        to: &DbServer,
        staging: &BotDbTarget,
        dest: &BotDbTarget,
        was_enabled: bool,
        reason: String,
    ) -> AdminError {
        let mut left = Vec::new();
        if matches!(inspect(from, id).await, Ok(State::Moving(_)))
            && let Err(e) = from.set_comment(None).await
        {
            left.push(format!(
                "could not unmark {} ({})",
                from.database,
                error_line(&e)
            ));
        }
        for db in [staging, dest] {
            if matches!(inspect(db, id).await, Ok(State::Moving(_)))
                && let Err(e) = db.drop_database().await
            {
                left.push(format!(
                    "could not drop {} on {} ({})",
                    db.database,
                    to.masked(),
                    error_line(&e)
                ));
            }
        }
        let disabled = store::get_bot(&self.pool, id)
            .await
            .is_ok_and(|b| !b.enabled);
        if was_enabled
            && disabled
            && let Err(e) = store::set_enabled(&self.pool, id, true).await
        {
            left.push(format!(
                "could not enable bot {id} again ({})",
                error_line(&e)
            ));
        }
        let mut message = format!(
            "moving bot {id} failed: {reason}; it stays on {} with its data untouched{}",
            self.server_masked(&from.server_key),
            if was_enabled { " and runs again" } else { "" }
        );
        if !left.is_empty() {
            message.push_str(&format!("; but {}", left.join(", ")));
        }
        AdminError::ArchiveFailed(message)
    }

    /// `bot move ID --drop-old`: drops every old copy of bot's database an earlier move left
    /// on another configured server (only databases marked so).
    async fn drop_moved_copies(&self, bot: &BotRecord) -> Result<MoveReport, AdminError> {
        let id = bot.id;
        let current = self.bot_target(bot)?;
        let servers = crate::botdb::servers(&self.settings)
            .map_err(|e| AdminError::Invalid(e.to_string()))?;
        let mut dropped = Vec::new();
        for server in servers.iter().filter(|s| s.key != current.server_key) {
            let Ok(old) =
                BotDbTarget::on_server(&self.settings, id, server, bot.database.as_deref())
            else {
                continue;
            };
            if matches!(inspect(&old, id).await?, State::Moved) {
                old.drop_database().await?;
                dropped.push(format!("{} on {}", old.database, server.masked()));
            }
        }
        if dropped.is_empty() {
            return Err(AdminError::Invalid(format!(
                "no old copy of bot {id}'s database is kept on another server; nothing was \
                 dropped"
            )));
        }
        self.audit(
            "bot.move.drop_old",
            Some(id),
            "",
            None,
            Some(serde_json::json!({ "dropped": dropped })),
        )
        .await?;
        Ok(MoveReport {
            id,
            from: None,
            to: self.server_masked(&current.server_key),
            database: current.database.clone(),
            tables_verified: None,
            old_kept: None,
            dropped,
            enabled: store::get_bot(&self.pool, id).await?.enabled,
            resumed: false,
            notes: Vec::new(),
        })
    }
}
