//! Handlers of the analysis API: policies, budgets, SQL analyses, templates and results.
//! As everywhere in the server, each handler converts, calls one use case and converts back.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use cleanroom_core::audit::Action;
use cleanroom_service::{CleanRoom, GrantRequest, QueryRequest, TemplateRequest};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::{Authed, Path};
use crate::metrics::AnalysisMark;
use crate::problem::ApiError;
use crate::v1::{ApiJson, json_body};
use crate::wire::*;

type R<T> = Result<T, ApiError>;

#[utoipa::path(put, path = "/v1/collaborations/{id}/datasets/{name}/policy", tag = "analyses", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id"), ("name" = String, Path, description = "dataset name")),
    request_body = PolicyWire,
    responses((status = 200, body = PolicyOut, description = "the new policy version"),
        (status = 400, body = Problem, description = "a rule that does not fit the schema or is out of range (`invalid_input`)"),
        (status = 403, body = Problem, description = "not the dataset's owner (`forbidden`)"),
        (status = 404, body = Problem, description = "no such collaboration or dataset (`not_found`)"),
        (status = 410, body = Problem, description = "the collaboration is closed (`collaboration_closed`)")))]
pub async fn set_policy(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path((id, name)): Path<(String, String)>,
    body: Result<ApiJson<PolicyWire>, ApiError>,
) -> R<Json<PolicyOut>> {
    let w = json_body(&room, &p, Action::PolicySet, Some(&id), body).await?;
    let v = room.set_policy(&p, &id, &name, w.to_draft()).await?;
    Ok(Json(PolicyOut::from(&v)))
}

#[utoipa::path(get, path = "/v1/collaborations/{id}/datasets/{name}/policy", tag = "analyses", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id"), ("name" = String, Path, description = "dataset name")),
    responses((status = 200, body = PolicyOut),
        (status = 403, body = Problem, description = "not an active member (`forbidden`)"),
        (status = 404, body = Problem, description = "no such collaboration or dataset, or no policy yet (`not_found`)")))]
pub async fn get_policy(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path((id, name)): Path<(String, String)>,
) -> R<Json<PolicyOut>> {
    Ok(Json(PolicyOut::from(
        &room.get_policy(&p, &id, &name).await?,
    )))
}

#[utoipa::path(get, path = "/v1/collaborations/{id}/budgets", tag = "analyses", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id")),
    responses((status = 200, body = Vec<BudgetOut>),
        (status = 403, body = Problem, description = "not an active member (`forbidden`)"),
        (status = 404, body = Problem, description = "no such collaboration (`not_found`)")))]
pub async fn budgets(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path(id): Path<String>,
) -> R<Json<Vec<BudgetOut>>> {
    Ok(Json(
        room.budgets(&p, &id)
            .await?
            .iter()
            .map(BudgetOut::from)
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/collaborations/{id}/budgets", tag = "analyses", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id")),
    request_body = GrantIn,
    responses((status = 200, body = BudgetOut, description = "the caller's organisation's ledger after the grant"),
        (status = 400, body = Problem, description = "amounts out of range (`invalid_input`)"),
        (status = 403, body = Problem, description = "not an admin, or not an active member (`forbidden`)"),
        (status = 404, body = Problem, description = "no such collaboration (`not_found`)"),
        (status = 410, body = Problem, description = "the collaboration is closed (`collaboration_closed`)")))]
pub async fn grant(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path(id): Path<String>,
    body: Result<ApiJson<GrantIn>, ApiError>,
) -> R<Json<BudgetOut>> {
    let g = json_body(&room, &p, Action::BudgetGrant, Some(&id), body).await?;
    let v = room
        .grant_budget(
            &p,
            &id,
            GrantRequest {
                epsilon: g.epsilon,
                delta: g.delta,
                epsilon_per_query: g.epsilon_per_query,
                delta_per_query: g.delta_per_query,
            },
        )
        .await?;
    Ok(Json(BudgetOut::from(&v)))
}

#[utoipa::path(post, path = "/v1/collaborations/{id}/queries", tag = "analyses", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id")),
    request_body = QueryIn,
    responses((status = 200, body = AnalysisOut, description = "the released (or reused, or dry-run) analysis"),
        (status = 400, body = Problem, description = "not valid SQL, or bad privacy parameters (`invalid_input`)"),
        (status = 403, body = Problem, description = "refused by a rule (`policy_violation`, with `rule` and `column`), a budget that cannot pay (`budget_exhausted`), or no analyse ability (`forbidden`)"),
        (status = 404, body = Problem, description = "no such collaboration (`not_found`)"),
        (status = 410, body = Problem, description = "the collaboration is closed (`collaboration_closed`)")))]
pub async fn query(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path(id): Path<String>,
    body: Result<ApiJson<QueryIn>, ApiError>,
) -> R<Marked> {
    let q = json_body(&room, &p, Action::AnalysisQuery, Some(&id), body).await?;
    let v = room
        .run_query(
            &p,
            &id,
            QueryRequest {
                sql: q.sql,
                epsilon: q.epsilon,
                delta: q.delta,
                receivers: q.receivers,
                dry_run: q.dry_run,
            },
        )
        .await?;
    Ok(marked(AnalysisOut::from(&v)))
}

/// A page of the analyses list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListAnalysesParams {
    /// `oldest` first (the default) or `newest` first.
    pub order: Option<String>,
    /// Skip this many (default 0).
    pub offset: Option<usize>,
    /// At most this many (default: all).
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/collaborations/{id}/analyses", tag = "analyses", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id"), ListAnalysesParams),
    responses((status = 200, body = Vec<AnalysisOut>, description = "analyses your organisation requested or receives, one page of them; the header `X-Total-Count` says how many there are in all",
            headers(("X-Total-Count" = u64, description = "how many analyses you may see in this collaboration"))),
        (status = 400, body = Problem, description = "a malformed query string or an unknown order (`invalid_input`)"),
        (status = 403, body = Problem, description = "not an active member (`forbidden`)"),
        (status = 404, body = Problem, description = "no such collaboration (`not_found`)")))]
pub async fn list_analyses(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path(id): Path<String>,
    q: Result<Query<ListAnalysesParams>, axum::extract::rejection::QueryRejection>,
) -> R<([(&'static str, String); 1], Json<Vec<AnalysisOut>>)> {
    let Query(q) = q.map_err(ApiError::from)?;
    let newest = match q.order.as_deref() {
        None | Some("oldest") => false,
        Some("newest") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_input",
                format!("order {other:?} is not `oldest` or `newest`"),
            ));
        }
    };
    let mut all = room.list_analyses(&p, &id).await?;
    let total = all.len();
    if newest {
        all.reverse();
    }
    let page = all
        .iter()
        .skip(q.offset.unwrap_or(0))
        .take(q.limit.unwrap_or(usize::MAX))
        .map(AnalysisOut::from)
        .collect();
    Ok(([("x-total-count", total.to_string())], Json(page)))
}

#[utoipa::path(get, path = "/v1/collaborations/{id}/analyses/{analysis}", tag = "analyses", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id"), ("analysis" = String, Path, description = "analysis id")),
    responses((status = 200, body = AnalysisOut),
        (status = 403, body = Problem, description = "not an active member (`forbidden`)"),
        (status = 404, body = Problem, description = "no such analysis that you may see (`not_found`)")))]
pub async fn get_analysis(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path((id, analysis)): Path<(String, String)>,
) -> R<Json<AnalysisOut>> {
    Ok(Json(AnalysisOut::from(
        &room.get_analysis(&p, &id, &analysis).await?,
    )))
}

#[utoipa::path(get, path = "/v1/templates", tag = "analyses", security(("bearer" = [])),
    responses((status = 200, body = Vec<TemplateOut>)))]
pub async fn templates(
    State(room): State<CleanRoom>,
    Authed(_p): Authed,
) -> Json<Vec<TemplateOut>> {
    Json(room.templates().iter().map(TemplateOut::from).collect())
}

#[utoipa::path(get, path = "/v1/collaborations/{id}/templates/approvals", tag = "analyses", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id")),
    responses((status = 200, body = Vec<ApprovalOut>),
        (status = 403, body = Problem, description = "not an active member (`forbidden`)"),
        (status = 404, body = Problem, description = "no such collaboration (`not_found`)")))]
pub async fn approvals(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path(id): Path<String>,
) -> R<Json<Vec<ApprovalOut>>> {
    Ok(Json(
        room.template_approvals(&p, &id)
            .await?
            .iter()
            .map(ApprovalOut::from)
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/collaborations/{id}/templates/{template}/approvals", tag = "analyses", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id"), ("template" = String, Path, description = "template name")),
    request_body = ApprovalIn,
    responses((status = 201, body = ApprovalOut),
        (status = 400, body = Problem, description = "no such template or version (`invalid_input`)"),
        (status = 403, body = Problem, description = "not the dataset's owner (`forbidden`)"),
        (status = 404, body = Problem, description = "no such collaboration or dataset (`not_found`)"),
        (status = 409, body = Problem, description = "approved already (`conflict`)"),
        (status = 410, body = Problem, description = "the collaboration is closed (`collaboration_closed`)")))]
pub async fn approve(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path((id, template)): Path<(String, String)>,
    body: Result<ApiJson<ApprovalIn>, ApiError>,
) -> R<(StatusCode, Json<ApprovalOut>)> {
    let a = json_body(&room, &p, Action::TemplateApprove, Some(&id), body).await?;
    let v = room
        .approve_template(&p, &id, &a.dataset, &template, a.version, true)
        .await?;
    Ok((StatusCode::CREATED, Json(ApprovalOut::from(&v))))
}

/// Which approval to revoke.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RevokeParams {
    /// The dataset the approval is for.
    pub dataset: String,
    /// Default: the latest version.
    pub version: Option<u32>,
}

#[utoipa::path(delete, path = "/v1/collaborations/{id}/templates/{template}/approvals", tag = "analyses", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id"), ("template" = String, Path, description = "template name"), RevokeParams),
    responses((status = 204, description = "revoked"),
        (status = 400, body = Problem, description = "no such template or version (`invalid_input`)"),
        (status = 403, body = Problem, description = "not the dataset's owner (`forbidden`)"),
        (status = 404, body = Problem, description = "no such approval (`not_found`)")))]
pub async fn revoke(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path((id, template)): Path<(String, String)>,
    q: Result<Query<RevokeParams>, axum::extract::rejection::QueryRejection>,
) -> R<StatusCode> {
    let Query(q) = q.map_err(ApiError::from)?;
    room.approve_template(&p, &id, &q.dataset, &template, q.version, false)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/collaborations/{id}/templates/{template}/runs", tag = "analyses", security(("bearer" = [])),
    params(("id" = String, Path, description = "collaboration id"), ("template" = String, Path, description = "template name")),
    request_body = TemplateRunIn,
    responses((status = 200, body = AnalysisOut),
        (status = 400, body = Problem, description = "unknown template, version or parameter (`invalid_input`)"),
        (status = 403, body = Problem, description = "not approved by an owner, refused by a rule (`policy_violation`), or a budget that cannot pay (`budget_exhausted`)"),
        (status = 404, body = Problem, description = "no such collaboration (`not_found`)"),
        (status = 410, body = Problem, description = "the collaboration is closed (`collaboration_closed`)")))]
pub async fn run_template(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    Path((id, template)): Path<(String, String)>,
    body: Result<ApiJson<TemplateRunIn>, ApiError>,
) -> R<Marked> {
    let t = json_body(&room, &p, Action::AnalysisTemplate, Some(&id), body).await?;
    let v = room
        .run_template(
            &p,
            &id,
            TemplateRequest {
                template,
                version: t.version,
                params: t.params,
                epsilon: t.epsilon,
                delta: t.delta,
                receivers: t.receivers,
                dry_run: t.dry_run,
            },
        )
        .await?;
    Ok(marked(AnalysisOut::from(&v)))
}

/// An analysis answer, marked with what became of it for the metrics.
type Marked = (axum::Extension<AnalysisMark>, Json<AnalysisOut>);

fn marked(out: AnalysisOut) -> Marked {
    (
        axum::Extension(AnalysisMark(out.status.as_str())),
        Json(out),
    )
}
