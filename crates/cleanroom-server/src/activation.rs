//! Handlers of activations: a partner asks for the matched segment of an owner's dataset as
//! its own identifiers, the owner approves or rejects, the partner downloads it once.
//! As everywhere in the server, each handler converts, calls one use case and converts back.
//!
//! The download is a `POST`: it uses the approval up, so it is neither safe nor idempotent,
//! and no `GET` of the API returns identifiers.

use cleanroom_core::audit::Action;
use std::convert::Infallible;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cleanroom_service::{ActivationRequest, CleanRoom, Segment};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Authed, Path};
use crate::problem::ApiError;
use crate::v1::{ApiJson, json_body, rejected};
use crate::wire::*;

type R<T> = Result<T, ApiError>;

/// Identifiers per chunk of the streamed body.
const IDS_PER_CHUNK: usize = 4096;

#[utoipa::path(post, path = "/v1/collaborations/{id}/activations", tag = "activations", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id")),
    request_body = ActivationIn,
    responses((status = 201, body = ActivationOut, description = "the pending activation, waiting for the source owner's approval"),
        (status = 400, body = Problem, description = "a malformed body or filter value (`invalid_input`)"),
        (status = 403, body = Problem, description = "refused by a rule (`policy_violation` with `rule`: `activation_not_allowed`, `target_not_own`, `key_not_allowed`, `output_not_identifier`, `dimension_not_allowed`), or no receive ability (`forbidden`)"),
        (status = 404, body = Problem, description = "no such collaboration or uploaded dataset (`not_found`)"),
        (status = 410, body = Problem, description = "the collaboration is closed (`collaboration_closed`)")))]
pub async fn request(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path(id): Path<String>,
    body: Result<ApiJson<ActivationIn>, ApiError>,
) -> R<(StatusCode, Json<ActivationOut>)> {
    let a = json_body(&room, &p, Action::ActivationRequest, Some(&id), body).await?;
    let v = room
        .request_activation(
            &p,
            &id,
            ActivationRequest {
                source: a.source,
                target: a.target,
                key: a.key,
                filter: a.filter,
                output: a.output,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(ActivationOut::from(&v))))
}

#[utoipa::path(get, path = "/v1/collaborations/{id}/activations", tag = "activations", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id")),
    responses((status = 200, body = Vec<ActivationOut>, description = "activations your organisation asked for or decides on"),
        (status = 403, body = Problem, description = "not an active member (`forbidden`)"),
        (status = 404, body = Problem, description = "no such collaboration (`not_found`)")))]
pub async fn list(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path(id): Path<String>,
) -> R<Json<Vec<ActivationOut>>> {
    Ok(Json(
        room.list_activations(&p, &id)
            .await?
            .iter()
            .map(ActivationOut::from)
            .collect(),
    ))
}

#[utoipa::path(get, path = "/v1/collaborations/{id}/activations/{activation}", tag = "activations", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id"), ("activation" = String, Path, description = "activation id")),
    responses((status = 200, body = ActivationOut),
        (status = 403, body = Problem, description = "not an active member (`forbidden`)"),
        (status = 404, body = Problem, description = "no such activation that you may see (`not_found`)")))]
pub async fn get(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path((id, activation)): Path<(String, String)>,
) -> R<Json<ActivationOut>> {
    Ok(Json(ActivationOut::from(
        &room.get_activation(&p, &id, &activation).await?,
    )))
}

#[utoipa::path(post, path = "/v1/collaborations/{id}/activations/{activation}/approve", tag = "activations", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id"), ("activation" = String, Path, description = "activation id")),
    responses((status = 200, body = ActivationOut, description = "approved: the partner may download the segment once"),
        (status = 403, body = Problem, description = "not the source's owner (`forbidden`), or no longer allowed by the policy (`policy_violation`)"),
        (status = 404, body = Problem, description = "no such activation that you may see (`not_found`)"),
        (status = 409, body = Problem, description = "decided already (`conflict`)"),
        (status = 410, body = Problem, description = "the collaboration is closed (`collaboration_closed`)")))]
pub async fn approve(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path((id, activation)): Path<(String, String)>,
) -> R<Json<ActivationOut>> {
    Ok(Json(ActivationOut::from(
        &room.decide_activation(&p, &id, &activation, true).await?,
    )))
}

#[utoipa::path(post, path = "/v1/collaborations/{id}/activations/{activation}/reject", tag = "activations", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id"), ("activation" = String, Path, description = "activation id")),
    responses((status = 200, body = ActivationOut, description = "rejected"),
        (status = 403, body = Problem, description = "not the source's owner (`forbidden`)"),
        (status = 404, body = Problem, description = "no such activation that you may see (`not_found`)"),
        (status = 409, body = Problem, description = "decided already (`conflict`)"),
        (status = 410, body = Problem, description = "the collaboration is closed (`collaboration_closed`)")))]
pub async fn reject(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path((id, activation)): Path<(String, String)>,
) -> R<Json<ActivationOut>> {
    Ok(Json(ActivationOut::from(
        &room.decide_activation(&p, &id, &activation, false).await?,
    )))
}

/// How the segment is written.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SegmentFormat {
    /// `text/csv`: a header line (the column's name), then one identifier per line.
    #[default]
    Csv,
    /// `application/x-ndjson`: one `{"<column>": "<identifier>"}` object per line.
    Jsonl,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SegmentParams {
    /// `csv` (default) or `jsonl`.
    #[serde(default)]
    pub format: Option<SegmentFormat>,
}

#[utoipa::path(post, path = "/v1/collaborations/{id}/activations/{activation}/segment", tag = "activations", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id"), ("activation" = String, Path, description = "activation id"), SegmentParams),
    responses((status = 200, description = "your own identifiers of the matched segment, distinct and sorted, streamed; the approval is used",
            content((String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 400, body = Problem, description = "an unknown format (`invalid_query`)"),
        (status = 403, body = Problem, description = "not the partner that asked, no receive ability (`forbidden`), no longer allowed by the policy, or a segment below the owner's minimum (`policy_violation` with `rule` `segment_too_small`; the approval is used)"),
        (status = 404, body = Problem, description = "no such activation that you may see (`not_found`)"),
        (status = 409, body = Problem, description = "not approved (`activation_not_approved`) or approval used already (`activation_consumed`)"),
        (status = 410, body = Problem, description = "the collaboration is closed (`collaboration_closed`)"),
        (status = 503, body = Problem, description = "reading the data failed (`unavailable`; the approval is used)")))]
pub async fn segment(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path((id, activation)): Path<(String, String)>,
    q: Result<Query<SegmentParams>, axum::extract::rejection::QueryRejection>,
) -> R<Response> {
    let format = match q {
        Ok(Query(q)) => q.format.unwrap_or_default(),
        Err(e) => {
            let rule = "unknown segment format";
            return Err(rejected(
                &room,
                &p,
                Action::ActivationDownload,
                Some(&id),
                ApiError::from(e),
                rule,
            )
            .await);
        }
    };
    let seg = room.download_segment(&p, &id, &activation).await?;
    Ok(segment_response(seg, format))
}

fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_owned()
    }
}

fn segment_response(seg: Segment, format: SegmentFormat) -> Response {
    let Segment {
        activation,
        column,
        ids,
    } = seg;
    let (media, ext, head) = match format {
        SegmentFormat::Csv => (
            "text/csv; charset=utf-8",
            "csv",
            format!("{}\n", csv_field(&column)),
        ),
        SegmentFormat::Jsonl => ("application/x-ndjson", "jsonl", String::new()),
    };
    let mut rest = ids.into_iter();
    let chunks = std::iter::from_fn(move || {
        let mut buf = String::new();
        for v in rest.by_ref().take(IDS_PER_CHUNK) {
            match format {
                SegmentFormat::Csv => buf.push_str(&csv_field(&v)),
                SegmentFormat::Jsonl => {
                    let mut o = serde_json::Map::new();
                    o.insert(column.clone(), serde_json::Value::String(v));
                    buf.push_str(&serde_json::Value::Object(o).to_string());
                }
            }
            buf.push('\n');
        }
        (!buf.is_empty()).then(|| Ok::<_, Infallible>(Bytes::from(buf)))
    });
    let head = (!head.is_empty()).then(|| Ok::<_, Infallible>(Bytes::from(head)));
    let body = Body::from_stream(futures_util::stream::iter(head.into_iter().chain(chunks)));
    (
        [
            (header::CONTENT_TYPE, media.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"segment-{activation}.{ext}\""),
            ),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        body,
    )
        .into_response()
}
