//! The panel's triggers: every write to `bots` / `bot_texts` notifies the right channel with
//! the right payload, whoever writes; `bot_status` writes notify nothing.

mod common;

use std::time::Duration;

use botvisor::content::manifest::Manifest;
use botvisor::panel::store::{self, NewBot, StatusUpdate};
use botvisor::token::BotToken;
use common::{TestDb, token};
use sqlx::postgres::PgListener;

async fn next(listener: &mut PgListener) -> Option<(String, String)> {
    match tokio::time::timeout(Duration::from_secs(5), listener.recv()).await {
        Ok(Ok(n)) => Some((n.channel().to_owned(), n.payload().to_owned())),
        Ok(Err(e)) => panic!("listener failed: {e}"),
        Err(_) => None,
    }
}

/// Collects notifications until the marker sent last arrives, so "nothing else" is checked
/// without waiting for a timeout.
async fn drain_until_marker(
    listener: &mut PgListener,
    pool: &sqlx::PgPool,
) -> Vec<(String, String)> {
    sqlx::query("SELECT pg_notify('test_marker', 'end')")
        .execute(pool)
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let n = next(listener).await.expect("marker notification");
        if n.0 == "test_marker" {
            return seen;
        }
        seen.push(n);
    }
}

fn ev(channel: &str, id: i64) -> (String, String) {
    (channel.to_owned(), id.to_string())
}

#[tokio::test]
async fn writes_notify_the_right_channels() {
    let db = TestDb::create("bvt_notify").await;
    botvisor::schema::apply(&botvisor::schema::PANEL, &db.url.parse().unwrap())
        .await
        .unwrap();
    let pool = db.pool().await;
    let mut listener = PgListener::connect(&db.url).await.unwrap();
    listener
        .listen_all(["bots_changed", "reload_config", "test_marker"])
        .await
        .unwrap();

    let t = BotToken::parse(&token(4001)).unwrap();
    let id = store::add_bot(
        &pool,
        &db.keys(),
        &NewBot {
            name: "a",
            token: &t,
            enabled: true,
            database: None,
            manifest: &Manifest::default(),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        drain_until_marker(&mut listener, &pool).await,
        vec![ev("bots_changed", id)]
    );

    store::set_enabled(&pool, id, false).await.unwrap();
    assert_eq!(
        drain_until_marker(&mut listener, &pool).await,
        vec![ev("bots_changed", id)]
    );

    let t2 = BotToken::parse(&token(4002)).unwrap();
    store::set_token(&pool, &db.keys(), id, &t2).await.unwrap();
    assert_eq!(
        drain_until_marker(&mut listener, &pool).await,
        vec![ev("bots_changed", id)]
    );

    let manifest = Manifest::from_json_str(r#"{"default_language": "ru"}"#).unwrap();
    store::set_manifest(&pool, id, &manifest).await.unwrap();
    assert_eq!(
        drain_until_marker(&mut listener, &pool).await,
        vec![ev("bots_changed", id), ev("reload_config", id)]
    );

    store::set_text(&pool, id, "start", "en", "Hi")
        .await
        .unwrap();
    assert_eq!(
        drain_until_marker(&mut listener, &pool).await,
        vec![ev("reload_config", id)]
    );

    // A whole import is one transaction and one notification.
    let many: Vec<(String, String, String)> = (0..50)
        .map(|i| (format!("k{i}"), "en".to_string(), format!("v{i}")))
        .collect();
    store::import_texts(&pool, id, &many).await.unwrap();
    assert_eq!(
        drain_until_marker(&mut listener, &pool).await,
        vec![ev("reload_config", id)]
    );

    // Plain SQL, as an external admin panel would write, notifies the same way.
    sqlx::query("UPDATE bot_texts SET value = 'changed' WHERE bot_id = $1 AND key = 'start'")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        drain_until_marker(&mut listener, &pool).await,
        vec![ev("reload_config", id)]
    );
    sqlx::query("DELETE FROM bot_texts WHERE bot_id = $1 AND key = 'k1'")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        drain_until_marker(&mut listener, &pool).await,
        vec![ev("reload_config", id)]
    );

    // Status writes notify nothing.
    store::upsert_status(
        &pool,
        &StatusUpdate {
            bot_id: id,
            instance: "test",
            state: "running",
            detail: "",
            telegram_username: Some("a_bot"),
            started: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(drain_until_marker(&mut listener, &pool).await, vec![]);
    let status = store::get_status(&pool, id).await.unwrap().unwrap();
    assert_eq!(status.state, "running");
    assert_eq!(status.telegram_username.as_deref(), Some("a_bot"));

    // Manual reloads: one bot, or every bot with an empty payload.
    store::notify_reload(&pool, Some(id)).await.unwrap();
    store::notify_reload(&pool, None).await.unwrap();
    assert_eq!(
        drain_until_marker(&mut listener, &pool).await,
        vec![
            ev("reload_config", id),
            ("reload_config".into(), String::new())
        ]
    );

    // The version is bumped by every change of the row.
    let before = store::get_bot(&pool, id).await.unwrap().version;
    store::set_enabled(&pool, id, true).await.unwrap();
    assert_eq!(store::get_bot(&pool, id).await.unwrap().version, before + 1);
    drain_until_marker(&mut listener, &pool).await;

    store::remove_bot(&pool, id).await.unwrap();
    let after_delete = drain_until_marker(&mut listener, &pool).await;
    assert!(
        after_delete.contains(&ev("bots_changed", id)),
        "{after_delete:?}"
    );
    // The cascade removes texts, which also asks for a reload; nothing else.
    assert!(
        after_delete
            .iter()
            .all(|e| e == &ev("bots_changed", id) || e == &ev("reload_config", id)),
        "{after_delete:?}"
    );
    pool.close().await;
}
