//! Broadcasts: the operators' rules for mailings (validation, audience sizing, state
//! changes), written to the bot's own database; the running bot's broadcast job is woken
//! through `NOTIFY bot_wake, '<id>:broadcast'`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use teloxide::types::InlineKeyboardButton;

use super::schedules::parse_time;
use super::{Admin, AdminError};
use crate::content::manifest::Manifest;
use crate::content::texts::utf16_len;
use crate::modules::broadcast::store::{self, BroadcastRow, Counts, ReportLine};
use crate::modules::broadcast::{Audience, NAME};
use crate::panel::store as panel;

/// Longest message text Telegram takes, in UTF-16 units.
pub const MAX_TEXT: usize = 4096;
/// Longest button label accepted, in UTF-16 units.
pub const MAX_LABEL: usize = 64;

/// What a broadcast sends.
#[derive(Debug, Clone, Copy)]
pub enum Content<'a> {
    /// A text (placeholders `{first_name}`, `{username}`… filled per recipient).
    Text(&'a str),
    /// A text key, rendered per recipient in their language.
    TextKey(&'a str),
}

/// A broadcast an operator asks for.
#[derive(Debug, Clone, Copy)]
pub struct BroadcastRequest<'a> {
    /// What it sends.
    pub content: Content<'a>,
    /// `all`, `lang:CODE`, `active-days:N` or `admins`.
    pub audience: &'a str,
    /// When it starts: RFC 3339, or `YYYY-MM-DD HH:MM` in UTC; `None`: now.
    pub at: Option<&'a str>,
    /// Inline buttons as JSON rows (`[[{"text": "Site", "url": "https://…"}]]`).
    pub buttons: Option<&'a str>,
}

/// A created broadcast.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Started {
    /// Its id in the bot's database.
    pub id: i64,
    /// Users it goes to now (frozen when it starts now; counted when scheduled).
    pub audience_size: i64,
    /// When it starts.
    pub start_at: DateTime<Utc>,
}

/// A broadcast as every interface shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BroadcastView {
    /// Its id.
    pub id: i64,
    /// scheduled, running, paused, done or cancelled.
    pub state: String,
    /// Its audience as written.
    pub audience: String,
    /// What it sends, in short (`text: …`, `text-key: …`, `copy of message N`).
    pub content: String,
    /// cli, panel (the web panel or the API), bot or schedule.
    pub created_by: String,
    /// Recipient counts.
    #[serde(flatten)]
    pub counts: Counts,
    /// When it starts (or was due to).
    pub start_at: DateTime<Utc>,
    /// When its audience was frozen.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Sends recorded per second since it started (until it finished or now).
    pub rate: f64,
    /// How many runs of the bot resumed it after a restart or crash.
    pub resumed: i32,
}

impl BroadcastView {
    fn new(b: BroadcastRow, counts: Counts) -> Self {
        let content = match (&b.text, &b.text_key, b.copy_message_id) {
            (Some(t), _, _) => format!("text: {}", t.chars().take(40).collect::<String>()),
            (None, Some(k), _) => format!("text-key: {k}"),
            (None, None, Some(m)) => format!("copy of message {m}"),
            _ => "-".into(),
        };
        let done = counts.sent + counts.blocked + counts.failed;
        let rate = match b.started_at {
            Some(s) => {
                let end = b.finished_at.unwrap_or_else(Utc::now);
                let secs = (end - s).num_milliseconds() as f64 / 1000.0;
                if secs > 0.0 { done as f64 / secs } else { 0.0 }
            }
            None => 0.0,
        };
        Self {
            id: b.id,
            state: b.state,
            audience: b.audience,
            content,
            created_by: b.created_by,
            counts,
            start_at: b.start_at,
            started_at: b.started_at,
            finished_at: b.finished_at,
            rate: (rate * 10.0).round() / 10.0,
            resumed: b.resumed,
        }
    }
}

/// Parses inline buttons (rows of Telegram's `InlineKeyboardButton` JSON), checking labels.
pub fn parse_buttons(text: &str) -> Result<serde_json::Value, AdminError> {
    let rows: Vec<Vec<InlineKeyboardButton>> = serde_json::from_str(text).map_err(|e| {
        AdminError::Invalid(format!(
            "invalid buttons: {e}; expected rows like [[{{\"text\": \"Site\", \"url\": \"https://example.com\"}}]]"
        ))
    })?;
    if rows.is_empty() || rows.iter().any(Vec::is_empty) {
        return Err(AdminError::Invalid(
            "invalid buttons: every row needs at least one button".into(),
        ));
    }
    for b in rows.iter().flatten() {
        let len = utf16_len(&b.text);
        if len == 0 || len > MAX_LABEL {
            return Err(AdminError::Invalid(format!(
                "invalid buttons: label {:?} has {len} UTF-16 units; use 1-{MAX_LABEL}",
                b.text
            )));
        }
    }
    Ok(serde_json::to_value(&rows).unwrap_or_default())
}

impl Admin {
    /// Checks what a broadcast or job sends: a non-empty text within Telegram's length, or a
    /// text key the bot has in some language.
    pub(crate) async fn check_content(
        &self,
        id: i64,
        content: Content<'_>,
    ) -> Result<(), AdminError> {
        match content {
            Content::Text(text) => {
                let len = utf16_len(text);
                if text.trim().is_empty() || len > MAX_TEXT {
                    return Err(AdminError::Invalid(format!(
                        "invalid --text: {len} UTF-16 units; Telegram takes 1-{MAX_TEXT}"
                    )));
                }
            }
            Content::TextKey(key) => {
                let texts = panel::list_texts(&self.pool, id).await?;
                if !texts.iter().any(|t| t.key == key) {
                    return Err(AdminError::Invalid(format!(
                        "bot {id} has no text {key}: add it with `botvisor text set {id} {key} LANG VALUE`"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Users an audience of bot `id` has now; an empty audience is refused.
    pub(crate) async fn audience_size(
        conn: &mut PgConnection,
        id: i64,
        audience: &Audience,
        manifest: &Manifest,
    ) -> Result<i64, AdminError> {
        let size = store::count_audience(conn, audience, &manifest.admins)
            .await
            .map_err(AdminError::BotDbQuery)?;
        if size == 0 {
            return Err(AdminError::Invalid(format!(
                "the audience {audience} of bot {id} is empty: nobody would get it"
            )));
        }
        Ok(size)
    }

    /// Creates a broadcast; one that starts now has its audience frozen at once.
    pub async fn start_broadcast(
        &self,
        id: i64,
        req: &BroadcastRequest<'_>,
    ) -> Result<Started, AdminError> {
        let audience: Audience = req.audience.parse().map_err(AdminError::Invalid)?;
        let start_at = match req.at {
            Some(at) => Some(parse_time(at, chrono_tz::UTC, Utc::now())?),
            None => None,
        };
        let buttons = req.buttons.map(parse_buttons).transpose()?;
        self.check_content(id, req.content).await?;
        let (mut conn, bot) = self.bot_conn(id).await?;
        let manifest = Manifest::from_value(&bot.manifest.0)?;
        let result = async {
            let size = Self::audience_size(&mut conn, id, &audience, &manifest).await?;
            let (text, text_key) = match req.content {
                Content::Text(t) => (Some(t), None),
                Content::TextKey(k) => (None, Some(k)),
            };
            let audience_text = audience.to_string();
            let new = store::NewBroadcast {
                text,
                text_key,
                buttons: buttons.as_ref(),
                audience: &audience_text,
                created_by: self.origin(),
                start_at,
                ..Default::default()
            };
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let bid = store::create(&mut tx, &new).await?;
            let size = match start_at {
                Some(_) => size,
                None => store::freeze(&mut tx, bid, &audience, &manifest.admins)
                    .await?
                    .unwrap_or(0),
            };
            tx.commit().await?;
            Ok::<_, AdminError>(Started {
                id: bid,
                audience_size: size,
                start_at: start_at.unwrap_or_else(Utc::now),
            })
        }
        .await;
        conn.close().await;
        let started = result?;
        self.wake(id, NAME).await?;
        let content = match req.content {
            Content::Text(t) => serde_json::json!({ "text": t }),
            Content::TextKey(k) => serde_json::json!({ "text_key": k }),
        };
        self.audit(
            "broadcast.start",
            Some(id),
            &format!("broadcast {}", started.id),
            None,
            Some(serde_json::json!({
                "content": content,
                "audience": req.audience,
                "start_at": started.start_at,
                "audience_size": started.audience_size,
            })),
        )
        .await?;
        Ok(started)
    }

    /// How many users `audience` of bot `id` has now (blocked users excluded); zero is an
    /// answer here, not an error, so a form can show it before anything is sent.
    pub async fn audience_preview(&self, id: i64, audience: &str) -> Result<i64, AdminError> {
        let audience: Audience = audience.trim().parse().map_err(AdminError::Invalid)?;
        let (mut conn, bot) = self.bot_conn(id).await?;
        let manifest = Manifest::from_value(&bot.manifest.0);
        let size = match manifest {
            Ok(m) => store::count_audience(&mut conn, &audience, &m.admins)
                .await
                .map_err(AdminError::BotDbQuery),
            Err(e) => Err(e.into()),
        };
        conn.close().await;
        size
    }

    /// What a change made through this service records as a broadcast's creator.
    fn origin(&self) -> &'static str {
        if self.actor().starts_with("panel:") || self.actor().starts_with("api:") {
            "panel"
        } else {
            "cli"
        }
    }

    /// Every broadcast of bot `id`, newest first.
    pub async fn list_broadcasts(&self, id: i64) -> Result<Vec<BroadcastView>, AdminError> {
        let (mut conn, _) = self.bot_conn(id).await?;
        let result = async {
            let mut views = Vec::new();
            for b in store::list(&mut conn).await? {
                let counts = store::counts(&mut conn, b.id).await?;
                views.push(BroadcastView::new(b, counts));
            }
            Ok::<_, sqlx::Error>(views)
        }
        .await;
        conn.close().await;
        result.map_err(AdminError::BotDbQuery)
    }

    /// One broadcast with its counts.
    pub async fn broadcast_status(&self, id: i64, bid: i64) -> Result<BroadcastView, AdminError> {
        let (mut conn, _) = self.bot_conn(id).await?;
        let result = async {
            let Some(b) = store::get(&mut conn, bid).await? else {
                return Ok(None);
            };
            let counts = store::counts(&mut conn, bid).await?;
            Ok::<_, sqlx::Error>(Some(BroadcastView::new(b, counts)))
        }
        .await;
        conn.close().await;
        result
            .map_err(AdminError::BotDbQuery)?
            .ok_or(AdminError::NotFound {
                id,
                what: "broadcast",
                item: bid,
            })
    }

    /// Pauses a scheduled or running broadcast (the sends already queued still go out).
    pub async fn pause_broadcast(&self, id: i64, bid: i64) -> Result<(), AdminError> {
        self.change_broadcast(id, bid, &["scheduled", "running"], "paused")
            .await
    }

    /// Resumes a paused broadcast where it stopped.
    pub async fn resume_broadcast(&self, id: i64, bid: i64) -> Result<(), AdminError> {
        let view = self.broadcast_status(id, bid).await?;
        let to = if view.started_at.is_some() {
            "running"
        } else {
            "scheduled"
        };
        self.change_broadcast(id, bid, &["paused"], to).await
    }

    /// Cancels a broadcast that has not ended; recipients not yet sent to stay pending.
    pub async fn cancel_broadcast(&self, id: i64, bid: i64) -> Result<(), AdminError> {
        self.change_broadcast(id, bid, &["scheduled", "running", "paused"], "cancelled")
            .await
    }

    async fn change_broadcast(
        &self,
        id: i64,
        bid: i64,
        from: &[&str],
        to: &str,
    ) -> Result<(), AdminError> {
        let (mut conn, _) = self.bot_conn(id).await?;
        let changed = store::set_state(&mut conn, bid, from, to).await;
        let current = match &changed {
            Ok(None) => store::get(&mut conn, bid).await.ok().flatten(),
            _ => None,
        };
        conn.close().await;
        match changed.map_err(AdminError::BotDbQuery)? {
            Some(_) => {
                self.wake(id, NAME).await?;
                self.audit(
                    &format!("broadcast.{}", action_of(to)),
                    Some(id),
                    &format!("broadcast {bid}"),
                    None,
                    Some(serde_json::Value::from(to)),
                )
                .await
            }
            None => match current {
                None => Err(AdminError::NotFound {
                    id,
                    what: "broadcast",
                    item: bid,
                }),
                Some(b) => Err(AdminError::Invalid(format!(
                    "broadcast {bid} is {}: only a {} broadcast can become {to}",
                    b.state,
                    from.join(" or ")
                ))),
            },
        }
    }

    /// One line per recipient: user id, outcome, error, time.
    pub async fn broadcast_report(&self, id: i64, bid: i64) -> Result<Vec<ReportLine>, AdminError> {
        self.broadcast_status(id, bid).await?;
        let (mut conn, _) = self.bot_conn(id).await?;
        let lines = store::report(&mut conn, bid).await;
        conn.close().await;
        lines.map_err(AdminError::BotDbQuery)
    }
}

/// The audit log's verb for a broadcast entering state `to`.
fn action_of(to: &str) -> &'static str {
    match to {
        "paused" => "pause",
        "cancelled" => "cancel",
        _ => "resume",
    }
}

impl From<sqlx::Error> for AdminError {
    fn from(e: sqlx::Error) -> Self {
        AdminError::BotDbQuery(e)
    }
}
