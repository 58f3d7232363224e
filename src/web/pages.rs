//! The HTML pages: server-rendered (askama templates in `templates/`), plain forms, no
//! JavaScript needed. Every state change is a POST carrying the session's CSRF token in a
//! hidden `csrf` field, answered with a redirect (or the same page with the error next to the
//! field). Pages call the same service layer, as the signed-in operator, as the API does.

use std::collections::{BTreeMap, BTreeSet};

use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::auth::{Caller, ClientAddress, MaybeCaller, session_cookie};
use super::i18n::{self, LANG_COOKIE, Tr};
use super::{ApiError, AppState};
use crate::admin::AdminError;
use crate::admin::bots::{BotView, NewBot};
use crate::admin::operators::{Operator, OperatorView, Permission};
use crate::admin::versions::{DiffLine, diff_lines};
use crate::content::texts::{Vars, render};
use crate::modules::core::store::UserRecord;
use crate::modules::history::store::MessageRecord;
use crate::panel::access::AuditRecord;

/// The pages' routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/static/panel.css", get(stylesheet))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/lang/{code}", get(switch_language))
        .route("/", get(bots_page))
        .route("/bots", post(add_bot))
        .route("/bots/{id}", get(bot_page))
        .route("/bots/{id}/texts", post(save_text))
        .route("/bots/{id}/enable", post(enable_bot))
        .route("/bots/{id}/disable", post(disable_bot))
        .route(
            "/bots/{id}/manifest",
            get(manifest_page).post(save_manifest),
        )
        .route("/bots/{id}/versions", get(versions_page))
        .route("/bots/{id}/versions/text", post(rollback_text))
        .route("/bots/{id}/versions/manifest", post(rollback_manifest))
        .route("/bots/{id}/users", get(users_page))
        .route("/bots/{id}/chats/{chat}", get(chat_page))
        .route("/operators", get(operators_page))
        .route("/audit", get(audit_page))
}

/// The stylesheet, vendored into the binary.
const STYLESHEET: &str = include_str!("../../static/panel.css");

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        STYLESHEET,
    )
        .into_response()
}

/// A page's failure: the message on a page of its own (or the sign-in page when signed out).
#[derive(Debug)]
pub struct PageError(pub(super) ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl From<AdminError> for PageError {
    fn from(e: AdminError) -> Self {
        Self(e.into())
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    t: &'static Tr,
    me: Option<Operator>,
    csrf: String,
    message: &'a str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        if self.0.status() == StatusCode::UNAUTHORIZED {
            return Redirect::to("/login").into_response();
        }
        let page = MessagePage {
            t: &i18n::EN,
            me: None,
            csrf: String::new(),
            message: &self.0.error,
        };
        (self.0.status(), html(&page)).into_response()
    }
}

pub(super) type PageResult = Result<Response, PageError>;

pub(super) fn html<T: Template>(page: &T) -> Response {
    match page.render() {
        Ok(body) => Html(body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot render a page");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot render the page").into_response()
        }
    }
}

pub(super) fn csrf_of(c: &Caller) -> String {
    c.csrf.clone().unwrap_or_default()
}

// ---- Sign-in, sign-out, language ----

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    t: &'static Tr,
    me: Option<Operator>,
    csrf: String,
    error: Option<String>,
    login: String,
}

/// The sign-in page with a fresh pre-session CSRF token: in the form's hidden field and in a
/// `SameSite=Strict`, HttpOnly cookie that only this path gets (double submit). A sign-in
/// whose field does not match the cookie — a form posted from another site, which cannot read
/// or set the cookie — is refused before the password is looked at.
fn login_form(
    state: &AppState,
    t: &'static Tr,
    status: StatusCode,
    error: Option<String>,
    login: String,
) -> Response {
    let token = crate::admin::operators::random_hex();
    let mut r = (
        status,
        html(&LoginPage {
            t,
            me: None,
            csrf: token.clone(),
            error,
            login,
        }),
    )
        .into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&super::auth::login_csrf_cookie(state, &token)).expect("hex"),
    );
    r
}

async fn login_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    MaybeCaller(c): MaybeCaller,
) -> Response {
    if c.is_some() {
        return Redirect::to("/").into_response();
    }
    login_form(
        &state,
        i18n::choose(&headers),
        StatusCode::OK,
        None,
        String::new(),
    )
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    login: String,
    password: String,
    /// The pre-session CSRF token the sign-in page put in the form.
    #[serde(default)]
    csrf: String,
}

async fn login(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let t = i18n::choose(&headers);
    if !super::auth::login_csrf_matches(&headers, &form.csrf) {
        tracing::warn!(address, "sign-in without the form's CSRF token refused");
        return login_form(
            &state,
            t,
            StatusCode::FORBIDDEN,
            Some(super::auth::LOGIN_CSRF_REFUSED.to_owned()),
            form.login,
        );
    }
    match super::api::check_sign_in(&state, &address, &form.login, &form.password).await {
        Ok(session) => {
            let mut r = Redirect::to("/").into_response();
            r.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_str(&session_cookie(&state, Some(&session.token)))
                    .expect("ASCII"),
            );
            r.headers_mut().append(
                header::SET_COOKIE,
                HeaderValue::from_str(&super::auth::login_csrf_cookie(&state, "")).expect("ASCII"),
            );
            r
        }
        Err(e) => {
            let mut r = login_form(&state, t, e.status(), Some(e.error.clone()), form.login);
            if let Some(secs) = e.retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            r
        }
    }
}

/// A form carrying only the CSRF token.
#[derive(Debug, Deserialize)]
pub(super) struct CsrfForm {
    /// The session's CSRF token.
    pub(super) csrf: String,
}

async fn logout(
    State(state): State<AppState>,
    c: Caller,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    c.check_csrf(&form.csrf)?;
    if let Some(token) = super::auth::cookie(&headers, super::auth::SESSION_COOKIE) {
        state.admin.sign_out(&token).await?;
    }
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&session_cookie(&state, None)).expect("ASCII"),
    );
    Ok(r)
}

/// Remembers the chosen language for a year and goes back where the operator was.
async fn switch_language(Path(code): Path<String>, headers: HeaderMap) -> Response {
    let code = i18n::for_code(&code).code;
    let back = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| url::Url::parse(r).ok())
        .map(|u| match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        })
        .unwrap_or_else(|| "/".to_owned());
    let mut r = Redirect::to(&back).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{LANG_COOKIE}={code}; Path=/; SameSite=Strict; Max-Age=31536000"
        ))
        .expect("ASCII"),
    );
    r
}

// ---- Bots overview ----

/// A bot in the overview: its view, how long its run has lasted, and whether the daemon
/// instance that wrote its status is still alive.
struct OverviewRow {
    bot: BotView,
    /// How long its current run has lasted ("" when not running).
    up_for: String,
    /// How long ago the instance running it last beat ("" when no instance runs it).
    beat_ago: String,
    /// Its status says it runs, but its instance stopped beating (or is gone): the daemon
    /// died, and the state shown is the last one it wrote.
    stale: bool,
    /// Its traffic per minute as the daemon last counted it ("" when not running or not
    /// counted yet in this run).
    traffic: String,
}

impl OverviewRow {
    fn new(
        bot: BotView,
        t: &Tr,
        now: chrono::DateTime<chrono::Utc>,
        beats: &BTreeMap<String, chrono::DateTime<chrono::Utc>>,
    ) -> Self {
        let running = matches!(
            bot.state.as_deref(),
            Some("starting" | "running" | "degraded" | "backoff")
        );
        let up_for = match bot.started_at {
            Some(at) if running => span(t, now - at),
            _ => String::new(),
        };
        let beat = bot.instance.as_ref().and_then(|i| beats.get(i)).copied();
        let live = chrono::TimeDelta::from_std(crate::panel::INSTANCE_LIVE)
            .unwrap_or(chrono::TimeDelta::seconds(15));
        let stale = running && beat.is_none_or(|at| now - at > live);
        let traffic = match bot.traffic {
            Some(tr) if running => format!("↓ {} · ↑ {} /min", tr.updates_per_min, tr.sent_per_min),
            _ => String::new(),
        };
        Self {
            traffic,
            bot,
            up_for,
            beat_ago: beat.map(|at| span(t, now - at)).unwrap_or_default(),
            stale,
        }
    }
}

/// A duration as an operator reads it: the two largest units (`2 d 3 h`, `5 min 10 s`).
fn span(t: &Tr, d: chrono::TimeDelta) -> String {
    let secs = d.num_seconds().max(0);
    let (day, hour, min, sec) = if t.code == "ru" {
        ("д", "ч", "мин", "с")
    } else {
        ("d", "h", "min", "s")
    };
    let parts = [
        (secs / 86_400, day),
        (secs % 86_400 / 3600, hour),
        (secs % 3600 / 60, min),
        (secs % 60, sec),
    ];
    let first = parts.iter().position(|(n, _)| *n > 0).unwrap_or(3);
    parts[first..]
        .iter()
        .take(2)
        .filter(|(n, _)| *n > 0 || first == 3)
        .map(|(n, u)| format!("{n} {u}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Template)]
#[template(path = "bots.html")]
struct BotsPage {
    t: &'static Tr,
    me: Option<Operator>,
    csrf: String,
    bots: Vec<OverviewRow>,
    q: String,
    states: Vec<(&'static str, bool)>,
    may_manage: bool,
    error: Option<String>,
    new_name: String,
}

#[derive(Debug, Default, Deserialize)]
struct BotsQuery {
    q: Option<String>,
    state: Option<String>,
}

async fn bots_view(c: &Caller, t: &'static Tr, query: BotsQuery) -> Result<BotsPage, PageError> {
    let q = query.q.unwrap_or_default();
    let state = query.state.unwrap_or_default();
    let needle = q.trim().to_lowercase();
    let beats: BTreeMap<String, chrono::DateTime<chrono::Utc>> = c
        .admin
        .instances()
        .await?
        .into_iter()
        .map(|i| (i.name, i.heartbeat_at))
        .collect();
    let bots = c
        .admin
        .list_bots()
        .await?
        .into_iter()
        .filter(|b| c.operator.may_read(b.id))
        .filter(|b| needle.is_empty() || b.name.to_lowercase().contains(&needle))
        .filter(|b| state.is_empty() || b.state.as_deref() == Some(state.as_str()))
        .map(|b| OverviewRow::new(b, t, chrono::Utc::now(), &beats))
        .collect();
    let states = crate::admin::bots::BOT_STATES
        .iter()
        .map(|s| (*s, *s == state))
        .collect();
    Ok(BotsPage {
        t,
        csrf: csrf_of(c),
        bots,
        q,
        states,
        may_manage: c.operator.check(Permission::ManageBots).is_ok(),
        error: None,
        new_name: String::new(),
        me: Some(c.operator.clone()),
    })
}

async fn bots_page(c: Caller, headers: HeaderMap, Query(q): Query<BotsQuery>) -> PageResult {
    Ok(html(&bots_view(&c, i18n::choose(&headers), q).await?))
}

#[derive(Debug, Deserialize)]
struct AddBotForm {
    csrf: String,
    name: String,
    token: String,
    enabled: Option<String>,
}

async fn add_bot(c: Caller, headers: HeaderMap, Form(form): Form<AddBotForm>) -> PageResult {
    c.check_csrf(&form.csrf)?;
    c.check(Permission::ManageBots)?;
    let result = c
        .admin
        .add_bot(&NewBot {
            name: &form.name,
            token: &form.token,
            manifest: None,
            enabled: form.enabled.is_some(),
            database: None,
        })
        .await;
    match result {
        Ok(id) => Ok(Redirect::to(&format!("/bots/{id}")).into_response()),
        Err(e) if e.is_bad_input() => {
            let e = ApiError::from(e);
            let mut page = bots_view(&c, i18n::choose(&headers), BotsQuery::default()).await?;
            page.error = Some(e.error.clone());
            page.new_name = form.name;
            Ok((e.status(), html(&page)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

async fn set_enabled(c: Caller, id: i64, csrf: &str, enabled: bool) -> PageResult {
    c.check_csrf(csrf)?;
    c.check(Permission::ManageBots)?;
    c.admin.set_enabled(id, enabled).await?;
    Ok(Redirect::to(&format!("/bots/{id}")).into_response())
}

async fn enable_bot(c: Caller, Path(id): Path<i64>, Form(f): Form<CsrfForm>) -> PageResult {
    set_enabled(c, id, &f.csrf, true).await
}

async fn disable_bot(c: Caller, Path(id): Path<i64>, Form(f): Form<CsrfForm>) -> PageResult {
    set_enabled(c, id, &f.csrf, false).await
}

// ---- One bot: status and the texts grid ----

struct Cell {
    lang: String,
    value: String,
    preview: String,
    error: Option<String>,
}

struct Row {
    key: String,
    cells: Vec<Cell>,
}

#[derive(Template)]
#[template(path = "bot.html")]
struct BotPage {
    t: &'static Tr,
    me: Option<Operator>,
    csrf: String,
    bot: BotView,
    /// The last hour's traffic from the bot's database (none: no database yet).
    traffic: Option<crate::botdb::store::Traffic>,
    langs: Vec<String>,
    rows: Vec<Row>,
    may_edit: bool,
    may_manage: bool,
    saved: Option<String>,
    new_key: String,
    new_lang: String,
    new_value: String,
    new_error: Option<String>,
}

/// A text's preview with sample values for the placeholders.
fn preview(t: &Tr, bot: &BotView, value: &str) -> String {
    let sample = if t.code == "ru" {
        "Алиса"
    } else {
        "Alice"
    };
    render(
        value,
        &Vars {
            first_name: sample,
            username: "alice",
            bot_name: bot.telegram_username.as_deref().unwrap_or(&bot.name),
            panel_name: &bot.name,
        },
    )
}

/// A rejected text: its key, language, submitted value and error.
type Rejected = (String, String, String, String);

async fn bot_view(
    c: &Caller,
    t: &'static Tr,
    id: i64,
    rejected: Option<Rejected>,
) -> Result<BotPage, PageError> {
    c.check(Permission::ReadBot(id))?;
    let bot = c.admin.show_bot(id).await?;
    let default_lang = c.admin.default_lang(id, None).await?;
    let texts = c.admin.list_texts(id).await?;
    let mut langs: BTreeSet<String> = texts.iter().map(|x| x.lang.clone()).collect();
    langs.insert(default_lang.clone());
    let mut by_key: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for x in texts {
        by_key.entry(x.key).or_default().insert(x.lang, x.value);
    }
    // A rejected value is shown in its cell with the error, or in the new-text form when the
    // grid has no such cell.
    let in_grid = |key: &str, lang: &str| by_key.contains_key(key) && langs.contains(lang);
    let (in_cell, new) = match rejected {
        Some(r) if in_grid(&r.0, &r.1) => {
            (Some(r), (String::new(), default_lang, String::new(), None))
        }
        Some((key, lang, value, error)) => (None, (key, lang, value, Some(error))),
        None => (None, (String::new(), default_lang, String::new(), None)),
    };
    let langs: Vec<String> = langs.into_iter().collect();
    let traffic = match c.admin.traffic(id).await {
        Ok(t) => Some(t),
        Err(AdminError::NoDatabase { .. }) => None,
        Err(e) => {
            tracing::warn!(bot_id = id, error = %crate::mask::error_line(&e), "cannot read the bot's traffic");
            None
        }
    };
    let rows = by_key
        .into_iter()
        .map(|(key, values)| Row {
            cells: langs
                .iter()
                .map(|lang| match &in_cell {
                    Some((k, l, value, error)) if *k == key && l == lang => Cell {
                        lang: lang.clone(),
                        value: value.clone(),
                        preview: String::new(),
                        error: Some(error.clone()),
                    },
                    _ => {
                        let value = values.get(lang).cloned().unwrap_or_default();
                        Cell {
                            lang: lang.clone(),
                            preview: if value.is_empty() {
                                String::new()
                            } else {
                                preview(t, &bot, &value)
                            },
                            value,
                            error: None,
                        }
                    }
                })
                .collect(),
            key,
        })
        .collect();
    Ok(BotPage {
        t,
        me: Some(c.operator.clone()),
        csrf: csrf_of(c),
        langs,
        rows,
        may_edit: c.operator.check(Permission::EditBot(id)).is_ok(),
        may_manage: c.operator.check(Permission::ManageBots).is_ok(),
        saved: None,
        new_key: new.0,
        new_lang: new.1,
        new_value: new.2,
        new_error: new.3,
        traffic,
        bot,
    })
}

#[derive(Debug, Deserialize)]
struct SavedQuery {
    saved_key: Option<String>,
    saved_lang: Option<String>,
}

async fn bot_page(
    c: Caller,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<SavedQuery>,
) -> PageResult {
    let mut page = bot_view(&c, i18n::choose(&headers), id, None).await?;
    if let (Some(k), Some(l)) = (q.saved_key, q.saved_lang) {
        page.saved = Some(format!("{k} [{l}]"));
    }
    Ok(html(&page))
}

#[derive(Debug, Deserialize)]
struct TextForm {
    csrf: String,
    key: String,
    lang: String,
    value: String,
}

async fn save_text(
    c: Caller,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<TextForm>,
) -> PageResult {
    c.check_csrf(&form.csrf)?;
    c.check(Permission::EditBot(id))?;
    // Browsers send textarea line breaks as CRLF; texts use LF.
    let value = form.value.replace("\r\n", "\n");
    match c
        .admin
        .set_text(id, form.key.trim(), Some(form.lang.trim()), &value)
        .await
    {
        Ok(lang) => Ok(Redirect::to(&format!(
            "/bots/{id}?saved_key={}&saved_lang={lang}#t-{}-{lang}",
            form.key.trim(),
            form.key.trim()
        ))
        .into_response()),
        Err(e)
            if e.is_bad_input()
                && !matches!(
                    e,
                    AdminError::Panel(crate::panel::PanelError::BotNotFound(_))
                ) =>
        {
            let e = ApiError::from(e);
            let page = bot_view(
                &c,
                i18n::choose(&headers),
                id,
                Some((form.key, form.lang, value, e.error.clone())),
            )
            .await?;
            Ok((e.status(), html(&page)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

// ---- Manifest editor ----

#[derive(Template)]
#[template(path = "manifest.html")]
struct ManifestPage {
    t: &'static Tr,
    me: Option<Operator>,
    csrf: String,
    bot: BotView,
    text: String,
    error: Option<String>,
    error_path: String,
    ok: bool,
    message: String,
    may_edit: bool,
}

async fn manifest_page(c: Caller, headers: HeaderMap, Path(id): Path<i64>) -> PageResult {
    c.check(Permission::ReadBot(id))?;
    let bot = c.admin.show_bot(id).await?;
    let manifest = c.admin.manifest(id).await?;
    Ok(html(&ManifestPage {
        t: i18n::choose(&headers),
        me: Some(c.operator.clone()),
        csrf: csrf_of(&c),
        bot,
        text: serde_json::to_string_pretty(&manifest).unwrap_or_default(),
        error: None,
        error_path: String::new(),
        ok: false,
        message: String::new(),
        may_edit: c.operator.check(Permission::EditBot(id)).is_ok(),
    }))
}

#[derive(Debug, Deserialize)]
struct ManifestForm {
    csrf: String,
    manifest: String,
    /// `save`, or anything else (a submission without a button): validate only.
    #[serde(default)]
    action: String,
}

async fn save_manifest(
    c: Caller,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<ManifestForm>,
) -> PageResult {
    c.check_csrf(&form.csrf)?;
    let save = form.action == "save";
    c.check(if save {
        Permission::EditBot(id)
    } else {
        Permission::ReadBot(id)
    })?;
    let t = i18n::choose(&headers);
    let bot = c.admin.show_bot(id).await?;
    let result = if save {
        c.admin
            .replace_manifest(id, &form.manifest)
            .await
            .map(|_| ())
    } else {
        c.admin.validate_manifest(&form.manifest).map(|_| ())
    };
    let mut page = ManifestPage {
        t,
        me: Some(c.operator.clone()),
        csrf: csrf_of(&c),
        bot,
        text: form.manifest,
        error: None,
        error_path: String::new(),
        ok: false,
        message: String::new(),
        may_edit: c.operator.check(Permission::EditBot(id)).is_ok(),
    };
    match result {
        Ok(()) => {
            page.ok = true;
            page.message = if save {
                t.saved.to_owned()
            } else {
                t.valid.to_owned()
            };
            Ok(html(&page))
        }
        Err(AdminError::Manifest(m)) => {
            page.error_path = m.path.clone();
            page.error = Some(m.reason.clone());
            Ok((StatusCode::UNPROCESSABLE_ENTITY, html(&page)).into_response())
        }
        Err(e) if e.is_bad_input() => {
            let e = ApiError::from(e);
            page.error_path = e.field.clone().unwrap_or_else(|| "$".into());
            page.error = Some(e.error.clone());
            Ok((e.status(), html(&page)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

// ---- Versions: diff and rollback ----

struct VersionRow {
    key: String,
    lang: String,
    version: i64,
    at: String,
    actor: String,
    diff: Vec<(&'static str, String)>,
}

#[derive(Template)]
#[template(path = "versions.html")]
struct VersionsPage {
    t: &'static Tr,
    me: Option<Operator>,
    csrf: String,
    bot: BotView,
    texts: Vec<VersionRow>,
    manifests: Vec<VersionRow>,
    may_edit: bool,
    message: Option<String>,
}

fn diff_view(old: &str, new: &str) -> Vec<(&'static str, String)> {
    diff_lines(old, new)
        .into_iter()
        .map(|d| match d {
            DiffLine::Same(l) => ("same", l),
            DiffLine::Removed(l) => ("removed", l),
            DiffLine::Added(l) => ("added", l),
        })
        .collect()
}

#[derive(Debug, Deserialize)]
struct DoneQuery {
    done: Option<String>,
}

async fn versions_page(
    c: Caller,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<DoneQuery>,
) -> PageResult {
    c.check(Permission::ReadBot(id))?;
    let t = i18n::choose(&headers);
    let bot = c.admin.show_bot(id).await?;
    let when = |at: chrono::DateTime<chrono::Utc>| at.format("%Y-%m-%d %H:%M:%S").to_string();
    let texts = c
        .admin
        .recent_text_versions(id, 100)
        .await?
        .into_iter()
        .map(|v| VersionRow {
            diff: if v.value.is_none() {
                let mut d = diff_view(v.previous.as_deref().unwrap_or(""), "");
                d.push(("added", t.deleted.to_owned()));
                d
            } else {
                diff_view(
                    v.previous.as_deref().unwrap_or(""),
                    v.value.as_deref().unwrap_or(""),
                )
            },
            key: v.key,
            lang: v.lang,
            version: v.version,
            at: when(v.at),
            actor: v.actor,
        })
        .collect();
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let manifests = c
        .admin
        .manifest_history(id)
        .await?
        .into_iter()
        .map(|v| VersionRow {
            diff: diff_view(
                &v.previous
                    .as_ref()
                    .map(|p| pretty(&p.0))
                    .unwrap_or_default(),
                &pretty(&v.manifest.0),
            ),
            key: String::new(),
            lang: String::new(),
            version: v.version,
            at: when(v.at),
            actor: v.actor,
        })
        .collect();
    Ok(html(&VersionsPage {
        t,
        me: Some(c.operator.clone()),
        csrf: csrf_of(&c),
        bot,
        texts,
        manifests,
        may_edit: c.operator.check(Permission::EditBot(id)).is_ok(),
        message: q.done,
    }))
}

#[derive(Debug, Deserialize)]
struct RollbackForm {
    csrf: String,
    key: Option<String>,
    lang: Option<String>,
    version: i64,
}

async fn rollback_text(c: Caller, Path(id): Path<i64>, Form(f): Form<RollbackForm>) -> PageResult {
    c.check_csrf(&f.csrf)?;
    c.check(Permission::EditBot(id))?;
    let key = f.key.unwrap_or_default();
    let lang = c
        .admin
        .rollback_text(id, &key, f.lang.as_deref(), f.version)
        .await?;
    Ok(Redirect::to(&format!(
        "/bots/{id}/versions?done={key}%20[{lang}]%20%E2%86%92%20v{}",
        f.version
    ))
    .into_response())
}

async fn rollback_manifest(
    c: Caller,
    Path(id): Path<i64>,
    Form(f): Form<RollbackForm>,
) -> PageResult {
    c.check_csrf(&f.csrf)?;
    c.check(Permission::EditBot(id))?;
    c.admin.rollback_manifest(id, f.version).await?;
    Ok(Redirect::to(&format!(
        "/bots/{id}/versions?done=manifest%20%E2%86%92%20v{}",
        f.version
    ))
    .into_response())
}

// ---- Users and chats ----

/// A bot whose database does not exist yet (it never started) has nothing to show: an empty
/// list with the reason, rather than an error page.
pub(super) fn empty_without_database<T>(
    result: Result<Vec<T>, AdminError>,
) -> Result<(Vec<T>, Option<String>), PageError> {
    match result {
        Ok(items) => Ok((items, None)),
        Err(e @ AdminError::NoDatabase { .. }) => Ok((Vec::new(), Some(e.to_string()))),
        Err(e) => Err(e.into()),
    }
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    t: &'static Tr,
    me: Option<Operator>,
    csrf: String,
    bot: BotView,
    users: Vec<UserRecord>,
    q: String,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SearchQuery {
    q: Option<String>,
}

async fn users_page(
    c: Caller,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<SearchQuery>,
) -> PageResult {
    c.check(Permission::ReadBot(id))?;
    let bot = c.admin.show_bot(id).await?;
    let q = q.q.unwrap_or_default();
    let search = Some(q.trim()).filter(|s| !s.is_empty());
    let (users, error) = empty_without_database(c.admin.list_users(id, search, 200, 0).await)?;
    Ok(html(&UsersPage {
        t: i18n::choose(&headers),
        me: Some(c.operator.clone()),
        csrf: csrf_of(&c),
        bot,
        users,
        q,
        error,
    }))
}

#[derive(Template)]
#[template(path = "chat.html")]
struct ChatPage {
    t: &'static Tr,
    me: Option<Operator>,
    csrf: String,
    bot: BotView,
    chat: i64,
    messages: Vec<MessageRecord>,
    error: Option<String>,
}

async fn chat_page(
    c: Caller,
    headers: HeaderMap,
    Path((id, chat)): Path<(i64, i64)>,
) -> PageResult {
    c.check(Permission::ReadBot(id))?;
    let bot = c.admin.show_bot(id).await?;
    let (messages, error) = empty_without_database(c.admin.chat_history(id, chat, 200).await)?;
    Ok(html(&ChatPage {
        t: i18n::choose(&headers),
        me: Some(c.operator.clone()),
        csrf: csrf_of(&c),
        bot,
        chat,
        messages,
        error,
    }))
}

// ---- Operators and the audit log (owners) ----

#[derive(Template)]
#[template(path = "operators.html")]
struct OperatorsPage {
    t: &'static Tr,
    me: Option<Operator>,
    csrf: String,
    operators: Vec<OperatorView>,
}

async fn operators_page(c: Caller, headers: HeaderMap) -> PageResult {
    c.check(Permission::Owner)?;
    Ok(html(&OperatorsPage {
        t: i18n::choose(&headers),
        me: Some(c.operator.clone()),
        csrf: csrf_of(&c),
        operators: c.admin.list_operators().await?,
    }))
}

struct AuditRow {
    at: String,
    actor: String,
    action: String,
    bot_id: Option<i64>,
    target: String,
    before: String,
    after: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    t: &'static Tr,
    me: Option<Operator>,
    csrf: String,
    entries: Vec<AuditRow>,
    next: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    before: Option<i64>,
}

/// Entries per audit page.
const AUDIT_PAGE: i64 = 100;

async fn audit_page(c: Caller, headers: HeaderMap, Query(q): Query<AuditQuery>) -> PageResult {
    c.check(Permission::Owner)?;
    let records: Vec<AuditRecord> = c.admin.audit_log(AUDIT_PAGE, q.before).await?;
    let show = |v: &Option<sqlx::types::Json<serde_json::Value>>| {
        v.as_ref().map_or(String::new(), |v| v.0.to_string())
    };
    let next = (records.len() as i64 == AUDIT_PAGE)
        .then(|| records.last().map(|r| r.id))
        .flatten();
    let entries = records
        .iter()
        .map(|r| AuditRow {
            at: r.at.format("%Y-%m-%d %H:%M:%S").to_string(),
            actor: r.actor.clone(),
            action: r.action.clone(),
            bot_id: r.bot_id,
            target: r.target.clone(),
            before: show(&r.before),
            after: show(&r.after),
        })
        .collect();
    Ok(html(&AuditPage {
        t: i18n::choose(&headers),
        me: Some(c.operator.clone()),
        csrf: csrf_of(&c),
        entries,
        next,
    }))
}
