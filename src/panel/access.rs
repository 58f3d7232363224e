//! Rows of the operators' tables (migrations/panel/0004): operators, API keys, the audit log,
//! and the version history of texts and manifests. Their SQL lives in [`super::store`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;

/// An operator of the panel and the HTTP API (the password hash included: never show it).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OperatorRecord {
    /// Id.
    pub id: i64,
    /// Unique login.
    pub login: String,
    /// `owner`, `admin` or `editor`.
    pub role: String,
    /// The bots an editor may change.
    pub bots: Vec<i64>,
    /// argon2id PHC string.
    pub password_hash: String,
    /// When it was added.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A signed-in session: its operator and its CSRF token.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// Who.
    pub operator: OperatorRecord,
    /// The token every state change must carry.
    pub csrf: String,
    /// When it ends.
    pub expires_at: DateTime<Utc>,
}

/// One change in the audit log.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditRecord {
    /// Id (increasing).
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who (`panel:alice`, `cli:root`, `api:alice`).
    pub actor: String,
    /// What (`bot.add`, `text.set`, …).
    pub action: String,
    /// The bot concerned, if any.
    pub bot_id: Option<i64>,
    /// The object within it (a text key and language, an operator's login).
    pub target: String,
    /// The value before (secrets masked).
    #[schema(value_type = Option<Object>)]
    pub before: Option<Json<serde_json::Value>>,
    /// The value after (secrets masked).
    #[schema(value_type = Option<Object>)]
    pub after: Option<Json<serde_json::Value>>,
}

/// A new audit entry.
#[derive(Debug, Clone, Default)]
pub struct NewAudit<'a> {
    /// Who.
    pub actor: &'a str,
    /// What.
    pub action: &'a str,
    /// The bot concerned.
    pub bot_id: Option<i64>,
    /// The object within it.
    pub target: &'a str,
    /// Before.
    pub before: Option<serde_json::Value>,
    /// After.
    pub after: Option<serde_json::Value>,
}

/// One version of a text: the change from `previous` to `value` (`None`: absent).
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TextVersion {
    /// 1, 2, … per bot, key and language.
    pub version: i64,
    /// The text's key.
    pub key: String,
    /// Its language.
    pub lang: String,
    /// The value before this change.
    pub previous: Option<String>,
    /// The value this change wrote (`None`: deleted).
    pub value: Option<String>,
    /// Who.
    pub actor: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// One version of a manifest.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ManifestVersion {
    /// 1, 2, … per bot.
    pub version: i64,
    /// The manifest before this change (`None` for the first).
    #[schema(value_type = Option<Object>)]
    pub previous: Option<Json<serde_json::Value>>,
    /// The manifest this change wrote.
    #[schema(value_type = Object)]
    pub manifest: Json<serde_json::Value>,
    /// Who.
    pub actor: String,
    /// When.
    pub at: DateTime<Utc>,
}
