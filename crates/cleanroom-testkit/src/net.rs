//! Loopback helpers for tests that start real servers.

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it; it may be taken by the
/// time the caller binds it, as with any such probe).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("no free port on 127.0.0.1")
        .port()
}
