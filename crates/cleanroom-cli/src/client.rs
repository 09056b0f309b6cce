//! The HTTP client behind every client subcommand.

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};
use bytes::Bytes;
use cleanroom_server::v1::{ARROW_STREAM, CSV};
use cleanroom_server::wire::*;
use futures_util::TryStreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// An error answer from the server, shown to the user as the server phrased it.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub problem: Option<Problem>,
    pub body: String,
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            // For invalid data the detail names line and column already; a refusal also
            // names the rule that refused, so scripts and people can tell rules apart.
            Some(p) => {
                write!(f, "{} [{}]", p.detail, p.code)?;
                match &p.rule {
                    Some(rule) => write!(f, " (rule {rule})"),
                    None => Ok(()),
                }
            }
            None => write!(
                f,
                "the server answered {} {}",
                self.status,
                self.body.trim()
            ),
        }
    }
}

impl std::error::Error for ApiFailure {}

/// One segment of a request path, percent-encoded so that no argument can change the route:
/// everything but letters, digits and `-._~` is escaped (`/`, `?`, `#`, `%` included). `.` and
/// `..` are refused outright, since URL parsers resolve them even when escaped.
pub fn seg(s: &str) -> Result<String> {
    if matches!(s, "" | "." | "..") {
        anyhow::bail!("{s:?} is not a valid id or name");
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(out)
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// The server's base URL, as given.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A client of `server` (`http://` or `https://`); an `https://` server's certificate is
    /// checked against the system's roots and, when given, the PEM certificates in `ca_cert`.
    pub fn new(server: &str, token: Option<String>, ca_cert: Option<&Path>) -> Result<Self> {
        let base = server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!("--server must be an http:// or https:// URL, got {server:?}");
        }
        install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("cleanroom-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading --ca-cert {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--ca-cert {} is not PEM certificates", path.display()))?;
            if certs.is_empty() {
                anyhow::bail!(
                    "--ca-cert {} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)",
                    path.display()
                );
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(Client { http, base, token })
    }

    pub fn with_token(&self, token: &str) -> Self {
        Client {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut r = self
            .http
            .request(method, format!("{}/v1{}", self.base, path));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn send<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T> {
        let resp = req.send().await.map_err(|e| {
            if let Some(tls) = tls_failure(&e) {
                if tls.contains("CaUsedAsEndEntity") {
                    return anyhow::anyhow!(
                        "the server at {} presents a CA certificate as its own ({tls}); a bare \
                         `openssl req -x509` makes one: give the server a certificate with \
                         basicConstraints CA:FALSE (`-addext basicConstraints=critical,CA:FALSE`), \
                         or one signed by a CA that you pass with --ca-cert",
                        self.base
                    );
                }
                anyhow::anyhow!(
                    "the server at {} is not trusted: {tls}; if it uses a private CA or a self-signed \
                     certificate, pass that certificate with --ca-cert (or CLEANROOM_CA_CERT)",
                    self.base
                )
            } else if e.is_connect() {
                anyhow::anyhow!(
                    "cannot reach the server at {}: is `cleanroom serve` running there? (set --server or CLEANROOM_SERVER)",
                    self.base
                )
            } else {
                anyhow::anyhow!("request to {} failed: {e}", self.base)
            }
        })?;
        let status = resp.status();
        if status == StatusCode::NO_CONTENT {
            return serde_json::from_str("null").context("empty answer");
        }
        let body = resp.text().await.context("reading the server's answer")?;
        if !status.is_success() {
            return Err(ApiFailure {
                status,
                problem: serde_json::from_str(&body).ok(),
                body,
            }
            .into());
        }
        serde_json::from_str(&body)
            .with_context(|| format!("unexpected answer from the server: {body}"))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(self.request(Method::PUT, path).json(body)).await
    }

    pub async fn send_post_empty(&self, path: &str) -> Result<()> {
        self.send::<()>(
            self.request(Method::POST, path)
                .json(&serde_json::json!({})),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Result<()> {
        self.send::<()>(self.request(Method::DELETE, path)).await
    }

    /// POSTs to `path` and streams the answer's body into `dest` atomically: a temporary file
    /// next to it (owner-only permissions), fsynced, then renamed over `dest`. A failure leaves
    /// no partial file. Returns the number of bytes written.
    pub async fn download_to(&self, path: &str, dest: &Path) -> Result<u64> {
        use std::io::Write;
        let resp = self
            .request(Method::POST, path)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("request to {} failed: {e}", self.base))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.context("reading the server's answer")?;
            return Err(ApiFailure {
                status,
                problem: serde_json::from_str(&body).ok(),
                body,
            }
            .into());
        }
        let mut file = crate::files::AtomicFile::beside(dest)?;
        let mut written = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body
            .try_next()
            .await
            .context("the download was cut short; nothing was written")?
        {
            file.file()
                .write_all(&chunk)
                .with_context(|| format!("cannot write {}", dest.display()))?;
            written += chunk.len() as u64;
        }
        file.commit(true)?;
        Ok(written)
    }

    /// Streams a CSV or Parquet file into a declared dataset, with a progress bar on stderr.
    /// Parquet is converted to an Arrow IPC stream on the fly so neither side holds it whole.
    pub async fn upload(
        &self,
        collab: &str,
        name: &str,
        file: &Path,
        quiet: bool,
    ) -> Result<DatasetOut> {
        let path = format!(
            "/collaborations/{}/datasets/{}/data",
            seg(collab)?,
            seg(name)?
        );
        let is_parquet = file
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
        let size = std::fs::metadata(file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .len();
        let (body, media, pb) = if is_parquet {
            let (body, rows) = parquet_as_arrow_stream(file)?;
            let pb = progress(rows, quiet, "rows");
            let pb2 = pb.clone();
            let body = body
                .inspect_ok(move |(_, n)| pb2.inc(*n))
                .map_ok(|(b, _)| b);
            (reqwest::Body::wrap_stream(body), ARROW_STREAM, pb)
        } else {
            let f = tokio::fs::File::open(file)
                .await
                .with_context(|| format!("cannot open {}", file.display()))?;
            let pb = progress(size, quiet, "bytes");
            let pb2 = pb.clone();
            let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024)
                .inspect_ok(move |b| pb2.inc(b.len() as u64));
            (reqwest::Body::wrap_stream(stream), CSV, pb)
        };
        let req = self
            .request(Method::PUT, &path)
            .header(reqwest::header::CONTENT_TYPE, media)
            .body(body);
        let out = self.send::<DatasetOut>(req).await;
        pb.finish_and_clear();
        out
    }
}

fn progress(total: u64, quiet: bool, unit: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    let template = if unit == "bytes" {
        "  uploading [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "  uploading [{bar:30}] {pos}/{len} rows {per_sec} eta {eta}"
    };
    pb.set_style(
        ProgressStyle::with_template(template)
            .expect("valid progress template")
            .progress_chars("=> "),
    );
    pb
}

type ChunkStream = futures_util::stream::BoxStream<'static, std::io::Result<(Bytes, u64)>>;

/// Reads a local Parquet file on a blocking thread and yields it as Arrow IPC stream chunks,
/// each with the number of rows it carries. Returns the stream and the file's row count.
fn parquet_as_arrow_stream(file: &Path) -> Result<(ChunkStream, u64)> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(f)
        .with_context(|| format!("{} is not a readable Parquet file", file.display()))?;
    let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
    let schema = builder.schema().clone();
    let reader = builder.with_batch_size(64 * 1024).build()?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<(Bytes, u64)>>(4);
    tokio::task::spawn_blocking(move || {
        let run = || -> std::result::Result<(), String> {
            let mut w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &schema)
                .map_err(|e| e.to_string())?;
            for batch in reader {
                let batch = batch.map_err(|e| format!("reading the Parquet file: {e}"))?;
                w.write(&batch).map_err(|e| e.to_string())?;
                let chunk = Bytes::from(std::mem::take(w.get_mut()));
                if tx
                    .blocking_send(Ok((chunk, batch.num_rows() as u64)))
                    .is_err()
                {
                    return Ok(()); // the request was abandoned
                }
            }
            w.finish().map_err(|e| e.to_string())?;
            let tail = Bytes::from(std::mem::take(w.get_mut()));
            let _ = tx.blocking_send(Ok((tail, 0)));
            Ok(())
        };
        if let Err(e) = run() {
            let _ = tx.blocking_send(Err(std::io::Error::other(e)));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((Box::pin(stream), rows))
}

/// The TLS error (an untrusted or invalid certificate, a failed handshake) behind a failed
/// request, if that is why it failed.
fn tls_failure(e: &reqwest::Error) -> Option<String> {
    let mut at: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = at {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t.to_string());
        }
        // An I/O error's `source` skips the error it wraps (which may be another I/O error
        // around the TLS one): follow what it wraps instead.
        at = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// Makes *ring* the process's TLS crypto provider (the one the server and PSI use; the HTTP
/// client is built without one of its own). Idempotent.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
