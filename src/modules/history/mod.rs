//! The history module: every message in and out, `{role, content, timestamp}` per chat, kept
//! for the manifest's `history.retention_days` (0 keeps it forever).
//!
//! - [`History::on_update`]: a user's message, or a button press (`[button] <label>`), is
//!   recorded first in the chain, so every later module's answer comes after it; a message of
//!   a kind teloxide does not know keeps its text or caption, read from the stored update;
//! - [`History::on_sent`]: what the bot's sender delivered is recorded as the bot's, when
//!   Telegram accepted it;
//! - its job ([`job::prune`]) deletes messages past their retention every
//!   `bot_database.prune_every_secs` (an hour by default; the first a fraction of that after
//!   the start, spread by bot id), and at once when a reload shortens the retention.

mod job;
pub mod store;

use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use teloxide::types::{MessageKind, UpdateKind};

use super::{Flow, JobCx, Module, ModuleError, SentCx, UpdateCx};
use crate::content::manifest::{Manifest, ManifestError};
use crate::content::snapshot::Section;
use crate::telegram::{Delivery, DeliveryOutcome};
use store::Role;

/// The module's name, and its manifest key.
const NAME: &str = "history";

/// What history shows for a message without text or caption.
const NON_TEXT: &str = "[non-text message]";

/// History's section of the manifest: `{"history": {"retention_days": N}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistorySection {
    /// The `history` object.
    #[serde(default)]
    pub history: HistorySpec,
}

/// History settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistorySpec {
    /// Days to keep messages; 0 keeps them forever.
    #[serde(default)]
    pub retention_days: u32,
}

/// The history module (always enabled).
#[derive(Debug, Clone, Copy, Default)]
pub struct History;

impl Module for History {
    fn name(&self) -> &'static str {
        NAME
    }

    fn manifest_keys(&self) -> &'static [&'static str] {
        &[NAME]
    }

    fn load(&self, manifest: &Manifest) -> Result<Option<Section>, ManifestError> {
        let section: HistorySection = manifest.section(&[NAME])?;
        Ok(Some(Arc::new(section)))
    }

    fn update_kinds(&self) -> &'static [&'static str] {
        &["message", "callback_query"]
    }

    fn on_update<'a>(
        &'a self,
        cx: &'a mut UpdateCx<'_>,
    ) -> BoxFuture<'a, Result<Flow, ModuleError>> {
        Box::pin(async move {
            if let UpdateKind::Message(msg) = &cx.update.kind {
                let user = msg
                    .from
                    .as_ref()
                    .map(|u| i64::try_from(u.id.0).unwrap_or(i64::MAX));
                let content = match msg.text().or_else(|| msg.caption()) {
                    Some(text) => text.to_owned(),
                    // A kind teloxide does not know: it keeps neither text nor caption, the
                    // stored update does.
                    None if matches!(msg.kind, MessageKind::Empty {}) => {
                        raw_text(cx.raw_update().await?.as_ref())
                            .unwrap_or_else(|| NON_TEXT.to_owned())
                    }
                    None => NON_TEXT.to_owned(),
                };
                cx.record_message(msg.chat.id.0, user, Role::User, &content)
                    .await?;
            }
            if let UpdateKind::CallbackQuery(q) = &cx.update.kind
                && let Some(msg) = q.regular_message()
            {
                let user = i64::try_from(q.from.id.0).unwrap_or(i64::MAX);
                let content = pressed(msg, q.data.as_deref());
                cx.record_message(msg.chat.id.0, Some(user), Role::User, &content)
                    .await?;
            }
            Ok(Flow::Continue)
        })
    }

    fn on_sent<'a>(
        &'a self,
        cx: &'a mut SentCx<'_>,
        deliveries: &'a [Delivery],
    ) -> BoxFuture<'a, Result<(), ModuleError>> {
        Box::pin(async move {
            let sent: Vec<(i64, Option<i64>, &str)> = deliveries
                .iter()
                .filter_map(|d| match (&d.outcome, &d.text) {
                    (DeliveryOutcome::Sent(_), Some(text)) => Some((d.chat_id, d.user_id, &**text)),
                    _ => None,
                })
                .collect();
            cx.record_bot_messages(&sent).await?;
            Ok(())
        })
    }

    fn job(&self, cx: JobCx) -> Option<BoxFuture<'static, Result<(), ModuleError>>> {
        Some(Box::pin(job::prune(cx)))
    }
}

/// A button press as history shows it: `[button] <label>` (the label the user saw on the
/// message's inline keyboard), or the callback data when the button is gone.
fn pressed(msg: &teloxide::types::Message, data: Option<&str>) -> String {
    use teloxide::types::InlineKeyboardButtonKind;
    let label = msg.reply_markup().and_then(|k| {
        k.inline_keyboard
            .iter()
            .flatten()
            .find_map(|b| match &b.kind {
                InlineKeyboardButtonKind::CallbackData(d) if Some(d.as_str()) == data => {
                    Some(b.text.clone())
                }
                _ => None,
            })
    });
    match (label, data) {
        (Some(label), _) => format!("[button] {label}"),
        (None, Some(data)) => format!("[button] {data}"),
        (None, None) => "[button]".into(),
    }
}

/// The text, else the caption, of the message of a raw update (a JSON string payload — an
/// update that was not valid JSON — has neither).
fn raw_text(update: Option<&serde_json::Value>) -> Option<String> {
    let message = update?.get("message")?;
    ["text", "caption"]
        .iter()
        .find_map(|k| message.get(*k)?.as_str())
        .map(str::to_owned)
}

/// The retention of a snapshot's history section (0: keep forever).
fn retention_days(cx: &JobCx) -> u32 {
    cx.snapshot
        .borrow()
        .section::<HistorySection>(NAME)
        .map_or(0, |s| s.history.retention_days)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_kind_is_an_empty_message_whose_caption_the_raw_update_keeps() {
        let raw = serde_json::json!({
            "update_id": 1,
            "message": {
                "message_id": 1, "date": 1_700_000_000,
                "chat": {"id": 5, "type": "private", "first_name": "Zoe"},
                "from": {"id": 5, "is_bot": false, "first_name": "Zoe"},
                "caption": "a kind from the future",
                "holo_message": {"file_id": "h1"}
            }
        });
        // The premise: teloxide 0.17 drops the caption of a kind it does not know (parsed
        // from text, as the intake does).
        let update: teloxide::types::Update = serde_json::from_str(&raw.to_string()).unwrap();
        let UpdateKind::Message(msg) = &update.kind else {
            panic!("not a message: {update:?}");
        };
        assert!(matches!(msg.kind, MessageKind::Empty {}));
        assert_eq!(msg.caption(), None);
        assert_eq!(
            raw_text(Some(&raw)).as_deref(),
            Some("a kind from the future")
        );
        assert_eq!(raw_text(Some(&serde_json::json!("not json"))), None);
        assert_eq!(raw_text(None), None);
    }
}
