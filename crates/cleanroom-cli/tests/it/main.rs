//! The `cleanroom` binary as a user runs it: `init`, `serve` as a separate process, client
//! subcommands, a kill in the middle of an upload, tampering with the audit log, the demo, and
//! a room whose metadata lives in PostgreSQL.

mod activation;
mod analysis;
mod audit;
mod cluster;
mod crash;
mod flow;
mod identity;
mod newcomer;
mod postgres;
mod prepare;
mod psi;
mod replicas;
mod s3;
mod tidy;
mod tls;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_cleanroom");

/// How long a process started by a test may take; past it the test fails instead of hanging.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(180);

/// Waits at most `timeout` for `child` to exit; returns `None` (after killing it) if it does not.
fn wait_for(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                return None;
            }
        }
    }
}

/// Like [`wait_for`] but fails the test when the process does not exit in time.
pub fn wait_bounded(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    wait_for(child, timeout).unwrap_or_else(|| panic!("{what} did not exit within {timeout:?}"))
}

/// Runs a command to completion, collecting its output, failing the test if it hangs.
pub fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting cleanroom");
    let collect = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = collect(Box::new(child.stdout.take().unwrap()));
    let stderr = collect(Box::new(child.stderr.take().unwrap()));
    let status = wait_bounded(&mut child, PROCESS_TIMEOUT, "cleanroom");
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// A `cleanroom serve` process on 127.0.0.1 with its own data directory.
pub struct ServeProcess {
    pub child: Child,
    pub url: String,
}

impl ServeProcess {
    pub fn start(data_dir: &Path) -> Self {
        Self::try_start(data_dir).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `serve` again at the address (`http://host:port`) an earlier one had.
    pub fn start_at(data_dir: &Path, url: &str) -> Self {
        let listen = url.trim_start_matches("http://");
        Self::try_start_on(data_dir, listen).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `serve`; returns what it printed if it exits before listening.
    pub fn try_start(data_dir: &Path) -> Result<Self, String> {
        Self::try_start_on(data_dir, "127.0.0.1:0")
    }

    fn try_start_on(data_dir: &Path, listen: &str) -> Result<Self, String> {
        Self::try_start_with(data_dir, listen, &[])
    }

    /// Starts `serve` with more arguments (`--tls-cert …`); the URL it prints is returned.
    pub fn try_start_with(
        data_dir: &Path,
        listen: &str,
        more: &[&std::ffi::OsStr],
    ) -> Result<Self, String> {
        Self::try_start_full(data_dir, listen, more, &[])
    }

    /// Starts `serve` with extra environment variables (`CLEANROOM_METADATA`, say).
    pub fn try_start_env(
        data_dir: &Path,
        listen: &str,
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        Self::try_start_full(data_dir, listen, &[], env)
    }

    pub fn try_start_full(
        data_dir: &Path,
        listen: &str,
        more: &[&std::ffi::OsStr],
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(more)
            .env_remove("CLEANROOM_MASTER_KEY")
            .env_remove("CLEANROOM_METADATA")
            .envs(env.iter().copied())
            .env("CLEANROOM_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting cleanroom serve");
        // A thread reads stderr to its end, so the server never blocks on a full pipe, and
        // hands the lines over until the listening address has been seen.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        let mut printed = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => match line.strip_prefix("cleanroom listening on ") {
                    Some(rest) => {
                        let url = rest.split_whitespace().next().unwrap().to_owned();
                        return Ok(ServeProcess { child, url });
                    }
                    None => printed.push(line),
                },
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = wait_for(&mut child, Duration::ZERO);
                    panic!("serve did not listen within {PROCESS_TIMEOUT:?}: {printed:?}");
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    wait_bounded(&mut child, PROCESS_TIMEOUT, "cleanroom serve");
                    return Err(printed.join("\n"));
                }
            }
        }
    }

    /// SIGKILL: the server gets no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        wait_bounded(
            &mut self.child,
            PROCESS_TIMEOUT,
            "cleanroom serve after SIGKILL",
        );
    }

    /// SIGTERM: the server shuts down gracefully and exits successfully.
    pub fn stop(&mut self) {
        #[cfg(unix)]
        {
            use rustix::process::{Pid, Signal, kill_process};
            kill_process(Pid::from_child(&self.child), Signal::TERM)
                .expect("sending SIGTERM to cleanroom serve");
            let status = wait_bounded(
                &mut self.child,
                PROCESS_TIMEOUT,
                "cleanroom serve after SIGTERM",
            );
            assert!(status.success(), "serve exited with {status} after SIGTERM");
        }
        #[cfg(not(unix))]
        self.kill();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        // No panic here: this may run while a failed test unwinds.
        let _ = self.child.kill();
        let _ = wait_for(&mut self.child, PROCESS_TIMEOUT);
    }
}

/// Runs the binary with a server URL and token, and a configuration directory of its own (so
/// that no audit head it remembers reaches another call).
pub fn cli(url: &str, token: &str, args: &[&str]) -> Output {
    let config = tempfile::tempdir().unwrap();
    cli_in(config.path(), url, token, args)
}

/// Runs the binary with a server URL, a token and the configuration directory `config`.
pub fn cli_in(config: &Path, url: &str, token: &str, args: &[&str]) -> Output {
    run(Command::new(BIN)
        .args(args)
        .env("CLEANROOM_SERVER", url)
        .env("CLEANROOM_TOKEN", token)
        .env("CLEANROOM_CONFIG_DIR", config)
        .stdin(Stdio::null()))
}

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

pub fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "command should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr.clone()).unwrap()
}

pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).unwrap()
}

/// Every file under `root`, at any depth (none when `root` does not exist).
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if p.exists() {
            out.push(p);
        }
    }
    out
}

/// Whether the bytes `needle` occur in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The test service that the environment variable `var` names (`.ci/services` sets them), or
/// `None` after saying loudly on stderr that `what` was skipped (CI fails on that line when the
/// variable is set).
pub fn env_or_skip(var: &str, what: &str) -> Option<String> {
    let value = std::env::var(var).ok().filter(|v| !v.is_empty());
    if value.is_none() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {var} not set — {what} not run (run `eval \"$(bash .ci/services)\"` first)"
        );
    }
    value
}

/// Starts uploading `rows` CSV rows (`person-…`, `hmac-…`, `city…`, `n`) into the dataset
/// `name` of `collab` through `url`, quickly, then stalls forever as a client that hangs
/// would: the returned task ends only when the server goes away.
pub fn stalled_upload(
    url: &str,
    token: &str,
    collab: &str,
    name: &str,
    rows: usize,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    use futures_util::StreamExt;
    let mut body = String::from("pid,email_hmac,city,n\n");
    for i in 0..rows {
        body.push_str(&format!(
            "person-{i:07},hmac-{i:07},city{},{}\n",
            i % 9,
            i % 5
        ));
    }
    let chunks: Vec<bytes::Bytes> = body
        .into_bytes()
        .chunks(64 * 1024)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>))
        .chain(futures_util::stream::pending());
    // The HTTP client has no TLS provider of its own (the CLI installs ring's, as here).
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::spawn(
        reqwest::Client::new()
            .put(format!(
                "{url}/v1/collaborations/{collab}/datasets/{name}/data"
            ))
            .bearer_auth(token)
            .header("content-type", "text/csv")
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    )
}

/// `cleanroom init` in a fresh directory; returns the data dir and the operator token.
pub fn init(tmp: &Path) -> (PathBuf, String) {
    let data = tmp.join("data");
    let out = run(Command::new(BIN)
        .args(["init", "--json", "--data-dir"])
        .arg(&data)
        .env_remove("CLEANROOM_MASTER_KEY")
        .env_remove("CLEANROOM_METADATA"));
    let v = json(&out);
    (data, v["token"].as_str().unwrap().to_owned())
}

/// Two organisations in a collaboration, each with a token. Returns (brand, publisher, id).
pub fn two_parties(url: &str, op: &str) -> (String, String, String) {
    let brand = json(&cli(url, op, &["--json", "org", "create", "brand"]))["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let publisher = json(&cli(url, op, &["--json", "org", "create", "publisher"]))["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = json(&cli(url, &brand, &["--json", "collab", "create", "spring"]));
    let id = c["collaboration"]["id"].as_str().unwrap().to_owned();
    ok(&cli(
        url,
        &brand,
        &[
            "collab",
            "invite",
            &id,
            "publisher",
            "--abilities",
            "contribute,receive",
        ],
    ));
    ok(&cli(url, &publisher, &["collab", "accept", &id]));
    (brand, publisher, id)
}

/// `budget grant` for the caller's organisation: `total` ε, at most `per_query` per query.
pub fn grant(url: &str, token: &str, collab: &str, total: &str, per_query: &str) {
    ok(&cli(
        url,
        token,
        &[
            "budget",
            "grant",
            collab,
            "--epsilon",
            total,
            "--per-query-epsilon",
            per_query,
        ],
    ));
}

pub fn write_csv(path: &Path, rows: usize) {
    let mut s = String::from("pid,email_hmac,city,n\n");
    for i in 0..rows {
        s.push_str(&format!("person-{i:07},hmac-{i:07},city{},{}\n", i % 9, i));
    }
    std::fs::write(path, s).unwrap();
}

pub const COLUMNS: [&str; 8] = [
    "-c",
    "pid:string:privacy_unit",
    "-c",
    "email_hmac:string:identifier",
    "-c",
    "city:string:dimension",
    "-c",
    "n:int64:metric",
];

/// The columns of a Parquet file, every value cast to text (null stays `None`).
pub fn string_values(path: &Path) -> (Vec<String>, Vec<Vec<Option<String>>>) {
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut names = Vec::new();
    let mut columns: Vec<Vec<Option<String>>> = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        if names.is_empty() {
            names = batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            columns = vec![Vec::new(); names.len()];
        }
        for (i, col) in batch.columns().iter().enumerate() {
            let text = arrow::compute::cast(col, &arrow::datatypes::DataType::Utf8).unwrap();
            let text = text
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap();
            columns[i].extend(text.iter().map(|v| v.map(str::to_owned)));
        }
    }
    (names, columns)
}
