//! `cleanroom executor`: Ballista's executor with the room's codecs, reading encrypted
//! datasets straight from the room's store and writing no plaintext to disk.
//!
//! - **Data**: an executor opens each dataset file through its own view of the room's store
//!   (the same S3 bucket or shared directory the server writes) and decrypts it in memory with
//!   the dataset key the query's plan carries wrapped under the cluster key.
//! - **Shuffle files** (the rows one stage hands the next) are Arrow IPC files in the work
//!   directory. They are plaintext, so the work directory must be memory-backed (`tmpfs` or
//!   `ramfs`) and private (`0700`): the executor refuses any other. Without `--work-dir` it
//!   makes one under `/dev/shm`, after removing those of killed executors. A job's shuffle
//!   files go when the scheduler says the job is done ([`crate::SchedulerOptions`]), or after
//!   [`SHUFFLE_BACKSTOP_TTL`] untouched. On a machine with swap, memory pages can reach the swap device: use
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

/// How long a job's shuffle files may lie untouched before the executor removes them itself.
/// Longer than any analysis may run on a cluster by default, so no running job loses its
/// inputs.
pub const SHUFFLE_BACKSTOP_TTL: Duration = Duration::from_secs(6 * 3600);

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

/// Whether anyone but the owner may enter or read `dir`.
fn open_to_others(dir: &Path) -> Result<bool, ClusterError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(dir).map_err(|source| ClusterError::Io {
        what: format!("reading the permissions of {}", dir.display()),
        source,
    })?;
    Ok(meta.permissions().mode() & 0o077 != 0)
}

/// The prefix of the work directories executors make under `/dev/shm`, followed by the
/// process id.
const WORK_PREFIX: &str = "cleanroom-executor-";

/// The file in a work directory made here that its executor holds locked while it lives.
const LIVE_LOCK: &str = ".live";

/// Removes the work directories under `root` that executors of this user left when they were
/// killed, and returns how many: those whose [`LIVE_LOCK`] nobody holds any more (an advisory
/// lock dies with its process, whatever PID namespace it ran in). A directory without the
/// lock file, or whose lock is held, is kept; symbolic links are never followed.
fn sweep_dead_work_dirs(root: &Path) -> usize {
    use rustix::fs::{FlockOperation, flock};
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let named = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(WORK_PREFIX));
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if !named || !meta.is_dir() || meta.uid() != me {
            continue;
        }
        let Ok(lock) = std::fs::File::open(entry.path().join(LIVE_LOCK)) else {
            continue;
        };
        if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_ok()
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// A work directory made here: removed when dropped, and marked live until then.
#[derive(Debug)]
struct OwnWorkDir {
    _live: std::fs::File,
    _dir: tempfile::TempDir,
}

/// The work directory: `given` if it is memory-backed and private, else a private directory
/// under `/dev/shm`; the guard removes a directory made here.
fn work_dir(given: Option<&Path>) -> Result<(PathBuf, Option<OwnWorkDir>), ClusterError> {
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
            if open_to_others(dir)? {
                return Err(ClusterError::Config(format!(
                    "--work-dir {} may be read by other users: shuffle files hold rows in the \
                     clear; run `chmod 700 {}`",
                    dir.display(),
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
            let swept = sweep_dead_work_dirs(shm);
            if swept > 0 {
                tracing::info!(swept, "removed the work directories of killed executors");
            }
            let private = {
                use std::os::unix::fs::PermissionsExt;
                std::fs::Permissions::from_mode(0o700)
            };
            let dir = tempfile::Builder::new()
                .prefix(&format!("{WORK_PREFIX}{}-", std::process::id()))
                .permissions(private)
                .tempdir_in(shm)
                .map_err(|source| ClusterError::Io {
                    what: "creating a work directory under /dev/shm".into(),
                    source,
                })?;
            let live = std::fs::File::create(dir.path().join(LIVE_LOCK))
                .and_then(|f| {
                    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)?;
                    Ok(f)
                })
                .map_err(|source| ClusterError::Io {
                    what: format!("marking {} live", dir.path().display()),
                    source,
                })?;
            let path = dir.path().to_owned();
            Ok((
                path,
                Some(OwnWorkDir {
                    _live: live,
                    _dir: dir,
                }),
            ))
        }
    }
}

/// Runs an executor until the process ends (or it loses the scheduler for good).
pub async fn run_executor(opts: ExecutorOptions, readers: Readers) -> Result<(), ClusterError> {
    // Whatever Ballista creates (job directories, shuffle files) is its owner's only.
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o077));
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
        // The scheduler has each finished job's shuffle files removed shortly after it ends;
        // this sweep is the backstop for jobs whose notice never came (a scheduler restarted).
        job_data_ttl_seconds: SHUFFLE_BACKSTOP_TTL.as_secs(),
        job_data_clean_up_interval_seconds: 600,
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
    fn a_work_dir_on_disk_or_open_to_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let on_disk = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let e = work_dir(Some(on_disk.path())).unwrap_err().to_string();
        assert!(e.contains("not memory-backed"), "{e}");
        if Path::new("/dev/shm").is_dir() {
            let (dir, guard) = work_dir(None).unwrap();
            assert!(dir.starts_with("/dev/shm") && guard.is_some());
            assert!(is_memory_backed(&dir).unwrap());
            sweep_dead_work_dirs(Path::new("/dev/shm"));
            assert!(dir.exists(), "a live executor's work directory was swept");
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{mode:o}");
            let open = dir.join("open");
            std::fs::create_dir(&open).unwrap();
            std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
            let e = work_dir(Some(&open)).unwrap_err().to_string();
            assert!(e.contains("chmod 700"), "{e}");
            std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o700)).unwrap();
            assert_eq!(work_dir(Some(&open)).unwrap().0, open);
        }
    }

    #[test]
    fn work_dirs_of_killed_executors_are_swept_and_live_ones_kept() {
        use rustix::fs::{FlockOperation, flock};
        let root = tempfile::tempdir().unwrap();
        let dir = |name: &str| {
            let d = root.path().join(name);
            std::fs::create_dir_all(d.join("job/1/0")).unwrap();
            std::fs::write(d.join("job/1/0/data.arrow"), b"rows").unwrap();
            d
        };
        // Killed: its lock file is there and nobody holds it.
        let dead = dir(&format!("{WORK_PREFIX}1-dead"));
        std::fs::write(dead.join(LIVE_LOCK), b"").unwrap();
        // Alive: its executor holds the lock (here, this test).
        let live = dir(&format!("{WORK_PREFIX}2-live"));
        let held = std::fs::File::create(live.join(LIVE_LOCK)).unwrap();
        flock(&held, FlockOperation::LockExclusive).unwrap();
        // Not ours to judge: no lock file, another name, a symbolic link.
        let unmarked = dir(&format!("{WORK_PREFIX}3-unmarked"));
        let other = dir("something-else");
        std::fs::write(other.join(LIVE_LOCK), b"").unwrap();
        let link = root.path().join(format!("{WORK_PREFIX}4-link"));
        std::os::unix::fs::symlink(&other, &link).unwrap();

        assert_eq!(sweep_dead_work_dirs(root.path()), 1);
        assert!(!dead.exists());
        assert!(live.exists() && unmarked.exists() && other.exists() && link.exists());
        drop(held);
        assert_eq!(sweep_dead_work_dirs(root.path()), 1);
        assert!(!live.exists());
    }
}
