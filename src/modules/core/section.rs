//! The core module's manifest section: custom commands, menus and the main menu.
//!
//! For compatibility with every manifest written so far, core's keys stay at the top level of
//! the manifest (`commands`, `menus`, `main_menu`, `fallback`) instead of under a `core`
//! object.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::content::manifest::{ManifestError, check_text_key};
use crate::content::texts::{TextRef, utf16_len};

/// Longest command name Telegram accepts.
const MAX_COMMAND_LEN: usize = 32;
/// Longest command description Telegram accepts, in UTF-16 units.
const MAX_DESCRIPTION_LEN: usize = 256;
/// Longest button label we accept, in UTF-16 units. Telegram documents no limit; a phone
/// shows about 20–30 characters of a button and cuts the rest, so 64 leaves room while still
/// catching a message text used as a label by mistake.
pub const MAX_LABEL_LEN: usize = 64;
/// Longest notice Telegram shows for a pressed button (`answerCallbackQuery`'s `text`).
pub const MAX_NOTICE_LEN: usize = 200;

/// The top-level manifest keys core owns.
pub const KEYS: &[&str] = &["commands", "menus", "main_menu", "fallback"];

/// Core's section of the manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreSection {
    /// Custom commands, each replying with a text; `/start` and `/help` are built in.
    #[serde(default)]
    pub commands: Vec<CommandSpec>,
    /// Menus by name.
    #[serde(default)]
    pub menus: BTreeMap<String, MenuSpec>,
    /// The menu `/menu` (and `/start`, when set) opens.
    #[serde(default)]
    pub main_menu: Option<String>,
    /// Key of the text answering a message nothing else answered: plain text that is neither
    /// a command nor a reply-keyboard button (without it such a message gets no reply).
    #[serde(default)]
    pub fallback: Option<String>,
}

/// A custom command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// The command without the slash: 1–32 of `a-z`, `0-9`, `_`.
    pub command: String,
    /// Key of the text it replies with.
    pub text: String,
    /// Description shown in Telegram's command list (1–256 UTF-16 units).
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

impl CoreSection {
    /// Checks cross-references and Telegram's limits.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let err = |path: String, reason: &str| ManifestError::new(path, reason);
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
            check_text_key(format!("{p}.text"), &c.text)?;
            let len = utf16_len(c.description.trim());
            if len == 0 || len > MAX_DESCRIPTION_LEN {
                return Err(ManifestError::new(
                    format!("{p}.description"),
                    format!(
                        "is {len} UTF-16 units long; Telegram accepts 1-256 \
                         (an emoji counts 2)"
                    ),
                ));
            }
        }
        for (name, menu) in &self.menus {
            let p = format!("menus.{name}");
            check_text_key(p.clone(), name)?;
            check_text_key(format!("{p}.text"), &menu.text)?;
            if menu.buttons.is_empty() || menu.buttons.iter().any(Vec::is_empty) {
                return Err(err(
                    format!("{p}.buttons"),
                    "must hold at least one row, and every row at least one button",
                ));
            }
            for (r, row) in menu.buttons.iter().enumerate() {
                for (c, b) in row.iter().enumerate() {
                    let bp = format!("{p}.buttons[{r}][{c}]");
                    check_text_key(format!("{bp}.label"), &b.label)?;
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
                        check_text_key(format!("{bp}.text"), t)?;
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
        if let Some(key) = &self.fallback {
            check_text_key("fallback", key)?;
        }
        Ok(())
    }

    /// The text keys this section refers to, with their limits: every key named in the
    /// manifest is required; `start`, `help`, `unknown_command` and `menu_expired` have
    /// built-in defaults.
    pub fn text_keys(&self) -> Vec<TextRef> {
        let mut keys = vec![
            TextRef::optional("start"),
            TextRef::optional("help"),
            TextRef::optional("unknown_command"),
            TextRef::optional("menu_expired").max_len(MAX_NOTICE_LEN),
        ];
        keys.extend(self.commands.iter().map(|c| TextRef::required(&c.text)));
        let main_first = self
            .main_menu
            .iter()
            .filter_map(|m| self.menus.get_key_value(m))
            .chain(
                self.menus
                    .iter()
                    .filter(|(name, _)| Some(*name) != self.main_menu.as_ref()),
            );
        for (_, menu) in main_first {
            keys.push(TextRef::required(&menu.text));
            for b in menu.buttons.iter().flatten() {
                keys.push(TextRef::required(&b.label).max_len(MAX_LABEL_LEN));
                if let Some(t) = &b.text {
                    keys.push(TextRef::required(t));
                }
            }
        }
        keys.extend(self.fallback.iter().map(TextRef::required));
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::manifest::Manifest;
    use crate::modules::Registry;

    fn parse(json: &str) -> Result<CoreSection, ManifestError> {
        let manifest = Registry::standard().parse_manifest(json)?;
        manifest.section::<CoreSection>(KEYS)
    }

    #[test]
    fn full_example_is_valid() {
        let m = parse(include_str!("../../../docs/manifest.example.json")).unwrap();
        assert!(m.menus.contains_key("main"));
        let _ = Manifest::default();
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
            (r#"{"fallback": "Not A Key"}"#, "fallback", "text key"),
            ("[1]", "$", "invalid type"),
            ("{", "$", "EOF"),
        ];
        for (json, path, reason) in cases {
            let e = parse(json).unwrap_err();
            assert_eq!(e.path, path, "{json}: {e}");
            assert!(e.reason.contains(reason), "{json}: {e}");
        }
    }

    #[test]
    fn descriptions_are_counted_in_utf16_units() {
        let with = |description: &str| {
            parse(&format!(
                r#"{{"commands": [{{"command": "x", "text": "x", "description": "{description}"}}]}}"#
            ))
        };
        // 129 emoji are 129 characters but 258 UTF-16 units.
        let e = with(&"😀".repeat(129)).unwrap_err();
        assert_eq!(e.path, "commands[0].description");
        assert!(e.reason.contains("258 UTF-16 units"), "{e}");
        assert!(with(&"😀".repeat(128)).is_ok());
        assert!(with(&"中".repeat(256)).is_ok());
        assert!(with(" ").is_err());
    }

    #[test]
    fn text_keys_list_every_key_the_section_names() {
        let s = parse(include_str!("../../../docs/manifest.example.json")).unwrap();
        let keys = s.text_keys();
        let required: Vec<&str> = keys
            .iter()
            .filter(|k| k.required)
            .map(|k| k.key.as_str())
            .collect();
        assert_eq!(
            required,
            [
                "prices",
                "contact",
                "menu_main",
                "btn_prices",
                "prices",
                "btn_about",
                "menu_about",
                "btn_contact",
                "contact",
                "btn_back"
            ]
        );
        let label = keys.iter().find(|k| k.key == "btn_about").unwrap();
        assert_eq!(label.max_len, MAX_LABEL_LEN);
        let notice = keys.iter().find(|k| k.key == "menu_expired").unwrap();
        assert_eq!((notice.required, notice.max_len), (false, MAX_NOTICE_LEN));
    }
}
