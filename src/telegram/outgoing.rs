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
    /// `copyMessage`: a copy of message `message_id` of chat `from_chat_id` (any media,
    /// caption and entities kept), with an inline keyboard when given.
    CopyMessage {
        /// The chat the original is in.
        from_chat_id: i64,
        /// The original message.
        message_id: i32,
        /// An inline keyboard for the copy (none keeps none).
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
            Request::EditMessageText { .. } => "editMessageText",
            Request::CopyMessage { .. } => "copyMessage",
            Request::AnswerCallbackQuery { .. } => "answerCallbackQuery",
        }
    }

    /// Whether Telegram's sending limits (per chat, per bot) apply to it: new messages do.
    pub fn is_rate_limited(&self) -> bool {
        matches!(
            self,
            Request::SendMessage { .. } | Request::CopyMessage { .. }
        )
    }

    /// The text a chat sees, for history (None for calls that show no message).
    pub fn text(&self) -> Option<&str> {
        match self {
            Request::SendMessage { text, .. } | Request::EditMessageText { text, .. } => Some(text),
            Request::AnswerCallbackQuery { .. } | Request::CopyMessage { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let cases = [
            Request::SendMessage {
                text: "hi".into(),
                reply_markup: None,
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
                reply_markup: None,
            },
        ];
        for r in cases {
            let json = serde_json::to_value(&r).unwrap();
            assert_eq!(json["method"], r.method());
            assert_eq!(serde_json::from_value::<Request>(json).unwrap(), r);
        }
        assert_eq!(Lane::from_i16(Lane::Bulk.as_i16()), Lane::Bulk);
        assert!(Lane::Reply < Lane::Scheduled && Lane::Scheduled < Lane::Bulk);
    }
}
