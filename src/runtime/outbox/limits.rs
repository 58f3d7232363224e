//! Telegram's sending limits for one bot, as GCRA buckets (governor).
//!
//! - per private chat: one message per [`PRIVATE_PERIOD`], bursts of up to [`PRIVATE_BURST`];
//! - per group, supergroup or channel (negative chat ids): one per [`GROUP_PERIOD`], no burst,
//!   which keeps any 60 s window at 20 messages or fewer;
//! - per bot: one per [`BOT_PERIOD`] (≈ 28.6/s) on a fixed grid, under Telegram's ≈ 30/s; a
//!   send that starts up to [`BOT_TOLERANCE`] late keeps the grid (the next one may follow
//!   sooner), so the timer's and the loop's lateness do not lower the rate. No 1 s window
//!   ever holds more than 30 sends: 31 sends span at least 30 × 35 − 15 = 1035 ms, which
//!   leaves 35 ms for sends to arrive further apart than they started.
//!
//! Each period carries a margin over Telegram's figure so that network jitter never turns a
//! send that was on time here into one that is early there.
//!
//! Why the tolerance: with none, each send's lateness (tokio's timer wakes ≈ 1.6 ms after the
//! instant asked for here; a result being recorded delays the loop more) is lost for good: a
//! bare loop of sleeps on a plain 34 ms bucket measured 28.1 sends/s instead of 29.4 (that
//! lost time also widened its jitter margin to ≈ 65 ms per 31 sends). Tighter grids measured
//! worse: 34 ms with 8 ms tolerance (12 ms margin) and 34.5 ms with 15 ms (20 ms margin) each
//! drew 429s from the rate-limited sandbox on a loaded machine, where the in-process sandbox
//! sees sends tens of milliseconds apart from when they started. The per-chat state is pruned of
//! chats that are back to full capacity ([`Limits::prune`]), so it never grows without bound.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// The interval between messages to one private chat.
pub const PRIVATE_PERIOD: Duration = Duration::from_millis(1050);
/// Messages a private chat may get at once (e.g. a greeting and its menu).
pub const PRIVATE_BURST: u32 = 3;
/// The interval between messages to one group (20 a minute, with a margin).
pub const GROUP_PERIOD: Duration = Duration::from_millis(3100);
/// The interval between any two messages of the bot, on average.
pub const BOT_PERIOD: Duration = Duration::from_millis(35);
/// How late a bot-wide send may start and still keep its place on the grid of
/// [`BOT_PERIOD`]s (the next send then follows sooner, never earlier than the grid).
pub const BOT_TOLERANCE: Duration = Duration::from_millis(15);
/// The unit the bot's bucket counts in: a send takes [`BOT_PERIOD`] / `BOT_CELL` cells, so the
/// tolerance need not be a whole period (governor's bursts are whole cells).
const BOT_CELL: Duration = Duration::from_micros(500);

type Keyed<C> = RateLimiter<i64, DashMapStateStore<i64>, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Whose limit holds a message back, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The bot's overall rate: no message to any chat before this.
    Bot(Duration),
    /// This chat's rate.
    Chat(Duration),
}

impl Wait {
    /// How long to wait.
    pub fn duration(self) -> Duration {
        match self {
            Wait::Bot(d) | Wait::Chat(d) => d,
        }
    }
}

/// The sending limits of one bot.
pub struct Limits<C: Clock = DefaultClock> {
    private: Keyed<C>,
    group: Keyed<C>,
    bot: Direct<C>,
    /// Cells of the bot's bucket one send takes.
    send_cells: NonZeroU32,
    clock: C,
}

impl Default for Limits {
    fn default() -> Self {
        Self::new()
    }
}

/// Whole [`BOT_CELL`]s in `d`.
fn cells(d: Duration) -> u32 {
    u32::try_from(d.as_nanos() / BOT_CELL.as_nanos()).unwrap_or(u32::MAX)
}

fn quota(period: Duration, burst: u32) -> Quota {
    Quota::with_period(period)
        .expect("periods are non-zero")
        .allow_burst(NonZeroU32::new(burst).expect("bursts are non-zero"))
}

impl Limits {
    /// Telegram's limits, as the module docs give them, on the real clock.
    pub fn new() -> Self {
        Self::with_clock(DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limits<C> {
    /// Telegram's limits on `clock` (tests pass a fake one).
    pub fn with_clock(clock: C) -> Self {
        Self {
            private: RateLimiter::dashmap_with_clock(
                quota(PRIVATE_PERIOD, PRIVATE_BURST),
                clock.clone(),
            ),
            group: RateLimiter::dashmap_with_clock(quota(GROUP_PERIOD, 1), clock.clone()),
            bot: RateLimiter::direct_with_clock(
                quota(BOT_CELL, cells(BOT_PERIOD + BOT_TOLERANCE)),
                clock.clone(),
            ),
            send_cells: NonZeroU32::new(cells(BOT_PERIOD)).expect("the period is non-zero"),
            clock,
        }
    }

    /// Takes a slot for one message to `chat` now, or says whose limit says wait and how
    /// long. The bot's bucket is asked first, so a chat that must wait loses at most one bot
    /// slot, and a full bot bucket costs the chat nothing.
    pub fn try_send(&self, chat: i64) -> Result<(), Wait> {
        let now = self.clock.now();
        self.bot
            .check_n(self.send_cells)
            .expect("the bucket holds a send's cells")
            .map_err(|not_until| Wait::Bot(not_until.wait_time_from(now)))?;
        let per_chat = if chat > 0 { &self.private } else { &self.group };
        per_chat
            .check_key(&chat)
            .map_err(|not_until| Wait::Chat(not_until.wait_time_from(now)))
    }

    /// Forgets chats that are back to full capacity.
    pub fn prune(&self) {
        self.private.retain_recent();
        self.private.shrink_to_fit();
        self.group.retain_recent();
        self.group.shrink_to_fit();
    }

    /// Chats with state kept (for tests and metrics).
    pub fn tracked_chats(&self) -> usize {
        self.private.len() + self.group.len()
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn fake() -> (Limits<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (Limits::with_clock(clock.clone()), clock)
    }

    #[test]
    fn a_private_chat_gets_a_burst_then_one_a_second() {
        let (limits, clock) = fake();
        let mut allowed = 0;
        let mut wait = Duration::ZERO;
        for _ in 0..(PRIVATE_BURST + 1) {
            match limits.try_send(42) {
                Ok(()) => allowed += 1,
                Err(w) => wait = w.duration(),
            }
            // Leave the bot's bucket out of it.
            clock.advance(BOT_PERIOD);
        }
        assert_eq!(allowed, PRIVATE_BURST);
        assert!(wait > Duration::ZERO && wait <= PRIVATE_PERIOD, "{wait:?}");
        // Another chat is not affected.
        assert!(limits.try_send(43).is_ok());
        // After its wait the chat may send again.
        clock.advance(wait);
        assert!(limits.try_send(42).is_ok());
    }

    #[test]
    fn a_group_gets_no_burst_and_the_bot_is_paced() {
        let (limits, clock) = fake();
        assert!(limits.try_send(-100).is_ok());
        clock.advance(BOT_PERIOD);
        let wait = limits.try_send(-100).unwrap_err();
        assert_eq!(wait, Wait::Chat(GROUP_PERIOD - BOT_PERIOD));
        // Two different chats right after each other: the bot's bucket says wait.
        let (limits, _) = fake();
        assert!(limits.try_send(1).is_ok());
        assert_eq!(
            limits.try_send(2).unwrap_err(),
            Wait::Bot(BOT_PERIOD - BOT_TOLERANCE)
        );
    }

    /// Every send starts 3 ms after the bucket allows it (a late timer, a busy loop): the rate
    /// stays at one per [`BOT_PERIOD`], and no 1 s window holds more than 30 sends.
    #[test]
    fn late_starts_within_the_tolerance_keep_the_rate_and_the_window() {
        let (limits, clock) = fake();
        let late = Duration::from_millis(3);
        let mut starts: Vec<Duration> = Vec::new();
        let mut at = Duration::ZERO;
        let mut chat = 1;
        while at < Duration::from_secs(10) {
            match limits.try_send(chat) {
                Ok(()) => {
                    starts.push(at);
                    chat += 1;
                }
                Err(w) => {
                    clock.advance(w.duration() + late);
                    at += w.duration() + late;
                }
            }
        }
        let expected = (10.0 / BOT_PERIOD.as_secs_f64()).floor() as usize;
        assert!(starts.len() >= expected, "{} sends in 10 s", starts.len());
        for (i, s) in starts.iter().enumerate() {
            let in_window = starts[i..]
                .iter()
                .take_while(|t| **t < *s + Duration::from_secs(1))
                .count();
            assert!(in_window <= 30, "{in_window} sends in the 1 s from {s:?}");
        }
    }

    #[test]
    fn thirty_chats_a_second_at_most() {
        let (limits, clock) = fake();
        let mut sent = 0;
        let step = Duration::from_millis(1);
        for i in 0..1000 {
            if limits.try_send(1000 + i).is_ok() {
                sent += 1;
            }
            clock.advance(step);
        }
        // One second of trying: at most 30 sends, and not far below.
        assert!((29..=30).contains(&sent), "{sent}");
    }

    #[test]
    fn idle_chats_are_forgotten() {
        let (limits, clock) = fake();
        for chat in 1..=50 {
            let _ = limits.try_send(chat);
            clock.advance(BOT_PERIOD);
        }
        assert!(limits.tracked_chats() > 0);
        clock.advance(PRIVATE_PERIOD * PRIVATE_BURST);
        limits.prune();
        assert_eq!(limits.tracked_chats(), 0);
    }
}
