//! `botvisor panel`: the web admin panel (server-rendered pages) and the HTTP API (`/api/v1`),
//! a separate process from the daemon, calling the same service layer as the CLI
//! ([`crate::admin`]). The daemon picks every change up through the panel's NOTIFY contract.
//!
//! One loop: the axum server, until the shutdown token is cancelled; then it stops accepting,
//! lets requests in flight finish and returns.
//!
//! - [`auth`]: who is calling (session cookie or `Authorization: Bearer`), CSRF, the client
//!   address, sign-in throttling;
//! - [`api`]: the JSON API and its OpenAPI document (generated from the code by utoipa);
//! - [`pages`]: the HTML pages (askama templates in `templates/`), in English and Russian;
//! - [`mailings`]: the broadcasts and schedules pages;
//! - [`menus`]: commands and menus edited as a form.
//!
//! Tokens never leave this process unmasked: every bot is shown through
//! [`crate::admin::bots::BotView`], and the token is only ever written.

pub mod api;
pub mod auth;
pub mod i18n;
pub mod mailings;
pub mod menus;
pub mod pages;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::admin::{Admin, AdminError};
use crate::panel::PanelError;
use crate::settings::Settings;

/// Errors starting or running the panel server.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server failed.
    #[error("the panel server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The service layer (acting as nobody; handlers act as the caller).
    pub admin: Admin,
    /// Whether the session cookie is `Secure`.
    pub cookie_secure: bool,
    /// How long a session lasts.
    pub session_lifetime: Duration,
}

/// The panel server, bound and ready to run.
#[derive(Debug)]
pub struct PanelServer {
    listener: tokio::net::TcpListener,
    state: AppState,
}

impl PanelServer {
    /// Binds `listen` (or the settings' `panel_http.listen`).
    pub async fn bind(
        admin: Admin,
        settings: &Settings,
        listen: Option<SocketAddr>,
    ) -> Result<Self, WebError> {
        let addr = listen.unwrap_or_else(|| {
            settings
                .panel_http
                .listen
                .parse()
                .expect("validated by Settings::validate")
        });
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| WebError::Bind { addr, source })?;
        Ok(Self {
            listener,
            state: AppState {
                admin,
                cookie_secure: settings.panel_http.cookie_secure,
                session_lifetime: Duration::from_secs(settings.panel_http.session_hours * 3600),
            },
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled, then lets requests in flight finish.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WebError> {
        tracing::info!(listen = %self.local_addr(), "panel listening");
        let app = router(self.state);
        axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(WebError::Serve)
    }
}

/// The whole app: pages, the API and the static assets.
pub fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .merge(pages::routes())
        .merge(mailings::routes())
        .merge(menus::routes())
        .nest("/api/v1", api::routes())
        .with_state(state)
}

/// An error answer: `{"error": "...", "field": "..."}` with a 4xx code (or 500, whose details
/// are only logged).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    /// What was wrong, the same words as the CLI's.
    pub error: String,
    /// The input field at fault (a JSON path for manifests), when one is.
    pub field: Option<String>,
    /// The HTTP status.
    #[serde(skip)]
    pub status: u16,
    /// Seconds to wait before retrying (sign-in throttling).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `status` and no field.
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            field: None,
            status: status.as_u16(),
            retry_after: None,
        }
    }

    /// The same error, naming `field`.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        use StatusCode as S;
        let line = crate::mask::error_line(&e);
        let (status, field): (StatusCode, Option<String>) = match &e {
            AdminError::InvalidName(_) => (S::UNPROCESSABLE_ENTITY, Some("name".into())),
            AdminError::InvalidToken(_) => (S::UNPROCESSABLE_ENTITY, Some("token".into())),
            AdminError::InvalidDatabase(_) => (S::UNPROCESSABLE_ENTITY, Some("database".into())),
            AdminError::Manifest(m) => (S::UNPROCESSABLE_ENTITY, Some(m.path.clone())),
            AdminError::InvalidTexts(_) => (S::UNPROCESSABLE_ENTITY, None),
            AdminError::InvalidOperator(_) => (S::UNPROCESSABLE_ENTITY, None),
            AdminError::NoSuchText { .. } | AdminError::NoSuchVersion(_) => (S::NOT_FOUND, None),
            AdminError::NotConfirmed(_) => (S::CONFLICT, None),
            AdminError::NoDatabase { .. } => (S::NOT_FOUND, None),
            AdminError::BadCredentials => (S::UNAUTHORIZED, None),
            AdminError::Forbidden(_) => (S::FORBIDDEN, None),
            AdminError::Panel(p) => match p {
                PanelError::BotNotFound(_) | PanelError::OperatorNotFound(_) => {
                    (S::NOT_FOUND, None)
                }
                PanelError::DuplicateName(_) => (S::CONFLICT, Some("name".into())),
                PanelError::DuplicateToken { .. } => (S::CONFLICT, Some("token".into())),
                PanelError::DuplicateLogin(_) => (S::CONFLICT, Some("login".into())),
                PanelError::Manifest(m) => (S::UNPROCESSABLE_ENTITY, Some(m.path.clone())),
                PanelError::Text { source, .. } => (
                    S::UNPROCESSABLE_ENTITY,
                    Some(
                        match source {
                            crate::content::texts::TextError::InvalidKey(_) => "key",
                            crate::content::texts::TextError::InvalidLang(_) => "lang",
                            _ => "value",
                        }
                        .into(),
                    ),
                ),
                _ => (S::INTERNAL_SERVER_ERROR, None),
            },
            AdminError::InvalidSecret(_) | AdminError::Invalid(_) => {
                (S::UNPROCESSABLE_ENTITY, None)
            }
            AdminError::NoSuchSecret { .. } | AdminError::NotFound { .. } => (S::NOT_FOUND, None),
            AdminError::InvalidArchive(_) => (S::UNPROCESSABLE_ENTITY, None),
            AdminError::Key(_) | AdminError::ArchiveFailed(_) => (S::INTERNAL_SERVER_ERROR, None),
            AdminError::BotDb(_) if e.is_bad_input() => (S::UNPROCESSABLE_ENTITY, None),
            AdminError::BotDb(_) | AdminError::BotDbQuery(_) => (S::INTERNAL_SERVER_ERROR, None),
        };
        if status == S::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %line, "panel request failed");
            return ApiError::new(status, "internal error; the panel's log has the details");
        }
        ApiError {
            error: line,
            field,
            status: status.as_u16(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry = self.retry_after;
        let mut response = (status, Json(self)).into_response();
        if let Some(secs) = retry {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        response
    }
}
