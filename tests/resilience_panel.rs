//! Panel outages (issue 13 item 1): `serve` started while the panel is unreachable waits for
//! it instead of exiting, and a running daemon keeps feeding systemd's watchdog and keeps its
//! bots answering while the panel is unreachable. The panel is made unreachable the way an
//! operator or a failover would: CONNECT revoked from the (non-superuser) role botvisor uses.

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use botvisor::content::manifest::Manifest;
use botvisor::panel::store::{self, NewBot};
use botvisor::token::BotToken;
use common::process::ServeProcess;
use common::{TestDb, eventually, unique_name};
use sqlx::PgPool;

const DEADLINE: Duration = Duration::from_secs(60);

/// Everything the daemon sent to its NOTIFY_SOCKET, with arrival times.
#[derive(Clone)]
struct Notifications {
    seen: Arc<Mutex<Vec<(Instant, String)>>>,
    path: std::path::PathBuf,
    _dir: Arc<tempfile::TempDir>,
}

impl Notifications {
    fn listen() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let seen: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let sink = Arc::downgrade(&seen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends once the test dropped its handle.
            while let Some(seen) = sink.upgrade() {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    seen.lock().unwrap().push((Instant::now(), text));
                }
            }
        });
        Self {
            seen,
            path,
            _dir: Arc::new(dir),
        }
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.seen.lock().unwrap().clone()
    }

    async fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> Instant {
        eventually(DEADLINE, what, || async {
            self.all()
                .into_iter()
                .find(|(_, m)| pred(m))
                .map(|(t, _)| t)
        })
        .await
    }
}

/// A panel database owned by a fresh non-superuser role (dropped with it).
struct RolePanel {
    db: Option<TestDb>,
    name: String,
    role: String,
    admin: PgPool,
}

impl RolePanel {
    async fn create() -> Self {
        let db = TestDb::create("bvt_outage").await;
        let role = unique_name("bvt_role");
        let admin = db.pool().await;
        for sql in [
            format!("CREATE ROLE \"{role}\" LOGIN CREATEDB"),
            format!("ALTER DATABASE \"{}\" OWNER TO \"{role}\"", db.name),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&admin)
                .await
                .unwrap();
        }
        let name = db.name.clone();
        Self {
            db: Some(db),
            name,
            role,
            admin,
        }
    }

    /// The URL botvisor connects with (as the role).
    fn url(&self) -> String {
        let server = common::server_url().replace("postgres@", &format!("{}@", self.role));
        format!("{server}/{}", self.name)
    }

    /// Revokes CONNECT and ends the role's sessions on the panel database.
    async fn cut(&self) {
        let sql = format!(
            "REVOKE CONNECT ON DATABASE \"{}\" FROM PUBLIC, \"{}\"",
            self.name, self.role
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&self.admin)
            .await
            .unwrap();
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND usename = $2",
        )
        .bind(&self.name)
        .bind(&self.role)
        .execute(&self.admin)
        .await
        .unwrap();
    }

    async fn restore(&self) {
        let sql = format!(
            "GRANT CONNECT ON DATABASE \"{}\" TO \"{}\"",
            self.name, self.role
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&self.admin)
            .await
            .unwrap();
    }
}

impl Drop for RolePanel {
    fn drop(&mut self) {
        // The databases first (TestDb's drop), then the role that owned them.
        drop(self.db.take());
        let _ = std::process::Command::new("psql")
            .arg(format!("{}/postgres", common::server_url()))
            .arg("-qc")
            .arg(format!("DROP ROLE IF EXISTS \"{}\"", self.role))
            .output();
    }
}

fn serve_env(
    panel: &RolePanel,
    notify: &Notifications,
    sandbox_url: &str,
) -> std::collections::HashMap<String, String> {
    let mut env = panel.db.as_ref().expect("the panel exists").env();
    env.insert("BOTVISOR_PANEL_URL".into(), panel.url());
    env.insert(
        "NOTIFY_SOCKET".into(),
        notify.path.to_string_lossy().into_owned(),
    );
    // 3 s watchdog: pinged every second while the loop turns.
    env.insert("WATCHDOG_USEC".into(), "3000000".into());
    env.insert("BOTVISOR_TELEGRAM_API_URL".into(), sandbox_url.into());
    env.insert("BOTVISOR__TELEGRAM__POLL_TIMEOUT_SECS".into(), "2".into());
    env.insert("BOTVISOR__SUPERVISOR__INSTANCE".into(), unique_name("i"));
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_waits_for_an_unreachable_panel() {
    let panel = RolePanel::create().await;
    panel.cut().await;
    let notify = Notifications::listen();
    let mut serve = ServeProcess::start(&serve_env(&panel, &notify, "http://127.0.0.1:9"), None);

    // It does not exit, and says why it waits (PostgreSQL's own words).
    eventually(DEADLINE, "STATUS= waiting for the panel", || {
        let exited = serve.child.try_wait().unwrap();
        assert_eq!(exited, None, "serve exited while the panel was unreachable");
        let found = notify.all().into_iter().find(|(_, m)| {
            m.contains("STATUS=waiting for the panel database")
                && m.contains("permission denied for database")
        });
        async move { found }
    })
    .await;
    assert!(
        notify.all().iter().all(|(_, m)| !m.contains("READY=1")),
        "READY before the panel was reachable"
    );
    assert_eq!(serve.child.try_wait().unwrap(), None, "serve exited");

    panel.restore().await;
    notify.wait_for("READY=1", |m| m.contains("READY=1")).await;
    serve.signal("TERM");
    assert_eq!(serve.wait().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_and_bots_survive_a_panel_outage() {
    let panel = RolePanel::create().await;
    let (sandbox, sandbox_url, sandbox_stop) = common::harness::start_sandbox().await;
    let notify = Notifications::listen();
    let serve = ServeProcess::start(&serve_env(&panel, &notify, &sandbox_url), None);
    notify.wait_for("READY=1", |m| m.contains("READY=1")).await;

    let t = common::token(913_001);
    sandbox.register_bot(&t, Some("outage_bot")).unwrap();
    let id = store::add_bot(
        &panel.admin,
        &panel.db.as_ref().unwrap().keys(),
        &NewBot {
            name: "outage",
            token: &BotToken::parse(&t).unwrap(),
            enabled: true,
            database: None,
            manifest: &Manifest::default(),
        },
    )
    .await
    .unwrap();
    eventually(DEADLINE, "bot running", || async {
        store::get_status(&panel.admin, id)
            .await
            .unwrap()
            .filter(|s| s.state == "running")
    })
    .await;

    panel.cut().await;
    let cut = Instant::now();
    // The bot keeps answering during the outage.
    sandbox
        .inject_message(botvisor::sandbox::InjectMessage::private(&t, 77, "/start"))
        .unwrap();
    let replies = sandbox.wait_sent(&t, 77, 0, DEADLINE).await.unwrap();
    assert!(!replies.is_empty(), "no reply during the panel outage");

    // The watchdog keeps being fed for well past the 3 s WatchdogSec.
    let until = cut + Duration::from_secs(10);
    eventually(
        Duration::from_secs(20),
        "a WATCHDOG=1 10 s into the outage",
        || async {
            notify
                .all()
                .into_iter()
                .find(|(t, m)| *t >= until && m.contains("WATCHDOG=1"))
        },
    )
    .await;
    let pings: Vec<Instant> = notify
        .all()
        .into_iter()
        .filter(|(t, m)| *t >= cut && m.contains("WATCHDOG=1"))
        .map(|(t, _)| t)
        .collect();
    let mut last = cut;
    for p in &pings {
        assert!(
            *p - last < Duration::from_secs(3),
            "no WATCHDOG=1 for {:?} during the outage (pings {:?} after the cut)",
            *p - last,
            pings.iter().map(|p| *p - cut).collect::<Vec<_>>()
        );
        last = *p;
    }

    notify
        .wait_for("STATUS= says the panel is unreachable", |m| {
            m.contains("STATUS=") && m.contains("panel database unreachable")
        })
        .await;

    panel.restore().await;
    let back = Instant::now();
    eventually(DEADLINE, "STATUS= without the outage", || async {
        notify
            .all()
            .into_iter()
            .rev()
            .find(|(t, m)| *t >= back && m.contains("STATUS=bots: 1 running"))
            .filter(|(_, m)| !m.contains("unreachable"))
    })
    .await;
    serve.signal("TERM");
    assert_eq!(serve.wait().await, Some(0));
    sandbox_stop.cancel();
}

/// The address `serve` logged for its HTTP listener.
async fn logged_http_addr(log: &std::path::Path) -> String {
    eventually(
        DEADLINE,
        "the http listener's address in the log",
        || async {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            text.lines()
                .filter(|l| l.contains("http listener ready"))
                .find_map(|l| {
                    let at = l.find("listen=")? + "listen=".len();
                    Some(l[at..].split_whitespace().next()?.to_owned())
                })
        },
    )
    .await
}

/// `/readyz` says 503 while the panel is unreachable and 200 once it is back; `/healthz`
/// answers 200 throughout (issue 16 item 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_panel() {
    let panel = RolePanel::create().await;
    let (_sandbox, sandbox_url, sandbox_stop) = common::harness::start_sandbox().await;
    let notify = Notifications::listen();
    let mut env = serve_env(&panel, &notify, &sandbox_url);
    env.insert("BOTVISOR__HTTP__LISTEN".into(), "127.0.0.1:0".into());
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("serve.log");
    let serve = ServeProcess::start(&env, Some(&log));
    notify.wait_for("READY=1", |m| m.contains("READY=1")).await;
    let addr = logged_http_addr(&log).await;
    let client = reqwest::Client::new();
    let get = |path: &'static str| {
        let client = client.clone();
        let url = format!("http://{addr}{path}");
        async move {
            let r = client.get(url).send().await.unwrap();
            let code = r.status().as_u16();
            (code, r.text().await.unwrap())
        }
    };
    assert_eq!(get("/readyz").await.0, 200);

    panel.cut().await;
    let (_, body) = eventually(DEADLINE, "/readyz 503 while the panel is down", || async {
        let (code, body) = get("/readyz").await;
        (code == 503).then_some((code, body))
    })
    .await;
    assert!(body.contains("\"panel_reachable\":false"), "{body}");
    assert_eq!(get("/healthz").await.0, 200, "healthz during the outage");

    panel.restore().await;
    eventually(DEADLINE, "/readyz 200 once the panel is back", || async {
        (get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    serve.signal("TERM");
    assert_eq!(serve.wait().await, Some(0));
    sandbox_stop.cancel();
}
