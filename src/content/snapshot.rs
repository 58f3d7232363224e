//! A bot's settings snapshot: its validated manifest and texts, swapped atomically on reload.
//!
//! Handlers load the snapshot once per update ([`SharedConfig::load`]), so an update sees one
//! consistent version even while a reload swaps in the next one.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::content::manifest::{Manifest, ManifestError};
use crate::content::texts::{Vars, render};
use crate::panel::{BotRecord, TextRecord};

/// One immutable version of a bot's manifest and texts.
#[derive(Debug, Clone)]
pub struct BotConfig {
    /// The panel's fingerprint of the manifest and texts this snapshot was built from.
    pub fingerprint: (i64, i64, Option<chrono::DateTime<chrono::Utc>>),
    /// The bot's name in the panel (`{bot_name}`).
    pub bot_name: String,
    /// The validated manifest.
    pub manifest: Manifest,
    /// Texts by key, then language.
    texts: HashMap<String, HashMap<String, String>>,
}

impl BotConfig {
    /// Builds and validates a snapshot from panel rows.
    pub fn build(bot: &BotRecord, texts: Vec<TextRecord>) -> Result<Self, ManifestError> {
        let manifest = Manifest::from_value(&bot.manifest.0)?;
        let mut map: HashMap<String, HashMap<String, String>> = HashMap::new();
        for t in texts {
            map.entry(t.key).or_default().insert(t.lang, t.value);
        }
        Ok(Self {
            fingerprint: bot.config_fingerprint(),
            bot_name: bot.name.clone(),
            manifest,
            texts: map,
        })
    }

    /// The raw text for `key` in the user's language: exact code (`pt-br`), then its base
    /// (`pt`), then the manifest's default language.
    pub fn text(&self, key: &str, lang: Option<&str>) -> Option<&str> {
        let by_lang = self.texts.get(key)?;
        let mut candidates: Vec<&str> = Vec::with_capacity(3);
        if let Some(lang) = lang.map(str::trim).filter(|l| !l.is_empty()) {
            candidates.push(lang);
            if let Some((base, _)) = lang.split_once('-') {
                candidates.push(base);
            }
        }
        candidates.push(&self.manifest.default_language);
        candidates
            .into_iter()
            .find_map(|l| by_lang.get(&l.to_ascii_lowercase()).map(String::as_str))
    }

    /// The text for `key` rendered with `vars`, if the text exists.
    pub fn render(&self, key: &str, lang: Option<&str>, vars: &Vars<'_>) -> Option<String> {
        self.text(key, lang).map(|t| render(t, vars))
    }
}

/// The current snapshot of one bot, shared by its handlers and the supervisor.
#[derive(Debug, Clone)]
pub struct SharedConfig(Arc<ArcSwap<BotConfig>>);

impl SharedConfig {
    /// Starts with `config`.
    pub fn new(config: BotConfig) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(config)))
    }

    /// The current snapshot; hold it for the whole update.
    pub fn load(&self) -> Arc<BotConfig> {
        self.0.load_full()
    }

    /// Swaps in a new snapshot; the next update uses it.
    pub fn store(&self, config: BotConfig) {
        self.0.store(Arc::new(config));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(default_language: &str, texts: &[(&str, &str, &str)]) -> BotConfig {
        let mut map: HashMap<String, HashMap<String, String>> = HashMap::new();
        for (k, l, v) in texts {
            map.entry(k.to_string())
                .or_default()
                .insert(l.to_string(), v.to_string());
        }
        BotConfig {
            fingerprint: (1, 0, None),
            bot_name: "b".into(),
            manifest: Manifest {
                default_language: default_language.into(),
                ..Manifest::default()
            },
            texts: map,
        }
    }

    #[test]
    fn language_falls_back_to_base_then_default() {
        let c = config(
            "en",
            &[
                ("start", "en", "Hi"),
                ("start", "pt", "Olá"),
                ("start", "ru", "Привет"),
            ],
        );
        let cases = [
            (Some("ru"), Some("Привет")),
            (Some("pt-br"), Some("Olá")),
            (Some("de"), Some("Hi")),
            (None, Some("Hi")),
            (Some(""), Some("Hi")),
        ];
        for (lang, expected) in cases {
            assert_eq!(c.text("start", lang), expected, "{lang:?}");
        }
        assert_eq!(c.text("missing", Some("en")), None);
        assert_eq!(
            config("ru", &[("x", "en", "only en")]).text("x", Some("ru")),
            None
        );
    }
}
