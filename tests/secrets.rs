//! Bot secrets: sealed in the panel, managed through the CLI (values only on stdin, never
//! printed), and seen by a running bot through its content snapshot — set, replaced and
//! removed without a restart.

mod common;

use std::sync::Arc;

use botvisor::admin::Admin;
use botvisor::content::manifest::{Manifest, ManifestError};
use botvisor::content::snapshot::{Section, Snapshot};
use botvisor::modules::{Flow, Module, ModuleError, Registry, UpdateCx};
use common::cli::CliPanel;
use common::harness::Harness;
use common::{botvisor_with_input, token};
use futures::future::BoxFuture;
use secrecy::ExposeSecret;
use teloxide::types::{BotCommand, UpdateKind};

/// Answers `/peek NAME` with what the bot's snapshot holds for secret NAME: its length and
/// last two characters (enough to tell values apart without echoing one).
struct Peek;

impl Module for Peek {
    fn name(&self) -> &'static str {
        "peek"
    }

    fn manifest_keys(&self) -> &'static [&'static str] {
        &[]
    }

    fn load(&self, _manifest: &Manifest) -> Result<Option<Section>, ManifestError> {
        Ok(Some(Arc::new(())))
    }

    fn update_kinds(&self) -> &'static [&'static str] {
        &["message"]
    }

    fn commands(&self, _snapshot: &Snapshot) -> Vec<BotCommand> {
        Vec::new()
    }

    fn on_update<'a>(
        &'a self,
        cx: &'a mut UpdateCx<'_>,
    ) -> BoxFuture<'a, Result<Flow, ModuleError>> {
        Box::pin(async move {
            let UpdateKind::Message(msg) = &cx.update.kind else {
                return Ok(Flow::Continue);
            };
            let Some(name) = msg.text().and_then(|t| t.strip_prefix("/peek ")) else {
                return Ok(Flow::Continue);
            };
            let answer = match cx.snapshot.secret(name) {
                Some(v) => {
                    let v = v.expose_secret();
                    format!("{name}: {} chars, ends {}", v.len(), &v[v.len() - 2..])
                }
                None => format!("{name}: none"),
            };
            cx.send(msg.chat.id, None, &answer, None).await?;
            Ok(Flow::Stop)
        })
    }
}

async fn peek(h: &Harness, t: &str, name: &str, expected: &str) {
    let deadline = tokio::time::Instant::now() + common::harness::DEADLINE;
    loop {
        let seq = h.last_seq(t, 5);
        h.say(t, 5, &format!("/peek {name}"));
        let got = h
            .reply(t, 5, seq, |text| text.starts_with(&format!("{name}:")))
            .await;
        if got.text() == Some(expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "secret {name}: expected {expected:?}, last answer {:?}",
            got.text()
        );
    }
}

#[tokio::test]
async fn a_running_bot_sees_its_secrets_change_without_a_restart() {
    let mut h = Harness::start_with(&[], Registry::standard().with(Arc::new(Peek))).await;
    let (id, t) = h.add_bot("peeker", 4401).await;
    h.wait_state(id, "running").await;
    peek(&h, &t, "openai", "openai: none").await;
    let get_me = h.sandbox.stats().calls(&t, "getMe");

    let admin = Admin::new(h.pool.clone(), Arc::new(h.settings.clone()));
    admin.set_secret(id, "openai", "sk-first-A1").await.unwrap();
    peek(&h, &t, "openai", "openai: 11 chars, ends A1").await;
    admin
        .set_secret(id, "openai", "sk-second-B2")
        .await
        .unwrap();
    peek(&h, &t, "openai", "openai: 12 chars, ends B2").await;
    admin.remove_secret(id, "openai").await.unwrap();
    peek(&h, &t, "openai", "openai: none").await;

    // Still the first run: secrets reload like texts, the poller untouched.
    assert_eq!(h.sandbox.stats().calls(&t, "getMe"), get_me);
    assert!(h.stop().await.clean());
}

#[tokio::test]
async fn a_secret_that_does_not_open_keeps_the_bot_out_and_says_which() {
    let h = Harness::start_with(&[], Registry::standard()).await;
    let t = token(4402);
    h.sandbox.register_bot(&t, Some("sealed_bot")).unwrap();
    // Registered disabled, given a secret sealed for another bot id (a row copied across
    // bots), then enabled: the bot does not start, and says which secret is wrong.
    let id: i64 = {
        let id = h.add_registered("sealed", &t, &Manifest::default()).await;
        botvisor::panel::store::set_enabled(&h.pool, id, false)
            .await
            .unwrap();
        id
    };
    let keys = h.panel.keys();
    let sealed = keys
        .seal(&botvisor::crypto::secret_aad(id + 1, "openai"), b"sk-x")
        .unwrap();
    botvisor::panel::store::set_secret(&h.pool, id, "openai", &sealed)
        .await
        .unwrap();
    botvisor::panel::store::set_enabled(&h.pool, id, true)
        .await
        .unwrap();
    let detail = h.wait_state(id, "failed").await;
    assert!(detail.contains("secret \"openai\""), "{detail}");
    assert!(detail.contains("authentication"), "{detail}");
}

#[tokio::test]
async fn the_cli_sets_lists_and_removes_secrets_without_showing_values() {
    let p = CliPanel::new("bvt_secret").await;
    let id = p.add("vault", 4403, &["--disabled"]);
    let ids = id.to_string();
    let value = "sk-live-0123456789abcdef";

    let set = |name: &str, input: &str| {
        botvisor_with_input(
            &p.env,
            &["secret", "set", &ids, name, "--stdin"],
            input.as_bytes(),
        )
    };
    let r = set("openai", &format!("{value}\n"));
    assert!(r.ok().contains("secret openai of bot"), "{r:?}");
    set("webhook.key", "second").ok();

    // The panel holds no readable value; the sealed one opens to the value without the
    // trailing newline, and only for this bot and name.
    let pool = p.db.pool().await;
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT name, sealed FROM bot_secrets WHERE bot_id = $1 ORDER BY name")
            .bind(id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2);
    let (name, sealed) = &rows[0];
    assert_eq!(name, "openai");
    assert!(!String::from_utf8_lossy(sealed).contains("sk-live"));
    let keys = p.db.keys();
    let opened = keys
        .open(&botvisor::crypto::secret_aad(id, "openai"), sealed)
        .unwrap();
    assert_eq!(opened, value.as_bytes());

    // Lists show names and dates, never values.
    let list = p.run(&["secret", "list", &ids]);
    let out = list.ok();
    assert!(
        out.contains("openai") && out.contains("webhook.key"),
        "{out}"
    );
    assert!(!out.contains("sk-live") && !out.contains("second"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(p.run(&["secret", "list", &ids, "--json"]).ok()).unwrap();
    assert_eq!(json[0]["name"], "openai");
    assert!(json[0]["updated_at"].is_string());
    assert_eq!(json[0].as_object().unwrap().len(), 2, "{json}");

    // Bad input: one line, exit code 2, and the value is never echoed.
    botvisor_with_input(&p.env, &["secret", "set", &ids, "openai"], b"x").bad_input("--stdin");
    set("Bad Name", "sk-live-x").bad_input("invalid secret name");
    let r = set("openai", "");
    r.bad_input("empty");
    let r = set("openai", "sk-live-\0-nul");
    r.bad_input("NUL");
    assert!(!r.stderr.contains("sk-live"), "{r:?}");
    botvisor_with_input(
        &p.env,
        &["secret", "set", "999999", "openai", "--stdin"],
        b"sk-live-x",
    )
    .bad_input("no bot with id 999999");
    p.run(&["secret", "list", "999999"])
        .bad_input("no bot with id 999999");

    // Remove: once, then it is an error.
    assert!(
        p.run(&["secret", "remove", &ids, "openai"])
            .ok()
            .contains("removed")
    );
    p.run(&["secret", "remove", &ids, "openai"])
        .bad_input("has no secret \"openai\"");
    assert!(!p.run(&["secret", "list", &ids]).ok().contains("openai"));

    // Without its key file a secret cannot be set: one clear line, exit code 1.
    let mut env = p.env.clone();
    env.insert(
        botvisor::crypto::KEY_FILE_ENV.into(),
        "/nonexistent/master.key".into(),
    );
    let r = botvisor_with_input(&env, &["secret", "set", &ids, "x", "--stdin"], b"sk-live-x");
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("botvisor keys init"), "{r:?}");
    assert_eq!(r.stderr.trim().lines().count(), 1, "{r:?}");
    pool.close().await;
}

#[tokio::test]
async fn keys_init_writes_a_private_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("etc/master.key");
    let file = path.display().to_string();
    let env = std::collections::HashMap::new();
    let r = common::botvisor(&env, &["keys", "init", "--file", &file]);
    assert!(r.ok().contains("written to"), "{r:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let before = std::fs::read(&path).unwrap();
    common::botvisor(&env, &["keys", "init", "--file", &file]).bad_input("already exists");
    assert_eq!(std::fs::read(&path).unwrap(), before, "never overwritten");
    // The default comes from BOTVISOR_MASTER_KEY_FILE.
    let other = dir.path().join("other.key");
    let env: std::collections::HashMap<String, String> = [(
        botvisor::crypto::KEY_FILE_ENV.to_string(),
        other.display().to_string(),
    )]
    .into();
    common::botvisor(&env, &["keys", "init"]).ok();
    assert!(other.exists());
}
