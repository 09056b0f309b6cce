//! The server's side: the [`Cluster`] the query layer hands its exact-aggregate plans to.

use std::sync::Arc;
use std::time::Duration;

use ballista_core::extension::{SessionConfigExt, SessionStateExt};
use cleanroom_query::Cluster;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::ClusterError;
use crate::codec::{RoomLogicalCodec, RoomPhysicalCodec};
use crate::key::ClusterKey;
use crate::tls::ClusterTls;

/// A Ballista cluster, reached through its scheduler.
#[derive(Debug, Clone)]
pub struct BallistaEngine {
    /// `https://host:port`, as Ballista's client takes it.
    scheduler: String,
    /// `ballista://host:port`, as the user wrote it.
    shown: String,
    key: ClusterKey,
    tls: ClusterTls,
    deadline: Duration,
}

/// How long a plan may run on the cluster by default before it is given up.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(3600);

/// The port a scheduler listens on when the URL names none (Ballista's default).
pub const DEFAULT_SCHEDULER_PORT: u16 = 50050;

/// Splits `ballista://HOST[:PORT]` into its host and port.
pub fn parse_url(url: &str) -> Result<(String, u16), ClusterError> {
    let bad = || {
        ClusterError::Config(format!(
            "`{url}` is not a cluster address: expected ballista://HOST:PORT (the scheduler's \
             address, e.g. ballista://127.0.0.1:50050)"
        ))
    };
    let rest = url.strip_prefix("ballista://").ok_or_else(bad)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err(bad());
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.ends_with(':') => {
            (h.to_owned(), p.parse::<u16>().map_err(|_| bad())?)
        }
        Some(_) => return Err(bad()),
        None => (rest.to_owned(), DEFAULT_SCHEDULER_PORT),
    };
    if port == 0 {
        return Err(bad());
    }
    Ok((host, port))
}

impl BallistaEngine {
    /// The cluster whose scheduler is at `url` (`ballista://HOST:PORT`); the server wraps the
    /// dataset keys its plans need under `key`, which every executor must hold too, and
    /// reaches the scheduler and the executors over mutual TLS with `tls`.
    pub fn new(url: &str, key: ClusterKey, tls: ClusterTls) -> Result<Self, ClusterError> {
        let (host, port) = parse_url(url)?;
        Ok(BallistaEngine {
            scheduler: format!("https://{host}:{port}"),
            shown: format!("ballista://{host}:{port}"),
            key,
            tls,
            deadline: DEFAULT_DEADLINE,
        })
    }

    /// Gives up a plan that has not finished after `deadline` (default an hour), as a cluster
    /// failure.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }
}

impl Cluster for BallistaEngine {
    fn session(
        &self,
        config: SessionConfig,
        runtime: Arc<RuntimeEnv>,
    ) -> Result<SessionContext, DataFusionError> {
        let config = config
            .with_ballista_logical_extension_codec(Arc::new(RoomLogicalCodec::wrapping_with(
                self.key.clone(),
            )))
            .with_ballista_physical_extension_codec(Arc::new(RoomPhysicalCodec::default()))
            .with_ballista_use_tls(true)
            .with_ballista_override_create_grpc_client_endpoint(self.tls.endpoint_override());
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(config)
            .with_runtime_env(runtime)
            .build()
            .upgrade_for_ballista(self.scheduler.clone())?;
        Ok(SessionContext::new_with_state(state))
    }

    fn describe(&self) -> String {
        self.shown.clone()
    }

    fn deadline(&self) -> Option<Duration> {
        Some(self.deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_addresses_are_read_strictly() {
        assert_eq!(
            parse_url("ballista://127.0.0.1:7000").unwrap(),
            ("127.0.0.1".into(), 7000)
        );
        assert_eq!(
            parse_url("ballista://sched.internal").unwrap(),
            ("sched.internal".into(), DEFAULT_SCHEDULER_PORT)
        );
        for bad in [
            "http://127.0.0.1:7000",
            "ballista://",
            "ballista://:7000",
            "ballista://h:0",
            "ballista://h:99999",
            "ballista://h:7000/x",
            "ballista://user@h:7000",
            "127.0.0.1:7000",
        ] {
            let e = parse_url(bad).unwrap_err().to_string();
            assert!(e.contains("ballista://HOST:PORT"), "{bad}: {e}");
        }
    }
}
