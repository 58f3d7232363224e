//! The broadcast module: mailings to a bot's users that survive crashes and never trip
//! Telegram's limits.
//!
//! - A broadcast is created by an operator (`botvisor broadcast start`, through
//!   `admin::broadcasts`), by the scheduler, or by an admin inside the bot: replying
//!   `/broadcast` to a message asks for confirmation (inline buttons, with the audience's
//!   size) and, on confirm, copies that message (`copyMessage`) to every user
//!   ([`Broadcast::on_update`]).
//! - Its audience is frozen when it starts: one `broadcast_recipients` row per user.
//! - Its job ([`job::run`]) keeps a window of at most [`job::WINDOW`] recipients queued in the
//!   outbox's bulk lane (lane 2: the sender gives it only what replies and scheduled messages
//!   leave of the bot's 30/s), refilled whenever the sender recorded one of its requests.
//! - A recipient is marked only from the outbox's result ([`Broadcast::on_sent`]): sent, blocked
//!   (403; core marks the user blocked too) or failed with Telegram's reason. A crash between a
//!   send and its mark repeats that send once; nothing is skipped.
//! - Pause, resume and cancel are state changes the job follows; the window already queued
//!   still goes out (a couple of seconds of sends).

mod job;
pub mod store;

use std::str::FromStr;
use std::sync::Arc;

use futures::future::BoxFuture;
use teloxide::types::{
    BotCommand, CallbackQuery, ChatId, InlineKeyboardButton, InlineKeyboardMarkup, Message,
    UpdateKind,
};

use super::{Flow, JobCx, Module, ModuleError, SentCx, UpdateCx};
use crate::content::manifest::{Manifest, ManifestError};
use crate::content::snapshot::{Section, Snapshot};
use crate::content::texts::{Vars, render};
use crate::telegram::{Delivery, DeliveryOutcome, Lane};

/// The module's name.
pub const NAME: &str = "broadcast";

/// Callback data prefix of the confirmation buttons.
const CALLBACK: &str = "broadcast:";

/// Who a broadcast goes to (blocked users never count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// Every user.
    All,
    /// Users whose client language is CODE (or a variant, `pt` takes `pt-br`).
    Lang(String),
    /// Users seen in the last N days.
    ActiveDays(u32),
    /// The manifest's admins.
    Admins,
}

impl FromStr for Audience {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "invalid audience {s:?}: use all, lang:CODE (e.g. lang:en), active-days:N or admins"
            )
        };
        match s {
            "all" => Ok(Audience::All),
            "admins" => Ok(Audience::Admins),
            _ => match s.split_once(':') {
                Some(("lang", code))
                    if (2..=16).contains(&code.len())
                        && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
                {
                    Ok(Audience::Lang(code.to_ascii_lowercase()))
                }
                Some(("active-days", n)) => match n.parse::<u32>() {
                    Ok(n) if (1..=3650).contains(&n) => Ok(Audience::ActiveDays(n)),
                    _ => Err(format!(
                        "invalid audience {s:?}: active-days takes 1 to 3650 days"
                    )),
                },
                _ => Err(bad()),
            },
        }
    }
}

impl std::fmt::Display for Audience {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Audience::All => f.write_str("all"),
            Audience::Admins => f.write_str("admins"),
            Audience::Lang(code) => write!(f, "lang:{code}"),
            Audience::ActiveDays(n) => write!(f, "active-days:{n}"),
        }
    }
}

/// A text for one recipient: `text` with its placeholders filled, or `text_key` rendered in
/// the recipient's language (`None` when the key has no value there or in the default
/// language).
pub fn render_for(
    snapshot: &Snapshot,
    text: Option<&str>,
    text_key: Option<&str>,
    lang: Option<&str>,
    vars: &Vars<'_>,
) -> Option<String> {
    match (text, text_key) {
        (Some(text), _) => Some(render(text, vars)),
        (None, Some(key)) => snapshot.render(key, lang, vars),
        (None, None) => None,
    }
}

/// The placeholders of one recipient. `{bot_name}` is the panel's name: a job has no `Me`.
pub fn vars<'a>(r: &'a store::Recipient, snapshot: &'a Snapshot) -> Vars<'a> {
    Vars {
        first_name: &r.first_name,
        username: r.username.as_deref().unwrap_or(""),
        bot_name: &snapshot.panel_name,
        panel_name: &snapshot.panel_name,
    }
}

/// The broadcast module (always enabled; its job sleeps while nothing is to be sent).
#[derive(Debug, Clone, Copy, Default)]
pub struct Broadcast;

impl Module for Broadcast {
    fn name(&self) -> &'static str {
        NAME
    }

    fn load(&self, _manifest: &Manifest) -> Result<Option<Section>, ManifestError> {
        Ok(Some(Arc::new(())))
    }

    fn update_kinds(&self) -> &'static [&'static str] {
        &["message", "callback_query"]
    }

    fn commands(&self, _snapshot: &Snapshot) -> Vec<BotCommand> {
        // Admin-only: not advertised to every user.
        Vec::new()
    }

    fn on_update<'a>(
        &'a self,
        cx: &'a mut UpdateCx<'_>,
    ) -> BoxFuture<'a, Result<Flow, ModuleError>> {
        Box::pin(async move {
            match &cx.update.kind {
                UpdateKind::Message(msg) if is_broadcast_command(msg) => {
                    if !from_admin(cx.snapshot, msg.from.as_ref().map(|u| u.id.0)) {
                        return Ok(Flow::Continue);
                    }
                    ask(cx, msg).await?;
                    Ok(Flow::Stop)
                }
                UpdateKind::CallbackQuery(q)
                    if q.data.as_deref().is_some_and(|d| d.starts_with(CALLBACK)) =>
                {
                    if !from_admin(cx.snapshot, Some(q.from.id.0)) {
                        return Ok(Flow::Continue);
                    }
                    confirm(cx, q).await?;
                    Ok(Flow::Stop)
                }
                _ => Ok(Flow::Continue),
            }
        })
    }

    fn on_sent<'a>(
        &'a self,
        cx: &'a mut SentCx<'_>,
        deliveries: &'a [Delivery],
    ) -> BoxFuture<'a, Result<(), ModuleError>> {
        Box::pin(async move {
            for d in deliveries {
                if d.origin != NAME || d.lane != Lane::Bulk {
                    continue;
                }
                let (state, error) = match &d.outcome {
                    DeliveryOutcome::Sent(_) => ("sent", None),
                    DeliveryOutcome::Blocked => ("blocked", None),
                    DeliveryOutcome::ChatNotFound => {
                        ("failed", Some("Bad Request: chat not found"))
                    }
                    DeliveryOutcome::ThreadNotFound => {
                        ("failed", Some("Bad Request: message thread not found"))
                    }
                    DeliveryOutcome::Failed(reason) => ("failed", Some(reason.as_str())),
                };
                store::record(cx.tx()?, d.outbox_id, state, error).await?;
            }
            Ok(())
        })
    }

    fn job(&self, cx: JobCx) -> Option<BoxFuture<'static, Result<(), ModuleError>>> {
        Some(Box::pin(job::run(cx)))
    }
}

fn is_broadcast_command(msg: &Message) -> bool {
    let Some(text) = msg.text() else {
        return false;
    };
    let word = text.split_whitespace().next().unwrap_or("");
    word == "/broadcast" || word.starts_with("/broadcast@")
}

fn from_admin(snapshot: &Snapshot, user: Option<u64>) -> bool {
    user.and_then(|u| i64::try_from(u).ok())
        .is_some_and(|u| snapshot.manifest.admins.contains(&u))
}

/// `/broadcast` from an admin: asks for confirmation of copying the replied-to message.
async fn ask(cx: &mut UpdateCx<'_>, msg: &Message) -> Result<(), ModuleError> {
    let chat = msg.chat.id;
    let admin = msg
        .from
        .as_ref()
        .map(|u| i64::try_from(u.id.0).unwrap_or(0));
    let Some(original) = msg.reply_to_message() else {
        cx.send(
            chat,
            admin,
            "Reply /broadcast to the message you want to send to every user.",
            None,
        )
        .await?;
        return Ok(());
    };
    let snapshot = cx.snapshot;
    let size = store::count_audience(cx.tx()?, &Audience::All, &snapshot.manifest.admins).await?;
    let keyboard = InlineKeyboardMarkup::new(vec![vec![
        InlineKeyboardButton::callback(
            format!("Send to {size} users"),
            format!("{CALLBACK}go:{}", original.id.0),
        ),
        InlineKeyboardButton::callback("Cancel", format!("{CALLBACK}no")),
    ]]);
    cx.send(
        chat,
        admin,
        &format!("Send this message to {size} users?"),
        Some(keyboard.into()),
    )
    .await?;
    Ok(())
}

/// A press on the confirmation's buttons: starts the broadcast, or drops it.
async fn confirm(cx: &mut UpdateCx<'_>, q: &CallbackQuery) -> Result<(), ModuleError> {
    let admin = i64::try_from(q.from.id.0).unwrap_or(0);
    let Some(message) = q.regular_message() else {
        cx.answer_callback(ChatId(admin), &q.id, None).await?;
        return Ok(());
    };
    let chat = message.chat.id;
    let data = q.data.as_deref().unwrap_or("");
    let Some(original) = data
        .strip_prefix(CALLBACK)
        .and_then(|d| d.strip_prefix("go:"))
        .and_then(|id| id.parse::<i64>().ok())
    else {
        cx.answer_callback(chat, &q.id, None).await?;
        cx.edit(chat, Some(admin), message.id, "Broadcast cancelled.", None)
            .await?;
        return Ok(());
    };
    let confirmation = i64::from(message.id.0);
    if store::by_progress_message(cx.tx()?, chat.0, confirmation)
        .await?
        .is_some()
    {
        cx.answer_callback(chat, &q.id, Some("Already started."))
            .await?;
        return Ok(());
    }
    let id = store::create(
        cx.tx()?,
        &store::NewBroadcast {
            copy: Some((chat.0, original)),
            audience: "all",
            created_by: "bot",
            progress: Some((chat.0, confirmation)),
            ..Default::default()
        },
    )
    .await?;
    let snapshot = cx.snapshot;
    let total = store::freeze(cx.tx()?, id, &Audience::All, &snapshot.manifest.admins)
        .await?
        .unwrap_or(0);
    cx.answer_callback(chat, &q.id, None).await?;
    // The job is woken when this edit (queued by this module) is delivered.
    cx.edit(
        chat,
        Some(admin),
        message.id,
        &format!("Broadcast #{id}: sending to {total} users…"),
        None,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_parse_and_print_back() {
        for (text, want) in [
            ("all", Ok(Audience::All)),
            ("admins", Ok(Audience::Admins)),
            ("lang:EN", Ok(Audience::Lang("en".into()))),
            ("lang:pt-br", Ok(Audience::Lang("pt-br".into()))),
            ("active-days:7", Ok(Audience::ActiveDays(7))),
        ] {
            assert_eq!(text.parse::<Audience>(), want, "{text}");
        }
        assert_eq!(Audience::Lang("en".into()).to_string(), "lang:en");
        assert_eq!(Audience::ActiveDays(7).to_string(), "active-days:7");
        for bad in [
            "",
            "everyone",
            "lang:",
            "lang:e n",
            "active-days:0",
            "active-days:x",
        ] {
            let e = bad.parse::<Audience>().unwrap_err();
            assert!(e.starts_with("invalid audience"), "{bad}: {e}");
        }
    }
}
