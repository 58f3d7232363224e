//! The sandbox's test aids beyond the plain Bot API: raw updates, rate-limit counters, update
//! id resets, holds, the OpenAI-compatible endpoint, forum topics and media messages.

#[path = "common/sandbox_util.rs"]
mod util;

use std::time::Duration;

use axum::body::Bytes;
use botvisor::sandbox::{AiFault, Fault, Hold, InjectMessage, SentKind};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use teloxide::prelude::*;
use util::{Running, assert_error, call, eventually, post, start, start_with, token};

const CHAT: i64 = 6161;
const WAIT: Duration = Duration::from_secs(5);

/// getUpdates as raw bytes (the answer may hold elements that are not JSON).
async fn get_updates_raw(sb: &Running, t: &str, offset: i64) -> String {
    let r = Client::new()
        .post(sb.method(t, "getUpdates"))
        .json(&json!({"offset": offset}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    String::from_utf8_lossy(&r.bytes().await.unwrap()).into_owned()
}

async fn raw_inject(sb: &Running, t: &str, raw: &'static [u8]) -> (StatusCode, Value) {
    let r = Client::new()
        .post(sb.control("updates/raw"))
        .query(&[("token", t)])
        .body(raw)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

#[tokio::test]
async fn raw_updates_go_out_verbatim_and_are_confirmed_by_offset() {
    let sb = start().await;
    let t = token(3001);
    sb.handle.register_bot(&t, None).unwrap();
    let first = sb
        .handle
        .inject_message(InjectMessage::private(&t, CHAT, "plain"))
        .unwrap();
    assert_eq!(first, 1);
    let surrogate = br#"{"update_id":5,"message":{"text":"\ud800"}}"#;
    assert_eq!(
        raw_inject(&sb, &t, surrogate).await,
        (StatusCode::OK, json!({"update_id": 5}))
    );
    // No readable update_id: the next id is assigned for confirmation only.
    assert_eq!(
        raw_inject(&sb, &t, b"not json at all").await.1,
        json!({"update_id": 6})
    );
    assert_eq!(
        sb.handle
            .inject_raw(&t, &br#"{"message":{"text":"no id"}}"#[..])
            .unwrap(),
        7
    );
    // Invalid UTF-8 goes out byte for byte too.
    assert_eq!(sb.handle.inject_raw(&t, &b"\xff\xfe"[..]).unwrap(), 8);
    let after = sb
        .handle
        .inject_message(InjectMessage::private(&t, CHAT, "after"))
        .unwrap();
    assert_eq!(after, 9, "later updates stay above a raw update_id");

    let r = Client::new()
        .post(sb.method(&t, "getUpdates"))
        .send()
        .await
        .unwrap();
    let bytes = r.bytes().await.unwrap();
    let text = String::from_utf8_lossy(&bytes);
    let at = |needle: &[u8]| {
        bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap_or_else(|| panic!("{} not in {text}", String::from_utf8_lossy(needle)))
    };
    assert!(bytes.starts_with(br#"{"ok":true,"result":[{"#));
    let order = [
        at(br#""text":"plain""#),
        at(&[b",", &surrogate[..], b","].concat()),
        at(b",not json at all,"),
        at(br#",{"message":{"text":"no id"}},"#),
        at(b",\xff\xfe,"),
        at(br#""text":"after""#),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");

    // Offsets confirm raw elements by their (read or assigned) ids.
    let rest = get_updates_raw(&sb, &t, 6).await;
    assert!(
        rest.starts_with(r#"{"ok":true,"result":[not json at all,{"message""#),
        "{rest}"
    );
    let rest = get_updates_raw(&sb, &t, 9).await;
    assert!(
        rest.contains(r#""text":"after""#) && !rest.contains("no id"),
        "{rest}"
    );
    assert_eq!(
        get_updates_raw(&sb, &t, 10).await,
        r#"{"ok":true,"result":[]}"#
    );
    assert_eq!(sb.handle.stats().bots[&t].pending_updates, 0);

    // Bad input answers 400/404 and leaves the queue alone.
    assert_error(
        raw_inject(&sb, &t, b"  ").await,
        StatusCode::BAD_REQUEST,
        "must not be empty",
    );
    assert_error(
        raw_inject(&sb, &token(3002), b"x").await,
        StatusCode::NOT_FOUND,
        "no active bot",
    );
    let r = Client::new()
        .post(sb.control("updates/raw"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(sb.handle.stats().bots[&t].pending_updates, 0);
}

#[tokio::test]
async fn webhooks_post_raw_updates_verbatim() {
    let sb = start().await;
    let t = token(3003);
    sb.handle.register_bot(&t, None).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body).await;
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (status, _) = call(
        &sb,
        &t,
        "setWebhook",
        json!({"url": format!("http://{addr}/hook")}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let raw: &[u8] = b"{\"update_id\":41,\"message\":{\"text\":\"\\ud800\"}} \xff";
    sb.handle.inject_raw(&t, raw).unwrap();
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], raw);
    let h = sb.handle.clone();
    eventually(WAIT, || {
        (h.stats().bots[&t].pending_updates == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn rate_limited_counts_only_rate_limit_answers() {
    let sb = start_with(false, true).await;
    let t = token(3010);
    sb.handle.register_bot(&t, None).unwrap();
    let group = -3010;
    sb.handle
        .inject_message(InjectMessage {
            user_id: Some(77),
            ..InjectMessage::private(&t, group, "hi")
        })
        .unwrap();
    // 20 per minute in a group: the 21st and 22nd are refused.
    let mut refused = 0;
    for i in 0..22 {
        let (status, body) = call(
            &sb,
            &t,
            "sendMessage",
            json!({"chat_id": group, "text": format!("n{i}")}),
        )
        .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(body["parameters"]["retry_after"].as_u64().unwrap() >= 1);
            refused += 1;
        }
    }
    assert_eq!(refused, 2);
    // A fault-injected 429 is counted apart.
    sb.handle
        .add_fault(Fault {
            token: Some(t.clone()),
            method: Some("getMe".into()),
            status: 429,
            count: Some(1),
            ..Fault::default()
        })
        .unwrap();
    assert_eq!(
        call(&sb, &t, "getMe", json!({})).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    let stats = sb.handle.stats();
    assert_eq!(stats.rate_limited(&t), 2);
    assert_eq!(stats.bots[&t].fault_errors, 1);
    let body: Value = Client::new()
        .get(sb.control("stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["bots"][&t]["rate_limited"], 2);
    assert_eq!(body["bots"][&t]["fault_errors"], 1);
}

#[tokio::test]
async fn update_ids_restart_lower_after_a_reset() {
    let sb = start().await;
    let t = token(3020);
    sb.handle.register_bot(&t, None).unwrap();
    for text in ["a", "b"] {
        sb.handle
            .inject_message(InjectMessage::private(&t, CHAT, text))
            .unwrap();
    }
    let path = format!("bots/{t}/reset-update-ids");
    assert_error(
        post(&sb, &path, json!({})).await,
        StatusCode::BAD_REQUEST,
        "2 updates are still pending",
    );
    let (_, updates) = call(&sb, &t, "getUpdates", json!({"offset": 3})).await;
    assert_eq!(updates["result"], json!([]));
    // No body: restart at 1.
    let r = Client::new().post(sb.control(&path)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"next_id": 1, "dropped": 0})
    );
    let id = sb
        .handle
        .inject_message(InjectMessage::private(&t, CHAT, "c"))
        .unwrap();
    assert_eq!(id, 1);
    // A bot that keeps its old offset confirms (loses) the new, lower ids.
    let (_, updates) = call(&sb, &t, "getUpdates", json!({"offset": 3})).await;
    assert_eq!(updates["result"], json!([]));

    sb.handle
        .inject_message(InjectMessage::private(&t, CHAT, "d"))
        .unwrap();
    assert_eq!(
        post(&sb, &path, json!({"next_id": 10, "drop_pending": true})).await,
        (StatusCode::OK, json!({"next_id": 10, "dropped": 1}))
    );
    let (_, updates) = call(&sb, &t, "getUpdates", json!({})).await;
    assert_eq!(updates["result"], json!([]));
    let id = sb
        .handle
        .inject_message(InjectMessage::private(&t, CHAT, "e"))
        .unwrap();
    assert_eq!(id, 10);
    assert_eq!(
        sb.handle
            .reset_update_ids(&t, 2, false)
            .unwrap_err()
            .to_string(),
        "1 updates are still pending; let the bot confirm them first, or pass \"drop_pending\": true"
    );

    assert_error(
        post(&sb, &path, json!({"next_id": 0})).await,
        StatusCode::BAD_REQUEST,
        "at least 1",
    );
    assert_error(
        post(&sb, &path, json!({"next": 2})).await,
        StatusCode::BAD_REQUEST,
        "unknown field",
    );
    assert_error(
        post(
            &sb,
            &format!("bots/{}/reset-update-ids", token(3021)),
            json!({}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "no active bot",
    );
}

#[tokio::test]
async fn holds_keep_a_call_in_flight_until_released() {
    let sb = start().await;
    let t = token(3030);
    sb.handle.register_bot(&t, None).unwrap();
    sb.handle
        .inject_message(InjectMessage::private(&t, CHAT, "hi"))
        .unwrap();
    let (status, body) = post(&sb, "holds", json!({"token": t, "method": "SendMessage"})).await;
    assert_eq!(status, StatusCode::OK);
    let hold_id = body["hold_id"].as_u64().unwrap();

    let bot = sb.bot(&t);
    let send = tokio::spawn(async move { bot.send_message(ChatId(CHAT), "held").await });
    let h = sb.handle.clone();
    eventually(WAIT, || {
        h.holds()
            .iter()
            .any(|x| x.hold_id == hold_id && x.waiting == 1)
            .then_some(())
    })
    .await;
    // In flight: nothing happened in the chat yet, other methods pass.
    assert!(sb.handle.sent(&t, CHAT, 0).unwrap().is_empty());
    assert_eq!(call(&sb, &t, "getMe", json!({})).await.0, StatusCode::OK);
    let listed: Value = Client::new()
        .get(sb.control("holds"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed,
        json!({"holds": [{"hold_id": hold_id, "token": t, "method": "sendMessage", "waiting": 1, "caught": 1}]})
    );
    assert_eq!(
        post(&sb, &format!("holds/{hold_id}/release"), json!({})).await,
        (StatusCode::OK, json!({"released": 1}))
    );
    let sent = tokio::time::timeout(WAIT, send)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(sent.text(), Some("held"));
    assert_eq!(sb.handle.sent(&t, CHAT, 0).unwrap().len(), 1);
    assert!(sb.handle.holds().is_empty());

    // max_ms lets a call go on by itself; count limits what is caught.
    let id = sb
        .handle
        .add_hold(Hold {
            token: Some(t.clone()),
            count: Some(1),
            max_ms: Some(50),
            ..Hold::default()
        })
        .unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(call(&sb, &t, "getMe", json!({})).await.0, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(call(&sb, &t, "getMe", json!({})).await.0, StatusCode::OK);
    assert_eq!(sb.handle.holds()[0].caught, 1);
    assert_eq!(sb.handle.release_hold(id).unwrap(), 0);

    // Releasing everything; bad input.
    sb.handle.add_hold(Hold::default()).unwrap();
    let r = Client::new()
        .delete(sb.control("holds"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"released_holds": 1})
    );
    assert_error(
        post(&sb, "holds/999/release", json!({})).await,
        StatusCode::NOT_FOUND,
        "no hold 999",
    );
    assert_error(
        post(&sb, "holds/x/release", json!({})).await,
        StatusCode::BAD_REQUEST,
        "hold id must be an integer",
    );
    assert_error(
        post(&sb, "holds", json!({"method": "fly"})).await,
        StatusCode::BAD_REQUEST,
        "unknown Bot API method",
    );
    assert_error(
        post(&sb, "holds", json!({"count": 0})).await,
        StatusCode::BAD_REQUEST,
        "count must be at least 1",
    );
}

async fn chat_completion(
    sb: &Running,
    key: Option<&str>,
    body: Value,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut req = Client::new()
        .post(format!("{}v1/chat/completions", sb.url))
        .json(&body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    (r.status(), r.headers().clone(), r.json().await.unwrap())
}

#[tokio::test]
async fn ai_endpoint_echoes_records_and_fails_on_demand() {
    let sb = start().await;
    let body = json!({"model": "gpt-test", "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "hello there"}]});
    let (status, _, answer) = chat_completion(&sb, Some("sk-one"), body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["object"], "chat.completion");
    assert!(answer["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(answer["created"].as_i64().unwrap() > 0);
    assert_eq!(answer["model"], "gpt-test");
    assert_eq!(
        answer["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": "echo: hello there"},
            "logprobs": null, "finish_reason": "stop"}])
    );
    assert_eq!(
        answer["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8})
    );
    // max_tokens cuts words.
    let mut short = body.clone();
    short["max_tokens"] = json!(2);
    let (_, _, answer) = chat_completion(&sb, Some("sk-two"), short).await;
    assert_eq!(answer["choices"][0]["message"]["content"], "echo: hello");
    assert_eq!(answer["choices"][0]["finish_reason"], "length");

    // No key: 401 in OpenAI's shape. Invalid body: 400.
    let (status, _, answer) = chat_completion(&sb, None, body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer["error"]["type"], "invalid_request_error");
    let (status, _, answer) = chat_completion(&sb, Some("sk-one"), json!({"model": "m"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages")
    );

    // Faults: a 429 with Retry-After, then a 500, then success again.
    let (status, ack) = post(
        &sb,
        "ai/faults",
        json!({"status": 429, "retry_after": 7, "count": 1}),
    )
    .await;
    assert_eq!((status, ack), (StatusCode::OK, json!({"active_faults": 1})));
    sb.handle
        .add_ai_fault(AiFault {
            status: 500,
            count: Some(1),
            ..AiFault::default()
        })
        .unwrap();
    let (status, headers, answer) = chat_completion(&sb, Some("sk-one"), body.clone()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "7");
    assert_eq!(answer["error"]["code"], "rate_limit_exceeded");
    let (status, _, answer) = chat_completion(&sb, Some("sk-one"), body.clone()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(answer["error"]["type"], "server_error");
    assert_eq!(
        chat_completion(&sb, Some("sk-one"), body.clone()).await.0,
        StatusCode::OK
    );

    // A delay longer than the client's timeout is a timeout.
    sb.handle
        .add_ai_fault(AiFault {
            status: 200,
            delay_ms: Some(2_000),
            count: Some(1),
            ..AiFault::default()
        })
        .unwrap();
    let timed_out = Client::new()
        .post(format!("{}v1/chat/completions", sb.url))
        .bearer_auth("sk-slow")
        .timeout(Duration::from_millis(100))
        .json(&body)
        .send()
        .await;
    assert!(timed_out.is_err_and(|e| e.is_timeout()));

    // Every request is recorded with its key and status; filtered by key on request.
    let all = sb.handle.ai_requests(None);
    let statuses: Vec<u16> = all.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 401, 400, 429, 500, 200, 200]);
    assert_eq!(all[0].body, body);
    assert_eq!(all[1].key.as_deref(), Some("sk-two"));
    assert_eq!(all[2].key, None);
    assert_eq!(all[7].key.as_deref(), Some("sk-slow"));
    let listed: Value = Client::new()
        .get(sb.control("ai/requests"))
        .query(&[("key", "sk-two")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["requests"].as_array().unwrap().len(), 1);
    assert_eq!(listed["requests"][0]["body"]["max_tokens"], 2);

    assert_error(
        post(&sb, "ai/faults", json!({"status": 200})).await,
        StatusCode::BAD_REQUEST,
        "needs delay_ms",
    );
    let r = Client::new()
        .delete(sb.control("ai/requests"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"cleared": 8}));
    let r = Client::new()
        .get(format!("{}v1/models", sb.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// The error description of a raw Bot API call that must fail with 400.
async fn bad_request(sb: &Running, t: &str, method: &str, body: Value) -> String {
    let (status, answer) = call(sb, t, method, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{method}: {answer}");
    answer["description"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn forum_topics_threads_and_admin_replies() {
    use teloxide::types::{MessageId, MessageKind, Rgb, ThreadId, UpdateKind};

    let sb = start().await;
    let t = token(3040);
    sb.handle.register_bot(&t, None).unwrap();
    let bot = sb.bot(&t);
    let forum = -1003040;
    let (status, _) = post(
        &sb,
        "updates",
        json!({"token": t, "chat_id": forum, "chat_type": "supergroup", "is_forum": true,
            "user_id": 55, "text": "hello"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let topic = bot
        .create_forum_topic(ChatId(forum), "Ann (55)")
        .await
        .unwrap();
    assert_eq!(topic.name, "Ann (55)");
    assert_eq!(topic.icon_color, Rgb::from_u32(0x6FB9F0));
    let thread = topic.thread_id;
    let sent = bot
        .send_message(ChatId(forum), "new ticket")
        .message_thread_id(thread)
        .await
        .unwrap();
    assert_eq!(sent.thread_id, Some(thread));
    assert!(sent.is_topic_message);
    assert_eq!(sent.reply_to_message().unwrap().id, thread.0);

    // An admin replies to the bot's message inside the topic; another writes without a reply.
    sb.handle
        .inject_message(InjectMessage {
            chat_type: Some(botvisor::sandbox::ChatType::Supergroup),
            user_id: Some(56),
            message_thread_id: Some(thread.0.0),
            reply_to_message_id: Some(sent.id.0),
            ..InjectMessage::private(&t, forum, "answer")
        })
        .unwrap();
    post(
        &sb,
        "updates",
        json!({"token": t, "chat_id": forum, "user_id": 57, "message_thread_id": thread.0.0,
            "text": "no reply"}),
    )
    .await;
    let updates = bot.get_updates().await.unwrap();
    let messages: Vec<&Message> = updates
        .iter()
        .filter_map(|u| match &u.kind {
            UpdateKind::Message(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(messages.len(), 3);
    let chat = serde_json::to_value(&messages[0].chat).unwrap();
    assert_eq!(chat["is_forum"], true, "{chat}");
    let answer = messages[1];
    assert_eq!(answer.thread_id, Some(thread));
    assert_eq!(answer.reply_to_message().unwrap().id, sent.id);
    assert!(
        answer
            .reply_to_message()
            .unwrap()
            .from
            .as_ref()
            .unwrap()
            .is_bot
    );
    let plain = messages[2];
    assert!(matches!(
        plain.reply_to_message().unwrap().kind,
        MessageKind::ForumTopicCreated(_)
    ));

    // Edit, close, reopen; a no-op is TOPIC_NOT_MODIFIED.
    bot.edit_forum_topic(ChatId(forum), thread)
        .name("Ann (55) ✓")
        .await
        .unwrap();
    bot.close_forum_topic(ChatId(forum), thread).await.unwrap();
    assert_eq!(
        bad_request(
            &sb,
            &t,
            "closeForumTopic",
            json!({"chat_id": forum, "message_thread_id": thread.0.0})
        )
        .await,
        "Bad Request: TOPIC_NOT_MODIFIED"
    );
    bot.reopen_forum_topic(ChatId(forum), thread).await.unwrap();
    let events = sb.handle.sent(&t, forum, 0).unwrap();
    let actions: Vec<String> = events
        .iter()
        .map(|e| match &e.kind {
            SentKind::Topic { action, name, .. } => format!("{action} {name}"),
            SentKind::Message {
                kind,
                message_thread_id,
                ..
            } => format!("{kind} in {message_thread_id:?}"),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        actions,
        [
            "created Ann (55)".to_owned(),
            format!("text in Some({})", thread.0.0),
            "edited Ann (55) ✓".to_owned(),
            "closed Ann (55) ✓".to_owned(),
            "reopened Ann (55) ✓".to_owned(),
        ]
    );

    // An admin deletes the topic: sends into it fail like Telegram's.
    let r = Client::new()
        .delete(sb.control(&format!("chats/{forum}/topics/{}", thread.0.0)))
        .query(&[("token", &t)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"deleted": true}));
    assert_eq!(
        bad_request(
            &sb,
            &t,
            "sendMessage",
            json!({"chat_id": forum, "message_thread_id": thread.0.0, "text": "x"})
        )
        .await,
        "Bad Request: message thread not found"
    );
    let gone = bot
        .copy_message(ChatId(forum), ChatId(forum), MessageId(1))
        .message_thread_id(thread)
        .await;
    assert!(gone.is_err(), "{gone:?}");
    let events = sb.handle.sent(&t, forum, 0).unwrap();
    assert!(
        matches!(&events[1].kind, SentKind::Message { deleted: true, .. }),
        "the topic's messages went with it"
    );

    // Admin-created topics take user messages; the bot deletes one itself.
    let (status, created) = post(
        &sb,
        &format!("chats/{forum}/topics"),
        json!({"token": t, "name": "General questions"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let admin_thread = created["message_thread_id"].as_i64().unwrap() as i32;
    sb.handle
        .inject_message(InjectMessage {
            user_id: Some(58),
            message_thread_id: Some(admin_thread),
            ..InjectMessage::private(&t, forum, "question")
        })
        .unwrap();
    bot.delete_forum_topic(ChatId(forum), ThreadId(MessageId(admin_thread)))
        .await
        .unwrap();

    // Bad input.
    let group = -3041;
    sb.handle
        .inject_message(InjectMessage {
            user_id: Some(5),
            ..InjectMessage::private(&t, group, "plain group")
        })
        .unwrap();
    assert_eq!(
        bad_request(
            &sb,
            &t,
            "createForumTopic",
            json!({"chat_id": group, "name": "x"})
        )
        .await,
        "Bad Request: the chat is not a forum"
    );
    assert_eq!(
        bad_request(
            &sb,
            &t,
            "createForumTopic",
            json!({"chat_id": forum, "name": "x", "icon_color": 1})
        )
        .await,
        "Bad Request: TOPIC_ICON_COLOR_INVALID"
    );
    let cases = [
        (
            json!({"token": t, "chat_id": group, "user_id": 5, "message_thread_id": 3, "text": "a"}),
            "is not a forum",
        ),
        (
            json!({"token": t, "chat_id": forum, "user_id": 5, "message_thread_id": 999, "text": "a"}),
            "no topic 999",
        ),
        (
            json!({"token": t, "chat_id": forum, "user_id": 5, "message_thread_id": admin_thread, "text": "a"}),
            &format!("no topic {admin_thread}"),
        ),
        (
            json!({"token": t, "chat_id": group, "user_id": 5, "is_forum": true, "text": "a"}),
            "only a supergroup can be a forum",
        ),
        (
            json!({"token": t, "chat_id": forum, "user_id": 5, "reply_to_message_id": 999, "text": "a"}),
            "no message 999",
        ),
    ];
    for (body, needle) in cases {
        assert_error(
            post(&sb, "updates", body).await,
            StatusCode::BAD_REQUEST,
            needle,
        );
    }
    assert_error(
        post(
            &sb,
            &format!("chats/{group}/topics"),
            json!({"token": t, "name": "x"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "is not a forum",
    );
}

#[tokio::test]
async fn media_messages_of_every_kind_are_injected_copied_and_sent() {
    use teloxide::types::{
        FileId, InlineKeyboardButton, InlineKeyboardMarkup, InputFile, UpdateKind,
    };

    let sb = start().await;
    let t = token(3050);
    sb.handle.register_bot(&t, None).unwrap();
    let bot = sb.bot(&t);
    let admin_chat = 3051;
    sb.handle
        .inject_message(InjectMessage::private(&t, admin_chat, "/start"))
        .unwrap();
    let kinds = [
        (json!({"kind": "photo"}), "a photo"),
        (
            json!({"kind": "document", "file_name": "cv.pdf", "mime_type": "application/pdf", "file_size": 1234}),
            "my cv",
        ),
        (
            json!({"kind": "voice", "duration": 7, "mime_type": "audio/ogg"}),
            "listen",
        ),
        (json!({"kind": "video", "duration": 12}), "watch"),
        (
            json!({"kind": "audio", "file_name": "song.mp3", "duration": 200}),
            "a song",
        ),
        (json!({"kind": "sticker", "emoji": "👍"}), ""),
        (
            json!({"kind": "location", "latitude": 52.52, "longitude": 13.405}),
            "",
        ),
        (
            json!({"kind": "contact", "phone_number": "+4930123", "first_name": "Bea"}),
            "",
        ),
        (
            json!({"kind": "animation", "file_name": "cat.gif"}),
            "a cat",
        ),
        (json!({"kind": "video_note", "duration": 3}), ""),
    ];
    for (media, caption) in &kinds {
        let mut body = json!({"token": t, "chat_id": CHAT, "media": media});
        if !caption.is_empty() {
            body["text"] = json!(caption);
        }
        let (status, answer) = post(&sb, "updates", body).await;
        assert_eq!(status, StatusCode::OK, "{media}: {answer}");
    }
    // teloxide parses every one of them (one failure would fail the batch).
    let updates = bot.get_updates().await.unwrap();
    let messages: Vec<Message> = updates
        .into_iter()
        .filter_map(|u| match u.kind {
            UpdateKind::Message(m) if m.chat.id.0 == CHAT => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(messages.len(), kinds.len());
    assert!(messages[0].photo().is_some());
    assert_eq!(
        messages[1].document().unwrap().file_name.as_deref(),
        Some("cv.pdf")
    );
    assert_eq!(messages[2].voice().unwrap().duration.seconds(), 7);
    assert!(messages[3].video().is_some(), "{:?}", messages[3].kind);
    assert!(messages[4].audio().is_some());
    assert_eq!(messages[5].sticker().unwrap().emoji.as_deref(), Some("👍"));
    assert_eq!(messages[6].location().unwrap().latitude, 52.52);
    assert_eq!(messages[7].contact().unwrap().phone_number, "+4930123");
    assert!(messages[8].animation().is_some());
    assert!(messages[9].video_note().is_some());
    for (m, (_, caption)) in messages.iter().zip(&kinds) {
        assert_eq!(m.caption().unwrap_or(""), *caption);
    }

    // copyMessage copies each kind with its caption; the copy's event names the kind.
    let keyboard = InlineKeyboardMarkup::new([[InlineKeyboardButton::callback("Reply", "r")]]);
    for m in &messages {
        bot.copy_message(ChatId(admin_chat), ChatId(CHAT), m.id)
            .reply_markup(keyboard.clone())
            .await
            .unwrap();
    }
    let events = sb.handle.sent(&t, admin_chat, 0).unwrap();
    let copied: Vec<(String, Option<String>, bool)> = events
        .iter()
        .map(|e| match &e.kind {
            SentKind::Message {
                kind,
                caption,
                reply_markup,
                ..
            } => (kind.clone(), caption.clone(), reply_markup.is_some()),
            other => panic!("{other:?}"),
        })
        .collect();
    let expected: Vec<(String, Option<String>, bool)> = [
        "photo",
        "document",
        "voice",
        "video",
        "audio",
        "sticker",
        "location",
        "contact",
        "animation",
        "video_note",
    ]
    .iter()
    .zip(&kinds)
    .map(|(k, (_, c))| {
        (
            (*k).to_owned(),
            Some((*c).to_owned()).filter(|c| !c.is_empty()),
            true,
        )
    })
    .collect();
    assert_eq!(copied, expected);

    // The bot sends media by the users' file_ids, and a location.
    let file = |m: &Message| -> FileId {
        let id = m
            .voice()
            .map(|v| v.file.id.clone())
            .or_else(|| m.video().map(|v| v.file.id.clone()))
            .or_else(|| m.audio().map(|v| v.file.id.clone()))
            .or_else(|| m.sticker().map(|v| v.file.id.clone()))
            .or_else(|| m.animation().map(|v| v.file.id.clone()));
        id.unwrap()
    };
    let to = ChatId(admin_chat);
    bot.send_voice(to, InputFile::file_id(file(&messages[2])))
        .caption("fwd voice")
        .await
        .unwrap();
    bot.send_video(to, InputFile::file_id(file(&messages[3])))
        .await
        .unwrap();
    bot.send_audio(to, InputFile::file_id(file(&messages[4])))
        .await
        .unwrap();
    bot.send_sticker(to, InputFile::file_id(file(&messages[5])))
        .await
        .unwrap();
    let gif = bot
        .send_animation(to, InputFile::file_id(file(&messages[8])))
        .await
        .unwrap();
    assert_eq!(
        gif.animation().unwrap().file_name.as_deref(),
        Some("cat.gif")
    );
    let here = bot.send_location(to, 48.85, 2.35).await.unwrap();
    assert_eq!(here.location().unwrap().longitude, 2.35);
    let later: Vec<(String, String)> = sb
        .handle
        .sent(&t, admin_chat, events.last().unwrap().seq)
        .unwrap()
        .iter()
        .map(|e| match &e.kind {
            SentKind::Message { kind, .. } => (e.method.clone(), kind.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        later,
        [
            ("sendVoice", "voice"),
            ("sendVideo", "video"),
            ("sendAudio", "audio"),
            ("sendSticker", "sticker"),
            ("sendAnimation", "animation"),
            ("sendLocation", "location"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert_eq!(
        bad_request(
            &sb,
            &t,
            "sendVoice",
            json!({"chat_id": admin_chat, "voice": messages[3].video().unwrap().file.id.0.clone()})
        )
        .await,
        "Bad Request: can't use file of type video as voice"
    );

    // Bad input.
    let cases = [
        (json!({"kind": "sticker"}), "x", "has no caption"),
        (
            json!({"kind": "location"}),
            "",
            "needs latitude and longitude",
        ),
        (
            json!({"kind": "location", "latitude": 91, "longitude": 0}),
            "",
            "within ±90",
        ),
        (json!({"kind": "contact"}), "", "needs phone_number"),
        (
            json!({"kind": "hologram"}),
            "",
            "unknown variant `hologram`",
        ),
    ];
    for (media, text, needle) in cases {
        let mut body = json!({"token": t, "chat_id": CHAT, "media": media});
        if !text.is_empty() {
            body["text"] = json!(text);
        }
        assert_error(
            post(&sb, "updates", body).await,
            StatusCode::BAD_REQUEST,
            needle,
        );
    }
    assert_error(
        post(
            &sb,
            "updates",
            json!({"token": t, "chat_id": CHAT, "callback_data": "x", "media": {"kind": "photo"}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "go with a message",
    );
}
