//! A bot's manifest: the JSON document in `bots.manifest` that configures its behaviour.
//!
//! Validated on every write (CLI `config set`, `bot add --manifest`) and on every load by the
//! supervisor; an error names the JSON path of the offending value. The schema and a full
//! example are in docs/manifest.md.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Longest command name Telegram accepts.
const MAX_COMMAND_LEN: usize = 32;
/// Longest command description Telegram accepts.
const MAX_DESCRIPTION_LEN: usize = 256;

/// Why a manifest was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid manifest at {path}: {reason}")]
pub struct ManifestError {
    /// JSON path of the offending value, e.g. `menus.main.buttons[0][1].menu`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// The parsed manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Language of texts used when the user's language has no text (e.g. `en`).
    #[serde(default = "default_language")]
    pub default_language: String,
    /// Custom commands, each replying with a text; `/start` and `/help` are built in.
    #[serde(default)]
    pub commands: Vec<CommandSpec>,
    /// Menus by name.
    #[serde(default)]
    pub menus: BTreeMap<String, MenuSpec>,
    /// The menu `/menu` (and `/start`, when set) opens.
    #[serde(default)]
    pub main_menu: Option<String>,
    /// Telegram user ids allowed to use admin commands such as `/stats`.
    #[serde(default)]
    pub admins: Vec<i64>,
    /// Message history settings.
    #[serde(default)]
    pub history: HistorySpec,
}

fn default_language() -> String {
    "en".into()
}

/// A custom command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// The command without the slash: 1–32 of `a-z`, `0-9`, `_`.
    pub command: String,
    /// Key of the text it replies with.
    pub text: String,
    /// Description shown in Telegram's command list (1–256 characters).
    pub description: String,
}

/// Where a menu's buttons are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MenuKind {
    /// Buttons under the message; pressing edits the message in place.
    #[default]
    Inline,
    /// A reply keyboard replacing the user's keyboard.
    Reply,
}

/// A menu: a text and rows of buttons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MenuSpec {
    /// Inline or reply keyboard.
    #[serde(default)]
    pub kind: MenuKind,
    /// Key of the text shown with the menu.
    pub text: String,
    /// Rows of buttons.
    pub buttons: Vec<Vec<ButtonSpec>>,
}

/// A button: a label and exactly one action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ButtonSpec {
    /// Key of the text used as the button's label.
    pub label: String,
    /// Show this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Open this menu.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub menu: Option<String>,
    /// Go back to the menu this one was opened from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back: Option<bool>,
}

/// What a button does, once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ButtonAction<'a> {
    /// Show a text.
    Text(&'a str),
    /// Open a menu.
    Menu(&'a str),
    /// Back to the parent menu.
    Back,
}

impl ButtonSpec {
    /// The button's single action (validated at load, so always exactly one).
    pub fn action(&self) -> ButtonAction<'_> {
        match (&self.text, &self.menu, self.back) {
            (Some(t), None, None | Some(false)) => ButtonAction::Text(t),
            (None, Some(m), None | Some(false)) => ButtonAction::Menu(m),
            _ => ButtonAction::Back,
        }
    }
}

/// History settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HistorySpec {
    /// Days to keep messages; 0 keeps them forever.
    #[serde(default)]
    pub retention_days: u32,
}

impl Default for Manifest {
    fn default() -> Self {
        Self {
            default_language: default_language(),
            commands: Vec::new(),
            menus: BTreeMap::new(),
            main_menu: None,
            admins: Vec::new(),
            history: HistorySpec::default(),
        }
    }
}

impl Manifest {
    /// Parses and validates a manifest from JSON text.
    pub fn from_json_str(text: &str) -> Result<Self, ManifestError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| ManifestError {
            path: "$".into(),
            reason: format!("not valid JSON: {e}"),
        })?;
        Self::from_value(&value)
    }

    /// Parses and validates a manifest from a JSON value (as stored in the panel).
    pub fn from_value(value: &serde_json::Value) -> Result<Self, ManifestError> {
        if !value.is_object() {
            return Err(ManifestError {
                path: "$".into(),
                reason: "invalid type: the manifest must be a JSON object".into(),
            });
        }
        let manifest: Manifest = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ManifestError {
                path: if path == "." { "$".into() } else { path },
                reason: e.into_inner().to_string(),
            }
        })?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The manifest as a JSON value, for storing.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("manifest always serialises")
    }

    /// Checks cross-references and Telegram's limits.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let err = |path: String, reason: &str| ManifestError {
            path,
            reason: reason.to_owned(),
        };
        if !is_language_code(&self.default_language) {
            return Err(err(
                "default_language".into(),
                "must be a language code such as `en` or `pt-br`",
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, c) in self.commands.iter().enumerate() {
            let p = format!("commands[{i}]");
            if c.command.is_empty()
                || c.command.len() > MAX_COMMAND_LEN
                || !c
                    .command
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(err(
                    format!("{p}.command"),
                    "must be 1-32 characters of a-z, 0-9 and _ (without the slash)",
                ));
            }
            if matches!(c.command.as_str(), "start" | "help" | "menu" | "stats") {
                return Err(err(
                    format!("{p}.command"),
                    "is built in (start, help, menu, stats); use the texts `start`/`help` instead",
                ));
            }
            if !seen.insert(c.command.as_str()) {
                return Err(err(format!("{p}.command"), "is defined twice"));
            }
            check_key(&c.text).map_err(|r| err(format!("{p}.text"), r))?;
            let len = c.description.chars().count();
            if len == 0 || len > MAX_DESCRIPTION_LEN {
                return Err(err(format!("{p}.description"), "must be 1-256 characters"));
            }
        }
        for (name, menu) in &self.menus {
            let p = format!("menus.{name}");
            check_key(name).map_err(|r| err(p.clone(), r))?;
            check_key(&menu.text).map_err(|r| err(format!("{p}.text"), r))?;
            if menu.buttons.is_empty() || menu.buttons.iter().any(Vec::is_empty) {
                return Err(err(
                    format!("{p}.buttons"),
                    "must hold at least one row, and every row at least one button",
                ));
            }
            for (r, row) in menu.buttons.iter().enumerate() {
                for (c, b) in row.iter().enumerate() {
                    let bp = format!("{p}.buttons[{r}][{c}]");
                    check_key(&b.label).map_err(|r| err(format!("{bp}.label"), r))?;
                    let actions = usize::from(b.text.is_some())
                        + usize::from(b.menu.is_some())
                        + usize::from(b.back == Some(true));
                    if actions != 1 {
                        return Err(err(
                            bp,
                            "needs exactly one action: \"text\", \"menu\" or \"back\": true",
                        ));
                    }
                    if let Some(t) = &b.text {
                        check_key(t).map_err(|r| err(format!("{bp}.text"), r))?;
                    }
                    if let Some(m) = &b.menu
                        && !self.menus.contains_key(m)
                    {
                        return Err(err(
                            format!("{bp}.menu"),
                            "names a menu that is not defined",
                        ));
                    }
                }
            }
        }
        if let Some(m) = &self.main_menu
            && !self.menus.contains_key(m)
        {
            return Err(err("main_menu".into(), "names a menu that is not defined"));
        }
        Ok(())
    }
}

/// Whether `s` looks like an IETF language code Telegram reports (`en`, `pt-br`).
pub fn is_language_code(s: &str) -> bool {
    (2..=10).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn check_key(key: &str) -> Result<(), &'static str> {
    if crate::content::texts::is_valid_key(key) {
        Ok(())
    } else {
        Err("must be a text key: 1-64 characters of a-z, 0-9, _, . and -")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_example_is_valid() {
        let m = Manifest::from_json_str(include_str!("../../docs/manifest.example.json")).unwrap();
        assert_eq!(m.default_language, "en");
        assert!(m.menus.contains_key("main"));
    }

    #[test]
    fn empty_object_is_the_default() {
        assert_eq!(Manifest::from_json_str("{}").unwrap(), Manifest::default());
    }

    #[test]
    fn errors_name_the_json_path() {
        let cases = [
            (r#"{"comands": []}"#, "comands", "unknown field"),
            (r#"{"admins": ["x"]}"#, "admins[0]", "invalid type"),
            (
                r#"{"default_language": "English"}"#,
                "default_language",
                "language code",
            ),
            (
                r#"{"commands": [{"command": "Price", "text": "p", "description": "d"}]}"#,
                "commands[0].command",
                "a-z",
            ),
            (
                r#"{"commands": [{"command": "start", "text": "p", "description": "d"}]}"#,
                "commands[0].command",
                "built in",
            ),
            (
                r#"{"menus": {"main": {"text": "m", "buttons": [[{"label": "a", "menu": "nope"}]]}}}"#,
                "menus.main.buttons[0][0].menu",
                "not defined",
            ),
            (
                r#"{"menus": {"main": {"text": "m", "buttons": [[{"label": "a", "text": "t", "back": true}]]}}}"#,
                "menus.main.buttons[0][0]",
                "exactly one action",
            ),
            (r#"{"main_menu": "x"}"#, "main_menu", "not defined"),
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
