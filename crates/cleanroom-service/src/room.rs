use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cleanroom_core::audit::{AuditEntry, ChainHead, Outcome, SYSTEM_CHAIN};
use cleanroom_core::entities::{Collaboration, Dataset, Membership, Organisation, Token, User};
use cleanroom_core::ids::{CollaborationId, DatasetId, OrgId, TokenId, UserId};
use cleanroom_core::names::{CollaborationName, DatasetName, OrgName, UserName};
use cleanroom_core::party::{
    Abilities, Ability, CollaborationStatus, DatasetStatus, MemberStatus, UserRole,
};
use cleanroom_core::schema::DatasetSchema;
use cleanroom_meta::{MetaError, MetaStore, NewAudit, SqliteStore};
use cleanroom_storage::ingest::{ByteLimit, ingest_arrow_stream, ingest_csv, ingest_parquet};
use cleanroom_storage::{DatasetStore, MasterKeySource, SecretKey, load_master_key};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use zeroize::Zeroizing;

use crate::ServiceError;
use crate::token::{IssuedToken, PresentedToken};

/// Limits that protect the server from oversized input.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest upload body, in bytes (CSV and Arrow streams are never held in memory whole).
    pub max_upload_bytes: u64,
    /// Largest Parquet upload, in bytes: Parquet must be held in memory to be read.
    pub max_parquet_bytes: u64,
    /// Parquet uploads read into memory at the same time. One more is refused at once with
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
            max_parquet_bytes: 512 * 1024 * 1024,
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
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            master_key_hex: None,
            create: true,
            limits: Limits::default(),
        }
    }
}

/// Who is acting: a user of an organisation, authenticated by a token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: User,
    pub org: Organisation,
    pub token_id: TokenId,
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
    /// A whole Parquet file in memory.
    Parquet(bytes::Bytes),
}

/// Permission to hold one Parquet upload in memory; see [`CleanRoom::reserve_parquet_upload`].
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
    sqlite: Option<SqliteStore>,
    pub(crate) files: DatasetStore,
    master: SecretKey,
    limits: Limits,
    master_key_source: MasterKeySource,
    parquet_slots: Arc<Semaphore>,
    /// `<data-dir>/.lock`, held exclusively while the room is open (released by `close`).
    lock: Arc<Mutex<Option<std::fs::File>>>,
}

use cleanroom_meta::now;

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

fn collab_purpose(id: CollaborationId) -> String {
    format!("collaboration:{id}")
}

fn dataset_purpose(id: DatasetId) -> String {
    format!("dataset:{id}")
}

fn not_found_collab() -> ServiceError {
    ServiceError::NotFound(
        "no such collaboration, or your organisation is not a member of it".into(),
    )
}

impl CleanRoom {
    /// Opens the clean room in `config.data_dir` with the embedded SQLite store, and repairs
    /// whatever a crash left behind: unfinished uploads are dropped and their datasets return
    /// to pending; analyses and activations caught mid-run are recorded as failed.
    pub async fn open(config: Config) -> Result<Self, ServiceError> {
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
        let (master, source) = load_master_key(
            dir,
            config.master_key_hex.as_ref().map(MasterKeyHex::expose),
            config.create,
        )
        .map_err(|e| ServiceError::InvalidInput(e.to_string()))?;
        let sqlite = SqliteStore::open(dir).await?;
        let files = DatasetStore::open(dir)?;
        let room = CleanRoom {
            meta: Arc::new(sqlite.clone()),
            sqlite: Some(sqlite),
            files,
            master,
            parquet_slots: Arc::new(Semaphore::new(config.limits.max_parquet_uploads)),
            limits: config.limits,
            master_key_source: source,
            lock: Arc::new(Mutex::new(Some(lock))),
        };
        room.check_master_key().await?;
        room.recover().await?;
        Ok(room)
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
        if let Some(s) = &self.sqlite {
            s.close().await;
        }
        if let Ok(mut lock) = self.lock.lock() {
            lock.take();
        }
    }

    /// Refuses to start with a master key other than the one the data directory was created
    /// with: everything would open but no dataset would decrypt.
    async fn check_master_key(&self) -> Result<(), ServiceError> {
        const NAME: &str = "master_key_check";
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

    async fn recover(&self) -> Result<(), ServiceError> {
        self.recover_analyses().await?;
        self.recover_activations().await?;
        // An upload under way when the server stopped never finished: record that it was
        // discarded, in its collaboration's chain, as the dataset returns to pending.
        for d in self.meta.uploading_datasets().await? {
            let audit = Self::audit(
                &d.collaboration_id.to_string(),
                "server",
                "dataset.upload",
                d.name.as_str(),
                Outcome::Failed,
                "interrupted upload discarded at start-up",
            );
            self.meta.abort_upload(d.id, audit).await?;
        }
        let committed: HashSet<(CollaborationId, DatasetId)> =
            self.meta.recover_uploads().await?.into_iter().collect();
        let tmp = self.files.remove_tmp_files()?;
        let orphans = self.files.remove_orphans(&committed)?;
        if tmp + orphans > 0 {
            tracing::warn!(
                unfinished_uploads = tmp,
                orphan_files = orphans,
                "removed files left by an interrupted upload"
            );
        }
        Ok(())
    }

    // ------------------------------------------------------------------ audit helpers

    pub(crate) fn audit(
        chain: &str,
        actor: &str,
        action: &str,
        target: &str,
        outcome: Outcome,
        detail: impl Into<String>,
    ) -> NewAudit {
        NewAudit {
            chain: chain.to_owned(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            outcome,
            detail: detail.into(),
        }
    }

    /// Records a refusal and returns the error to give the caller.
    pub(crate) async fn refuse(
        &self,
        chain: &str,
        actor: &str,
        action: &str,
        target: &str,
        err: ServiceError,
    ) -> ServiceError {
        let detail = err.audit_detail();
        let entry = Self::audit(chain, actor, action, target, err.audit_outcome(), detail);
        if let Err(e) = self.meta.append_audit(entry).await {
            tracing::error!(error = %e, "could not record a refusal in the audit log");
        }
        err
    }

    /// Passes a value through, or records the refusal of the input it came from.
    pub(crate) async fn audited<T, E: Into<ServiceError>>(
        &self,
        r: Result<T, E>,
        chain: &str,
        actor: &str,
        action: &str,
        target: &str,
    ) -> Result<T, ServiceError> {
        match r {
            Ok(v) => Ok(v),
            Err(e) => Err(self.refuse(chain, actor, action, target, e.into()).await),
        }
    }

    /// Records a request that the HTTP adapter refused before it reached a use case (a body
    /// that is not the expected JSON, an unknown ability, a schema that does not parse, an
    /// unsupported media type, a body over a size limit) with the `code` it answered and the
    /// `rule` that was broken: no input values. The refusal goes to the collaboration's chain
    /// when `collab` names one the caller is an active member of, to the `system` chain
    /// otherwise.
    pub async fn record_rejection(
        &self,
        p: &Principal,
        action: &str,
        collab: Option<&str>,
        code: &str,
        rule: &str,
    ) {
        let mut chain = SYSTEM_CHAIN.to_owned();
        if let Some(id) = collab.and_then(|c| CollaborationId::parse(c).ok())
            && let Ok(Some(m)) = self.meta.get_membership(id, p.org.id).await
            && m.status == MemberStatus::Active
        {
            chain = id.to_string();
        }
        let entry = Self::audit(
            &chain,
            &p.actor(),
            action,
            "-",
            Outcome::Denied,
            format!("{code}: {rule}"),
        );
        if let Err(e) = self.meta.append_audit(entry).await {
            tracing::error!(error = %e, "could not record a refusal in the audit log");
        }
    }

    // ------------------------------------------------------------------ authentication

    /// Creates the operator organisation and its first admin. Works once per data directory.
    pub async fn init_operator(
        &self,
        org_name: &str,
        user_name: &str,
    ) -> Result<(Organisation, User, IssuedToken), ServiceError> {
        let org = Organisation {
            id: OrgId::new(),
            name: OrgName::parse(org_name)?,
            is_operator: true,
            created_at: now(),
        };
        let (user, issued, token) = self.new_user(org.id, user_name, UserRole::Admin, "init")?;
        let audit = Self::audit(
            SYSTEM_CHAIN,
            &format!("{}/{}", org.name, user.name),
            "server.init",
            org.name.as_str(),
            Outcome::Allowed,
            format!(
                "operator organisation and admin created; token {}",
                issued.id
            ),
        );
        self.meta
            .bootstrap_operator(&org, &user, &token, audit)
            .await?;
        Ok((org, user, issued))
    }

    fn new_user(
        &self,
        org: OrgId,
        name: &str,
        role: UserRole,
        label: &str,
    ) -> Result<(User, IssuedToken, Token), ServiceError> {
        let user = User {
            id: UserId::new(),
            org_id: org,
            name: UserName::parse(name)?,
            role,
            created_at: now(),
        };
        let (issued, token) = Self::new_token(user.id, label)?;
        Ok((user, issued, token))
    }

    fn new_token(user: UserId, label: &str) -> Result<(IssuedToken, Token), ServiceError> {
        let label = label.trim();
        if label.chars().count() > 100 || label.chars().any(char::is_control) {
            return Err(ServiceError::InvalidInput(
                "a token label is at most 100 printable characters".into(),
            ));
        }
        let issued = IssuedToken::generate()?;
        let token = Token {
            id: issued.id,
            user_id: user,
            label: label.to_owned(),
            secret_hash: issued.secret_hash(),
            created_at: now(),
            revoked_at: None,
        };
        Ok((issued, token))
    }

    /// Resolves a bearer token to a principal. Failures are audited in the system chain
    /// without the token's secret.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Principal, ServiceError> {
        let Some(bearer) = bearer else {
            let e = ServiceError::Unauthenticated(
                "send an API token in the Authorization header: `Bearer crt_…`".into(),
            );
            return Err(self.refuse(SYSTEM_CHAIN, "anonymous", "auth", "-", e).await);
        };
        let presented = match PresentedToken::parse(bearer) {
            Ok(p) => p,
            Err(e) => return Err(self.refuse(SYSTEM_CHAIN, "anonymous", "auth", "-", e).await),
        };
        let found = self.meta.authenticate(presented.id).await?;
        let target = presented.id.to_string();
        match found {
            Some(a) if presented.matches(&a.token.secret_hash) => {
                if a.token.revoked_at.is_some() {
                    let e = ServiceError::Unauthenticated("this token has been revoked".into());
                    return Err(self
                        .refuse(SYSTEM_CHAIN, "anonymous", "auth", &target, e)
                        .await);
                }
                Ok(Principal {
                    user: a.user,
                    org: a.org,
                    token_id: a.token.id,
                })
            }
            _ => {
                let e = ServiceError::Unauthenticated("unknown token".into());
                Err(self
                    .refuse(SYSTEM_CHAIN, "anonymous", "auth", &target, e)
                    .await)
            }
        }
    }

    // ------------------------------------------------------------------ organisations, users, tokens

    /// Creates an organisation with its first admin. Operator only.
    pub async fn create_org(
        &self,
        p: &Principal,
        name: &str,
        admin_name: &str,
    ) -> Result<(Organisation, User, IssuedToken), ServiceError> {
        if !(p.org.is_operator && p.is_admin()) {
            let e = ServiceError::Forbidden(
                "only the operator's admins may create organisations".into(),
            );
            return Err(self
                .refuse(SYSTEM_CHAIN, &p.actor(), "org.create", name, e)
                .await);
        }
        let actor = p.actor();
        let org_name = self
            .audited(
                OrgName::parse(name),
                SYSTEM_CHAIN,
                &actor,
                "org.create",
                "-",
            )
            .await?;
        let org = Organisation {
            id: OrgId::new(),
            name: org_name,
            is_operator: false,
            created_at: now(),
        };
        let admin = self.new_user(org.id, admin_name, UserRole::Admin, "initial admin token");
        let (user, issued, token) = self
            .audited(admin, SYSTEM_CHAIN, &actor, "org.create", org.name.as_str())
            .await?;
        let audit = Self::audit(
            SYSTEM_CHAIN,
            &p.actor(),
            "org.create",
            org.name.as_str(),
            Outcome::Allowed,
            format!("admin {}; token {}", user.name, issued.id),
        );
        self.meta.create_org(&org, &user, &token, audit).await?;
        Ok((org, user, issued))
    }

    /// Every organisation on the server (names only: a directory to invite from).
    pub async fn list_orgs(&self, _p: &Principal) -> Result<Vec<Organisation>, ServiceError> {
        Ok(self.meta.list_orgs().await?)
    }

    /// Adds a user to the caller's organisation. Admins only.
    pub async fn create_user(
        &self,
        p: &Principal,
        name: &str,
        role: UserRole,
    ) -> Result<(User, IssuedToken), ServiceError> {
        if !p.is_admin() {
            let e =
                ServiceError::Forbidden("only admins of your organisation may add users".into());
            return Err(self
                .refuse(SYSTEM_CHAIN, &p.actor(), "user.create", name, e)
                .await);
        }
        let new = self.new_user(p.org.id, name, role, "initial token");
        let (user, issued, token) = self
            .audited(new, SYSTEM_CHAIN, &p.actor(), "user.create", "-")
            .await?;
        let audit = Self::audit(
            SYSTEM_CHAIN,
            &p.actor(),
            "user.create",
            &format!("{}/{}", p.org.name, user.name),
            Outcome::Allowed,
            format!("role {}; token {}", role.as_str(), issued.id),
        );
        self.meta.create_user(&user, &token, audit).await?;
        Ok((user, issued))
    }

    pub async fn list_users(&self, p: &Principal) -> Result<Vec<User>, ServiceError> {
        Ok(self.meta.list_users(p.org.id).await?)
    }

    /// Issues another token to the caller.
    pub async fn create_token(
        &self,
        p: &Principal,
        label: &str,
    ) -> Result<IssuedToken, ServiceError> {
        let (issued, token) = self
            .audited(
                Self::new_token(p.user.id, label),
                SYSTEM_CHAIN,
                &p.actor(),
                "token.create",
                "-",
            )
            .await?;
        let audit = Self::audit(
            SYSTEM_CHAIN,
            &p.actor(),
            "token.create",
            &issued.id.to_string(),
            Outcome::Allowed,
            "",
        );
        self.meta.create_token(&token, audit).await?;
        Ok(issued)
    }

    /// Tokens the caller may see: all of its organisation's for an admin, its own otherwise.
    pub async fn list_tokens(&self, p: &Principal) -> Result<Vec<(Token, User)>, ServiceError> {
        let all = self.meta.list_tokens(p.org.id).await?;
        Ok(all
            .into_iter()
            .filter(|(_, u)| p.is_admin() || u.id == p.user.id)
            .collect())
    }

    /// Revokes a token of the caller's (or, for an admin, of its organisation's users).
    pub async fn revoke_token(&self, p: &Principal, id: &str) -> Result<(), ServiceError> {
        let id = self
            .audited(
                TokenId::parse(id),
                SYSTEM_CHAIN,
                &p.actor(),
                "token.revoke",
                "-",
            )
            .await?;
        let mine = self
            .meta
            .list_tokens(p.org.id)
            .await?
            .into_iter()
            .find(|(t, _)| t.id == id);
        let allowed = match &mine {
            Some((_, holder)) => p.is_admin() || holder.id == p.user.id,
            None => false,
        };
        if !allowed {
            let e = ServiceError::NotFound(format!("no token {id} that you may revoke"));
            return Err(self
                .refuse(SYSTEM_CHAIN, &p.actor(), "token.revoke", &id.to_string(), e)
                .await);
        }
        let audit = Self::audit(
            SYSTEM_CHAIN,
            &p.actor(),
            "token.revoke",
            &id.to_string(),
            Outcome::Allowed,
            "",
        );
        Ok(self.meta.revoke_token(id, p.org.id, audit).await?)
    }

    // ------------------------------------------------------------------ collaborations

    /// Creates a collaboration; the caller's organisation joins it with `abilities`.
    pub async fn create_collaboration(
        &self,
        p: &Principal,
        name: &str,
        description: &str,
        abilities: Abilities,
    ) -> Result<Collaboration, ServiceError> {
        let actor = p.actor();
        let action = "collaboration.create";
        let name = self
            .audited(
                CollaborationName::parse(name),
                SYSTEM_CHAIN,
                &actor,
                action,
                "-",
            )
            .await?;
        let description = self
            .audited(
                self.check_description(description),
                SYSTEM_CHAIN,
                &actor,
                action,
                name.as_str(),
            )
            .await?;
        if abilities.is_empty() {
            let e =
                ServiceError::InvalidInput("give your organisation at least one ability".into());
            return Err(self
                .refuse(SYSTEM_CHAIN, &actor, action, name.as_str(), e)
                .await);
        }
        let c = Collaboration {
            id: CollaborationId::new(),
            name,
            description,
            creator_org_id: p.org.id,
            status: CollaborationStatus::Open,
            created_at: now(),
            closed_at: None,
        };
        let key = SecretKey::generate()?;
        let wrapped = self.master.wrap(&key, &collab_purpose(c.id))?;
        let creator = Membership {
            collaboration_id: c.id,
            org_id: p.org.id,
            org_name: p.org.name.clone(),
            abilities,
            status: MemberStatus::Active,
            invited_at: c.created_at.clone(),
            joined_at: Some(c.created_at.clone()),
        };
        let audit = Self::audit(
            &c.id.to_string(),
            &p.actor(),
            "collaboration.create",
            c.name.as_str(),
            Outcome::Allowed,
            format!("creator {} with abilities {}", p.org.name, abilities),
        );
        self.meta
            .create_collaboration(&c, &wrapped, &creator, audit)
            .await?;
        Ok(c)
    }

    fn check_description(&self, d: &str) -> Result<String, ServiceError> {
        let d = d.trim();
        if d.chars().count() > self.limits.max_description_chars {
            return Err(ServiceError::InvalidInput(format!(
                "the description is longer than {} characters",
                self.limits.max_description_chars
            )));
        }
        if d.chars().any(|c| c.is_control() && c != '\n') {
            return Err(ServiceError::InvalidInput(
                "the description contains control characters".into(),
            ));
        }
        Ok(d.to_owned())
    }

    /// Collaborations the caller's organisation is in or invited to.
    pub async fn list_collaborations(
        &self,
        p: &Principal,
    ) -> Result<Vec<(Collaboration, Membership)>, ServiceError> {
        Ok(self
            .meta
            .list_collaborations(p.org.id)
            .await?
            .into_iter()
            .filter(|(_, m)| m.status != MemberStatus::Declined)
            .collect())
    }

    /// Looks up a collaboration for the caller. Outsiders (and organisations that declined) get
    /// the same answer as for a collaboration that does not exist, and the attempt is audited
    /// in the system chain.
    pub(crate) async fn membership_of(
        &self,
        p: &Principal,
        collab: &str,
        action: &str,
    ) -> Result<(Collaboration, Membership), ServiceError> {
        let id = match CollaborationId::parse(collab) {
            Ok(id) => id,
            Err(_) => self.collaboration_named(p, collab, action).await?,
        };
        let found = match self.meta.get_collaboration(id).await? {
            Some(c) => self
                .meta
                .get_membership(id, p.org.id)
                .await?
                .filter(|m| m.status != MemberStatus::Declined)
                .map(|m| (c, m)),
            None => None,
        };
        match found {
            Some(x) => Ok(x),
            None => Err(self
                .refuse(
                    SYSTEM_CHAIN,
                    &p.actor(),
                    action,
                    &id.to_string(),
                    not_found_collab(),
                )
                .await),
        }
    }

    /// Like [`membership_of`] but also requires an accepted membership, an open collaboration
    /// and, when given, an ability. Refusals go to the collaboration's own chain.
    /// A collaboration named by its name rather than its id: among those the caller's
    /// organisation is in or invited to (so a name reveals nothing about others), exactly one
    /// must have it.
    async fn collaboration_named(
        &self,
        p: &Principal,
        name: &str,
        action: &str,
    ) -> Result<CollaborationId, ServiceError> {
        let mine: Vec<Collaboration> = self
            .list_collaborations(p)
            .await?
            .into_iter()
            .map(|(c, _)| c)
            .filter(|c| c.name.as_str() == name)
            .collect();
        match mine.as_slice() {
            [one] => Ok(one.id),
            [] => Err(self
                // The same answer as for an id that names nothing (the entry omits the input).
                .refuse(SYSTEM_CHAIN, &p.actor(), action, "-", not_found_collab())
                .await),
            several => {
                let e = ServiceError::InvalidInput(format!(
                    "{} collaborations you are in are named {name}: use an id ({})",
                    several.len(),
                    several
                        .iter()
                        .map(|c| c.id.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                Err(self.refuse(SYSTEM_CHAIN, &p.actor(), action, "-", e).await)
            }
        }
    }

    pub(crate) async fn active_member(
        &self,
        p: &Principal,
        collab: &str,
        action: &str,
        target: &str,
        ability: Option<Ability>,
        must_be_open: bool,
    ) -> Result<(Collaboration, Membership), ServiceError> {
        let (c, m) = self.membership_of(p, collab, action).await?;
        let chain = c.id.to_string();
        let problem = if m.status != MemberStatus::Active {
            Some(ServiceError::Forbidden(
                "your organisation has not accepted the invitation to this collaboration".into(),
            ))
        } else if must_be_open && c.status == CollaborationStatus::Closed {
            Some(ServiceError::Gone(
                "the collaboration is closed and its data destroyed".into(),
            ))
        } else {
            ability.filter(|a| !m.abilities.contains(*a)).map(|a| {
                ServiceError::Forbidden(format!(
                    "your organisation does not have the {} ability in this collaboration",
                    a.as_str()
                ))
            })
        };
        match problem {
            Some(e) => Err(self.refuse(&chain, &p.actor(), action, target, e).await),
            None => Ok((c, m)),
        }
    }

    /// A collaboration with its members, for a member or invitee.
    pub async fn get_collaboration(
        &self,
        p: &Principal,
        collab: &str,
    ) -> Result<CollaborationView, ServiceError> {
        let (c, you) = self.membership_of(p, collab, "collaboration.show").await?;
        let members = self
            .meta
            .list_members(c.id)
            .await?
            .into_iter()
            .filter(|m| you.is_active() || m.is_active() || m.org_id == p.org.id)
            .collect::<Vec<_>>();
        let creator = members
            .iter()
            .find(|m| m.org_id == c.creator_org_id)
            .map(|m| m.org_name.clone())
            .ok_or_else(|| ServiceError::Internal("collaboration without its creator".into()))?;
        Ok(CollaborationView {
            collaboration: c,
            creator,
            you,
            members,
        })
    }

    /// Invites an organisation. Only the creating organisation may invite.
    pub async fn invite(
        &self,
        p: &Principal,
        collab: &str,
        org_name: &str,
        abilities: Abilities,
    ) -> Result<Membership, ServiceError> {
        let (c, _) = self
            .active_member(p, collab, "collaboration.invite", org_name, None, true)
            .await?;
        let chain = c.id.to_string();
        if c.creator_org_id != p.org.id {
            let e = ServiceError::Forbidden(
                "only the organisation that created the collaboration may invite".into(),
            );
            return Err(self
                .refuse(&chain, &p.actor(), "collaboration.invite", org_name, e)
                .await);
        }
        let name = self
            .audited(
                OrgName::parse(org_name),
                &chain,
                &p.actor(),
                "collaboration.invite",
                "-",
            )
            .await?;
        let Some(org) = self.meta.find_org(&name).await? else {
            let e = ServiceError::NotFound(format!("no organisation named {name}"));
            return Err(self
                .refuse(&chain, &p.actor(), "collaboration.invite", org_name, e)
                .await);
        };
        if abilities.is_empty() {
            let e = ServiceError::InvalidInput("name at least one ability".into());
            return Err(self
                .refuse(&chain, &p.actor(), "collaboration.invite", org_name, e)
                .await);
        }
        let m = Membership {
            collaboration_id: c.id,
            org_id: org.id,
            org_name: org.name.clone(),
            abilities,
            status: MemberStatus::Invited,
            invited_at: now(),
            joined_at: None,
        };
        let audit = Self::audit(
            &chain,
            &p.actor(),
            "collaboration.invite",
            org.name.as_str(),
            Outcome::Allowed,
            format!("abilities {abilities}"),
        );
        match self.meta.invite(&m, audit).await {
            Ok(()) => Ok(m),
            Err(MetaError::Conflict(msg)) => Err(self
                .refuse(
                    &chain,
                    &p.actor(),
                    "collaboration.invite",
                    org_name,
                    ServiceError::Conflict(msg),
                )
                .await),
            Err(e) => Err(e.into()),
        }
    }

    /// Accepts (or declines) the caller's organisation's invitation.
    pub async fn respond(
        &self,
        p: &Principal,
        collab: &str,
        accept: bool,
    ) -> Result<(), ServiceError> {
        let action = if accept {
            "collaboration.accept"
        } else {
            "collaboration.decline"
        };
        let (c, m) = self.membership_of(p, collab, action).await?;
        let chain = c.id.to_string();
        if c.status == CollaborationStatus::Closed {
            let e = ServiceError::Gone("the collaboration is closed".into());
            return Err(self
                .refuse(&chain, &p.actor(), action, p.org.name.as_str(), e)
                .await);
        }
        if m.status != MemberStatus::Invited {
            let e = ServiceError::Conflict(format!(
                "your organisation is already {} in this collaboration",
                m.status
            ));
            return Err(self
                .refuse(&chain, &p.actor(), action, p.org.name.as_str(), e)
                .await);
        }
        let audit = Self::audit(
            &chain,
            &p.actor(),
            action,
            p.org.name.as_str(),
            Outcome::Allowed,
            format!("abilities {}", m.abilities),
        );
        Ok(self
            .meta
            .respond_invitation(c.id, p.org.id, accept, audit)
            .await?)
    }

    /// Closes a collaboration and crypto-shreds its data: the collaboration key and every
    /// dataset key are destroyed in one transaction, then the ciphertext files are deleted.
    /// Only the creating organisation's admins may close.
    pub async fn close_collaboration(
        &self,
        p: &Principal,
        collab: &str,
    ) -> Result<u64, ServiceError> {
        let (c, _) = self
            .active_member(p, collab, "collaboration.close", "-", None, true)
            .await?;
        let chain = c.id.to_string();
        if c.creator_org_id != p.org.id || !p.is_admin() {
            let e = ServiceError::Forbidden(
                "only an admin of the organisation that created the collaboration may close it"
                    .into(),
            );
            return Err(self
                .refuse(
                    &chain,
                    &p.actor(),
                    "collaboration.close",
                    c.name.as_str(),
                    e,
                )
                .await);
        }
        let audit = Self::audit(
            &chain,
            &p.actor(),
            "collaboration.close",
            c.name.as_str(),
            Outcome::Allowed,
            "",
        );
        let shredded = self.meta.close_collaboration(c.id, audit).await?;
        let files = self.files.remove_collaboration_files(c.id)?;
        tracing::info!(collaboration = %c.id, keys = shredded, files, "collaboration closed and crypto-shredded");
        Ok(shredded)
    }

    // ------------------------------------------------------------------ datasets

    /// Declares a dataset (name and schema) owned by the caller's organisation.
    pub async fn create_dataset(
        &self,
        p: &Principal,
        collab: &str,
        name: &str,
        schema: DatasetSchema,
    ) -> Result<Dataset, ServiceError> {
        let (c, _) = self
            .active_member(
                p,
                collab,
                "dataset.create",
                name,
                Some(Ability::Contribute),
                true,
            )
            .await?;
        let name = self
            .audited(
                DatasetName::parse(name),
                &c.id.to_string(),
                &p.actor(),
                "dataset.create",
                "-",
            )
            .await?;
        let d = Dataset {
            id: DatasetId::new(),
            collaboration_id: c.id,
            owner_org_id: p.org.id,
            owner_org_name: p.org.name.clone(),
            name,
            schema,
            status: DatasetStatus::Pending,
            row_count: None,
            byte_size: None,
            created_at: now(),
            ready_at: None,
        };
        let collab_key = self.collaboration_key(c.id).await?;
        let data_key = SecretKey::generate()?;
        let wrapped = collab_key.wrap(&data_key, &dataset_purpose(d.id))?;
        let chain = c.id.to_string();
        let audit = Self::audit(
            &chain,
            &p.actor(),
            "dataset.create",
            d.name.as_str(),
            Outcome::Allowed,
            format!("{} column(s)", d.schema.columns().len()),
        );
        match self.meta.create_dataset(&d, &wrapped, audit).await {
            Ok(()) => Ok(d),
            Err(MetaError::Conflict(msg)) => Err(self
                .refuse(
                    &chain,
                    &p.actor(),
                    "dataset.create",
                    d.name.as_str(),
                    ServiceError::Conflict(msg),
                )
                .await),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn collaboration_key(
        &self,
        id: CollaborationId,
    ) -> Result<SecretKey, ServiceError> {
        let wrapped = self.meta.collaboration_key(id).await?.ok_or_else(|| {
            ServiceError::Gone("the collaboration is closed and its keys destroyed".into())
        })?;
        Ok(self.master.unwrap_key(&wrapped, &collab_purpose(id))?)
    }

    pub(crate) async fn dataset_key(
        &self,
        c: CollaborationId,
        d: DatasetId,
    ) -> Result<SecretKey, ServiceError> {
        let ck = self.collaboration_key(c).await?;
        let wrapped = self
            .meta
            .dataset_key(d)
            .await?
            .ok_or_else(|| ServiceError::Gone("the dataset's key was destroyed".into()))?;
        Ok(ck.unwrap_key(&wrapped, &dataset_purpose(d))?)
    }

    /// Who may upload into which dataset: an active member with the contribute ability, in an
    /// open collaboration, into a declared dataset its organisation owns. Refusals are audited.
    async fn upload_target(
        &self,
        p: &Principal,
        collab: &str,
        name: &str,
    ) -> Result<(Collaboration, Dataset), ServiceError> {
        let (c, _) = self
            .active_member(
                p,
                collab,
                "dataset.upload",
                name,
                Some(Ability::Contribute),
                true,
            )
            .await?;
        let d = self.find_dataset(&c, p, name, "dataset.upload").await?;
        if d.owner_org_id != p.org.id {
            let e = ServiceError::Forbidden(
                "only the organisation that owns a dataset may upload its data".into(),
            );
            return Err(self
                .refuse(&c.id.to_string(), &p.actor(), "dataset.upload", name, e)
                .await);
        }
        Ok((c, d))
    }

    /// Checks, without reading any data, that `p` may upload into dataset `name` now: the same
    /// checks as [`CleanRoom::upload`] (membership, acceptance, open collaboration, contribute
    /// ability, a declared dataset the caller owns) and that the dataset has no data and no
    /// upload under way. Refusals are audited. `upload` checks again: this is a pre-flight.
    pub async fn check_upload(
        &self,
        p: &Principal,
        collab: &str,
        name: &str,
    ) -> Result<(), ServiceError> {
        let (c, d) = self.upload_target(p, collab, name).await?;
        let busy = match d.status {
            DatasetStatus::Pending => return Ok(()),
            DatasetStatus::Uploading => {
                "another upload to this dataset is in progress; wait for it to finish".to_owned()
            }
            DatasetStatus::Ready => {
                "this dataset has data already; datasets are immutable, create a new one".to_owned()
            }
            other => format!("the dataset is {other}"),
        };
        Err(self
            .refuse(
                &c.id.to_string(),
                &p.actor(),
                "dataset.upload",
                name,
                ServiceError::Conflict(busy),
            )
            .await)
    }

    /// For a Parquet upload, which must be read into memory whole: checks the upload as
    /// [`CleanRoom::check_upload`] does *before* the body is read, then takes one of
    /// [`Limits::max_parquet_uploads`] slots, or refuses with `unavailable` when all are taken.
    /// Hold the slot until [`CleanRoom::upload`] returns.
    pub async fn reserve_parquet_upload(
        &self,
        p: &Principal,
        collab: &str,
        name: &str,
    ) -> Result<ParquetSlot, ServiceError> {
        self.check_upload(p, collab, name).await?;
        match self.parquet_slots.clone().try_acquire_owned() {
            Ok(permit) => Ok(ParquetSlot { _permit: permit }),
            Err(_) => {
                let e = ServiceError::Unavailable(format!(
                    "{} Parquet uploads are being read into memory already; retry in a minute, or \
                     send CSV or an Arrow IPC stream, which are streamed (the CLI converts Parquet \
                     for you)",
                    self.limits.max_parquet_uploads
                ));
                let chain = CollaborationId::parse(collab)
                    .map(|id| id.to_string())
                    .unwrap_or_else(|_| SYSTEM_CHAIN.to_owned());
                Err(self
                    .refuse(&chain, &p.actor(), "dataset.upload", name, e)
                    .await)
            }
        }
    }

    /// Validates, encrypts and stores the data of a declared dataset. Only its owner may upload,
    /// once; a concurrent second upload is refused. A failed upload leaves no file and returns
    /// the dataset to pending.
    pub async fn upload(
        &self,
        p: &Principal,
        collab: &str,
        name: &str,
        input: UploadInput,
    ) -> Result<Dataset, ServiceError> {
        let (c, d) = self.upload_target(p, collab, name).await?;
        // From here on the work runs in a task of its own: a client that disconnects drops
        // the request future, not the upload, so the dataset always leaves `uploading` (ready,
        // or back to pending with its file removed) and the body's idle timeout still applies.
        let room = self.clone();
        let (p, name) = (p.clone(), name.to_owned());
        tokio::spawn(async move { room.upload_into(&p, c, d, &name, input).await })
            .await
            .map_err(|e| ServiceError::Internal(format!("upload task: {e}")))?
    }

    async fn upload_into(
        &self,
        p: &Principal,
        c: Collaboration,
        d: Dataset,
        name: &str,
        input: UploadInput,
    ) -> Result<Dataset, ServiceError> {
        let chain = c.id.to_string();
        if let Err(e) = self.meta.begin_upload(d.id).await {
            return Err(self
                .refuse(&chain, &p.actor(), "dataset.upload", name, e.into())
                .await);
        }
        let format = input.format();
        let result = self.write_upload(&c, &d, input).await;
        match result {
            Ok((rows, bytes)) => {
                let audit = Self::audit(
                    &chain,
                    &p.actor(),
                    "dataset.upload",
                    name,
                    Outcome::Allowed,
                    format!("{rows} rows, {bytes} encrypted bytes, from {format}"),
                );
                if let Err(e) = self.meta.finish_upload(d.id, rows, bytes, audit).await {
                    // Not recorded as ready: the file must not outlive this request, and the
                    // dataset goes back to pending (never left `uploading`).
                    let _ = std::fs::remove_file(self.files.dataset_path(c.id, d.id));
                    let e: ServiceError = e.into();
                    let back = Self::audit(
                        &chain,
                        &p.actor(),
                        "dataset.upload",
                        name,
                        e.audit_outcome(),
                        e.audit_detail(),
                    );
                    if let Err(err) = self.meta.abort_upload(d.id, back).await {
                        tracing::error!(error = %err, "could not return an unfinished upload to pending");
                    }
                    return Err(e);
                }
                self.find_dataset(&c, p, name, "dataset.upload").await
            }
            Err(err) => {
                let detail = err.audit_detail();
                let audit = Self::audit(
                    &chain,
                    &p.actor(),
                    "dataset.upload",
                    name,
                    err.audit_outcome(),
                    detail,
                );
                if let Err(e) = self.meta.abort_upload(d.id, audit).await {
                    tracing::error!(error = %e, "could not return a failed upload to pending");
                }
                Err(err)
            }
        }
    }

    async fn write_upload(
        &self,
        c: &Collaboration,
        d: &Dataset,
        input: UploadInput,
    ) -> Result<(u64, u64), ServiceError> {
        let key = self.dataset_key(c.id, d.id).await?;
        let files = self.files.clone();
        let schema = d.schema.clone();
        let (cid, did) = (c.id, d.id);
        let max_parquet = self.limits.max_parquet_bytes;
        let max_upload = self.limits.max_upload_bytes;
        tokio::task::spawn_blocking(move || -> Result<(u64, u64), ServiceError> {
            let mut writer = files.begin_write(did, &schema, &key)?;
            let mut progress = |_rows: u64| {};
            let rows = match input {
                UploadInput::Csv(r) => {
                    ingest_csv(ByteLimit::new(r, max_upload), &schema, &mut writer, &mut progress)?
                }
                UploadInput::ArrowStream(r) => ingest_arrow_stream(
                    ByteLimit::new(r, max_upload),
                    &schema,
                    &mut writer,
                    &mut progress,
                )?,
                UploadInput::Parquet(b) => {
                    if b.len() as u64 > max_parquet {
                        return Err(ServiceError::TooLarge(format!(
                            "Parquet uploads are read in memory and limited to {max_parquet} bytes; send CSV or an Arrow stream (the CLI does this for you)"
                        )));
                    }
                    ingest_parquet(b, &schema, &mut writer, &mut progress)?
                }
            };
            let stored = files.commit(writer, cid, did)?;
            debug_assert_eq!(stored.rows, rows);
            Ok((rows, stored.bytes))
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("upload task failed: {e}")))?
    }

    pub(crate) async fn find_dataset(
        &self,
        c: &Collaboration,
        p: &Principal,
        name: &str,
        action: &str,
    ) -> Result<Dataset, ServiceError> {
        let parsed = self
            .audited(
                DatasetName::parse(name),
                &c.id.to_string(),
                &p.actor(),
                action,
                "-",
            )
            .await?;
        // The caller's own dataset of that name first, else the one every member sees.
        let candidates = self.meta.find_datasets(c.id, &parsed).await?;
        let found = candidates
            .iter()
            .find(|d| d.owner_org_id == p.org.id)
            .or_else(|| candidates.iter().find(|d| visible_to(d, p)))
            .cloned();
        match found {
            Some(d) => Ok(d),
            None => {
                let e = ServiceError::NotFound(format!(
                    "no dataset named {parsed} in this collaboration"
                ));
                Err(self
                    .refuse(&c.id.to_string(), &p.actor(), action, name, e)
                    .await)
            }
        }
    }

    /// Datasets of a collaboration: ready (and shredded) ones to every active member, pending
    /// ones only to their owner. Metadata only; rows are never returned.
    pub async fn list_datasets(
        &self,
        p: &Principal,
        collab: &str,
    ) -> Result<Vec<Dataset>, ServiceError> {
        let (c, _) = self
            .active_member(p, collab, "dataset.list", "-", None, false)
            .await?;
        Ok(self
            .meta
            .list_datasets(c.id)
            .await?
            .into_iter()
            .filter(|d| visible_to(d, p))
            .map(|d| as_seen_by(d, p))
            .collect())
    }

    pub async fn get_dataset(
        &self,
        p: &Principal,
        collab: &str,
        name: &str,
    ) -> Result<Dataset, ServiceError> {
        let (c, _) = self
            .active_member(p, collab, "dataset.show", name, None, false)
            .await?;
        let d = self.find_dataset(&c, p, name, "dataset.show").await?;
        Ok(as_seen_by(d, p))
    }

    /// Counts the rows of a stored dataset by decrypting it: the server's own integrity check,
    /// used by tests and `cleanroom` diagnostics. Returns no row data.
    pub async fn verify_dataset_file(
        &self,
        c: CollaborationId,
        d: DatasetId,
    ) -> Result<u64, ServiceError> {
        let key = self.dataset_key(c, d).await?;
        let files = self.files.clone();
        tokio::task::spawn_blocking(move || -> Result<u64, ServiceError> {
            let mut n = 0u64;
            for b in files.open_reader(c, d, &key)? {
                n += b
                    .map_err(|e| ServiceError::Internal(format!("reading dataset: {e}")))?
                    .num_rows() as u64;
            }
            Ok(n)
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("verify task failed: {e}")))?
    }

    // ------------------------------------------------------------------ audit

    /// Entries of an audit chain after `after`, at most `limit`, with the chain's recorded head.
    /// A collaboration's chain is readable by its active members (also after it is closed); the
    /// `system` chain by the operator's admins.
    pub async fn audit_log(
        &self,
        p: &Principal,
        chain: &str,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<AuditEntry>, Option<ChainHead>), ServiceError> {
        let chain_id = if chain == SYSTEM_CHAIN {
            if !(p.org.is_operator && p.is_admin()) {
                let e = ServiceError::Forbidden(
                    "only the operator's admins may read the system audit log".into(),
                );
                return Err(self
                    .refuse(SYSTEM_CHAIN, &p.actor(), "audit.read", SYSTEM_CHAIN, e)
                    .await);
            }
            SYSTEM_CHAIN.to_owned()
        } else {
            let (c, _) = self
                .active_member(p, chain, "audit.read", "-", None, false)
                .await?;
            c.id.to_string()
        };
        let limit = limit.clamp(1, 10_000);
        Ok(self.meta.audit_page(&chain_id, after, limit).await?)
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
