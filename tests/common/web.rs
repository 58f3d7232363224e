//! An in-process `botvisor panel` (pages and HTTP API) on a free port against a fresh,
//! migrated panel database, and a small JSON client that keeps a session like a browser.

use std::sync::Arc;

use botvisor::admin::Admin;
use botvisor::admin::operators::Role;
use botvisor::settings::Settings;
use botvisor::web::PanelServer;
use reqwest::Method;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::TestDb;

/// The password every test operator gets.
pub const PASSWORD: &str = "correct horse battery staple";

/// A running panel server.
pub struct WebPanel {
    /// The panel database, when this panel created it.
    pub db: Option<TestDb>,
    pub pool: sqlx::PgPool,
    pub admin: Admin,
    pub settings: Settings,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    stop: CancellationToken,
}

impl WebPanel {
    /// A fresh panel with an owner `owner` (password [`PASSWORD`]).
    pub async fn start(prefix: &str) -> Self {
        let db = TestDb::create(prefix).await;
        let settings = Settings::load(None, &db.env()).unwrap();
        botvisor::schema::apply(
            &botvisor::schema::PANEL,
            &settings.panel_connect_options().unwrap(),
        )
        .await
        .unwrap();
        let pool = db.pool().await;
        Self::start_on(Some(db), pool, settings).await
    }

    /// A panel server on an existing, migrated panel database (e.g. a harness's).
    pub async fn start_on(db: Option<TestDb>, pool: sqlx::PgPool, mut settings: Settings) -> Self {
        settings.panel_http.cookie_secure = false;
        let admin = Admin::new(pool.clone(), Arc::new(settings.clone())).acting_as("test");
        if admin.list_operators().await.unwrap().is_empty() {
            admin
                .add_operator("owner", Role::Owner, &[], PASSWORD)
                .await
                .unwrap();
        }
        let server = PanelServer::bind(
            admin.clone(),
            &settings,
            Some("127.0.0.1:0".parse().unwrap()),
        )
        .await
        .unwrap();
        let url = format!("http://{}", server.local_addr());
        let stop = CancellationToken::new();
        tokio::spawn(server.run(stop.clone()));
        Self {
            db,
            pool,
            admin,
            settings,
            url,
            stop,
        }
    }

    /// A client without a session.
    pub fn client(&self) -> Client {
        Client {
            base: self.url.clone(),
            http: reqwest::Client::new(),
            cookie: None,
            csrf: None,
            bearer: None,
            bodies: Vec::new(),
        }
    }

    /// A client signed in as `login`.
    pub async fn signed_in(&self, login: &str) -> Client {
        let mut c = self.client();
        let (status, body) = c.sign_in(login, PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        c
    }
}

impl WebPanel {
    /// The environment pointing the CLI at this panel's database.
    pub fn env(&self) -> std::collections::HashMap<String, String> {
        [(
            "BOTVISOR_PANEL_URL".to_string(),
            self.settings.panel.url.clone(),
        )]
        .into()
    }
}

impl Drop for WebPanel {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A JSON client: keeps the session cookie and CSRF token, records every body it received.
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
    pub cookie: Option<String>,
    pub csrf: Option<String>,
    pub bearer: Option<String>,
    /// Every response body, to check no secret was ever sent.
    pub bodies: Vec<String>,
}

impl Client {
    /// Signs in through the API; keeps the cookie and CSRF token on success.
    pub async fn sign_in(&mut self, login: &str, password: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/api/v1/session", self.base))
            .json(&serde_json::json!({"login": login, "password": password}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        if let Some(c) = r.headers().get("set-cookie") {
            let c = c.to_str().unwrap().to_owned();
            assert!(c.contains("HttpOnly"), "{c}");
            assert!(c.contains("SameSite=Strict"), "{c}");
            self.cookie = Some(c.split(';').next().unwrap().to_owned());
        }
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if let Some(csrf) = body["csrf"].as_str() {
            self.csrf = Some(csrf.to_owned());
        }
        (status, body)
    }

    /// Sends a request (with the session, its CSRF token and the bearer key when set).
    pub async fn send(&mut self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, _, body) = self.send_raw(method, path, body, true).await;
        (status, body)
    }

    /// [`Client::send`] with the CSRF header optional; returns the headers too.
    pub async fn send_raw(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Value>,
        with_csrf: bool,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        if let (true, Some(t)) = (with_csrf, &self.csrf) {
            req = req.header("x-csrf-token", t);
        }
        if let Some(k) = &self.bearer {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        self.bodies.push(text.clone());
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, value)
    }

    /// GET.
    pub async fn get(&mut self, path: &str) -> (u16, Value) {
        self.send(Method::GET, path, None).await
    }

    /// POST with a JSON body.
    pub async fn post(&mut self, path: &str, body: Value) -> (u16, Value) {
        self.send(Method::POST, path, Some(body)).await
    }

    /// PUT with a JSON body.
    pub async fn put(&mut self, path: &str, body: Value) -> (u16, Value) {
        self.send(Method::PUT, path, Some(body)).await
    }

    /// DELETE.
    pub async fn delete(&mut self, path: &str) -> (u16, Value) {
        self.send(Method::DELETE, path, None).await
    }
}
