//! The core module: the user registry, commands, menus, texts and the admin `/stats`.
//!
//! Runs inside the update's unit of work (see `runtime::dispatch`): users are recorded in the
//! update's transaction; answers are queued through [`UpdateCx`] (the outbox), and what they
//! came to is observed in [`Core::on_sent`] once the sender delivered them (a 403 marks the
//! user `blocked`).

mod section;
pub mod store;

pub use section::{
    ButtonAction, ButtonSpec, CommandSpec, CoreSection, MAX_LABEL_LEN, MAX_NOTICE_LEN, MenuKind,
    MenuSpec,
};

use std::sync::Arc;

use futures::future::BoxFuture;
use teloxide::types::{
    BotCommand, CallbackQuery, ChatId, InlineKeyboardButton, InlineKeyboardMarkup, KeyboardButton,
    KeyboardMarkup, Me, Message, MessageId, ReplyMarkup, UpdateKind, User,
};

use super::{Flow, Module, ModuleError, SentCx, UpdateCx};
use crate::content::manifest::{Manifest, ManifestError};
use crate::content::snapshot::{Section, Snapshot};
use crate::content::texts::{TextRef, Vars, render};
use crate::telegram::{Delivery, DeliveryOutcome};
use store::SeenUser;

/// The module's name.
const NAME: &str = "core";

/// Longest path of menus kept in callback data (Telegram allows 64 bytes).
const MAX_CALLBACK_LEN: usize = 64;

/// Text used for `/start` when the bot has no `start` text.
const DEFAULT_START: &str = "Hello, {first_name}!";
/// Text used for `/help` when the bot has no `help` text.
const DEFAULT_HELP: &str = "Send /start to begin.";
/// Answer to a button of a menu that changed since its message was sent.
const DEFAULT_MENU_EXPIRED: &str = "This menu has changed.";

/// The core module (always enabled).
#[derive(Debug, Clone, Copy, Default)]
pub struct Core;

impl Module for Core {
    fn name(&self) -> &'static str {
        NAME
    }

    fn manifest_keys(&self) -> &'static [&'static str] {
        section::KEYS
    }

    fn load(&self, manifest: &Manifest) -> Result<Option<Section>, ManifestError> {
        let section: CoreSection = manifest.section(section::KEYS)?;
        section.validate()?;
        Ok(Some(Arc::new(section)))
    }

    fn update_kinds(&self) -> &'static [&'static str] {
        &["message", "edited_message", "callback_query"]
    }

    fn commands(&self, snapshot: &Snapshot) -> Vec<BotCommand> {
        let section = core_section(snapshot);
        let mut commands = vec![
            BotCommand::new("start", "Start"),
            BotCommand::new("help", "Help"),
        ];
        if section.main_menu.is_some() {
            commands.push(BotCommand::new("menu", "Menu"));
        }
        commands.extend(
            section
                .commands
                .iter()
                .map(|c| BotCommand::new(&c.command, &c.description)),
        );
        commands
    }

    fn text_keys(&self, snapshot: &Snapshot) -> Vec<TextRef> {
        core_section(snapshot).text_keys()
    }

    fn on_update<'a>(
        &'a self,
        cx: &'a mut UpdateCx<'_>,
    ) -> BoxFuture<'a, Result<Flow, ModuleError>> {
        Box::pin(async move {
            match &cx.update.kind {
                UpdateKind::Message(msg) => on_message(cx, msg).await?,
                UpdateKind::EditedMessage(msg) => {
                    if let Some(user) = msg.from.as_ref() {
                        touch(cx, user).await?;
                    }
                }
                UpdateKind::CallbackQuery(q) => on_callback(cx, q).await?,
                _ => {}
            }
            Ok(Flow::Continue)
        })
    }

    fn on_sent<'a>(
        &'a self,
        cx: &'a mut SentCx<'_>,
        deliveries: &'a [Delivery],
    ) -> BoxFuture<'a, Result<(), ModuleError>> {
        Box::pin(async move {
            for d in deliveries {
                if let (DeliveryOutcome::Blocked, Some(user)) = (&d.outcome, d.user_id) {
                    store::set_user_blocked(cx.tx()?, user, true).await?;
                }
            }
            Ok(())
        })
    }
}

/// Core's section of a snapshot (core is always loaded; an empty section otherwise).
fn core_section(snapshot: &Snapshot) -> &CoreSection {
    static EMPTY: std::sync::OnceLock<CoreSection> = std::sync::OnceLock::new();
    snapshot
        .section::<CoreSection>(NAME)
        .unwrap_or_else(|| EMPTY.get_or_init(CoreSection::default))
}

/// Records that `user` wrote (the user registry), for modules that end the chain before core.
pub(crate) async fn touch(cx: &mut UpdateCx<'_>, user: &User) -> Result<(), ModuleError> {
    cx.touch_user(&SeenUser {
        user_id: user_id(user),
        username: user.username.as_deref(),
        first_name: &user.first_name,
        last_name: user.last_name.as_deref(),
        language_code: user.language_code.as_deref(),
    })
    .await
}

/// A Telegram user's id as the databases store it.
pub(crate) fn user_id(user: &User) -> i64 {
    i64::try_from(user.id.0).unwrap_or(i64::MAX)
}

/// Everything a reply needs to know about who it is for.
struct Audience<'a> {
    chat: ChatId,
    user_id: Option<i64>,
    lang: Option<&'a str>,
    vars: Vars<'a>,
}

impl<'a> Audience<'a> {
    /// `me` is the bot's Telegram identity (`{bot_name}` is its first name); the snapshot
    /// gives the panel's name (`{panel_name}`).
    fn new(chat: ChatId, user: Option<&'a User>, me: &'a Me, snapshot: &'a Snapshot) -> Self {
        Self {
            chat,
            user_id: user.map(user_id),
            lang: user.and_then(|u| u.language_code.as_deref()),
            vars: Vars {
                first_name: user.map(|u| u.first_name.as_str()).unwrap_or(""),
                username: user.and_then(|u| u.username.as_deref()).unwrap_or(""),
                bot_name: &me.user.first_name,
                panel_name: &snapshot.panel_name,
            },
        }
    }

    fn text(&self, snapshot: &Snapshot, key: &str) -> Option<String> {
        snapshot.render(key, self.lang, &self.vars)
    }

    /// The text for `key`, or the key itself (a label whose text is missing).
    fn label(&self, snapshot: &Snapshot, key: &str) -> String {
        self.text(snapshot, key).unwrap_or_else(|| key.to_owned())
    }
}

async fn send(
    cx: &mut UpdateCx<'_>,
    to: &Audience<'_>,
    text: &str,
    markup: Option<ReplyMarkup>,
) -> Result<(), ModuleError> {
    cx.send(to.chat, to.user_id, text, markup).await?;
    Ok(())
}

async fn on_message(cx: &mut UpdateCx<'_>, msg: &Message) -> Result<(), ModuleError> {
    let snapshot = cx.snapshot;
    let user = msg.from.as_ref();
    if let Some(user) = user {
        touch(cx, user).await?;
    }
    let audience = Audience::new(msg.chat.id, user, cx.me, snapshot);
    let Some(text) = msg.text() else {
        return Ok(());
    };
    if let Some((command, _args)) = parse_command(text, cx.me.username()) {
        return on_command(cx, &command, msg, &audience).await;
    }
    // A reply-keyboard button sends its label as text.
    if let Some((menu_name, action)) = find_reply_button(snapshot, &audience, text) {
        return run_action(cx, &audience, &menu_name, action, None).await;
    }
    reply_fallback(cx, &audience, "plain text").await
}

/// Answers a message nothing else answered with the manifest's `fallback` text; without one
/// (or without its value) the message gets no reply and one debug line says so.
async fn reply_fallback(
    cx: &mut UpdateCx<'_>,
    audience: &Audience<'_>,
    what: &'static str,
) -> Result<(), ModuleError> {
    let snapshot = cx.snapshot;
    let key = core_section(snapshot).fallback.as_deref();
    match key.and_then(|k| audience.text(snapshot, k)) {
        Some(text) => send(cx, audience, &text, None).await,
        None => {
            tracing::debug!(
                chat_id = audience.chat.0,
                kind = what,
                fallback = key,
                "no reply: nothing answers this message and no fallback text is set"
            );
            Ok(())
        }
    }
}

/// Parses `/command@bot args`; a command addressed to another bot is ignored.
pub(crate) fn parse_command(text: &str, my_username: &str) -> Option<(String, String)> {
    let rest = text.strip_prefix('/')?;
    let (head, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let (name, target) = head.split_once('@').unwrap_or((head, ""));
    if !target.is_empty() && !target.eq_ignore_ascii_case(my_username) {
        return None;
    }
    if name.is_empty() {
        return None;
    }
    Some((name.to_ascii_lowercase(), args.trim().to_owned()))
}

async fn on_command(
    cx: &mut UpdateCx<'_>,
    command: &str,
    msg: &Message,
    audience: &Audience<'_>,
) -> Result<(), ModuleError> {
    let snapshot = cx.snapshot;
    let section = core_section(snapshot);
    let render_or = |key: &str, fallback: &str| {
        audience
            .text(snapshot, key)
            .unwrap_or_else(|| render(fallback, &audience.vars))
    };
    match command {
        "start" => {
            let text = render_or("start", DEFAULT_START);
            send(cx, audience, &text, None).await?;
            if let Some(main) = &section.main_menu {
                show_menu(cx, audience, main, &[]).await?;
            }
        }
        "help" => {
            let text = render_or("help", DEFAULT_HELP);
            send(cx, audience, &text, None).await?;
        }
        "menu" if section.main_menu.is_some() => {
            let main = section.main_menu.clone().unwrap_or_default();
            show_menu(cx, audience, &main, &[]).await?;
        }
        "stats" if is_admin(snapshot, msg) => {
            let s = store::stats(cx.tx()?).await?;
            let text = format!(
                "Users: {} total, {} active today, {} in 7 days, {} blocked\nMessages today: {}",
                s.users_total, s.active_today, s.active_7d, s.blocked, s.messages_today
            );
            send(cx, audience, &text, None).await?;
        }
        other => {
            let custom = section.commands.iter().find(|c| c.command == other);
            match custom {
                Some(c) => match audience.text(snapshot, &c.text) {
                    Some(text) => send(cx, audience, &text, None).await?,
                    // Also a load-time warning in bot_status (Registry::text_warnings).
                    None => tracing::debug!(
                        chat_id = audience.chat.0,
                        command = other,
                        text = c.text.as_str(),
                        "no reply: the command's text is not set"
                    ),
                },
                None => match audience.text(snapshot, "unknown_command") {
                    Some(text) => send(cx, audience, &text, None).await?,
                    None => reply_fallback(cx, audience, "unknown command").await?,
                },
            }
        }
    }
    Ok(())
}

fn is_admin(snapshot: &Snapshot, msg: &Message) -> bool {
    msg.from
        .as_ref()
        .is_some_and(|u| snapshot.manifest.admins.contains(&user_id(u)))
}

fn find_reply_button<'c>(
    snapshot: &'c Snapshot,
    audience: &Audience<'_>,
    text: &str,
) -> Option<(String, ButtonAction<'c>)> {
    core_section(snapshot)
        .menus
        .iter()
        .filter(|(_, m)| m.kind == MenuKind::Reply)
        .find_map(|(name, menu)| {
            menu.buttons
                .iter()
                .flatten()
                .find(|b| audience.label(snapshot, &b.label) == text)
                .map(|b| (name.clone(), b.action()))
        })
}

/// Callback data of an inline button: `b|<path of menus>|<row>|<col>`.
fn callback_data(path: &[String], row: usize, col: usize) -> String {
    let mut kept: &[String] = path;
    loop {
        let data = format!("b|{}|{row}|{col}", kept.join("/"));
        if data.len() <= MAX_CALLBACK_LEN || kept.len() <= 1 {
            return data;
        }
        kept = &kept[1..];
    }
}

fn parse_callback(data: &str) -> Option<(Vec<String>, usize, usize)> {
    let mut parts = data.split('|');
    if parts.next()? != "b" {
        return None;
    }
    let path: Vec<String> = parts.next()?.split('/').map(str::to_owned).collect();
    let row = parts.next()?.parse().ok()?;
    let col = parts.next()?.parse().ok()?;
    Some((path, row, col))
}

fn menu_markup(
    snapshot: &Snapshot,
    audience: &Audience<'_>,
    menu: &MenuSpec,
    path: &[String],
) -> ReplyMarkup {
    match menu.kind {
        MenuKind::Inline => {
            ReplyMarkup::InlineKeyboard(inline_markup(snapshot, audience, menu, path))
        }
        MenuKind::Reply => ReplyMarkup::Keyboard(
            KeyboardMarkup::new(menu.buttons.iter().map(|row| {
                row.iter()
                    .map(|b| KeyboardButton::new(audience.label(snapshot, &b.label)))
                    .collect::<Vec<_>>()
            }))
            .resize_keyboard(),
        ),
    }
}

fn inline_markup(
    snapshot: &Snapshot,
    audience: &Audience<'_>,
    menu: &MenuSpec,
    path: &[String],
) -> InlineKeyboardMarkup {
    InlineKeyboardMarkup::new(menu.buttons.iter().enumerate().map(|(r, row)| {
        row.iter()
            .enumerate()
            .map(|(c, b)| {
                InlineKeyboardButton::callback(
                    audience.label(snapshot, &b.label),
                    callback_data(path, r, c),
                )
            })
            .collect::<Vec<_>>()
    }))
}

async fn show_menu(
    cx: &mut UpdateCx<'_>,
    audience: &Audience<'_>,
    name: &str,
    parents: &[String],
) -> Result<(), ModuleError> {
    let snapshot = cx.snapshot;
    let Some(menu) = core_section(snapshot).menus.get(name) else {
        return Ok(());
    };
    let mut path = parents.to_vec();
    path.push(name.to_owned());
    let text = audience.label(snapshot, &menu.text);
    let markup = menu_markup(snapshot, audience, menu, &path);
    send(cx, audience, &text, Some(markup)).await
}

/// Runs a button's action. `edit` is the inline message to edit in place (None: send new).
async fn run_action(
    cx: &mut UpdateCx<'_>,
    audience: &Audience<'_>,
    menu_name: &str,
    action: ButtonAction<'_>,
    edit: Option<(MessageId, Vec<String>)>,
) -> Result<(), ModuleError> {
    let snapshot = cx.snapshot;
    let section = core_section(snapshot);
    let Some((message_id, path)) = edit else {
        // Reply keyboards: show the text, or send the target menu.
        match action {
            ButtonAction::Text(key) => {
                let text = audience.label(snapshot, key);
                send(cx, audience, &text, None).await?;
            }
            ButtonAction::Menu(target) => {
                show_menu(cx, audience, target, &[menu_name.to_owned()]).await?;
            }
            ButtonAction::Back => {
                if let Some(main) = section.main_menu.as_deref() {
                    show_menu(cx, audience, main, &[]).await?;
                }
            }
        }
        return Ok(());
    };
    // Inline: edit the message in place.
    let menu_text = |name: &str| {
        section
            .menus
            .get(name)
            .map(|m| audience.label(snapshot, &m.text))
            .unwrap_or_default()
    };
    let (text, target_path) = match action {
        ButtonAction::Text(key) => (audience.label(snapshot, key), path.clone()),
        ButtonAction::Menu(target) => {
            let mut p = path.clone();
            p.push(target.to_owned());
            (menu_text(target), p)
        }
        ButtonAction::Back => {
            let mut p = path.clone();
            if p.len() > 1 {
                p.pop();
            }
            let current = p.last().cloned().unwrap_or_default();
            (menu_text(&current), p)
        }
    };
    let current = target_path.last().cloned().unwrap_or_default();
    let markup = section
        .menus
        .get(&current)
        .filter(|m| m.kind == MenuKind::Inline)
        .map(|m| inline_markup(snapshot, audience, m, &target_path));
    cx.edit(audience.chat, audience.user_id, message_id, &text, markup)
        .await?;
    Ok(())
}

async fn on_callback(cx: &mut UpdateCx<'_>, q: &CallbackQuery) -> Result<(), ModuleError> {
    let snapshot = cx.snapshot;
    let section = core_section(snapshot);
    touch(cx, &q.from).await?;
    let Some(message) = q.message.as_ref() else {
        let chat = ChatId(i64::try_from(q.from.id.0).unwrap_or(i64::MAX));
        cx.answer_callback(chat, &q.id, None).await?;
        return Ok(());
    };
    let audience = Audience::new(message.chat().id, Some(&q.from), cx.me, snapshot);
    let found = q
        .data
        .as_deref()
        .and_then(parse_callback)
        .and_then(|(path, row, col)| {
            let menu_name = path.last()?.clone();
            let button = section.menus.get(&menu_name)?.buttons.get(row)?.get(col)?;
            Some((path, menu_name, button.action()))
        });
    match found {
        Some((path, menu_name, action)) => {
            cx.answer_callback(audience.chat, &q.id, None).await?;
            run_action(
                cx,
                &audience,
                &menu_name,
                action,
                Some((message.id(), path)),
            )
            .await
        }
        None => {
            // The menu changed (hot reload) since this message was sent: say so and show
            // the current main menu in place.
            let expired = audience
                .text(snapshot, "menu_expired")
                .unwrap_or_else(|| DEFAULT_MENU_EXPIRED.to_owned());
            cx.answer_callback(audience.chat, &q.id, Some(&expired))
                .await?;
            if let Some(main) = section.main_menu.clone() {
                let menu = &section.menus[&main];
                if menu.kind == MenuKind::Inline {
                    let text = audience.label(snapshot, &menu.text);
                    let markup =
                        inline_markup(snapshot, &audience, menu, std::slice::from_ref(&main));
                    cx.edit(
                        audience.chat,
                        audience.user_id,
                        message.id(),
                        &text,
                        Some(markup),
                    )
                    .await?;
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        let cases = [
            ("/start", Some(("start", ""))),
            ("/Help me please", Some(("help", "me please"))),
            ("/start@my_bot", Some(("start", ""))),
            ("/start@other_bot", None),
            ("/", None),
            ("hello", None),
        ];
        for (text, expected) in cases {
            let got = parse_command(text, "my_bot");
            assert_eq!(
                got.as_ref().map(|(c, a)| (c.as_str(), a.as_str())),
                expected,
                "{text}"
            );
        }
    }

    #[test]
    fn callback_data_round_trips_and_fits_telegram() {
        let path = vec!["main".to_string(), "about".to_string()];
        let data = callback_data(&path, 1, 0);
        assert_eq!(parse_callback(&data), Some((path, 1, 0)));
        let long: Vec<String> = (0..10).map(|i| format!("menu_number_{i}")).collect();
        let data = callback_data(&long, 3, 4);
        assert!(data.len() <= MAX_CALLBACK_LEN, "{data}");
        let (path, _, _) = parse_callback(&data).unwrap();
        assert_eq!(path.last(), long.last());
        assert_eq!(parse_callback("garbage"), None);
    }
}
