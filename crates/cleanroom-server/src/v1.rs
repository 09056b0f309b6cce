//! Handlers of `/v1`. Each one authenticates, converts wire input into domain values, calls
//! one use case and converts the answer back. No decision is made here.

use std::io;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use cleanroom_core::party::{Abilities, UserRole};
use cleanroom_service::{CleanRoom, UploadInput};
use futures_util::TryStreamExt;
use serde::Deserialize;
use tokio_util::io::{StreamReader, SyncIoBridge};
use utoipa::IntoParams;

use crate::auth::Authed;
use crate::problem::ApiError;
use crate::wire::*;

/// JSON body extractor whose rejections are problem details.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

type R<T> = Result<T, ApiError>;

fn abilities(list: &[String]) -> R<Abilities> {
    Ok(Abilities::parse_list(list.iter().map(String::as_str))
        .map_err(cleanroom_service::ServiceError::from)?)
}

#[utoipa::path(get, path = "/v1/health", tag = "server",
    responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

#[utoipa::path(get, path = "/v1/whoami", tag = "parties", security(("bearer" = [])),
    responses((status = 200, body = WhoAmI), (status = 401, body = Problem)))]
pub async fn whoami(Authed(p): Authed) -> Json<WhoAmI> {
    Json(WhoAmI {
        user: p.user.name.to_string(),
        user_id: p.user.id.to_string(),
        role: p.user.role.as_str().into(),
        org: p.org.name.to_string(),
        org_id: p.org.id.to_string(),
        operator: p.org.is_operator,
        token_id: p.token_id.to_string(),
    })
}

#[utoipa::path(get, path = "/v1/orgs", tag = "parties", security(("bearer" = [])),
    responses((status = 200, body = [OrgOut]), (status = 401, body = Problem)))]
pub async fn list_orgs(State(room): State<CleanRoom>, Authed(p): Authed) -> R<Json<Vec<OrgOut>>> {
    Ok(Json(
        room.list_orgs(&p).await?.iter().map(OrgOut::from).collect(),
    ))
}

#[utoipa::path(post, path = "/v1/orgs", tag = "parties", security(("bearer" = [])),
    request_body = CreateOrgRequest,
    responses((status = 201, body = CreatedOrg), (status = 403, body = Problem), (status = 409, body = Problem)))]
pub async fn create_org(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    ApiJson(req): ApiJson<CreateOrgRequest>,
) -> R<(StatusCode, Json<CreatedOrg>)> {
    let (org, admin, token) = room.create_org(&p, &req.name, &req.admin).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedOrg {
            org: OrgOut::from(&org),
            admin: UserOut::from(&admin),
            token: token.expose().to_owned(),
        }),
    ))
}

#[utoipa::path(get, path = "/v1/users", tag = "parties", security(("bearer" = [])),
    responses((status = 200, body = [UserOut])))]
pub async fn list_users(State(room): State<CleanRoom>, Authed(p): Authed) -> R<Json<Vec<UserOut>>> {
    Ok(Json(
        room.list_users(&p)
            .await?
            .iter()
            .map(UserOut::from)
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/users", tag = "parties", security(("bearer" = [])),
    request_body = CreateUserRequest,
    responses((status = 201, body = CreatedUser), (status = 403, body = Problem), (status = 409, body = Problem)))]
pub async fn create_user(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    ApiJson(req): ApiJson<CreateUserRequest>,
) -> R<(StatusCode, Json<CreatedUser>)> {
    let role = match req.role.as_deref() {
        None => UserRole::Member,
        Some(r) => UserRole::parse(r).map_err(cleanroom_service::ServiceError::from)?,
    };
    let (user, token) = room.create_user(&p, &req.name, role).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedUser {
            user: UserOut::from(&user),
            token: token.expose().to_owned(),
        }),
    ))
}

#[utoipa::path(get, path = "/v1/tokens", tag = "parties", security(("bearer" = [])),
    responses((status = 200, body = [TokenOut])))]
pub async fn list_tokens(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
) -> R<Json<Vec<TokenOut>>> {
    Ok(Json(
        room.list_tokens(&p)
            .await?
            .iter()
            .map(TokenOut::from)
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/tokens", tag = "parties", security(("bearer" = [])),
    request_body = CreateTokenRequest,
    responses((status = 201, body = CreatedToken)))]
pub async fn create_token(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> R<(StatusCode, Json<CreatedToken>)> {
    let t = room.create_token(&p, &req.label).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            id: t.id.to_string(),
            token: t.expose().to_owned(),
        }),
    ))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "parties", security(("bearer" = [])),
    params(("id" = String, Path, description = "token id")),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn revoke_token(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path(id): Path<String>,
) -> R<StatusCode> {
    room.revoke_token(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/collaborations", tag = "collaborations", security(("bearer" = [])),
    responses((status = 200, body = [CollaborationOut])))]
pub async fn list_collaborations(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
) -> R<Json<Vec<CollaborationOut>>> {
    Ok(Json(
        room.list_collaborations(&p)
            .await?
            .iter()
            .map(|(c, m)| CollaborationOut::new(c, m))
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/collaborations", tag = "collaborations", security(("bearer" = [])),
    request_body = CreateCollaborationRequest,
    responses((status = 201, body = CollaborationDetail), (status = 409, body = Problem)))]
pub async fn create_collaboration(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    ApiJson(req): ApiJson<CreateCollaborationRequest>,
) -> R<(StatusCode, Json<CollaborationDetail>)> {
    let a = match &req.abilities {
        None => Abilities::all(),
        Some(list) => abilities(list)?,
    };
    let c = room
        .create_collaboration(&p, &req.name, &req.description, a)
        .await?;
    let view = room.get_collaboration(&p, &c.id.to_string()).await?;
    Ok((StatusCode::CREATED, Json(detail(&view))))
}

fn detail(v: &cleanroom_service::CollaborationView) -> CollaborationDetail {
    CollaborationDetail {
        collaboration: CollaborationOut::new(&v.collaboration, &v.you),
        creator: v.creator.to_string(),
        members: v.members.iter().map(MemberOut::from).collect(),
    }
}

#[utoipa::path(get, path = "/v1/collaborations/{id}", tag = "collaborations", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id")),
    responses((status = 200, body = CollaborationDetail), (status = 404, body = Problem)))]
pub async fn get_collaboration(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path(id): Path<String>,
) -> R<Json<CollaborationDetail>> {
    Ok(Json(detail(&room.get_collaboration(&p, &id).await?)))
}

#[utoipa::path(post, path = "/v1/collaborations/{id}/invitations", tag = "collaborations", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id")),
    request_body = InviteRequest,
    responses((status = 201, body = MemberOut), (status = 403, body = Problem), (status = 409, body = Problem)))]
pub async fn invite(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<InviteRequest>,
) -> R<(StatusCode, Json<MemberOut>)> {
    let a = abilities(&req.abilities)?;
    let m = room.invite(&p, &id, &req.org, a).await?;
    Ok((StatusCode::CREATED, Json(MemberOut::from(&m))))
}

#[utoipa::path(post, path = "/v1/collaborations/{id}/accept", tag = "collaborations", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id")),
    responses((status = 200, body = CollaborationDetail), (status = 409, body = Problem)))]
pub async fn accept(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path(id): Path<String>,
) -> R<Json<CollaborationDetail>> {
    room.respond(&p, &id, true).await?;
    Ok(Json(detail(&room.get_collaboration(&p, &id).await?)))
}

#[utoipa::path(post, path = "/v1/collaborations/{id}/decline", tag = "collaborations", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id")),
    responses((status = 204), (status = 409, body = Problem)))]
pub async fn decline(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path(id): Path<String>,
) -> R<StatusCode> {
    room.respond(&p, &id, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/collaborations/{id}/close", tag = "collaborations", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id")),
    responses((status = 200, body = Closed), (status = 403, body = Problem)))]
pub async fn close(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path(id): Path<String>,
) -> R<Json<Closed>> {
    let n = room.close_collaboration(&p, &id).await?;
    Ok(Json(Closed {
        destroyed_dataset_keys: n,
    }))
}

#[utoipa::path(get, path = "/v1/collaborations/{id}/datasets", tag = "datasets", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id")),
    responses((status = 200, body = [DatasetOut]), (status = 404, body = Problem)))]
pub async fn list_datasets(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path(id): Path<String>,
) -> R<Json<Vec<DatasetOut>>> {
    Ok(Json(
        room.list_datasets(&p, &id)
            .await?
            .iter()
            .map(DatasetOut::from)
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/collaborations/{id}/datasets", tag = "datasets", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id")),
    request_body = CreateDatasetRequest,
    responses((status = 201, body = DatasetOut), (status = 400, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem)))]
pub async fn create_dataset(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CreateDatasetRequest>,
) -> R<(StatusCode, Json<DatasetOut>)> {
    let schema = schema_from(&req.columns).map_err(cleanroom_service::ServiceError::from)?;
    let d = room.create_dataset(&p, &id, &req.name, schema).await?;
    Ok((StatusCode::CREATED, Json(DatasetOut::from(&d))))
}

#[utoipa::path(get, path = "/v1/collaborations/{id}/datasets/{name}", tag = "datasets", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id"), ("name" = String, Path, description = "dataset name")),
    responses((status = 200, body = DatasetOut), (status = 404, body = Problem)))]
pub async fn get_dataset(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path((id, name)): Path<(String, String)>,
) -> R<Json<DatasetOut>> {
    Ok(Json(DatasetOut::from(
        &room.get_dataset(&p, &id, &name).await?,
    )))
}

/// Media types accepted by the upload endpoint.
pub const CSV: &str = "text/csv";
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";
pub const PARQUET: &str = "application/vnd.apache.parquet";

#[utoipa::path(put, path = "/v1/collaborations/{id}/datasets/{name}/data", tag = "datasets", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id"), ("name" = String, Path, description = "dataset name")),
    request_body(content((String = "text/csv"), (Vec<u8> = "application/vnd.apache.arrow.stream"), (Vec<u8> = "application/vnd.apache.parquet")),
        description = "CSV with a header line (streamed), an Arrow IPC stream (streamed) or a Parquet file (read in memory, size-capped)"),
    responses((status = 200, body = DatasetOut), (status = 409, body = Problem), (status = 413, body = Problem),
        (status = 415, body = Problem), (status = 422, body = Problem, description = "the data does not match the schema; `line` and `column` say where")))]
pub async fn upload(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> R<Json<DatasetOut>> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let limit = room.limits().max_upload_bytes;
    let input = match media.as_str() {
        CSV | "application/csv" => UploadInput::Csv(Box::new(stream_reader(body, limit))),
        ARROW_STREAM => UploadInput::ArrowStream(Box::new(stream_reader(body, limit))),
        PARQUET | "application/x-parquet" => {
            let cap = room.limits().max_parquet_bytes;
            let bytes = axum::body::to_bytes(body, cap as usize).await.map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("Parquet uploads are read in memory and limited to {cap} bytes; send CSV or an Arrow stream (the CLI does this for you)"),
                )
            })?;
            UploadInput::Parquet(bytes)
        }
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "Content-Type {other:?} is not accepted; send {CSV}, {ARROW_STREAM} or {PARQUET}"
                ),
            ));
        }
    };
    let d = room.upload(&p, &id, &name, input).await?;
    Ok(Json(DatasetOut::from(&d)))
}

/// A blocking reader over the request body that fails once more than `limit` bytes arrive.
fn stream_reader(body: Body, limit: u64) -> impl io::Read + Send + 'static {
    let mut seen: u64 = 0;
    let stream = body
        .into_data_stream()
        .map_err(io::Error::other)
        .and_then(move |chunk| {
            seen += chunk.len() as u64;
            let over = seen > limit;
            async move {
                if over {
                    Err(io::Error::other(format!(
                        "the upload exceeds the server's limit of {limit} bytes"
                    )))
                } else {
                    Ok(chunk)
                }
            }
        });
    SyncIoBridge::new(StreamReader::new(Box::pin(stream)))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditQuery {
    /// Return entries after this sequence number (default 0: from the start).
    #[serde(default)]
    pub after: u64,
    /// At most this many entries (default 1000, max 10000).
    #[serde(default)]
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/audit/{chain}", tag = "audit", security(("bearer" = [])),
    params(("chain" = String, Path, description = "a collaboration id, or `system`"), AuditQuery),
    responses((status = 200, body = AuditPage), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn audit(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path(chain): Path<String>,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> R<Json<AuditPage>> {
    let Query(q) = q?;
    let (entries, head) = room
        .audit_log(&p, &chain, q.after, q.limit.unwrap_or(1000))
        .await?;
    Ok(Json(AuditPage {
        chain: entries.first().map(|e| e.chain.clone()).unwrap_or(chain),
        entries: entries.iter().map(AuditEntryOut::from).collect(),
        head: head.as_ref().map(HeadOut::from),
    }))
}
