//! What the admin CLI prints: `bot list` (details, alignment, state filter, summary),
//! `history` (empty chats, zoned timestamps), `migrate --all-bots` (progress, summary) and
//! `config set`/`config patch` (what changes).

mod common;

use botvisor::panel::store::{self, StatusUpdate};
use common::cli::CliPanel as Panel;

#[tokio::test]
async fn bot_list_shows_details_aligned_filters_by_state_and_sums_up() {
    let p = Panel::new("bvt_clout").await;
    let long_name = "a rather long bot name that goes on and on for ever";
    let a = p.add("short", 5001, &[]);
    let b = p.add(long_name, 5002, &[]);
    let c = p.add("off", 5003, &["--disabled"]);
    let pool = p.db.pool().await;
    let long_detail = format!("polling failed: {}", "x".repeat(200));
    for (id, state, detail, username) in [
        (a, "running", "polling", Some("short_bot")),
        (
            b,
            "failed",
            long_detail.as_str(),
            Some("a_username_of_thirty_two_chars_x"),
        ),
        (c, "stopped", "disabled", None),
    ] {
        store::upsert_status(
            &pool,
            &StatusUpdate {
                bot_id: id,
                instance: "test",
                state,
                detail,
                telegram_username: username,
                started: true,
            },
        )
        .await
        .unwrap();
    }
    pool.close().await;

    let out = p.run(&["bot", "list"]).ok().to_owned();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[0].starts_with("ID "), "{out}");
    // Every column starts where its header does, however long the values.
    for header in [
        "NAME", "TOKEN", "ENABLED", "STATE", "USERNAME", "DATABASE", "DETAIL",
    ] {
        let column = lines[0].find(header).unwrap();
        for row in &lines[1..4] {
            let before: String = row.chars().take(column).collect();
            assert!(
                before.ends_with(' '),
                "{header} misaligned in {row:?}\n{out}"
            );
            assert_ne!(
                row.chars().nth(column),
                Some(' '),
                "{header} in {row:?}\n{out}"
            );
        }
    }
    // ID first, NAME second: what scripts/dev.sh reads.
    assert_eq!(
        lines[1].split_whitespace().take(2).collect::<Vec<_>>(),
        [a.to_string().as_str(), "short"]
    );
    assert!(out.contains("a rather long bot name that goe…"), "{out}");
    assert!(!out.contains(long_name), "{out}");
    assert!(out.contains("polling failed: xxx"), "{out}");
    assert!(out.contains("…"), "{out}");
    assert!(!out.contains(&"x".repeat(100)), "{out}");
    assert_eq!(lines[4], "3 bots: 1 running, 1 failed, 1 disabled", "{out}");

    let failed = p
        .run(&["bot", "list", "--state", "failed,running"])
        .ok()
        .to_owned();
    assert!(
        failed.contains("short") && failed.contains("a rather"),
        "{failed}"
    );
    assert!(!failed.contains(" off "), "{failed}");
    assert!(
        failed.ends_with("2 bots: 1 running, 1 failed (state failed, running; 3 bots in all)\n"),
        "{failed}"
    );
    let json: serde_json::Value = serde_json::from_str(
        p.run(&[
            "bot", "list", "--json", "--state", "stopped", "--state", "failed",
        ])
        .ok(),
    )
    .unwrap();
    let ids: Vec<i64> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [b, c]);
    assert_eq!(json[0]["detail"], long_detail.as_str());
}

#[tokio::test]
async fn history_says_when_a_chat_is_empty_and_prints_zoned_timestamps() {
    let p = Panel::new("bvt_clout").await;
    let id = p.add("shop", 5101, &[]);
    let pool = p.create_bot_database(id).await;
    let empty = p.run(&["history", &id.to_string(), "--chat", "42"]);
    assert_eq!(
        empty.ok().trim(),
        format!("no messages in chat 42 of bot {id}")
    );
    sqlx::query(
        "INSERT INTO messages (chat_id, role, content, created_at) \
         VALUES (42, 'user', 'hello', '2026-01-02T03:04:05Z')",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let one = p.run(&["history", &id.to_string(), "--chat", "42"]);
    assert_eq!(one.ok().trim(), "2026-01-02 03:04:05 UTC user  hello");
}

#[tokio::test]
async fn migrate_all_bots_shows_progress_and_says_when_nothing_was_pending() {
    let p = Panel::new("bvt_clout").await;
    let a = p.add("one", 5201, &[]);
    let b = p.add("two", 5202, &[]);
    p.add("three", 5203, &[]);
    // Bot a's database is created empty (all pending), b's fully migrated, the third missing.
    let pool = p.db.pool().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{}_bot_{a}\"",
        p.db.name
    )))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    p.create_bot_database(b).await.close().await;
    let pending = botvisor::schema::BOT
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .count();

    let first = p.run(&["migrate", "--all-bots"]);
    let out = first.ok();
    assert!(out.contains("panel: nothing to apply"), "{out}");
    for n in 1..=3 {
        assert!(out.contains(&format!("[{n}/3] bot ")), "{out}");
    }
    assert!(
        out.contains(&format!("migrated ({pending} applied)")),
        "{out}"
    );
    assert!(
        out.trim_end().ends_with(&format!(
            "3 bot databases: 1 migrated ({pending} migrations applied), 1 up to date, \
             1 not created yet, 0 failed"
        )),
        "{out}"
    );
    let again = p.run(&["migrate", "--all-bots"]);
    assert!(
        again
            .ok()
            .trim_end()
            .ends_with("3 bot databases: nothing to apply (2 up to date, 1 not created yet)"),
        "{again:?}"
    );
    let status = p.run(&["migrate", "status", "--all-bots"]);
    let out = status.ok();
    assert!(out.contains("== [1/3] bot "), "{out}");
    assert!(
        out.trim_end().ends_with(
            "3 bot databases: 2 up to date, 0 with pending or unusual migrations, 1 not created yet"
        ),
        "{out}"
    );
}

#[tokio::test]
async fn config_set_and_patch_say_what_changes() {
    let p = Panel::new("bvt_clout").await;
    let id = p.add("shop", 5301, &[]).to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.json");
    let write = |json: &str| {
        std::fs::write(&file, json).unwrap();
        file.to_str().unwrap().to_owned()
    };
    let f = write(r#"{"default_language": "ru", "history": {"retention_days": 30}}"#);
    let set = p.run(&["config", "set", &id, &f]);
    assert_eq!(
        set.ok(),
        format!("added: history\nchanged: default_language\nmanifest of bot {id} replaced\n")
    );
    let again = p.run(&["config", "set", &id, &f]);
    assert!(again.ok().starts_with("no changes\n"), "{again:?}");

    let f = write(r#"{"history": null, "admins": [7]}"#);
    let patch = p.run(&["config", "patch", &id, &f]);
    assert_eq!(
        patch.ok(),
        format!("removed: history\nchanged: admins\nmanifest of bot {id} patched\n")
    );
    let shown: serde_json::Value =
        serde_json::from_str(p.run(&["config", "show", &id]).ok()).unwrap();
    assert_eq!(shown["default_language"], "ru");
    assert_eq!(shown["admins"], serde_json::json!([7]));
    assert!(shown.get("history").is_none(), "{shown}");

    // The patched manifest is validated as a whole: nothing is saved when it is invalid.
    let f = write(r#"{"main_menu": "nope"}"#);
    let bad = p.run(&["config", "patch", &id, &f]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert_eq!(bad.stderr.trim().lines().count(), 1, "{bad:?}");
    let f = write("not json");
    p.run(&["config", "patch", &id, &f])
        .bad_input("the patch is not valid JSON");
    let after: serde_json::Value =
        serde_json::from_str(p.run(&["config", "show", &id]).ok()).unwrap();
    assert_eq!(after, shown);
}

#[tokio::test]
async fn texts_the_manifest_names_without_a_value_are_warned_about() {
    let p = Panel::new("bvt_clout").await;
    let id = p.add("shop", 5401, &[]).to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.json");
    std::fs::write(
        &file,
        r#"{"main_menu": "main", "menus": {"main": {"text": "menu_main",
            "buttons": [[{"label": "btn_about", "text": "about"}]]}}}"#,
    )
    .unwrap();
    let set = p.run(&["config", "set", &id, file.to_str().unwrap()]);
    set.ok();
    assert!(
        set.stderr.contains(
            "warning: bot {id}: texts missing in en: "
                .replace("{id}", &id)
                .as_str()
        ),
        "{set:?}"
    );
    for key in ["menu_main", "btn_about", "about"] {
        assert!(set.stderr.contains(key), "{key}: {set:?}");
    }
    for (key, value) in [
        ("menu_main", "Menu"),
        ("btn_about", "About"),
        ("about", "Us"),
    ] {
        p.run(&["text", "set", &id, key, value]).ok();
    }
    // All set: no warning; deleting one brings it back.
    let quiet = p.run(&["config", "set", &id, file.to_str().unwrap()]);
    assert!(!quiet.stderr.contains("warning"), "{quiet:?}");
    let deleted = p.run(&["text", "delete", &id, "about"]);
    deleted.ok();
    assert!(
        deleted.stderr.contains("texts missing in en: about"),
        "{deleted:?}"
    );
}
