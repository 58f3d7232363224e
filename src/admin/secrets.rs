//! Bot secrets: set, list (names and dates only), remove.
//!
//! A secret (an assistant's API key, a webhook signing key, …) is sealed with the master key
//! before it reaches the panel ([`crate::crypto`]; associated data: the bot id and the name),
//! so the panel database and its backups hold no readable value. Every write notifies
//! `reload_config` (a trigger), and the running bot sees the new value through its content
//! snapshot (`Snapshot::secret`). Values are never printed: no interface reads one back.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Admin, AdminError};
use crate::crypto::secret_aad;
use crate::panel::store;

/// Longest secret name accepted.
pub const MAX_SECRET_NAME_LEN: usize = 64;
/// Largest secret value accepted, in bytes.
pub const MAX_SECRET_LEN: usize = 16 * 1024;

/// A secret as every interface shows it: its name and when it last changed, never its value.
#[derive(Debug, Clone, Serialize)]
pub struct SecretView {
    /// The secret's name.
    pub name: String,
    /// When it was last set.
    pub updated_at: DateTime<Utc>,
}

/// Checks a secret's name: 1-64 of `a-z 0-9 _ . -`, starting with a letter or digit.
pub fn validate_secret_name(name: &str) -> Result<(), AdminError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SECRET_NAME_LEN
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(AdminError::InvalidSecret(format!(
            "invalid secret name {name:?}: use 1-{MAX_SECRET_NAME_LEN} of a-z 0-9 _ . -, \
             starting with a letter or digit"
        )))
    }
}

/// Checks a secret's value: not empty, at most [`MAX_SECRET_LEN`] bytes, no NUL. The message
/// never contains the value.
pub fn validate_secret_value(value: &str) -> Result<(), AdminError> {
    let reason = if value.is_empty() {
        "the secret's value is empty".to_owned()
    } else if value.len() > MAX_SECRET_LEN {
        format!(
            "the secret's value has {} bytes; at most {MAX_SECRET_LEN} are accepted",
            value.len()
        )
    } else if value.contains('\0') {
        "the secret's value contains a NUL character".to_owned()
    } else {
        return Ok(());
    };
    Err(AdminError::InvalidSecret(reason))
}

impl Admin {
    /// Seals and stores bot `id`'s secret `name` (replacing it); the running bot reloads it.
    pub async fn set_secret(&self, id: i64, name: &str, value: &str) -> Result<(), AdminError> {
        validate_secret_name(name)?;
        validate_secret_value(value)?;
        let keys = self.keys()?;
        let sealed = keys.seal(&secret_aad(id, name), value.as_bytes())?;
        store::set_secret(&self.pool, id, name, &sealed).await?;
        Ok(())
    }

    /// Bot `id`'s secrets: names and change dates only.
    pub async fn list_secrets(&self, id: i64) -> Result<Vec<SecretView>, AdminError> {
        Ok(store::list_secrets(&self.pool, id)
            .await?
            .into_iter()
            .map(|s| SecretView {
                name: s.name,
                updated_at: s.updated_at,
            })
            .collect())
    }

    /// Removes bot `id`'s secret `name`; one that does not exist is an error.
    pub async fn remove_secret(&self, id: i64, name: &str) -> Result<(), AdminError> {
        validate_secret_name(name)?;
        if store::delete_secret(&self.pool, id, name).await? {
            Ok(())
        } else {
            Err(AdminError::NoSuchSecret {
                id,
                name: name.to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values_are_checked_without_echoing_values() {
        for good in ["openai", "a", "x.y-z_1", "9lives"] {
            assert!(validate_secret_name(good).is_ok(), "{good}");
        }
        let long = "a".repeat(MAX_SECRET_NAME_LEN + 1);
        for bad in ["", "OpenAI", "_x", "a b", "ключ", "a/b", long.as_str()] {
            assert!(validate_secret_name(bad).is_err(), "{bad}");
        }
        assert!(validate_secret_value("sk-1").is_ok());
        let big = "s".repeat(MAX_SECRET_LEN + 1);
        for bad in ["", "sk\0x", big.as_str()] {
            let e = validate_secret_value(bad).unwrap_err().to_string();
            assert!(!e.contains("sk") && !e.contains("sss"), "{e}");
        }
    }
}
