//! Dormancy of an idle bot in webhook mode (docs/webhooks.md, "Dormant bots").
//!
//! An idle bot's run holds its futures, tasks, channels and tokens (≈ 30 KB) for nothing: in
//! webhook mode nothing needs it until Telegram posts an update. The [`Dozer`] is one more part
//! of such a run. Once nothing happened for `telegram.webhook_idle_after_secs` (no update in,
//! no unit of work committed; [`Quiet::activity`]) and every part waits — the sender with
//! nothing queued, in flight or paused, the webhook set, every module job waiting for nothing or
//! for a deadline further off than as long — it puts a [`Doorbell`] in the bot's route and
//! stops the run. The run ends with [`super::Ended::Dormant`]: the slot then waits, holding no
//! run, for the first of
//! - a webhook request (it rings the bell and waits for the next run's entrance),
//! - the earliest deadline a part waited for (a scheduled message, a prune), [`WAKE_AHEAD`]
//!   early,
//! - an operator's wake-up of a module job, a content change, a panel change, stop;
//!
//! and meanwhile checks `getWebhookInfo` as the run would. The next run takes over what the
//! last one learned ([`super::Resume`]: `getMe`, the registered commands, the webhook as set),
//! so waking costs the bot's database only its start's reads.
//!
//! An update that came in while the run was falling asleep is never left behind: the entrance
//! counts it ([`Quiet::touch`]) before it looks at the stop, so either the dozer saw it and
//! stayed awake, or the slot sees the count moved and runs again at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::inbox::webhook::{Doorbell, WebhookRoutes};
use crate::modules::Quiet;

/// How long before the earliest deadline a dormant bot wakes: its start's reads take a
/// moment, and a scheduled message is due on time, not one start late.
pub const WAKE_AHEAD: Duration = Duration::from_secs(2);

/// The part of a run in webhook mode that puts it to sleep when idle.
pub(super) struct Dozer {
    pub bot_id: i64,
    pub quiet: Arc<Quiet>,
    pub idle_after: Duration,
    /// The run's stop token: cancelled to fall asleep; its cancellation ends the dozer.
    pub stop: CancellationToken,
    pub routes: WebhookRoutes,
    /// The bot's bell (the slot's), put in its route.
    pub doorbell: Arc<Doorbell>,
}

/// What the dozer decided: the run fell asleep.
pub(super) struct Asleep {
    /// The earliest deadline a part waited for.
    pub until: Option<Instant>,
    /// [`Quiet::activity`] when it decided.
    pub activity: u64,
}

impl Dozer {
    /// Waits until the run is idle enough to sleep (then stops it) or stops.
    pub async fn run(self) -> Option<Asleep> {
        let mut seen = self.quiet.activity();
        let mut quiet_since = Instant::now();
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return None,
                () = tokio::time::sleep_until(quiet_since + self.idle_after) => {}
            }
            let now = Instant::now();
            let activity = self.quiet.activity();
            if activity != seen {
                seen = activity;
                quiet_since = now;
                continue;
            }
            let until = match self.quiet.asleep() {
                Some(until) if until.is_none_or(|t| t > now + self.idle_after + WAKE_AHEAD) => {
                    until
                }
                // A part works, or waits for something due soon: look again after a while.
                _ => {
                    quiet_since = now;
                    continue;
                }
            };
            self.routes
                .fall_asleep(self.bot_id, Arc::clone(&self.doorbell));
            tracing::debug!(
                bot_id = self.bot_id,
                wakes_in_s = until.map(|t| t.saturating_duration_since(now).as_secs()),
                "idle: the bot falls asleep"
            );
            self.stop.cancel();
            return Some(Asleep { until, activity });
        }
    }
}
