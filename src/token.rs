//! Bot tokens: validated at the edge, masked whenever printed, wiped from memory when dropped.

use std::fmt;
use std::hash::{Hash, Hasher};

use secrecy::{ExposeSecret, SecretString};

/// Length of the secret part of a Telegram bot token (after the colon).
pub const SECRET_LEN: usize = 35;

/// A well-formed bot token (`<digits>:<35 url-safe characters>`).
///
/// `Display` and `Debug` print the masked form (`123456:****`); only [`BotToken::expose`]
/// gives the secret, for the Bot API client and the panel database. The secret is held in a
/// [`SecretString`], zeroed when the last copy is dropped; it has no `Serialize`, so a token
/// cannot end up in JSON by accident.
#[derive(Clone)]
pub struct BotToken(SecretString);

impl PartialEq for BotToken {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for BotToken {}

impl Hash for BotToken {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.expose().hash(state);
    }
}

/// Why a string is not a bot token. The message never contains the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The shape is wrong.
    #[error(
        "malformed bot token: expected <digits>:<35 characters of A-Z a-z 0-9 _ ->, \
         as BotFather gives it"
    )]
    Malformed,
    /// The shape is right but the secret part has the wrong length.
    #[error(
        "malformed bot token: the secret part (after the colon) has {0} characters; expected 35"
    )]
    SecretLength(usize),
}

impl BotToken {
    /// Validates `raw` (surrounding whitespace is ignored).
    pub fn parse(raw: &str) -> Result<Self, TokenError> {
        let raw = raw.trim();
        let (id, secret) = raw.split_once(':').ok_or(TokenError::Malformed)?;
        let id_ok = !id.is_empty()
            && id.len() <= 20
            && id.bytes().all(|b| b.is_ascii_digit())
            && id.parse::<u64>().is_ok_and(|n| n > 0);
        let secret_ok = secret.len() == SECRET_LEN
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let secret_chars_ok = secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if id_ok && secret_ok {
            Ok(Self(SecretString::from(raw)))
        } else if id_ok && secret_chars_ok && !secret.is_empty() {
            Err(TokenError::SecretLength(secret.len()))
        } else {
            Err(TokenError::Malformed)
        }
    }

    /// The full token, for the Bot API and the panel database only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The bot's Telegram user id (the digits before the colon).
    pub fn bot_user_id(&self) -> u64 {
        self.expose()
            .split_once(':')
            .and_then(|(id, _)| id.parse().ok())
            .expect("validated in BotToken::parse")
    }

    /// The masked form, `123456:****`.
    pub fn masked(&self) -> String {
        crate::mask::mask_token(self.expose())
    }
}

impl fmt::Display for BotToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for BotToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BotToken({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_well_formed_tokens_only() {
        let good = "123456:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw_";
        assert_eq!(good.len(), 7 + SECRET_LEN);
        let t = BotToken::parse(good).unwrap();
        assert_eq!(t.bot_user_id(), 123456);
        assert_eq!(format!("{t} {t:?}"), "123456:**** BotToken(123456:****)");
        assert_eq!(t.expose(), good);
        assert_eq!(t.clone(), t);
        assert_ne!(
            t,
            BotToken::parse(&good.replace("123456", "123457")).unwrap()
        );
        for bad in [
            "",
            "123456",
            ":AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw_",
            "12a:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw_",
            "123456:short",
            "123456:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw_x",
            "123456:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsa!_",
            "0:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw_",
        ] {
            let err = BotToken::parse(bad).unwrap_err();
            assert!(!err.to_string().contains("AAHdq"), "{err}");
        }
        assert_eq!(
            BotToken::parse("123456:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"),
            Err(TokenError::SecretLength(34))
        );
        assert_eq!(
            BotToken::parse("123456:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw_x"),
            Err(TokenError::SecretLength(36))
        );
        assert_eq!(BotToken::parse("x:short"), Err(TokenError::Malformed));
    }
}
