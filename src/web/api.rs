//! The JSON API under `/api/v1`. Every route calls [`crate::admin`] as the caller, checks the
//! caller's role first, and answers errors as `{"error", "field"}` with the CLI's words.
//! The OpenAPI document (`/api/v1/openapi.json`) is generated from these handlers by utoipa.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::auth::{ApiCaller, ClientAddress, session_cookie};
use super::{ApiError, AppState};
use crate::admin::bots::{BotView, NewBot};
use crate::admin::broadcasts::{BroadcastRequest, BroadcastView, Content, Started};
use crate::admin::manifests::ManifestChange;
use crate::admin::operators::{OperatorView, Permission};
use crate::admin::schedules::{JobRequest, JobView, Target, Timing};
use crate::admin::texts::TextsFormat;
use crate::modules::broadcast::store::{Counts, ReportLine};
use crate::modules::core::store::UserRecord;
use crate::panel::access::{AuditRecord, ManifestVersion, TextVersion};
use crate::panel::{BotStatus, TextRecord};

/// The API's routes (nested under `/api/v1`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/session", post(sign_in).delete(sign_out))
        .route("/bots", get(list_bots).post(add_bot))
        .route("/bots/{id}", get(show_bot).delete(remove_bot))
        .route("/bots/{id}/enable", post(enable_bot))
        .route("/bots/{id}/disable", post(disable_bot))
        .route("/bots/{id}/name", put(rename_bot))
        .route("/bots/{id}/token", put(set_token))
        .route("/bots/{id}/texts", get(list_texts))
        .route("/bots/{id}/texts/export", get(export_texts))
        .route("/bots/{id}/texts/import", post(import_texts))
        .route(
            "/bots/{id}/texts/{key}",
            get(get_text).put(put_text).delete(delete_text),
        )
        .route("/bots/{id}/texts/{key}/versions", get(text_versions))
        .route(
            "/bots/{id}/texts/{key}/versions/{version}/rollback",
            post(rollback_text),
        )
        .route("/bots/{id}/manifest", get(get_manifest).put(put_manifest))
        .route("/bots/{id}/manifest/validate", post(validate_manifest))
        .route("/bots/{id}/manifest/versions", get(manifest_versions))
        .route(
            "/bots/{id}/manifest/versions/{version}/rollback",
            post(rollback_manifest),
        )
        .route("/bots/{id}/history", get(chat_history))
        .route("/bots/{id}/users", get(list_users))
        .route(
            "/bots/{id}/broadcasts",
            get(list_broadcasts).post(create_broadcast),
        )
        .route("/bots/{id}/broadcasts/audience", get(audience_size))
        .route("/bots/{id}/broadcasts/{bid}", get(show_broadcast))
        .route("/bots/{id}/broadcasts/{bid}/pause", post(pause_broadcast))
        .route("/bots/{id}/broadcasts/{bid}/resume", post(resume_broadcast))
        .route("/bots/{id}/broadcasts/{bid}/cancel", post(cancel_broadcast))
        .route(
            "/bots/{id}/broadcasts/{bid}/report.csv",
            get(broadcast_report),
        )
        .route("/bots/{id}/schedules", get(list_jobs).post(add_job))
        .route("/bots/{id}/schedules/{job}", delete(remove_job))
        .route("/bots/{id}/schedules/{job}/pause", post(pause_job))
        .route("/bots/{id}/schedules/{job}/resume", post(resume_job))
        .route("/status", get(status))
        .route("/operators", get(operators))
        .route("/audit", get(audit))
}

/// The OpenAPI document of this API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "botvisor panel API",
        description = "Bots, texts, manifests, versions, users, broadcasts, schedules, audit. \
        Authenticate with the session cookie (plus X-CSRF-Token on changes) or \
        Authorization: Bearer <API key>."
    ),
    paths(
        sign_in,
        sign_out,
        list_bots,
        add_bot,
        show_bot,
        remove_bot,
        enable_bot,
        disable_bot,
        rename_bot,
        set_token,
        list_texts,
        export_texts,
        import_texts,
        get_text,
        put_text,
        delete_text,
        text_versions,
        rollback_text,
        get_manifest,
        put_manifest,
        validate_manifest,
        manifest_versions,
        rollback_manifest,
        chat_history,
        list_users,
        list_broadcasts,
        create_broadcast,
        audience_size,
        show_broadcast,
        pause_broadcast,
        resume_broadcast,
        cancel_broadcast,
        broadcast_report,
        list_jobs,
        add_job,
        remove_job,
        pause_job,
        resume_job,
        status,
        operators,
        audit
    ),
    components(schemas(
        ApiError,
        BotView,
        TextRecord,
        TextVersion,
        ManifestVersion,
        ManifestChange,
        AuditRecord,
        OperatorView,
        BotStatus,
        BroadcastView,
        Started,
        Counts,
        JobView,
        AudienceSize,
        NewBroadcastBody,
        NewJobBody
    ))
)]
pub struct ApiDoc;

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

type ApiResult<T> = Result<T, ApiError>;

/// Sign-in credentials.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SignIn {
    /// The operator's login.
    pub login: String,
    /// The password.
    pub password: String,
}

/// A new session.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionInfo {
    /// Who signed in.
    pub login: String,
    /// Their role.
    pub role: String,
    /// Send this as `X-CSRF-Token` with every change made with this session.
    pub csrf: String,
}

/// Checks a sign-in against the throttle and the password; shared with the sign-in page.
pub async fn check_sign_in(
    state: &AppState,
    address: &str,
    login: &str,
    password: &str,
) -> ApiResult<crate::admin::operators::NewSession> {
    if let Some(wait) = state.admin.sign_in_wait(login, address).await? {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many failed sign-ins; try again in {} s",
                wait.as_secs().max(1)
            ),
        );
        e.retry_after = Some(wait.as_secs().max(1));
        return Err(e);
    }
    match state
        .admin
        .sign_in(login, password, state.session_lifetime)
        .await
    {
        Ok(session) => {
            state.admin.sign_in_succeeded(login).await?;
            Ok(session)
        }
        Err(e @ crate::admin::AdminError::BadCredentials) => {
            state.admin.sign_in_failed(login, address).await?;
            tracing::warn!(login, address, "failed sign-in");
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Signs in: sets the session cookie and returns the CSRF token.
#[utoipa::path(post, path = "/api/v1/session", request_body = SignIn,
    responses((status = 200, body = SessionInfo), (status = 401, body = ApiError),
              (status = 429, body = ApiError)))]
async fn sign_in(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    Json(body): Json<SignIn>,
) -> ApiResult<Response> {
    let session = check_sign_in(&state, &address, &body.login, &body.password).await?;
    let cookie = session_cookie(&state, Some(&session.token));
    let mut response = Json(SessionInfo {
        login: session.operator.login,
        role: session.operator.role.as_str().to_owned(),
        csrf: session.csrf,
    })
    .into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("hex and ASCII"),
    );
    Ok(response)
}

/// Signs out (ends the session).
#[utoipa::path(delete, path = "/api/v1/session", responses((status = 204)))]
async fn sign_out(
    State(state): State<AppState>,
    ApiCaller(_caller): ApiCaller,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    if let Some(token) = super::auth::cookie(&headers, super::auth::SESSION_COOKIE) {
        state.admin.sign_out(&token).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&session_cookie(&state, None)).expect("ASCII"),
    );
    Ok(response)
}

/// Every bot the caller may see, with its status (tokens masked).
#[utoipa::path(get, path = "/api/v1/bots", responses((status = 200, body = [BotView])))]
async fn list_bots(ApiCaller(c): ApiCaller) -> ApiResult<Json<Vec<BotView>>> {
    let bots = c.admin.list_bots().await?;
    Ok(Json(
        bots.into_iter()
            .filter(|b| c.operator.may_read(b.id))
            .collect(),
    ))
}

/// A bot to register.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AddBot {
    /// A unique name.
    pub name: String,
    /// The token BotFather gave (never returned).
    pub token: String,
    /// Start it right away (default true).
    pub enabled: Option<bool>,
    /// A manifest (default: empty).
    #[schema(value_type = Option<Object>)]
    pub manifest: Option<serde_json::Value>,
}

/// Registers a bot (admins and owners).
#[utoipa::path(post, path = "/api/v1/bots", request_body = AddBot,
    responses((status = 201, body = BotView), (status = 422, body = ApiError),
              (status = 409, body = ApiError), (status = 403, body = ApiError)))]
async fn add_bot(
    ApiCaller(c): ApiCaller,
    Json(body): Json<AddBot>,
) -> ApiResult<(StatusCode, Json<BotView>)> {
    c.check(Permission::ManageBots)?;
    let manifest = body.manifest.as_ref().map(|m| m.to_string());
    let id = c
        .admin
        .add_bot(&NewBot {
            name: &body.name,
            token: &body.token,
            manifest: manifest.as_deref(),
            enabled: body.enabled.unwrap_or(true),
            database: None,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(c.admin.show_bot(id).await?)))
}

/// One bot with its status.
#[utoipa::path(get, path = "/api/v1/bots/{id}",
    responses((status = 200, body = BotView), (status = 404, body = ApiError)))]
async fn show_bot(ApiCaller(c): ApiCaller, Path(id): Path<i64>) -> ApiResult<Json<BotView>> {
    c.check(Permission::ReadBot(id))?;
    Ok(Json(c.admin.show_bot(id).await?))
}

/// How to remove a bot.
#[derive(Debug, Deserialize, IntoParams)]
pub struct RemoveQuery {
    /// Also drop the bot's database (default false: kept).
    pub drop_database: Option<bool>,
}

/// Removes a bot and its texts (admins and owners); its database is kept unless asked.
#[utoipa::path(delete, path = "/api/v1/bots/{id}", params(RemoveQuery),
    responses((status = 204), (status = 404, body = ApiError)))]
async fn remove_bot(
    ApiCaller(c): ApiCaller,
    Path(id): Path<i64>,
    Query(q): Query<RemoveQuery>,
) -> ApiResult<StatusCode> {
    c.check(Permission::ManageBots)?;
    c.admin
        .remove_bot(id, q.drop_database.unwrap_or(false), true)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Enables a bot (the daemon starts it).
#[utoipa::path(post, path = "/api/v1/bots/{id}/enable", responses((status = 200, body = BotView)))]
async fn enable_bot(ApiCaller(c): ApiCaller, Path(id): Path<i64>) -> ApiResult<Json<BotView>> {
    c.check(Permission::ManageBots)?;
    c.admin.set_enabled(id, true).await?;
    Ok(Json(c.admin.show_bot(id).await?))
}

/// Disables a bot (the daemon stops it).
#[utoipa::path(post, path = "/api/v1/bots/{id}/disable", responses((status = 200, body = BotView)))]
async fn disable_bot(ApiCaller(c): ApiCaller, Path(id): Path<i64>) -> ApiResult<Json<BotView>> {
    c.check(Permission::ManageBots)?;
    c.admin.set_enabled(id, false).await?;
    Ok(Json(c.admin.show_bot(id).await?))
}

/// A new name.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Rename {
    /// The new unique name.
    pub name: String,
}

/// Renames a bot.
#[utoipa::path(put, path = "/api/v1/bots/{id}/name", request_body = Rename,
    responses((status = 200, body = BotView), (status = 409, body = ApiError)))]
async fn rename_bot(
    ApiCaller(c): ApiCaller,
    Path(id): Path<i64>,
    Json(body): Json<Rename>,
) -> ApiResult<Json<BotView>> {
    c.check(Permission::ManageBots)?;
    c.admin.rename_bot(id, &body.name).await?;
    Ok(Json(c.admin.show_bot(id).await?))
}

/// A new token (write-only: never returned).
#[derive(Debug, Deserialize, ToSchema)]
pub struct SetToken {
    /// The token BotFather gave.
    pub token: String,
}

/// Replaces a bot's token (the daemon restarts it with the new one).
#[utoipa::path(put, path = "/api/v1/bots/{id}/token", request_body = SetToken,
    responses((status = 204), (status = 422, body = ApiError)))]
async fn set_token(
    ApiCaller(c): ApiCaller,
    Path(id): Path<i64>,
    Json(body): Json<SetToken>,
) -> ApiResult<StatusCode> {
    c.check(Permission::ManageBots)?;
    c.admin.set_token(id, &body.token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every text of a bot.
#[utoipa::path(get, path = "/api/v1/bots/{id}/texts", responses((status = 200, body = [TextRecord])))]
async fn list_texts(
    ApiCaller(c): ApiCaller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Vec<TextRecord>>> {
    c.check(Permission::ReadBot(id))?;
    Ok(Json(c.admin.list_texts(id).await?))
}

/// Every text as `{"key": {"lang": "value"}}`, ready for import.
#[utoipa::path(get, path = "/api/v1/bots/{id}/texts/export", responses((status = 200, body = Object)))]
async fn export_texts(
    ApiCaller(c): ApiCaller,
    Path(id): Path<i64>,
) -> ApiResult<Json<BTreeMap<String, BTreeMap<String, String>>>> {
    c.check(Permission::ReadBot(id))?;
    Ok(Json(c.admin.export_texts(id).await?))
}

/// How many texts were imported.
#[derive(Debug, Serialize, ToSchema)]
pub struct Imported {
    /// The count.
    pub imported: usize,
}

/// Imports `{"key": "value"}` or `{"key": {"lang": "value"}}` in one transaction.
#[utoipa::path(post, path = "/api/v1/bots/{id}/texts/import", request_body = Object,
    responses((status = 200, body = Imported), (status = 422, body = ApiError)))]
async fn import_texts(
    ApiCaller(c): ApiCaller,
    Path(id): Path<i64>,
    Json(body): Json<serde_json::Value>,
) -> ApiResult<Json<Imported>> {
    c.check(Permission::EditBot(id))?;
    let imported = c
        .admin
        .import_texts(id, &body.to_string(), TextsFormat::Json)
        .await?;
    Ok(Json(Imported { imported }))
}

/// A language, defaulting to the manifest's default_language.
#[derive(Debug, Deserialize, IntoParams)]
pub struct LangQuery {
    /// The language, e.g. `en`.
    pub lang: Option<String>,
}

/// One text.
#[utoipa::path(get, path = "/api/v1/bots/{id}/texts/{key}", params(LangQuery),
    responses((status = 200, body = TextRecord), (status = 404, body = ApiError)))]
async fn get_text(
    ApiCaller(c): ApiCaller,
    Path((id, key)): Path<(i64, String)>,
    Query(q): Query<LangQuery>,
) -> ApiResult<Json<TextRecord>> {
    c.check(Permission::ReadBot(id))?;
    Ok(Json(c.admin.get_text(id, &key, q.lang.as_deref()).await?))
}

/// A text's new value.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PutText {
    /// The value, with placeholders {first_name}, {username}, {bot_name}, {panel_name}.
    pub value: String,
    /// The language; default: the manifest's default_language.
    pub lang: Option<String>,
}

/// Sets a text (validated as the CLI validates it).
#[utoipa::path(put, path = "/api/v1/bots/{id}/texts/{key}", request_body = PutText,
    responses((status = 200, body = TextRecord), (status = 422, body = ApiError)))]
async fn put_text(
    ApiCaller(c): ApiCaller,
    Path((id, key)): Path<(i64, String)>,
    Json(body): Json<PutText>,
) -> ApiResult<Json<TextRecord>> {
    c.check(Permission::EditBot(id))?;
    let lang = c
        .admin
        .set_text(id, &key, body.lang.as_deref(), &body.value)
        .await?;
    Ok(Json(c.admin.get_text(id, &key, Some(&lang)).await?))
}

/// Deletes a text (an unset text is a 404).
#[utoipa::path(delete, path = "/api/v1/bots/{id}/texts/{key}", params(LangQuery),
    responses((status = 204), (status = 404, body = ApiError)))]
async fn delete_text(
    ApiCaller(c): ApiCaller,
    Path((id, key)): Path<(i64, String)>,
    Query(q): Query<LangQuery>,
) -> ApiResult<StatusCode> {
    c.check(Permission::EditBot(id))?;
    c.admin.delete_text(id, &key, q.lang.as_deref()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A text's versions, newest first.
#[utoipa::path(get, path = "/api/v1/bots/{id}/texts/{key}/versions", params(LangQuery),
    responses((status = 200, body = [TextVersion])))]
async fn text_versions(
    ApiCaller(c): ApiCaller,
    Path((id, key)): Path<(i64, String)>,
    Query(q): Query<LangQuery>,
) -> ApiResult<Json<Vec<TextVersion>>> {
    c.check(Permission::ReadBot(id))?;
    Ok(Json(
        c.admin.text_history(id, &key, q.lang.as_deref()).await?,
    ))
}

/// Puts a text back as a version left it.
#[utoipa::path(post, path = "/api/v1/bots/{id}/texts/{key}/versions/{version}/rollback",
    params(LangQuery), responses((status = 204), (status = 404, body = ApiError)))]
async fn rollback_text(
    ApiCaller(c): ApiCaller,
    Path((id, key, version)): Path<(i64, String, i64)>,
    Query(q): Query<LangQuery>,
) -> ApiResult<StatusCode> {
    c.check(Permission::EditBot(id))?;
    c.admin
        .rollback_text(id, &key, q.lang.as_deref(), version)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A bot's manifest.
#[utoipa::path(get, path = "/api/v1/bots/{id}/manifest", responses((status = 200, body = Object)))]
async fn get_manifest(
    ApiCaller(c): ApiCaller,
    Path(id): Path<i64>,
) -> ApiResult<Json<serde_json::Value>> {
    c.check(Permission::ReadBot(id))?;
    Ok(Json(c.admin.manifest(id).await?))
}

/// Replaces a bot's manifest (validated; the error names the JSON path in `field`).
#[utoipa::path(put, path = "/api/v1/bots/{id}/manifest", request_body = Object,
    responses((status = 200, body = ManifestChange), (status = 422, body = ApiError)))]
async fn put_manifest(
    ApiCaller(c): ApiCaller,
    Path(id): Path<i64>,
    Json(body): Json<serde_json::Value>,
) -> ApiResult<Json<ManifestChange>> {
    c.check(Permission::EditBot(id))?;
    Ok(Json(c.admin.replace_manifest(id, &body.to_string()).await?))
}

/// Whether a manifest is valid.
#[derive(Debug, Serialize, ToSchema)]
pub struct Valid {
    /// Always true (an invalid one is a 422).
    pub valid: bool,
}

/// Validates a manifest without saving it.
#[utoipa::path(post, path = "/api/v1/bots/{id}/manifest/validate", request_body = Object,
    responses((status = 200, body = Valid), (status = 422, body = ApiError)))]
async fn validate_manifest(
    ApiCaller(c): ApiCaller,
    Path(id): Path<i64>,
    Json(body): Json<serde_json::Value>,
) -> ApiResult<Json<Valid>> {
    c.check(Permission::ReadBot(id))?;
    c.admin.validate_manifest(&body.to_string())?;
    Ok(Json(Valid { valid: true }))
}

/// A manifest's versions, newest first.
#[utoipa::path(get, path = "/api/v1/bots/{id}/manifest/versions",
    responses((status = 200, body = [ManifestVersion])))]
async fn manifest_versions(
    ApiCaller(c): ApiCaller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Vec<ManifestVersion>>> {
    c.check(Permission::ReadBot(id))?;
    Ok(Json(c.admin.manifest_history(id).await?))
}

/// Puts a manifest back as a version wrote it.
#[utoipa::path(post, path = "/api/v1/bots/{id}/manifest/versions/{version}/rollback",
    responses((status = 200, body = ManifestChange), (status = 404, body = ApiError)))]
async fn rollback_manifest(
    ApiCaller(c): ApiCaller,
    Path((id, version)): Path<(i64, i64)>,
) -> ApiResult<Json<ManifestChange>> {
    c.check(Permission::EditBot(id))?;
    Ok(Json(c.admin.rollback_manifest(id, version).await?))
}

/// Which chat's history, and how much.
#[derive(Debug, Deserialize, IntoParams)]
pub struct HistoryQuery {
    /// The chat (for a private chat, the user's Telegram id).
    pub chat: i64,
    /// How many of the latest messages (1-1000, default 50).
    pub limit: Option<i64>,
}

/// One message of a chat's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct Message {
    /// user, bot or admin.
    pub role: String,
    /// The text.
    pub content: String,
    /// When (UTC).
    pub timestamp: chrono::DateTime<chrono::Utc>,
}

/// A chat's latest messages, oldest first, from the bot's database.
#[utoipa::path(get, path = "/api/v1/bots/{id}/history", params(HistoryQuery),
    responses((status = 200, body = [Message]), (status = 404, body = ApiError)))]
async fn chat_history(
    ApiCaller(c): ApiCaller,
    Path(id): Path<i64>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Json<Vec<Message>>> {
    c.check(Permission::ReadBot(id))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "limit must be 1-1000").field("limit"),
        );
    }
    let messages = c.admin.chat_history(id, q.chat, limit).await?;
    Ok(Json(
        messages
            .into_iter()
            .map(|m| Message {
                role: m.role,
                content: m.content,
                timestamp: m.created_at,
            })
            .collect(),
    ))
}

/// A page of users.
#[derive(Debug, Deserialize, IntoParams)]
pub struct UsersQuery {
    /// A part of the name, username or id.
    pub q: Option<String>,
    /// How many (1-1000, default 50).
    pub limit: Option<i64>,
    /// How many to skip.
    pub offset: Option<i64>,
}

/// A bot's users, the latest seen first (paginated), from the bot's database.
#[utoipa::path(get, path = "/api/v1/bots/{id}/users", params(UsersQuery),
    responses((status = 200, body = [UserRecord]), (status = 404, body = ApiError)))]
async fn list_users(
    ApiCaller(c): ApiCaller,
    Path(id): Path<i64>,
    Query(q): Query<UsersQuery>,
) -> ApiResult<Json<Vec<UserRecord>>> {
    c.check(Permission::ReadBot(id))?;
    let search = q.q.as_deref().filter(|s| !s.trim().is_empty());
    Ok(Json(
        c.admin
            .list_users(id, search, q.limit.unwrap_or(50), q.offset.unwrap_or(0))
            .await?,
    ))
}

/// The daemon's view of every bot the caller may see (`bot_status`).
#[utoipa::path(get, path = "/api/v1/status", responses((status = 200, body = [BotStatus])))]
async fn status(ApiCaller(c): ApiCaller) -> ApiResult<Json<Vec<BotStatus>>> {
    let bots = c.admin.list_bots().await?;
    Ok(Json(
        bots.into_iter()
            .filter(|b| c.operator.may_read(b.id))
            .filter_map(|b| {
                Some(BotStatus {
                    bot_id: b.id,
                    instance: b.instance?,
                    state: b.state?,
                    detail: b.detail.unwrap_or_default(),
                    telegram_username: b.telegram_username,
                    started_at: b.started_at,
                    updated_at: b.status_updated_at?,
                    webhook_url: b.webhook.as_ref().map(|w| w.url.clone()),
                    webhook_pending_update_count: b
                        .webhook
                        .as_ref()
                        .and_then(|w| w.pending_update_count),
                    webhook_last_error_at: b.webhook.as_ref().and_then(|w| w.last_error_at),
                    webhook_last_error: b
                        .webhook
                        .as_ref()
                        .and_then(|w| w.last_error_message.clone()),
                    webhook_checked_at: b.webhook.as_ref().and_then(|w| w.checked_at),
                    updates_per_min: b.traffic.map(|t| t.updates_per_min),
                    sent_per_min: b.traffic.map(|t| t.sent_per_min),
                    traffic_at: b.traffic.map(|t| t.at),
                })
            })
            .collect(),
    ))
}

/// Every operator (owners only).
#[utoipa::path(get, path = "/api/v1/operators",
    responses((status = 200, body = [OperatorView]), (status = 403, body = ApiError)))]
async fn operators(ApiCaller(c): ApiCaller) -> ApiResult<Json<Vec<OperatorView>>> {
    c.check(Permission::Owner)?;
    Ok(Json(c.admin.list_operators().await?))
}

/// A page of the audit log.
#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditQuery {
    /// How many entries (1-1000, default 100).
    pub limit: Option<i64>,
    /// Only entries older than this id (the next page).
    pub before: Option<i64>,
}

/// The audit log, newest first (owners only).
#[utoipa::path(get, path = "/api/v1/audit", params(AuditQuery),
    responses((status = 200, body = [AuditRecord]), (status = 403, body = ApiError)))]
async fn audit(
    ApiCaller(c): ApiCaller,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditRecord>>> {
    c.check(Permission::Owner)?;
    Ok(Json(
        c.admin.audit_log(q.limit.unwrap_or(100), q.before).await?,
    ))
}

// ---- Broadcasts ----

/// What a broadcast or a job sends: exactly one of a text and a text key (empty counts as
/// absent, as forms send it).
pub fn content_of<'a>(
    text: Option<&'a str>,
    text_key: Option<&'a str>,
) -> Result<Content<'a>, ApiError> {
    let text = text.filter(|t| !t.trim().is_empty());
    let key = text_key.map(str::trim).filter(|k| !k.is_empty());
    match (text, key) {
        (Some(t), None) => Ok(Content::Text(t)),
        (None, Some(k)) => Ok(Content::TextKey(k)),
        (Some(_), Some(_)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "give either text or text_key, not both",
        )
        .field("text")),
        (None, None) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "say what to send: text or text_key",
        )
        .field("text")),
    }
}

/// A broadcast to start.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewBroadcastBody {
    /// The message (placeholders {first_name}, {username}… filled per recipient); or
    /// `text_key`.
    pub text: Option<String>,
    /// A text key, rendered per recipient in their language; or `text`.
    pub text_key: Option<String>,
    /// `all` (default), `lang:CODE`, `active-days:N` or `admins`.
    pub audience: Option<String>,
    /// When it starts: RFC 3339, or `YYYY-MM-DD HH:MM` in UTC; absent: now.
    pub at: Option<String>,
    /// Inline buttons as rows of Telegram buttons: `[[{"text": "Site", "url": "https://…"}]]`.
    #[schema(value_type = Option<Object>)]
    pub buttons: Option<serde_json::Value>,
}

/// Every broadcast of a bot, newest first, with its progress.
#[utoipa::path(get, path = "/api/v1/bots/{id}/broadcasts",
    responses((status = 200, body = [BroadcastView]), (status = 404, body = ApiError)))]
async fn list_broadcasts(
    ApiCaller(c): ApiCaller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Vec<BroadcastView>>> {
    c.check(Permission::ReadBot(id))?;
    Ok(Json(c.admin.list_broadcasts(id).await?))
}

/// Starts a broadcast now, or schedules it (`at`); the answer says how many users it goes to.
#[utoipa::path(post, path = "/api/v1/bots/{id}/broadcasts", request_body = NewBroadcastBody,
    responses((status = 201, body = Started), (status = 422, body = ApiError),
              (status = 403, body = ApiError)))]
async fn create_broadcast(
    ApiCaller(c): ApiCaller,
    Path(id): Path<i64>,
    Json(body): Json<NewBroadcastBody>,
) -> ApiResult<(StatusCode, Json<Started>)> {
    c.check(Permission::EditBot(id))?;
    let content = content_of(body.text.as_deref(), body.text_key.as_deref())?;
    let buttons = body.buttons.as_ref().map(|b| b.to_string());
    let started = c
        .admin
        .start_broadcast(
            id,
            &BroadcastRequest {
                content,
                audience: body.audience.as_deref().unwrap_or("all"),
                at: body.at.as_deref().filter(|a| !a.trim().is_empty()),
                buttons: buttons.as_deref(),
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(started)))
}

/// Which audience to size.
#[derive(Debug, Deserialize, IntoParams)]
pub struct AudienceQuery {
    /// `all` (default), `lang:CODE`, `active-days:N` or `admins`.
    pub audience: Option<String>,
}

/// How many users an audience has now.
#[derive(Debug, Serialize, ToSchema)]
pub struct AudienceSize {
    /// The audience, as written.
    pub audience: String,
    /// Its users now (blocked users excluded).
    pub size: i64,
}

/// How many users an audience has now, before anything is sent.
#[utoipa::path(get, path = "/api/v1/bots/{id}/broadcasts/audience", params(AudienceQuery),
    responses((status = 200, body = AudienceSize), (status = 422, body = ApiError)))]
async fn audience_size(
    ApiCaller(c): ApiCaller,
    Path(id): Path<i64>,
    Query(q): Query<AudienceQuery>,
) -> ApiResult<Json<AudienceSize>> {
    c.check(Permission::ReadBot(id))?;
    let audience = q.audience.unwrap_or_else(|| "all".into());
    let size = c
        .admin
        .audience_preview(id, &audience)
        .await
        .map_err(|e| match e {
            crate::admin::AdminError::Invalid(_) => ApiError::from(e).field("audience"),
            e => e.into(),
        })?;
    Ok(Json(AudienceSize { audience, size }))
}

/// One broadcast with its progress.
#[utoipa::path(get, path = "/api/v1/bots/{id}/broadcasts/{bid}",
    responses((status = 200, body = BroadcastView), (status = 404, body = ApiError)))]
async fn show_broadcast(
    ApiCaller(c): ApiCaller,
    Path((id, bid)): Path<(i64, i64)>,
) -> ApiResult<Json<BroadcastView>> {
    c.check(Permission::ReadBot(id))?;
    Ok(Json(c.admin.broadcast_status(id, bid).await?))
}

/// Pauses a scheduled or running broadcast.
#[utoipa::path(post, path = "/api/v1/bots/{id}/broadcasts/{bid}/pause",
    responses((status = 200, body = BroadcastView), (status = 422, body = ApiError)))]
async fn pause_broadcast(
    ApiCaller(c): ApiCaller,
    Path((id, bid)): Path<(i64, i64)>,
) -> ApiResult<Json<BroadcastView>> {
    c.check(Permission::EditBot(id))?;
    c.admin.pause_broadcast(id, bid).await?;
    Ok(Json(c.admin.broadcast_status(id, bid).await?))
}

/// Resumes a paused broadcast where it stopped.
#[utoipa::path(post, path = "/api/v1/bots/{id}/broadcasts/{bid}/resume",
    responses((status = 200, body = BroadcastView), (status = 422, body = ApiError)))]
async fn resume_broadcast(
    ApiCaller(c): ApiCaller,
    Path((id, bid)): Path<(i64, i64)>,
) -> ApiResult<Json<BroadcastView>> {
    c.check(Permission::EditBot(id))?;
    c.admin.resume_broadcast(id, bid).await?;
    Ok(Json(c.admin.broadcast_status(id, bid).await?))
}

/// Cancels a broadcast that has not ended.
#[utoipa::path(post, path = "/api/v1/bots/{id}/broadcasts/{bid}/cancel",
    responses((status = 200, body = BroadcastView), (status = 422, body = ApiError)))]
async fn cancel_broadcast(
    ApiCaller(c): ApiCaller,
    Path((id, bid)): Path<(i64, i64)>,
) -> ApiResult<Json<BroadcastView>> {
    c.check(Permission::EditBot(id))?;
    c.admin.cancel_broadcast(id, bid).await?;
    Ok(Json(c.admin.broadcast_status(id, bid).await?))
}

/// One CSV field, quoted when it needs to be.
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

/// A broadcast's report as CSV: `user_id,outcome,error,time` (UTC, RFC 3339).
pub fn report_csv(lines: &[ReportLine]) -> String {
    let mut out = String::from("user_id,outcome,error,time\n");
    for l in lines {
        out.push_str(&format!(
            "{},{},{},{}\n",
            l.user_id,
            csv_field(&l.outcome),
            csv_field(l.error.as_deref().unwrap_or("")),
            l.time.map(|t| t.to_rfc3339()).unwrap_or_default()
        ));
    }
    out
}

/// A broadcast's report, one line per recipient, as a CSV download.
#[utoipa::path(get, path = "/api/v1/bots/{id}/broadcasts/{bid}/report.csv",
    responses((status = 200, content_type = "text/csv", body = String),
              (status = 404, body = ApiError)))]
async fn broadcast_report(
    ApiCaller(c): ApiCaller,
    Path((id, bid)): Path<(i64, i64)>,
) -> ApiResult<Response> {
    c.check(Permission::ReadBot(id))?;
    let lines = c.admin.broadcast_report(id, bid).await?;
    let name = format!("attachment; filename=\"bot{id}-broadcast{bid}.csv\"");
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, name),
        ],
        report_csv(&lines),
    )
        .into_response())
}

// ---- Schedules ----

/// A scheduled job to add: exactly one of `at`, `in` and `cron`; a `chat` or an `audience`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct NewJobBody {
    /// Once, at TIME: RFC 3339, or `YYYY-MM-DD HH:MM` in `tz`.
    pub at: Option<String>,
    /// Once, after DURATION: `90s`, `15m`, `2h`, `1d`, `1h30m`.
    #[serde(rename = "in")]
    pub after: Option<String>,
    /// At every occurrence of a cron expression (5 fields, or 6 with seconds) in `tz`.
    pub cron: Option<String>,
    /// The IANA zone times are read in (default UTC).
    pub tz: Option<String>,
    /// Send to this one chat.
    pub chat: Option<i64>,
    /// Or to an audience: `all`, `lang:CODE`, `active-days:N`, `admins`.
    pub audience: Option<String>,
    /// The message; or `text_key`.
    pub text: Option<String>,
    /// A text key; or `text`.
    pub text_key: Option<String>,
    /// Start a broadcast at each occurrence instead of sending directly.
    pub broadcast: Option<bool>,
    /// `run-once` (default) or `skip`: what a missed occurrence does.
    pub misfire: Option<String>,
}

/// Reads a job request from `body` (shared with the schedules page).
pub fn job_request(body: &NewJobBody) -> Result<JobRequest<'_>, ApiError> {
    fn given(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }
    let timing = match (given(&body.at), given(&body.after), given(&body.cron)) {
        (Some(at), None, None) => Timing::At(at),
        (None, Some(d), None) => Timing::In(d),
        (None, None, Some(c)) => Timing::Cron(c),
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "say when, with exactly one of at, in and cron",
            )
            .field("when"));
        }
    };
    let target = match (body.chat, given(&body.audience)) {
        (Some(chat), None) => Target::Chat(chat),
        (None, Some(a)) => Target::Audience(a),
        (None, None) => Target::None,
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "give either chat or audience, not both",
            )
            .field("audience"));
        }
    };
    Ok(JobRequest {
        timing,
        tz: given(&body.tz),
        target,
        content: content_of(body.text.as_deref(), body.text_key.as_deref())?,
        broadcast: body.broadcast.unwrap_or(false),
        misfire: given(&body.misfire),
    })
}

/// Every scheduled job of a bot, with its next run in UTC and in the job's zone.
#[utoipa::path(get, path = "/api/v1/bots/{id}/schedules",
    responses((status = 200, body = [JobView]), (status = 404, body = ApiError)))]
async fn list_jobs(ApiCaller(c): ApiCaller, Path(id): Path<i64>) -> ApiResult<Json<Vec<JobView>>> {
    c.check(Permission::ReadBot(id))?;
    Ok(Json(c.admin.list_jobs(id).await?))
}

/// Adds a scheduled job.
#[utoipa::path(post, path = "/api/v1/bots/{id}/schedules", request_body = NewJobBody,
    responses((status = 201, body = JobView), (status = 422, body = ApiError),
              (status = 403, body = ApiError)))]
async fn add_job(
    ApiCaller(c): ApiCaller,
    Path(id): Path<i64>,
    Json(body): Json<NewJobBody>,
) -> ApiResult<(StatusCode, Json<JobView>)> {
    c.check(Permission::EditBot(id))?;
    let req = job_request(&body)?;
    Ok((StatusCode::CREATED, Json(c.admin.add_job(id, &req).await?)))
}

/// Removes a scheduled job (and its runs).
#[utoipa::path(delete, path = "/api/v1/bots/{id}/schedules/{job}",
    responses((status = 204), (status = 404, body = ApiError)))]
async fn remove_job(
    ApiCaller(c): ApiCaller,
    Path((id, job)): Path<(i64, i64)>,
) -> ApiResult<StatusCode> {
    c.check(Permission::EditBot(id))?;
    c.admin.remove_job(id, job).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pauses a scheduled job.
#[utoipa::path(post, path = "/api/v1/bots/{id}/schedules/{job}/pause",
    responses((status = 200, body = JobView), (status = 404, body = ApiError)))]
async fn pause_job(
    ApiCaller(c): ApiCaller,
    Path((id, job)): Path<(i64, i64)>,
) -> ApiResult<Json<JobView>> {
    c.check(Permission::EditBot(id))?;
    c.admin.pause_job(id, job, true).await?;
    Ok(Json(c.admin.get_job(id, job).await?))
}

/// Resumes a paused job from its next occurrence after now.
#[utoipa::path(post, path = "/api/v1/bots/{id}/schedules/{job}/resume",
    responses((status = 200, body = JobView), (status = 404, body = ApiError)))]
async fn resume_job(
    ApiCaller(c): ApiCaller,
    Path((id, job)): Path<(i64, i64)>,
) -> ApiResult<Json<JobView>> {
    c.check(Permission::EditBot(id))?;
    c.admin.pause_job(id, job, false).await?;
    Ok(Json(c.admin.get_job(id, job).await?))
}
