//! The history module: every message in and out, `{role, content, timestamp}` per chat, kept
//! for the manifest's `history.retention_days` (0 keeps it forever).
//!
//! - [`History::on_update`]: a user's message, or a button press (`[button] <label>`), is
//!   recorded first in the chain, so every later module's answer comes after it;
//! - [`History::on_sent`]: what the bot's sender delivered is recorded as the bot's, when
//!   Telegram accepted it;
//! - its job ([`job::prune`]) deletes messages past their retention once at start and every
//!   hour, and at once when a reload shortens the retention.

mod job;
pub mod store;

use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use teloxide::types::UpdateKind;

use super::{Flow, JobCx, Module, ModuleError, UpdateCx};
use crate::content::manifest::{Manifest, ManifestError};
use crate::content::snapshot::Section;
use crate::telegram::{Delivery, DeliveryOutcome};
use store::Role;

/// The module's name, and its manifest key.
const NAME: &str = "history";

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
                let content = msg
                    .text()
                    .or_else(|| msg.caption())
                    .unwrap_or("[non-text message]");
                store::add_message(cx.tx, msg.chat.id.0, user, Role::User, content).await?;
            }
            if let UpdateKind::CallbackQuery(q) = &cx.update.kind
                && let Some(msg) = q.regular_message()
            {
                let user = i64::try_from(q.from.id.0).unwrap_or(i64::MAX);
                let content = pressed(msg, q.data.as_deref());
                store::add_message(cx.tx, msg.chat.id.0, Some(user), Role::User, &content).await?;
            }
            Ok(Flow::Continue)
        })
    }

    fn on_sent<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        deliveries: &'a [Delivery],
    ) -> BoxFuture<'a, Result<(), ModuleError>> {
        Box::pin(async move {
            for d in deliveries {
                if let (DeliveryOutcome::Sent(_), Some(text)) = (&d.outcome, &d.text) {
                    store::add_message(tx, d.chat_id, d.user_id, Role::Bot, text).await?;
                }
            }
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

/// The retention of a snapshot's history section (0: keep forever).
fn retention_days(cx: &JobCx) -> u32 {
    cx.snapshot
        .borrow()
        .section::<HistorySection>(NAME)
        .map_or(0, |s| s.history.retention_days)
}
