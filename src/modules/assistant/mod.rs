//! The assistant module: users talk to an AI model through any OpenAI-compatible
//! chat-completions endpoint. Manifest section `assistant` (see [`AssistantSpec`],
//! docs/assistant.md).
//!
//! - [`Assistant::on_update`] (inside the update's transaction): a user's text (trigger
//!   `text`, private chats) or `/ask …` (trigger `command`) is already in the history (the
//!   history module runs first); the module checks the daily limit and queues a durable
//!   request row, then wakes its job after the commit. `/reset` starts a new context (the
//!   history is kept; the context starts after the mark).
//! - Its job ([`job::run`]) calls the model outside any transaction — typing indicator while
//!   waiting, a timeout, retries with backoff on 429/5xx/timeouts — and then commits the reply
//!   to the history (role `assistant`) and the outbox together, marking the request done in
//!   the same transaction. A crash before that commit repeats the call, never the answer.

mod client;
mod job;
mod section;
pub mod store;

pub use client::{CallError, ChatMessage};
pub use section::{AssistantSection, AssistantSpec, Trigger};

use futures::future::BoxFuture;
use teloxide::types::{BotCommand, ChatId, UpdateKind};

use super::core::{parse_command, user_id};
use super::{Flow, JobCx, Module, ModuleError, UpdateCx, load_optional};
use crate::content::manifest::{Manifest, ManifestError};
use crate::content::snapshot::{Section, Snapshot};
use crate::content::texts::{TextRef, Vars};

/// The module's name, and its manifest key.
const NAME: &str = "assistant";

/// What a user gets when the model cannot answer and no `failure_text` is set.
pub const DEFAULT_FAILURE: &str = "Sorry, I cannot answer right now. Please try again later.";
/// What a user over the daily limit gets when no `limit_text` is set.
pub const DEFAULT_LIMIT: &str =
    "You have reached today's limit of questions. Please come back tomorrow.";
/// The answer to `/reset` when no `reset_text` is set.
pub const DEFAULT_RESET: &str = "Let's start a new conversation.";

/// The assistant module (enabled by an `assistant` section).
#[derive(Debug, Clone, Copy, Default)]
pub struct Assistant;

impl Module for Assistant {
    fn name(&self) -> &'static str {
        NAME
    }

    fn manifest_keys(&self) -> &'static [&'static str] {
        section::KEYS
    }

    fn load(&self, manifest: &Manifest) -> Result<Option<Section>, ManifestError> {
        load_optional(
            manifest,
            section::KEYS,
            |s: AssistantSection| s.assistant,
            AssistantSpec::validate,
        )
    }

    fn update_kinds(&self) -> &'static [&'static str] {
        &["message"]
    }

    fn commands(&self, snapshot: &Snapshot) -> Vec<BotCommand> {
        let mut commands = Vec::new();
        if spec(snapshot).is_some_and(|s| s.trigger == Trigger::Command) {
            commands.push(BotCommand::new("ask", "Ask the assistant"));
        }
        if spec(snapshot).is_some() {
            commands.push(BotCommand::new("reset", "Start a new conversation"));
        }
        commands
    }

    fn text_keys(&self, snapshot: &Snapshot) -> Vec<TextRef> {
        let Some(s) = spec(snapshot) else {
            return Vec::new();
        };
        let mut keys: Vec<TextRef> = s.system_prompt.iter().map(TextRef::required).collect();
        for key in [&s.failure_text, &s.limit_text, &s.reset_text]
            .into_iter()
            .flatten()
        {
            keys.push(TextRef::required(key));
        }
        keys
    }

    fn on_update<'a>(
        &'a self,
        cx: &'a mut UpdateCx<'_>,
    ) -> BoxFuture<'a, Result<Flow, ModuleError>> {
        Box::pin(async move {
            let Some(spec) = spec(cx.snapshot) else {
                return Ok(Flow::Continue);
            };
            let UpdateKind::Message(msg) = &cx.update.kind else {
                return Ok(Flow::Continue);
            };
            let Some(text) = msg.text() else {
                return Ok(Flow::Continue);
            };
            let from = msg.from.as_ref();
            let audience = Audience {
                chat: msg.chat.id,
                user: from.map(user_id),
                lang: from.and_then(|u| u.language_code.as_deref()),
                first_name: from.map_or("", |u| u.first_name.as_str()),
                username: from.and_then(|u| u.username.as_deref()).unwrap_or(""),
            };
            match parse_command(text, cx.me.username()) {
                Some((command, _)) if command == "reset" => {
                    let last = store::last_message(cx.tx()?, msg.chat.id.0).await?;
                    store::reset_context(cx.tx()?, msg.chat.id.0, last).await?;
                    let text = audience.text(cx, spec.reset_text.as_deref(), DEFAULT_RESET);
                    cx.send(audience.chat, audience.user, &text, None).await?;
                    Ok(Flow::Stop)
                }
                Some((command, question))
                    if command == "ask" && spec.trigger == Trigger::Command =>
                {
                    if question.is_empty() {
                        let text = "Write your question after /ask, e.g. /ask What is a bot?";
                        cx.send(audience.chat, audience.user, text, None).await?;
                        return Ok(Flow::Stop);
                    }
                    ask(cx, spec, &audience).await
                }
                Some(_) => Ok(Flow::Continue),
                None if spec.trigger == Trigger::Text && msg.chat.is_private() => {
                    ask(cx, spec, &audience).await
                }
                None => Ok(Flow::Continue),
            }
        })
    }

    fn job(&self, cx: JobCx) -> Option<BoxFuture<'static, Result<(), ModuleError>>> {
        Some(Box::pin(job::run(cx)))
    }
}

/// The bot's assistant settings, when the module is enabled.
fn spec(snapshot: &Snapshot) -> Option<&AssistantSpec> {
    snapshot.section::<AssistantSpec>(NAME)
}

/// Who a question comes from.
struct Audience<'a> {
    chat: ChatId,
    user: Option<i64>,
    lang: Option<&'a str>,
    first_name: &'a str,
    username: &'a str,
}

impl Audience<'_> {
    /// Text `key` in the user's language, or `default`.
    fn text(&self, cx: &UpdateCx<'_>, key: Option<&str>, default: &str) -> String {
        let vars = Vars {
            first_name: self.first_name,
            username: self.username,
            bot_name: &cx.me.user.first_name,
            panel_name: &cx.snapshot.panel_name,
        };
        key.and_then(|k| cx.snapshot.render(k, self.lang, &vars))
            .unwrap_or_else(|| crate::content::texts::render(default, &vars))
    }
}

/// Queues the question (it is in the history already), unless the user is over the limit.
async fn ask(
    cx: &mut UpdateCx<'_>,
    spec: &AssistantSpec,
    who: &Audience<'_>,
) -> Result<Flow, ModuleError> {
    if spec.daily_limit_per_user > 0
        && let Some(user) = who.user
        && store::asked_today(cx.tx()?, user).await? >= i64::from(spec.daily_limit_per_user)
    {
        let text = who.text(cx, spec.limit_text.as_deref(), DEFAULT_LIMIT);
        cx.send(who.chat, who.user, &text, None).await?;
        return Ok(Flow::Stop);
    }
    let until = store::last_message(cx.tx()?, who.chat.0).await?;
    store::queue_request(cx.tx()?, who.chat.0, who.user, who.lang, until).await?;
    cx.wake_job();
    Ok(Flow::Stop)
}

/// The conversation sent to the model: the system prompt, then the context's messages
/// oldest first — taken newest first from `history` (newest first, the question first) until
/// `max_messages` or `max_chars` would be passed; the question is always sent. `/ask` is cut
/// from the user's messages.
pub fn conversation(
    system: Option<String>,
    history: &[(String, String)],
    max_messages: usize,
    max_chars: usize,
) -> Vec<ChatMessage> {
    let mut picked: Vec<ChatMessage> = Vec::new();
    let mut chars = 0;
    for (role, content) in history.iter().take(max_messages.max(1)) {
        let (role, content) = match role.as_str() {
            "assistant" => ("assistant", content.clone()),
            _ => ("user", strip_ask(content)),
        };
        let len = content.chars().count();
        if !picked.is_empty() && chars + len > max_chars {
            break;
        }
        chars += len;
        picked.push(ChatMessage { role, content });
    }
    picked.reverse();
    let mut messages: Vec<ChatMessage> = system
        .into_iter()
        .map(|content| ChatMessage {
            role: "system",
            content,
        })
        .collect();
    messages.extend(picked);
    messages
}

/// A user's message without a leading `/ask` (or `/ask@bot`).
fn strip_ask(content: &str) -> String {
    match content.strip_prefix("/ask") {
        Some(rest) if rest.is_empty() || rest.starts_with([' ', '@', '\n']) => {
            let rest = rest.strip_prefix('@').map_or(rest, |r| {
                r.split_once(char::is_whitespace).map_or("", |(_, q)| q)
            });
            rest.trim().to_owned()
        }
        _ => content.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(r, c)| (r.to_string(), c.to_string()))
            .collect()
    }

    #[test]
    fn the_conversation_is_the_newest_context_within_the_limits_oldest_first() {
        let history = h(&[
            ("user", "third question"),
            ("assistant", "second answer"),
            ("user", "/ask second question"),
            ("assistant", "first answer"),
            ("user", "first question"),
        ]);
        let roles = |m: &[ChatMessage]| {
            m.iter()
                .map(|m| format!("{}:{}", m.role, m.content))
                .collect::<Vec<_>>()
        };
        let all = conversation(Some("be brief".into()), &history, 20, 10_000);
        assert_eq!(
            roles(&all),
            [
                "system:be brief",
                "user:first question",
                "assistant:first answer",
                "user:second question",
                "assistant:second answer",
                "user:third question"
            ]
        );
        let three = conversation(None, &history, 3, 10_000);
        assert_eq!(
            roles(&three),
            [
                "user:second question",
                "assistant:second answer",
                "user:third question"
            ]
        );
        // 14 + 13 characters fit in 30; the next message would not.
        let chars = conversation(None, &history, 20, 30);
        assert_eq!(
            roles(&chars),
            ["assistant:second answer", "user:third question"]
        );
        // The question always goes, even over the limit.
        let tiny = conversation(None, &history, 20, 1);
        assert_eq!(roles(&tiny), ["user:third question"]);
        assert_eq!(strip_ask("/ask@my_bot what?"), "what?");
        assert_eq!(strip_ask("/asking"), "/asking");
    }
}
