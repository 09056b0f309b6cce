//! `cleanroom psi` as two processes on 127.0.0.1: exact results end to end, a wrong pin, and a
//! peer killed in the middle of the protocol.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::*;

/// Makes a key pair in `dir`; returns (cert, key, sha256).
fn keygen(dir: &Path) -> (PathBuf, PathBuf, String) {
    let out = Command::new(BIN)
        .args(["--json", "psi", "keygen", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    let v = json(&out);
    (
        PathBuf::from(v["cert"].as_str().unwrap()),
        PathBuf::from(v["key"].as_str().unwrap()),
        v["cert_sha256"].as_str().unwrap().to_owned(),
    )
}

struct Party {
    cert: PathBuf,
    key: PathBuf,
    fp: String,
}

fn parties(tmp: &Path) -> (Party, Party) {
    let mk = |n: &str| {
        let (cert, key, fp) = keygen(&tmp.join(n));
        Party { cert, key, fp }
    };
    (mk("a"), mk("b"))
}

/// A running `cleanroom psi` with its stderr collected.
struct Proc {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn start(args: &[String], wait_for_listen: bool) -> (Proc, Option<String>) {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut addr = None;
        if wait_for_listen {
            for line in lines.by_ref() {
                let line = line.unwrap();
                stderr.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(rest) = line.strip_prefix("cleanroom psi listening on ") {
                    addr = Some(rest.split_whitespace().next().unwrap().to_owned());
                    break;
                }
            }
            assert!(addr.is_some(), "never listened: {}", stderr.lock().unwrap());
        }
        let s = stderr.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                s.lock().unwrap().push_str(&format!("{l}\n"));
            }
        });
        (Proc { child, stderr }, addr)
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits at most `limit`; returns success and stdout.
    fn wait(mut self, limit: Duration) -> (bool, String, String) {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let mut out = String::new();
                use std::io::Read;
                self.child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                std::thread::sleep(Duration::from_millis(50));
                return (st.success(), out, self.stderr());
            }
            if t0.elapsed() > limit {
                let _ = self.child.kill();
                panic!("did not exit within {limit:?}: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn args(me: &Party, peer: &Party, protocol: &str, input: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--protocol".into(),
        protocol.into(),
        "--input".into(),
        input.display().to_string(),
        "--cert".into(),
        me.cert.display().to_string(),
        "--key".into(),
        me.key.display().to_string(),
        "--peer-cert-sha256".into(),
        peer.fp.clone(),
        "--batch".into(),
        "50".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn serve(me: &Party, peer: &Party, protocol: &str, input: &Path, extra: &[&str]) -> (Proc, String) {
    let mut a: Vec<String> = ["--json", "psi", "serve", "--listen", "127.0.0.1:0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(args(me, peer, protocol, input, extra));
    let (p, addr) = Proc::start(&a, true);
    (p, addr.unwrap())
}

fn connect(
    me: &Party,
    peer: &Party,
    addr: &str,
    protocol: &str,
    input: &Path,
    extra: &[&str],
) -> Proc {
    let mut a: Vec<String> = ["--json", "psi", "connect", "--peer", addr]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(args(me, peer, protocol, input, extra));
    Proc::start(&a, false).0
}

/// Receiver rows: customer i has an email and a phone, written differently from the sender's
/// (case, spaces, national format) so that only normalisation makes them meet; some rows lack
/// one of them.
fn write_receiver(path: &Path) {
    let mut s = String::from("customer_id,email,phone,spend\n");
    for i in 0..120 {
        let email = if i % 7 == 3 {
            String::new()
        } else {
            format!(" E{i}@Example.COM ")
        };
        let phone = if i % 5 == 1 {
            String::new()
        } else {
            format!("07911 123{i:03}")
        };
        s.push_str(&format!("c{i},{email},{phone},{}\n", i * 10));
    }
    std::fs::write(path, s).unwrap();
}

/// Sender rows: emails of customers 60..180, phones of customers 0..40 (with duplicates).
fn write_sender(path: &Path) {
    let mut s = String::from("user,mail,tel\n");
    for i in 60..180 {
        s.push_str(&format!("u{i},e{i}@example.com,\n"));
    }
    for i in 0..40 {
        s.push_str(&format!("v{i},,+447911123{i:03}\n"));
        s.push_str(&format!("w{i},,+44 7911 123{i:03}\n"));
    }
    std::fs::write(path, s).unwrap();
}

/// The sender's rows as Parquet (nulls for absent identifiers), to read the other format.
fn write_sender_parquet(path: &Path) {
    use std::sync::Arc as A;

    use arrow::array::{ArrayRef, RecordBatch, StringArray};
    let mut user = Vec::new();
    let mut mail = Vec::new();
    let mut tel = Vec::new();
    for i in 60..180 {
        user.push(format!("u{i}"));
        mail.push(Some(format!("e{i}@example.com")));
        tel.push(None);
    }
    for i in 0..40 {
        user.push(format!("v{i}"));
        mail.push(None);
        tel.push(Some(format!("+447911123{i:03}")));
    }
    let batch = RecordBatch::try_from_iter([
        ("user", A::new(StringArray::from(user)) as ArrayRef),
        ("mail", A::new(StringArray::from(mail)) as ArrayRef),
        ("tel", A::new(StringArray::from(tel)) as ArrayRef),
    ])
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// Which receiver rows match, and on what.
fn expected() -> Vec<(usize, &'static str)> {
    (0..120)
        .filter_map(|i| {
            let has_email = i % 7 != 3;
            let has_phone = i % 5 != 1;
            if has_email && i >= 60 {
                Some((i, "email"))
            } else if has_phone && i < 40 {
                Some((i, "phone"))
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn two_processes_compute_the_intersection_and_the_sum_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = parties(tmp.path());
    let (ra, sb) = (
        tmp.path().join("receiver.csv"),
        tmp.path().join("sender.csv"),
    );
    write_receiver(&ra);
    write_sender(&sb);
    let matches = tmp.path().join("matches.csv");

    // Intersection: the connecting side is the receiver.
    let (server, addr) = serve(
        &b,
        &a,
        "intersection",
        &sb,
        &["--id", "email:mail", "--id", "phone:tel"],
    );
    let client = connect(
        &a,
        &b,
        &addr,
        "intersection",
        &ra,
        &[
            "--receiver",
            "--id",
            "email:email",
            "--id",
            "phone:phone",
            "--output",
            matches.to_str().unwrap(),
            "--record-id-column",
            "customer_id",
        ],
    );
    let (ok_c, out_c, err_c) = client.wait(Duration::from_secs(60));
    let (ok_s, out_s, err_s) = server.wait(Duration::from_secs(10));
    assert!(ok_c && ok_s, "client: {err_c}\nserver: {err_s}");
    let want = expected();
    let rc: serde_json::Value = serde_json::from_str(&out_c).unwrap();
    assert_eq!(rc["matched_total"], want.len() as u64);
    let on_email = want.iter().filter(|w| w.1 == "email").count() as u64;
    assert_eq!(rc["matched"]["email"], on_email);
    assert_eq!(rc["matched"]["phone"], want.len() as u64 - on_email);
    let rs: serde_json::Value = serde_json::from_str(&out_s).unwrap();
    assert!(
        rs.get("matched_total").is_none(),
        "the sender learns no count: {rs}"
    );
    assert_eq!(rs["peer_items"], serde_json::json!([103, 96]));
    let mut expected_csv = String::from("row,matched_on,record_id\n");
    for (i, k) in &want {
        expected_csv.push_str(&format!("{i},{k},c{i}\n"));
    }
    assert_eq!(std::fs::read_to_string(&matches).unwrap(), expected_csv);
    // Written through a temporary file beside it, owner-only, renamed into place.
    assert_no_temporary_files(tmp.path());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&matches).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Sum to the values holder: the listening side is the receiver and holds the values, with
    // its identifier columns taken from a `cleanroom prepare` configuration; the sender reads
    // Parquet.
    let prep = tmp.path().join("prep.toml");
    std::fs::write(
        &prep,
        "collaboration = \"psi-test\"\ndefault_region = \"GB\"\nprivacy_unit = \"customer_id\"\n\
         [[identifier]]\ncolumn = \"phone\"\nkind = \"phone\"\npriority = 2\n\
         [[identifier]]\ncolumn = \"email\"\nkind = \"email\"\npriority = 1\n",
    )
    .unwrap();
    let (server, addr) = serve(
        &a,
        &b,
        "sum",
        &ra,
        &[
            "--sum-to",
            "values-holder",
            "--receiver",
            "--config",
            prep.to_str().unwrap(),
            "--value-column",
            "spend",
            "--max-value",
            "100000",
        ],
    );
    let sp = tmp.path().join("sender.parquet");
    write_sender_parquet(&sp);
    let client = connect(
        &b,
        &a,
        &addr,
        "sum",
        &sp,
        &[
            "--sum-to",
            "values-holder",
            "--id",
            "email:mail",
            "--id",
            "phone:tel",
        ],
    );
    let (ok_c, out_c, err_c) = client.wait(Duration::from_secs(60));
    let (ok_s, out_s, err_s) = server.wait(Duration::from_secs(10));
    assert!(ok_c && ok_s, "client: {err_c}\nserver: {err_s}");
    let sum: u64 = want.iter().map(|(i, _)| *i as u64 * 10).sum();
    let rs: serde_json::Value = serde_json::from_str(&out_s).unwrap();
    assert_eq!(rs["sum"], sum);
    assert_eq!(rs["matched_total"], want.len() as u64);
    let rc: serde_json::Value = serde_json::from_str(&out_c).unwrap();
    assert_eq!(rc["matched_total"], want.len() as u64);
    assert!(
        rc.get("sum").is_none(),
        "the sender does not learn the sum: {rc}"
    );
}

#[test]
fn the_party_without_values_learns_the_sum_of_the_other_partys_values() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = parties(tmp.path());
    let (values, ids) = (tmp.path().join("values.csv"), tmp.path().join("ids.csv"));
    // B holds the customers with their spend; A holds identifiers only.
    write_receiver(&values);
    write_sender(&ids);
    // A listens and learns (--receiver, no values); B connects with the values.
    let (learner, addr) = serve(
        &a,
        &b,
        "sum",
        &ids,
        &["--receiver", "--id", "email:mail", "--id", "phone:tel"],
    );
    let holder = connect(
        &b,
        &a,
        &addr,
        "sum",
        &values,
        &[
            "--id",
            "email:email",
            "--id",
            "phone:phone",
            "--value-column",
            "spend",
            "--max-value",
            "100000",
        ],
    );
    let (ok_h, out_h, err_h) = holder.wait(Duration::from_secs(60));
    let (ok_l, out_l, err_l) = learner.wait(Duration::from_secs(10));
    assert!(ok_h && ok_l, "holder: {err_h}\nlearner: {err_l}");
    let want = expected();
    let sum: u64 = want.iter().map(|(i, _)| *i as u64 * 10).sum();
    let on_email = want.iter().filter(|w| w.1 == "email").count() as u64;
    let l: serde_json::Value = serde_json::from_str(&out_l).unwrap();
    assert_eq!(l["protocol"], "sum");
    assert_eq!(l["role"], "receiver");
    assert_eq!(l["sum"], sum, "{l}");
    assert_eq!(l["matched_total"], want.len() as u64);
    assert_eq!(l["matched"]["email"], on_email);
    assert_eq!(l["matched"]["phone"], want.len() as u64 - on_email);
    // Three of B's 120 rows have neither identifier and are not sent.
    assert_eq!(l["peer_items"], serde_json::json!([117]));
    let h: serde_json::Value = serde_json::from_str(&out_h).unwrap();
    assert!(
        h.get("sum").is_none(),
        "the values holder learns no sum: {h}"
    );
    assert!(
        h.get("matched_total").is_none(),
        "the values holder learns no count: {h}"
    );
    assert_eq!(h["records_sent"], 117);
    assert_eq!(h["peer_items"], serde_json::json!([120, 40]));
}

#[test]
fn the_sums_refuse_what_they_cannot_honour() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = parties(tmp.path());
    let input = tmp.path().join("in.csv");
    std::fs::write(&input, "id,v\nx,1\ny,2\n").unwrap();
    let refused = |protocol: &str, extra: &[&str]| {
        let mut argv: Vec<String> = ["psi", "connect", "--peer", "127.0.0.1:9"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        argv.extend(args(&a, &b, protocol, &input, extra));
        let out = Command::new(BIN).args(&argv).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Count noise in the default sum could not protect the values holder.
    let e = refused(
        "sum",
        &["--receiver", "--id", "opaque:id", "--epsilon-count", "1"],
    );
    assert!(e.contains("sees the number of matches exactly"), "{e}");
    // Values belong to the sender in the default sum, to the receiver with --sum-to.
    let e = refused(
        "sum",
        &[
            "--receiver",
            "--id",
            "opaque:id",
            "--value-column",
            "v",
            "--max-value",
            "9",
        ],
    );
    assert!(
        e.contains("the sender (the side without --receiver)"),
        "{e}"
    );
    let e = refused(
        "sum",
        &[
            "--sum-to",
            "values-holder",
            "--id",
            "opaque:id",
            "--value-column",
            "v",
        ],
    );
    assert!(
        e.contains("the receiver, with --sum-to values-holder"),
        "{e}"
    );
    let e = refused(
        "cardinality",
        &["--sum-to", "values-holder", "--id", "opaque:id"],
    );
    assert!(e.contains("--sum-to only applies to --protocol sum"), "{e}");
}

fn assert_no_temporary_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(".tmp") && !name.ends_with(".tmp"),
            "left behind: {name}"
        );
    }
}

#[test]
fn bad_flags_and_inputs_are_refused_before_connecting() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = parties(tmp.path());
    let input = tmp.path().join("in.csv");
    std::fs::write(&input, "id,v\nx,1\ny,2\n").unwrap();
    // Nothing listens on port 9: a command that got as far as connecting would fail there,
    // after the connect timeout, with another message.
    let refused = |protocol: &str, input: &Path, extra: &[&str]| {
        let mut argv: Vec<String> = ["psi", "connect", "--peer", "127.0.0.1:9"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        argv.extend(args(&a, &b, protocol, input, extra));
        if !extra.contains(&"--connect-timeout") {
            argv.extend(["--connect-timeout".to_string(), "1".to_string()]);
        }
        let out = Command::new(BIN).args(&argv).output().unwrap();
        assert!(!out.status.success());
        assert!(out.stdout.is_empty(), "errors go to stderr");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // The matches file must be creatable before a session that may take hours.
    let missing = tmp.path().join("no-such-dir").join("m.csv");
    let output = |path: &Path| -> Vec<String> {
        ["--receiver", "--id", "opaque:id", "--output"]
            .iter()
            .map(|s| s.to_string())
            .chain([path.display().to_string()])
            .collect()
    };
    let argv = output(&missing);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let e = refused("intersection", &input, &argv);
    assert!(
        e.contains("--output") && e.contains("cannot create a file in"),
        "{e}"
    );
    let argv = output(tmp.path());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let e = refused("intersection", &input, &argv);
    assert!(e.contains("a directory, not a file"), "{e}");

    // A region without a numbering plan, and a column in which nothing is a valid phone.
    let e = refused(
        "cardinality",
        &input,
        &["--id", "phone:id", "--default-region", "USA"],
    );
    assert!(
        e.contains("--default-region \"USA\" is not an ISO 3166-1"),
        "{e}"
    );
    let e = refused("cardinality", &input, &["--id", "phone:id"]);
    assert!(
        e.contains("none of the 2 values of column \"id\" is a valid phone"),
        "{e}"
    );

    // A value bound beyond a signed 64-bit integer; a connect timeout beyond a week.
    let e = refused(
        "sum",
        &input,
        &[
            "--id",
            "opaque:id",
            "--value-column",
            "v",
            "--max-value",
            "9223372036854775808",
        ],
    );
    assert!(
        e.contains("--max-value 9223372036854775808 is too large"),
        "{e}"
    );
    let e = refused(
        "cardinality",
        &input,
        &["--id", "opaque:id", "--connect-timeout", "604801"],
    );
    assert!(e.contains("604800"), "{e}");
    // No idle timeout of 0 (it used to become 1 s silently); no session timeout beyond 30 days.
    let e = refused(
        "cardinality",
        &input,
        &["--id", "opaque:id", "--idle-timeout", "0"],
    );
    assert!(
        e.contains("--idle-timeout") && e.contains("1..=604800"),
        "{e}"
    );
    let e = refused(
        "cardinality",
        &input,
        &["--id", "opaque:id", "--session-timeout", "2592001"],
    );
    assert!(
        e.contains("--session-timeout") && e.contains("2592000"),
        "{e}"
    );

    // A port in use is said before the input is read (the input here would be refused).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let mut argv: Vec<String> = ["psi", "serve", "--listen", port.as_str()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    argv.extend(args(&a, &b, "cardinality", &input, &["--id", "phone:id"]));
    let out = Command::new(BIN).args(&argv).output().unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains(&format!("cannot listen on {port}")), "{e}");

    // A CSV error names the line where the bad record starts, counting the lines of a quoted
    // cell that spans two.
    let ragged = tmp.path().join("ragged.csv");
    std::fs::write(&ragged, "id,v\n\"a\nb\",1\nc\n").unwrap();
    let e = refused("cardinality", &ragged, &["--id", "opaque:id"]);
    assert!(e.contains("line 4 is not valid CSV"), "{e}");

    // A Parquet file without rows still has its columns checked.
    let empty = tmp.path().join("empty.parquet");
    {
        use arrow::array::{ArrayRef, RecordBatch, StringArray};
        let batch = RecordBatch::try_from_iter([(
            "mail",
            std::sync::Arc::new(StringArray::from(Vec::<String>::new())) as ArrayRef,
        )])
        .unwrap();
        let file = std::fs::File::create(&empty).unwrap();
        let w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.close().unwrap();
    }
    let e = refused("cardinality", &empty, &["--id", "email:mial"]);
    assert!(e.contains("has no column \"mial\""), "{e}");
}

#[test]
fn keygen_replaces_a_key_only_when_asked_and_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("k");
    let (cert, key, fp) = keygen(&dir);
    let run_keygen = |force: bool| {
        let mut c = Command::new(BIN);
        c.args(["--json", "psi", "keygen", "--out"]).arg(&dir);
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    let out = run_keygen(false);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --force to replace it"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // A key someone made readable to others is replaced by an owner-only one.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let v = json(&run_keygen(true));
        assert_ne!(v["cert_sha256"].as_str().unwrap(), fp, "a new key pair");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o644);
    }
    // Only the two files, nothing half-written beside them.
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["psi-cert.pem", "psi-key.pem"]);
}

#[test]
fn a_wrong_pin_is_refused_and_the_listener_waits_for_its_peer() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = parties(tmp.path());
    let (cert, key, fp) = keygen(&tmp.path().join("c"));
    let c = Party { cert, key, fp };
    let input = tmp.path().join("in.csv");
    std::fs::write(&input, "id\nx\ny\nz\n").unwrap();
    // B listens for A.
    let (server, addr) = serve(&b, &a, "cardinality", &input, &["--id", "opaque:id"]);
    let receiver = ["--receiver", "--id", "opaque:id"];

    // C, pinning B's certificate, is not the peer B pinned: B refuses it.
    let (ok, _, err) =
        connect(&c, &b, &addr, "cardinality", &input, &receiver).wait(Duration::from_secs(30));
    assert!(!ok);
    // With --json the error is problem details on stderr.
    assert!(
        err.contains(r#""code":"cli_error""#) && err.contains("TLS"),
        "{err}"
    );
    // A, pinning the wrong certificate for B, refuses B.
    let wrong = Party {
        cert: b.cert.clone(),
        key: b.key.clone(),
        fp: "00".repeat(32),
    };
    let (ok, _, err) =
        connect(&a, &wrong, &addr, "cardinality", &input, &receiver).wait(Duration::from_secs(30));
    assert!(!ok);
    assert!(err.contains("is not the pinned one"), "{err}");
    // Something that does not speak TLS at all, as a port scanner.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    }

    // B is still listening, and the session with A runs.
    let client = connect(&a, &b, &addr, "cardinality", &input, &receiver);
    let (ok_c, out_c, err_c) = client.wait(Duration::from_secs(30));
    let (ok_s, _, err_s) = server.wait(Duration::from_secs(10));
    assert!(ok_c && ok_s, "client: {err_c}\nserver: {err_s}");
    let r: serde_json::Value = serde_json::from_str(&out_c).unwrap();
    assert_eq!(r["matched_total"], 3);
    assert_eq!(
        err_s.matches("still listening").count(),
        3,
        "one line per refused connection: {err_s}"
    );
    assert!(err_s.contains("TLS"), "{err_s}");
}

#[test]
fn killing_one_process_mid_protocol_makes_the_other_exit_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = parties(tmp.path());
    let (ra, sb) = (tmp.path().join("r.csv"), tmp.path().join("s.csv"));
    let write = |p: &Path, from: u32| {
        let mut s = String::from("id\n");
        for i in from..from + 6000 {
            s.push_str(&format!("id-{i}\n"));
        }
        std::fs::write(p, s).unwrap();
    };
    write(&ra, 0);
    write(&sb, 3000);
    let (mut server, addr) = serve(&b, &a, "cardinality", &sb, &["--id", "opaque:id"]);
    let client = connect(
        &a,
        &b,
        &addr,
        "cardinality",
        &ra,
        &["--receiver", "--id", "opaque:id"],
    );
    // Kill the listening side once the session is under way.
    let t0 = Instant::now();
    while !client.stderr().contains("psi progress:") {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no progress: {}",
            client.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    server.child.kill().unwrap();
    let killed = Instant::now();
    let (ok, _, err) = client.wait(Duration::from_secs(10));
    assert!(!ok, "the survivor must fail");
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "took {:?}",
        killed.elapsed()
    );
    assert!(
        err.contains(r#""code":"cli_error""#) && err.contains("the peer closed the connection"),
        "{err}"
    );
}

#[test]
fn the_ot_engine_finds_the_same_rows_and_refuses_a_peer_on_the_other_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = parties(tmp.path());
    let (ra, sb) = (
        tmp.path().join("receiver.csv"),
        tmp.path().join("sender.csv"),
    );
    write_receiver(&ra);
    write_sender(&sb);
    let matches = tmp.path().join("matches.csv");
    let sender_ids = ["--id", "email:mail", "--id", "phone:tel"];
    let receiver_ids = [
        "--receiver",
        "--id",
        "email:email",
        "--id",
        "phone:phone",
        "--output",
        matches.to_str().unwrap(),
        "--record-id-column",
        "customer_id",
    ];
    let with = |ids: &[&'static str], engine: &'static str| -> Vec<&'static str> {
        let mut v = ids.to_vec();
        v.extend(["--engine", engine]);
        v
    };
    let receiver_ot: Vec<&str> = receiver_ids
        .iter()
        .copied()
        .chain(["--engine", "ot"])
        .collect();

    // The listening side is the receiver this time.
    let (server, addr) = serve(&a, &b, "intersection", &ra, &receiver_ot);
    let client = connect(&b, &a, &addr, "intersection", &sb, &with(&sender_ids, "ot"));
    let (ok_c, out_c, err_c) = client.wait(Duration::from_secs(60));
    let (ok_s, out_s, err_s) = server.wait(Duration::from_secs(10));
    assert!(ok_c && ok_s, "client: {err_c}\nserver: {err_s}");
    let want = expected();
    let rs: serde_json::Value = serde_json::from_str(&out_s).unwrap();
    assert_eq!(rs["matched_total"], want.len() as u64);
    let mut expected_csv = String::from("row,matched_on,record_id\n");
    for (i, k) in &want {
        expected_csv.push_str(&format!("{i},{k},c{i}\n"));
    }
    assert_eq!(std::fs::read_to_string(&matches).unwrap(), expected_csv);
    let rc: serde_json::Value = serde_json::from_str(&out_c).unwrap();
    assert!(rc.get("matched_total").is_none(), "{rc}");
    assert_eq!(rc["identifiers_answered"], 103 + 96);
    // The sender's identifiers cross as 512 base-OT points and outputs, never blinded points.
    assert!(rc["bytes_received"].as_u64().unwrap() > 512 * 64);

    // One side on OT, the other on ECDH: both stop and say why.
    let (server, addr) = serve(&a, &b, "intersection", &ra, &receiver_ot);
    let client = connect(&b, &a, &addr, "intersection", &sb, &sender_ids);
    let (ok_c, _, err_c) = client.wait(Duration::from_secs(60));
    let (ok_s, _, err_s) = server.wait(Duration::from_secs(10));
    assert!(!ok_c && !ok_s);
    assert!(
        err_c.contains("the peer runs intersection-ot, we run intersection"),
        "{err_c}"
    );
    assert!(
        err_s.contains(
            "the peer runs intersection, we run intersection-ot (both sides must pass the same --engine)"
        ),
        "{err_s}"
    );

    // The OT engine computes intersections only; the flags say so before any connection.
    let out = Command::new(BIN)
        .args(["psi", "connect", "--peer", "127.0.0.1:9"])
        .args(args(&a, &b, "cardinality", &ra, &["--id", "email:email"]))
        .args(["--engine", "ot"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("--engine ot runs --protocol intersection only; cardinality runs on ECDH"),
        "{e}"
    );
    // --temp-dir is the OT engine's, and must be a directory.
    for (engine, dir, want) in [
        (
            "ecdh",
            tmp.path().to_str().unwrap(),
            "--temp-dir is for --engine ot",
        ),
        (
            "ot",
            "/nonexistent/cleanroom-psi",
            "--temp-dir /nonexistent/cleanroom-psi: not a directory",
        ),
    ] {
        let out = Command::new(BIN)
            .args(["psi", "connect", "--peer", "127.0.0.1:9"])
            .args(args(
                &a,
                &b,
                "intersection",
                &ra,
                &["--receiver", "--id", "email:email"],
            ))
            .args(["--engine", engine, "--temp-dir", dir])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains(want), "{e}");
    }
}
