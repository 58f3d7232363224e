//! Who is calling: a session cookie (HttpOnly, SameSite=Strict) or `Authorization: Bearer
//! <API key>`; the CSRF rule; the client's address for sign-in throttling.
//!
//! CSRF: every state change made with a session must carry the session's CSRF token — the
//! `X-CSRF-Token` header for the API (checked by [`ApiCaller`] for every POST, PUT, PATCH and
//! DELETE), the `csrf` form field for pages (checked by each page handler with
//! [`Caller::check_csrf`]). Requests with an API key carry no ambient credential, so they need
//! none.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};

use super::{ApiError, AppState};
use crate::admin::Admin;
use crate::admin::operators::{Operator, Permission};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "botvisor_session";
/// The cookie carrying the sign-in form's pre-session CSRF token (double submit).
pub const LOGIN_CSRF_COOKIE: &str = "botvisor_login_csrf";
/// What a sign-in without the form's token is told.
pub const LOGIN_CSRF_REFUSED: &str =
    "the sign-in form expired or came from another site: sign in again on this page";

/// The header carrying the CSRF token for API calls made with a session.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A signed-in caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub operator: Operator,
    /// The session's CSRF token (`None`: an API key).
    pub csrf: Option<String>,
    /// The service, acting as this caller (`panel:<login>` or `api:<login>`).
    pub admin: Admin,
}

impl Caller {
    /// Refuses unless the operator may do `what`.
    pub fn check(&self, what: Permission) -> Result<(), ApiError> {
        Ok(self.operator.check(what)?)
    }

    /// Refuses a session's state change whose form did not carry the session's CSRF token.
    pub fn check_csrf(&self, sent: &str) -> Result<(), ApiError> {
        match &self.csrf {
            Some(expected) if !constant_time_eq(expected, sent) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token: reload the page and try again",
            )),
            _ => Ok(()),
        }
    }
}

/// Compares two secrets without an early exit.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of cookie `name`, if sent.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The `Set-Cookie` value for a session (or, with `None`, one that clears it).
pub fn session_cookie(state: &AppState, token: Option<&str>) -> String {
    let secure = if state.cookie_secure { "; Secure" } else { "" };
    match token {
        Some(t) => format!(
            "{SESSION_COOKIE}={t}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            state.session_lifetime.as_secs()
        ),
        None => format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

/// The `Set-Cookie` value carrying the sign-in form's token (an empty token clears it). Only
/// `/login` gets it, it lasts an hour, and scripts cannot read it.
pub fn login_csrf_cookie(state: &AppState, token: &str) -> String {
    let secure = if state.cookie_secure { "; Secure" } else { "" };
    let age = if token.is_empty() { 0 } else { 3600 };
    format!(
        "{LOGIN_CSRF_COOKIE}={token}; Path=/login; HttpOnly; SameSite=Strict; Max-Age={age}{secure}"
    )
}

/// Whether a sign-in form carried the same non-empty token as its cookie.
pub fn login_csrf_matches(headers: &HeaderMap, sent: &str) -> bool {
    cookie(headers, LOGIN_CSRF_COOKIE)
        .is_some_and(|expected| !expected.is_empty() && constant_time_eq(&expected, sent))
}

/// The client's address: the peer, or — when the peer is a reverse proxy on loopback — the
/// last address it appended to `X-Forwarded-For`.
pub fn client_address(parts: &Parts) -> String {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let forwarded = parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .map(|s| s.trim().to_owned());
    match (peer, forwarded) {
        (Some(ip), Some(f)) if ip.is_loopback() && !f.is_empty() => f,
        (Some(ip), _) => ip.to_string(),
        (None, _) => "unknown".into(),
    }
}

/// The client's address, as an extractor.
#[derive(Debug, Clone)]
pub struct ClientAddress(pub String);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Self(client_address(parts)))
    }
}

/// The caller if signed in, `None` otherwise (pages redirect to sign-in).
#[derive(Debug, Clone)]
pub struct MaybeCaller(pub Option<Caller>);

async fn resolve(parts: &Parts, state: &AppState) -> Result<Option<Caller>, ApiError> {
    if let Some(auth) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let key = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        return match state.admin.operator_by_key(key).await? {
            Some(operator) => Ok(Some(Caller {
                admin: state.admin.acting_as(format!("api:{}", operator.login)),
                operator,
                csrf: None,
            })),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unknown API key: create one with `botvisor operator key LOGIN`",
            )),
        };
    }
    let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    Ok(state
        .admin
        .session(&token)
        .await?
        .map(|(operator, csrf)| Caller {
            admin: state.admin.acting_as(format!("panel:{}", operator.login)),
            operator,
            csrf: Some(csrf),
        }))
}

impl FromRequestParts<AppState> for MaybeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(Self(resolve(parts, state).await?))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        resolve(parts, state).await?.ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "not signed in: sign in (POST /api/v1/session) or send Authorization: Bearer <API key>",
            )
        })
    }
}

/// A caller of the JSON API: a [`Caller`] whose session state changes carry the
/// `X-CSRF-Token` header (checked for every POST, PUT, PATCH and DELETE).
#[derive(Debug, Clone)]
pub struct ApiCaller(pub Caller);

impl FromRequestParts<AppState> for ApiCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
            let sent = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            caller.check_csrf(sent)?;
        }
        Ok(Self(caller))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            "lang=ru; botvisor_session=abc".parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "lang").as_deref(), Some("ru"));
        assert_eq!(cookie(&h, "x"), None);
    }

    #[test]
    fn the_client_address_trusts_forwarded_for_only_from_loopback() {
        let parts = |peer: &str, forwarded: Option<&str>| {
            let mut req = axum::http::Request::builder();
            if let Some(f) = forwarded {
                req = req.header("x-forwarded-for", f);
            }
            let (mut parts, ()) = req.body(()).unwrap().into_parts();
            parts
                .extensions
                .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
            parts
        };
        let cases = [
            ("127.0.0.1:5000", Some("203.0.113.9"), "203.0.113.9"),
            (
                "127.0.0.1:5000",
                Some("1.1.1.1, 203.0.113.9"),
                "203.0.113.9",
            ),
            ("127.0.0.1:5000", None, "127.0.0.1"),
            ("198.51.100.7:5000", Some("203.0.113.9"), "198.51.100.7"),
        ];
        for (peer, forwarded, expected) in cases {
            assert_eq!(
                client_address(&parts(peer, forwarded)),
                expected,
                "{peer} {forwarded:?}"
            );
        }
    }

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
    }
}
