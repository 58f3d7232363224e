//! A panel database driven through the `botvisor` binary, for CLI tests.

use std::collections::HashMap;

use super::{Run, TestDb, botvisor, token};

/// A migrated panel and the environment that points the CLI at it.
pub struct CliPanel {
    /// The panel database.
    pub db: TestDb,
    /// `BOTVISOR_PANEL_URL` and friends.
    pub env: HashMap<String, String>,
}

impl CliPanel {
    /// A fresh panel (database name prefix `prefix`), migrated.
    pub async fn new(prefix: &str) -> Self {
        let db = TestDb::create(prefix).await;
        let env = db.env();
        botvisor(&env, &["migrate"]).ok();
        Self { db, env }
    }

    /// Runs the CLI against this panel.
    pub fn run(&self, args: &[&str]) -> Run {
        botvisor(&self.env, args)
    }

    /// Adds a bot with `token_id`'s token (and `extra` arguments); returns its id.
    pub fn add(&self, name: &str, token_id: u64, extra: &[&str]) -> i64 {
        let t = token(token_id);
        let mut args = vec!["bot", "add", "--name", name, "--token", &t];
        args.extend_from_slice(extra);
        self.run(&args).ok().trim().parse().unwrap()
    }

    /// Creates bot `id`'s database with the bot schema, as the daemon would on first start.
    pub async fn create_bot_database(&self, id: i64) -> sqlx::PgPool {
        let db = format!("{}_bot_{id}", self.db.name);
        let pool = self.db.pool().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{db}\"")))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let url = format!("{}/{db}", super::server_url());
        botvisor::schema::apply(&botvisor::schema::BOT, &url.parse().unwrap())
            .await
            .unwrap();
        sqlx::PgPool::connect(&url).await.unwrap()
    }
}
