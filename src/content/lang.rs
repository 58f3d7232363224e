//! Language codes as Telegram reports them (`en`, `pt-br`) and as texts are stored.

/// Whether `s` is an IETF-like language code as Telegram reports it (`en`, `pt-br`): a
/// primary subtag of 2–3 lowercase letters, then optional `-` subtags of 2–8 lowercase
/// letters or digits.
pub fn is_language_code(s: &str) -> bool {
    let mut subtags = s.split('-');
    let primary = subtags.next().unwrap_or_default();
    (2..=3).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_lowercase())
        && subtags.all(|t| {
            (2..=8).contains(&t.len())
                && t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ietf_like_codes_only() {
        for good in [
            "en",
            "ru",
            "pt-br",
            "zh-hans",
            "es-419",
            "ast",
            "sr-latn-rs",
        ] {
            assert!(is_language_code(good), "{good}");
        }
        for bad in [
            "",
            "e",
            "russian",
            "english",
            "EN",
            "pt-BR",
            "pt_br",
            "pt-",
            "-en",
            "en--us",
            "en-x",
            "en-abcdefghi",
            "1n",
            "ру",
        ] {
            assert!(!is_language_code(bad), "{bad}");
        }
    }
}
