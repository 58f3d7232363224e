//! The admin CLI against a real panel database: happy paths, bad input (exit code 2 with a
//! message naming the problem), and no full token in any output.

mod common;

use std::collections::HashMap;

use common::{TestDb, botvisor, database_exists, token};

struct Panel {
    db: TestDb,
    env: HashMap<String, String>,
    outputs: Vec<String>,
}

impl Panel {
    async fn new() -> Self {
        let db = TestDb::create("bvt_cli").await;
        let env = db.env();
        let mut p = Self {
            db,
            env,
            outputs: Vec::new(),
        };
        p.run(&["migrate"]).ok();
        p
    }

    fn run(&mut self, args: &[&str]) -> common::Run {
        let r = botvisor(&self.env, args);
        self.outputs.push(format!("{}{}", r.stdout, r.stderr));
        r
    }

    /// Asserts that no output so far held any of `tokens` in full.
    fn assert_no_token_leaked(&self, tokens: &[&str]) {
        for out in &self.outputs {
            for t in tokens {
                let secret = t.split_once(':').unwrap().1;
                assert!(!out.contains(secret), "token leaked in output: {out}");
            }
        }
    }
}

#[tokio::test]
async fn migrate_is_idempotent_and_status_lists_migrations() {
    let mut p = Panel::new().await;
    let second = p.run(&["migrate"]);
    assert!(
        second.ok().contains("panel: nothing to apply"),
        "{second:?}"
    );
    let status = p.run(&["migrate", "status"]);
    let out = status.ok();
    assert!(out.contains("VERSION"), "{out}");
    assert!(out.contains("panel"), "{out}");
    assert!(out.contains("applied"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(p.run(&["migrate", "status", "--json"]).ok()).unwrap();
    assert_eq!(json[0]["database"], "panel");
    let first = &json[0]["migrations"][0];
    assert_eq!(first["version"], 1);
    assert_eq!(first["state"], "applied");
    assert!(first["applied_at"].is_string());
}

#[tokio::test]
async fn bot_lifecycle_commands_work_and_mask_tokens() {
    let mut p = Panel::new().await;
    let t1 = token(1001);
    let t2 = token(1002);
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.json");
    std::fs::write(&manifest, include_str!("../docs/manifest.example.json")).unwrap();

    let id: i64 = p
        .run(&[
            "bot",
            "add",
            "--name",
            "shop",
            "--token",
            &t1,
            "--manifest",
            manifest.to_str().unwrap(),
        ])
        .ok()
        .trim()
        .parse()
        .unwrap();
    let id2: i64 = p
        .run(&[
            "bot",
            "add",
            "--name",
            "news",
            "--token",
            &t2,
            "--disabled",
            "--database",
            "custom_news_db",
        ])
        .ok()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(id, id2);

    let list = p.run(&["bot", "list"]);
    let out = list.ok();
    assert!(out.contains("shop") && out.contains("news"), "{out}");
    assert!(out.contains("1001:****"), "{out}");
    assert!(out.contains(&format!("{}_bot_{id}", p.db.name)), "{out}");
    assert!(out.contains("custom_news_db"), "{out}");

    let json: serde_json::Value =
        serde_json::from_str(p.run(&["bot", "list", "--json"]).ok()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    assert_eq!(json[0]["token"], "1001:****");
    assert_eq!(json[1]["enabled"], false);

    let show: serde_json::Value =
        serde_json::from_str(p.run(&["bot", "show", &id.to_string(), "--json"]).ok()).unwrap();
    assert_eq!(show["name"], "shop");
    assert_eq!(show["state"], serde_json::Value::Null);
    let text = p.run(&["bot", "show", &id2.to_string()]);
    assert!(text.ok().contains("enabled:     no"));

    assert!(
        p.run(&["bot", "enable", &id2.to_string()])
            .ok()
            .contains("enabled")
    );
    assert!(
        p.run(&["bot", "disable", &id.to_string()])
            .ok()
            .contains("disabled")
    );
    let t3 = token(1003);
    let set = p.run(&["bot", "set-token", &id.to_string(), &t3]);
    assert!(set.ok().contains("1003:****"));
    let show: serde_json::Value =
        serde_json::from_str(p.run(&["bot", "show", &id.to_string(), "--json"]).ok()).unwrap();
    assert_eq!(show["token"], "1003:****");
    assert_eq!(show["enabled"], false);

    // Rename: the rule of `bot add` applies, and names stay unique.
    assert!(
        p.run(&["bot", "rename", &id.to_string(), "shop two"])
            .ok()
            .contains("renamed to shop two")
    );
    let show: serde_json::Value =
        serde_json::from_str(p.run(&["bot", "show", &id.to_string(), "--json"]).ok()).unwrap();
    assert_eq!(show["name"], "shop two");
    p.run(&["bot", "rename", &id.to_string(), "news"])
        .bad_input("\"news\" already exists");
    p.run(&["bot", "rename", &id.to_string(), "bad/name"])
        .bad_input("invalid bot name");
    p.run(&["bot", "rename", "999999", "other"])
        .bad_input("no bot with id 999999");
    p.run(&["bot", "rename", &id.to_string(), "shop"]).ok();

    // Remove with --drop-database: the database the bot would use goes too.
    let bot_db = format!("{}_bot_{id}", p.db.name);
    // Create the bot's database the way the daemon would, then drop it via the CLI.
    {
        let pool = p.db.pool().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{bot_db}\"")))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    assert!(database_exists(&bot_db).await);
    p.run(&["bot", "remove", &id.to_string(), "--drop-database"])
        .bad_input("--yes");
    let removed = p.run(&["bot", "remove", &id.to_string(), "--drop-database", "--yes"]);
    assert!(
        removed.ok().contains(&format!("database {bot_db} dropped")),
        "{removed:?}"
    );
    assert!(!database_exists(&bot_db).await);
    p.run(&["bot", "remove", &id2.to_string()])
        .bad_input("add --yes to confirm");
    let kept = p.run(&["bot", "remove", &id2.to_string(), "--yes"]);
    assert!(
        kept.ok().contains("database custom_news_db kept"),
        "{kept:?}"
    );
    let empty: serde_json::Value =
        serde_json::from_str(p.run(&["bot", "list", "--json"]).ok()).unwrap();
    assert_eq!(empty, serde_json::json!([]));

    p.assert_no_token_leaked(&[&t1, &t2, &t3]);
}

#[tokio::test]
async fn bad_input_exits_2_with_a_message_naming_the_problem() {
    let mut p = Panel::new().await;
    let t1 = token(2001);
    let id = p
        .run(&["bot", "add", "--name", "shop", "--token", &t1])
        .ok()
        .trim()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let bad_manifest = dir.path().join("bad.json");
    std::fs::write(
        &bad_manifest,
        r#"{"menus": {"main": {"text": "m", "buttons": [[{"label": "a", "menu": "nope"}]]}}}"#,
    )
    .unwrap();
    let bad = bad_manifest.to_str().unwrap();
    let wrong_secret = "2001:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw";

    p.run(&["bot", "add", "--name", "x", "--token", wrong_secret])
        .bad_input("malformed bot token");
    p.run(&["bot", "add", "--name", "x", "--token", "nonsense"])
        .bad_input("malformed bot token");
    p.run(&["bot", "add", "--name", "shop", "--token", &token(2002)])
        .bad_input("\"shop\" already exists");
    p.run(&["bot", "add", "--name", "other", "--token", &t1])
        .bad_input("already registered");
    p.run(&[
        "bot",
        "add",
        "--name",
        "x",
        "--token",
        &token(2003),
        "--manifest",
        bad,
    ])
    .bad_input("menus.main.buttons[0][0].menu");
    p.run(&[
        "bot",
        "add",
        "--name",
        "x",
        "--token",
        &token(2003),
        "--database",
        "bad name",
    ])
    .bad_input("invalid --database");
    p.run(&["bot", "add", "--name", "", "--token", &token(2003)])
        .bad_input("invalid bot name");
    p.run(&["bot", "show", "999999"])
        .bad_input("no bot with id 999999");
    p.run(&["bot", "enable", "999999"])
        .bad_input("no bot with id 999999");
    p.run(&["bot", "disable", "999999"])
        .bad_input("no bot with id 999999");
    p.run(&["bot", "set-token", "999999", &token(2004)])
        .bad_input("no bot with id 999999");
    p.run(&["bot", "set-token", &id, "123:short"])
        .bad_input("malformed bot token");
    p.run(&["bot", "remove", "999999"])
        .bad_input("no bot with id 999999");
    p.run(&["text", "set", "999999", "start", "hi"])
        .bad_input("no bot with id 999999");
    p.run(&["text", "set", &id, "start", "Hi {name}"])
        .bad_input("unknown placeholder {name}");
    // 2,100 emoji are 2,100 characters but 4,200 UTF-16 units, as Telegram counts.
    let long = "😀".repeat(2100);
    p.run(&["text", "set", &id, "start", &long])
        .bad_input("text is 4200 UTF-16 units long (Telegram's limit is 4096)");
    p.run(&["text", "set", &id, "Bad Key", "x"])
        .bad_input("invalid text key");
    p.run(&["text", "set", &id, "start", "x", "--lang", "English"])
        .bad_input("invalid language");
    p.run(&["text", "get", &id, "missing"])
        .bad_input("has no text missing [en]");
    p.run(&["text", "import", &id, "/nonexistent.json"])
        .bad_input("cannot read");
    p.run(&["config", "set", &id, bad])
        .bad_input("menus.main.buttons[0][0].menu");
    p.run(&["config", "show", "999999"])
        .bad_input("no bot with id 999999");
    p.run(&["reload", "999999"])
        .bad_input("no bot with id 999999");

    // An unreachable database: the URL is named, the password masked.
    let mut env = HashMap::new();
    env.insert(
        "BOTVISOR_PANEL_URL".to_string(),
        "postgres://postgres:hunter2@127.0.0.1:1/nowhere".to_string(),
    );
    let r = botvisor(&env, &["bot", "list"]);
    r.bad_input("127.0.0.1:1/nowhere");
    assert!(!r.stderr.contains("hunter2"), "{r:?}");
    let r = botvisor(&env, &["migrate"]);
    r.bad_input("127.0.0.1:1/nowhere");
    // No panel URL at all.
    botvisor(&HashMap::new(), &["bot", "list"]).bad_input("BOTVISOR_PANEL_URL");

    p.assert_no_token_leaked(&[&t1, wrong_secret]);
}

#[tokio::test]
async fn texts_manifests_and_reload_round_trip() {
    let mut p = Panel::new().await;
    let id = p
        .run(&["bot", "add", "--name", "shop", "--token", &token(3001)])
        .ok()
        .trim()
        .to_owned();

    assert!(
        p.run(&["text", "set", &id, "start", "Hello, {first_name}!"])
            .ok()
            .contains("[en]")
    );
    p.run(&[
        "text",
        "set",
        &id,
        "start",
        "Привет, {first_name}!",
        "--lang",
        "ru",
    ])
    .ok();
    assert_eq!(
        p.run(&["text", "get", &id, "start"]).ok().trim(),
        "Hello, {first_name}!"
    );
    // Delete: the named language only; deleting what is not there says so.
    p.run(&["text", "set", &id, "gone", "Soon gone"]).ok();
    assert!(
        p.run(&["text", "delete", &id, "gone"])
            .ok()
            .contains("text gone [en] deleted")
    );
    p.run(&["text", "get", &id, "gone"])
        .bad_input("has no text gone [en]");
    p.run(&["text", "delete", &id, "gone"])
        .bad_input("has no text gone [en]");
    p.run(&["text", "delete", "999999", "start"])
        .bad_input("no bot with id 999999");
    assert_eq!(
        p.run(&["text", "get", &id, "start", "--lang", "ru"])
            .ok()
            .trim(),
        "Привет, {first_name}!"
    );

    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("texts.json");
    std::fs::write(
        &json,
        r#"{"help": "Help text", "menu_main": {"en": "Menu", "ru": "Меню"}}"#,
    )
    .unwrap();
    assert!(
        p.run(&["text", "import", &id, json.to_str().unwrap()])
            .ok()
            .contains("3 texts")
    );
    let toml = dir.path().join("texts.toml");
    std::fs::write(
        &toml,
        "bye = \"Bye\"\n[thanks]\nen = \"Thanks\"\nde = \"Danke\"\n",
    )
    .unwrap();
    assert!(
        p.run(&["text", "import", &id, toml.to_str().unwrap()])
            .ok()
            .contains("3 texts")
    );
    // An invalid text anywhere in a file imports nothing.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"good": "ok", "bad": "{oops}"}"#).unwrap();
    p.run(&["text", "import", &id, bad.to_str().unwrap()])
        .bad_input("unknown placeholder {oops}");

    let list: serde_json::Value =
        serde_json::from_str(p.run(&["text", "list", &id, "--json"]).ok()).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 8, "{list}");
    let table = p.run(&["text", "list", &id]);
    assert!(table.ok().contains("menu_main"));

    let export: serde_json::Value =
        serde_json::from_str(p.run(&["text", "export", &id]).ok()).unwrap();
    assert_eq!(export["thanks"]["de"], "Danke");
    assert_eq!(export["start"]["ru"], "Привет, {first_name}!");
    // What export prints, import takes back unchanged.
    let round = dir.path().join("round.json");
    std::fs::write(&round, export.to_string()).unwrap();
    assert!(
        p.run(&["text", "import", &id, round.to_str().unwrap()])
            .ok()
            .contains("8 texts")
    );

    let manifest = dir.path().join("m.json");
    std::fs::write(&manifest, include_str!("../docs/manifest.example.json")).unwrap();
    assert!(
        p.run(&["config", "set", &id, manifest.to_str().unwrap()])
            .ok()
            .contains("replaced")
    );
    let shown: serde_json::Value =
        serde_json::from_str(p.run(&["config", "show", &id]).ok()).unwrap();
    assert_eq!(shown["main_menu"], "main");

    assert!(p.run(&["reload", &id]).ok().contains(&format!("bot {id}")));
    assert!(p.run(&["reload"]).ok().contains("every bot"));
}

#[tokio::test]
async fn config_check_prints_effective_settings_masked() {
    let mut env = HashMap::new();
    env.insert(
        "BOTVISOR_PANEL_URL".to_string(),
        "postgres://admin:s3cret@db.example:5432/panel".to_string(),
    );
    env.insert(
        "BOTVISOR__BOT_DATABASE__CONNECTION_BUDGET".to_string(),
        "12".to_string(),
    );
    let r = botvisor(&env, &["config", "check", "--offline"]);
    let out = r.ok();
    assert!(
        out.contains("postgres://admin:****@db.example:5432/panel"),
        "{out}"
    );
    assert!(out.contains("connection_budget = 12"), "{out}");
    assert!(!out.contains("s3cret"), "{out}");
    env.insert("BOTVISOR__SUPERVISOR__NOPE".to_string(), "1".to_string());
    botvisor(&env, &["config", "check", "--offline"]).bad_input("nope");
}
