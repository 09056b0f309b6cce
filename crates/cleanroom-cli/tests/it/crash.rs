//! Killing the server in the middle of an upload: no partial dataset, no plaintext on disk.

use std::time::{Duration, Instant};

use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_upload_leaves_no_partial_dataset_and_no_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, op) = init(tmp.path());
    let mut server = ServeProcess::start(&data);
    let url = server.url.clone();
    let (brand, publisher, id) = {
        let (u, o) = (url.clone(), op.clone());
        tokio::task::spawn_blocking(move || two_parties(&u, &o))
            .await
            .unwrap()
    };
    let mut args = vec!["dataset", "create", &id, "crm"];
    args.extend(COLUMNS);
    ok(&cli(&url, &brand, &args));

    // Send 400k rows quickly (more than one Parquet row group), then stall forever.
    let upload = stalled_upload(&url, &brand, &id, "crm", 400_000);

    // Wait until ciphertext has reached the disk.
    let tmp_dir = data.join("tmp");
    let start = Instant::now();
    loop {
        let written: u64 = files_under(&tmp_dir)
            .iter()
            .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
            .sum();
        if written > 1_000_000 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "upload never reached the disk"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill();
    // The killed server's connection is gone: the upload fails (bounded, never a hang).
    let _ = tokio::time::timeout(PROCESS_TIMEOUT, upload)
        .await
        .expect("the upload did not end after the server was killed");

    // What the crash left: an unfinished file of ciphertext only, and no dataset file.
    let left = files_under(&data);
    let partial: Vec<&PathBuf> = left.iter().filter(|p| p.starts_with(&tmp_dir)).collect();
    assert!(!partial.is_empty());
    for f in &left {
        let bytes = std::fs::read(f).unwrap();
        for needle in [&b"person-00"[..], b"hmac-00", b"city3"] {
            assert!(
                !contains(&bytes, needle),
                "plaintext {:?} in {}",
                String::from_utf8_lossy(needle),
                f.display()
            );
        }
    }
    assert!(
        files_under(&data.join("datasets")).is_empty(),
        "a partial dataset was committed"
    );

    // After a restart: the upload is gone, the dataset is pending, and it can be uploaded.
    let server = ServeProcess::start(&data);
    let url = server.url.clone();
    assert!(
        files_under(&tmp_dir).is_empty(),
        "unfinished uploads must be removed at start-up"
    );
    let v = json(&cli(
        &url,
        &brand,
        &["--json", "dataset", "show", &id, "crm"],
    ));
    assert_eq!(v["status"], "pending");
    // ... and the collaboration's audit chain says what happened to it.
    let log = json(&cli(&url, &brand, &["--json", "audit", "list", &id]));
    assert!(
        log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == "server"
                && e["action"] == "dataset.upload"
                && e["target"] == "crm"
                && e["outcome"] == "failed"
                && e["detail"] == "interrupted upload discarded: the server receiving it stopped"),
        "{log:#}"
    );
    assert!(
        json(&cli(&url, &publisher, &["--json", "dataset", "list", &id]))
            .as_array()
            .unwrap()
            .is_empty()
    );
    let file = tmp.path().join("crm.csv");
    write_csv(&file, 1000);
    let v = json(&cli(
        &url,
        &brand,
        &[
            "--json",
            "dataset",
            "upload",
            &id,
            "crm",
            "--file",
            file.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        (v["status"].as_str(), v["row_count"].as_u64()),
        (Some("ready"), Some(1000))
    );
    let verified = ok(&cli(&url, &brand, &["audit", "verify", &id]));
    assert!(verified.contains("intact"), "{verified}");
}

/// Killing the *client* in the middle of an upload: the server notices, the dataset goes back
/// to pending at once (not after an idle timeout, not at the next restart), and the same
/// command run again succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_client_does_not_wedge_its_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, op) = init(tmp.path());
    let server = ServeProcess::start(&data);
    let url = server.url.clone();
    let (brand, _publisher, id) = {
        let (u, o) = (url.clone(), op.clone());
        tokio::task::spawn_blocking(move || two_parties(&u, &o))
            .await
            .unwrap()
    };
    let mut args = vec!["dataset", "create", &id, "crm"];
    args.extend(COLUMNS);
    ok(&cli(&url, &brand, &args));
    let file = tmp.path().join("crm.csv");
    write_csv(&file, 1_500_000);
    let status = |url: &str| -> String {
        let v = json(&cli(
            url,
            &brand,
            &["--json", "dataset", "show", &id, "crm"],
        ));
        v["status"].as_str().unwrap().to_owned()
    };
    let upload = |url: &str| {
        Command::new(BIN)
            .args(["dataset", "upload", &id, "crm", "--file"])
            .arg(&file)
            .env("CLEANROOM_SERVER", url)
            .env("CLEANROOM_TOKEN", &brand)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut client = upload(&url);
    let start = Instant::now();
    while status(&url) != "uploading" {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the upload never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&client),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let _ = client.wait();
    let start = Instant::now();
    while status(&url) != "pending" {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the dataset stayed uploading after its client was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut again = upload(&url);
    let done = wait_bounded(&mut again, PROCESS_TIMEOUT, "the second upload");
    assert!(done.success());
    assert_eq!(status(&url), "ready");
}

/// A configuration file nested absurdly deep is a clear error with a non-zero exit, not a stack
/// overflow (the `toml` crate bounds nesting).
#[test]
fn deeply_nested_toml_is_a_clean_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("deep.toml");
    let depth = 200_000;
    std::fs::write(
        &cfg,
        format!("x = {}1{}\n", "[".repeat(depth), "]".repeat(depth)),
    )
    .unwrap();
    let input = tmp.path().join("in.csv");
    std::fs::write(&input, "email\na@example.com\n").unwrap();
    let out = run(Command::new(BIN)
        .args(["prepare", "--config"])
        .arg(&cfg)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(tmp.path().join("out.parquet"))
        .env("CLEANROOM_PREP_SECRET", "0123456789abcdef0123456789abcdef"));
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("deep.toml") || err.contains("config"), "{err}");
}
