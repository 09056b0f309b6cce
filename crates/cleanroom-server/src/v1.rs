//! Handlers of `/v1`. Each one authenticates, converts wire input into domain values, calls
//! one use case and converts the answer back. No decision is made here; a request that cannot
//! even be converted (a body that is not the expected JSON, an unknown ability) is answered
//! here and reported to the service, which records the refusal in the audit log.

use cleanroom_core::audit::Action;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use cleanroom_core::party::{Abilities, UserRole};
use cleanroom_service::{CleanRoom, Principal, ServiceError, UploadInput};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio_util::io::{StreamReader, SyncIoBridge};
use utoipa::IntoParams;

use crate::auth::{Authed, Path};
use crate::problem::ApiError;
use crate::wire::*;

/// JSON body extractor whose rejections are problem details.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

type R<T> = Result<T, ApiError>;

/// Answers a request refused here, before any use case, after reporting it to the service for
/// the audit log. `rule` is what the log keeps: the broken rule, never the input.
pub(crate) async fn rejected(
    room: &CleanRoom,
    p: &Principal,
    action: Action,
    collab: Option<&str>,
    e: ApiError,
    rule: &str,
) -> ApiError {
    room.record_rejection(p, action, collab, e.code, rule).await;
    e
}

/// Like [`rejected`] for input that failed to parse into a domain value.
async fn invalid(
    room: &CleanRoom,
    p: &Principal,
    action: Action,
    collab: Option<&str>,
    e: ServiceError,
) -> ApiError {
    let rule = e.audit_text();
    rejected(room, p, action, collab, ApiError::from(e), &rule).await
}

/// The JSON body, or its rejection (400 `invalid_input`), audited.
pub(crate) async fn json_body<T>(
    room: &CleanRoom,
    p: &Principal,
    action: Action,
    collab: Option<&str>,
    body: Result<ApiJson<T>, ApiError>,
) -> R<T> {
    match body {
        Ok(ApiJson(v)) => Ok(v),
        Err(e) => {
            let rule = "the request body is not the expected JSON";
            Err(rejected(room, p, action, collab, e, rule).await)
        }
    }
}

async fn abilities(
    room: &CleanRoom,
    p: &Principal,
    action: Action,
    collab: Option<&str>,
    list: &[String],
) -> R<Abilities> {
    match Abilities::parse_list(list.iter().map(String::as_str)) {
        Ok(a) => Ok(a),
        Err(e) => Err(invalid(room, p, action, collab, e.into()).await),
    }
}

/// The last readiness check, reused for a second: the check writes and syncs a file, and
/// anyone may ask for it, so asking often must not make the server write often.
#[derive(Debug, Default)]
pub struct ReadinessCache(
    tokio::sync::Mutex<Option<(std::time::Instant, cleanroom_service::Readiness)>>,
);

impl ReadinessCache {
    async fn get(&self, room: &CleanRoom) -> cleanroom_service::Readiness {
        let mut last = self.0.lock().await;
        if let Some((at, r)) = last.as_ref()
            && at.elapsed() < std::time::Duration::from_secs(1)
        {
            return r.clone();
        }
        let r = room.readiness().await;
        *last = Some((std::time::Instant::now(), r.clone()));
        r
    }
}

#[utoipa::path(get, path = "/v1/health", tag = "server",
    responses((status = 200, body = Health, description = "ready: the metadata store answers and data files can be written"),
        (status = 503, body = Problem, description = "not ready (`not_ready`): the detail says which check failed; the reason is in the server's log")))]
pub async fn health(
    State(room): State<CleanRoom>,
    axum::Extension(cache): axum::Extension<Arc<ReadinessCache>>,
) -> Result<Json<Health>, ApiError> {
    let r = cache.get(&room).await;
    let word = |c: &Result<(), String>, what: &str| match c {
        Ok(()) => "ok",
        Err(e) => {
            tracing::warn!(check = what, error = %e, "readiness check failed");
            "unavailable"
        }
    };
    let checks = HealthChecks {
        metadata: word(&r.metadata, "metadata").to_owned(),
        data: word(&r.data, "data").to_owned(),
    };
    if !r.is_ready() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!(
                "the server is not ready (metadata: {}, data: {}); its log says why",
                checks.metadata, checks.data
            ),
        ));
    }
    Ok(Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        checks,
    }))
}

#[utoipa::path(get, path = "/v1/whoami", tag = "parties", security(("bearer" = [])),
    responses((status = 200, body = WhoAmI)))]
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
    responses((status = 200, body = [OrgOut])))]
pub async fn list_orgs(State(room): State<CleanRoom>, Authed(p): Authed) -> R<Json<Vec<OrgOut>>> {
    Ok(Json(
        room.list_orgs(&p).await?.iter().map(OrgOut::from).collect(),
    ))
}

#[utoipa::path(post, path = "/v1/orgs", tag = "parties", security(("bearer" = [])),
    request_body = CreateOrgRequest,
    responses((status = 201, body = CreatedOrg),
        (status = 400, body = Problem, description = "invalid input: a malformed JSON body, name or value (`invalid_input`)"),
        (status = 403, body = Problem, description = "authenticated but not allowed (`forbidden`)"),
        (status = 409, body = Problem, description = "clashes with the current state (`conflict`)")))]
pub async fn create_org(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    body: Result<ApiJson<CreateOrgRequest>, ApiError>,
) -> R<(StatusCode, Json<CreatedOrg>)> {
    let req = json_body(&room, &p, Action::OrgCreate, None, body).await?;
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
    responses((status = 201, body = CreatedUser),
        (status = 400, body = Problem, description = "invalid input: a malformed JSON body, name or value (`invalid_input`)"),
        (status = 403, body = Problem, description = "authenticated but not allowed (`forbidden`)"),
        (status = 409, body = Problem, description = "clashes with the current state (`conflict`)")))]
pub async fn create_user(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    body: Result<ApiJson<CreateUserRequest>, ApiError>,
) -> R<(StatusCode, Json<CreatedUser>)> {
    let req = json_body(&room, &p, Action::UserCreate, None, body).await?;
    let role = match req.role.as_deref().map(UserRole::parse) {
        None => UserRole::Member,
        Some(Ok(r)) => r,
        Some(Err(e)) => return Err(invalid(&room, &p, Action::UserCreate, None, e.into()).await),
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
    responses((status = 201, body = CreatedToken),
        (status = 400, body = Problem, description = "invalid input: a malformed JSON body, name or value (`invalid_input`)")))]
pub async fn create_token(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    body: Result<ApiJson<CreateTokenRequest>, ApiError>,
) -> R<(StatusCode, Json<CreatedToken>)> {
    let req = json_body(&room, &p, Action::TokenCreate, None, body).await?;
    let (issued, token) = room.create_token(&p, &req.label).await?;
    let listed = TokenOut::from(&(token, p.user.clone()));
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken::new(listed, issued.expose().to_owned())),
    ))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "parties", security(("bearer" = [])),
    params(("id" = String, Path, description = "token id")),
    responses((status = 204, description = "revoked"),
        (status = 400, body = Problem, description = "invalid input: a malformed JSON body, name or value (`invalid_input`)"),
        (status = 404, body = Problem, description = "no such thing, or not visible to you (`not_found`)")))]
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
    responses((status = 201, body = CollaborationDetail),
        (status = 400, body = Problem, description = "invalid input: a malformed JSON body, name or value (`invalid_input`)"),
        (status = 409, body = Problem, description = "clashes with the current state (`conflict`)")))]
pub async fn create_collaboration(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    body: Result<ApiJson<CreateCollaborationRequest>, ApiError>,
) -> R<(StatusCode, Json<CollaborationDetail>)> {
    let action = Action::CollaborationCreate;
    let req = json_body(&room, &p, action, None, body).await?;
    let a = match &req.abilities {
        None => Abilities::all(),
        Some(list) => abilities(&room, &p, action, None, list).await?,
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
    responses((status = 200, body = CollaborationDetail),
        (status = 404, body = Problem, description = "no such thing, or not visible to you (`not_found`)")))]
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
    responses((status = 201, body = MemberOut),
        (status = 400, body = Problem, description = "invalid input: a malformed JSON body, name or value (`invalid_input`)"),
        (status = 403, body = Problem, description = "authenticated but not allowed (`forbidden`)"),
        (status = 404, body = Problem, description = "no such thing, or not visible to you (`not_found`)"),
        (status = 409, body = Problem, description = "clashes with the current state (`conflict`)"),
        (status = 410, body = Problem, description = "the collaboration is closed and its data destroyed (`collaboration_closed`)")))]
pub async fn invite(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path(id): Path<String>,
    body: Result<ApiJson<InviteRequest>, ApiError>,
) -> R<(StatusCode, Json<MemberOut>)> {
    let action = Action::CollaborationInvite;
    let req = json_body(&room, &p, action, Some(&id), body).await?;
    let a = abilities(&room, &p, action, Some(&id), &req.abilities).await?;
    let m = room.invite(&p, &id, &req.org, a).await?;
    Ok((StatusCode::CREATED, Json(MemberOut::from(&m))))
}

#[utoipa::path(post, path = "/v1/collaborations/{id}/accept", tag = "collaborations", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id")),
    responses((status = 200, body = CollaborationDetail),
        (status = 404, body = Problem, description = "no such thing, or not visible to you (`not_found`)"),
        (status = 409, body = Problem, description = "clashes with the current state (`conflict`)"),
        (status = 410, body = Problem, description = "the collaboration is closed and its data destroyed (`collaboration_closed`)")))]
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
    responses((status = 204, description = "declined"),
        (status = 404, body = Problem, description = "no such thing, or not visible to you (`not_found`)"),
        (status = 409, body = Problem, description = "clashes with the current state (`conflict`)"),
        (status = 410, body = Problem, description = "the collaboration is closed and its data destroyed (`collaboration_closed`)")))]
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
    responses((status = 200, body = Closed),
        (status = 403, body = Problem, description = "authenticated but not allowed (`forbidden`)"),
        (status = 404, body = Problem, description = "no such thing, or not visible to you (`not_found`)"),
        (status = 410, body = Problem, description = "the collaboration is closed and its data destroyed (`collaboration_closed`)")))]
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
    responses((status = 200, body = [DatasetOut]),
        (status = 403, body = Problem, description = "authenticated but not allowed (`forbidden`)"),
        (status = 404, body = Problem, description = "no such thing, or not visible to you (`not_found`)")))]
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
    responses((status = 201, body = DatasetOut),
        (status = 400, body = Problem, description = "invalid input: a malformed JSON body, name or value (`invalid_input`)"),
        (status = 403, body = Problem, description = "authenticated but not allowed (`forbidden`)"),
        (status = 404, body = Problem, description = "no such thing, or not visible to you (`not_found`)"),
        (status = 409, body = Problem, description = "clashes with the current state (`conflict`)"),
        (status = 410, body = Problem, description = "the collaboration is closed and its data destroyed (`collaboration_closed`)")))]
pub async fn create_dataset(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path(id): Path<String>,
    body: Result<ApiJson<CreateDatasetRequest>, ApiError>,
) -> R<(StatusCode, Json<DatasetOut>)> {
    let action = Action::DatasetCreate;
    let req = json_body(&room, &p, action, Some(&id), body).await?;
    let schema = match schema_from(&req.columns) {
        Ok(s) => s,
        Err(e) => return Err(invalid(&room, &p, action, Some(&id), e.into()).await),
    };
    let d = room.create_dataset(&p, &id, &req.name, schema).await?;
    Ok((StatusCode::CREATED, Json(DatasetOut::from(&d))))
}

#[utoipa::path(get, path = "/v1/collaborations/{id}/datasets/{name}", tag = "datasets", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id"), ("name" = String, Path, description = "dataset name")),
    responses((status = 200, body = DatasetOut),
        (status = 403, body = Problem, description = "authenticated but not allowed (`forbidden`)"),
        (status = 404, body = Problem, description = "no such thing, or not visible to you (`not_found`)")))]
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
        description = "CSV with a header line (streamed), an Arrow IPC stream (streamed) or a Parquet file (spooled, encrypted, to a temporary file, then read)"),
    responses((status = 200, body = DatasetOut),
        (status = 400, body = Problem, description = "invalid input: a malformed JSON body, name or value (`invalid_input`)"),
        (status = 403, body = Problem, description = "authenticated but not allowed (`forbidden`)"),
        (status = 404, body = Problem, description = "no such thing, or not visible to you (`not_found`)"),
        (status = 409, body = Problem, description = "clashes with the current state (`conflict`)"),
        (status = 410, body = Problem, description = "the collaboration is closed and its data destroyed (`collaboration_closed`)"),
        (status = 413, body = Problem, description = "the body exceeds a size limit (`payload_too_large`)"),
        (status = 415, body = Problem, description = "the Content-Type is not one of the accepted media types"),
        (status = 422, body = Problem, description = "the data does not match the schema; `line` and `column` say where (`invalid_data`)"),
        (status = 503, body = Problem, description = "all Parquet upload slots are busy, or storage is unavailable; retry later (`unavailable`)")))]
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
    let idle = room.limits().upload_idle_timeout;
    let input = match media.as_str() {
        CSV | "application/csv" => UploadInput::Csv(Box::new(stream_reader(body, idle))),
        ARROW_STREAM => UploadInput::ArrowStream(Box::new(stream_reader(body, idle))),
        PARQUET | "application/x-parquet" => {
            // Authorised (and given one of a few slots) before a byte of the body is read; the
            // service spools the body, sealed, to a temporary file and reads it back by ranges.
            // The slot is held until the upload is done.
            let _slot = room.reserve_parquet_upload(&p, &id, &name).await?;
            let input = UploadInput::Parquet(Box::new(stream_reader(body, idle)));
            let d = room.upload(&p, &id, &name, input).await?;
            return Ok(Json(DatasetOut::from(&d)));
        }
        other => {
            let e = ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "Content-Type {other:?} is not accepted; send {CSV}, {ARROW_STREAM} or {PARQUET}"
                ),
            );
            let rule = "the Content-Type is not one of the accepted media types";
            return Err(rejected(&room, &p, Action::DatasetUpload, Some(&id), e, rule).await);
        }
    };
    let d = room.upload(&p, &id, &name, input).await?;
    Ok(Json(DatasetOut::from(&d)))
}

fn idle_error(idle: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "no data arrived for {} s; the upload was abandoned",
            idle.as_secs()
        ),
    )
}

/// The request body as a stream of chunks that fails once no chunk arrives for `idle`.
fn idle_limited(body: Body, idle: Duration) -> impl futures_util::Stream<Item = io::Result<Bytes>> {
    futures_util::stream::unfold(Some(body.into_data_stream()), move |state| async move {
        let mut stream = state?;
        match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(stream))),
            Ok(Some(Err(e))) => Some((Err(io::Error::other(e)), None)),
            Ok(None) => None,
            Err(_) => Some((Err(idle_error(idle)), None)),
        }
    })
}

/// A blocking reader over the request body, for the service's upload thread. Size limits are
/// the service's to enforce; this only gives up on a body that stalls for `idle`.
fn stream_reader(body: Body, idle: Duration) -> impl io::Read + Send + 'static {
    SyncIoBridge::new(StreamReader::new(Box::pin(idle_limited(body, idle))))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
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
    responses((status = 200, body = AuditPage),
        (status = 400, body = Problem, description = "invalid input: a malformed JSON body, name or value (`invalid_input`)"),
        (status = 403, body = Problem, description = "authenticated but not allowed (`forbidden`)"),
        (status = 404, body = Problem, description = "no such thing, or not visible to you (`not_found`)")))]
pub async fn audit(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path(chain): Path<String>,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> R<Json<AuditPage>> {
    let q = match q {
        Ok(Query(q)) => q,
        Err(r) => {
            let rule = "the query string is malformed";
            return Err(rejected(&room, &p, Action::AuditRead, Some(&chain), r.into(), rule).await);
        }
    };
    let (entries, head) = room
        .audit_log(&p, &chain, q.after, q.limit.unwrap_or(1000))
        .await?;
    Ok(Json(AuditPage {
        chain: entries.first().map(|e| e.chain.clone()).unwrap_or(chain),
        entries: entries.iter().map(AuditEntryOut::from).collect(),
        head: head.as_ref().map(HeadOut::from),
    }))
}
