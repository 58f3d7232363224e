//! The sandbox's state: bots, chats, messages, pending updates, faults and counters.
//!
//! Locking: a read-mostly registry of bots (`RwLock`) and one `std::sync::Mutex` per bot, so
//! bots never contend with each other. No lock is held across an `.await`; waiters (long polls,
//! webhook loops, `wait_sent`) sleep on the bot's [`Notify`]s and re-check under the lock.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::markup::{self, ParseMode, utf16_len};
use super::params::Params;
use super::types::{
    BotInfo, BotStats, ChatType, Fault, Hold, HoldInfo, InjectCallback, InjectMedia, InjectMessage,
    MediaKind, SentEvent, SentKind, Stats,
};
use super::{SandboxConfig, SandboxError, mask_token};
use crate::tasks::Tasks;

/// Most messages (and most events) remembered per chat; older ones are forgotten.
const MAX_PER_CHAT: usize = 10_000;
/// Most distinct unknown tokens whose calls are counted.
const MAX_UNKNOWN_TOKENS: usize = 10_000;
/// Longest message text, in UTF-16 code units.
const MAX_TEXT: usize = 4096;
/// Longest media caption, in UTF-16 code units.
const MAX_CAPTION: usize = 1024;
/// Longest long poll accepted, in seconds (longer `timeout`s are cut to this).
const MAX_POLL_TIMEOUT: u64 = 600;

/// A Bot API error answer: HTTP status, Telegram's description, optional `retry_after`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApiErr {
    pub(crate) code: u16,
    pub(crate) description: String,
    pub(crate) retry_after: Option<u32>,
}

impl ApiErr {
    pub(crate) fn new(code: u16, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            retry_after: None,
        }
    }

    pub(crate) fn bad(description: impl Into<String>) -> Self {
        Self::new(400, description)
    }

    pub(crate) fn chat_not_found() -> Self {
        Self::bad("Bad Request: chat not found")
    }

    pub(crate) fn unauthorized() -> Self {
        Self::new(401, "Unauthorized")
    }

    pub(crate) fn not_found() -> Self {
        Self::new(404, "Not Found")
    }

    pub(crate) fn retry_after(seconds: u32) -> Self {
        Self {
            code: 429,
            description: format!("Too Many Requests: retry after {seconds}"),
            retry_after: Some(seconds),
        }
    }

    pub(crate) fn terminated() -> Self {
        Self::new(
            409,
            "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
        )
    }

    pub(crate) fn thread_not_found() -> Self {
        Self::bad("Bad Request: message thread not found")
    }

    pub(crate) fn webhook_active() -> Self {
        Self::new(
            409,
            "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first",
        )
    }
}

macro_rules! methods {
    ($($variant:ident = $name:literal),* $(,)?) => {
        /// The Bot API methods the sandbox implements.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum Method { $($variant),* }

        impl Method {
            const ALL: &[Method] = &[$(Method::$variant),*];

            /// Finds a method by name, case-insensitively as Telegram does.
            pub(crate) fn lookup(name: &str) -> Option<Self> {
                $(if name.eq_ignore_ascii_case($name) { return Some(Method::$variant); })*
                None
            }

            /// Telegram's spelling of the method name.
            pub(crate) fn name(self) -> &'static str {
                match self { $(Method::$variant => $name),* }
            }
        }
    };
}

methods! {
    GetMe = "getMe",
    GetUpdates = "getUpdates",
    SetWebhook = "setWebhook",
    DeleteWebhook = "deleteWebhook",
    GetWebhookInfo = "getWebhookInfo",
    SendMessage = "sendMessage",
    EditMessageText = "editMessageText",
    EditMessageReplyMarkup = "editMessageReplyMarkup",
    DeleteMessage = "deleteMessage",
    AnswerCallbackQuery = "answerCallbackQuery",
    ForwardMessage = "forwardMessage",
    CopyMessage = "copyMessage",
    SendChatAction = "sendChatAction",
    SetMyCommands = "setMyCommands",
    GetMyCommands = "getMyCommands",
    DeleteMyCommands = "deleteMyCommands",
    SendPhoto = "sendPhoto",
    SendDocument = "sendDocument",
    SendVoice = "sendVoice",
    SendVideo = "sendVideo",
    SendAudio = "sendAudio",
    SendSticker = "sendSticker",
    SendAnimation = "sendAnimation",
    SendVideoNote = "sendVideoNote",
    SendLocation = "sendLocation",
    CreateForumTopic = "createForumTopic",
    EditForumTopic = "editForumTopic",
    CloseForumTopic = "closeForumTopic",
    ReopenForumTopic = "reopenForumTopic",
    DeleteForumTopic = "deleteForumTopic",
}

/// The message fields that make up a message's content, in the order a kind is named by:
/// `animation` before `document` (Telegram sends both for an animation).
const CONTENT_KEYS: [&str; 11] = [
    "text",
    "animation",
    "photo",
    "document",
    "voice",
    "video",
    "audio",
    "sticker",
    "location",
    "contact",
    "video_note",
];

/// Topic icon colours Telegram allows (RGB).
const TOPIC_COLORS: [i64; 6] = [0x6FB9F0, 0xFFD67E, 0xCB86DB, 0x8EEE98, 0xFF93B2, 0xFB6F5F];

/// The kind of a message: `text` or the first media field it carries.
fn message_kind(msg: &Value) -> &'static str {
    CONTENT_KEYS
        .iter()
        .find(|k| msg.get(**k).is_some())
        .copied()
        .or_else(|| {
            msg.get("forum_topic_created")
                .map(|_| "forum_topic_created")
        })
        .unwrap_or("other")
}

/// Per-token call counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    known: Vec<u64>,
    other: HashMap<String, u64>,
    conflicts: u64,
    rate_limited: u64,
    fault_errors: u64,
}

impl Counters {
    fn count(&mut self, method: Option<Method>, raw: &str) {
        match method {
            Some(m) => {
                if self.known.is_empty() {
                    self.known = vec![0; Method::ALL.len()];
                }
                self.known[m as usize] += 1;
            }
            None => {
                let name: String = raw.chars().take(64).collect();
                *self.other.entry(name).or_default() += 1;
            }
        }
    }

    fn export(&self) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> = self.other.clone().into_iter().collect();
        for (i, n) in self.known.iter().enumerate() {
            if *n > 0 {
                out.insert(Method::ALL[i].name().to_owned(), *n);
            }
        }
        out
    }
}

/// The body of a pending update as it goes out: built JSON, or raw text injected verbatim.
#[derive(Clone, Debug)]
pub(crate) enum UpdateBody {
    Json(Value),
    Raw(Bytes),
}

impl UpdateBody {
    /// The bytes that go on the wire: serialised JSON, or the raw text unchanged.
    pub(crate) fn to_bytes(&self) -> Bytes {
        match self {
            Self::Json(v) => Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
            Self::Raw(b) => b.clone(),
        }
    }
}

/// One pending update.
#[derive(Debug)]
pub(crate) struct PendingUpdate {
    /// The id that confirms it: its own `update_id`, or one assigned to a raw update.
    pub(crate) id: i64,
    /// Its kind (`message`, …) for `allowed_updates`; raw updates have none and always go out.
    kind: Option<&'static str>,
    pub(crate) body: UpdateBody,
}

/// The webhook of a bot and the state of its delivery.
#[derive(Debug)]
pub(crate) struct WebhookRec {
    pub(crate) url: String,
    pub(crate) secret: Option<String>,
    max_connections: u32,
    pub(crate) last_error_date: Option<i64>,
    pub(crate) last_error_message: Option<String>,
    pub(crate) generation: u64,
    cancel: CancellationToken,
}

#[derive(Debug)]
struct StoredMsg {
    json: Value,
    from_bot: bool,
    deleted: bool,
    edited: bool,
    /// The markup as sent: an inline keyboard, or a reply keyboard / removal / force reply.
    markup: Option<Value>,
}

#[derive(Debug)]
enum EventRec {
    Message(i32),
    Edit {
        message_id: i32,
        text: Option<String>,
        reply_markup: Option<Value>,
    },
    Delete(i32),
    CallbackAnswer {
        id: String,
        text: Option<String>,
        show_alert: bool,
        url: Option<String>,
    },
    ChatAction(String),
    Topic {
        thread: i32,
        action: &'static str,
        name: String,
    },
}

#[derive(Debug)]
struct Event {
    seq: u64,
    date: i64,
    method: Method,
    rec: EventRec,
}

#[derive(Debug)]
struct TopicRec {
    name: String,
    icon_custom_emoji_id: Option<String>,
    closed: bool,
    deleted: bool,
    /// The `forum_topic_created` service message, which topic messages reply to by default.
    created: Value,
}

#[derive(Debug)]
struct ChatRec {
    json: Value,
    kind: ChatType,
    is_forum: bool,
    topics: BTreeMap<i32, TopicRec>,
    next_message_id: i32,
    messages: BTreeMap<i32, StoredMsg>,
    events: VecDeque<Event>,
    /// Sends to a group in the last minute (its sliding window).
    sends: VecDeque<Instant>,
    /// A private chat's theoretical arrival time (its GCRA bucket).
    tat: Option<Instant>,
}

/// A private chat's send period under `--rate-limits`.
const PRIVATE_PERIOD: Duration = Duration::from_secs(1);
/// Sends a private chat may get at once under `--rate-limits`.
const PRIVATE_BURST: u32 = 3;

#[derive(Debug, Clone, Default)]
struct FileRec {
    kind: &'static str,
    unique_id: String,
    file_name: Option<String>,
    mime_type: Option<String>,
    size: u64,
    duration: Option<u32>,
    emoji: Option<String>,
}

#[derive(Debug)]
struct CallbackRec {
    chat_id: i64,
    answered: bool,
}

/// Everything about one bot, behind its mutex.
#[derive(Debug)]
pub(crate) struct BotState {
    username: String,
    first_name: String,
    counters: Counters,
    pub(crate) updates: VecDeque<PendingUpdate>,
    next_update_id: i64,
    allowed_updates: Option<Vec<String>>,
    active_poll: Option<(u64, CancellationToken)>,
    next_poll: u64,
    long_polls: u64,
    pub(crate) webhook: Option<WebhookRec>,
    next_webhook: u64,
    chats: HashMap<i64, ChatRec>,
    blocked: HashSet<i64>,
    commands: HashMap<String, Value>,
    callbacks: HashMap<String, CallbackRec>,
    next_callback: u64,
    files: HashMap<String, FileRec>,
    next_file: u64,
    seq: u64,
    sends: VecDeque<Instant>,
}

/// A registered bot: its identity, state and wake-ups.
#[derive(Debug)]
pub(crate) struct BotEntry {
    pub(crate) token: String,
    pub(crate) id: i64,
    revoked: AtomicBool,
    pub(crate) state: Mutex<BotState>,
    /// Woken when an update is queued (long polls, webhook loop) or a poll is terminated.
    pub(crate) updates: Notify,
    /// Woken when the bot does something in a chat (`wait_sent`).
    pub(crate) sent: Notify,
}

impl BotEntry {
    pub(crate) fn lock(&self) -> MutexGuard<'_, BotState> {
        lock(&self.state)
    }

    pub(crate) fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
struct HoldRec {
    id: u64,
    token: Option<String>,
    method: Option<Method>,
    remaining: Option<u32>,
    max: Option<Duration>,
    release: CancellationToken,
    waiting: u64,
    caught: u64,
}

/// A call caught by a hold: wait on `release` (or `max`), then drop the guard.
pub(crate) struct HeldCall<'a> {
    shared: &'a Shared,
    pub(crate) hold_id: u64,
    pub(crate) release: CancellationToken,
    pub(crate) max: Option<Duration>,
}

impl Drop for HeldCall<'_> {
    fn drop(&mut self) {
        let mut holds = lock(&self.shared.holds);
        if let Some(h) = holds.iter_mut().find(|h| h.id == self.hold_id) {
            h.waiting -= 1;
        }
    }
}

#[derive(Debug)]
struct FaultRec {
    fault: Fault,
    method: Option<Method>,
    remaining: Option<u32>,
}

/// What a matching fault asks for.
#[derive(Debug)]
pub(crate) struct FaultHit {
    pub(crate) delay: Option<Duration>,
    pub(crate) error: Option<ApiErr>,
}

/// State shared by the HTTP handlers, the handle and the webhook loops.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: SandboxConfig,
    bots: RwLock<HashMap<String, Arc<BotEntry>>>,
    unknown: Mutex<HashMap<String, Counters>>,
    faults: Mutex<Vec<FaultRec>>,
    faults_active: AtomicBool,
    holds: Mutex<Vec<HoldRec>>,
    holds_active: AtomicBool,
    next_hold: AtomicU64,
    /// The OpenAI-compatible endpoint's requests and faults.
    pub(crate) ai: super::ai::AiState,
    pub(crate) long_polls: AtomicU64,
    pub(crate) tasks: Tasks,
    /// Cancelled when the sandbox shuts down: ends long polls, waits and webhook loops.
    pub(crate) stop: CancellationToken,
    pub(crate) http: reqwest::Client,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Whether `token` looks like a Telegram bot token: `<digits>:<35 of [A-Za-z0-9_-]>`.
pub(crate) fn well_formed(token: &str) -> Option<i64> {
    let (id, secret) = token.split_once(':')?;
    if id.is_empty()
        || id.len() > 15
        || !id.bytes().all(|b| b.is_ascii_digit())
        || secret.len() != 35
        || !secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return None;
    }
    id.parse().ok().filter(|id| *id > 0)
}

impl Shared {
    pub(crate) fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        let stop = CancellationToken::new();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(SandboxError::HttpClient)?;
        Ok(Self {
            config,
            bots: RwLock::default(),
            unknown: Mutex::default(),
            faults: Mutex::default(),
            faults_active: AtomicBool::new(false),
            holds: Mutex::default(),
            holds_active: AtomicBool::new(false),
            next_hold: AtomicU64::new(1),
            ai: super::ai::AiState::default(),
            long_polls: AtomicU64::new(0),
            tasks: Tasks::new(stop.clone()),
            stop,
            http,
        })
    }

    /// The bot for `token`, if registered (revoked bots included).
    pub(crate) fn bot(&self, token: &str) -> Option<Arc<BotEntry>> {
        self.bots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    fn bot_or_err(&self, token: &str) -> Result<Arc<BotEntry>, SandboxError> {
        self.bot(token)
            .filter(|b| !b.is_revoked())
            .ok_or_else(|| SandboxError::UnknownBot {
                token: mask_token(token),
            })
    }

    /// Registers (or re-activates) a bot; the username defaults to `sandbox_<id>_bot`.
    pub(crate) fn register(
        &self,
        token: &str,
        username: Option<&str>,
    ) -> Result<BotInfo, SandboxError> {
        let id = well_formed(token).ok_or_else(|| SandboxError::MalformedToken {
            token: mask_token(token),
        })?;
        if let Some(u) = username
            && (u.len() < 5
                || u.len() > 32
                || !u.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return Err(SandboxError::InvalidInput(format!(
                "username {u:?} must be 5-32 characters of A-Z, a-z, 0-9 and _"
            )));
        }
        let mut bots = self.bots.write().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = bots.get(token) {
            existing.revoked.store(false, Ordering::Release);
            let mut st = existing.lock();
            if let Some(u) = username {
                st.username = u.to_owned();
            }
            return Ok(BotInfo {
                id,
                username: st.username.clone(),
            });
        }
        let username = username.map_or_else(|| format!("sandbox_{id}_bot"), str::to_owned);
        let mut counters = Counters::default();
        if let Some(old) = lock(&self.unknown).remove(token) {
            counters = old;
        }
        let entry = Arc::new(BotEntry {
            token: token.to_owned(),
            id,
            revoked: AtomicBool::new(false),
            state: Mutex::new(BotState {
                username: username.clone(),
                first_name: "Sandbox Bot".to_owned(),
                counters,
                updates: VecDeque::new(),
                next_update_id: 1,
                allowed_updates: None,
                active_poll: None,
                next_poll: 0,
                long_polls: 0,
                webhook: None,
                next_webhook: 0,
                chats: HashMap::new(),
                blocked: HashSet::new(),
                commands: HashMap::new(),
                callbacks: HashMap::new(),
                next_callback: 1,
                files: HashMap::new(),
                next_file: 1,
                seq: 0,
                sends: VecDeque::new(),
            }),
            updates: Notify::new(),
            sent: Notify::new(),
        });
        bots.insert(token.to_owned(), entry);
        tracing::info!(token = %mask_token(token), bot_id = id, "sandbox bot registered");
        Ok(BotInfo { id, username })
    }

    /// Revokes a bot: its calls answer 401 from now on and its webhook loop stops.
    pub(crate) fn revoke(&self, token: &str) -> Result<(), SandboxError> {
        let bot = self.bot_or_err(token)?;
        bot.revoked.store(true, Ordering::Release);
        let mut st = bot.lock();
        if let Some(w) = st.webhook.take() {
            w.cancel.cancel();
        }
        if let Some((_, poll)) = st.active_poll.take() {
            poll.cancel();
        }
        drop(st);
        bot.updates.notify_waiters();
        tracing::info!(token = %mask_token(token), "sandbox bot revoked");
        Ok(())
    }

    /// Resolves the token of a Bot API call and counts the call.
    ///
    /// With `accept_any_token`, well-formed unknown tokens are registered on the fly; revoked
    /// ones stay revoked. Returns the bot when the call is authorised.
    pub(crate) fn authorise(
        &self,
        token: &str,
        method: Option<Method>,
        raw_method: &str,
    ) -> Option<Arc<BotEntry>> {
        let mut bot = self.bot(token);
        if bot.is_none() && self.config.accept_any_token && well_formed(token).is_some() {
            // Registration of a well-formed token cannot fail.
            let _ = self.register(token, None);
            bot = self.bot(token);
        }
        match bot {
            Some(b) => {
                b.lock().counters.count(method, raw_method);
                (!b.is_revoked()).then_some(b)
            }
            None => {
                let mut unknown = lock(&self.unknown);
                if unknown.len() < MAX_UNKNOWN_TOKENS || unknown.contains_key(token) {
                    unknown
                        .entry(token.to_owned())
                        .or_default()
                        .count(method, raw_method);
                }
                None
            }
        }
    }

    pub(crate) fn add_fault(&self, fault: Fault) -> Result<usize, SandboxError> {
        if !(200..=599).contains(&fault.status) {
            return Err(SandboxError::InvalidInput(format!(
                "status {} must be an HTTP status between 200 and 599",
                fault.status
            )));
        }
        if fault.status == 200 && fault.delay_ms.is_none() {
            return Err(SandboxError::InvalidInput(
                "a fault with status 200 needs delay_ms (it only adds latency)".to_owned(),
            ));
        }
        if fault.count == Some(0) {
            return Err(SandboxError::InvalidInput(
                "count must be at least 1 (leave it out for \"until cleared\")".to_owned(),
            ));
        }
        let method = known_method(fault.method.as_deref())?;
        let mut faults = lock(&self.faults);
        faults.push(FaultRec {
            remaining: fault.count,
            fault,
            method,
        });
        self.faults_active.store(true, Ordering::Release);
        Ok(faults.len())
    }

    /// Counts an error answer given by a fault to a call made with `token`.
    pub(crate) fn count_fault_error(&self, token: &str) {
        match self.bot(token) {
            Some(b) => b.lock().counters.fault_errors += 1,
            None => {
                let mut unknown = lock(&self.unknown);
                if let Some(c) = unknown.get_mut(token) {
                    c.fault_errors += 1;
                }
            }
        }
    }

    pub(crate) fn add_hold(&self, hold: Hold) -> Result<u64, SandboxError> {
        if hold.count == Some(0) {
            return Err(SandboxError::InvalidInput(
                "count must be at least 1 (leave it out for \"until released\")".to_owned(),
            ));
        }
        let method = known_method(hold.method.as_deref())?;
        let id = self.next_hold.fetch_add(1, Ordering::Relaxed);
        let mut holds = lock(&self.holds);
        holds.push(HoldRec {
            id,
            token: hold.token,
            method,
            remaining: hold.count,
            max: hold.max_ms.map(Duration::from_millis),
            release: self.stop.child_token(),
            waiting: 0,
            caught: 0,
        });
        self.holds_active.store(true, Ordering::Release);
        Ok(id)
    }

    pub(crate) fn holds(&self) -> Vec<HoldInfo> {
        lock(&self.holds)
            .iter()
            .map(|h| HoldInfo {
                hold_id: h.id,
                token: h.token.clone(),
                method: h.method.map(|m| m.name().to_owned()),
                waiting: h.waiting,
                caught: h.caught,
            })
            .collect()
    }

    /// Releases the calls waiting in hold `id` and removes it; returns how many were waiting.
    pub(crate) fn release_hold(&self, id: u64) -> Result<u64, SandboxError> {
        let mut holds = lock(&self.holds);
        let pos = holds
            .iter()
            .position(|h| h.id == id)
            .ok_or_else(|| SandboxError::UnknownHold { id })?;
        let h = holds.remove(pos);
        h.release.cancel();
        if holds.is_empty() {
            self.holds_active.store(false, Ordering::Release);
        }
        Ok(h.waiting)
    }

    /// Releases and removes every hold; returns how many holds there were.
    pub(crate) fn release_all_holds(&self) -> usize {
        let mut holds = lock(&self.holds);
        self.holds_active.store(false, Ordering::Release);
        let all = std::mem::take(&mut *holds);
        for h in &all {
            h.release.cancel();
        }
        all.len()
    }

    /// The first hold still catching calls that matches this call, if any.
    pub(crate) fn take_hold(&self, token: &str, method: Option<Method>) -> Option<HeldCall<'_>> {
        if !self.holds_active.load(Ordering::Acquire) {
            return None;
        }
        let mut holds = lock(&self.holds);
        let h = holds.iter_mut().find(|h| {
            h.remaining != Some(0)
                && h.token.as_deref().is_none_or(|t| t == token)
                && (h.method.is_none() || h.method == method)
        })?;
        if let Some(n) = h.remaining.as_mut() {
            *n -= 1;
        }
        h.waiting += 1;
        h.caught += 1;
        Some(HeldCall {
            shared: self,
            hold_id: h.id,
            release: h.release.clone(),
            max: h.max,
        })
    }

    pub(crate) fn clear_faults(&self) -> usize {
        let mut faults = lock(&self.faults);
        self.faults_active.store(false, Ordering::Release);
        std::mem::take(&mut *faults).len()
    }

    /// The first fault matching this call, consuming one of its uses.
    pub(crate) fn take_fault(&self, token: &str, method: Option<Method>) -> Option<FaultHit> {
        if !self.faults_active.load(Ordering::Acquire) {
            return None;
        }
        let mut faults = lock(&self.faults);
        let pos = faults.iter().position(|f| {
            f.fault.token.as_deref().is_none_or(|t| t == token)
                && (f.method.is_none() || f.method == method)
        })?;
        let rec = &mut faults[pos];
        let f = rec.fault.clone();
        if let Some(n) = rec.remaining.as_mut() {
            *n -= 1;
            if *n == 0 {
                faults.remove(pos);
            }
        }
        if faults.is_empty() {
            self.faults_active.store(false, Ordering::Release);
        }
        let error = (f.status != 200).then(|| {
            let retry_after = f
                .retry_after
                .or((f.status == 429).then_some(1))
                .filter(|_| f.status == 429 || f.retry_after.is_some());
            let description = f.description.clone().unwrap_or_else(|| match f.status {
                400 => "Bad Request".to_owned(),
                401 => "Unauthorized".to_owned(),
                403 => "Forbidden".to_owned(),
                404 => "Not Found".to_owned(),
                409 => "Conflict".to_owned(),
                429 => format!(
                    "Too Many Requests: retry after {}",
                    retry_after.unwrap_or(1)
                ),
                500 => "Internal Server Error".to_owned(),
                502 => "Bad Gateway".to_owned(),
                503 => "Service Unavailable".to_owned(),
                504 => "Gateway Timeout".to_owned(),
                s => format!("Error {s}"),
            });
            ApiErr {
                code: f.status,
                description,
                retry_after,
            }
        });
        Some(FaultHit {
            delay: f.delay_ms.map(Duration::from_millis),
            error,
        })
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut out = Stats {
            long_polls: self.long_polls.load(Ordering::Relaxed),
            ..Stats::default()
        };
        let bots: Vec<Arc<BotEntry>> = self
            .bots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for b in bots {
            let st = b.lock();
            out.bots.insert(
                b.token.clone(),
                BotStats {
                    registered: true,
                    revoked: b.is_revoked(),
                    calls: st.counters.export(),
                    conflicts: st.counters.conflicts,
                    rate_limited: st.counters.rate_limited,
                    fault_errors: st.counters.fault_errors,
                    pending_updates: st.updates.len(),
                    long_polls: st.long_polls,
                },
            );
        }
        for (token, c) in lock(&self.unknown).iter() {
            out.bots.insert(
                token.clone(),
                BotStats {
                    calls: c.export(),
                    conflicts: c.conflicts,
                    fault_errors: c.fault_errors,
                    ..BotStats::default()
                },
            );
        }
        out
    }

    pub(crate) fn set_blocked(
        &self,
        token: &str,
        user_id: i64,
        blocked: bool,
    ) -> Result<(), SandboxError> {
        let bot = self.bot_or_err(token)?;
        let mut st = bot.lock();
        if blocked {
            st.blocked.insert(user_id);
        } else {
            st.blocked.remove(&user_id);
        }
        Ok(())
    }

    pub(crate) fn inject_message(&self, mut m: InjectMessage) -> Result<i64, SandboxError> {
        let invalid = |msg: String| Err(SandboxError::InvalidInput(msg));
        match &m.media {
            None if m.text.trim().is_empty() => {
                return invalid("text must not be empty".to_owned());
            }
            Some(media) if !media.kind.has_caption() && !m.text.is_empty() => {
                return invalid(format!(
                    "a {} has no caption; leave text out",
                    media.kind.as_str()
                ));
            }
            _ => {}
        }
        let bot = self.bot_or_err(&m.token)?;
        let mut st = bot.lock();
        // A known chat keeps its kind when none is given.
        m.chat_type = m
            .chat_type
            .or_else(|| st.chats.get(&m.chat_id).map(|c| c.kind));
        let (user, chat_id) = st.user_and_chat(
            m.chat_id,
            m.chat_type,
            m.user_id,
            m.first_name.as_deref(),
            m.language_code.as_deref(),
        )?;
        let content = match &m.media {
            None => {
                let mut c = Map::new();
                c.insert("text".to_owned(), json!(m.text));
                if let Some(e) = markup::command_entity(&m.text) {
                    c.insert("entities".to_owned(), json!([e]));
                }
                c
            }
            Some(media) => st.media_content(media, &m.text)?,
        };
        let date = now();
        let chat = st
            .chats
            .get_mut(&chat_id)
            .expect("created by user_and_chat");
        if m.is_forum {
            if chat.kind != ChatType::Supergroup {
                return invalid(
                    "only a supergroup can be a forum (chat_type: supergroup)".to_owned(),
                );
            }
            chat.is_forum = true;
            chat.json["is_forum"] = json!(true);
        }
        let thread = match m.message_thread_id {
            None => None,
            Some(t) => {
                if !chat.is_forum {
                    return invalid(format!(
                        "chat {chat_id} is not a forum; inject with \"is_forum\": true first"
                    ));
                }
                match chat.topics.get(&t).filter(|x| !x.deleted) {
                    None => return invalid(format!("no topic {t} in chat {chat_id}")),
                    Some(x) if x.closed => {
                        return invalid(format!("topic {t} is closed; users cannot write in it"));
                    }
                    Some(_) => Some(t),
                }
            }
        };
        let reply_to = match m.reply_to_message_id {
            Some(id) => Some(
                chat.messages
                    .get(&id)
                    .filter(|x| !x.deleted)
                    .map(|x| without_reply(&x.json))
                    .ok_or_else(|| {
                        SandboxError::InvalidInput(format!("no message {id} in chat {chat_id}"))
                    })?,
            ),
            None => None,
        };
        let message_id = chat.next_id();
        let mut msg = json!({
            "message_id": message_id,
            "from": user,
            "chat": chat.json,
            "date": date,
        });
        let obj = msg.as_object_mut().expect("object literal");
        obj.extend(content);
        chat.place(obj, thread, reply_to);
        chat.store(
            message_id,
            StoredMsg {
                json: msg.clone(),
                from_bot: false,
                deleted: false,
                edited: false,
                markup: None,
            },
        );
        let id = st.push_update("message", msg);
        drop(st);
        bot.updates.notify_waiters();
        Ok(id)
    }

    /// Queues `raw` verbatim as one element of the bot's updates; returns its confirming id.
    pub(crate) fn inject_raw(&self, token: &str, raw: Bytes) -> Result<i64, SandboxError> {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Err(SandboxError::InvalidInput(
                "the raw update must not be empty (it becomes one element of the result array)"
                    .to_owned(),
            ));
        }
        let bot = self.bot_or_err(token)?;
        let mut st = bot.lock();
        let id = match raw_update_id(&raw) {
            Some(id) => {
                // Later updates must stay above it, or confirming it would drop them.
                st.next_update_id = st.next_update_id.max(id.saturating_add(1));
                id
            }
            None => {
                let id = st.next_update_id;
                st.next_update_id += 1;
                id
            }
        };
        st.updates.push_back(PendingUpdate {
            id,
            kind: None,
            body: UpdateBody::Raw(raw),
        });
        drop(st);
        bot.updates.notify_waiters();
        Ok(id)
    }

    /// Restarts the bot's update ids at `next_id`, as Telegram does after a week without updates.
    ///
    /// Refused while updates are pending unless `drop_pending`; returns how many were dropped.
    pub(crate) fn reset_update_ids(
        &self,
        token: &str,
        next_id: i64,
        drop_pending: bool,
    ) -> Result<usize, SandboxError> {
        if next_id < 1 {
            return Err(SandboxError::InvalidInput(
                "next_id must be at least 1".to_owned(),
            ));
        }
        let bot = self.bot_or_err(token)?;
        let mut st = bot.lock();
        let pending = st.updates.len();
        if pending > 0 && !drop_pending {
            return Err(SandboxError::InvalidInput(format!(
                "{pending} updates are still pending; let the bot confirm them first, or pass \"drop_pending\": true"
            )));
        }
        st.updates.clear();
        st.next_update_id = next_id;
        Ok(pending)
    }

    /// The forum supergroup `chat_id` of `token`'s bot, for an admin's topic action.
    fn forum_of(st: &mut BotState, chat_id: i64) -> Result<&mut ChatRec, SandboxError> {
        let chat = st.chats.get_mut(&chat_id).ok_or_else(|| {
            SandboxError::InvalidInput(format!("no chat {chat_id}; inject a message into it first"))
        })?;
        if !chat.is_forum {
            return Err(SandboxError::InvalidInput(format!(
                "chat {chat_id} is not a forum; inject with \"is_forum\": true first"
            )));
        }
        Ok(chat)
    }

    /// An admin (user id 1, "Sandbox Admin") creates a topic; returns its thread id.
    pub(crate) fn admin_create_topic(
        &self,
        token: &str,
        chat_id: i64,
        name: &str,
    ) -> Result<i32, SandboxError> {
        if name.trim().is_empty() || utf16_len(name) > 128 {
            return Err(SandboxError::InvalidInput(
                "name must be 1-128 characters".to_owned(),
            ));
        }
        let bot = self.bot_or_err(token)?;
        let mut st = bot.lock();
        let chat = Self::forum_of(&mut st, chat_id)?;
        let admin = json!({"id": 1, "is_bot": false, "first_name": "Sandbox Admin"});
        Ok(chat.create_topic(admin, name.to_owned(), TOPIC_COLORS[0], None))
    }

    /// An admin deletes a topic with its messages; sends into it fail from now on.
    pub(crate) fn admin_delete_topic(
        &self,
        token: &str,
        chat_id: i64,
        thread_id: i32,
    ) -> Result<(), SandboxError> {
        let bot = self.bot_or_err(token)?;
        let mut st = bot.lock();
        let chat = Self::forum_of(&mut st, chat_id)?;
        if !chat.delete_topic(thread_id) {
            return Err(SandboxError::InvalidInput(format!(
                "no topic {thread_id} in chat {chat_id}"
            )));
        }
        Ok(())
    }

    pub(crate) fn inject_callback(&self, c: InjectCallback) -> Result<i64, SandboxError> {
        if c.callback_data.is_empty() || c.callback_data.len() > 64 {
            return Err(SandboxError::InvalidInput(
                "callback_data must be 1-64 bytes".to_owned(),
            ));
        }
        let bot = self.bot_or_err(&c.token)?;
        let mut st = bot.lock();
        let chat_type = st.chats.get(&c.chat_id).map(|ch| ch.kind);
        let (user, chat_id) = st.user_and_chat(
            c.chat_id,
            chat_type,
            c.user_id,
            c.first_name.as_deref(),
            c.language_code.as_deref(),
        )?;
        let chat = st.chats.get(&chat_id).expect("created by user_and_chat");
        let stored = match c.message_id {
            Some(id) => Some(chat.messages.get(&id).ok_or_else(|| {
                SandboxError::InvalidInput(format!("no message {id} in chat {chat_id}"))
            })?),
            None => chat
                .messages
                .values()
                .rev()
                .find(|m| m.from_bot && !m.deleted),
        };
        let message = stored.map(|m| {
            if m.deleted {
                json!({"chat": chat.json, "message_id": m.json["message_id"], "date": 0})
            } else {
                m.json.clone()
            }
        });
        let id = format!("{}{:08}", bot.id, st.next_callback);
        st.next_callback += 1;
        st.callbacks.insert(
            id.clone(),
            CallbackRec {
                chat_id,
                answered: false,
            },
        );
        let mut query = json!({
            "id": id,
            "from": user,
            "chat_instance": format!("{chat_id}"),
            "data": c.callback_data,
        });
        if let Some(m) = message {
            query["message"] = m;
        }
        let update_id = st.push_update("callback_query", query);
        drop(st);
        bot.updates.notify_waiters();
        Ok(update_id)
    }

    pub(crate) fn sent(
        &self,
        token: &str,
        chat_id: i64,
        after: u64,
    ) -> Result<Vec<SentEvent>, SandboxError> {
        let bot = self.bot_or_err(token)?;
        let st = bot.lock();
        Ok(st.events_after(chat_id, after))
    }

    pub(crate) async fn wait_sent(
        &self,
        token: &str,
        chat_id: i64,
        after: u64,
        timeout: Duration,
    ) -> Result<Vec<SentEvent>, SandboxError> {
        let bot = self.bot_or_err(token)?;
        let deadline = Instant::now() + timeout;
        loop {
            let notified = bot.sent.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let events = bot.lock().events_after(chat_id, after);
            if !events.is_empty() {
                return Ok(events);
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
                () = self.stop.cancelled() => return Ok(Vec::new()),
            }
        }
    }

    /// Runs one synchronous Bot API method (everything but getUpdates).
    pub(crate) fn call(
        self: &Arc<Self>,
        bot: &Arc<BotEntry>,
        method: Method,
        p: &Params,
    ) -> Result<Value, ApiErr> {
        let mut st = bot.lock();
        let result = match method {
            Method::GetMe => Ok(json!({
                "id": bot.id,
                "is_bot": true,
                "first_name": st.first_name,
                "username": st.username,
                "can_join_groups": true,
                "can_read_all_group_messages": false,
                "supports_inline_queries": false,
                "can_connect_to_business": false,
                "has_main_web_app": false,
            })),
            Method::GetUpdates => unreachable!("getUpdates is asynchronous"),
            Method::SetWebhook => self.set_webhook(bot, &mut st, p),
            Method::DeleteWebhook => {
                if let Some(w) = st.webhook.take() {
                    w.cancel.cancel();
                }
                if p.bool("drop_pending_updates") {
                    st.updates.clear();
                }
                Ok(Value::Bool(true))
            }
            Method::GetWebhookInfo => Ok(st.webhook_info()),
            Method::SendMessage => st.send_message(bot.id, p, self.config.enforce_rate_limits),
            Method::EditMessageText => st.edit(bot.id, p, true),
            Method::EditMessageReplyMarkup => st.edit(bot.id, p, false),
            Method::DeleteMessage => st.delete_message(p),
            Method::AnswerCallbackQuery => st.answer_callback(p),
            Method::ForwardMessage => {
                st.forward_or_copy(bot.id, p, method, self.config.enforce_rate_limits)
            }
            Method::CopyMessage => {
                st.forward_or_copy(bot.id, p, method, self.config.enforce_rate_limits)
            }
            Method::SendChatAction => st.chat_action(p),
            Method::SetMyCommands => st.set_commands(p),
            Method::GetMyCommands => Ok(st
                .commands
                .get(&commands_key(p)?)
                .cloned()
                .unwrap_or_else(|| json!([]))),
            Method::DeleteMyCommands => {
                let key = commands_key(p)?;
                st.commands.remove(&key);
                Ok(Value::Bool(true))
            }
            Method::SendPhoto => st.send_media(bot.id, p, "photo", self.config.enforce_rate_limits),
            Method::SendDocument => {
                st.send_media(bot.id, p, "document", self.config.enforce_rate_limits)
            }
            Method::SendVoice => st.send_media(bot.id, p, "voice", self.config.enforce_rate_limits),
            Method::SendVideo => st.send_media(bot.id, p, "video", self.config.enforce_rate_limits),
            Method::SendAudio => st.send_media(bot.id, p, "audio", self.config.enforce_rate_limits),
            Method::SendSticker => {
                st.send_media(bot.id, p, "sticker", self.config.enforce_rate_limits)
            }
            Method::SendAnimation => {
                st.send_media(bot.id, p, "animation", self.config.enforce_rate_limits)
            }
            Method::SendVideoNote => {
                st.send_media(bot.id, p, "video_note", self.config.enforce_rate_limits)
            }
            Method::SendLocation => st.send_location(bot.id, p, self.config.enforce_rate_limits),
            Method::CreateForumTopic
            | Method::EditForumTopic
            | Method::CloseForumTopic
            | Method::ReopenForumTopic
            | Method::DeleteForumTopic => st.forum_topic(bot.id, p, method),
        };
        let touched_chat = !matches!(
            method,
            Method::GetMe
                | Method::GetUpdates
                | Method::SetWebhook
                | Method::DeleteWebhook
                | Method::GetWebhookInfo
                | Method::SetMyCommands
                | Method::GetMyCommands
                | Method::DeleteMyCommands
        );
        drop(st);
        if touched_chat && result.is_ok() {
            bot.sent.notify_waiters();
        }
        result
    }

    fn set_webhook(
        self: &Arc<Self>,
        bot: &Arc<BotEntry>,
        st: &mut BotState,
        p: &Params,
    ) -> Result<Value, ApiErr> {
        let url = p.str("url").unwrap_or_default();
        if p.bool("drop_pending_updates") {
            st.updates.clear();
        }
        if url.is_empty() {
            if let Some(w) = st.webhook.take() {
                w.cancel.cancel();
            }
            return Ok(Value::Bool(true));
        }
        let parsed = url::Url::parse(&url)
            .map_err(|_| ApiErr::bad("Bad Request: bad webhook: invalid webhook URL specified"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(ApiErr::bad(
                "Bad Request: bad webhook: an HTTP URL must be provided for webhook",
            ));
        }
        let secret = p.str("secret_token").filter(|s| !s.is_empty());
        if let Some(s) = &secret
            && (s.len() > 256
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        {
            return Err(ApiErr::bad(
                "Bad Request: secret token contains unallowed characters",
            ));
        }
        let max_connections = p.i64("max_connections")?.unwrap_or(40).clamp(1, 100) as u32;
        if let Some(list) = p.json("allowed_updates")? {
            st.allowed_updates = Some(parse_allowed(&list)?);
        }
        if let Some(w) = st.webhook.take() {
            w.cancel.cancel();
        }
        if let Some((_, poll)) = st.active_poll.take() {
            // A waiting getUpdates learns that a webhook is now set.
            poll.cancel();
        }
        st.next_webhook += 1;
        let generation = st.next_webhook;
        let cancel = self.stop.child_token();
        st.webhook = Some(WebhookRec {
            url: parsed.to_string(),
            secret,
            max_connections,
            last_error_date: None,
            last_error_message: None,
            generation,
            cancel: cancel.clone(),
        });
        self.tasks.spawn(
            format!("sandbox-webhook-{}", bot.id),
            super::webhook::deliver(Arc::clone(self), Arc::clone(bot), generation, cancel),
        );
        Ok(Value::Bool(true))
    }

    /// getUpdates: confirms below `offset`, then answers at once or long-polls up to `timeout`.
    ///
    /// A newer getUpdates for the same bot terminates this one with 409, as Telegram does;
    /// `PollGuard` releases the in-flight marker when the request is dropped (client gone).
    pub(crate) async fn get_updates(
        &self,
        bot: &Arc<BotEntry>,
        p: &Params,
    ) -> Result<Vec<UpdateBody>, ApiErr> {
        let offset = p.i64("offset")?;
        let limit = p.i64("limit")?.unwrap_or(100).clamp(1, 100) as usize;
        let timeout = p
            .i64("timeout")?
            .unwrap_or(0)
            .clamp(0, MAX_POLL_TIMEOUT as i64) as u64;
        let allowed = match p.json("allowed_updates")? {
            Some(list) => Some(parse_allowed(&list)?),
            None => None,
        };
        let cancel = CancellationToken::new();
        let poll_id;
        {
            let mut st = bot.lock();
            if st.webhook.is_some() {
                st.counters.conflicts += 1;
                return Err(ApiErr::webhook_active());
            }
            if let Some(list) = allowed {
                st.allowed_updates = Some(list);
            }
            st.confirm(offset);
            st.next_poll += 1;
            poll_id = st.next_poll;
            if let Some((_, older)) = st.active_poll.replace((poll_id, cancel.clone())) {
                older.cancel();
            }
        }
        let mut guard = PollGuard {
            shared: self,
            bot,
            poll_id,
            counted: false,
        };
        let deadline = Instant::now() + Duration::from_secs(timeout);
        loop {
            let notified = bot.updates.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cancel.is_cancelled() {
                let webhook = bot.lock().webhook.is_some();
                if !webhook && !bot.is_revoked() {
                    // Give a client that already hung up (teloxide drops its in-flight poll
                    // when it stops) the moment to be noticed: then this future is dropped
                    // and no 409 is counted for an answer nobody reads.
                    tokio::time::sleep(CONFLICT_GRACE).await;
                }
                if bot.is_revoked() {
                    return Err(ApiErr::unauthorized());
                }
                bot.lock().counters.conflicts += 1;
                return Err(if webhook {
                    ApiErr::webhook_active()
                } else {
                    ApiErr::terminated()
                });
            }
            {
                let mut st = bot.lock();
                let batch = st.take_updates(limit);
                if !batch.is_empty() || timeout == 0 || Instant::now() >= deadline {
                    return Ok(batch);
                }
                if !guard.counted {
                    guard.counted = true;
                    st.long_polls += 1;
                    self.long_polls.fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::select! {
                () = &mut notified => {}
                () = cancel.cancelled() => {}
                () = tokio::time::sleep_until(deadline) => {}
                () = self.stop.cancelled() => return Ok(Vec::new()),
            }
        }
    }
}

/// How long a getUpdates terminated by a newer one waits before answering 409.
const CONFLICT_GRACE: Duration = Duration::from_millis(50);

/// Releases a getUpdates' in-flight marker and long-poll count however the request ends.
struct PollGuard<'a> {
    shared: &'a Shared,
    bot: &'a BotEntry,
    poll_id: u64,
    counted: bool,
}

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.bot.lock();
        if st
            .active_poll
            .as_ref()
            .is_some_and(|(id, _)| *id == self.poll_id)
        {
            st.active_poll = None;
        }
        if self.counted {
            st.long_polls -= 1;
            self.shared.long_polls.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn parse_allowed(list: &Value) -> Result<Vec<String>, ApiErr> {
    let arr = list
        .as_array()
        .ok_or_else(|| ApiErr::bad("Bad Request: can't parse allowed_updates JSON array"))?;
    arr.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| ApiErr::bad("Bad Request: can't parse allowed_updates JSON array"))
        })
        .collect()
}

fn commands_key(p: &Params) -> Result<String, ApiErr> {
    let scope = p
        .json("scope")?
        .and_then(|s| s.get("type").and_then(Value::as_str).map(str::to_owned))
        .filter(|t| t != "default");
    let scope_full = match (scope, p.json("scope")?) {
        (Some(_), Some(s)) => s.to_string(),
        _ => String::new(),
    };
    Ok(format!(
        "{scope_full}|{}",
        p.str("language_code").unwrap_or_default()
    ))
}

/// Where a new bot message goes: the message it replies to and its forum topic.
struct Placement {
    reply_to: Option<Value>,
    thread: Option<i32>,
}

/// A copy of a message as it appears inside another one's `reply_to_message`.
fn without_reply(msg: &Value) -> Value {
    let mut j = msg.clone();
    if let Some(o) = j.as_object_mut() {
        o.remove("reply_to_message");
    }
    j
}

impl ChatRec {
    /// Puts a new message into its topic and reply: in a topic, a message that replies to
    /// nothing replies to the topic's `forum_topic_created` message, as in Telegram.
    fn place(&self, obj: &mut Map<String, Value>, thread: Option<i32>, reply_to: Option<Value>) {
        let reply_to = match thread {
            Some(t) => {
                obj.insert("message_thread_id".to_owned(), json!(t));
                obj.insert("is_topic_message".to_owned(), json!(true));
                reply_to.or_else(|| self.topics.get(&t).map(|x| x.created.clone()))
            }
            None => reply_to,
        };
        if let Some(r) = reply_to {
            obj.insert("reply_to_message".to_owned(), r);
        }
    }

    /// The topic a send goes to: `message_thread_id` must name a live topic of a forum;
    /// other chats ignore it.
    fn send_thread(&self, p: &Params) -> Result<Option<i32>, ApiErr> {
        let Some(t) = p.i64("message_thread_id")?.filter(|t| *t != 0) else {
            return Ok(None);
        };
        if !self.is_forum {
            return Ok(None);
        }
        let t = i32::try_from(t).map_err(|_| ApiErr::thread_not_found())?;
        match self.topics.get(&t) {
            Some(x) if !x.deleted => Ok(Some(t)),
            _ => Err(ApiErr::thread_not_found()),
        }
    }

    /// Creates a topic: its `forum_topic_created` service message's id is its thread id.
    fn create_topic(
        &mut self,
        from: Value,
        name: String,
        icon_color: i64,
        icon_custom_emoji_id: Option<String>,
    ) -> i32 {
        let id = self.next_id();
        let mut created_info = json!({"name": name, "icon_color": icon_color});
        if let Some(e) = &icon_custom_emoji_id {
            created_info["icon_custom_emoji_id"] = json!(e);
        }
        let created = json!({
            "message_id": id,
            "from": from,
            "chat": self.json,
            "date": now(),
            "message_thread_id": id,
            "is_topic_message": true,
            "forum_topic_created": created_info,
        });
        self.store(
            id,
            StoredMsg {
                json: created.clone(),
                from_bot: false,
                deleted: false,
                edited: false,
                markup: None,
            },
        );
        self.topics.insert(
            id,
            TopicRec {
                name,
                icon_custom_emoji_id,
                closed: false,
                deleted: false,
                created,
            },
        );
        id
    }

    /// Deletes a topic and every message in it.
    fn delete_topic(&mut self, thread: i32) -> bool {
        let Some(topic) = self.topics.get_mut(&thread).filter(|x| !x.deleted) else {
            return false;
        };
        topic.deleted = true;
        for m in self.messages.values_mut() {
            if m.json.get("message_thread_id").and_then(Value::as_i64) == Some(i64::from(thread)) {
                m.deleted = true;
            }
        }
        true
    }

    fn next_id(&mut self) -> i32 {
        let id = self.next_message_id;
        self.next_message_id += 1;
        id
    }

    fn store(&mut self, id: i32, msg: StoredMsg) {
        self.messages.insert(id, msg);
        while self.messages.len() > MAX_PER_CHAT {
            self.messages.pop_first();
        }
    }
}

impl BotState {
    fn push_update(&mut self, kind: &'static str, body: Value) -> i64 {
        let id = self.next_update_id;
        self.next_update_id += 1;
        let mut json = json!({"update_id": id});
        json[kind] = body;
        self.updates.push_back(PendingUpdate {
            id,
            kind: Some(kind),
            body: UpdateBody::Json(json),
        });
        id
    }

    fn is_allowed(&self, kind: &str) -> bool {
        match &self.allowed_updates {
            Some(list) if !list.is_empty() => list.iter().any(|k| k == kind),
            _ => !matches!(
                kind,
                "chat_member" | "message_reaction" | "message_reaction_count"
            ),
        }
    }

    /// Forgets every update below `offset`; a negative offset keeps only the last `-offset`.
    ///
    /// Raw updates may carry any id, so the whole queue is checked, not only its front.
    fn confirm(&mut self, offset: Option<i64>) {
        match offset {
            Some(o) if o > 0 => {
                self.updates.retain(|u| u.id >= o);
            }
            Some(o) if o < 0 => {
                let keep = o.unsigned_abs() as usize;
                while self.updates.len() > keep {
                    self.updates.pop_front();
                }
            }
            _ => {}
        }
    }

    fn take_updates(&mut self, limit: usize) -> Vec<UpdateBody> {
        // Updates of kinds the bot does not want are never delivered: drop them.
        if self.allowed_updates.is_some() {
            let allowed: Vec<bool> = self
                .updates
                .iter()
                .map(|u| u.kind.is_none_or(|k| self.is_allowed(k)))
                .collect();
            let mut it = allowed.into_iter();
            self.updates.retain(|_| it.next().unwrap_or(true));
        }
        self.updates
            .iter()
            .take(limit)
            .map(|u| u.body.clone())
            .collect()
    }

    fn webhook_info(&self) -> Value {
        let mut info = json!({
            "url": "",
            "has_custom_certificate": false,
            "pending_update_count": self.updates.len(),
        });
        if let Some(w) = &self.webhook {
            info["url"] = json!(w.url);
            info["max_connections"] = json!(w.max_connections);
            if let Some(d) = w.last_error_date {
                info["last_error_date"] = json!(d);
            }
            if let Some(m) = &w.last_error_message {
                info["last_error_message"] = json!(m);
            }
        }
        if let Some(a) = &self.allowed_updates {
            info["allowed_updates"] = json!(a);
        }
        info
    }

    /// Finds or creates the chat and user of an injected update.
    fn user_and_chat(
        &mut self,
        chat_id: i64,
        chat_type: Option<ChatType>,
        user_id: Option<i64>,
        first_name: Option<&str>,
        language_code: Option<&str>,
    ) -> Result<(Value, i64), SandboxError> {
        let kind = chat_type.unwrap_or(if chat_id > 0 {
            ChatType::Private
        } else {
            ChatType::Group
        });
        if chat_id == 0 {
            return Err(SandboxError::InvalidInput(
                "chat_id must not be 0".to_owned(),
            ));
        }
        let user_id = match (kind, user_id) {
            (ChatType::Private, Some(u)) if u != chat_id => {
                return Err(SandboxError::InvalidInput(format!(
                    "in a private chat user_id must equal chat_id ({chat_id})"
                )));
            }
            (ChatType::Private, _) if chat_id < 0 => {
                return Err(SandboxError::InvalidInput(
                    "a private chat's id is the user's id and must be positive".to_owned(),
                ));
            }
            (ChatType::Private, _) => chat_id,
            (_, _) if chat_id > 0 => {
                return Err(SandboxError::InvalidInput(
                    "group, supergroup and channel ids must be negative".to_owned(),
                ));
            }
            (_, Some(u)) if u > 0 => u,
            (_, _) => {
                return Err(SandboxError::InvalidInput(
                    "user_id (positive) is required for group chats".to_owned(),
                ));
            }
        };
        let first_name = first_name.map_or_else(|| format!("User {user_id}"), str::to_owned);
        let mut user = json!({"id": user_id, "is_bot": false, "first_name": first_name});
        if let Some(l) = language_code {
            user["language_code"] = json!(l);
        }
        let chat_json = match kind {
            ChatType::Private => {
                json!({"id": chat_id, "type": "private", "first_name": first_name})
            }
            other => {
                json!({"id": chat_id, "type": other.as_str(), "title": format!("Sandbox {} {chat_id}", other.as_str())})
            }
        };
        match self.chats.get_mut(&chat_id) {
            Some(chat) if chat.kind != kind => {
                return Err(SandboxError::InvalidInput(format!(
                    "chat {chat_id} is a {} chat, not {}",
                    chat.kind.as_str(),
                    kind.as_str()
                )));
            }
            Some(chat) => {
                if kind == ChatType::Private {
                    chat.json = chat_json;
                }
            }
            None => {
                self.chats.insert(
                    chat_id,
                    ChatRec {
                        json: chat_json,
                        kind,
                        is_forum: false,
                        topics: BTreeMap::new(),
                        next_message_id: 1,
                        messages: BTreeMap::new(),
                        events: VecDeque::new(),
                        sends: VecDeque::new(),
                        tat: None,
                    },
                );
            }
        }
        Ok((user, chat_id))
    }

    fn bot_user(&self, bot_id: i64) -> Value {
        json!({"id": bot_id, "is_bot": true, "first_name": self.first_name, "username": self.username})
    }

    /// The chat a bot writes to: it must exist and must not have blocked the bot.
    fn writable_chat(&self, chat_id: i64) -> Result<(), ApiErr> {
        let chat = self
            .chats
            .get(&chat_id)
            .ok_or_else(ApiErr::chat_not_found)?;
        if chat.kind == ChatType::Private && self.blocked.contains(&chat_id) {
            return Err(ApiErr::new(403, "Forbidden: bot was blocked by the user"));
        }
        Ok(())
    }

    /// Telegram's send limits: 1/s per private chat with bursts of up to
    /// [`PRIVATE_BURST`] (a GCRA bucket), 20 in any minute per group, 30 in any second per bot.
    fn check_rate(&mut self, chat_id: i64) -> Result<(), ApiErr> {
        let now = Instant::now();
        let chat = self
            .chats
            .get_mut(&chat_id)
            .ok_or_else(ApiErr::chat_not_found)?;
        let private = chat.kind == ChatType::Private;
        let wait = |log: &mut VecDeque<Instant>, limit: usize, window: Duration| {
            while log
                .front()
                .is_some_and(|t| now.duration_since(*t) >= window)
            {
                log.pop_front();
            }
            (log.len() >= limit).then(|| {
                let until = log[0] + window - now;
                until.as_secs_f64().ceil().max(1.0) as u32
            })
        };
        // A private chat: each send moves its theoretical arrival time one period on; a send
        // is early when that time is more than a burst's worth of periods ahead of now.
        let tat = chat.tat.unwrap_or(now).max(now);
        let tolerance = PRIVATE_PERIOD * (PRIVATE_BURST - 1);
        if private && tat > now + tolerance {
            let until = tat - tolerance - now;
            self.counters.rate_limited += 1;
            return Err(ApiErr::retry_after(
                until.as_secs_f64().ceil().max(1.0) as u32
            ));
        }
        if !private && let Some(secs) = wait(&mut chat.sends, 20, Duration::from_secs(60)) {
            self.counters.rate_limited += 1;
            return Err(ApiErr::retry_after(secs));
        }
        if let Some(secs) = wait(&mut self.sends, 30, Duration::from_secs(1)) {
            self.counters.rate_limited += 1;
            return Err(ApiErr::retry_after(secs));
        }
        let chat = self.chats.get_mut(&chat_id).expect("checked above");
        if private {
            chat.tat = Some(tat + PRIVATE_PERIOD);
        } else {
            chat.sends.push_back(now);
        }
        self.sends.push_back(now);
        Ok(())
    }

    fn record(&mut self, chat_id: i64, method: Method, rec: EventRec) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(chat) = self.chats.get_mut(&chat_id) {
            chat.events.push_back(Event {
                seq,
                date: now(),
                method,
                rec,
            });
            while chat.events.len() > MAX_PER_CHAT {
                chat.events.pop_front();
            }
        }
    }

    fn events_after(&self, chat_id: i64, after: u64) -> Vec<SentEvent> {
        let Some(chat) = self.chats.get(&chat_id) else {
            return Vec::new();
        };
        let start = chat.events.partition_point(|e| e.seq <= after);
        chat.events
            .range(start..)
            .map(|e| SentEvent {
                seq: e.seq,
                date: e.date,
                method: e.method.name().to_owned(),
                kind: match &e.rec {
                    EventRec::Message(id) => {
                        let m = chat.messages.get(id);
                        let json = m.map(|m| m.json.clone()).unwrap_or(Value::Null);
                        SentKind::Message {
                            message_id: *id,
                            kind: message_kind(&json).to_owned(),
                            message_thread_id: json["message_thread_id"]
                                .as_i64()
                                .and_then(|t| i32::try_from(t).ok()),
                            text: json["text"].as_str().map(str::to_owned),
                            caption: json["caption"].as_str().map(str::to_owned),
                            reply_markup: m.and_then(|m| m.markup.clone()),
                            edited: m.is_some_and(|m| m.edited),
                            deleted: m.is_none_or(|m| m.deleted),
                            message: json,
                        }
                    }
                    EventRec::Edit {
                        message_id,
                        text,
                        reply_markup,
                    } => SentKind::Edit {
                        message_id: *message_id,
                        text: text.clone(),
                        reply_markup: reply_markup.clone(),
                    },
                    EventRec::Delete(id) => SentKind::Delete { message_id: *id },
                    EventRec::CallbackAnswer {
                        id,
                        text,
                        show_alert,
                        url,
                    } => SentKind::CallbackAnswer {
                        callback_query_id: id.clone(),
                        text: text.clone(),
                        show_alert: *show_alert,
                        url: url.clone(),
                    },
                    EventRec::ChatAction(a) => SentKind::ChatAction { action: a.clone() },
                    EventRec::Topic {
                        thread,
                        action,
                        name,
                    } => SentKind::Topic {
                        message_thread_id: *thread,
                        action: (*action).to_owned(),
                        name: name.clone(),
                    },
                },
            })
            .collect()
    }

    /// Text and entities of a text or caption parameter after `parse_mode` / `entities`.
    fn formatted(
        p: &Params,
        text_key: &str,
        entities_key: &str,
    ) -> Result<Option<(String, Option<Value>)>, ApiErr> {
        let Some(raw) = p.str(text_key) else {
            return Ok(None);
        };
        if let Some(entities) = p.json(entities_key)? {
            markup::check_entities(&entities, utf16_len(&raw)).map_err(ApiErr::bad)?;
            let entities = entities
                .as_array()
                .filter(|a| !a.is_empty())
                .map(|_| entities.clone());
            return Ok(Some((raw, entities)));
        }
        match p.str("parse_mode").filter(|m| !m.is_empty()) {
            None => Ok(Some((raw, None))),
            Some(mode) => {
                let mode = ParseMode::from_param(&mode)
                    .ok_or_else(|| ApiErr::bad("Bad Request: unsupported parse_mode"))?;
                let (text, entities) = mode
                    .parse(&raw)
                    .map_err(|e| ApiErr::bad(format!("Bad Request: can't parse entities: {e}")))?;
                Ok(Some((
                    text,
                    (!entities.is_empty()).then_some(Value::Array(entities)),
                )))
            }
        }
    }

    fn reply_markup(p: &Params) -> Result<Option<Value>, ApiErr> {
        let markup = p.json("reply_markup")?;
        if let Some(m) = &markup {
            markup::check_reply_markup(m).map_err(ApiErr::bad)?;
        }
        Ok(markup)
    }

    /// The message being replied to, from `reply_parameters` or `reply_to_message_id`.
    fn reply_target(&self, chat_id: i64, p: &Params) -> Result<Option<Value>, ApiErr> {
        let (message_id, reply_chat, allow_missing) = match p.json("reply_parameters")? {
            Some(rp) => {
                let id = rp
                    .get("message_id")
                    .and_then(Value::as_i64)
                    .ok_or_else(|| {
                        ApiErr::bad("Bad Request: message identifier is not specified")
                    })?;
                let chat = rp.get("chat_id").and_then(Value::as_i64).unwrap_or(chat_id);
                let allow = rp
                    .get("allow_sending_without_reply")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                (id, chat, allow)
            }
            None => match p.i64("reply_to_message_id")? {
                Some(id) => (id, chat_id, p.bool("allow_sending_without_reply")),
                None => return Ok(None),
            },
        };
        let found = self
            .chats
            .get(&reply_chat)
            .and_then(|c| c.messages.get(&(message_id as i32)))
            .filter(|m| !m.deleted)
            .map(|m| {
                let mut j = m.json.clone();
                if let Some(o) = j.as_object_mut() {
                    o.remove("reply_to_message");
                }
                j
            });
        match found {
            Some(m) => Ok(Some(m)),
            None if allow_missing => Ok(None),
            None => Err(ApiErr::bad("Bad Request: message to be replied not found")),
        }
    }

    /// Stores a new bot message built from `content` and records it as sent.
    fn post(
        &mut self,
        bot_id: i64,
        chat_id: i64,
        method: Method,
        content: Map<String, Value>,
        markup: Option<Value>,
        place: Placement,
    ) -> Value {
        let from = self.bot_user(bot_id);
        let chat = self
            .chats
            .get_mut(&chat_id)
            .expect("checked by writable_chat");
        let message_id = chat.next_id();
        let mut msg = json!({
            "message_id": message_id,
            "from": from,
            "chat": chat.json,
            "date": now(),
        });
        let obj = msg.as_object_mut().expect("object literal");
        obj.extend(content);
        chat.place(obj, place.thread, place.reply_to);
        // Only inline keyboards are part of a Message; reply keyboards live on the client.
        if let Some(m) = markup
            .as_ref()
            .filter(|m| m.get("inline_keyboard").is_some())
        {
            obj.insert("reply_markup".to_owned(), m.clone());
        }
        chat.store(
            message_id,
            StoredMsg {
                json: msg.clone(),
                from_bot: true,
                deleted: false,
                edited: false,
                markup,
            },
        );
        self.record(chat_id, method, EventRec::Message(message_id));
        msg
    }

    fn send_message(&mut self, bot_id: i64, p: &Params, rate: bool) -> Result<Value, ApiErr> {
        let chat_id = p.chat_id("chat_id")?;
        self.writable_chat(chat_id)?;
        let (text, entities) = Self::formatted(p, "text", "entities")?
            .filter(|(t, _)| !t.trim().is_empty())
            .ok_or_else(|| ApiErr::bad("Bad Request: message text is empty"))?;
        if utf16_len(&text) > MAX_TEXT {
            return Err(ApiErr::bad("Bad Request: message is too long"));
        }
        let markup = Self::reply_markup(p)?;
        let reply_to = self.reply_target(chat_id, p)?;
        let thread = self.thread(chat_id, p)?;
        if rate {
            self.check_rate(chat_id)?;
        }
        let mut content = Map::new();
        content.insert("text".to_owned(), Value::String(text));
        if let Some(e) = entities {
            content.insert("entities".to_owned(), e);
        }
        Ok(self.post(
            bot_id,
            chat_id,
            Method::SendMessage,
            content,
            markup,
            Placement { reply_to, thread },
        ))
    }

    fn send_media(
        &mut self,
        bot_id: i64,
        p: &Params,
        kind: &'static str,
        rate: bool,
    ) -> Result<Value, ApiErr> {
        let chat_id = p.chat_id("chat_id")?;
        self.writable_chat(chat_id)?;
        let file = self.resolve_file(p, kind)?;
        // Stickers and video notes have no caption; Telegram ignores one.
        let caption = if matches!(kind, "sticker" | "video_note") {
            None
        } else {
            Self::formatted(p, "caption", "caption_entities")?
        };
        if let Some((c, _)) = &caption
            && utf16_len(c) > MAX_CAPTION
        {
            return Err(ApiErr::bad("Bad Request: message caption is too long"));
        }
        let markup = Self::reply_markup(p)?;
        let reply_to = self.reply_target(chat_id, p)?;
        let thread = self.thread(chat_id, p)?;
        if rate {
            self.check_rate(chat_id)?;
        }
        let mut content = Map::new();
        if kind == "animation" {
            // Telegram sends an animation as a document too, for older clients.
            content.insert("document".to_owned(), file.clone());
        }
        content.insert(kind.to_owned(), file);
        if let Some((c, e)) = caption.filter(|(c, _)| !c.is_empty()) {
            content.insert("caption".to_owned(), Value::String(c));
            if let Some(e) = e {
                content.insert("caption_entities".to_owned(), e);
            }
        }
        let method = match kind {
            "photo" => Method::SendPhoto,
            "voice" => Method::SendVoice,
            "video" => Method::SendVideo,
            "audio" => Method::SendAudio,
            "sticker" => Method::SendSticker,
            "animation" => Method::SendAnimation,
            "video_note" => Method::SendVideoNote,
            _ => Method::SendDocument,
        };
        Ok(self.post(
            bot_id,
            chat_id,
            method,
            content,
            markup,
            Placement { reply_to, thread },
        ))
    }

    /// The forum topic a send into `chat_id` goes to (see [`ChatRec::send_thread`]).
    fn thread(&self, chat_id: i64, p: &Params) -> Result<Option<i32>, ApiErr> {
        self.chats
            .get(&chat_id)
            .ok_or_else(ApiErr::chat_not_found)?
            .send_thread(p)
    }

    fn send_location(&mut self, bot_id: i64, p: &Params, rate: bool) -> Result<Value, ApiErr> {
        let chat_id = p.chat_id("chat_id")?;
        self.writable_chat(chat_id)?;
        let coordinate = |key: &str, max: f64| -> Result<f64, ApiErr> {
            let v = match p.get(key) {
                Some(Value::Number(n)) => n.as_f64(),
                Some(Value::String(s)) => s.trim().parse().ok(),
                _ => None,
            };
            v.filter(|v| v.abs() <= max)
                .ok_or_else(|| ApiErr::bad(format!("Bad Request: wrong {key} specified")))
        };
        let location = json!({
            "latitude": coordinate("latitude", 90.0)?,
            "longitude": coordinate("longitude", 180.0)?,
        });
        let markup = Self::reply_markup(p)?;
        let reply_to = self.reply_target(chat_id, p)?;
        let thread = self.thread(chat_id, p)?;
        if rate {
            self.check_rate(chat_id)?;
        }
        let mut content = Map::new();
        content.insert("location".to_owned(), location);
        Ok(self.post(
            bot_id,
            chat_id,
            Method::SendLocation,
            content,
            markup,
            Placement { reply_to, thread },
        ))
    }

    /// The content fields of an injected media message; `caption` is its text.
    fn media_content(
        &mut self,
        media: &InjectMedia,
        caption: &str,
    ) -> Result<Map<String, Value>, SandboxError> {
        let invalid = |m: &str| SandboxError::InvalidInput(m.to_owned());
        let mut c = Map::new();
        match media.kind {
            MediaKind::Location => {
                let (Some(lat), Some(lon)) = (media.latitude, media.longitude) else {
                    return Err(invalid("a location needs latitude and longitude"));
                };
                if lat.abs() > 90.0 || lon.abs() > 180.0 {
                    return Err(invalid(
                        "latitude must be within ±90 and longitude within ±180",
                    ));
                }
                c.insert(
                    "location".to_owned(),
                    json!({"latitude": lat, "longitude": lon}),
                );
            }
            MediaKind::Contact => {
                let phone = media
                    .phone_number
                    .clone()
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| invalid("a contact needs phone_number"))?;
                let name = media
                    .first_name
                    .clone()
                    .unwrap_or_else(|| "Contact".to_owned());
                c.insert(
                    "contact".to_owned(),
                    json!({"phone_number": phone, "first_name": name}),
                );
            }
            kind => {
                let name = kind.as_str();
                let n = self.next_file;
                self.next_file += 1;
                let file_id = format!("sbx-{name}-{n}");
                let rec = FileRec {
                    kind: name,
                    unique_id: format!("sbxu{n}"),
                    file_name: media.file_name.clone(),
                    mime_type: media.mime_type.clone(),
                    size: media.file_size.unwrap_or(0),
                    duration: media.duration,
                    emoji: media.emoji.clone(),
                };
                let json = file_json(&file_id, &rec);
                self.files.insert(file_id, rec);
                if kind == MediaKind::Animation {
                    c.insert("document".to_owned(), json.clone());
                }
                c.insert(name.to_owned(), json);
            }
        }
        if media.kind.has_caption() && !caption.is_empty() {
            c.insert("caption".to_owned(), json!(caption));
        }
        Ok(c)
    }

    /// createForumTopic, editForumTopic, closeForumTopic, reopenForumTopic, deleteForumTopic.
    fn forum_topic(&mut self, bot_id: i64, p: &Params, method: Method) -> Result<Value, ApiErr> {
        let chat_id = p.chat_id("chat_id")?;
        self.writable_chat(chat_id)?;
        let from = self.bot_user(bot_id);
        let chat = self
            .chats
            .get_mut(&chat_id)
            .expect("checked by writable_chat");
        if !chat.is_forum {
            return Err(ApiErr::bad("Bad Request: the chat is not a forum"));
        }
        let name = p.str("name");
        if let Some(n) = &name
            && utf16_len(n) > 128
        {
            return Err(ApiErr::bad("Bad Request: TOPIC_TITLE_TOO_LONG"));
        }
        let emoji = p.str("icon_custom_emoji_id");
        if method == Method::CreateForumTopic {
            let name = name
                .filter(|n| !n.trim().is_empty())
                .ok_or_else(|| ApiErr::bad("Bad Request: TOPIC_TITLE_EMPTY"))?;
            let color = p.i64("icon_color")?.unwrap_or(TOPIC_COLORS[0]);
            if !TOPIC_COLORS.contains(&color) {
                return Err(ApiErr::bad("Bad Request: TOPIC_ICON_COLOR_INVALID"));
            }
            let emoji = emoji.filter(|e| !e.is_empty());
            let thread = chat.create_topic(from, name.clone(), color, emoji.clone());
            let mut topic = json!({"message_thread_id": thread, "name": name, "icon_color": color});
            if let Some(e) = emoji {
                topic["icon_custom_emoji_id"] = json!(e);
            }
            self.record(
                chat_id,
                method,
                EventRec::Topic {
                    thread,
                    action: "created",
                    name,
                },
            );
            return Ok(topic);
        }
        let thread = p
            .i64("message_thread_id")?
            .and_then(|t| i32::try_from(t).ok())
            .ok_or_else(ApiErr::thread_not_found)?;
        let topic = chat
            .topics
            .get_mut(&thread)
            .filter(|x| !x.deleted)
            .ok_or_else(ApiErr::thread_not_found)?;
        let not_modified = || ApiErr::bad("Bad Request: TOPIC_NOT_MODIFIED");
        let action = match method {
            Method::EditForumTopic => {
                let new_name = name.filter(|n| !n.trim().is_empty());
                if new_name.as_ref().is_none_or(|n| *n == topic.name)
                    && emoji
                        .as_ref()
                        .is_none_or(|e| Some(e) == topic.icon_custom_emoji_id.as_ref())
                {
                    return Err(not_modified());
                }
                if let Some(n) = new_name {
                    topic.name = n;
                }
                if let Some(e) = emoji {
                    topic.icon_custom_emoji_id = Some(e).filter(|e| !e.is_empty());
                }
                "edited"
            }
            Method::CloseForumTopic | Method::ReopenForumTopic => {
                let close = method == Method::CloseForumTopic;
                if topic.closed == close {
                    return Err(not_modified());
                }
                topic.closed = close;
                if close { "closed" } else { "reopened" }
            }
            _ => "deleted",
        };
        let name = topic.name.clone();
        if action == "deleted" {
            chat.delete_topic(thread);
        }
        self.record(
            chat_id,
            method,
            EventRec::Topic {
                thread,
                action,
                name,
            },
        );
        Ok(Value::Bool(true))
    }

    /// The file of a send (`photo`, `voice`, …): an upload, a known file_id or an HTTP URL.
    fn resolve_file(&mut self, p: &Params, kind: &'static str) -> Result<Value, ApiErr> {
        let upload = match p.str(kind) {
            Some(v) if v.starts_with("attach://") => {
                let name = &v["attach://".len()..];
                Some(p.uploads.get(name).cloned().ok_or_else(|| {
                    ApiErr::bad(format!("Bad Request: there is no {kind} in the request"))
                })?)
            }
            Some(_) => None,
            None => Some(p.uploads.get(kind).cloned().ok_or_else(|| {
                ApiErr::bad(format!("Bad Request: there is no {kind} in the request"))
            })?),
        };
        let rec = match upload {
            Some(u) => FileRec {
                kind,
                unique_id: String::new(),
                file_name: Some(u.file_name).filter(|n| !n.is_empty()),
                mime_type: u.mime,
                size: u.size,
                ..FileRec::default()
            },
            None => {
                let v = p.str(kind).unwrap_or_default();
                if let Some(known) = self.files.get(&v) {
                    // An animation may be sent as a document, nothing else changes kind.
                    if known.kind != kind && !(known.kind == "animation" && kind == "document") {
                        return Err(ApiErr::bad(format!(
                            "Bad Request: can't use file of type {} as {kind}",
                            known.kind
                        )));
                    }
                    let known = known.clone();
                    return Ok(file_json(&v, &known));
                }
                if v.starts_with("http://") || v.starts_with("https://") {
                    FileRec {
                        kind,
                        unique_id: String::new(),
                        file_name: url::Url::parse(&v).ok().and_then(|u| {
                            u.path_segments()
                                .and_then(|mut s| s.next_back().map(str::to_owned))
                        }),
                        mime_type: None,
                        size: 0,
                        ..FileRec::default()
                    }
                } else if v.is_empty() {
                    return Err(ApiErr::bad(format!(
                        "Bad Request: there is no {kind} in the request"
                    )));
                } else {
                    return Err(ApiErr::bad(
                        "Bad Request: wrong file identifier/HTTP URL specified",
                    ));
                }
            }
        };
        let n = self.next_file;
        self.next_file += 1;
        let file_id = format!("sbx-{kind}-{n}");
        let rec = FileRec {
            unique_id: format!("sbxu{n}"),
            ..rec
        };
        let json = file_json(&file_id, &rec);
        self.files.insert(file_id, rec);
        Ok(json)
    }

    /// Looks up a message the bot may edit.
    fn editable(&mut self, p: &Params) -> Result<(i64, i32), ApiErr> {
        if p.get("inline_message_id").is_some() {
            return Err(ApiErr::bad("Bad Request: MESSAGE_ID_INVALID"));
        }
        let (chat_id, message_id) = target_message(p)?;
        let chat = self
            .chats
            .get(&chat_id)
            .ok_or_else(ApiErr::chat_not_found)?;
        let m = chat
            .messages
            .get(&message_id)
            .filter(|m| !m.deleted)
            .ok_or_else(|| ApiErr::bad("Bad Request: message to edit not found"))?;
        if !m.from_bot {
            return Err(ApiErr::bad("Bad Request: message can't be edited"));
        }
        Ok((chat_id, message_id))
    }

    fn edit(&mut self, _bot_id: i64, p: &Params, text: bool) -> Result<Value, ApiErr> {
        let (chat_id, message_id) = self.editable(p)?;
        let markup = Self::reply_markup(p)?;
        if markup
            .as_ref()
            .is_some_and(|m| m.get("inline_keyboard").is_none())
        {
            return Err(ApiErr::bad("Bad Request: inline keyboard expected"));
        }
        let new_text = if text {
            let (t, e) = Self::formatted(p, "text", "entities")?
                .filter(|(t, _)| !t.trim().is_empty())
                .ok_or_else(|| ApiErr::bad("Bad Request: message text is empty"))?;
            if utf16_len(&t) > MAX_TEXT {
                return Err(ApiErr::bad("Bad Request: MESSAGE_TOO_LONG"));
            }
            Some((t, e))
        } else {
            None
        };
        let chat = self.chats.get_mut(&chat_id).expect("checked by editable");
        let m = chat
            .messages
            .get_mut(&message_id)
            .expect("checked by editable");
        let obj = m.json.as_object_mut().expect("messages are objects");
        if text && obj.get("text").is_none() {
            return Err(ApiErr::bad(
                "Bad Request: there is no text in the message to edit",
            ));
        }
        let same_text = new_text.as_ref().is_none_or(|(t, e)| {
            obj.get("text").and_then(Value::as_str) == Some(t.as_str())
                && obj.get("entities") == e.as_ref()
        });
        if same_text && obj.get("reply_markup") == markup.as_ref() {
            return Err(ApiErr::bad(
                "Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message",
            ));
        }
        if let Some((t, e)) = &new_text {
            obj.insert("text".to_owned(), Value::String(t.clone()));
            match e {
                Some(e) => obj.insert("entities".to_owned(), e.clone()),
                None => obj.remove("entities"),
            };
        }
        match &markup {
            Some(mk) => obj.insert("reply_markup".to_owned(), mk.clone()),
            None => obj.remove("reply_markup"),
        };
        obj.insert("edit_date".to_owned(), json!(now()));
        m.markup = markup.clone();
        m.edited = true;
        let result = m.json.clone();
        let method = if text {
            Method::EditMessageText
        } else {
            Method::EditMessageReplyMarkup
        };
        self.record(
            chat_id,
            method,
            EventRec::Edit {
                message_id,
                text: new_text.map(|(t, _)| t),
                reply_markup: markup,
            },
        );
        Ok(result)
    }

    fn delete_message(&mut self, p: &Params) -> Result<Value, ApiErr> {
        let (chat_id, message_id) = target_message(p)?;
        let chat = self
            .chats
            .get_mut(&chat_id)
            .ok_or_else(ApiErr::chat_not_found)?;
        let m = chat
            .messages
            .get_mut(&message_id)
            .filter(|m| !m.deleted)
            .ok_or_else(|| ApiErr::bad("Bad Request: message to delete not found"))?;
        m.deleted = true;
        self.record(chat_id, Method::DeleteMessage, EventRec::Delete(message_id));
        Ok(Value::Bool(true))
    }

    fn answer_callback(&mut self, p: &Params) -> Result<Value, ApiErr> {
        let invalid = || {
            ApiErr::bad(
                "Bad Request: query is too old and response timeout expired or query id is invalid",
            )
        };
        let id = p.str("callback_query_id").ok_or_else(invalid)?;
        let cb = self
            .callbacks
            .get_mut(&id)
            .filter(|c| !c.answered)
            .ok_or_else(invalid)?;
        let text = p.str("text").filter(|t| !t.is_empty());
        if text.as_deref().is_some_and(|t| utf16_len(t) > 200) {
            return Err(ApiErr::bad("Bad Request: MESSAGE_TOO_LONG"));
        }
        cb.answered = true;
        let chat_id = cb.chat_id;
        self.record(
            chat_id,
            Method::AnswerCallbackQuery,
            EventRec::CallbackAnswer {
                id,
                text,
                show_alert: p.bool("show_alert"),
                url: p.str("url").filter(|u| !u.is_empty()),
            },
        );
        Ok(Value::Bool(true))
    }

    fn forward_or_copy(
        &mut self,
        bot_id: i64,
        p: &Params,
        method: Method,
        rate: bool,
    ) -> Result<Value, ApiErr> {
        let chat_id = p.chat_id("chat_id")?;
        self.writable_chat(chat_id)?;
        let from_chat = p.chat_id("from_chat_id")?;
        let not_found = || {
            ApiErr::bad(if method == Method::ForwardMessage {
                "Bad Request: message to forward not found"
            } else {
                "Bad Request: message to copy not found"
            })
        };
        let message_id = p.i64("message_id")?.ok_or_else(not_found)? as i32;
        let source = self
            .chats
            .get(&from_chat)
            .ok_or_else(ApiErr::chat_not_found)?
            .messages
            .get(&message_id)
            .filter(|m| !m.deleted)
            .ok_or_else(not_found)?;
        let src = source.json.as_object().cloned().unwrap_or_default();
        let src_markup = source.markup.clone();
        let mut content = Map::new();
        for key in CONTENT_KEYS
            .iter()
            .chain(&["entities", "caption", "caption_entities"])
        {
            if let Some(v) = src.get(*key) {
                content.insert((*key).to_owned(), v.clone());
            }
        }
        let (markup, reply_to) = if method == Method::ForwardMessage {
            let origin = match src.get("from") {
                Some(user) => json!({"type": "user", "date": src["date"], "sender_user": user}),
                None => {
                    json!({"type": "hidden_user", "date": src["date"], "sender_user_name": "Hidden"})
                }
            };
            content.insert("forward_origin".to_owned(), origin);
            (
                src_markup.filter(|m| m.get("inline_keyboard").is_some()),
                None,
            )
        } else {
            if let Some((c, e)) = Self::formatted(p, "caption", "caption_entities")? {
                if content.contains_key("text") {
                    return Err(ApiErr::bad("Bad Request: message caption can't be edited"));
                }
                content.insert("caption".to_owned(), Value::String(c));
                match e {
                    Some(e) => content.insert("caption_entities".to_owned(), e),
                    None => content.remove("caption_entities"),
                };
            }
            (Self::reply_markup(p)?, self.reply_target(chat_id, p)?)
        };
        let thread = self.thread(chat_id, p)?;
        if rate {
            self.check_rate(chat_id)?;
        }
        let msg = self.post(
            bot_id,
            chat_id,
            method,
            content,
            markup,
            Placement { reply_to, thread },
        );
        if method == Method::CopyMessage {
            Ok(json!({"message_id": msg["message_id"]}))
        } else {
            Ok(msg)
        }
    }

    fn chat_action(&mut self, p: &Params) -> Result<Value, ApiErr> {
        const ACTIONS: [&str; 11] = [
            "typing",
            "upload_photo",
            "record_video",
            "upload_video",
            "record_voice",
            "upload_voice",
            "upload_document",
            "choose_sticker",
            "find_location",
            "record_video_note",
            "upload_video_note",
        ];
        let chat_id = p.chat_id("chat_id")?;
        self.writable_chat(chat_id)?;
        let action = p.str("action").unwrap_or_default();
        if !ACTIONS.contains(&action.as_str()) {
            return Err(ApiErr::bad(
                "Bad Request: wrong parameter action in request",
            ));
        }
        self.record(
            chat_id,
            Method::SendChatAction,
            EventRec::ChatAction(action),
        );
        Ok(Value::Bool(true))
    }

    fn set_commands(&mut self, p: &Params) -> Result<Value, ApiErr> {
        let commands = p
            .json("commands")?
            .ok_or_else(|| ApiErr::bad("Bad Request: parameter \"commands\" is required"))?;
        let list = commands
            .as_array()
            .ok_or_else(|| ApiErr::bad("Bad Request: can't parse commands JSON object"))?;
        if list.len() > 100 {
            return Err(ApiErr::bad("Bad Request: too many commands specified"));
        }
        let mut clean = Vec::with_capacity(list.len());
        for c in list {
            let command = c.get("command").and_then(Value::as_str).unwrap_or_default();
            let description = c
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let command = command
                .strip_prefix('/')
                .unwrap_or(command)
                .to_ascii_lowercase();
            if command.is_empty()
                || command.len() > 32
                || !command
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(ApiErr::bad("Bad Request: BOT_COMMAND_INVALID"));
            }
            if description.trim().is_empty() || utf16_len(description) > 256 {
                return Err(ApiErr::bad(
                    "Bad Request: command description must be non-empty",
                ));
            }
            clean.push(json!({"command": command, "description": description}));
        }
        let key = commands_key(p)?;
        if clean.is_empty() {
            self.commands.remove(&key);
        } else {
            self.commands.insert(key, Value::Array(clean));
        }
        Ok(Value::Bool(true))
    }
}

fn file_json(file_id: &str, f: &FileRec) -> Value {
    if f.kind == "photo" {
        // The sandbox does not decode images: one size with placeholder dimensions.
        json!([{
            "file_id": file_id,
            "file_unique_id": f.unique_id,
            "file_size": f.size,
            "width": 320,
            "height": 320,
        }])
    } else {
        let mut d = json!({
            "file_id": file_id,
            "file_unique_id": f.unique_id,
            "file_size": f.size,
        });
        let duration = f.duration.unwrap_or(1);
        match f.kind {
            "video" | "animation" => {
                d["width"] = json!(320);
                d["height"] = json!(240);
                d["duration"] = json!(duration);
            }
            "voice" | "audio" => d["duration"] = json!(duration),
            "video_note" => {
                d["length"] = json!(240);
                d["duration"] = json!(duration);
            }
            "sticker" => {
                d["type"] = json!("regular");
                d["width"] = json!(512);
                d["height"] = json!(512);
                d["is_animated"] = json!(false);
                d["is_video"] = json!(false);
                if let Some(e) = &f.emoji {
                    d["emoji"] = json!(e);
                }
            }
            _ => {}
        }
        if let Some(n) = &f.file_name {
            d["file_name"] = json!(n);
        }
        // Telegram names a MIME type for these kinds, and teloxide 0.17 drops the message's
        // content (`MessageKind::Empty`) when the field is missing, so default it.
        let default_mime = match f.kind {
            "video" | "animation" => Some("video/mp4"),
            "voice" => Some("audio/ogg"),
            "audio" => Some("audio/mpeg"),
            _ => None,
        };
        if let Some(m) = f.mime_type.as_deref().or(default_mime) {
            d["mime_type"] = json!(m);
        }
        d
    }
}

/// Records the outcome of a webhook delivery attempt; false when the webhook is gone.
pub(crate) fn webhook_result(
    bot: &BotEntry,
    generation: u64,
    update_id: i64,
    error: Option<String>,
) -> bool {
    let mut st = bot.lock();
    let Some(w) = st.webhook.as_mut().filter(|w| w.generation == generation) else {
        return false;
    };
    match error {
        Some(e) => {
            w.last_error_date = Some(now());
            w.last_error_message = Some(e);
        }
        None => {
            if st.updates.front().is_some_and(|u| u.id == update_id) {
                st.updates.pop_front();
            }
        }
    }
    true
}

/// One webhook delivery: update id, body, URL and secret.
pub(crate) type Delivery = (i64, UpdateBody, String, Option<String>);

/// The next update for a webhook, or `None` when the queue is empty; `Err` when it is gone.
pub(crate) fn webhook_next(bot: &BotEntry, generation: u64) -> Result<Option<Delivery>, ()> {
    let mut st = bot.lock();
    let Some(w) = st.webhook.as_ref().filter(|w| w.generation == generation) else {
        return Err(());
    };
    let (url, secret) = (w.url.clone(), w.secret.clone());
    // Kinds the bot did not ask for are never delivered.
    let _ = st.take_updates(0);
    Ok(st
        .updates
        .front()
        .map(|u| (u.id, u.body.clone(), url, secret)))
}

/// The `update_id` a raw update carries, if it can be read.
///
/// First as the top-level field of a JSON object (other fields are skipped unchecked, so lone
/// surrogates elsewhere do not matter), then as the first `"update_id": <integer>` in the
/// text, which also finds it in truncated or otherwise broken JSON.
fn raw_update_id(raw: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Probe {
        update_id: i64,
    }
    if let Ok(p) = serde_json::from_slice::<Probe>(raw) {
        return Some(p.update_id);
    }
    const KEY: &[u8] = b"\"update_id\"";
    let at = raw.windows(KEY.len()).position(|w| w == KEY)?;
    let rest = &raw[at + KEY.len()..];
    let rest = rest
        .trim_ascii_start()
        .strip_prefix(b":")?
        .trim_ascii_start();
    let sign = usize::from(rest.first() == Some(&b'-'));
    let digits = rest[sign..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 {
        return None;
    }
    std::str::from_utf8(&rest[..sign + digits])
        .ok()?
        .parse()
        .ok()
}

/// The `chat_id` and `message_id` a method acts on (editMessage*, deleteMessage).
fn target_message(p: &Params) -> Result<(i64, i32), ApiErr> {
    let chat_id = p.chat_id("chat_id")?;
    let message_id = p
        .i64("message_id")?
        .ok_or_else(|| ApiErr::bad("Bad Request: message identifier is not specified"))?
        as i32;
    Ok((chat_id, message_id))
}

/// The Bot API method a fault or hold names (any method when `None`), or why it is unknown.
fn known_method(name: Option<&str>) -> Result<Option<Method>, SandboxError> {
    name.map(|m| {
        Method::lookup(m)
            .ok_or_else(|| SandboxError::InvalidInput(format!("unknown Bot API method {m:?}")))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::raw_update_id;

    #[test]
    fn raw_update_ids_are_read_when_readable() {
        let cases: [(&[u8], Option<i64>); 8] = [
            (br#"{"update_id":5,"message":{"text":"\ud800"}}"#, Some(5)),
            (br#"{"message":{"text":"x"},"update_id": 12}"#, Some(12)),
            (br#"{"update_id":7,"message":"#, Some(7)),
            (br#"{"update_id" : -3}"#, Some(-3)),
            (b"not json at all", None),
            (br#"{"message":{"text":"hi"}}"#, None),
            (br#"{"update_id":"9"}"#, None),
            (b"{\"update_id\":8,\xff\xfe}", Some(8)),
        ];
        for (raw, want) in cases {
            assert_eq!(raw_update_id(raw), want, "{}", String::from_utf8_lossy(raw));
        }
    }
}
