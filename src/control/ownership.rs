//! Which bots this instance owns, when several `serve` processes share one panel.
//!
//! Each bot is owned by exactly one instance through a PostgreSQL *session* advisory lock
//! (key: [`store::OWNERSHIP_SPACE`] in the high 32 bits, the bot id in the low 32) held on
//! the instance's own dedicated control connection — never a pooled one, whose session would
//! outlive our use of it. PostgreSQL releases the locks when that session ends (kill -9, lost
//! network), so a dead instance's bots are free at once.
//!
//! One ownership pass ([`Ownership::pass`], every [`PASS_EVERY`] from the reconcile loop):
//! 1. heartbeat: refresh this instance's row in `instances` (with its control backend pid, so
//!    the others see it die through `pg_stat_activity` without waiting for a stale heartbeat);
//! 2. read the live instances, the enabled bots, who holds which lock, and which bots another
//!    instance's status row says it may still be running;
//! 3. compute the share: every instance computes the same assignment ([`assign`]: rendezvous
//!    hashing with a capacity of ceil(bots / live instances)), so bots do not shuffle needlessly
//!    when the set changes;
//! 4. hand over what is no longer ours: the supervisor stops the run, and only once it fully
//!    stopped (offset confirmed, inbox committed) is the lock released ([`Ownership::release`]);
//! 5. take what is ours and free: `pg_try_advisory_lock`, never waiting. A bot whose status
//!    row says another instance may still run it (that instance's control session is gone but its
//!    heartbeat is younger than [`FENCE_GRACE`]) waits: that instance fences itself within a
//!    pass, and the grace covers it. On this host a dead process id shortens the wait.
//!
//! Every statement on the control connection has a deadline ([`OP_TIMEOUT`]): a lock operation
//! never hangs the reconcile loop. An error or a timeout drops the connection (which releases
//! every lock) and the supervisor fences: it stops every bot it owned at once. See
//! docs/architecture.md, "Several instances", for the split-brain analysis.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};

use crate::panel::PanelError;
use crate::panel::store::{self, InstanceBeat, OwnershipView};

/// How often the ownership pass runs (it is also the instance heartbeat).
pub const PASS_EVERY: Duration = Duration::from_secs(1);
/// Deadline of one statement on the control connection; past it the connection is dropped
/// (which releases its locks) and the instance fences.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a bot whose previous instance lost its control session waits before another
/// instance takes it: longer than that instance needs to notice and stop (one pass plus one
/// statement deadline).
pub const FENCE_GRACE: Duration = Duration::from_secs(5);

/// Rendezvous score of (bot, instance): FNV-1a over the name and the id, then a 64-bit
/// finaliser (stable across builds and platforms, unlike `std`'s hasher).
fn score(bot: i64, instance: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in instance.bytes().chain(bot.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The fair assignment of `bots` to `instances`: each instance gets at most
/// ceil(bots / instances); every pair (bot, instance) is ranked by its rendezvous score and
/// taken greedily, so a bot stays with its preferred instance unless that one is full, and an
/// instance joining or leaving moves only about its share. Deterministic: every instance
/// computes the same map from the same input.
pub fn assign<'a>(bots: &[i64], instances: &'a [String]) -> BTreeMap<i64, &'a str> {
    let mut out = BTreeMap::new();
    if instances.is_empty() {
        return out;
    }
    let cap = bots.len().div_ceil(instances.len());
    let mut pairs: Vec<(u64, i64, usize)> = Vec::with_capacity(bots.len() * instances.len());
    for &bot in bots {
        for (i, name) in instances.iter().enumerate() {
            pairs.push((score(bot, name), bot, i));
        }
    }
    // Highest score first; ties (practically never) by bot id then instance index.
    pairs.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut load = vec![0usize; instances.len()];
    for (_, bot, i) in pairs {
        if load[i] < cap && !out.contains_key(&bot) {
            out.insert(bot, instances[i].as_str());
            load[i] += 1;
        }
    }
    out
}

/// Errors of the control connection.
#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    /// A statement failed (the connection is dropped).
    #[error("control connection to the panel failed")]
    Panel(#[from] PanelError),
    /// Opening the control connection failed.
    #[error("cannot open the control connection to the panel")]
    Connect(#[source] sqlx::Error),
    /// A statement did not answer within [`OP_TIMEOUT`].
    #[error("control connection to the panel did not answer within {}s", OP_TIMEOUT.as_secs())]
    Timeout,
}

/// What one pass decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PassOutcome {
    /// Locks taken in this pass: start these bots.
    pub taken: Vec<i64>,
    /// Bots still owned but now another instance's share: stop them, then
    /// [`Ownership::release`] each once its run ended.
    pub give: Vec<i64>,
    /// Running bots whose lock this instance could not take back (after a lost connection
    /// another instance took them): stop at once.
    pub lost: Vec<i64>,
    /// Live instances, this one included.
    pub instances: usize,
    /// Bots in this instance's fair share ([`assign`]) after the pass.
    pub assigned: usize,
    /// Bots of the share whose lock this instance does not hold after the pass (another
    /// session holds it, or a previous owner's grace runs), lowest ids first.
    pub unowned: Vec<i64>,
    /// Another live instance uses this instance's name: this one owns nothing.
    pub name_clash: bool,
    /// PostgreSQL's lock table had no room for more ownership locks (by its documented size):
    /// some bots of the share could not be taken (they are in `unowned`); nothing held was
    /// given up.
    pub lock_table_full: bool,
}

/// This instance, as the decision sees it.
#[derive(Debug, Clone, Copy)]
pub struct Me<'a> {
    /// Instance name.
    pub name: &'a str,
    /// Backend pid of its control session.
    pub backend: i32,
    /// Its host.
    pub host: &'a str,
}

/// The decision of one pass, as a pure function of what the pass read (tested as a table):
/// (locks to try, held bots to hand over).
pub fn decide(
    here: Me<'_>,
    view: &OwnershipView,
    held: &BTreeSet<i64>,
    handing_over: &BTreeSet<i64>,
    running: &BTreeSet<i64>,
    process_gone: &dyn Fn(i32) -> bool,
) -> (Vec<i64>, Vec<i64>) {
    let d = decide_share(here, view, held, handing_over, running, process_gone);
    (d.want, d.give)
}

/// What [`decide_share`] decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Locks to try.
    pub want: Vec<i64>,
    /// Held bots to hand over.
    pub give: Vec<i64>,
    /// This instance's fair share.
    pub mine: BTreeSet<i64>,
}

/// [`decide`], with the share it computed (readiness compares it with what is held).
pub fn decide_share(
    here: Me<'_>,
    view: &OwnershipView,
    held: &BTreeSet<i64>,
    handing_over: &BTreeSet<i64>,
    running: &BTreeSet<i64>,
    process_gone: &dyn Fn(i32) -> bool,
) -> Decision {
    let Me {
        name: me,
        backend: my_pid,
        host,
    } = here;
    let mut names: Vec<String> = view.instances.iter().map(|(n, _)| n.clone()).collect();
    if !names.iter().any(|n| n == me) {
        names.push(me.to_owned());
    }
    names.sort();
    names.dedup();
    let bots: Vec<i64> = view
        .bots
        .iter()
        .copied()
        .filter(|&id| (0..=store::MAX_OWNED_ID).contains(&id))
        .collect();
    let assignment = assign(&bots, &names);
    let mine: BTreeSet<i64> = assignment
        .iter()
        .filter(|(_, n)| **n == me)
        .map(|(id, _)| *id)
        .collect();
    let give: Vec<i64> = held.difference(&mine).copied().collect();
    let others: HashMap<i64, i32> = view
        .holders
        .iter()
        .filter(|(_, pid)| *pid != my_pid)
        .copied()
        .collect();
    let live: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let grace = FENCE_GRACE.as_secs_f64();
    let waiting: BTreeSet<i64> = view
        .running_elsewhere
        .iter()
        .filter(|r| {
            let dead_here = r.host == host && process_gone(r.pid);
            !live.contains(r.instance.as_str()) && r.heartbeat_age < grace && !dead_here
        })
        .map(|r| r.bot_id)
        .collect();
    // Ours and free; plus bots still running here without a lock (the connection was lost
    // while this instance was alone): take those back first, whatever the share says.
    let want: Vec<i64> = mine
        .iter()
        .chain(running.iter())
        .filter(|id| !held.contains(id) && !handing_over.contains(id))
        .filter(|id| !others.contains_key(id) && !waiting.contains(id))
        .copied()
        .collect::<BTreeSet<i64>>()
        .into_iter()
        .filter(|&id| (0..=store::MAX_OWNED_ID).contains(&id))
        .collect();
    Decision { want, give, mine }
}

/// The control connection and the locks it holds.
pub struct Ownership {
    panel: PgPool,
    conn: Option<PgConnection>,
    backend: i32,
    held: BTreeSet<i64>,
    handing_over: BTreeSet<i64>,
    peers: bool,
    clash_logged: bool,
    /// The panel server's lock table, read when the control connection opens.
    lock_table: Option<store::LockTable>,
    /// Whether the lock table's full state (or its being too small for the bots) was logged.
    full_logged: bool,
    small_logged: bool,
}

impl Ownership {
    /// Ownership over `panel`; nothing is connected until the first pass.
    pub fn new(panel: PgPool) -> Self {
        Self {
            panel,
            conn: None,
            backend: 0,
            held: BTreeSet::new(),
            handing_over: BTreeSet::new(),
            peers: false,
            clash_logged: false,
            lock_table: None,
            full_logged: false,
            small_logged: false,
        }
    }

    /// Bots whose lock this instance holds (and is not handing over).
    pub fn owned(&self) -> &BTreeSet<i64> {
        &self.held
    }

    /// Whether another live instance was seen at the latest successful pass.
    pub fn had_peers(&self) -> bool {
        self.peers
    }

    /// Forgets the connection and every lock (PostgreSQL released them with the session).
    pub fn drop_connection(&mut self) {
        self.conn = None;
        self.held.clear();
        self.handing_over.clear();
    }

    async fn timed<T>(f: impl Future<Output = Result<T, PanelError>>) -> Result<T, OwnershipError> {
        match tokio::time::timeout(OP_TIMEOUT, f).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(OwnershipError::Timeout),
        }
    }

    /// One pass (see the module docs). `running`: bots with a slot here. On an error the
    /// connection is dropped (its locks with it); the caller fences.
    pub async fn pass(
        &mut self,
        me: &InstanceBeat<'_>,
        running: &BTreeSet<i64>,
    ) -> Result<PassOutcome, OwnershipError> {
        let r = self.pass_inner(me, running).await;
        if r.is_err() {
            self.drop_connection();
        }
        r
    }

    async fn pass_inner(
        &mut self,
        me: &InstanceBeat<'_>,
        running: &BTreeSet<i64>,
    ) -> Result<PassOutcome, OwnershipError> {
        if self.conn.is_none() {
            let opts = self.panel.connect_options();
            let conn =
                match tokio::time::timeout(OP_TIMEOUT, PgConnection::connect_with(&opts)).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return Err(OwnershipError::Connect(e)),
                    Err(_) => return Err(OwnershipError::Timeout),
                };
            self.conn = Some(conn);
            self.held.clear();
            self.handing_over.clear();
            let conn = self.conn.as_mut().expect("just set");
            self.backend = Self::timed(store::control_backend(conn)).await?;
            self.lock_table = Some(Self::timed(store::lock_table(conn)).await?);
            tracing::info!(control_pid = self.backend, "control connection open");
        }
        let conn = self.conn.as_mut().expect("connected above");
        let owned = i32::try_from(self.held.len()).unwrap_or(i32::MAX);
        if let Some(clash) = Self::timed(store::beat_instance(conn, me, owned)).await? {
            if !self.clash_logged {
                self.clash_logged = true;
                tracing::error!(
                    other_pid = clash.pid,
                    other_host = %clash.host,
                    instance = %me.name,
                    "another live botvisor instance uses this instance name; this one owns no \
                     bots until it stops (give each instance its own supervisor.instance)"
                );
            }
            let give: Vec<i64> = self.held.iter().copied().collect();
            return Ok(PassOutcome {
                give,
                name_clash: true,
                ..PassOutcome::default()
            });
        }
        self.clash_logged = false;
        let view = Self::timed(store::ownership_view(conn, me.name)).await?;
        let here = Me {
            name: me.name,
            backend: self.backend,
            host: me.host,
        };
        let Decision { want, give, mine } = decide_share(
            here,
            &view,
            &self.held,
            &self.handing_over,
            running,
            &super::process_gone,
        );
        let table = self.lock_table.unwrap_or(store::LockTable {
            per_transaction: i64::MAX / 2,
            slots: 1,
        });
        let locked = Self::timed(store::try_lock_bots(conn, &want, table)).await?;
        let taken = locked.taken;
        let taken_set: BTreeSet<i64> = taken.iter().copied().collect();
        self.held.extend(taken.iter().copied());
        self.report_lock_table(view.bots.len(), locked.table_full);
        for id in &give {
            self.held.remove(id);
            self.handing_over.insert(*id);
        }
        let lost: Vec<i64> = running
            .iter()
            .filter(|id| {
                !self.held.contains(id)
                    && !self.handing_over.contains(id)
                    && !taken_set.contains(id)
            })
            .copied()
            .collect();
        let instances = view.instances.len().max(1);
        self.peers = view.instances.iter().any(|(n, _)| n != me.name);
        let unowned: Vec<i64> = mine.difference(&self.held).copied().collect();
        Ok(PassOutcome {
            assigned: mine.len(),
            unowned,
            name_clash: false,
            taken: taken
                .into_iter()
                .filter(|id| !running.contains(id))
                .collect(),
            give,
            lost,
            instances,
            lock_table_full: locked.table_full,
        })
    }

    /// Logs, once per change, that the panel server's lock table is full (some bots of the
    /// share could not be taken) or sized below twice the enabled bots' ownership locks.
    fn report_lock_table(&mut self, bots: usize, full: bool) {
        let Some(table) = self.lock_table else {
            return;
        };
        let bots = i64::try_from(bots).unwrap_or(i64::MAX);
        let advice = table.per_transaction_for(bots);
        if full && !self.full_logged {
            tracing::error!(
                held = self.held.len(),
                lock_table = table.size(),
                max_locks_per_transaction = table.per_transaction,
                advice,
                "the panel server's lock table has no room for more ownership locks: some \
                 bots of this instance's share stay stopped until there is room; raise \
                 max_locks_per_transaction on the panel server to `advice` and restart it \
                 (docs/operations.md, \"Thousands of bots\")"
            );
        }
        self.full_logged = full;
        let small = 2 * bots > table.size();
        if small && !self.small_logged {
            tracing::warn!(
                bots,
                lock_table = table.size(),
                max_locks_per_transaction = table.per_transaction,
                advice,
                "each enabled bot holds an ownership lock on the panel server, whose lock table \
                 (shared by every session of that server) is sized for fewer than twice as \
                 many; raise max_locks_per_transaction there to `advice` and restart it \
                 (docs/operations.md, \"Thousands of bots\")"
            );
        }
        self.small_logged = small;
    }

    /// Releases the locks of `ids` whose runs have fully ended (hand-over done).
    pub async fn release(&mut self, ids: &[i64]) -> Result<(), OwnershipError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let r = Self::timed(store::unlock_bots(conn, ids)).await;
        match r {
            Ok(()) => {
                for id in ids {
                    self.handing_over.remove(id);
                }
                Ok(())
            }
            Err(e) => {
                self.drop_connection();
                Err(e)
            }
        }
    }

    /// Bots being handed over (stopping here, lock still held).
    pub fn handing_over(&self) -> &BTreeSet<i64> {
        &self.handing_over
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::panel::store::RunningElsewhere;

    fn at(host: &str) -> Me<'_> {
        Me {
            name: "a",
            backend: 10,
            host,
        }
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_lock_table_advice_holds_twice_the_bots() {
        let table = store::LockTable {
            per_transaction: 64,
            slots: 100,
        };
        assert_eq!(table.size(), 6_400);
        assert_eq!(table.per_transaction_for(100), 64);
        assert_eq!(table.per_transaction_for(3_200), 64);
        assert_eq!(table.per_transaction_for(3_201), 128);
        assert_eq!(table.per_transaction_for(10_000), 256);
        assert_eq!(table.per_transaction_for(0), 64);
    }

    #[test]
    fn shares_are_fair_and_stable() {
        let bots: Vec<i64> = (1..=200).collect();
        let two = names(&["alpha", "beta"]);
        let a = assign(&bots, &two);
        assert_eq!(a.len(), 200);
        for n in &two {
            assert_eq!(a.values().filter(|v| *v == n).count(), 100, "{n}");
        }
        let three = names(&["alpha", "beta", "gamma"]);
        let b = assign(&bots, &three);
        for n in &three {
            assert!(b.values().filter(|v| *v == n).count() <= 67, "{n}");
        }
        // Joining moves about a third, not everything.
        let moved = bots.iter().filter(|id| a[id] != b[id]).count();
        assert!(moved <= 100, "{moved} bots moved when gamma joined");
        // Deterministic.
        assert_eq!(assign(&bots, &three), b);
        // A single instance takes all; none takes nothing.
        assert_eq!(assign(&bots, &names(&["solo"])).len(), 200);
        assert!(assign(&bots, &[]).is_empty());
    }

    fn view(instances: &[(&str, i32)], bots: &[i64], holders: &[(i64, i32)]) -> OwnershipView {
        OwnershipView {
            instances: instances.iter().map(|(n, p)| ((*n).into(), *p)).collect(),
            bots: bots.to_vec(),
            holders: holders.to_vec(),
            running_elsewhere: Vec::new(),
        }
    }

    #[test]
    fn decisions_are_the_table() {
        let none = BTreeSet::new();
        let set = |ids: &[i64]| ids.iter().copied().collect::<BTreeSet<i64>>();
        let alive = |_: i32| false;
        // Alone: every free bot is wanted; nothing given.
        let v = view(&[("a", 10)], &[1, 2, 3], &[]);
        assert_eq!(
            decide(at("h"), &v, &none, &none, &none, &alive),
            (vec![1, 2, 3], vec![])
        );
        // A bot held by another session is not asked for.
        let v = view(&[("a", 10)], &[1, 2, 3], &[(2, 99)]);
        assert_eq!(
            decide(at("h"), &v, &none, &none, &none, &alive).0,
            vec![1, 3]
        );
        // Held bots that are not ours any more are given; held ones are not asked again.
        let bots: Vec<i64> = (1..=10).collect();
        let v = view(&[("a", 10), ("b", 11)], &bots, &[]);
        let all: BTreeSet<i64> = bots.iter().copied().collect();
        let (want, give) = decide(at("h"), &v, &all, &none, &none, &alive);
        assert!(want.is_empty());
        assert_eq!(give.len(), 5);
        // A bot another instance may still run waits for the grace, unless its process is
        // gone on this host.
        let mut v = view(&[("a", 10)], &[1], &[]);
        v.running_elsewhere.push(RunningElsewhere {
            bot_id: 1,
            instance: "b".into(),
            heartbeat_age: 1.0,
            pid: 4242,
            host: "h".into(),
        });
        assert!(
            decide(at("h"), &v, &none, &none, &none, &alive)
                .0
                .is_empty()
        );
        assert_eq!(
            decide(at("h"), &v, &none, &none, &none, &|_| true).0,
            vec![1]
        );
        assert!(
            decide(at("other-host"), &v, &none, &none, &none, &|_| true)
                .0
                .is_empty()
        );
        v.running_elsewhere[0].heartbeat_age = FENCE_GRACE.as_secs_f64() + 1.0;
        assert_eq!(decide(at("h"), &v, &none, &none, &none, &alive).0, vec![1]);
        // A bot running here without a lock (connection lost while alone) is taken back
        // even when not in the share; one being handed over is not.
        let v = view(&[("a", 10), ("b", 11)], &[1, 2, 3, 4], &[]);
        let (want, _) = decide(at("h"), &v, &none, &set(&[4]), &set(&[1, 2, 3, 4]), &alive);
        assert!(want.contains(&1) && want.contains(&2) && want.contains(&3));
        assert!(!want.contains(&4));
    }
}
