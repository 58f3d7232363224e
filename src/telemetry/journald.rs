//! A tracing layer writing to journald with its native protocol, secrets masked.
//!
//! Each event becomes one journal entry: `MESSAGE` (the message followed by its fields as
//! `key=value`), `PRIORITY`, `SYSLOG_IDENTIFIER=botvisor`, `TARGET`, and every field of the
//! event and of its enclosing spans as an upper-cased journal field (`bot_id` → `BOT_ID`), so
//! `journalctl -u botvisor BOT_ID=42` shows one bot. Every value passes through
//! [`super::redact`] first. tracing-journald would do the transport, but it cannot mask
//! values, and a dependency's error text may hold a bot token.

use std::fmt::Write as _;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Record};
use tracing::{Event, Id, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::redact;

/// Where journald listens for native-protocol datagrams.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// The layer; see the module docs.
pub struct JournaldLayer {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl JournaldLayer {
    /// Connects to the journal socket at `path` (fails when none listens there).
    pub fn connect(path: impl AsRef<Path>) -> io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        let path = path.as_ref().to_path_buf();
        // An empty datagram checks that journald listens; it discards it.
        socket.send_to(&[], &path)?;
        Ok(Self { socket, path })
    }
}

/// Fields recorded on a span, kept in its extensions.
struct SpanFields(Vec<(String, String)>);

#[derive(Default)]
struct Collector {
    message: String,
    fields: Vec<(String, String)>,
}

impl Visit for Collector {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields
                .push((field.name().to_owned(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields
                .push((field.name().to_owned(), format!("{value:?}")));
        }
    }
}

fn priority(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "6",
        Level::DEBUG | Level::TRACE => "7",
    }
}

/// Journal field names: upper case letters, digits and `_`, not starting with `_` or a digit.
fn journal_name(name: &str) -> Option<String> {
    let upper: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    let upper = upper.trim_start_matches(|c: char| c == '_' || c.is_ascii_digit());
    (!upper.is_empty()).then(|| upper.to_owned())
}

/// Appends one field in the native protocol (binary-safe form when the value has a newline).
fn put(buf: &mut Vec<u8>, name: &str, value: &str) {
    if value.contains('\n') {
        buf.extend_from_slice(name.as_bytes());
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
        buf.extend_from_slice(value.as_bytes());
        buf.push(b'\n');
    } else {
        buf.extend_from_slice(name.as_bytes());
        buf.push(b'=');
        buf.extend_from_slice(value.as_bytes());
        buf.push(b'\n');
    }
}

impl JournaldLayer {
    fn entry<S>(&self, event: &Event<'_>, ctx: &Context<'_, S>) -> Vec<u8>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let mut collector = Collector::default();
        event.record(&mut collector);
        let mut fields: Vec<(String, String)> = Vec::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<SpanFields>() {
                    fields.extend(f.0.iter().cloned());
                }
            }
        }
        // One value per name: an event field wins over a span field of the same name, so an
        // event inside the bot's span that names `bot_id` again still yields one `BOT_ID`.
        fields.retain(|(k, _)| !collector.fields.iter().any(|(e, _)| e == k));
        fields.extend(collector.fields);
        let mut message = redact(&collector.message);
        for (k, v) in &fields {
            let _ = write!(message, " {k}={}", redact(v));
        }
        let mut buf = Vec::with_capacity(256);
        put(&mut buf, "MESSAGE", &message);
        put(&mut buf, "PRIORITY", priority(event.metadata().level()));
        put(&mut buf, "SYSLOG_IDENTIFIER", "botvisor");
        put(&mut buf, "TARGET", event.metadata().target());
        for (k, v) in &fields {
            if let Some(name) = journal_name(k) {
                put(&mut buf, &name, &redact(v));
            }
        }
        buf
    }
}

impl<S> tracing_subscriber::Layer<S> for JournaldLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut collector = Collector::default();
        attrs.record(&mut collector);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(collector.fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut collector = Collector::default();
        values.record(&mut collector);
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<SpanFields>()
        {
            fields.0.extend(collector.fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let entry = self.entry(event, &ctx);
        // Logging must never fail the program; a full or gone journal loses the entry.
        let _ = self.socket.send_to(&entry, &self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn entries_carry_bot_id_as_a_journal_field_and_mask_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.socket");
        let server = UnixDatagram::bind(&path).unwrap();
        let layer = JournaldLayer::connect(&path).unwrap();
        let mut empty = [0u8; 16];
        assert_eq!(server.recv(&mut empty).unwrap(), 0);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("bot", bot_id = 42);
            let _guard = span.enter();
            tracing::warn!(
                error = "GET http://x/bot123456:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw_/getMe",
                "multi\nline"
            );
        });
        let mut buf = vec![0u8; 65536];
        let n = server.recv(&mut buf).unwrap();
        let entry = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(entry.contains("BOT_ID=42\n"), "{entry}");
        assert!(entry.contains("PRIORITY=4\n"), "{entry}");
        assert!(entry.contains("SYSLOG_IDENTIFIER=botvisor\n"), "{entry}");
        assert!(
            entry.contains("ERROR=GET http://x/bot123456:****/getMe\n"),
            "{entry}"
        );
        assert!(!entry.contains("AAHdq"), "{entry}");
        assert!(entry.starts_with("MESSAGE\n"), "{entry}");
    }

    #[test]
    fn a_field_named_by_the_span_and_the_event_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.socket");
        let server = UnixDatagram::bind(&path).unwrap();
        let layer = JournaldLayer::connect(&path).unwrap();
        let mut empty = [0u8; 16];
        assert_eq!(server.recv(&mut empty).unwrap(), 0);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("bot", bot_id = 42);
            let _guard = span.enter();
            tracing::info!(bot_id = 42, state = "running", "bot status");
        });
        let mut buf = vec![0u8; 65536];
        let n = server.recv(&mut buf).unwrap();
        let entry = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert_eq!(entry.matches("BOT_ID=").count(), 1, "{entry}");
        assert!(
            entry.contains("MESSAGE=bot status bot_id=42 state=running\n"),
            "{entry}"
        );
    }

    #[test]
    fn field_names_follow_journal_rules() {
        assert_eq!(journal_name("bot_id").as_deref(), Some("BOT_ID"));
        assert_eq!(journal_name("_x").as_deref(), Some("X"));
        assert_eq!(journal_name("1a").as_deref(), Some("A"));
        assert_eq!(journal_name("retry_in").as_deref(), Some("RETRY_IN"));
        assert_eq!(journal_name("__").as_deref(), None);
    }
}
