//! An OpenAI-compatible `POST /v1/chat/completions` for tests and demos.
//!
//! The model is deterministic: it answers `echo: <last user message>`, cut to `max_tokens`
//! (or `max_completion_tokens`) words with `finish_reason: "length"`. Every request is
//! recorded with the API key of its `Authorization: Bearer` header and the status it got
//! (`GET /sandbox/ai/requests`); faults add latency or answer errors in OpenAI's shape
//! (`POST /sandbox/ai/faults`). The key never reaches the log.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::SandboxError;
use super::control::{Reply, bad, body};
use super::state::{Shared, lock, now};
use super::types::{AiFault, AiRequest};

/// Most requests remembered; older ones are forgotten.
const MAX_REQUESTS: usize = 10_000;

#[derive(Debug)]
struct FaultRec {
    fault: AiFault,
    remaining: Option<u32>,
}

#[derive(Debug, Default)]
struct Inner {
    requests: VecDeque<AiRequest>,
    faults: Vec<FaultRec>,
    next_seq: u64,
}

/// Requests received and faults to apply.
#[derive(Debug, Default)]
pub(crate) struct AiState {
    inner: Mutex<Inner>,
}

impl AiState {
    pub(crate) fn add_fault(&self, fault: AiFault) -> Result<usize, SandboxError> {
        if !(200..=599).contains(&fault.status) {
            return Err(SandboxError::InvalidInput(format!(
                "status {} must be an HTTP status between 200 and 599",
                fault.status
            )));
        }
        if fault.status == 200 && fault.delay_ms.is_none() {
            return Err(SandboxError::InvalidInput(
                "a fault with status 200 needs delay_ms (it only adds latency)".to_owned(),
            ));
        }
        if fault.count == Some(0) {
            return Err(SandboxError::InvalidInput(
                "count must be at least 1 (leave it out for \"until cleared\")".to_owned(),
            ));
        }
        let mut inner = lock(&self.inner);
        inner.faults.push(FaultRec {
            remaining: fault.count,
            fault,
        });
        Ok(inner.faults.len())
    }

    pub(crate) fn clear_faults(&self) -> usize {
        std::mem::take(&mut lock(&self.inner).faults).len()
    }

    /// Recorded requests, oldest first; only those made with `key` when given.
    pub(crate) fn requests(&self, key: Option<&str>) -> Vec<AiRequest> {
        lock(&self.inner)
            .requests
            .iter()
            .filter(|r| key.is_none_or(|k| r.key.as_deref() == Some(k)))
            .cloned()
            .collect()
    }

    pub(crate) fn clear_requests(&self) -> usize {
        std::mem::take(&mut lock(&self.inner).requests).len()
    }

    /// The first fault, consuming one of its uses.
    fn take_fault(&self) -> Option<AiFault> {
        let mut inner = lock(&self.inner);
        let rec = inner.faults.first_mut()?;
        let fault = rec.fault.clone();
        if let Some(n) = rec.remaining.as_mut() {
            *n -= 1;
            if *n == 0 {
                inner.faults.remove(0);
            }
        }
        Some(fault)
    }

    /// Records a request; returns its `seq`.
    fn record(&self, key: Option<String>, body: Value, status: u16) -> u64 {
        let mut inner = lock(&self.inner);
        inner.next_seq += 1;
        let seq = inner.next_seq;
        inner.requests.push_back(AiRequest {
            seq,
            key,
            body,
            status,
        });
        while inner.requests.len() > MAX_REQUESTS {
            inner.requests.pop_front();
        }
        seq
    }
}

/// An error answer in OpenAI's shape.
struct AiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    code: Option<&'static str>,
    retry_after: Option<u32>,
}

impl AiError {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            code: None,
            retry_after: None,
        }
    }

    fn from_fault(f: &AiFault) -> Self {
        let (message, kind, code) = match f.status {
            401 => (
                "Incorrect API key provided.",
                "invalid_request_error",
                Some("invalid_api_key"),
            ),
            429 => (
                "Rate limit reached for requests. Please try again later.",
                "requests",
                Some("rate_limit_exceeded"),
            ),
            500 => (
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            ),
            503 => (
                "The engine is currently overloaded, please try again later.",
                "server_error",
                None,
            ),
            s if s < 500 => ("The request was rejected.", "invalid_request_error", None),
            _ => ("The server had an error.", "server_error", None),
        };
        Self {
            status: StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: f.message.clone().unwrap_or_else(|| message.to_owned()),
            kind,
            code,
            retry_after: f.retry_after.or((f.status == 429).then_some(1)),
        }
    }
}

impl IntoResponse for AiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": null,
            "code": self.code,
        }});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(r) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(r));
        }
        resp
    }
}

/// The key of `Authorization: Bearer <key>`, if present and non-empty.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.trim().split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then(|| key.to_owned())
}

/// The text of a message's `content`: a string, or the `text` parts of an array.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The deterministic completion of a request body, or why the body is invalid.
fn complete(body: &Value) -> Result<Value, AiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| AiError::invalid("The request body must be a JSON object."))?;
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => {
            return Err(AiError::invalid(
                "you must provide a model parameter (a non-empty string)",
            ));
        }
    };
    if obj.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(AiError::invalid(
            "stream is not supported by the sandbox; leave it out or set it to false",
        ));
    }
    let messages = obj
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| AiError::invalid("messages must be a non-empty array"))?;
    for (i, m) in messages.iter().enumerate() {
        if m.get("role").and_then(Value::as_str).is_none() {
            return Err(AiError::invalid(format!(
                "messages[{i}].role must be a string"
            )));
        }
    }
    let limit = match obj
        .get("max_completion_tokens")
        .or_else(|| obj.get("max_tokens"))
    {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|n| *n >= 1)
                .ok_or_else(|| AiError::invalid("max_tokens must be an integer of at least 1"))?,
        ),
    };
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| content_text(&m["content"]))
        .unwrap_or_default();
    let answer = format!("echo: {last_user}");
    let words: Vec<&str> = answer.split_whitespace().collect();
    let (content, finish) = match limit {
        Some(n) if words.len() as u64 > n => (words[..n as usize].join(" "), "length"),
        _ => (answer.clone(), "stop"),
    };
    let prompt_tokens: usize = messages
        .iter()
        .map(|m| content_text(&m["content"]).split_whitespace().count())
        .sum();
    let completion_tokens = content.split_whitespace().count();
    Ok(json!({
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": null,
            "finish_reason": finish,
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }))
}

/// `POST /v1/chat/completions`.
///
/// Order: the key is checked (401 without one), the request is recorded with the status it
/// will get, a fault's delay is waited, then the fault's error, a 400 for an invalid body, or
/// the completion is answered.
pub(crate) async fn chat(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let key = bearer(&headers);
    let parsed: Option<Value> = serde_json::from_slice(&raw).ok();
    let recorded = parsed
        .clone()
        .unwrap_or_else(|| Value::String(String::from_utf8_lossy(&raw).into_owned()));
    let Some(key) = key else {
        shared.ai.record(None, recorded, 401);
        return AiError {
            status: StatusCode::UNAUTHORIZED,
            message: "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).".to_owned(),
            kind: "invalid_request_error",
            code: None,
            retry_after: None,
        }
        .into_response();
    };
    let fault = shared.ai.take_fault();
    let outcome = match &fault {
        Some(f) if f.status != 200 => Err(AiError::from_fault(f)),
        _ => match &parsed {
            None => Err(AiError::invalid(
                "We could not parse the JSON body of your request.",
            )),
            Some(body) => complete(body),
        },
    };
    let status = match &outcome {
        Ok(_) => 200,
        Err(e) => e.status.as_u16(),
    };
    let seq = shared.ai.record(Some(key), recorded, status);
    tracing::debug!(status, "sandbox chat completion");
    if let Some(ms) = fault.as_ref().and_then(|f| f.delay_ms) {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms)) => {}
            () = shared.stop.cancelled() => {}
        }
    }
    match outcome {
        Ok(mut completion) => {
            completion["id"] = json!(format!("chatcmpl-sandbox-{seq}"));
            axum::Json(completion).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// An unknown `/v1/…` path: OpenAI's 404 shape.
pub(crate) async fn unknown() -> Response {
    AiError {
        status: StatusCode::NOT_FOUND,
        message: "The sandbox serves only POST /v1/chat/completions.".to_owned(),
        kind: "invalid_request_error",
        code: Some("unknown_url"),
        retry_after: None,
    }
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestsQuery {
    key: Option<String>,
}

pub(crate) async fn requests(
    State(s): State<Arc<Shared>>,
    q: Result<Query<RequestsQuery>, QueryRejection>,
) -> Reply {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    Ok(axum::Json(
        json!({"requests": s.ai.requests(q.key.as_deref())}),
    ))
}

pub(crate) async fn clear_requests(State(s): State<Arc<Shared>>) -> Reply {
    Ok(axum::Json(json!({"cleared": s.ai.clear_requests()})))
}

pub(crate) async fn add_fault(State(s): State<Arc<Shared>>, raw: Bytes) -> Reply {
    let f: AiFault = body(&raw)?;
    Ok(axum::Json(json!({"active_faults": s.ai.add_fault(f)?})))
}

pub(crate) async fn clear_faults(State(s): State<Arc<Shared>>) -> Reply {
    Ok(axum::Json(json!({"cleared": s.ai.clear_faults()})))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::complete;

    #[test]
    fn completions_echo_the_last_user_message_and_honour_max_tokens() {
        let cases = [
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "hi there"}]}),
                "echo: hi there",
                "stop",
            ),
            (
                json!({"model": "m", "messages": [
                    {"role": "system", "content": "be nice"},
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "echo: first"},
                    {"role": "user", "content": [{"type": "text", "text": "second one"}]}]}),
                "echo: second one",
                "stop",
            ),
            (
                json!({"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "a b c"}]}),
                "echo: a",
                "length",
            ),
            (
                json!({"model": "m", "max_completion_tokens": 3, "messages": [{"role": "user", "content": "a b"}]}),
                "echo: a b",
                "stop",
            ),
        ];
        for (body, content, finish) in cases {
            let got = complete(&body).unwrap_or_else(|e| panic!("{}", e.message));
            assert_eq!(got["choices"][0]["message"]["content"], content, "{body}");
            assert_eq!(got["choices"][0]["finish_reason"], finish, "{body}");
        }
        for bad in [
            json!([]),
            json!({"messages": [{"role": "user", "content": "x"}]}),
            json!({"model": "m", "messages": []}),
            json!({"model": "m", "messages": [{"content": "x"}]}),
            json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]}),
            json!({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}),
        ] {
            assert!(complete(&bad).is_err(), "{bad}");
        }
    }
}
