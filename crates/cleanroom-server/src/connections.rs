//! Connections: how many, how long a client may take to send its request head or its body,
//! and how large a head may be. A client that opens connections and sends nothing (or half a
//! request) must not be able to stop the server accepting others.
//!
//! - At most [`ServeOptions::max_connections`] connections are served at once; one more is
//!   answered at once with `503` problem details and closed.
//! - A request head must arrive within [`ServeOptions::header_read_timeout`]; the same timer
//!   closes a kept-alive connection that stays idle that long between requests.
//! - A JSON request body that sends nothing for [`ServeOptions::body_idle_timeout`] fails (an
//!   upload has its own, longer, idle timeout in its handler).
//! - Failed authentications are throttled per source ([`crate::throttle`]); every request
//!   carries its [`ClientSource`].
//! - More than [`MAX_HEADERS`] headers or [`MAX_HEADER_BYTES`] of them: `431` problem details.
//!   Beyond [`HARD_MAX_HEADERS`] headers or [`HARD_MAX_HEAD_BYTES`] of request head, hyper
//!   itself answers a bare `431` before any of our code runs: those limits are what bounds the
//!   memory one request head can take.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::problem::ApiError;
use crate::throttle::{AuthThrottle, ClientSource, ThrottleOptions};

/// Most headers a request may carry (problem details beyond).
pub const MAX_HEADERS: usize = 100;
/// Most bytes of header names and values a request may carry (problem details beyond).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Headers beyond which hyper refuses a request by itself.
pub const HARD_MAX_HEADERS: usize = 400;
/// Request-head bytes beyond which hyper refuses a request by itself (also its read buffer).
pub const HARD_MAX_HEAD_BYTES: usize = 128 * 1024;

/// How the server treats connections.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time to send a request head, and to keep an idle connection open between requests.
    pub header_read_timeout: Duration,
    /// Longest pause in a (non-upload) request body.
    pub body_idle_timeout: Duration,
    /// How failed authentications are throttled per source.
    pub auth_throttle: ThrottleOptions,
    /// TLS ([`crate::tls::server_config`]); plain HTTP when `None`. The handshake must finish
    /// within `header_read_timeout`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(60),
            auth_throttle: ThrottleOptions::default(),
            tls: None,
        }
    }
}

/// Serves `room` on `listener` until `shutdown` completes, then lets open requests finish.
pub async fn serve_with(
    room: cleanroom_service::CleanRoom,
    listener: TcpListener,
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let idle = opts.body_idle_timeout;
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let app: Router = crate::app_with(room, Arc::clone(&metrics)).layer(axum::middleware::from_fn(
        move |req: Request, next: Next| body_timeout(idle, req, next),
    ));
    let permits = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let throttle = Arc::new(AuthThrottle::new(opts.auth_throttle.clone()));
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            metrics.connections_refused.inc();
            if opts.tls.is_none() {
                tokio::spawn(refuse_full(stream));
            }
            // Over TLS a plain answer would be noise to the client: the connection is closed.
            continue;
        };
        let _ = stream.set_nodelay(true);
        let source = ClientSource {
            addr: peer,
            throttle: Arc::clone(&throttle),
            tls: opts.tls.is_some(),
        };
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            app.clone(),
            move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(source.clone());
                req
            },
        ));
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(opts.header_read_timeout)
            .max_headers(HARD_MAX_HEADERS)
            .max_buf_size(HARD_MAX_HEAD_BYTES);
        let watcher = graceful.watcher();
        let tls = opts.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let handshake_timeout = opts.header_read_timeout;
        let open = metrics.connections_open.clone();
        open.inc();
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(conn).await
                }
                Some(acceptor) => {
                    // A client that connects and never finishes its handshake holds a permit
                    // only until the head timeout.
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let conn = http.serve_connection(TokioIo::new(tls_stream), service);
                            watcher.watch(conn).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Answers a connection over the limit with `503` problem details, then closes it, reading
/// (and dropping) what the client sent for a moment so that the answer is not lost to a reset.
async fn refuse_full(mut stream: TcpStream) {
    let body = serde_json::json!({
        "type": "urn:cleanroom:problem:unavailable",
        "title": "Service Unavailable",
        "status": 503,
        "code": "unavailable",
        "detail": "the server is serving as many connections as it allows; retry in a moment",
    })
    .to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let answer = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut read = 0usize;
        while read < 64 * 1024 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

/// Refuses requests with too many or too large headers, as problem details.
pub(crate) async fn header_limits(req: Request, next: Next) -> Response {
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "a request may carry at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes of them \
                 (this one: {} headers, {bytes} bytes)",
                headers.len()
            ),
        )
        .into_response();
    }
    next.run(req).await
}

/// Puts an idle timeout on every request body but an upload's (which has its own).
async fn body_timeout(idle: Duration, req: Request, next: Next) -> Response {
    let is_upload = req.method() == Method::PUT && req.uri().path().ends_with("/data");
    if is_upload {
        return next.run(req).await;
    }
    let req = req.map(|b| Body::new(tower_http::timeout::TimeoutBody::new(idle, b)));
    next.run(req).await
}
