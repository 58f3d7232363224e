//! Manifests: show, validate without saving, replace.

use super::{Admin, AdminError};
use crate::content::manifest::Manifest;
use crate::panel::store;

impl Admin {
    /// A bot's manifest as stored.
    pub async fn manifest(&self, id: i64) -> Result<serde_json::Value, AdminError> {
        Ok(store::get_bot(&self.pool, id).await?.manifest.0)
    }

    /// Validates a manifest (JSON text) with every module's rules, without saving it.
    pub fn validate_manifest(&self, text: &str) -> Result<Manifest, AdminError> {
        Ok(self.registry.parse_manifest(text)?)
    }

    /// Replaces a bot's manifest with a validated one.
    pub async fn replace_manifest(&self, id: i64, text: &str) -> Result<(), AdminError> {
        let manifest = self.validate_manifest(text)?;
        Ok(store::set_manifest(&self.pool, id, &manifest).await?)
    }
}
