//! Bot API call parameters, from a query string, JSON, urlencoded or multipart body.
//!
//! Telegram accepts all four. In the form encodings every value is a string and nested objects
//! (`reply_markup`, `entities`, `reply_parameters`, `allowed_updates`, `commands`, `scope`)
//! arrive as JSON text, so the accessors accept both shapes.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::state::ApiErr;

/// A file part of a multipart request: only its metadata is kept.
#[derive(Clone, Debug)]
pub(crate) struct Upload {
    pub(crate) file_name: String,
    pub(crate) mime: Option<String>,
    pub(crate) size: u64,
}

/// The parameters of one Bot API call.
#[derive(Debug, Default)]
pub(crate) struct Params {
    pub(crate) map: Map<String, Value>,
    pub(crate) uploads: HashMap<String, Upload>,
}

impl Params {
    /// Adds `key=value` pairs of an urlencoded string (query or form body).
    pub(crate) fn extend_urlencoded(&mut self, raw: &[u8]) {
        for (k, v) in url::form_urlencoded::parse(raw) {
            self.map
                .insert(k.into_owned(), Value::String(v.into_owned()));
        }
    }

    /// Merges a JSON object body; anything but an object is a bad request.
    pub(crate) fn extend_json(&mut self, raw: &[u8]) -> Result<(), ApiErr> {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        match serde_json::from_slice::<Value>(raw) {
            Ok(Value::Object(m)) => {
                self.map.extend(m);
                Ok(())
            }
            _ => Err(ApiErr::bad("Bad Request: can't parse JSON object")),
        }
    }

    /// The raw value of `key`, if present and not JSON null.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A string parameter; numbers and booleans are given as their text.
    pub(crate) fn str(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// An integer parameter; a non-integer value is a bad request naming the field.
    pub(crate) fn i64(&self, key: &str) -> Result<Option<i64>, ApiErr> {
        let bad = || ApiErr::bad(format!("Bad Request: invalid {key} specified"));
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(bad),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad()),
            Some(_) => Err(bad()),
        }
    }

    /// A boolean parameter (`true`/`false`, `1`/`0`); absent or unparsable means false.
    pub(crate) fn bool(&self, key: &str) -> bool {
        match self.get(key) {
            Some(Value::Bool(b)) => *b,
            Some(Value::Number(n)) => n.as_i64() == Some(1),
            Some(Value::String(s)) => matches!(s.as_str(), "true" | "True" | "1"),
            _ => false,
        }
    }

    /// A JSON-object-or-array parameter, given inline or as JSON text.
    pub(crate) fn json(&self, key: &str) -> Result<Option<Value>, ApiErr> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => serde_json::from_str::<Value>(s)
                .map(Some)
                .map_err(|_| ApiErr::bad(format!("Bad Request: can't parse {key} JSON object"))),
            Some(v) => Ok(Some(v.clone())),
        }
    }

    /// The chat id: an integer, or an `@username` (which the sandbox never knows).
    pub(crate) fn chat_id(&self, key: &str) -> Result<i64, ApiErr> {
        match self.get(key) {
            None => Err(ApiErr::bad("Bad Request: chat_id is empty")),
            Some(Value::String(s)) if s.is_empty() => {
                Err(ApiErr::bad("Bad Request: chat_id is empty"))
            }
            Some(Value::Number(n)) => n.as_i64().ok_or_else(ApiErr::chat_not_found),
            Some(Value::String(s)) => s.trim().parse().map_err(|_| ApiErr::chat_not_found()),
            Some(_) => Err(ApiErr::chat_not_found()),
        }
    }
}
