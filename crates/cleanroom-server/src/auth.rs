//! The bearer-token extractor: every `/v1` handler but health and the OpenAPI document takes an
//! [`Authed`], so an unauthenticated request never reaches a use case.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use cleanroom_core::audit::Action;
use cleanroom_service::{CleanRoom, Principal, ServiceError};

use crate::problem::ApiError;
use crate::throttle::{AfterFailure, ClientSource};

pub struct Authed(pub Principal);

/// The console's session cookie: a short-lived token (see `CleanRoom::start_session`), HttpOnly
/// and SameSite=Strict, so the page's scripts never hold it.
pub const SESSION_COOKIE: &str = "cleanroom_session";

/// The header a cookie-authenticated state-changing request must carry: the session's CSRF
/// token, which only a same-origin page can read (from `GET /console/session`).
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The CSRF token of a session: derived from the session's secret, so it needs no storage and
/// every replica agrees on it, and a page that cannot read the cookie cannot compute it.
pub fn csrf_token(session: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"cleanroom-csrf-v1\0");
    h.update(session.as_bytes());
    hex::encode(h.finalize())
}

/// The session cookie's value, if the request carries one.
pub fn session_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim().to_owned())
}

/// How a request presented its credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Bearer,
    Cookie,
}

/// Whether a request's `Origin` (when the browser sent one) is this server's own.
fn same_origin(headers: &axum::http::HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin.to_str().ok(), host) {
        (Some(o), Some(h)) => o
            .split_once("://")
            .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(h)),
        _ => false,
    }
}

/// Whether the request comes from this server's own pages, as far as the browser says (a
/// request without `Origin` is not a browser's cross-site request).
pub fn from_own_origin(parts: &Parts) -> bool {
    same_origin(&parts.headers)
}

/// Why a cookie-authenticated request that changes state must be refused: it lacks the
/// session's CSRF token, or the browser says it comes from another site. `None` when it may go on.
pub fn csrf_problem(parts: &Parts, session: &str) -> Option<&'static str> {
    use subtle::ConstantTimeEq;
    let safe = matches!(
        parts.method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    if safe {
        return None;
    }
    if !from_own_origin(parts) {
        return Some("the request comes from another site");
    }
    let sent = parts
        .headers
        .get(CSRF_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let want = csrf_token(session);
    if sent.ct_eq(want.as_bytes()).into() {
        None
    } else {
        Some("the request lacks this session's CSRF token")
    }
}

/// The refusal of a request with a [`csrf_problem`].
pub fn csrf_refusal(why: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::FORBIDDEN,
        "csrf_failed",
        format!("{why}; reload the console and try again"),
    )
}

/// Authenticates `credential` (a bearer token or a session's token), throttling sources that
/// fail too often.
pub async fn authenticate(
    parts: &Parts,
    room: &CleanRoom,
    credential: Option<&str>,
) -> Result<Principal, ApiError> {
    // Throttled sources are refused before their token is looked at (and not audited one by
    // one: the moment they were throttled is).
    let source = parts.extensions.get::<ClientSource>().cloned();
    if let Some(s) = &source
        && let Err(wait) = s.throttle.check(s.key())
    {
        return Err(ApiError::throttled(wait));
    }
    match room.authenticate(credential).await {
        Ok(p) => Ok(p),
        Err(e) => {
            if let (ServiceError::Unauthenticated(_), Some(s)) = (&e, &source)
                && s.throttle.failed(s.key()) == AfterFailure::Throttled
            {
                let o = s.throttle.options();
                tracing::warn!(source = %s.key(), failures = o.max_failures, "authentication throttled");
                room.record_auth_throttle(&s.key().to_string(), o.max_failures, o.window)
                    .await;
            }
            Err(e.into())
        }
    }
}

/// The principal of a request and how it authenticated: the `Authorization` header when there
/// is one, else the console's session cookie (CSRF-checked for state-changing methods).
pub async fn principal(parts: &Parts, room: &CleanRoom) -> Result<(Principal, Via), ApiError> {
    let bearer = parts.headers.get(header::AUTHORIZATION).map(|v| {
        let s = v.to_str().unwrap_or("");
        s.strip_prefix("Bearer ")
            .or_else(|| s.strip_prefix("bearer "))
            .unwrap_or("")
            .trim()
            .to_owned()
    });
    if let Some(b) = bearer {
        return Ok((authenticate(parts, room, Some(&b)).await?, Via::Bearer));
    }
    match session_cookie(&parts.headers) {
        Some(session) => {
            if let Some(why) = csrf_problem(parts, &session) {
                return Err(csrf_refusal(why));
            }
            let p = authenticate(parts, room, Some(&session)).await?;
            Ok((p, Via::Cookie))
        }
        None => Ok((authenticate(parts, room, None).await?, Via::Bearer)),
    }
}

impl FromRequestParts<CleanRoom> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, room: &CleanRoom) -> Result<Self, ApiError> {
        Ok(Authed(principal(parts, room).await?.0))
    }
}

/// Path parameters, like axum's `Path`, but a path that does not decode (invalid UTF-8, a
/// malformed percent escape) is refused as problem details (400 `invalid_path`) and, for an
/// authenticated caller, audited: axum's own rejection is a `text/plain` answer that nobody
/// records.
pub struct Path<T>(pub T);

impl<T> FromRequestParts<CleanRoom> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, room: &CleanRoom) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, room).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(_) => {
                let e = ApiError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "invalid_path",
                    "a segment of the path is not valid (not UTF-8 once decoded, or a malformed percent escape)",
                );
                // Authenticated callers' refusals are audited like any other; an unauthenticated
                // request is refused as such.
                let Authed(p) = Authed::from_request_parts(parts, room).await?;
                let collab = parts
                    .uri
                    .path()
                    .strip_prefix("/v1/collaborations/")
                    .and_then(|rest| rest.split('/').next());
                room.record_rejection(
                    &p,
                    Action::RequestPath,
                    collab,
                    e.code,
                    "the path does not decode",
                )
                .await;
                Err(e)
            }
        }
    }
}
