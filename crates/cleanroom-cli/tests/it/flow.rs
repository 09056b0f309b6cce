//! A new user's path through the CLI, and its errors.

use std::process::Command;

use crate::*;

#[test]
fn init_serve_and_the_whole_client_flow() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, op) = init(tmp.path());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "master key must be owner-only");
    }
    // A second init refuses, leaving the first operator intact.
    let again = run(Command::new(BIN).args(["init", "--data-dir"]).arg(&data));
    assert!(failed(&again).contains("initialised already"));

    let mut server = ServeProcess::start(&data);
    let url = server.url.clone();
    let who = ok(&cli(&url, &op, &["whoami"]));
    assert!(who.contains("admin of operator"), "{who}");
    let (brand, publisher, id) = two_parties(&url, &op);

    // Tables by default, JSON on request.
    let table = ok(&cli(&url, &brand, &["collab", "show", &id]));
    assert!(
        table.contains("publisher") && table.contains("contribute,receive"),
        "{table}"
    );
    let list = json(&cli(&url, &publisher, &["--json", "collab", "list"]));
    assert_eq!(list[0]["your_status"], "active");

    // Upload with an inline schema and with a TOML schema file, with and without progress.
    let file = tmp.path().join("crm.csv");
    write_csv(&file, 2500);
    let mut args = vec![
        "dataset",
        "upload",
        &id,
        "crm",
        "--file",
        file.to_str().unwrap(),
        "--quiet",
    ];
    args.extend(COLUMNS);
    let out = ok(&cli(&url, &brand, &args));
    assert!(out.contains("2,500 rows"), "{out}");
    let schema = tmp.path().join("schema.toml");
    std::fs::write(
        &schema,
        "[[columns]]\nname='pid'\ntype='string'\nrole='privacy_unit'\n[[columns]]\nname='email_hmac'\ntype='string'\nrole='identifier'\n\
         [[columns]]\nname='city'\ntype='string'\nrole='dimension'\n[[columns]]\nname='n'\ntype='int64'\nrole='metric'\n",
    )
    .unwrap();
    let v = json(&cli(
        &url,
        &publisher,
        &[
            "--json",
            "dataset",
            "upload",
            &id,
            "aud",
            "--file",
            file.to_str().unwrap(),
            "--schema",
            schema.to_str().unwrap(),
        ],
    ));
    assert_eq!(v["row_count"], 2500);
    let listing = ok(&cli(&url, &publisher, &["dataset", "list", &id]));
    assert!(
        listing.contains("crm") && listing.contains("brand") && listing.contains("2,500"),
        "{listing}"
    );
    assert!(
        !listing.contains("person-0000001"),
        "rows must never be shown"
    );

    // Audit: list and verify.
    let log = ok(&cli(&url, &publisher, &["audit", "list", &id]));
    assert!(log.contains("dataset.upload"), "{log}");
    let verified = ok(&cli(&url, &publisher, &["audit", "verify", &id]));
    assert!(verified.contains("intact"), "{verified}");
    let sys = ok(&cli(&url, &op, &["audit", "verify", "system"]));
    assert!(sys.contains("intact"), "{sys}");

    // Users and tokens.
    let u = json(&cli(&url, &brand, &["--json", "user", "create", "ana"]));
    let ana = u["token"].as_str().unwrap().to_owned();
    let err = failed(&cli(&url, &ana, &["user", "create", "eve"]));
    assert!(
        err.contains("only admins") && err.contains("[forbidden]"),
        "{err}"
    );
    let t = json(&cli(
        &url,
        &ana,
        &["--json", "token", "create", "--label", "laptop"],
    ));
    ok(&cli(
        &url,
        &ana,
        &["token", "revoke", t["id"].as_str().unwrap()],
    ));
    let err = failed(&cli(&url, t["token"].as_str().unwrap(), &["whoami"]));
    assert!(err.contains("revoked"), "{err}");

    // Close destroys the data.
    let err = failed(&cli(&url, &brand, &["collab", "close", &id]));
    assert!(err.contains("--yes"), "{err}");
    let out = ok(&cli(&url, &brand, &["collab", "close", &id, "--yes"]));
    assert!(out.contains("2 dataset key(s) were destroyed"), "{out}");
    server.stop();
}

#[test]
fn errors_go_to_stderr_with_a_nonzero_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, op) = init(tmp.path());
    let server = ServeProcess::start(&data);
    let url = server.url.clone();
    let (brand, _, id) = two_parties(&url, &op);

    let bad = tmp.path().join("bad.csv");
    std::fs::write(&bad, "pid,email_hmac,city,n\np1,h1,a,1\np2,h2,b,two\n").unwrap();
    let mut args = vec![
        "dataset",
        "upload",
        &id,
        "crm",
        "--file",
        bad.to_str().unwrap(),
    ];
    args.extend(COLUMNS);
    let out = cli(&url, &brand, &args);
    let err = failed(&out);
    assert!(
        err.contains("line 3, column 4 (n): expected an int64"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    let err = failed(&cli(&url, "crt_nonsense", &["whoami"]));
    assert!(
        err.starts_with("error: ") && err.contains("[unauthenticated]"),
        "{err}"
    );
    let err = failed(&run(Command::new(BIN)
        .args(["whoami"])
        .env_remove("CLEANROOM_TOKEN")
        .env("CLEANROOM_SERVER", &url)));
    assert!(err.contains("no API token"), "{err}");
    let err = failed(&cli("http://127.0.0.1:1", &op, &["whoami"]));
    assert!(err.contains("cannot reach the server"), "{err}");
    let err = failed(&cli(
        &url,
        &brand,
        &["dataset", "create", &id, "x", "-c", "pid:blob:privacy_unit"],
    ));
    assert!(err.contains("not one of string"), "{err}");
    let err = failed(&cli(
        &url,
        &brand,
        &["dataset", "upload", &id, "x", "--file", "/nonexistent.csv"],
    ));
    assert!(err.contains("does not exist"), "{err}");
    let err = failed(&cli(&url, &op, &["collab", "show", &id]));
    assert!(err.contains("[not_found]"), "{err}");
}

#[test]
fn parquet_files_upload_through_the_cli() {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    let tmp = tempfile::tempdir().unwrap();
    let (data, op) = init(tmp.path());
    let server = ServeProcess::start(&data);
    let (brand, _, id) = two_parties(&server.url, &op);
    let schema = Arc::new(Schema::new(vec![
        Field::new("pid", DataType::Utf8, false),
        Field::new("email_hmac", DataType::Utf8, true),
        Field::new("city", DataType::Utf8, true),
        Field::new("n", DataType::Int64, true),
    ]));
    let path = tmp.path().join("crm.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        schema.clone(),
        None,
    )
    .unwrap();
    for chunk in 0..3 {
        let ids: Vec<String> = (0..70_000).map(|i| format!("p{chunk}-{i}")).collect();
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(ids.clone())),
                Arc::new(StringArray::from(ids)),
                Arc::new(StringArray::from(vec!["c"; 70_000])),
                Arc::new(Int64Array::from(vec![1; 70_000])),
            ],
        )
        .unwrap();
        w.write(&b).unwrap();
    }
    w.close().unwrap();
    let mut args = vec![
        "--json",
        "dataset",
        "upload",
        &id,
        "crm",
        "--file",
        path.to_str().unwrap(),
    ];
    args.extend(COLUMNS);
    let v = json(&cli(&server.url, &brand, &args));
    assert_eq!(v["row_count"], 210_000);
}

#[test]
fn the_demo_runs_end_to_end() {
    let out = run(Command::new(BIN).args(["demo", "--people", "3000"]));
    let text = ok(&out);
    for needle in [
        "== 1. Server",
        "northwind-retail",
        "daily-planet accepted",
        "3,000 raw rows with emails, phone numbers and device ids -> 3,000 prepared rows",
        "phone_hmac",
        "uploaded crm-customers (its prepared Parquet): 3,000 rows",
        "uploaded logged-in-audience (its prepared Parquet): 3,750 rows",
        "line 2, column 5 (purchases)",
        "[forbidden]",
        "== 8. Audience overlap by region",
        "== 9. Match rates per identifier type",
        "email_hmac",
        "== 10. Campaign lift",
        "[policy_violation]",
        "no budget spent",
        "== 13. Activation",
        "[activation_consumed]",
        "== 14. Budgets left",
        "chain verified",
    ] {
        assert!(
            text.contains(needle),
            "demo output lacks {needle:?}:\n{text}"
        );
    }
}

#[test]
fn rerunning_a_failed_upload_reuses_the_pending_declaration() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, op) = init(tmp.path());
    let server = ServeProcess::start(&data);
    let url = server.url.clone();
    let (brand, publisher, id) = two_parties(&url, &op);
    let file = tmp.path().join("crm.csv");
    let path = file.to_str().unwrap().to_owned();
    let upload = |name: &'static str, columns: &[&'static str]| {
        let mut args = vec!["dataset", "upload", &id, name, "--file", &path, "--quiet"];
        args.extend(columns);
        args.iter().map(|a| a.to_string()).collect::<Vec<String>>()
    };
    let run_as = |token: &str, args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&url, token, &args)
    };
    // A validation failure leaves the declared dataset pending ...
    std::fs::write(&file, "pid,email_hmac,city,n\np1,h1,a,1\np2,h2,b,two\n").unwrap();
    let err = failed(&run_as(&brand, &upload("crm", &COLUMNS)));
    assert!(err.contains("line 3, column 4 (n)"), "{err}");
    // ... and the same command, once the file is fixed, uploads into it.
    write_csv(&file, 40);
    let out = ok(&run_as(&brand, &upload("crm", &COLUMNS)));
    assert!(out.contains("Uploaded crm: 40 rows"), "{out}");
    // Once it has data, a re-run says so.
    let err = failed(&run_as(&brand, &upload("crm", &COLUMNS)));
    assert!(err.contains("dataset crm has data already"), "{err}");
    // A pending dataset declared with another schema: said clearly, nothing uploaded.
    std::fs::write(&file, "pid,email_hmac,city,n\np1,h1,a,x\n").unwrap();
    failed(&run_as(&brand, &upload("aud", &COLUMNS)));
    write_csv(&file, 5);
    let other = ["-c", "pid:string:privacy_unit", "-c", "n:int64:metric"];
    let err = failed(&run_as(&brand, &upload("aud", &other)));
    assert!(
        err.contains("dataset aud was declared already with a different schema")
            && err.contains("pid:string:privacy_unit, email_hmac:string:identifier"),
        "{err}"
    );
    let v = json(&cli(
        &url,
        &brand,
        &["--json", "dataset", "show", &id, "aud"],
    ));
    assert_eq!(v["status"], "pending");
    // Another organisation's dataset of that name is not reused: a plain conflict.
    let err = failed(&run_as(&publisher, &upload("crm", &COLUMNS)));
    assert!(
        err.contains("exists already") && err.contains("[conflict]"),
        "{err}"
    );
}

#[test]
fn json_output_and_arguments_that_cannot_change_the_route() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, op) = init(tmp.path());
    let server = ServeProcess::start(&data);
    let url = server.url.clone();
    let (brand, publisher, id) = two_parties(&url, &op);

    // --json for the commands that print no table.
    let t = json(&cli(&url, &brand, &["--json", "token", "create"]));
    let tid = t["id"].as_str().unwrap();
    let v = json(&cli(&url, &brand, &["--json", "token", "revoke", tid]));
    assert_eq!(v, serde_json::json!({ "revoked": tid }));
    let c = json(&cli(
        &url,
        &brand,
        &["--json", "collab", "create", "autumn"],
    ));
    let other = c["collaboration"]["id"].as_str().unwrap();
    ok(&cli(
        &url,
        &brand,
        &[
            "collab",
            "invite",
            other,
            "publisher",
            "--abilities",
            "receive",
        ],
    ));
    let v = json(&cli(
        &url,
        &publisher,
        &["--json", "collab", "decline", other],
    ));
    assert_eq!(v, serde_json::json!({ "declined": other }));

    // Path segments are escaped: the server sees the whole argument, and refuses it as a name,
    // rather than a shorter name (`?`, `#`) or another route (`/`).
    for name in ["crm?x=1", "crm#x", "a/b", "%2e%2e"] {
        let err = failed(&cli(&url, &brand, &["dataset", "show", &id, name]));
        assert!(err.contains("[invalid_input]"), "{name}: {err}");
    }
    for name in ["..", "."] {
        let err = failed(&cli(&url, &brand, &["dataset", "show", &id, name]));
        assert!(err.contains("is not a valid id or name"), "{name}: {err}");
    }
    let err = failed(&cli(
        &url,
        &brand,
        &["collab", "show", &format!("{id}/datasets")],
    ));
    assert!(err.contains("[not_found]"), "{err}");
    let err = failed(&cli(&url, &brand, &["token", "revoke", "../orgs"]));
    assert!(err.contains("[invalid_input]"), "{err}");
}

#[test]
fn init_and_a_second_server_refuse_a_data_directory_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, op) = init(tmp.path());
    let mut server = ServeProcess::start(&data);
    // An upload of the running server, still in progress.
    let in_flight = data.join("tmp").join("in-flight.parquet.tmp");
    std::fs::write(&in_flight, b"ciphertext").unwrap();
    let err = failed(&run(Command::new(BIN)
        .args(["init", "--data-dir"])
        .arg(&data)
        .env_remove("CLEANROOM_MASTER_KEY")));
    assert!(err.contains("in use by another cleanroom process"), "{err}");
    let err = ServeProcess::try_start(&data)
        .err()
        .expect("a second server on the same directory must not start");
    assert!(err.contains("in use by another cleanroom process"), "{err}");
    assert!(
        in_flight.exists(),
        "the running server's upload was deleted"
    );
    ok(&cli(&server.url, &op, &["whoami"]));
    // Once the server has stopped, the directory is free (and the leftover is cleaned up).
    server.stop();
    let _again = ServeProcess::start(&data);
    assert!(!in_flight.exists());
}
