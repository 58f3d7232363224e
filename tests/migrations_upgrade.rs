//! Schema evolution: upgrades keep data and the previous binary's queries working, databases
//! ahead of the binary are tolerated, manual runs over every bot database, and the lint CLI.

mod common;

use botvisor::content::manifest::Manifest;
use botvisor::modules::core::store::{self as users, SeenUser};
use botvisor::modules::history::store::{self as history, Role};
use botvisor::panel::store as panel_store;
use botvisor::schema::{self, MigrationState};
use common::harness::Harness;
use common::{TestDb, botvisor as run_cli, token};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

async fn connect(url: &str) -> PgConnection {
    url.parse::<PgConnectOptions>()
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn users_checksum(conn: &mut PgConnection) -> String {
    let q = "SELECT md5(string_agg(u::text, ',' ORDER BY user_id)) FROM users u";
    sqlx::query_scalar(q).fetch_one(conn).await.unwrap()
}

/// Applies only the first `n` bot migrations, as an older binary would have.
async fn apply_first(conn: &mut PgConnection, n: usize) {
    let old = Migrator::with_migrations(schema::BOT.migrations[..n].to_vec());
    old.run_direct(None, conn, false).await.unwrap();
}

#[tokio::test]
async fn upgrading_keeps_data_and_the_previous_queries_work() {
    assert!(
        schema::BOT.migrations.len() >= 2,
        "needs at least two bot migrations"
    );
    let db = TestDb::create("bvt_upgrade").await;
    let mut conn = connect(&db.url).await;
    apply_first(&mut conn, 1).await;
    // Sample data written by the first schema version.
    for i in 0..20i64 {
        users::touch_user(
            &mut conn,
            &SeenUser {
                user_id: 100 + i,
                username: Some("u"),
                first_name: "Old",
                last_name: None,
                language_code: Some("ru"),
            },
        )
        .await
        .unwrap();
        history::add_message(
            &mut conn,
            100 + i,
            Some(100 + i),
            Role::User,
            &format!("hello {i}"),
        )
        .await
        .unwrap();
    }
    let users_before = users_checksum(&mut conn).await;
    let messages_before: String = sqlx::query_scalar(
        "SELECT md5(string_agg(chat_id || role || content, ',' ORDER BY id)) FROM messages",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();

    // A start's quick check sees the missing migrations, and the database as current once
    // the new binary applied the rest.
    assert!(
        !schema::is_current_on(&schema::BOT, &mut conn)
            .await
            .unwrap()
    );
    schema::apply_on(&schema::BOT, &mut conn).await.unwrap();
    assert!(
        schema::is_current_on(&schema::BOT, &mut conn)
            .await
            .unwrap()
    );
    let status = schema::status_on(&schema::BOT, &mut conn).await.unwrap();
    assert!(
        status.iter().all(|s| s.state == MigrationState::Applied),
        "{status:?}"
    );
    assert_eq!(users_checksum(&mut conn).await, users_before);
    let messages_after: String = sqlx::query_scalar(
        "SELECT md5(string_agg(chat_id || role || content, ',' ORDER BY id)) FROM messages",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(messages_after, messages_before);

    // The previous binary's queries (everything it did against the first schema) still work
    // on the new schema.
    users::touch_user(
        &mut conn,
        &SeenUser {
            user_id: 100,
            username: None,
            first_name: "Again",
            last_name: Some("X"),
            language_code: None,
        },
    )
    .await
    .unwrap();
    users::set_user_blocked(&mut conn, 101, true).await.unwrap();
    history::add_message(&mut conn, 100, None, Role::Bot, "reply")
        .await
        .unwrap();
    let user = users::get_user(&mut conn, 100).await.unwrap().unwrap();
    assert_eq!(
        (user.first_name.as_str(), user.language_code.as_deref()),
        ("Again", Some("ru"))
    );
    let history = history::chat_history(&mut conn, 100, 10).await.unwrap();
    assert_eq!(history.len(), 2);
    let stats = users::stats(&mut conn).await.unwrap();
    assert_eq!((stats.users_total, stats.blocked), (20, 1));
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_database_ahead_of_the_binary_is_accepted_and_reported() {
    let db = TestDb::create("bvt_ahead").await;
    let mut conn = connect(&db.url).await;
    schema::apply_on(&schema::BOT, &mut conn).await.unwrap();
    // A newer binary added a column and recorded its migration, then was rolled back.
    sqlx::raw_sql(
        "ALTER TABLE users ADD COLUMN vip BOOLEAN NOT NULL DEFAULT FALSE; \
         INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9001, 'add vip', TRUE, '\\x00', 1);",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    schema::apply_on(&schema::BOT, &mut conn).await.unwrap();
    let status = schema::status_on(&schema::BOT, &mut conn).await.unwrap();
    let ahead: Vec<_> = status
        .iter()
        .filter(|s| s.state == MigrationState::Ahead)
        .collect();
    assert_eq!(ahead.len(), 1);
    assert_eq!(
        (ahead[0].version, ahead[0].name.as_str()),
        (9001, "add vip")
    );
    // The old binary's queries keep working on the newer schema.
    users::touch_user(
        &mut conn,
        &SeenUser {
            user_id: 1,
            username: None,
            first_name: "A",
            last_name: None,
            language_code: None,
        },
    )
    .await
    .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_mismatch_fails_the_bot_and_status_shows_it() {
    let mut h = Harness::start(&[]).await;
    let (ok_id, ok_token) = h.add_bot("fine", 9501).await;
    // Prepare the next bot's database with an edited (mismatching) migration 1.
    let next = ok_id + 1;
    let name = h.bot_database(next);
    {
        let admin = h.panel.pool().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let mut conn = connect(&format!("{}/{name}", common::server_url())).await;
        schema::apply_on(&schema::BOT, &mut conn).await.unwrap();
        sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00' WHERE version = 1")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let (id, _) = h.add_bot("tampered", 9502).await;
    assert_eq!(id, next);
    let detail = h.wait_state(id, "failed").await;
    assert!(detail.contains("modified"), "{detail}");
    let status = run_cli(
        &h.panel.env(),
        &["migrate", "status", "--bot", &id.to_string()],
    );
    assert!(status.ok().contains("checksum_mismatch"), "{status:?}");
    h.say(&ok_token, 1, "/start");
    h.reply(&ok_token, 1, 0, |_| true).await;
    assert!(h.stop().await.clean());
}

#[tokio::test]
async fn migrate_all_bots_continues_past_a_failure_and_reports_it() {
    let panel = TestDb::create("bvt_migall").await;
    let env = panel.env();
    run_cli(&env, &["migrate"]).ok();
    let pool = panel.pool().await;
    let mut ids = Vec::new();
    for (i, name) in ["behind", "broken", "fresh"].iter().enumerate() {
        let t = botvisor::token::BotToken::parse(&token(9600 + i as u64)).unwrap();
        let id = panel_store::add_bot(
            &pool,
            &panel.keys(),
            &panel_store::NewBot {
                name,
                token: &t,
                enabled: true,
                database: None,
                manifest: &Manifest::default(),
            },
        )
        .await
        .unwrap();
        ids.push(id);
    }
    let db_url = |id: i64| format!("{}/{}_bot_{id}", common::server_url(), panel.name);
    for (id, prepare) in [(ids[0], "behind"), (ids[1], "broken")] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{}_bot_{id}\"",
            panel.name
        )))
        .execute(&pool)
        .await
        .unwrap();
        let mut conn = connect(&db_url(id)).await;
        if prepare == "behind" {
            apply_first(&mut conn, 1).await;
        } else {
            sqlx::query("CREATE TABLE users (something_else int)")
                .execute(&mut conn)
                .await
                .unwrap();
        }
        conn.close().await.unwrap();
    }
    let run = run_cli(&env, &["migrate", "--all-bots", "--concurrency", "2"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains(&format!("bot {} (", ids[0])) && run.stdout.contains("migrated"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains(&format!("bot {} ", ids[1])) && run.stdout.contains("FAILED"),
        "{run:?}"
    );
    assert!(run.stdout.contains("no database yet"), "{run:?}");
    assert!(
        run.stderr.contains("1 of 3 bot databases failed"),
        "{run:?}"
    );

    let status = run_cli(&env, &["migrate", "status", "--all-bots", "--json"]);
    let json: serde_json::Value = serde_json::from_str(status.ok()).unwrap();
    let entries = json.as_array().unwrap();
    assert_eq!(entries[0]["database"], "panel");
    let behind = entries
        .iter()
        .find(|e| {
            e["database"]
                .as_str()
                .unwrap()
                .starts_with(&format!("bot {} ", ids[0]))
        })
        .unwrap();
    assert!(
        behind["migrations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["state"] == "applied"),
        "{behind}"
    );
    assert!(entries.iter().any(|e| e["missing"] == true));
    pool.close().await;
}

#[test]
fn lint_cli_passes_the_repository_and_rejects_bad_examples() {
    let env = std::collections::HashMap::new();
    let repo = run_cli(&env, &["migrate", "lint"]);
    assert!(repo.ok().contains("no findings"), "{repo:?}");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/migrations-bad");
    let bad = run_cli(&env, &["migrate", "lint", dir]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stdout.contains("drop-column"), "{bad:?}");
    assert!(
        bad.stderr.contains("would break the previous binary"),
        "{bad:?}"
    );
}
