//! Public value types of the sandbox: what tests inject, what they read back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The kind of chat an injected update comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatType {
    /// A one-to-one chat with a user; its id is the user's id.
    #[default]
    Private,
    /// A basic group (negative id).
    Group,
    /// A supergroup (negative id, usually `-100…`).
    Supergroup,
    /// A channel (negative id).
    Channel,
}

impl ChatType {
    /// Telegram's `type` string for this chat kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Private => "private",
            Self::Group => "group",
            Self::Supergroup => "supergroup",
            Self::Channel => "channel",
        }
    }
}

/// A text message from a user, injected as a `message` update.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectMessage {
    /// Token of the bot that receives the update.
    pub token: String,
    /// Chat the message is written in; for a private chat the user's id.
    pub chat_id: i64,
    /// Sender; defaults to `chat_id` in private chats, required in groups.
    pub user_id: Option<i64>,
    /// Sender's first name; defaults to `User <id>`.
    pub first_name: Option<String>,
    /// Sender's IETF language tag, e.g. `en`.
    pub language_code: Option<String>,
    /// Kind of chat; defaults to private for positive ids and group for negative ones.
    pub chat_type: Option<ChatType>,
    /// The text; a leading `/command` gets a `bot_command` entity. With `media` it is the
    /// caption (may be empty; must be empty for kinds without a caption).
    pub text: String,
    /// Makes the supergroup a forum (`is_forum: true`, topics allowed); it stays one.
    #[serde(default)]
    pub is_forum: bool,
    /// The forum topic the message is written in (an open topic of a forum supergroup).
    pub message_thread_id: Option<i32>,
    /// The message this one replies to (e.g. an admin replying to the bot in a group).
    pub reply_to_message_id: Option<i32>,
    /// A photo, voice, location … instead of a plain text message.
    pub media: Option<InjectMedia>,
}

/// The content kinds a message can carry besides text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    /// A photo (`photo`: one size, 320×320).
    #[default]
    Photo,
    /// A file (`document`).
    Document,
    /// A voice note (`voice`).
    Voice,
    /// A video (`video`).
    Video,
    /// A music file (`audio`).
    Audio,
    /// A sticker (`sticker`), no caption.
    Sticker,
    /// A location (`location`), no caption.
    Location,
    /// A shared contact (`contact`), no caption.
    Contact,
    /// A GIF or silent video (`animation`, plus `document` as Telegram sends it).
    Animation,
    /// A round video (`video_note`), no caption.
    VideoNote,
}

impl MediaKind {
    /// The field of a `Message` holding this content, e.g. `video_note`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Photo => "photo",
            Self::Document => "document",
            Self::Voice => "voice",
            Self::Video => "video",
            Self::Audio => "audio",
            Self::Sticker => "sticker",
            Self::Location => "location",
            Self::Contact => "contact",
            Self::Animation => "animation",
            Self::VideoNote => "video_note",
        }
    }

    /// Whether Telegram lets this kind carry a caption.
    pub fn has_caption(self) -> bool {
        !matches!(
            self,
            Self::Sticker | Self::Location | Self::Contact | Self::VideoNote
        )
    }
}

/// The media of an injected message. Files get a `file_id` the bot can send again.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectMedia {
    /// What it is.
    pub kind: MediaKind,
    /// File name (document, audio, video, animation).
    pub file_name: Option<String>,
    /// MIME type of the file.
    pub mime_type: Option<String>,
    /// File size in bytes (default 0).
    pub file_size: Option<u64>,
    /// Duration in seconds (voice, video, audio, animation, video note; default 1).
    pub duration: Option<u32>,
    /// The sticker's emoji.
    pub emoji: Option<String>,
    /// Latitude of a location (−90…90).
    pub latitude: Option<f64>,
    /// Longitude of a location (−180…180).
    pub longitude: Option<f64>,
    /// Phone number of a contact (required for a contact).
    pub phone_number: Option<String>,
    /// First name of a contact (default "Contact").
    pub first_name: Option<String>,
}

impl InjectMedia {
    /// Media of `kind` with default metadata (a location needs coordinates, a contact a number).
    pub fn new(kind: MediaKind) -> Self {
        Self {
            kind,
            ..Self::default()
        }
    }
}

impl InjectMessage {
    /// A message `text` from user `chat_id` in a private chat with the bot `token`.
    pub fn private(token: &str, chat_id: i64, text: &str) -> Self {
        Self {
            token: token.to_owned(),
            chat_id,
            text: text.to_owned(),
            ..Self::default()
        }
    }
}

/// A press on an inline keyboard button, injected as a `callback_query` update.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectCallback {
    /// Token of the bot that receives the update.
    pub token: String,
    /// Chat holding the message with the keyboard.
    pub chat_id: i64,
    /// Who pressed; defaults to `chat_id` in private chats, required in groups.
    pub user_id: Option<i64>,
    /// Presser's first name; defaults to `User <id>`.
    pub first_name: Option<String>,
    /// Presser's IETF language tag.
    pub language_code: Option<String>,
    /// The button's `callback_data`.
    pub callback_data: String,
    /// Message carrying the keyboard; defaults to the bot's latest message in the chat.
    pub message_id: Option<i32>,
}

/// An error or latency injected into Bot API calls (`POST /sandbox/faults`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Only calls with this token (any token when absent).
    pub token: Option<String>,
    /// Only calls of this method, case-insensitive (any method when absent).
    pub method: Option<String>,
    /// HTTP status to answer with; 200 means "no error, only the delay".
    pub status: u16,
    /// Error description; defaults to Telegram's text for the status.
    pub description: Option<String>,
    /// `parameters.retry_after` of the error (defaults to 1 for a 429).
    pub retry_after: Option<u32>,
    /// How many calls the fault affects; absent means until the faults are cleared.
    pub count: Option<u32>,
    /// Latency added before answering, in milliseconds.
    pub delay_ms: Option<u64>,
}

/// Bot API calls held in flight until released (`POST /sandbox/holds`).
///
/// A matching call waits before anything else happens to it (before faults, the token check
/// and the method itself), so a test can observe the caller while its request is in flight.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    /// Only calls with this token (any token when absent).
    pub token: Option<String>,
    /// Only calls of this method, case-insensitive (any method when absent).
    pub method: Option<String>,
    /// How many calls it catches; absent means every matching call until released.
    pub count: Option<u32>,
    /// A held call goes on by itself after this many milliseconds (default: only on release).
    pub max_ms: Option<u64>,
}

/// A hold as `GET /sandbox/holds` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldInfo {
    /// Id to release it with.
    pub hold_id: u64,
    /// The token it matches, if limited to one.
    pub token: Option<String>,
    /// The method it matches (Telegram spelling), if limited to one.
    pub method: Option<String>,
    /// Calls waiting in it right now.
    pub waiting: u64,
    /// Calls it caught so far (waiting or gone on).
    pub caught: u64,
}

/// A request the OpenAI-compatible endpoint received (`GET /sandbox/ai/requests`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AiRequest {
    /// Arrival order, from 1.
    pub seq: u64,
    /// The API key of its `Authorization: Bearer` header (absent when there was none). The
    /// control API is local and shows it; the sandbox's log never does.
    pub key: Option<String>,
    /// The request body: the JSON sent, or its text (lossy UTF-8) when it was not JSON.
    pub body: Value,
    /// The HTTP status it was answered with.
    pub status: u16,
}

/// An error or latency injected into the OpenAI-compatible endpoint (`POST /sandbox/ai/faults`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiFault {
    /// HTTP status to answer with (429, 500, …); 200 means "no error, only the delay".
    pub status: u16,
    /// How many requests it affects; absent means until the AI faults are cleared.
    pub count: Option<u32>,
    /// Latency before answering, in milliseconds (longer than a client's timeout: a timeout).
    pub delay_ms: Option<u64>,
    /// The `Retry-After` header in seconds (defaults to 1 for a 429).
    pub retry_after: Option<u32>,
    /// `error.message` of the answer; defaults to OpenAI's text for the status.
    pub message: Option<String>,
}

/// Something a bot did in a chat, in the order it happened (`GET /sandbox/sent`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SentEvent {
    /// Sequence number, increasing per bot across all of its chats.
    pub seq: u64,
    /// Unix time of the call, in seconds.
    pub date: i64,
    /// The Bot API method that produced it, in Telegram's spelling (`sendMessage`).
    pub method: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: SentKind,
}

impl SentEvent {
    /// Current text (or caption) of a message event, or the new text of an edit.
    pub fn text(&self) -> Option<&str> {
        match &self.kind {
            SentKind::Message { text, caption, .. } => text.as_deref().or(caption.as_deref()),
            SentKind::Edit { text, .. } => text.as_deref(),
            _ => None,
        }
    }
}

/// The kinds of [`SentEvent`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SentKind {
    /// A message the bot sent (sendMessage, sendPhoto, …, forward, copy), as it is now: later
    /// edits are applied and `deleted` says whether it was deleted since.
    Message {
        /// Id of the message in its chat.
        message_id: i32,
        /// Its content: `text`, or the media field (`photo`, `voice`, `location`, …).
        #[serde(default)]
        kind: String,
        /// The forum topic it was sent to, if any.
        #[serde(default)]
        message_thread_id: Option<i32>,
        /// Current text of a text message.
        text: Option<String>,
        /// Current caption of a media message.
        caption: Option<String>,
        /// Current markup: the inline keyboard, or the reply keyboard / removal sent with it.
        reply_markup: Option<Value>,
        /// Whether the message was edited since.
        edited: bool,
        /// Whether the message was deleted since.
        deleted: bool,
        /// The full Telegram `Message` object as it is now.
        message: Value,
    },
    /// An edit of text or markup (editMessageText, editMessageReplyMarkup).
    Edit {
        /// Id of the edited message.
        message_id: i32,
        /// New text, for editMessageText.
        text: Option<String>,
        /// New inline keyboard (absent when removed).
        reply_markup: Option<Value>,
    },
    /// A deleted message (deleteMessage).
    Delete {
        /// Id of the deleted message.
        message_id: i32,
    },
    /// An answer to a callback query from this chat (answerCallbackQuery).
    CallbackAnswer {
        /// Id of the answered query.
        callback_query_id: String,
        /// Notification text, if any.
        text: Option<String>,
        /// Whether it was shown as an alert.
        show_alert: bool,
        /// URL to open, if any.
        url: Option<String>,
    },
    /// A chat action such as `typing` (sendChatAction).
    ChatAction {
        /// The action.
        action: String,
    },
    /// A forum topic the bot created, edited, closed, reopened or deleted.
    Topic {
        /// The topic's id.
        message_thread_id: i32,
        /// `created`, `edited`, `closed`, `reopened` or `deleted`.
        action: String,
        /// The topic's name after the action.
        name: String,
    },
}

/// A registered bot as getMe describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BotInfo {
    /// The bot's user id: the token's numeric prefix.
    pub id: i64,
    /// The bot's username.
    pub username: String,
}

/// Call counters and queue sizes (`GET /sandbox/stats`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Per token (registered, revoked or unknown), the counters of its calls.
    pub bots: BTreeMap<String, BotStats>,
    /// getUpdates requests currently waiting (long polls held open), all tokens together.
    pub long_polls: u64,
}

impl Stats {
    /// Calls of `method` (Telegram spelling, e.g. `getUpdates`) made with `token`.
    pub fn calls(&self, token: &str, method: &str) -> u64 {
        self.bots
            .get(token)
            .and_then(|b| b.calls.get(method))
            .copied()
            .unwrap_or(0)
    }

    /// 409 Conflict answers returned to calls made with `token`.
    pub fn conflicts(&self, token: &str) -> u64 {
        self.bots.get(token).map_or(0, |b| b.conflicts)
    }

    /// 429 answers the rate limits gave to calls made with `token` (faults not included).
    pub fn rate_limited(&self, token: &str) -> u64 {
        self.bots.get(token).map_or(0, |b| b.rate_limited)
    }
}

/// Counters of one token.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BotStats {
    /// Whether the token is a registered bot (false for unknown tokens).
    pub registered: bool,
    /// Whether the bot was revoked.
    pub revoked: bool,
    /// Calls per method, methods spelled as Telegram does (`getUpdates`); unknown methods as sent.
    pub calls: BTreeMap<String, u64>,
    /// 409 Conflict answers returned.
    pub conflicts: u64,
    /// 429 answers given because of the rate limits (`enforce_rate_limits`); fault-injected
    /// 429s are not counted here but in `fault_errors`.
    #[serde(default)]
    pub rate_limited: u64,
    /// Error answers given by injected faults (`POST /sandbox/faults`), any status.
    #[serde(default)]
    pub fault_errors: u64,
    /// Updates waiting to be fetched or delivered.
    pub pending_updates: usize,
    /// getUpdates requests of this bot currently waiting.
    pub long_polls: u64,
}
