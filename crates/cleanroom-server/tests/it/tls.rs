//! HTTPS built in: the API over TLS with a certificate the client trusts, refused by a client
//! that does not trust it, and neither plain HTTP nor a silent client on the TLS port stops the
//! server serving others.

use std::time::Duration;

use cleanroom_server::ServeOptions;
use cleanroom_service::{CleanRoom, Config};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http_client;

#[tokio::test]
async fn the_api_over_tls_and_clients_that_cannot_speak_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();

    let room = CleanRoom::open(Config::new(dir.path().join("data")))
        .await
        .unwrap();
    let (_, _, op) = room.init_operator("operator", "admin").await.unwrap();
    let (listener, addr) = cleanroom_server::bind("127.0.0.1:0").await.unwrap();
    let opts = ServeOptions {
        tls: Some(cleanroom_server::tls::server_config(&cert_file, &key_file).unwrap()),
        header_read_timeout: Duration::from_millis(700),
        ..crate::serve_options()
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(cleanroom_server::serve_with(
        room.clone(),
        listener,
        opts,
        async {
            let _ = rx.await;
        },
    ));

    let url = format!("https://localhost:{}/v1/whoami", addr.port());
    let ca = reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap();
    let trusting = http_client(
        reqwest::Client::builder()
            .add_root_certificate(ca)
            .resolve("localhost", addr),
    );
    let whoami = |c: reqwest::Client| {
        let (url, op) = (url.clone(), op.expose().to_owned());
        async move { c.get(url).bearer_auth(op).send().await }
    };
    let r = whoami(trusting.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["org"],
        "operator"
    );

    // Over TLS the console's session cookie is `Secure` (never sent over plain HTTP).
    let r = trusting
        .post(format!("https://localhost:{}/console/session", addr.port()))
        .json(&serde_json::json!({"token": op.expose()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    assert!(cookie.contains("HttpOnly; SameSite=Strict"), "{cookie}");

    // A client that does not trust the certificate refuses to talk (and sends no token).
    let wary = http_client(reqwest::Client::builder().resolve("localhost", addr));
    let e = whoami(wary).await.unwrap_err();
    assert!(e.is_connect(), "{e:?}");

    // Plain HTTP on the TLS port gets no answer in clear text.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"));

    // A client that connects and never starts its handshake is closed after the head timeout,
    // and others are served meanwhile.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        whoami(trusting.clone()).await.unwrap().status(),
        StatusCode::OK
    );
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte))
        .await
        .expect("the silent connection is closed within the timeout");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

    let _ = tx.send(());
    task.await.unwrap().unwrap();
}
