//! A bot's data gone on request: `bot erase` (bot, texts, secrets, database) and, per user,
//! `user export` / `user erase` (every row about the user in the bot's database).

mod common;

use std::sync::Arc;

use botvisor::admin::Admin;
use common::cli::CliPanel;
use common::harness::Harness;
use common::{botvisor_with_input, database_exists};

/// Rows of every table of the bot database whose JSON form mentions `needle`.
async fn rows_mentioning(pool: &sqlx::PgPool, needle: &str) -> Vec<(String, i64)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out = Vec::new();
    for t in tables {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{t}\" x WHERE to_jsonb(x)::text LIKE '%' || $1 || '%'"
        )))
        .bind(needle)
        .fetch_one(pool)
        .await
        .unwrap();
        if n > 0 {
            out.push((t, n));
        }
    }
    out
}

#[tokio::test]
async fn user_erase_leaves_no_row_mentioning_the_user_and_keeps_the_others() {
    let mut h = Harness::start(&[]).await;
    let (id, t) = h.add_bot("gdpr", 6101).await;
    let (gone, kept) = (731_000_111_i64, 731_000_222_i64);
    for user in [gone, kept] {
        for text in ["/start", "/start"] {
            let seq = h.last_seq(&t, user);
            h.say(&t, user, text);
            h.reply(&t, user, seq, |_| true).await;
        }
    }
    let admin = Admin::new(h.pool.clone(), Arc::new(h.settings.clone()));
    let pool = h.bot_pool(id).await;
    assert!(!rows_mentioning(&pool, &gone.to_string()).await.is_empty());

    let export = admin.export_user(id, gone).await.unwrap();
    assert_eq!(export["users"].as_array().unwrap().len(), 1, "{export:?}");
    assert_eq!(export["users"][0]["user_id"], gone);
    assert!(!export["messages"].as_array().unwrap().is_empty());
    assert!(
        !serde_json::to_string(&export)
            .unwrap()
            .contains(&kept.to_string())
    );

    // Unconfirmed: nothing happens.
    let e = admin.erase_user(id, gone, false).await.unwrap_err();
    assert!(e.to_string().contains("--yes"), "{e}");
    assert!(!rows_mentioning(&pool, &gone.to_string()).await.is_empty());

    let erased = admin.erase_user(id, gone, true).await.unwrap();
    let count = |table: &str| erased.iter().find(|e| e.table == table).map(|e| e.rows);
    assert_eq!(count("users"), Some(1), "{erased:?}");
    assert!(count("messages").unwrap() >= 2, "{erased:?}");
    assert_eq!(rows_mentioning(&pool, &gone.to_string()).await, []);
    assert!(!rows_mentioning(&pool, &kept.to_string()).await.is_empty());
    pool.close().await;
    assert!(h.stop().await.clean());
}

#[tokio::test]
async fn bot_erase_removes_the_bot_its_secrets_and_its_database() {
    let p = CliPanel::new("bvt_erase").await;
    let id = p.add("doomed", 6201, &["--disabled"]);
    let ids = id.to_string();
    p.run(&["text", "set", &ids, "start", "Hi"]).ok();
    botvisor_with_input(
        &p.env,
        &["secret", "set", &ids, "openai", "--stdin"],
        b"sk-x",
    )
    .ok();
    let bot_db = p.create_bot_database(id).await;
    bot_db.close().await;
    let database = format!("{}_bot_{id}", p.db.name);
    assert!(database_exists(&database).await);

    // Without --yes: says what would happen, changes nothing.
    let r = p.run(&["bot", "erase", &ids]);
    r.bad_input("add --yes to confirm");
    assert!(r.stderr.contains(&database), "{r:?}");
    assert!(database_exists(&database).await);

    let out = p.run(&["bot", "erase", &ids, "--yes"]);
    let text = out.ok();
    assert!(
        text.contains(&format!("database {database} dropped")),
        "{text}"
    );
    assert!(text.contains("erased"), "{text}");
    assert!(!database_exists(&database).await);
    let pool = p.db.pool().await;
    for table in ["bots", "bot_texts", "bot_secrets", "bot_status"] {
        let column = if table == "bots" { "id" } else { "bot_id" };
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE {column} = $1"
        )))
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(n, 0, "{table}");
    }
    // Erased is erased: the id is unknown now.
    p.run(&["bot", "erase", &ids, "--yes"])
        .bad_input(&format!("no bot with id {id}"));
    pool.close().await;
}
