use cleanroom_core::audit::Action;
use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cleanroom_core::audit::Outcome;
use cleanroom_core::entities::{Collaboration, Dataset, Membership, Organisation, User};
use cleanroom_core::ids::{CollaborationId, DatasetId, TokenId};
use cleanroom_core::names::OrgName;
use cleanroom_core::party::{DatasetStatus, UserRole};
use cleanroom_meta::{MetaStore, Orphaned, SqliteStore};
use cleanroom_storage::{DatasetFiles, DatasetStore, MasterKeySource, SecretKey, load_master_key};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use zeroize::Zeroizing;

use crate::ServiceError;

mod audit;
mod collaborations;
mod datasets;
mod health;
mod migrate;
mod rotation;

pub use health::Readiness;
pub use migrate::{Migrated, migrate_metadata};
pub use rotation::Rotated;
mod parties;

pub(crate) use audit::AuditCtx;
pub(crate) use collaborations::Need;

/// Limits that protect the server from oversized input.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest upload body, in bytes (CSV and Arrow streams are never held in memory whole).
    pub max_upload_bytes: u64,
    /// Largest Parquet upload, in bytes. Parquet keeps its footer at the end, so a Parquet
    /// body is first spooled, sealed under a one-time key, to an anonymous temporary file
    /// (never to memory whole, never in plaintext to disk) and then read back by ranges.
    pub max_parquet_bytes: u64,
    /// Parquet uploads spooled and decoded at the same time (each holds a row group in memory
    /// while it is decoded, and a spool file on disk). One more is refused at once with
    /// `unavailable` (503) and a message to retry: waiting would hold the connection and its
    /// body, and CSV and Arrow streams never need a slot.
    pub max_parquet_uploads: usize,
    /// An upload whose body sends nothing for this long fails; the dataset returns to pending.
    pub upload_idle_timeout: Duration,
    /// Longest description of a collaboration, in characters.
    pub max_description_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_upload_bytes: 64 * 1024 * 1024 * 1024,
            max_parquet_bytes: 64 * 1024 * 1024 * 1024,
            max_parquet_uploads: 2,
            upload_idle_timeout: Duration::from_secs(5 * 60),
            max_description_chars: 2000,
        }
    }
}

/// The master key as 64 hex digits, as the environment gives it. `Debug` never shows it and its
/// memory is wiped on drop.
#[derive(Clone)]
pub struct MasterKeyHex(Zeroizing<String>);

impl MasterKeyHex {
    pub fn new(hex: String) -> Self {
        MasterKeyHex(Zeroizing::new(hex))
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for MasterKeyHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKeyHex([redacted])")
    }
}

/// How to open a clean room.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// The master key, when given by the environment rather than the key file.
    pub master_key_hex: Option<MasterKeyHex>,
    /// Create the data directory and master key file when missing.
    pub create: bool,
    pub limits: Limits,
    /// Keep the metadata in this PostgreSQL database rather than in the data directory's
    /// embedded SQLite file (the default).
    pub metadata: Option<MetadataUrl>,
    /// Keep the encrypted dataset files here (an S3 bucket) rather than in the data
    /// directory (the default).
    pub data_store: Option<Arc<dyn DatasetFiles>>,
    /// With a shared metadata store (several replicas), how long a replica may stay silent
    /// before another one takes over the work it left unfinished. Heartbeats go every third
    /// of it.
    pub replica_lease: Duration,
}

/// The default [`Config::replica_lease`].
pub const DEFAULT_REPLICA_LEASE: Duration = Duration::from_secs(15);

/// Writes and removes a probe object in a data store given in the configuration, so that a
/// wrong endpoint, bucket or credential stops `init` and `serve` at once with the store's
/// answer.
async fn probe_data_store(store: Arc<dyn DatasetFiles>) -> Result<(), ServiceError> {
    let place = store.describe();
    tokio::task::spawn_blocking(move || store.probe())
        .await
        .map_err(|e| ServiceError::Internal(format!("data store probe failed: {e}")))?
        .map_err(|e| {
            ServiceError::Unavailable(format!(
                "the data store {place} cannot be used: {e} (check the bucket, the endpoint and the AWS_* credentials)"
            ))
        })
}

/// A `postgres://` (or `postgresql://`) URL of a metadata database; its `Debug` shows no
/// password.
pub use cleanroom_meta::PgUrl as MetadataUrl;

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            master_key_hex: None,
            create: true,
            limits: Limits::default(),
            metadata: None,
            data_store: None,
            replica_lease: DEFAULT_REPLICA_LEASE,
        }
    }
}

/// Who is acting: a user of an organisation, authenticated by a token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: User,
    pub org: Organisation,
    pub token_id: TokenId,
    /// For a console session, the API token it was started with.
    pub parent_token_id: Option<TokenId>,
}

impl Principal {
    /// How the actor appears in the audit log.
    pub fn actor(&self) -> String {
        format!("{}/{}", self.org.name, self.user.name)
    }
    pub(crate) fn is_admin(&self) -> bool {
        self.user.role == UserRole::Admin
    }
}

/// An upload body in one of the accepted forms.
pub enum UploadInput {
    /// CSV with a header line, streamed.
    Csv(Box<dyn Read + Send>),
    /// An Arrow IPC stream, streamed.
    ArrowStream(Box<dyn Read + Send>),
    /// A Parquet file, streamed into a sealed spool before it is read.
    Parquet(Box<dyn Read + Send>),
}

/// Permission to spool and decode one Parquet upload; see [`CleanRoom::reserve_parquet_upload`].
/// The slot is free again when this is dropped.
pub struct ParquetSlot {
    _permit: OwnedSemaphorePermit,
}

impl UploadInput {
    fn format(&self) -> &'static str {
        match self {
            UploadInput::Csv(_) => "csv",
            UploadInput::ArrowStream(_) => "arrow",
            UploadInput::Parquet(_) => "parquet",
        }
    }
}

/// A collaboration as one of its members (or invitees) sees it.
#[derive(Debug, Clone)]
pub struct CollaborationView {
    pub collaboration: Collaboration,
    pub creator: OrgName,
    pub you: Membership,
    pub members: Vec<Membership>,
}

/// The clean room: metadata, encrypted files and the master key.
#[derive(Clone)]
pub struct CleanRoom {
    pub(crate) meta: Arc<dyn MetaStore>,
    pub(crate) files: DatasetStore,
    master: SecretKey,
    limits: Limits,
    master_key_source: MasterKeySource,
    parquet_slots: Arc<Semaphore>,
    /// `<data-dir>/.lock`, held exclusively while the room is open (released by `close`).
    lock: Arc<Mutex<Option<std::fs::File>>>,
    /// Whose unfinished work this room takes over: every other replica's (one server at a
    /// time, SQLite), or that of replicas silent past the lease (a shared store).
    orphaned: Orphaned,
    /// The task that writes this replica's heartbeat and, on a shared store, takes over the
    /// work of replicas that stopped; ended by `close`.
    heartbeat: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

use cleanroom_meta::now;

/// The setting that proves the master key (written when a room is created).
const MASTER_KEY_CHECK: &str = "master_key_check";
/// The setting naming the data store the room was first started on ([`DatasetFiles::identity`]).
const DATA_STORE: &str = "data_store";

/// Name of the lock file in the data directory.
pub const LOCK_FILE: &str = ".lock";

/// Takes `<data-dir>/.lock` exclusively, so a second process (a second `serve`, or an `init`
/// whose start-up clean-up would delete a running server's unfinished uploads) cannot open the
/// same data directory. The operating system releases the lock when the process ends.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, ServiceError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| {
            ServiceError::Unavailable(format!("cannot open the lock file {}: {e}", path.display()))
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ServiceError::Conflict(format!(
            "the data directory {} is in use by another cleanroom process (a server is running on \
             it: {} is locked); stop that process first",
            dir.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(ServiceError::Unavailable(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// The master key of `config.data_dir` (created with it when `config.create`).
fn master_key(config: &Config) -> Result<(SecretKey, MasterKeySource), ServiceError> {
    load_master_key(
        &config.data_dir,
        config.master_key_hex.as_ref().map(MasterKeyHex::expose),
        config.create,
    )
    .map_err(|e| ServiceError::InvalidInput(e.to_string()))
}

fn collab_purpose(id: CollaborationId) -> String {
    format!("collaboration:{id}")
}

fn dataset_purpose(id: DatasetId) -> String {
    format!("dataset:{id}")
}

/// The id a caller named, if it is spelt as the room writes ids (lowercase, hyphenated): any
/// other spelling names nothing, so the answer is the same as for an id that does not exist.
pub(crate) fn stored_id<T: std::str::FromStr + fmt::Display>(s: &str) -> Option<T> {
    s.parse::<T>().ok().filter(|id| id.to_string() == s)
}

fn never_initialised_store() -> ServiceError {
    ServiceError::InvalidInput(
        "the metadata store was never initialised (it holds no room): run `cleanroom init` \
         with the same --metadata first"
            .into(),
    )
}

fn not_found_collab() -> ServiceError {
    ServiceError::NotFound(
        "no such collaboration, or your organisation is not a member of it".into(),
    )
}

impl CleanRoom {
    /// Opens the clean room in `config.data_dir` with the embedded SQLite store (or the
    /// database `config.metadata` names), and repairs whatever a crash left behind:
    /// unfinished uploads are dropped and their datasets return to pending; analyses and
    /// activations caught mid-run are recorded as failed.
    pub async fn open(config: Config) -> Result<Self, ServiceError> {
        // A data store that cannot be written is said first, before anything is created.
        if let Some(store) = config.data_store.clone() {
            probe_data_store(store).await?;
        }
        if let Some(url) = config.metadata.clone() {
            let spec = cleanroom_meta::MetaSpec::Postgres(url);
            // Asked before migrations run: a server pointed at the wrong database leaves it
            // as it found it (no tables created) and says so.
            if !config.create && !cleanroom_meta::holds_room(&spec).await? {
                return Err(never_initialised_store());
            }
            let meta = cleanroom_meta::open(&spec).await?;
            return Self::open_with(config, meta).await;
        }
        let dir = &config.data_dir;
        if config.create {
            std::fs::create_dir_all(dir).map_err(|e| {
                ServiceError::Unavailable(format!(
                    "cannot create data directory {}: {e}",
                    dir.display()
                ))
            })?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
            }
        } else if !dir.join(cleanroom_meta::sqlite::DB_FILE).is_file() {
            // Never create a master key or a database behind the operator's back: a server
            // pointed at the wrong directory must say so, not start an empty room.
            return Err(ServiceError::InvalidInput(format!(
                "the data directory {} was never initialised (no {}): run `cleanroom init --data-dir {}` first",
                dir.display(),
                cleanroom_meta::sqlite::DB_FILE,
                dir.display()
            )));
        }
        let lock = lock_data_dir(dir)?;
        let key = master_key(&config)?;
        let meta = Arc::new(SqliteStore::open(dir).await?);
        // The data directory's lock makes this the only server on its SQLite file.
        Self::open_locked(config, meta, lock, key, Orphaned::AllButMine).await
    }

    /// Opens the clean room in `config.data_dir` on any metadata store (the conformance suite
    /// of `cleanroom-meta` says what a store must do); the data directory holds the encrypted
    /// files and the master key. Repairs as [`Self::open`] does.
    pub async fn open_with(config: Config, meta: Arc<dyn MetaStore>) -> Result<Self, ServiceError> {
        // As `open` refuses a data directory without its database: a room that is not being
        // created must find the metadata its `init` wrote, not start an empty one.
        if !config.create && meta.get_setting(MASTER_KEY_CHECK).await?.is_none() {
            return Err(never_initialised_store());
        }
        if config.create {
            std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                ServiceError::Unavailable(format!(
                    "cannot create data directory {}: {e}",
                    config.data_dir.display()
                ))
            })?;
        }
        // Datasets in a local data directory are visible to one server only: a second replica
        // on another directory would list datasets it cannot read and take the other's
        // uploads for orphans.
        if config.data_store.is_none() {
            let others = meta.other_live_replicas(config.replica_lease).await?;
            if others > 0 {
                return Err(ServiceError::Conflict(format!(
                    "{others} other server(s) serve this room's metadata and beat within the last \
                     {} s; servers that share a metadata store must share the data store too \
                     (--data-store s3://…), a local data directory serves one; if the other \
                     server stopped, start again after {} s",
                    config.replica_lease.as_secs(),
                    config.replica_lease.as_secs()
                )));
            }
        }
        let lock = lock_data_dir(&config.data_dir)?;
        let key = master_key(&config)?;
        // Other replicas may share this store: only the work of silent ones is taken over.
        let orphaned = Orphaned::SilentFor(config.replica_lease);
        Self::open_locked(config, meta, lock, key, orphaned).await
    }

    async fn open_locked(
        config: Config,
        meta: Arc<dyn MetaStore>,
        lock: std::fs::File,
        (master, source): (SecretKey, MasterKeySource),
        orphaned: Orphaned,
    ) -> Result<Self, ServiceError> {
        let files = match &config.data_store {
            Some(store) => DatasetStore::new(store.clone()),
            None => DatasetStore::open(&config.data_dir)?,
        };
        let master =
            rotation::settle_rotation(&config.data_dir, meta.as_ref(), master, source).await?;
        let room = CleanRoom {
            meta,
            files,
            master,
            parquet_slots: Arc::new(Semaphore::new(config.limits.max_parquet_uploads)),
            limits: config.limits,
            master_key_source: source,
            lock: Arc::new(Mutex::new(Some(lock))),
            orphaned,
            heartbeat: Arc::new(Mutex::new(None)),
        };
        room.check_master_key().await?;
        room.check_data_store().await?;
        room.meta.heartbeat().await?;
        room.recover().await?;
        room.start_heartbeat(config.replica_lease);
        Ok(room)
    }

    /// Beats every third of the lease; on a shared store also takes over the work of replicas
    /// that fell silent (each piece once: the store's moves are compare-and-set).
    fn start_heartbeat(&self, lease: Duration) {
        let room = self.clone();
        let every = (lease / 3).max(Duration::from_millis(50));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = room.meta.heartbeat().await {
                    tracing::warn!(error = %e, "could not record this replica's heartbeat");
                    continue;
                }
                if matches!(room.orphaned, Orphaned::SilentFor(_))
                    && let Err(e) = room.take_over_orphaned_work().await
                {
                    tracing::warn!(error = %e, "could not take over a stopped replica's work");
                }
            }
        });
        if let Ok(mut slot) = self.heartbeat.lock() {
            *slot = Some(task);
        }
    }

    /// Where the master key came from (for the start-up message).
    pub fn master_key_source(&self) -> MasterKeySource {
        self.master_key_source
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Flushes and closes the metadata store and releases the data directory's lock.
    pub async fn close(&self) {
        let task = self.heartbeat.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        // Gone at once: another replica may take over what this one leaves unfinished.
        if let Err(e) = self.meta.retire().await {
            tracing::warn!(error = %e, "could not record that this replica stopped");
        }
        self.meta.close().await;
        if let Ok(mut lock) = self.lock.lock() {
            lock.take();
        }
    }

    /// Refuses to start with a master key other than the one the data directory was created
    /// with: everything would open but no dataset would decrypt.
    async fn check_master_key(&self) -> Result<(), ServiceError> {
        const NAME: &str = MASTER_KEY_CHECK;
        let candidate = self.master.wrap(&SecretKey::generate()?, NAME)?;
        let stored = self.meta.init_setting(NAME, &candidate).await?;
        self.master
            .unwrap_key(&stored, NAME)
            .map(|_| ())
            .map_err(|_| {
                ServiceError::InvalidInput(
                    "the master key does not match the one this data directory was created with \
                 (check CLEANROOM_MASTER_KEY or master.key)"
                        .into(),
                )
            })
    }

    /// Refuses to start on another data store than the one the room's datasets were written
    /// to: the metadata would list datasets whose files are elsewhere, and start-up clean-up
    /// would treat the other store's files as orphans.
    async fn check_data_store(&self) -> Result<(), ServiceError> {
        let files = self.files.files();
        let mine = files.identity();
        let stored = self.meta.init_setting(DATA_STORE, mine.as_bytes()).await?;
        if stored != mine.as_bytes() {
            let recorded = String::from_utf8_lossy(&stored);
            let hint = if recorded == "local" {
                "the data directory (leave out --data-store)".to_owned()
            } else {
                format!("--data-store {recorded}")
            };
            return Err(ServiceError::InvalidInput(format!(
                "this room keeps its datasets in {recorded}, not in {}: start it with {hint}",
                files.describe()
            )));
        }
        Ok(())
    }

    /// Analyses, activations and uploads whose server stopped before finishing them are
    /// recorded as failed (nothing was released or delivered) or returned to pending; each
    /// is taken over once, whichever replica gets there first.
    async fn take_over_orphaned_work(&self) -> Result<(), ServiceError> {
        self.recover_analyses(self.orphaned).await?;
        self.recover_activations(self.orphaned).await?;
        // An upload under way when its server stopped never finished: record that it was
        // discarded, in its collaboration's chain, as the dataset returns to pending.
        for d in self.meta.uploading_datasets(self.orphaned).await? {
            let audit = AuditCtx::system("server", Action::DatasetUpload, d.name.as_str())
                .in_chain(d.collaboration_id)
                .entry(
                    Outcome::Failed,
                    "interrupted upload discarded: the server receiving it stopped",
                );
            match self.meta.abort_upload(d.id, audit).await {
                Ok(()) | Err(cleanroom_meta::MetaError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn recover(&self) -> Result<(), ServiceError> {
        self.take_over_orphaned_work().await?;
        // The files first, then which to keep: a file listed here was complete before the
        // listing, so its dataset is ready or still uploading when read below, unless its
        // upload was given up (and then the file is an orphan). The other way round, an
        // upload finishing in between would lose its file.
        let files = self.files.clone();
        let listed = tokio::task::spawn_blocking(move || files.files().list())
            .await
            .map_err(|e| ServiceError::Internal(format!("start-up clean-up task failed: {e}")))??;
        let keep: HashSet<(CollaborationId, DatasetId)> =
            self.meta.recover_uploads().await?.into_iter().collect();
        let files = self.files.clone();
        let (tmp, orphans) = tokio::task::spawn_blocking(move || {
            let mut orphans = 0;
            for f in listed {
                if !keep.contains(&(f.collab, f.dataset)) && files.remove(f.collab, f.dataset)? {
                    orphans += 1;
                }
            }
            Ok::<_, cleanroom_storage::StorageError>((files.remove_tmp_files()?, orphans))
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("start-up clean-up task failed: {e}")))??;
        if tmp + orphans > 0 {
            tracing::warn!(
                unfinished_uploads = tmp,
                orphan_files = orphans,
                "removed files left by an interrupted upload"
            );
        }
        Ok(())
    }
}

/// A dataset as `p` may see it: the encrypted file's size only to its owner. The size is
/// deterministic in the content (one person's city changes it), so other members see the
/// schema, owner, status and row count only.
fn as_seen_by(mut d: Dataset, p: &Principal) -> Dataset {
    if d.owner_org_id != p.org.id {
        d.byte_size = None;
    }
    d
}

fn visible_to(d: &Dataset, p: &Principal) -> bool {
    d.owner_org_id == p.org.id || matches!(d.status, DatasetStatus::Ready | DatasetStatus::Shredded)
}

#[cfg(test)]
mod tests {
    use cleanroom_core::ids::AnalysisId;

    use super::stored_id;

    #[test]
    fn only_the_written_spelling_of_an_id_names_a_row() {
        let id = AnalysisId::new();
        assert_eq!(stored_id::<AnalysisId>(&id.to_string()), Some(id));
        for other in [
            id.to_string().to_uppercase(),
            id.to_string().replace('-', ""),
            format!("{{{id}}}"),
            "not-an-id".to_owned(),
        ] {
            assert_eq!(stored_id::<AnalysisId>(&other), None, "{other}");
        }
    }
}
