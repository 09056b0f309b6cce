//! The HTTP API of the clean room: `pub fn app(room) -> Router`, JSON under `/v1`, errors as
//! problem details, and an OpenAPI document generated from the handlers at `/v1/openapi.json`.
//! Only this crate knows JSON over HTTP.

pub mod activation;
pub mod analysis;
mod auth;
mod connections;
pub mod console;
pub mod metrics;
pub mod problem;
pub mod throttle;
pub mod tls;
pub mod v1;
pub mod wire;

use std::net::SocketAddr;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use cleanroom_service::CleanRoom;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::problem::ApiError;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("crt_<id>_<secret>")
                    .build(),
            ),
        );
    }
}

/// Media type of every error answer (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Declares, once for every route, what `problem.rs` does for every answer: errors are
/// `application/problem+json` with the `Problem` schema, and every route that takes a token can
/// answer 401. The handlers' annotations name the other error statuses each one can answer.
struct ProblemResponses;

impl Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let problem = || {
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    op.responses
                        .responses
                        .entry("401".to_owned())
                        .or_insert_with(|| {
                            RefOr::T(
                                ResponseBuilder::new()
                                    .description(
                                        "no valid API token: missing, unknown, malformed or \
                                         revoked (`unauthenticated`)",
                                    )
                                    .content(PROBLEM_JSON, problem())
                                    .build(),
                            )
                        });
                }
                for (status, response) in op.responses.responses.iter_mut() {
                    let is_error = status.starts_with('4') || status.starts_with('5');
                    if let (true, RefOr::T(r)) = (is_error, response) {
                        let content = r
                            .content
                            .shift_remove("application/json")
                            .unwrap_or_else(problem);
                        r.content.clear();
                        r.content.insert(PROBLEM_JSON.to_owned(), content);
                    }
                }
            }
        }
    }
}

/// The OpenAPI document of `/v1`, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "cleanroom", description = "A self-hostable data clean room. Only protected aggregates leave the room; no endpoint returns dataset rows, except a partner's own identifiers through an approved activation."),
    paths(
        v1::health, v1::whoami, v1::list_orgs, v1::create_org, v1::list_users, v1::create_user,
        v1::list_tokens, v1::create_token, v1::revoke_token,
        v1::list_collaborations, v1::create_collaboration, v1::get_collaboration, v1::invite,
        v1::accept, v1::decline, v1::close,
        v1::list_datasets, v1::create_dataset, v1::get_dataset, v1::upload,
        v1::audit,
        analysis::set_policy, analysis::get_policy, analysis::budgets, analysis::grant,
        analysis::query, analysis::list_analyses, analysis::get_analysis, analysis::templates,
        analysis::approvals, analysis::approve, analysis::revoke, analysis::run_template,
        activation::request, activation::list, activation::get, activation::approve,
        activation::reject, activation::segment,
    ),
    components(schemas(activation::SegmentFormat)),
    modifiers(&BearerAuth, &ProblemResponses),
    tags(
        (name = "server"), (name = "parties", description = "organisations, users, API tokens"),
        (name = "collaborations"), (name = "datasets", description = "declared schemas and encrypted uploads; never rows"),
        (name = "audit", description = "hash-chained audit logs"),
        (name = "analyses", description = "policies, privacy budgets, SQL and template analyses; only thresholded, differentially private aggregates"),
        (name = "activations", description = "a partner receives a matched segment as its own identifiers: allowed by the owner's policy, approved by the owner, delivered once"),
    )
)]
pub struct ApiDoc;

async fn openapi() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

async fn no_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_endpoint",
        "no such endpoint; see /v1/openapi.json",
    )
}

async fn bad_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method; see /v1/openapi.json",
    )
}

/// The whole HTTP application.
pub fn app(room: CleanRoom) -> Router {
    app_with(room, std::sync::Arc::new(metrics::Metrics::default()))
}

/// [`app`] counting into `metrics` (which the connection loop counts into too).
pub fn app_with(room: CleanRoom, metrics: std::sync::Arc<metrics::Metrics>) -> Router {
    use v1::*;
    let api = Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .route("/whoami", get(whoami))
        .route("/orgs", get(list_orgs).post(create_org))
        .route("/users", get(list_users).post(create_user))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}", axum::routing::delete(revoke_token))
        .route(
            "/collaborations",
            get(list_collaborations).post(create_collaboration),
        )
        .route("/collaborations/{id}", get(get_collaboration))
        .route("/collaborations/{id}/invitations", post(invite))
        .route("/collaborations/{id}/accept", post(accept))
        .route("/collaborations/{id}/decline", post(decline))
        .route("/collaborations/{id}/close", post(close))
        .route(
            "/collaborations/{id}/datasets",
            get(list_datasets).post(create_dataset),
        )
        .route("/collaborations/{id}/datasets/{name}", get(get_dataset))
        .route("/collaborations/{id}/datasets/{name}/data", put(upload))
        .route("/audit/{chain}", get(audit))
        .route(
            "/collaborations/{id}/datasets/{name}/policy",
            get(analysis::get_policy).put(analysis::set_policy),
        )
        .route(
            "/collaborations/{id}/budgets",
            get(analysis::budgets).post(analysis::grant),
        )
        .route("/collaborations/{id}/queries", post(analysis::query))
        .route(
            "/collaborations/{id}/analyses",
            get(analysis::list_analyses),
        )
        .route(
            "/collaborations/{id}/analyses/{analysis}",
            get(analysis::get_analysis),
        )
        .route("/templates", get(analysis::templates))
        .route(
            "/collaborations/{id}/templates/approvals",
            get(analysis::approvals),
        )
        .route(
            "/collaborations/{id}/templates/{template}/approvals",
            post(analysis::approve).delete(analysis::revoke),
        )
        .route(
            "/collaborations/{id}/templates/{template}/runs",
            post(analysis::run_template),
        )
        .route(
            "/collaborations/{id}/activations",
            get(activation::list).post(activation::request),
        )
        .route(
            "/collaborations/{id}/activations/{activation}",
            get(activation::get),
        )
        .route(
            "/collaborations/{id}/activations/{activation}/approve",
            post(activation::approve),
        )
        .route(
            "/collaborations/{id}/activations/{activation}/reject",
            post(activation::reject),
        )
        .route(
            "/collaborations/{id}/activations/{activation}/segment",
            post(activation::segment),
        );
    let counted = std::sync::Arc::clone(&metrics);
    Router::new()
        .nest("/v1", api)
        .route("/", get(console::index))
        .route("/console/app.js", get(console::app_js))
        .route("/console/app.css", get(console::app_css))
        .route(
            "/console/session",
            get(console::current)
                .post(console::sign_in)
                .delete(console::sign_out),
        )
        .route("/metrics", get(metrics::scrape))
        .fallback(no_route)
        .method_not_allowed_fallback(bad_method)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(axum::middleware::from_fn(connections::header_limits))
        .layer(axum::middleware::from_fn(move |req, next| {
            metrics::track(std::sync::Arc::clone(&counted), req, next)
        }))
        .layer(axum::Extension(metrics))
        .layer(axum::Extension(std::sync::Arc::new(
            v1::ReadinessCache::default(),
        )))
        .layer(axum::middleware::from_fn(console::security_headers))
        .layer(TraceLayer::new_for_http())
        .with_state(room)
}

/// Largest JSON request body; a larger one is refused with 413 `payload_too_large`.
pub const MAX_JSON_BODY: usize = 2 << 20;

/// Serves `room` on `listener` with the default [`ServeOptions`] until `shutdown` completes.
pub async fn serve(
    room: CleanRoom,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(room, listener, ServeOptions::default(), shutdown).await
}

pub use connections::{ServeOptions, serve_with};

/// Binds `addr` (port 0 picks a free port) and returns the listener with its real address.
pub async fn bind(addr: &str) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}
