//! The `cleanroom` binary as a user runs it: `init`, `serve` as a separate process, client
//! subcommands, a kill in the middle of an upload, tampering with the audit log, and the demo.

mod audit;
mod crash;
mod flow;
mod psi;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_cleanroom");

/// A `cleanroom serve` process on 127.0.0.1 with its own data directory.
pub struct ServeProcess {
    pub child: Child,
    pub url: String,
}

impl ServeProcess {
    pub fn start(data_dir: &Path) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env_remove("CLEANROOM_MASTER_KEY")
            .env("CLEANROOM_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting cleanroom serve");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("serve exited before listening")
                .unwrap();
            if let Some(rest) = line.strip_prefix("cleanroom listening on ") {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        ServeProcess { child, url }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stop(&mut self) {
        #[cfg(unix)]
        {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let _ = self.child.wait();
        }
        #[cfg(not(unix))]
        self.kill();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the binary with a server URL and token.
pub fn cli(url: &str, token: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("CLEANROOM_SERVER", url)
        .env("CLEANROOM_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .expect("running cleanroom")
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

/// `cleanroom init` in a fresh directory; returns the data dir and the operator token.
pub fn init(tmp: &Path) -> (PathBuf, String) {
    let data = tmp.join("data");
    let out = Command::new(BIN)
        .args(["init", "--json", "--data-dir"])
        .arg(&data)
        .env_remove("CLEANROOM_MASTER_KEY")
        .output()
        .unwrap();
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
