//! Length-prefixed frames (a 4-byte big-endian length, then the payload) with a size cap and
//! timeouts, over any byte stream; and a byte counter for what really crosses the socket.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::NetError;

/// Largest frame accepted by default: a 65 536-entry batch of the widest message is ~6 MiB.
pub const DEFAULT_MAX_FRAME: usize = 8 << 20;

/// Limits of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest wait for the next frame to start (the peer may be computing meanwhile).
    pub idle_timeout: Duration,
    /// Longest time to read the rest of a frame once it started, or to write one.
    pub io_timeout: Duration,
    /// Largest frame accepted.
    pub max_frame: usize,
    /// Longest a whole session may take, from the connection to the last message. The idle
    /// and IO timeouts bound each wait; this bounds their sum, so that a peer sending one
    /// entry per message just before each idle timeout cannot hold the session for days.
    pub session_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle_timeout: Duration::from_secs(120),
            io_timeout: Duration::from_secs(60),
            max_frame: DEFAULT_MAX_FRAME,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
        }
    }
}

/// A day: an honest session at the default peer cap (10^8 identifiers) takes hours at most on
/// two cores.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Bytes sent and received on the socket, TLS records and frame headers included.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

impl Counters {
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// A stream that counts the bytes going through it.
pub struct Counting<S> {
    inner: S,
    counters: Counters,
}

impl<S> Counting<S> {
    pub fn new(inner: S) -> (Self, Counters) {
        let counters = Counters::default();
        (
            Counting {
                inner,
                counters: counters.clone(),
            },
            counters,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.counters.received.fetch_add(n, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.counters.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Frames over a byte stream, split in a read half and a write half so that a session can
/// write from a task of its own while it computes and reads (see [`Channel::start_writer`]).
pub struct Channel<S> {
    reader: ReadHalf<S>,
    writer: Option<WriteHalf<S>>,
    limits: Limits,
    /// When the session must have ended (`None` if the timeout is too far to represent).
    deadline: Option<Instant>,
}

/// What the writing task hands back: the write half if it is still usable (not after a write
/// error, which may have left half a frame on the wire), and how writing went.
type WriterEnd<S> = (Option<WriteHalf<S>>, Result<(), NetError>);

/// The task writing a session's frames, started by [`Channel::start_writer`]. Dropped without
/// [`Channel::stop_writer`], it stops the task.
pub struct Writer<S> {
    queue: mpsc::Sender<Vec<u8>>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<WriterEnd<S>>>,
}

impl<S> Writer<S> {
    /// Queues a frame; waits while the queue is full. `false` if the writing task has stopped
    /// (its error comes from [`Channel::stop_writer`]).
    pub async fn send(&self, payload: Vec<u8>) -> bool {
        self.queue.send(payload).await.is_ok()
    }

    /// Completes once the writing task has stopped (after a write error): a session waiting
    /// for the peer learns at once that its own messages no longer go out.
    pub async fn stopped(&self) {
        self.queue.closed().await
    }
}

impl<S> Drop for Writer<S> {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
    limits: Limits,
) -> Result<(), NetError> {
    if payload.len() > limits.max_frame {
        return Err(NetError::InvalidSetting(format!(
            "a frame of {} bytes exceeds the limit of {}",
            payload.len(),
            limits.max_frame
        )));
    }
    let write = async {
        w.write_all(&(payload.len() as u32).to_be_bytes()).await?;
        w.write_all(payload).await?;
        w.flush().await
    };
    match tokio::time::timeout(limits.io_timeout, write).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(NetError::Timeout {
            what: "it stopped reading what we send",
            secs: limits.io_timeout.as_secs(),
        }),
    }
}

fn writer_taken() -> NetError {
    NetError::InvalidSetting("the connection's writer is in use by a session".into())
}

impl<S: AsyncRead + AsyncWrite> Channel<S> {
    pub fn new(stream: S, limits: Limits) -> Self {
        let (reader, writer) = tokio::io::split(stream);
        Channel {
            reader,
            writer: Some(writer),
            limits,
            deadline: Instant::now().checked_add(limits.session_timeout),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Fails once the session's deadline ([`Limits::session_timeout`]) has passed.
    pub fn check_deadline(&self) -> Result<(), NetError> {
        match self.deadline {
            Some(d) if Instant::now() >= d => Err(self.deadline_passed()),
            _ => Ok(()),
        }
    }

    /// Completes when the session's deadline passes (never, if it cannot be represented),
    /// with the error to report.
    pub async fn until_deadline(&self) -> NetError {
        match self.deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
        self.deadline_passed()
    }

    fn deadline_passed(&self) -> NetError {
        NetError::SessionTimeout {
            secs: self.limits.session_timeout.as_secs(),
        }
    }

    /// Fills `buf` from the peer within `limit` (else a timeout saying `what`), and never past
    /// the session's deadline.
    async fn read_within(
        &mut self,
        buf: &mut [u8],
        limit: Duration,
        what: &'static str,
    ) -> Result<(), NetError> {
        let (end, err) = match (Instant::now().checked_add(limit), self.deadline) {
            (Some(l), Some(d)) if d < l => (Some(d), self.deadline_passed()),
            (None, Some(d)) => (Some(d), self.deadline_passed()),
            (l, _) => (
                l,
                NetError::Timeout {
                    what,
                    secs: limit.as_secs(),
                },
            ),
        };
        let read = self.reader.read_exact(buf);
        match end {
            Some(end) => tokio::time::timeout_at(end, read)
                .await
                .map_err(|_| err)??,
            None => read.await?,
        };
        Ok(())
    }

    pub async fn send(&mut self, payload: &[u8]) -> Result<(), NetError> {
        let w = self.writer.as_mut().ok_or_else(writer_taken)?;
        write_frame(w, payload, self.limits).await
    }

    /// Hands the write half to a task of its own, fed through a queue of `depth` frames, so
    /// that frames go out while this side computes and while it waits for the peer's. A
    /// protocol that takes turns (each side sends its part of a round, then receives) keeps
    /// both sides busy without ever filling the queue for long.
    pub fn start_writer(&mut self, depth: usize) -> Result<Writer<S>, NetError>
    where
        S: Send + 'static,
    {
        let mut w = self.writer.take().ok_or_else(writer_taken)?;
        let limits = self.limits;
        let (queue, mut rx) = mpsc::channel::<Vec<u8>>(depth.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                if let Err(e) = write_frame(&mut w, &frame, limits).await {
                    return (None, Err(e));
                }
            }
            (Some(w), Ok(()))
        });
        Ok(Writer {
            queue,
            stop,
            task: Some(task),
        })
    }

    /// Takes the write half back from the writing task. After success (`failed` false) every
    /// queued frame is written first, each within the IO timeout. After a failure the frames
    /// still queued are dropped, the one being written gets two seconds to finish (the peer
    /// may have stopped reading), and the write half comes back only if no frame was cut, so
    /// that a frame telling the peer why we stop can follow.
    pub async fn stop_writer(
        &mut self,
        mut writer: Writer<S>,
        failed: bool,
    ) -> Result<(), NetError> {
        if failed {
            writer.stop.store(true, Ordering::Relaxed);
        }
        let Some(mut task) = writer.task.take() else {
            return Err(writer_taken());
        };
        drop(writer);
        let joined = if failed {
            match tokio::time::timeout(Duration::from_secs(2), &mut task).await {
                Ok(j) => j,
                Err(_) => {
                    task.abort();
                    return Err(NetError::Timeout {
                        what: "it stopped reading what we send",
                        secs: 2,
                    });
                }
            }
        } else {
            task.await
        };
        match joined {
            Ok((w, r)) => {
                self.writer = w;
                r
            }
            Err(e) => Err(NetError::Io(std::io::Error::other(format!(
                "the task writing to the peer ended abnormally: {e}"
            )))),
        }
    }

    pub async fn recv(&mut self) -> Result<Vec<u8>, NetError> {
        let mut len = [0u8; 4];
        let idle = self.limits.idle_timeout;
        self.read_within(&mut len, idle, "waiting for its next message")
            .await?;
        let n = u32::from_be_bytes(len) as usize;
        if n > self.limits.max_frame {
            return Err(NetError::FrameTooLarge {
                size: n as u64,
                max: self.limits.max_frame as u64,
            });
        }
        let mut buf = vec![0u8; n];
        let io = self.limits.io_timeout;
        self.read_within(&mut buf, io, "in the middle of a message")
            .await?;
        Ok(buf)
    }

    /// Closes our side cleanly (TLS close_notify where there is TLS).
    pub async fn close(&mut self) {
        if let Some(w) = self.writer.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(2), w.shutdown()).await;
        }
    }
}
