//! A bot in one file and back: `bot export` → `bot erase` → `bot import` gives back the same
//! rows, versions and a bot that answers again; a corrupt archive is refused; the token is in
//! an archive only with `--with-token`; a failed restore leaves nothing behind. In place
//! (`bot import --into`): the rows become the archive's and the bot answers with the archived
//! text; a verification failure leaves the old data and the bot running; an import
//! interrupted at any step finishes when run again.

mod common;

use std::sync::Arc;

use botvisor::admin::Admin;
use botvisor::admin::archive::{ImportStep, IntoOptions, PgTools};
use botvisor::panel::store;
use common::cli::CliPanel;
use common::harness::{DEADLINE, Harness};
use common::{botvisor, database_exists};

/// Every row of `table`, as JSON text, in a stable order.
async fn rows(pool: &sqlx::PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT to_jsonb(x)::text FROM {table} x ORDER BY 1"
    )))
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Texts of bot `id` as `(key, lang, value)`.
async fn texts(pool: &sqlx::PgPool, id: i64) -> Vec<(String, String, String)> {
    store::list_texts(pool, id)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.key, t.lang, t.value))
        .collect()
}

/// Bot `id`'s text and manifest versions as JSON text (without their row ids), oldest first.
async fn versions(pool: &sqlx::PgPool, id: i64) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT (to_jsonb(v) - 'id' - 'bot_id')::text FROM ( \
             SELECT id, bot_id, key, lang, version, previous, value, actor, at, \
                    NULL::jsonb AS manifest, NULL::jsonb AS previous_manifest \
             FROM text_versions WHERE bot_id = $1 \
             UNION ALL \
             SELECT id, bot_id, NULL, NULL, version, NULL, NULL, actor, at, manifest, previous \
             FROM manifest_versions WHERE bot_id = $1) v \
         ORDER BY manifest IS NULL, id",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Copies archive `from` to `to` with `archive.json` changed by `change`.
fn rewrite_index(
    from: &std::path::Path,
    to: &std::path::Path,
    change: impl FnOnce(&mut serde_json::Value),
) {
    use std::io::Read;
    let mut archive = tar::Archive::new(std::fs::File::open(from).unwrap());
    let mut out = tar::Builder::new(std::fs::File::create(to).unwrap());
    let mut change = Some(change);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        if name == "archive.json" {
            let mut index: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            (change.take().unwrap())(&mut index);
            bytes = serde_json::to_vec_pretty(&index).unwrap();
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        out.append_data(&mut header, &name, bytes.as_slice())
            .unwrap();
    }
    out.finish().unwrap();
}

/// Runs the CLI off the test's runtime thread, so the daemon the harness runs on that thread
/// keeps working meanwhile (an in-place import waits for it to stop the bot).
async fn cli(env: &std::collections::HashMap<String, String>, args: &[&str]) -> common::Run {
    common::botvisor_off_thread(env, args).await
}

/// Sends `/start` from `chat` until the bot answers `expected` (text changes reach a running
/// bot asynchronously).
async fn until_reply(h: &Harness, t: &str, chat: i64, expected: &str) {
    common::eventually(DEADLINE, &format!("/start answers {expected}"), || async {
        let after = h.last_seq(t, chat);
        h.say(t, chat, "/start");
        let r = h.reply(t, chat, after, |_| true).await;
        (r.text() == Some(expected)).then_some(())
    })
    .await;
}

/// A pool to database `name` on the test server.
async fn connect(name: &str) -> sqlx::PgPool {
    sqlx::PgPool::connect(&format!("{}/{name}", common::server_url()))
        .await
        .unwrap()
}

/// Whether `needle` occurs anywhere in `haystack`.
fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn export_erase_import_gives_back_the_same_rows_and_the_bot_answers_again() {
    let mut h = Harness::start(&[]).await;
    let (id, t) = h.add_bot("porter", 6301).await;
    let admin = Admin::new(h.pool.clone(), Arc::new(h.settings.clone()));
    admin
        .set_text(id, "start", Some("en"), "Welcome aboard")
        .await
        .unwrap();
    admin
        .set_secret(id, "openai", "sk-archive-secret")
        .await
        .unwrap();
    let users = [731_100_001_i64, 731_100_002];
    for user in users {
        let seq = h.last_seq(&t, user);
        h.say(&t, user, "/start");
        h.reply(&t, user, seq, |text| text == "Welcome aboard")
            .await;
    }
    let old_pool = h.bot_pool(id).await;
    let (old_users, old_messages) = (
        rows(&old_pool, "users").await,
        rows(&old_pool, "messages").await,
    );
    old_pool.close().await;
    assert_eq!(old_users.len(), 2, "{old_users:?}");
    assert!(old_messages.len() >= 4, "{old_messages:?}");
    let old_texts = texts(&h.pool, id).await;
    let old_manifest = store::get_bot(&h.pool, id).await.unwrap().manifest.0;
    let old_versions = versions(&h.pool, id).await;
    assert!(old_versions.len() >= 2, "{old_versions:?}");

    let env = h.panel.env();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("porter.tar");
    let file_arg = file.to_str().unwrap();
    let ids = id.to_string();
    let out = botvisor(&env, &["bot", "export", &ids, "--out", file_arg]);
    let text = out.ok();
    for part in [
        "bot.json",
        "texts.json",
        "manifest.json",
        "secrets.json",
        "versions.json",
        "database.dump",
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }
    assert!(!out.stderr.contains("warning"), "{out:?}");
    let bytes = std::fs::read(&file).unwrap();
    assert!(!contains(&bytes, &t), "the token is in the archive");
    assert!(
        !contains(&bytes, "sk-archive-secret"),
        "a secret's value is in the archive"
    );
    assert!(
        contains(&bytes, "openai"),
        "the secret's name is in the archive"
    );
    // Exporting onto an existing file is refused.
    botvisor(&env, &["bot", "export", &ids, "--out", file_arg]).bad_input("exists already");

    botvisor(&env, &["bot", "erase", &ids, "--yes"]).ok();
    assert!(!database_exists(&h.bot_database(id)).await);

    let run = botvisor(&env, &["bot", "import", file_arg]);
    let new_id: i64 = run.ok().trim().parse().unwrap();
    assert_ne!(new_id, id);
    assert!(
        run.stderr.contains("has no token and is disabled"),
        "{run:?}"
    );
    assert!(run.stderr.contains("secrets to set again"), "{run:?}");
    assert!(run.stderr.contains("openai"), "{run:?}");
    let bot = store::get_bot(&h.pool, new_id).await.unwrap();
    assert_eq!(bot.name, "porter");
    assert!(!bot.enabled);
    assert!(bot.token_sealed.is_none() && bot.token_clear.is_none());
    assert_eq!(bot.manifest.0, old_manifest);
    assert_eq!(texts(&h.pool, new_id).await, old_texts);
    // The history comes back re-keyed to the new bot, with no entry added by the import.
    assert_eq!(versions(&h.pool, new_id).await, old_versions);
    let new_pool = h.bot_pool(new_id).await;
    assert_eq!(rows(&new_pool, "users").await, old_users);
    assert_eq!(rows(&new_pool, "messages").await, old_messages);
    new_pool.close().await;

    // With its token again, the imported bot answers with its imported texts.
    let new_ids = new_id.to_string();
    botvisor(&env, &["bot", "set-token", &new_ids, &t]).ok();
    botvisor(&env, &["bot", "enable", &new_ids]).ok();
    h.wait_state(new_id, "running").await;
    let seq = h.last_seq(&t, users[0]);
    h.say(&t, users[0], "/start");
    h.reply(&t, users[0], seq, |text| text == "Welcome aboard")
        .await;
    assert!(h.stop().await.clean());
}

#[tokio::test]
async fn a_corrupt_archive_is_refused_and_nothing_is_written() {
    let p = CliPanel::new("bvt_archive_bad").await;
    let id = p.add("fragile", 6311, &["--disabled"]);
    let ids = id.to_string();
    p.run(&["text", "set", &ids, "start", "Hello there"]).ok();
    p.create_bot_database(id).await.close().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fragile.tar");
    p.run(&["bot", "export", &ids, "--out", file.to_str().unwrap()])
        .ok();
    let bytes = std::fs::read(&file).unwrap();
    let pool = p.db.pool().await;
    let bots_before = store::list_bots(&pool).await.unwrap().len();

    // One byte of a text changed: its checksum no longer matches.
    let at = bytes
        .windows(b"Hello there".len())
        .position(|w| w == b"Hello there")
        .unwrap();
    let mut flipped = bytes.clone();
    flipped[at] = b'J';
    let bad = dir.path().join("flipped.tar");
    std::fs::write(&bad, &flipped).unwrap();
    p.run(&["bot", "import", bad.to_str().unwrap(), "--name", "copy"])
        .bad_input("texts.json does not match its checksum");

    // Cut short, and not an archive at all.
    let cut = dir.path().join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let r = p.run(&["bot", "import", cut.to_str().unwrap(), "--name", "copy"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("not a valid bot archive"), "{r:?}");
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"{\"hello\": 1}").unwrap();
    let r = p.run(&["bot", "import", junk.to_str().unwrap(), "--name", "copy"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("not a valid bot archive"), "{r:?}");

    assert_eq!(store::list_bots(&pool).await.unwrap().len(), bots_before);
    let next = format!("{}_bot_{}", p.db.name, id + 1);
    assert!(!database_exists(&next).await);
    pool.close().await;
}

#[tokio::test]
async fn the_token_travels_only_with_with_token() {
    let p = CliPanel::new("bvt_archive_tok").await;
    let id = p.add("carrier", 6321, &[]);
    let ids = id.to_string();
    let t = common::token(6321);
    let dir = tempfile::tempdir().unwrap();

    let plain = dir.path().join("plain.tar");
    p.run(&["bot", "export", &ids, "--out", plain.to_str().unwrap()])
        .ok();
    assert!(!contains(&std::fs::read(&plain).unwrap(), &t));

    let with = dir.path().join("with.tar");
    let r = p.run(&[
        "bot",
        "export",
        &ids,
        "--out",
        with.to_str().unwrap(),
        "--with-token",
    ]);
    r.ok();
    assert!(r.stderr.contains("IN CLEAR"), "{r:?}");
    assert!(!r.stdout.contains(&t) && !r.stderr.contains(&t), "{r:?}");
    assert!(contains(&std::fs::read(&with).unwrap(), &t));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&with).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // The original still holds the token: the copy comes without it.
    let r = p.run(&["bot", "import", with.to_str().unwrap(), "--name", "twin"]);
    let twin: i64 = r.ok().trim().parse().unwrap();
    assert!(
        r.stderr
            .contains(&format!("already registered for bot {id}")),
        "{r:?}"
    );
    let pool = p.db.pool().await;
    let keys = p.db.keys();
    assert!(
        store::get_bot(&pool, twin)
            .await
            .unwrap()
            .open_token(&keys)
            .is_err()
    );

    // Once the original is gone, the token round-trips, and the bot is enabled as it was.
    p.run(&["bot", "remove", &ids, "--yes"]).ok();
    let r = p.run(&["bot", "import", with.to_str().unwrap()]);
    let back: i64 = r.ok().trim().parse().unwrap();
    let bot = store::get_bot(&pool, back).await.unwrap();
    assert_eq!(bot.open_token(&keys).unwrap().expose(), t);
    assert!(bot.enabled);
    assert_eq!(bot.name, "carrier");
    pool.close().await;
}

#[tokio::test]
async fn a_failed_restore_removes_the_new_bot_and_its_database_again() {
    let p = CliPanel::new("bvt_archive_undo").await;
    let id = p.add("undone", 6331, &["--disabled"]);
    p.create_bot_database(id).await.close().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("undone.tar");
    let pool = p.db.pool().await;
    let config = dir.path().join("botvisor.toml");
    std::fs::write(&config, "").unwrap();
    let settings = botvisor::settings::Settings::load(Some(&config), &p.env).unwrap();
    let admin = Admin::new(pool.clone(), Arc::new(settings));

    // No pg_dump: one clear line, no file.
    let missing = PgTools {
        pg_dump: "/nonexistent/pg_dump".into(),
        ..PgTools::default()
    };
    let e = admin
        .export_bot(id, &file, false, &missing)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("pg_dump not found"), "{e}");
    assert!(!file.exists());

    admin
        .export_bot(id, &file, false, &PgTools::default())
        .await
        .unwrap();
    let failing = PgTools {
        pg_restore: "false".into(),
        ..PgTools::default()
    };
    let before = store::list_bots(&pool).await.unwrap().len();
    let e = admin
        .import_bot(&file, Some("again"), &failing)
        .await
        .unwrap_err();
    let message = e.to_string();
    assert!(message.contains("import failed"), "{message}");
    assert!(message.contains("removed again"), "{message}");
    assert_eq!(store::list_bots(&pool).await.unwrap().len(), before);
    let next = format!("{}_bot_{}", p.db.name, id + 1);
    assert!(!database_exists(&next).await, "{message}");
    pool.close().await;
}

#[tokio::test]
async fn import_in_place_restores_the_rows_and_versions_and_the_bot_answers_with_the_archived_text()
{
    let mut h = Harness::start(&[]).await;
    let (id, t) = h.add_bot("keeper", 6341).await;
    let admin = Admin::new(h.pool.clone(), Arc::new(h.settings.clone()));
    admin
        .set_text(id, "start", Some("en"), "Welcome aboard")
        .await
        .unwrap();
    let users = [731_200_001_i64, 731_200_002];
    until_reply(&h, &t, users[0], "Welcome aboard").await;
    let pool = h.bot_pool(id).await;
    let (old_users, old_messages) = (rows(&pool, "users").await, rows(&pool, "messages").await);
    pool.close().await;
    let old_texts = texts(&h.pool, id).await;
    let old_versions = versions(&h.pool, id).await;

    let env = h.panel.env();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keeper.tar");
    let ids = id.to_string();
    botvisor(
        &env,
        &["bot", "export", &ids, "--out", file.to_str().unwrap()],
    )
    .ok();

    // Life goes on: a new text, a new user, new messages.
    admin
        .set_text(id, "start", Some("en"), "Changed since")
        .await
        .unwrap();
    until_reply(&h, &t, users[1], "Changed since").await;
    let pool = h.bot_pool(id).await;
    let (changed_users, changed_messages) =
        (rows(&pool, "users").await, rows(&pool, "messages").await);
    pool.close().await;
    assert_ne!(changed_users, old_users);

    // An archive whose row counts do not match its dump: refused after the restore, before
    // the swap; the bot keeps its data and keeps running.
    let lying = dir.path().join("lying.tar");
    rewrite_index(&file, &lying, |index| {
        index["tables"]["public.users"] = serde_json::json!(99);
    });
    let r = cli(
        &env,
        &["bot", "import", lying.to_str().unwrap(), "--into", &ids],
    )
    .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("public.users: 99 rows in the archive, 1 rows restored"),
        "{r:?}"
    );
    assert!(r.stderr.contains("data is untouched"), "{r:?}");
    let staging = format!("{}_import", h.bot_database(id));
    let aside = format!("{}_old", h.bot_database(id));
    assert!(!database_exists(&staging).await);
    assert!(!database_exists(&aside).await);
    assert!(store::get_bot(&h.pool, id).await.unwrap().enabled);
    h.wait_state(id, "running").await;
    let pool = h.bot_pool(id).await;
    assert_eq!(rows(&pool, "users").await, changed_users);
    assert_eq!(rows(&pool, "messages").await, changed_messages);
    pool.close().await;
    until_reply(&h, &t, users[1], "Changed since").await;

    // The real archive: everything as exported, the history too.
    let r = cli(
        &env,
        &["bot", "import", file.to_str().unwrap(), "--into", &ids],
    )
    .await;
    assert_eq!(r.ok().trim(), ids);
    assert!(r.stderr.contains("restored in place"), "{r:?}");
    assert!(r.stderr.contains("tables verified"), "{r:?}");
    assert!(r.stderr.contains("was dropped"), "{r:?}");
    let bot = store::get_bot(&h.pool, id).await.unwrap();
    assert!(bot.enabled);
    assert_eq!(bot.open_token(&h.panel.keys()).unwrap().expose(), t);
    assert_eq!(texts(&h.pool, id).await, old_texts);
    assert_eq!(versions(&h.pool, id).await, old_versions);
    let pool = h.bot_pool(id).await;
    assert_eq!(rows(&pool, "users").await, old_users);
    assert_eq!(rows(&pool, "messages").await, old_messages);
    pool.close().await;
    assert!(!database_exists(&staging).await);
    assert!(!database_exists(&aside).await);

    // The bot runs again and answers with the archived text.
    h.wait_state(id, "running").await;
    until_reply(&h, &t, users[0], "Welcome aboard").await;
    assert!(h.stop().await.clean());
}

#[tokio::test]
async fn an_in_place_import_interrupted_at_any_step_finishes_when_run_again() {
    let p = CliPanel::new("bvt_archive_into").await;
    let id = p.add("resumer", 6351, &[]);
    let pool = p.db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("botvisor.toml");
    std::fs::write(&config, "").unwrap();
    let settings = botvisor::settings::Settings::load(Some(&config), &p.env).unwrap();
    let admin = Admin::new(pool.clone(), Arc::new(settings));
    admin
        .set_text(id, "start", Some("en"), "Archived hello")
        .await
        .unwrap();
    let bot_pool = p.create_bot_database(id).await;
    sqlx::query("INSERT INTO users (user_id, first_name) VALUES (731300001, 'Ada')")
        .execute(&bot_pool)
        .await
        .unwrap();
    let old_users = rows(&bot_pool, "users").await;
    bot_pool.close().await;
    let old_texts = texts(&pool, id).await;
    let old_versions = versions(&pool, id).await;
    let file = dir.path().join("resumer.tar");
    let tools = PgTools::default();
    admin.export_bot(id, &file, false, &tools).await.unwrap();
    let database = format!("{}_bot_{id}", p.db.name);
    let staging = format!("{database}_import");
    let aside = format!("{database}_old");

    let steps = [
        ImportStep::Restored,
        ImportStep::Stopped,
        ImportStep::SetAside,
        ImportStep::Swapped,
        ImportStep::PanelRows,
    ];
    for step in steps {
        // Changes since the export, on both sides.
        admin
            .set_text(id, "start", Some("en"), &format!("changed before {step:?}"))
            .await
            .unwrap();
        let bot_pool = connect(&database).await;
        sqlx::query("INSERT INTO users (user_id, first_name) VALUES ($1, 'Bob')")
            .bind(731_300_100 + steps.iter().position(|s| *s == step).unwrap() as i64)
            .execute(&bot_pool)
            .await
            .unwrap();
        bot_pool.close().await;

        let halted = IntoOptions {
            halt_after: Some(step),
            ..IntoOptions::default()
        };
        let e = admin
            .import_bot_into(&file, id, &halted, &tools)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("halted after"), "{step:?}: {e}");

        let r = admin
            .import_bot_into(&file, id, &IntoOptions::default(), &tools)
            .await
            .unwrap_or_else(|e| panic!("{step:?}: {e}"));
        let swapped = matches!(
            step,
            ImportStep::SetAside | ImportStep::Swapped | ImportStep::PanelRows
        );
        assert_eq!(r.resumed, swapped, "{step:?}: {r:?}");
        assert!(r.enabled, "{step:?}: {r:?}");
        let bot = store::get_bot(&pool, id).await.unwrap();
        assert!(bot.enabled, "{step:?}");
        assert_eq!(bot.name, "resumer");
        assert_eq!(texts(&pool, id).await, old_texts, "{step:?}");
        assert_eq!(versions(&pool, id).await, old_versions, "{step:?}");
        let bot_pool = connect(&database).await;
        assert_eq!(rows(&bot_pool, "users").await, old_users, "{step:?}");
        bot_pool.close().await;
        assert!(!database_exists(&staging).await, "{step:?}");
        assert!(!database_exists(&aside).await, "{step:?}");
    }

    // A half-finished import is finished with its own archive, not overridden by another.
    let other = dir.path().join("other.tar");
    admin.export_bot(id, &other, false, &tools).await.unwrap();
    let halted = IntoOptions {
        halt_after: Some(ImportStep::SetAside),
        ..IntoOptions::default()
    };
    admin
        .import_bot_into(&file, id, &halted, &tools)
        .await
        .unwrap_err();
    let e = admin
        .import_bot_into(&other, id, &IntoOptions::default(), &tools)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("half-finished import of another archive"),
        "{e}"
    );
    admin
        .import_bot_into(&file, id, &IntoOptions::default(), &tools)
        .await
        .unwrap();
    assert!(!database_exists(&aside).await);

    // One import into a bot at a time.
    let held = store::try_lock_import(&pool, id).await.unwrap().unwrap();
    let e = admin
        .import_bot_into(&file, id, &IntoOptions::default(), &tools)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("another import into bot"), "{e}");
    sqlx::Connection::close(held).await.unwrap();

    // The token changes only with --with-token, and only from an archive that holds one.
    let with_token = IntoOptions {
        with_token: true,
        ..IntoOptions::default()
    };
    let e = admin
        .import_bot_into(&file, id, &with_token, &tools)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("holds no token"), "{e}");
    let tokened = dir.path().join("tokened.tar");
    admin.export_bot(id, &tokened, true, &tools).await.unwrap();
    let r = admin
        .import_bot_into(&tokened, id, &with_token, &tools)
        .await
        .unwrap();
    assert!(r.token_replaced);
    let bot = store::get_bot(&pool, id).await.unwrap();
    assert_eq!(
        bot.open_token(&p.db.keys()).unwrap().expose(),
        common::token(6351)
    );
    pool.close().await;
}
