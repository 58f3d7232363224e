//! The assistant module's manifest section: `{"assistant": {"base_url", "model", …}}`.

use serde::{Deserialize, Serialize};

use crate::content::manifest::{ManifestError, check_text_key};

/// The top-level manifest keys the module owns.
pub const KEYS: &[&str] = &["assistant"];

/// The module's section: absent means the module is off for the bot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssistantSection {
    /// The `assistant` object.
    #[serde(default)]
    pub assistant: Option<AssistantSpec>,
}

/// What makes the bot ask the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// Every text a user writes in a private chat (commands excepted).
    #[default]
    Text,
    /// Only `/ask <question>` (in any chat).
    Command,
}

/// Assistant settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssistantSpec {
    /// The OpenAI-compatible API's base, up to and including `/v1` (the module posts to
    /// `{base_url}/chat/completions`), e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// The model's name, e.g. `gpt-4o-mini`.
    pub model: String,
    /// The name of the bot secret holding the API key (`botvisor secret set ID NAME
    /// --stdin`); without it no key is sent (a local server).
    #[serde(default)]
    pub api_key_secret: Option<String>,
    /// Key of the system prompt text (in the user's language when the texts have it).
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// `text` (default) or `command` (`/ask …`).
    #[serde(default)]
    pub trigger: Trigger,
    /// Most earlier messages sent as context, the question included (default 20).
    #[serde(default = "default_messages")]
    pub max_context_messages: u32,
    /// Most characters of context, the question included (default 8000).
    #[serde(default = "default_chars")]
    pub max_context_chars: u32,
    /// `max_tokens` of the reply (default 500).
    #[serde(default = "default_tokens")]
    pub max_reply_tokens: u32,
    /// Questions a user may ask per day (0, the default: no limit).
    #[serde(default)]
    pub daily_limit_per_user: u32,
    /// Seconds one model call may take (default 60).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u32,
    /// Key of the text a user gets when the model cannot answer (else a built-in English one).
    #[serde(default)]
    pub failure_text: Option<String>,
    /// Key of the text a user gets over the daily limit (else a built-in English one).
    #[serde(default)]
    pub limit_text: Option<String>,
    /// Key of the text confirming `/reset` (else a built-in English one).
    #[serde(default)]
    pub reset_text: Option<String>,
}

fn default_messages() -> u32 {
    20
}

fn default_chars() -> u32 {
    8000
}

fn default_tokens() -> u32 {
    500
}

fn default_timeout() -> u32 {
    60
}

impl AssistantSpec {
    /// Checks the values serde cannot: the URL, ranges, text and secret names.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let err = |field: &str, reason: &str| {
            Err(ManifestError::new(format!("assistant.{field}"), reason))
        };
        match url::Url::parse(&self.base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => {
                return err(
                    "base_url",
                    "must be an http(s) URL such as `https://api.openai.com/v1`",
                );
            }
        }
        if self.model.trim().is_empty() {
            return err("model", "must name the model, e.g. `gpt-4o-mini`");
        }
        if let Some(name) = &self.api_key_secret
            && (name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'))
        {
            return err(
                "api_key_secret",
                "must be a secret's name: 1-64 characters of a-z, A-Z, 0-9, _, - and .",
            );
        }
        for (field, value) in [
            ("max_context_messages", self.max_context_messages),
            ("max_context_chars", self.max_context_chars),
            ("max_reply_tokens", self.max_reply_tokens),
        ] {
            if value == 0 {
                return err(field, "must be at least 1");
            }
        }
        if !(1..=600).contains(&self.timeout_secs) {
            return err("timeout_secs", "must be 1-600 seconds");
        }
        for (field, key) in [
            ("system_prompt", &self.system_prompt),
            ("failure_text", &self.failure_text),
            ("limit_text", &self.limit_text),
            ("reset_text", &self.reset_text),
        ] {
            if let Some(key) = key {
                check_text_key(format!("assistant.{field}"), key)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::Registry;

    #[test]
    fn errors_name_the_json_path() {
        let cases = [
            (r#"{"assistant": {"model": "m"}}"#, "assistant", "base_url"),
            (
                r#"{"assistant": {"base_url": "ftp://x", "model": "m"}}"#,
                "assistant.base_url",
                "http(s)",
            ),
            (
                r#"{"assistant": {"base_url": "http://x/v1", "model": " "}}"#,
                "assistant.model",
                "name the model",
            ),
            (
                r#"{"assistant": {"base_url": "http://x/v1", "model": "m", "trigger": "voice"}}"#,
                "assistant.trigger",
                "unknown variant",
            ),
            (
                r#"{"assistant": {"base_url": "http://x/v1", "model": "m", "timeout_secs": 0}}"#,
                "assistant.timeout_secs",
                "1-600",
            ),
            (
                r#"{"assistant": {"base_url": "http://x/v1", "model": "m", "max_context_chars": 0}}"#,
                "assistant.max_context_chars",
                "at least 1",
            ),
            (
                r#"{"assistant": {"base_url": "http://x/v1", "model": "m", "api_key_secret": "my key"}}"#,
                "assistant.api_key_secret",
                "secret's name",
            ),
            (
                r#"{"assistant": {"base_url": "http://x/v1", "model": "m", "system_prompt": "Be nice"}}"#,
                "assistant.system_prompt",
                "text key",
            ),
            (
                r#"{"assistant": {"base_url": "http://x/v1", "model": "m", "max_context_messages": -1}}"#,
                "assistant.max_context_messages",
                "invalid value",
            ),
        ];
        for (json, path, reason) in cases {
            let e = Registry::standard().parse_manifest(json).unwrap_err();
            assert_eq!(e.path, path, "{json}: {e}");
            assert!(e.reason.contains(reason), "{json}: {e}");
        }
        let ok = Registry::standard()
            .parse_manifest(
                r#"{"assistant": {"base_url": "http://127.0.0.1:8081/v1", "model": "m"}}"#,
            )
            .unwrap();
        let spec = ok
            .section::<AssistantSection>(KEYS)
            .unwrap()
            .assistant
            .unwrap();
        assert_eq!(
            (spec.trigger, spec.max_context_messages, spec.timeout_secs),
            (Trigger::Text, 20, 60)
        );
    }
}
