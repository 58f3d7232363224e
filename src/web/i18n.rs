//! The panel's words in English and Russian (the old system's operators are Russian-speaking).
//!
//! The language is the `lang` cookie (set by the switch in every page's header), else the
//! first of `Accept-Language` we speak, else English. Error messages from the service layer
//! stay in English, as the CLI prints them.

use axum::http::HeaderMap;

use super::auth::cookie;

/// The cookie holding the chosen language.
pub const LANG_COOKIE: &str = "botvisor_lang";

/// Every phrase of the pages.
#[derive(Debug)]
pub struct Tr {
    /// The code (`en`, `ru`).
    pub code: &'static str,
    /// The other language's code and name, for the switch.
    pub other_code: &'static str,
    /// The other language's name.
    pub other_name: &'static str,
    pub sign_in: &'static str,
    pub sign_out: &'static str,
    pub login: &'static str,
    pub password: &'static str,
    pub bots: &'static str,
    pub operators: &'static str,
    pub audit: &'static str,
    pub search: &'static str,
    pub all_states: &'static str,
    pub filter: &'static str,
    pub name: &'static str,
    pub state: &'static str,
    pub enabled: &'static str,
    pub token: &'static str,
    pub username: &'static str,
    pub last_error: &'static str,
    pub texts: &'static str,
    pub yes: &'static str,
    pub no: &'static str,
    pub no_bots: &'static str,
    pub no_texts: &'static str,
    pub add_bot: &'static str,
    pub add: &'static str,
    pub save: &'static str,
    pub saved: &'static str,
    pub enable: &'static str,
    pub disable: &'static str,
    pub status: &'static str,
    pub key: &'static str,
    pub language: &'static str,
    pub value: &'static str,
    pub preview: &'static str,
    pub new_text: &'static str,
    pub manifest: &'static str,
    pub validate: &'static str,
    pub valid: &'static str,
    pub error_at: &'static str,
    pub versions: &'static str,
    pub version: &'static str,
    pub when: &'static str,
    pub who: &'static str,
    pub change: &'static str,
    pub rollback: &'static str,
    pub deleted: &'static str,
    pub no_versions: &'static str,
    pub users: &'static str,
    pub blocked: &'static str,
    pub last_seen: &'static str,
    pub no_users: &'static str,
    pub history: &'static str,
    pub no_messages: &'static str,
    pub role: &'static str,
    pub action: &'static str,
    pub target: &'static str,
    pub before: &'static str,
    pub after: &'static str,
    pub bot: &'static str,
    pub detail: &'static str,
    pub coming: &'static str,
}

/// English.
pub const EN: Tr = Tr {
    code: "en",
    other_code: "ru",
    other_name: "Русский",
    sign_in: "Sign in",
    sign_out: "Sign out",
    login: "Login",
    password: "Password",
    bots: "Bots",
    operators: "Operators",
    audit: "Audit log",
    search: "Search by name",
    all_states: "All states",
    filter: "Filter",
    name: "Name",
    state: "State",
    enabled: "Enabled",
    token: "Token",
    username: "Username",
    last_error: "Last error",
    texts: "Texts",
    yes: "yes",
    no: "no",
    no_bots: "No bots yet. Add the first one with its BotFather token.",
    no_texts: "No texts yet: add one below.",
    add_bot: "Add a bot",
    add: "Add",
    save: "Save",
    saved: "Saved",
    enable: "Enable",
    disable: "Disable",
    status: "Status",
    key: "Key",
    language: "Language",
    value: "Value",
    preview: "Preview",
    new_text: "New text",
    manifest: "Manifest",
    validate: "Validate",
    valid: "The manifest is valid.",
    error_at: "Error at",
    versions: "Versions",
    version: "Version",
    when: "When",
    who: "Who",
    change: "Change",
    rollback: "Roll back",
    deleted: "(deleted)",
    no_versions: "No changes recorded yet.",
    users: "Users",
    blocked: "blocked",
    last_seen: "Last seen",
    no_users: "No users yet.",
    history: "Chat history",
    no_messages: "No messages.",
    role: "Role",
    action: "Action",
    target: "Target",
    before: "Before",
    after: "After",
    bot: "Bot",
    detail: "Detail",
    coming: "Broadcasts and schedules appear here once those modules land.",
};

/// Russian.
pub const RU: Tr = Tr {
    code: "ru",
    other_code: "en",
    other_name: "English",
    sign_in: "Войти",
    sign_out: "Выйти",
    login: "Логин",
    password: "Пароль",
    bots: "Боты",
    operators: "Операторы",
    audit: "Журнал действий",
    search: "Поиск по имени",
    all_states: "Все состояния",
    filter: "Показать",
    name: "Имя",
    state: "Состояние",
    enabled: "Включён",
    token: "Токен",
    username: "Юзернейм",
    last_error: "Последняя ошибка",
    texts: "Тексты",
    yes: "да",
    no: "нет",
    no_bots: "Ботов пока нет. Добавьте первого с токеном от BotFather.",
    no_texts: "Текстов пока нет: добавьте ниже.",
    add_bot: "Добавить бота",
    add: "Добавить",
    save: "Сохранить",
    saved: "Сохранено",
    enable: "Включить",
    disable: "Выключить",
    status: "Статус",
    key: "Ключ",
    language: "Язык",
    value: "Значение",
    preview: "Предпросмотр",
    new_text: "Новый текст",
    manifest: "Манифест",
    validate: "Проверить",
    valid: "Манифест корректен.",
    error_at: "Ошибка в",
    versions: "Версии",
    version: "Версия",
    when: "Когда",
    who: "Кто",
    change: "Изменение",
    rollback: "Откатить",
    deleted: "(удалён)",
    no_versions: "Изменений пока нет.",
    users: "Пользователи",
    blocked: "заблокировал",
    last_seen: "Был(а)",
    no_users: "Пользователей пока нет.",
    history: "История чата",
    no_messages: "Сообщений нет.",
    role: "Роль",
    action: "Действие",
    target: "Объект",
    before: "Было",
    after: "Стало",
    bot: "Бот",
    detail: "Подробности",
    coming: "Рассылки и расписания появятся здесь, когда будут готовы эти модули.",
};

/// The words for a language code (English for anything but `ru`).
pub fn for_code(code: &str) -> &'static Tr {
    if code == "ru" { &RU } else { &EN }
}

/// The language of a request: the cookie, else `Accept-Language`, else English.
pub fn choose(headers: &HeaderMap) -> &'static Tr {
    if let Some(code) = cookie(headers, LANG_COOKIE) {
        return for_code(&code);
    }
    let accept = headers
        .get(axum::http::header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    for part in accept.split(',') {
        let tag = part
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if tag.starts_with("ru") {
            return &RU;
        }
        if tag.starts_with("en") {
            return &EN;
        }
    }
    &EN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_wins_then_accept_language() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(
                    axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            m
        };
        assert_eq!(choose(&h(&[])).code, "en");
        assert_eq!(
            choose(&h(&[("accept-language", "ru-RU,ru;q=0.9")])).code,
            "ru"
        );
        assert_eq!(
            choose(&h(&[("accept-language", "de,en;q=0.5,ru;q=0.1")])).code,
            "en"
        );
        let both = h(&[("accept-language", "ru"), ("cookie", "botvisor_lang=en")]);
        assert_eq!(choose(&both).code, "en");
    }
}
