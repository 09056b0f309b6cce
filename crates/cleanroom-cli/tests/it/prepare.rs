//! `cleanroom prepare` as a process: a generated CSV in, a Parquet file, its upload schema and
//! a report out; no raw identifier in the output; refusal on risk; errors that name the line;
//! and the prepared file accepted by `cleanroom dataset upload` on a real server.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cleanroom_identity::normalise::IdKind;
use cleanroom_identity::pseudonym::PseudonymKey;

use crate::*;

const SECRET: &str = "integration-test-secret-0123456789";

/// Generated input: 240 rows; every 10th email is invalid, every 12th phone is missing,
/// every 40th person is 16 (under the first age band), `notes` is not in the config.
struct Input {
    csv: PathBuf,
    emails: Vec<String>,
    invalid_emails: u64,
    missing_phones: u64,
    minors: u64,
}

fn write_input(dir: &Path) -> Input {
    let mut s = String::from("customer_id,Email,phone,age,postcode,signup,segment,revenue,notes\n");
    let mut emails = Vec::new();
    let (mut invalid_emails, mut missing_phones, mut minors) = (0, 0, 0);
    let districts = ["SW1A 1AA", "M1 1AE", "EC1A 1BB"];
    for i in 0..240u64 {
        let email = if i % 10 == 3 {
            invalid_emails += 1;
            format!("broken-address-{i}")
        } else {
            format!("  Person.{i}+news@Example.COM ")
        };
        emails.push(email.trim().to_owned());
        let phone = if i % 12 == 5 {
            missing_phones += 1;
            String::new()
        } else {
            format!("07400 {:06}", 100_000 + i)
        };
        let age = if i % 40 == 7 {
            minors += 1;
            16
        } else {
            20 + (i % 50)
        };
        s.push_str(&format!(
            "c{i:04},\"{email}\",{phone},{age},{},2026-0{}-1{},{},{}.5,free text {i}\n",
            districts[(i % 3) as usize],
            1 + i % 3,
            i % 9,
            ["gold", "silver", "bronze"][(i % 3) as usize],
            i * 3,
        ));
    }
    let csv = dir.join("customers.csv");
    std::fs::write(&csv, s).unwrap();
    Input {
        csv,
        emails,
        invalid_emails,
        missing_phones,
        minors,
    }
}

fn config(dir: &Path, risk: &str) -> PathBuf {
    let text = format!(
        r#"
collaboration = "it-collab"
default_region = "GB"
gmail_rules = true
privacy_unit = "Email"

[[identifier]]
column = "Email"
name = "email"
kind = "email"
sha256 = ["google", "meta", "uid2"]

[[identifier]]
column = "phone"
kind = "phone"

[[quasi_identifier]]
column = "age"
generalise = "age_band"

[[quasi_identifier]]
column = "postcode"
name = "district"
generalise = "postcode_outward"

[[quasi_identifier]]
column = "signup"
name = "signup_month"
generalise = "month"

[[dimension]]
column = "segment"

[[metric]]
column = "revenue"
type = "float64"

[risk]
{risk}
"#
    );
    let path = dir.join("prep.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn prepare(dir: &Path, cfg: &Path, input: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .arg("prepare")
        .arg("--config")
        .arg(cfg)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(dir.join("prepared.parquet"))
        .args(extra)
        .env(cleanroom_identity::pseudonym::SECRET_ENV, SECRET)
        .env_remove("CLEANROOM_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("running cleanroom prepare")
}

#[test]
fn prepare_writes_pseudonymised_parquet_schema_and_report() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write_input(tmp.path());
    let cfg = config(
        tmp.path(),
        "k = 3\nmax_unique_share = 1.0\nsensitive = \"segment\"\nmin_l = 1\naction = \"refuse\"",
    );
    let out = prepare(tmp.path(), &cfg, &input.csv, &["--json"]);
    let v: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();

    // Counts in the report.
    let kept = 240 - input.minors - input.invalid_emails;
    assert_eq!(v["rows_read"], 240);
    assert_eq!(v["rows_written"], kept);
    assert_eq!(v["refused"], false);
    let col = |name: &str| {
        v["columns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["output"] == name)
            .unwrap_or_else(|| panic!("no column {name}: {v}"))
            .clone()
    };
    assert_eq!(col("email_hmac")["invalid"], input.invalid_emails);
    assert_eq!(col("email_hmac")["valid"], 240 - input.invalid_emails);
    assert_eq!(col("phone_hmac")["missing"], input.missing_phones);
    assert_eq!(col("phone_hmac")["invalid"], 0);
    assert_eq!(
        col("age")["invalid_by_reason"]["below the minimum"],
        input.minors
    );
    assert_eq!(
        v["columns_dropped"],
        serde_json::json!(["customer_id", "notes"])
    );
    assert!(v["risk"]["k_anonymity"].as_u64().unwrap() >= 1);

    // The upload file: exactly the configured columns, the privacy unit first.
    let parquet = tmp.path().join("prepared.parquet");
    let (names, columns) = string_values(&parquet);
    assert_eq!(
        names,
        [
            "email_hmac",
            "phone_hmac",
            "age",
            "district",
            "signup_month",
            "segment",
            "revenue"
        ]
    );
    assert_eq!(columns[0].len() as u64, kept);
    // The pseudonym is the HMAC of the normalised (Gmail rules do not touch example.com) email.
    let key = PseudonymKey::derive(SECRET.as_bytes(), "it-collab").unwrap();
    let first = key.pseudonymise(IdKind::Email, "person.0+news@example.com");
    assert_eq!(columns[0][0].as_deref(), Some(first.as_str()));
    assert!(columns[2].iter().all(|a| a.as_deref() != Some("16")));
    assert!(columns[3].iter().any(|d| d.as_deref() == Some("SW1A")));
    assert!(columns[4].iter().any(|d| d.as_deref() == Some("2026-01")));

    // No raw identifier anywhere: not in the decoded values, not in the file's bytes.
    let bytes = std::fs::read(&parquet).unwrap();
    for values in &columns {
        for v in values.iter().flatten() {
            assert!(
                !v.contains('@') && !v.contains("07400 ") && !v.starts_with('+'),
                "raw value in output: {v}"
            );
        }
    }
    for email in &input.emails {
        let lower = email.to_lowercase();
        for needle in [email.as_str(), lower.as_str()] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "raw email in the output bytes"
            );
        }
    }
    assert!(!bytes.windows(5).any(|w| w == b"notes" || w == b"free "));

    // The upload schema names every column with its role.
    let schema = std::fs::read_to_string(tmp.path().join("prepared.schema.toml")).unwrap();
    let parsed: toml::Value = toml::from_str(&schema).unwrap();
    let roles: Vec<(String, String)> = parsed["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(roles[0], ("email_hmac".into(), "privacy_unit".into()));
    assert_eq!(roles[1], ("phone_hmac".into(), "identifier".into()));
    assert_eq!(roles[6], ("revenue".into(), "metric".into()));

    // Activation hashes are in their own file, never in the upload file.
    let (act_names, act_cols) = string_values(&tmp.path().join("prepared.activation.parquet"));
    assert_eq!(
        act_names,
        [
            "email_hmac",
            "email_sha256_google",
            "email_sha256_meta",
            "email_sha256_uid2"
        ]
    );
    assert_eq!(act_cols[0], columns[0]);
    assert!(act_cols[3][0].as_deref().unwrap().ends_with('='));

    // The human-readable report.
    let report = std::fs::read_to_string(tmp.path().join("prepared.report.md")).unwrap();
    assert!(
        report.contains("# Prep report") && report.contains("k-anonymity"),
        "{report}"
    );
    assert!(
        !report.contains("person.0"),
        "the report must not contain values"
    );
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn prepare_refuses_on_risk_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write_input(tmp.path());
    let cfg = config(tmp.path(), "k = 5\nmin_k = 50\naction = \"refuse\"");
    let out = prepare(tmp.path(), &cfg, &input.csv, &["--quiet"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused") && err.contains("k-anonymity >= 50"),
        "{err}"
    );
    assert!(!tmp.path().join("prepared.parquet").exists());
    assert!(!tmp.path().join("prepared.schema.toml").exists());
    assert!(!tmp.path().join("prepared.activation.parquet").exists());
    let report = std::fs::read_to_string(tmp.path().join("prepared.report.md")).unwrap();
    assert!(report.contains("REFUSED"), "{report}");

    // The same limit with action warn writes the output and warns.
    let cfg = config(tmp.path(), "k = 5\nmin_k = 50\naction = \"warn\"");
    let out = prepare(tmp.path(), &cfg, &input.csv, &["--quiet"]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: risk limit breached"));
    assert!(tmp.path().join("prepared.parquet").exists());
}

#[test]
fn prepare_errors_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write_input(tmp.path());
    let cfg = config(tmp.path(), "");

    // A short secret, or none at all.
    let out = Command::new(BIN)
        .args(["prepare", "--config"])
        .arg(&cfg)
        .arg("--input")
        .arg(&input.csv)
        .arg("--output")
        .arg(tmp.path().join("o.parquet"))
        .env(cleanroom_identity::pseudonym::SECRET_ENV, "short")
        .output()
        .unwrap();
    let err = failed(&out);
    assert!(
        err.contains("at least 16 bytes") && !err.contains("short\""),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["prepare", "--config"])
        .arg(&cfg)
        .arg("--input")
        .arg(&input.csv)
        .arg("--output")
        .arg(tmp.path().join("o.parquet"))
        .env_remove(cleanroom_identity::pseudonym::SECRET_ENV)
        .output()
        .unwrap();
    assert!(failed(&out).contains("--secret-file"));

    // A secret file works like the variable.
    let secret_file = tmp.path().join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let out = Command::new(BIN)
        .args(["prepare", "--quiet", "--config"])
        .arg(&cfg)
        .arg("--input")
        .arg(&input.csv)
        .arg("--output")
        .arg(tmp.path().join("viafile.parquet"))
        .arg("--secret-file")
        .arg(&secret_file)
        .env_remove(cleanroom_identity::pseudonym::SECRET_ENV)
        .output()
        .unwrap();
    ok(&out);

    // A secret file that is not there: the OS says why once, and with --json the error is
    // problem details on stderr, as for every other command.
    let out = prepare(
        tmp.path(),
        &cfg,
        &input.csv,
        &["--json", "--secret-file", "/nonexistent/secret"],
    );
    let err = failed(&out);
    let problem: serde_json::Value = serde_json::from_str(err.trim()).expect(&err);
    assert_eq!(problem["code"], "cli_error");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("/nonexistent/secret")
            && detail.matches("No such file or directory").count() == 1,
        "{detail}"
    );
    assert!(out.stdout.is_empty());

    // A configuration error names its line.
    let bad_cfg = tmp.path().join("bad.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("kind = \"phone\"", "kind = \"fax\"");
    std::fs::write(&bad_cfg, text).unwrap();
    let err = failed(&prepare(tmp.path(), &bad_cfg, &input.csv, &[]));
    assert!(
        err.contains("line 15") && err.contains("unknown identifier kind"),
        "{err}"
    );

    // A broken CSV names the line; a missing column names the column.
    let broken = tmp.path().join("broken.csv");
    let mut text = std::fs::read_to_string(&input.csv).unwrap();
    text.push_str("c9999,x@example.com,only-three-fields\n");
    std::fs::write(&broken, text).unwrap();
    let err = failed(&prepare(tmp.path(), &cfg, &broken, &[]));
    assert!(
        err.contains("line 242") && err.contains("3 fields"),
        "{err}"
    );
    let no_col = tmp.path().join("nocol.csv");
    std::fs::write(&no_col, "Email,phone\na@b.com,1\n").unwrap();
    let err = failed(&prepare(tmp.path(), &cfg, &no_col, &[]));
    assert!(err.contains("column age"), "{err}");
    assert!(!tmp.path().join("prepared.parquet").exists());

    // The example configuration prints and parses.
    let out = Command::new(BIN)
        .args(["prepare", "--example-config"])
        .output()
        .unwrap();
    let example = ok(&out);
    assert!(cleanroom_identity::config::PrepareConfig::from_toml(&example).is_ok());
}

#[test]
fn prepared_parquet_uploads_with_its_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write_input(tmp.path());
    let cfg = config(tmp.path(), "");
    ok(&prepare(tmp.path(), &cfg, &input.csv, &["--quiet"]));

    let (data, op) = init(tmp.path());
    let server = ServeProcess::start(&data);
    let (brand, _, id) = two_parties(&server.url, &op);
    let parquet = tmp.path().join("prepared.parquet");
    let schema = tmp.path().join("prepared.schema.toml");
    let v = json(&cli(
        &server.url,
        &brand,
        &[
            "--json",
            "dataset",
            "upload",
            &id,
            "crm",
            "--file",
            parquet.to_str().unwrap(),
            "--schema",
            schema.to_str().unwrap(),
            "--quiet",
        ],
    ));
    assert_eq!(
        v["row_count"].as_u64().unwrap(),
        240 - input.minors - input.invalid_emails
    );
}

/// `cleanroom synth --raw` writes raw data and the configuration that prepares it; the two
/// parties' prepared files share pseudonyms on every identifier type.
#[test]
fn synth_raw_data_prepares_with_its_own_config() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut sets = Vec::new();
    for party in ["brand", "publisher"] {
        let csv = d.join(format!("{party}.csv"));
        let cfg = d.join(format!("{party}.toml"));
        let out = Command::new(BIN)
            .args([
                "synth", "--raw", "--party", party, "--people", "400", "--out",
            ])
            .arg(&csv)
            .arg("--schema-out")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let raw = std::fs::read_to_string(&csv).unwrap();
        assert!(raw.contains('@'), "raw data has raw emails");
        let out = prepare(d, &cfg, &csv, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (names, cols) = string_values(&d.join("prepared.parquet"));
        let mut per_kind = Vec::new();
        for kind in ["email_hmac", "phone_hmac", "maid_hmac"] {
            let i = names.iter().position(|n| n == kind).expect(kind);
            let set: std::collections::HashSet<String> =
                cols[i].iter().flatten().cloned().collect();
            assert!(!set.is_empty(), "{party} {kind}");
            per_kind.push(set);
        }
        sets.push(per_kind);
    }
    for (k, (brand, publisher)) in sets[0].iter().zip(&sets[1]).enumerate() {
        assert!(
            brand.intersection(publisher).count() > 10,
            "the parties share pseudonyms of identifier type {k}"
        );
    }
}
