//! Tracing setup and secret masking.
//!
//! [`init`] installs one subscriber for the process. Every log line passes through
//! [`RedactingStderr`], which masks anything shaped like a bot token (`123456:****`), so a token
//! cannot reach the log even through a dependency's error text (reqwest errors include the
//! request URL, and a Bot API URL contains the token). Under systemd (`JOURNAL_STREAM` set) the
//! lines are plain: no colour and no timestamp, journald adds its own.

use std::io::{IsTerminal, Write};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogFormat, LogSettings};

/// Shortest secret part we treat as a token when scanning free text for secrets.
///
/// Real tokens have 35 characters after the colon; scanning for 30 or more also catches
/// truncated or slightly different secrets without masking ordinary `12:34` times.
const MIN_SECRET_LEN: usize = 30;

/// Installs the global subscriber; call once from `main`. Later calls are ignored.
///
/// Under systemd (`JOURNAL_STREAM` set) with format `auto`, events go to journald through its
/// native protocol ([`journald::JournaldLayer`]), so fields such as `bot_id` become journal
/// fields (`journalctl -u botvisor BOT_ID=42`); without a reachable journal socket the
/// plain-line stderr output is used instead.
pub fn init(settings: &LogSettings) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    if under_journal
        && settings.format == LogFormat::Auto
        && let Ok(journal) = journald::JournaldLayer::connect(journald::JOURNAL_SOCKET)
    {
        let result = tracing_subscriber::registry()
            .with(filter)
            .with(journal)
            .try_init();
        drop(result);
        return;
    }
    let terminal = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr);
    let result = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Auto if under_journal => builder.with_ansi(false).without_time().try_init(),
        LogFormat::Auto => builder.with_ansi(terminal).try_init(),
    };
    // A second init (tests, embedded use) keeps the first subscriber.
    drop(result);
}

/// Masks a bot token for display: `123456:ABC…` becomes `123456:****`.
pub fn mask_token(token: &str) -> String {
    match token.split_once(':') {
        Some((id, _)) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{id}:****")
        }
        _ => "****".into(),
    }
}

/// Masks the password of a URL (`postgres://u:****@h/db`); other parts stay readable.
pub fn mask_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return redact(url);
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return redact(url);
    };
    let userinfo = &authority[..at];
    let masked_userinfo = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:****"),
        None => userinfo.to_owned(),
    };
    redact(&format!(
        "{}{}@{}",
        &url[..scheme_end + 3],
        masked_userinfo,
        &rest[at + 1..]
    ))
}

/// Replaces every token-shaped substring (`<digits>:<30+ url-safe chars>`) of `text` with
/// its masked form.
pub fn redact(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b':' {
            let digits_start = (0..i)
                .rev()
                .take_while(|&j| bytes[j].is_ascii_digit())
                .last();
            let secret_len = bytes[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_' || **b == b'-')
                .count();
            if let Some(start) = digits_start
                && secret_len >= MIN_SECRET_LEN
                && start >= copied
            {
                out.push_str(&text[copied..i]);
                out.push_str(":****");
                i += 1 + secret_len;
                copied = i;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    out
}

/// A `MakeWriter` for stderr that masks tokens in each formatted event before writing it.
#[derive(Clone, Copy, Debug, Default)]
pub struct RedactingStderr;

/// Buffers one event and writes it, redacted, when dropped.
pub struct RedactingWriter {
    buf: Vec<u8>,
}

impl Write for RedactingWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactingWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let line = redact(&text);
        // Logging must never take the process down; a closed stderr loses the line.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingWriter;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter {
            buf: Vec::with_capacity(256),
        }
    }
}

pub mod journald;

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw_";

    #[test]
    fn masks_tokens() {
        assert_eq!(mask_token(TOKEN), "123456789:****");
        assert_eq!(mask_token("garbage"), "****");
        assert_eq!(mask_token(":abc"), "****");
    }

    #[test]
    fn redacts_tokens_in_free_text() {
        let cases = [
            (
                format!("error sending request for url (http://x/bot{TOKEN}/GetMe)"),
                "error sending request for url (http://x/bot123456789:****/GetMe)".to_string(),
            ),
            (
                format!("{TOKEN} and {TOKEN}"),
                "123456789:**** and 123456789:****".into(),
            ),
            ("at 12:34 nothing".into(), "at 12:34 nothing".into()),
            (
                "no digits:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw".into(),
                "no digits:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw".into(),
            ),
            (
                "ünïcode 1:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw ok".into(),
                "ünïcode 1:**** ok".into(),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(redact(&input), expected);
        }
    }

    #[test]
    fn masks_url_passwords() {
        assert_eq!(
            mask_url("postgres://u:pw@h:5432/db"),
            "postgres://u:****@h:5432/db"
        );
        assert_eq!(mask_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(mask_url("postgres://h/db?x=@"), "postgres://h/db?x=@");
        assert_eq!(mask_url(""), "");
    }
}
