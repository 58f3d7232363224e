//! A bot's manifest: the JSON document in `bots.manifest` that configures its behaviour.
//!
//! The manifest is an object of sections. Two keys are common to every module —
//! `default_language` and `admins` — and parsed here; every other top-level key belongs to the
//! module that declares it (`modules::Module::manifest_keys`) and is kept as raw JSON until
//! that module parses it ([`Manifest::section`]). The registry (`modules::Registry::validate`)
//! rejects keys no module declares, so a typo still fails with its JSON path. An error always
//! names the JSON path of the offending value. The schema and a full example are in
//! docs/manifest.md.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::lang::is_language_code;

/// Why a manifest was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid manifest at {path}: {reason}")]
pub struct ManifestError {
    /// JSON path of the offending value, e.g. `menus.main.buttons[0][1].menu`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

impl ManifestError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// The keys every module may read; no module may declare them.
pub const COMMON_KEYS: [&str; 2] = ["default_language", "admins"];

/// The parsed manifest: the common keys, and every module's section as raw JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Language of texts used when the user's language has no text (e.g. `en`).
    #[serde(default = "default_language")]
    pub default_language: String,
    /// Telegram user ids allowed to use admin commands such as `/stats`.
    #[serde(default)]
    pub admins: Vec<i64>,
    /// Every other top-level key, owned by a module.
    #[serde(flatten)]
    pub sections: serde_json::Map<String, serde_json::Value>,
}

fn default_language() -> String {
    "en".into()
}

impl Default for Manifest {
    fn default() -> Self {
        Self {
            default_language: default_language(),
            admins: Vec::new(),
            sections: serde_json::Map::new(),
        }
    }
}

impl Manifest {
    /// Parses a manifest from JSON text and validates its common keys.
    pub fn from_json_str(text: &str) -> Result<Self, ManifestError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ManifestError::new("$", format!("not valid JSON: {e}")))?;
        Self::from_value(&value)
    }

    /// Parses a manifest from a JSON value (as stored in the panel) and validates its common
    /// keys. The sections are checked by their modules.
    pub fn from_value(value: &serde_json::Value) -> Result<Self, ManifestError> {
        if !value.is_object() {
            return Err(ManifestError::new(
                "$",
                "invalid type: the manifest must be a JSON object",
            ));
        }
        let manifest: Manifest = deserialize_at(value)?;
        if !is_language_code(&manifest.default_language) {
            return Err(ManifestError::new(
                "default_language",
                "must be a language code such as `en` or `pt-br`",
            ));
        }
        Ok(manifest)
    }

    /// The manifest as a JSON value, for storing.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("manifest always serialises")
    }

    /// Parses the top-level `keys` a module owns into its section type `T` (a struct whose
    /// fields are those keys). Absent keys take `T`'s defaults; errors name the JSON path.
    pub fn section<T: DeserializeOwned>(&self, keys: &[&str]) -> Result<T, ManifestError> {
        let mut object = serde_json::Map::new();
        for key in keys {
            if let Some(v) = self.sections.get(*key) {
                object.insert((*key).to_owned(), v.clone());
            }
        }
        deserialize_at(&serde_json::Value::Object(object))
    }
}

/// Deserialises `value`, naming the JSON path of the first error.
fn deserialize_at<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ManifestError {
            path: if path == "." { "$".into() } else { path },
            reason: e.into_inner().to_string(),
        }
    })
}

/// Checks that `key` is a text key, for a module validating its section.
pub fn check_text_key(path: impl Into<String>, key: &str) -> Result<(), ManifestError> {
    if super::texts::is_valid_key(key) {
        Ok(())
    } else {
        Err(ManifestError::new(
            path,
            "must be a text key: 1-64 characters of a-z, 0-9, _, . and -",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_object_is_the_default() {
        assert_eq!(Manifest::from_json_str("{}").unwrap(), Manifest::default());
    }

    #[test]
    fn common_keys_are_checked_and_sections_kept() {
        let m = Manifest::from_json_str(r#"{"admins": [1], "menus": {"x": 1}}"#).unwrap();
        assert_eq!(m.admins, vec![1]);
        assert_eq!(m.sections["menus"], serde_json::json!({"x": 1}));
        assert_eq!(Manifest::from_value(&m.to_value()).unwrap(), m);
        let cases = [
            (r#"{"admins": ["x"]}"#, "admins[0]", "invalid type"),
            (
                r#"{"default_language": "English"}"#,
                "default_language",
                "language code",
            ),
            ("[1]", "$", "invalid type"),
            ("{", "$", "EOF"),
        ];
        for (json, path, reason) in cases {
            let e = Manifest::from_json_str(json).unwrap_err();
            assert_eq!(e.path, path, "{json}: {e}");
            assert!(e.reason.contains(reason), "{json}: {e}");
        }
    }
}
