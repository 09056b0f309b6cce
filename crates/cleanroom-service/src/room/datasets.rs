//! Datasets: declare, upload (in a task of its own), list, show, verify.

use cleanroom_core::audit::Action;
use cleanroom_core::audit::Outcome;
use cleanroom_core::entities::{Collaboration, Dataset};
use cleanroom_core::ids::{CollaborationId, DatasetId};
use cleanroom_core::names::DatasetName;
use cleanroom_core::party::{Ability, DatasetStatus};
use cleanroom_core::schema::DatasetSchema;
use cleanroom_meta::MetaError;
use cleanroom_storage::ingest::{ByteLimit, ingest_arrow_stream, ingest_csv, ingest_parquet};
use cleanroom_storage::{SealedSpool, SecretKey};

use super::*;
use crate::ServiceError;

impl CleanRoom {
    // ------------------------------------------------------------------ datasets

    /// Declares a dataset (name and schema) owned by the caller's organisation.
    pub async fn create_dataset(
        &self,
        p: &Principal,
        collab: &str,
        name: &str,
        schema: DatasetSchema,
    ) -> Result<Dataset, ServiceError> {
        let ctx = AuditCtx::by(p, Action::DatasetCreate, name);
        let need = Need::open_with(Ability::Contribute);
        let (c, _, ctx) = self.active_member(p, collab, ctx, need).await?;
        let name = self.audited(&ctx.on("-"), DatasetName::parse(name)).await?;
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
        let ctx = ctx.on(d.name.as_str());
        let audit = ctx.entry(
            Outcome::Allowed,
            format!("{} column(s)", d.schema.columns().len()),
        );
        match self.meta.create_dataset(&d, &wrapped, audit).await {
            Ok(()) => Ok(d),
            Err(MetaError::Conflict(msg)) => {
                Err(self.refuse(&ctx, ServiceError::Conflict(msg)).await)
            }
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
    /// open collaboration, into a declared dataset its organisation owns. Refusals are audited
    /// under `ctx`, which is returned in the collaboration's chain.
    async fn upload_target(
        &self,
        p: &Principal,
        collab: &str,
        name: &str,
        ctx: AuditCtx,
    ) -> Result<(Collaboration, Dataset, AuditCtx), ServiceError> {
        let need = Need::open_with(Ability::Contribute);
        let (c, _, ctx) = self.active_member(p, collab, ctx, need).await?;
        let d = self.find_dataset(&c, p, name, &ctx).await?;
        if d.owner_org_id != p.org.id {
            let e = ServiceError::Forbidden(
                "only the organisation that owns a dataset may upload its data".into(),
            );
            return Err(self.refuse(&ctx, e).await);
        }
        Ok((c, d, ctx))
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
        let ctx = AuditCtx::by(p, Action::DatasetUpload, name);
        let (_, d, ctx) = self.upload_target(p, collab, name, ctx).await?;
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
        Err(self.refuse(&ctx, ServiceError::Conflict(busy)).await)
    }

    /// For a Parquet upload, which is spooled before it is read: checks the upload as
    /// [`CleanRoom::check_upload`] does *before* the body is read, then takes one of
    /// [`Limits::max_parquet_uploads`] slots, or refuses with `unavailable` when all are taken.
    /// Hold the slot until [`CleanRoom::upload`] returns.
    pub async fn reserve_parquet_upload(
        &self,
        p: &Principal,
        collab: &str,
        name: &str,
    ) -> Result<ParquetSlot, ServiceError> {
        let ctx = AuditCtx::by(p, Action::DatasetUpload, name);
        self.check_upload(p, collab, name).await?;
        match self.parquet_slots.clone().try_acquire_owned() {
            Ok(permit) => Ok(ParquetSlot { _permit: permit }),
            Err(_) => {
                let e = ServiceError::Unavailable(format!(
                    "{} Parquet uploads are being read already; retry in a minute, or \
                     send CSV or an Arrow IPC stream, which are streamed (the CLI converts Parquet \
                     for you)",
                    self.limits.max_parquet_uploads
                ));
                let ctx = match CollaborationId::parse(collab) {
                    Ok(id) => ctx.in_chain(id),
                    Err(_) => ctx,
                };
                Err(self.refuse(&ctx, e).await)
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
        let ctx = AuditCtx::by(p, Action::DatasetUpload, name);
        let (c, d, ctx) = self.upload_target(p, collab, name, ctx).await?;
        // From here on the work runs in a task of its own: a client that disconnects drops
        // the request future, not the upload, so the dataset always leaves `uploading` (ready,
        // or back to pending with its file removed) and the body's idle timeout still applies.
        let room = self.clone();
        let (p, name) = (p.clone(), name.to_owned());
        tokio::spawn(async move { room.upload_into(&p, &ctx, c, d, &name, input).await })
            .await
            .map_err(|e| ServiceError::Internal(format!("upload task: {e}")))?
    }

    async fn upload_into(
        &self,
        p: &Principal,
        ctx: &AuditCtx,
        c: Collaboration,
        d: Dataset,
        name: &str,
        input: UploadInput,
    ) -> Result<Dataset, ServiceError> {
        if let Err(e) = self.meta.begin_upload(d.id).await {
            return Err(self.refuse(ctx, e.into()).await);
        }
        let format = input.format();
        let result = self.write_upload(&c, &d, input).await;
        match result {
            Ok((rows, bytes)) => {
                let audit = ctx.entry(
                    Outcome::Allowed,
                    format!("{rows} rows, {bytes} encrypted bytes, from {format}"),
                );
                if let Err(e) = self.meta.finish_upload(d.id, rows, bytes, audit).await {
                    // Not recorded as ready: the file must not outlive this request, and the
                    // dataset goes back to pending (never left `uploading`).
                    let files = self.files.clone();
                    let cid = c.id;
                    let did = d.id;
                    let _ = tokio::task::spawn_blocking(move || files.remove(cid, did)).await;
                    let e: ServiceError = e.into();
                    let back = ctx.entry(e.audit_outcome(), e.audit_detail());
                    if let Err(err) = self.meta.abort_upload(d.id, back).await {
                        tracing::error!(error = %err, "could not return an unfinished upload to pending");
                    }
                    return Err(e);
                }
                self.find_dataset(&c, p, name, ctx).await
            }
            Err(err) => {
                let audit = ctx.entry(err.audit_outcome(), err.audit_detail());
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
            let mut writer = files.begin_write(cid, did, &schema, &key)?;
            let mut progress = |_rows: u64| {};
            let rows = match input {
                UploadInput::Csv(r) => ingest_csv(
                    ByteLimit::new(r, max_upload),
                    &schema,
                    &mut writer,
                    &mut progress,
                )?,
                UploadInput::ArrowStream(r) => ingest_arrow_stream(
                    ByteLimit::new(r, max_upload),
                    &schema,
                    &mut writer,
                    &mut progress,
                )?,
                UploadInput::Parquet(r) => {
                    let mut limited = ByteLimit::new(r, max_parquet);
                    let spool = SealedSpool::write(&mut limited, &files.spool_dir())?;
                    ingest_parquet(
                        spool.into_chunk_source(),
                        &schema,
                        &mut writer,
                        &mut progress,
                    )?
                }
            };
            let stored = files.commit(writer)?;
            debug_assert_eq!(stored.rows, rows);
            Ok((rows, stored.bytes))
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("upload task failed: {e}")))?
    }

    /// The dataset `name` of `c` as `p` may see it: its own of that name first, else the one
    /// every member sees. Refusals are audited under `ctx` with the name as their target.
    pub(crate) async fn find_dataset(
        &self,
        c: &Collaboration,
        p: &Principal,
        name: &str,
        ctx: &AuditCtx,
    ) -> Result<Dataset, ServiceError> {
        let parsed = self.audited(&ctx.on("-"), DatasetName::parse(name)).await?;
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
                Err(self.refuse(&ctx.on(name), e).await)
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
        let ctx = AuditCtx::by(p, Action::DatasetList, "-");
        let (c, _, _) = self.active_member(p, collab, ctx, Need::read()).await?;
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
        let ctx = AuditCtx::by(p, Action::DatasetShow, name);
        let (c, _, ctx) = self.active_member(p, collab, ctx, Need::read()).await?;
        let d = self.find_dataset(&c, p, name, &ctx).await?;
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
}
