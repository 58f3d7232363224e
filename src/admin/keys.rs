//! The master key: rotation. Every token and secret is re-sealed under a new key, one
//! transaction per batch, while the old key stays accepted; only when nothing is left under it
//! is it dropped from the key file.
//!
//! Order (each step survives a crash; running `keys rotate` again finishes the job):
//! 1. unless the key file already holds an older key (a rotation that did not finish), a new
//!    key is generated and the file is rewritten atomically as `[new, old]` — from here on
//!    everything is sealed with the new key and both open;
//! 2. batches of tokens and secrets still under an older key are re-sealed (and token hashes
//!    recomputed), one transaction each;
//! 3. the file is rewritten as `[new]`.
//!
//! A daemon that is running follows: a value sealed with a key it does not hold makes it
//! re-read the key file. Proved by `tests/sealed_tokens.rs`
//! (`a_rotation_interrupted_half_way_is_finished_by_running_it_again`).

use serde::Serialize;

use super::{Admin, AdminError};
use crate::crypto::{KeyId, Keyring, MasterKey, write_key_file};
use crate::panel::store;

/// What a rotation did.
#[derive(Debug, Clone, Serialize)]
pub struct Rotation {
    /// The key everything is sealed with now.
    pub key: String,
    /// The keys dropped from the key file.
    pub retired: Vec<String>,
    /// Whether this run finished a rotation an earlier run had started.
    pub resumed: bool,
    /// Tokens and secrets re-sealed by this run.
    pub resealed: u64,
}

impl Admin {
    /// Rotates the master key (see the module docs); `batch` rows per transaction.
    pub async fn rotate_keys(&self, batch: i64) -> Result<Rotation, AdminError> {
        let path = self.settings.master_key_file();
        let keys = Keyring::load(&path)?;
        // Every sealed value must open with the file's keys before anything changes.
        for id in store::sealing_key_ids(&self.pool).await? {
            keys.key(id)?;
        }
        let resumed = keys.key_ids().len() > 1;
        if !resumed {
            let new = MasterKey::generate()?;
            let old = keys.current();
            write_key_file(&path, &[&new, &old])?;
            keys.reload()?;
        }
        let mut resealed = 0;
        loop {
            let n = store::reseal_batch(&self.pool, &keys, batch).await?;
            resealed += n;
            if n == 0 {
                break;
            }
        }
        let current = keys.current();
        let retired: Vec<KeyId> = keys
            .key_ids()
            .into_iter()
            .filter(|id| *id != current.id())
            .collect();
        write_key_file(&path, &[&current])?;
        keys.reload()?;
        // This process's own service must seal with the new key from now on.
        *self.keys.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(Rotation {
            key: current.id().to_string(),
            retired: retired.iter().map(ToString::to_string).collect(),
            resumed,
            resealed,
        })
    }
}
