//! Bot texts: keys, per-language values, and `{placeholder}` rendering.
//!
//! A text is validated when it is set (CLI `text set`/`text import`), not at send time: an
//! unknown placeholder or a value longer than Telegram's 4096-unit message limit is rejected
//! with a message naming the problem.
//!
//! Telegram counts lengths in UTF-16 code units, not characters: an emoji outside the Basic
//! Multilingual Plane counts 2, a combining mark counts 1 on its own. Every limit in botvisor
//! is checked with [`utf16_len`]. The limit is checked on the template as written, so a text
//! whose placeholders expand (a long `{first_name}`) can still exceed it when rendered.

/// Telegram's limit for a message text, in UTF-16 code units.
pub const MAX_TEXT_LEN: usize = 4096;

/// Placeholders a text may use.
pub const PLACEHOLDERS: [&str; 4] = ["first_name", "username", "bot_name", "panel_name"];

/// The length of `s` as Telegram counts it: UTF-16 code units.
///
/// `"é"` is 1, `"😀"` is 2, `"e\u{301}"` (e + combining acute) is 2, `"中"` is 1.
pub fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// A text key a manifest refers to, and what its value must keep to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRef {
    /// The text key.
    pub key: String,
    /// The longest value Telegram accepts where the text is used, in UTF-16 units.
    pub max_len: usize,
    /// Whether users see something wrong (a raw key, or no reply) when the key has no value;
    /// keys with a built-in default are not required.
    pub required: bool,
}

impl TextRef {
    /// A key the bot cannot do without, used as a message text.
    pub fn required(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            max_len: MAX_TEXT_LEN,
            required: true,
        }
    }

    /// A key with a built-in default, used as a message text.
    pub fn optional(key: impl Into<String>) -> Self {
        Self {
            required: false,
            ..Self::required(key)
        }
    }

    /// The same key with a tighter limit (a button label, a callback notice).
    pub fn max_len(self, max_len: usize) -> Self {
        Self { max_len, ..self }
    }
}

/// Why a text value or key was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// The key has characters outside the allowed set.
    #[error("invalid text key {0:?}: use 1-64 characters of a-z, 0-9, _, . and -")]
    InvalidKey(String),
    /// The language is not a language code.
    #[error("invalid language {0:?}: use a code such as `en` or `pt-br`")]
    InvalidLang(String),
    /// The value is empty.
    #[error("text is empty: Telegram cannot send an empty message")]
    Empty,
    /// The value is over Telegram's limit (the length is in UTF-16 units).
    #[error("text is {0} UTF-16 units long (Telegram's limit is 4096)")]
    TooLong(usize),
    /// The value uses a placeholder we do not fill.
    #[error(
        "unknown placeholder {{{0}}}; known placeholders: {{first_name}}, {{username}}, \
         {{bot_name}}, {{panel_name}}"
    )]
    UnknownPlaceholder(String),
    /// The value holds a control character other than a newline or a tab.
    #[error(
        "control character U+{code:04X} at position {position} (counting characters from 1): only newlines and tabs are allowed"
    )]
    ControlCharacter {
        /// Its position, counting characters from 1.
        position: usize,
        /// Its code point.
        code: u32,
    },
}

/// Whether `key` is an acceptable text key.
pub fn is_valid_key(key: &str) -> bool {
    (1..=64).contains(&key.len())
        && key.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

/// Validates a key, a language and a value together.
pub fn validate(key: &str, lang: &str, value: &str) -> Result<(), TextError> {
    if !is_valid_key(key) {
        return Err(TextError::InvalidKey(key.to_owned()));
    }
    if !super::lang::is_language_code(lang) {
        return Err(TextError::InvalidLang(lang.to_owned()));
    }
    validate_value(value)
}

/// Validates a value: not empty, within the limit, no control characters but `\n` and `\t`
/// (PostgreSQL refuses `\0`; the others garble a chat), known placeholders only.
pub fn validate_value(value: &str) -> Result<(), TextError> {
    if value.trim().is_empty() {
        return Err(TextError::Empty);
    }
    if let Some((i, c)) = value
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_control() && !matches!(c, '\n' | '\t'))
    {
        return Err(TextError::ControlCharacter {
            position: i + 1,
            code: u32::from(c),
        });
    }
    let len = utf16_len(value);
    if len > MAX_TEXT_LEN {
        return Err(TextError::TooLong(len));
    }
    for name in placeholders(value) {
        if !PLACEHOLDERS.contains(&name) {
            return Err(TextError::UnknownPlaceholder(name.to_owned()));
        }
    }
    Ok(())
}

/// Values for the placeholders of one rendering.
#[derive(Debug, Clone, Default)]
pub struct Vars<'a> {
    /// The user's first name.
    pub first_name: &'a str,
    /// The user's username, without `@` (empty when they have none).
    pub username: &'a str,
    /// The Telegram bot's name (`first_name` from getMe).
    pub bot_name: &'a str,
    /// The bot's name in the panel.
    pub panel_name: &'a str,
}

/// Fills the placeholders of `template`; anything that is not a `{name}` stays as written.
pub fn render(template: &str, vars: &Vars<'_>) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}').map(|close| (&after[..close], close)) {
            Some((name, close)) if is_placeholder_name(name) => {
                match name {
                    "first_name" => out.push_str(vars.first_name),
                    "username" => out.push_str(vars.username),
                    "bot_name" => out.push_str(vars.bot_name),
                    "panel_name" => out.push_str(vars.panel_name),
                    other => {
                        out.push('{');
                        out.push_str(other);
                        out.push('}');
                    }
                }
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn is_placeholder_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

fn placeholders(value: &str) -> impl Iterator<Item = &str> {
    value.split('{').skip(1).filter_map(|part| {
        let name = &part[..part.find('}')?];
        is_placeholder_name(name).then_some(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_known_placeholders_and_keeps_other_braces() {
        let vars = Vars {
            first_name: "Ann",
            username: "ann",
            bot_name: "Shop Bot",
            panel_name: "shop",
        };
        let cases = [
            ("Hi {first_name}!", "Hi Ann!"),
            ("{username}@{panel_name}", "ann@shop"),
            ("I am {bot_name}", "I am Shop Bot"),
            ("json {\"a\": 1} {", "json {\"a\": 1} {"),
            ("{first_name}{first_name}", "AnnAnn"),
            ("no placeholders", "no placeholders"),
        ];
        for (template, expected) in cases {
            assert_eq!(render(template, &vars), expected);
        }
    }

    #[test]
    fn validation_rejects_what_telegram_or_rendering_would() {
        assert_eq!(validate_value("Hi {first_name}"), Ok(()));
        assert_eq!(
            validate_value("Hi {name}"),
            Err(TextError::UnknownPlaceholder("name".into()))
        );
        assert_eq!(validate_value("  "), Err(TextError::Empty));
        assert_eq!(
            validate_value(&"я".repeat(4097)),
            Err(TextError::TooLong(4097))
        );
        assert_eq!(validate_value(&"я".repeat(4096)), Ok(()));
        assert_eq!(validate_value("line\n\tindented"), Ok(()));
        for (value, position, code) in [
            ("a\u{1}b", 2, 1),
            ("bell\u{7}", 5, 7),
            ("\u{1b}[31m", 1, 0x1b),
            ("я\u{0}", 2, 0),
            ("x\r", 2, 0x0d),
            ("x\u{7f}", 2, 0x7f),
            ("x\u{9b}", 2, 0x9b),
        ] {
            assert_eq!(
                validate_value(value),
                Err(TextError::ControlCharacter { position, code }),
                "{value:?}"
            );
        }
        assert_eq!(validate_value("{panel_name} {bot_name}"), Ok(()));
        assert!(matches!(
            validate("Bad Key", "en", "x"),
            Err(TextError::InvalidKey(_))
        ));
        assert!(matches!(
            validate("k", "EN", "x"),
            Err(TextError::InvalidLang(_))
        ));
    }

    #[test]
    fn lengths_are_counted_in_utf16_units_as_telegram_does() {
        let cases = [
            ("", 0),
            ("abc", 3),
            ("я", 1),
            ("中文", 2),
            ("😀", 2),
            ("👍🏽", 4),
            ("e\u{301}", 2),
            ("👨‍👩‍👧", 8),
        ];
        for (s, expected) in cases {
            assert_eq!(utf16_len(s), expected, "{s:?}");
        }
        // 2,100 emoji are 2,100 characters but 4,200 units: Telegram refuses them.
        let emoji = "😀".repeat(2100);
        assert_eq!(validate_value(&emoji), Err(TextError::TooLong(4200)));
        assert_eq!(
            TextError::TooLong(4200).to_string(),
            "text is 4200 UTF-16 units long (Telegram's limit is 4096)"
        );
        assert_eq!(validate_value(&"😀".repeat(2048)), Ok(()));
        assert_eq!(validate_value(&"中".repeat(4096)), Ok(()));
        assert_eq!(
            validate_value(&"e\u{301}".repeat(2049)),
            Err(TextError::TooLong(4098))
        );
    }
}
