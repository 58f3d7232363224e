//! Secret masking for everything botvisor prints: tokens, URL passwords, error chains.
//!
//! A leaf: settings, telemetry, storage and the CLI all use it, and it uses nothing of ours.

/// Shortest secret part we treat as a token when scanning free text for secrets.
///
/// Real tokens have 35 characters after the colon; scanning for 30 or more also catches
/// truncated or slightly different secrets without masking ordinary `12:34` times.
const MIN_SECRET_LEN: usize = 30;

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

/// Formats an error with its sources on one line, tokens masked and PostgreSQL's
/// source-position noise (sqlx appends ` at line N` of PostgreSQL's C source) removed.
pub fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    redact(&strip_positions(&line))
}

/// Removes ` at line N` and ` at character N` where they end a message or a segment of one
/// (followed by `:` or the end), as sqlx appends them to PostgreSQL errors; positions inside a
/// sentence (`at line 3, column 5` of a TOML error) stay.
fn strip_positions(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'scan: while !rest.is_empty() {
        for marker in [" at line ", " at character "] {
            if let Some(after) = rest.strip_prefix(marker) {
                let digits = after.bytes().take_while(u8::is_ascii_digit).count();
                let tail = &after[digits..];
                if digits > 0 && (tail.is_empty() || tail.starts_with(':')) {
                    rest = tail;
                    continue 'scan;
                }
            }
        }
        let next = rest.chars().next().map_or(1, char::len_utf8);
        out.push_str(&rest[..next]);
        rest = &rest[next..];
    }
    out
}

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
    fn drops_postgres_source_positions_only() {
        let cases = [
            (
                "panel database error: duplicate key value at line 123",
                "panel database error: duplicate key value",
            ),
            ("syntax error at character 15: more", "syntax error: more"),
            (
                "TOML parse error at line 1, column 5",
                "TOML parse error at line 1, column 5",
            ),
            (
                "expected value at line 1 column 2",
                "expected value at line 1 column 2",
            ),
            ("at line 7", "at line 7"),
        ];
        for (input, expected) in cases {
            assert_eq!(strip_positions(input), expected);
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
