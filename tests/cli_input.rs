//! Bad input at the CLI's edge: one line on stderr, exit code 2, the problem named — for the
//! cases that used to slip through (control characters, NUL, clap's own errors, databases
//! that are not the bot's to use, a bot removed without confirmation, an unreachable panel).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::cli::CliPanel as Panel;
use common::{botvisor, database_exists, token};

#[tokio::test]
async fn control_characters_and_nul_are_refused_with_their_position() {
    let p = Panel::new("bvt_clin").await;
    let id = p.add("shop", 4001, &[]).to_string();
    for (value, needle) in [
        ("a\u{1}b", "U+0001 at position 2"),
        ("bell\u{7}", "U+0007 at position 5"),
        ("\u{1b}[31mred", "U+001B at position 1"),
    ] {
        p.run(&["text", "set", &id, "start", value])
            .bad_input(needle);
    }
    // A NUL cannot be an argument; it comes in through files (below).
    p.run(&["text", "set", &id, "start", "two\nlines\tand a tab"])
        .ok();

    let dir = tempfile::tempdir().unwrap();
    let texts = dir.path().join("texts.json");
    std::fs::write(&texts, r#"{"ok": "fine", "bad": "x\u0000y"}"#).unwrap();
    p.run(&["text", "import", &id, texts.to_str().unwrap()])
        .bad_input("U+0000 at position 2");
    let manifest = dir.path().join("m.json");
    std::fs::write(
        &manifest,
        r#"{"menus": {"main": {"text": "a\u0000", "buttons": []}}}"#,
    )
    .unwrap();
    let m = manifest.to_str().unwrap();
    p.run(&["config", "set", &id, m])
        .bad_input("menus.main.text: contains a NUL character");
    p.run(&[
        "bot",
        "add",
        "--name",
        "x",
        "--token",
        &token(4002),
        "--manifest",
        m,
    ])
    .bad_input("menus.main.text: contains a NUL character");
    // Nothing of the refused writes landed.
    let export: serde_json::Value =
        serde_json::from_str(p.run(&["text", "export", &id]).ok()).unwrap();
    assert_eq!(
        export,
        serde_json::json!({"start": {"en": "two\nlines\tand a tab"}})
    );
}

#[tokio::test]
async fn language_codes_must_be_ietf_like() {
    let p = Panel::new("bvt_clin").await;
    let id = p.add("shop", 4101, &[]).to_string();
    p.run(&["text", "set", &id, "start", "x", "--lang", "english"])
        .bad_input("invalid language \"english\"");
    p.run(&["text", "set", &id, "start", "x", "--lang", "pt-br"])
        .ok();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.json");
    std::fs::write(&manifest, r#"{"default_language": "russian"}"#).unwrap();
    p.run(&["config", "set", &id, manifest.to_str().unwrap()])
        .bad_input("default_language: \"russian\" is not a language code");
    std::fs::write(&manifest, r#"{"default_language": "ru"}"#).unwrap();
    p.run(&["config", "set", &id, manifest.to_str().unwrap()])
        .ok();
}

#[tokio::test]
async fn clap_errors_are_one_line_and_help_and_version_still_work() {
    let env = HashMap::new();
    botvisor(&env, &["bot", "show", "abc"]).bad_input("invalid value 'abc' for '<ID>'");
    botvisor(&env, &["bot", "list", "--state", "asleep"])
        .bad_input("[possible values: starting, running");
    botvisor(&env, &["bot", "add", "--name", "x"]).bad_input("--token");
    botvisor(&env, &["bot"]).bad_input("subcommand is missing");
    let help = botvisor(&env, &["bot", "--help"]);
    assert!(
        help.ok().contains("Register, inspect and change bots"),
        "{help:?}"
    );
    let version = botvisor(&env, &["--version"]);
    let line = version.ok().trim().to_owned();
    assert!(
        line.starts_with(&format!("botvisor {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    assert!(line.contains(", built "), "{line}");
}

#[tokio::test]
async fn tokens_say_their_length_and_duplicates_name_the_holder() {
    let p = Panel::new("bvt_clin").await;
    let t = token(4201);
    let id = p.add("shop", 4201, &[]).to_string();
    let short = &t[..t.len() - 1];
    let r = p.run(&["bot", "add", "--name", "x", "--token", short]);
    r.bad_input("the secret part (after the colon) has 34 characters; expected 35");
    assert!(!r.stderr.contains(&short[5..]), "{r:?}");
    p.run(&["bot", "add", "--name", "other", "--token", &t])
        .bad_input(&format!("already registered for bot {id} (shop)"));
    let id2 = p.add("news", 4202, &[]).to_string();
    p.run(&["bot", "set-token", &id2, &t])
        .bad_input(&format!("already registered for bot {id} (shop)"));
}

#[tokio::test]
async fn databases_that_are_not_the_bots_to_use_are_refused() {
    let p = Panel::new("bvt_clin").await;
    let first = p
        .add(
            "first",
            4301,
            &["--database", &format!("{}_custom", p.db.name)],
        )
        .to_string();
    let second = p.add("second", 4302, &[]).to_string();
    let panel_url = p.db.url.replace("127.0.0.1", "localhost");
    for (database, needle) in [
        ("postgres".to_owned(), "belongs to PostgreSQL itself"),
        ("template0".to_owned(), "belongs to PostgreSQL itself"),
        ("template1".to_owned(), "belongs to PostgreSQL itself"),
        (p.db.name.clone(), "the panel's own database"),
        (panel_url, "the panel's own database"),
        (
            format!("{}_custom", p.db.name),
            &format!("already used by bot {first}"),
        ),
        (
            format!("{}_bot_{second}", p.db.name),
            &format!("already used by bot {second}"),
        ),
    ] {
        p.run(&[
            "bot",
            "add",
            "--name",
            "x",
            "--token",
            &token(4303),
            "--database",
            &database,
        ])
        .bad_input(needle);
    }
    let list: serde_json::Value =
        serde_json::from_str(p.run(&["bot", "list", "--json"]).ok()).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn remove_says_what_would_happen_until_confirmed() {
    let p = Panel::new("bvt_clin").await;
    let id = p.add("shop", 4401, &[]).to_string();
    p.run(&["text", "set", &id, "start", "Hi"]).ok();
    let db = format!("{}_bot_{id}", p.db.name);
    let r = p.run(&["bot", "remove", &id]);
    r.bad_input(&format!(
        "this would remove bot {id} (shop) and its texts; its database {db} is kept \
         (add --drop-database to drop it too); add --yes to confirm"
    ));
    p.run(&["bot", "remove", &id, "--drop-database"])
        .bad_input(&format!("and drop its database {db} for good; add --yes"));
    // Nothing happened.
    assert_eq!(p.run(&["text", "get", &id, "start"]).ok().trim(), "Hi");
    let removed = p.run(&["bot", "remove", &id, "--yes"]);
    assert!(
        removed.ok().contains(&format!("database {db} kept")),
        "{removed:?}"
    );
    p.run(&["bot", "show", &id])
        .bad_input(&format!("no bot with id {id}"));
    assert!(!database_exists(&db).await);
}

#[tokio::test]
async fn an_unreachable_panel_fails_fast_with_the_cause() {
    let mut env = HashMap::new();
    env.insert(
        "BOTVISOR_PANEL_URL".to_string(),
        "postgres://postgres:hunter2@127.0.0.1:1/nowhere".to_string(),
    );
    for args in [
        &["bot", "list"][..],
        &["bot", "show", "1"],
        &["text", "list", "1"],
        &["migrate", "status"],
        &["reload"],
    ] {
        let started = Instant::now();
        let r = botvisor(&env, args);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{args:?} took {:?}",
            started.elapsed()
        );
        r.bad_input("127.0.0.1:1/nowhere");
        assert!(r.stderr.contains("refused"), "{args:?}: {r:?}");
        assert!(!r.stderr.contains("pool timed out"), "{r:?}");
        assert!(!r.stderr.contains("hunter2"), "{r:?}");
    }
    let check = botvisor(&env, &["config", "check"]);
    assert_eq!(check.code, 1, "{check:?}");
    assert!(check.stdout.contains("# panel: unreachable: "), "{check:?}");
    assert!(check.stderr.contains("refused"), "{check:?}");
    let offline = botvisor(&env, &["config", "check", "--offline"]);
    assert!(
        offline.ok().contains("# panel: not tried (--offline)"),
        "{offline:?}"
    );
    let p = Panel::new("bvt_clin").await;
    let reachable = p.run(&["config", "check"]);
    assert!(
        reachable.ok().contains("# panel: reachable at postgres://"),
        "{reachable:?}"
    );
}
