//! Where the CPU went during a phase, from `/proc`: the whole machine, the daemon, the bench
//! and the PostgreSQL processes — the poor man's profile printed with the figures, and the
//! numerator of the machine-independent costs (CPU microseconds per update or insert).
//!
//! PostgreSQL's CPU is split by whom it served, from each process's command line
//! (`postgres: <user> <database> …`): backends of the bench's own databases (the panel and
//! every `<panel>_bot_%`), auxiliary processes that serve every database (postmaster,
//! walwriter, checkpointer, background writer, autovacuum), backends of other databases (other
//! users of a shared server), and backends that ended during the phase — those are gone from
//! `/proc`, but the postmaster reaped them, so their CPU is the growth of its `cutime + cstime`.

use std::collections::HashMap;

/// Clock ticks per second of `/proc` CPU times (`getconf CLK_TCK`, 100 on Linux).
const TICKS: f64 = 100.0;

/// CPU seconds of process `pid` so far: its own (user + system) and its reaped children's.
fn process_times(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised name start at field 3; utime is 14, stime 15, cutime 16,
    // cstime 17.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    let own = field(11)? + field(12)?;
    let children = field(13)? + field(14)?;
    Some((own / TICKS, children / TICKS))
}

/// CPU seconds used by process `pid` so far (user + system), if it exists.
fn process_secs(pid: u32) -> Option<f64> {
    process_times(pid).map(|(own, _)| own)
}

/// Busy and total CPU seconds of the whole machine (all cores), from `/proc/stat`.
fn machine_secs() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().sum();
    // idle and iowait are the 4th and 5th columns.
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    Some(((total - idle) / TICKS, total / TICKS))
}

/// Whom a PostgreSQL process works for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A backend of one of the bench's databases.
    Ours,
    /// The postmaster or a process serving every database.
    Aux,
    /// A backend of another database.
    Other,
}

/// Classifies a PostgreSQL process by its command line; `ours` is the bench's panel database
/// (its bot databases are `<ours>_bot_<id>`).
fn role(cmdline: &str, ours: &str) -> Role {
    // Backends retitle themselves `postgres: [<cluster>: ]<user> <database> <client> <state>`,
    // the client being `host(port)` or `[local]`; auxiliary processes
    // `postgres: [<cluster>: ]<what>`; the postmaster keeps its executable path.
    let Some(title) = cmdline.strip_prefix("postgres: ") else {
        return Role::Aux;
    };
    let words: Vec<&str> = title.split_whitespace().collect();
    let words = match words.first() {
        Some(w) if w.ends_with(':') => &words[1..],
        _ => &words[..],
    };
    match words {
        [_, db, client, ..] if client.contains('(') || *client == "[local]" => {
            if *db == ours
                || db
                    .strip_prefix(ours)
                    .is_some_and(|r| r.starts_with("_bot_"))
            {
                Role::Ours
            } else {
                Role::Other
            }
        }
        _ => Role::Aux,
    }
}

/// One PostgreSQL process at a snapshot.
#[derive(Debug, Clone, Copy)]
struct PgProcess {
    role: Role,
    /// Its own CPU seconds.
    own: f64,
    /// CPU seconds of its reaped children (the postmaster's: every ended backend).
    children: f64,
}

/// Every running `postgres` process, by pid.
fn postgres_processes(ours: &str) -> HashMap<u32, PgProcess> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "postgres" {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if let Some((own, children)) = process_times(pid) {
            out.insert(
                pid,
                PgProcess {
                    role: role(cmdline.trim(), ours),
                    own,
                    children,
                },
            );
        }
    }
    out
}

/// A snapshot of CPU counters.
pub struct Snapshot {
    machine: Option<(f64, f64)>,
    daemon: Option<f64>,
    bench: Option<f64>,
    postgres: HashMap<u32, PgProcess>,
}

/// CPU used between two snapshots, in cores (CPU seconds per wall second).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Wall seconds between the snapshots.
    pub wall: f64,
    /// Busy cores of the whole machine (other users included).
    pub machine: f64,
    /// Cores of the machine.
    pub cores: f64,
    /// The daemon process (the bench process itself in inproc mode).
    pub daemon: f64,
    /// The bench process: sandbox and load driver (and the daemon in inproc mode).
    pub bench: f64,
    /// Backends of the bench's databases that were alive at the end.
    pub pg_ours: f64,
    /// The postmaster and the processes serving every database.
    pub pg_aux: f64,
    /// Backends that ended during the phase (whoever they served).
    pub pg_ended: f64,
    /// Backends of other databases, alive at the end.
    pub pg_other: f64,
}

impl Usage {
    /// PostgreSQL CPU attributed to the run: its backends, the shared processes and the backends
    /// that ended (on a shared server, the last may include other users' short connections).
    pub fn postgres(&self) -> f64 {
        self.pg_ours + self.pg_aux + self.pg_ended
    }

    /// CPU microseconds of PostgreSQL per unit of work, for `work` units in the window.
    pub fn pg_us_per(&self, work: u64) -> Option<f64> {
        (work > 0).then(|| self.postgres() * self.wall * 1e6 / work as f64)
    }

    /// CPU microseconds of the daemon process per unit of work.
    pub fn daemon_us_per(&self, work: u64) -> Option<f64> {
        (work > 0).then(|| self.daemon * self.wall * 1e6 / work as f64)
    }

    /// One line for the table.
    pub fn describe(&self) -> String {
        format!(
            "machine {:.2}/{:.0} busy; daemon {:.2}, bench {:.2}, postgres {:.2} \
             (ours {:.2}, shared {:.2}, ended {:.2}; other dbs {:.2})",
            self.machine,
            self.cores,
            self.daemon,
            self.bench,
            self.postgres(),
            self.pg_ours,
            self.pg_aux,
            self.pg_ended,
            self.pg_other
        )
    }
}

impl Snapshot {
    /// Reads the counters now; `daemon` is the daemon's pid, `ours` the panel database's name.
    pub fn take(daemon: u32, ours: &str) -> Self {
        Self {
            machine: machine_secs(),
            daemon: process_secs(daemon),
            bench: process_secs(std::process::id()),
            postgres: postgres_processes(ours),
        }
    }

    /// Usage from `self` to `later`, over `wall` seconds.
    pub fn usage(&self, later: &Snapshot, wall: f64) -> Usage {
        let d = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => (b - a) / wall,
            _ => 0.0,
        };
        let (machine, cores) = match (self.machine, later.machine) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => ((b1 - b0) / wall, (t1 - t0) / wall),
            _ => (0.0, 0.0),
        };
        let mut usage = Usage {
            wall,
            machine,
            cores,
            daemon: d(self.daemon, later.daemon),
            bench: d(self.bench, later.bench),
            ..Usage::default()
        };
        // Alive at the end: the growth since the start (all of it for a new process), by role.
        for (pid, p) in &later.postgres {
            let before = self.postgres.get(pid);
            let own = p.own - before.map_or(0.0, |b| b.own);
            match p.role {
                Role::Ours => usage.pg_ours += own,
                Role::Aux => usage.pg_aux += own,
                Role::Other => usage.pg_other += own,
            }
            usage.pg_ended += p.children - before.map_or(0.0, |b| b.children);
        }
        // Alive at the start, gone at the end: reaped, so already in a parent's `children`;
        // what they had used before the start is not part of the phase.
        for (pid, p) in &self.postgres {
            if !later.postgres.contains_key(pid) {
                usage.pg_ended -= p.own;
            }
        }
        usage.pg_ours /= wall;
        usage.pg_aux /= wall;
        usage.pg_other /= wall;
        usage.pg_ended = usage.pg_ended.max(0.0) / wall;
        usage
    }
}

#[cfg(test)]
mod tests {
    use super::{Role, role};

    #[test]
    fn processes_are_classified_by_their_title() {
        let ours = "botvisor_bench_42";
        for (cmdline, want) in [
            (
                "/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main",
                Role::Aux,
            ),
            ("postgres: 15/main: walwriter", Role::Aux),
            ("postgres: 15/main: autovacuum launcher", Role::Aux),
            (
                "postgres: postgres botvisor_bench_42_bot_7 127.0.0.1(5000) idle",
                Role::Ours,
            ),
            (
                "postgres: postgres botvisor_bench_42 127.0.0.1(5001) INSERT",
                Role::Ours,
            ),
            (
                "postgres: postgres botvisor_test_9 127.0.0.1(5002) idle",
                Role::Other,
            ),
            (
                "postgres: postgres botvisor_bench_421_bot_1 127.0.0.1(5003) idle",
                Role::Other,
            ),
            (
                "postgres: 15/main: postgres botvisor_bench_42_bot_3 127.0.0.1(5004) idle",
                Role::Ours,
            ),
            (
                "postgres: 15/main: postgres postgres [local] idle",
                Role::Other,
            ),
            ("postgres: 15/main: background writer", Role::Aux),
        ] {
            assert_eq!(role(cmdline, ours), want, "{cmdline}");
        }
    }
}
