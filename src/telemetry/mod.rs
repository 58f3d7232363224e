//! Tracing setup: one subscriber, every line masked (see [`crate::mask`]).
//!
//! [`init`] installs one subscriber for the process. Every log line passes through
//! [`RedactingStderr`], which masks anything shaped like a bot token (`123456:****`), so a token
//! cannot reach the log even through a dependency's error text (reqwest errors include the
//! request URL, and a Bot API URL contains the token). Under systemd (`JOURNAL_STREAM` set) the
//! lines are plain: no colour and no timestamp, journald adds its own.

use std::io::{IsTerminal, Write};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::mask::redact;
use crate::settings::{LogFormat, LogSettings};

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
