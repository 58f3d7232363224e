//! Operators: who may use the panel and the HTTP API, how they prove it, what they may do.
//!
//! - Passwords are hashed with argon2id (PHC strings); API keys and session cookies are 256
//!   random bits, so a SHA-256 of them is enough to store (nothing to brute-force).
//! - Roles: `owner` (everything, operators and the audit log), `admin` (every bot), `editor`
//!   (texts and manifests of the listed bots only) — [`Operator::check`].
//! - [`LoginThrottle`] refuses sign-ins after repeated failures per login and per address.

use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Admin, AdminError};
use crate::panel::access::{NewAudit, OperatorRecord};
use crate::panel::store;

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 10;
/// Longest login accepted.
pub const MAX_LOGIN_LEN: usize = 64;
/// The prefix of every API key, so a leaked one is recognisable (and greppable).
pub const API_KEY_PREFIX: &str = "bvk_";

/// What an operator may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Texts and manifests of the listed bots.
    Editor,
    /// Every bot.
    Admin,
    /// Everything, operators and the audit log included.
    Owner,
}

impl Role {
    /// Parses `owner`, `admin` or `editor`.
    pub fn parse(s: &str) -> Result<Self, AdminError> {
        match s {
            "owner" => Ok(Role::Owner),
            "admin" => Ok(Role::Admin),
            "editor" => Ok(Role::Editor),
            other => Err(AdminError::InvalidOperator(format!(
                "unknown role {other:?}: use owner, admin or editor"
            ))),
        }
    }

    /// Its name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Editor => "editor",
        }
    }
}

/// Something an operator wants to do, for [`Operator::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// See a bot, its texts, manifest, users and history.
    ReadBot(i64),
    /// Change a bot's texts and manifest.
    EditBot(i64),
    /// Add, remove, enable, disable, rename bots and set tokens; see every bot.
    ManageBots,
    /// Manage operators and read the audit log.
    Owner,
}

/// A signed-in operator, as the service layer sees it (no secret).
#[derive(Debug, Clone, Serialize)]
pub struct Operator {
    /// Id.
    pub id: i64,
    /// Login.
    pub login: String,
    /// Role.
    pub role: Role,
    /// The bots an editor may change (empty for owners and admins).
    pub bots: Vec<i64>,
}

impl Operator {
    fn from_record(r: &OperatorRecord) -> Self {
        Self {
            id: r.id,
            login: r.login.clone(),
            role: Role::parse(&r.role).unwrap_or(Role::Editor),
            bots: r.bots.clone(),
        }
    }

    /// Whether the operator may do `what`; [`AdminError::Forbidden`] says why not.
    pub fn check(&self, what: Permission) -> Result<(), AdminError> {
        let allowed = match (self.role, what) {
            (Role::Owner, _) => true,
            (Role::Admin, Permission::Owner) => false,
            (Role::Admin, _) => true,
            (Role::Editor, Permission::ReadBot(id) | Permission::EditBot(id)) => {
                self.bots.contains(&id)
            }
            (Role::Editor, _) => false,
        };
        if allowed {
            return Ok(());
        }
        Err(AdminError::Forbidden(match what {
            Permission::ReadBot(id) | Permission::EditBot(id) => {
                format!("operator {} may not access bot {id}", self.login)
            }
            Permission::ManageBots => format!(
                "operator {} ({}) may not add, remove or reconfigure bots",
                self.login,
                self.role.as_str()
            ),
            Permission::Owner => format!("only owners may do this ({} is not one)", self.login),
        }))
    }

    /// Whether the operator may see bot `id` (for filtering lists).
    pub fn may_read(&self, id: i64) -> bool {
        self.check(Permission::ReadBot(id)).is_ok()
    }
}

/// An operator as `operator list` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OperatorView {
    /// Login.
    pub login: String,
    /// Role.
    pub role: String,
    /// The bots an editor may change.
    pub bots: Vec<i64>,
    /// When it was added.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A new session: the cookie's value and the CSRF token (both shown once, to the browser).
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The cookie value (only its hash is stored).
    pub token: String,
    /// The CSRF token state changes must carry.
    pub csrf: String,
    /// Who signed in.
    pub operator: Operator,
}

/// 32 random bytes as lowercase hex.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// SHA-256 of a high-entropy secret (API key, session token), as stored.
pub fn secret_hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, AdminError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AdminError::InvalidOperator(format!("cannot hash the password: {e}")))
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash verified when the login does not exist, so the answer takes as long either way.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password("not a password of anyone").unwrap_or_default())
}

/// Checks a login against the rule: 1-64 letters, digits, `_ . - @`.
pub fn validate_login(login: &str) -> Result<(), AdminError> {
    let ok = !login.is_empty()
        && login.chars().count() <= MAX_LOGIN_LEN
        && login
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(AdminError::InvalidOperator(format!(
            "invalid login {login:?}: use 1-{MAX_LOGIN_LEN} letters, digits, _ . - @"
        )))
    }
}

/// Checks a password: at least [`MIN_PASSWORD_LEN`] characters, no line breaks.
pub fn validate_password(password: &str) -> Result<(), AdminError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(AdminError::InvalidOperator(format!(
            "the password is too short: use at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    if password.contains(['\n', '\r']) {
        return Err(AdminError::InvalidOperator(
            "the password must be one line".into(),
        ));
    }
    Ok(())
}

impl Admin {
    /// Adds an operator. Editors need at least one bot, and every listed bot must exist.
    pub async fn add_operator(
        &self,
        login: &str,
        role: Role,
        bots: &[i64],
        password: &str,
    ) -> Result<(), AdminError> {
        validate_login(login)?;
        validate_password(password)?;
        if role == Role::Editor && bots.is_empty() {
            return Err(AdminError::InvalidOperator(
                "an editor needs the bots it may edit (--bots 1,2)".into(),
            ));
        }
        if role != Role::Editor && !bots.is_empty() {
            return Err(AdminError::InvalidOperator(format!(
                "--bots applies to editors only; an {} may access every bot",
                role.as_str()
            )));
        }
        for id in bots {
            store::get_bot(&self.pool, *id).await?;
        }
        let hash = hash_password(password)?;
        store::add_operator(&self.pool, login, role.as_str(), bots, &hash).await?;
        self.audit(
            "operator.add",
            None,
            login,
            None,
            Some(serde_json::json!({"role": role.as_str(), "bots": bots})),
        )
        .await
    }

    /// Every operator, by login.
    pub async fn list_operators(&self) -> Result<Vec<OperatorView>, AdminError> {
        Ok(store::list_operators(&self.pool)
            .await?
            .into_iter()
            .map(|o| OperatorView {
                login: o.login,
                role: o.role,
                bots: o.bots,
                created_at: o.created_at,
            })
            .collect())
    }

    /// Removes an operator; the last owner cannot be removed.
    pub async fn remove_operator(&self, login: &str) -> Result<(), AdminError> {
        let op = store::get_operator(&self.pool, login).await?;
        if op.role == "owner" && store::count_operators_with_role(&self.pool, "owner").await? <= 1 {
            return Err(AdminError::InvalidOperator(format!(
                "{login} is the last owner; add another owner first"
            )));
        }
        store::remove_operator(&self.pool, login).await?;
        self.audit(
            "operator.remove",
            None,
            login,
            Some(serde_json::json!({"role": op.role, "bots": op.bots})),
            None,
        )
        .await
    }

    /// Sets an operator's password (its sessions end).
    pub async fn set_operator_password(
        &self,
        login: &str,
        password: &str,
    ) -> Result<(), AdminError> {
        validate_password(password)?;
        let hash = hash_password(password)?;
        store::set_operator_password(&self.pool, login, &hash).await?;
        self.audit("operator.passwd", None, login, None, None).await
    }

    /// Creates an API key for an operator and returns it (shown once; only its hash is kept).
    pub async fn new_api_key(&self, login: &str) -> Result<String, AdminError> {
        let op = store::get_operator(&self.pool, login).await?;
        let key = format!("{API_KEY_PREFIX}{}", random_hex());
        let prefix: String = key.chars().take(API_KEY_PREFIX.len() + 6).collect();
        store::add_api_key(&self.pool, op.id, &secret_hash(&key), &prefix).await?;
        self.audit(
            "operator.key",
            None,
            login,
            None,
            Some(serde_json::json!({ "prefix": prefix })),
        )
        .await?;
        Ok(key)
    }

    /// Checks a login and password; on success opens a session of `lifetime`.
    pub async fn sign_in(
        &self,
        login: &str,
        password: &str,
        lifetime: Duration,
    ) -> Result<NewSession, AdminError> {
        let record = match store::get_operator(&self.pool, login).await {
            Ok(r) => Some(r),
            Err(crate::panel::PanelError::OperatorNotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let hash = record
            .as_ref()
            .map_or(dummy_hash(), |r| r.password_hash.as_str());
        let ok = verify_password(password, hash);
        let Some(record) = record.filter(|_| ok) else {
            return Err(AdminError::BadCredentials);
        };
        let token = random_hex();
        let csrf = random_hex();
        let secs = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
        store::create_session(&self.pool, &secret_hash(&token), record.id, &csrf, secs).await?;
        Ok(NewSession {
            token,
            csrf,
            operator: Operator::from_record(&record),
        })
    }

    /// The operator and CSRF token of a live session cookie.
    pub async fn session(&self, token: &str) -> Result<Option<(Operator, String)>, AdminError> {
        Ok(store::session(&self.pool, &secret_hash(token))
            .await?
            .map(|s| (Operator::from_record(&s.operator), s.csrf)))
    }

    /// Ends a session.
    pub async fn sign_out(&self, token: &str) -> Result<(), AdminError> {
        Ok(store::delete_session(&self.pool, &secret_hash(token)).await?)
    }

    /// The operator holding an API key.
    pub async fn operator_by_key(&self, key: &str) -> Result<Option<Operator>, AdminError> {
        if !key.starts_with(API_KEY_PREFIX) {
            return Ok(None);
        }
        Ok(store::operator_by_api_key(&self.pool, &secret_hash(key))
            .await?
            .map(|r| Operator::from_record(&r)))
    }

    /// An audit entry as this service's actor, for a store function that writes it in the
    /// transaction of the change it records.
    pub(super) fn audit_entry<'a>(
        &'a self,
        action: &'a str,
        bot_id: Option<i64>,
        target: &'a str,
        before: Option<serde_json::Value>,
        after: Option<serde_json::Value>,
    ) -> NewAudit<'a> {
        NewAudit {
            actor: &self.actor,
            action,
            bot_id,
            target,
            before,
            after,
        }
    }

    /// Appends to the audit log as this service's actor (after the change, in a transaction
    /// of its own: for changes outside the panel database, such as a bot's broadcasts).
    pub(super) async fn audit(
        &self,
        action: &str,
        bot_id: Option<i64>,
        target: &str,
        before: Option<serde_json::Value>,
        after: Option<serde_json::Value>,
    ) -> Result<(), AdminError> {
        store::insert_audit(
            &self.pool,
            &NewAudit {
                actor: &self.actor,
                action,
                bot_id,
                target,
                before,
                after,
            },
        )
        .await?;
        Ok(())
    }

    /// The latest `limit` audit entries older than entry `before` (newest first).
    pub async fn audit_log(
        &self,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<crate::panel::access::AuditRecord>, AdminError> {
        Ok(store::list_audit(&self.pool, limit.clamp(1, 1000), before).await?)
    }
}

/// Failed sign-ins allowed per login within [`LoginThrottle::WINDOW`].
pub const MAX_FAILURES_PER_LOGIN: u32 = 5;
/// Failed sign-ins allowed per client address within [`LoginThrottle::WINDOW`].
pub const MAX_FAILURES_PER_ADDRESS: u32 = 20;

/// The sign-in throttle: failed sign-ins are counted per login and per client address in
/// the panel database (`login_failures`, so a restart of the panel does not reset them); once
/// either has too many within [`LoginThrottle::WINDOW`], sign-ins are refused (without
/// checking the password) until the window, counted from its first failure, passes.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoginThrottle;

impl LoginThrottle {
    /// How long failures are remembered.
    pub const WINDOW: Duration = Duration::from_secs(15 * 60);
}

fn login_key(login: &str) -> String {
    format!("l:{login}")
}

fn address_key(address: &str) -> String {
    format!("a:{address}")
}

impl Admin {
    /// `Ok(Some(retry_after))` when `login` or `address` may not try to sign in now.
    pub async fn sign_in_wait(
        &self,
        login: &str,
        address: &str,
    ) -> Result<Option<Duration>, AdminError> {
        let keys = [
            (login_key(login), MAX_FAILURES_PER_LOGIN as i32),
            (address_key(address), MAX_FAILURES_PER_ADDRESS as i32),
        ];
        let left =
            store::login_wait(&self.pool, &keys, LoginThrottle::WINDOW.as_secs_f64()).await?;
        Ok(left.map(|secs| Duration::from_secs_f64(secs.max(1.0))))
    }

    /// Records a failed sign-in for `login` and `address`.
    pub async fn sign_in_failed(&self, login: &str, address: &str) -> Result<(), AdminError> {
        let keys = [login_key(login), address_key(address)];
        Ok(store::login_failed(&self.pool, &keys, LoginThrottle::WINDOW.as_secs_f64()).await?)
    }

    /// Forgets a login's failures after it signed in.
    pub async fn sign_in_succeeded(&self, login: &str) -> Result<(), AdminError> {
        Ok(store::login_forget(&self.pool, &login_key(login)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(role: Role, bots: &[i64]) -> Operator {
        Operator {
            id: 1,
            login: "x".into(),
            role,
            bots: bots.to_vec(),
        }
    }

    #[test]
    fn roles_grant_what_the_issue_says() {
        use Permission::*;
        let cases = [
            (Role::Owner, Owner, true),
            (Role::Owner, ManageBots, true),
            (Role::Admin, ManageBots, true),
            (Role::Admin, EditBot(7), true),
            (Role::Admin, Owner, false),
            (Role::Editor, EditBot(1), true),
            (Role::Editor, ReadBot(1), true),
            (Role::Editor, EditBot(2), false),
            (Role::Editor, ManageBots, false),
            (Role::Editor, Owner, false),
        ];
        for (role, what, allowed) in cases {
            assert_eq!(
                op(role, &[1]).check(what).is_ok(),
                allowed,
                "{role:?} {what:?}"
            );
        }
    }

    #[test]
    fn passwords_verify_and_hashes_are_argon2id() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("wrong horse battery", &h));
    }

    #[test]
    fn logins_and_passwords_are_validated() {
        assert!(validate_login("alice.b@x").is_ok());
        assert!(validate_login("").is_err());
        assert!(validate_login("a b").is_err());
        assert!(validate_password("short").is_err());
        assert!(validate_password("long enough\npassword").is_err());
        assert!(validate_password("long enough password").is_ok());
    }
}
