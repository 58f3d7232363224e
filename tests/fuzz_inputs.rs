//! Every input fuzzed: property tests (proptest) for the token parser, secret names and
//! values, manifests (random JSON shapes, deep nesting, 1 MB documents), text values and
//! placeholders (UTF-16 lengths, control and bidi characters, unpaired surrogates), settings
//! files and the update intake (random mutations of real updates). Each property is "a clear
//! error or a valid value, never a panic". Writes are covered where they happen: every
//! validation here runs before the store is called (docs/security.md lists the table).
//!
//! Case counts are kept small so `scripts/test.sh` stays fast; `PROPTEST_CASES=N` raises them
//! for a longer run.

use std::path::Path;

use botvisor::content::texts::{Vars, render, utf16_len, validate};
use botvisor::modules::Registry;
use botvisor::settings::Settings;
use botvisor::token::BotToken;
use proptest::prelude::*;

/// Cases per property: `PROPTEST_CASES` when set, else 64.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Characters that break naive handling: controls, bidi overrides, zero-width joiners,
/// astral-plane emoji (two UTF-16 units), combining marks, the replacement character.
fn nasty_char() -> impl Strategy<Value = char> {
    prop_oneof![
        any::<char>(),
        prop::sample::select(vec![
            '\0',
            '\u{7}',
            '\n',
            '\t',
            '\r',
            '\u{1b}',
            '\u{7f}',
            '\u{202e}',
            '\u{202d}',
            '\u{2066}',
            '\u{200d}',
            '\u{feff}',
            '\u{1f600}',
            '\u{10ffff}',
            '\u{301}',
            '\u{fffd}',
            '{',
            '}',
            ':',
            '"',
            '\\',
        ]),
    ]
}

fn nasty_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(nasty_char(), 0..max).prop_map(|v| v.into_iter().collect())
}

/// Random JSON values: scalars, strings with nasty characters, arrays and objects, nested.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        nasty_string(20).prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(vec![
                        "default_language".to_string(),
                        "menu".into(),
                        "history".into(),
                        "commands".into(),
                        "buttons".into(),
                        "text".into(),
                        "retention_days".into(),
                    ]),
                    nasty_string(8),
                ],
                inner,
                0..8
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(config())]

    /// The token parser: any string gives a token or an error that never echoes the input.
    #[test]
    fn token_parser_never_panics_nor_echoes(raw in prop_oneof![
        nasty_string(60),
        "[0-9]{1,22}:[A-Za-z0-9_-]{0,40}",
        "[0-9]{1,12}:[A-Za-z0-9_!-]{35}",
    ]) {
        match BotToken::parse(&raw) {
            Ok(t) => {
                let secret = raw.trim().split_once(':').unwrap().1;
                let shown = format!("{t} {t:?}");
                prop_assert!(!shown.contains(secret));
                prop_assert_eq!(t.expose(), raw.trim());
            }
            Err(e) => {
                let secret = raw.split_once(':').map_or("", |(_, s)| s);
                let message = e.to_string();
                prop_assert!(secret.len() < 4 || !message.contains(secret), "{}", message);
            }
        }
    }

    /// Secret names and values: accepted or refused with a message that never holds the value.
    #[test]
    fn secret_names_and_values_are_checked_without_echo(name in nasty_string(70), value in nasty_string(40)) {
        let _ = botvisor::admin::secrets::validate_secret_name(&name);
        if let Err(e) = botvisor::admin::secrets::validate_secret_value(&value) {
            prop_assert!(value.chars().count() < 4 || !e.to_string().contains(&value));
        }
    }

    /// Manifests of random shapes: a manifest or an error naming a JSON path, never a panic.
    #[test]
    fn manifests_of_any_shape_parse_or_fail_cleanly(v in json_value()) {
        let registry = Registry::standard();
        let text = v.to_string();
        match registry.parse_manifest(&text) {
            Ok(m) => {
                // A valid manifest round-trips through its stored form.
                let again = registry.parse_manifest(&m.to_value().to_string());
                let error = again.err().map(|e| e.to_string());
                prop_assert!(error.is_none(), "{:?}", error);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        // Cut anywhere, it is still an error, not a panic.
        let cut = text.char_indices().map(|(i, _)| i).nth(text.chars().count() / 2).unwrap_or(0);
        let _ = registry.parse_manifest(&text[..cut]);
    }

    /// Text values: validation and rendering never panic, and an accepted value fits Telegram's
    /// 4096 UTF-16 units with no control character but newline and tab.
    #[test]
    fn texts_validate_and_render_without_panics(value in nasty_string(300), key in "[a-z_]{1,12}") {
        match validate(&key, "en", &value) {
            Ok(()) => {
                prop_assert!(utf16_len(&value) <= 4096);
                prop_assert!(!value.chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        let vars = Vars { first_name: "\u{202e}Ann", username: "", bot_name: "{first_name}", panel_name: "p" };
        let _ = render(&value, &vars);
    }

    /// Texts documents with unpaired surrogates and odd shapes: parsed or refused.
    #[test]
    fn texts_documents_with_surrogates_parse_or_fail(v in json_value(), lone in 0xd800u32..0xe000) {
        let _ = botvisor::admin::texts::parse_texts(&v.to_string(), botvisor::admin::texts::TextsFormat::Json, "en");
        let doc = format!("{{\"start\": \"a\\u{lone:04x}b\"}}");
        let _ = botvisor::admin::texts::parse_texts(&doc, botvisor::admin::texts::TextsFormat::Json, "en");
        let _ = botvisor::admin::texts::parse_texts(&doc, botvisor::admin::texts::TextsFormat::Toml, "en");
    }

    /// Settings files of random content: settings or an error, never a panic.
    #[test]
    fn settings_files_load_or_fail_cleanly(body in prop_oneof![
        nasty_string(200),
        "\\[(panel|bot_database|telegram|supervisor|log|secrets)\\]\n[a-z_]{1,24} = (\"[^\"\n]{0,20}\"|[0-9]{1,20}|true|-1)\n",
    ]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("botvisor.toml");
        std::fs::write(&path, &body).unwrap();
        let env = [("BOTVISOR_PANEL_URL".to_string(), "postgres://u@h/p".to_string())].into();
        let _ = Settings::load(Some(&path), &env);
    }

    /// The update intake: random mutations of real updates are parsed or rejected, one by
    /// one, never with a panic escaping.
    #[test]
    fn mutated_updates_never_panic_the_intake(
        file in 0usize..1000,
        cuts in prop::collection::vec((any::<prop::sample::Index>(), nasty_string(6)), 1..4),
    ) {
        let fixtures = fixtures();
        let mut text = fixtures[file % fixtures.len()].clone();
        for (at, insert) in cuts {
            let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
            let i = boundaries[at.index(boundaries.len())];
            let j = boundaries[(at.index(boundaries.len()) + 3).min(boundaries.len() - 1)].max(i);
            text.replace_range(i..j, &insert);
        }
        let _ = botvisor::runtime::inbox::parse_for_handlers(&text);
    }
}

/// The real updates of `tests/fixtures/updates/`.
fn fixtures() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/updates");
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| String::from_utf8_lossy(&std::fs::read(e.unwrap().path()).unwrap()).into_owned())
        .collect();
    out.sort();
    assert!(!out.is_empty());
    out
}

#[test]
fn deep_and_huge_manifests_are_refused_or_read_without_a_panic() {
    let registry = Registry::standard();
    // 10,000 levels of nesting: serde_json's recursion limit makes it an error.
    let deep = format!("{{\"x\": {}{}}}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(registry.parse_manifest(&deep).is_err());
    // A 1 MB document: a clear error (unknown key), not a panic or a hang.
    let big = format!("{{\"x\": \"{}\"}}", "a".repeat(1 << 20));
    let e = registry.parse_manifest(&big).unwrap_err();
    assert!(e.to_string().contains('x'), "{e}");
    // A 1 MB texts document is refused as a whole or read whole.
    let texts = format!("{{\"start\": \"{}\"}}", "é".repeat(1 << 19));
    let parsed = botvisor::admin::texts::parse_texts(
        &texts,
        botvisor::admin::texts::TextsFormat::Json,
        "en",
    )
    .unwrap();
    assert!(validate(&parsed[0].0, &parsed[0].1, &parsed[0].2).is_err());
}
