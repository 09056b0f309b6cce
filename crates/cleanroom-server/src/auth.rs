//! The bearer-token extractor: every `/v1` handler but health and the OpenAPI document takes an
//! [`Authed`], so an unauthenticated request never reaches a use case.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use cleanroom_service::{CleanRoom, Principal};

use crate::problem::ApiError;

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
        Ok(Authed(room.authenticate(bearer.as_deref()).await?))
    }
}
