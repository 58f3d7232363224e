//! Bot tokens at rest: sealed in the panel with a keyed hash for uniqueness, clear tokens of
//! older rows sealed by `botvisor migrate`, the daemon refusing a missing or wrong key, no
//! clear token in a backup, and a master key rotation that survives a crash half-way.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use botvisor::crypto::{Keyring, MasterKey, token_aad, write_key_file};
use botvisor::panel::store;
use common::cli::CliPanel;
use common::harness::Harness;
use common::{botvisor, token};
use secrecy::ExposeSecret;

/// `(token, token_sealed)` of every bot, by id.
async fn token_columns(pool: &sqlx::PgPool) -> Vec<(i64, Option<String>, Option<Vec<u8>>)> {
    sqlx::query_as("SELECT id, token, token_sealed FROM bots ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

fn opened(keys: &Keyring, id: i64, sealed: &[u8]) -> String {
    keys.open_string(&token_aad(id), sealed)
        .unwrap()
        .expose_secret()
        .to_owned()
}

#[tokio::test]
async fn tokens_are_sealed_unique_and_old_clear_ones_are_sealed_by_migrate() {
    let p = CliPanel::new("bvt_seal").await;
    let pool = p.db.pool().await;
    let keys = p.db.keys();
    let id = p.add("sealed", 5501, &["--disabled"]);
    let rows = token_columns(&pool).await;
    let (_, clear, sealed) = &rows[0];
    assert_eq!(clear, &None, "no clear token");
    let sealed = sealed.as_ref().expect("sealed token");
    assert!(!String::from_utf8_lossy(sealed).contains(&token(5501)[8..]));
    assert_eq!(opened(&keys, id, sealed), token(5501));

    // A token is unique whoever holds it, and the refusal names the holder, not the token.
    let t = token(5501);
    let r = p.run(&["bot", "add", "--name", "again", "--token", &t]);
    r.bad_input(&format!("already registered for bot {id} (sealed)"));
    assert!(!r.stderr.contains(&t[8..]), "{r:?}");
    let other = p.add("other", 5502, &["--disabled"]);
    p.run(&["bot", "set-token", &other.to_string(), &t])
        .bad_input(&format!("bot {id} (sealed)"));

    // A row written in clear (an older binary, or psql) is sealed by `migrate`; the clear
    // column is emptied, not dropped.
    let legacy = token(5503);
    sqlx::query("INSERT INTO bots (name, token, enabled) VALUES ('legacy', $1, false)")
        .bind(&legacy)
        .execute(&pool)
        .await
        .unwrap();
    // Until then its token is still refused for another bot.
    p.run(&["bot", "add", "--name", "dup", "--token", &legacy])
        .bad_input("already registered for bot");
    let out = p.run(&["migrate"]);
    assert!(
        out.ok().contains("bot tokens sealed with master key"),
        "{out:?}"
    );
    for (id, clear, sealed) in token_columns(&pool).await {
        assert_eq!(clear, None, "bot {id}");
        let t = opened(&keys, id, sealed.as_deref().unwrap());
        assert!(t.starts_with("55"), "bot {id}");
    }
    let dump = panel_as_text(&p.db.url);
    for n in [5501, 5502, 5503] {
        assert!(!dump.contains(&token(n)[8..]), "token {n} in the panel");
    }
    p.run(&["bot", "add", "--name", "dup", "--token", &legacy])
        .bad_input("already registered for bot");
    // Lists show the masked token, opened with the key.
    let list = p.run(&["bot", "list"]);
    assert!(list.ok().contains("5501:****"), "{list:?}");
    assert!(!list.ok().contains(&t[8..]));
    pool.close().await;
}

/// Everything the panel database holds, as plain SQL text.
fn panel_as_text(url: &str) -> String {
    let out = Command::new("pg_dump")
        .arg("--data-only")
        .arg(url)
        .output()
        .expect("pg_dump must be installed (postgresql-client)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_fresh_backup_holds_no_clear_token() {
    let p = CliPanel::new("bvt_sealbk").await;
    for n in 0..3 {
        p.add(&format!("b{n}"), 5600 + n, &["--disabled"]);
    }
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/backup.sh"))
        .env("BOTVISOR_PANEL_URL", &p.db.url)
        .env("BACKUP_DATABASES", "")
        .env("BACKUP_DIR", dir.path())
        .env_remove("BOTVISOR__BOT_DATABASE__SERVER_URL")
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let dump = walk(dir.path())
        .into_iter()
        .find(|f| f.extension().is_some_and(|e| e == "dump"))
        .expect("a dump file");
    let text = Command::new("pg_restore")
        .arg("--file=-")
        .arg(&dump)
        .output()
        .unwrap();
    assert!(text.status.success(), "{text:?}");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("COPY public.bots"),
        "the dump holds the bots table"
    );
    for n in 0..3 {
        let t = token(5600 + n);
        assert!(!text.contains(&t[8..]), "token {n} in the backup");
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn the_daemon_refuses_to_start_with_a_missing_or_wrong_key() {
    let p = CliPanel::new("bvt_sealkey").await;
    p.add("k", 5701, &["--disabled"]);
    let mut env: HashMap<String, String> = p.env.clone();
    env.insert(
        "BOTVISOR_TELEGRAM_API_URL".into(),
        "http://127.0.0.1:9".into(),
    );
    // Missing: one line, before anything else.
    env.insert(
        botvisor::crypto::KEY_FILE_ENV.into(),
        "/nonexistent/master.key".into(),
    );
    let r = botvisor(&env, &["serve"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("botvisor keys init"), "{r:?}");
    assert_eq!(r.stderr.trim().lines().count(), 1, "{r:?}");
    // Wrong: another key than the one the panel's tokens were sealed with.
    let (_dir, other) = common::master_key_file();
    env.insert(
        botvisor::crypto::KEY_FILE_ENV.into(),
        other.display().to_string(),
    );
    let r = botvisor(&env, &["serve"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("not the key the panel's secrets were sealed with"),
        "{r:?}"
    );
    assert_eq!(r.stderr.trim().lines().count(), 1, "{r:?}");
}

#[tokio::test]
async fn a_rotation_interrupted_half_way_is_finished_by_running_it_again() {
    let mut h = Harness::start(&[]).await;
    let admin =
        botvisor::admin::Admin::new(h.pool.clone(), std::sync::Arc::new(h.settings.clone()));
    let mut bots = Vec::new();
    for n in 0..3 {
        let (id, t) = h.add_bot(&format!("rot{n}"), 5800 + n).await;
        admin
            .set_secret(id, "openai", &format!("sk-{n}"))
            .await
            .unwrap();
        bots.push((id, t));
    }
    for (id, _) in &bots {
        h.wait_state(*id, "running").await;
    }
    let old = h.panel.keys();
    let old_id = old.current().id();

    // A rotation that crashed after its first batch: the key file holds [new, old] and one
    // bot's token and secret are under the new key, the others under the old one.
    let new = MasterKey::generate().unwrap();
    let new_id = new.id();
    write_key_file(&h.panel.key_file, &[&new, &old.current()]).unwrap();
    let mid = Keyring::load(&h.panel.key_file).unwrap();
    assert_eq!(store::reseal_batch(&h.pool, &mid, 1).await.unwrap(), 2);
    let ids = store::sealing_key_ids(&h.pool).await.unwrap();
    assert!(ids.contains(&new_id) && ids.contains(&old_id), "{ids:?}");

    // The running daemon still answers every bot, including after a restart of one.
    let (first, t0) = &bots[0];
    store::set_enabled(&h.pool, *first, false).await.unwrap();
    h.wait_state(*first, "stopped").await;
    store::set_enabled(&h.pool, *first, true).await.unwrap();
    h.wait_state(*first, "running").await;
    let seq = h.last_seq(t0, 9);
    h.say(t0, 9, "/start");
    h.reply(t0, 9, seq, |_| true).await;

    // Running it again finishes: everything under the new key, the old key dropped.
    let r = admin.rotate_keys(1).await.unwrap();
    assert!(r.resumed, "{r:?}");
    assert_eq!(r.key, new_id.to_string());
    assert_eq!(r.retired, [old_id.to_string()]);
    assert_eq!(r.resealed, 4, "2 tokens and 2 secrets were left");
    assert_eq!(store::sealing_key_ids(&h.pool).await.unwrap(), [new_id]);
    let after = Keyring::load(&h.panel.key_file).unwrap();
    assert_eq!(after.key_ids(), [new_id]);
    for (id, t) in &bots {
        let bot = store::get_bot(&h.pool, *id).await.unwrap();
        assert_eq!(bot.open_token(&after).unwrap().expose(), t, "no token lost");
        let secrets = store::list_secrets(&h.pool, *id).await.unwrap();
        let opened = botvisor::control::open_secrets(&after, &secrets).unwrap();
        assert_eq!(opened.len(), 1);
    }
    // A uniqueness check still sees the re-hashed tokens.
    let again = botvisor::admin::bots::NewBot {
        name: "dup",
        token: &bots[1].1,
        ..Default::default()
    };
    let e = admin.add_bot(&again).await.unwrap_err();
    assert!(e.to_string().contains("already registered"), "{e}");

    // A fresh rotation through the CLI: a new key, nothing resumed, bots keep answering.
    let r = botvisor(&h.panel.env(), &["keys", "rotate", "--batch-size", "2"]);
    assert!(r.ok().contains("done rotation"), "{r:?}");
    assert!(r.ok().contains("6 re-sealed"), "{r:?}");
    let (last, t2) = &bots[2];
    store::set_enabled(&h.pool, *last, false).await.unwrap();
    h.wait_state(*last, "stopped").await;
    store::set_enabled(&h.pool, *last, true).await.unwrap();
    h.wait_state(*last, "running").await;
    let seq = h.last_seq(t2, 9);
    h.say(t2, 9, "/start");
    h.reply(t2, 9, seq, |_| true).await;
    assert!(h.stop().await.clean());
}
