//! One bot's Bot API calls: single attempts of outbox requests for the sender
//! ([`Messenger::attempt`]), and retried calls for the rest ([`Messenger::set_my_commands`]).
//!
//! A retried call is retried on a 429 (waiting exactly `retry_after`), on network errors and on
//! errors teloxide cannot name (doubling delays, [`SEND_ATTEMPTS`] in all); a 403 comes back
//! as [`CallOutcome::Blocked`] and any other refusal as [`CallOutcome::Rejected`], both logged
//! here once with the bot's id. Only a revoked token or a call that kept failing transiently
//! is an error: the caller's unit of work then ends and the update is replayed later.

use std::time::Duration;

use teloxide::Bot;
use teloxide::payloads::{
    AnswerCallbackQuerySetters, CopyMessageSetters, EditMessageTextSetters, SendMessageSetters,
};
use teloxide::prelude::Requester;
use teloxide::types::{
    BotCommand, CallbackQueryId, ChatAction, ChatId, MessageId, ReplyParameters, ThreadId,
};

use super::{Request, TelegramError};

/// Attempts at one Bot API call before the caller gives up on it for now.
const SEND_ATTEMPTS: u32 = 4;
/// First delay between attempts of a failed call (doubles).
const SEND_RETRY_START: Duration = Duration::from_millis(500);

/// Answers message `id` of the same chat, sent anyway when that message is gone.
fn reply_to(id: i32) -> ReplyParameters {
    ReplyParameters::new(MessageId(id)).allow_sending_without_reply()
}

/// What one call came to, when it did not fail for good.
#[derive(Debug)]
pub enum CallOutcome<T> {
    /// Telegram accepted it.
    Done(T),
    /// The user blocked the bot or was deactivated (403).
    Blocked,
    /// Telegram refused this request; retrying will not help. The reason is kept.
    Rejected(String),
}

/// A request the bot's sender finished, as modules observe it ([`Module::on_sent`]).
///
/// [`Module::on_sent`]: crate::modules::Module::on_sent
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The outbox row (its result stays readable there).
    pub outbox_id: i64,
    /// The module that queued it.
    pub origin: String,
    /// Its lane.
    pub lane: super::Lane,
    /// The chat it went to.
    pub chat_id: i64,
    /// The user it was for, when known.
    pub user_id: Option<i64>,
    /// The text the chat sees (None for calls that show no message).
    pub text: Option<String>,
    /// What Telegram made of it.
    pub outcome: DeliveryOutcome,
}

/// What Telegram made of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Sent (or edited); the message id when Telegram gave one.
    Sent(Option<i32>),
    /// The user blocked the bot or was deactivated (403).
    Blocked,
    /// The chat does not exist (400 "chat not found").
    ChatNotFound,
    /// The forum topic it went to does not exist any more (400 "message thread not found").
    ThreadNotFound,
    /// Telegram refused it for good, with its reason.
    Failed(String),
}

impl DeliveryOutcome {
    /// The outcome's name in `outbox.outcome`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeliveryOutcome::Sent(_) => "sent",
            DeliveryOutcome::Blocked => "blocked",
            DeliveryOutcome::ChatNotFound => "chat_not_found",
            DeliveryOutcome::ThreadNotFound => "thread_not_found",
            DeliveryOutcome::Failed(_) => "failed",
        }
    }
}

/// Why a call failed for good.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The token was revoked: the bot must stop.
    #[error("Telegram rejected the token")]
    Unauthorized,
    /// The call kept failing transiently.
    #[error("{method} failed {attempts} times")]
    Exhausted {
        /// The Bot API method.
        method: &'static str,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        #[source]
        source: TelegramError,
    },
}

/// One bot's sending calls.
#[derive(Clone, Debug)]
pub struct Messenger {
    bot: Bot,
    bot_id: i64,
}

impl Messenger {
    /// The send interface of panel bot `bot_id`, through teloxide's `bot`.
    pub fn new(bot: Bot, bot_id: i64) -> Self {
        Self { bot, bot_id }
    }

    /// The panel id of the bot this sends for.
    pub fn bot_id(&self) -> i64 {
        self.bot_id
    }

    /// One attempt at `request` in `chat`: the sent message's id (for calls that create or
    /// edit a message), or the classified failure. The outbox's sender decides what a
    /// failure means (it owns the retries and Telegram's limits).
    pub async fn attempt(
        &self,
        chat: ChatId,
        request: &Request,
    ) -> Result<Option<i32>, TelegramError> {
        let result = match request {
            Request::SendMessage {
                text,
                reply_markup,
                message_thread_id,
                reply_to_message_id,
                in_history: _,
            } => {
                let mut call = self.bot.send_message(chat, text);
                if let Some(m) = reply_markup.clone() {
                    call = call.reply_markup(m);
                }
                if let Some(t) = message_thread_id {
                    call = call.message_thread_id(ThreadId(MessageId(*t)));
                }
                if let Some(r) = reply_to_message_id {
                    call = call.reply_parameters(reply_to(*r));
                }
                call.await.map(|m| Some(m.id.0))
            }
            Request::CopyMessage {
                from_chat_id,
                message_id,
                message_thread_id,
                caption,
                reply_to_message_id,
                reply_markup,
            } => {
                let mut call =
                    self.bot
                        .copy_message(chat, ChatId(*from_chat_id), MessageId(*message_id));
                if let Some(k) = reply_markup.clone() {
                    call = call.reply_markup(k);
                }
                if let Some(t) = message_thread_id {
                    call = call.message_thread_id(ThreadId(MessageId(*t)));
                }
                if let Some(c) = caption {
                    call = call.caption(c);
                }
                if let Some(r) = reply_to_message_id {
                    call = call.reply_parameters(reply_to(*r));
                }
                call.await.map(|m| Some(m.0))
            }
            Request::CreateForumTopic { name } => self
                .bot
                .create_forum_topic(chat, name)
                .await
                .map(|t| Some(t.thread_id.0.0)),
            Request::EditMessageText {
                message_id,
                text,
                reply_markup,
            } => {
                let call = self
                    .bot
                    .edit_message_text(chat, MessageId(*message_id), text);
                let call = match reply_markup.clone() {
                    Some(k) => call.reply_markup(k),
                    None => call,
                };
                call.await.map(|m| Some(m.id.0))
            }
            Request::AnswerCallbackQuery {
                callback_query_id,
                text,
            } => {
                let call = self
                    .bot
                    .answer_callback_query(CallbackQueryId(callback_query_id.clone()));
                let call = match text {
                    Some(t) => call.text(t),
                    None => call,
                };
                call.await.map(|_| None)
            }
        };
        result.map_err(|e| TelegramError::from_request(&e))
    }

    /// `sendChatAction` "typing" in `chat`, once (it shows for about 5 seconds); a failure
    /// is only logged at debug level: the indicator is a courtesy.
    pub async fn typing(&self, chat: ChatId) {
        if let Err(e) = self.bot.send_chat_action(chat, ChatAction::Typing).await {
            let error = TelegramError::from_request(&e);
            tracing::debug!(bot_id = self.bot_id, chat_id = chat.0, error = %error, "typing indicator failed");
        }
    }

    /// `setMyCommands`.
    pub async fn set_my_commands(
        &self,
        commands: Vec<BotCommand>,
    ) -> Result<CallOutcome<()>, SendError> {
        self.call("setMyCommands", || {
            let request = self.bot.set_my_commands(commands.clone());
            async move { request.await.map(|_| ()) }
        })
        .await
    }

    /// Runs one call with the retry rules of the module docs.
    async fn call<T, F, Fut>(
        &self,
        method: &'static str,
        mut call: F,
    ) -> Result<CallOutcome<T>, SendError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, teloxide::RequestError>>,
    {
        let bot_id = self.bot_id;
        let mut delay = SEND_RETRY_START;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match call().await {
                Ok(v) => return Ok(CallOutcome::Done(v)),
                Err(e) => TelegramError::from_request(&e),
            };
            match error {
                TelegramError::Blocked(_) => return Ok(CallOutcome::Blocked),
                TelegramError::Unauthorized => return Err(SendError::Unauthorized),
                TelegramError::Rejected { description, .. } => {
                    tracing::warn!(bot_id, method, error = %description, "Telegram refused the request");
                    return Ok(CallOutcome::Rejected(description));
                }
                e @ (TelegramError::ChatNotFound | TelegramError::ThreadNotFound) => {
                    tracing::warn!(bot_id, method, error = %e, "Telegram refused the request");
                    let reason = if e == TelegramError::ChatNotFound {
                        "chat not found"
                    } else {
                        "message thread not found"
                    };
                    return Ok(CallOutcome::Rejected(reason.into()));
                }
                TelegramError::Conflict(description) => {
                    tracing::warn!(bot_id, method, error = %description, "Telegram refused the request");
                    return Ok(CallOutcome::Rejected(description));
                }
                TelegramError::RetryAfter(wait) if attempt < SEND_ATTEMPTS => {
                    tokio::time::sleep(wait).await;
                }
                TelegramError::Transient(_) | TelegramError::Unknown(_)
                    if attempt < SEND_ATTEMPTS =>
                {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                TelegramError::Unknown(reason) => {
                    tracing::error!(bot_id, method, error = %reason, attempts = attempt, "Telegram kept refusing the request; giving up on it");
                    return Ok(CallOutcome::Rejected(reason));
                }
                source @ (TelegramError::RetryAfter(_) | TelegramError::Transient(_)) => {
                    return Err(SendError::Exhausted {
                        method,
                        attempts: attempt,
                        source,
                    });
                }
            }
        }
    }
}
