//! Texts: set, get, list, delete, import and export a bot's texts.
//!
//! A text without a language goes to the manifest's `default_language` (default `en`).

use std::collections::BTreeMap;

use super::{Admin, AdminError};
use crate::content::manifest::Manifest;
use crate::panel::{TextRecord, store};

/// The format of a texts document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextsFormat {
    /// JSON.
    Json,
    /// TOML.
    Toml,
}

impl Admin {
    /// The language a text without an explicit one goes to: the manifest's default.
    pub async fn default_lang(&self, id: i64, lang: Option<&str>) -> Result<String, AdminError> {
        if let Some(lang) = lang {
            return Ok(lang.to_owned());
        }
        let bot = store::get_bot(&self.pool, id).await?;
        Ok(Manifest::from_value(&bot.manifest.0)
            .map(|m| m.default_language)
            .unwrap_or_else(|_| Manifest::default().default_language))
    }

    /// Sets a text (validated: key, language, length, placeholders); returns its language.
    pub async fn set_text(
        &self,
        id: i64,
        key: &str,
        lang: Option<&str>,
        value: &str,
    ) -> Result<String, AdminError> {
        let lang = self.default_lang(id, lang).await?;
        let before = store::get_text(&self.pool, id, key, &lang).await?;
        let target = format!("{key} [{lang}]");
        let entry = self.audit_entry(
            "text.set",
            Some(id),
            &target,
            before.map(|t| serde_json::Value::String(t.value)),
            Some(serde_json::Value::String(value.to_owned())),
        );
        store::import_texts_as(
            &self.pool,
            id,
            &[(key.to_owned(), lang.clone(), value.to_owned())],
            &self.actor,
            Some(&entry),
        )
        .await?;
        Ok(lang)
    }

    /// One text.
    pub async fn get_text(
        &self,
        id: i64,
        key: &str,
        lang: Option<&str>,
    ) -> Result<TextRecord, AdminError> {
        let lang = self.default_lang(id, lang).await?;
        store::get_text(&self.pool, id, key, &lang)
            .await?
            .ok_or_else(|| AdminError::NoSuchText {
                id,
                key: key.to_owned(),
                lang,
            })
    }

    /// Every text of a bot, by key and language.
    pub async fn list_texts(&self, id: i64) -> Result<Vec<TextRecord>, AdminError> {
        Ok(store::list_texts(&self.pool, id).await?)
    }

    /// Deletes a text; returns its language. A text that does not exist is an error.
    pub async fn delete_text(
        &self,
        id: i64,
        key: &str,
        lang: Option<&str>,
    ) -> Result<String, AdminError> {
        let lang = self.default_lang(id, lang).await?;
        let before = store::get_text(&self.pool, id, key, &lang).await?;
        let target = format!("{key} [{lang}]");
        let entry = self.audit_entry(
            "text.delete",
            Some(id),
            &target,
            before.map(|t| serde_json::Value::String(t.value)),
            None,
        );
        if store::delete_text_as(&self.pool, id, key, &lang, &self.actor, Some(&entry)).await? {
            Ok(lang)
        } else {
            Err(AdminError::NoSuchText {
                id,
                key: key.to_owned(),
                lang,
            })
        }
    }

    /// Imports a texts document (`{"key": "value"}` in the default language, or
    /// `{"key": {"lang": "value"}}`) in one transaction; returns how many texts.
    pub async fn import_texts(
        &self,
        id: i64,
        document: &str,
        format: TextsFormat,
    ) -> Result<usize, AdminError> {
        let lang = self.default_lang(id, None).await?;
        let texts = parse_texts(document, format, &lang)?;
        let entry = self.audit_entry(
            "text.import",
            Some(id),
            "",
            None,
            Some(serde_json::json!({ "texts": texts.len() })),
        );
        store::import_texts_as(&self.pool, id, &texts, &self.actor, Some(&entry)).await?;
        Ok(texts.len())
    }

    /// Every text as `{"key": {"lang": "value"}}`, ready for [`Admin::import_texts`].
    pub async fn export_texts(
        &self,
        id: i64,
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>, AdminError> {
        let mut map: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for t in store::list_texts(&self.pool, id).await? {
            map.entry(t.key).or_default().insert(t.lang, t.value);
        }
        Ok(map)
    }
}

/// Reads `{"key": "value"}` or `{"key": {"lang": "value"}}` as `(key, lang, value)` triples.
pub fn parse_texts(
    document: &str,
    format: TextsFormat,
    default_lang: &str,
) -> Result<Vec<(String, String, String)>, AdminError> {
    let bad = |what: String| AdminError::InvalidTexts(what);
    let value: serde_json::Value = match format {
        TextsFormat::Toml => {
            let v: toml::Value =
                toml::from_str(document).map_err(|e| bad(format!("invalid TOML: {e}")))?;
            serde_json::to_value(v).map_err(|e| bad(e.to_string()))?
        }
        TextsFormat::Json => {
            serde_json::from_str(document).map_err(|e| bad(format!("invalid JSON: {e}")))?
        }
    };
    let map = value
        .as_object()
        .ok_or_else(|| bad("expected a map of text keys".into()))?;
    let mut texts = Vec::new();
    for (key, v) in map {
        match v {
            serde_json::Value::String(s) => {
                texts.push((key.clone(), default_lang.to_owned(), s.clone()));
            }
            serde_json::Value::Object(langs) => {
                for (lang, v) in langs {
                    let s = v
                        .as_str()
                        .ok_or_else(|| bad(format!("{key}.{lang}: expected a string")))?;
                    texts.push((key.clone(), lang.clone(), s.to_owned()));
                }
            }
            _ => {
                return Err(bad(format!(
                    "{key}: expected a string or a map of languages"
                )));
            }
        }
    }
    if texts.is_empty() {
        return Err(bad("holds no texts".into()));
    }
    Ok(texts)
}
