//! The one HTTP listener of `botvisor serve` (`[http] listen`): health endpoints, and the
//! webhook entrance of bots in webhook mode.
//!
//! One loop: the axum server ([`HttpServer::run`], task `http`), until the daemon's shutdown
//! token is cancelled; then it stops accepting and lets requests in flight finish (a webhook
//! request in flight finishes its commit and answers).
//!
//! Every route is listed in [`router`], in one place; a new endpoint (`/metrics`) is one more
//! line there and, if it needs state, one more field of [`HttpState`].
//!
//! - `GET /healthz`: 200 while the process answers (liveness).
//! - `GET /readyz`: 200 when the panel is reachable, the first reconcile is done, the
//!   reconcile loop turned within [`READY_HEARTBEAT`], the ownership pass succeeded within
//!   [`READY_HEARTBEAT`] and the instance holds every bot of its fair share (or has been short
//!   of it for less than [`READY_OWNERSHIP_GRACE`]); 503 otherwise. The body (JSON) says which
//!   check failed, in `reasons` (tests `http_listener::*`,
//!   `http_listener::readyz_waits_for_the_instance_to_own_its_share`,
//!   `resilience_panel::readyz_follows_the_panel`).
//! - `GET /metrics`: the Prometheus text exposition of the process's metrics
//!   ([`crate::telemetry::metrics`]; test `metrics::counters_move_by_what_happened_and_a_removed_bots_series_leave`).
//! - `POST /telegram/{bot id}`: a webhook update for a bot in webhook mode
//!   ([`crate::runtime::inbox::webhook`]): 401 for a wrong or missing
//!   `X-Telegram-Bot-Api-Secret-Token` (counted), 200 once the update is committed to the
//!   bot's inbox (or stored poisoned), 503 with `Retry-After` when the bot does not run here,
//!   its intake is saturated or its database cannot store the update (tests `webhook::*`).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::control::{BotCounts, OwnershipHealth};
use crate::runtime::inbox::webhook::{AcceptError, Route, WebhookRoutes};
use crate::telemetry::metrics::{self, Metrics, WebhookRejection};

/// `Retry-After` (seconds) of a 503 to a webhook request.
pub const WEBHOOK_RETRY_AFTER: u64 = 5;
/// How long a webhook request waits for a dormant bot to wake (or a stopping run's
/// successor) before it is answered 503.
pub const WEBHOOK_WAKE_WAIT: Duration = Duration::from_secs(10);
/// Largest webhook body accepted (Telegram's updates are far smaller).
const WEBHOOK_BODY_LIMIT: usize = 1 << 20;

/// The reconcile loop turns at least every second while healthy; older than this is stuck.
pub const READY_HEARTBEAT: Duration = Duration::from_secs(10);

/// How long the instance may hold fewer bots than its fair share and still be ready: a bot
/// just enabled is taken within a pass, a hand-over between instances finishes within a few
/// (a previous owner's fence grace is 5 s); a share still short after this is a lock held
/// elsewhere (another process, a stale session).
pub const READY_OWNERSHIP_GRACE: Duration = Duration::from_secs(10);

/// Bot ids listed in the readiness report's `unowned` (the count is always complete).
const UNOWNED_LISTED: usize = 20;

/// Errors of the HTTP listener.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr} (http.listen): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server failed.
    #[error("the HTTP listener failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// What the control loop knows about the daemon's health.
#[derive(Debug, Clone)]
pub struct Health {
    /// Bot counts, with whether the panel is reachable.
    pub counts: watch::Receiver<BotCounts>,
    /// The reconcile loop's latest turn.
    pub heartbeat: watch::Receiver<tokio::time::Instant>,
    /// Whether the first full reconcile finished.
    pub reconciled: watch::Receiver<bool>,
    /// What the latest ownership pass found.
    pub ownership: watch::Receiver<OwnershipHealth>,
}

/// The readiness report `/readyz` answers with.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Readiness {
    /// Every check passed.
    pub ready: bool,
    /// The panel database answered the reconcile loop's latest attempt.
    pub panel_reachable: bool,
    /// The first full reconcile finished.
    pub reconciled: bool,
    /// Milliseconds since the reconcile loop last turned.
    pub reconcile_loop_age_ms: u64,
    /// Live instances sharing the panel's bots (this one included).
    pub instances: usize,
    /// Bots this instance owns (holds the advisory lock of).
    pub owned: usize,
    /// Bots of the panel's enabled ones in this instance's fair share.
    pub assigned: usize,
    /// How many bots of the share this instance does not own.
    pub unowned_count: usize,
    /// The first of them (lowest ids; at most 20).
    pub unowned: Vec<i64>,
    /// Milliseconds since the latest successful ownership pass (`null`: none yet).
    pub ownership_pass_age_ms: Option<u64>,
    /// Why the instance is not ready (empty when it is).
    pub reasons: Vec<String>,
    /// Bots by state on this instance.
    pub bots: ReadyCounts,
}

/// Bot counts in the readiness report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReadyCounts {
    /// Enabled bots with a slot.
    pub total: usize,
    /// Running (degraded included).
    pub running: usize,
    /// Starting or backing off.
    pub starting: usize,
    /// Waiting for a panel change.
    pub failed: usize,
}

impl Health {
    /// The checks as of now.
    pub fn readiness(&self) -> Readiness {
        let counts = *self.counts.borrow();
        let age = self.heartbeat.borrow().elapsed();
        let reconciled = *self.reconciled.borrow();
        let own = self.ownership.borrow().clone();
        let panel_reachable = !counts.panel_unreachable;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let pass_age = own.passed_at.map(|t| t.elapsed());
        let mut reasons = Vec::new();
        if !panel_reachable {
            reasons.push("the panel database is unreachable".to_owned());
        }
        if !reconciled {
            reasons.push("the first reconcile has not finished".to_owned());
        }
        if age >= READY_HEARTBEAT {
            reasons.push(format!(
                "the reconcile loop has not turned for {} s",
                age.as_secs()
            ));
        }
        match pass_age {
            None => reasons.push("no ownership pass has succeeded yet".to_owned()),
            Some(a) if a >= READY_HEARTBEAT => reasons.push(format!(
                "the latest successful ownership pass was {} s ago",
                a.as_secs()
            )),
            Some(_) => {}
        }
        if own.name_clash {
            reasons.push(
                "another live instance uses this instance name: this one owns no bots".to_owned(),
            );
        } else if let Some(since) = own
            .short_since
            .filter(|t| t.elapsed() >= READY_OWNERSHIP_GRACE)
        {
            let why = if own.lock_table_full {
                "the panel server's lock table is full: raise its max_locks_per_transaction"
            } else {
                "the locks of the others could not be taken"
            };
            reasons.push(format!(
                "owns {} of the {} bots of its share; short for {} s ({why})",
                own.assigned - own.unowned.len().min(own.assigned),
                own.assigned,
                since.elapsed().as_secs()
            ));
        }
        Readiness {
            ready: reasons.is_empty(),
            panel_reachable,
            reconciled,
            reconcile_loop_age_ms: ms(age),
            instances: counts.instances,
            owned: counts.owned,
            assigned: own.assigned,
            unowned_count: own.unowned.len(),
            unowned: own.unowned.iter().take(UNOWNED_LISTED).copied().collect(),
            ownership_pass_age_ms: pass_age.map(ms),
            reasons,
            bots: ReadyCounts {
                total: counts.total,
                running: counts.running,
                starting: counts.starting,
                failed: counts.failed,
            },
        }
    }
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// Health as the control loop sees it.
    pub health: Health,
    /// The Prometheus recorder `/metrics` renders.
    pub metrics: Metrics,
    /// The webhook entrances of the bots running here in webhook mode.
    pub webhooks: WebhookRoutes,
}

/// Every route of the listener, in one place.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/telegram/{bot_id}",
            post(webhook).layer(axum::extract::DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT)),
        )
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// The content type of the Prometheus text exposition format.
const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn metrics(State(state): State<HttpState>) -> Response {
    let body = state.metrics.render();
    ([(axum::http::header::CONTENT_TYPE, EXPOSITION)], body).into_response()
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let report = state.health.readiness();
    let code = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report)).into_response()
}

fn retry_later(why: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, WEBHOOK_RETRY_AFTER.to_string())],
        format!("{why}\n"),
    )
        .into_response()
}

async fn webhook(
    State(state): State<HttpState>,
    Path(bot_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // An id that is not a number cannot be a bot of ours: the same answer as an unknown bot.
    let Some(id) = bot_id.parse::<i64>().ok() else {
        return not_here(&bot_id);
    };
    let secret = headers
        .get("x-telegram-bot-api-secret-token")
        .map(|v| v.as_bytes());
    let routes = &state.webhooks;
    // A dormant bot is woken and the request waits for its entrance; so does a request that
    // met a run falling asleep or handing over to the next.
    let deadline = tokio::time::Instant::now() + WEBHOOK_WAKE_WAIT;
    let mut checked = false;
    loop {
        let changed = routes.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let Some(route) = routes.get(id) else {
            return not_here(&bot_id);
        };
        if !checked {
            if !route.secret_matches(secret) {
                routes.count_unauthorized();
                let detail = if secret.is_some() {
                    "wrong secret token"
                } else {
                    "missing secret token"
                };
                metrics::webhook_rejected(id, WebhookRejection::Unauthorized, detail);
                return (StatusCode::UNAUTHORIZED, "wrong or missing secret token\n")
                    .into_response();
            }
            checked = true;
        }
        let waiting = match route {
            Route::Asleep(doorbell) => {
                doorbell.ring();
                "the bot is waking up"
            }
            Route::Open(entrance) => match entrance.accept(&body).await {
                Ok(_) => return (StatusCode::OK, "ok\n").into_response(),
                Err(AcceptError::Stopping) => "the bot is stopping",
                Err(e) => {
                    let reason = match &e {
                        AcceptError::Saturated => WebhookRejection::Saturated,
                        AcceptError::Stopping | AcceptError::Database(_) => {
                            WebhookRejection::Unavailable
                        }
                    };
                    metrics::webhook_rejected(id, reason, &e.to_string());
                    return retry_later(&e.to_string());
                }
            },
        };
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            metrics::webhook_rejected(id, WebhookRejection::Unavailable, waiting);
            return retry_later(waiting);
        }
    }
}

fn not_here(bot_id: &str) -> Response {
    tracing::debug!(path_bot_id = %bot_id.chars().take(32).collect::<String>(), "webhook for a bot not running here in webhook mode");
    retry_later("this bot does not run here in webhook mode")
}

/// The listener, bound and ready to run.
#[derive(Debug)]
pub struct HttpServer {
    listener: tokio::net::TcpListener,
    state: HttpState,
}

impl HttpServer {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr, state: HttpState) -> Result<Self, HttpError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| HttpError::Bind { addr, source })?;
        Ok(Self { listener, state })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled, then lets requests in flight finish.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), HttpError> {
        tracing::info!(listen = %self.local_addr(), "http listener ready");
        axum::serve(self.listener, router(self.state))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(HttpError::Serve)
    }
}
