//! The plain-text line format: one line per event, every field once, no span prefix.
//!
//! tracing's default text format prints each enclosing span as a prefix
//! (`task{task=bot-1}:bot{bot_id=1 telegram_bot=…}: botvisor::runtime::inbox: … bot_id=1`), so a
//! line about a bot ran past 120 columns and showed `bot_id` twice when the event repeated it.
//! [`Console`] writes `LEVEL target: message` followed by the fields of the enclosing spans
//! (outermost first) and of the event, each name once (the innermost value wins). The rule
//! this lets the code keep: `bot_id` lives on the bot's span; events inside it need not repeat
//! it, and when they do the line still shows it once (`tests::each_field_is_printed_once`).
//! [`SpanFieldsLayer`] keeps each span's fields for it.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Record};
use tracing::{Event, Id, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// How a line starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// No timestamp (journald adds its own).
    None,
    /// `13:05:09.123` (a terminal: the date is today).
    Time,
    /// `2026-11-30T13:05:09.123Z` (a file).
    DateTime,
}

/// The event format; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct Console {
    /// The timestamp at the start of each line.
    pub clock: Clock,
}

/// The fields recorded on a span, in order.
struct ConsoleSpanFields(Vec<(&'static str, String)>);

/// A layer that keeps every span's fields for [`Console`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanFieldsLayer;

#[derive(Default)]
struct Collector {
    message: String,
    fields: Vec<(&'static str, String)>,
}

impl Collector {
    fn push(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.fields.push((field.name(), value));
        }
    }
}

impl Visit for Collector {
    fn record_str(&mut self, field: &Field, value: &str) {
        let value = if field.name() != "message" && (value.is_empty() || value.contains(' ')) {
            format!("{value:?}")
        } else {
            value.to_owned()
        };
        self.push(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, format!("{value:?}"));
    }
}

impl<S> tracing_subscriber::Layer<S> for SpanFieldsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut collector = Collector::default();
        attrs.record(&mut collector);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut()
                .insert(ConsoleSpanFields(collector.fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut collector = Collector::default();
        values.record(&mut collector);
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<ConsoleSpanFields>()
        {
            fields.0.extend(collector.fields);
        }
    }
}

fn level_colour(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "\x1b[31m",
        Level::WARN => "\x1b[33m",
        Level::INFO => "\x1b[32m",
        Level::DEBUG => "\x1b[34m",
        Level::TRACE => "\x1b[35m",
    }
}

impl<S, N> FormatEvent<S, N> for Console
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let now = chrono::Utc::now();
        match self.clock {
            Clock::None => {}
            Clock::Time => write!(w, "{} ", now.format("%H:%M:%S%.3f"))?,
            Clock::DateTime => write!(w, "{} ", now.format("%Y-%m-%dT%H:%M:%S%.3fZ"))?,
        }
        let meta = event.metadata();
        if w.has_ansi_escapes() {
            write!(
                w,
                "{}{:>5}\x1b[0m ",
                level_colour(meta.level()),
                meta.level()
            )?;
        } else {
            write!(w, "{:>5} ", meta.level())?;
        }
        let target = meta.target();
        let target = target.strip_prefix("botvisor::").unwrap_or(target);
        let mut collector = Collector::default();
        event.record(&mut collector);
        write!(w, "{target}: {}", collector.message)?;
        let mut fields: Vec<(&'static str, String)> = Vec::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<ConsoleSpanFields>() {
                    fields.extend(f.0.iter().cloned());
                }
            }
        }
        fields.extend(collector.fields);
        let mut line = String::new();
        for (i, (name, value)) in fields.iter().enumerate() {
            // The innermost value of a name is printed, at its first position.
            if fields[..i].iter().any(|(n, _)| n == name) {
                continue;
            }
            let value = fields[i..]
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map_or(value, |(_, v)| v);
            let _ = write!(line, " {name}={value}");
        }
        writeln!(w, "{line}")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn lines(emit: impl FnOnce()) -> Vec<String> {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(SpanFieldsLayer).with(
            tracing_subscriber::fmt::layer()
                .with_writer(buffer.clone())
                .with_ansi(false)
                .event_format(Console { clock: Clock::None }),
        );
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn each_field_is_printed_once() {
        let lines = lines(|| {
            let task = tracing::info_span!("task", task = "bot-1");
            let _t = task.enter();
            let bot = tracing::info_span!("bot", bot_id = 1, telegram_bot = 123456);
            let _b = bot.enter();
            tracing::warn!(
                bot_id = 1,
                error = "chat not found",
                "Telegram refused the request"
            );
            tracing::info!(state = "running", detail = "", "bot status");
        });
        assert_eq!(
            lines,
            [
                " WARN telemetry::console::tests: Telegram refused the request task=bot-1 \
                 bot_id=1 telegram_bot=123456 error=\"chat not found\"",
                " INFO telemetry::console::tests: bot status task=bot-1 bot_id=1 \
                 telegram_bot=123456 state=running detail=\"\"",
            ]
        );
    }

    #[test]
    fn outside_a_span_the_event_fields_are_the_line() {
        let lines = lines(|| tracing::info!(bot_id = 7, "stopping bot"));
        assert_eq!(
            lines,
            [" INFO telemetry::console::tests: stopping bot bot_id=7"]
        );
    }
}
