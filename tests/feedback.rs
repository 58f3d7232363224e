//! The feedback module end to end: a daemon, the sandbox (forum topics, media, copyMessage,
//! groups) and the bot's own database. docs/feedback.md names these tests.

mod common;

use botvisor::panel::store;
use botvisor::sandbox::{ChatType, InjectMedia, InjectMessage, MediaKind, SentEvent, SentKind};
use common::harness::Harness;
use common::settled;
use sqlx::PgPool;

/// The admin who answers, in every admin chat of these tests.
const ADMIN: i64 = 900;

/// A message from the admin in the admin chat.
fn from_admin(t: &str, chat: i64, text: &str) -> InjectMessage {
    InjectMessage {
        chat_type: Some(ChatType::Supergroup),
        user_id: Some(ADMIN),
        first_name: Some("Kate".into()),
        ..InjectMessage::private(t, chat, text)
    }
}

/// A message from user `user` (first name `name`).
fn from_user(t: &str, user: i64, name: &str, text: &str) -> InjectMessage {
    InjectMessage {
        first_name: Some(name.into()),
        language_code: Some("en".into()),
        ..InjectMessage::private(t, user, text)
    }
}

/// The message id, content kind and topic of a message event.
fn message(e: &SentEvent) -> (i32, &str, Option<i32>) {
    match &e.kind {
        SentKind::Message {
            message_id,
            kind,
            message_thread_id,
            ..
        } => (*message_id, kind.as_str(), *message_thread_id),
        other => panic!("not a message: {other:?}"),
    }
}

/// The topic a `topic` event created.
fn created_topic(e: &SentEvent) -> Option<(i32, &str)> {
    match &e.kind {
        SentKind::Topic {
            message_thread_id,
            action,
            name,
        } if action == "created" => Some((*message_thread_id, name.as_str())),
        _ => None,
    }
}

/// The history of `chat` as (role, content).
async fn history(db: &PgPool, chat: i64) -> Vec<(String, String)> {
    sqlx::query_as("SELECT role, content FROM messages WHERE chat_id = $1 ORDER BY id")
        .bind(chat)
        .fetch_all(db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_round_trip_ban_a_deleted_topic_and_a_restart() {
    let h = Harness::start(&[]).await;
    let forum = -100_170_001;
    let user = 501;
    let (id, t) = h
        .add_configured(
            "fb_topics",
            17001,
            serde_json::json!({"feedback": {"admin_chat": forum, "mode": "topics"}}),
            &[],
            &[],
        )
        .await;
    // The admin chat is a forum supergroup the bot is in.
    h.sandbox
        .inject_message(InjectMessage {
            is_forum: true,
            ..from_admin(&t, forum, "the bot is here")
        })
        .unwrap();
    let db = h.bot_pool(id).await;

    // A user's photo reaches a topic named after them.
    h.sandbox
        .inject_message(InjectMessage {
            media: Some(InjectMedia::new(MediaKind::Photo)),
            ..from_user(&t, user, "Ann", "my receipt")
        })
        .unwrap();
    let topic_event = h
        .event(&t, forum, 0, "a new topic", |e| created_topic(e).is_some())
        .await;
    let (topic, name) = created_topic(&topic_event).unwrap();
    assert!(name.contains("Ann") && name.contains("501"), "{name}");
    let photo = h
        .event(&t, forum, topic_event.seq, "the photo", |e| {
            e.method == "copyMessage"
        })
        .await;
    assert_eq!(message(&photo).1, "photo");
    assert_eq!(message(&photo).2, Some(topic));
    assert_eq!(photo.text(), Some("my receipt"));

    // The admin's voice note in the topic reaches the user, and the history has it as the
    // admin's.
    let before = h.last_seq(&t, user);
    h.sandbox
        .inject_message(InjectMessage {
            message_thread_id: Some(topic),
            media: Some(InjectMedia::new(MediaKind::Voice)),
            ..from_admin(&t, forum, "")
        })
        .unwrap();
    let voice = h
        .event(&t, user, before, "the voice reply", |e| {
            e.method == "copyMessage"
        })
        .await;
    assert_eq!(message(&voice).1, "voice");
    settled(&db).await;
    assert_eq!(
        history(&db, user).await,
        [
            ("user".to_string(), "my receipt".to_string()),
            ("admin".to_string(), "[voice]".to_string())
        ]
    );

    // An admin deletes the topic: the next message makes a new one and goes there.
    h.sandbox.delete_topic(&t, forum, topic).unwrap();
    let before = h.last_seq(&t, forum);
    h.sandbox
        .inject_message(from_user(&t, user, "Ann", "are you there?"))
        .unwrap();
    let recreated = h
        .event(&t, forum, before, "a re-created topic", |e| {
            created_topic(e).is_some()
        })
        .await;
    let (topic2, _) = created_topic(&recreated).unwrap();
    assert_ne!(topic2, topic);
    let copy = h
        .event(&t, forum, recreated.seq, "the copy in the new topic", |e| {
            e.method == "copyMessage"
        })
        .await;
    assert_eq!(copy.text(), Some("are you there?"));
    assert_eq!(message(&copy).2, Some(topic2));

    // /ban stops forwarding; /unban resumes it.
    let before = h.last_seq(&t, forum);
    h.sandbox
        .inject_message(InjectMessage {
            message_thread_id: Some(topic2),
            ..from_admin(&t, forum, "/ban")
        })
        .unwrap();
    h.event(&t, forum, before, "the ban notice", |e| {
        e.text().is_some_and(|x| x.contains("banned"))
    })
    .await;
    settled(&db).await;
    let before = h.last_seq(&t, forum);
    h.sandbox
        .inject_message(from_user(&t, user, "Ann", "let me in"))
        .unwrap();
    settled(&db).await;
    assert_eq!(
        h.last_seq(&t, forum),
        before,
        "a banned user's message was forwarded"
    );
    h.sandbox
        .inject_message(InjectMessage {
            message_thread_id: Some(topic2),
            ..from_admin(&t, forum, "/unban")
        })
        .unwrap();
    h.event(&t, forum, before, "the unban notice", |e| {
        e.text().is_some_and(|x| x.contains("unbanned"))
    })
    .await;

    // A restart of the bot loses no mapping: the admin's answer in the topic still reaches
    // the user, and the user's next message goes to the same topic.
    store::set_enabled(&h.pool, id, false).await.unwrap();
    h.wait_state(id, "stopped").await;
    store::set_enabled(&h.pool, id, true).await.unwrap();
    h.wait_state(id, "running").await;
    let before = h.last_seq(&t, user);
    h.sandbox
        .inject_message(InjectMessage {
            message_thread_id: Some(topic2),
            ..from_admin(&t, forum, "we are back")
        })
        .unwrap();
    h.reply(&t, user, before, |x| x == "we are back").await;
    let before = h.last_seq(&t, forum);
    h.sandbox
        .inject_message(from_user(&t, user, "Ann", "thanks"))
        .unwrap();
    let copy = h
        .event(&t, forum, before, "the copy after the restart", |e| {
            e.text() == Some("thanks")
        })
        .await;
    assert_eq!(message(&copy).2, Some(topic2));

    // /info shows the user's card.
    h.sandbox
        .inject_message(InjectMessage {
            message_thread_id: Some(topic2),
            ..from_admin(&t, forum, "/info")
        })
        .unwrap();
    let card = h
        .event(&t, forum, before, "the user card", |e| {
            e.text().is_some_and(|x| x.contains("Messages:"))
        })
        .await;
    let card = card.text().unwrap();
    // Four messages: the photo, "are you there?", "let me in" (banned, still counted), "thanks".
    for needle in [
        "Ann",
        "id 501",
        "Language: en",
        "First seen:",
        "Messages: 4",
        "Banned: no",
    ] {
        assert!(card.contains(needle), "{needle:?} missing from {card:?}");
    }
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_mode_headers_auto_reply_names_and_undeliverable_answers() {
    // Telegram's limits are enforced: the admin chat's sends go through the sender's group
    // bucket (20 a minute), so the sandbox never answers 429.
    let h = Harness::start_rate_limited(&[], botvisor::modules::Registry::standard()).await;
    // A supergroup that is not a forum.
    let group = -100_170_002;
    let user = 601;
    let (id, t) = h
        .add_configured(
            "fb_replies",
            17002,
            serde_json::json!({"feedback": {"admin_chat": group, "mode": "replies",
                "anonymous_admins": false, "auto_reply": "away"}}),
            &[("away", "en", "We answer soon, {first_name}.")],
            &[],
        )
        .await;
    h.sandbox
        .inject_message(from_admin(&t, group, "the bot is here"))
        .unwrap();
    let db = h.bot_pool(id).await;

    // The user's text reaches the group under a header naming them; they get the
    // auto-reply once.
    h.sandbox
        .inject_message(from_user(&t, user, "Bob", "Hello"))
        .unwrap();
    let header = h
        .event(&t, group, 0, "the forwarded text", |e| {
            e.text().is_some_and(|x| x.contains("Hello"))
        })
        .await;
    assert_eq!(header.text(), Some("From Bob, id 601:\n\nHello"));
    h.reply(&t, user, 0, |x| x == "We answer soon, Bob.").await;
    h.sandbox
        .inject_message(InjectMessage {
            media: Some(InjectMedia {
                latitude: Some(52.5),
                longitude: Some(13.4),
                ..InjectMedia::new(MediaKind::Location)
            }),
            ..from_user(&t, user, "Bob", "")
        })
        .unwrap();
    // A location has no caption: a header message, then the copy.
    let location = h
        .event(&t, group, header.seq, "the location", |e| {
            e.method == "copyMessage"
        })
        .await;
    assert_eq!(message(&location).1, "location");
    settled(&db).await;
    let auto_replies = h
        .sandbox
        .sent(&t, user, 0)
        .unwrap()
        .iter()
        .filter(|e| e.text() == Some("We answer soon, Bob."))
        .count();
    assert_eq!(auto_replies, 1, "the auto-reply goes once per conversation");

    // The admin replies to the location's copy: the user gets the answer with the admin's
    // name (anonymous_admins is false).
    let before = h.last_seq(&t, user);
    h.sandbox
        .inject_message(InjectMessage {
            reply_to_message_id: Some(message(&location).0),
            ..from_admin(&t, group, "Found you")
        })
        .unwrap();
    h.reply(&t, user, before, |x| x == "Kate:\n\nFound you")
        .await;

    // The user blocks the bot: the admin is told, under their answer.
    h.sandbox.block_user(&t, user).unwrap();
    let before = h.last_seq(&t, group);
    h.sandbox
        .inject_message(InjectMessage {
            reply_to_message_id: Some(message(&header).0),
            ..from_admin(&t, group, "Still there?")
        })
        .unwrap();
    let notice = h
        .event(&t, group, before, "the undeliverable notice", |e| {
            e.text().is_some_and(|x| x.starts_with("Not delivered"))
        })
        .await;
    assert_eq!(
        notice.text(),
        Some("Not delivered to user 601: the user blocked the bot.")
    );
    settled(&db).await;
    assert_eq!(h.sandbox.stats().rate_limited(&t), 0);
    db.close().await;
}
