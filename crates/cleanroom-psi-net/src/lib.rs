//! The transport of `cleanroom psi`: two processes on two machines, one listening, one
//! connecting, over TLS 1.3 with mutually pinned self-signed certificates.
//!
//! - [`tls`]: key and certificate generation (`cleanroom psi keygen`), loading, SHA-256 pins,
//!   and the verifiers that accept exactly the pinned peer.
//! - [`frame`]: 4-byte length-prefixed frames with a size cap, idle and IO timeouts, and byte
//!   counters below TLS (what really crosses the network).
//! - [`run_session`]: the hello exchange (magic, version, protocol, parameters; both sides must
//!   agree or fail with a clear error), then the protocol messages of a
//!   [`cleanroom_psi::Party`], with a progress callback.
//!
//! Plaintext identifiers never reach this crate: it moves only encoded protocol messages.

mod error;
pub mod frame;
pub mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cleanroom_psi::{Action, Hello, Message, Outcome, Party, PreparedInput, SessionConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

pub use error::NetError;
pub use frame::{Channel, Counters, Counting, Limits};
pub use tls::{Identity, PeerPin, TlsSetup};

/// First byte of a frame telling the peer why we stop (then a stable error code, ASCII).
const ABORT: u8 = 0xff;

/// A progress report, after every message.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Entries (identifiers, records, tags) sent and received so far.
    pub entries_done: u64,
    /// All entries the session will move, both directions.
    pub entries_total: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// What a finished session reports.
#[derive(Debug)]
pub struct Report {
    pub outcome: Outcome,
    /// What the peer announced: distinct identifiers per kind, or distinct records.
    pub peer_items: Vec<u64>,
    pub count_epsilon: Option<f64>,
    pub sum_epsilon: Option<f64>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub elapsed: Duration,
}

/// An established, authenticated connection to the peer.
pub struct Connection {
    channel: Channel<TlsStream<Counting<TcpStream>>>,
    counters: Counters,
    tls: Arc<TlsSetup>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connection(..)")
    }
}

/// Accepts one connection on `listener` and completes the TLS handshake: an error if that
/// connection is not the pinned peer. See [`accept_peer`] to wait past such connections.
pub async fn accept(
    listener: &TcpListener,
    tls: Arc<TlsSetup>,
    limits: Limits,
) -> Result<Connection, NetError> {
    let (tcp, _) = listener.accept().await?;
    handshake(tcp, tls, limits).await
}

/// Accepts connections on `listener` until one completes the TLS handshake as the pinned
/// peer. A connection that fails it (not TLS, another certificate, too slow) is closed and
/// told to `refused` with its address, and the next one is awaited: a port scanner or a
/// misconfigured attempt does not end the session the real peer is coming to. Only a failure
/// of the listener itself ends the wait.
///
/// Handshakes run side by side, up to [`MAX_PENDING_HANDSHAKES`] at once, each within the IO
/// timeout: a connection that opens and says nothing holds one slot, not the listener, so the
/// peer's handshake is answered at once. The first to complete wins; the rest are dropped.
pub async fn accept_peer(
    listener: &TcpListener,
    tls: Arc<TlsSetup>,
    limits: Limits,
    refused: &mut (dyn FnMut(std::net::SocketAddr, &NetError) + Send),
) -> Result<Connection, NetError> {
    let mut pending = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept(), if pending.len() < MAX_PENDING_HANDSHAKES => {
                let (tcp, from) = accepted?;
                let tls = tls.clone();
                pending.spawn(async move { (from, handshake(tcp, tls, limits).await) });
            }
            Some(done) = pending.join_next() => match done {
                // Dropping `pending` aborts the other handshakes.
                Ok((_, Ok(conn))) => return Ok(conn),
                Ok((from, Err(e))) => refused(from, &e),
                Err(e) => {
                    return Err(NetError::Io(std::io::Error::other(format!(
                        "a TLS handshake ended abnormally: {e}"
                    ))));
                }
            },
        }
    }
}

/// Handshakes [`accept_peer`] runs at once; further connections wait in the listen backlog
/// until one of these ends (each ends within the IO timeout).
pub const MAX_PENDING_HANDSHAKES: usize = 64;

async fn handshake(
    tcp: TcpStream,
    tls: Arc<TlsSetup>,
    limits: Limits,
) -> Result<Connection, NetError> {
    let _ = tcp.set_nodelay(true);
    let (counting, counters) = Counting::new(tcp);
    let acceptor = TlsAcceptor::from(tls.server.clone());
    let stream = match tokio::time::timeout(limits.io_timeout, acceptor.accept(counting)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(tls.handshake_error(e)),
        Err(_) => {
            return Err(NetError::Timeout {
                what: "during the TLS handshake",
                secs: limits.io_timeout.as_secs(),
            });
        }
    };
    Ok(Connection {
        channel: Channel::new(TlsStream::Server(stream), limits),
        counters,
        tls,
    })
}

/// Connects to the peer at `addr` (retrying while it is not yet listening, up to `retry_for`)
/// and completes the TLS handshake.
pub async fn connect(
    addr: &str,
    tls: Arc<TlsSetup>,
    limits: Limits,
    retry_for: Duration,
) -> Result<Connection, NetError> {
    let deadline = Instant::now() + retry_for;
    let tcp = loop {
        match TcpStream::connect(addr).await {
            Ok(t) => break t,
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(source) => {
                return Err(NetError::Connect {
                    addr: addr.to_owned(),
                    source,
                });
            }
        }
    };
    let _ = tcp.set_nodelay(true);
    let (counting, counters) = Counting::new(tcp);
    let connector = TlsConnector::from(tls.client.clone());
    let name = rustls::pki_types::ServerName::try_from(tls::CERT_NAME)
        .map_err(|e| NetError::Tls(e.to_string()))?;
    let stream =
        match tokio::time::timeout(limits.io_timeout, connector.connect(name, counting)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(tls.handshake_error(e)),
            Err(_) => {
                return Err(NetError::Timeout {
                    what: "during the TLS handshake",
                    secs: limits.io_timeout.as_secs(),
                });
            }
        };
    Ok(Connection {
        channel: Channel::new(TlsStream::Client(stream), limits),
        counters,
        tls,
    })
}

impl Connection {
    /// Runs a whole session over this connection.
    pub async fn run(
        mut self,
        config: &SessionConfig,
        input: PreparedInput,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Report, NetError> {
        let counters = self.counters.clone();
        let tls = self.tls.clone();
        let r = run_session(&mut self.channel, &counters, config, input, progress).await;
        match r {
            // With TLS 1.3 a refused client certificate shows up at the first read.
            Err(NetError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                Err(tls.handshake_error(e))
            }
            other => other,
        }
    }
}

/// The hello exchange and the protocol, over any framed stream.
pub async fn run_session<S: AsyncRead + AsyncWrite + Send + 'static>(
    channel: &mut Channel<S>,
    counters: &Counters,
    config: &SessionConfig,
    input: PreparedInput,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Report, NetError> {
    let start = Instant::now();
    let result = exchange(channel, counters, config, input, progress).await;
    match result {
        Ok((outcome, peer_items, count_epsilon, sum_epsilon)) => {
            channel.close().await;
            Ok(Report {
                outcome,
                peer_items,
                count_epsilon,
                sum_epsilon,
                bytes_sent: counters.sent(),
                bytes_received: counters.received(),
                elapsed: start.elapsed(),
            })
        }
        Err(e) => {
            // Tell the peer why we stop, when it is our decision (best effort, no data).
            if matches!(
                e,
                NetError::Psi(_) | NetError::FrameTooLarge { .. } | NetError::SessionTimeout { .. }
            ) {
                let mut frame = vec![ABORT];
                frame.extend_from_slice(e.code().as_bytes());
                let _ = tokio::time::timeout(Duration::from_secs(2), channel.send(&frame)).await;
                channel.close().await;
            }
            Err(e)
        }
    }
}

type Exchanged = (Outcome, Vec<u64>, Option<f64>, Option<f64>);

async fn exchange<S: AsyncRead + AsyncWrite + Send + 'static>(
    channel: &mut Channel<S>,
    counters: &Counters,
    config: &SessionConfig,
    input: PreparedInput,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Exchanged, NetError> {
    let ours = config.hello(&input);
    let hello = async {
        channel.send(&ours.encode()).await?;
        recv(channel).await
    };
    // With TLS 1.3 a peer that refuses our certificate may just close the connection.
    let theirs = hello.await.map_err(|e| match e {
        NetError::PeerClosed(why) => NetError::Tls(format!(
            "the peer closed the connection before the session started ({why}); \
             it may have refused our certificate: check that it pins our SHA-256"
        )),
        other => other,
    })?;
    let theirs = Hello::decode(&theirs)?;
    let session = config.agree(&ours, &theirs)?;
    let (peer_items, ce, se) = (
        session.peer_items().to_vec(),
        session.count_epsilon(),
        session.sum_epsilon(),
    );
    let mut party = Party::new(session, input)?;
    let entries_total = party.expected_entries();
    // Frames go out from a task of their own, so that this side computes (and reads) while
    // they are written: both parties re-blind at once in the protocols that take turns.
    let writer = channel.start_writer(WRITE_QUEUE)?;
    let run = drive(
        &mut party,
        channel,
        &writer,
        counters,
        entries_total,
        progress,
    )
    .await;
    let written = channel.stop_writer(writer, run.is_err()).await;
    match (run, written) {
        (Ok(()), Ok(())) => {}
        // The writer stopped first: its error is the cause.
        (Err(NetError::WriterStopped), Err(e)) => return Err(e),
        (Err(e), _) | (Ok(()), Err(e)) => return Err(e),
    }
    let outcome = party
        .outcome()
        .ok_or_else(|| cleanroom_psi::PsiError::Internal("no outcome".into()))?;
    Ok((outcome, peer_items, ce, se))
}

/// Frames queued for the writing task: while both sides of the turn-taking protocols still
/// send, at most two rounds (up to four frames) are in flight per direction, so the queue
/// never holds a side back for long.
const WRITE_QUEUE: usize = 4;

/// Moves a party's messages until it finishes.
async fn drive<S: AsyncRead + AsyncWrite + Send + 'static>(
    party: &mut Party,
    channel: &mut Channel<S>,
    writer: &frame::Writer<S>,
    counters: &Counters,
    entries_total: u64,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(), NetError> {
    let mut entries_done = 0u64;
    loop {
        // Each wait below stops at the deadline too; this catches long computing.
        channel.check_deadline()?;
        let action = tokio::task::block_in_place(|| party.next_action())?;
        match action {
            Action::Send(m) => {
                entries_done += m.entries() as u64;
                let bytes = m.encode();
                drop(m);
                let sent = tokio::select! {
                    sent = writer.send(bytes) => sent,
                    e = channel.until_deadline() => return Err(e),
                };
                if !sent {
                    return Err(NetError::WriterStopped);
                }
            }
            Action::Receive => {
                let bytes = tokio::select! {
                    r = recv(channel) => r?,
                    // Our messages stopped going out (the peer stopped reading): say so now
                    // rather than after the idle timeout.
                    () = writer.stopped() => return Err(NetError::WriterStopped),
                };
                let m = Message::decode(&bytes)?;
                entries_done += m.entries() as u64;
                tokio::task::block_in_place(|| party.receive(m))?;
            }
            Action::Finished => return Ok(()),
        }
        progress(Progress {
            entries_done,
            entries_total,
            bytes_sent: counters.sent(),
            bytes_received: counters.received(),
        });
    }
}

async fn recv<S: AsyncRead + AsyncWrite>(channel: &mut Channel<S>) -> Result<Vec<u8>, NetError> {
    let b = channel.recv().await?;
    if b.first() == Some(&ABORT) {
        let code: String = String::from_utf8_lossy(&b[1..])
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(40)
            .collect();
        return Err(NetError::PeerAborted(code));
    }
    Ok(b)
}
