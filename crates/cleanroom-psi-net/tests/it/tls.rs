//! Real TCP and TLS on 127.0.0.1.

use std::time::{Duration, Instant};

use cleanroom_psi::{MatchCounts, Outcome, ProtocolKind, Role};
use cleanroom_psi_net::{Limits, NetError, accept, accept_peer, connect};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::{config, identities, input, setup};

fn limits() -> Limits {
    Limits {
        idle_timeout: Duration::from_secs(3),
        io_timeout: Duration::from_secs(3),
        ..Limits::default()
    }
}

/// Runs cardinality as `role` with the identifiers `ids`, without progress reports.
async fn cardinality(
    conn: cleanroom_psi_net::Connection,
    role: Role,
    ids: std::ops::Range<u32>,
) -> Result<cleanroom_psi_net::Report, NetError> {
    let p = ProtocolKind::Cardinality;
    conn.run(&config(p, role), input(p, role, ids), &mut |_| {})
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_over_pinned_tls_gives_the_right_answer() {
    let ((a, a_fp), (b, b_fp)) = identities();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (ta, tb) = (setup(a, &b_fp), setup(b, &a_fp));
    let server = tokio::spawn(async move {
        let conn = accept(&listener, ta, limits()).await.unwrap();
        let cfg = config(ProtocolKind::Cardinality, Role::Sender);
        conn.run(
            &cfg,
            input(ProtocolKind::Cardinality, Role::Sender, 0..300),
            &mut |_| {},
        )
        .await
    });
    let conn = connect(&addr, tb, limits(), Duration::from_secs(5))
        .await
        .unwrap();
    let cfg = config(ProtocolKind::Cardinality, Role::Receiver);
    let mut reports = 0;
    let r = conn
        .run(
            &cfg,
            input(ProtocolKind::Cardinality, Role::Receiver, 200..450),
            &mut |p| {
                assert!(p.entries_done <= p.entries_total);
                reports += 1;
            },
        )
        .await
        .unwrap();
    let s = server.await.unwrap().unwrap();
    let want = Outcome::Cardinality(MatchCounts::new(vec![100], false));
    assert_eq!(r.outcome, want);
    assert_eq!(s.outcome, want);
    assert!(reports > 5);
    assert_eq!(r.peer_items, vec![300]);
    // Byte counters see both directions, TLS included (up to the closing alerts, which each
    // side may send after the other took its figures).
    assert!(r.bytes_sent.abs_diff(s.bytes_received) <= 64);
    assert!(r.bytes_received.abs_diff(s.bytes_sent) <= 64);
    assert!(r.bytes_sent > 250 * 32 && r.bytes_received > 300 * 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_another_certificate_is_refused() {
    let ((a, _a_fp), (b, _)) = identities();
    let ((_, c_fp), (mallory, _)) = identities();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let a_fp_for_mallory = a.fingerprint();
    // The server pins `c`, but `mallory` connects (pinning the server correctly).
    let ta = setup(a, &c_fp);
    let tm = setup(mallory, &a_fp_for_mallory);
    drop(b);
    let server = tokio::spawn(async move {
        match accept(&listener, ta, limits()).await {
            Err(e) => Err(e),
            Ok(conn) => cardinality(conn, Role::Sender, 0..10).await.map(|_| ()),
        }
    });
    let client = async {
        let conn = connect(&addr, tm, limits(), Duration::from_secs(5)).await?;
        cardinality(conn, Role::Receiver, 0..10).await.map(|_| ())
    };
    let c = client.await.unwrap_err();
    let s = server.await.unwrap().unwrap_err();
    assert!(matches!(s, NetError::PinMismatch { .. }), "{s}");
    assert!(s.to_string().contains("is not the pinned one"), "{s}");
    assert!(c.to_string().contains("TLS"), "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_waits_past_garbage_and_strangers_for_its_peer() {
    let ((a, a_fp), (b, b_fp)) = identities();
    let ((_, _), (mallory, _)) = identities();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let a_fp_for_mallory = a.fingerprint();
    let (ta, tb, tm) = (
        setup(a, &b_fp),
        setup(b, &a_fp),
        setup(mallory, &a_fp_for_mallory),
    );
    let server = tokio::spawn(async move {
        let mut refused = Vec::new();
        let conn = accept_peer(&listener, ta, limits(), &mut |_, e| refused.push(e.code())).await?;
        let r = cardinality(conn, Role::Sender, 0..30).await?;
        Ok::<_, NetError>((r, refused))
    });
    // Plain text, then a stranger with a certificate of its own.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let stranger = async {
        let conn = connect(&addr, tm, limits(), Duration::from_secs(5)).await?;
        cardinality(conn, Role::Receiver, 0..10).await
    };
    assert!(stranger.await.is_err());
    drop(s);
    // Then the peer.
    let conn = connect(&addr, tb, limits(), Duration::from_secs(5))
        .await
        .unwrap();
    let r = cardinality(conn, Role::Receiver, 20..50).await.unwrap();
    let (s, refused) = server.await.unwrap().unwrap();
    let want = Outcome::Cardinality(MatchCounts::new(vec![10], false));
    assert_eq!(r.outcome, want);
    assert_eq!(s.outcome, want);
    let mut refused = refused;
    refused.sort();
    assert_eq!(refused, ["pin_mismatch", "tls_handshake"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_say_nothing_do_not_hold_the_listener_from_its_peer() {
    let ((a, a_fp), (b, b_fp)) = identities();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (ta, tb) = (setup(a, &b_fp), setup(b, &a_fp));
    // Handshakes may take 30 s; three connections open first and never speak.
    let slow = Limits {
        io_timeout: Duration::from_secs(30),
        ..limits()
    };
    let server = tokio::spawn(async move {
        let conn = accept_peer(&listener, ta, slow, &mut |_, _| {}).await?;
        cardinality(conn, Role::Sender, 0..30).await
    });
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    let conn = connect(&addr, tb, limits(), Duration::from_secs(5))
        .await
        .unwrap();
    let r = cardinality(conn, Role::Receiver, 20..50).await.unwrap();
    let s = server.await.unwrap().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    let want = Outcome::Cardinality(MatchCounts::new(vec![10], false));
    assert_eq!(r.outcome, want);
    assert_eq!(s.outcome, want);
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_garbage_fails_the_tls_handshake() {
    let ((a, _), (_, b_fp)) = identities();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ta = setup(a, &b_fp);
    let server = tokio::spawn(async move { accept(&listener, ta, limits()).await.map(|_| ()) });
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let e = server.await.unwrap().unwrap_err();
    assert_eq!(e.code(), "tls_handshake", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_times_out_and_a_vanished_one_is_noticed() {
    let ((a, a_fp), (b, b_fp)) = identities();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (ta, tb) = (setup(a, &b_fp), setup(b, &a_fp));
    // The server completes TLS, then says nothing and keeps the connection open.
    let server = tokio::spawn(async move {
        let conn = accept(&listener, ta, limits()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
        drop(conn);
    });
    let conn = connect(&addr, tb, limits(), Duration::from_secs(5))
        .await
        .unwrap();
    let t0 = Instant::now();
    let cfg = config(ProtocolKind::Intersection, Role::Receiver);
    let e = conn
        .run(
            &cfg,
            input(ProtocolKind::Intersection, Role::Receiver, 0..10),
            &mut |_| {},
        )
        .await
        .unwrap_err();
    assert!(matches!(e, NetError::Timeout { .. }), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    server.abort();
}

/// Runs one session over TLS on 127.0.0.1: the listener with `(protocol, role, ids)`, the
/// connecting side with the other triple; both reports (or errors) within a deadline.
async fn pair(
    listen: (ProtocolKind, Role, std::ops::Range<u32>),
    dial: (ProtocolKind, Role, std::ops::Range<u32>),
) -> (
    Result<cleanroom_psi_net::Report, NetError>,
    Result<cleanroom_psi_net::Report, NetError>,
) {
    let ((a, a_fp), (b, b_fp)) = identities();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (ta, tb) = (setup(a, &b_fp), setup(b, &a_fp));
    let server = tokio::spawn(async move {
        let conn = accept(&listener, ta, limits()).await?;
        let (p, r, ids) = listen;
        conn.run(&config(p, r), input(p, r, ids), &mut |_| {}).await
    });
    let client = async move {
        let conn = connect(&addr, tb, limits(), Duration::from_secs(5)).await?;
        let (p, r, ids) = dial;
        conn.run(&config(p, r), input(p, r, ids), &mut |_| {}).await
    };
    let t0 = Instant::now();
    let c = client.await;
    let s = server.await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    (s, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sum_goes_to_the_party_without_values_and_the_other_sum_is_refused() {
    // The listener holds values (i % 10 for ids 0..300); the connecting side learns.
    let (s, c) = pair(
        (ProtocolKind::Sum, Role::Sender, 0..300),
        (ProtocolKind::Sum, Role::Receiver, 200..450),
    )
    .await;
    let (s, c) = (s.unwrap(), c.unwrap());
    let Outcome::Sum(out) = &c.outcome else {
        panic!("{:?}", c.outcome)
    };
    assert_eq!(out.counts, MatchCounts::new(vec![100], false));
    assert_eq!(out.total_sum, (200..300).map(|i| i % 10).sum::<i64>());
    assert_eq!(s.outcome, Outcome::SumAnswered { records: 300 });
    assert_eq!(s.peer_items, vec![250]);

    // A peer running the sum to the values holder is refused by both sides, with the reason.
    let (s, c) = pair(
        (ProtocolKind::SumToValuesHolder, Role::Sender, 0..30),
        (ProtocolKind::Sum, Role::Receiver, 0..30),
    )
    .await;
    for e in [s.unwrap_err(), c.unwrap_err()] {
        assert!(
            e.code() == "incompatible_session" || e.code() == "peer_aborted",
            "{e}"
        );
        if e.code() == "incompatible_session" {
            assert!(e.to_string().contains("--sum-to values-holder"), "{e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ot_intersection_runs_over_pinned_tls() {
    let ot = ProtocolKind::IntersectionOt;
    let (s, c) = pair(
        (ot, Role::Sender, 0..3000),
        (ot, Role::Receiver, 2000..5000),
    )
    .await;
    let (s, c) = (s.unwrap(), c.unwrap());
    let Outcome::Intersection(out) = &c.outcome else {
        panic!("{:?}", c.outcome)
    };
    assert_eq!(out.counts, MatchCounts::new(vec![1000], false));
    let matched: Vec<u64> = out.matched_rows().map(|(r, _)| r).collect();
    assert_eq!(matched, (0..1000).collect::<Vec<u64>>());
    assert_eq!(s.outcome, Outcome::Answered { identifiers: 3000 });
    // 512 columns of (1.27·3000 + 256 → 4096) bins one way, 3 × 3000 outputs the other.
    assert!(c.bytes_sent > 4096 * 64, "{}", c.bytes_sent);
    assert!(s.bytes_sent > 9000 * 8, "{}", s.bytes_sent);
}
