//! `cleanroom serve --tls-cert --tls-key` and the client's `--ca-cert`: a room served over
//! HTTPS with a private certificate, used by a client that trusts it, refused by one that
//! does not, and clear errors for a half or a wrong configuration.

use std::ffi::OsStr;
use std::process::Command;

use crate::*;

#[test]
fn serve_over_https_and_a_client_that_trusts_its_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, op) = init(tmp.path());
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_file = tmp.path().join("server.crt");
    let key_file = tmp.path().join("server.key");
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();

    // Half a configuration is a usage error; a key that is not one names its file.
    let out = run(Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .arg("--tls-cert")
        .arg(&cert_file));
    assert_eq!(out.status.code(), Some(2));
    let args: [&OsStr; 4] = [
        "--tls-cert".as_ref(),
        cert_file.as_os_str(),
        "--tls-key".as_ref(),
        cert_file.as_os_str(),
    ];
    let err = ServeProcess::try_start_with(&data, "127.0.0.1:0", &args)
        .err()
        .expect("a certificate is not a key");
    assert!(
        err.contains("private key") && err.contains("server.crt"),
        "{err}"
    );

    let args: [&OsStr; 4] = [
        "--tls-cert".as_ref(),
        cert_file.as_os_str(),
        "--tls-key".as_ref(),
        key_file.as_os_str(),
    ];
    let server = ServeProcess::try_start_with(&data, "127.0.0.1:0", &args).unwrap();
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let ca = cert_file.to_str().unwrap();
    ok(&cli(
        &server.url,
        "",
        &["health", "--wait", "5", "--ca-cert", ca],
    ));
    let who = json(&cli(
        &server.url,
        &op,
        &["--json", "whoami", "--ca-cert", ca],
    ));
    assert_eq!(who["org"], "operator");
    // Without the certificate the client refuses the server, and says why.
    let err = failed(&cli(&server.url, &op, &["whoami"]));
    assert!(
        err.contains("is not trusted") && err.contains("--ca-cert") && err.lines().count() == 1,
        "{err}"
    );
    // A file that holds no certificate is refused before any request.
    let err = failed(&cli(
        &server.url,
        &op,
        &["whoami", "--ca-cert", key_file.to_str().unwrap()],
    ));
    assert!(err.contains("server.key"), "{err}");
    // `serve` does not take the client's flag.
    let out = run(Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args(["--ca-cert", ca]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca-cert"));
}
