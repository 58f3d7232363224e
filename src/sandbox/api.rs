//! The Bot API endpoint: `/bot<TOKEN>/<method>` with Telegram's envelopes and status codes.
//!
//! Order of checks for each call: count it, wait in a matching hold (until released), apply a
//! matching fault (delay, then error), check
//! the token (malformed → 404 "Not Found", unknown or revoked → 401 "Unauthorized"), check the
//! method (unknown → 404 "Not Found"), then parse parameters and run the method.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::params::{Params, Upload};
use super::state::{ApiErr, Method, Shared, UpdateBody, well_formed};

/// Largest request body accepted (Telegram's upload limit for bots is 50 MB).
pub(crate) const MAX_BODY: usize = 50 * 1024 * 1024;

fn envelope(result: Result<Value, ApiErr>) -> Response {
    let (status, body) = match result {
        Ok(v) => (StatusCode::OK, json!({"ok": true, "result": v})),
        Err(e) => {
            let mut body = json!({
                "ok": false,
                "error_code": e.code,
                "description": e.description,
            });
            if let Some(r) = e.retry_after {
                body["parameters"] = json!({"retry_after": r});
            }
            (
                StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                body,
            )
        }
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::from(bytes),
    )
        .into_response()
}

/// The answer of a successful getUpdates: elements are written out as they are, so raw
/// updates (not JSON, broken JSON, lone surrogates) reach the client byte for byte.
fn updates_envelope(batch: &[UpdateBody]) -> Response {
    let mut out = Vec::with_capacity(64 + batch.len() * 256);
    out.extend_from_slice(br#"{"ok":true,"result":["#);
    for (i, u) in batch.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&u.to_bytes());
    }
    out.extend_from_slice(b"]}");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::from(out),
    )
        .into_response()
}

/// Splits `/bot<token>/<method>` into its parts.
fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/bot")?;
    let (token, method) = rest.split_once('/')?;
    (!method.is_empty() && !method.contains('/')).then_some((token, method))
}

async fn read_params(req: Request) -> Result<Params, ApiErr> {
    let mut params = Params::default();
    if let Some(q) = req.uri().query() {
        params.extend_urlencoded(q.as_bytes());
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiErr::bad(format!("Bad Request: {}", e.body_text())))?;
        loop {
            let field = multipart
                .next_field()
                .await
                .map_err(|e| ApiErr::bad(format!("Bad Request: {}", e.body_text())))?;
            let Some(field) = field else { break };
            let name = field.name().unwrap_or_default().to_owned();
            let file_name = field.file_name().map(str::to_owned);
            let mime = field.content_type().map(str::to_owned);
            let data = field
                .bytes()
                .await
                .map_err(|e| ApiErr::bad(format!("Bad Request: {}", e.body_text())))?;
            match file_name {
                Some(file_name) => {
                    params.uploads.insert(
                        name,
                        Upload {
                            file_name,
                            mime,
                            size: data.len() as u64,
                        },
                    );
                }
                None => {
                    let text = String::from_utf8_lossy(&data).into_owned();
                    params.map.insert(name, Value::String(text));
                }
            }
        }
        return Ok(params);
    }
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|_| ApiErr::new(413, "Request Entity Too Large"))?;
    if content_type.starts_with("application/json") {
        params.extend_json(&body)?;
    } else if !body.is_empty() {
        // Telegram treats any other body as urlencoded.
        params.extend_urlencoded(&body);
    }
    Ok(params)
}

/// Handles every request outside `/sandbox/`: the Bot API.
pub(crate) async fn bot_api(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let Some((token, raw_method)) = split_path(&path) else {
        return envelope(Err(ApiErr::not_found()));
    };
    let method = Method::lookup(raw_method);
    let params = read_params(req).await;
    let bot = shared.authorise(token, method, raw_method);
    if let Some(held) = shared.take_hold(token, method) {
        let max = async {
            match held.max {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = held.release.cancelled() => {}
            () = max => {}
        }
        drop(held);
    }
    if let Some(hit) = shared.take_fault(token, method) {
        if let Some(delay) = hit.delay {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shared.stop.cancelled() => {}
            }
        }
        if let Some(e) = hit.error {
            shared.count_fault_error(token);
            return envelope(Err(e));
        }
    }
    let Some(bot) = bot else {
        return envelope(Err(if well_formed(token).is_some() {
            ApiErr::unauthorized()
        } else {
            ApiErr::not_found()
        }));
    };
    let Some(method) = method else {
        return envelope(Err(ApiErr::not_found()));
    };
    let params = match params {
        Ok(p) => p,
        Err(e) => return envelope(Err(e)),
    };
    if method == Method::GetUpdates {
        return match shared.get_updates(&bot, &params).await {
            Ok(batch) => updates_envelope(&batch),
            Err(e) => envelope(Err(e)),
        };
    }
    envelope(shared.call(&bot, method, &params))
}

#[cfg(test)]
mod tests {
    use super::split_path;

    #[test]
    fn bot_paths_split_into_token_and_method() {
        assert_eq!(split_path("/bot1:abc/GetMe"), Some(("1:abc", "GetMe")));
        assert_eq!(split_path("/bot1:abc/"), None);
        assert_eq!(split_path("/bot1:abc/a/b"), None);
        assert_eq!(split_path("/other"), None);
    }
}
