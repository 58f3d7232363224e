//! The HTTP API of `botvisor panel` against a real panel database: every route's happy path
//! and bad input, roles, CSRF, sign-in throttling, the audit log, versions with rollback
//! (from the API, the CLI and plain SQL), the OpenAPI document, and no token in any answer.

mod common;

use botvisor::admin::operators::Role;
use common::token;
use common::web::{Client, PASSWORD, WebPanel};
use reqwest::Method;
use serde_json::json;

/// Adds a disabled bot through the API; returns its id.
async fn add_bot(c: &mut Client, name: &str, token_id: u64) -> i64 {
    let (s, b) = c
        .post(
            "/api/v1/bots",
            json!({"name": name, "token": token(token_id), "enabled": false}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    b["id"].as_i64().unwrap()
}

/// Sets text `key` of bot `id` in the default language through the API.
async fn put_text(c: &mut Client, id: i64, key: &str, value: &str) {
    let (s, t) = c
        .put(
            &format!("/api/v1/bots/{id}/texts/{key}"),
            json!({ "value": value }),
        )
        .await;
    assert_eq!(s, 200, "{t}");
}

/// Bot `id`'s database, created and migrated as the daemon does on the bot's first start.
async fn bot_database(p: &WebPanel, id: i64) -> sqlx::PgPool {
    let db = format!("{}_bot_{id}", p.settings.panel_database_name());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{db}\"")))
        .execute(&p.pool)
        .await
        .unwrap();
    let url = format!("{}/{db}", common::server_url());
    botvisor::schema::apply(&botvisor::schema::BOT, &url.parse().unwrap())
        .await
        .unwrap();
    sqlx::PgPool::connect(&url).await.unwrap()
}

/// The secret part of a token (what must never appear in an answer).
fn secret(t: &str) -> &str {
    t.split_once(':').unwrap().1
}

#[tokio::test]
async fn bots_and_texts_routes_work_and_refuse_bad_input_with_the_clis_words() {
    let p = WebPanel::start("bvt_api").await;
    let mut c = p.signed_in("owner").await;
    let t1 = token(7001);
    let t2 = token(7002);

    // Add: 201 with the id; the token masked.
    let (s, bot) = c
        .post(
            "/api/v1/bots",
            json!({"name": "shop", "token": t1, "enabled": false}),
        )
        .await;
    assert_eq!(s, 201, "{bot}");
    let id = bot["id"].as_i64().unwrap();
    assert_eq!(bot["token"], "7001:****");
    assert_eq!(bot["enabled"], false);

    // Bad input: the CLI's message and the field at fault.
    let (s, e) = c
        .post("/api/v1/bots", json!({"name": "x", "token": "123:short"}))
        .await;
    assert_eq!((s, e["field"].as_str()), (422, Some("token")), "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("malformed bot token"),
        "{e}"
    );
    let (s, e) = c
        .post("/api/v1/bots", json!({"name": "shop", "token": t2}))
        .await;
    assert_eq!((s, e["field"].as_str()), (409, Some("name")), "{e}");
    let (s, e) = c
        .post("/api/v1/bots", json!({"name": "other", "token": t1}))
        .await;
    assert_eq!((s, e["field"].as_str()), (409, Some("token")), "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains(&format!("bot {id} (shop)")),
        "{e}"
    );
    let (s, e) = c
        .post("/api/v1/bots", json!({"name": "bad/name", "token": t2}))
        .await;
    assert_eq!((s, e["field"].as_str()), (422, Some("name")), "{e}");
    let (s, e) = c
        .post(
            "/api/v1/bots",
            json!({"name": "m", "token": t2, "manifest": {"default_language": "russian"}}),
        )
        .await;
    assert_eq!(
        (s, e["field"].as_str()),
        (422, Some("default_language")),
        "{e}"
    );
    let (s, _) = c.post("/api/v1/bots", json!({"name": "no token"})).await;
    assert_eq!(s, 422, "a body without a required field is refused");

    // List, show, unknown id.
    let (s, list) = c.get("/api/v1/bots").await;
    assert_eq!(s, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (s, one) = c.get(&format!("/api/v1/bots/{id}")).await;
    assert_eq!((s, one["name"].as_str()), (200, Some("shop")));
    let (s, e) = c.get("/api/v1/bots/999").await;
    assert_eq!(s, 404);
    assert_eq!(e["error"], "no bot with id 999");

    // Enable, disable, rename, set token (write-only).
    let (s, b) = c
        .post(&format!("/api/v1/bots/{id}/enable"), json!({}))
        .await;
    assert_eq!((s, b["enabled"].as_bool()), (200, Some(true)));
    let (s, b) = c
        .post(&format!("/api/v1/bots/{id}/disable"), json!({}))
        .await;
    assert_eq!((s, b["enabled"].as_bool()), (200, Some(false)));
    let (s, b) = c
        .put(&format!("/api/v1/bots/{id}/name"), json!({"name": "shop2"}))
        .await;
    assert_eq!((s, b["name"].as_str()), (200, Some("shop2")));
    let (s, body) = c
        .put(&format!("/api/v1/bots/{id}/token"), json!({"token": t2}))
        .await;
    assert_eq!(s, 204, "{body}");
    let (s, e) = c
        .put(
            &format!("/api/v1/bots/{id}/token"),
            json!({"token": "nope"}),
        )
        .await;
    assert_eq!((s, e["field"].as_str()), (422, Some("token")));

    // Texts: put (default language), get, list, bad values, delete, import, export.
    let (s, t) = c
        .put(
            &format!("/api/v1/bots/{id}/texts/start"),
            json!({"value": "Hello, {first_name}!"}),
        )
        .await;
    assert_eq!((s, t["lang"].as_str()), (200, Some("en")), "{t}");
    let (s, t) = c
        .put(
            &format!("/api/v1/bots/{id}/texts/start"),
            json!({"value": "Привет!", "lang": "ru"}),
        )
        .await;
    assert_eq!((s, t["value"].as_str()), (200, Some("Привет!")));
    let (s, e) = c
        .put(
            &format!("/api/v1/bots/{id}/texts/start"),
            json!({"value": "Hi {nobody}"}),
        )
        .await;
    assert_eq!((s, e["field"].as_str()), (422, Some("value")), "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("unknown placeholder {nobody}"),
        "{e}"
    );
    let (s, e) = c
        .put(
            &format!("/api/v1/bots/{id}/texts/start"),
            json!({"value": "x", "lang": "Russian!"}),
        )
        .await;
    assert_eq!((s, e["field"].as_str()), (422, Some("lang")), "{e}");
    let (s, t) = c
        .get(&format!("/api/v1/bots/{id}/texts/start?lang=ru"))
        .await;
    assert_eq!((s, t["value"].as_str()), (200, Some("Привет!")));
    let (s, list) = c.get(&format!("/api/v1/bots/{id}/texts")).await;
    assert_eq!((s, list.as_array().unwrap().len()), (200, 2));
    let (s, n) = c
        .post(
            &format!("/api/v1/bots/{id}/texts/import"),
            json!({"help": {"en": "Help", "ru": "Помощь"}}),
        )
        .await;
    assert_eq!((s, n["imported"].as_u64()), (200, Some(2)));
    let (s, e) = c
        .post(&format!("/api/v1/bots/{id}/texts/import"), json!([1]))
        .await;
    assert_eq!(s, 422, "{e}");
    let (s, all) = c.get(&format!("/api/v1/bots/{id}/texts/export")).await;
    assert_eq!((s, all["help"]["ru"].as_str()), (200, Some("Помощь")));
    let (s, _) = c
        .delete(&format!("/api/v1/bots/{id}/texts/help?lang=ru"))
        .await;
    assert_eq!(s, 204);
    let (s, e) = c
        .delete(&format!("/api/v1/bots/{id}/texts/help?lang=ru"))
        .await;
    assert_eq!(s, 404, "{e}");

    // Manifest: get, validate, replace, an invalid one names its JSON path.
    let (s, m) = c.get(&format!("/api/v1/bots/{id}/manifest")).await;
    assert_eq!(s, 200, "{m}");
    let good = json!({"default_language": "ru"});
    let (s, v) = c
        .post(
            &format!("/api/v1/bots/{id}/manifest/validate"),
            good.clone(),
        )
        .await;
    assert_eq!((s, v["valid"].as_bool()), (200, Some(true)));
    let (s, change) = c.put(&format!("/api/v1/bots/{id}/manifest"), good).await;
    assert_eq!(s, 200, "{change}");
    let bad =
        json!({"menus": {"main": {"text": "m", "buttons": [[{"text": "go", "menu": "nowhere"}]]}}});
    let (s, e) = c
        .post(&format!("/api/v1/bots/{id}/manifest/validate"), bad.clone())
        .await;
    assert_eq!(s, 422, "{e}");
    assert!(
        e["field"].as_str().unwrap().starts_with("menus.main"),
        "{e}"
    );
    let (s, _) = c.put(&format!("/api/v1/bots/{id}/manifest"), bad).await;
    assert_eq!(s, 422);

    // History of a bot whose database does not exist yet; status; removal.
    let (s, e) = c.get(&format!("/api/v1/bots/{id}/history?chat=1")).await;
    assert_eq!(s, 404, "{e}");
    let (s, e) = c
        .get(&format!("/api/v1/bots/{id}/history?chat=1&limit=0"))
        .await;
    assert_eq!((s, e["field"].as_str()), (422, Some("limit")), "{e}");
    let (s, st) = c.get("/api/v1/status").await;
    assert_eq!((s, st.as_array().map(Vec::len)), (200, Some(0)));
    let (s, _) = c.delete(&format!("/api/v1/bots/{id}")).await;
    assert_eq!(s, 204);
    let (s, _) = c.get(&format!("/api/v1/bots/{id}")).await;
    assert_eq!(s, 404);

    for body in &c.bodies {
        for t in [&t1, &t2] {
            assert!(!body.contains(secret(t)), "a token leaked: {body}");
        }
    }
}

#[tokio::test]
async fn roles_are_enforced() {
    let p = WebPanel::start("bvt_api_roles").await;
    let mut owner = p.signed_in("owner").await;
    let one = add_bot(&mut owner, "one", 7101).await;
    let two = add_bot(&mut owner, "two", 7102).await;
    p.admin
        .add_operator("ed", Role::Editor, &[one], PASSWORD)
        .await
        .unwrap();
    p.admin
        .add_operator("adm", Role::Admin, &[], PASSWORD)
        .await
        .unwrap();

    let mut ed = p.signed_in("ed").await;
    let (s, list) = ed.get("/api/v1/bots").await;
    assert_eq!(s, 200);
    let ids: Vec<i64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [one], "an editor sees only its bots");
    let (s, _) = ed
        .put(
            &format!("/api/v1/bots/{one}/texts/start"),
            json!({"value": "Hi"}),
        )
        .await;
    assert_eq!(s, 200, "an editor edits its bot's texts");
    let (s, _) = ed
        .put(&format!("/api/v1/bots/{one}/manifest"), json!({}))
        .await;
    assert_eq!(s, 200, "and its manifest");
    for (method, path) in [
        (Method::GET, format!("/api/v1/bots/{two}")),
        (Method::GET, format!("/api/v1/bots/{two}/texts")),
        (Method::PUT, format!("/api/v1/bots/{two}/texts/start")),
        (Method::GET, "/api/v1/operators".to_owned()),
        (Method::GET, "/api/v1/audit".to_owned()),
        (Method::POST, "/api/v1/bots".to_owned()),
        (Method::POST, format!("/api/v1/bots/{one}/disable")),
        (Method::PUT, format!("/api/v1/bots/{one}/token")),
        (Method::DELETE, format!("/api/v1/bots/{one}")),
    ] {
        let body = json!({"value": "x", "name": "n", "token": token(7103)});
        let (s, e) = ed.send(method.clone(), &path, Some(body)).await;
        assert_eq!(s, 403, "{method} {path}: {e}");
        assert!(e["error"].is_string(), "{e}");
    }

    let mut adm = p.signed_in("adm").await;
    let (s, _) = adm
        .post(&format!("/api/v1/bots/{two}/enable"), json!({}))
        .await;
    assert_eq!(s, 200, "an admin manages every bot");
    let (s, _) = adm.get("/api/v1/operators").await;
    assert_eq!(s, 403, "but not operators");
    let (s, ops) = owner.get("/api/v1/operators").await;
    assert_eq!((s, ops.as_array().map(Vec::len)), (200, Some(3)));
    assert!(!ops.to_string().contains("argon2"), "no hash in {ops}");
}

#[tokio::test]
async fn a_session_change_without_the_csrf_token_is_refused_and_api_keys_need_none() {
    let p = WebPanel::start("bvt_api_csrf").await;
    let mut c = p.signed_in("owner").await;
    let body = json!({"name": "csrf", "token": token(7201), "enabled": false});
    let (s, _, e) = c
        .send_raw(Method::POST, "/api/v1/bots", Some(body.clone()), false)
        .await;
    assert_eq!(s, 403, "{e}");
    assert!(e["error"].as_str().unwrap().contains("CSRF"), "{e}");
    let (s, list) = c.get("/api/v1/bots").await;
    assert_eq!(
        (s, list.as_array().map(Vec::len)),
        (200, Some(0)),
        "nothing was added"
    );
    let real = c.csrf.replace("0".repeat(64));
    let (s, _) = c.post("/api/v1/bots", body.clone()).await;
    assert_eq!(s, 403, "a wrong token is refused too");
    c.csrf = real;

    let key = p.admin.new_api_key("owner").await.unwrap();
    let mut k = p.client();
    k.bearer = Some(key);
    let (s, b) = k.post("/api/v1/bots", body).await;
    assert_eq!(s, 201, "{b}");
    k.bearer = Some("bvk_unknown".into());
    let (s, _) = k.get("/api/v1/bots").await;
    assert_eq!(s, 401);
    let (s, _) = p.client().get("/api/v1/bots").await;
    assert_eq!(s, 401, "no credentials");

    // Signing out ends the session.
    let (s, _) = c.delete("/api/v1/session").await;
    c.csrf = None;
    assert_eq!(s, 204);
    let (s, _) = c.get("/api/v1/bots").await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn wrong_passwords_are_throttled_per_login() {
    let p = WebPanel::start("bvt_api_throttle").await;
    let mut c = p.client();
    for _ in 0..botvisor::admin::operators::MAX_FAILURES_PER_LOGIN {
        let (s, e) = c.sign_in("owner", "wrong password!").await;
        assert_eq!(s, 401, "{e}");
        assert_eq!(e["error"], "wrong login or password");
    }
    let (s, e) = c.sign_in("owner", PASSWORD).await;
    assert_eq!(s, 429, "even the right password waits: {e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("too many failed sign-ins"),
        "{e}"
    );
    let (s, _) = c.sign_in("nobody", "wrong password!").await;
    assert_eq!(s, 401, "another login is not throttled yet");

    // The counters are in the panel database: a restarted panel still refuses.
    let restarted = WebPanel::start_on(None, p.pool.clone(), p.settings.clone()).await;
    let (s, headers, e) = restarted
        .client()
        .send_raw(
            Method::POST,
            "/api/v1/session",
            Some(json!({"login": "owner", "password": PASSWORD})),
            false,
        )
        .await;
    assert_eq!(s, 429, "{e}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry), "{retry}");

    // Once the window has passed (moved back here rather than waited for), it may try again.
    sqlx::query("UPDATE login_failures SET since = since - interval '16 minutes'")
        .execute(&p.pool)
        .await
        .unwrap();
    let (s, e) = restarted.client().sign_in("owner", PASSWORD).await;
    assert_eq!(s, 200, "{e}");

    // Per client address too: 20 failures from one address, whatever the logins.
    let max = botvisor::admin::operators::MAX_FAILURES_PER_ADDRESS;
    for i in 0..max {
        p.admin
            .sign_in_failed(&format!("u{i}"), "203.0.113.9")
            .await
            .unwrap();
    }
    let wait = p.admin.sign_in_wait("carol", "203.0.113.9").await.unwrap();
    assert!(wait.is_some_and(|w| w.as_secs() <= 900), "{wait:?}");
    assert_eq!(
        p.admin.sign_in_wait("carol", "198.51.100.1").await.unwrap(),
        None
    );
}

#[tokio::test]
async fn the_audit_log_records_each_change_with_before_and_after() {
    let p = WebPanel::start("bvt_api_audit").await;
    let mut c = p.signed_in("owner").await;
    let id = add_bot(&mut c, "aud", 7301).await;
    put_text(&mut c, id, "start", "One").await;
    put_text(&mut c, id, "start", "Two").await;
    c.put(
        &format!("/api/v1/bots/{id}/token"),
        json!({"token": token(7302)}),
    )
    .await;
    let (s, log) = c.get("/api/v1/audit?limit=10").await;
    assert_eq!(s, 200);
    let entries = log.as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions[..4],
        ["bot.set_token", "text.set", "text.set", "bot.add"],
        "{log}"
    );
    assert!(
        entries[..4].iter().all(|e| e["actor"] == "panel:owner"),
        "{log}"
    );
    assert_eq!(entries[1]["before"], "One");
    assert_eq!(entries[1]["after"], "Two");
    assert_eq!(entries[1]["target"], "start [en]");
    assert_eq!(entries[0]["before"]["token"], "7301:****");
    assert_eq!(entries[0]["after"]["token"], "7302:****");
    assert!(!log.to_string().contains(secret(&token(7302))));
}

#[tokio::test]
async fn versions_cover_every_writer_and_roll_back() {
    let p = WebPanel::start("bvt_api_versions").await;
    let mut c = p.signed_in("owner").await;
    let id = add_bot(&mut c, "ver", 7401).await;
    put_text(&mut c, id, "start", "First").await;
    put_text(&mut c, id, "start", "Second").await;
    // A plain SQL writer is recorded too.
    sqlx::query("UPDATE bot_texts SET value = 'Third' WHERE bot_id = $1 AND key = 'start'")
        .bind(id)
        .execute(&p.pool)
        .await
        .unwrap();
    let (s, v) = c
        .get(&format!("/api/v1/bots/{id}/texts/start/versions"))
        .await;
    assert_eq!(s, 200);
    let v = v.as_array().unwrap();
    assert_eq!(v.len(), 3, "{v:?}");
    assert_eq!(v[0]["value"], "Third");
    assert_eq!(v[0]["previous"], "Second");
    assert_eq!(v[0]["actor"], "sql:postgres");
    assert_eq!(v[1]["actor"], "panel:owner");
    let (s, _) = c
        .post(
            &format!("/api/v1/bots/{id}/texts/start/versions/1/rollback"),
            json!({}),
        )
        .await;
    assert_eq!(s, 204);
    let (_, t) = c.get(&format!("/api/v1/bots/{id}/texts/start")).await;
    assert_eq!(t["value"], "First");
    let (s, _) = c
        .post(
            &format!("/api/v1/bots/{id}/texts/start/versions/99/rollback"),
            json!({}),
        )
        .await;
    assert_eq!(s, 404);

    // Manifests: version 1 is the first one; a rollback is a new version.
    c.put(
        &format!("/api/v1/bots/{id}/manifest"),
        json!({"default_language": "ru"}),
    )
    .await;
    let (_, mv) = c.get(&format!("/api/v1/bots/{id}/manifest/versions")).await;
    assert_eq!(mv.as_array().unwrap().len(), 2, "{mv}");
    assert_eq!(
        mv[1]["actor"], "panel:owner",
        "the first version is the adder's: {mv}"
    );
    let (s, _) = c
        .post(
            &format!("/api/v1/bots/{id}/manifest/versions/1/rollback"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, m) = c.get(&format!("/api/v1/bots/{id}/manifest")).await;
    assert!(m.get("default_language").is_none_or(|l| l == "en"), "{m}");

    // The CLI shows and rolls back the same versions.
    let env = p.env();
    let out = common::botvisor(&env, &["text", "history", &id.to_string(), "start"]);
    let out = out.ok();
    assert!(out.contains("VERSION"), "{out}");
    assert!(
        out.contains("sql:postgres") && out.contains("panel:owner"),
        "{out}"
    );
    common::botvisor(&env, &["text", "rollback", &id.to_string(), "start", "2"]).ok();
    let (_, t) = c.get(&format!("/api/v1/bots/{id}/texts/start")).await;
    assert_eq!(t["value"], "Second");
    let hist = common::botvisor(&env, &["config", "history", &id.to_string()]);
    assert!(
        hist.ok().contains("~default_language") || hist.ok().contains("+default_language"),
        "{hist:?}"
    );
    let out = common::botvisor(&env, &["config", "rollback", &id.to_string(), "2"]);
    assert!(out.ok().contains("rolled back to version 2"), "{out:?}");
    common::botvisor(&env, &["config", "rollback", &id.to_string(), "77"])
        .bad_input("no manifest version 77");
}

#[tokio::test]
async fn the_openapi_document_lists_the_routes_scripts_rely_on() {
    let p = WebPanel::start("bvt_api_openapi").await;
    let (s, doc) = p.client().get("/api/v1/openapi.json").await;
    assert_eq!(s, 200);
    for path in [
        "/api/v1/bots",
        "/api/v1/bots/{id}",
        "/api/v1/bots/{id}/texts",
        "/api/v1/bots/{id}/texts/{key}",
        "/api/v1/bots/{id}/broadcasts",
        "/api/v1/bots/{id}/broadcasts/{bid}/report.csv",
        "/api/v1/bots/{id}/schedules",
        "/api/v1/bots/{id}/schedules/{job}/pause",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(doc["paths"]["/api/v1/bots"]["post"].is_object());
    assert!(doc["paths"]["/api/v1/bots/{id}/texts/{key}"]["put"].is_object());
    assert!(doc["components"]["schemas"]["ApiError"].is_object());
}

#[tokio::test]
async fn operator_commands_manage_operators() {
    let p = WebPanel::start("bvt_api_ops").await;
    let env = p.env();
    let run = |args: &[&str], input: &str| common::botvisor_stdin(&env, args, input);
    let bot = p
        .admin
        .add_bot(&botvisor::admin::bots::NewBot {
            name: "b",
            token: &token(7501),
            enabled: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .to_string();
    run(
        &[
            "operator",
            "add",
            "--login",
            "eve",
            "--role",
            "editor",
            "--bots",
            &bot,
            "--password-stdin",
        ],
        "a long enough password\n",
    )
    .ok();
    let list = run(&["operator", "list"], "");
    assert!(list.ok().contains("eve"), "{list:?}");
    assert!(list.ok().contains(&format!("editor  {bot}")), "{list:?}");
    run(
        &[
            "operator",
            "add",
            "--login",
            "eve",
            "--role",
            "admin",
            "--password-stdin",
        ],
        "a long enough password\n",
    )
    .bad_input("already exists");
    run(
        &[
            "operator",
            "add",
            "--login",
            "x",
            "--role",
            "editor",
            "--password-stdin",
        ],
        "a long enough password\n",
    )
    .bad_input("needs the bots");
    run(
        &[
            "operator",
            "add",
            "--login",
            "y",
            "--role",
            "admin",
            "--password-stdin",
        ],
        "short\n",
    )
    .bad_input("too short");
    run(
        &[
            "operator",
            "add",
            "--login",
            "z",
            "--role",
            "boss",
            "--password-stdin",
        ],
        "a long enough password\n",
    )
    .bad_input("boss");
    let key = run(&["operator", "key", "eve"], "");
    let key = key.ok().trim().to_owned();
    assert!(key.starts_with("bvk_") && key.len() > 60, "{key}");
    let mut k = p.client();
    k.bearer = Some(key);
    let (s, _) = k.get(&format!("/api/v1/bots/{bot}")).await;
    assert_eq!(s, 200, "the printed key works");
    run(&["operator", "passwd", "eve"], "another long password\n").ok();
    let mut c = p.client();
    assert_eq!(c.sign_in("eve", "another long password").await.0, 200);
    run(&["operator", "remove", "owner"], "").bad_input("last owner");
    run(&["operator", "remove", "eve"], "").ok();
    run(&["operator", "remove", "eve"], "").bad_input("no operator");
    let audit = run(&["operator", "audit"], "");
    assert!(audit.ok().contains("operator.remove"), "{audit:?}");
    assert!(audit.ok().contains("cli:"), "{audit:?}");
}

#[tokio::test]
async fn users_and_chat_histories_are_read_from_the_bots_database() {
    let p = WebPanel::start("bvt_api_users").await;
    let mut c = p.signed_in("owner").await;
    let id = add_bot(&mut c, "people", 7801).await;
    let bot_db = bot_database(&p, id).await;
    sqlx::raw_sql(
        "INSERT INTO users (user_id, username, first_name, blocked) VALUES \
           (11, 'anna', 'Анна', false), (12, NULL, 'Boris', true); \
         INSERT INTO messages (chat_id, user_id, role, content) VALUES \
           (11, 11, 'user', '/start'), (11, NULL, 'bot', 'Hello, Анна!')",
    )
    .execute(&bot_db)
    .await
    .unwrap();
    bot_db.close().await;

    let (s, users) = c.get(&format!("/api/v1/bots/{id}/users")).await;
    assert_eq!(
        (s, users.as_array().map(Vec::len)),
        (200, Some(2)),
        "{users}"
    );
    let (s, found) = c.get(&format!("/api/v1/bots/{id}/users?q=bor")).await;
    assert_eq!(s, 200);
    assert_eq!(found[0]["user_id"], 12);
    assert_eq!(found[0]["blocked"], true);
    let (s, history) = c.get(&format!("/api/v1/bots/{id}/history?chat=11")).await;
    assert_eq!(s, 200);
    let roles: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "bot"], "oldest first: {history}");

    // The pages show the same, as a conversation.
    let (s, html) = c.get(&format!("/bots/{id}/users?q=ann")).await;
    let html = html.as_str().unwrap_or_default().to_owned();
    assert_eq!(s, 200, "{html}");
    assert!(html.contains("@anna") && !html.contains("Boris"), "{html}");
    let (s, html) = c.get(&format!("/bots/{id}/chats/11")).await;
    assert_eq!(s, 200);
    assert!(html.as_str().unwrap().contains("Hello, Анна!"));
}

#[tokio::test]
async fn broadcasts_are_composed_sized_steered_and_reported_through_the_api() {
    let p = WebPanel::start("bvt_api_bc").await;
    let mut c = p.signed_in("owner").await;
    let id = add_bot(&mut c, "mail", 8101).await;
    let other = add_bot(&mut c, "other", 8102).await;
    // Without a database (the bot never started) there is nothing to send to: a 404 saying so.
    let (s, e) = c.get(&format!("/api/v1/bots/{id}/broadcasts")).await;
    assert_eq!(s, 404, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("no database yet"),
        "{e}"
    );

    let bot_db = bot_database(&p, id).await;
    sqlx::raw_sql(
        "INSERT INTO users (user_id, first_name, language_code, blocked) VALUES \
           (21, 'Anna', 'ru', false), (22, 'Boris', 'en', false), (23, 'Gone', 'en', true)",
    )
    .execute(&bot_db)
    .await
    .unwrap();
    let (s, list) = c.get(&format!("/api/v1/bots/{id}/broadcasts")).await;
    assert_eq!((s, list.as_array().map(Vec::len)), (200, Some(0)), "{list}");

    // The audience's size before anything is sent (blocked users never count).
    let (s, size) = c
        .get(&format!(
            "/api/v1/bots/{id}/broadcasts/audience?audience=all"
        ))
        .await;
    assert_eq!((s, size["size"].as_i64()), (200, Some(2)), "{size}");
    let (s, size) = c
        .get(&format!(
            "/api/v1/bots/{id}/broadcasts/audience?audience=lang:ru"
        ))
        .await;
    assert_eq!((s, size["size"].as_i64()), (200, Some(1)), "{size}");
    let (s, e) = c
        .get(&format!(
            "/api/v1/bots/{id}/broadcasts/audience?audience=everyone"
        ))
        .await;
    assert_eq!((s, e["field"].as_str()), (422, Some("audience")), "{e}");

    // Bad input: the CLI's words, nothing created.
    let url = format!("/api/v1/bots/{id}/broadcasts");
    for (body, needle) in [
        (json!({"audience": "all"}), "say what to send"),
        (json!({"text": "x", "text_key": "start"}), "not both"),
        (json!({"text": "x", "audience": "lang:xx"}), "is empty"),
        (
            json!({"text": "x", "audience": "nobody"}),
            "invalid audience",
        ),
        (json!({"text": "x", "at": "yesterday"}), "invalid time"),
        (
            json!({"text": "x", "buttons": [[{"text": ""}]]}),
            "invalid buttons",
        ),
        (json!({"text_key": "nope"}), "has no text nope"),
        (json!({"text": "x".repeat(4097)}), "UTF-16 units"),
    ] {
        let (s, e) = c.post(&url, body.clone()).await;
        assert_eq!(s, 422, "{body}: {e}");
        assert!(e["error"].as_str().unwrap().contains(needle), "{body}: {e}");
    }
    let (s, list) = c.get(&url).await;
    assert_eq!((s, list.as_array().map(Vec::len)), (200, Some(0)), "{list}");

    // Start one now: its audience is frozen at once.
    let (s, started) = c
        .post(
            &url,
            json!({"text": "Sale, {first_name}!", "audience": "all"}),
        )
        .await;
    assert_eq!(s, 201, "{started}");
    assert_eq!(started["audience_size"], 2);
    let bid = started["id"].as_i64().unwrap();
    let (s, b) = c.get(&format!("{url}/{bid}")).await;
    assert_eq!((s, b["state"].as_str()), (200, Some("running")), "{b}");
    assert_eq!(
        (b["total"].as_i64(), b["pending"].as_i64()),
        (Some(2), Some(2))
    );
    assert_eq!(b["created_by"], "panel");

    // Pause, resume, cancel; a second cancel says why not.
    let (s, b) = c.post(&format!("{url}/{bid}/pause"), json!({})).await;
    assert_eq!((s, b["state"].as_str()), (200, Some("paused")), "{b}");
    let (s, b) = c.post(&format!("{url}/{bid}/resume"), json!({})).await;
    assert_eq!((s, b["state"].as_str()), (200, Some("running")), "{b}");
    let (s, b) = c.post(&format!("{url}/{bid}/cancel"), json!({})).await;
    assert_eq!((s, b["state"].as_str()), (200, Some("cancelled")), "{b}");
    let (s, e) = c.post(&format!("{url}/{bid}/cancel"), json!({})).await;
    assert_eq!(s, 422, "{e}");
    assert!(e["error"].as_str().unwrap().contains("is cancelled"), "{e}");
    let (s, _) = c.get(&format!("{url}/999")).await;
    assert_eq!(s, 404);

    // The report: one CSV line per recipient.
    let (s, headers, csv) = c
        .send_raw(Method::GET, &format!("{url}/{bid}/report.csv"), None, true)
        .await;
    assert_eq!(s, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = csv.as_str().unwrap().to_owned();
    assert_eq!(
        csv.lines().collect::<Vec<_>>(),
        ["user_id,outcome,error,time", "21,pending,,", "22,pending,,"],
        "{csv}"
    );

    // A scheduled one waits for its time.
    let (s, later) = c
        .post(&url, json!({"text": "Later", "at": "2099-01-01 09:00"}))
        .await;
    assert_eq!(s, 201, "{later}");
    let (_, b) = c.get(&format!("{url}/{}", later["id"])).await;
    assert_eq!(b["state"], "scheduled");

    // An editor of this bot may do all of it; of another bot, nothing.
    p.admin
        .add_operator("ed", Role::Editor, &[id], PASSWORD)
        .await
        .unwrap();
    let mut ed = p.signed_in("ed").await;
    let (s, b) = ed.post(&url, json!({"text": "From the editor"})).await;
    assert_eq!(s, 201, "{b}");
    let (s, _) = ed
        .post(&format!("{url}/{}/pause", b["id"]), json!({}))
        .await;
    assert_eq!(s, 200);
    for (method, path) in [
        (Method::GET, format!("/api/v1/bots/{other}/broadcasts")),
        (Method::POST, format!("/api/v1/bots/{other}/broadcasts")),
        (
            Method::GET,
            format!("/api/v1/bots/{other}/broadcasts/audience"),
        ),
        (
            Method::POST,
            format!("/api/v1/bots/{other}/broadcasts/1/pause"),
        ),
        (
            Method::GET,
            format!("/api/v1/bots/{other}/broadcasts/1/report.csv"),
        ),
    ] {
        let (s, e) = ed
            .send(method.clone(), &path, Some(json!({"text": "x"})))
            .await;
        assert_eq!(s, 403, "{method} {path}: {e}");
    }

    // Every change is in the audit log, with who did it.
    let (_, log) = c.get("/api/v1/audit?limit=20").await;
    let actions: Vec<String> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["bot_id"] == id)
        .map(|e| {
            format!(
                "{} {}",
                e["actor"].as_str().unwrap(),
                e["action"].as_str().unwrap()
            )
        })
        .collect();
    for expected in [
        "panel:owner broadcast.start",
        "panel:owner broadcast.pause",
        "panel:owner broadcast.resume",
        "panel:owner broadcast.cancel",
        "panel:ed broadcast.start",
        "panel:ed broadcast.pause",
    ] {
        assert!(
            actions.iter().any(|a| a == expected),
            "{expected} in {actions:?}"
        );
    }
    bot_db.close().await;
}

#[tokio::test]
async fn schedules_are_listed_with_their_next_run_added_paused_and_removed_through_the_api() {
    let p = WebPanel::start("bvt_api_jobs").await;
    let mut c = p.signed_in("owner").await;
    let id = add_bot(&mut c, "sched", 8201).await;
    let other = add_bot(&mut c, "else", 8202).await;
    let bot_db = bot_database(&p, id).await;
    sqlx::raw_sql("INSERT INTO users (user_id, first_name) VALUES (31, 'Vera')")
        .execute(&bot_db)
        .await
        .unwrap();
    let url = format!("/api/v1/bots/{id}/schedules");
    let (s, list) = c.get(&url).await;
    assert_eq!((s, list.as_array().map(Vec::len)), (200, Some(0)), "{list}");

    // A weekday-morning job in Moscow: its next run is shown in that zone and in UTC.
    let (s, job) = c
        .post(
            &url,
            json!({"cron": "0 9 * * 1-5", "tz": "Europe/Moscow", "chat": 31, "text": "Morning!"}),
        )
        .await;
    assert_eq!(s, 201, "{job}");
    let jid = job["id"].as_i64().unwrap();
    let local = job["next_run_local"].as_str().unwrap();
    assert!(local.contains(" 09:00:00 MSK"), "{job}");
    let utc = job["next_run_utc"].as_str().unwrap();
    assert!(
        utc.contains("T06:00:00"),
        "9:00 in Moscow is 6:00 UTC: {job}"
    );
    assert_eq!(job["target"], "chat:31");
    let (s, one_off) = c
        .post(
            &url,
            json!({"in": "2h", "audience": "all", "text": "Soon", "broadcast": true}),
        )
        .await;
    assert_eq!(s, 201, "{one_off}");
    assert_eq!(one_off["kind"], "once");
    assert_eq!(one_off["target"], "audience:all +broadcast");

    // Bad input: the CLI's words.
    for (body, needle) in [
        (
            json!({"chat": 31, "text": "x"}),
            "exactly one of at, in and cron",
        ),
        (
            json!({"in": "1h", "cron": "* * * * *", "chat": 31, "text": "x"}),
            "exactly one",
        ),
        (
            json!({"cron": "61 * * * *", "chat": 31, "text": "x"}),
            "cron",
        ),
        (
            json!({"in": "1h", "tz": "Mars/Olympus", "chat": 31, "text": "x"}),
            "unknown time zone",
        ),
        (
            json!({"at": "2001-01-01 00:00", "chat": 31, "text": "x"}),
            "in the past",
        ),
        (json!({"in": "1h", "text": "x"}), "say whom to send to"),
        (
            json!({"in": "1h", "chat": 31, "audience": "all", "text": "x"}),
            "not both",
        ),
        (json!({"in": "1h", "chat": 31}), "say what to send"),
        (
            json!({"in": "1h", "chat": 31, "text": "x", "misfire": "later"}),
            "misfire",
        ),
    ] {
        let (s, e) = c.post(&url, body.clone()).await;
        assert_eq!(s, 422, "{body}: {e}");
        assert!(e["error"].as_str().unwrap().contains(needle), "{body}: {e}");
    }

    // Pause and resume; remove; an unknown job is a 404.
    let (s, j) = c.post(&format!("{url}/{jid}/pause"), json!({})).await;
    assert_eq!((s, j["paused"].as_bool()), (200, Some(true)), "{j}");
    let (s, j) = c.post(&format!("{url}/{jid}/resume"), json!({})).await;
    assert_eq!((s, j["paused"].as_bool()), (200, Some(false)), "{j}");
    assert!(
        j["next_run_local"]
            .as_str()
            .unwrap()
            .contains("09:00:00 MSK")
    );
    let (s, _) = c.delete(&format!("{url}/{}", one_off["id"])).await;
    assert_eq!(s, 204);
    let (s, list) = c.get(&url).await;
    assert_eq!((s, list.as_array().map(Vec::len)), (200, Some(1)), "{list}");
    let (s, e) = c.post(&format!("{url}/999/pause"), json!({})).await;
    assert_eq!(s, 404, "{e}");
    let (s, _) = c.delete(&format!("{url}/999")).await;
    assert_eq!(s, 404);

    // An editor of another bot may do none of it.
    p.admin
        .add_operator("ed", Role::Editor, &[other], PASSWORD)
        .await
        .unwrap();
    let mut ed = p.signed_in("ed").await;
    for (method, path) in [
        (Method::GET, url.clone()),
        (Method::POST, url.clone()),
        (Method::POST, format!("{url}/{jid}/pause")),
        (Method::DELETE, format!("{url}/{jid}")),
    ] {
        let body = json!({"in": "1h", "chat": 31, "text": "x"});
        let (s, e) = ed.send(method.clone(), &path, Some(body)).await;
        assert_eq!(s, 403, "{method} {path}: {e}");
    }
    let (_, list) = c.get(&url).await;
    assert_eq!(list[0]["paused"], false, "the editor changed nothing");

    let (_, log) = c.get("/api/v1/audit?limit=20").await;
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in [
        "schedule.add",
        "schedule.pause",
        "schedule.resume",
        "schedule.remove",
    ] {
        assert!(actions.contains(&expected), "{expected} in {actions:?}");
    }
    bot_db.close().await;
}

#[tokio::test]
async fn the_sign_in_form_needs_its_own_csrf_token() {
    let p = WebPanel::start("bvt_api_login_csrf").await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = |csrf: Option<&str>| {
        let mut f = vec![("login", "owner"), ("password", PASSWORD)];
        if let Some(t) = csrf {
            f.push(("csrf", t));
        }
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(f)
            .finish()
    };
    let post = |body: String, cookie: Option<String>| {
        let mut r = http
            .post(format!("{}/login", p.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        r.send()
    };
    let session_set = |r: &reqwest::Response| {
        r.headers().get_all("set-cookie").iter().any(|c| {
            c.to_str().unwrap().starts_with("botvisor_session=")
                && !c.to_str().unwrap().starts_with("botvisor_session=;")
        })
    };

    // The page hands out a token: in a hidden field and in an HttpOnly, SameSite=Strict cookie.
    let page = http.get(format!("{}/login", p.url)).send().await.unwrap();
    let cookie = page.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("botvisor_login_csrf="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let token = cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned();
    let html = page.text().await.unwrap();
    assert!(
        html.contains(&format!("name=\"csrf\" value=\"{token}\"")),
        "{html}"
    );

    // A form posted from elsewhere (no cookie, or no field, or another token) is refused
    // before the password is checked, and signs nobody in.
    for (body, c) in [
        (form(None), None),
        (form(Some(&token)), None),
        (form(None), Some(format!("botvisor_login_csrf={token}"))),
        (
            form(Some(&"0".repeat(64))),
            Some(format!("botvisor_login_csrf={token}")),
        ),
    ] {
        let r = post(body, c).await.unwrap();
        assert_eq!(r.status(), 403);
        assert!(!session_set(&r));
        let html = r.text().await.unwrap();
        assert!(html.contains("sign in again on this page"), "{html}");
    }
    // The same form with its token signs in.
    let r = post(
        form(Some(&token)),
        Some(format!("botvisor_login_csrf={token}")),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 303);
    assert!(session_set(&r));

    // The API's sign-in takes JSON only, which no cross-site form can send.
    let r = http
        .post(format!("{}/api/v1/session", p.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(None))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert!(!session_set(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_panel_opens_at_most_its_bot_database_connections() {
    let p = WebPanel::start("bvt_api_bound").await;
    assert_eq!(p.settings.panel_http.bot_db_connections, 2, "the default");
    assert_eq!(p.admin.bot_db_permits_free(), 2);
    let mut c = p.signed_in("owner").await;
    let id = add_bot(&mut c, "bounded", 8301).await;
    bot_database(&p, id).await.close().await;
    let db = format!("{}_bot_{id}", p.settings.panel_database_name());
    let open = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
            .bind(&db)
            .fetch_one(&p.pool)
            .await
            .unwrap()
    };
    common::eventually(
        std::time::Duration::from_secs(10),
        "no connection left",
        || async { (open().await == 0).then_some(()) },
    )
    .await;

    // A service allowed one connection at a time, and 24 reads at once: meanwhile the
    // server never shows more than one connection to the bot's database, plus at most one
    // whose backend is still exiting (closing is asynchronous on the server's side).
    let mut settings = p.settings.clone();
    settings.panel_http.bot_db_connections = 1;
    let admin = botvisor::admin::Admin::new(p.pool.clone(), std::sync::Arc::new(settings));
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..24 {
        let admin = admin.clone();
        reads.spawn(async move { admin.list_users(id, None, 10, 0).await.map(|_| ()) });
    }
    let mut most = 0;
    while !reads.is_empty() {
        most = most.max(open().await);
        if let Some(done) = reads.try_join_next() {
            done.unwrap().unwrap();
        }
    }
    assert!(most <= 2, "{most} connections open at once (limit 1)");
    assert_eq!(admin.bot_db_permits_free(), 1, "every permit came back");
}

#[tokio::test]
async fn each_audit_entry_commits_in_the_transaction_of_its_change() {
    let p = WebPanel::start("bvt_api_audit_tx").await;
    let mut c = p.signed_in("owner").await;
    let id = add_bot(&mut c, "tx", 8401).await;
    put_text(&mut c, id, "start", "Hi").await;
    put_text(&mut c, id, "gone", "Bye").await;
    let (s, _) = c.delete(&format!("/api/v1/bots/{id}/texts/gone")).await;
    assert_eq!(s, 204);
    let (s, _) = c
        .put(
            &format!("/api/v1/bots/{id}/manifest"),
            json!({"default_language": "ru"}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = c
        .put(&format!("/api/v1/bots/{id}/name"), json!({"name": "tx2"}))
        .await;
    assert_eq!(s, 200);
    // A row written in a transaction carries that transaction's id (xmin): the audit entry and
    // the row it records have the same one, so neither can commit without the other.
    let same = |sql: &'static str| {
        let pool = p.pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>(sql)
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    for (what, sql) in [
        (
            "bot.add",
            "SELECT a.xmin::text = v.xmin::text AND v.actor = a.actor \
             FROM audit_log a, manifest_versions v \
             WHERE a.bot_id = $1 AND a.action = 'bot.add' AND v.bot_id = $1 AND v.version = 1",
        ),
        (
            "text.set",
            "SELECT a.xmin::text = v.xmin::text FROM audit_log a, text_versions v \
             WHERE a.bot_id = $1 AND a.action = 'text.set' AND a.target = 'start [en]' \
               AND v.bot_id = $1 AND v.key = 'start'",
        ),
        (
            "text.delete",
            "SELECT a.xmin::text = v.xmin::text FROM audit_log a, text_versions v \
             WHERE a.bot_id = $1 AND a.action = 'text.delete' \
               AND v.bot_id = $1 AND v.key = 'gone' AND v.value IS NULL",
        ),
        (
            "manifest.replace",
            "SELECT a.xmin::text = v.xmin::text FROM audit_log a, manifest_versions v \
             WHERE a.bot_id = $1 AND a.action = 'manifest.replace' \
               AND v.bot_id = $1 AND v.manifest->>'default_language' = 'ru'",
        ),
        (
            "bot.rename",
            "SELECT a.xmin::text = b.xmin::text FROM audit_log a, bots b \
             WHERE a.bot_id = $1 AND a.action = 'bot.rename' AND b.id = $1",
        ),
    ] {
        assert!(same(sql).await, "{what}: not in the same transaction");
    }
    // A refused change leaves no entry.
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log")
        .fetch_one(&p.pool)
        .await
        .unwrap();
    add_bot(&mut c, "other", 8402).await;
    let (s, _) = c
        .put(&format!("/api/v1/bots/{id}/name"), json!({"name": "other"}))
        .await;
    assert_eq!(s, 409);
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log")
        .fetch_one(&p.pool)
        .await
        .unwrap();
    assert_eq!(after, before + 1, "only the added bot is recorded");
}

/// The overview shows each running bot's traffic as the daemon last wrote it to `bot_status`
/// (no bot database is opened for the list), and the bot's JSON carries it; a bot that does
/// not run shows none.
#[tokio::test]
async fn the_overview_shows_the_traffic_the_daemon_wrote() {
    use botvisor::panel::store::{self, StatusUpdate};
    let p = WebPanel::start("bvt_traffic").await;
    let mut c = p.signed_in("owner").await;
    let busy = add_bot(&mut c, "busy", 7301).await;
    let idle = add_bot(&mut c, "stopped one", 7302).await;
    for (id, state) in [(busy, "running"), (idle, "stopped")] {
        let status = StatusUpdate {
            bot_id: id,
            instance: "test",
            state,
            detail: "",
            telegram_username: None,
            started: true,
        };
        store::upsert_status(&p.pool, &status).await.unwrap();
        store::set_traffic(&p.pool, id, 12, 7).await.unwrap();
    }
    let (s, page) = c.get("/").await;
    assert_eq!(s, 200);
    let page = page.as_str().unwrap();
    assert_eq!(
        page.matches("↓ 12 · ↑ 7 /min").count(),
        1,
        "the running bot's traffic, and only its, on the overview"
    );
    let (s, bot) = c.get(&format!("/api/v1/bots/{busy}")).await;
    assert_eq!(s, 200, "{bot}");
    assert_eq!(bot["traffic"]["updates_per_min"], 12, "{bot}");
    assert_eq!(bot["traffic"]["sent_per_min"], 7, "{bot}");

    // A new run starts without the previous run's figures.
    let restarted = StatusUpdate {
        bot_id: busy,
        instance: "test",
        state: "running",
        detail: "",
        telegram_username: None,
        started: true,
    };
    store::upsert_status(&p.pool, &restarted).await.unwrap();
    let (_, bot) = c.get(&format!("/api/v1/bots/{busy}")).await;
    assert!(bot["traffic"].is_null(), "{bot}");
}
