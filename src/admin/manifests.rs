//! Manifests: show, validate without saving, replace, patch (RFC 7386 JSON merge patch).
//!
//! Before anything is stored the admin layer refuses what PostgreSQL would refuse with a
//! cryptic error (a `\u0000` anywhere) and names a bad `default_language` value; then every
//! module's rules validate the manifest as a whole.

use serde::Serialize;
use serde_json::Value;

use super::{Admin, AdminError};
use crate::content::lang::is_language_code;
use crate::content::manifest::{Manifest, ManifestError};
use crate::panel::store;

/// What replacing a manifest changed, by top-level key (its sections and common keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ManifestChange {
    /// Keys the new manifest has and the old one did not.
    pub added: Vec<String>,
    /// Keys the old manifest had and the new one does not.
    pub removed: Vec<String>,
    /// Keys both have, with different values.
    pub changed: Vec<String>,
}

impl ManifestChange {
    /// The change from `old` to `new` (both JSON objects; anything else counts as empty).
    pub fn between(old: &Value, new: &Value) -> Self {
        let empty = serde_json::Map::new();
        let old = old.as_object().unwrap_or(&empty);
        let new = new.as_object().unwrap_or(&empty);
        let mut change = Self::default();
        for (key, value) in new {
            match old.get(key) {
                None => change.added.push(key.clone()),
                Some(before) if before != value => change.changed.push(key.clone()),
                Some(_) => {}
            }
        }
        change.removed = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        change
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl Admin {
    /// What a bot's texts lack for its manifest: keys the manifest names without a value in
    /// the default language, values too long where they are used. Warnings, not errors: the
    /// bot runs, and shows them in `bot_status.detail` too.
    pub async fn text_warnings(&self, id: i64) -> Result<Vec<String>, AdminError> {
        let bot = store::get_bot(&self.pool, id).await?;
        let manifest = Manifest::from_value(&bot.manifest.0)?;
        let texts = store::list_texts(&self.pool, id).await?;
        Ok(self.registry.text_warnings_for(
            &manifest,
            texts.into_iter().map(|t| (t.key, t.lang, t.value)),
        )?)
    }

    /// A bot's manifest as stored.
    pub async fn manifest(&self, id: i64) -> Result<serde_json::Value, AdminError> {
        Ok(store::get_bot(&self.pool, id).await?.manifest.0)
    }

    /// Validates a manifest (JSON text) with every module's rules, without saving it.
    pub fn validate_manifest(&self, text: &str) -> Result<Manifest, AdminError> {
        if let Ok(value) = serde_json::from_str::<Value>(text) {
            precheck(&value)?;
        }
        Ok(self.registry.parse_manifest(text)?)
    }

    /// Replaces a bot's manifest with a validated one; returns what changed.
    pub async fn replace_manifest(
        &self,
        id: i64,
        text: &str,
    ) -> Result<ManifestChange, AdminError> {
        let manifest = self.validate_manifest(text)?;
        let old = self.manifest(id).await?;
        let new = manifest.to_value();
        let change = ManifestChange::between(&old, &new);
        let entry = self.audit_entry("manifest.replace", Some(id), "", Some(old), Some(new));
        store::set_manifest_as(&self.pool, id, &manifest, &self.actor, Some(&entry)).await?;
        Ok(change)
    }

    /// Applies a JSON merge patch (RFC 7386: `null` removes a key, objects merge, anything
    /// else replaces) to a bot's manifest, validates the result as a whole and saves it;
    /// returns what changed.
    pub async fn patch_manifest(
        &self,
        id: i64,
        patch_text: &str,
    ) -> Result<ManifestChange, AdminError> {
        let patch: Value = serde_json::from_str(patch_text)
            .map_err(|e| ManifestError::new("$", format!("the patch is not valid JSON: {e}")))?;
        let mut merged = self.manifest(id).await?;
        merge_patch(&mut merged, &patch);
        self.replace_manifest(id, &merged.to_string()).await
    }
}

/// Applies `patch` to `target` as RFC 7386 describes.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let target = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Refuses a `\u0000` anywhere (PostgreSQL's jsonb cannot store it) and names a
/// `default_language` that is not a language code.
fn precheck(value: &Value) -> Result<(), ManifestError> {
    if let Some(path) = nul_path(value, "$") {
        return Err(ManifestError::new(
            path,
            "contains a NUL character (\\u0000), which cannot be stored",
        ));
    }
    if let Some(lang) = value.get("default_language").and_then(Value::as_str)
        && !is_language_code(lang)
    {
        return Err(ManifestError::new(
            "default_language",
            format!("{lang:?} is not a language code; use one such as `en`, `ru` or `pt-br`"),
        ));
    }
    Ok(())
}

/// The JSON path of the first string or key holding a NUL character.
fn nul_path(value: &Value, path: &str) -> Option<String> {
    let join = |key: &str| {
        if path == "$" {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Value::String(s) if s.contains('\0') => Some(path.to_owned()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_path(v, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                Some(join(&k.replace('\0', "\\u0000")))
            } else {
                nul_path(v, &join(k))
            }
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The examples of RFC 7386, section 3.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (mut target, patch, expected) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, expected, "patch {patch}");
        }
    }

    #[test]
    fn change_lists_top_level_keys() {
        let change = ManifestChange::between(
            &json!({"menus": {"a": 1}, "admins": [1], "faq": {}}),
            &json!({"menus": {"a": 2}, "admins": [1], "broadcast": {}}),
        );
        assert_eq!(change.added, ["broadcast"]);
        assert_eq!(change.removed, ["faq"]);
        assert_eq!(change.changed, ["menus"]);
    }

    #[test]
    fn precheck_names_nul_and_bad_languages() {
        let e = precheck(&json!({"menus": {"main": {"text": "a\u{0}b"}}})).unwrap_err();
        assert_eq!(e.path, "menus.main.text");
        let e = precheck(&json!({"default_language": "russian"})).unwrap_err();
        assert!(e.to_string().contains("\"russian\""), "{e}");
        assert!(precheck(&json!({"default_language": "pt-br"})).is_ok());
    }
}
