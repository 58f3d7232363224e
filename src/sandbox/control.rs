//! The control API under `/sandbox/`: JSON endpoints that drive the sandbox from outside.
//!
//! Every endpoint answers JSON; bad input answers 400 `{"error": "…"}` (404 for an unknown bot
//! or endpoint) and never disturbs the sandbox. See docs/sandbox.md for the reference.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::SandboxError;
use super::state::Shared;
use super::types::{Fault, Hold, InjectCallback, InjectMedia, InjectMessage};

/// Longest `wait_ms` honoured by `GET /sandbox/sent`.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// An error answer of the control API.
pub(crate) struct ControlError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({"error": self.1}))).into_response()
    }
}

impl From<SandboxError> for ControlError {
    fn from(e: SandboxError) -> Self {
        let status = match e {
            SandboxError::UnknownBot { .. } | SandboxError::UnknownHold { .. } => {
                StatusCode::NOT_FOUND
            }
            _ => StatusCode::BAD_REQUEST,
        };
        Self(status, e.to_string())
    }
}

pub(crate) fn bad(msg: impl Into<String>) -> ControlError {
    ControlError(StatusCode::BAD_REQUEST, msg.into())
}

pub(crate) type Reply = Result<axum::Json<Value>, ControlError>;

/// Parses a JSON body into `T`, with serde's message (field, line, column) on failure.
pub(crate) fn body<T: DeserializeOwned>(raw: &Bytes) -> Result<T, ControlError> {
    if raw.is_empty() {
        return Err(bad("the request needs a JSON body"));
    }
    serde_json::from_slice(raw).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

/// The routes of the control API, to be nested at `/sandbox`.
pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/bots", post(register))
        .route("/bots/{token}", delete(revoke))
        .route("/bots/{token}/reset-update-ids", post(reset_update_ids))
        .route("/updates", post(inject))
        .route("/updates/raw", post(inject_raw))
        .route("/chats/{chat_id}/topics", post(create_topic))
        .route("/chats/{chat_id}/topics/{thread_id}", delete(delete_topic))
        .route("/sent", get(sent))
        .route("/users/{user_id}/block", post(block))
        .route("/users/{user_id}/unblock", post(unblock))
        .route("/faults", post(add_fault).delete(clear_faults))
        .route(
            "/holds",
            post(add_hold).get(holds).delete(release_all_holds),
        )
        .route("/holds/{id}/release", post(release_hold))
        .route(
            "/ai/requests",
            get(super::ai::requests).delete(super::ai::clear_requests),
        )
        .route(
            "/ai/faults",
            post(super::ai::add_fault).delete(super::ai::clear_faults),
        )
        .route("/stats", get(stats))
        .fallback(|| async {
            ControlError(
                StatusCode::NOT_FOUND,
                "unknown control endpoint; see docs/sandbox.md".to_owned(),
            )
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    token: String,
    username: Option<String>,
}

async fn register(State(s): State<Arc<Shared>>, raw: Bytes) -> Reply {
    let b: RegisterBody = body(&raw)?;
    let info = s.register(&b.token, b.username.as_deref())?;
    Ok(axum::Json(
        json!({"id": info.id, "username": info.username}),
    ))
}

async fn revoke(State(s): State<Arc<Shared>>, token: Result<Path<String>, PathRejection>) -> Reply {
    let Path(token) = token.map_err(|e| bad(e.body_text()))?;
    s.revoke(&token)?;
    Ok(axum::Json(json!({"revoked": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    next_id: Option<i64>,
    #[serde(default)]
    drop_pending: bool,
}

async fn reset_update_ids(
    State(s): State<Arc<Shared>>,
    token: Result<Path<String>, PathRejection>,
    raw: Bytes,
) -> Reply {
    let Path(token) = token.map_err(|e| bad(e.body_text()))?;
    // The body is optional: no body restarts at 1 and keeps the refusal for pending updates.
    let b: ResetBody = if raw.iter().all(u8::is_ascii_whitespace) {
        ResetBody {
            next_id: None,
            drop_pending: false,
        }
    } else {
        body(&raw)?
    };
    let next_id = b.next_id.unwrap_or(1);
    let dropped = s.reset_update_ids(&token, next_id, b.drop_pending)?;
    Ok(axum::Json(json!({"next_id": next_id, "dropped": dropped})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicBody {
    token: String,
    name: String,
}

async fn create_topic(
    State(s): State<Arc<Shared>>,
    chat: Result<Path<i64>, PathRejection>,
    raw: Bytes,
) -> Reply {
    let Path(chat_id) =
        chat.map_err(|e| bad(format!("chat_id must be an integer: {}", e.body_text())))?;
    let b: TopicBody = body(&raw)?;
    let thread = s.admin_create_topic(&b.token, chat_id, &b.name)?;
    Ok(axum::Json(
        json!({"message_thread_id": thread, "name": b.name}),
    ))
}

async fn delete_topic(
    State(s): State<Arc<Shared>>,
    ids: Result<Path<(i64, i32)>, PathRejection>,
    q: Result<Query<RawQuery>, QueryRejection>,
) -> Reply {
    let Path((chat_id, thread_id)) = ids.map_err(|e| {
        bad(format!(
            "chat_id and thread_id must be integers: {}",
            e.body_text()
        ))
    })?;
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    s.admin_delete_topic(&q.token, chat_id, thread_id)?;
    Ok(axum::Json(json!({"deleted": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuery {
    token: String,
}

/// The request body, byte for byte, becomes one element of the bot's getUpdates `result`.
async fn inject_raw(
    State(s): State<Arc<Shared>>,
    q: Result<Query<RawQuery>, QueryRejection>,
    raw: Bytes,
) -> Reply {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let update_id = s.inject_raw(&q.token, raw)?;
    Ok(axum::Json(json!({"update_id": update_id})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectBody {
    token: String,
    chat_id: i64,
    user_id: Option<i64>,
    first_name: Option<String>,
    language_code: Option<String>,
    chat_type: Option<super::types::ChatType>,
    text: Option<String>,
    callback_data: Option<String>,
    message_id: Option<i32>,
    #[serde(default)]
    is_forum: bool,
    message_thread_id: Option<i32>,
    reply_to_message_id: Option<i32>,
    media: Option<InjectMedia>,
}

async fn inject(State(s): State<Arc<Shared>>, raw: Bytes) -> Reply {
    let b: InjectBody = body(&raw)?;
    let message_only = b.is_forum
        || b.message_thread_id.is_some()
        || b.reply_to_message_id.is_some()
        || b.media.is_some();
    if message_only && b.callback_data.is_some() {
        return Err(bad(
            "is_forum, message_thread_id, reply_to_message_id and media go with a message, not with callback_data",
        ));
    }
    let text = match (b.text, &b.media) {
        (None, Some(_)) => Some(String::new()),
        (t, _) => t,
    };
    let update_id = match (text, b.callback_data) {
        (Some(text), None) => {
            if b.message_id.is_some() {
                return Err(bad("message_id goes with callback_data, not with text"));
            }
            s.inject_message(InjectMessage {
                token: b.token,
                chat_id: b.chat_id,
                user_id: b.user_id,
                first_name: b.first_name,
                language_code: b.language_code,
                chat_type: b.chat_type,
                text,
                is_forum: b.is_forum,
                message_thread_id: b.message_thread_id,
                reply_to_message_id: b.reply_to_message_id,
                media: b.media,
            })?
        }
        (None, Some(callback_data)) => {
            if b.chat_type.is_some() {
                return Err(bad(
                    "chat_type goes with text; a callback comes from an existing chat",
                ));
            }
            s.inject_callback(InjectCallback {
                token: b.token,
                chat_id: b.chat_id,
                user_id: b.user_id,
                first_name: b.first_name,
                language_code: b.language_code,
                callback_data,
                message_id: b.message_id,
            })?
        }
        _ => {
            return Err(bad(
                "give exactly one of text or callback_data (media may stand in for text)",
            ));
        }
    };
    Ok(axum::Json(json!({"update_id": update_id})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SentQuery {
    token: String,
    chat_id: i64,
    after: Option<u64>,
    wait_ms: Option<u64>,
}

async fn sent(State(s): State<Arc<Shared>>, q: Result<Query<SentQuery>, QueryRejection>) -> Reply {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let after = q.after.unwrap_or(0);
    let events = match q.wait_ms {
        Some(ms) if ms > 0 => {
            let wait = Duration::from_millis(ms).min(MAX_WAIT);
            s.wait_sent(&q.token, q.chat_id, after, wait).await?
        }
        _ => s.sent(&q.token, q.chat_id, after)?,
    };
    Ok(axum::Json(json!({"events": events})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    token: String,
}

async fn set_blocked(
    s: &Shared,
    user: Result<Path<i64>, PathRejection>,
    raw: &Bytes,
    blocked: bool,
) -> Reply {
    let Path(user_id) =
        user.map_err(|e| bad(format!("user_id must be an integer: {}", e.body_text())))?;
    let b: TokenBody = body(raw)?;
    s.set_blocked(&b.token, user_id, blocked)?;
    Ok(axum::Json(json!({"user_id": user_id, "blocked": blocked})))
}

async fn block(
    State(s): State<Arc<Shared>>,
    user: Result<Path<i64>, PathRejection>,
    raw: Bytes,
) -> Reply {
    set_blocked(&s, user, &raw, true).await
}

async fn unblock(
    State(s): State<Arc<Shared>>,
    user: Result<Path<i64>, PathRejection>,
    raw: Bytes,
) -> Reply {
    set_blocked(&s, user, &raw, false).await
}

async fn add_fault(State(s): State<Arc<Shared>>, raw: Bytes) -> Reply {
    let f: Fault = body(&raw)?;
    let active = s.add_fault(f)?;
    Ok(axum::Json(json!({"active_faults": active})))
}

async fn add_hold(State(s): State<Arc<Shared>>, raw: Bytes) -> Reply {
    // An empty body holds every call.
    let h: Hold = if raw.iter().all(u8::is_ascii_whitespace) {
        Hold::default()
    } else {
        body(&raw)?
    };
    Ok(axum::Json(json!({"hold_id": s.add_hold(h)?})))
}

async fn holds(State(s): State<Arc<Shared>>) -> Reply {
    Ok(axum::Json(json!({"holds": s.holds()})))
}

async fn release_hold(State(s): State<Arc<Shared>>, id: Result<Path<u64>, PathRejection>) -> Reply {
    let Path(id) = id.map_err(|e| bad(format!("hold id must be an integer: {}", e.body_text())))?;
    Ok(axum::Json(json!({"released": s.release_hold(id)?})))
}

async fn release_all_holds(State(s): State<Arc<Shared>>) -> Reply {
    Ok(axum::Json(json!({"released_holds": s.release_all_holds()})))
}

async fn clear_faults(State(s): State<Arc<Shared>>) -> Reply {
    Ok(axum::Json(json!({"cleared": s.clear_faults()})))
}

async fn stats(State(s): State<Arc<Shared>>) -> Reply {
    let stats = serde_json::to_value(s.stats()).map_err(|e| bad(e.to_string()))?;
    Ok(axum::Json(stats))
}
