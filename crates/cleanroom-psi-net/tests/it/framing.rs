//! Frames and hellos over an in-memory pipe: version mismatch, garbage, oversize frames, a
//! peer that closes half way.

use std::time::Duration;

use cleanroom_psi::wire::MAGIC;
use cleanroom_psi::{Hello, ProtocolKind, Role};
use cleanroom_psi_net::{Channel, Counters, Limits, NetError, run_session};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

use crate::{config, input};

fn limits() -> Limits {
    Limits {
        idle_timeout: Duration::from_secs(3),
        io_timeout: Duration::from_secs(3),
        max_frame: 1 << 20,
        session_timeout: Duration::from_secs(60),
    }
}

/// Runs a receiver on one end; the test plays the peer on the other.
async fn receiver_against(peer: impl AsyncFnOnce(DuplexStream)) -> NetError {
    receiver_of(ProtocolKind::Intersection, peer).await
}

async fn receiver_of(protocol: ProtocolKind, peer: impl AsyncFnOnce(DuplexStream)) -> NetError {
    receiver_with(protocol, limits(), peer).await
}

async fn receiver_with(
    protocol: ProtocolKind,
    limits: Limits,
    peer: impl AsyncFnOnce(DuplexStream),
) -> NetError {
    let (a, b) = duplex(1 << 16);
    let me = tokio::spawn(async move {
        let mut ch = Channel::new(a, limits);
        let cfg = config(protocol, Role::Receiver);
        run_session(
            &mut ch,
            &Counters::default(),
            &cfg,
            input(protocol, Role::Receiver, 0..20),
            &mut |_| {},
        )
        .await
        .map(|_| ())
    });
    peer(b).await;
    me.await.unwrap().unwrap_err()
}

async fn read_frame(p: &mut DuplexStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    p.read_exact(&mut len).await.unwrap();
    let mut b = vec![0u8; u32::from_be_bytes(len) as usize];
    p.read_exact(&mut b).await.unwrap();
    b
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

fn sender_hello() -> Hello {
    config(ProtocolKind::Intersection, Role::Sender).hello(&input(
        ProtocolKind::Intersection,
        Role::Sender,
        0..5,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_version_gets_a_clear_error() {
    let e = receiver_against(async |mut p| {
        let mut h = sender_hello();
        h.version = cleanroom_psi::PROTOCOL_VERSION + 1;
        p.write_all(&frame(&h.encode())).await.unwrap();
        let mut sink = Vec::new();
        let _ = p.read_to_end(&mut sink).await;
    })
    .await;
    assert_eq!(
        e.to_string(),
        format!(
            "peer speaks PSI protocol v{}, we speak v{}",
            cleanroom_psi::PROTOCOL_VERSION + 1,
            cleanroom_psi::PROTOCOL_VERSION
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversize_frames_are_refused_without_allocating() {
    let e = receiver_against(async |mut p| {
        p.write_all(&frame(b"SSH-2.0-OpenSSH_9.6\r\n"))
            .await
            .unwrap();
        let mut sink = Vec::new();
        let _ = p.read_to_end(&mut sink).await;
    })
    .await;
    assert_eq!(e.code(), "not_psi", "{e}");

    let e = receiver_against(async |mut p| {
        // 4 GiB announced: refused from the header alone.
        p.write_all(&[0xff, 0xff, 0xff, 0xf0]).await.unwrap();
        let mut sink = Vec::new();
        let _ = p.read_to_end(&mut sink).await;
    })
    .await;
    assert!(
        matches!(
            e,
            NetError::FrameTooLarge {
                size: 4294967280,
                max: 1048576
            }
        ),
        "{e}"
    );

    // A valid hello, then a frame that is not a message.
    let e = receiver_against(async |mut p| {
        p.write_all(&frame(&sender_hello().encode())).await.unwrap();
        p.write_all(&frame(&[0x42; 100])).await.unwrap();
        let mut sink = Vec::new();
        let _ = p.read_to_end(&mut sink).await;
    })
    .await;
    assert_eq!(e.code(), "malformed_message", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_closes_half_way_is_reported() {
    let e = receiver_against(async |mut p| {
        // Take the receiver's hello, answer, then stop in the middle of the next frame.
        let mut len = [0u8; 4];
        p.read_exact(&mut len).await.unwrap();
        let mut hello = vec![0u8; u32::from_be_bytes(len) as usize];
        p.read_exact(&mut hello).await.unwrap();
        p.write_all(&frame(&sender_hello().encode())).await.unwrap();
        p.write_all(&[0, 0, 1, 0, 1, 2, 3]).await.unwrap();
        drop(p);
    })
    .await;
    assert!(matches!(e, NetError::PeerClosed(_)), "{e}");
    assert!(e.to_string().contains("closed the connection"), "{e}");
    assert_eq!(&MAGIC[..4], b"CLRM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ot_peer_that_vanishes_stalls_or_sends_garbage_is_reported() {
    let ot = ProtocolKind::IntersectionOt;
    let hello = config(ot, Role::Sender)
        .hello(&input(ot, Role::Sender, 0..5))
        .encode();
    // Takes the receiver's setup, then closes.
    let h = hello.clone();
    let e = receiver_of(ot, async move |mut p| {
        read_frame(&mut p).await;
        p.write_all(&frame(&h)).await.unwrap();
        let setup = read_frame(&mut p).await;
        assert_eq!(setup[0], 12, "the OT setup comes first");
        drop(p);
    })
    .await;
    assert!(matches!(e, NetError::PeerClosed(_)), "{e}");

    // Answers the hello, then says nothing: the idle timeout ends the session.
    // (The peer keeps the pipe open for 4 s, longer than the 3 s limit.)
    let h = hello.clone();
    let e = receiver_of(ot, async move |mut p| {
        read_frame(&mut p).await;
        p.write_all(&frame(&h)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
    })
    .await;
    assert!(matches!(e, NetError::Timeout { secs: 3, .. }), "{e}");

    // Base-OT answers of the wrong number: refused, and the peer is told why.
    let h = hello.clone();
    let e = receiver_of(ot, async move |mut p| {
        read_frame(&mut p).await;
        p.write_all(&frame(&h)).await.unwrap();
        read_frame(&mut p).await;
        let mut choices = vec![13, 0, 0, 0, 1];
        choices.extend_from_slice(&[0u8; 32 + 16]);
        p.write_all(&frame(&choices)).await.unwrap();
        let abort = read_frame(&mut p).await;
        assert_eq!(&abort[1..], b"count_mismatch");
    })
    .await;
    assert_eq!(e.code(), "count_mismatch", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_reported_by_the_write_timeout_not_the_idle_one() {
    // A pipe of 256 bytes: the receiver's first batch of queries (64 points) cannot fit.
    let (a, mut p) = duplex(256);
    let started = std::time::Instant::now();
    let me = tokio::spawn(async move {
        let limits = Limits {
            idle_timeout: Duration::from_secs(30),
            io_timeout: Duration::from_secs(1),
            max_frame: 1 << 20,
            session_timeout: Duration::from_secs(60),
        };
        let mut ch = Channel::new(a, limits);
        let cfg = config(ProtocolKind::Intersection, Role::Receiver);
        run_session(
            &mut ch,
            &Counters::default(),
            &cfg,
            input(ProtocolKind::Intersection, Role::Receiver, 0..200),
            &mut |_| {},
        )
        .await
        .map(|_| ())
    });
    // Answer the hello, then neither read nor write for longer than the IO timeout.
    read_frame(&mut p).await;
    p.write_all(&frame(&sender_hello().encode())).await.unwrap();
    let e = me.await.unwrap().unwrap_err();
    assert!(
        matches!(
            e,
            NetError::Timeout {
                what: "it stopped reading what we send",
                secs: 1
            }
        ),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    drop(p);
}

/// Copies frames from `from` to `to`, each `delay` after the previous one was passed on.
async fn trickle(
    mut from: tokio::io::ReadHalf<DuplexStream>,
    mut to: tokio::io::WriteHalf<DuplexStream>,
    delay: Duration,
) {
    loop {
        let mut len = [0u8; 4];
        if from.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut b = vec![0u8; u32::from_be_bytes(len) as usize];
        if from.read_exact(&mut b).await.is_err() {
            return;
        }
        tokio::time::sleep(delay).await;
        if to.write_all(&frame(&b)).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_trickles_its_messages_meets_the_session_deadline() {
    // A real sender whose every message reaches the receiver 200 ms after the one before:
    // never near the idle timeout (3 s), but its 25 set messages alone take 5 s, more than
    // the 2 s the receiver allows a session.
    let (a, wire_a) = duplex(1 << 20);
    let (b, wire_b) = duplex(1 << 20);
    let cfg = |role| {
        let mut c = config(ProtocolKind::Intersection, role);
        c.batch = 8;
        c
    };
    let (rcfg, scfg) = (cfg(Role::Receiver), cfg(Role::Sender));
    let started = std::time::Instant::now();
    let receiver = tokio::spawn(async move {
        let limits = Limits {
            session_timeout: Duration::from_secs(2),
            ..limits()
        };
        let r = run_session(
            &mut Channel::new(a, limits),
            &Counters::default(),
            &rcfg,
            input(ProtocolKind::Intersection, Role::Receiver, 0..200),
            &mut |_| {},
        )
        .await;
        (r.map(|_| ()), started.elapsed())
    });
    let sender = tokio::spawn(async move {
        run_session(
            &mut Channel::new(b, limits()),
            &Counters::default(),
            &scfg,
            input(ProtocolKind::Intersection, Role::Sender, 0..200),
            &mut |_| {},
        )
        .await
        .map(|_| ())
    });
    let (from_receiver, to_receiver) = tokio::io::split(wire_a);
    let (from_sender, to_sender) = tokio::io::split(wire_b);
    tokio::spawn(trickle(from_receiver, to_sender, Duration::ZERO));
    tokio::spawn(trickle(
        from_sender,
        to_receiver,
        Duration::from_millis(200),
    ));
    let (r, took) = receiver.await.unwrap();
    let e = r.unwrap_err();
    assert!(matches!(e, NetError::SessionTimeout { secs: 2 }), "{e}");
    assert_eq!(e.code(), "session_timeout");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "{took:?}"
    );
    // The sender has sent everything by then and may have finished; it never waits long.
    let _ = sender.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_deadline_ends_a_wait_before_the_idle_timeout_and_the_peer_is_told() {
    let started = std::time::Instant::now();
    let limits = Limits {
        idle_timeout: Duration::from_secs(30),
        session_timeout: Duration::from_secs(1),
        ..limits()
    };
    // Answer the hello, then read what comes without ever answering.
    let e = receiver_with(ProtocolKind::Intersection, limits, async |mut p| {
        read_frame(&mut p).await;
        p.write_all(&frame(&sender_hello().encode())).await.unwrap();
        let abort = loop {
            let f = read_frame(&mut p).await;
            if f[0] == 0xff {
                break f;
            }
        };
        assert_eq!(&abort[1..], b"session_timeout");
    })
    .await;
    assert!(matches!(e, NetError::SessionTimeout { secs: 1 }), "{e}");
    assert!(e.to_string().contains("--session-timeout"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
