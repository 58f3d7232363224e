//! Every `/sandbox/` control endpoint over HTTP, including bad input to each of them.

#[path = "common/sandbox_util.rs"]
mod util;

use std::time::Duration;

use botvisor::sandbox::{SentEvent, SentKind, Stats};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use util::{Running, assert_error, call, post, start, token};

const CHAT: i64 = 5151;

async fn send(sb: &Running, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let _ = sb;
    let r = req.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn bots_register_and_revoke() {
    let sb = start().await;
    let t = token(2001);
    let (status, body) = post(&sb, "bots", json!({"token": t, "username": "ctl_test_bot"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"id": 2001, "username": "ctl_test_bot"}));
    assert_eq!(call(&sb, &t, "getMe", json!({})).await.0, StatusCode::OK);

    let r = Client::new()
        .delete(sb.control(&format!("bots/{t}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (status, body) = call(&sb, &t, "getMe", json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        json!({"ok": false, "error_code": 401, "description": "Unauthorized"})
    );

    // Bad input: malformed token, bad username, unknown field, not JSON, no body, unknown bot.
    assert_error(
        post(&sb, "bots", json!({"token": "12:short"})).await,
        StatusCode::BAD_REQUEST,
        "malformed token 12:****",
    );
    assert_error(
        post(&sb, "bots", json!({"token": token(2002), "username": "x"})).await,
        StatusCode::BAD_REQUEST,
        "username",
    );
    assert_error(
        post(&sb, "bots", json!({"token": token(2002), "nick": "x"})).await,
        StatusCode::BAD_REQUEST,
        "unknown field `nick`",
    );
    assert_error(
        send(
            &sb,
            Client::new().post(sb.control("bots")).body("{not json"),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid JSON body",
    );
    assert_error(
        send(&sb, Client::new().post(sb.control("bots"))).await,
        StatusCode::BAD_REQUEST,
        "needs a JSON body",
    );
    assert_error(
        send(
            &sb,
            Client::new().delete(sb.control(&format!("bots/{}", token(2003)))),
        )
        .await,
        StatusCode::NOT_FOUND,
        "no active bot with token 2003:****",
    );
    assert_error(
        send(&sb, Client::new().get(sb.control("nope"))).await,
        StatusCode::NOT_FOUND,
        "unknown control endpoint",
    );
    // The sandbox keeps running: re-registering revives the revoked bot.
    assert_eq!(
        post(&sb, "bots", json!({"token": t})).await.0,
        StatusCode::OK
    );
    assert_eq!(call(&sb, &t, "getMe", json!({})).await.0, StatusCode::OK);
}

#[tokio::test]
async fn updates_inject_messages_and_callbacks() {
    let sb = start().await;
    let t = token(2010);
    post(&sb, "bots", json!({"token": t})).await;
    let (status, body) = post(
        &sb,
        "updates",
        json!({"token": t, "chat_id": CHAT, "first_name": "Ann", "language_code": "de", "text": "/start now"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"update_id": 1}));
    let (status, body) = post(
        &sb,
        "updates",
        json!({"token": t, "chat_id": -100, "chat_type": "supergroup", "user_id": 9, "text": "in group"}),
    )
    .await;
    assert_eq!(
        (status, body["update_id"].clone()),
        (StatusCode::OK, json!(2))
    );
    let (_, sent) = call(
        &sb,
        &t,
        "sendMessage",
        json!({"chat_id": CHAT, "text": "menu",
        "reply_markup": {"inline_keyboard": [[{"text": "Go", "callback_data": "go"}]]}}),
    )
    .await;
    let (status, body) = post(
        &sb,
        "updates",
        json!({"token": t, "chat_id": CHAT, "callback_data": "go"}),
    )
    .await;
    assert_eq!(
        (status, body["update_id"].clone()),
        (StatusCode::OK, json!(3))
    );

    let (_, updates) = call(&sb, &t, "getUpdates", json!({})).await;
    let updates = updates["result"].as_array().unwrap().clone();
    assert_eq!(updates.len(), 3);
    let m = &updates[0]["message"];
    assert_eq!(m["from"]["first_name"], "Ann");
    assert_eq!(m["from"]["language_code"], "de");
    assert_eq!(m["chat"]["type"], "private");
    assert_eq!(
        m["entities"],
        json!([{"type": "bot_command", "offset": 0, "length": 6}])
    );
    assert_eq!(updates[1]["message"]["chat"]["type"], "supergroup");
    assert_eq!(updates[1]["message"]["from"]["id"], 9);
    let cb = &updates[2]["callback_query"];
    assert_eq!(cb["data"], "go");
    assert_eq!(
        cb["message"]["message_id"], sent["result"]["message_id"],
        "defaults to the bot's latest message"
    );

    // Bad input, each a clear 400.
    let cases = [
        (
            json!({"token": t, "chat_id": CHAT}),
            "exactly one of text or callback_data",
        ),
        (
            json!({"token": t, "chat_id": CHAT, "text": "a", "callback_data": "b"}),
            "exactly one of text or callback_data",
        ),
        (
            json!({"token": t, "chat_id": CHAT, "text": ""}),
            "text must not be empty",
        ),
        (
            json!({"token": t, "chat_id": "x", "text": "a"}),
            "invalid JSON body",
        ),
        (
            json!({"token": t, "chat_id": CHAT, "user_id": 5, "text": "a"}),
            "user_id must equal chat_id",
        ),
        (
            json!({"token": t, "chat_id": -5, "text": "a"}),
            "user_id (positive) is required",
        ),
        (
            json!({"token": t, "chat_id": CHAT, "callback_data": "go", "message_id": 99}),
            "no message 99",
        ),
        (
            json!({"token": t, "chat_id": CHAT, "chat_type": "teapot", "text": "a"}),
            "unknown variant `teapot`",
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
            "updates",
            json!({"token": token(2011), "chat_id": 1, "text": "a"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "no active bot",
    );
}

#[tokio::test]
async fn sent_lists_and_long_polls_bot_actions() {
    let sb = start().await;
    let t = token(2020);
    post(&sb, "bots", json!({"token": t})).await;
    post(
        &sb,
        "updates",
        json!({"token": t, "chat_id": CHAT, "text": "hi"}),
    )
    .await;
    call(
        &sb,
        &t,
        "sendMessage",
        json!({"chat_id": CHAT, "text": "one"}),
    )
    .await;

    let get = |after: u64, wait: u64| {
        Client::new()
            .get(sb.control("sent"))
            .query(&[
                ("token", t.clone()),
                ("chat_id", CHAT.to_string()),
                ("after", after.to_string()),
                ("wait_ms", wait.to_string()),
            ])
            .send()
    };
    let body: Value = get(0, 0).await.unwrap().json().await.unwrap();
    let events: Vec<SentEvent> = serde_json::from_value(body["events"].clone()).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].text(), Some("one"));
    assert!(matches!(
        events[0].kind,
        SentKind::Message { deleted: false, .. }
    ));

    // A waiting request is answered by the next action.
    let waiting = tokio::spawn(get(events[0].seq, 10_000));
    let h = sb.handle.clone();
    let tk = t.clone();
    // Whether the wait registers before or after this action, it must answer with it.
    call(
        &sb,
        &tk,
        "sendChatAction",
        json!({"chat_id": CHAT, "action": "typing"}),
    )
    .await;
    let body: Value = waiting.await.unwrap().unwrap().json().await.unwrap();
    let events: Vec<SentEvent> = serde_json::from_value(body["events"].clone()).unwrap();
    assert_eq!(events.len(), 1);
    assert!(matches!(&events[0].kind, SentKind::ChatAction { action } if action == "typing"));
    assert_eq!(h.sent(&t, CHAT, 0).unwrap().len(), 2);

    // A wait with nothing new ends empty at its deadline.
    let started = tokio::time::Instant::now();
    let body: Value = get(events[0].seq, 200).await.unwrap().json().await.unwrap();
    assert_eq!(body["events"], json!([]));
    assert!(started.elapsed() >= Duration::from_millis(200));

    for query in [
        vec![("token", t.clone())],
        vec![("token", t.clone()), ("chat_id", "abc".into())],
        vec![
            ("token", t.clone()),
            ("chat_id", "1".into()),
            ("after", "-1".into()),
        ],
    ] {
        let got = send(&sb, Client::new().get(sb.control("sent")).query(&query)).await;
        assert_eq!(got.0, StatusCode::BAD_REQUEST, "{query:?}: {}", got.1);
        assert!(got.1["error"].is_string());
    }
}

#[tokio::test]
async fn users_block_and_unblock() {
    let sb = start().await;
    let t = token(2030);
    post(&sb, "bots", json!({"token": t})).await;
    post(
        &sb,
        "updates",
        json!({"token": t, "chat_id": CHAT, "text": "hi"}),
    )
    .await;
    let (status, body) = post(&sb, &format!("users/{CHAT}/block"), json!({"token": t})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"user_id": CHAT, "blocked": true}));
    let (status, body) = call(
        &sb,
        &t,
        "sendMessage",
        json!({"chat_id": CHAT, "text": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body["description"],
        "Forbidden: bot was blocked by the user"
    );
    assert_eq!(
        post(&sb, &format!("users/{CHAT}/unblock"), json!({"token": t}))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        call(
            &sb,
            &t,
            "sendMessage",
            json!({"chat_id": CHAT, "text": "x"})
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_error(
        post(&sb, "users/abc/block", json!({"token": t})).await,
        StatusCode::BAD_REQUEST,
        "user_id must be an integer",
    );
    assert_error(
        post(&sb, &format!("users/{CHAT}/block"), json!({})).await,
        StatusCode::BAD_REQUEST,
        "missing field `token`",
    );
}

#[tokio::test]
async fn faults_inject_and_clear() {
    let sb = start().await;
    let t = token(2040);
    post(&sb, "bots", json!({"token": t})).await;
    let (status, body) = post(
        &sb,
        "faults",
        json!({"token": t, "method": "GETME", "status": 502, "description": "Bad Gateway", "count": 2}),
    )
    .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"active_faults": 1}))
    );
    for _ in 0..2 {
        let (status, body) = call(&sb, &t, "getMe", json!({})).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(body["description"], "Bad Gateway");
    }
    assert_eq!(call(&sb, &t, "getMe", json!({})).await.0, StatusCode::OK);

    // Without a count a fault lasts until cleared; retry_after is passed through.
    post(&sb, "faults", json!({"status": 429, "retry_after": 3})).await;
    for _ in 0..3 {
        let (status, body) = call(&sb, &t, "getMe", json!({})).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["parameters"], json!({"retry_after": 3}));
        assert_eq!(body["description"], "Too Many Requests: retry after 3");
    }
    let r = Client::new()
        .delete(sb.control("faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"cleared": 1}));
    assert_eq!(call(&sb, &t, "getMe", json!({})).await.0, StatusCode::OK);

    let cases = [
        (json!({"status": 99}), "between 200 and 599"),
        (
            json!({"status": 500, "method": "fly"}),
            "unknown Bot API method",
        ),
        (json!({"status": 200}), "needs delay_ms"),
        (
            json!({"status": 500, "count": 0}),
            "count must be at least 1",
        ),
        (json!({"status": "x"}), "invalid JSON body"),
        (json!({"method": "getMe"}), "missing field `status`"),
    ];
    for (body, needle) in cases {
        assert_error(
            post(&sb, "faults", body).await,
            StatusCode::BAD_REQUEST,
            needle,
        );
    }
    assert_eq!(call(&sb, &t, "getMe", json!({})).await.0, StatusCode::OK);
}

#[tokio::test]
async fn stats_count_calls_conflicts_and_pending_updates() {
    let sb = start().await;
    let t = token(2050);
    let stranger = token(2051);
    post(&sb, "bots", json!({"token": t})).await;
    call(&sb, &t, "GetMe", json!({})).await;
    call(&sb, &t, "getme", json!({})).await;
    call(&sb, &t, "getUpdates", json!({})).await;
    call(&sb, &stranger, "getMe", json!({})).await;
    post(
        &sb,
        "updates",
        json!({"token": t, "chat_id": CHAT, "text": "a"}),
    )
    .await;
    post(
        &sb,
        "updates",
        json!({"token": t, "chat_id": CHAT, "text": "b"}),
    )
    .await;

    let body: Value = Client::new()
        .get(sb.control("stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stats: Stats = serde_json::from_value(body).unwrap();
    assert_eq!(stats.calls(&t, "getMe"), 2);
    assert_eq!(stats.calls(&t, "getUpdates"), 1);
    assert_eq!(stats.calls(&stranger, "getMe"), 1);
    assert!(!stats.bots[&stranger].registered);
    assert_eq!(stats.bots[&t].pending_updates, 2);
    assert_eq!(stats.conflicts(&t), 0);
    assert_eq!(stats.long_polls, 0);
    assert_eq!(stats, sb.handle.stats(), "HTTP and handle agree");
}
