//! Identity end to end, through the binary a user runs and a real server: raw first-party data
//! generated for two parties, prepared on each party's premises (`cleanroom prepare`, the shared
//! secret never reaches the server), uploaded, matched on a priority cascade of three
//! identifier types (`overlap_ids`) and activated as the partner's own device ids, with the
//! refusals on the way. Every number is checked against a plaintext computation over the two
//! prepared files.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::*;

const PEOPLE: &str = "20000";
const SECRET: &str = "identity-end-to-end-secret-0123456789";
const KEYS: [&str; 3] = ["email_hmac", "phone_hmac", "maid_hmac"];

/// A prepared file's columns by name.
struct Prepared {
    parquet: PathBuf,
    schema: PathBuf,
    columns: BTreeMap<String, Vec<Option<String>>>,
}

impl Prepared {
    fn col(&self, name: &str) -> &[Option<String>] {
        self.columns
            .get(name)
            .unwrap_or_else(|| panic!("no column {name} in {:?}", self.columns.keys()))
    }

    fn rows(&self) -> usize {
        self.columns.values().next().map_or(0, Vec::len)
    }

    /// The non-null values of `key`.
    fn set(&self, key: &str) -> HashSet<&str> {
        self.col(key).iter().flatten().map(String::as_str).collect()
    }
}

/// `cleanroom synth --raw` then `cleanroom prepare`, as one party does on its own machine.
fn generate_and_prepare(dir: &Path, party: &str) -> Prepared {
    let csv = dir.join(format!("{party}.raw.csv"));
    let cfg = dir.join(format!("{party}.prepare.toml"));
    ok(&run(Command::new(BIN)
        .args([
            "synth", "--raw", "--party", party, "--people", PEOPLE, "--out",
        ])
        .arg(&csv)
        .arg("--schema-out")
        .arg(&cfg)));
    let raw = std::fs::read_to_string(&csv).unwrap();
    assert!(raw.contains('@'), "raw emails in the input");
    let parquet = dir.join(format!("{party}.parquet"));
    let report = ok(&run(Command::new(BIN)
        .arg("prepare")
        .arg("--config")
        .arg(&cfg)
        .arg("--input")
        .arg(&csv)
        .arg("--output")
        .arg(&parquet)
        .arg("--quiet")
        .env(cleanroom_identity::pseudonym::SECRET_ENV, SECRET)
        .env_remove("CLEANROOM_TOKEN")
        .stdin(Stdio::null())));
    assert!(
        report.contains("invalid"),
        "the report counts invalid values: {report}"
    );
    let (names, cols) = string_values(&parquet);
    let columns: BTreeMap<String, Vec<Option<String>>> = names.into_iter().zip(cols).collect();
    // Nothing raw left: no column holds an e-mail address.
    for (name, values) in &columns {
        assert!(
            values.iter().flatten().all(|v| !v.contains('@')),
            "raw e-mail in {party}.{name}"
        );
    }
    Prepared {
        schema: dir.join(format!("{party}.schema.toml")),
        parquet,
        columns,
    }
}

/// The plaintext cascade: per level, the left people whose first matching key is that one.
/// Also the number of left people holding a key value another left person holds too (the
/// per-key cap may take such a value from one of them at random).
fn plaintext_cascade(left: &Prepared, unit: &str, right: &Prepared) -> ([i64; 3], i64, i64) {
    let sets: Vec<HashSet<&str>> = KEYS.iter().map(|k| right.set(k)).collect();
    let mut level: BTreeMap<&str, usize> = BTreeMap::new();
    let mut seen: Vec<BTreeMap<&str, i64>> = vec![BTreeMap::new(); KEYS.len()];
    for row in 0..left.rows() {
        let person = left.col(unit)[row].as_deref().unwrap();
        let mut l = usize::MAX;
        for (i, k) in KEYS.iter().enumerate() {
            if let Some(v) = left.col(k)[row].as_deref() {
                *seen[i].entry(v).or_default() += 1;
                if l == usize::MAX && sets[i].contains(v) {
                    l = i;
                }
            }
        }
        let e = level.entry(person).or_insert(usize::MAX);
        *e = (*e).min(l);
    }
    let mut counts = [0i64; 3];
    for l in level.values().filter(|l| **l < KEYS.len()) {
        counts[*l] += 1;
    }
    let shared: i64 = seen
        .iter()
        .flat_map(|s| s.values())
        .filter(|n| **n > 1)
        .sum();
    (counts, level.len() as i64, shared)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

fn number(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn prepare_upload_match_on_three_identifiers_and_activate_with_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 1. Each party prepares its raw data on its own premises, with the shared secret.
    let crm = generate_and_prepare(dir, "brand");
    let aud = generate_and_prepare(dir, "publisher");
    let (truth, audience, shared) = plaintext_cascade(&crm, "customer_id", &aud);
    assert!(
        truth.iter().all(|n| *n > 400),
        "every type matches: {truth:?}"
    );

    // 2. Upload the prepared files (with their schema) to a real server.
    let (data, op) = init(dir);
    let server = ServeProcess::start(&data);
    let url = server.url.clone();
    let (brand, publisher, id) = two_parties(&url, &op);
    for (token, name, p) in [(&brand, "crm", &crm), (&publisher, "aud", &aud)] {
        let v = json(&cli(
            &url,
            token,
            &[
                "--json",
                "dataset",
                "upload",
                &id,
                name,
                "--file",
                p.parquet.to_str().unwrap(),
                "--schema",
                p.schema.to_str().unwrap(),
                "--quiet",
            ],
        ));
        assert_eq!(v["row_count"].as_u64().unwrap(), p.rows() as u64);
    }

    // The activation minimum sits between the smallest and the largest region's matched
    // segment (the brand's people whose email the publisher holds with a device id), so one
    // region can be delivered and another is too small.
    let aud_emails: HashSet<&str> = (0..aud.rows())
        .filter(|r| aud.col("maid_hmac")[*r].is_some())
        .filter_map(|r| aud.col("email_hmac")[r].as_deref())
        .collect();
    let mut per_region: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for row in 0..crm.rows() {
        let (Some(region), Some(email)) = (
            crm.col("region")[row].as_deref(),
            crm.col("email_hmac")[row].as_deref(),
        ) else {
            continue;
        };
        if aud_emails.contains(email) {
            per_region
                .entry(region)
                .or_default()
                .insert(crm.col("customer_id")[row].as_deref().unwrap());
        }
    }
    let (big, big_n) = per_region
        .iter()
        .map(|(r, p)| (*r, p.len()))
        .max_by_key(|(_, n)| *n)
        .unwrap();
    let (small, small_n) = per_region
        .iter()
        .map(|(r, p)| (*r, p.len()))
        .min_by_key(|(_, n)| *n)
        .unwrap();
    assert!(small_n + 2 <= big_n && small_n >= 50, "{per_region:?}");
    let minimum = (small_n + big_n).div_ceil(2);

    // 3. Each owner sets its rules and grants a budget.
    let brand_policy = write(
        dir,
        "brand-policy.toml",
        &format!(
            r#"
join_keys = ["email_hmac", "phone_hmac", "maid_hmac"]
dimensions = ["region", "age_band"]
analysts = ["publisher"]
receivers = ["publisher"]
[activation]
partners = ["publisher"]
min_segment_size = {minimum}
dimensions = ["region"]
"#
        ),
    );
    let publisher_policy = write(
        dir,
        "publisher-policy.toml",
        r#"
join_keys = ["email_hmac", "phone_hmac", "maid_hmac"]
dimensions = ["region"]
analysts = ["brand"]
receivers = ["brand"]
allow_sql = false
"#,
    );
    for (token, name, policy) in [
        (&brand, "crm", &brand_policy),
        (&publisher, "aud", &publisher_policy),
    ] {
        ok(&cli(
            &url,
            token,
            &["policy", "set", &id, name, "--file", policy],
        ));
        grant(&url, token, &id, "6", "2");
    }

    // 4. Overlap on three identifiers at once: refused until the publisher approves the
    // template on its data, refused on a column that is not a join key, then released.
    let overlap = |keys: &str, json_out: bool| {
        let mut args = vec![
            "template",
            "run",
            &id,
            "overlap_ids",
            "-p",
            "left=crm",
            "-p",
            "right=aud",
            "-p",
            keys,
            "--epsilon",
            "2",
        ];
        if json_out {
            args.insert(0, "--json");
        }
        cli(&url, &brand, &args)
    };
    let all_keys = "keys=email_hmac,phone_hmac,maid_hmac";
    let err = failed(&overlap(all_keys, false));
    assert!(err.contains("has not approved"), "{err}");
    ok(&cli(
        &url,
        &publisher,
        &[
            "template",
            "approve",
            &id,
            "overlap_ids",
            "--dataset",
            "aud",
        ],
    ));
    let err = failed(&overlap("keys=email_hmac,region", false));
    assert!(
        err.contains("region is not a join key") && err.contains("(rule join_not_on_key)"),
        "{err}"
    );
    let v = json(&overlap(all_keys, true));
    assert_eq!(v["status"], "released", "{v}");
    let table = &v["result"]["tables"][0];
    assert_eq!(table["name"], "overlap_ids");
    let names: Vec<&str> = table["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["priority", "id_type", "matched", "audience", "match_rate"],
        "{table}"
    );
    let sd = number(&table["columns"][2]["noise_sd"]);
    let audience_sd = number(&table["columns"][3]["noise_sd"]);
    assert!(sd > 0.0 && sd < 50.0, "{sd}");
    let rows = table["rows"].as_array().unwrap();
    let by_type: BTreeMap<&str, &Vec<serde_json::Value>> = rows
        .iter()
        .map(|r| (r[1].as_str().unwrap(), r.as_array().unwrap()))
        .collect();
    // Every type is shown, within 8 standard deviations of the truth (a false failure has
    // probability far below 10^-6), give or take the people the per-key cap may move.
    let slack = shared as f64;
    assert!(slack < 50.0, "{shared} people share a key value");
    for (i, k) in KEYS.iter().enumerate() {
        let row = by_type
            .get(k)
            .unwrap_or_else(|| panic!("{k} not shown: {table}"));
        assert_eq!(number(&row[0]) as usize, i + 1);
        let m = number(&row[2]);
        let want = truth[i] as f64;
        assert!(
            (m - want).abs() <= 8.0 * sd + slack,
            "{k}: released {m}, truth {want}, sd {sd}"
        );
        let a = number(&row[3]);
        assert!(
            (a - audience as f64).abs() <= 8.0 * audience_sd,
            "{a} vs {audience}"
        );
        let rate = number(&row[4]);
        assert!((rate - m / a).abs() < 1e-3, "{rate} vs {m}/{a}");
    }
    // The total is the sum of the types: nobody counted twice.
    let total = by_type["total"];
    let sum: f64 = KEYS.iter().map(|k| number(&by_type[k][2])).sum();
    assert_eq!(number(&total[2]), sum);
    let people_matched: i64 = truth.iter().sum();
    assert!(
        (sum - people_matched as f64).abs() <= 8.0 * sd * 3f64.sqrt() + slack,
        "{sum} vs {people_matched}"
    );
    // Both owners paid.
    let charged: BTreeSet<&str> = v["charges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["org"].as_str().unwrap())
        .collect();
    assert_eq!(charged, BTreeSet::from(["brand", "publisher"]));

    // 5. Activation: the publisher asks for the brand's customers it also knows, in one
    // region, as its own device-id pseudonyms.
    let request = |token: &str, filter: &str, output: &str| {
        cli(
            &url,
            token,
            &[
                "--json",
                "activation",
                "request",
                &id,
                "--source",
                "crm",
                "--target",
                "aud",
                "--key",
                "email_hmac",
                "--filter",
                filter,
                "--output",
                output,
            ],
        )
    };
    let region_is = |r: &str| format!("region={r}");
    // Refused from the rules, before anything is matched.
    let err = failed(&request(&publisher, "age_band=25-34", "maid_hmac"));
    assert!(err.contains(r#""rule":"dimension_not_allowed""#), "{err}");
    let err = failed(&request(&publisher, &region_is(big), "region"));
    assert!(err.contains(r#""rule":"output_not_identifier""#), "{err}");
    let err = failed(&request(&brand, &region_is(big), "maid_hmac"));
    assert!(err.contains(r#""rule":"activation_not_allowed""#), "{err}");

    let a = json(&request(&publisher, &region_is(big), "maid_hmac"));
    assert_eq!(a["status"], "pending", "{a}");
    let aid = a["id"].as_str().unwrap().to_owned();
    let out = dir.join("segment.csv");
    let out_s = out.to_str().unwrap().to_owned();
    let download = |aid: &str| {
        cli(
            &url,
            &publisher,
            &["activation", "download", &id, aid, "-o", &out_s],
        )
    };
    let err = failed(&download(&aid));
    assert!(err.contains("activation_not_approved"), "{err}");
    assert!(!out.exists());
    // Only the owner approves.
    let err = failed(&cli(
        &url,
        &publisher,
        &["activation", "approve", &id, &aid],
    ));
    assert!(!err.is_empty());
    ok(&cli(&url, &brand, &["activation", "approve", &id, &aid]));
    ok(&download(&aid));
    // Exactly the publisher's own device ids of the matched people of that region.
    let segment_emails: HashSet<&str> = (0..crm.rows())
        .filter(|r| crm.col("region")[*r].as_deref() == Some(big))
        .filter_map(|r| crm.col("email_hmac")[r].as_deref())
        .collect();
    let want: BTreeSet<&str> = (0..aud.rows())
        .filter(|r| {
            aud.col("email_hmac")[*r]
                .as_deref()
                .is_some_and(|e| segment_emails.contains(e))
        })
        .filter_map(|r| aud.col("maid_hmac")[r].as_deref())
        .collect();
    assert!(!want.is_empty());
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("maid_hmac"));
    let got: Vec<&str> = lines.collect();
    assert_eq!(got, want.iter().copied().collect::<Vec<_>>());
    // Nothing but the publisher's own identifiers of the one column asked for.
    let aud_maids = aud.set("maid_hmac");
    assert!(got.iter().all(|v| aud_maids.contains(v)));
    // Once per approval.
    let err = failed(&download(&aid));
    assert!(err.contains("activation_consumed"), "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);

    // A region whose matched segment is below the owner's minimum: approved, but nothing is
    // delivered.
    let a = json(&request(&publisher, &region_is(small), "maid_hmac"));
    let small_id = a["id"].as_str().unwrap().to_owned();
    ok(&cli(
        &url,
        &brand,
        &["activation", "approve", &id, &small_id],
    ));
    std::fs::remove_file(&out).unwrap();
    let err = failed(&download(&small_id));
    assert!(err.contains("segment_too_small"), "{err}");
    assert!(!out.exists(), "no file for a refused segment");

    // The delivery and the refusals are in the collaboration's audit chain, which verifies.
    let log = ok(&cli(&url, &brand, &["--json", "audit", "list", &id]));
    for needle in [
        format!("delivered {} identifier(s) of aud.maid_hmac", want.len()),
        "activation_consumed".to_owned(),
        format!("fewer than {minimum} people of crm"),
        "does not allow filtering by age_band".to_owned(),
    ] {
        assert!(log.contains(&needle), "audit lacks {needle}:\n{log}");
    }
    let audit = ok(&cli(&url, &brand, &["audit", "verify", &id]));
    assert!(audit.contains("verified"), "{audit}");
}
