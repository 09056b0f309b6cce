//! What a newcomer meets in the first hour: the README's tour is the script CI runs, the server
//! refuses a directory that was never initialised and flags it would ignore, collaborations
//! answer to their names, a policy can be written from a dataset's schema, refusals name what
//! is missing, and `--json` errors are problem details.

use crate::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The README shows the tour script's text exactly, so following the README is running what CI
/// runs.
#[test]
fn the_readme_tour_is_the_tour_script() {
    let script = std::fs::read_to_string(repo().join("docs/tour.sh")).unwrap();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let body = script
        .split_once("# --- tour begins ---\n")
        .and_then(|(_, rest)| rest.split_once("# --- tour ends ---\n"))
        .map(|(b, _)| b)
        .expect("the tour markers in docs/tour.sh");
    let shown = readme
        .split_once("<!-- tour:begin -->\n```sh\n")
        .and_then(|(_, rest)| rest.split_once("```\n<!-- tour:end -->"))
        .map(|(b, _)| b)
        .expect("the tour markers in README.md");
    assert_eq!(
        shown, body,
        "README.md's tour and docs/tour.sh differ: copy the script's steps into the README"
    );
    assert!(body.lines().count() > 40);
}

#[test]
fn serve_refuses_an_uninitialised_directory_and_client_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("never-initialised");
    std::fs::create_dir_all(&data).unwrap();
    let printed = ServeProcess::try_start(&data)
        .err()
        .expect("serve must refuse a directory that was never initialised");
    assert!(
        printed.contains("never initialised") && printed.contains("cleanroom init"),
        "{printed}"
    );
    assert!(
        !data.join("master.key").exists(),
        "no master key may be created behind the operator's back"
    );
    // Client flags on `serve` would be silently ignored: they are a usage error.
    for flag in [
        ["--token", "crt_x"],
        ["--server", "http://x"],
        ["--json", ""],
    ] {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--data-dir"]).arg(&data).arg(flag[0]);
        if !flag[1].is_empty() {
            cmd.arg(flag[1]);
        }
        let out = run(&mut cmd);
        assert_eq!(out.status.code(), Some(2), "{flag:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("client commands"), "{err}");
    }
}

#[test]
fn collaborations_by_name_policies_from_schemas_and_refusals_that_name_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, op) = init(tmp.path());
    let server = ServeProcess::start(&data);
    let url = server.url.clone();
    ok(&cli(&url, "", &["health", "--wait", "5"]));
    let (brand, publisher, id) = two_parties(&url, &op);
    // The collaboration answers to its name ("spring") as well as its id.
    let by_name = json(&cli(&url, &brand, &["--json", "collab", "show", "spring"]));
    assert_eq!(by_name["collaboration"]["id"], id.as_str());
    let err = failed(&cli(&url, &brand, &["collab", "show", "autumn"]));
    assert!(err.contains("not_found"), "{err}");
    let file = tmp.path().join("crm.csv");
    write_csv(&file, 3000);
    for (token, name) in [(&brand, "crm"), (&publisher, "aud")] {
        let mut args = vec!["dataset", "upload", "spring", name, "--quiet", "--file"];
        args.push(file.to_str().unwrap());
        args.extend(COLUMNS);
        ok(&cli(&url, token, &args));
    }
    // A template over datasets without a policy: refused as such, not as "analyst not
    // allowed", which sent people looking in the wrong place.
    let err = failed(&cli(
        &url,
        &brand,
        &[
            "template",
            "run",
            "spring",
            "overlap",
            "-p",
            "left=crm",
            "-p",
            "right=aud",
            "-p",
            "key=email_hmac",
        ],
    ));
    assert!(err.contains("no_policy"), "{err}");
    // The policy written from the dataset's schema is one the server accepts.
    let policy = ok(&cli(
        &url,
        &brand,
        &["policy", "example", "spring", "crm", "--activation"],
    ));
    assert!(policy.contains("join_keys = [\"email_hmac\"]"), "{policy}");
    assert!(policy.contains("analysts = [\"publisher\"]"), "{policy}");
    assert!(policy.contains("\n[activation]\n"), "{policy}");
    let path = tmp.path().join("crm-policy.toml");
    std::fs::write(&path, &policy).unwrap();
    ok(&cli(
        &url,
        &brand,
        &[
            "policy",
            "set",
            "spring",
            "crm",
            "--file",
            path.to_str().unwrap(),
        ],
    ));
    // Without a budget, a dry run says the owner cannot pay now (and why), without failing.
    let dry = ok(&cli(
        &url,
        &brand,
        &[
            "query",
            "spring",
            "SELECT city, COUNT(DISTINCT pid) AS n FROM crm GROUP BY city",
            "--dry-run",
        ],
    ));
    assert!(
        dry.contains("cannot run now") && dry.contains("has not granted a privacy budget"),
        "{dry}"
    );
    let err = failed(&cli(
        &url,
        &brand,
        &[
            "query",
            "spring",
            "SELECT city, COUNT(DISTINCT pid) AS n FROM crm GROUP BY city",
        ],
    ));
    assert!(err.contains("budget"), "{err}");
    ok(&cli(
        &url,
        &brand,
        &[
            "budget",
            "grant",
            "spring",
            "--epsilon",
            "1",
            "--delta",
            "1e-7",
        ],
    ));
    let dry = ok(&cli(
        &url,
        &brand,
        &[
            "query",
            "spring",
            "SELECT city, COUNT(DISTINCT pid) AS n FROM crm GROUP BY city",
            "--dry-run",
            "--epsilon",
            "0.5",
            "--delta",
            "5e-7",
        ],
    ));
    assert!(
        dry.contains("cannot run now") && dry.contains("delta"),
        "{dry}"
    );
    let dry = ok(&cli(
        &url,
        &brand,
        &[
            "query",
            "spring",
            "SELECT city, COUNT(DISTINCT pid) AS n FROM crm GROUP BY city",
            "--dry-run",
        ],
    ));
    assert!(dry.contains("can pay for it now"), "{dry}");
    // Row-level output names its column; with --json the error is problem details on stderr.
    let out = cli(
        &url,
        &brand,
        &["--json", "query", "spring", "SELECT email_hmac FROM crm"],
    );
    let err = failed(&out);
    let problem: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!(problem["code"], "policy_violation");
    assert_eq!(problem["rule"], "non_aggregate_output");
    assert_eq!(problem["column"], "email_hmac");
    assert!(out.stdout.is_empty());
    // A usage problem with --json is problem details too.
    let out = cli(
        &url,
        &brand,
        &[
            "--json",
            "audit",
            "verify",
            "spring",
            "--expect-head",
            "nope",
        ],
    );
    let problem: serde_json::Value = serde_json::from_str(failed(&out).trim()).unwrap();
    assert_eq!(problem["code"], "cli_error");
}

/// `--json` gives one object shape per thing: what `create` (or `upload`) prints is, field for
/// field, the item `list` prints and the object `show` prints (plus, for a token, the secret
/// shown once; a collaboration's `create` and `show` add its members beside it).
#[test]
fn create_show_and_list_print_the_same_object() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, op) = init(tmp.path());
    let server = ServeProcess::start(&data);
    let url = server.url.clone();
    ok(&cli(&url, "", &["health", "--wait", "5"]));
    let listed = |token: &str, args: &[&str], id: &serde_json::Value| {
        let all = json(&cli(&url, token, args));
        let items = all.as_array().expect("a list is a JSON array");
        items
            .iter()
            .find(|x| &x["id"] == id)
            .unwrap_or_else(|| panic!("{id} not in {all}"))
            .clone()
    };

    let created = json(&cli(&url, &op, &["--json", "org", "create", "brand"]));
    let org = &created["org"];
    assert_eq!(*org, listed(&op, &["--json", "org", "list"], &org["id"]));
    let brand = created["token"].as_str().unwrap().to_owned();

    let created = json(&cli(&url, &brand, &["--json", "user", "create", "maya"]));
    let user = &created["user"];
    assert_eq!(
        *user,
        listed(&brand, &["--json", "user", "list"], &user["id"])
    );

    let mut token = json(&cli(
        &url,
        &brand,
        &["--json", "token", "create", "--label", "laptop"],
    ));
    let secret = token.as_object_mut().unwrap().remove("token").unwrap();
    assert!(secret.as_str().unwrap().starts_with("crt_"), "{secret}");
    assert_eq!(token["label"], "laptop");
    assert_eq!(
        token,
        listed(&brand, &["--json", "token", "list"], &token["id"])
    );

    let created = json(&cli(
        &url,
        &brand,
        &["--json", "collab", "create", "spring"],
    ));
    let collab = &created["collaboration"];
    assert_eq!(
        *collab,
        listed(&brand, &["--json", "collab", "list"], &collab["id"])
    );
    let shown = json(&cli(&url, &brand, &["--json", "collab", "show", "spring"]));
    assert_eq!(shown["collaboration"], *collab);
    assert_eq!(shown["members"], created["members"]);

    let file = tmp.path().join("crm.csv");
    write_csv(&file, 200);
    let mut args = vec!["--json", "dataset", "upload", "spring", "crm", "--file"];
    args.push(file.to_str().unwrap());
    args.extend(COLUMNS);
    let uploaded = json(&cli(&url, &brand, &args));
    assert_eq!(
        uploaded,
        listed(
            &brand,
            &["--json", "dataset", "list", "spring"],
            &uploaded["id"]
        )
    );
    let shown = json(&cli(
        &url,
        &brand,
        &["--json", "dataset", "show", "spring", "crm"],
    ));
    assert_eq!(shown, uploaded);
}

/// `serve --max-memory`: an analysis that needs more memory than the limit fails with an error
/// naming the limit (nothing spills to disk), is recorded as failed with its charge kept, and
/// the server goes on answering; a malformed limit is a usage error.
#[test]
fn an_analysis_beyond_the_memory_limit_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, op) = init(tmp.path());
    let out = run(Command::new(BIN)
        .args(["serve", "--max-memory", "12X", "--data-dir"])
        .arg(&data));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown unit"));
    let args: [&std::ffi::OsStr; 2] = ["--max-memory".as_ref(), "1M".as_ref()];
    let server = ServeProcess::try_start_with(&data, "127.0.0.1:0", &args).unwrap();
    let url = server.url.clone();
    let (brand, _publisher, _id) = two_parties(&url, &op);
    let file = tmp.path().join("crm.csv");
    write_csv(&file, 60_000);
    let mut args = vec!["dataset", "upload", "spring", "crm", "--quiet", "--file"];
    args.push(file.to_str().unwrap());
    args.extend(COLUMNS);
    ok(&cli(&url, &brand, &args));
    let policy = ok(&cli(&url, &brand, &["policy", "example", "spring", "crm"]));
    let path = tmp.path().join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let set = [
        "policy",
        "set",
        "spring",
        "crm",
        "--file",
        path.to_str().unwrap(),
    ];
    ok(&cli(&url, &brand, &set));
    let grant = [
        "budget",
        "grant",
        "spring",
        "--epsilon",
        "2",
        "--delta",
        "1e-6",
    ];
    ok(&cli(&url, &brand, &grant));
    let sql = "SELECT city, COUNT(DISTINCT pid) AS n, SUM(n) AS total FROM crm GROUP BY city";
    let out = cli(&url, &brand, &["--json", "query", "spring", sql]);
    let problem: serde_json::Value = serde_json::from_str(failed(&out).trim()).unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("more memory than the server's limit of 1 MiB (--max-memory)"),
        "{problem}"
    );
    // Recorded as failed, charged, and the server still answers.
    let list = json(&cli(
        &url,
        &brand,
        &["--json", "analysis", "list", "spring"],
    ));
    let analyses = list.as_array().unwrap();
    assert_eq!(analyses.len(), 1, "{list}");
    assert_eq!(analyses[0]["status"], "failed");
    ok(&cli(&url, "", &["health"]));
}

/// `cleanroom rotate-master-key`: refused while a server holds the data directory, then
/// replaces `master.key`, and the server starts on the new key.
#[test]
fn rotate_master_key_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, _op) = init(tmp.path());
    let before = std::fs::read_to_string(data.join("master.key")).unwrap();
    let mut server = ServeProcess::start(&data);
    let rotate = || {
        run(Command::new(BIN)
            .args(["rotate-master-key", "--data-dir"])
            .arg(&data)
            .env_remove("CLEANROOM_MASTER_KEY"))
    };
    let err = failed(&rotate());
    assert!(err.contains("in use") || err.contains("lock"), "{err}");
    server.stop();
    let out = ok(&rotate());
    assert!(out.contains("Re-wrapped 0 collaboration key(s)"), "{out}");
    let after = std::fs::read_to_string(data.join("master.key")).unwrap();
    assert_ne!(before, after);
    let server = ServeProcess::start(&data);
    ok(&cli(&server.url, "", &["health"]));
}
