//! The broadcasts and schedules pages: compose a broadcast (with the audience's size before
//! sending), follow its progress, pause, resume or cancel it and download its report; list a
//! bot's scheduled jobs with their next run in the job's zone, add, pause, resume and remove
//! them. Plain forms (POST with the session's CSRF token, answered with a redirect, or the
//! same page with the error next to the form); a running broadcast's page refreshes itself
//! with a `<meta http-equiv="refresh">`, so no script is needed.
//!
//! The pages call the same service functions as the API and the CLI
//! ([`crate::admin::broadcasts`], [`crate::admin::schedules`]).

use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use serde::Deserialize;

use super::api::{NewJobBody, content_of, job_request};
use super::auth::Caller;
use super::i18n::{self, Tr};
use super::pages::{CsrfForm, PageError, PageResult, csrf_of, empty_without_database, html};
use super::{ApiError, AppState};
use crate::admin::bots::BotView;
use crate::admin::broadcasts::{BroadcastRequest, BroadcastView};
use crate::admin::operators::{Operator, Permission};
use crate::admin::schedules::JobView;

/// The pages' routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/bots/{id}/broadcasts", get(broadcasts_page).post(compose))
        .route("/bots/{id}/broadcasts/{bid}", get(broadcast_page))
        .route(
            "/bots/{id}/broadcasts/{bid}/{action}",
            post(change_broadcast),
        )
        .route("/bots/{id}/schedules", get(schedules_page).post(add_job))
        .route("/bots/{id}/schedules/{job}/{action}", post(change_job))
}

// ---- Broadcasts ----

/// The compose form's fields, kept when the page comes back with the audience's size or an
/// error.
#[derive(Debug, Default, Deserialize)]
struct ComposeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    text_key: String,
    #[serde(default)]
    audience: String,
    #[serde(default)]
    at: String,
    #[serde(default)]
    buttons: String,
    /// `send`, or anything else (e.g. `count`): only size the audience.
    #[serde(default)]
    action: String,
}

#[derive(Template)]
#[template(path = "broadcasts.html")]
struct BroadcastsPage {
    t: &'static Tr,
    me: Option<Operator>,
    csrf: String,
    bot: BotView,
    broadcasts: Vec<BroadcastView>,
    /// Why there is nothing to show (no database yet).
    unavailable: Option<String>,
    may_edit: bool,
    form: ComposeForm,
    /// The audience's size, after *Count*.
    size: Option<i64>,
    error: Option<String>,
}

async fn broadcasts_view(
    c: &Caller,
    t: &'static Tr,
    id: i64,
    form: ComposeForm,
) -> Result<BroadcastsPage, PageError> {
    c.check(Permission::ReadBot(id))?;
    let bot = c.admin.show_bot(id).await?;
    let (broadcasts, unavailable) = empty_without_database(c.admin.list_broadcasts(id).await)?;
    Ok(BroadcastsPage {
        t,
        me: Some(c.operator.clone()),
        csrf: csrf_of(c),
        bot,
        broadcasts,
        unavailable,
        may_edit: c.operator.check(Permission::EditBot(id)).is_ok(),
        form: ComposeForm {
            audience: "all".into(),
            ..form
        },
        size: None,
        error: None,
    })
}

async fn broadcasts_page(c: Caller, headers: HeaderMap, Path(id): Path<i64>) -> PageResult {
    let page = broadcasts_view(&c, i18n::choose(&headers), id, ComposeForm::default()).await?;
    Ok(html(&page))
}

/// Sizes the audience (*Count*) or starts the broadcast (*Send*, then its page opens).
async fn compose(
    c: Caller,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(mut form): Form<ComposeForm>,
) -> PageResult {
    c.check_csrf(&form.csrf)?;
    c.check(Permission::EditBot(id))?;
    form.text = form.text.replace("\r\n", "\n");
    let audience = match form.audience.trim() {
        "" => "all".to_owned(),
        a => a.to_owned(),
    };
    let t = i18n::choose(&headers);
    let outcome = if form.action == "send" {
        let buttons = Some(form.buttons.trim()).filter(|b| !b.is_empty());
        match content_of(Some(&form.text), Some(&form.text_key)) {
            Err(e) => Err(e),
            Ok(content) => c
                .admin
                .start_broadcast(
                    id,
                    &BroadcastRequest {
                        content,
                        audience: &audience,
                        at: Some(form.at.trim()).filter(|a| !a.is_empty()),
                        buttons,
                    },
                )
                .await
                .map(|started| Composed::Started(started.id))
                .map_err(ApiError::from),
        }
    } else {
        c.admin
            .audience_preview(id, &audience)
            .await
            .map(Composed::Counted)
            .map_err(ApiError::from)
    };
    match outcome {
        Ok(Composed::Started(bid)) => {
            Ok(Redirect::to(&format!("/bots/{id}/broadcasts/{bid}")).into_response())
        }
        Ok(Composed::Counted(size)) => {
            let mut page = broadcasts_view(&c, t, id, form).await?;
            page.form.audience = audience;
            page.size = Some(size);
            Ok(html(&page))
        }
        Err(e) if e.status().is_client_error() => {
            let mut page = broadcasts_view(&c, t, id, form).await?;
            page.form.audience = audience;
            page.error = Some(e.error.clone());
            Ok((e.status(), html(&page)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

/// What the compose form did.
enum Composed {
    /// Started (or scheduled) broadcast N.
    Started(i64),
    /// Sized the audience.
    Counted(i64),
}

#[derive(Template)]
#[template(path = "broadcast.html")]
struct BroadcastPage {
    t: &'static Tr,
    me: Option<Operator>,
    csrf: String,
    bot: BotView,
    b: BroadcastView,
    may_edit: bool,
    /// Still moving: the page refreshes itself.
    live: bool,
    /// Recipients with an outcome (sent, blocked or failed).
    done: i64,
}

async fn broadcast_page(
    c: Caller,
    headers: HeaderMap,
    Path((id, bid)): Path<(i64, i64)>,
) -> PageResult {
    c.check(Permission::ReadBot(id))?;
    let bot = c.admin.show_bot(id).await?;
    let b = c.admin.broadcast_status(id, bid).await?;
    Ok(html(&BroadcastPage {
        t: i18n::choose(&headers),
        me: Some(c.operator.clone()),
        csrf: csrf_of(&c),
        bot,
        live: matches!(b.state.as_str(), "scheduled" | "running"),
        done: b.counts.sent + b.counts.blocked + b.counts.failed,
        b,
        may_edit: c.operator.check(Permission::EditBot(id)).is_ok(),
    }))
}

/// Pause, resume or cancel, then back to the broadcast's page.
async fn change_broadcast(
    c: Caller,
    Path((id, bid, action)): Path<(i64, i64, String)>,
    Form(f): Form<CsrfForm>,
) -> PageResult {
    c.check_csrf(&f.csrf)?;
    c.check(Permission::EditBot(id))?;
    match action.as_str() {
        "pause" => c.admin.pause_broadcast(id, bid).await?,
        "resume" => c.admin.resume_broadcast(id, bid).await?,
        "cancel" => c.admin.cancel_broadcast(id, bid).await?,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown action: use pause, resume or cancel",
            )
            .into());
        }
    }
    Ok(Redirect::to(&format!("/bots/{id}/broadcasts/{bid}")).into_response())
}

// ---- Schedules ----

/// The add-a-job form's fields, kept when the page comes back with an error.
#[derive(Debug, Default, Deserialize)]
struct JobForm {
    #[serde(default)]
    csrf: String,
    /// `at`, `in` or `cron`.
    #[serde(default)]
    when_kind: String,
    #[serde(default)]
    when: String,
    #[serde(default)]
    tz: String,
    /// A chat id, or an audience (`all`, `lang:CODE`, `active-days:N`, `admins`).
    #[serde(default)]
    to: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    text_key: String,
    #[serde(default)]
    broadcast: Option<String>,
    #[serde(default)]
    misfire: String,
}

impl JobForm {
    /// The API's request for the same job; a `to` that is a number is a chat.
    fn body(&self) -> NewJobBody {
        let when = Some(self.when.trim().to_owned());
        let to = self.to.trim();
        let (chat, audience) = match to.parse::<i64>() {
            Ok(chat) => (Some(chat), None),
            Err(_) if to.is_empty() => (None, None),
            Err(_) => (None, Some(to.to_owned())),
        };
        NewJobBody {
            at: when.clone().filter(|_| self.when_kind == "at"),
            after: when.clone().filter(|_| self.when_kind == "in"),
            cron: when.filter(|_| self.when_kind == "cron"),
            tz: Some(self.tz.clone()),
            chat,
            audience,
            text: Some(self.text.replace("\r\n", "\n")),
            text_key: Some(self.text_key.clone()),
            broadcast: Some(self.broadcast.is_some()),
            misfire: Some(self.misfire.clone()),
        }
    }
}

#[derive(Template)]
#[template(path = "schedules.html")]
struct SchedulesPage {
    t: &'static Tr,
    me: Option<Operator>,
    csrf: String,
    bot: BotView,
    jobs: Vec<JobView>,
    unavailable: Option<String>,
    may_edit: bool,
    form: JobForm,
    error: Option<String>,
    /// The job just added.
    added: Option<i64>,
}

async fn schedules_view(
    c: &Caller,
    t: &'static Tr,
    id: i64,
    form: JobForm,
) -> Result<SchedulesPage, PageError> {
    c.check(Permission::ReadBot(id))?;
    let bot = c.admin.show_bot(id).await?;
    let (jobs, unavailable) = empty_without_database(c.admin.list_jobs(id).await)?;
    let form = JobForm {
        when_kind: Some(form.when_kind.clone())
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "in".into()),
        tz: Some(form.tz.clone())
            .filter(|z| !z.trim().is_empty())
            .unwrap_or_else(|| "UTC".into()),
        ..form
    };
    Ok(SchedulesPage {
        t,
        me: Some(c.operator.clone()),
        csrf: csrf_of(c),
        bot,
        jobs,
        unavailable,
        may_edit: c.operator.check(Permission::EditBot(id)).is_ok(),
        form,
        error: None,
        added: None,
    })
}

#[derive(Debug, Deserialize)]
struct AddedQuery {
    added: Option<i64>,
}

async fn schedules_page(
    c: Caller,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<AddedQuery>,
) -> PageResult {
    let mut page = schedules_view(&c, i18n::choose(&headers), id, JobForm::default()).await?;
    page.added = q.added;
    Ok(html(&page))
}

async fn add_job(
    c: Caller,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<JobForm>,
) -> PageResult {
    c.check_csrf(&form.csrf)?;
    c.check(Permission::EditBot(id))?;
    let body = form.body();
    let result = match job_request(&body) {
        Ok(req) => c.admin.add_job(id, &req).await.map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match result {
        Ok(job) => {
            Ok(Redirect::to(&format!("/bots/{id}/schedules?added={}", job.id)).into_response())
        }
        Err(e) if e.status().is_client_error() => {
            let mut page = schedules_view(&c, i18n::choose(&headers), id, form).await?;
            page.error = Some(e.error.clone());
            Ok((e.status(), html(&page)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

/// Pause, resume or remove a job, then back to the list.
async fn change_job(
    c: Caller,
    Path((id, job, action)): Path<(i64, i64, String)>,
    Form(f): Form<CsrfForm>,
) -> PageResult {
    c.check_csrf(&f.csrf)?;
    c.check(Permission::EditBot(id))?;
    match action.as_str() {
        "pause" => c.admin.pause_job(id, job, true).await?,
        "resume" => c.admin.pause_job(id, job, false).await?,
        "remove" => c.admin.remove_job(id, job).await?,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown action: use pause, resume or remove",
            )
            .into());
        }
    }
    Ok(Redirect::to(&format!("/bots/{id}/schedules")).into_response())
}
