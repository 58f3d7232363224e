//! A bot's content snapshot: its manifest, texts and every enabled module's parsed section,
//! swapped as a whole on reload.
//!
//! Handlers load the snapshot once per update ([`SharedSnapshot::load`]), so an update sees
//! one consistent version even while a reload swaps in the next one. The bot's run and its
//! module jobs watch it ([`SharedSnapshot::subscribe`]) to re-sync commands and wake up.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use secrecy::SecretString;
use tokio::sync::watch;

use super::manifest::Manifest;
use super::texts::{Vars, render};

/// The panel's fingerprint of a manifest + texts version: (row version, texts count, latest
/// text change). A reload happens when it moves.
pub type Fingerprint = (i64, i64, Option<chrono::DateTime<chrono::Utc>>);

/// A module's parsed manifest section, as its module left it.
pub type Section = Arc<dyn Any + Send + Sync>;

/// One immutable version of a bot's content.
#[derive(Clone)]
pub struct Snapshot {
    /// The fingerprint of the panel rows this snapshot was built from.
    pub fingerprint: Fingerprint,
    /// The bot's name in the panel (`{panel_name}`).
    pub panel_name: String,
    /// The manifest (common keys validated; sections parsed below).
    pub manifest: Manifest,
    /// Texts by key, then language.
    texts: HashMap<String, HashMap<String, String>>,
    /// Parsed sections of the modules enabled for this bot, by module name.
    sections: BTreeMap<&'static str, Section>,
    /// Problems that do not stop the bot (texts the manifest names without a value).
    warnings: Vec<String>,
    /// The bot's secrets, opened, by name (never printed: `SecretString`).
    secrets: Arc<BTreeMap<String, SecretString>>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("fingerprint", &self.fingerprint)
            .field("panel_name", &self.panel_name)
            .field("modules", &self.sections.keys().collect::<Vec<_>>())
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// A snapshot without module sections; texts are `(key, lang, value)`.
    pub fn new(
        fingerprint: Fingerprint,
        panel_name: String,
        manifest: Manifest,
        texts: impl IntoIterator<Item = (String, String, String)>,
    ) -> Self {
        let mut map: HashMap<String, HashMap<String, String>> = HashMap::new();
        for (key, lang, value) in texts {
            map.entry(key).or_default().insert(lang, value);
        }
        Self {
            fingerprint,
            panel_name,
            manifest,
            texts: map,
            sections: BTreeMap::new(),
            warnings: Vec::new(),
            secrets: Arc::default(),
        }
    }

    /// Sets the bot's secrets (opened by the control plane from the panel's sealed rows).
    pub fn set_secrets(&mut self, secrets: impl IntoIterator<Item = (String, SecretString)>) {
        self.secrets = Arc::new(secrets.into_iter().collect());
    }

    /// The bot's secret `name` (e.g. `openai`), as set with `botvisor secret set`.
    pub fn secret(&self, name: &str) -> Option<&SecretString> {
        self.secrets.get(name)
    }

    /// The names of the bot's secrets.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        self.secrets.keys().map(String::as_str)
    }

    /// Records module `name` as enabled, with its parsed section.
    pub fn enable(&mut self, name: &'static str, section: Section) {
        self.sections.insert(name, section);
    }

    /// Records the problems that do not stop the bot (see [`Snapshot::warning`]).
    pub fn set_warnings(&mut self, warnings: Vec<String>) {
        self.warnings = warnings;
    }

    /// The problems found at load as one line for `bot_status.detail` (empty when none),
    /// e.g. `texts missing in en: menu_main, btn_about`.
    pub fn warning(&self) -> String {
        self.warnings.join("; ")
    }

    /// Whether module `name` is enabled for this bot.
    pub fn is_enabled(&self, name: &str) -> bool {
        self.sections.contains_key(name)
    }

    /// Module `name`'s parsed section, if the module is enabled and its section is a `T`.
    pub fn section<T: Any>(&self, name: &str) -> Option<&T> {
        self.sections.get(name)?.downcast_ref::<T>()
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

    /// Every language's value of `key`, as `(language, value)`.
    pub fn values(&self, key: &str) -> impl Iterator<Item = (&str, &str)> {
        self.texts
            .get(key)
            .into_iter()
            .flat_map(|by_lang| by_lang.iter().map(|(l, v)| (l.as_str(), v.as_str())))
    }

    /// The text for `key` rendered with `vars`, if the text exists.
    pub fn render(&self, key: &str, lang: Option<&str>, vars: &Vars<'_>) -> Option<String> {
        self.text(key, lang).map(|t| render(t, vars))
    }
}

/// The current snapshot of one bot, shared by its handlers, its jobs and the control loop.
#[derive(Debug, Clone)]
pub struct SharedSnapshot(Arc<watch::Sender<Arc<Snapshot>>>);

impl SharedSnapshot {
    /// Starts with `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        Self(Arc::new(watch::Sender::new(Arc::new(snapshot))))
    }

    /// The current snapshot; hold it for the whole update.
    pub fn load(&self) -> Arc<Snapshot> {
        self.0.borrow().clone()
    }

    /// Swaps in a new snapshot; the next update uses it and every watcher is woken.
    pub fn store(&self, snapshot: Snapshot) {
        self.0.send_replace(Arc::new(snapshot));
    }

    /// A receiver that sees every later swap.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(default_language: &str, texts: &[(&str, &str, &str)]) -> Snapshot {
        Snapshot::new(
            (1, 0, None),
            "b".into(),
            Manifest {
                default_language: default_language.into(),
                ..Manifest::default()
            },
            texts
                .iter()
                .map(|(k, l, v)| (k.to_string(), l.to_string(), v.to_string())),
        )
    }

    #[test]
    fn language_falls_back_to_base_then_default() {
        let c = snapshot(
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
            snapshot("ru", &[("x", "en", "only en")]).text("x", Some("ru")),
            None
        );
    }

    #[test]
    fn sections_are_typed_and_mark_modules_enabled() {
        let mut s = snapshot("en", &[]);
        assert!(!s.is_enabled("core"));
        s.enable("core", Arc::new(7_u32));
        assert!(s.is_enabled("core"));
        assert_eq!(s.section::<u32>("core"), Some(&7));
        assert_eq!(s.section::<String>("core"), None);
    }

    #[test]
    fn secrets_are_found_by_name_and_never_printed() {
        use secrecy::ExposeSecret;
        let mut s = snapshot("en", &[]);
        assert!(s.secret("openai").is_none());
        s.set_secrets([("openai".to_string(), SecretString::from("sk-123"))]);
        assert_eq!(s.secret("openai").unwrap().expose_secret(), "sk-123");
        assert_eq!(s.secret_names().collect::<Vec<_>>(), ["openai"]);
        let printed = format!("{s:?}");
        assert!(
            printed.contains("openai") && !printed.contains("sk-123"),
            "{printed}"
        );
    }
}
