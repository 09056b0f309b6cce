//! The web console: a small front end embedded in the binary (`console/`), served at `/`, and
//! the session endpoints it signs in with. The page talks to the same `/v1` API as the CLI,
//! authenticated by an HttpOnly, SameSite=Strict session cookie instead of a bearer header, so
//! every action goes through the same use cases, authorisation and audit: the console has no
//! shortcut of its own and never touches a store.
//!
//! Invariants: the API token a user signs in with is exchanged for a session (a token that
//! expires) and never kept by the page; every state-changing request with a cookie carries the
//! session's CSRF token (see [`crate::auth::csrf_problem`]); every answer carries a strict
//! Content-Security-Policy (no inline script) and refuses framing.

use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cleanroom_service::CleanRoom;
use serde::{Deserialize, Serialize};

use crate::auth::{self, SESSION_COOKIE, Via};
use crate::problem::ApiError;

/// How long a console session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

const INDEX_HTML: &str = include_str!("../console/index.html");
const APP_JS: &str = include_str!("../console/app.js");
const APP_CSS: &str = include_str!("../console/app.css");

/// The policy on every answer: scripts and styles only from this origin (no inline script),
/// no plugins, no framing, forms and requests only to this origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

/// Adds the security headers to every answer.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    r
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

#[derive(Deserialize)]
pub struct SignIn {
    /// An API token (`crt_…`); exchanged for a session and not kept.
    pub token: String,
}

/// Who is signed in, and the CSRF token the page sends with every state-changing request.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct SessionOut {
    pub user: String,
    pub role: String,
    pub org: String,
    pub org_id: String,
    pub operator: bool,
    pub csrf: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

fn session_out(
    p: &cleanroom_service::Principal,
    session: &str,
    expires_at: Option<String>,
) -> SessionOut {
    SessionOut {
        user: p.user.name.to_string(),
        role: p.user.role.as_str().into(),
        org: p.org.name.to_string(),
        org_id: p.org.id.to_string(),
        operator: p.org.is_operator,
        csrf: auth::csrf_token(session),
        expires_at,
    }
}

fn cookie(value: &str, max_age: u64, tls: bool) -> HeaderValue {
    let secure = if tls { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .expect("a token is a valid header value")
}

fn over_tls(parts: &axum::http::request::Parts) -> bool {
    parts
        .extensions
        .get::<crate::throttle::ClientSource>()
        .is_some_and(|s| s.tls)
}

/// `POST /console/session`: exchanges an API token for a session cookie. Refused from other
/// sites (a forged sign-in would sign the victim into the attacker's account).
pub async fn sign_in(State(room): State<CleanRoom>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let cross_site = parts
        .headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v != "same-origin" && v != "none");
    if cross_site || !auth::from_own_origin(&parts) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf_failed",
            "sign-in is accepted only from this server's own console page",
        ));
    }
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the sign-in request is too large",
        )
    })?;
    let SignIn { token } = serde_json::from_slice(&bytes).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "send {\"token\": \"crt_…\"}: the API token to sign in with",
        )
    })?;
    let p = auth::authenticate(&parts, &room, Some(token.trim())).await?;
    let (issued, t) = room.start_session(&p, SESSION_TTL).await?;
    let out = session_out(&p, issued.expose(), t.expires_at.clone());
    let mut r = (StatusCode::CREATED, Json(out)).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        cookie(issued.expose(), SESSION_TTL.as_secs(), over_tls(&parts)),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

fn not_signed_in() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "you are not signed in to the console; sign in with an API token",
    )
}

/// `GET /console/session`: who is signed in, with the session's CSRF token.
pub async fn current(State(room): State<CleanRoom>, req: Request) -> Result<Response, ApiError> {
    let (parts, _) = req.into_parts();
    let Some(session) = auth::session_cookie(&parts.headers) else {
        return Err(not_signed_in());
    };
    let (p, via) = auth::principal(&parts, &room).await?;
    if via != Via::Cookie {
        return Err(not_signed_in());
    }
    let mut r = Json(session_out(&p, &session, None)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// `DELETE /console/session`: signs out (revokes the session's token, CSRF-checked) and
/// clears the cookie.
pub async fn sign_out(State(room): State<CleanRoom>, req: Request) -> Result<Response, ApiError> {
    let (parts, _) = req.into_parts();
    if auth::session_cookie(&parts.headers).is_none() {
        return Err(not_signed_in());
    }
    let (p, via) = auth::principal(&parts, &room).await?;
    if via != Via::Cookie {
        return Err(not_signed_in());
    }
    room.end_session(&p).await?;
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, cookie("", 0, over_tls(&parts)));
    Ok(r)
}
