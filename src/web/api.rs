//! The JSON API under `/api/v1`. Every route calls [`crate::admin`] as the caller, checks the
//! caller's role first, and answers errors as `{"error", "field"}` with the CLI's words.
//! The OpenAPI document (`/api/v1/openapi.json`) is generated from these handlers by utoipa.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::auth::{ApiCaller, ClientAddress, session_cookie};
use super::{ApiError, AppState};
use crate::admin::bots::{BotView, NewBot};
use crate::admin::manifests::ManifestChange;
use crate::admin::operators::{OperatorView, Permission};
use crate::admin::texts::TextsFormat;
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
        .route("/status", get(status))
        .route("/operators", get(operators))
        .route("/audit", get(audit))
}

/// The OpenAPI document of this API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "botvisor panel API",
        description = "Bots, texts, manifests, versions, audit. \
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
        BotStatus
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
    let now = Instant::now();
    if let Err(wait) = state.throttle.check(login, address, now) {
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
            state.throttle.succeeded(login);
            Ok(session)
        }
        Err(e @ crate::admin::AdminError::BadCredentials) => {
            state.throttle.failed(login, address, now);
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
