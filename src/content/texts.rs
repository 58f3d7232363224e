//! Bot texts: keys, per-language values, and `{placeholder}` rendering.
//!
//! A text is validated when it is set (CLI `text set`/`text import`), not at send time: an
//! unknown placeholder or a value longer than Telegram's 4096-character message limit is
//! rejected with a message naming the problem.

/// Telegram's limit for a message text, in characters.
pub const MAX_TEXT_LEN: usize = 4096;

/// Placeholders a text may use.
pub const PLACEHOLDERS: [&str; 3] = ["first_name", "username", "bot_name"];

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
    /// The value is over Telegram's limit.
    #[error("text is {0} characters long; Telegram's limit is 4096")]
    TooLong(usize),
    /// The value uses a placeholder we do not fill.
    #[error(
        "unknown placeholder {{{0}}}; known placeholders: {{first_name}}, {{username}}, {{bot_name}}"
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
    let len = value.chars().count();
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
    /// The bot's name in the panel.
    pub bot_name: &'a str,
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
            bot_name: "shop",
        };
        let cases = [
            ("Hi {first_name}!", "Hi Ann!"),
            ("{username}@{bot_name}", "ann@shop"),
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
        assert!(matches!(
            validate("Bad Key", "en", "x"),
            Err(TextError::InvalidKey(_))
        ));
        assert!(matches!(
            validate("k", "EN", "x"),
            Err(TextError::InvalidLang(_))
        ));
    }
}
