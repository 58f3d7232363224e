//! Where the CPU went during a phase, from `/proc`: the whole machine, the daemon, the bench
//! and the PostgreSQL processes — the poor man's profile printed with the figures.

use std::collections::HashMap;

/// Clock ticks per second of `/proc` CPU times (`getconf CLK_TCK`, 100 on Linux).
const TICKS: f64 = 100.0;

/// CPU seconds used by process `pid` so far (user + system), if it exists.
fn process_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised name start at field 3; utime is 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS)
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

/// CPU seconds of every running `postgres` process, by pid.
fn postgres_secs() -> HashMap<u32, f64> {
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
        if comm.trim() == "postgres"
            && let Some(s) = process_secs(pid)
        {
            out.insert(pid, s);
        }
    }
    out
}

/// A snapshot of CPU counters.
pub struct Snapshot {
    machine: Option<(f64, f64)>,
    daemon: Option<f64>,
    bench: Option<f64>,
    postgres: HashMap<u32, f64>,
}

/// CPU used between two snapshots, in cores (CPU seconds per wall second).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Busy cores of the whole machine (other users included).
    pub machine: f64,
    /// Cores of the machine.
    pub cores: f64,
    /// The daemon process (the bench process itself in inproc mode).
    pub daemon: f64,
    /// The bench process: sandbox and load driver (and the daemon in inproc mode).
    pub bench: f64,
    /// Every PostgreSQL process together.
    pub postgres: f64,
}

impl Snapshot {
    /// Reads the counters now; `daemon` is the daemon's pid.
    pub fn take(daemon: u32) -> Self {
        Self {
            machine: machine_secs(),
            daemon: process_secs(daemon),
            bench: process_secs(std::process::id()),
            postgres: postgres_secs(),
        }
    }

    /// Usage from `self` to `later`, over `wall` seconds.
    pub fn usage(&self, later: &Snapshot, wall: f64) -> Usage {
        let d = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => (b - a) / wall,
            _ => 0.0,
        };
        let (machine, cores) = match (self.machine, later.machine) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                let cores = (t1 - t0) / wall;
                ((b1 - b0) / wall, cores)
            }
            _ => (0.0, 0.0),
        };
        // Backends that started during the phase count whole; ones that ended are missed.
        let postgres: f64 = later
            .postgres
            .iter()
            .map(|(pid, s)| s - self.postgres.get(pid).copied().unwrap_or(0.0))
            .sum::<f64>()
            / wall;
        Usage {
            machine,
            cores,
            daemon: d(self.daemon, later.daemon),
            bench: d(self.bench, later.bench),
            postgres,
        }
    }
}
