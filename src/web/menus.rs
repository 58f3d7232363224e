//! Commands and menus edited as a form, for operators who do not write JSON: each command
//! (command, reply text key, description) and each menu (name, kind, text key, buttons with
//! their row, label key and action) is a row of fields, with one empty row to add another.
//! Saving rebuilds the manifest's core keys (`commands`, `menus`, `main_menu`, `fallback`)
//! and replaces the manifest through the same validation as the raw JSON editor and the CLI
//! ([`crate::admin::Admin::replace_manifest`]); a refusal is shown next to the field its
//! JSON path names, and nothing is stored. The raw JSON editor stays for experts.

use std::collections::BTreeMap;

use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use serde_json::{Map, Value, json};

use super::auth::Caller;
use super::i18n::{self, Tr};
use super::pages::{PageResult, csrf_of, html};
use super::{ApiError, AppState};
use crate::admin::AdminError;
use crate::admin::bots::BotView;
use crate::admin::operators::{Operator, Permission};
use crate::content::manifest::Manifest;
use crate::modules::core::{ButtonAction, CoreSection, MenuKind};

/// The manifest keys this form owns (core's section).
const CORE_KEYS: [&str; 4] = ["commands", "menus", "main_menu", "fallback"];

/// The page's routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/bots/{id}/commands", get(form_page).post(save))
}

/// One command's fields.
#[derive(Debug, Clone, Default)]
struct CommandRow {
    command: String,
    text: String,
    description: String,
    /// The field at fault (`command`, `text`, `description`) and why.
    error: Option<(String, String)>,
}

/// One button's fields.
#[derive(Debug, Clone, Default)]
struct ButtonRow {
    /// The keyboard row it sits in (1, 2, …).
    row: String,
    /// Key of the label text.
    label: String,
    /// `text:KEY`, `menu:NAME` or `back`.
    action: String,
    error: Option<String>,
}

/// One menu's fields.
#[derive(Debug, Clone, Default)]
struct MenuRow {
    name: String,
    /// `inline` or `reply`.
    kind: String,
    text: String,
    buttons: Vec<ButtonRow>,
    /// The field at fault (`name`, `text`, `buttons`) and why.
    error: Option<(String, String)>,
}

#[derive(Template)]
#[template(path = "commands.html")]
struct CommandsPage {
    t: &'static Tr,
    me: Option<Operator>,
    csrf: String,
    bot: BotView,
    commands: Vec<CommandRow>,
    menus: Vec<MenuRow>,
    main_menu: String,
    fallback: String,
    /// An error no single row owns (`main_menu`, `fallback`, or the manifest as a whole).
    error: Option<(String, String)>,
    saved: bool,
    may_edit: bool,
}

impl CommandsPage {
    /// Adds the empty rows that let an operator add a command, a button or a menu.
    fn with_blank_rows(mut self) -> Self {
        self.commands.push(CommandRow::default());
        for m in &mut self.menus {
            m.buttons.push(ButtonRow::default());
        }
        self.menus.push(MenuRow {
            kind: "inline".into(),
            buttons: vec![ButtonRow::default()],
            ..MenuRow::default()
        });
        self
    }
}

/// The form's rows for the stored core section.
fn rows_of(core: &CoreSection) -> (Vec<CommandRow>, Vec<MenuRow>) {
    let commands = core
        .commands
        .iter()
        .map(|c| CommandRow {
            command: c.command.clone(),
            text: c.text.clone(),
            description: c.description.clone(),
            error: None,
        })
        .collect();
    let menus = core
        .menus
        .iter()
        .map(|(name, m)| MenuRow {
            name: name.clone(),
            kind: match m.kind {
                MenuKind::Inline => "inline".into(),
                MenuKind::Reply => "reply".into(),
            },
            text: m.text.clone(),
            buttons: m
                .buttons
                .iter()
                .enumerate()
                .flat_map(|(r, row)| {
                    row.iter().map(move |b| ButtonRow {
                        row: (r + 1).to_string(),
                        label: b.label.clone(),
                        action: match b.action() {
                            ButtonAction::Text(t) => format!("text:{t}"),
                            ButtonAction::Menu(m) => format!("menu:{m}"),
                            ButtonAction::Back => "back".into(),
                        },
                        error: None,
                    })
                })
                .collect(),
            error: None,
        })
        .collect();
    (commands, menus)
}

/// The form's rows as submitted: fields named `c0.command`, `m1.text`, `m1.b2.label`, ….
fn rows_from(fields: &BTreeMap<String, String>) -> (Vec<CommandRow>, Vec<MenuRow>) {
    let get = |name: String| {
        fields
            .get(&name)
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let indexes = |prefix: &str, rest: &str| -> Vec<usize> {
        let mut found: Vec<usize> = fields
            .keys()
            .filter_map(|k| k.strip_prefix(prefix))
            .filter_map(|k| k.split_once(rest))
            .filter_map(|(n, _)| n.parse().ok())
            .collect();
        found.sort_unstable();
        found.dedup();
        found
    };
    let commands = indexes("c", ".")
        .into_iter()
        .map(|i| CommandRow {
            command: get(format!("c{i}.command"))
                .trim_start_matches('/')
                .to_owned(),
            text: get(format!("c{i}.text")),
            description: get(format!("c{i}.description")),
            error: None,
        })
        .collect();
    let menus = indexes("m", ".")
        .into_iter()
        .map(|k| MenuRow {
            name: get(format!("m{k}.name")),
            kind: get(format!("m{k}.kind")),
            text: get(format!("m{k}.text")),
            buttons: indexes(&format!("m{k}.b"), ".")
                .into_iter()
                .map(|j| ButtonRow {
                    row: get(format!("m{k}.b{j}.row")),
                    label: get(format!("m{k}.b{j}.label")),
                    action: get(format!("m{k}.b{j}.action")),
                    error: None,
                })
                .collect(),
            error: None,
        })
        .collect();
    (commands, menus)
}

/// Where a menu's `buttons[r][c]` came from: the form's button row.
type ButtonOrigins = BTreeMap<(usize, usize), usize>;

/// Where each JSON path of the built section points back to in the form.
#[derive(Debug, Default)]
struct Origins {
    /// `commands[i]` → the command row.
    commands: Vec<usize>,
    /// Menu name → (menu row, `buttons[r][c]` → button row).
    menus: BTreeMap<String, (usize, ButtonOrigins)>,
}

/// A refusal found while reading the form, before the manifest's own validation.
struct FormError {
    menu: usize,
    button: usize,
    reason: String,
}

/// Builds core's keys from the rows (blank rows skipped), remembering where each came from.
fn build(commands: &[CommandRow], menus: &[MenuRow]) -> Result<(Value, Value, Origins), FormError> {
    let mut origins = Origins::default();
    let mut list = Vec::new();
    for (i, c) in commands.iter().enumerate() {
        if c.command.is_empty() && c.text.is_empty() && c.description.is_empty() {
            continue;
        }
        origins.commands.push(i);
        list.push(json!({"command": c.command, "text": c.text, "description": c.description}));
    }
    let mut map = Map::new();
    for (k, m) in menus.iter().enumerate() {
        let blank = |b: &ButtonRow| b.label.is_empty() && b.action.is_empty();
        if m.name.is_empty() && m.text.is_empty() && m.buttons.iter().all(blank) {
            continue;
        }
        // Buttons grouped by their row number, in the order they were given.
        let mut rows: BTreeMap<u32, Vec<(usize, Value)>> = BTreeMap::new();
        for (j, b) in m.buttons.iter().enumerate() {
            if blank(b) {
                continue;
            }
            let bad = |reason: &str| FormError {
                menu: k,
                button: j,
                reason: reason.to_owned(),
            };
            let row: u32 = match b.row.as_str() {
                "" => 1,
                r => r
                    .parse()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| bad("the row must be a number from 1 to 100"))?,
            };
            let action = match b.action.split_once(':') {
                _ if b.action == "back" => json!({"back": true}),
                Some(("text", key)) => json!({"text": key.trim()}),
                Some(("menu", name)) => json!({"menu": name.trim()}),
                _ => return Err(bad("the action must be text:KEY, menu:NAME or back")),
            };
            let mut button = json!({"label": b.label});
            if let (Some(o), Some(a)) = (button.as_object_mut(), action.as_object()) {
                o.extend(a.clone());
            }
            rows.entry(row).or_default().push((j, button));
        }
        let mut places = BTreeMap::new();
        let buttons: Vec<Value> = rows
            .into_values()
            .enumerate()
            .map(|(r, row)| {
                Value::Array(
                    row.into_iter()
                        .enumerate()
                        .map(|(c, (j, b))| {
                            places.insert((r, c), j);
                            b
                        })
                        .collect(),
                )
            })
            .collect();
        origins.menus.insert(m.name.clone(), (k, places));
        let kind = if m.kind == "reply" { "reply" } else { "inline" };
        map.insert(
            m.name.clone(),
            json!({"kind": kind, "text": m.text, "buttons": buttons}),
        );
    }
    Ok((Value::Array(list), Value::Object(map), origins))
}

/// Reads `[N]` at the start of `s`: N and the rest.
fn index(s: &str) -> Option<(usize, &str)> {
    let s = s.strip_prefix('[')?;
    let (n, rest) = s.split_once(']')?;
    Some((n.parse().ok()?, rest))
}

/// Puts a manifest error next to the field its JSON path names; `false` when no row owns it.
fn place(
    path: &str,
    reason: &str,
    origins: &Origins,
    commands: &mut [CommandRow],
    menus: &mut [MenuRow],
) -> bool {
    if let Some((i, rest)) = path.strip_prefix("commands").and_then(index) {
        let Some(row) = origins.commands.get(i).and_then(|r| commands.get_mut(*r)) else {
            return false;
        };
        let field = rest.trim_start_matches('.');
        let field = if field.is_empty() { "command" } else { field };
        row.error = Some((field.to_owned(), reason.to_owned()));
        return true;
    }
    let Some(rest) = path.strip_prefix("menus.") else {
        return false;
    };
    // Menu names may hold dots: the longest name that prefixes the path wins.
    let Some((name, (k, places))) = origins
        .menus
        .iter()
        .filter(|(name, _)| {
            rest.strip_prefix(name.as_str())
                .is_some_and(|after| after.is_empty() || after.starts_with(['.', '[']))
        })
        .max_by_key(|(name, _)| name.len())
    else {
        return false;
    };
    let Some(menu) = menus.get_mut(*k) else {
        return false;
    };
    let after = &rest[name.len()..];
    if let Some(buttons) = after.strip_prefix(".buttons")
        && let Some((r, more)) = index(buttons)
        && let Some((c, _)) = index(more)
        && let Some(button) = places.get(&(r, c)).and_then(|j| menu.buttons.get_mut(*j))
    {
        button.error = Some(reason.to_owned());
        return true;
    }
    let field = match after.trim_start_matches('.') {
        "" => "name",
        f if f.starts_with("buttons") => "buttons",
        f => f,
    };
    menu.error = Some((field.to_owned(), reason.to_owned()));
    true
}

async fn page_for(
    c: &Caller,
    t: &'static Tr,
    id: i64,
) -> Result<CommandsPage, super::pages::PageError> {
    c.check(Permission::ReadBot(id))?;
    let bot = c.admin.show_bot(id).await?;
    let manifest = Manifest::from_value(&c.admin.manifest(id).await?).map_err(AdminError::from)?;
    let core: CoreSection = manifest.section(&CORE_KEYS).map_err(AdminError::from)?;
    let (commands, menus) = rows_of(&core);
    Ok(CommandsPage {
        t,
        me: Some(c.operator.clone()),
        csrf: csrf_of(c),
        bot,
        commands,
        menus,
        main_menu: core.main_menu.unwrap_or_default(),
        fallback: core.fallback.unwrap_or_default(),
        error: None,
        saved: false,
        may_edit: c.operator.check(Permission::EditBot(id)).is_ok(),
    })
}

#[derive(Debug, serde::Deserialize)]
struct SavedQuery {
    saved: Option<String>,
}

async fn form_page(
    c: Caller,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<SavedQuery>,
) -> PageResult {
    let mut page = page_for(&c, i18n::choose(&headers), id).await?;
    page.saved = q.saved.is_some();
    Ok(html(&page.with_blank_rows()))
}

async fn save(
    c: Caller,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> PageResult {
    let fields: BTreeMap<String, String> = pairs.into_iter().collect();
    c.check_csrf(fields.get("csrf").map_or("", String::as_str))?;
    c.check(Permission::EditBot(id))?;
    let t = i18n::choose(&headers);
    let mut page = page_for(&c, t, id).await?;
    let (mut commands, mut menus) = rows_from(&fields);
    let main_menu = fields.get("main_menu").map_or("", |v| v.trim()).to_owned();
    let fallback = fields.get("fallback").map_or("", |v| v.trim()).to_owned();
    let refused = match build(&commands, &menus) {
        Err(e) => {
            if let Some(b) = menus
                .get_mut(e.menu)
                .and_then(|m| m.buttons.get_mut(e.button))
            {
                b.error = Some(e.reason);
            }
            Some(None)
        }
        Ok((list, map, origins)) => {
            let mut manifest = c.admin.manifest(id).await?;
            let object = manifest.as_object_mut().ok_or_else(|| {
                ApiError::new(StatusCode::CONFLICT, "the stored manifest is not an object")
            })?;
            for (key, value) in [
                ("commands", list),
                ("menus", map),
                ("main_menu", Value::from(main_menu.clone())),
                ("fallback", Value::from(fallback.clone())),
            ] {
                let empty = match &value {
                    Value::String(s) => s.is_empty(),
                    Value::Array(a) => a.is_empty(),
                    Value::Object(o) => o.is_empty(),
                    _ => false,
                };
                if empty {
                    object.remove(key);
                } else {
                    object.insert(key.to_owned(), value);
                }
            }
            match c.admin.replace_manifest(id, &manifest.to_string()).await {
                Ok(_) => None,
                Err(AdminError::Manifest(m)) => {
                    if place(&m.path, &m.reason, &origins, &mut commands, &mut menus) {
                        Some(None)
                    } else {
                        Some(Some((m.path.clone(), m.reason.clone())))
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    match refused {
        None => Ok(Redirect::to(&format!("/bots/{id}/commands?saved=1")).into_response()),
        Some(general) => {
            // The submitted blank rows go; with_blank_rows adds one of each again.
            commands.retain(|c| {
                !(c.command.is_empty() && c.text.is_empty() && c.description.is_empty())
            });
            for m in &mut menus {
                m.buttons
                    .retain(|b| !(b.label.is_empty() && b.action.is_empty() && b.error.is_none()));
            }
            menus.retain(|m| !(m.name.is_empty() && m.text.is_empty() && m.buttons.is_empty()));
            page.commands = commands;
            page.menus = menus;
            page.main_menu = main_menu;
            page.fallback = fallback;
            page.error = general;
            let page = page.with_blank_rows();
            Ok((StatusCode::UNPROCESSABLE_ENTITY, html(&page)).into_response())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_form_becomes_core_keys_and_blank_rows_are_skipped() {
        let (commands, menus) = rows_from(&fields(&[
            ("c0.command", "/prices"),
            ("c0.text", "prices"),
            ("c0.description", "Our prices"),
            ("c1.command", ""),
            ("c1.text", ""),
            ("c1.description", ""),
            ("m0.name", "main"),
            ("m0.kind", "reply"),
            ("m0.text", "menu_main"),
            ("m0.b0.row", "2"),
            ("m0.b0.label", "btn_back"),
            ("m0.b0.action", "back"),
            ("m0.b1.row", "1"),
            ("m0.b1.label", "btn_prices"),
            ("m0.b1.action", "text:prices"),
            ("m0.b2.row", ""),
            ("m0.b2.label", ""),
            ("m0.b2.action", ""),
            ("m1.name", ""),
            ("m1.text", ""),
        ]));
        let Ok((list, map, origins)) = build(&commands, &menus) else {
            panic!("a valid form");
        };
        assert_eq!(
            list,
            json!([{"command": "prices", "text": "prices", "description": "Our prices"}])
        );
        assert_eq!(
            map,
            json!({"main": {"kind": "reply", "text": "menu_main", "buttons": [
                [{"label": "btn_prices", "text": "prices"}],
                [{"label": "btn_back", "back": true}]
            ]}})
        );
        assert_eq!(origins.commands, [0]);
        assert_eq!(
            origins.menus["main"].1[&(1, 0)],
            0,
            "buttons[1][0] is form button 0"
        );
    }

    #[test]
    fn a_bad_action_is_refused_at_its_button() {
        let (commands, menus) = rows_from(&fields(&[
            ("m0.name", "main"),
            ("m0.text", "t"),
            ("m0.b0.label", "l"),
            ("m0.b0.action", "open the door"),
        ]));
        let Err(e) = build(&commands, &menus) else {
            panic!("refused");
        };
        assert_eq!((e.menu, e.button), (0, 0));
        assert!(e.reason.contains("text:KEY, menu:NAME or back"));
    }

    #[test]
    fn manifest_errors_land_next_to_their_field() {
        let (mut commands, mut menus) = rows_from(&fields(&[
            ("c0.command", ""),
            ("c1.command", "x"),
            ("c1.text", "x"),
            ("m0.name", "a.b"),
            ("m0.text", "t"),
            ("m0.b0.label", "l"),
            ("m0.b0.action", "menu:nowhere"),
        ]));
        let Ok((_, _, origins)) = build(&commands, &menus) else {
            panic!("built");
        };
        let cases = [
            ("commands[0].description", true),
            ("menus.a.b.buttons[0][0].menu", true),
            ("menus.a.b.text", true),
            ("main_menu", false),
            ("commands[5].text", false),
        ];
        for (path, placed) in cases {
            assert_eq!(
                place(path, "bad", &origins, &mut commands, &mut menus),
                placed,
                "{path}"
            );
        }
        assert_eq!(
            commands[1].error,
            Some(("description".into(), "bad".into())),
            "commands[0] is form row 1 (row 0 was blank)"
        );
        assert_eq!(menus[0].buttons[0].error.as_deref(), Some("bad"));
        assert_eq!(menus[0].error, Some(("text".into(), "bad".into())));
    }
}
