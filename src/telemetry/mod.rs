//! Tracing setup: one subscriber, every line masked (see [`crate::mask`]).
//!
//! [`init`] installs one subscriber for the process. Every log line passes through
//! [`RedactingStderr`], which masks anything shaped like a bot token (`123456:****`), so a token
//! cannot reach the log even through a dependency's error text (reqwest errors include the
//! request URL, and a Bot API URL contains the token). Text lines ([`console::Console`]) are one
//! line per event with every field once and no span prefix; on a terminal they carry the time
//! of day, in a file the full date, and under systemd (`JOURNAL_STREAM` set) no timestamp and
//! no colour, as journald adds its own. teloxide is kept at `warn` ([`filter_spec`]).

use std::io::{IsTerminal, Write};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::mask::redact;
use crate::settings::{LogFormat, LogSettings};
use console::{Clock, Console, SpanFieldsLayer};

/// Installs the global subscriber; call once from `main`. Later calls are ignored.
///
/// Under systemd (`JOURNAL_STREAM` set) with format `auto`, events go to journald through its
/// native protocol ([`journald::JournaldLayer`]), so fields such as `bot_id` become journal
/// fields (`journalctl -u botvisor BOT_ID=42`); without a reachable journal socket the
/// plain-line stderr output is used instead.
pub fn init(settings: &LogSettings) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| EnvFilter::try_new(s).is_ok())
        .unwrap_or_else(|| settings.filter.clone());
    let filter = EnvFilter::try_new(filter_spec(&spec))
        .unwrap_or_else(|_| EnvFilter::new(filter_spec("info")));
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
    let registry = tracing_subscriber::registry().with(filter);
    let result = if settings.format == LogFormat::Json {
        let json = tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(RedactingStderr);
        registry.with(json).try_init()
    } else {
        let (clock, ansi) = match settings.format {
            LogFormat::Auto if under_journal => (Clock::None, false),
            LogFormat::Auto => (Clock::Time, terminal),
            LogFormat::Text | LogFormat::Json => (Clock::DateTime, false),
        };
        let text = tracing_subscriber::fmt::layer()
            .with_writer(RedactingStderr)
            .with_ansi(ansi)
            .event_format(Console { clock });
        registry.with(SpanFieldsLayer).with(text).try_init()
    };
    // A second init (tests, embedded use) keeps the first subscriber.
    drop(result);
}

/// Dependencies kept at a quieter level unless the filter names them: teloxide logs every
/// dispatcher start and stop at `info`, one line per bot each time, which buries our own
/// one-line-per-event output (issue 19.18); its warnings and errors still show.
pub const QUIET_DEPENDENCIES: &[(&str, &str)] = &[("teloxide", "warn")];

/// The tracing filter for `spec` (the settings' `log.filter` or `RUST_LOG`): `spec` plus a
/// directive for each of [`QUIET_DEPENDENCIES`] it does not name itself.
pub fn filter_spec(spec: &str) -> String {
    let mut out = spec.trim().trim_end_matches(',').to_owned();
    for (target, level) in QUIET_DEPENDENCIES {
        let named = out
            .split(',')
            .any(|d| d.trim().split(['=', '[']).next() == Some(*target));
        if !named {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(&format!("{target}={level}"));
        }
    }
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

pub mod console;
pub mod journald;
pub mod metrics;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teloxide_is_quiet_unless_the_filter_names_it() {
        let cases = [
            ("info,sqlx=warn", "info,sqlx=warn,teloxide=warn"),
            ("debug", "debug,teloxide=warn"),
            ("", "teloxide=warn"),
            ("info,teloxide=debug", "info,teloxide=debug"),
            (
                "teloxide::dispatching=info",
                "teloxide::dispatching=info,teloxide=warn",
            ),
            ("info,teloxide[x]=info", "info,teloxide[x]=info"),
        ];
        for (spec, expected) in cases {
            assert_eq!(filter_spec(spec), expected, "{spec}");
            assert!(EnvFilter::try_new(filter_spec(spec)).is_ok(), "{spec}");
        }
    }
}
