//! The companion of a bot run: everything that follows the bot's snapshot rather than its
//! updates.
//!
//! - the command list: `setMyCommands` with the enabled modules' commands at start, and again
//!   whenever a reload changes that list (the control plane never calls Telegram);
//! - the module jobs: each enabled module's job runs as a task `bot-<id>-<module>`; a reload
//!   that enables a module starts its job, one that disables it stops it; every job stops
//!   with the run (and is awaited, so no job outlives its run). A job that fails ends the run
//!   with that failure, so the control plane restarts the bot with backoff. In a deferred
//!   start the jobs start only once the bot's database is checked.

use std::collections::HashMap;
use std::sync::Arc;

use teloxide::types::BotCommand;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Failures, SharedDeps, Wakes};
use crate::botdb::budget::BotPool;
use crate::content::snapshot::{SharedSnapshot, Snapshot};
use crate::modules::{JobCx, PeerWaker, Quiet};
use crate::telegram::{CallOutcome, Messenger};

/// What the companion of one run works with.
pub(super) struct Companion {
    pub bot_id: i64,
    pub deps: SharedDeps,
    pub db: BotPool,
    pub telegram: Messenger,
    pub snapshot: SharedSnapshot,
    pub wakes: Wakes,
    /// Per module, notified when the sender recorded one of its requests.
    pub delivered: Wakes,
    pub failures: Failures,
    /// The run's stop token; every job's token is a child of it.
    pub stop: CancellationToken,
    /// Wakes the run's sender (jobs queue requests too).
    pub outbox: Arc<Notify>,
    /// Where the jobs say what they wait for.
    pub quiet: Arc<Quiet>,
    /// A deferred start: the jobs start once this is cancelled (the database is checked).
    pub ready: Option<CancellationToken>,
}

/// A fingerprint of a command list (a sleeping bot keeps a number, not the list).
pub(super) fn fingerprint(commands: &[BotCommand]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for c in commands {
        c.command.hash(&mut h);
        c.description.hash(&mut h);
    }
    h.finish()
}

/// A started companion: commands registered, jobs running.
pub(super) struct Started {
    companion: Companion,
    commands: Vec<BotCommand>,
    jobs: HashMap<&'static str, (CancellationToken, JoinHandle<()>)>,
}

impl Companion {
    /// Registers the command list (unless `registered`, the [`fingerprint`] of what a
    /// previous run of the same token registered, says it is there already) and starts the
    /// enabled modules' jobs.
    pub async fn start(self, registered: Option<u64>) -> Started {
        let snapshot = self.snapshot.load();
        let commands = self.deps.registry.commands(&snapshot);
        if registered != Some(fingerprint(&commands)) {
            self.sync_commands(&commands).await;
        }
        let mut started = Started {
            companion: self,
            commands,
            jobs: HashMap::new(),
        };
        started.align_jobs(&snapshot);
        started
    }

    async fn sync_commands(&self, commands: &[BotCommand]) {
        let bot_id = self.bot_id;
        match self.telegram.set_my_commands(commands.to_vec()).await {
            Ok(CallOutcome::Done(())) => tracing::debug!(bot_id, "command list registered"),
            // Refusals are logged by the send interface.
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(bot_id, error = %crate::mask::error_line(&e), "setMyCommands failed")
            }
        }
    }
}

impl Started {
    /// Follows the snapshot until `stop`, then stops every job and waits for it; returns the
    /// command list registered last.
    pub async fn run(mut self) -> Vec<BotCommand> {
        let stop = self.companion.stop.clone();
        let mut changes = self.companion.snapshot.subscribe();
        changes.mark_unchanged();
        let ready = self.companion.ready.clone().unwrap_or_default();
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = ready.cancelled(), if self.companion.ready.is_some() => {
                    self.companion.ready = None;
                    let snapshot = self.companion.snapshot.load();
                    self.align_jobs(&snapshot);
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let snapshot = changes.borrow_and_update().clone();
                    let commands = self.companion.deps.registry.commands(&snapshot);
                    if commands != self.commands {
                        // Boxed: the companion's idle state holds only its waits.
                        Box::pin(self.companion.sync_commands(&commands)).await;
                        self.commands = commands;
                    }
                    self.align_jobs(&snapshot);
                }
            }
        }
        for (_, (job_stop, _)) in self.jobs.iter() {
            job_stop.cancel();
        }
        for (_, (_, handle)) in self.jobs.drain() {
            let _ = handle.await;
        }
        self.commands
    }

    /// Starts the jobs of modules `snapshot` enables and stops those it disables.
    fn align_jobs(&mut self, snapshot: &Snapshot) {
        let c = &self.companion;
        if c.ready.as_ref().is_some_and(|r| !r.is_cancelled()) {
            // A deferred start: the jobs read the database, which is not checked yet.
            return;
        }
        for module in c.deps.registry.modules() {
            let name = module.name();
            let enabled = module.enabled(snapshot);
            let finished = self.jobs.get(name).is_some_and(|(_, h)| h.is_finished());
            if finished {
                self.jobs.remove(name);
                c.quiet.forget(name);
            }
            match (enabled, self.jobs.contains_key(name)) {
                (true, false) => {
                    let job_stop = c.stop.child_token();
                    let cx = JobCx {
                        bot_id: c.bot_id,
                        module: name,
                        outbox: Arc::clone(&c.outbox),
                        db: c.db.clone(),
                        prune: crate::botdb::PruneSchedule::from_settings(
                            &c.deps.settings,
                            c.bot_id,
                        ),
                        telegram: c.telegram.clone(),
                        snapshot: c.snapshot.subscribe(),
                        wake: c.wakes.get(name),
                        delivered: c.delivered.get(name),
                        peers: {
                            let wakes = c.wakes.clone();
                            PeerWaker::new(move |peer| wakes.wake(peer))
                        },
                        stop: job_stop.clone(),
                        quiet: Arc::clone(&c.quiet),
                    };
                    let Some(job) = module.job(cx) else {
                        continue;
                    };
                    // Busy until its first wait.
                    c.quiet.enter(name);
                    let failures = c.failures.clone();
                    let bot_id = c.bot_id;
                    let handle = c.deps.tasks.spawn(format!("bot-{bot_id}-{name}"), async move {
                        if let Err(e) = job.await {
                            tracing::warn!(bot_id, module = name, error = %crate::mask::error_line(&e), "module job failed");
                            failures.report(e);
                        }
                    });
                    self.jobs.insert(name, (job_stop, handle));
                }
                (false, true) => {
                    if let Some((job_stop, _)) = self.jobs.remove(name) {
                        tracing::info!(
                            bot_id = c.bot_id,
                            module = name,
                            "module disabled; its job stops"
                        );
                        job_stop.cancel();
                        c.quiet.forget(name);
                    }
                }
                _ => {}
            }
        }
    }
}
