//! `GET /metrics`: counters for operators, in the OpenMetrics text format Prometheus scrapes.
//!
//! Only the operator's admins may read them (a scraper sends an operator admin's token as a
//! bearer token); other callers are refused and audited. The metrics carry no identifiers,
//! names, collaboration ids or query text: labels are the HTTP method, the *route template*
//! (`/v1/collaborations/{id}/queries`, never the concrete path), the status, the kind and
//! outcome of an analysis.
//!
//! What is counted:
//! - `cleanroom_http_requests_total{method,route,status}` and
//!   `cleanroom_http_request_duration_seconds{route}`;
//! - `cleanroom_analyses_total{kind,outcome}`: queries and template runs by what became of
//!   them (`released`, `dry_run`, `failed`, or the refusal's problem code);
//! - `cleanroom_budget_refusals_total`: answers `budget_exhausted`;
//! - `cleanroom_auth_failures_total` (401) and `cleanroom_auth_throttled_total` (429);
//! - `cleanroom_upload_bytes_total`: request-body bytes received by uploads;
//! - `cleanroom_connections_open` and `cleanroom_connections_refused_total` (over the limit);
//! - `cleanroom_spill_files_total` and `cleanroom_spilled_bytes_total`: what analyses that
//!   did not fit in `--max-memory` spilled to disk (encrypted, see docs/security.md).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cleanroom_service::CleanRoom;
use http_body_util::BodyExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::auth::Authed;
use crate::problem::ApiError;

/// The problem code of an error response (put on it by [`ApiError`]).
#[derive(Debug, Clone, Copy)]
pub struct ProblemCode(pub &'static str);

/// What became of an analysis a response answers (put on it by the query and template
/// handlers).
#[derive(Debug, Clone, Copy)]
pub struct AnalysisMark(pub &'static str);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnalysisLabels {
    kind: String,
    outcome: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The server's counters.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: HistogramFamily,
    analyses: Family<AnalysisLabels, Counter>,
    budget_refusals: Counter,
    auth_failures: Counter,
    auth_throttled: Counter,
    upload_bytes: Counter,
    pub(crate) connections_open: Gauge,
    pub(crate) connections_refused: Counter,
    spill_files: Counter,
    spilled_bytes: Counter,
    /// Serialises bringing the spill counters up to the engine's own.
    spill_sync: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cleanroom");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route template and status",
            requests.clone(),
        );
        let durations: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (until its head is sent), by route template",
            durations.clone(),
        );
        let analyses = Family::<AnalysisLabels, Counter>::default();
        registry.register(
            "analyses",
            "Queries and template runs by kind and outcome (released, dry_run, failed, or the refusal's code)",
            analyses.clone(),
        );
        let budget_refusals = Counter::default();
        registry.register(
            "budget_refusals",
            "Requests refused because a privacy budget cannot pay (budget_exhausted)",
            budget_refusals.clone(),
        );
        let auth_failures = Counter::default();
        registry.register(
            "auth_failures",
            "Requests refused for a missing, unknown, malformed or revoked token (401)",
            auth_failures.clone(),
        );
        let auth_throttled = Counter::default();
        registry.register(
            "auth_throttled",
            "Requests refused because their source failed authentication too often (429)",
            auth_throttled.clone(),
        );
        let upload_bytes = Counter::default();
        registry.register(
            "upload_bytes",
            "Request-body bytes received by dataset uploads",
            upload_bytes.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Connections being served",
            connections_open.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections refused because the server served as many as it allows",
            connections_refused.clone(),
        );
        let spill_files = Counter::default();
        registry.register(
            "spill_files",
            "Encrypted spill files analyses created because they did not fit in the memory limit",
            spill_files.clone(),
        );
        let spilled_bytes = Counter::default();
        registry.register(
            "spilled_bytes",
            "Bytes (ciphertext) analyses spilled to disk because they did not fit in the memory limit",
            spilled_bytes.clone(),
        );
        Metrics {
            registry,
            spill_files,
            spilled_bytes,
            spill_sync: std::sync::Mutex::new(()),
            requests,
            durations,
            analyses,
            budget_refusals,
            auth_failures,
            auth_throttled,
            upload_bytes,
            connections_open,
            connections_refused,
        }
    }
}

impl Metrics {
    /// The OpenMetrics text of every counter.
    pub fn encode(&self) -> String {
        if let Ok(_guard) = self.spill_sync.lock() {
            for (counter, now) in [
                (&self.spill_files, cleanroom_service::spill_files()),
                (&self.spilled_bytes, cleanroom_service::spilled_bytes()),
            ] {
                counter.inc_by(now.saturating_sub(counter.get()));
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn is_upload(method: &Method, route: &str) -> bool {
    method == Method::PUT && route.ends_with("/datasets/{name}/data")
}

fn analysis_kind(method: &Method, route: &str) -> Option<&'static str> {
    if method != Method::POST {
        return None;
    }
    if route.ends_with("/queries") {
        Some("query")
    } else if route.ends_with("/runs") {
        Some("template")
    } else {
        None
    }
}

/// Counts every request and its answer.
pub(crate) async fn track(metrics: Arc<Metrics>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let req = if is_upload(&method, &route) {
        let bytes = metrics.upload_bytes.clone();
        req.map(|b| {
            Body::new(b.map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    bytes.inc_by(data.len() as u64);
                }
                frame
            }))
        })
    } else {
        req
    };
    let resp = next.run(req).await;
    let status = resp.status();
    // A client may send any method name: only the standard ones become label values, so
    // that no client can grow the number of series.
    let method = match method {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::PATCH
        | Method::HEAD
        | Method::OPTIONS => method,
        _ => Method::from_bytes(b"OTHER").unwrap_or(Method::GET),
    };
    let code = resp.extensions().get::<ProblemCode>().map(|c| c.0);
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method: method.as_str().to_owned(),
            route: route.clone(),
            status: status.as_u16().to_string(),
        })
        .inc();
    metrics
        .durations
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    if code == Some("budget_exhausted") {
        metrics.budget_refusals.inc();
    }
    if status == StatusCode::UNAUTHORIZED {
        metrics.auth_failures.inc();
    }
    if code == Some("too_many_failures") {
        metrics.auth_throttled.inc();
    }
    if let Some(kind) = analysis_kind(&method, &route) {
        let outcome = match (resp.extensions().get::<AnalysisMark>(), code) {
            (Some(mark), _) => mark.0,
            (None, Some(code)) => code,
            (None, None) => "other",
        };
        metrics
            .analyses
            .get_or_create(&AnalysisLabels {
                kind: kind.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
    resp
}

/// `GET /metrics`, for the operator's admins.
pub(crate) async fn scrape(
    State(room): State<CleanRoom>,
    Authed(p): Authed,
    axum::Extension(metrics): axum::Extension<Arc<Metrics>>,
) -> Result<Response, ApiError> {
    room.authorize_metrics(&p).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
        .into_response())
}
