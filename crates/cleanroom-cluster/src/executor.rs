//! `cleanroom executor`: Ballista's executor with the room's codecs, reading encrypted
//! datasets straight from the room's store and writing no plaintext to disk.
//!
//! - **Data**: an executor opens each dataset file through its own view of the room's store
//!   (the same S3 bucket or shared directory the server writes) and decrypts it in memory with
//!   the dataset key the query's plan carries wrapped under the cluster key.
//! - **Shuffle files** (the rows one stage hands the next) are Arrow IPC files in the work
//!   directory. They are plaintext, so the work directory must be memory-backed (`tmpfs` or
//!   `ramfs`): the executor refuses any other. Without `--work-dir` it makes a private one
//!   under `/dev/shm`. On a machine with swap, memory pages can reach the swap device: use
//!   encrypted swap, or none.
//! - **Spills** (operators short of memory) go through the query layer's encrypted spill files,
//!   or nowhere when spilling is off.
//! - **Connections**: the executor's Arrow Flight service (shuffle partitions, results) and its
//!   calls to the scheduler and to other executors are mutual TLS with the cluster certificate
//!   ([`crate::tls`]): only holders of that file fetch a partition from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::error::BallistaError;
use ballista_core::extension::SessionConfigExt;
use ballista_core::utils::{GrpcServerConfig, create_grpc_server};
use ballista_executor::ArrowFlightServerProvider;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_executor::flight_service::BallistaFlightService;
use ballista_executor::shutdown::Shutdown;
use cleanroom_query::SpillConfig;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::SessionConfig;

use crate::ClusterError;
use crate::codec::{RoomLogicalCodec, RoomPhysicalCodec};
use crate::scan::Readers;
use crate::tls::ClusterTls;

/// How an executor runs.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler's host and port.
    pub scheduler: (String, u16),
    /// The address the executor's Arrow Flight service (shuffle and results) binds, and the
    /// host others reach it at.
    pub bind_host: String,
    pub external_host: String,
    pub flight_port: u16,
    /// Where shuffle files go: a memory-backed directory (`None`: a private one under
    /// `/dev/shm`).
    pub work_dir: Option<PathBuf>,
    /// Tasks run at once (0: one per core).
    pub vcores: usize,
    /// Memory for the tasks together (`None`: unbounded).
    pub max_memory: Option<u64>,
    /// Encrypted spill files for operators short of memory (`None`: no spilling).
    pub spill: Option<SpillConfig>,
    /// How often the executor tells the scheduler it is alive.
    pub heartbeat: Duration,
    /// The cluster certificate: presented and required on every connection.
    pub tls: ClusterTls,
}

/// The largest gRPC message the executor's Flight service takes or sends (Ballista's).
const FLIGHT_MESSAGE_LIMIT: usize = 16 * 1024 * 1024;

/// Ballista's Flight service (shuffle partitions and results out of the work directory),
/// served over mutual TLS.
fn flight_over_tls(tls: &ClusterTls) -> Arc<ArrowFlightServerProvider> {
    let server_tls = tls.server();
    Arc::new(
        move |work_dir: String,
              addr: std::net::SocketAddr,
              mut shutdown: Shutdown,
              grpc: GrpcServerConfig| {
            let server_tls = server_tls.clone();
            tokio::spawn(async move {
                let service = FlightServiceServer::new(BallistaFlightService::new(work_dir))
                    .max_decoding_message_size(FLIGHT_MESSAGE_LIMIT)
                    .max_encoding_message_size(FLIGHT_MESSAGE_LIMIT);
                create_grpc_server(&grpc)
                    .tls_config(server_tls)
                    .map_err(BallistaError::TonicError)?
                    .add_service(service)
                    .serve_with_shutdown(addr, shutdown.recv())
                    .await
                    .map_err(BallistaError::TonicError)
            })
        },
    )
}

/// Linux's magic numbers of the memory-backed file systems.
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Whether `dir` is on a memory-backed file system.
pub fn is_memory_backed(dir: &Path) -> Result<bool, ClusterError> {
    let fs = rustix::fs::statfs(dir).map_err(|e| ClusterError::Io {
        what: format!("checking the file system of {}", dir.display()),
        source: e.into(),
    })?;
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    let kind = i64::from(fs.f_type);
    Ok(kind == TMPFS_MAGIC || kind == RAMFS_MAGIC)
}

/// The work directory: `given` if it is memory-backed, else a private directory under
/// `/dev/shm`; the guard removes a directory made here.
fn work_dir(given: Option<&Path>) -> Result<(PathBuf, Option<tempfile::TempDir>), ClusterError> {
    match given {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| ClusterError::Io {
                what: format!("creating the work directory {}", dir.display()),
                source,
            })?;
            if !is_memory_backed(dir)? {
                return Err(ClusterError::Config(format!(
                    "--work-dir {} is not memory-backed: shuffle files hold rows in the clear, \
                     so they may only go to tmpfs or ramfs (e.g. a directory under /dev/shm)",
                    dir.display()
                )));
            }
            Ok((dir.to_owned(), None))
        }
        None => {
            let shm = Path::new("/dev/shm");
            if !shm.is_dir() || !is_memory_backed(shm)? {
                return Err(ClusterError::Config(
                    "/dev/shm is not a memory-backed file system here: give --work-dir a \
                     directory on tmpfs for the shuffle files"
                        .into(),
                ));
            }
            let dir = tempfile::Builder::new()
                .prefix("cleanroom-executor-")
                .tempdir_in(shm)
                .map_err(|source| ClusterError::Io {
                    what: "creating a work directory under /dev/shm".into(),
                    source,
                })?;
            Ok((dir.path().to_owned(), Some(dir)))
        }
    }
}

/// Runs an executor until the process ends (or it loses the scheduler for good).
pub async fn run_executor(opts: ExecutorOptions, readers: Readers) -> Result<(), ClusterError> {
    let (dir, _guard) = work_dir(opts.work_dir.as_deref())?;
    let disk = cleanroom_query::spill_disk(opts.spill.as_ref())
        .map_err(|e| ClusterError::Config(e.to_string()))?;
    let runtime: Arc<RuntimeEnv> = RuntimeEnvBuilder::new()
        .with_disk_manager_builder(disk)
        .build_arc()
        .map_err(|e| ClusterError::Config(format!("building the executor's runtime: {e}")))?;
    let store = readers.store.files().describe();
    let endpoint = opts.tls.endpoint_override();
    let task_endpoint = Arc::clone(&endpoint);
    // Each task's session: TLS towards other executors' Flight services.
    let config_producer = Arc::new(move || {
        SessionConfig::new_with_ballista()
            .with_ballista_use_tls(true)
            .with_ballista_override_create_grpc_client_endpoint(Arc::clone(&task_endpoint))
    });
    let config = ExecutorProcessConfig {
        bind_host: opts.bind_host.clone(),
        external_host: Some(opts.external_host.clone()),
        port: opts.flight_port,
        scheduler_host: opts.scheduler.0.clone(),
        scheduler_port: opts.scheduler.1,
        scheduler_connect_timeout_seconds: 10,
        vcores: opts.vcores,
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        work_dir: Some(dir.display().to_string()),
        executor_heartbeat_interval_seconds: opts.heartbeat.as_secs().max(1),
        memory_pool_size: Some(opts.max_memory.unwrap_or(0)),
        override_runtime_producer: Some(Arc::new(move |_| Ok(Arc::clone(&runtime)))),
        override_logical_codec: Some(Arc::new(RoomLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(RoomPhysicalCodec::reading_with(readers))),
        override_config_producer: Some(config_producer),
        override_arrow_flight_service: Some(flight_over_tls(&opts.tls)),
        override_create_grpc_client_endpoint: Some(endpoint),
        ..ExecutorProcessConfig::default()
    };
    tracing::info!(
        scheduler = %format!("{}:{}", opts.scheduler.0, opts.scheduler.1),
        flight = %format!("{}:{}", opts.external_host, opts.flight_port),
        work_dir = %dir.display(),
        %store,
        cert = opts.tls.fingerprint(),
        "analysis executor starting (mutual TLS, shuffle files in memory, spills encrypted)"
    );
    start_executor_process(Arc::new(config)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_work_dir_on_disk_is_refused() {
        let on_disk = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let e = work_dir(Some(on_disk.path())).unwrap_err().to_string();
        assert!(e.contains("not memory-backed"), "{e}");
        if Path::new("/dev/shm").is_dir() {
            let (dir, guard) = work_dir(None).unwrap();
            assert!(dir.starts_with("/dev/shm") && guard.is_some());
            assert!(is_memory_backed(&dir).unwrap());
        }
    }
}
