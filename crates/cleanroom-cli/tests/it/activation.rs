//! Activation as the partner and the owner run it: request, approve, download once into a
//! file, and the second download refused.

use crate::*;

const POLICY: &str = r#"
join_keys = ["email_hmac"]
dimensions = ["city"]
[activation]
partners = ["publisher"]
min_segment_size = 100
dimensions = ["city"]
"#;

#[test]
fn a_partner_downloads_its_own_segment_once_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, op) = init(tmp.path());
    let server = ServeProcess::start(&data);
    let url = server.url.clone();
    let (brand, publisher, id) = two_parties(&url, &op);
    let p = |s: &std::path::Path| s.to_str().unwrap().to_owned();
    let (crm, aud, pol) = (
        tmp.path().join("crm.csv"),
        tmp.path().join("aud.csv"),
        tmp.path().join("policy.toml"),
    );
    let mut s = String::from("pid,email_hmac,city,n\n");
    for i in 0..1000 {
        s.push_str(&format!("c{i},e{i},city{},1\n", i % 2));
    }
    std::fs::write(&crm, s).unwrap();
    let mut s = String::from("uid,email_hmac,maid\n");
    for i in 0..1000 {
        s.push_str(&format!("u{i},e{},m{:04}\n", i + 500, i + 500));
    }
    std::fs::write(&aud, s).unwrap();
    std::fs::write(&pol, POLICY).unwrap();
    let crm_file = p(&crm);
    let mut args = vec![
        "dataset", "upload", &id, "crm", "--file", &crm_file, "--quiet",
    ];
    args.extend(COLUMNS);
    ok(&cli(&url, &brand, &args));
    let aud_file = p(&aud);
    ok(&cli(
        &url,
        &publisher,
        &[
            "dataset",
            "upload",
            &id,
            "audience",
            "--file",
            &aud_file,
            "--quiet",
            "-c",
            "uid:string:privacy_unit",
            "-c",
            "email_hmac:string:identifier",
            "-c",
            "maid:string:identifier",
        ],
    ));
    ok(&cli(
        &url,
        &brand,
        &["policy", "set", &id, "crm", "--file", &p(&pol)],
    ));
    let shown = ok(&cli(&url, &publisher, &["policy", "show", &id, "crm"]));
    assert!(shown.contains("partners publisher"), "{shown}");
    let a = json(&cli(
        &url,
        &publisher,
        &[
            "--json",
            "activation",
            "request",
            &id,
            "--source",
            "crm",
            "--target",
            "audience",
            "--key",
            "email_hmac",
            "--filter",
            "city=city0",
            "--output",
            "maid",
        ],
    ));
    assert_eq!(a["status"], "pending");
    let aid = a["id"].as_str().unwrap().to_owned();
    let out = tmp.path().join("segment.csv");
    // Before approval: refused, and no file.
    let err = failed(&cli(
        &url,
        &publisher,
        &["activation", "download", &id, &aid, "-o", &p(&out)],
    ));
    assert!(err.contains("activation_not_approved"), "{err}");
    assert!(!out.exists());
    let listed = json(&cli(&url, &brand, &["--json", "activation", "list", &id]));
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == aid.as_str() && a["status"] == "pending"),
        "{listed}"
    );
    ok(&cli(&url, &brand, &["activation", "approve", &id, &aid]));
    ok(&cli(
        &url,
        &publisher,
        &["activation", "download", &id, &aid, "-o", &p(&out)],
    ));
    let text = std::fs::read_to_string(&out).unwrap();
    let want: Vec<String> = (500..1000)
        .filter(|i| i % 2 == 0)
        .map(|i| format!("m{i:04}"))
        .collect();
    let got: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(text.lines().next(), Some("maid"));
    assert_eq!(got, want);
    // Once: the second download fails and leaves the first file as it was.
    let err = failed(&cli(
        &url,
        &publisher,
        &["activation", "download", &id, &aid, "-o", &p(&out)],
    ));
    assert!(err.contains("activation_consumed"), "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
    let shown = json(&cli(
        &url,
        &brand,
        &["--json", "activation", "show", &id, &aid],
    ));
    assert_eq!(shown["status"], "delivered");
    assert_eq!(shown["delivered"], want.len());
}
