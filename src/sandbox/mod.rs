//! Sandbox: a local Telegram Bot API emulator for tests, development and demos.
//!
//! [`Sandbox`] serves the Bot API at `{base}/bot{TOKEN}/{method}` the way Telegram does, so
//! teloxide pointed at it with `Bot::set_api_url` runs its production code path, plus a JSON
//! control API under `/sandbox/` (docs/sandbox.md) and an OpenAI-compatible
//! `POST /v1/chat/completions` with a deterministic echo model. [`SandboxHandle`] drives the
//! same state in-process.
//!
//! Loops:
//! - the HTTP server (axum), one task per connection, until the shutdown token fires;
//! - one webhook delivery loop per bot with a webhook (`sandbox-webhook-<bot id>`, spawned
//!   through [`Tasks`](crate::tasks::Tasks)), ending when the webhook is deleted or replaced.
//!
//! Invariants:
//! - state lives behind one `std::sync::Mutex` per bot (plus a read-mostly registry); no lock
//!   is held across an `.await`; waiters sleep on `tokio::sync::Notify`, never poll;
//! - updates are delivered in the order they were queued (`update_id` order, except for raw
//!   updates carrying their own ids) and an update is gone only once confirmed (getUpdates
//!   offset above its id, or a 2xx webhook answer);
//! - at most one getUpdates per bot is in flight: a newer one terminates the older one with
//!   409, as Telegram does; a request dropped by its client releases its marker (drop guard);
//! - every Bot API call is counted per token and method, authorised or not;
//! - full tokens never reach the log (see [`mask_token`]), nor do AI API keys.

mod ai;
mod api;
mod control;
mod markup;
mod params;
mod state;
mod types;
mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::routing::post;
use tokio_util::sync::CancellationToken;

pub use types::{
    AiFault, AiRequest, BotInfo, BotStats, ChatType, Fault, Hold, HoldInfo, InjectCallback,
    InjectMedia, InjectMessage, MediaKind, SentEvent, SentKind, Stats,
};

use state::Shared;

/// How long `run` waits for webhook loops to finish after shutdown.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Settings of one sandbox.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Register every well-formed token on its first call (quick demos).
    pub accept_any_token: bool,
    /// Answer 429 above Telegram's send rates (1/s per chat, 20/min per group, 30/s per bot).
    pub enforce_rate_limits: bool,
}

/// Errors of the sandbox and of its control operations.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server failed while running.
    #[error("the sandbox HTTP server failed")]
    Serve(#[source] std::io::Error),
    /// The HTTP client for webhook deliveries could not be built.
    #[error("cannot build the webhook HTTP client")]
    HttpClient(#[source] reqwest::Error),
    /// No registered, unrevoked bot has this token.
    #[error("no active bot with token {token}; register it first (POST /sandbox/bots)")]
    UnknownBot {
        /// The masked token.
        token: String,
    },
    /// The token does not look like `<digits>:<35 characters of A-Z a-z 0-9 _ ->`.
    #[error("malformed token {token}: expected <digits>:<35 characters of A-Z, a-z, 0-9, _ or ->")]
    MalformedToken {
        /// The masked token.
        token: String,
    },
    /// No hold has this id (never added, or already released).
    #[error("no hold {id}; it was released already or never added (GET /sandbox/holds lists them)")]
    UnknownHold {
        /// The id asked for.
        id: u64,
    },
    /// A control request was invalid; the message says what to fix.
    #[error("{0}")]
    InvalidInput(String),
}

/// Masks a token for logs and messages: `123456:****`.
pub fn mask_token(token: &str) -> String {
    match token.split_once(':') {
        Some((id, _)) if id.bytes().all(|b| b.is_ascii_digit()) && !id.is_empty() => {
            format!("{id}:****")
        }
        _ => "****".to_owned(),
    }
}

/// A bound, not yet running, Bot API emulator.
#[derive(Debug)]
pub struct Sandbox {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Sandbox {
    /// Binds the listener (port 0 allowed) — returns once bound.
    pub async fn bind(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| SandboxError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SandboxError::Bind {
            addr: config.listen,
            source,
        })?;
        let shared = Arc::new(Shared::new(config)?);
        Ok(Sandbox {
            listener,
            addr,
            shared,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL to give teloxide's `Bot::set_api_url`, e.g. `http://127.0.0.1:PORT/`.
    pub fn api_url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/", self.addr)).expect("a socket address makes a URL")
    }

    /// Base URL of the OpenAI-compatible endpoint, e.g. `http://127.0.0.1:PORT/v1` (clients
    /// append `/chat/completions`).
    pub fn ai_base_url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/v1", self.addr)).expect("a socket address makes a URL")
    }

    /// In-process handle for tests to drive the sandbox without HTTP (same state as the control API).
    pub fn handle(&self) -> SandboxHandle {
        SandboxHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Serves until `shutdown` fires, then ends long polls and webhook loops and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SandboxError> {
        let shared = self.shared;
        let app = Router::new()
            .nest("/sandbox", control::router())
            .route("/v1/chat/completions", post(ai::chat))
            .route("/v1/{*rest}", axum::routing::any(ai::unknown))
            .fallback(api::bot_api)
            .layer(DefaultBodyLimit::max(api::MAX_BODY))
            .with_state(Arc::clone(&shared));
        tracing::info!(addr = %self.addr, "sandbox listening");
        let stop = shared.stop.clone();
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move {
                shutdown.cancelled().await;
                // Waiting requests (long polls, wait_sent) answer now so connections drain.
                stop.cancel();
            })
            .await;
        shared.stop.cancel();
        let left = shared.tasks.wait(DRAIN_DEADLINE).await;
        if !left.is_empty() {
            tracing::warn!(tasks = ?left, "sandbox tasks still running after the drain deadline");
        }
        served.map_err(SandboxError::Serve)
    }
}

/// In-process control of a sandbox: typed equivalents of the `/sandbox/` endpoints.
#[derive(Clone, Debug)]
pub struct SandboxHandle {
    shared: Arc<Shared>,
}

impl SandboxHandle {
    /// Registers a bot (or re-activates a revoked one); the username defaults to `sandbox_<id>_bot`.
    pub fn register_bot(
        &self,
        token: &str,
        username: Option<&str>,
    ) -> Result<BotInfo, SandboxError> {
        self.shared.register(token, username)
    }

    /// Revokes a bot: its Bot API calls answer 401 "Unauthorized" from now on.
    pub fn revoke_bot(&self, token: &str) -> Result<(), SandboxError> {
        self.shared.revoke(token)
    }

    /// Queues a user's text message for the bot and returns its `update_id`.
    pub fn inject_message(&self, message: InjectMessage) -> Result<i64, SandboxError> {
        self.shared.inject_message(message)
    }

    /// Queues a button press (callback query) for the bot and returns its `update_id`.
    pub fn inject_callback(&self, callback: InjectCallback) -> Result<i64, SandboxError> {
        self.shared.inject_callback(callback)
    }

    /// What the bot did in `chat_id` after sequence number `after_seq` (0 for everything).
    pub fn sent(
        &self,
        token: &str,
        chat_id: i64,
        after_seq: u64,
    ) -> Result<Vec<SentEvent>, SandboxError> {
        self.shared.sent(token, chat_id, after_seq)
    }

    /// Like [`sent`](Self::sent) but waits up to `timeout` for at least one new event.
    pub async fn wait_sent(
        &self,
        token: &str,
        chat_id: i64,
        after_seq: u64,
        timeout: Duration,
    ) -> Result<Vec<SentEvent>, SandboxError> {
        self.shared
            .wait_sent(token, chat_id, after_seq, timeout)
            .await
    }

    /// Makes `user_id` block the bot: sends to that private chat answer 403.
    pub fn block_user(&self, token: &str, user_id: i64) -> Result<(), SandboxError> {
        self.shared.set_blocked(token, user_id, true)
    }

    /// Undoes [`block_user`](Self::block_user).
    pub fn unblock_user(&self, token: &str, user_id: i64) -> Result<(), SandboxError> {
        self.shared.set_blocked(token, user_id, false)
    }

    /// Adds a fault; returns how many faults are now active.
    pub fn add_fault(&self, fault: Fault) -> Result<usize, SandboxError> {
        self.shared.add_fault(fault)
    }

    /// Removes every fault; returns how many there were.
    pub fn clear_faults(&self) -> usize {
        self.shared.clear_faults()
    }

    /// Call counters, 409 counts, pending updates and long polls.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Queues `raw` verbatim as one element of the bot's getUpdates `result` (or one webhook
    /// body) and returns the id that confirms it: its readable `update_id`, or one assigned.
    pub fn inject_raw(&self, token: &str, raw: impl Into<Bytes>) -> Result<i64, SandboxError> {
        self.shared.inject_raw(token, raw.into())
    }

    /// Restarts the bot's update ids at `next_id` (Telegram does so after a week without
    /// updates). Refused while updates are pending unless `drop_pending`; returns how many
    /// pending updates were dropped.
    pub fn reset_update_ids(
        &self,
        token: &str,
        next_id: i64,
        drop_pending: bool,
    ) -> Result<usize, SandboxError> {
        self.shared.reset_update_ids(token, next_id, drop_pending)
    }

    /// Creates a forum topic in `chat_id` as an admin would; returns its `message_thread_id`.
    pub fn create_topic(&self, token: &str, chat_id: i64, name: &str) -> Result<i32, SandboxError> {
        self.shared.admin_create_topic(token, chat_id, name)
    }

    /// Deletes a forum topic as an admin would: its messages go, sends into it fail with
    /// "Bad Request: message thread not found".
    pub fn delete_topic(
        &self,
        token: &str,
        chat_id: i64,
        thread_id: i32,
    ) -> Result<(), SandboxError> {
        self.shared.admin_delete_topic(token, chat_id, thread_id)
    }

    /// Adds a hold: matching Bot API calls wait until released; returns its id.
    pub fn add_hold(&self, hold: Hold) -> Result<u64, SandboxError> {
        self.shared.add_hold(hold)
    }

    /// The holds not yet released, with how many calls wait in each.
    pub fn holds(&self) -> Vec<HoldInfo> {
        self.shared.holds()
    }

    /// Lets the calls waiting in hold `id` go on and removes it; returns how many were waiting.
    pub fn release_hold(&self, id: u64) -> Result<u64, SandboxError> {
        self.shared.release_hold(id)
    }

    /// Releases and removes every hold; returns how many holds there were.
    pub fn release_all_holds(&self) -> usize {
        self.shared.release_all_holds()
    }

    /// Requests the OpenAI-compatible endpoint received, oldest first (only `key`'s if given).
    pub fn ai_requests(&self, key: Option<&str>) -> Vec<AiRequest> {
        self.shared.ai.requests(key)
    }

    /// Forgets the recorded AI requests; returns how many there were.
    pub fn clear_ai_requests(&self) -> usize {
        self.shared.ai.clear_requests()
    }

    /// Adds a fault to the OpenAI-compatible endpoint; returns how many are now active.
    pub fn add_ai_fault(&self, fault: AiFault) -> Result<usize, SandboxError> {
        self.shared.ai.add_fault(fault)
    }

    /// Removes every AI fault; returns how many there were.
    pub fn clear_ai_faults(&self) -> usize {
        self.shared.ai.clear_faults()
    }
}

#[cfg(test)]
mod tests {
    use super::mask_token;

    #[test]
    fn tokens_are_masked() {
        assert_eq!(mask_token("123456:ABCdef"), "123456:****");
        assert_eq!(mask_token("garbage"), "****");
        assert_eq!(mask_token(":x"), "****");
    }
}
