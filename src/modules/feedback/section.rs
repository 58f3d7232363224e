//! The feedback module's manifest section:
//! `{"feedback": {"admin_chat", "mode", "anonymous_admins", "auto_reply", "hours"}}`.

use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveTime, Utc, Weekday};
use serde::{Deserialize, Serialize};

use crate::content::manifest::{ManifestError, check_text_key};

/// The top-level manifest keys the module owns.
pub const KEYS: &[&str] = &["feedback"];

/// The module's section: absent means the module is off for the bot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackSection {
    /// The `feedback` object.
    #[serde(default)]
    pub feedback: Option<FeedbackSpec>,
}

/// How users' messages reach the admin chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A forum supergroup: one topic per user; anything an admin writes in it goes to the user.
    #[default]
    Topics,
    /// Any group: a copy with a header naming the user; an admin answers by replying to it.
    Replies,
}

/// Feedback settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackSpec {
    /// The group (a forum supergroup in `topics` mode) where admins read and answer.
    pub admin_chat: i64,
    /// `topics` (default) or `replies`.
    #[serde(default)]
    pub mode: Mode,
    /// Whether answers reach users without the admin's name (default true); false puts the
    /// admin's first name above each answer.
    #[serde(default = "yes")]
    pub anonymous_admins: bool,
    /// Key of the text a user gets, once per conversation, when writing outside `hours` (at
    /// any time when there are no hours).
    #[serde(default)]
    pub auto_reply: Option<String>,
    /// When admins answer.
    #[serde(default)]
    pub hours: Option<Hours>,
}

fn yes() -> bool {
    true
}

/// Working hours: `{"timezone": "Europe/Berlin", "days": ["mon", …], "from": "09:00",
/// "to": "18:00"}`; `to` before `from` spans midnight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hours {
    /// An IANA time zone name (default `UTC`).
    #[serde(default = "utc")]
    pub timezone: String,
    /// Working days, `mon` … `sun` (default every day).
    #[serde(default)]
    pub days: Vec<String>,
    /// Opening time, `HH:MM`.
    pub from: String,
    /// Closing time, `HH:MM`.
    pub to: String,
}

fn utc() -> String {
    "UTC".into()
}

const DAYS: [(&str, Weekday); 7] = [
    ("mon", Weekday::Mon),
    ("tue", Weekday::Tue),
    ("wed", Weekday::Wed),
    ("thu", Weekday::Thu),
    ("fri", Weekday::Fri),
    ("sat", Weekday::Sat),
    ("sun", Weekday::Sun),
];

fn time(s: &str) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(s, "%H:%M").ok()
}

impl FeedbackSpec {
    /// Checks the values serde cannot: a group id, a zone, times, days, text keys.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.admin_chat >= 0 {
            return Err(ManifestError::new(
                "feedback.admin_chat",
                "must be a group's chat id (negative, e.g. -1001234567890); add the bot to the \
                 group as an admin",
            ));
        }
        if let Some(key) = &self.auto_reply {
            check_text_key("feedback.auto_reply", key)?;
        }
        if let Some(h) = &self.hours {
            if chrono_tz::Tz::from_str(&h.timezone).is_err() {
                return Err(ManifestError::new(
                    "feedback.hours.timezone",
                    "must be an IANA time zone such as `Europe/Berlin` or `UTC`",
                ));
            }
            for (i, d) in h.days.iter().enumerate() {
                if !DAYS.iter().any(|(n, _)| n == d) {
                    return Err(ManifestError::new(
                        format!("feedback.hours.days[{i}]"),
                        "must be one of mon, tue, wed, thu, fri, sat, sun",
                    ));
                }
            }
            for (field, value) in [("from", &h.from), ("to", &h.to)] {
                if time(value).is_none() {
                    return Err(ManifestError::new(
                        format!("feedback.hours.{field}"),
                        "must be a time `HH:MM` (24-hour clock)",
                    ));
                }
            }
            if h.from == h.to {
                return Err(ManifestError::new(
                    "feedback.hours.to",
                    "must differ from `from`",
                ));
            }
            if self.auto_reply.is_none() {
                return Err(ManifestError::new(
                    "feedback.auto_reply",
                    "is required with `hours`: it is what users get outside them",
                ));
            }
        }
        Ok(())
    }

    /// Whether a message at `at` gets the auto-reply (outside the hours, or always without
    /// hours), if there is one.
    pub fn outside_hours(&self, at: DateTime<Utc>) -> bool {
        match &self.hours {
            None => true,
            Some(h) => !h.open_at(at),
        }
    }
}

impl Hours {
    /// Whether `at` falls within the working hours (validated at load).
    pub fn open_at(&self, at: DateTime<Utc>) -> bool {
        let Ok(tz) = chrono_tz::Tz::from_str(&self.timezone) else {
            return true;
        };
        let (Some(from), Some(to)) = (time(&self.from), time(&self.to)) else {
            return true;
        };
        let local = at.with_timezone(&tz);
        let now = local.time();
        // Past midnight in an overnight span, the hours began on the day before.
        let (open, day) = if from < to {
            (now >= from && now < to, local.weekday())
        } else if now >= from {
            (true, local.weekday())
        } else {
            (now < to, local.weekday().pred())
        };
        let working_day = self.days.is_empty()
            || self
                .days
                .iter()
                .any(|d| DAYS.iter().any(|(n, w)| n == d && *w == day));
        open && working_day
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::modules::Registry;

    fn parse(json: &str) -> Result<Option<FeedbackSpec>, ManifestError> {
        let manifest = Registry::standard().parse_manifest(json)?;
        Ok(manifest.section::<FeedbackSection>(KEYS)?.feedback)
    }

    #[test]
    fn errors_name_the_json_path() {
        let cases = [
            (r#"{"feedback": {}}"#, "feedback", "admin_chat"),
            (
                r#"{"feedback": {"admin_chat": 5}}"#,
                "feedback.admin_chat",
                "negative",
            ),
            (
                r#"{"feedback": {"admin_chat": -1, "mode": "threads"}}"#,
                "feedback.mode",
                "unknown variant",
            ),
            (
                r#"{"feedback": {"admin_chat": -1, "auto_reply": "Away!"}}"#,
                "feedback.auto_reply",
                "text key",
            ),
            (
                r#"{"feedback": {"admin_chat": -1, "auto_reply": "away", "hours": {"timezone": "Mars/Base", "from": "09:00", "to": "18:00"}}}"#,
                "feedback.hours.timezone",
                "IANA",
            ),
            (
                r#"{"feedback": {"admin_chat": -1, "auto_reply": "away", "hours": {"days": ["monday"], "from": "09:00", "to": "18:00"}}}"#,
                "feedback.hours.days[0]",
                "mon",
            ),
            (
                r#"{"feedback": {"admin_chat": -1, "auto_reply": "away", "hours": {"from": "9am", "to": "18:00"}}}"#,
                "feedback.hours.from",
                "HH:MM",
            ),
            (
                r#"{"feedback": {"admin_chat": -1, "hours": {"from": "09:00", "to": "18:00"}}}"#,
                "feedback.auto_reply",
                "required",
            ),
            (
                r#"{"feedback": {"admin_chat": -1, "colour": 1}}"#,
                "feedback.colour",
                "unknown field",
            ),
        ];
        for (json, path, reason) in cases {
            let e = parse(json).and_then(|s| s.unwrap().validate()).unwrap_err();
            assert_eq!(e.path, path, "{json}: {e}");
            assert!(e.reason.contains(reason), "{json}: {e}");
        }
        let ok = parse(r#"{"feedback": {"admin_chat": -100}}"#)
            .unwrap()
            .unwrap();
        assert_eq!((ok.mode, ok.anonymous_admins), (Mode::Topics, true));
        assert_eq!(parse("{}").unwrap(), None);
    }

    #[test]
    fn hours_follow_the_zone_the_days_and_midnight() {
        let hours = |days: &[&str], from: &str, to: &str| Hours {
            timezone: "Europe/Berlin".into(),
            days: days.iter().map(|d| d.to_string()).collect(),
            from: from.into(),
            to: to.into(),
        };
        // 2026-01-05 is a Monday; Berlin is UTC+1 in January.
        let at = |d: u32, h: u32, m: u32| Utc.with_ymd_and_hms(2026, 1, d, h, m, 0).unwrap();
        let office = hours(&["mon", "tue", "wed", "thu", "fri"], "09:00", "18:00");
        let cases = [
            (&office, at(5, 8, 0), true),    // 09:00 Monday in Berlin
            (&office, at(5, 7, 59), false),  // 08:59
            (&office, at(5, 17, 0), false),  // 18:00: closed
            (&office, at(10, 10, 0), false), // Saturday
        ];
        for (h, t, open) in cases {
            assert_eq!(h.open_at(t), open, "{t}");
        }
        let night = hours(&["fri"], "22:00", "06:00");
        assert!(night.open_at(at(9, 22, 0))); // Friday 23:00
        assert!(night.open_at(at(10, 2, 0))); // Saturday 03:00, Friday's night
        assert!(!night.open_at(at(11, 2, 0))); // Sunday 03:00 belongs to Saturday
        assert!(!night.open_at(at(9, 12, 0)));
    }
}
