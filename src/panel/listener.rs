//! The panel LISTEN connection: `bots_changed` and `reload_config`, with reconnect detection
//! and a heartbeat.
//!
//! sqlx's `PgListener::recv` reconnects silently; we use `try_recv`, which reports a reconnect
//! as `Ok(None)`, and turn it into [`PanelEvent::Resync`] so the supervisor reloads
//! everything (notifications sent while disconnected are lost). A `SELECT 1` heartbeat on the
//! listener connection detects half-open sockets that would otherwise hang forever.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool};

use super::{BOT_WAKE, BOTS_CHANGED, RELOAD_CONFIG};

/// How often the listener connection is checked when idle.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// How long a heartbeat may take before the connection is considered dead.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
/// Delay before reconnecting after an error.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// What the panel told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PanelEvent {
    /// A bot row changed (`bots_changed`).
    BotChanged(i64),
    /// Reload one bot's config, or every bot's (`reload_config`).
    Reload(Option<i64>),
    /// Wake module `.1`'s job of bot `.0` (`bot_wake`).
    Wake(i64, String),
    /// The connection was re-established (or failed): anything may have been missed.
    Resync,
}

/// A LISTEN session on the panel database.
pub struct PanelListener {
    pool: PgPool,
    listener: PgListener,
}

impl PanelListener {
    /// Connects and LISTENs on both channels (before the caller's first load, so nothing
    /// falls in between).
    pub async fn connect(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let listener = Self::listen(pool).await?;
        Ok(Self {
            pool: pool.clone(),
            listener,
        })
    }

    async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener
            .listen_all([BOTS_CHANGED, RELOAD_CONFIG, BOT_WAKE])
            .await?;
        Ok(listener)
    }

    /// Connects with explicit options (used when no pool exists yet).
    pub async fn connect_options(options: &PgConnectOptions) -> Result<Self, sqlx::Error> {
        let pool = PgPool::connect_lazy_with(options.clone());
        Self::connect(&pool).await
    }

    /// Waits for the next event. Never fails: errors become [`PanelEvent::Resync`] after a
    /// short delay (the next call reconnects).
    pub async fn next(&mut self) -> PanelEvent {
        loop {
            match tokio::time::timeout(HEARTBEAT, self.listener.try_recv()).await {
                Ok(Ok(Some(n))) => {
                    if let Some(event) = parse(n.channel(), n.payload()) {
                        return event;
                    }
                }
                Ok(Ok(None)) => return PanelEvent::Resync,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "panel LISTEN connection failed; reconnecting");
                    tokio::time::sleep(RECONNECT_DELAY).await;
                    return PanelEvent::Resync;
                }
                Err(_) => {
                    let ping = sqlx::query("SELECT 1").execute(&mut self.listener);
                    match tokio::time::timeout(HEARTBEAT_TIMEOUT, ping).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "panel LISTEN heartbeat failed; reconnecting");
                            return PanelEvent::Resync;
                        }
                        Err(_) => {
                            tracing::warn!("panel LISTEN heartbeat timed out; reconnecting");
                            // The socket is half-open: replace the listener from scratch.
                            if let Ok(Ok(fresh)) =
                                tokio::time::timeout(HEARTBEAT_TIMEOUT, Self::listen(&self.pool))
                                    .await
                            {
                                self.listener = fresh;
                            }
                            return PanelEvent::Resync;
                        }
                    }
                }
            }
        }
    }
}

fn parse(channel: &str, payload: &str) -> Option<PanelEvent> {
    let id = payload.trim().parse::<i64>().ok();
    match channel {
        BOTS_CHANGED => Some(id.map_or(PanelEvent::Resync, PanelEvent::BotChanged)),
        RELOAD_CONFIG if payload.trim().is_empty() => Some(PanelEvent::Reload(None)),
        RELOAD_CONFIG => Some(id.map_or(PanelEvent::Reload(None), |i| PanelEvent::Reload(Some(i)))),
        BOT_WAKE => {
            let (id, module) = payload.trim().split_once(':')?;
            Some(PanelEvent::Wake(id.parse().ok()?, module.to_owned()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_map_to_events() {
        assert_eq!(
            parse("bots_changed", "42"),
            Some(PanelEvent::BotChanged(42))
        );
        assert_eq!(parse("bots_changed", "x"), Some(PanelEvent::Resync));
        assert_eq!(
            parse("reload_config", "7"),
            Some(PanelEvent::Reload(Some(7)))
        );
        assert_eq!(parse("reload_config", ""), Some(PanelEvent::Reload(None)));
        assert_eq!(
            parse("reload_config", "junk"),
            Some(PanelEvent::Reload(None))
        );
        assert_eq!(parse("other", "1"), None);
        assert_eq!(
            parse("bot_wake", "7:broadcast"),
            Some(PanelEvent::Wake(7, "broadcast".into()))
        );
        assert_eq!(parse("bot_wake", "junk"), None);
    }
}
