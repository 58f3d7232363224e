//! Behaviour: the seam every module plugs into, and the registry of modules.
//!
//! A [`Module`] declares its name (its manifest section, its job's task suffix, its metric
//! label), the manifest keys it owns and how to parse them, whether it is enabled for a bot's
//! snapshot, the update kinds it needs (their union is `allowed_updates`), the commands it
//! adds to `setMyCommands`, an [`Module::on_update`] step in the update's unit of work (a
//! chain: each module sees the update in registry order and may pass it on; its answers are
//! queued in the outbox), an [`Module::on_sent`] step that observes what the bot's sender
//! delivered, and an optional per-bot
//! background [`Module::job`]. The runtime asks the [`Registry`]; it knows no module.
//!
//! Import rules (checked by `tests/layers.rs`): a module imports only the content snapshot,
//! the Telegram send interface, storage (its own `store.rs`, the bot database's connections)
//! and leaves — never the runtime, the control plane, the panel, the admin layer or the CLI.
//!
//! Adding a module: a folder `src/modules/<name>/` (`mod.rs`, `store.rs`, `job.rs` if it has a
//! loop), one migration in `migrations/bot/`, one line in [`Registry::standard`], and its
//! manifest keys. See docs/architecture.md, "How to add a module".

pub mod assistant;
pub mod broadcast;
pub mod core;
pub mod feedback;
pub mod history;
pub mod scheduler;
pub mod store;

use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::PgConnection;
use teloxide::types::{
    BotCommand, CallbackQueryId, ChatId, InlineKeyboardMarkup, Me, MessageId, ReplyMarkup, Update,
};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::botdb::PruneSchedule;
use crate::botdb::budget::{BotPool, BudgetError};
use crate::botdb::store::{self as botdb_store, OutboxRow};
use crate::content::manifest::{COMMON_KEYS, Manifest, ManifestError};
use crate::content::snapshot::{Section, Snapshot};
use crate::content::texts::{TextRef, utf16_len};
use crate::telegram::{Delivery, Lane, Messenger, Request, SendError};

/// What the chain does after a module's step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Pass the update on to the next module.
    Continue,
    /// The update is dealt with; later modules do not see it.
    Stop,
}

/// Why a module's step failed.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// This update can never be handled; it is kept poisoned with the reason.
    #[error("{0}")]
    Poison(String),
    /// The bot database failed; the update is replayed after a restart.
    #[error("bot database error")]
    Database(#[from] sqlx::Error),
    /// No connection to the bot database could be had.
    #[error("no bot database connection")]
    Connection(#[from] BudgetError),
    /// A Telegram call failed for good (revoked token, or transient failures kept coming).
    #[error(transparent)]
    Send(#[from] SendError),
    /// A step asked for the bot database ([`UpdateCx::tx`]) in a unit of work that runs
    /// without one; the runtime runs the batch again inside a transaction. Never reported.
    #[error("the unit of work needs a transaction")]
    NeedsTransaction,
}

impl ModuleError {
    /// Whether the token was revoked (the bot must stop until it changes).
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, ModuleError::Send(SendError::Unauthorized))
    }
}

/// A behaviour plugged into every bot that enables it.
///
/// Futures are boxed so that the registry can hold modules as trait objects.
pub trait Module: Send + Sync + 'static {
    /// The module's name: its manifest section, its job's task suffix, its metric label.
    fn name(&self) -> &'static str;

    /// The top-level manifest keys this module owns (besides the common ones).
    fn manifest_keys(&self) -> &'static [&'static str] {
        &[]
    }

    /// Parses and validates this module's section of `manifest`; `None` when the module is
    /// not enabled for this bot.
    fn load(&self, manifest: &Manifest) -> Result<Option<Section>, ManifestError>;

    /// Whether the module is enabled for a bot's snapshot.
    fn enabled(&self, snapshot: &Snapshot) -> bool {
        snapshot.is_enabled(self.name())
    }

    /// The update kinds it needs (Telegram's `allowed_updates` names, e.g. `message`).
    fn update_kinds(&self) -> &'static [&'static str] {
        &[]
    }

    /// The commands it adds to the bot's command list.
    fn commands(&self, _snapshot: &Snapshot) -> Vec<BotCommand> {
        Vec::new()
    }

    /// The text keys its section of `snapshot` refers to, with the limits their values must
    /// keep; the registry warns about the missing and the too long ones
    /// ([`Registry::text_warnings`]).
    fn text_keys(&self, _snapshot: &Snapshot) -> Vec<TextRef> {
        Vec::new()
    }

    /// Its step in the update's unit of work. The runtime first runs the chain with the
    /// writes deferred (history, users and requests, through [`UpdateCx`]'s methods) and
    /// writes them with the claim in one statement; a step that needs the database
    /// ([`UpdateCx::tx`]) makes it run the chain again inside the update's transaction. So a
    /// step may run twice and must have no effect outside its [`UpdateCx`].
    fn on_update<'a>(
        &'a self,
        _cx: &'a mut UpdateCx<'_>,
    ) -> BoxFuture<'a, Result<Flow, ModuleError>> {
        Box::pin(async { Ok(Flow::Continue) })
    }

    /// Observes the requests the bot's sender finished (inside the transaction that marks
    /// them done): what Telegram made of them, with the sent message's id. Every enabled
    /// module sees every delivery; `Delivery::origin` names the module that queued it.
    fn on_sent<'a>(
        &'a self,
        _cx: &'a mut SentCx<'_>,
        _deliveries: &'a [Delivery],
    ) -> BoxFuture<'a, Result<(), ModuleError>> {
        Box::pin(async { Ok(()) })
    }

    /// Whether [`Module::on_sent`] may queue new requests when it sees `delivery` (a
    /// follow-up, such as a feedback topic's first message): the sender then reads the
    /// outbox once after recording the delivery. A module whose `on_sent` queues must say so
    /// here; otherwise the sender does not look (one statement less per recorded group) and
    /// the follow-up would wait for the sender's next reason to read the outbox.
    fn queues_on_sent(&self, _delivery: &Delivery) -> bool {
        false
    }

    /// Its per-bot background job, if it has one: spawned by the bot's run as
    /// `bot-<id>-<name>` while the module is enabled, cancelled with the run.
    fn job(&self, _cx: JobCx) -> Option<BoxFuture<'static, Result<(), ModuleError>>> {
        None
    }
}

/// Loads an optional module section: `T` parsed from the manifest's `keys`, `get` takes the
/// module's settings out of it (`None`: the module is off for this bot), `validate` checks
/// them. For modules a manifest turns on by naming them (feedback, assistant).
pub(crate) fn load_optional<T, S>(
    manifest: &Manifest,
    keys: &[&str],
    get: impl FnOnce(T) -> Option<S>,
    validate: impl FnOnce(&S) -> Result<(), ManifestError>,
) -> Result<Option<Section>, ManifestError>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync + 'static,
{
    let Some(spec) = get(manifest.section(keys)?) else {
        return Ok(None);
    };
    validate(&spec)?;
    Ok(Some(Arc::new(spec)))
}

/// The modules of a daemon, in the order they see an update.
#[derive(Clone)]
pub struct Registry {
    modules: Arc<[Arc<dyn Module>]>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.modules.iter().map(|m| m.name()))
            .finish()
    }
}

impl Registry {
    /// botvisor's modules. Adding a module is one line here.
    pub fn standard() -> Self {
        Self::new(vec![
            Arc::new(history::History),
            Arc::new(broadcast::Broadcast),
            Arc::new(scheduler::Scheduler::default()),
            Arc::new(feedback::Feedback),
            Arc::new(assistant::Assistant),
            Arc::new(core::Core),
        ])
    }

    /// A registry of exactly `modules`, in this order.
    pub fn new(modules: Vec<Arc<dyn Module>>) -> Self {
        Self {
            modules: modules.into(),
        }
    }

    /// This registry with `module` appended (last in the chain).
    pub fn with(self, module: Arc<dyn Module>) -> Self {
        let mut modules: Vec<_> = self.modules.iter().cloned().collect();
        modules.push(module);
        Self::new(modules)
    }

    /// The modules in chain order.
    pub fn modules(&self) -> &[Arc<dyn Module>] {
        &self.modules
    }

    /// Validates a whole manifest: no key that no module owns, every section valid.
    pub fn validate(&self, manifest: &Manifest) -> Result<(), ManifestError> {
        for key in manifest.sections.keys() {
            if !self
                .modules
                .iter()
                .any(|m| m.manifest_keys().contains(&key.as_str()))
            {
                let known: Vec<&str> = COMMON_KEYS
                    .iter()
                    .copied()
                    .chain(
                        self.modules
                            .iter()
                            .flat_map(|m| m.manifest_keys().iter().copied()),
                    )
                    .collect();
                return Err(ManifestError::new(
                    key.clone(),
                    format!(
                        "unknown field `{key}`, expected one of {}",
                        known.join(", ")
                    ),
                ));
            }
        }
        for module in self.modules.iter() {
            module.load(manifest)?;
        }
        Ok(())
    }

    /// Parses and validates a manifest from JSON text, sections included.
    pub fn parse_manifest(&self, text: &str) -> Result<Manifest, ManifestError> {
        let manifest = Manifest::from_json_str(text)?;
        self.validate(&manifest)?;
        Ok(manifest)
    }

    /// Completes `snapshot` with the sections of the modules enabled by its manifest, and
    /// records its [`Registry::text_warnings`].
    pub fn load(&self, mut snapshot: Snapshot) -> Result<Snapshot, ManifestError> {
        self.validate(&snapshot.manifest)?;
        for module in self.modules.iter() {
            if let Some(section) = module.load(&snapshot.manifest)? {
                snapshot.enable(module.name(), section);
            }
        }
        let warnings = self.text_warnings(&snapshot);
        snapshot.set_warnings(warnings);
        Ok(snapshot)
    }

    /// The text keys the enabled modules refer to, each once, in manifest order (a key used
    /// twice keeps the tighter limit and is required if either use requires it).
    pub fn text_keys(&self, snapshot: &Snapshot) -> Vec<TextRef> {
        let mut keys: Vec<TextRef> = Vec::new();
        for r in self.enabled(snapshot).flat_map(|m| m.text_keys(snapshot)) {
            match keys.iter_mut().find(|k| k.key == r.key) {
                Some(k) => {
                    k.max_len = k.max_len.min(r.max_len);
                    k.required |= r.required;
                }
                None => keys.push(r),
            }
        }
        keys
    }

    /// The required text keys with no value in the manifest's default language: users would
    /// see the raw key (a label), or no reply (a command).
    pub fn missing_texts(&self, snapshot: &Snapshot) -> Vec<String> {
        let lang = snapshot.manifest.default_language.as_str();
        self.text_keys(snapshot)
            .into_iter()
            .filter(|r| r.required && !snapshot.values(&r.key).any(|(l, _)| l == lang))
            .map(|r| r.key)
            .collect()
    }

    /// The values longer than where they are used allows, as `key (lang): N UTF-16 units,
    /// limit L` (a label over its limit, a callback notice over 200).
    pub fn long_texts(&self, snapshot: &Snapshot) -> Vec<String> {
        let mut long = Vec::new();
        for r in self.text_keys(snapshot) {
            let mut values: Vec<(&str, &str)> = snapshot.values(&r.key).collect();
            values.sort_unstable();
            for (lang, value) in values {
                let len = utf16_len(value);
                if len > r.max_len {
                    long.push(format!(
                        "{} ({lang}): {len} UTF-16 units, limit {}",
                        r.key, r.max_len
                    ));
                }
            }
        }
        long
    }

    /// [`Registry::text_warnings`] for a manifest and its texts `(key, lang, value)` without a
    /// panel row, for the CLI (`config set`, `bot add`, `text delete`); an invalid manifest is
    /// an error.
    pub fn text_warnings_for(
        &self,
        manifest: &Manifest,
        texts: impl IntoIterator<Item = (String, String, String)>,
    ) -> Result<Vec<String>, ManifestError> {
        let snapshot = self.load(Snapshot::new(
            (0, 0, None),
            String::new(),
            manifest.clone(),
            texts,
        ))?;
        Ok(self.text_warnings(&snapshot))
    }

    /// Problems with `snapshot`'s texts that do not stop the bot, one line each:
    /// `texts missing in en: menu_main, btn_about` and `texts too long: …`. A pure function of
    /// the snapshot, for `bot_status.detail` and the CLI.
    pub fn text_warnings(&self, snapshot: &Snapshot) -> Vec<String> {
        let mut warnings = Vec::new();
        let missing = self.missing_texts(snapshot);
        if !missing.is_empty() {
            warnings.push(format!(
                "texts missing in {}: {}",
                snapshot.manifest.default_language,
                missing.join(", ")
            ));
        }
        let long = self.long_texts(snapshot);
        if !long.is_empty() {
            warnings.push(format!("texts too long: {}", long.join(", ")));
        }
        warnings
    }

    /// The modules enabled for `snapshot`, in chain order.
    pub fn enabled<'a>(
        &'a self,
        snapshot: &'a Snapshot,
    ) -> impl Iterator<Item = &'a Arc<dyn Module>> {
        self.modules.iter().filter(|m| m.enabled(snapshot))
    }

    /// The union of the update kinds the enabled modules need (Telegram's `allowed_updates`).
    pub fn allowed_updates(&self, snapshot: &Snapshot) -> Vec<&'static str> {
        let mut kinds: Vec<&'static str> = Vec::new();
        for kind in self
            .enabled(snapshot)
            .flat_map(|m| m.update_kinds().iter().copied())
        {
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        kinds
    }

    /// The bot's command list: every enabled module's commands, first definition wins.
    pub fn commands(&self, snapshot: &Snapshot) -> Vec<BotCommand> {
        let mut commands: Vec<BotCommand> = Vec::new();
        for command in self.enabled(snapshot).flat_map(|m| m.commands(snapshot)) {
            if !commands.iter().any(|c| c.command == command.command) {
                commands.push(command);
            }
        }
        commands
    }
}

/// What a module's step sees of one update, and how it answers.
///
/// Answers are not sent here: they are queued in the outbox inside the update's transaction
/// and delivered by the bot's sender after the commit (no transaction is ever open across a
/// Telegram call). What they came to reaches [`Module::on_sent`] once delivered.
pub struct UpdateCx<'a> {
    /// The panel id of the bot.
    pub bot_id: i64,
    /// The Telegram bot's user id (the token's numeric prefix): the update's inbox row is
    /// keyed by it ([`UpdateCx::raw_update`]).
    pub telegram_id: i64,
    /// The update.
    pub update: &'a Update,
    /// The bot's Telegram identity.
    pub me: &'a Me,
    /// The bot's content, loaded once for this update.
    pub snapshot: &'a Snapshot,
    /// How the step's writes reach the bot database.
    db: Writes<'a>,
    origin: &'static str,
    queued: Vec<Queued>,
    wake: Vec<&'static str>,
}

/// Where a unit of work writes: into its open transaction, or — while no step read anything
/// — into a buffer the runtime writes in one statement with the claim ([`store`]).
enum Writes<'a> {
    /// The update's transaction on the bot database.
    Tx(&'a mut PgConnection),
    /// Deferred: a step that needs the database ([`UpdateCx::tx`]) makes the runtime run the
    /// batch again inside a transaction.
    Deferred(&'a mut store::Deferred),
}

/// A request a unit of work queued in the outbox, as the sender will see it once the
/// transaction committed: the runtime hands these to the bot's sender directly, so it need
/// not read back what was just written.
#[derive(Debug, Clone)]
pub struct Queued {
    /// The outbox row.
    pub row: OutboxRow,
    /// Its request, parsed.
    pub request: Request,
}

impl<'a> UpdateCx<'a> {
    /// The context of one unit of work inside its transaction `tx`.
    pub fn new(
        bot_id: i64,
        telegram_id: i64,
        update: &'a Update,
        me: &'a Me,
        snapshot: &'a Snapshot,
        tx: &'a mut PgConnection,
    ) -> Self {
        Self::with(bot_id, telegram_id, update, me, snapshot, Writes::Tx(tx))
    }

    /// The context of one unit of work that defers its writes into `writes` (the runtime
    /// claims the update and applies them in one statement, `store::apply_deferred`): the
    /// steps may write history, users and requests, and read nothing.
    pub fn deferred(
        bot_id: i64,
        telegram_id: i64,
        update: &'a Update,
        me: &'a Me,
        snapshot: &'a Snapshot,
        writes: &'a mut store::Deferred,
    ) -> Self {
        Self::with(
            bot_id,
            telegram_id,
            update,
            me,
            snapshot,
            Writes::Deferred(writes),
        )
    }

    fn with(
        bot_id: i64,
        telegram_id: i64,
        update: &'a Update,
        me: &'a Me,
        snapshot: &'a Snapshot,
        db: Writes<'a>,
    ) -> Self {
        Self {
            bot_id,
            telegram_id,
            update,
            me,
            snapshot,
            db,
            origin: "",
            queued: Vec::new(),
            wake: Vec::new(),
        }
    }

    /// The update's transaction on the bot database, for a step that reads or writes more
    /// than history, users and requests. In a unit of work that defers its writes this
    /// fails with [`ModuleError::NeedsTransaction`] (pass it on with `?`): the runtime then
    /// runs the batch again inside a transaction, where this succeeds.
    pub fn tx(&mut self) -> Result<&mut PgConnection, ModuleError> {
        match &mut self.db {
            Writes::Tx(tx) => Ok(tx),
            Writes::Deferred(_) => Err(ModuleError::NeedsTransaction),
        }
    }

    /// Records a history message of this update's chat (history's table), now or with the
    /// deferred writes.
    pub async fn record_message(
        &mut self,
        chat: i64,
        user: Option<i64>,
        role: history::store::Role,
        content: &str,
    ) -> Result<(), ModuleError> {
        let update = i64::from(self.update.id.0);
        match &mut self.db {
            Writes::Tx(tx) => {
                history::store::add_message(tx, chat, user, role, content).await?;
            }
            Writes::Deferred(w) => {
                let m = &mut w.messages;
                m.update.push(update);
                m.chat.push(chat);
                m.user.push(user);
                m.role.push(role.as_str());
                m.content.push(content.to_owned());
            }
        }
        Ok(())
    }

    /// Records that `user` wrote (core's users table), now or with the deferred writes.
    pub async fn touch_user(
        &mut self,
        user: &core::store::SeenUser<'_>,
    ) -> Result<(), ModuleError> {
        let update = i64::from(self.update.id.0);
        match &mut self.db {
            Writes::Tx(tx) => core::store::touch_user(tx, user).await?,
            Writes::Deferred(w) => {
                let u = &mut w.users;
                // One row per user and statement (the last one wins); a language this
                // update does not say is the one an earlier update of the batch said, as
                // the upserts one by one would have kept it.
                let language = user.language_code.map(str::to_owned).or_else(|| {
                    u.user_id
                        .iter()
                        .zip(&u.language_code)
                        .rev()
                        .find(|(id, _)| **id == user.user_id)
                        .and_then(|(_, l)| l.clone())
                });
                u.update.push(update);
                u.user_id.push(user.user_id);
                u.username.push(user.username.map(str::to_owned));
                u.first_name.push(user.first_name.to_owned());
                u.last_name.push(user.last_name.map(str::to_owned));
                u.language_code.push(language);
            }
        }
        Ok(())
    }

    /// The update as Telegram sent it, read from the inbox (one query): for what teloxide
    /// could not parse, such as a message of a kind it does not know (which it turns into an
    /// empty message).
    pub async fn raw_update(&mut self) -> Result<Option<serde_json::Value>, ModuleError> {
        let update_id = i64::from(self.update.id.0);
        let telegram_id = self.telegram_id;
        Ok(botdb_store::inbox_payload(self.tx()?, telegram_id, update_id).await?)
    }

    /// Asks for the running module's job to be woken once this unit of work committed: it
    /// left the job work in the bot database (a queued model request, say). Nothing is lost
    /// if the wake-up is: a job also looks for work when it starts.
    pub fn wake_job(&mut self) {
        if !self.wake.contains(&self.origin) {
            self.wake.push(self.origin);
        }
    }

    /// The modules whose jobs this unit of work asked to wake ([`UpdateCx::wake_job`]).
    pub fn jobs_to_wake(&self) -> &[&'static str] {
        &self.wake
    }

    /// Names the module whose step runs next (its requests are routed back to it).
    pub fn set_module(&mut self, name: &'static str) {
        self.origin = name;
    }

    /// How many requests this unit of work queued so far.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// The requests this unit of work queued, in order, and the modules whose jobs it asked
    /// to wake (for the runtime, after the commit).
    pub fn into_effects(self) -> (Vec<Queued>, Vec<&'static str>) {
        (self.queued, self.wake)
    }

    /// Queues `request` to `chat` (for `user`, when known) in `lane`; returns its outbox id.
    /// The id is known only once the row is written, so this needs the transaction
    /// ([`UpdateCx::tx`]); [`UpdateCx::request`] does not.
    pub async fn queue(
        &mut self,
        lane: Lane,
        chat: ChatId,
        user: Option<i64>,
        request: &Request,
    ) -> Result<i64, ModuleError> {
        let json = serde_json::to_value(request).expect("requests always serialise");
        let origin = self.origin;
        let id =
            botdb_store::enqueue(self.tx()?, lane.as_i16(), chat.0, user, origin, &json).await?;
        self.hand_over(id, lane, chat, user, json, request);
        Ok(id)
    }

    /// Queues `request` to `chat` (for `user`, when known) in `lane`, now or with the
    /// deferred writes (when the caller needs no outbox id).
    pub async fn request(
        &mut self,
        lane: Lane,
        chat: ChatId,
        user: Option<i64>,
        request: &Request,
    ) -> Result<(), ModuleError> {
        let Writes::Deferred(w) = &mut self.db else {
            return self.queue(lane, chat, user, request).await.map(|_| ());
        };
        let json = serde_json::to_value(request).expect("requests always serialise");
        let r = &mut w.requests;
        r.update.push(i64::from(self.update.id.0));
        r.lane.push(lane.as_i16());
        r.chat.push(chat.0);
        r.user.push(user);
        r.origin.push(self.origin);
        r.request.push(json.to_string());
        // The id is filled in once the batch's statement wrote the row (`runtime::dispatch`).
        self.hand_over(0, lane, chat, user, json, request);
        Ok(())
    }

    /// Keeps outbox row `id` for the sender, as it will read once the unit of work committed.
    fn hand_over(
        &mut self,
        id: i64,
        lane: Lane,
        chat: ChatId,
        user: Option<i64>,
        json: serde_json::Value,
        request: &Request,
    ) {
        self.queued.push(Queued {
            row: OutboxRow {
                id,
                lane: lane.as_i16(),
                chat_id: chat.0,
                user_id: user,
                origin: self.origin.to_owned(),
                request: sqlx::types::Json(json),
                attempts: 0,
            },
            request: request.clone(),
        });
    }

    /// Answers `text` to `chat` (for `user`, when known).
    pub async fn send(
        &mut self,
        chat: ChatId,
        user: Option<i64>,
        text: &str,
        markup: Option<ReplyMarkup>,
    ) -> Result<(), ModuleError> {
        let request = Request::SendMessage {
            text: text.to_owned(),
            reply_markup: markup,
            message_thread_id: None,
            reply_to_message_id: None,
            in_history: false,
        };
        self.request(Lane::Reply, chat, user, &request).await
    }

    /// Edits the text (and inline keyboard) of the bot's message `message_id` in `chat`.
    pub async fn edit(
        &mut self,
        chat: ChatId,
        user: Option<i64>,
        message_id: MessageId,
        text: &str,
        markup: Option<InlineKeyboardMarkup>,
    ) -> Result<(), ModuleError> {
        let request = Request::EditMessageText {
            message_id: message_id.0,
            text: text.to_owned(),
            reply_markup: markup,
        };
        self.request(Lane::Reply, chat, user, &request).await
    }

    /// Answers a callback query (stops the button's spinner), with an optional notice.
    pub async fn answer_callback(
        &mut self,
        chat: ChatId,
        id: &CallbackQueryId,
        text: Option<&str>,
    ) -> Result<(), ModuleError> {
        let request = Request::AnswerCallbackQuery {
            callback_query_id: id.0.clone(),
            text: text.map(str::to_owned),
        };
        self.request(Lane::Reply, chat, None, &request).await
    }
}

/// What a module's [`Module::on_sent`] step works with. Like a unit of work's, the sender's
/// first try defers the step's history rows and writes them with the results in one
/// statement (`store::finish_deferred`); a step that needs the database ([`SentCx::tx`])
/// makes it record the group again inside a transaction. So a step may run twice and must
/// have no effect outside its `SentCx`.
pub struct SentCx<'a> {
    db: SentWrites<'a>,
}

/// Where an `on_sent` step writes.
enum SentWrites<'a> {
    /// The transaction that records the results.
    Tx(&'a mut PgConnection),
    /// Deferred history rows.
    Deferred(&'a mut store::MessageColumns),
}

impl<'a> SentCx<'a> {
    /// Inside the transaction `tx` that records the results.
    pub fn new(tx: &'a mut PgConnection) -> Self {
        Self {
            db: SentWrites::Tx(tx),
        }
    }

    /// Deferring history rows into `messages`.
    pub fn deferred(messages: &'a mut store::MessageColumns) -> Self {
        Self {
            db: SentWrites::Deferred(messages),
        }
    }

    /// The transaction that records the results; in a deferred try this fails with
    /// [`ModuleError::NeedsTransaction`] (pass it on with `?`).
    pub fn tx(&mut self) -> Result<&mut PgConnection, ModuleError> {
        match &mut self.db {
            SentWrites::Tx(tx) => Ok(tx),
            SentWrites::Deferred(_) => Err(ModuleError::NeedsTransaction),
        }
    }

    /// Records the bot's sent messages `(chat, user, text)` in history, now or deferred.
    pub async fn record_bot_messages(
        &mut self,
        sent: &[(i64, Option<i64>, &str)],
    ) -> Result<(), ModuleError> {
        match &mut self.db {
            SentWrites::Tx(tx) => history::store::add_bot_messages(tx, sent).await?,
            SentWrites::Deferred(m) => {
                for (chat, user, text) in sent {
                    m.chat.push(*chat);
                    m.user.push(*user);
                    m.role.push(history::store::Role::Bot.as_str());
                    m.content.push((*text).to_owned());
                }
            }
        }
        Ok(())
    }
}

/// Queues `request` from module `origin` in the outbox, inside `tx`.
pub(crate) async fn enqueue(
    tx: &mut PgConnection,
    origin: &str,
    lane: Lane,
    chat: ChatId,
    user: Option<i64>,
    request: &Request,
) -> Result<i64, ModuleError> {
    let json = serde_json::to_value(request).expect("requests always serialise");
    Ok(botdb_store::enqueue(tx, lane.as_i16(), chat.0, user, origin, &json).await?)
}

/// What a module's background job works with.
pub struct JobCx {
    /// The panel id of the bot.
    pub bot_id: i64,
    /// The module's name (its requests' origin).
    pub module: &'static str,
    /// Wakes the bot's sender after a commit that queued requests.
    pub outbox: Arc<Notify>,
    /// The bot's database.
    pub db: BotPool,
    /// When the bot's periodic prunes run (a job that deletes past a retention follows it).
    pub prune: PruneSchedule,
    /// The bot's send interface.
    pub telegram: Messenger,
    /// The bot's content; changes on every reload.
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    /// Notified when an operator action concerns this module of this bot.
    pub wake: Arc<Notify>,
    /// Notified after the bot's sender recorded the result of a request this module queued
    /// (its [`Module::on_sent`] step has seen it), so a job can keep a window of sends
    /// queued without polling.
    pub delivered: Arc<Notify>,
    /// Wakes another module's job of this bot (as an operator's `bot_wake` would), e.g. the
    /// scheduler starting a broadcast.
    pub peers: PeerWaker,
    /// Cancelled when the job must end (the run stops, or the module was disabled).
    pub stop: CancellationToken,
    /// Where the job says it waits, and until when ([`JobCx::woken`] says it): an idle bot
    /// in webhook mode sleeps only while every part of its run waits.
    pub quiet: Arc<Quiet>,
}

/// What the parts of one bot run wait for: the run of a bot in webhook mode ends into a
/// dormant state (no run held, docs/webhooks.md, "Dormant bots") only when nothing happened
/// for a while and every part waits — each for nothing or for a deadline, the earliest of
/// which wakes the bot again.
#[derive(Debug)]
pub struct Quiet {
    activity: Arc<std::sync::atomic::AtomicU64>,
    parts: std::sync::Mutex<std::collections::HashMap<&'static str, Option<Option<Instant>>>>,
}

impl Quiet {
    /// A run's quiet, counting its activity in `activity` (the bot's, kept across runs).
    pub fn new(activity: Arc<std::sync::atomic::AtomicU64>) -> Self {
        Self {
            activity,
            parts: std::sync::Mutex::default(),
        }
    }

    fn parts(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<&'static str, Option<Option<Instant>>>>
    {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Something happened (an update came in, a unit of work committed).
    pub fn touch(&self) {
        self.activity
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Counts [`Quiet::touch`]: unchanged over a period means nothing happened in it.
    pub fn activity(&self) -> u64 {
        self.activity.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Part `part` joins the run, working.
    pub fn enter(&self, part: &'static str) {
        self.parts().insert(part, None);
    }

    /// Part `part` is working (nothing if it left the run).
    pub fn busy(&self, part: &'static str) {
        if let Some(state) = self.parts().get_mut(part) {
            *state = None;
        }
    }

    /// Part `part` waits for an event, or at most until `until` (nothing if it left the
    /// run).
    pub fn waiting(&self, part: &'static str, until: Option<Instant>) {
        if let Some(state) = self.parts().get_mut(part) {
            *state = Some(until);
        }
    }

    /// Part `part` is gone (a disabled module's job).
    pub fn forget(&self, part: &'static str) {
        self.parts().remove(part);
    }

    /// `None` while a part works; otherwise the earliest deadline any part waits for
    /// (`Some(None)`: none has one).
    pub fn asleep(&self) -> Option<Option<Instant>> {
        let mut earliest: Option<Instant> = None;
        for state in self.parts().values() {
            let until = (*state)?;
            if let Some(t) = until {
                earliest = Some(earliest.map_or(t, |e| e.min(t)));
            }
        }
        Some(earliest)
    }
}

/// Marks a part busy again when its wait ends (or is dropped).
struct Waiting<'a> {
    quiet: &'a Quiet,
    part: &'static str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.quiet.busy(self.part);
    }
}

/// Wakes the job of another module of the same bot run, by the module's name.
#[derive(Clone)]
pub struct PeerWaker(Arc<dyn Fn(&str) + Send + Sync>);

impl PeerWaker {
    /// A waker calling `wake` with the module's name.
    pub fn new(wake: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Self(Arc::new(wake))
    }

    /// Wakes module `name`'s job (or its next wait).
    pub fn wake(&self, name: &str) {
        (self.0)(name)
    }
}

impl std::fmt::Debug for PeerWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerWaker")
    }
}

/// Why a job's wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The bot's snapshot changed.
    Snapshot,
    /// An operator action concerns this module.
    Operator,
    /// The sender recorded the result of a request this module queued.
    Delivered,
    /// The deadline passed.
    Timer,
    /// The job must end.
    Stop,
}

impl JobCx {
    /// Queues `request` to `chat` in `lane` inside the job's transaction `tx`; call
    /// [`JobCx::wake_sender`] after the commit.
    pub async fn queue(
        &self,
        tx: &mut PgConnection,
        lane: Lane,
        chat: ChatId,
        user: Option<i64>,
        request: &Request,
    ) -> Result<i64, ModuleError> {
        enqueue(tx, self.module, lane, chat, user, request).await
    }

    /// Wakes the bot's sender (after a commit that queued requests).
    pub fn wake_sender(&self) {
        self.outbox.notify_one();
    }

    /// Sleeps until the snapshot changes, an operator wakes the job, a request it queued was
    /// delivered, `deadline` passes (if any) or the job must stop — no polling. Meanwhile the
    /// job counts as waiting (until `deadline`) for the bot's [`Quiet`].
    pub async fn woken(&mut self, deadline: Option<Instant>) -> Wake {
        self.woken_as(deadline, true).await
    }

    /// [`JobCx::woken`] for a job that may have work under way beside its wait (`idle`:
    /// it has none, so it counts as waiting).
    pub async fn woken_as(&mut self, deadline: Option<Instant>, idle: bool) -> Wake {
        let _waiting = idle.then(|| {
            self.quiet.waiting(self.module, deadline);
            Waiting {
                quiet: &self.quiet,
                part: self.module,
            }
        });
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = self.stop.cancelled() => Wake::Stop,
            changed = self.snapshot.changed() => match changed {
                Ok(()) => Wake::Snapshot,
                Err(_) => Wake::Stop,
            },
            () = self.wake.notified() => Wake::Operator,
            () = self.delivered.notified() => Wake::Delivered,
            () = timer => Wake::Timer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(manifest: &str, texts: &[(&str, &str, &str)]) -> Snapshot {
        let registry = Registry::standard();
        let manifest = registry.parse_manifest(manifest).unwrap();
        let texts = texts
            .iter()
            .map(|(k, l, v)| (k.to_string(), l.to_string(), v.to_string()));
        registry
            .load(Snapshot::new((1, 0, None), "b".into(), manifest, texts))
            .unwrap()
    }

    #[test]
    fn text_warnings_name_missing_and_too_long_texts() {
        let manifest = r#"{
            "default_language": "ru",
            "commands": [{"command": "hours", "text": "hours", "description": "d"}],
            "menus": {"main": {"text": "menu_main", "buttons": [[{"label": "btn", "text": "hours"}]]}}
        }"#;
        let s = snapshot(
            manifest,
            &[
                // Only in English: Russian is the default, so users may see the raw key.
                ("menu_main", "en", "Menu"),
                ("hours", "ru", "9-5"),
                ("btn", "ru", &"😀".repeat(33)),
                ("menu_expired", "ru", &"x".repeat(201)),
            ],
        );
        let registry = Registry::standard();
        assert_eq!(registry.missing_texts(&s), ["menu_main"]);
        assert_eq!(
            s.warning(),
            "texts missing in ru: menu_main; texts too long: \
             menu_expired (ru): 201 UTF-16 units, limit 200, \
             btn (ru): 66 UTF-16 units, limit 64"
        );
        let fine = snapshot(
            manifest,
            &[
                ("menu_main", "ru", "Меню"),
                ("hours", "ru", "9-5"),
                ("btn", "ru", &"😀".repeat(32)),
            ],
        );
        assert_eq!(fine.warning(), "");
        assert_eq!(snapshot("{}", &[]).warning(), "");
        let m = registry.parse_manifest(manifest).unwrap();
        let texts = [
            ("hours", "ru", "9-5"),
            ("btn", "ru", "B"),
            ("menu_main", "ru", "M"),
        ];
        let texts = texts
            .iter()
            .map(|(k, l, v)| (k.to_string(), l.to_string(), v.to_string()));
        assert_eq!(
            registry.text_warnings_for(&m, texts).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            registry.text_warnings_for(&m, []).unwrap(),
            ["texts missing in ru: hours, menu_main, btn"]
        );
    }
}
