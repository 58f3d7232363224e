//! The core bot behaviour through the sandbox: commands, menus (with edits in place and hot
//! reload), texts, the user registry (403 → blocked), history and admin stats.

mod common;

use botvisor::content::manifest::Manifest;
use botvisor::panel::store;
use botvisor::sandbox::{InjectCallback, InjectMessage, SentEvent, SentKind};
use common::eventually;
use common::harness::{DEADLINE, Harness};
use serde_json::Value;
use teloxide::prelude::Requester;

const TEXTS: &[(&str, &str)] = &[
    ("start", "Hi {first_name}"),
    ("help", "Help text"),
    ("unknown_command", "Unknown command"),
    ("prices", "Coffee 3"),
    ("contact", "Mail us"),
    ("menu_main", "Main menu"),
    ("menu_about", "About us"),
    ("btn_prices", "Prices"),
    ("btn_about", "About"),
    ("btn_contact", "Contact"),
    ("btn_back", "Back"),
];

async fn bot_with_example_manifest(h: &Harness, name: &str, token_id: u64) -> (i64, String) {
    let (id, t) = h.add_bot(name, token_id).await;
    let manifest = Manifest::from_json_str(include_str!("../docs/manifest.example.json")).unwrap();
    store::set_manifest(&h.pool, id, &manifest).await.unwrap();
    let texts: Vec<(String, String, String)> = TEXTS
        .iter()
        .map(|(k, v)| (k.to_string(), "en".to_string(), v.to_string()))
        .collect();
    store::import_texts(&h.pool, id, &texts).await.unwrap();
    h.wait_state(id, "running").await;
    // The manifest and texts were written while the bot started: their reload may land after
    // the bot is running. Probe from a chat of its own until the bot uses them.
    until_reply(h, &t, PROBE_CHAT, "/help", "Help text").await;
    (id, t)
}

/// The user's `blocked` flag and the number of unprocessed inbox rows.
async fn blocked_and_pending(pool: &sqlx::PgPool, user: i64) -> (Option<bool>, i64) {
    let blocked = sqlx::query_scalar("SELECT blocked FROM users WHERE user_id = $1")
        .bind(user)
        .fetch_optional(pool)
        .await
        .unwrap();
    let pending = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE processed_at IS NULL")
        .fetch_one(pool)
        .await
        .unwrap();
    (blocked, pending)
}

/// A chat used only to see that a bot's configuration is loaded.
const PROBE_CHAT: i64 = 999_999;

/// The `callback_data` of the button labelled `label` in an inline keyboard.
fn button(markup: &Value, label: &str) -> String {
    markup["inline_keyboard"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap())
        .find(|b| b["text"] == label)
        .unwrap_or_else(|| panic!("no button {label} in {markup}"))["callback_data"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn message_markup(e: &SentEvent) -> (i32, Value) {
    match &e.kind {
        SentKind::Message {
            message_id,
            reply_markup,
            ..
        } => (*message_id, reply_markup.clone().unwrap_or(Value::Null)),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Asks `/command` until the reply matches (the config reload is asynchronous).
async fn until_reply(h: &Harness, t: &str, chat: i64, text: &str, expected: &str) {
    eventually(DEADLINE, &format!("{text} answers {expected}"), || async {
        let after = h.last_seq(t, chat);
        h.say(t, chat, text);
        let r = h.reply(t, chat, after, |_| true).await;
        (r.text() == Some(expected)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reply_with_texts_and_are_registered() {
    let mut h = Harness::start(&[]).await;
    let (id, t) = bot_with_example_manifest(&h, "cmds", 9001).await;
    until_reply(&h, &t, 1, "/prices", "Coffee 3").await;
    until_reply(&h, &t, 1, "/help", "Help text").await;
    until_reply(&h, &t, 1, "/nonsense", "Unknown command").await;
    // Telegram knows the command list (setMyCommands on start and on reload).
    let bot = teloxide::Bot::new(&t).set_api_url(h.sandbox_url.parse().unwrap());
    let names = |cmds: Vec<teloxide::types::BotCommand>| {
        cmds.into_iter().map(|c| c.command).collect::<Vec<_>>()
    };
    eventually(DEADLINE, "commands registered", || async {
        let cmds = names(bot.get_my_commands().await.unwrap());
        (cmds == ["start", "help", "menu", "prices", "contact"]).then_some(())
    })
    .await;
    let mut manifest =
        Manifest::from_json_str(include_str!("../docs/manifest.example.json")).unwrap();
    manifest.sections["commands"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "command": "hours",
            "text": "hours",
            "description": "Opening hours",
        }));
    // The text first: once the command is registered, the snapshot that registered it has
    // the text too (the other order races the second reload).
    store::set_text(&h.pool, id, "hours", "en", "9 to 5")
        .await
        .unwrap();
    store::set_manifest(&h.pool, id, &manifest).await.unwrap();
    eventually(DEADLINE, "commands re-registered", || async {
        let cmds = names(bot.get_my_commands().await.unwrap());
        cmds.contains(&"hours".to_string()).then_some(())
    })
    .await;
    until_reply(&h, &t, 1, "/hours", "9 to 5").await;
    assert!(h.stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_menus_navigate_with_edits_in_place_and_survive_a_reload() {
    let mut h = Harness::start(&[]).await;
    let (id, t) = bot_with_example_manifest(&h, "menus", 9101).await;
    let chat = 7;
    h.say(&t, chat, "/menu");
    let menu = h.reply(&t, chat, 0, |s| s == "Main menu").await;
    let (message_id, markup) = message_markup(&menu);

    // Open the sub-menu: the same message is edited, and the query answered.
    let press = |data: String| InjectCallback {
        token: t.clone(),
        chat_id: chat,
        callback_data: data,
        message_id: Some(message_id),
        ..InjectCallback::default()
    };
    let seq = h.last_seq(&t, chat);
    h.sandbox
        .inject_callback(press(button(&markup, "About")))
        .unwrap();
    let edit = h.reply(&t, chat, seq, |s| s == "About us").await;
    let SentKind::Edit {
        message_id: edited,
        reply_markup,
        ..
    } = &edit.kind
    else {
        panic!("expected an edit, got {edit:?}");
    };
    assert_eq!(*edited, message_id);
    let about = reply_markup.clone().unwrap();
    let answered = h.sandbox.sent(&t, chat, seq).unwrap();
    assert!(
        answered
            .iter()
            .any(|e| matches!(e.kind, SentKind::CallbackAnswer { .. }))
    );

    // A text button shows its text in place; back returns to the parent menu.
    let seq = h.last_seq(&t, chat);
    h.sandbox
        .inject_callback(press(button(&about, "Contact")))
        .unwrap();
    h.reply(&t, chat, seq, |s| s == "Mail us").await;
    let seq = h.last_seq(&t, chat);
    h.sandbox
        .inject_callback(press(button(&about, "Back")))
        .unwrap();
    let back = h.reply(&t, chat, seq, |s| s == "Main menu").await;
    assert!(matches!(back.kind, SentKind::Edit { .. }));
    // Button presses are the user's entries in history, with the label they pressed.
    let pool = h.bot_pool(id).await;
    let presses: Vec<String> = sqlx::query_scalar(
        "SELECT content FROM messages WHERE chat_id = $1 AND role = 'user' \
         AND content LIKE '[button]%' ORDER BY id",
    )
    .bind(chat)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        presses,
        ["[button] About", "[button] Contact", "[button] Back"]
    );
    pool.close().await;

    // Open the sub-menu again, then remove it by hot reload while the user is inside it.
    let seq = h.last_seq(&t, chat);
    h.sandbox
        .inject_callback(press(button(&markup, "About")))
        .unwrap();
    h.reply(&t, chat, seq, |s| s == "About us").await;
    let changed = Manifest::from_json_str(
        r#"{"main_menu": "main", "menus": {"main": {"text": "menu_main",
            "buttons": [[{"label": "btn_prices", "text": "prices"}]]}}}"#,
    )
    .unwrap();
    store::set_manifest(&h.pool, id, &changed).await.unwrap();
    // The old "Contact" button now points into a menu that no longer exists.
    eventually(DEADLINE, "the stale button is recognised", || async {
        let seq = h.last_seq(&t, chat);
        h.sandbox.inject_callback(press(button(&about, "Contact"))).unwrap();
        let events = h.sandbox.wait_sent(&t, chat, seq, DEADLINE).await.unwrap();
        let expired = events.iter().any(|e| {
            matches!(&e.kind, SentKind::CallbackAnswer { text: Some(t), .. } if t == "This menu has changed.")
        });
        expired.then_some(())
    })
    .await;
    // …and the message now shows the new main menu, with only the Prices button (the edit
    // follows the callback answer, so poll for it).
    eventually(DEADLINE, "the message shows the new main menu", || async {
        let events = h.sandbox.sent(&t, chat, 0).unwrap();
        let (text, markup) = events.iter().find_map(|e| match &e.kind {
            SentKind::Message {
                message_id: m,
                text,
                reply_markup,
                ..
            } if *m == message_id => Some((text.clone(), reply_markup.clone())),
            _ => None,
        })?;
        let labels: Vec<String> = markup?["inline_keyboard"][0]
            .as_array()?
            .iter()
            .filter_map(|b| b["text"].as_str().map(str::to_owned))
            .collect();
        (text.as_deref() == Some("Main menu") && labels == ["Prices"]).then_some(())
    })
    .await;
    assert!(h.stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_keyboard_menus_answer_their_buttons() {
    let mut h = Harness::start(&[]).await;
    let (id, t) = bot_with_example_manifest(&h, "reply", 9201).await;
    let manifest = Manifest::from_json_str(
        r#"{"main_menu": "main", "menus": {"main": {"kind": "reply", "text": "menu_main",
            "buttons": [[{"label": "btn_prices", "text": "prices"}, {"label": "btn_contact", "text": "contact"}]]}}}"#,
    )
    .unwrap();
    store::set_manifest(&h.pool, id, &manifest).await.unwrap();
    eventually(DEADLINE, "the reply keyboard", || async {
        let after = h.last_seq(&t, 3);
        h.say(&t, 3, "/menu");
        let r = h.reply(&t, 3, after, |_| true).await;
        let (_, markup) = message_markup(&r);
        (markup["keyboard"][0][1]["text"] == "Contact").then_some(())
    })
    .await;
    let after = h.last_seq(&t, 3);
    h.say(&t, 3, "Contact");
    h.reply(&t, 3, after, |s| s == "Mail us").await;
    assert!(h.stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_history_blocking_and_admin_stats() {
    let mut h = Harness::start(&[]).await;
    let (id, t) = bot_with_example_manifest(&h, "users", 9301).await;
    let user = 4242;
    h.sandbox
        .inject_message(InjectMessage {
            first_name: Some("Ann".into()),
            language_code: Some("en".into()),
            ..InjectMessage::private(&t, user, "/start")
        })
        .unwrap();
    h.reply(&t, user, 0, |s| s == "Hi Ann").await;
    // /start also shows the main menu; wait for it so that the block below races nothing.
    h.reply(&t, user, 0, |s| s == "Main menu").await;
    // The history records a sent message once its result is in, just after Telegram accepted
    // it: wait for that too, so that the /help below comes after it in the history.
    let pool = h.bot_pool(id).await;
    eventually(DEADLINE, "the main menu recorded in history", || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM messages WHERE content = 'Main menu'")
                .fetch_one(&pool)
                .await
                .unwrap();
        (n == 1).then_some(())
    })
    .await;

    // The user blocks the bot: the next answer gets 403 and the user is marked blocked.
    h.sandbox.block_user(&t, user).unwrap();
    h.say(&t, user, "/help");
    eventually(DEADLINE, "user marked blocked", || async {
        (blocked_and_pending(&pool, user).await == (Some(true), 0)).then_some(())
    })
    .await;
    // Writing again (unblocked) clears the flag.
    h.sandbox.unblock_user(&t, user).unwrap();
    let after = h.last_seq(&t, user);
    h.say(&t, user, "/prices");
    h.reply(&t, user, after, |s| s == "Coffee 3").await;
    // The reply goes out just before its transaction commits: poll for the effects.
    eventually(DEADLINE, "user unblocked and update processed", || async {
        (blocked_and_pending(&pool, user).await == (Some(false), 0)).then_some(())
    })
    .await;
    let row: (String, Option<String>, String) =
        sqlx::query_as("SELECT first_name, language_code, to_char(first_seen, 'YYYY') FROM users WHERE user_id = $1")
            .bind(user)
            .fetch_one(&pool)
            .await
            .unwrap();
    // The latest name is kept (later messages came from "User 4242"); the language stays
    // known when a later update does not carry one.
    assert_eq!(
        (row.0.as_str(), row.1.as_deref()),
        ("User 4242", Some("en"))
    );
    pool.close().await;

    // History through the CLI: {role, content, timestamp}, in order.
    let out = common::botvisor(
        &h.panel.env(),
        &[
            "history",
            &id.to_string(),
            "--chat",
            &user.to_string(),
            "--json",
        ],
    );
    let history: Value = serde_json::from_str(out.ok()).unwrap();
    let pairs: Vec<(String, String)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert!(m["timestamp"].is_string(), "{m}");
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("user", "/start"),
        ("bot", "Hi Ann"),
        ("bot", "Main menu"),
        ("user", "/help"),
        ("user", "/prices"),
        ("bot", "Coffee 3"),
    ]
    .iter()
    .map(|(r, c)| (r.to_string(), c.to_string()))
    .collect();
    assert_eq!(pairs, expected);
    let lines = common::botvisor(
        &h.panel.env(),
        &[
            "history",
            &id.to_string(),
            "--chat",
            &user.to_string(),
            "--limit",
            "1",
        ],
    );
    assert!(lines.ok().trim().ends_with("Coffee 3"), "{lines:?}");
    common::botvisor(&h.panel.env(), &["history", "999999", "--chat", "1"])
        .bad_input("no bot with id 999999");

    // /stats is for the manifest's admins only.
    until_reply(&h, &t, user, "/stats", "Unknown command").await;
    let mut manifest =
        Manifest::from_json_str(include_str!("../docs/manifest.example.json")).unwrap();
    manifest.admins = vec![user];
    store::set_manifest(&h.pool, id, &manifest).await.unwrap();
    eventually(DEADLINE, "stats for the admin", || async {
        let after = h.last_seq(&t, user);
        h.say(&t, user, "/stats");
        let r = h.reply(&t, user, after, |_| true).await;
        r.text()
            .filter(|s| s.starts_with("Users: 2 total, 2 active today, 2 in 7 days, 0 blocked"))
            .map(|_| ())
    })
    .await;
    assert!(h.stop().await.clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_processed_updates_and_history_are_pruned() {
    let mut h = Harness::start(&[
        ("BOTVISOR__BOT_DATABASE__INBOX_RETENTION_DAYS", "3"),
        // Prunes every second (the first within a second of the run's start).
        ("BOTVISOR__BOT_DATABASE__PRUNE_EVERY_SECS", "1"),
    ])
    .await;
    let (id, t) = bot_with_example_manifest(&h, "prune", 9401).await; // history: 90 days
    h.say(&t, 1, "/start");
    h.reply(&t, 1, 0, |_| true).await;
    let pool = h.bot_pool(id).await;
    sqlx::query(
        "INSERT INTO inbox (telegram_bot_id, update_id, payload, processed_at) VALUES \
         (9401, 1000000, '{}', now() - interval '5 days'), \
         (9401, 1000001, '{}', now() - interval '1 day'), \
         (9401, 1000002, '{}', now() - interval '10 days')",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE inbox SET error = 'poisoned' WHERE update_id = 1000002")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO messages (chat_id, role, content, created_at) VALUES \
         (1, 'user', 'ancient', now() - interval '100 days')",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Pruning runs every `prune_every_secs` of a bot run.
    eventually(DEADLINE, "old rows pruned", || async {
        let old: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE update_id >= 1000000")
            .fetch_one(&pool)
            .await
            .unwrap();
        let ancient: i64 =
            sqlx::query_scalar("SELECT count(*) FROM messages WHERE content = 'ancient'")
                .fetch_one(&pool)
                .await
                .unwrap();
        (old == 2 && ancient == 0).then_some(())
    })
    .await;
    // Kept: the recent processed row and the poisoned one.
    let kept: Vec<i64> =
        sqlx::query_scalar("SELECT update_id FROM inbox WHERE update_id >= 1000000 ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(kept, vec![1000001, 1000002]);
    pool.close().await;
    assert!(h.stop().await.clean());
}

/// Issue 12 item 5: teloxide 0.17 turns a message of a kind it does not know into an empty
/// message; its caption (or text) still reaches the history, read from the stored update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_an_unknown_kind_keeps_its_caption_in_history() {
    let h = Harness::start(&[]).await;
    let (id, t) = h.add_bot("future", 9501).await;
    h.wait_state(id, "running").await;
    let chat = 9502;
    let raw = serde_json::json!({
        "update_id": 5000,
        "message": {
            "message_id": 1, "date": 1_700_000_000,
            "chat": {"id": chat, "type": "private", "first_name": "Zoe"},
            "from": {"id": chat, "is_bot": false, "first_name": "Zoe"},
            "caption": "a kind from the future",
            "holo_message": {"file_id": "h1", "depth": 3}
        }
    });
    h.sandbox.inject_raw(&t, raw.to_string()).unwrap();
    // A known message after it: once answered, the unknown one was handled too.
    h.say(&t, chat, "/start");
    h.reply(&t, chat, 0, |_| true).await;
    let db = h.bot_pool(id).await;
    let first: String = sqlx::query_scalar(
        "SELECT content FROM messages WHERE chat_id = $1 AND role = 'user' ORDER BY id LIMIT 1",
    )
    .bind(chat)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(first, "a kind from the future");
    db.close().await;
}

/// A user who writes again within `LAST_SEEN_RESOLUTION` with the same profile leaves their
/// row untouched (no new row version: the same `xmin`); a changed name, a blocked flag or a
/// stale `last_seen` still writes.
#[tokio::test]
async fn touching_an_unchanged_user_again_writes_nothing() {
    use botvisor::modules::core::store::{SeenUser, touch_user};
    let (db, mut conn) = bot_database("touch").await;
    let mut seen = SeenUser {
        user_id: 7,
        username: Some("ann"),
        first_name: "Ann",
        last_name: None,
        language_code: Some("en"),
    };
    touch_user(&mut conn, &seen).await.unwrap();
    let first = row_version(&mut conn).await;
    touch_user(&mut conn, &seen).await.unwrap();
    assert_eq!(
        row_version(&mut conn).await,
        first,
        "an unchanged touch wrote"
    );
    seen.language_code = None;
    touch_user(&mut conn, &seen).await.unwrap();
    assert_eq!(
        row_version(&mut conn).await,
        first,
        "a missing language wrote"
    );

    seen.first_name = "Anna";
    touch_user(&mut conn, &seen).await.unwrap();
    let renamed = row_version(&mut conn).await;
    assert_ne!(renamed, first, "a new first name was not written");

    sqlx::query("UPDATE users SET blocked = TRUE WHERE user_id = 7")
        .execute(&mut conn)
        .await
        .unwrap();
    touch_user(&mut conn, &seen).await.unwrap();
    assert!(
        row_version(&mut conn).await.ends_with("/false"),
        "blocked not cleared"
    );

    sqlx::query("UPDATE users SET last_seen = now() - interval '2 minutes' WHERE user_id = 7")
        .execute(&mut conn)
        .await
        .unwrap();
    touch_user(&mut conn, &seen).await.unwrap();
    let fresh: bool = sqlx::query_scalar(
        "SELECT last_seen > now() - interval '1 minute' FROM users WHERE user_id = 7",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(fresh, "a stale last_seen was not refreshed");
    sqlx::Connection::close(conn).await.ok();
    drop(db);
}

/// A fresh database with the bot migrations, and a connection to it.
async fn bot_database(name: &str) -> (common::TestDb, sqlx::PgConnection) {
    let db = common::TestDb::create(name).await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    botvisor::schema::apply_on(&botvisor::schema::BOT, &mut conn)
        .await
        .unwrap();
    (db, conn)
}

/// Defers core's answer `text` to `chat` (the user of the same id) for update `update`.
fn defer_text(w: &mut botvisor::modules::store::Deferred, update: i64, chat: i64, text: &str) {
    w.requests.update.push(update);
    w.requests.lane.push(0);
    w.requests.chat.push(chat);
    w.requests.user.push(Some(chat));
    w.requests.origin.push("core");
    w.requests
        .request
        .push(serde_json::json!({ "text": text }).to_string());
}

async fn row_version(conn: &mut sqlx::PgConnection) -> String {
    let q = "SELECT xmin::text || '/' || blocked::text FROM users WHERE user_id = 7";
    sqlx::query_scalar(q).fetch_one(conn).await.unwrap()
}

/// The unit of work's one statement (`modules::store::apply_deferred`, docs/architecture.md
/// "One statement per batch"): it claims the batch and writes only what the claimed updates
/// deferred — an update processed before leaves nothing — with the outbox ids in the order
/// the requests were queued; run again, it claims and writes nothing.
#[tokio::test]
async fn a_batch_that_only_writes_is_claimed_and_written_in_one_statement() {
    use botvisor::modules::store::{Claim, Deferred, apply_deferred};
    let (db, mut conn) = bot_database("deferred").await;
    // Updates 1 and 3 wait; 2 was processed by an earlier run.
    sqlx::query(
        "INSERT INTO inbox (telegram_bot_id, update_id, chat_id, payload, processed_at) \
         VALUES (42, 1, 7, '{}', NULL), (42, 2, 8, '{}', now()), (42, 3, 7, '{}', NULL)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let mut w = Deferred::default();
    for (update, chat, text) in [(1, 7, "one"), (2, 8, "two"), (3, 7, "three")] {
        w.messages.update.push(update);
        w.messages.chat.push(chat);
        w.messages.user.push(Some(chat));
        w.messages.role.push("user");
        w.messages.content.push(text.to_owned());
        w.users.update.push(update);
        w.users.user_id.push(chat);
        w.users.username.push(None);
        w.users.first_name.push(format!("name {update}"));
        w.users.last_name.push(None);
        w.users.language_code.push(Some("en".to_owned()));
    }
    for (update, chat, text) in [(1, 7, "a"), (1, 7, "b"), (2, 8, "c"), (3, 7, "d")] {
        defer_text(&mut w, update, chat, text);
    }
    assert!(!w.is_empty());

    let applied = apply_deferred(&mut conn, 42, Claim::Stored(&[1, 2, 3]), &w)
        .await
        .unwrap();
    let mut claimed = applied.claimed.clone();
    claimed.sort_unstable();
    assert_eq!(claimed, [1, 3], "the processed update was claimed again");
    assert_eq!(applied.outbox_ids.len(), 3, "{applied:?}");
    let outbox: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, request->>'text' FROM outbox ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let in_order: Vec<(i64, String)> = applied
        .outbox_ids
        .iter()
        .copied()
        .zip(["a", "b", "d"].map(str::to_owned))
        .collect();
    assert_eq!(
        outbox, in_order,
        "ids not in the order the requests were queued"
    );
    let history: Vec<String> = sqlx::query_scalar("SELECT content FROM messages ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(history, ["one", "three"]);
    let users: Vec<(i64, String)> =
        sqlx::query_as("SELECT user_id, first_name FROM users ORDER BY user_id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        users,
        [(7, "name 3".to_owned())],
        "one row per user, the last update's profile; none for the processed update"
    );
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE processed_at IS NULL")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(waiting, 0);

    let again = apply_deferred(&mut conn, 42, Claim::Stored(&[1, 2, 3]), &w)
        .await
        .unwrap();
    assert!(
        again.claimed.is_empty() && again.outbox_ids.is_empty(),
        "{again:?}"
    );
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM messages)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(rows, 5, "a replay wrote again");
    sqlx::Connection::close(conn).await.ok();
    drop(db);
}

/// The intake's one statement (`modules::store::Claim::Fresh`): a fetched batch is stored
/// already processed with its next offset, and only its new, parsed updates' writes apply —
/// a re-delivered id and a poisoned row leave none; a batch with an id below the stored
/// offset that is not stored (a restart of the ids) writes nothing at all.
#[tokio::test]
async fn a_fetched_batch_is_stored_processed_and_confirmed_in_one_statement() {
    use botvisor::botdb::store::InboxRow;
    use botvisor::modules::store::{Claim, Deferred, apply_deferred};
    let (db, mut conn) = bot_database("fresh").await;
    // Update 1 was stored (and processed) by an earlier batch; the offset is 2.
    sqlx::raw_sql(
        "INSERT INTO inbox (telegram_bot_id, update_id, chat_id, payload, processed_at) \
         VALUES (42, 1, 7, '{\"update_id\": 1}', now()); \
         INSERT INTO bot_state (key, value) VALUES ('offset:42', 2)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let row = |id: i64, error: Option<&str>| InboxRow {
        update_id: id,
        chat_id: Some(7),
        payload: format!("{{\"update_id\": {id}}}"),
        error: error.map(str::to_owned),
    };
    let rows = [row(1, None), row(2, None), row(3, Some("cannot parse"))];
    let mut w = Deferred::default();
    for (update, text) in [(1, "again"), (2, "two")] {
        defer_text(&mut w, update, 7, text);
    }
    let fresh = Claim::Fresh {
        rows: &rows,
        next_offset: Some(4),
    };
    let applied = apply_deferred(&mut conn, 42, fresh, &w).await.unwrap();
    assert!(!applied.suspicious);
    assert_eq!(
        applied.claimed,
        [2],
        "only the new parsed update is processed"
    );
    assert_eq!(
        applied.inserted,
        [2, 3],
        "the re-delivered id is not stored twice"
    );
    assert_eq!(applied.outbox_ids.len(), 1);
    let inbox: Vec<(i64, bool, Option<String>)> = sqlx::query_as(
        "SELECT update_id, processed_at IS NOT NULL, error FROM inbox ORDER BY update_id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        inbox,
        [
            (1, true, None),
            (2, true, None),
            (3, true, Some("cannot parse".to_owned()))
        ]
    );
    let texts: Vec<String> = sqlx::query_scalar("SELECT request->>'text' FROM outbox")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(texts, ["two"]);
    let offset: i64 = sqlx::query_scalar("SELECT value FROM bot_state WHERE key = 'offset:42'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(offset, 4);

    // Ids restarted: 1 is below the stored offset 4 but its payload differs, so nothing of
    // the batch is written; the caller takes store_batch's checked path.
    let mut restarted = row(1, None);
    restarted.payload = r#"{"update_id": 1, "message": {}}"#.to_owned();
    let rows = [restarted];
    let fresh = Claim::Fresh {
        rows: &rows,
        next_offset: Some(2),
    };
    let applied = apply_deferred(&mut conn, 42, fresh, &w).await.unwrap();
    assert!(applied.suspicious);
    assert!(applied.claimed.is_empty() && applied.inserted.is_empty());
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM outbox) * 100 + (SELECT count(*) FROM inbox) * 10 \
              + (SELECT value FROM bot_state WHERE key = 'offset:42')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(rows, 134, "nothing written");
    sqlx::Connection::close(conn).await.ok();
    drop(db);
}

/// The sender's one statement (`modules::store::finish_deferred`): the results of a group of
/// sends and the history rows its modules deferred, together.
#[tokio::test]
async fn a_group_of_results_and_its_history_rows_are_one_statement() {
    use botvisor::botdb::store::{FinishedSends, enqueue};
    use botvisor::modules::store::{MessageColumns, finish_deferred};
    let (db, mut conn) = bot_database("finish").await;
    let request = serde_json::json!({"text": "hi"});
    let a = enqueue(&mut conn, 0, 7, Some(7), "core", &request)
        .await
        .unwrap();
    let b = enqueue(&mut conn, 0, 8, Some(8), "core", &request)
        .await
        .unwrap();
    let mut done = FinishedSends::with_capacity(2);
    done.push(a, "sent", Some(100), None);
    done.push(b, "failed", None, Some("Bad Request: x".into()));
    let mut m = MessageColumns::default();
    for (chat, text) in [(7, "first"), (7, "second")] {
        m.chat.push(chat);
        m.user.push(Some(chat));
        m.role.push("bot");
        m.content.push(text.into());
    }
    finish_deferred(&mut conn, &done, &m).await.unwrap();
    type Finished = (i64, Option<String>, Option<i64>, Option<String>, bool);
    let rows: Vec<Finished> = sqlx::query_as(
        "SELECT id, outcome, message_id, error, done_at IS NOT NULL FROM outbox ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            (a, Some("sent".into()), Some(100), None, true),
            (
                b,
                Some("failed".into()),
                None,
                Some("Bad Request: x".into()),
                true
            ),
        ]
    );
    let history: Vec<(String, String)> =
        sqlx::query_as("SELECT role, content FROM messages ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        history,
        [
            ("bot".to_owned(), "first".to_owned()),
            ("bot".to_owned(), "second".to_owned())
        ]
    );
    sqlx::Connection::close(conn).await.ok();
    drop(db);
}
