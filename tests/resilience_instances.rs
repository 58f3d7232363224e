//! Several `serve` processes on one panel (issue 16 item 3): each bot is owned by exactly one
//! instance through an advisory lock on that instance's control connection; each instance owns
//! its fair share; a kill -9 frees the dead one's bots for the others at once; a joining
//! instance takes its share by hand-over with no update applied twice; an instance whose
//! control connection is cut fences (stops its bots) before anyone re-acquires them.
//! (These replace issue 13's stand-by test: a second instance no longer waits, it shares.)

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use botvisor::sandbox::InjectMessage;
use common::eventually;
use common::process::{ServeProcess, ServeSetup};

/// Generous: up to four `serve` processes and their bot databases on a shared, loaded machine.
const DEADLINE: Duration = Duration::from_secs(120);

fn env_for(setup: &ServeSetup, instance: &str) -> HashMap<String, String> {
    let mut env = setup.env.clone();
    env.insert("BOTVISOR__SUPERVISOR__INSTANCE".into(), instance.into());
    env
}

fn start(setup: &ServeSetup, instance: &str, log: &std::path::Path) -> ServeProcess {
    ServeProcess::start(&env_for(setup, instance), Some(log))
}

/// Bot id → the instance its `running` status row names.
async fn running_on(pool: &sqlx::PgPool) -> BTreeMap<i64, String> {
    sqlx::query_as::<_, (i64, String)>(
        "SELECT bot_id, instance FROM bot_status WHERE state = 'running' ORDER BY bot_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

fn counts(map: &BTreeMap<i64, String>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for v in map.values() {
        *out.entry(v.clone()).or_default() += 1;
    }
    out
}

/// Sends `/start` from user `chat` to every bot and waits until each answered it.
async fn every_bot_answers(setup: &ServeSetup, bots: &[(i64, String)], chat: i64) {
    for (_, t) in bots {
        setup
            .sandbox
            .inject_message(InjectMessage::private(t, chat, "/start"))
            .unwrap();
    }
    for (id, t) in bots {
        eventually(
            DEADLINE,
            &format!("bot {id} answers in chat {chat}"),
            || {
                let n = setup.sandbox.sent(t, chat, 0).unwrap().len();
                async move { (n >= 1).then_some(()) }
            },
        )
        .await;
    }
}

/// Every message injected into `chat` was answered exactly once: its effect (the reply, and
/// the inbox row behind it) was applied once, whoever owned the bot at the time.
fn answered_once(setup: &ServeSetup, bots: &[(i64, String)], chat: i64) {
    for (id, t) in bots {
        let n = setup.sandbox.sent(t, chat, 0).unwrap().len();
        assert_eq!(n, 1, "bot {id}: {n} replies to one /start in chat {chat}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_the_bots_survive_kill_9_and_hand_over_to_a_newcomer() {
    let setup = ServeSetup::new("bvt_share", false).await;
    let mut bots = Vec::new();
    for i in 0..6 {
        bots.push(setup.add_bot(&format!("share{i}"), 916_100 + i).await);
    }
    let dir = tempfile::tempdir().unwrap();
    let alpha = start(&setup, "alpha", &dir.path().join("alpha.log"));
    let beta = start(&setup, "beta", &dir.path().join("beta.log"));

    // Each owns its share: ceil(6 / 2) = 3, so exactly 3 each.
    eventually(DEADLINE, "3 bots running on each instance", || async {
        let c = counts(&running_on(&setup.pool).await);
        (c.get("alpha") == Some(&3) && c.get("beta") == Some(&3)).then_some(())
    })
    .await;
    every_bot_answers(&setup, &bots, 1).await;
    answered_once(&setup, &bots, 1);
    // `botvisor status` (its service call) shows both instances and what they own.
    let owned: Vec<(String, i32, bool)> =
        eventually(DEADLINE, "heartbeats count 3 bots each", || async {
            let rows: Vec<(String, i32, bool)> = sqlx::query_as(
                "SELECT i.name, i.bots_owned, a.pid IS NOT NULL FROM instances i \
             LEFT JOIN pg_stat_activity a ON a.pid = i.control_pid ORDER BY i.name",
            )
            .fetch_all(&setup.pool)
            .await
            .unwrap();
            rows.iter().all(|r| r.1 == 3).then_some(rows)
        })
        .await;
    assert_eq!(owned.len(), 2, "{owned:?}");
    assert!(owned.iter().all(|r| r.2), "{owned:?}");
    // `botvisor status` shows both instances, live, with the bots they own, and the states.
    let dir_cli = tempfile::tempdir().unwrap();
    let out = common::botvisor_command(&setup.env, dir_cli.path())
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for name in ["alpha", "beta"] {
        let line = text.lines().find(|l| l.trim_start().starts_with(name));
        let line = line.unwrap_or_else(|| panic!("no {name} in {text}"));
        assert!(
            line.contains("live") && line.contains("bots owned 3"),
            "{text}"
        );
    }
    assert!(text.contains("running      6"), "{text}");

    // kill -9 beta: PostgreSQL ends its control session and its locks; alpha takes its bots
    // (same host, dead pid: no grace) and every one of them answers again.
    let beta_bots: Vec<i64> = running_on(&setup.pool)
        .await
        .into_iter()
        .filter(|(_, i)| i == "beta")
        .map(|(id, _)| id)
        .collect();
    beta.signal("KILL");
    let _ = beta.wait().await;
    let killed_at = std::time::Instant::now();
    eventually(DEADLINE, "all 6 bots running on alpha", || async {
        let c = counts(&running_on(&setup.pool).await);
        (c.get("alpha") == Some(&6)).then_some(())
    })
    .await;
    every_bot_answers(&setup, &bots, 2).await;
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "beta's bots {beta_bots:?} answered again only after {took:?}"
    );
    answered_once(&setup, &bots, 2);

    // Gamma joins while messages arrive: it takes its share (3) by hand-over; every message
    // is answered exactly once.
    let gamma = start(&setup, "gamma", &dir.path().join("gamma.log"));
    for (_, t) in &bots {
        setup
            .sandbox
            .inject_message(InjectMessage::private(t, 3, "/start"))
            .unwrap();
    }
    eventually(DEADLINE, "3 bots running on alpha and on gamma", || async {
        let c = counts(&running_on(&setup.pool).await);
        (c.get("alpha") == Some(&3) && c.get("gamma") == Some(&3)).then_some(())
    })
    .await;
    every_bot_answers(&setup, &bots, 4).await;
    for (id, t) in &bots {
        eventually(DEADLINE, &format!("bot {id} answered chat 3"), || {
            let n = setup.sandbox.sent(t, 3, 0).unwrap().len();
            async move { (n >= 1).then_some(()) }
        })
        .await;
    }
    answered_once(&setup, &bots, 3);
    answered_once(&setup, &bots, 4);
    let alpha_log = std::fs::read_to_string(dir.path().join("alpha.log")).unwrap();
    assert!(
        alpha_log.contains("bot handed over: run stopped, lock released"),
        "{alpha_log}"
    );

    // Three instances: beta comes back; ceil(6 / 3) = 2 each.
    let beta = start(&setup, "beta", &dir.path().join("beta.log"));
    eventually(
        DEADLINE,
        "2 bots running on each of three instances",
        || async {
            let c = counts(&running_on(&setup.pool).await);
            let two = |n: &str| c.get(n) == Some(&2);
            (two("alpha") && two("beta") && two("gamma")).then_some(())
        },
    )
    .await;
    every_bot_answers(&setup, &bots, 6).await;
    answered_once(&setup, &bots, 6);
    beta.signal("TERM");
    assert_eq!(beta.wait().await, Some(0));

    gamma.signal("TERM");
    assert_eq!(gamma.wait().await, Some(0));
    // Gamma's clean stop hands its bots back to alpha.
    eventually(DEADLINE, "all 6 bots running on alpha again", || async {
        let c = counts(&running_on(&setup.pool).await);
        (c.get("alpha") == Some(&6)).then_some(())
    })
    .await;
    every_bot_answers(&setup, &bots, 5).await;
    answered_once(&setup, &bots, 5);
    alpha.signal("TERM");
    assert_eq!(alpha.wait().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_control_connection_fences_the_instances_bots() {
    let setup = ServeSetup::new("bvt_fence", false).await;
    let mut bots = Vec::new();
    for i in 0..4 {
        bots.push(setup.add_bot(&format!("fence{i}"), 917_100 + i).await);
    }
    let dir = tempfile::tempdir().unwrap();
    let alpha_log = dir.path().join("alpha.log");
    let alpha = start(&setup, "alpha", &alpha_log);
    let beta = start(&setup, "beta", &dir.path().join("beta.log"));
    eventually(DEADLINE, "2 bots running on each instance", || async {
        let c = counts(&running_on(&setup.pool).await);
        (c.get("alpha") == Some(&2) && c.get("beta") == Some(&2)).then_some(())
    })
    .await;
    every_bot_answers(&setup, &bots, 1).await;

    // Cut alpha's control session from outside: its locks are gone at once, so alpha must stop
    // its bots before anyone may take them.
    let control: i32 = sqlx::query_scalar("SELECT control_pid FROM instances WHERE name = 'alpha'")
        .fetch_one(&setup.pool)
        .await
        .unwrap();
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(control)
        .fetch_one(&setup.pool)
        .await
        .unwrap();
    assert!(terminated);
    let fenced = eventually(DEADLINE, "alpha fences", || {
        let log = std::fs::read_to_string(&alpha_log).unwrap_or_default();
        let line = log
            .lines()
            .find(|l| l.contains("fencing, every bot of this instance stops"))
            .map(str::to_owned);
        async move { line }
    })
    .await;
    assert!(fenced.contains("bots=2"), "{fenced}");
    // Alpha reconnects, and the bots are shared again; each answers, and none twice.
    eventually(DEADLINE, "shared again after the fence", || async {
        let c = counts(&running_on(&setup.pool).await);
        (c.get("alpha") == Some(&2) && c.get("beta") == Some(&2)).then_some(())
    })
    .await;
    every_bot_answers(&setup, &bots, 2).await;
    answered_once(&setup, &bots, 1);
    answered_once(&setup, &bots, 2);
    // The fence came first: in alpha's log, its bots stopped before it took any lock again.
    let log = std::fs::read_to_string(&alpha_log).unwrap();
    let fence_at = log
        .find("fencing, every bot of this instance stops")
        .unwrap();
    let after = &log[fence_at..];
    let took_again = after.find("took ownership of bots").unwrap_or(after.len());
    let stopped = after[..took_again].matches("stopping bot").count();
    assert_eq!(stopped, 2, "{after}");
    alpha.signal("TERM");
    beta.signal("TERM");
    assert_eq!(alpha.wait().await, Some(0));
    assert_eq!(beta.wait().await, Some(0));
}

/// The cluster with the smallest lock table PostgreSQL allows (scripts/pg-up.sh with
/// `PG_SECOND=1` makes it; `BOTVISOR_TEST_PG_LOCKS` overrides), when it answers; with
/// `CI=true` a missing one fails the test. This test alone uses it: it fills its lock table.
async fn tiny_lock_table_server() -> Option<String> {
    let url = std::env::var("BOTVISOR_TEST_PG_LOCKS")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5434".into());
    let options: sqlx::postgres::PgConnectOptions = format!("{url}/postgres").parse().unwrap();
    match sqlx::ConnectOptions::connect(&options).await {
        Ok(conn) => {
            sqlx::Connection::close(conn).await.ok();
            Some(url)
        }
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "the PostgreSQL server {url} is unreachable ({e}); run scripts/pg-up.sh with PG_SECOND=1"
        ),
        Err(e) => {
            eprintln!("skipped: the PostgreSQL server {url} is unreachable ({e})");
            None
        }
    }
}

/// Every bot's ownership lock lives in the panel server's lock table, which all of that
/// server's sessions share and which, when full, makes the server refuse new connections.
/// The instance takes only what the table's documented size has room for, keeps the bots it
/// holds, logs why the rest waits — and takes them once there is room. (A full table used to
/// fail the pass, drop the control connection, i.e. fence every bot, and fail the same way on
/// the next pass: past about 12,700 bots on a default server, nothing ran.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_table_without_room_keeps_what_is_held_and_takes_the_rest_later() {
    use botvisor::control::ownership::Ownership;
    use botvisor::panel::store::{self, InstanceBeat};
    use sqlx::Connection;

    const BOTS: usize = 40;
    let Some(server) = tiny_lock_table_server().await else {
        return;
    };
    let name = common::unique_name("locks");
    let _cleanup = common::DatabasesOn {
        server: server.clone(),
        name: name.clone(),
    };
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = format!("{server}/{name}");
    botvisor::schema::apply(&botvisor::schema::PANEL, &url.parse().unwrap())
        .await
        .unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    let (_dir, key_file) = common::master_key_file();
    let keys = botvisor::crypto::Keyring::load(&key_file).unwrap();
    let manifest = botvisor::content::manifest::Manifest::default();
    for i in 0..BOTS {
        let token = botvisor::token::BotToken::parse(&common::token(7_100 + i as u64)).unwrap();
        let bot = store::NewBot {
            name: &format!("b{i}"),
            token: &token,
            enabled: true,
            database: None,
            manifest: &manifest,
        };
        store::add_bot(&pool, &keys, &bot).await.unwrap();
    }

    // Another session takes all but ~20 entries of the table's documented size
    // (max_locks_per_transaction 10 × max_connections 20 = 200 on that cluster).
    let mut filler = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("SELECT count(*) FROM generate_series(1, 180) g WHERE pg_try_advisory_lock(7, g)")
        .execute(&mut filler)
        .await
        .unwrap();

    let me = InstanceBeat {
        name: "tiny",
        pid: std::process::id() as i32,
        host: "test",
    };
    let mut ownership = Ownership::new(pool.clone());
    let first = ownership
        .pass(&me, &Default::default())
        .await
        .expect("a lock table without room fails no pass");
    assert!(first.lock_table_full);
    let held = ownership.owned().len();
    assert!(
        (1..BOTS).contains(&held),
        "some bots taken, not all: {held}"
    );
    assert_eq!(first.taken.len(), held);
    assert_eq!(first.unowned.len(), BOTS - held);
    // The control session holds exactly what the instance knows of, and the table still has
    // room: the server takes a new connection (a full table would refuse it).
    let mut probe = sqlx::PgConnection::connect(&url)
        .await
        .expect("the lock table is never filled");
    let (locks,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 \
         AND classid::bigint = $1",
    )
    .bind(store::OWNERSHIP_SPACE)
    .fetch_one(&mut probe)
    .await
    .unwrap();
    assert_eq!(locks, held as i64);
    probe.close().await.unwrap();

    // Room again: the rest is taken, nothing given up.
    filler.close().await.unwrap();
    let second = ownership.pass(&me, &Default::default()).await.unwrap();
    assert!(!second.lock_table_full);
    assert!(second.give.is_empty() && second.lost.is_empty());
    assert_eq!(second.taken.len(), BOTS - held);
    assert_eq!(ownership.owned().len(), BOTS);
    drop(ownership);
    pool.close().await;
}
