//! A polling bot's deferred start (docs/architecture.md, "Deferred start").
//!
//! A polling run does not wait for its database before it polls: `getUpdates` needs nothing
//! from it (long polls carry no offset), and a bot with nothing to answer has nothing to read.
//! The start's check that the database exists and is migrated ([`DeferredStart::run`]) waits
//! for a check turn like any start, but beside the first long poll rather than before it; a
//! poll that brings updates first, or an operator's wake of a module job, makes the check
//! urgent (no turn, served as a running bot).
//! Until the check is done nothing of the run touches the database: the listener only polls
//! ([`super::inbox::Deferred`]), the module jobs are not started, the sender waits for the
//! listener's first read, and the bot is not reported running. So a cold start of many bots
//! has every bot polling within the time of its Bot API calls, and the checks follow in the
//! background, first for the bots that have something to answer.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{Failures, RunFailure, Wakes, inbox};
use crate::botdb::budget::{BotPool, ConnectionBudget, KEPT_AT_MOST};
use crate::botdb::{BotDbTarget, CheckTurn};
use crate::tasks::Tasks;

/// What a deferred start checks, and the signals it shares with the run's parts.
pub(super) struct DeferredStart {
    bot_id: i64,
    target: BotDbTarget,
    budget: ConnectionBudget,
    db: BotPool,
    /// Cancelled by the sender after its first load (the start hold ends then).
    loaded: CancellationToken,
    signals: inbox::Deferred,
}

impl DeferredStart {
    /// A start of `db` (made by [`BotDbTarget::pool_within`], not yet checked).
    pub fn new(
        bot_id: i64,
        target: BotDbTarget,
        budget: ConnectionBudget,
        db: BotPool,
        loaded: CancellationToken,
    ) -> Self {
        Self {
            bot_id,
            target,
            budget,
            db,
            loaded,
            signals: inbox::Deferred::default(),
        }
    }

    /// The signals the listener and the companion wait on.
    pub fn signals(&self) -> inbox::Deferred {
        self.signals.clone()
    }

    /// Checks the database (creating or migrating it if it must), holds it for the start's
    /// reads and fires `ready`; returns whether it did. A failure is reported to `failures`
    /// (it ends the run, as a failed provisioning does); a stop ends it quietly.
    pub async fn run(
        self,
        tasks: &Tasks,
        wakes: &Wakes,
        stop: CancellationToken,
        failures: Failures,
    ) -> bool {
        let waited = Instant::now();
        let turn = tokio::select! {
            () = stop.cancelled() => return false,
            () = self.signals.urgent.cancelled() => CheckTurn::Urgent,
            // An operator's action for a module job (a mailing started, a message scheduled).
            () = wakes.any() => CheckTurn::Urgent,
            turn = self.budget.check_turn() => match turn {
                Ok(turn) => CheckTurn::Turn(turn),
                Err(e) => {
                    failures.report(RunFailure::Database(e.into()));
                    return false;
                }
            },
        };
        let urgent = matches!(turn, CheckTurn::Urgent);
        let checked = Instant::now();
        let made = tokio::select! {
            () = stop.cancelled() => return false,
            made = self.target.make_current_within(&self.budget, &self.db, turn) => made,
        };
        match made {
            Ok(created) => {
                if created {
                    tracing::info!(bot_id = self.bot_id, database = %self.target.database, "bot database created");
                }
                tracing::debug!(
                    bot_id = self.bot_id,
                    urgent,
                    waited_ms = (checked - waited).as_millis() as u64,
                    check_ms = checked.elapsed().as_millis() as u64,
                    "bot start: database checked"
                );
            }
            Err(e) => {
                failures.report(e);
                return false;
            }
        }
        hold_for_start(tasks, self.bot_id, &self.db, &self.loaded, &stop);
        self.signals.ready.cancel();
        true
    }
}

/// Holds `db` for a start's reads ([`BotPool::hold_start`]) until `loaded` or `stop` is
/// cancelled, and [`KEPT_AT_MOST`] at the latest (a long first pass of a job must not leave
/// the bot one connection for long).
pub(super) fn hold_for_start(
    tasks: &Tasks,
    bot_id: i64,
    db: &BotPool,
    loaded: &CancellationToken,
    stop: &CancellationToken,
) {
    let start_hold = db.hold_start();
    let (loaded, stop) = (loaded.clone(), stop.clone());
    tasks.spawn(format!("bot-{bot_id}-start-hold"), async move {
        tokio::select! {
            () = loaded.cancelled() => {}
            () = stop.cancelled() => {}
            () = tokio::time::sleep(KEPT_AT_MOST) => {}
        }
        drop(start_hold);
    });
}
