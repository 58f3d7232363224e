//! The restart policy of one bot: capped exponential backoff, reset after a healthy run, and
//! quarantine when failures come too often.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// First delay after a failure.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest delay between restarts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A run this long counts as healthy and resets the backoff.
pub const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// Failures within [`FAILURE_WINDOW`] that quarantine the bot.
pub const QUARANTINE_FAILURES: usize = 8;
/// The window failures are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// How long a quarantined bot waits before one more try (a panel change retries at once).
pub const QUARANTINE_COOLDOWN: Duration = Duration::from_secs(30 * 60);

/// What to do after a failed run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Restart after this delay.
    Retry(Duration),
    /// Too many failures: wait for a panel change (or the cool-down).
    Quarantine,
}

/// Failure bookkeeping of one bot.
#[derive(Debug, Default)]
pub struct RestartPolicy {
    next_delay: Option<Duration>,
    failures: VecDeque<Instant>,
}

impl RestartPolicy {
    /// Records a failed run that lasted `ran_for` and ended at `now`.
    pub fn on_failure(&mut self, ran_for: Duration, now: Instant) -> Decision {
        if ran_for >= HEALTHY_RUN {
            self.next_delay = None;
        }
        self.failures.push_back(now);
        while let Some(first) = self.failures.front() {
            if now.duration_since(*first) > FAILURE_WINDOW {
                self.failures.pop_front();
            } else {
                break;
            }
        }
        if self.failures.len() >= QUARANTINE_FAILURES {
            self.failures.clear();
            self.next_delay = None;
            return Decision::Quarantine;
        }
        let delay = self.next_delay.unwrap_or(BACKOFF_START);
        self.next_delay = Some((delay * 2).min(BACKOFF_MAX));
        Decision::Retry(delay)
    }

    /// Forgets all failures (after a panel change).
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_after_a_healthy_run() {
        let mut p = RestartPolicy::default();
        let t0 = Instant::now();
        let quick = Duration::from_millis(10);
        let mut delays = Vec::new();
        for i in 0..7u64 {
            // Spread failures so the quarantine window does not trigger.
            let now = t0 + FAILURE_WINDOW * 2 * i as u32;
            match p.on_failure(quick, now) {
                Decision::Retry(d) => delays.push(d.as_secs()),
                Decision::Quarantine => panic!("no quarantine expected"),
            }
        }
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60]);
        let now = t0 + FAILURE_WINDOW * 20;
        assert_eq!(
            p.on_failure(HEALTHY_RUN, now),
            Decision::Retry(BACKOFF_START)
        );
    }

    #[test]
    fn too_many_failures_in_the_window_quarantine() {
        let mut p = RestartPolicy::default();
        let t0 = Instant::now();
        let mut decisions = Vec::new();
        for i in 0..QUARANTINE_FAILURES as u32 {
            decisions.push(p.on_failure(Duration::ZERO, t0 + Duration::from_secs(i.into())));
        }
        assert_eq!(decisions.last(), Some(&Decision::Quarantine));
        assert!(
            decisions[..decisions.len() - 1]
                .iter()
                .all(|d| matches!(d, Decision::Retry(_)))
        );
    }
}
