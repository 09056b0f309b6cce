//! The real server on 127.0.0.1 with a fresh data directory per test.

mod activation;
mod analysis;
mod api;
mod console;
mod denials;
mod hardening;
mod ops;
mod refusals;
mod tls;
mod uploads;
mod webdriver;

use cleanroom_server::ServeOptions;
use cleanroom_server::wire::*;
use cleanroom_service::{CleanRoom, Config, Limits};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub struct Server {
    pub dir: tempfile::TempDir,
    pub base: String,
    pub http: reqwest::Client,
    pub op: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    pub room: CleanRoom,
}

/// Builds an HTTP client with *ring* as the process's TLS provider (the client has none of
/// its own).
pub fn http_client(b: reqwest::ClientBuilder) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    b.build().unwrap()
}

/// The default options, but a throttle on failed authentication that the tests, which fail
/// authentication on purpose on every endpoint, do not reach (`hardening.rs` tests the
/// throttle with its own).
pub fn serve_options() -> ServeOptions {
    let mut o = ServeOptions::default();
    o.auth_throttle.max_failures = 1_000_000;
    o
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with(Limits::default()).await
    }

    pub async fn start_with(limits: Limits) -> Self {
        Self::start_serving(limits, serve_options()).await
    }

    pub async fn start_serving(limits: Limits, opts: ServeOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::new(dir.path().join("data"));
        cfg.limits = limits.clone();
        let room = CleanRoom::open(cfg).await.unwrap();
        let (_, _, t) = room.init_operator("operator", "admin").await.unwrap();
        let mut s = Self::serve(dir, room, opts).await;
        s.op = t.expose().to_owned();
        s
    }

    async fn serve(dir: tempfile::TempDir, room: CleanRoom, opts: ServeOptions) -> Self {
        let (listener, addr) = cleanroom_server::bind("127.0.0.1:0").await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(cleanroom_server::serve_with(
            room.clone(),
            listener,
            opts,
            async {
                let _ = rx.await;
            },
        ));
        Server {
            dir,
            base: format!("http://{addr}"),
            http: http_client(reqwest::Client::builder()),
            op: String::new(),
            stop: Some(tx),
            task: Some(task),
            room,
        }
    }

    /// Stops the server and starts a new one on the same data directory.
    pub async fn restart(self) -> Self {
        self.restart_after(|_| async {}).await
    }

    /// Stops the server, runs `meanwhile` on the stopped data directory (to stage what a crash
    /// leaves, say), and starts a new one on it.
    pub async fn restart_after<F, Fut>(mut self, meanwhile: F) -> Self
    where
        F: FnOnce(std::path::PathBuf) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        self.room.close().await;
        meanwhile(self.dir.path().join("data")).await;
        let room = CleanRoom::open(Config::new(self.dir.path().join("data")))
            .await
            .unwrap();
        let op = std::mem::take(&mut self.op);
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let mut s = Self::serve(dir, room, serve_options()).await;
        s.op = op;
        s
    }

    /// Stops the server, runs one SQL statement on its metadata database (to stage what a
    /// crash leaves), and starts a new one on it; returns it and the rows the statement changed.
    pub async fn restart_editing(self, sql: &str, binds: &[&str]) -> (Self, u64) {
        let sql = sql.to_owned();
        let binds: Vec<String> = binds.iter().map(|b| (*b).to_owned()).collect();
        let changed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let out = changed.clone();
        let s = self
            .restart_after(|data| async move {
                let db = data.join("meta.sqlite");
                let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
                    .await
                    .unwrap();
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for b in binds {
                    q = q.bind(b);
                }
                let done = q.execute(&pool).await.unwrap();
                out.store(done.rows_affected(), std::sync::atomic::Ordering::SeqCst);
                pool.close().await;
            })
            .await;
        (s, changed.load(std::sync::atomic::Ordering::SeqCst))
    }

    pub fn req(&self, method: Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{}", self.base, path));
        if token.is_empty() {
            r
        } else {
            r.bearer_auth(token)
        }
    }

    /// Sends a JSON request; returns status and parsed body (problem details on errors).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.req(method, path, token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        if !status.is_success() {
            assert_eq!(
                ct, "application/problem+json",
                "error without problem details: {status} {text}"
            );
        }
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, v)
    }

    pub async fn ok(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(method, path, token, body).await;
        assert!(s.is_success(), "{path}: {s} {v}");
        v
    }

    pub async fn org(&self, name: &str) -> String {
        let v = self
            .ok(
                Method::POST,
                "/v1/orgs",
                &self.op,
                Some(json!({"name": name, "admin": "admin"})),
            )
            .await;
        let c: CreatedOrg = serde_json::from_value(v).unwrap();
        c.token
    }

    /// brand creates a collaboration and publisher joins it with `abilities`.
    pub async fn collab(&self, brand: &str, publisher: &str, abilities: &[&str]) -> String {
        let v = self
            .ok(
                Method::POST,
                "/v1/collaborations",
                brand,
                Some(json!({"name": "c"})),
            )
            .await;
        let id = v["collaboration"]["id"].as_str().unwrap().to_owned();
        self.ok(
            Method::POST,
            &format!("/v1/collaborations/{id}/invitations"),
            brand,
            Some(json!({"org": "publisher", "abilities": abilities})),
        )
        .await;
        self.ok(
            Method::POST,
            &format!("/v1/collaborations/{id}/accept"),
            publisher,
            None,
        )
        .await;
        id
    }

    pub async fn declare(&self, token: &str, collab: &str, name: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/v1/collaborations/{collab}/datasets"),
            token,
            Some(json!({"name": name, "columns": columns()})),
        )
        .await
    }

    pub async fn upload(
        &self,
        token: &str,
        collab: &str,
        name: &str,
        media: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let resp = self
            .req(
                Method::PUT,
                &format!("/v1/collaborations/{collab}/datasets/{name}/data"),
                token,
            )
            .header("content-type", media)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

/// Entries of an audit chain after `after`, read over HTTP with `token`.
pub async fn audit_after(s: &Server, token: &str, chain: &str, after: u64) -> Vec<Value> {
    let v = s
        .ok(
            Method::GET,
            &format!("/v1/audit/{chain}?after={after}&limit=10000"),
            token,
            None,
        )
        .await;
    v["entries"].as_array().unwrap().clone()
}

/// The sequence number of a chain's last entry (0 when empty).
pub async fn head(s: &Server, token: &str, chain: &str) -> u64 {
    let v = s
        .ok(
            Method::GET,
            &format!("/v1/audit/{chain}?after=0&limit=1"),
            token,
            None,
        )
        .await;
    v["head"]["seq"].as_u64().unwrap_or(0)
}

/// Whether `entries` hold a refusal of `action` recorded with `code` and outcome `outcome`.
pub fn refused(entries: &[Value], action: &str, code: &str, outcome: &str) -> bool {
    entries.iter().any(|e| {
        e["action"] == action
            && e["outcome"] == outcome
            && e["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with(&format!("{code}: ")))
    })
}

pub fn columns() -> Value {
    json!([
        {"name": "pid", "type": "string", "role": "privacy_unit"},
        {"name": "email_hmac", "type": "string", "role": "identifier"},
        {"name": "city", "type": "string", "role": "dimension"},
        {"name": "n", "type": "int64", "role": "metric"},
    ])
}

pub fn csv(rows: usize) -> String {
    let mut s = String::from("pid,email_hmac,city,n\n");
    for i in 0..rows {
        s.push_str(&format!(
            "person-{i:06},secret-hash-{i:06},city{},{}\n",
            i % 7,
            i
        ));
    }
    s
}
