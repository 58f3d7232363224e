//! The web panel in a real headless Chromium, against a running daemon and the Telegram
//! sandbox: sign in, add a bot, add and edit a text in the grid — and the bot in the sandbox
//! answers with the new text —, a refused text shows its error next to the field, an invalid
//! manifest shows its JSON path, switch to Russian, roll a text back, add a command in the
//! commands form (the bot answers it), compose a broadcast to the bot's users and follow it
//! until it is done, add a schedule and see its next run. Screenshots of the main
//! pages are saved under `target/panel-screenshots/` and checked not to be blank.
//!
//! Without Chromium the test fails when `CI=true` (`.ci/run` installs Debian's `chromium`).

#[path = "support/browser.rs"]
mod browser;
mod common;

use browser::{Chromium, assert_not_blank, run, screenshot, until};
use common::harness::Harness;
use common::token;
use common::web::{PASSWORD, WebPanel};

/// `value` as a JavaScript string literal.
fn js(value: &str) -> String {
    serde_json::to_string(value).unwrap()
}

/// Fills the fields of the form `form` (a CSS selector) and submits it with its last submit
/// button, as a user would.
async fn submit(page: &chromiumoxide::Page, form: &str, fields: &[(&str, &str)]) {
    let mut script = format!("(() => {{ const f = document.querySelector({});", js(form));
    for (name, value) in fields {
        script.push_str(&format!("f.elements[{}].value = {};", js(name), js(value)));
    }
    script.push_str(
        "const b = f.querySelectorAll('button[type=submit]'); f.requestSubmit(b[b.length - 1]); })()",
    );
    run(page, &script).await;
}

/// Fills the fields of the form `form` and submits it with the button `button`.
async fn submit_with(
    page: &chromiumoxide::Page,
    form: &str,
    fields: &[(&str, &str)],
    button: &str,
) {
    let mut script = format!("(() => {{ const f = document.querySelector({});", js(form));
    for (name, value) in fields {
        script.push_str(&format!("f.elements[{}].value = {};", js(name), js(value)));
    }
    script.push_str(&format!(
        "f.requestSubmit(document.querySelector({})); }})()",
        js(button)
    ));
    run(page, &script).await;
}

/// Sends `text` to the bot in `chat` until it answers with something starting with `prefix`
/// (a manifest change reaches the running bot a moment after it is saved).
async fn answers(h: &Harness, token: &str, chat: i64, text: &str, prefix: &str) {
    common::eventually(
        std::time::Duration::from_secs(30),
        &format!("{text} answered with {prefix}…"),
        || async {
            let after = h.last_seq(token, chat);
            h.say(token, chat, text);
            let e = h.reply(token, chat, after, |_| true).await;
            e.text()
                .is_some_and(|t| t.starts_with(prefix))
                .then_some(())
        },
    )
    .await;
}

/// Bot `id`'s `start` text in English, as stored.
async fn stored_start(panel: &WebPanel, id: i64) -> String {
    panel
        .admin
        .get_text(id, "start", Some("en"))
        .await
        .unwrap()
        .value
}

/// Sends /start to the bot in `chat` and waits for an answer starting with `prefix`.
async fn answers_start(h: &Harness, token: &str, chat: i64, prefix: &str) {
    let after = h.last_seq(token, chat);
    h.say(token, chat, "/start");
    h.reply(token, chat, after, |t| t.starts_with(prefix)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_edits_a_bot_in_the_browser_and_the_bot_answers_with_it() {
    let Some(chromium) = Chromium::launch().await else {
        return;
    };
    let h = Harness::start(&[]).await;
    let panel = WebPanel::start_on(None, h.pool.clone(), h.settings.clone()).await;
    let bot_token = token(7601);
    h.sandbox
        .register_bot(&bot_token, Some("shop_bot"))
        .unwrap();
    let mut shots = Vec::new();

    // Sign in (the language comes from the browser: English here).
    let page = chromium
        .browser
        .new_page(format!("{}/login", panel.url))
        .await
        .unwrap();
    until(&page, "the sign-in form", |h| h.contains("id=\"sign-in\"")).await;
    shots.push(screenshot(&page, "01-sign-in").await);
    submit(
        &page,
        "form[action='/login']",
        &[("login", "owner"), ("password", PASSWORD)],
    )
    .await;
    until(&page, "the bots overview", |h| h.contains("id=\"add-bot\"")).await;
    shots.push(screenshot(&page, "02-bots-empty").await);

    // Add a bot; its page opens.
    submit(
        &page,
        "form[action='/bots']",
        &[("name", "shop"), ("token", &bot_token)],
    )
    .await;
    let html = until(&page, "the bot's page", |h| h.contains("id=\"new-text\"")).await;
    assert!(html.contains("7601:****"), "the token is masked");
    assert!(
        !html.contains(bot_token.split_once(':').unwrap().1),
        "no token on the page"
    );
    let id = panel.admin.list_bots().await.unwrap()[0].id;
    h.wait_state(id, "running").await;

    // Add a text, then edit it in the grid.
    submit(
        &page,
        "#new-text",
        &[
            ("key", "start"),
            ("lang", "en"),
            ("value", "Hello, {first_name}!"),
        ],
    )
    .await;
    until(&page, "the saved text in the grid", |h| {
        h.contains("id=\"t-start-en\"")
    })
    .await;
    submit(
        &page,
        "#t-start-en",
        &[("value", "Edited in the grid, {first_name}!")],
    )
    .await;
    let html = until(&page, "the edited text with its preview", |h| {
        h.contains("Edited in the grid, Alice!")
    })
    .await;
    assert!(html.contains("id=\"saved\""), "the page says it saved");
    shots.push(screenshot(&page, "03-bot-texts").await);

    // The bot answers with the new text, without a restart.
    let chat = 42_001;
    answers_start(&h, &bot_token, chat, "Edited in the grid, ").await;

    // A refused value is shown next to its field, the stored one unchanged.
    submit(&page, "#t-start-en", &[("value", "Hi {nobody}")]).await;
    let html = until(&page, "the field's error", |h| h.contains("field-error")).await;
    assert!(html.contains("unknown placeholder {nobody}"), "{html}");
    assert_eq!(
        stored_start(&panel, id).await,
        "Edited in the grid, {first_name}!"
    );

    // An invalid manifest shows its error with the JSON path.
    page.goto(format!("{}/bots/{id}/manifest", panel.url))
        .await
        .unwrap();
    until(&page, "the manifest editor", |h| {
        h.contains("id=\"manifest\"")
    })
    .await;
    submit(
        &page,
        "form[action$='/manifest']",
        &[(
            "manifest",
            r#"{"menus": {"main": {"text": "m", "buttons": [[{"text": "go", "menu": "nowhere"}]]}}}"#,
        )],
    )
    .await;
    let html = until(&page, "the manifest's error", |h| {
        h.contains("id=\"manifest-error\"")
    })
    .await;
    assert!(
        html.contains("menus.main"),
        "the JSON path is shown: {html}"
    );
    shots.push(screenshot(&page, "04-manifest-error").await);

    // Switch to Russian: the page comes back in Russian, and stays so.
    run(&page, "document.querySelector('#lang-switch').click()").await;
    until(&page, "the Russian page", |h| h.contains("Проверить")).await;
    page.goto(format!("{}/bots/{id}/versions", panel.url))
        .await
        .unwrap();
    until(&page, "the versions page in Russian", |h| {
        h.contains("Откатить") && h.contains("id=\"text-versions\"")
    })
    .await;
    shots.push(screenshot(&page, "05-versions-ru").await);

    // Roll the text back to its first version.
    run(
        &page,
        "document.querySelector('#rollback-start-en-1').click()",
    )
    .await;
    until(&page, "the rollback's confirmation", |h| {
        h.contains("id=\"rolled-back\"")
    })
    .await;
    assert_eq!(stored_start(&panel, id).await, "Hello, {first_name}!");
    answers_start(&h, &bot_token, chat, "Hello, ").await;

    // Commands as a form: a refused description is shown next to its field and nothing is
    // stored; a valid one is saved, and the bot answers the new command.
    page.goto(format!("{}/bots/{id}/commands", panel.url))
        .await
        .unwrap();
    until(&page, "the commands form", |h| {
        h.contains("id=\"commands-form\"")
    })
    .await;
    let command = [("c0.command", "prices"), ("c0.text", "start")];
    submit(
        &page,
        "#commands-form",
        &[command[0], command[1], ("c0.description", "")],
    )
    .await;
    let html = until(&page, "the description's error", |h| {
        h.contains("id=\"c0-error\"")
    })
    .await;
    assert!(html.contains("description"), "{html}");
    assert!(
        panel
            .admin
            .manifest(id)
            .await
            .unwrap()
            .get("commands")
            .is_none()
    );
    submit(
        &page,
        "#commands-form",
        &[command[0], command[1], ("c0.description", "Our prices")],
    )
    .await;
    until(&page, "the saved commands", |h| h.contains("id=\"saved\"")).await;
    shots.push(screenshot(&page, "08-commands-ru").await);
    assert_eq!(
        panel.admin.manifest(id).await.unwrap()["commands"][0]["description"],
        "Our prices"
    );
    answers(&h, &bot_token, chat, "/prices", "Hello, ").await;

    // A broadcast to the bot's users: the empty state, the audience's size, then its
    // progress until it is done — and every user got it.
    let other_chat = 42_002;
    answers_start(&h, &bot_token, other_chat, "Hello, ").await;
    page.goto(format!("{}/bots/{id}/broadcasts", panel.url))
        .await
        .unwrap();
    until(&page, "no broadcasts yet", |h| {
        h.contains("id=\"no-broadcasts\"")
    })
    .await;
    let sale = [("text", "Sale today, {first_name}!"), ("audience", "all")];
    submit_with(&page, "#compose", &sale, "#count-audience").await;
    let html = until(&page, "the audience's size", |h| {
        h.contains("id=\"audience-size\"")
    })
    .await;
    assert!(html.contains("<strong>2</strong>"), "two users: {html}");
    shots.push(screenshot(&page, "09-broadcast-compose-ru").await);
    let seqs = [
        h.last_seq(&bot_token, chat),
        h.last_seq(&bot_token, other_chat),
    ];
    submit_with(&page, "#compose", &sale, "#send-broadcast").await;
    let html = until(&page, "the broadcast done", |h| {
        h.contains("id=\"state-done\"")
    })
    .await;
    assert!(html.contains("2 / 2"), "{html}");
    assert!(html.contains("id=\"report\""), "the report's link");
    shots.push(screenshot(&page, "10-broadcast-done-ru").await);
    for (c, after) in [chat, other_chat].into_iter().zip(seqs) {
        h.reply(&bot_token, c, after, |t| t.starts_with("Sale today, "))
            .await;
    }

    // A schedule: its next run in its zone.
    page.goto(format!("{}/bots/{id}/schedules", panel.url))
        .await
        .unwrap();
    until(&page, "no schedules yet", |h| {
        h.contains("id=\"no-schedules\"")
    })
    .await;
    submit(
        &page,
        "#add-job",
        &[
            ("when_kind", "cron"),
            ("when", "0 9 * * *"),
            ("tz", "Europe/Moscow"),
            ("to", "42001"),
            ("text", "Good morning"),
        ],
    )
    .await;
    until(&page, "the job with its next run", |h| {
        h.contains("id=\"added\"") && h.contains("09:00:00 MSK")
    })
    .await;
    shots.push(screenshot(&page, "11-schedules-ru").await);

    // The overview, the audit log; then every screenshot shows something.
    page.goto(format!("{}/?q=sho", panel.url)).await.unwrap();
    until(&page, "the overview with the bot", |h| {
        h.contains("id=\"bots\"")
    })
    .await;
    shots.push(screenshot(&page, "06-bots-ru").await);
    page.goto(format!("{}/audit", panel.url)).await.unwrap();
    until(&page, "the audit log", |h| h.contains("text.set")).await;
    shots.push(screenshot(&page, "07-audit-ru").await);
    for shot in &shots {
        assert_not_blank(shot);
    }
    drop(page);
    chromium.close().await;
}
