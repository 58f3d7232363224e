//! The sandbox seen through teloxide: its own `Bot`, a `Dispatcher` echo bot, long polling,
//! conflicts, webhooks and the error mapping.

#[path = "common/sandbox_util.rs"]
mod util;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::HeaderMap;
use botvisor::sandbox::{Fault, InjectCallback, InjectMessage, SentKind};
use teloxide::prelude::*;
use teloxide::types::{
    BotCommand, ChatAction, InlineKeyboardButton, InlineKeyboardMarkup, InputFile, KeyboardButton,
    KeyboardMarkup, MessageId, ParseMode, ReplyParameters,
};
use teloxide::{ApiError, RequestError};
use util::{eventually, start, start_with, token};

const CHAT: i64 = 4242;
const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn get_me_returns_the_registered_bot() {
    let sb = start().await;
    let t = token(1001);
    sb.handle.register_bot(&t, Some("echo_test_bot")).unwrap();
    let me = sb.bot(&t).get_me().await.unwrap();
    assert_eq!(me.id.0, 1001);
    assert!(me.is_bot);
    assert_eq!(me.username(), "echo_test_bot");
    // teloxide says "GetMe"; the counter uses Telegram's spelling.
    assert_eq!(sb.handle.stats().calls(&t, "getMe"), 1);
}

#[tokio::test]
async fn dispatcher_echo_bot_answers_through_the_sandbox() {
    let sb = start().await;
    let t = token(1002);
    sb.handle.register_bot(&t, None).unwrap();
    let bot = sb.bot(&t);
    let mut listener = teloxide::update_listeners::Polling::builder(bot.clone())
        .timeout(Duration::from_secs(5))
        .build();
    // Take the stop token before the dispatcher owns the listener.
    let stop_token = teloxide::update_listeners::UpdateListener::stop_token(&mut listener);
    let handler = Update::filter_message().endpoint(|bot: Bot, msg: Message| async move {
        let text = msg.text().unwrap_or_default().to_owned();
        bot.send_message(msg.chat.id, format!("echo: {text}"))
            .await?;
        Ok::<(), RequestError>(())
    });
    let mut dispatcher = Dispatcher::builder(bot, handler).build();
    let task = tokio::spawn(async move {
        dispatcher
            .try_dispatch_with_listener(
                listener,
                LoggingErrorHandler::with_custom_text("sandbox echo listener"),
            )
            .await
    });

    sb.handle
        .inject_message(InjectMessage::private(&t, CHAT, "hello"))
        .unwrap();
    sb.handle
        .inject_message(InjectMessage::private(&t, CHAT, "/start"))
        .unwrap();
    let mut texts = Vec::new();
    let mut after = 0;
    while texts.len() < 2 {
        let events = sb.handle.wait_sent(&t, CHAT, after, WAIT).await.unwrap();
        assert!(!events.is_empty(), "the echo bot did not answer in time");
        for e in events {
            after = e.seq;
            texts.push(e.text().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(texts, ["echo: hello", "echo: /start"]);

    stop_token.stop();
    let result = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the dispatcher stops")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(sb.handle.stats().bots[&t].pending_updates, 0);
    assert_eq!(sb.handle.stats().conflicts(&t), 0);
}

#[tokio::test]
async fn offsets_confirm_updates_and_nothing_is_lost_or_repeated() {
    let sb = start().await;
    let t = token(1003);
    sb.handle.register_bot(&t, None).unwrap();
    let bot = sb.bot(&t);
    let mut injected = Vec::new();
    for i in 0..3 {
        injected.push(
            sb.handle
                .inject_message(InjectMessage::private(&t, CHAT, &format!("m{i}")))
                .unwrap(),
        );
    }
    // Without an offset nothing is confirmed: the same batch twice.
    let first = bot.get_updates().await.unwrap();
    let again = bot.get_updates().limit(2).await.unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(again.len(), 2);
    assert_eq!(first[0].id, again[0].id);

    // Confirm the first two; the third stays.
    let next = first[1].id.as_offset();
    let rest = bot.get_updates().offset(next).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(i64::from(rest[0].id.0), injected[2]);

    // A long poll returns as soon as an update arrives.
    let offset = rest[0].id.as_offset();
    let poll = tokio::spawn({
        let bot = bot.clone();
        async move { bot.get_updates().offset(offset).timeout(10).await }
    });
    let started = tokio::time::Instant::now();
    let h = sb.handle.clone();
    eventually(WAIT, || (h.stats().long_polls == 1).then_some(())).await;
    let late = sb
        .handle
        .inject_message(InjectMessage::private(&t, CHAT, "late"))
        .unwrap();
    let got = poll.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert_eq!(i64::from(got[0].id.0), late);

    // Everything confirmed: an empty short poll, and the queue is empty.
    let none = bot
        .get_updates()
        .offset(got[0].id.as_offset())
        .await
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(sb.handle.stats().bots[&t].pending_updates, 0);
    // An empty long poll waits for its timeout and returns nothing.
    let started = tokio::time::Instant::now();
    assert!(bot.get_updates().timeout(1).await.unwrap().is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn allowed_updates_filters_kinds() {
    let sb = start().await;
    let t = token(1004);
    sb.handle.register_bot(&t, None).unwrap();
    let bot = sb.bot(&t);
    let sent = bot.send_message(ChatId(CHAT), "x").await;
    assert!(matches!(
        sent,
        Err(RequestError::Api(ApiError::ChatNotFound))
    ));
    sb.handle
        .inject_message(InjectMessage::private(&t, CHAT, "hi"))
        .unwrap();
    sb.handle
        .inject_callback(InjectCallback {
            token: t.clone(),
            chat_id: CHAT,
            callback_data: "press".into(),
            ..Default::default()
        })
        .unwrap();
    let only_callbacks = bot
        .get_updates()
        .allowed_updates([teloxide::types::AllowedUpdate::CallbackQuery])
        .await
        .unwrap();
    assert_eq!(only_callbacks.len(), 1);
    assert!(matches!(
        only_callbacks[0].kind,
        teloxide::types::UpdateKind::CallbackQuery(_)
    ));
}

#[tokio::test]
async fn a_second_get_updates_terminates_the_first_with_409() {
    let sb = start().await;
    let t = token(1005);
    sb.handle.register_bot(&t, None).unwrap();
    let bot = sb.bot(&t);
    let first = tokio::spawn({
        let bot = bot.clone();
        async move { bot.get_updates().timeout(10).await }
    });
    let h = sb.handle.clone();
    eventually(WAIT, || (h.stats().long_polls == 1).then_some(())).await;
    let second = bot.get_updates().await;
    assert!(second.unwrap().is_empty());
    let first = first.await.unwrap();
    assert!(
        matches!(
            first,
            Err(RequestError::Api(ApiError::TerminatedByOtherGetUpdates))
        ),
        "{first:?}"
    );
    assert_eq!(sb.handle.stats().conflicts(&t), 1);
}

#[tokio::test]
async fn a_dropped_long_poll_releases_its_marker() {
    let sb = start().await;
    let t = token(1006);
    sb.handle.register_bot(&t, None).unwrap();
    let url = sb.method(&t, "getUpdates");
    let poll = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&serde_json::json!({"timeout": 30}))
            .send()
            .await
    });
    let h = sb.handle.clone();
    eventually(WAIT, || (h.stats().long_polls == 1).then_some(())).await;
    poll.abort();
    // The client hung up: the server notices and releases the poll.
    eventually(WAIT, || (h.stats().long_polls == 0).then_some(())).await;
    let bot = sb.bot(&t);
    assert!(bot.get_updates().await.unwrap().is_empty());
    assert_eq!(sb.handle.stats().conflicts(&t), 0);
}

/// A webhook receiver that fails its first `fail_first` deliveries with 500.
async fn receiver(
    fail_first: usize,
) -> (
    url::Url,
    Arc<AtomicUsize>,
    tokio::sync::mpsc::Receiver<(HeaderMap, serde_json::Value)>,
) {
    let attempts = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let attempts = Arc::clone(&attempts);
            move |headers: HeaderMap, body: axum::Json<serde_json::Value>| {
                let attempts = Arc::clone(&attempts);
                let tx = tx.clone();
                async move {
                    let n = attempts.fetch_add(1, Ordering::SeqCst);
                    if n < fail_first {
                        return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    let _ = tx.send((headers, body.0)).await;
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook").parse().unwrap(), attempts, rx)
}

#[tokio::test]
async fn webhook_delivers_with_secret_and_retries_failures() {
    let sb = start().await;
    let t = token(1007);
    sb.handle.register_bot(&t, None).unwrap();
    let bot = sb.bot(&t);
    let (url, attempts, mut rx) = receiver(2).await;
    bot.set_webhook(url.clone())
        .secret_token("s3cret-Token_1".to_owned())
        .await
        .unwrap();
    let update_id = sb
        .handle
        .inject_message(InjectMessage::private(&t, CHAT, "via webhook"))
        .unwrap();
    let (headers, body) = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        headers["x-telegram-bot-api-secret-token"].to_str().unwrap(),
        "s3cret-Token_1"
    );
    assert_eq!(body["update_id"], update_id);
    assert_eq!(body["message"]["text"], "via webhook");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);

    let h = sb.handle.clone();
    eventually(WAIT, || {
        (h.stats().bots[&t].pending_updates == 0).then_some(())
    })
    .await;
    let info = bot.get_webhook_info().await.unwrap();
    assert_eq!(info.url.as_ref(), Some(&url));
    assert_eq!(info.pending_update_count, 0);
    assert!(info.last_error_date.is_some());
    assert_eq!(
        info.last_error_message.as_deref(),
        Some("Wrong response from the webhook: 500 Internal Server Error")
    );

    // getUpdates is refused while the webhook is set.
    let refused = bot.get_updates().await;
    match refused {
        Err(RequestError::Api(ApiError::Unknown(d))) => assert_eq!(
            d,
            "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first"
        ),
        other => panic!("expected a 409, got {other:?}"),
    }
    assert_eq!(sb.handle.stats().conflicts(&t), 1);
    bot.delete_webhook().await.unwrap();
    sb.handle
        .inject_message(InjectMessage::private(&t, CHAT, "polled"))
        .unwrap();
    let polled = bot.get_updates().await.unwrap();
    assert_eq!(polled.len(), 1);
    assert!(bot.get_webhook_info().await.unwrap().url.is_none());
}

#[tokio::test]
async fn errors_surface_as_teloxide_variants() {
    let sb = start_with(false, true).await;
    let t = token(1008);
    sb.handle.register_bot(&t, None).unwrap();
    let bot = sb.bot(&t);

    // 401: unknown token, then a revoked one.
    let stranger = sb.bot(&token(999));
    assert!(matches!(
        stranger.get_me().await,
        Err(RequestError::Api(ApiError::InvalidToken))
    ));

    sb.handle
        .inject_message(InjectMessage::private(&t, CHAT, "hi"))
        .unwrap();
    let cases: Vec<(&str, Result<Message, RequestError>)> = vec![
        ("empty", bot.send_message(ChatId(CHAT), "  ").await),
        (
            "long",
            bot.send_message(ChatId(CHAT), "x".repeat(4097)).await,
        ),
        ("chat", bot.send_message(ChatId(777), "x").await),
        (
            "parse",
            bot.send_message(ChatId(CHAT), "<b>bold")
                .parse_mode(ParseMode::Html)
                .await,
        ),
    ];
    for (name, result) in cases {
        let ok = match (name, &result) {
            ("empty", Err(RequestError::Api(ApiError::MessageTextIsEmpty))) => true,
            ("long", Err(RequestError::Api(ApiError::MessageIsTooLong))) => true,
            ("chat", Err(RequestError::Api(ApiError::ChatNotFound))) => true,
            ("parse", Err(RequestError::Api(ApiError::CantParseEntities(d)))) => {
                d == "Bad Request: can't parse entities: Can't find end tag corresponding to start tag \"b\""
            }
            _ => false,
        };
        assert!(ok, "{name}: {result:?}");
    }

    // 429: one message per second in a private chat, after a burst of three.
    for text in ["first", "second", "third"] {
        bot.send_message(ChatId(CHAT), text).await.unwrap();
    }
    let limited = bot.send_message(ChatId(CHAT), "fourth").await;
    assert!(
        matches!(limited, Err(RequestError::RetryAfter(s)) if s.seconds() == 1),
        "{limited:?}"
    );

    // 429 from a fault carries its retry_after.
    sb.handle
        .add_fault(Fault {
            token: Some(t.clone()),
            method: Some("getMe".into()),
            status: 429,
            retry_after: Some(7),
            count: Some(1),
            ..Default::default()
        })
        .unwrap();
    assert!(matches!(
        bot.get_me().await,
        Err(RequestError::RetryAfter(s)) if s.seconds() == 7
    ));
    assert!(bot.get_me().await.is_ok(), "the fault was used up");

    // 403: the user blocked the bot.
    sb.handle.block_user(&t, CHAT).unwrap();
    assert!(matches!(
        bot.send_chat_action(ChatId(CHAT), ChatAction::Typing).await,
        Err(RequestError::Api(ApiError::BotBlocked))
    ));
    sb.handle.unblock_user(&t, CHAT).unwrap();
    bot.send_chat_action(ChatId(CHAT), ChatAction::Typing)
        .await
        .unwrap();

    // 401 after revocation, counted but refused.
    sb.handle.revoke_bot(&t).unwrap();
    assert!(matches!(
        bot.get_me().await,
        Err(RequestError::Api(ApiError::InvalidToken))
    ));
    assert_eq!(sb.handle.stats().calls(&t, "getMe"), 3);
    assert!(sb.handle.stats().bots[&t].revoked);
}

#[tokio::test]
async fn messages_keyboards_edits_and_callbacks() {
    let sb = start().await;
    let t = token(1009);
    sb.handle.register_bot(&t, Some("menu_test_bot")).unwrap();
    let bot = sb.bot(&t);
    let user_msg = sb
        .handle
        .inject_message(InjectMessage::private(&t, CHAT, "menu"))
        .unwrap();
    assert_eq!(user_msg, 1);

    let keyboard = InlineKeyboardMarkup::new([[
        InlineKeyboardButton::callback("Yes", "yes"),
        InlineKeyboardButton::url("Site", "https://example.org".parse().unwrap()),
    ]]);
    let menu = bot
        .send_message(ChatId(CHAT), "Pick *one*")
        .parse_mode(ParseMode::MarkdownV2)
        .reply_markup(keyboard.clone())
        .reply_parameters(ReplyParameters::new(MessageId(1)))
        .await
        .unwrap();
    assert_eq!(
        menu.id,
        MessageId(2),
        "ids count per chat, user message first"
    );
    assert_eq!(menu.text(), Some("Pick one"));
    assert_eq!(menu.from.as_ref().unwrap().id.0, 1009);
    assert!(menu.from.as_ref().unwrap().is_bot);
    assert_eq!(menu.reply_markup(), Some(&keyboard));
    assert_eq!(menu.reply_to_message().unwrap().text(), Some("menu"));
    assert_eq!(menu.entities().unwrap().len(), 1);

    // A reply keyboard is recorded but is not part of the Message.
    let kb = bot
        .send_message(ChatId(CHAT), "Choose")
        .reply_markup(KeyboardMarkup::new([[KeyboardButton::new("A")]]).resize_keyboard())
        .await
        .unwrap();
    assert!(kb.reply_markup().is_none());

    // A press on the menu and its answer.
    sb.handle
        .inject_callback(InjectCallback {
            token: t.clone(),
            chat_id: CHAT,
            callback_data: "yes".into(),
            message_id: Some(menu.id.0),
            ..Default::default()
        })
        .unwrap();
    let updates = bot.get_updates().offset(2).await.unwrap();
    let teloxide::types::UpdateKind::CallbackQuery(q) = &updates[0].kind else {
        panic!("expected a callback query: {updates:?}");
    };
    assert_eq!(q.data.as_deref(), Some("yes"));
    assert_eq!(q.regular_message().unwrap().id, menu.id);
    bot.answer_callback_query(q.id.clone())
        .text("done")
        .await
        .unwrap();
    assert!(matches!(
        bot.answer_callback_query(q.id.clone()).await,
        Err(RequestError::Api(ApiError::InvalidQueryId))
    ));

    let edited = bot
        .edit_message_text(ChatId(CHAT), menu.id, "Picked")
        .await
        .unwrap();
    assert_eq!(edited.text(), Some("Picked"));
    assert!(
        edited.reply_markup().is_none(),
        "no markup given removes it"
    );
    assert!(matches!(
        bot.edit_message_text(ChatId(CHAT), menu.id, "Picked").await,
        Err(RequestError::Api(ApiError::MessageNotModified))
    ));
    bot.edit_message_reply_markup(ChatId(CHAT), menu.id)
        .reply_markup(keyboard.clone())
        .await
        .unwrap();
    assert!(matches!(
        bot.edit_message_text(ChatId(CHAT), MessageId(1), "x").await,
        Err(RequestError::Api(ApiError::MessageCantBeEdited))
    ));
    let fwd = bot
        .forward_message(ChatId(CHAT), ChatId(CHAT), MessageId(1))
        .await
        .unwrap();
    assert!(fwd.forward_origin().is_some());
    let copy = bot
        .copy_message(ChatId(CHAT), ChatId(CHAT), menu.id)
        .await
        .unwrap();
    bot.delete_message(ChatId(CHAT), kb.id).await.unwrap();
    assert!(matches!(
        bot.delete_message(ChatId(CHAT), kb.id).await,
        Err(RequestError::Api(ApiError::MessageToDeleteNotFound))
    ));
    bot.send_chat_action(ChatId(CHAT), ChatAction::Typing)
        .await
        .unwrap();

    let events = sb.handle.sent(&t, CHAT, 0).unwrap();
    let kinds: Vec<String> = events.iter().map(|e| e.method.clone()).collect();
    assert_eq!(
        kinds,
        [
            "sendMessage",
            "sendMessage",
            "answerCallbackQuery",
            "editMessageText",
            "editMessageReplyMarkup",
            "forwardMessage",
            "copyMessage",
            "deleteMessage",
            "sendChatAction",
        ]
    );
    match &events[0].kind {
        SentKind::Message {
            message_id,
            text,
            reply_markup,
            edited,
            deleted,
            ..
        } => {
            assert_eq!(*message_id, menu.id.0);
            assert_eq!(
                text.as_deref(),
                Some("Picked"),
                "current text after the edit"
            );
            assert!(
                reply_markup
                    .as_ref()
                    .unwrap()
                    .get("inline_keyboard")
                    .is_some()
            );
            assert!(*edited && !*deleted);
        }
        other => panic!("{other:?}"),
    }
    match &events[1].kind {
        SentKind::Message {
            reply_markup,
            deleted,
            ..
        } => {
            assert_eq!(reply_markup.as_ref().unwrap()["resize_keyboard"], true);
            assert!(*deleted);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&events[2].kind, SentKind::CallbackAnswer { text: Some(x), .. } if x == "done")
    );
    assert!(
        matches!(&events[6].kind, SentKind::Message { message_id, .. } if *message_id == copy.0)
    );
    let later = sb.handle.sent(&t, CHAT, events[7].seq).unwrap();
    assert_eq!(later.len(), 1);
    assert!(matches!(&later[0].kind, SentKind::ChatAction { action } if action == "typing"));
}

#[tokio::test]
async fn commands_round_trip() {
    let sb = start().await;
    let t = token(1010);
    sb.handle.register_bot(&t, None).unwrap();
    let bot = sb.bot(&t);
    assert!(bot.get_my_commands().await.unwrap().is_empty());
    let commands = vec![
        BotCommand::new("start", "Start the bot"),
        BotCommand::new("help", "Show help"),
    ];
    bot.set_my_commands(commands.clone()).await.unwrap();
    assert_eq!(bot.get_my_commands().await.unwrap(), commands);
    assert!(
        bot.get_my_commands()
            .language_code("de")
            .await
            .unwrap()
            .is_empty(),
        "commands are kept per language"
    );
    assert!(matches!(
        bot.set_my_commands([BotCommand::new("Bad Command", "x")]).await,
        Err(RequestError::Api(ApiError::Unknown(d))) if d == "Bad Request: BOT_COMMAND_INVALID"
    ));
    bot.delete_my_commands().await.unwrap();
    assert!(bot.get_my_commands().await.unwrap().is_empty());
}

#[tokio::test]
async fn photos_and_documents_keep_metadata() {
    let sb = start().await;
    let t = token(1011);
    sb.handle.register_bot(&t, None).unwrap();
    let bot = sb.bot(&t);
    sb.handle
        .inject_message(InjectMessage::private(&t, CHAT, "hi"))
        .unwrap();
    let photo = bot
        .send_photo(
            ChatId(CHAT),
            InputFile::memory(vec![7u8; 1234]).file_name("cat.png"),
        )
        .caption("<i>cat</i>")
        .parse_mode(ParseMode::Html)
        .await
        .unwrap();
    let sizes = photo.photo().unwrap();
    assert_eq!(sizes[0].file.size, 1234);
    assert_eq!(photo.caption(), Some("cat"));
    let doc = bot
        .send_document(
            ChatId(CHAT),
            InputFile::memory(b"hello".to_vec()).file_name("notes.txt"),
        )
        .await
        .unwrap();
    let d = doc.document().unwrap();
    assert_eq!(d.file_name.as_deref(), Some("notes.txt"));
    assert_eq!(d.file.size, 5);
    // Sending by file_id reuses the stored metadata.
    let again = bot
        .send_document(ChatId(CHAT), InputFile::file_id(d.file.id.clone()))
        .await
        .unwrap();
    assert_eq!(
        again.document().unwrap().file_name.as_deref(),
        Some("notes.txt")
    );
    assert!(matches!(
        bot.send_document(ChatId(CHAT), InputFile::file_id("nope".into()))
            .await,
        Err(RequestError::Api(ApiError::WrongFileIdOrUrl))
    ));
}

#[tokio::test]
async fn raw_http_forms_case_and_unknown_methods() {
    let sb = start_with(true, false).await;
    let t = token(1012);
    let http = reqwest::Client::new();
    // accept_any_token registers a well-formed token on first use; names are case-insensitive.
    let r = http.get(sb.method(&t, "GETME")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["ok"], true);
    assert_eq!(body["result"]["id"], 1012);
    for field in [
        "can_join_groups",
        "can_read_all_group_messages",
        "supports_inline_queries",
        "has_main_web_app",
    ] {
        assert!(body["result"][field].is_boolean(), "{field}");
    }

    sb.handle
        .inject_message(InjectMessage::private(&t, CHAT, "hi"))
        .unwrap();
    // urlencoded body with reply_markup as JSON text.
    let r = http
        .post(sb.method(&t, "sendmessage"))
        .form(&[
            ("chat_id", CHAT.to_string()),
            ("text", "form".to_owned()),
            (
                "reply_markup",
                r#"{"inline_keyboard":[[{"text":"a","callback_data":"b"}]]}"#.to_owned(),
            ),
        ])
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["result"]["reply_markup"]["inline_keyboard"][0][0]["text"],
        "a"
    );
    // Query-string parameters.
    let r = http
        .get(format!(
            "{}?chat_id={CHAT}&text=query",
            sb.method(&t, "sendMessage")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let r = http
        .post(sb.method(&t, "noSuchMethod"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"ok": false, "error_code": 404, "description": "Not Found"})
    );
    let r = http
        .get(sb.method("garbage", "getMe"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A 500 fault (teloxide would sleep 10 s on it, so plain HTTP here) and a delay.
    sb.handle
        .add_fault(Fault {
            method: Some("GetMe".into()),
            status: 500,
            count: Some(1),
            ..Default::default()
        })
        .unwrap();
    let r = http.get(sb.method(&t, "getMe")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["description"], "Internal Server Error");
    assert_eq!(
        http.get(sb.method(&t, "getMe"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    sb.handle
        .add_fault(Fault {
            token: Some(t.clone()),
            method: Some("sendMessage".into()),
            status: 200,
            delay_ms: Some(300),
            count: Some(1),
            ..Default::default()
        })
        .unwrap();
    let started = tokio::time::Instant::now();
    let r = http
        .post(sb.method(&t, "sendMessage"))
        .json(&serde_json::json!({"chat_id": CHAT, "text": "slow"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(sb.handle.stats().calls(&t, "sendMessage"), 3);
    assert_eq!(sb.handle.stats().calls(&t, "noSuchMethod"), 1);
}
