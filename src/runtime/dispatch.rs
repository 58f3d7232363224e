//! The unit of work: what happens to the updates the intake fetched, start to finish.
//!
//! The intake hands over [`Work`] in the inbox's order: stored updates (replayed at start, or
//! stored by the webhook entrance) and batches the listener just fetched ([`Fresh`]). A fetched
//! batch whose steps only write is **stored, processed and its offset recorded by one
//! statement** ([`Processor::fresh`]: its inbox rows are written once, already processed);
//! otherwise it is stored first (`botdb::store::store_batch`) and processed like the stored
//! updates below. The listener is answered once the batch is stored, and only then confirms
//! it to Telegram.
//!
//! [`Processor::run`] takes the stored updates in arrival order, in batches: every update
//! already waiting when a batch starts (at most [`MAX_BATCH`]). For each batch it:
//! 1. acquires a connection on the bot database — kept for the next batch while more work
//!    waits, so under a tight connection budget a busy bot finishes what it has instead of
//!    reconnecting per update; the updates that arrived while it waited for the connection
//!    join the batch (a bot that waited takes a bigger batch);
//! 2. opens one transaction and claims every inbox row of the batch in one statement that
//!    marks them processed, undone if the transaction rolls back (an update already
//!    processed — a replay or a re-delivery — is skipped);
//! 3. runs the module chain for each claimed update, in arrival order (so the order within a
//!    chat is kept): every module enabled for the snapshot, in registry order, until one says
//!    [`Flow::Stop`]; answers are queued in the outbox, inside the transaction;
//! 4. commits once for the whole batch (group commit): the modules' effects, their queued
//!    answers and the marks are atomic; then hands the queued requests to the bot's sender
//!    ([`super::outbox`]) — it need not read back what was just written —, which delivers them
//!    and lets the modules observe the results ([`Module::on_sent`]), and wakes the jobs of the
//!    modules that left them work (`UpdateCx::wake_job`: the assistant's model calls).
//!
//! If anything in a batch fails or panics, its transaction is rolled back and the batch is
//! processed again one update per transaction ([`Processor::one`]), so one bad update never
//! takes the others with it: a panic or a poison error marks that one update poisoned and the
//! bot goes on; any other failure (database, network after retries) is reported to the run,
//! which ends so the control plane restarts it with backoff and the update is replayed — the
//! updates after it are not processed by this run (they are replayed after it, in order); a
//! revoked token ends it as fatal.
//!
//! No Telegram call happens while a transaction is open. Why batches rather than one
//! transaction per update: see docs/architecture.md ("Group commit").
//!
//! [`Module::on_sent`]: crate::modules::Module::on_sent

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use teloxide::types::{Me, Update};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::BotContext;
use super::inbox::panic_message;
use crate::botdb::budget::{BudgetConn, BudgetError};
use crate::botdb::store::{self, InboxRow, Stored};
use crate::modules::store::Claim;
use crate::modules::{self, Flow, ModuleError, Queued, UpdateCx};
use crate::telemetry::metrics::{self, PoisonedAt};

/// What a committed unit of work leaves to do: the requests it queued (for the sender) and the
/// modules whose jobs it asked to wake.
type Effects = (Vec<Queued>, Vec<&'static str>);

/// What the intake hands to the processor, in the inbox's order.
pub enum Work {
    /// An update in the inbox (replayed, or stored by the webhook entrance): process it.
    Stored(Box<Update>),
    /// A batch the listener just fetched, not stored yet: store and process it.
    Fresh(Box<Fresh>),
}

/// A fetched batch for [`Processor::fresh`]: stored and processed in one statement when it
/// can be, else stored (`botdb::store::store_batch`) and then processed like any stored batch.
/// Either way `stored` answers the listener once the batch is stored, so it can confirm the
/// batch's offset with Telegram.
pub struct Fresh {
    /// The batch's rows (poisoned ones included), in the order fetched.
    pub rows: Vec<InboxRow>,
    /// The rows that parsed, by id, in the same order.
    pub parsed: Vec<(i64, Update)>,
    /// The offset that confirms the batch.
    pub next_offset: Option<i64>,
    /// What was stored, or why storing failed (masked).
    pub stored: oneshot::Sender<Result<Stored, String>>,
}

/// What [`Processor::deferred`] did.
struct DeferredDone {
    effects: Effects,
    /// Updates it processed.
    processed: u64,
    /// See [`modules::store::Applied::inserted`].
    inserted: Vec<i64>,
    /// See [`modules::store::Applied::suspicious`].
    suspicious: bool,
}

/// Most updates one transaction takes (a getUpdates call brings at most 100).
pub const MAX_BATCH: usize = 256;

/// Processes the updates the intake stored until its channel closes, or a failure ends the run.
pub struct Processor {
    /// The bot's Telegram identity.
    pub me: Me,
    /// What the unit of work needs.
    pub ctx: Arc<BotContext>,
}

impl Processor {
    /// Runs until `work` is closed and drained (a stop: every stored update is processed)
    /// or a failure was reported (what is left is replayed by the next run).
    pub async fn run(self, mut work: mpsc::Receiver<Work>) {
        let failed = self.ctx.failures.failed();
        let mut held: Option<BudgetConn> = None;
        loop {
            if held.is_some() && work.is_empty() {
                // Idle: give the connection back to the budget.
                held = None;
            }
            // A batch's buffer lives only as long as the batch: an idle bot holds none (256
            // updates preallocated were ≈ 486 KiB per bot).
            let mut items: Vec<Work> = Vec::new();
            if work.recv_many(&mut items, MAX_BATCH).await == 0 {
                break;
            }
            let taken = Instant::now();
            // From its first update on, the bot's returned connections are spared for a moment
            // (a running bot's next message likely follows).
            self.ctx.db.mark_warm();
            let conn = match self.acquire(held.take()).await {
                Ok(conn) => conn,
                // Fetched batches are not stored yet: their listener hears why and retries
                // with backoff (and says the bot is degraded), and the run goes on.
                Err(e) if items.iter().all(|i| matches!(i, Work::Fresh(_))) => {
                    let why = crate::mask::error_line(&e);
                    for item in items {
                        if let Work::Fresh(fresh) = item {
                            let _ = fresh.stored.send(Err(why.clone()));
                        }
                    }
                    continue;
                }
                // Stored updates wait for the next run, which replays them.
                Err(e) => {
                    self.ctx.failures.report(ModuleError::from(e));
                    break;
                }
            };
            // What arrived while we waited for the connection joins this batch.
            while items.len() < MAX_BATCH {
                match work.try_recv() {
                    Ok(item) => items.push(item),
                    Err(_) => break,
                }
            }
            // Boxed: the idle processor's state then holds only the wait for the next update,
            // not the transaction's futures.
            held = Box::pin(self.items(conn, items, taken)).await;
            if failed.is_cancelled() {
                break;
            }
        }
    }

    /// `held`, or a connection acquired for the bot.
    async fn acquire(&self, held: Option<BudgetConn>) -> Result<BudgetConn, BudgetError> {
        match held {
            Some(conn) => Ok(conn),
            None => Box::pin(self.ctx.db.acquire()).await,
        }
    }

    /// `held`, or a connection acquired for stored updates; `None` when the acquire failed
    /// (the failure is reported: the run ends, and the next run replays them).
    async fn connection(&self, held: Option<BudgetConn>) -> Option<BudgetConn> {
        match self.acquire(held).await {
            Ok(conn) => Some(conn),
            Err(e) => {
                self.ctx.failures.report(ModuleError::from(e));
                None
            }
        }
    }

    /// `held`, or a connection acquired for a fetched batch; when the acquire fails, the
    /// batch's listener is answered with why (it retries; the run goes on).
    async fn connection_for_fresh(
        &self,
        held: Option<BudgetConn>,
        stored: oneshot::Sender<Result<Stored, String>>,
    ) -> Option<(BudgetConn, oneshot::Sender<Result<Stored, String>>)> {
        match self.acquire(held).await {
            Ok(conn) => Some((conn, stored)),
            Err(e) => {
                let _ = stored.send(Err(crate::mask::error_line(&e)));
                None
            }
        }
    }

    /// Works through `items` in order: each run of stored updates as one batch, each fresh
    /// batch on its own. Returns the connection when it is fit for reuse.
    async fn items(
        &self,
        conn: BudgetConn,
        items: Vec<Work>,
        taken: Instant,
    ) -> Option<BudgetConn> {
        let failed = self.ctx.failures.failed();
        let mut conn = Some(conn);
        let mut batch: Vec<Update> = Vec::new();
        for item in items {
            if failed.is_cancelled() {
                // What is left is replayed by the next run (a fresh batch was not stored: its
                // listener hears that and Telegram sends it again).
                return None;
            }
            match item {
                Work::Stored(update) => batch.push(*update),
                Work::Fresh(fresh) => {
                    if !batch.is_empty() {
                        let held = self.connection(conn.take()).await?;
                        conn = self.batch(held, &batch, taken, true).await;
                        batch.clear();
                    }
                    conn = self.fresh(conn.take(), *fresh, taken).await;
                }
            }
        }
        if batch.is_empty() || failed.is_cancelled() {
            return conn;
        }
        let held = self.connection(conn).await?;
        self.batch(held, &batch, taken, true).await
    }

    /// A fetched batch: stored and processed in one statement when its steps only write and
    /// no id looks like a restart of the ids (`modules::store::Claim::Fresh`: the inbox rows
    /// are written once, already processed); else stored first, answered, and processed like
    /// a replayed batch. The listener is answered once the batch is stored (or storing
    /// failed: it retries the fetch).
    async fn fresh(
        &self,
        held: Option<BudgetConn>,
        fresh: Fresh,
        taken: Instant,
    ) -> Option<BudgetConn> {
        let Fresh {
            rows,
            parsed,
            next_offset,
            stored,
        } = fresh;
        let (mut conn, mut stored) = self.connection_for_fresh(held, stored).await?;
        let (ids, updates): (Vec<i64>, Vec<Update>) = parsed.into_iter().unzip();
        let snapshot = self.ctx.snapshot.load();
        let claim = Claim::Fresh {
            rows: &rows,
            next_offset,
        };
        let attempt = AssertUnwindSafe(self.deferred(&mut conn, &updates, &snapshot, claim))
            .catch_unwind()
            .await;
        let mut deferred_first = true;
        match attempt {
            Ok(Ok(done)) if !done.suspicious => {
                let _ = stored.send(Ok(Stored::Stored {
                    inserted: done.inserted,
                    restart: None,
                }));
                self.handled(done.effects, done.processed, taken);
                conn.vouch();
                return Some(conn);
            }
            Ok(Ok(_)) => {}
            // Its steps read: the stored batch goes straight to the transaction.
            Ok(Err(ModuleError::NeedsTransaction)) => deferred_first = false,
            Ok(Err(e)) => {
                tracing::debug!(bot_id = self.ctx.bot_id, error = %crate::mask::error_line(&e), "fresh batch failed as one statement; storing it first");
            }
            // A panic may have left the connection mid-statement: a fresh one stores.
            Err(_) => {
                conn.discard();
                (conn, stored) = self.connection_for_fresh(None, stored).await?;
            }
        }
        let stored_batch = store::store_batch(&mut conn, self.ctx.telegram_id, &rows, next_offset)
            .await
            .map_err(|e| crate::mask::error_line(&e));
        let inserted = match &stored_batch {
            Ok(Stored::Stored { inserted, .. }) => inserted.clone(),
            Ok(Stored::Blocked(_)) => Vec::new(),
            Err(_) => {
                let _ = stored.send(stored_batch);
                return None;
            }
        };
        let _ = stored.send(stored_batch);
        let batch: Vec<Update> = ids
            .into_iter()
            .zip(updates)
            .filter(|(id, _)| inserted.contains(id))
            .map(|(_, u)| u)
            .collect();
        if batch.is_empty() {
            return Some(conn);
        }
        self.batch(conn, &batch, taken, deferred_first).await
    }

    /// What follows a committed unit of work: metrics, and the hand-over of its effects.
    fn handled(&self, (queued, jobs): Effects, processed: u64, taken: Instant) {
        metrics::updates_processed(self.ctx.bot_id, processed);
        self.ctx.traffic.handled(processed as usize);
        self.ctx.quiet.touch();
        self.ctx.hand_over(queued, &jobs, taken);
    }

    /// One batch in one transaction (tried as one statement first when `deferred_first`);
    /// falls back to one transaction per update on any error. Returns the connection when it
    /// is fit for reuse.
    async fn batch(
        &self,
        mut conn: BudgetConn,
        batch: &[Update],
        taken: Instant,
        deferred_first: bool,
    ) -> Option<BudgetConn> {
        let together = AssertUnwindSafe(self.together(&mut conn, batch, deferred_first))
            .catch_unwind()
            .await;
        match together {
            Ok(Ok((effects, processed))) => {
                self.handled(effects, processed, taken);
                conn.vouch();
                Some(conn)
            }
            // The transaction was rolled back (or will be, before the connection's next use);
            // nothing of the batch happened. Once more, one update at a time.
            failed => {
                if let Ok(Err(e)) = &failed {
                    tracing::debug!(bot_id = self.ctx.bot_id, error = %crate::mask::error_line(e), "batch failed; processing its updates one by one");
                }
                drop(conn);
                for update in batch {
                    self.one(update, taken).await;
                    if self.ctx.failures.failed().is_cancelled() {
                        break;
                    }
                }
                None
            }
        }
    }

    /// The batch as one statement when its steps only write ([`Self::deferred`], skipped
    /// unless `deferred_first`), else in one transaction: claim all, run the chains, commit.
    /// Returns the requests it queued and how many updates it processed (the others were
    /// processed before).
    async fn together(
        &self,
        conn: &mut BudgetConn,
        batch: &[Update],
        deferred_first: bool,
    ) -> Result<(Effects, u64), ModuleError> {
        let ctx = &self.ctx;
        let snapshot = ctx.snapshot.load();
        let ids: Vec<i64> = batch.iter().map(|u| i64::from(u.id.0)).collect();
        if deferred_first {
            match self
                .deferred(conn, batch, &snapshot, Claim::Stored(&ids))
                .await
            {
                Err(ModuleError::NeedsTransaction) => {}
                done => return done.map(|d| (d.effects, d.processed)),
            }
        }
        let mut tx = sqlx::Connection::begin(&mut **conn).await?;
        let claimed = store::claim_updates(&mut tx, ctx.telegram_id, &ids).await?;
        let (mut queued, mut jobs) = (Vec::new(), Vec::new());
        for update in batch {
            if !claimed.contains(&i64::from(update.id.0)) {
                continue;
            }
            let (q, j) = chain(&self.me, update, ctx, &snapshot, &mut tx).await?;
            queued.extend(q);
            for job in j {
                if !jobs.contains(&job) {
                    jobs.push(job);
                }
            }
        }
        tx.commit().await?;
        Ok(((queued, jobs), claimed.len() as u64))
    }

    /// The batch without a transaction: the chains run first, their writes deferred
    /// ([`UpdateCx::deferred`]), then one statement claims the batch and writes what the
    /// claimed updates left (`modules::store::apply_deferred`) — one round trip and one
    /// commit. A step that needs the database fails with [`ModuleError::NeedsTransaction`]
    /// before anything was written, and the batch runs in a transaction instead.
    async fn deferred(
        &self,
        conn: &mut BudgetConn,
        batch: &[Update],
        snapshot: &crate::content::snapshot::Snapshot,
        claim: Claim<'_>,
    ) -> Result<DeferredDone, ModuleError> {
        let ctx = &self.ctx;
        let mut writes = modules::store::Deferred::default();
        let mut effects = Vec::with_capacity(batch.len());
        for update in batch {
            let mut cx = UpdateCx::deferred(
                ctx.bot_id,
                ctx.telegram_id,
                update,
                &self.me,
                snapshot,
                &mut writes,
            );
            run_chain(&mut cx, ctx, snapshot).await?;
            effects.push((i64::from(update.id.0), cx.into_effects()));
        }
        let applied = modules::store::apply_deferred(conn, ctx.telegram_id, claim, &writes).await?;
        let mut outbox_ids = applied.outbox_ids.into_iter();
        let (mut queued, mut jobs) = (Vec::new(), Vec::new());
        for (id, (q, j)) in effects {
            if !applied.claimed.contains(&id) {
                continue;
            }
            for mut request in q {
                // The statement returns one id per request of a claimed update, in order.
                let Some(outbox_id) = outbox_ids.next() else {
                    // Cannot happen; if it did, the rows are committed but not handed over:
                    // end the run, and the next run's sender reads them from the outbox.
                    ctx.failures
                        .report(ModuleError::Database(sqlx::Error::Protocol(
                            "the batch's statement returned fewer outbox ids than requests".into(),
                        )));
                    break;
                };
                request.row.id = outbox_id;
                queued.push(request);
            }
            for job in j {
                if !jobs.contains(&job) {
                    jobs.push(job);
                }
            }
        }
        Ok(DeferredDone {
            effects: (queued, jobs),
            processed: applied.claimed.len() as u64,
            inserted: applied.inserted,
            suspicious: applied.suspicious,
        })
    }

    /// One update in its own transaction, with its failure isolated: poisoned on a panic or a
    /// poison error, reported to the run otherwise.
    async fn one(&self, update: &Update, taken: Instant) {
        let ctx = &self.ctx;
        let bot_id = ctx.bot_id;
        let update_id = i64::from(update.id.0);
        let outcome = AssertUnwindSafe(process(&self.me, update, ctx, taken))
            .catch_unwind()
            .await;
        let poison = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(ModuleError::Poison(reason))) => Some(reason),
            // Text PostgreSQL cannot store (a NUL, an invalid byte sequence) fails the same
            // way on every replay: poison it rather than restart the bot forever.
            Ok(Err(e)) if is_unstorable_text(&e) => Some(crate::mask::error_line(&e)),
            Ok(Err(e)) if e.is_unauthorized() => {
                ctx.failures.report(e);
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(bot_id, update_id, error = %crate::mask::error_line(&e), "update failed; the bot restarts and replays it");
                ctx.failures.report(e);
                None
            }
            Err(panic) => Some(format!("handler panicked: {}", panic_message(&panic))),
        };
        if let Some(reason) = poison {
            metrics::update_poisoned(bot_id, update_id, PoisonedAt::Handler, &reason, None);
            let marked = async {
                let mut conn = ctx.db.acquire().await?;
                store::mark_poisoned(&mut conn, ctx.telegram_id, update_id, &reason).await?;
                Ok::<(), ModuleError>(())
            }
            .await;
            if let Err(e) = marked {
                ctx.failures.report(e);
            }
        }
    }
}

/// Whether `e` is PostgreSQL refusing the text it was given (SQLSTATE 22021 character not in
/// repertoire, 22P05 untranslatable character).
fn is_unstorable_text(e: &ModuleError) -> bool {
    match e {
        ModuleError::Database(sqlx::Error::Database(db)) => {
            matches!(db.code().as_deref(), Some("22021" | "22P05"))
        }
        _ => false,
    }
}

async fn process(
    me: &Me,
    update: &Update,
    ctx: &BotContext,
    taken: Instant,
) -> Result<(), ModuleError> {
    let update_id = i64::from(update.id.0);
    let snapshot = ctx.snapshot.load();
    let mut conn = ctx.db.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    if !store::claim_update(&mut tx, ctx.telegram_id, update_id).await? {
        return Ok(());
    }
    let (queued, jobs) = chain(me, update, ctx, &snapshot, &mut tx).await?;
    tx.commit().await?;
    metrics::updates_processed(ctx.bot_id, 1);
    ctx.traffic.handled(1);
    ctx.quiet.touch();
    ctx.hand_over(queued, &jobs, taken);
    Ok(())
}

/// Runs the module chain for one claimed update inside `tx`; returns the requests it queued
/// and the modules whose jobs it asked to wake.
async fn chain(
    me: &Me,
    update: &Update,
    ctx: &BotContext,
    snapshot: &crate::content::snapshot::Snapshot,
    tx: &mut sqlx::PgConnection,
) -> Result<Effects, ModuleError> {
    let mut cx = UpdateCx::new(ctx.bot_id, ctx.telegram_id, update, me, snapshot, tx);
    run_chain(&mut cx, ctx, snapshot).await?;
    Ok(cx.into_effects())
}

/// Every module enabled for `snapshot`, in registry order, until one stops the chain.
async fn run_chain(
    cx: &mut UpdateCx<'_>,
    ctx: &BotContext,
    snapshot: &crate::content::snapshot::Snapshot,
) -> Result<(), ModuleError> {
    for module in ctx.registry.enabled(snapshot) {
        cx.set_module(module.name());
        if module.on_update(cx).await? == Flow::Stop {
            break;
        }
    }
    Ok(())
}
