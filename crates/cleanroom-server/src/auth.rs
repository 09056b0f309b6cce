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

impl FromRequestParts<CleanRoom> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, room: &CleanRoom) -> Result<Self, ApiError> {
        let bearer = match parts.headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => {
                let s = v.to_str().unwrap_or("");
                let token = s
                    .strip_prefix("Bearer ")
                    .or_else(|| s.strip_prefix("bearer "))
                    .unwrap_or("");
                Some(token.trim().to_owned())
            }
        };
        // Throttled sources are refused before their token is looked at (and not audited one by
        // one: the moment they were throttled is).
        let source = parts.extensions.get::<ClientSource>().cloned();
        if let Some(s) = &source
            && let Err(wait) = s.throttle.check(s.key())
        {
            return Err(ApiError::throttled(wait));
        }
        match room.authenticate(bearer.as_deref()).await {
            Ok(p) => Ok(Authed(p)),
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
