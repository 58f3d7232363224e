//! Language codes as Telegram reports them (`en`, `pt-br`) and as texts are stored.

/// Whether `s` looks like an IETF language code Telegram reports (`en`, `pt-br`).
pub fn is_language_code(s: &str) -> bool {
    (2..=10).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}
