//! The feedback module: users write to the bot, the business answers from its admin chat
//! (Livegram-style). Manifest section `feedback` (see [`FeedbackSpec`], docs/feedback.md).
//!
//! - A user's message of any kind (not a command: those stay core's) is copied
//!   (`copyMessage`, through the outbox, so the group limit of 20/min applies) to the admin
//!   chat — in `topics` mode into the user's own forum topic, created on their first message
//!   and named after them, re-created when an admin deleted it; in `replies` mode with a
//!   header naming the user. Banned users' messages are not forwarded.
//! - In the admin chat, a message in a user's topic (`topics`) or a reply to a message that
//!   stands for a user (both modes) is copied to that user; when Telegram refuses it (the user
//!   blocked the bot), the admins get a notice under the answer. `/ban`, `/unban` and `/info`
//!   act on that user.
//! - Outside `hours` a user gets `auto_reply` once per conversation (until an admin answers,
//!   or [`CONVERSATION_GAP`] passed).
//!
//! Nothing is held in memory: which topic is whose, which admin-chat message stands for which
//! user and what each queued request was for live in the bot database, filled from the
//! outbox's results in [`Feedback::on_sent`] (a topic's id and a copy's message id are only
//! known once Telegram accepted them). The module runs before core in the chain and ends it
//! for what it handles, so core's fallback never answers a user's message or an admin.

mod section;
pub mod store;

pub use section::{FeedbackSection, FeedbackSpec, Hours, Mode};

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::PgConnection;
use teloxide::types::{ChatId, Message, MessageKind, UpdateKind, User};

use super::core::{parse_command, touch, user_id};
use super::history::store::{self as history, Role};
use super::{Flow, Module, ModuleError, SentCx, UpdateCx, enqueue, load_optional};
use crate::content::manifest::{Manifest, ManifestError};
use crate::content::snapshot::{Section, Snapshot};
use crate::content::texts::{MAX_TEXT_LEN, TextRef, Vars, utf16_len};
use crate::telegram::{Delivery, DeliveryOutcome, Lane, Request};
use store::{Kind, RequestRecord};

/// The module's name, and its manifest key.
const NAME: &str = "feedback";

/// After this long without an answer, a user writing out of hours gets the auto-reply again.
pub const CONVERSATION_GAP: Duration = Duration::from_secs(12 * 3600);

/// Longest caption Telegram accepts, in UTF-16 units.
const MAX_CAPTION_LEN: usize = 1024;
/// Longest forum topic name Telegram accepts (characters).
const MAX_TOPIC_NAME: usize = 128;

/// The feedback module (enabled by a `feedback` section).
#[derive(Debug, Clone, Copy, Default)]
pub struct Feedback;

impl Module for Feedback {
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
            |s: FeedbackSection| s.feedback,
            FeedbackSpec::validate,
        )
    }

    fn update_kinds(&self) -> &'static [&'static str] {
        &["message"]
    }

    fn text_keys(&self, snapshot: &Snapshot) -> Vec<TextRef> {
        spec(snapshot)
            .and_then(|s| s.auto_reply.as_ref())
            .map(TextRef::required)
            .into_iter()
            .collect()
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
            if msg.chat.id.0 == spec.admin_chat {
                on_admin(cx, spec, msg).await
            } else if msg.chat.is_private() {
                on_user(cx, spec, msg).await
            } else {
                Ok(Flow::Continue)
            }
        })
    }

    fn on_sent<'a>(
        &'a self,
        cx: &'a mut SentCx<'_>,
        deliveries: &'a [Delivery],
    ) -> BoxFuture<'a, Result<(), ModuleError>> {
        Box::pin(async move {
            for d in deliveries.iter().filter(|d| d.origin == NAME) {
                let tx = cx.tx()?;
                if let Some(r) = store::take_request(tx, d.outbox_id).await? {
                    on_result(tx, d, &r).await?;
                }
            }
            Ok(())
        })
    }

    fn queues_on_sent(&self, delivery: &Delivery) -> bool {
        // `on_result` may queue the user's message into a topic it just created.
        delivery.origin == NAME
    }
}

/// The bot's feedback settings, when the module is enabled.
fn spec(snapshot: &Snapshot) -> Option<&FeedbackSpec> {
    snapshot.section::<FeedbackSpec>(NAME)
}

/// Whether a message has content that can be copied (not a service message such as a new
/// topic or a member joining).
fn copyable(msg: &Message) -> bool {
    matches!(msg.kind, MessageKind::Common(_))
}

/// A user's name as admins see it: `First Last (@username)`.
fn display_name(first: &str, last: Option<&str>, username: Option<&str>) -> String {
    let mut name = first.trim().to_owned();
    if let Some(last) = last.map(str::trim).filter(|l| !l.is_empty()) {
        name = format!("{name} {last}").trim().to_owned();
    }
    if let Some(u) = username.filter(|u| !u.is_empty()) {
        name = format!("{name} (@{u})").trim().to_owned();
    }
    name
}

/// The name of a user's topic: their name and id, cut to Telegram's 128 characters.
fn topic_name(name: &str, user: i64) -> String {
    let suffix = format!(" · {user}");
    let room = MAX_TOPIC_NAME - suffix.chars().count();
    let name: String = name.chars().take(room).collect();
    let name = name.trim();
    if name.is_empty() {
        format!("User {user}")
    } else {
        format!("{name}{suffix}")
    }
}

/// The requests that put a copy of `msg` (in `from_chat`) into a chat, with `header` above
/// it: a text becomes one message (header and text), a captioned kind one copy with the
/// header in its caption; anything else, or what would be too long, a header message and the
/// copy.
fn copies(
    msg: &Message,
    header: Option<&str>,
    thread: Option<i32>,
    reply_to: Option<i32>,
) -> Vec<Request> {
    let copy = |caption: Option<String>| Request::CopyMessage {
        from_chat_id: msg.chat.id.0,
        message_id: msg.id.0,
        message_thread_id: thread,
        caption,
        reply_to_message_id: reply_to,
        reply_markup: None,
    };
    let send = |text: String| Request::SendMessage {
        text,
        reply_markup: None,
        message_thread_id: thread,
        reply_to_message_id: reply_to,
        in_history: false,
    };
    let Some(header) = header else {
        return vec![copy(None)];
    };
    if let Some(text) = msg.text() {
        let joined = format!("{header}\n\n{text}");
        if utf16_len(&joined) <= MAX_TEXT_LEN {
            return vec![send(joined)];
        }
    } else if msg.photo().is_some()
        || msg.video().is_some()
        || msg.document().is_some()
        || msg.audio().is_some()
        || msg.voice().is_some()
        || msg.animation().is_some()
    {
        let caption = match msg.caption() {
            Some(c) => format!("{header}\n\n{c}"),
            None => header.to_owned(),
        };
        if utf16_len(&caption) <= MAX_CAPTION_LEN {
            return vec![copy(Some(caption))];
        }
    }
    vec![send(header.to_owned()), copy(None)]
}

/// What history records of a message: its text or caption, else its kind in brackets.
fn content_of(msg: &Message) -> String {
    if let Some(t) = msg.text().or_else(|| msg.caption()) {
        return t.to_owned();
    }
    let kind = if msg.photo().is_some() {
        "photo"
    } else if msg.voice().is_some() {
        "voice"
    } else if msg.video().is_some() {
        "video"
    } else if msg.document().is_some() {
        "document"
    } else if msg.audio().is_some() {
        "audio"
    } else if msg.sticker().is_some() {
        "sticker"
    } else if msg.location().is_some() {
        "location"
    } else if msg.contact().is_some() {
        "contact"
    } else if msg.video_note().is_some() {
        "video note"
    } else {
        "message"
    };
    format!("[{kind}]")
}

/// Queues `request` to `chat` in the reply lane inside the sender's transaction `tx` (a
/// delivery's result led to it) and records what it is for.
async fn queue(
    tx: &mut PgConnection,
    chat: i64,
    user: Option<i64>,
    request: &Request,
    purpose: Option<RequestRecord>,
) -> Result<i64, ModuleError> {
    let id = enqueue(tx, NAME, Lane::Reply, ChatId(chat), user, request).await?;
    if let Some(r) = purpose {
        store::add_request(tx, id, &r).await?;
    }
    Ok(id)
}

/// [`queue`] from an update's unit of work (the sender is woken after its commit).
async fn queue_cx(
    cx: &mut UpdateCx<'_>,
    chat: i64,
    user: Option<i64>,
    request: &Request,
    purpose: Option<RequestRecord>,
) -> Result<i64, ModuleError> {
    let id = cx.queue(Lane::Reply, ChatId(chat), user, request).await?;
    if let Some(r) = purpose {
        store::add_request(cx.tx()?, id, &r).await?;
    }
    Ok(id)
}

/// The purpose of a copy of `user`'s message `source_message` into topic `thread` (if any).
fn forward(user: i64, source_message: i32, thread: Option<i32>) -> RequestRecord {
    RequestRecord {
        kind: Kind::Forward,
        user_id: user,
        source_message: Some(source_message),
        source_chat: None,
        source_thread: thread,
        content: None,
    }
}

/// The request that creates `user`'s topic, named after them, and its purpose.
async fn topic_request(
    tx: &mut PgConnection,
    user: i64,
) -> Result<(Request, RequestRecord), ModuleError> {
    let name = match super::core::store::get_user(tx, user).await? {
        Some(u) => display_name(&u.first_name, u.last_name.as_deref(), u.username.as_deref()),
        None => String::new(),
    };
    let request = Request::CreateForumTopic {
        name: topic_name(&name, user),
    };
    let purpose = RequestRecord {
        kind: Kind::Topic,
        user_id: user,
        source_message: None,
        source_chat: None,
        source_thread: None,
        content: None,
    };
    Ok((request, purpose))
}

async fn on_user(
    cx: &mut UpdateCx<'_>,
    spec: &FeedbackSpec,
    msg: &Message,
) -> Result<Flow, ModuleError> {
    let Some(from) = msg.from.as_ref() else {
        return Ok(Flow::Continue);
    };
    if msg.text().is_some_and(|t| t.starts_with('/')) || !copyable(msg) {
        return Ok(Flow::Continue);
    }
    touch(cx, from).await?;
    let user = user_id(from);
    let fb = store::count_message(cx.tx()?, user).await?;
    if fb.banned {
        tracing::debug!(
            bot_id = cx.bot_id,
            user_id = user,
            "feedback: a banned user's message is not forwarded"
        );
        return Ok(Flow::Stop);
    }
    match spec.mode {
        Mode::Topics => match fb.thread_id {
            Some(thread) => {
                for r in copies(msg, None, Some(thread), None) {
                    let purpose = forward(user, msg.id.0, Some(thread));
                    queue_cx(cx, spec.admin_chat, None, &r, Some(purpose)).await?;
                }
            }
            None => {
                store::add_pending(cx.tx()?, user, msg.id.0).await?;
                if fb.topic_request.is_none() {
                    let (request, purpose) = topic_request(cx.tx()?, user).await?;
                    let id = queue_cx(cx, spec.admin_chat, None, &request, Some(purpose)).await?;
                    store::set_topic_request(cx.tx()?, user, Some(id)).await?;
                }
            }
        },
        Mode::Replies => {
            let name = display_name(
                &from.first_name,
                from.last_name.as_deref(),
                from.username.as_deref(),
            );
            let header = format!("From {name}, id {user}:");
            for r in copies(msg, Some(&header), None, None) {
                let purpose = forward(user, msg.id.0, None);
                queue_cx(cx, spec.admin_chat, None, &r, Some(purpose)).await?;
            }
        }
    }
    auto_reply(cx, spec, from, &fb).await?;
    Ok(Flow::Stop)
}

/// Sends the auto-reply when the user writes outside the hours, once per conversation.
async fn auto_reply(
    cx: &mut UpdateCx<'_>,
    spec: &FeedbackSpec,
    from: &User,
    fb: &store::FeedbackUser,
) -> Result<(), ModuleError> {
    let Some(key) = spec.auto_reply.as_deref() else {
        return Ok(());
    };
    let now = chrono::Utc::now();
    if !spec.outside_hours(now) {
        return Ok(());
    }
    let gap = chrono::Duration::from_std(CONVERSATION_GAP).unwrap_or(chrono::Duration::MAX);
    if fb.auto_replied_at.is_some_and(|at| now - at < gap) {
        return Ok(());
    }
    let vars = Vars {
        first_name: &from.first_name,
        username: from.username.as_deref().unwrap_or(""),
        bot_name: &cx.me.user.first_name,
        panel_name: &cx.snapshot.panel_name,
    };
    let Some(text) = cx
        .snapshot
        .render(key, from.language_code.as_deref(), &vars)
    else {
        return Ok(());
    };
    let user = user_id(from);
    cx.send(ChatId(user), Some(user), &text, None).await?;
    store::set_auto_replied(cx.tx()?, user, true).await?;
    Ok(())
}

/// The user an admin-chat message is about: its topic's owner (topics mode), or the user the
/// message it replies to stands for.
async fn target_user(
    tx: &mut PgConnection,
    spec: &FeedbackSpec,
    msg: &Message,
) -> Result<Option<i64>, ModuleError> {
    if spec.mode == Mode::Topics
        && msg.is_topic_message
        && let Some(thread) = msg.thread_id
        && let Some(user) = store::user_by_thread(tx, thread.0.0).await?
    {
        return Ok(Some(user));
    }
    if let Some(parent) = msg.reply_to_message()
        && let Some(user) = store::user_by_message(tx, spec.admin_chat, parent.id.0).await?
    {
        return Ok(Some(user));
    }
    Ok(None)
}

/// A note for the admins, under the message it concerns.
async fn notice(cx: &mut UpdateCx<'_>, msg: &Message, text: String) -> Result<(), ModuleError> {
    let request = Request::SendMessage {
        text,
        reply_markup: None,
        message_thread_id: msg.thread_id.map(|t| t.0.0),
        reply_to_message_id: Some(msg.id.0),
        in_history: false,
    };
    queue_cx(cx, msg.chat.id.0, None, &request, None).await?;
    Ok(())
}

async fn on_admin(
    cx: &mut UpdateCx<'_>,
    spec: &FeedbackSpec,
    msg: &Message,
) -> Result<Flow, ModuleError> {
    if !copyable(msg) || msg.from.as_ref().is_some_and(|u| u.is_bot) {
        return Ok(Flow::Stop);
    }
    let target = target_user(cx.tx()?, spec, msg).await?;
    if let Some(text) = msg.text()
        && let Some((command, _)) = parse_command(text, cx.me.username())
    {
        if !matches!(command.as_str(), "ban" | "unban" | "info") {
            // Other commands (core's /stats for admins) are not for a user.
            return Ok(Flow::Continue);
        }
        let Some(user) = target else {
            let hint = match spec.mode {
                Mode::Topics => "Write /ban, /unban or /info in a user's topic.",
                Mode::Replies => "Reply to a user's message with /ban, /unban or /info.",
            };
            notice(cx, msg, hint.to_owned()).await?;
            return Ok(Flow::Stop);
        };
        let text = match command.as_str() {
            "ban" => {
                store::set_banned(cx.tx()?, user, true).await?;
                format!("User {user} is banned: their messages are no longer forwarded.")
            }
            "unban" => {
                store::set_banned(cx.tx()?, user, false).await?;
                format!("User {user} is unbanned.")
            }
            _ => user_card(cx.tx()?, user).await?,
        };
        notice(cx, msg, text).await?;
        return Ok(Flow::Stop);
    }
    let Some(user) = target else {
        return Ok(Flow::Stop);
    };
    let header = match (&msg.from, spec.anonymous_admins) {
        (Some(admin), false) => Some(format!("{}:", admin.first_name)),
        _ => None,
    };
    let purpose = RequestRecord {
        kind: Kind::Reply,
        user_id: user,
        source_message: Some(msg.id.0),
        source_chat: Some(msg.chat.id.0),
        source_thread: msg.thread_id.map(|t| t.0.0),
        content: Some(content_of(msg)),
    };
    let requests = copies(msg, header.as_deref(), None, None);
    let last = requests.len() - 1;
    for (i, r) in requests.iter().enumerate() {
        // The history gets the answer once: with its last piece.
        let purpose = (i == last).then(|| purpose.clone());
        queue_cx(cx, user, Some(user), r, purpose).await?;
    }
    store::set_auto_replied(cx.tx()?, user, false).await?;
    Ok(Flow::Stop)
}

/// `/info`: name, language, first and last seen, messages, ban.
async fn user_card(tx: &mut PgConnection, user: i64) -> Result<String, ModuleError> {
    let seen = super::core::store::get_user(tx, user).await?;
    let fb = store::get_user(tx, user).await?;
    let mut card = match &seen {
        Some(u) => format!(
            "{}, id {user}\nLanguage: {}\nFirst seen: {}\nLast seen: {}",
            display_name(&u.first_name, u.last_name.as_deref(), u.username.as_deref()),
            u.language_code.as_deref().unwrap_or("unknown"),
            u.first_seen.format("%Y-%m-%d %H:%M UTC"),
            u.last_seen.format("%Y-%m-%d %H:%M UTC"),
        ),
        None => format!("User {user}"),
    };
    let (messages, banned) = fb.map_or((0, false), |f| (f.messages, f.banned));
    card.push_str(&format!(
        "\nMessages: {messages}\nBanned: {}",
        if banned { "yes" } else { "no" }
    ));
    if seen.as_ref().is_some_and(|u| u.blocked) {
        card.push_str("\nThe user blocked the bot.");
    }
    Ok(card)
}

/// Copies `user`'s messages that waited for their topic into it (`thread`), in order.
async fn flush_pending(
    tx: &mut PgConnection,
    admin_chat: i64,
    user: i64,
    thread: i32,
) -> Result<(), ModuleError> {
    for message in store::take_pending(tx, user).await? {
        let request = Request::CopyMessage {
            from_chat_id: user,
            message_id: message,
            message_thread_id: Some(thread),
            caption: None,
            reply_to_message_id: None,
            reply_markup: None,
        };
        let purpose = forward(user, message, Some(thread));
        queue(tx, admin_chat, None, &request, Some(purpose)).await?;
    }
    Ok(())
}

/// What a delivered request of the module leads to.
async fn on_result(
    tx: &mut PgConnection,
    d: &Delivery,
    r: &RequestRecord,
) -> Result<(), ModuleError> {
    let user = r.user_id;
    match (r.kind, &d.outcome) {
        (Kind::Topic, DeliveryOutcome::Sent(Some(thread))) => {
            store::set_thread(tx, user, Some(*thread)).await?;
            flush_pending(tx, d.chat_id, user, *thread).await?;
        }
        (Kind::Topic, outcome) => {
            tracing::warn!(
                chat_id = d.chat_id,
                user_id = user,
                outcome = outcome.as_str(),
                "feedback: the user's topic could not be created; is the admin chat a forum where the bot may manage topics?"
            );
            store::set_topic_request(tx, user, None).await?;
        }
        (Kind::Forward, DeliveryOutcome::Sent(Some(message))) => {
            store::map_message(tx, d.chat_id, *message, user).await?;
        }
        (Kind::Forward, DeliveryOutcome::ThreadNotFound) => {
            // An admin deleted the user's topic: a new one is made and the message goes there.
            if let Some(thread) = r.source_thread {
                store::forget_thread(tx, user, thread).await?;
            }
            if let Some(message) = r.source_message {
                store::add_pending(tx, user, message).await?;
            }
            let fb = store::get_user(tx, user).await?;
            match fb {
                // A new topic exists already: the message goes there.
                Some(store::FeedbackUser {
                    thread_id: Some(thread),
                    ..
                }) => flush_pending(tx, d.chat_id, user, thread).await?,
                fb => {
                    if fb.and_then(|f| f.topic_request).is_none() {
                        let (request, purpose) = topic_request(tx, user).await?;
                        let id = queue(tx, d.chat_id, None, &request, Some(purpose)).await?;
                        store::set_topic_request(tx, user, Some(id)).await?;
                    }
                }
            }
        }
        (Kind::Forward, outcome) => {
            tracing::warn!(
                chat_id = d.chat_id,
                user_id = user,
                outcome = outcome.as_str(),
                "feedback: a user's message could not be copied to the admin chat"
            );
        }
        (Kind::Reply, DeliveryOutcome::Sent(_)) => {
            let content = r.content.as_deref().unwrap_or("[message]");
            history::add_message(tx, user, Some(user), Role::Admin, content).await?;
        }
        (Kind::Reply, outcome) => {
            let why = match outcome {
                DeliveryOutcome::Blocked => "the user blocked the bot".to_owned(),
                DeliveryOutcome::ChatNotFound => "the user's chat is gone".to_owned(),
                DeliveryOutcome::Failed(e) => format!("Telegram refused it: {e}"),
                _ => "Telegram refused it".to_owned(),
            };
            let Some(admin_chat) = r.source_chat else {
                return Ok(());
            };
            let request = Request::SendMessage {
                text: format!("Not delivered to user {user}: {why}."),
                reply_markup: None,
                message_thread_id: r.source_thread,
                reply_to_message_id: r.source_message,
                in_history: false,
            };
            queue(tx, admin_chat, None, &request, None).await?;
        }
    }
    Ok(())
}
