//! The analysis commands as a user runs them: policy, budget, query, template, analysis.

use crate::*;

pub fn write_people(path: &std::path::Path, prefix: &str, count: usize, offset: usize) {
    let mut s = String::from("pid,email_hmac,city,n\n");
    for i in 0..count {
        s.push_str(&format!(
            "{prefix}{i},e{},city{},{}\n",
            i + offset,
            i % 3,
            i % 5
        ));
    }
    std::fs::write(path, s).unwrap();
}

pub const POLICY: &str = r#"
join_keys = ["email_hmac"]
dimensions = ["city"]
analysts = ["publisher", "brand"]
receivers = ["publisher", "brand"]
[[metrics]]
column = "n"
lower = 0
upper = 10
"#;

/// Uploads `file` (the [`write_people`] columns) as the dataset `name` of `collab` through
/// `url`, and sets the policy in the file `policy` on it.
pub fn upload_with_policy(
    url: &str,
    token: &str,
    collab: &str,
    name: &str,
    file: &std::path::Path,
    policy: &std::path::Path,
) {
    let (file, policy) = (file.to_str().unwrap(), policy.to_str().unwrap());
    let mut args = vec!["dataset", "upload", collab, name, "--file", file, "--quiet"];
    args.extend(COLUMNS);
    ok(&cli(url, token, &args));
    ok(&cli(
        url,
        token,
        &["policy", "set", collab, name, "--file", policy],
    ));
}

#[test]
fn policies_budgets_queries_and_templates_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, op) = init(tmp.path());
    let server = ServeProcess::start(&data);
    let url = server.url.clone();
    let (brand, publisher, id) = two_parties(&url, &op);
    let (crm, aud, pol) = (
        tmp.path().join("crm.csv"),
        tmp.path().join("aud.csv"),
        tmp.path().join("policy.toml"),
    );
    write_people(&crm, "c", 3000, 0);
    write_people(&aud, "u", 3000, 1000);
    std::fs::write(&pol, POLICY).unwrap();
    for (token, name, file) in [(&brand, "crm", &crm), (&publisher, "aud", &aud)] {
        upload_with_policy(&url, token, &id, name, file, &pol);
        grant(&url, token, &id, "2", "1");
    }
    // The example policy is a valid starting point.
    let example = ok(&run(Command::new(BIN).args(["policy", "example"])));
    assert!(example.contains("join_keys"));
    let shown = ok(&cli(&url, &publisher, &["policy", "show", &id, "crm"]));
    assert!(
        shown.contains("policy v1 of crm") && shown.contains("email_hmac"),
        "{shown}"
    );

    // A query: human table with noise, then JSON for scripts.
    let sql = "SELECT c.city, COUNT(DISTINCT c.pid) AS people FROM crm c JOIN aud a ON c.email_hmac = a.email_hmac GROUP BY c.city ORDER BY c.city";
    let text = ok(&cli(&url, &brand, &["query", &id, sql, "--epsilon", "0.5"]));
    assert!(
        text.contains("people (±") && text.contains("city0"),
        "{text}"
    );
    assert!(
        text.contains("groups left out (below the thresholds): about ")
            && text.contains("a noisy estimate, ±"),
        "{text}"
    );
    let v = json(&cli(
        &url,
        &brand,
        &["--json", "query", &id, sql, "--epsilon", "0.5"],
    ));
    assert!(
        v["reused_from"].is_string(),
        "the same query is answered from its release: {v}"
    );
    assert_eq!(v["charges"].as_array().unwrap().len(), 0);
    // A dry run prices without spending.
    let dry = ok(&cli(
        &url,
        &brand,
        &[
            "query",
            &id,
            "SELECT COUNT(*) FROM crm",
            "--dry-run",
            "--epsilon",
            "0.3",
        ],
    ));
    assert!(
        dry.contains("dry run") && dry.contains("brand ε=0.300"),
        "{dry}"
    );

    // Refusals go to stderr with a non-zero exit and name the rule.
    let err = failed(&cli(
        &url,
        &brand,
        &[
            "query",
            &id,
            "SELECT email_hmac, COUNT(*) FROM crm GROUP BY email_hmac",
        ],
    ));
    assert!(
        err.contains("identifier") && err.contains("policy_violation"),
        "{err}"
    );
    let err = failed(&cli(
        &url,
        &brand,
        &[
            "query",
            &id,
            "SELECT city, COUNT(*) FROM crm GROUP BY city",
            "--epsilon",
            "5",
        ],
    ));
    assert!(err.contains("budget_exhausted"), "{err}");

    // Templates: the publisher approves on its data, the brand runs.
    let list = ok(&cli(&url, &brand, &["template", "list"]));
    for t in ["overlap", "reach", "lift", "benchmark"] {
        assert!(list.contains(t), "{list}");
    }
    let run_overlap = || {
        cli(
            &url,
            &brand,
            &[
                "template",
                "run",
                &id,
                "overlap",
                "-p",
                "left=crm",
                "-p",
                "right=aud",
                "-p",
                "key=email_hmac",
                "--epsilon",
                "0.8",
            ],
        )
    };
    let err = failed(&run_overlap());
    assert!(err.contains("has not approved"), "{err}");
    ok(&cli(
        &url,
        &publisher,
        &["template", "approve", &id, "overlap", "--dataset", "aud"],
    ));
    let approvals = ok(&cli(&url, &brand, &["template", "approvals", &id]));
    assert!(
        approvals.contains("overlap") && approvals.contains("aud"),
        "{approvals}"
    );
    let text = ok(&run_overlap());
    assert!(
        text.contains("matched") && text.contains("match_rate"),
        "{text}"
    );

    // Budgets and history.
    let budgets = json(&cli(&url, &brand, &["--json", "budget", "show", &id]));
    let brand_left = budgets
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["org"] == "brand")
        .unwrap()["epsilon_left"]
        .as_f64()
        .unwrap();
    assert!((brand_left - (2.0 - 0.5 - 0.8)).abs() < 1e-6, "{budgets}");
    let history = json(&cli(&url, &brand, &["--json", "analysis", "list", &id]));
    let ids: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert!(ids.len() >= 3, "{history}");
    let one = ok(&cli(&url, &brand, &["analysis", "show", &id, ids[0]]));
    assert!(one.contains("released"), "{one}");
    // The audit log has every step, and verifies.
    let audit = ok(&cli(&url, &brand, &["--json", "audit", "list", &id]));
    for action in [
        "policy.set",
        "budget.grant",
        "analysis.query",
        "analysis.release",
        "template.approve",
        "analysis.template",
    ] {
        assert!(audit.contains(action), "{action} missing:\n{audit}");
    }
    ok(&cli(&url, &brand, &["audit", "verify", &id]));
}
