//! Texts as users meet them (issue 19): `{bot_name}` is the Telegram bot's name and
//! `{panel_name}` the panel's; a manifest naming texts that have no value keeps the bot
//! running with a warning in `bot_status.detail`; a message nothing answers gets the
//! manifest's `fallback` text.

mod common;

use botvisor::content::manifest::Manifest;
use botvisor::panel::store;
use common::eventually;
use common::harness::{DEADLINE, Harness};

/// A manifest naming a command, a menu and a fallback; their texts are set by the test.
const MANIFEST: &str = r#"{
    "commands": [{"command": "hours", "text": "hours", "description": "Opening hours"}],
    "main_menu": "main",
    "menus": {"main": {"text": "menu_main", "buttons": [[{"label": "btn_about", "text": "about"}]]}},
    "fallback": "fallback"
}"#;

async fn set_texts(h: &Harness, id: i64, texts: &[(&str, &str)]) {
    let texts: Vec<(String, String, String)> = texts
        .iter()
        .map(|(k, v)| (k.to_string(), "en".to_string(), v.to_string()))
        .collect();
    store::import_texts(&h.pool, id, &texts).await.unwrap();
}

/// Sends `text` from `chat` until the bot's reply is `expected` (reloads are asynchronous).
async fn until_reply(h: &Harness, t: &str, chat: i64, text: &str, expected: &str) {
    eventually(DEADLINE, &format!("{text} answers {expected}"), || async {
        let after = h.last_seq(t, chat);
        h.say(t, chat, text);
        let r = h.reply(t, chat, after, |_| true).await;
        (r.text() == Some(expected)).then_some(())
    })
    .await;
}

/// Waits until the bot runs with exactly `detail` in its status.
async fn until_detail(h: &Harness, id: i64, detail: &str) {
    eventually(
        DEADLINE,
        &format!("bot {id} running with {detail:?}"),
        || async {
            store::get_status(&h.pool, id)
                .await
                .unwrap()
                .filter(|s| s.state == "running" && s.detail == detail)
                .map(|_| ())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_texts_warn_names_render_and_unanswered_messages_get_the_fallback() {
    let h = Harness::start(&[]).await;
    let (id, t) = h.add_bot("shop", 9301).await;
    let manifest = Manifest::from_json_str(MANIFEST).unwrap();
    store::set_manifest(&h.pool, id, &manifest).await.unwrap();
    set_texts(
        &h,
        id,
        &[
            ("start", "I am {bot_name}, {panel_name} in the panel"),
            ("fallback", "Please use the menu"),
            ("about", "About us"),
        ],
    )
    .await;
    // The bot runs; its status names what users would see as raw keys or silence.
    until_detail(&h, id, "texts missing in en: hours, menu_main, btn_about").await;
    // {bot_name} is getMe's first_name (the sandbox's "Sandbox Bot"), {panel_name} the row's.
    until_reply(&h, &t, 1, "/start", "I am Sandbox Bot, shop in the panel").await;
    // Plain text, and a command nothing knows (no `unknown_command` text): the fallback.
    until_reply(&h, &t, 1, "hello?", "Please use the menu").await;
    until_reply(&h, &t, 1, "/nonsense", "Please use the menu").await;
    // Setting the missing texts clears the warning on reload.
    set_texts(
        &h,
        id,
        &[
            ("hours", "9-5"),
            ("menu_main", "Menu"),
            ("btn_about", "About"),
        ],
    )
    .await;
    until_detail(&h, id, "").await;
    until_reply(&h, &t, 1, "/hours", "9-5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_fallback_plain_text_gets_no_reply() {
    let h = Harness::start(&[]).await;
    let (id, t) = h.add_bot("quiet", 9302).await;
    set_texts(&h, id, &[("help", "Help text")]).await;
    until_reply(&h, &t, 2, "/help", "Help text").await;
    // A plain message, then a command: the only reply is the command's, so the plain message
    // got none (the bot handles one chat's updates in order).
    let after = h.last_seq(&t, 2);
    h.say(&t, 2, "hello?");
    h.say(&t, 2, "/help");
    let reply = h.reply(&t, 2, after, |_| true).await;
    assert_eq!(reply.text(), Some("Help text"));
    let sent = h.sandbox.sent(&t, 2, after).unwrap();
    assert_eq!(sent.len(), 1, "{sent:?}");
}
