//! `cleanroom scheduler`: Ballista's scheduler with the room's codecs.
//!
//! The scheduler receives the exact-aggregate plans of a server, splits them into stages and
//! hands tasks to the executors that poll it (pull-based: it never dials an executor). It
//! holds no key: the plans it sees name datasets by id, with their keys wrapped under the
//! cluster key ([`crate::key`]), and it reads no dataset itself. It is nonetheless trusted
//! like the executors: a wrapped key in a plan is a capability any plan can use, and the
//! scheduler makes the stage plans the executors run.
//!
//! It serves only Ballista's scheduler gRPC service (no REST API, no Flight proxy), over
//! mutual TLS with the cluster certificate ([`crate::tls`]): a caller without it is refused
//! at the handshake.

use std::sync::Arc;
use std::time::Duration;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_core::utils::{GrpcServerConfig, create_grpc_server};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::create_scheduler;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::ClusterError;
use crate::codec::{RoomLogicalCodec, RoomPhysicalCodec};
use crate::tls::ClusterTls;

/// How a scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// How long an executor may stay silent before its tasks are given to others.
    pub executor_timeout: Duration,
    /// How many times a task may fail (an executor lost with it, say) before its analysis
    /// fails.
    pub task_max_failures: usize,
    /// How long a job waits for an executor when none is registered before it fails.
    pub no_executors_grace: Duration,
    /// How long after a job ends its shuffle files (rows in the clear, in the executors'
    /// memory) are removed: long enough for the server to fetch the result.
    pub shuffle_cleanup: Duration,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            executor_timeout: Duration::from_secs(30),
            task_max_failures: 4,
            no_executors_grace: Duration::from_secs(30),
            shuffle_cleanup: Duration::from_secs(30),
        }
    }
}

/// Serves the scheduler on `listener`, to callers holding `tls`, until the process ends.
pub async fn run_scheduler(
    listener: TcpListener,
    opts: SchedulerOptions,
    tls: ClusterTls,
) -> Result<(), ClusterError> {
    let addr = listener.local_addr().map_err(|source| ClusterError::Io {
        what: "the scheduler's address".into(),
        source,
    })?;
    let timeout = opts.executor_timeout.as_secs().max(2);
    let config = SchedulerConfig {
        bind_host: addr.ip().to_string(),
        bind_port: addr.port(),
        external_host: addr.ip().to_string(),
        scheduling_policy: TaskSchedulingPolicy::PullStaged,
        executor_timeout_seconds: timeout,
        expire_dead_executor_interval_seconds: (timeout / 3).max(1),
        no_executors_grace_period_seconds: opts.no_executors_grace.as_secs().max(timeout),
        task_max_failures: opts.task_max_failures.max(1),
        override_logical_codec: Some(Arc::new(RoomLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(RoomPhysicalCodec::default())),
        // Its own calls to executors (cancelling, cleaning up) go over the same TLS.
        use_tls: true,
        override_create_grpc_client_endpoint: Some(tls.endpoint_override()),
        enable_embedded_flight_proxy: false,
        // A finished job's shuffle files are removed soon after the server has fetched its
        // result, not after Ballista's five minutes.
        finished_job_data_clean_up_interval_seconds: opts.shuffle_cleanup.as_secs().max(1),
        ..SchedulerConfig::default()
    };
    config.validate()?;
    let max_encoding = config.grpc_server_max_encoding_message_size as usize;
    let max_decoding = config.grpc_server_max_decoding_message_size as usize;
    let mut server = create_grpc_server(&GrpcServerConfig::default())
        .tls_config(tls.server())
        .map_err(|e| ClusterError::Config(format!("the cluster certificate: {e}")))?;
    let cluster = BallistaCluster::new_from_config(&config).await?;
    let scheduler =
        create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::new(config)).await?;
    tracing::info!(
        %addr,
        cert = tls.fingerprint(),
        "analysis scheduler listening over mutual TLS (executors poll it; it holds no key)"
    );
    let service = SchedulerGrpcServer::new(scheduler)
        .max_encoding_message_size(max_encoding)
        .max_decoding_message_size(max_decoding);
    server
        .add_service(service)
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await
        .map_err(|e| ClusterError::Ballista(format!("the scheduler's service stopped: {e}")))?;
    Ok(())
}
