//! The core module: user registry, message history, commands, menus and admin stats.
//!
//! Everything here runs inside the update's transaction (see [`super`]); sends to Telegram
//! happen before the commit, so a crash between a send and the commit can repeat an answer
//! but never lose one or apply an effect twice.

use std::time::Duration;

use sqlx::PgConnection;
use teloxide::Bot;
use teloxide::payloads::{EditMessageTextSetters, SendMessageSetters};
use teloxide::prelude::Requester;
use teloxide::types::{
    CallbackQuery, ChatId, InlineKeyboardButton, InlineKeyboardMarkup, KeyboardButton,
    KeyboardMarkup, Me, Message, MessageId, ReplyMarkup, Update, UpdateKind, User,
};

use super::HandleError;
use crate::botdb::store::{self, Role, SeenUser};
use crate::content::manifest::{ButtonAction, MenuKind, MenuSpec};
use crate::content::snapshot::BotConfig;
use crate::content::texts::Vars;
use crate::telegram::{SendFailure, classify_send_error};

/// Attempts at one Bot API call before the update is left for a replay.
const SEND_ATTEMPTS: u32 = 4;
/// First delay between attempts of a failed call (doubles).
const SEND_RETRY_START: Duration = Duration::from_millis(500);
/// Longest path of menus kept in callback data (Telegram allows 64 bytes).
const MAX_CALLBACK_LEN: usize = 64;

/// Text used for `/start` when the bot has no `start` text.
const DEFAULT_START: &str = "Hello, {first_name}!";
/// Text used for `/help` when the bot has no `help` text.
const DEFAULT_HELP: &str = "Send /start to begin.";
/// Answer to a button of a menu that changed since its message was sent.
const DEFAULT_MENU_EXPIRED: &str = "This menu has changed.";

/// Handles one update inside its transaction.
pub async fn handle(
    bot: &Bot,
    me: &Me,
    update: &Update,
    config: &BotConfig,
    tx: &mut PgConnection,
) -> Result<(), HandleError> {
    match &update.kind {
        UpdateKind::Message(msg) => on_message(bot, me, msg, config, tx).await,
        UpdateKind::EditedMessage(msg) => {
            if let Some(user) = msg.from.as_ref() {
                touch(tx, user).await?;
            }
            Ok(())
        }
        UpdateKind::CallbackQuery(q) => on_callback(bot, q, config, tx).await,
        _ => Ok(()),
    }
}

async fn touch(tx: &mut PgConnection, user: &User) -> Result<(), HandleError> {
    store::touch_user(
        tx,
        &SeenUser {
            user_id: user_id(user),
            username: user.username.as_deref(),
            first_name: &user.first_name,
            last_name: user.last_name.as_deref(),
            language_code: user.language_code.as_deref(),
        },
    )
    .await?;
    Ok(())
}

fn user_id(user: &User) -> i64 {
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
    fn new(chat: ChatId, user: Option<&'a User>, config: &'a BotConfig) -> Self {
        Self {
            chat,
            user_id: user.map(user_id),
            lang: user.and_then(|u| u.language_code.as_deref()),
            vars: Vars {
                first_name: user.map(|u| u.first_name.as_str()).unwrap_or(""),
                username: user.and_then(|u| u.username.as_deref()).unwrap_or(""),
                bot_name: &config.bot_name,
            },
        }
    }

    fn text(&self, config: &BotConfig, key: &str) -> Option<String> {
        config.render(key, self.lang, &self.vars)
    }
}

async fn on_message(
    bot: &Bot,
    me: &Me,
    msg: &Message,
    config: &BotConfig,
    tx: &mut PgConnection,
) -> Result<(), HandleError> {
    let user = msg.from.as_ref();
    if let Some(user) = user {
        touch(tx, user).await?;
    }
    let audience = Audience::new(msg.chat.id, user, config);
    let content = msg
        .text()
        .or_else(|| msg.caption())
        .map(str::to_owned)
        .unwrap_or_else(|| "[non-text message]".into());
    store::add_message(tx, msg.chat.id.0, audience.user_id, Role::User, &content).await?;
    let Some(text) = msg.text() else {
        return Ok(());
    };
    if let Some((command, _args)) = parse_command(text, me.username()) {
        return on_command(bot, &command, msg, config, &audience, tx).await;
    }
    // A reply-keyboard button sends its label as text.
    if let Some((menu_name, action)) = find_reply_button(config, &audience, text) {
        return run_action(bot, config, &audience, tx, &menu_name, action, None).await;
    }
    Ok(())
}

/// Parses `/command@bot args`; a command addressed to another bot is ignored.
fn parse_command(text: &str, my_username: &str) -> Option<(String, String)> {
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
    bot: &Bot,
    command: &str,
    msg: &Message,
    config: &BotConfig,
    audience: &Audience<'_>,
    tx: &mut PgConnection,
) -> Result<(), HandleError> {
    let render_or = |key: &str, fallback: &str| {
        audience
            .text(config, key)
            .unwrap_or_else(|| crate::content::texts::render(fallback, &audience.vars))
    };
    match command {
        "start" => {
            let text = render_or("start", DEFAULT_START);
            send(bot, tx, audience, &text, None).await?;
            if let Some(main) = &config.manifest.main_menu {
                show_menu(bot, config, audience, tx, main, &[]).await?;
            }
        }
        "help" => {
            let text = render_or("help", DEFAULT_HELP);
            send(bot, tx, audience, &text, None).await?;
        }
        "menu" if config.manifest.main_menu.is_some() => {
            let main = config.manifest.main_menu.clone().unwrap_or_default();
            show_menu(bot, config, audience, tx, &main, &[]).await?;
        }
        "stats" if is_admin(config, msg) => {
            let s = store::stats(tx).await?;
            let text = format!(
                "Users: {} total, {} active today, {} in 7 days, {} blocked\nMessages today: {}",
                s.users_total, s.active_today, s.active_7d, s.blocked, s.messages_today
            );
            send(bot, tx, audience, &text, None).await?;
        }
        other => {
            let custom = config
                .manifest
                .commands
                .iter()
                .find(|c| c.command == other)
                .map(|c| c.text.clone());
            let text = match custom {
                Some(key) => audience.text(config, &key),
                None => audience.text(config, "unknown_command"),
            };
            if let Some(text) = text {
                send(bot, tx, audience, &text, None).await?;
            }
        }
    }
    Ok(())
}

fn is_admin(config: &BotConfig, msg: &Message) -> bool {
    msg.from
        .as_ref()
        .is_some_and(|u| config.manifest.admins.contains(&user_id(u)))
}

fn label(config: &BotConfig, audience: &Audience<'_>, key: &str) -> String {
    audience.text(config, key).unwrap_or_else(|| key.to_owned())
}

fn find_reply_button<'c>(
    config: &'c BotConfig,
    audience: &Audience<'_>,
    text: &str,
) -> Option<(String, ButtonAction<'c>)> {
    config
        .manifest
        .menus
        .iter()
        .filter(|(_, m)| m.kind == MenuKind::Reply)
        .find_map(|(name, menu)| {
            menu.buttons
                .iter()
                .flatten()
                .find(|b| label(config, audience, &b.label) == text)
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
    config: &BotConfig,
    audience: &Audience<'_>,
    menu: &MenuSpec,
    path: &[String],
) -> ReplyMarkup {
    match menu.kind {
        MenuKind::Inline => ReplyMarkup::InlineKeyboard(InlineKeyboardMarkup::new(
            menu.buttons.iter().enumerate().map(|(r, row)| {
                row.iter()
                    .enumerate()
                    .map(|(c, b)| {
                        InlineKeyboardButton::callback(
                            label(config, audience, &b.label),
                            callback_data(path, r, c),
                        )
                    })
                    .collect::<Vec<_>>()
            }),
        )),
        MenuKind::Reply => ReplyMarkup::Keyboard(
            KeyboardMarkup::new(menu.buttons.iter().map(|row| {
                row.iter()
                    .map(|b| KeyboardButton::new(label(config, audience, &b.label)))
                    .collect::<Vec<_>>()
            }))
            .resize_keyboard(),
        ),
    }
}

async fn show_menu(
    bot: &Bot,
    config: &BotConfig,
    audience: &Audience<'_>,
    tx: &mut PgConnection,
    name: &str,
    parents: &[String],
) -> Result<(), HandleError> {
    let Some(menu) = config.manifest.menus.get(name) else {
        return Ok(());
    };
    let mut path = parents.to_vec();
    path.push(name.to_owned());
    let text = label(config, audience, &menu.text);
    let markup = menu_markup(config, audience, menu, &path);
    send(bot, tx, audience, &text, Some(markup)).await
}

/// Runs a button's action. `edit` is the inline message to edit in place (None: send new).
async fn run_action(
    bot: &Bot,
    config: &BotConfig,
    audience: &Audience<'_>,
    tx: &mut PgConnection,
    menu_name: &str,
    action: ButtonAction<'_>,
    edit: Option<(MessageId, Vec<String>)>,
) -> Result<(), HandleError> {
    let Some((message_id, path)) = edit else {
        // Reply keyboards: show the text, or send the target menu.
        match action {
            ButtonAction::Text(key) => {
                let text = label(config, audience, key);
                send(bot, tx, audience, &text, None).await?;
            }
            ButtonAction::Menu(target) => {
                show_menu(bot, config, audience, tx, target, &[menu_name.to_owned()]).await?;
            }
            ButtonAction::Back => {
                if let Some(main) = config.manifest.main_menu.as_deref() {
                    show_menu(bot, config, audience, tx, main, &[]).await?;
                }
            }
        }
        return Ok(());
    };
    // Inline: edit the message in place.
    let (text, target_path) = match action {
        ButtonAction::Text(key) => (label(config, audience, key), path.clone()),
        ButtonAction::Menu(target) => {
            let mut p = path.clone();
            p.push(target.to_owned());
            let menu_text = config
                .manifest
                .menus
                .get(target)
                .map(|m| label(config, audience, &m.text))
                .unwrap_or_default();
            (menu_text, p)
        }
        ButtonAction::Back => {
            let mut p = path.clone();
            if p.len() > 1 {
                p.pop();
            }
            let current = p.last().cloned().unwrap_or_default();
            let menu_text = config
                .manifest
                .menus
                .get(&current)
                .map(|m| label(config, audience, &m.text))
                .unwrap_or_default();
            (menu_text, p)
        }
    };
    let current = target_path.last().cloned().unwrap_or_default();
    let markup = config
        .manifest
        .menus
        .get(&current)
        .filter(|m| m.kind == MenuKind::Inline)
        .map(|m| menu_markup(config, audience, m, &target_path));
    edit_text(bot, tx, audience, message_id, &text, markup).await
}

async fn on_callback(
    bot: &Bot,
    q: &CallbackQuery,
    config: &BotConfig,
    tx: &mut PgConnection,
) -> Result<(), HandleError> {
    touch(tx, &q.from).await?;
    let Some(message) = q.message.as_ref() else {
        answer_callback(bot, q, None).await?;
        return Ok(());
    };
    let audience = Audience::new(message.chat().id, Some(&q.from), config);
    let found = q
        .data
        .as_deref()
        .and_then(parse_callback)
        .and_then(|(path, row, col)| {
            let menu_name = path.last()?.clone();
            let button = config
                .manifest
                .menus
                .get(&menu_name)?
                .buttons
                .get(row)?
                .get(col)?;
            Some((path, menu_name, button.action()))
        });
    match found {
        Some((path, menu_name, action)) => {
            answer_callback(bot, q, None).await?;
            run_action(
                bot,
                config,
                &audience,
                tx,
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
                .text(config, "menu_expired")
                .unwrap_or_else(|| DEFAULT_MENU_EXPIRED.to_owned());
            answer_callback(bot, q, Some(&expired)).await?;
            if let Some(main) = config.manifest.main_menu.clone() {
                let menu = &config.manifest.menus[&main];
                if menu.kind == MenuKind::Inline {
                    let text = label(config, &audience, &menu.text);
                    let markup = menu_markup(config, &audience, menu, std::slice::from_ref(&main));
                    edit_text(bot, tx, &audience, message.id(), &text, Some(markup)).await?;
                }
            }
            Ok(())
        }
    }
}

/// Retries a Bot API call on 429 (waiting exactly `retry_after`) and on transient errors
/// (with doubling delays); maps the final outcome for the handler.
async fn call_with_retry<T, F, Fut>(what: &str, mut call: F) -> Result<CallOutcome<T>, HandleError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, teloxide::RequestError>>,
{
    let mut delay = SEND_RETRY_START;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Ok(v) => return Ok(CallOutcome::Done(v)),
            Err(e) => match classify_send_error(&e) {
                SendFailure::Blocked => return Ok(CallOutcome::Blocked),
                SendFailure::Unauthorized => return Err(HandleError::Unauthorized),
                SendFailure::Rejected(reason) => {
                    tracing::warn!(call = what, error = %reason, "Telegram refused the request");
                    return Ok(CallOutcome::Rejected);
                }
                SendFailure::RetryAfter(wait) if attempt < SEND_ATTEMPTS => {
                    tokio::time::sleep(wait).await;
                }
                SendFailure::Transient(_) | SendFailure::Unknown(_) if attempt < SEND_ATTEMPTS => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                SendFailure::Unknown(reason) => {
                    tracing::error!(call = what, error = %reason, attempts = attempt, "Telegram kept refusing the request; giving up on it");
                    return Ok(CallOutcome::Rejected);
                }
                SendFailure::RetryAfter(_) | SendFailure::Transient(_) => {
                    return Err(HandleError::Transient(format!(
                        "{what} failed {SEND_ATTEMPTS} times: {}",
                        crate::mask::redact(&e.to_string())
                    )));
                }
            },
        }
    }
}

enum CallOutcome<T> {
    Done(T),
    Blocked,
    Rejected,
}

/// Records what a send or edit of `text` came to: history when delivered, `blocked` on 403.
async fn record_outcome<T>(
    tx: &mut PgConnection,
    audience: &Audience<'_>,
    text: &str,
    outcome: CallOutcome<T>,
) -> Result<(), HandleError> {
    match outcome {
        CallOutcome::Done(_) => {
            store::add_message(tx, audience.chat.0, audience.user_id, Role::Bot, text).await?;
        }
        CallOutcome::Blocked => {
            if let Some(user) = audience.user_id {
                store::set_user_blocked(tx, user, true).await?;
            }
        }
        CallOutcome::Rejected => {}
    }
    Ok(())
}

async fn send(
    bot: &Bot,
    tx: &mut PgConnection,
    audience: &Audience<'_>,
    text: &str,
    markup: Option<ReplyMarkup>,
) -> Result<(), HandleError> {
    let outcome = call_with_retry("sendMessage", || {
        let request = bot.send_message(audience.chat, text);
        let request = match markup.clone() {
            Some(m) => request.reply_markup(m),
            None => request,
        };
        async move { request.await }
    })
    .await?;
    record_outcome(tx, audience, text, outcome).await
}

async fn edit_text(
    bot: &Bot,
    tx: &mut PgConnection,
    audience: &Audience<'_>,
    message_id: MessageId,
    text: &str,
    markup: Option<ReplyMarkup>,
) -> Result<(), HandleError> {
    let inline = match markup {
        Some(ReplyMarkup::InlineKeyboard(k)) => Some(k),
        _ => None,
    };
    let outcome = call_with_retry("editMessageText", || {
        let request = bot.edit_message_text(audience.chat, message_id, text);
        let request = match inline.clone() {
            Some(k) => request.reply_markup(k),
            None => request,
        };
        async move { request.await }
    })
    .await?;
    record_outcome(tx, audience, text, outcome).await
}

async fn answer_callback(
    bot: &Bot,
    q: &CallbackQuery,
    text: Option<&str>,
) -> Result<(), HandleError> {
    use teloxide::payloads::AnswerCallbackQuerySetters;
    call_with_retry("answerCallbackQuery", || {
        let request = bot.answer_callback_query(q.id.clone());
        let request = match text {
            Some(t) => request.text(t),
            None => request,
        };
        async move { request.await }
    })
    .await?;
    Ok(())
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
