//! Formatting and keyboards: `parse_mode` parsing into entities, reply markup validation.
//!
//! Telegram turns formatted text into plain text plus `MessageEntity` objects whose offsets
//! and lengths count UTF-16 code units. The parsers here do the same for the three parse modes
//! (`HTML`, `MarkdownV2` and legacy `Markdown`) and fail with Telegram's own wording, prefixed
//! by `Bad Request: can't parse entities: ` by the caller.

use serde_json::{Value, json};

/// Longest `callback_data` Telegram accepts, in bytes.
const MAX_CALLBACK_DATA: usize = 64;

/// Length of `s` as Telegram counts it (UTF-16 code units).
pub(crate) fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// The parse modes Telegram knows, matched case-insensitively like Telegram does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ParseMode {
    Html,
    MarkdownV2,
    Markdown,
}

impl ParseMode {
    /// Parses a `parse_mode` value; `None` for an unsupported one.
    pub(crate) fn from_param(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "html" => Some(Self::Html),
            "markdownv2" => Some(Self::MarkdownV2),
            "markdown" => Some(Self::Markdown),
            _ => None,
        }
    }

    /// Turns formatted `src` into plain text and entities, or Telegram's parse error message.
    pub(crate) fn parse(self, src: &str) -> Result<(String, Vec<Value>), String> {
        match self {
            Self::Html => parse_html(src),
            Self::MarkdownV2 => parse_markdown_v2(src),
            Self::Markdown => parse_markdown_legacy(src),
        }
    }
}

/// Plain text being built together with its UTF-16 length.
#[derive(Default)]
struct Out {
    text: String,
    units: usize,
    entities: Vec<Value>,
}

impl Out {
    fn push(&mut self, c: char) {
        self.text.push(c);
        self.units += c.len_utf16();
    }

    fn entity(&mut self, kind: &str, start: usize, extra: Option<(&str, String)>) {
        let length = self.units - start;
        if length == 0 {
            return;
        }
        let mut e = json!({"type": kind, "offset": start, "length": length});
        if let Some((k, v)) = extra {
            e[k] = Value::String(v);
        }
        self.entities.push(e);
    }

    fn finish(mut self) -> (String, Vec<Value>) {
        // Telegram lists entities by offset; nested ones that start together outer first.
        self.entities.sort_by_key(|e| {
            (
                e["offset"].as_u64().unwrap_or(0),
                u64::MAX - e["length"].as_u64().unwrap_or(0),
            )
        });
        (self.text, self.entities)
    }
}

struct OpenTag {
    name: String,
    kind: &'static str,
    start: usize,
    extra: Option<(&'static str, String)>,
}

fn html_attr(attrs: &str, name: &str) -> Option<String> {
    let lower = attrs.to_ascii_lowercase();
    let pos = lower.find(&format!("{name}="))?;
    let rest = &attrs[pos + name.len() + 1..];
    let value = if let Some(r) = rest.strip_prefix('"') {
        &r[..r.find('"')?]
    } else if let Some(r) = rest.strip_prefix('\'') {
        &r[..r.find('\'')?]
    } else {
        rest.split_whitespace().next().unwrap_or("")
    };
    Some(unescape_html(value))
}

fn unescape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        match html_entity(rest) {
            Some((c, used)) => {
                out.push(c);
                rest = &rest[used..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Decodes the HTML entity at the start of `s` (which starts with `&`): the character and the
/// bytes it used. Unknown entities are left as text, as Telegram does.
fn html_entity(s: &str) -> Option<(char, usize)> {
    let end = s[..s.len().min(12)].find(';')?;
    let name = &s[1..end];
    let c = match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "quot" => '"',
        _ => {
            let num = name.strip_prefix('#')?;
            let code = match num.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => num.parse().ok()?,
            };
            char::from_u32(code)?
        }
    };
    Some((c, end + 1))
}

fn parse_html(src: &str) -> Result<(String, Vec<Value>), String> {
    let mut out = Out::default();
    let mut stack: Vec<OpenTag> = Vec::new();
    let mut i = 0;
    while i < src.len() {
        let rest = &src[i..];
        let c = rest.chars().next().unwrap_or_default();
        if c == '&' {
            if let Some((ch, used)) = html_entity(rest) {
                out.push(ch);
                i += used;
                continue;
            }
            out.push('&');
            i += 1;
            continue;
        }
        if c != '<' {
            out.push(c);
            i += c.len_utf8();
            continue;
        }
        let Some(close) = rest.find('>') else {
            return Err(format!("Unclosed start tag at byte offset {i}"));
        };
        let inner = &rest[1..close];
        if let Some(name) = inner.strip_prefix('/') {
            let name = name.trim().to_ascii_lowercase();
            let Some(open) = stack.pop() else {
                return Err(format!("Unexpected end tag at byte offset {i}"));
            };
            if open.name != name {
                return Err(format!(
                    "Unmatched end tag at byte offset {i}, expected \"</{}>\", found \"</{name}>\"",
                    open.name
                ));
            }
            if open.name == "code"
                && let Some(lang) = open.extra.as_ref().map(|(_, l)| l.clone())
                && let Some(pre) = stack.last_mut()
                && pre.kind == "pre"
                && pre.start == open.start
            {
                // <pre><code class="language-x"> is one pre entity with a language.
                pre.extra = Some(("language", lang));
            } else {
                out.entity(open.kind, open.start, open.extra);
            }
        } else {
            let name_end = inner
                .find(|ch: char| ch.is_whitespace() || ch == '/')
                .unwrap_or(inner.len());
            let name = inner[..name_end].to_ascii_lowercase();
            let attrs = &inner[name_end..];
            let (kind, extra): (&'static str, Option<(&'static str, String)>) = match name.as_str()
            {
                "b" | "strong" => ("bold", None),
                "i" | "em" => ("italic", None),
                "u" | "ins" => ("underline", None),
                "s" | "strike" | "del" => ("strikethrough", None),
                "tg-spoiler" => ("spoiler", None),
                "span" => {
                    if html_attr(attrs, "class").as_deref() != Some("tg-spoiler") {
                        return Err(format!(
                            "Tag \"span\" must have class \"tg-spoiler\" at byte offset {i}"
                        ));
                    }
                    ("spoiler", None)
                }
                "a" => match html_attr(attrs, "href") {
                    Some(url) if !url.is_empty() => ("text_link", Some(("url", url))),
                    _ => ("text_link", None),
                },
                "code" => (
                    "code",
                    html_attr(attrs, "class")
                        .and_then(|c| c.strip_prefix("language-").map(str::to_owned))
                        .map(|l| ("language", l)),
                ),
                "pre" => ("pre", None),
                "blockquote" => {
                    if attrs.to_ascii_lowercase().contains("expandable") {
                        ("expandable_blockquote", None)
                    } else {
                        ("blockquote", None)
                    }
                }
                "tg-emoji" => match html_attr(attrs, "emoji-id") {
                    Some(id) => ("custom_emoji", Some(("custom_emoji_id", id))),
                    None => {
                        return Err(format!(
                            "Custom emoji entity must have \"emoji-id\" attribute at byte offset {i}"
                        ));
                    }
                },
                _ => {
                    return Err(format!(
                        "Unsupported start tag \"{name}\" at byte offset {i}"
                    ));
                }
            };
            // A link without href is plain text in Telegram; keep the tag balanced anyway.
            let kind = if kind == "text_link" && extra.is_none() {
                "plain"
            } else {
                kind
            };
            stack.push(OpenTag {
                name,
                kind,
                start: out.units,
                extra,
            });
        }
        i += close + 1;
    }
    if let Some(open) = stack.pop() {
        return Err(format!(
            "Can't find end tag corresponding to start tag \"{}\"",
            open.name
        ));
    }
    out.entities.retain(|e| e["type"] != "plain");
    Ok(out.finish())
}

/// Characters MarkdownV2 reserves: they must be escaped with `\` in plain text.
const V2_RESERVED: &str = "_*[]()~`>#+-=|{}.!";

fn v2_name(kind: &str) -> &'static str {
    match kind {
        "bold" => "Bold",
        "italic" => "Italic",
        "underline" => "Underline",
        "strikethrough" => "Strikethrough",
        "spoiler" => "Spoiler",
        "code" => "Code",
        "pre" => "Pre",
        _ => "TextUrl",
    }
}

fn parse_markdown_v2(src: &str) -> Result<(String, Vec<Value>), String> {
    let mut out = Out::default();
    // (kind, utf16 start, byte offset of the opening marker)
    let mut stack: Vec<(&'static str, usize, usize)> = Vec::new();
    let bytes = src.as_bytes();
    let mut i = 0;
    while i < src.len() {
        let c = src[i..].chars().next().unwrap_or_default();
        if c == '\\' {
            match src[i + 1..].chars().next() {
                Some(next) if (next as u32) < 127 => {
                    out.push(next);
                    i += 1 + next.len_utf8();
                    continue;
                }
                _ => {
                    return Err(
                        "Character '\\' is reserved and must be escaped with the preceding '\\'"
                            .to_owned(),
                    );
                }
            }
        }
        if c == '`' {
            let is_pre = src[i..].starts_with("```");
            let marker = if is_pre { 3 } else { 1 };
            let body_start = i + marker;
            let mut j = body_start;
            let mut text = String::new();
            let mut closed = None;
            while j < src.len() {
                let d = src[j..].chars().next().unwrap_or_default();
                if d == '\\' && j + 1 < src.len() {
                    let e = src[j + 1..].chars().next().unwrap_or_default();
                    text.push(e);
                    j += 1 + e.len_utf8();
                    continue;
                }
                if (is_pre && src[j..].starts_with("```")) || (!is_pre && d == '`') {
                    closed = Some(j);
                    break;
                }
                text.push(d);
                j += d.len_utf8();
            }
            let Some(end) = closed else {
                let kind = if is_pre { "pre" } else { "code" };
                return Err(format!(
                    "Can't find end of {} entity at byte offset {i}",
                    v2_name(kind)
                ));
            };
            let mut language = None;
            if is_pre && let Some(nl) = text.find('\n') {
                let first = text[..nl].trim();
                if !first.is_empty() && !first.contains(' ') {
                    language = Some(first.to_owned());
                }
                text = text[nl + 1..].to_owned();
            }
            let start = out.units;
            for ch in text.chars() {
                out.push(ch);
            }
            if is_pre {
                out.entity("pre", start, language.map(|l| ("language", l)));
            } else {
                out.entity("code", start, None);
            }
            i = end + marker;
            continue;
        }
        let (kind, len) = match c {
            '*' => ("bold", 1),
            '_' if bytes.get(i + 1) == Some(&b'_') => ("underline", 2),
            '_' => ("italic", 1),
            '~' => ("strikethrough", 1),
            '|' if bytes.get(i + 1) == Some(&b'|') => ("spoiler", 2),
            '[' => ("text_link", 1),
            ']' if stack.iter().any(|(k, _, _)| *k == "text_link") => {
                let Some((kind, start, open_at)) = stack.pop() else {
                    unreachable!("checked by the guard")
                };
                if kind != "text_link" {
                    return Err(format!(
                        "Can't find end of {} entity at byte offset {open_at}",
                        v2_name(kind)
                    ));
                }
                if bytes.get(i + 1) != Some(&b'(') {
                    return Err(format!(
                        "Can't find end of TextUrl entity at byte offset {open_at}"
                    ));
                }
                let Some(close) = src[i + 2..].find(')') else {
                    return Err(format!(
                        "Can't find end of TextUrl entity at byte offset {open_at}"
                    ));
                };
                let url = src[i + 2..i + 2 + close]
                    .replace("\\)", ")")
                    .replace("\\\\", "\\");
                out.entity("text_link", start, Some(("url", url)));
                i += 2 + close + 1;
                continue;
            }
            '>' if i == 0 || bytes[i - 1] == b'\n' => {
                // Block quotes: a leading '>' on a line; the marker itself is not text.
                let start = out.units;
                let line_end = src[i..].find('\n').map_or(src.len(), |p| i + p);
                let (line, entities) = parse_markdown_v2(&src[i + 1..line_end])?;
                for ch in line.chars() {
                    out.push(ch);
                }
                for mut e in entities {
                    let off = e["offset"].as_u64().unwrap_or(0) as usize + start;
                    e["offset"] = json!(off);
                    out.entities.push(e);
                }
                out.entity("blockquote", start, None);
                i = line_end;
                continue;
            }
            c if V2_RESERVED.contains(c) => {
                return Err(format!(
                    "Character '{c}' is reserved and must be escaped with the preceding '\\'"
                ));
            }
            _ => {
                out.push(c);
                i += c.len_utf8();
                continue;
            }
        };
        if kind != "text_link"
            && let Some(pos) = stack.iter().rposition(|(k, _, _)| *k == kind)
        {
            let (kind, start, _) = stack.remove(pos);
            out.entity(kind, start, None);
        } else {
            stack.push((kind, out.units, i));
        }
        i += len;
    }
    if let Some((kind, _, at)) = stack.first() {
        return Err(format!(
            "Can't find end of {} entity at byte offset {at}",
            v2_name(kind)
        ));
    }
    Ok(out.finish())
}

fn parse_markdown_legacy(src: &str) -> Result<(String, Vec<Value>), String> {
    let mut out = Out::default();
    let mut i = 0;
    while i < src.len() {
        let c = src[i..].chars().next().unwrap_or_default();
        if c == '\\' && src[i + 1..].starts_with(['_', '*', '`', '[']) {
            out.push(src.as_bytes()[i + 1] as char);
            i += 2;
            continue;
        }
        let (kind, marker): (&str, &str) = match c {
            '*' => ("bold", "*"),
            '_' => ("italic", "_"),
            '`' if src[i..].starts_with("```") => ("pre", "```"),
            '`' => ("code", "`"),
            '[' => ("text_link", "]"),
            _ => {
                out.push(c);
                i += c.len_utf8();
                continue;
            }
        };
        let open_len = if kind == "pre" { 3 } else { 1 };
        let body_start = i + open_len;
        let Some(rel) = src[body_start..].find(marker) else {
            return Err(format!(
                "Can't find end of the entity starting at byte offset {i}"
            ));
        };
        let body = &src[body_start..body_start + rel];
        let mut next = body_start + rel + marker.len();
        let start = out.units;
        let mut extra = None;
        if kind == "text_link" {
            if !src[next..].starts_with('(') {
                return Err(format!(
                    "Can't find end of the entity starting at byte offset {i}"
                ));
            }
            let Some(close) = src[next..].find(')') else {
                return Err(format!(
                    "Can't find end of the entity starting at byte offset {i}"
                ));
            };
            extra = Some(("url", src[next + 1..next + close].to_owned()));
            next += close + 1;
        }
        let body = if kind == "pre" {
            match body.split_once('\n') {
                Some((lang, rest)) if !lang.trim().is_empty() && !lang.contains(' ') => {
                    extra = Some(("language", lang.trim().to_owned()));
                    rest
                }
                _ => body,
            }
        } else {
            body
        };
        for ch in body.chars() {
            out.push(ch);
        }
        out.entity(kind, start, extra);
        i = next;
    }
    Ok(out.finish())
}

/// The `bot_command` entity for a leading `/command[@bot]` in a user's text, if any.
pub(crate) fn command_entity(text: &str) -> Option<Value> {
    let rest = text.strip_prefix('/')?;
    let len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '@'))
        .unwrap_or(rest.len());
    if len == 0 || len > 64 {
        return None;
    }
    Some(json!({"type": "bot_command", "offset": 0, "length": 1 + utf16_len(&rest[..len])}))
}

/// Checks explicit `entities`: an array of objects with a type and a range inside the text.
pub(crate) fn check_entities(entities: &Value, text_units: usize) -> Result<(), String> {
    let Some(list) = entities.as_array() else {
        return Err("Bad Request: can't parse entities JSON object".to_owned());
    };
    for e in list {
        let (Some(_), Some(offset), Some(length)) = (
            e.get("type").and_then(Value::as_str),
            e.get("offset").and_then(Value::as_u64),
            e.get("length").and_then(Value::as_u64),
        ) else {
            return Err("Bad Request: can't parse entities: entity is invalid".to_owned());
        };
        if offset as usize + length as usize > text_units {
            return Err(
                "Bad Request: can't parse entities: entity beyond the end of text".to_owned(),
            );
        }
    }
    Ok(())
}

/// Validates a `reply_markup` object the way Telegram does, returning its error text.
pub(crate) fn check_reply_markup(markup: &Value) -> Result<(), String> {
    const BAD: &str = "Bad Request: can't parse reply keyboard markup JSON object";
    let Some(obj) = markup.as_object() else {
        return Err(BAD.to_owned());
    };
    if let Some(rows) = obj.get("inline_keyboard") {
        let rows = rows.as_array().ok_or_else(|| {
            "Bad Request: field \"inline_keyboard\" of the InlineKeyboardMarkup must be an Array"
                .to_owned()
        })?;
        for row in rows {
            let row = row.as_array().ok_or_else(|| {
                "Bad Request: can't parse inline keyboard button: InlineKeyboardButton must be an Object"
                    .to_owned()
            })?;
            for button in row {
                check_inline_button(button)?;
            }
        }
        return Ok(());
    }
    if let Some(rows) = obj.get("keyboard") {
        let rows = rows.as_array().ok_or_else(|| {
            "Bad Request: field \"keyboard\" of the ReplyKeyboardMarkup must be an Array".to_owned()
        })?;
        for row in rows {
            let row = row.as_array().ok_or_else(|| BAD.to_owned())?;
            for button in row {
                let text = button
                    .as_str()
                    .or_else(|| button.get("text").and_then(Value::as_str));
                if text.is_none_or(str::is_empty) {
                    return Err("Bad Request: keyboard button text is empty".to_owned());
                }
            }
        }
        return Ok(());
    }
    if obj.get("remove_keyboard") == Some(&Value::Bool(true))
        || obj.get("force_reply") == Some(&Value::Bool(true))
    {
        return Ok(());
    }
    Err(BAD.to_owned())
}

fn check_inline_button(button: &Value) -> Result<(), String> {
    let text = button.get("text").and_then(Value::as_str);
    if text.is_none_or(str::is_empty) {
        return Err(
            "Bad Request: can't parse inline keyboard button: Text must be non-empty".to_owned(),
        );
    }
    if let Some(data) = button.get("callback_data") {
        let data = data.as_str().unwrap_or_default();
        if data.is_empty() || data.len() > MAX_CALLBACK_DATA {
            return Err("Bad Request: BUTTON_DATA_INVALID".to_owned());
        }
        return Ok(());
    }
    if let Some(u) = button.get("url") {
        let ok = u
            .as_str()
            .and_then(|s| url::Url::parse(s).ok())
            .is_some_and(|u| matches!(u.scheme(), "http" | "https" | "tg"));
        if !ok {
            return Err("Bad Request: BUTTON_URL_INVALID".to_owned());
        }
        return Ok(());
    }
    const ACTIONS: [&str; 9] = [
        "switch_inline_query",
        "switch_inline_query_current_chat",
        "switch_inline_query_chosen_chat",
        "web_app",
        "login_url",
        "pay",
        "callback_game",
        "copy_text",
        "copy_text_button",
    ];
    if ACTIONS.iter().any(|k| button.get(k).is_some()) {
        return Ok(());
    }
    Err("Bad Request: can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(mode: ParseMode, src: &str) -> Result<(String, Vec<Value>), String> {
        mode.parse(src)
    }

    #[test]
    fn parse_modes_produce_text_and_entities() {
        let cases: &[(ParseMode, &str, &str, Value)] = &[
            (
                ParseMode::Html,
                "<b>hi</b> &lt;you&gt;",
                "hi <you>",
                json!([{"type": "bold", "offset": 0, "length": 2}]),
            ),
            (
                ParseMode::Html,
                "<a href=\"https://x.org\">x</a>",
                "x",
                json!([{"type": "text_link", "offset": 0, "length": 1, "url": "https://x.org"}]),
            ),
            (
                ParseMode::Html,
                "<pre><code class=\"language-rust\">fn</code></pre>",
                "fn",
                json!([{"type": "pre", "offset": 0, "length": 2, "language": "rust"}]),
            ),
            (
                ParseMode::MarkdownV2,
                "*bold* _it_ \\. 😀__u__",
                "bold it . 😀u",
                json!([
                    {"type": "bold", "offset": 0, "length": 4},
                    {"type": "italic", "offset": 5, "length": 2},
                    {"type": "underline", "offset": 12, "length": 1},
                ]),
            ),
            (
                ParseMode::MarkdownV2,
                "[a](https://x.org) `c.d`",
                "a c.d",
                json!([
                    {"type": "text_link", "offset": 0, "length": 1, "url": "https://x.org"},
                    {"type": "code", "offset": 2, "length": 3},
                ]),
            ),
            (
                ParseMode::Markdown,
                "*b* _i_ 1.5!",
                "b i 1.5!",
                json!([
                    {"type": "bold", "offset": 0, "length": 1},
                    {"type": "italic", "offset": 2, "length": 1},
                ]),
            ),
        ];
        for (mode, src, text, entities) in cases {
            let (t, e) = parse(*mode, src).unwrap_or_else(|e| panic!("{src}: {e}"));
            assert_eq!(&t, text, "{src}");
            assert_eq!(&Value::Array(e), entities, "{src}");
        }
    }

    #[test]
    fn parse_errors_use_telegram_wording() {
        let cases: &[(ParseMode, &str, &str)] = &[
            (
                ParseMode::Html,
                "<b>x",
                "Can't find end tag corresponding to start tag \"b\"",
            ),
            (
                ParseMode::Html,
                "<blink>x</blink>",
                "Unsupported start tag \"blink\" at byte offset 0",
            ),
            (
                ParseMode::Html,
                "a <b",
                "Unclosed start tag at byte offset 2",
            ),
            (
                ParseMode::MarkdownV2,
                "1.5",
                "Character '.' is reserved and must be escaped with the preceding '\\'",
            ),
            (
                ParseMode::MarkdownV2,
                "*x",
                "Can't find end of Bold entity at byte offset 0",
            ),
            (
                ParseMode::Markdown,
                "a _b",
                "Can't find end of the entity starting at byte offset 2",
            ),
        ];
        for (mode, src, err) in cases {
            assert_eq!(parse(*mode, src).unwrap_err(), *err, "{src}");
        }
    }

    #[test]
    fn commands_get_an_entity() {
        assert_eq!(
            command_entity("/start@my_bot now"),
            Some(json!({"type": "bot_command", "offset": 0, "length": 13}))
        );
        assert_eq!(command_entity("hello"), None);
        assert_eq!(command_entity("/ x"), None);
    }

    #[test]
    fn reply_markup_is_validated() {
        assert!(
            check_reply_markup(
                &json!({"inline_keyboard": [[{"text": "a", "callback_data": "x"}]]})
            )
            .is_ok()
        );
        assert!(check_reply_markup(&json!({"keyboard": [["a", {"text": "b"}]]})).is_ok());
        assert!(check_reply_markup(&json!({"remove_keyboard": true})).is_ok());
        assert_eq!(
            check_reply_markup(
                &json!({"inline_keyboard": [[{"text": "a", "callback_data": "x".repeat(65)}]]})
            )
            .unwrap_err(),
            "Bad Request: BUTTON_DATA_INVALID"
        );
        assert!(check_reply_markup(&json!({"inline_keyboard": [[{"text": "a"}]]})).is_err());
        assert!(check_reply_markup(&json!({"foo": 1})).is_err());
    }
}
