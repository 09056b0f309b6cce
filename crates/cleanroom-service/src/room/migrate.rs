//! `cleanroom migrate`: a room's metadata moves from the data directory's SQLite file to
//! PostgreSQL, every row and every audit entry, checked on arrival (`cleanroom_meta::migrate`).
//! The data directory is locked throughout (no server may run on it), the master key must be
//! the room's own, and the SQLite file is set aside as `meta.sqlite.migrated` afterwards, so a
//! server started without `--metadata` refuses the directory instead of reviving the old room.

use std::collections::BTreeMap;
use std::path::Path;

use cleanroom_core::audit::{Action, ChainHead, Outcome};
use cleanroom_meta::migrate::sqlite_to_postgres;
use cleanroom_meta::{MetaStore, PgStore, SqliteStore};

use super::{AuditCtx, Config, MASTER_KEY_CHECK, MetadataUrl, lock_data_dir, master_key};
use crate::ServiceError;

/// What the set-aside SQLite file is called.
pub const MIGRATED_SUFFIX: &str = ".migrated";

/// What `migrate` moved.
#[derive(Debug, Clone)]
pub struct Migrated {
    /// Rows per table.
    pub rows: Vec<(String, u64)>,
    /// Every audit chain, verified on PostgreSQL, with its head before the migration's own
    /// entry (which the `system` chain then gains).
    pub chains: BTreeMap<String, ChainHead>,
    /// Where the SQLite file went.
    pub set_aside: std::path::PathBuf,
}

/// Moves the metadata of the room in `config.data_dir` into the empty PostgreSQL database
/// `to`. See the module's text.
pub async fn migrate_metadata(config: Config, to: &MetadataUrl) -> Result<Migrated, ServiceError> {
    let config = Config {
        create: false,
        ..config
    };
    let dir = &config.data_dir;
    let db = dir.join(cleanroom_meta::sqlite::DB_FILE);
    if !db.is_file() {
        return Err(ServiceError::InvalidInput(format!(
            "{} has no {} to migrate (a room already on PostgreSQL, or not a data directory)",
            dir.display(),
            cleanroom_meta::sqlite::DB_FILE
        )));
    }
    let _lock = lock_data_dir(dir)?;
    let (master, _) = master_key(&config)?;
    let sqlite = SqliteStore::open(dir).await?;
    let check = sqlite
        .get_setting(MASTER_KEY_CHECK)
        .await?
        .ok_or_else(|| ServiceError::InvalidInput(format!("{} holds no room", db.display())))?;
    if master.unwrap_key(&check, MASTER_KEY_CHECK).is_err() {
        return Err(ServiceError::InvalidInput(
            "the master key does not match the one this data directory was created with \
             (check CLEANROOM_MASTER_KEY or master.key)"
                .into(),
        ));
    }
    let pg = PgStore::connect(to.as_str()).await?;
    let report = sqlite_to_postgres(&sqlite, &pg).await?;
    let entries: u64 = report
        .rows
        .iter()
        .find(|(t, _)| t == "audit_entries")
        .map_or(0, |(_, n)| *n);
    let ctx = AuditCtx::system("operator", Action::MetadataMigrate, "metadata");
    pg.append_audit(ctx.entry(
        Outcome::Allowed,
        format!(
            "moved from SQLite: {} audit chains with {entries} entries, all verified",
            report.chains.len()
        ),
    ))
    .await?;
    sqlite.close_pools().await;
    drop(sqlite);
    let set_aside = dir.join(format!(
        "{}{MIGRATED_SUFFIX}",
        cleanroom_meta::sqlite::DB_FILE
    ));
    for ext in ["", "-wal", "-shm"] {
        let from = Path::new(&format!("{}{ext}", db.display())).to_owned();
        if from.exists() {
            let to = dir.join(format!(
                "{}{ext}{MIGRATED_SUFFIX}",
                cleanroom_meta::sqlite::DB_FILE
            ));
            std::fs::rename(&from, &to).map_err(|e| {
                ServiceError::Unavailable(format!(
                    "the metadata is on PostgreSQL now, but {} could not be set aside ({e}): move it away before starting a server without --metadata",
                    from.display()
                ))
            })?;
        }
    }
    cleanroom_storage::atomic::sync_dir(dir)?;
    Ok(Migrated {
        rows: report.rows,
        chains: report.chains,
        set_aside,
    })
}
