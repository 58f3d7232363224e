//! The module seam, proved by a module that exists only here: a tiny "echo" registered in
//! the test's daemon. It gets its update kinds into `allowed_updates` and its command into
//! `setMyCommands`, sees updates in chain order (after core, which has queued its answer), and its background job starts
//! with the bot, is woken by a snapshot change and by an operator action, stops when a reload
//! disables the module, and stops with the bot.

mod common;

use std::sync::{Arc, Mutex};

use botvisor::content::manifest::{Manifest, ManifestError};
use botvisor::content::snapshot::{Section, Snapshot};
use botvisor::modules::{Flow, JobCx, Module, ModuleError, Registry, UpdateCx, Wake};
use botvisor::panel::store;
use common::eventually;
use common::harness::{DEADLINE, Harness};
use futures::future::BoxFuture;
use teloxide::prelude::Requester;
use teloxide::types::{BotCommand, UpdateKind};

/// The echo module's section: `{"echo": {"prefix": "…"}}`; absent means disabled.
#[derive(serde::Deserialize)]
struct EchoSection {
    echo: Option<EchoSpec>,
}

#[derive(serde::Deserialize)]
struct EchoSpec {
    prefix: String,
}

/// Repeats `/echo …`, and logs what it sees and what wakes its job.
struct Echo {
    log: Arc<Mutex<Vec<String>>>,
}

fn note(log: &Mutex<Vec<String>>, line: String) {
    log.lock().unwrap().push(line);
}

impl Module for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }

    fn manifest_keys(&self) -> &'static [&'static str] {
        &["echo"]
    }

    fn load(&self, manifest: &Manifest) -> Result<Option<Section>, ManifestError> {
        let section: EchoSection = manifest.section(&["echo"])?;
        Ok(section.echo.map(|spec| Arc::new(spec) as Section))
    }

    fn update_kinds(&self) -> &'static [&'static str] {
        &["message", "message_reaction"]
    }

    fn commands(&self, _snapshot: &Snapshot) -> Vec<BotCommand> {
        vec![BotCommand::new("echo", "Repeat after me")]
    }

    fn on_update<'a>(
        &'a self,
        cx: &'a mut UpdateCx<'_>,
    ) -> BoxFuture<'a, Result<Flow, ModuleError>> {
        Box::pin(async move {
            let UpdateKind::Message(msg) = &cx.update.kind else {
                return Ok(Flow::Continue);
            };
            let text = msg.text().unwrap_or_default().to_owned();
            note(
                &self.log,
                format!("update {text} after {} queued", cx.queued()),
            );
            if let Some(rest) = text.strip_prefix("/echo ") {
                let prefix = cx
                    .snapshot
                    .section::<EchoSpec>("echo")
                    .map(|s| s.prefix.clone())
                    .unwrap_or_default();
                cx.send(msg.chat.id, None, &format!("{prefix}{rest}"), None)
                    .await?;
            }
            Ok(Flow::Continue)
        })
    }

    fn job(&self, mut cx: JobCx) -> Option<BoxFuture<'static, Result<(), ModuleError>>> {
        let log = Arc::clone(&self.log);
        Some(Box::pin(async move {
            note(&log, "job started".into());
            loop {
                match cx.woken(None).await {
                    Wake::Snapshot => note(&log, "job woken: snapshot".into()),
                    Wake::Operator => note(&log, "job woken: operator".into()),
                    Wake::Timer => note(&log, "job woken: timer".into()),
                    // Its replies are delivered too; the test follows operator wakes only.
                    Wake::Delivered => {}
                    Wake::Stop => {
                        note(&log, "job stopped".into());
                        return Ok(());
                    }
                }
            }
        }))
    }
}

async fn logged(log: &Arc<Mutex<Vec<String>>>, line: &str, times: usize) {
    eventually(
        DEADLINE,
        &format!("{times}× {line:?} in the echo log"),
        || async {
            let n = log.lock().unwrap().iter().filter(|l| *l == line).count();
            (n >= times).then_some(())
        },
    )
    .await;
}

async fn command_names(bot: &teloxide::Bot) -> Vec<String> {
    bot.get_my_commands()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.command)
        .collect()
}

#[tokio::test]
async fn a_module_registered_in_tests_plugs_into_every_part_of_the_seam() {
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let registry = Registry::standard().with(Arc::new(Echo {
        log: Arc::clone(&log),
    }));
    let with_echo = r#"{"echo": {"prefix": "echo: "}}"#;
    // Its manifest key is known only to a registry that has it.
    assert!(registry.parse_manifest(with_echo).is_ok());
    let unknown = Registry::standard().parse_manifest(with_echo).unwrap_err();
    assert_eq!(unknown.path, "echo", "{unknown}");

    let mut h = Harness::start_with(&[], registry).await;
    let (id, t) = h.add_bot("echo", 4101).await;
    let manifest = Manifest::from_json_str(with_echo).unwrap();
    store::set_manifest(&h.pool, id, &manifest).await.unwrap();
    logged(&log, "job started", 1).await;

    // Its command is registered, beside core's.
    let bot = teloxide::Bot::new(&t).set_api_url(h.sandbox_url.parse().unwrap());
    eventually(DEADLINE, "echo command registered", || async {
        let names = command_names(&bot).await;
        (names.contains(&"echo".into()) && names.contains(&"start".into())).then_some(())
    })
    .await;
    // Its update kinds are asked for, beside core's.
    eventually(
        DEADLINE,
        "allowed_updates with message_reaction",
        || async {
            let info = bot.get_webhook_info().await.unwrap();
            let allowed: Vec<String> = info
                .allowed_updates
                .unwrap_or_default()
                .into_iter()
                .map(|k| {
                    serde_json::to_value(k)
                        .unwrap()
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect();
            (allowed.contains(&"message_reaction".into())
                && allowed.contains(&"callback_query".into()))
            .then_some(())
        },
    )
    .await;

    // Chain order: echo comes after core, so it sees core's answer to /start already sent.
    let seq = h.last_seq(&t, 7);
    h.say(&t, 7, "/start");
    h.reply(&t, 7, seq, |text| text.starts_with("Hello")).await;
    logged(&log, "update /start after 1 queued", 1).await;
    let seq = h.last_seq(&t, 7);
    h.say(&t, 7, "/echo hi there");
    h.reply(&t, 7, seq, |text| text == "echo: hi there").await;

    // A snapshot change wakes the job.
    store::set_text(&h.pool, id, "help", "en", "Help!")
        .await
        .unwrap();
    logged(&log, "job woken: snapshot", 1).await;
    // So does an operator action that concerns it.
    store::notify_wake(&h.pool, id, "echo").await.unwrap();
    logged(&log, "job woken: operator", 1).await;

    // A reload that disables the module stops its job and drops its command.
    store::set_manifest(&h.pool, id, &Manifest::default())
        .await
        .unwrap();
    logged(&log, "job stopped", 1).await;
    eventually(DEADLINE, "echo command gone", || async {
        (!command_names(&bot).await.contains(&"echo".into())).then_some(())
    })
    .await;

    // Enabled again, it starts again; and it stops with the bot.
    store::set_manifest(&h.pool, id, &manifest).await.unwrap();
    logged(&log, "job started", 2).await;
    store::set_enabled(&h.pool, id, false).await.unwrap();
    logged(&log, "job stopped", 2).await;
    h.wait_state(id, "stopped").await;
    assert!(h.stop().await.clean());
}
