//! The control plane's decision, as a pure function: desired rows × running slots → actions.
//!
//! [`plan`] reads nothing and changes nothing; the reconcile loop (`control::Supervisor`)
//! loads the panel rows, asks for a plan and carries it out. Every rule of reconciliation is
//! here, tested as a table below. With several instances, `owned` (the bots whose advisory
//! lock this instance holds, see [`super::ownership`]) limits what may run here: a bot owned
//! elsewhere is neither started nor rejected here, and stops if it still runs here.

use std::collections::{BTreeMap, BTreeSet};

use crate::content::snapshot::Fingerprint;

/// What the panel wants of one bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Panel id.
    pub id: i64,
    /// Whether it should run.
    pub enabled: bool,
    /// The row's version (moves on every change of the row).
    pub version: i64,
    /// The manifest + texts fingerprint.
    pub fingerprint: Fingerprint,
    /// Why its token cannot be used, if it cannot.
    pub invalid_token: Option<String>,
}

/// What runs for one bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// The row version its slot was last given.
    pub version: i64,
    /// The fingerprint of its current snapshot.
    pub fingerprint: Fingerprint,
}

/// Which bots a pass looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every bot: a running bot missing from the rows was removed.
    All,
    /// Only these: one of them missing from the rows was removed; others are untouched.
    Only(BTreeSet<i64>),
}

/// What the pass was asked for besides reconciling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Asked {
    /// Reload every bot's content even if its fingerprint did not move.
    pub reload_all: bool,
    /// Reload these bots' content even if their fingerprint did not move.
    pub reload: BTreeSet<i64>,
    /// Wake these modules' jobs: (bot, module).
    pub wake: Vec<(i64, String)>,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a slot for this bot.
    Start(i64),
    /// Stop this bot's slot.
    Stop(i64),
    /// Mark this bot failed: its row cannot be run (the reason says why).
    Reject(i64, String),
    /// Hand the slot the bot's changed row (a token or database change restarts the run).
    Respec(i64),
    /// Rebuild and swap in the bot's content snapshot.
    Reload(i64),
    /// Wake module `.1`'s job of this bot.
    Wake(i64, String),
}

/// The actions that bring `running` in line with `desired`, in a deterministic order (stops
/// first, then per bot in id order).
pub fn plan(
    scope: &Scope,
    desired: &[Desired],
    running: &BTreeMap<i64, Running>,
    asked: &Asked,
    owned: &BTreeSet<i64>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let present: BTreeSet<i64> = desired.iter().map(|d| d.id).collect();
    let gone: Vec<i64> = match scope {
        Scope::All => running
            .keys()
            .filter(|id| !present.contains(id))
            .copied()
            .collect(),
        Scope::Only(ids) => ids
            .iter()
            .filter(|id| !present.contains(id) && running.contains_key(id))
            .copied()
            .collect(),
    };
    actions.extend(gone.into_iter().map(Action::Stop));
    let mut desired: Vec<&Desired> = desired.iter().collect();
    desired.sort_by_key(|d| d.id);
    for d in desired {
        let slot = running.get(&d.id);
        if !d.enabled || !owned.contains(&d.id) {
            if slot.is_some() {
                actions.push(Action::Stop(d.id));
            }
            continue;
        }
        if let Some(reason) = &d.invalid_token {
            if slot.is_some() {
                actions.push(Action::Stop(d.id));
            }
            actions.push(Action::Reject(d.id, reason.clone()));
            continue;
        }
        match slot {
            None => actions.push(Action::Start(d.id)),
            Some(r) => {
                if r.version != d.version {
                    actions.push(Action::Respec(d.id));
                }
                if asked.reload_all
                    || asked.reload.contains(&d.id)
                    || r.fingerprint != d.fingerprint
                {
                    actions.push(Action::Reload(d.id));
                }
            }
        }
    }
    for (id, module) in &asked.wake {
        let starting = actions.contains(&Action::Start(*id));
        let stopping = actions.contains(&Action::Stop(*id));
        if (running.contains_key(id) || starting) && !stopping {
            actions.push(Action::Wake(*id, module.clone()));
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: i64, enabled: bool, version: i64, fp: i64) -> Desired {
        Desired {
            id,
            enabled,
            version,
            fingerprint: (fp, 0, None),
            invalid_token: None,
        }
    }

    fn r(version: i64, fp: i64) -> Running {
        Running {
            version,
            fingerprint: (fp, 0, None),
        }
    }

    #[test]
    fn plans_are_the_table() {
        use Action::*;
        let only = |ids: &[i64]| Scope::Only(ids.iter().copied().collect());
        let bad = Desired {
            invalid_token: Some("bad token".into()),
            ..d(5, true, 1, 1)
        };
        let reload_2 = Asked {
            reload: [2].into(),
            ..Asked::default()
        };
        let wake = |id: i64| Asked {
            wake: vec![(id, "echo".into())],
            ..Asked::default()
        };
        type Case<'a> = (
            &'a str,
            Scope,
            Vec<Desired>,
            Vec<(i64, Running)>,
            Asked,
            Vec<Action>,
        );
        let cases: Vec<Case> = vec![
            (
                "new enabled bot starts",
                Scope::All,
                vec![d(1, true, 1, 1)],
                vec![],
                Asked::default(),
                vec![Start(1)],
            ),
            (
                "disabled new bot stays off",
                Scope::All,
                vec![d(1, false, 1, 1)],
                vec![],
                Asked::default(),
                vec![],
            ),
            (
                "disabled running bot stops",
                Scope::All,
                vec![d(1, false, 2, 1)],
                vec![(1, r(1, 1))],
                Asked::default(),
                vec![Stop(1)],
            ),
            (
                "removed bot stops on a full pass",
                Scope::All,
                vec![],
                vec![(1, r(1, 1))],
                Asked::default(),
                vec![Stop(1)],
            ),
            (
                "removed bot stops on its own pass",
                only(&[1]),
                vec![],
                vec![(1, r(1, 1)), (2, r(1, 1))],
                Asked::default(),
                vec![Stop(1)],
            ),
            (
                "a partial pass leaves others alone",
                only(&[3]),
                vec![],
                vec![(1, r(1, 1))],
                Asked::default(),
                vec![],
            ),
            (
                "unchanged bot: nothing",
                Scope::All,
                vec![d(1, true, 1, 1)],
                vec![(1, r(1, 1))],
                Asked::default(),
                vec![],
            ),
            (
                "changed row is handed over",
                Scope::All,
                vec![d(1, true, 2, 1)],
                vec![(1, r(1, 1))],
                Asked::default(),
                vec![Respec(1)],
            ),
            (
                "changed content reloads",
                Scope::All,
                vec![d(1, true, 1, 2)],
                vec![(1, r(1, 1))],
                Asked::default(),
                vec![Reload(1)],
            ),
            (
                "both",
                Scope::All,
                vec![d(1, true, 2, 2)],
                vec![(1, r(1, 1))],
                Asked::default(),
                vec![Respec(1), Reload(1)],
            ),
            (
                "asked reload of one",
                Scope::All,
                vec![d(1, true, 1, 1), d(2, true, 1, 1)],
                vec![(1, r(1, 1)), (2, r(1, 1))],
                reload_2,
                vec![Reload(2)],
            ),
            (
                "asked reload of all",
                Scope::All,
                vec![d(1, true, 1, 1)],
                vec![(1, r(1, 1))],
                Asked {
                    reload_all: true,
                    ..Asked::default()
                },
                vec![Reload(1)],
            ),
            (
                "an invalid token stops and rejects",
                Scope::All,
                vec![bad.clone()],
                vec![(5, r(1, 1))],
                Asked::default(),
                vec![Stop(5), Reject(5, "bad token".into())],
            ),
            (
                "an invalid token of a new bot rejects",
                Scope::All,
                vec![bad],
                vec![],
                Asked::default(),
                vec![Reject(5, "bad token".into())],
            ),
            (
                "wake a running bot's job",
                Scope::Only(BTreeSet::new()),
                vec![],
                vec![(1, r(1, 1))],
                wake(1),
                vec![Wake(1, "echo".into())],
            ),
            (
                "wake a bot that is not running: nothing",
                Scope::Only(BTreeSet::new()),
                vec![],
                vec![],
                wake(1),
                vec![],
            ),
            (
                "wake a bot being stopped: nothing",
                Scope::All,
                vec![d(1, false, 2, 1)],
                vec![(1, r(1, 1))],
                wake(1),
                vec![Stop(1)],
            ),
            (
                "a bot owned elsewhere stops here and is not started",
                Scope::All,
                vec![d(7, true, 1, 1), d(8, true, 1, 1)],
                vec![(7, r(1, 1))],
                Asked::default(),
                vec![Stop(7)],
            ),
            (
                "stops come first",
                Scope::All,
                vec![d(2, true, 1, 1)],
                vec![(9, r(1, 1))],
                Asked::default(),
                vec![Stop(9), Start(2)],
            ),
        ];
        for (name, scope, desired, running, asked, expected) in cases {
            let running: BTreeMap<i64, Running> = running.into_iter().collect();
            // Every bot is owned here, except 7 and 8 (owned by another instance).
            let owned: BTreeSet<i64> = (0..100).filter(|id| *id != 7 && *id != 8).collect();
            assert_eq!(
                plan(&scope, &desired, &running, &asked, &owned),
                expected,
                "{name}"
            );
        }
    }
}
