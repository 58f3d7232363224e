//! The send interface modules use: one bot's sending calls with Telegram's failures handled.
//!
//! Every call is retried on a 429 (waiting exactly `retry_after`), on network errors and on
//! errors teloxide cannot name (doubling delays, [`SEND_ATTEMPTS`] in all); a 403 comes back
//! as [`CallOutcome::Blocked`] and any other refusal as [`CallOutcome::Rejected`], both logged
//! here once with the bot's id. Only a revoked token or a call that kept failing transiently
//! is an error: the caller's unit of work then ends and the update is replayed later.

use std::time::Duration;

use teloxide::Bot;
use teloxide::payloads::{AnswerCallbackQuerySetters, EditMessageTextSetters, SendMessageSetters};
use teloxide::prelude::Requester;
use teloxide::types::{
    BotCommand, CallbackQueryId, ChatId, InlineKeyboardMarkup, Message, MessageId, ReplyMarkup,
};

use super::TelegramError;

/// Attempts at one Bot API call before the caller gives up on it for now.
const SEND_ATTEMPTS: u32 = 4;
/// First delay between attempts of a failed call (doubles).
const SEND_RETRY_START: Duration = Duration::from_millis(500);

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

/// A message the bot tried to deliver, as modules observe it after the update's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The chat it went to.
    pub chat_id: i64,
    /// The user it was for, when known.
    pub user_id: Option<i64>,
    /// The text sent (or the new text of an edit).
    pub text: String,
    /// What Telegram made of it.
    pub outcome: DeliveryOutcome,
}

/// What Telegram made of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Sent (or edited); the message id when Telegram gave one.
    Sent(Option<i32>),
    /// The user blocked the bot.
    Blocked,
    /// Telegram refused it, with its reason.
    Rejected(String),
}

impl<T> CallOutcome<T> {
    /// The delivery outcome of a call, with the sent message id when there is one.
    pub fn delivery(&self, message_id: impl FnOnce(&T) -> Option<i32>) -> DeliveryOutcome {
        match self {
            CallOutcome::Done(v) => DeliveryOutcome::Sent(message_id(v)),
            CallOutcome::Blocked => DeliveryOutcome::Blocked,
            CallOutcome::Rejected(reason) => DeliveryOutcome::Rejected(reason.clone()),
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

    /// `sendMessage`.
    pub async fn send_message(
        &self,
        chat: ChatId,
        text: &str,
        markup: Option<ReplyMarkup>,
    ) -> Result<CallOutcome<Message>, SendError> {
        self.call("sendMessage", || {
            let request = self.bot.send_message(chat, text);
            let request = match markup.clone() {
                Some(m) => request.reply_markup(m),
                None => request,
            };
            async move { request.await }
        })
        .await
    }

    /// `editMessageText`, with an inline keyboard or none.
    pub async fn edit_message_text(
        &self,
        chat: ChatId,
        message_id: MessageId,
        text: &str,
        markup: Option<InlineKeyboardMarkup>,
    ) -> Result<CallOutcome<Message>, SendError> {
        self.call("editMessageText", || {
            let request = self.bot.edit_message_text(chat, message_id, text);
            let request = match markup.clone() {
                Some(k) => request.reply_markup(k),
                None => request,
            };
            async move { request.await }
        })
        .await
    }

    /// `answerCallbackQuery`, with an optional notification text.
    pub async fn answer_callback_query(
        &self,
        id: &CallbackQueryId,
        text: Option<&str>,
    ) -> Result<CallOutcome<()>, SendError> {
        self.call("answerCallbackQuery", || {
            let request = self.bot.answer_callback_query(id.clone());
            let request = match text {
                Some(t) => request.text(t),
                None => request,
            };
            async move { request.await.map(|_| ()) }
        })
        .await
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
