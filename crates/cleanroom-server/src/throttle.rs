//! Throttling of failed authentication per source, so that guessing tokens (or flooding the
//! audit log with failed attempts, each of which is recorded) costs an attacker time.
//!
//! A source is the client's IP address as the server sees it (an IPv6 client by its /64
//! network, which one host usually holds whole). After [`ThrottleOptions::max_failures`]
//! failed authentications within one [`ThrottleOptions::window`], every further request
//! that needs a token from that source is refused with `429 too_many_failures` (and a
//! `Retry-After`) until the window ends, without reaching the token check; the moment a source
//! is throttled is recorded once in the `system` audit chain. Successful requests do not reset
//! the count (one valid token must not buy unlimited guesses with others).
//!
//! The state is in memory, per server process, and bounded: at most
//! [`ThrottleOptions::max_sources`] sources are tracked; when full, sources whose window has
//! ended are forgotten first, then the oldest tenth. Behind a proxy every client has the proxy's
//! address, so the throttle then counts all clients together; run the server on the edge
//! (it speaks TLS) or keep the proxy's own limits.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How failed authentications are throttled.
#[derive(Debug, Clone)]
pub struct ThrottleOptions {
    /// Failed authentications a source may have within one window.
    pub max_failures: u32,
    /// The window over which failures are counted.
    pub window: Duration,
    /// Sources tracked at once.
    pub max_sources: usize,
}

impl Default for ThrottleOptions {
    fn default() -> Self {
        ThrottleOptions {
            max_failures: 20,
            window: Duration::from_secs(60),
            max_sources: 100_000,
        }
    }
}

/// Where a request came from, put on every request by the connection loop.
#[derive(Debug, Clone)]
pub struct ClientSource {
    pub addr: SocketAddr,
    pub throttle: Arc<AuthThrottle>,
    /// Whether the connection is TLS (the console's cookie is then `Secure`).
    pub tls: bool,
}

impl ClientSource {
    /// The source's key: its IPv4 address, or its IPv6 /64 network.
    pub fn key(&self) -> IpAddr {
        source_key(self.addr.ip())
    }
}

fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    started: Instant,
    failures: u32,
}

/// What a failure did to its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Still under the limit.
    Counted,
    /// This failure reached the limit: the source is throttled from now until the window ends.
    Throttled,
}

/// Failed authentications per source, in memory.
#[derive(Debug)]
pub struct AuthThrottle {
    opts: ThrottleOptions,
    sources: Mutex<HashMap<IpAddr, Entry>>,
}

impl AuthThrottle {
    pub fn new(opts: ThrottleOptions) -> Self {
        AuthThrottle {
            opts,
            sources: Mutex::new(HashMap::new()),
        }
    }

    pub fn options(&self) -> &ThrottleOptions {
        &self.opts
    }

    /// `Err(wait)` when `source` is throttled now: how long until its window ends.
    pub fn check(&self, source: IpAddr) -> Result<(), Duration> {
        self.check_at(source, Instant::now())
    }

    /// Counts a failed authentication from `source`.
    pub fn failed(&self, source: IpAddr) -> AfterFailure {
        self.failed_at(source, Instant::now())
    }

    fn check_at(&self, source: IpAddr, now: Instant) -> Result<(), Duration> {
        let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        match sources.get(&source) {
            Some(e) if e.failures >= self.opts.max_failures => {
                let ends = e.started + self.opts.window;
                if ends > now { Err(ends - now) } else { Ok(()) }
            }
            _ => Ok(()),
        }
    }

    fn failed_at(&self, source: IpAddr, now: Instant) -> AfterFailure {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if !sources.contains_key(&source) && sources.len() >= self.opts.max_sources {
            let window = self.opts.window;
            sources.retain(|_, e| now.duration_since(e.started) < window);
            if sources.len() >= self.opts.max_sources {
                // Forget the oldest tenth at once, so a flood of new sources costs a scan per
                // tenth of the table, not one per source.
                let mut started: Vec<Instant> = sources.values().map(|e| e.started).collect();
                let cut = (started.len() / 10).max(1);
                let (_, nth, _) = started.select_nth_unstable(cut - 1);
                let nth = *nth;
                sources.retain(|_, e| e.started > nth);
            }
        }
        let e = sources.entry(source).or_insert(Entry {
            started: now,
            failures: 0,
        });
        if now.duration_since(e.started) >= self.opts.window {
            *e = Entry {
                started: now,
                failures: 0,
            };
        }
        e.failures = e.failures.saturating_add(1);
        if e.failures == self.opts.max_failures {
            AfterFailure::Throttled
        } else {
            AfterFailure::Counted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(max_failures: u32, max_sources: usize) -> AuthThrottle {
        AuthThrottle::new(ThrottleOptions {
            max_failures,
            window: Duration::from_secs(60),
            max_sources,
        })
    }

    #[test]
    fn a_source_is_throttled_at_the_limit_until_its_window_ends() {
        let t = throttle(3, 10);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(t.failed_at(a, t0), AfterFailure::Counted);
        assert_eq!(t.failed_at(a, t0), AfterFailure::Counted);
        assert!(t.check_at(a, t0).is_ok());
        assert_eq!(
            t.failed_at(a, t0 + Duration::from_secs(10)),
            AfterFailure::Throttled
        );
        let wait = t.check_at(a, t0 + Duration::from_secs(20)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(40));
        // Another source is not affected.
        assert!(t.check_at(b, t0 + Duration::from_secs(20)).is_ok());
        // Further failures (were they to reach the check) do not announce it again.
        assert_eq!(
            t.failed_at(a, t0 + Duration::from_secs(21)),
            AfterFailure::Counted
        );
        // The window ends: allowed again, and counting starts over.
        assert!(t.check_at(a, t0 + Duration::from_secs(60)).is_ok());
        assert_eq!(
            t.failed_at(a, t0 + Duration::from_secs(61)),
            AfterFailure::Counted
        );
        assert!(t.check_at(a, t0 + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_network() {
        let t = throttle(2, 10);
        let t0 = Instant::now();
        let one = source_key("2001:db8:1:2::1".parse().unwrap());
        let other = source_key("2001:db8:1:2:ffff::9".parse().unwrap());
        assert_eq!(one, other);
        t.failed_at(one, t0);
        assert_eq!(t.failed_at(other, t0), AfterFailure::Throttled);
        let mapped = source_key("::ffff:192.0.2.7".parse().unwrap());
        assert_eq!(mapped, "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_table_stays_bounded() {
        let t = throttle(2, 100);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            t.failed_at(ip, t0 + Duration::from_millis(u64::from(i)));
        }
        assert!(t.sources.lock().unwrap().len() <= 100);
        // The newest sources are the ones kept.
        let newest = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + 9_999));
        assert_eq!(
            t.failed_at(newest, t0 + Duration::from_secs(10)),
            AfterFailure::Throttled
        );
    }
}
