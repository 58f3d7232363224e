//! Bot databases on several PostgreSQL servers (`bot_database.servers`): new bots are placed
//! on the server with the fewest bots per weight and their databases created there; `bot
//! move` copies a running bot's database to another server (row counts verified), the bot
//! answers from there, the old database is kept until `--drop-old`, and a move to a server
//! that is not configured is refused with nothing touched.
//!
//! The second server is a real PostgreSQL cluster on 127.0.0.1:5433 (`BOTVISOR_TEST_PG2`;
//! scripts/test.sh starts it through scripts/pg-up.sh). Without it these tests skip, except
//! with `CI=true`, where they fail.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use botvisor::admin::Admin;
use botvisor::admin::bots::NewBot;
use botvisor::panel::store;
use common::harness::{DEADLINE, Harness};
use common::{TestDb, botvisor_off_thread, token};
use sqlx::{ConnectOptions, Connection};

/// The second server's URL (no database).
fn second_url() -> String {
    std::env::var("BOTVISOR_TEST_PG2")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433".into())
}

/// The second server, when it answers; with `CI=true` a missing one fails the test.
async fn second_server() -> Option<String> {
    let url = second_url();
    let reachable = format!("{url}/postgres")
        .parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap()
        .connect()
        .await;
    match reachable {
        Ok(conn) => {
            conn.close().await.ok();
            Some(url)
        }
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "the second PostgreSQL server {url} is unreachable ({e}); run scripts/pg-up.sh with PG_SECOND=1"
            )
        }
        Err(e) => {
            eprintln!("skipped: the second PostgreSQL server {url} is unreachable ({e})");
            None
        }
    }
}

/// A daemon with `bot_database.servers` = [the test server, the second server], its admin
/// service and the two server URLs; `None` (skip) without the second server.
struct TwoServers {
    h: Harness,
    admin: Admin,
    first: String,
    second: String,
    servers: String,
    _cleanup: common::DatabasesOn,
}

async fn two_servers() -> Option<TwoServers> {
    let second = second_server().await?;
    let first = common::server_url();
    let servers = format!(r#"["{first}", "{second}"]"#);
    let h = Harness::start(&[("BOTVISOR__BOT_DATABASE__SERVERS", &servers)]).await;
    let _cleanup = common::DatabasesOn {
        server: second.clone(),
        name: h.panel.name.clone(),
    };
    let admin = Admin::new(h.pool.clone(), Arc::new(h.settings.clone()));
    Some(TwoServers {
        h,
        admin,
        first,
        second,
        servers,
        _cleanup,
    })
}

async fn connect(server: &str, db: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
    format!("{server}/{db}")
        .parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap()
        .connect()
        .await
}

/// Row counts per table of database `name` on `server`.
async fn counts(server: &str, name: &str) -> BTreeMap<String, i64> {
    let mut conn = connect(server, name).await.unwrap();
    let counts = botvisor::botdb::store::table_counts(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    counts
}

/// The key `bots.db_server` records for a server URL.
fn key(url: &str) -> String {
    botvisor::settings::server_key(&url.parse().unwrap())
}

/// `bot add` through the admin service, for a token registered in the sandbox.
async fn add(h: &Harness, admin: &Admin, name: &str, token_id: u64) -> (i64, String) {
    let t = token(token_id);
    h.sandbox
        .register_bot(&t, Some(&format!("{name}_bot")))
        .unwrap();
    let id = admin
        .add_bot(&NewBot {
            name,
            token: &t,
            enabled: true,
            ..Default::default()
        })
        .await
        .unwrap();
    (id, t)
}

#[tokio::test]
async fn new_bots_spread_two_and_two_and_each_database_is_created_on_its_server() {
    let Some(two) = two_servers().await else {
        return;
    };
    let (h, admin) = (&two.h, &two.admin);
    let (first, second) = (two.first.clone(), two.second.clone());
    let mut bots = Vec::new();
    for i in 0..4 {
        bots.push(add(h, admin, &format!("spread{i}"), 6401 + i).await.0);
    }
    let mut placed = Vec::new();
    for id in &bots {
        placed.push(store::get_bot(&h.pool, *id).await.unwrap().db_server);
    }
    // Fewest bots first, ties to the first listed: they alternate, two on each.
    let (k1, k2) = (Some(key(&first)), Some(key(&second)));
    assert_eq!(placed, [k1.clone(), k2.clone(), k1, k2]);
    for (id, server) in bots.iter().zip(&placed) {
        h.wait_state(*id, "running").await;
        let name = h.bot_database(*id);
        let on_second = server.as_deref() == Some(key(&second).as_str());
        assert_eq!(
            common::database_exists_on(&second, &name).await,
            on_second,
            "bot {id}"
        );
        assert_eq!(
            common::database_exists_on(&first, &name).await,
            !on_second,
            "bot {id}"
        );
        let view = admin.show_bot(*id).await.unwrap();
        let want = if on_second { &second } else { &first };
        assert_eq!(view.server, *want, "bot {id}");
    }
    let status = admin.cluster_status().await.unwrap();
    assert_eq!(status.servers.values().copied().collect::<Vec<_>>(), [2, 2]);
    // Each server has its own budget, and each server's bots take their connections from it.
    let keys: Vec<&str> = h.budgets.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, [key(&first), key(&second)]);
    for server in [&first, &second] {
        let budget = h.budgets.for_server(&key(server));
        assert_eq!(budget.stats().budget, 12, "{server}");
        common::eventually(DEADLINE, "connections open on each server", || async {
            (budget.open_connections() > 0).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn placement_follows_the_weights() {
    // Placement only reads the panel: the second server need not answer.
    let db = TestDb::create("bvt_place").await;
    botvisor::schema::apply(&botvisor::schema::PANEL, &db.url.parse().unwrap())
        .await
        .unwrap();
    let first = common::server_url();
    let second = second_url();
    let mut env = db.env();
    env.insert(
        "BOTVISOR__BOT_DATABASE__SERVERS".into(),
        format!(r#"[{{ url = "{first}", weight = 1 }}, {{ url = "{second}", weight = 3 }}]"#),
    );
    let settings = botvisor::settings::Settings::load(None, &env).unwrap();
    let pool = db.pool().await;
    let admin = Admin::new(pool.clone(), Arc::new(settings));
    let mut on_second = Vec::new();
    for i in 0..8u64 {
        let t = token(6501 + i);
        let id = admin
            .add_bot(&NewBot {
                name: &format!("weighted{i}"),
                token: &t,
                ..Default::default()
            })
            .await
            .unwrap();
        let server = store::get_bot(&pool, id).await.unwrap().db_server;
        on_second.push(server == Some(key(&second)));
        if i == 3 {
            assert_eq!(on_second.iter().filter(|s| **s).count(), 3, "{on_second:?}");
        }
    }
    // One in four on the first server, three in four on the second.
    assert_eq!(on_second.iter().filter(|s| **s).count(), 6, "{on_second:?}");
    // A database name given with --database must be free on every server: the next bot's
    // server is chosen only as it is inserted, and a move keeps the name.
    let shop = |i: u64| NewBot {
        name: if i == 0 { "shop0" } else { "shop1" },
        database: Some("shop"),
        ..Default::default()
    };
    let t0 = token(6510);
    admin
        .add_bot(&NewBot {
            token: &t0,
            ..shop(0)
        })
        .await
        .unwrap();
    let t1 = token(6511);
    let err = admin
        .add_bot(&NewBot {
            token: &t1,
            ..shop(1)
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already used by bot"), "{err}");
    pool.close().await;
}

#[tokio::test]
async fn a_running_bot_moves_to_the_other_server_and_answers_from_there() {
    let Some(two) = two_servers().await else {
        return;
    };
    let (h, admin) = (&two.h, &two.admin);
    let (first, second, servers) = (two.first.clone(), two.second.clone(), two.servers.clone());
    let (id, t) = add(h, admin, "mover", 6601).await;
    assert_eq!(
        store::get_bot(&h.pool, id).await.unwrap().db_server,
        Some(key(&first))
    );
    admin
        .set_text(id, "start", Some("en"), "Hello from anywhere")
        .await
        .unwrap();
    h.wait_state(id, "running").await;
    for user in [741_100_001_i64, 741_100_002] {
        common::eventually(DEADLINE, "a /start answered", || async {
            let after = h.last_seq(&t, user);
            h.say(&t, user, "/start");
            let r = h.reply(&t, user, after, |_| true).await;
            (r.text() == Some("Hello from anywhere")).then_some(())
        })
        .await;
    }
    let name = h.bot_database(id);
    let before = counts(&first, &name).await;
    assert_eq!(before["public.users"], 2, "{before:?}");
    assert!(before["public.messages"] >= 4, "{before:?}");

    let mut env = h.panel.env();
    env.insert("BOTVISOR__BOT_DATABASE__SERVERS".into(), servers.clone());
    let ids = id.to_string();
    // A server that is not configured: refused, nothing touched, the bot keeps running.
    let refused = botvisor_off_thread(
        &env,
        &[
            "bot",
            "move",
            &ids,
            "--server",
            "postgres://postgres@127.0.0.1:5999",
        ],
    )
    .await;
    refused.bad_input("is not one of the configured bot database servers");
    let row = store::get_bot(&h.pool, id).await.unwrap();
    assert_eq!(row.db_server, Some(key(&first)));
    assert!(row.enabled);
    assert!(!common::database_exists_on(&second, &name).await);
    assert_eq!(
        store::get_status(&h.pool, id).await.unwrap().unwrap().state,
        "running"
    );

    // The move (the password-less URL matches the configured entry).
    let moved = botvisor_off_thread(&env, &["bot", "move", &ids, "--server", &second]).await;
    assert_eq!(moved.stdout.trim(), second, "{moved:?}");
    assert!(moved.stderr.contains("tables verified"), "{moved:?}");
    assert!(
        moved
            .stderr
            .contains(&format!("the old database is kept: {name} on {first}")),
        "{moved:?}"
    );
    let row = store::get_bot(&h.pool, id).await.unwrap();
    assert_eq!(row.db_server, Some(key(&second)));
    assert!(row.enabled);
    assert_eq!(counts(&second, &name).await, before);
    assert!(
        common::database_exists_on(&first, &name).await,
        "the old database is kept"
    );
    let audit = store::list_audit(&h.pool, 20, None).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "bot.move" && a.bot_id == Some(id)),
        "{audit:?}"
    );

    // The bot answers from the new server: the new message lands in its history there.
    let user = 741_100_003_i64;
    common::eventually(DEADLINE, "a /start answered after the move", || async {
        let after = h.last_seq(&t, user);
        h.say(&t, user, "/start");
        let r = h.reply(&t, user, after, |_| true).await;
        (r.text() == Some("Hello from anywhere")).then_some(())
    })
    .await;
    let history = |server: String| {
        let name = name.clone();
        async move {
            let mut conn = connect(&server, &name).await.unwrap();
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE chat_id = $1")
                .bind(user)
                .fetch_one(&mut conn)
                .await
                .unwrap();
            conn.close().await.ok();
            n
        }
    };
    common::eventually(DEADLINE, "the new messages in the new database", || async {
        (history(second.clone()).await >= 2).then_some(())
    })
    .await;
    assert_eq!(
        history(first.clone()).await,
        0,
        "nothing reached the old database"
    );
    assert_eq!(admin.show_bot(id).await.unwrap().server, second);
    let show = botvisor_off_thread(&env, &["bot", "show", &ids]).await;
    assert!(
        show.ok().contains(&format!("server:      {second}\n")),
        "{show:?}"
    );
    let status = botvisor_off_thread(&env, &["status"]).await;
    assert!(
        status
            .ok()
            .contains(&format!("bots by database server:\n  {second}  1\n")),
        "{status:?}"
    );

    // Moving again to where it is: refused. --drop-old drops the kept old database.
    botvisor_off_thread(&env, &["bot", "move", &ids, "--server", &second])
        .await
        .bad_input("already");
    let dropped = botvisor_off_thread(&env, &["bot", "move", &ids, "--drop-old"]).await;
    assert!(
        dropped
            .stderr
            .contains(&format!("dropped the old database {name} on {first}")),
        "{dropped:?}"
    );
    assert!(!common::database_exists_on(&first, &name).await);
    assert!(common::database_exists_on(&second, &name).await);
    botvisor_off_thread(&env, &["bot", "move", &ids, "--drop-old"])
        .await
        .bad_input("no old copy");
}

#[tokio::test]
async fn a_move_interrupted_at_any_step_finishes_or_starts_over_when_run_again() {
    use botvisor::admin::archive::PgTools;
    use botvisor::admin::moving::{MoveOptions, MoveStep};
    let Some(two) = two_servers().await else {
        return;
    };
    let (h, admin) = (&two.h, &two.admin);
    let (first, second) = (two.first.clone(), two.second.clone());
    let (id, t) = add(h, admin, "crashy", 6701).await;
    h.wait_state(id, "running").await;
    let user = 741_200_001_i64;
    let after = h.last_seq(&t, user);
    h.say(&t, user, "/start");
    h.reply(&t, user, after, |_| true).await;
    let name = h.bot_database(id);
    let tools = PgTools::default();
    let (mut from, mut to) = (first.clone(), second.clone());
    for step in [
        MoveStep::Stopped,
        MoveStep::Restored,
        MoveStep::Renamed,
        MoveStep::Switched,
    ] {
        h.wait_state(id, "running").await;
        let before = counts(&from, &name).await;
        let opts = |halt_after| MoveOptions {
            server: Some(&to),
            drop_old: true,
            halt_after,
        };
        let err = admin
            .move_bot(id, &opts(Some(step)), &tools)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("halted after"), "{step:?}: {err}");
        let r = admin.move_bot(id, &opts(None), &tools).await.unwrap();
        assert_eq!(r.resumed, step == MoveStep::Switched, "{step:?}: {r:?}");
        let row = store::get_bot(&h.pool, id).await.unwrap();
        assert_eq!(row.db_server, Some(key(&to)), "{step:?}");
        assert!(row.enabled, "{step:?}: enabled again");
        assert_eq!(counts(&to, &name).await, before, "{step:?}");
        assert!(
            !common::database_exists_on(&from, &name).await,
            "{step:?}: --drop-old"
        );
        assert!(
            !common::database_exists_on(&to, &format!("{name}_move")).await,
            "{step:?}"
        );
        std::mem::swap(&mut from, &mut to);
    }
    // The bot answers from where it ended up.
    h.wait_state(id, "running").await;
    let after = h.last_seq(&t, user);
    h.say(&t, user, "/start");
    h.reply(&t, user, after, |_| true).await;
}
