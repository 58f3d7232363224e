//! What a bot wants sent, as data: the requests modules queue in the outbox and the sender
//! delivers after the update's transaction committed.

use serde::{Deserialize, Serialize};
use teloxide::types::{InlineKeyboardMarkup, ReplyMarkup};

/// The priority lanes of a bot's sender: a lower lane always goes first, so a running
/// mailing never delays an answer by more than one send slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lane {
    /// Answers to users.
    Reply = 0,
    /// Scheduled messages.
    Scheduled = 1,
    /// Bulk sends (broadcasts).
    Bulk = 2,
}

impl Lane {
    /// The lane's number in `outbox.lane`.
    pub fn as_i16(self) -> i16 {
        self as i16
    }

    /// The lane of a stored number (unknown numbers are bulk).
    pub fn from_i16(n: i16) -> Self {
        match n {
            0 => Lane::Reply,
            1 => Lane::Scheduled,
            _ => Lane::Bulk,
        }
    }
}

/// One Bot API call, stored as JSON in `outbox.request`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "camelCase")]
pub enum Request {
    /// `sendMessage`.
    SendMessage {
        /// The text.
        text: String,
        /// A keyboard, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_markup: Option<ReplyMarkup>,
        /// The forum topic it goes to, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_thread_id: Option<i32>,
        /// The message of the chat it answers, if any (sent anyway when that one is gone).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to_message_id: Option<i32>,
        /// Set when the queuing module wrote the text into the history itself (the assistant's
        /// replies): history's `on_sent` then does not record it again as the bot's.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        in_history: bool,
    },
    /// `copyMessage`: a copy of any message (text, media, location …) without a link to
    /// the original.
    CopyMessage {
        /// The chat the original is in.
        from_chat_id: i64,
        /// The original message.
        message_id: i32,
        /// The forum topic the copy goes to, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_thread_id: Option<i32>,
        /// A new caption for media (none keeps the original's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
        /// The message of the chat the copy answers, if any (sent anyway when that one is
        /// gone).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to_message_id: Option<i32>,
        /// An inline keyboard for the copy (none keeps none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_markup: Option<InlineKeyboardMarkup>,
    },
    /// `createForumTopic` in a forum supergroup; its result's id is the topic's
    /// `message_thread_id`.
    CreateForumTopic {
        /// The topic's name (1-128 characters).
        name: String,
    },
    /// `editMessageText` of one of the bot's messages.
    EditMessageText {
        /// The message to edit.
        message_id: i32,
        /// The new text.
        text: String,
        /// The new inline keyboard (none removes it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_markup: Option<InlineKeyboardMarkup>,
    },
    /// `answerCallbackQuery`.
    AnswerCallbackQuery {
        /// The query.
        callback_query_id: String,
        /// A notice shown to the user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
}

impl Request {
    /// The Bot API method's name.
    pub fn method(&self) -> &'static str {
        match self {
            Request::SendMessage { .. } => "sendMessage",
            Request::CopyMessage { .. } => "copyMessage",
            Request::CreateForumTopic { .. } => "createForumTopic",
            Request::EditMessageText { .. } => "editMessageText",
            Request::AnswerCallbackQuery { .. } => "answerCallbackQuery",
        }
    }

    /// Whether Telegram's sending limits (per chat, per bot) apply to it: new messages do
    /// (a new topic posts its service message, so it counts too).
    pub fn is_rate_limited(&self) -> bool {
        matches!(
            self,
            Request::SendMessage { .. }
                | Request::CopyMessage { .. }
                | Request::CreateForumTopic { .. }
        )
    }

    /// A plain message of `text` (no keyboard, no topic, no reply).
    pub fn text_message(text: impl Into<String>) -> Self {
        Request::SendMessage {
            text: text.into(),
            reply_markup: None,
            message_thread_id: None,
            reply_to_message_id: None,
            in_history: false,
        }
    }

    /// The text history records as the bot's once Telegram accepted it: what the chat sees,
    /// unless the queuing module recorded it already (None for calls that show no text).
    pub fn text(&self) -> Option<&str> {
        match self {
            Request::SendMessage {
                in_history: true, ..
            } => None,
            Request::SendMessage { text, .. } | Request::EditMessageText { text, .. } => Some(text),
            Request::AnswerCallbackQuery { .. }
            | Request::CopyMessage { .. }
            | Request::CreateForumTopic { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let cases = [
            Request::text_message("hi"),
            Request::SendMessage {
                text: "in a topic".into(),
                reply_markup: None,
                message_thread_id: Some(3),
                reply_to_message_id: Some(9),
                in_history: true,
            },
            Request::CopyMessage {
                from_chat_id: 5,
                message_id: 7,
                message_thread_id: Some(3),
                caption: Some("from Ann".into()),
                reply_to_message_id: None,
                reply_markup: None,
            },
            Request::CreateForumTopic {
                name: "Ann (5)".into(),
            },
            Request::EditMessageText {
                message_id: 7,
                text: "menu".into(),
                reply_markup: Some(InlineKeyboardMarkup::default()),
            },
            Request::AnswerCallbackQuery {
                callback_query_id: "q".into(),
                text: Some("changed".into()),
            },
            Request::CopyMessage {
                from_chat_id: 5,
                message_id: 9,
                message_thread_id: None,
                caption: None,
                reply_to_message_id: None,
                reply_markup: Some(InlineKeyboardMarkup::default()),
            },
        ];
        for r in cases {
            let json = serde_json::to_value(&r).unwrap();
            assert_eq!(json["method"], r.method());
            assert_eq!(serde_json::from_value::<Request>(json).unwrap(), r);
        }
        // Rows queued before the topic and reply fields existed still read.
        let old: Request =
            serde_json::from_value(serde_json::json!({"method": "sendMessage", "text": "x"}))
                .unwrap();
        assert_eq!(old, Request::text_message("x"));
        assert_eq!(Lane::from_i16(Lane::Bulk.as_i16()), Lane::Bulk);
        assert!(Lane::Reply < Lane::Scheduled && Lane::Scheduled < Lane::Bulk);
    }
}
