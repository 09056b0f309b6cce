//! The embedded SQLite metadata store.
//!
//! Writes go through a pool of one connection, so write transactions never race each other
//! for SQLite's single write lock (and never fail with "database is locked" half way); reads
//! use a separate pool and see committed state (WAL mode). `secure_delete` is on, so destroyed
//! keys are overwritten in the database file rather than left in free pages.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use cleanroom_core::audit::{AuditEntry, ChainHead};
use cleanroom_core::entities::{Collaboration, Dataset, Membership, Organisation, Token, User};
use cleanroom_core::ids::{
    ActivationId, AnalysisId, CollaborationId, DatasetId, OrgId, TokenId, UserId,
};
use cleanroom_core::names::{DatasetName, OrgName};
use cleanroom_core::party::AnalysisStatus;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};

use crate::MetaError;
use crate::chain::next_entry;
use crate::rows::*;
use crate::store::{
    ActivationMove, ActivationRow, AnalysisRow, ApprovalRow, Authenticated, Charge, Grant,
    LedgerRow, MetaStore, NewAudit, Orphaned, StoredPolicy,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// File name of the metadata database inside the data directory.
pub const DB_FILE: &str = "meta.sqlite";

#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// This process's replica id ([`MetaStore::replica`]).
    replica: String,
}

impl SqliteStore {
    /// Opens (creating if needed) `<data_dir>/meta.sqlite` and applies pending migrations.
    pub async fn open(data_dir: &Path) -> Result<Self, MetaError> {
        let path = data_dir.join(DB_FILE);
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(MetaError::Unavailable)?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30))
            .pragma("secure_delete", "ON");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await?;
        MIGRATOR
            .run(&writer)
            .await
            .map_err(|e| MetaError::Corrupt(format!("applying migrations: {e}")))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.read_only(true))
            .await?;
        Ok(SqliteStore {
            writer,
            reader,
            replica: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// The read-only pool (for the migration to PostgreSQL).
    pub(crate) fn reader_pool(&self) -> &SqlitePool {
        &self.reader
    }

    /// Closes the pools, flushing the write-ahead log into the database file.
    pub async fn close_pools(&self) {
        let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.writer)
            .await;
        self.reader.close().await;
        self.writer.close().await;
    }

    async fn append_in(
        tx: &mut Transaction<'static, Sqlite>,
        a: NewAudit,
    ) -> Result<AuditEntry, MetaError> {
        let head = sqlx::query("SELECT seq, hash FROM audit_heads WHERE chain = ?")
            .bind(&a.chain)
            .fetch_optional(&mut **tx)
            .await?
            .as_ref()
            .map(head_from)
            .transpose()?;
        let last: Option<i64> =
            sqlx::query_scalar("SELECT MAX(seq) FROM audit_entries WHERE chain = ?")
                .bind(&a.chain)
                .fetch_one(&mut **tx)
                .await?;
        let e = next_entry(a, head, last)?;
        sqlx::query(
            "INSERT INTO audit_entries (chain, seq, at, actor, action, target, outcome, detail, prev_hash, hash)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&e.chain)
        .bind(e.seq as i64)
        .bind(&e.at)
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.target)
        .bind(e.outcome.as_str())
        .bind(&e.detail)
        .bind(&e.prev_hash[..])
        .bind(&e.hash[..])
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO audit_heads (chain, seq, hash) VALUES (?, ?, ?)
             ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        )
        .bind(&e.chain)
        .bind(e.seq as i64)
        .bind(&e.hash[..])
        .execute(&mut **tx)
        .await?;
        Ok(e)
    }

    async fn insert_org_admin_token(
        tx: &mut Transaction<'static, Sqlite>,
        org: &Organisation,
        admin: &User,
        token: &Token,
    ) -> Result<(), MetaError> {
        sqlx::query(
            "INSERT INTO organisations (id, name, is_operator, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(org.id.to_string())
        .bind(org.name.as_str())
        .bind(org.is_operator)
        .bind(&org.created_at)
        .execute(&mut **tx)
        .await
        .map_err(|e| {
            conflict_as(
                e,
                format!("an organisation named {} exists already", org.name),
            )
        })?;
        Self::insert_user_token(tx, admin, token).await
    }

    async fn insert_user_token(
        tx: &mut Transaction<'static, Sqlite>,
        user: &User,
        token: &Token,
    ) -> Result<(), MetaError> {
        sqlx::query(
            "INSERT INTO users (id, org_id, name, role, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(user.id.to_string())
        .bind(user.org_id.to_string())
        .bind(user.name.as_str())
        .bind(user.role.as_str())
        .bind(&user.created_at)
        .execute(&mut **tx)
        .await
        .map_err(|e| {
            conflict_as(
                e,
                format!(
                    "a user named {} exists already in this organisation",
                    user.name
                ),
            )
        })?;
        Self::insert_token(tx, token).await
    }

    async fn insert_token(
        tx: &mut Transaction<'static, Sqlite>,
        t: &Token,
    ) -> Result<(), MetaError> {
        sqlx::query("INSERT INTO tokens (id, user_id, label, secret_hash, created_at, revoked_at, expires_at, parent_id) VALUES (?, ?, ?, ?, ?, NULL, ?, ?)")
            .bind(t.id.to_string())
            .bind(t.user_id.to_string())
            .bind(&t.label)
            .bind(&t.secret_hash[..])
            .bind(&t.created_at)
            .bind(&t.expires_at)
            .bind(t.parent_id.map(|p| p.to_string()))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

fn conflict_as(e: sqlx::Error, msg: String) -> MetaError {
    match MetaError::from(e) {
        MetaError::Conflict(_) => MetaError::Conflict(msg),
        other => other,
    }
}

#[async_trait]
impl MetaStore for SqliteStore {
    async fn close(&self) {
        self.close_pools().await;
    }

    async fn bootstrap_operator(
        &self,
        org: &Organisation,
        admin: &User,
        token: &Token,
        audit: NewAudit,
    ) -> Result<(), MetaError> {
        let mut tx = self.writer.begin().await?;
        let exists: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM organisations WHERE is_operator = 1")
                .fetch_one(&mut *tx)
                .await?;
        if exists > 0 {
            return Err(MetaError::Conflict(
                "this server is initialised already (an operator exists)".into(),
            ));
        }
        Self::insert_org_admin_token(&mut tx, org, admin, token).await?;
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_org(
        &self,
        org: &Organisation,
        admin: &User,
        token: &Token,
        audit: NewAudit,
    ) -> Result<(), MetaError> {
        let mut tx = self.writer.begin().await?;
        Self::insert_org_admin_token(&mut tx, org, admin, token).await?;
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_orgs(&self) -> Result<Vec<Organisation>, MetaError> {
        sqlx::query("SELECT * FROM organisations ORDER BY name")
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(|r| org_from(r, ""))
            .collect()
    }

    async fn find_org(&self, name: &OrgName) -> Result<Option<Organisation>, MetaError> {
        sqlx::query("SELECT * FROM organisations WHERE name = ?")
            .bind(name.as_str())
            .fetch_optional(&self.reader)
            .await?
            .map(|r| org_from(&r, ""))
            .transpose()
    }

    async fn create_user(
        &self,
        user: &User,
        token: &Token,
        audit: NewAudit,
    ) -> Result<(), MetaError> {
        let mut tx = self.writer.begin().await?;
        Self::insert_user_token(&mut tx, user, token).await?;
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_users(&self, org: OrgId) -> Result<Vec<User>, MetaError> {
        sqlx::query("SELECT * FROM users WHERE org_id = ? ORDER BY name")
            .bind(org.to_string())
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(|r| user_from(r, ""))
            .collect()
    }

    async fn get_user(&self, id: UserId) -> Result<Option<User>, MetaError> {
        sqlx::query("SELECT * FROM users WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await?
            .map(|r| user_from(&r, ""))
            .transpose()
    }

    async fn create_token(&self, token: &Token, audit: NewAudit) -> Result<(), MetaError> {
        let mut tx = self.writer.begin().await?;
        Self::insert_token(&mut tx, token).await?;
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_tokens(&self, org: OrgId) -> Result<Vec<(Token, User)>, MetaError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_USER_COLS} FROM tokens t JOIN users u ON u.id = t.user_id
             WHERE u.org_id = ? ORDER BY u.name, t.created_at"
        )))
        .bind(org.to_string())
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| Ok((token_from(r, "t_")?, user_from(r, "u_")?)))
            .collect()
    }

    async fn revoke_token(
        &self,
        id: TokenId,
        org: OrgId,
        audit: NewAudit,
    ) -> Result<(), MetaError> {
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(
            "UPDATE tokens SET revoked_at = ?
             WHERE id = ? AND revoked_at IS NULL
               AND user_id IN (SELECT id FROM users WHERE org_id = ?)",
        )
        .bind(now())
        .bind(id.to_string())
        .bind(org.to_string())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(MetaError::NotFound(format!(
                "no live token {id} in your organisation"
            )));
        }
        // Console sessions started with it end with it.
        sqlx::query("UPDATE tokens SET revoked_at = ? WHERE parent_id = ? AND revoked_at IS NULL")
            .bind(now())
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn authenticate(&self, id: TokenId) -> Result<Option<Authenticated>, MetaError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_USER_ORG_COLS}
             FROM tokens t JOIN users u ON u.id = t.user_id JOIN organisations o ON o.id = u.org_id
             WHERE t.id = ?"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.reader)
        .await?;
        row.map(|r| {
            Ok(Authenticated {
                token: token_from(&r, "t_")?,
                user: user_from(&r, "u_")?,
                org: org_from(&r, "o_")?,
            })
        })
        .transpose()
    }

    async fn create_collaboration(
        &self,
        c: &Collaboration,
        wrapped_key: &[u8],
        creator: &Membership,
        audit: NewAudit,
    ) -> Result<(), MetaError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO collaborations (id, name, description, creator_org_id, status, wrapped_key, created_at, closed_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
        )
        .bind(c.id.to_string())
        .bind(c.name.as_str())
        .bind(&c.description)
        .bind(c.creator_org_id.to_string())
        .bind(c.status.as_str())
        .bind(wrapped_key)
        .bind(&c.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_as(e, format!("your organisation already has a collaboration named {}", c.name)))?;
        insert_membership(&mut tx, creator).await?;
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_collaboration(
        &self,
        id: CollaborationId,
    ) -> Result<Option<Collaboration>, MetaError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLLAB_COLS} FROM collaborations c WHERE c.id = ?"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.reader)
        .await?
        .map(|r| collab_from(&r))
        .transpose()
    }

    async fn list_collaborations(
        &self,
        org: OrgId,
    ) -> Result<Vec<(Collaboration, Membership)>, MetaError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLLAB_COLS}, {MEMBER_COLS}
             FROM memberships m
             JOIN collaborations c ON c.id = m.collaboration_id
             JOIN organisations mo ON mo.id = m.org_id
             WHERE m.org_id = ? ORDER BY c.created_at, c.name"
        )))
        .bind(org.to_string())
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| Ok((collab_from(r)?, membership_from(r)?)))
            .collect()
    }

    async fn collaboration_key(&self, id: CollaborationId) -> Result<Option<Vec<u8>>, MetaError> {
        Ok(sqlx::query_scalar::<_, Option<Vec<u8>>>(
            "SELECT wrapped_key FROM collaborations WHERE id = ?",
        )
        .bind(id.to_string())
        .fetch_optional(&self.reader)
        .await?
        .flatten())
    }

    async fn get_membership(
        &self,
        collab: CollaborationId,
        org: OrgId,
    ) -> Result<Option<Membership>, MetaError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {MEMBER_COLS} FROM memberships m JOIN organisations mo ON mo.id = m.org_id
             WHERE m.collaboration_id = ? AND m.org_id = ?"
        )))
        .bind(collab.to_string())
        .bind(org.to_string())
        .fetch_optional(&self.reader)
        .await?
        .map(|r| membership_from(&r))
        .transpose()
    }

    async fn list_members(&self, collab: CollaborationId) -> Result<Vec<Membership>, MetaError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {MEMBER_COLS} FROM memberships m JOIN organisations mo ON mo.id = m.org_id
             WHERE m.collaboration_id = ? ORDER BY m.invited_at, mo.name"
        )))
        .bind(collab.to_string())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(membership_from)
        .collect()
    }

    async fn invite(&self, m: &Membership, audit: NewAudit) -> Result<(), MetaError> {
        let mut tx = self.writer.begin().await?;
        // A declined invitation may be renewed; anything else is a conflict.
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT status FROM memberships WHERE collaboration_id = ? AND org_id = ?",
        )
        .bind(m.collaboration_id.to_string())
        .bind(m.org_id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        match existing.as_deref() {
            None => insert_membership(&mut tx, m).await?,
            Some("declined") => {
                sqlx::query(
                    "UPDATE memberships SET abilities = ?, status = 'invited', invited_at = ?, joined_at = NULL
                     WHERE collaboration_id = ? AND org_id = ?",
                )
                .bind(m.abilities.to_bits())
                .bind(&m.invited_at)
                .bind(m.collaboration_id.to_string())
                .bind(m.org_id.to_string())
                .execute(&mut *tx)
                .await?;
            }
            Some(s) => {
                return Err(MetaError::Conflict(format!(
                    "{} is already {s} in this collaboration",
                    m.org_name
                )));
            }
        }
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn respond_invitation(
        &self,
        collab: CollaborationId,
        org: OrgId,
        accept: bool,
        audit: NewAudit,
    ) -> Result<(), MetaError> {
        let mut tx = self.writer.begin().await?;
        let (status, joined) = if accept {
            ("active", Some(now()))
        } else {
            ("declined", None)
        };
        let done = sqlx::query(
            "UPDATE memberships SET status = ?, joined_at = ?
             WHERE collaboration_id = ? AND org_id = ? AND status = 'invited'",
        )
        .bind(status)
        .bind(joined)
        .bind(collab.to_string())
        .bind(org.to_string())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(MetaError::Conflict(
                "there is no pending invitation for your organisation".into(),
            ));
        }
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn close_collaboration(
        &self,
        collab: CollaborationId,
        audit: NewAudit,
    ) -> Result<u64, MetaError> {
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(
            "UPDATE collaborations SET status = 'closed', wrapped_key = NULL, closed_at = ?
             WHERE id = ? AND status = 'open'",
        )
        .bind(now())
        .bind(collab.to_string())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(MetaError::Conflict(
                "the collaboration is closed already".into(),
            ));
        }
        let shredded = sqlx::query(
            "UPDATE datasets SET wrapped_key = NULL, status = 'shredded'
             WHERE collaboration_id = ? AND wrapped_key IS NOT NULL",
        )
        .bind(collab.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let results = sqlx::query(
            "UPDATE analyses SET result = NULL WHERE collaboration_id = ? AND result IS NOT NULL",
        )
        .bind(collab.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let mut audit = audit;
        if audit.detail.is_empty() {
            audit.detail = format!(
                "destroyed the collaboration key and {shredded} dataset key(s); deleted {results} stored result(s)"
            );
        }
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        // Move the overwritten pages out of the write-ahead log too.
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.writer)
            .await?;
        Ok(shredded)
    }

    async fn create_dataset(
        &self,
        d: &Dataset,
        wrapped_key: &[u8],
        audit: NewAudit,
    ) -> Result<(), MetaError> {
        let mut tx = self.writer.begin().await?;
        // Another member's dataset of this name counts only once every member sees it.
        let visible: Option<String> = sqlx::query_scalar(
            "SELECT id FROM datasets WHERE collaboration_id = ? AND name = ? AND owner_org_id <> ?
               AND status IN ('ready', 'shredded') LIMIT 1",
        )
        .bind(d.collaboration_id.to_string())
        .bind(d.name.as_str())
        .bind(d.owner_org_id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        if visible.is_some() {
            return Err(MetaError::Conflict(format!(
                "a dataset named {} exists already in this collaboration",
                d.name
            )));
        }
        sqlx::query(
            "INSERT INTO datasets (id, collaboration_id, owner_org_id, name, schema, status, wrapped_key,
                                   row_count, byte_size, created_at, ready_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, NULL)",
        )
        .bind(d.id.to_string())
        .bind(d.collaboration_id.to_string())
        .bind(d.owner_org_id.to_string())
        .bind(d.name.as_str())
        .bind(d.schema.to_compact())
        .bind(d.status.as_str())
        .bind(wrapped_key)
        .bind(&d.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_as(e, format!("a dataset named {} exists already in this collaboration", d.name)))?;
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_datasets(
        &self,
        collab: CollaborationId,
        name: &DatasetName,
    ) -> Result<Vec<Dataset>, MetaError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{DATASET_SELECT} WHERE d.collaboration_id = ? AND d.name = ? ORDER BY d.created_at"
        )))
        .bind(collab.to_string())
        .bind(name.as_str())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(dataset_from)
        .collect()
    }

    async fn list_datasets(&self, collab: CollaborationId) -> Result<Vec<Dataset>, MetaError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{DATASET_SELECT} WHERE d.collaboration_id = ? ORDER BY d.created_at, d.name"
        )))
        .bind(collab.to_string())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(dataset_from)
        .collect()
    }

    async fn dataset_key(&self, id: DatasetId) -> Result<Option<Vec<u8>>, MetaError> {
        Ok(sqlx::query_scalar::<_, Option<Vec<u8>>>(
            "SELECT wrapped_key FROM datasets WHERE id = ?",
        )
        .bind(id.to_string())
        .fetch_optional(&self.reader)
        .await?
        .flatten())
    }

    async fn begin_upload(&self, id: DatasetId) -> Result<(), MetaError> {
        let done = sqlx::query(
            "UPDATE datasets SET status = 'uploading', upload_replica = ?
             WHERE id = ? AND status = 'pending'",
        )
        .bind(&self.replica)
        .bind(id.to_string())
        .execute(&self.writer)
        .await?;
        if done.rows_affected() != 1 {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM datasets WHERE id = ?")
                    .bind(id.to_string())
                    .fetch_optional(&self.writer)
                    .await?;
            return Err(match status.as_deref() {
                None => MetaError::NotFound("dataset".into()),
                Some("uploading") => MetaError::Conflict(
                    "another upload to this dataset is in progress; wait for it to finish".into(),
                ),
                Some("ready") => MetaError::Conflict(
                    "this dataset has data already; datasets are immutable, create a new one"
                        .into(),
                ),
                Some(s) => MetaError::Conflict(format!("the dataset is {s}")),
            });
        }
        Ok(())
    }

    async fn finish_upload(
        &self,
        id: DatasetId,
        rows: u64,
        bytes: u64,
        audit: NewAudit,
    ) -> Result<(), MetaError> {
        let mut tx = self.writer.begin().await?;
        // Names are unique among the datasets every member sees: another member's dataset of
        // the same name may have become ready while this one was private.
        let clash: Option<String> = sqlx::query_scalar(
            "SELECT o.id FROM datasets o JOIN datasets d ON d.collaboration_id = o.collaboration_id
               AND d.name = o.name AND d.id <> o.id
             WHERE d.id = ? AND o.status IN ('ready', 'shredded') LIMIT 1",
        )
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        if clash.is_some() {
            return Err(MetaError::Conflict(
                "another member's dataset of the same name became available in this collaboration \
                 while this one was uploading: declare yours under another name"
                    .into(),
            ));
        }
        let done = sqlx::query(
            "UPDATE datasets SET status = 'ready', row_count = ?, byte_size = ?, ready_at = ?
             WHERE id = ? AND status = 'uploading'",
        )
        .bind(db_int(rows, "a row count")?)
        .bind(db_int(bytes, "a file size")?)
        .bind(now())
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(MetaError::Conflict(
                "the dataset is no longer being uploaded (was its collaboration closed?)".into(),
            ));
        }
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn abort_upload(&self, id: DatasetId, audit: NewAudit) -> Result<(), MetaError> {
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(
            "UPDATE datasets SET status = 'pending', upload_replica = NULL
             WHERE id = ? AND status = 'uploading'",
        )
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(MetaError::Conflict(
                "the dataset is not being uploaded".into(),
            ));
        }
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn uploading_datasets(&self, orphaned: Orphaned) -> Result<Vec<Dataset>, MetaError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{DATASET_SELECT} WHERE d.status = 'uploading' AND {} ORDER BY d.created_at, d.name",
            gone("d.upload_replica")
        )))
        .bind(&self.replica)
        .bind(orphan_cutoff(orphaned))
        .fetch_all(&self.writer)
        .await?
        .iter()
        .map(dataset_from)
        .collect()
    }

    async fn recover_uploads(&self) -> Result<Vec<(CollaborationId, DatasetId)>, MetaError> {
        let rows = sqlx::query(
            "SELECT collaboration_id, id FROM datasets WHERE status IN ('ready', 'uploading')",
        )
        .fetch_all(&self.writer)
        .await?;
        rows.iter().map(dataset_ids_from).collect()
    }

    async fn set_policy(
        &self,
        dataset: DatasetId,
        draft: &cleanroom_core::policy::PolicyDraft,
        set_by: &str,
        audit: NewAudit,
    ) -> Result<u32, MetaError> {
        let mut tx = self.writer.begin().await?;
        let last: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM analysis_policies WHERE dataset_id = ?")
                .bind(dataset.to_string())
                .fetch_one(&mut *tx)
                .await?;
        let version = last.unwrap_or(0) + 1;
        sqlx::query(
            "INSERT INTO analysis_policies (dataset_id, version, policy, set_by, created_at)
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(dataset.to_string())
        .bind(version)
        .bind(crate::policy_json::encode(draft))
        .bind(set_by)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        let mut audit = audit;
        audit.detail = format!("version {version}; {}", audit.detail);
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(version as u32)
    }

    async fn get_policy(&self, dataset: DatasetId) -> Result<Option<StoredPolicy>, MetaError> {
        let row = sqlx::query(
            "SELECT version, policy, set_by, created_at FROM analysis_policies
             WHERE dataset_id = ? ORDER BY version DESC LIMIT 1",
        )
        .bind(dataset.to_string())
        .fetch_optional(&self.reader)
        .await?;
        row.map(|r| {
            Ok(StoredPolicy {
                version: r.try_get::<i64, _>("version")? as u32,
                draft: crate::policy_json::decode(&r.try_get::<String, _>("policy")?)?,
                set_by: r.try_get("set_by")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .transpose()
    }

    async fn grant_budget(
        &self,
        collab: CollaborationId,
        org: OrgId,
        grant: Grant,
        audit: NewAudit,
    ) -> Result<LedgerRow, MetaError> {
        let units = |v: u64| -> Result<i64, MetaError> {
            i64::try_from(v).map_err(|_| MetaError::Conflict("amount too large".into()))
        };
        let mut tx = self.writer.begin().await?;
        let existing = sqlx::query(
            "SELECT epsilon_total, delta_total FROM privacy_ledgers
             WHERE collaboration_id = ? AND org_id = ?",
        )
        .bind(collab.to_string())
        .bind(org.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        match existing {
            None => {
                let (Some(ecap), Some(dcap)) = (grant.epsilon_per_query, grant.delta_per_query)
                else {
                    return Err(MetaError::Conflict(
                        "the first grant must set the per-query caps".into(),
                    ));
                };
                sqlx::query(
                    "INSERT INTO privacy_ledgers (collaboration_id, org_id, epsilon_total, delta_total,
                         epsilon_per_query, delta_per_query, epsilon_spent, delta_spent, updated_at)
                     VALUES (?, ?, ?, ?, ?, ?, 0, 0, ?)",
                )
                .bind(collab.to_string())
                .bind(org.to_string())
                .bind(units(grant.add_epsilon)?)
                .bind(units(grant.add_delta)?)
                .bind(units(ecap)?)
                .bind(units(dcap)?)
                .bind(now())
                .execute(&mut *tx)
                .await?;
            }
            Some(r) => {
                let e: i64 = r.try_get("epsilon_total")?;
                let d: i64 = r.try_get("delta_total")?;
                let e = e
                    .checked_add(units(grant.add_epsilon)?)
                    .ok_or_else(|| MetaError::Conflict("amount too large".into()))?;
                let d = d
                    .checked_add(units(grant.add_delta)?)
                    .ok_or_else(|| MetaError::Conflict("amount too large".into()))?;
                sqlx::query(
                    "UPDATE privacy_ledgers SET epsilon_total = ?, delta_total = ?,
                         epsilon_per_query = COALESCE(?, epsilon_per_query),
                         delta_per_query = COALESCE(?, delta_per_query), updated_at = ?
                     WHERE collaboration_id = ? AND org_id = ?",
                )
                .bind(e)
                .bind(d)
                .bind(grant.epsilon_per_query.map(units).transpose()?)
                .bind(grant.delta_per_query.map(units).transpose()?)
                .bind(now())
                .bind(collab.to_string())
                .bind(org.to_string())
                .execute(&mut *tx)
                .await?;
            }
        }
        Self::append_in(&mut tx, audit).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{LEDGER_SELECT} WHERE l.collaboration_id = ? AND l.org_id = ?"
        )))
        .bind(collab.to_string())
        .bind(org.to_string())
        .fetch_one(&mut *tx)
        .await?;
        let ledger = ledger_from(&row)?;
        tx.commit().await?;
        Ok(ledger)
    }

    async fn ledgers(&self, collab: CollaborationId) -> Result<Vec<LedgerRow>, MetaError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{LEDGER_SELECT} WHERE l.collaboration_id = ? ORDER BY o.name"
        )))
        .bind(collab.to_string())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(ledger_from)
        .collect()
    }

    async fn begin_analysis(
        &self,
        row: &AnalysisRow,
        charges: &[Charge],
        audits: Vec<NewAudit>,
    ) -> Result<(), MetaError> {
        let mut tx = self.writer.begin().await?;
        for c in charges {
            let (e, d) = (
                db_int(c.epsilon, "an epsilon charge")?,
                db_int(c.delta, "a delta charge")?,
            );
            // Check and debit in one statement: the single writer connection serialises it
            // with every other charge, so concurrent analyses cannot overspend.
            let done = sqlx::query(
                "UPDATE privacy_ledgers
                 SET epsilon_spent = epsilon_spent + ?, delta_spent = delta_spent + ?, updated_at = ?
                 WHERE collaboration_id = ? AND org_id = ?
                   AND ? <= epsilon_per_query AND ? <= delta_per_query
                   AND epsilon_spent + ? <= epsilon_total AND delta_spent + ? <= delta_total",
            )
            .bind(e)
            .bind(d)
            .bind(now())
            .bind(row.collaboration_id.to_string())
            .bind(c.org_id.to_string())
            .bind(e)
            .bind(d)
            .bind(e)
            .bind(d)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                return Err(MetaError::BudgetExhausted(c.org_id.to_string()));
            }
        }
        sqlx::query(
            "INSERT INTO analyses (id, collaboration_id, org_id, actor, kind, request, fingerprint,
                 receivers, charges, status, result, error, reused_from, created_at, finished_at,
                 replica)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', NULL, NULL, NULL, ?, NULL, ?)",
        )
        .bind(row.id.to_string())
        .bind(row.collaboration_id.to_string())
        .bind(row.org_id.to_string())
        .bind(&row.actor)
        .bind(&row.kind)
        .bind(&row.request)
        .bind(&row.fingerprint)
        .bind(&row.receivers)
        .bind(&row.charges)
        .bind(&row.created_at)
        .bind(&self.replica)
        .execute(&mut *tx)
        .await?;
        for a in audits {
            Self::append_in(&mut tx, a).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn finish_analysis(
        &self,
        id: AnalysisId,
        result: Result<&str, &str>,
        audit: NewAudit,
    ) -> Result<(), MetaError> {
        let mut tx = self.writer.begin().await?;
        let (status, res, err) = match result {
            Ok(r) => (AnalysisStatus::Released, Some(r), None),
            Err(e) => (AnalysisStatus::Failed, None, Some(e)),
        };
        let done = sqlx::query(
            "UPDATE analyses SET status = ?, result = ?, error = ?, finished_at = ?
             WHERE id = ? AND status = 'running'",
        )
        .bind(status.as_str())
        .bind(res)
        .bind(err)
        .bind(now())
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(MetaError::Conflict(format!("analysis {id} is not running")));
        }
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_reuse(&self, row: &AnalysisRow, audit: NewAudit) -> Result<(), MetaError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO analyses (id, collaboration_id, org_id, actor, kind, request, fingerprint,
                 receivers, charges, status, result, error, reused_from, created_at, finished_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'released', ?, NULL, ?, ?, ?)",
        )
        .bind(row.id.to_string())
        .bind(row.collaboration_id.to_string())
        .bind(row.org_id.to_string())
        .bind(&row.actor)
        .bind(&row.kind)
        .bind(&row.request)
        .bind(&row.fingerprint)
        .bind(&row.receivers)
        .bind(&row.charges)
        .bind(&row.result)
        .bind(row.reused_from.map(|id| id.to_string()))
        .bind(&row.created_at)
        .bind(&row.finished_at)
        .execute(&mut *tx)
        .await?;
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_analysis(&self, id: AnalysisId) -> Result<Option<AnalysisRow>, MetaError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{ANALYSIS_SELECT} WHERE id = ?"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.reader)
        .await?
        .as_ref()
        .map(analysis_from)
        .transpose()
    }

    async fn running_analyses(&self, orphaned: Orphaned) -> Result<Vec<AnalysisRow>, MetaError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{ANALYSIS_SELECT} WHERE status = 'running' AND {} ORDER BY created_at",
            gone("replica")
        )))
        .bind(&self.replica)
        .bind(orphan_cutoff(orphaned))
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(analysis_from)
        .collect()
    }

    async fn list_analyses(&self, collab: CollaborationId) -> Result<Vec<AnalysisRow>, MetaError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{ANALYSIS_SELECT} WHERE collaboration_id = ? ORDER BY created_at, id"
        )))
        .bind(collab.to_string())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(analysis_from)
        .collect()
    }

    async fn find_release(
        &self,
        collab: CollaborationId,
        fingerprint: &str,
    ) -> Result<Option<AnalysisRow>, MetaError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{ANALYSIS_SELECT} WHERE collaboration_id = ? AND fingerprint = ? AND status = 'released'
               AND result IS NOT NULL AND reused_from IS NULL
             ORDER BY created_at DESC LIMIT 1"
        )))
        .bind(collab.to_string())
        .bind(fingerprint)
        .fetch_optional(&self.reader)
        .await?
        .as_ref()
        .map(analysis_from)
        .transpose()
    }

    async fn dataset_stats(&self, dataset: DatasetId) -> Result<Option<String>, MetaError> {
        Ok(
            sqlx::query_scalar("SELECT stats FROM dataset_stats WHERE dataset_id = ?")
                .bind(dataset.to_string())
                .fetch_optional(&self.reader)
                .await?,
        )
    }

    async fn set_dataset_stats(&self, dataset: DatasetId, stats: &str) -> Result<(), MetaError> {
        sqlx::query(
            "INSERT INTO dataset_stats (dataset_id, stats, computed_at) VALUES (?, ?, ?)
             ON CONFLICT (dataset_id) DO NOTHING",
        )
        .bind(dataset.to_string())
        .bind(stats)
        .bind(now())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn approve_template(&self, row: &ApprovalRow, audit: NewAudit) -> Result<(), MetaError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO template_approvals (dataset_id, template, version, approved_by, approved_at)
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(row.dataset_id.to_string())
        .bind(&row.template)
        .bind(i64::from(row.version))
        .bind(&row.approved_by)
        .bind(&row.approved_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            conflict_as(
                e,
                format!("{} version {} is approved already", row.template, row.version),
            )
        })?;
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn revoke_template(
        &self,
        dataset: DatasetId,
        template: &str,
        version: u32,
        audit: NewAudit,
    ) -> Result<(), MetaError> {
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(
            "DELETE FROM template_approvals WHERE dataset_id = ? AND template = ? AND version = ?",
        )
        .bind(dataset.to_string())
        .bind(template)
        .bind(i64::from(version))
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(MetaError::NotFound(format!(
                "{template} version {version} is not approved for this dataset"
            )));
        }
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn template_approvals(
        &self,
        collab: CollaborationId,
    ) -> Result<Vec<ApprovalRow>, MetaError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{APPROVAL_SELECT} WHERE d.collaboration_id = ? ORDER BY a.approved_at"
        )))
        .bind(collab.to_string())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(approval_from)
        .collect()
    }

    async fn create_activation(
        &self,
        row: &ActivationRow,
        audit: NewAudit,
    ) -> Result<(), MetaError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO activations (id, collaboration_id, org_id, actor, source_dataset_id,
                 target_dataset_id, request, policy_version, status, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
        )
        .bind(row.id.to_string())
        .bind(row.collaboration_id.to_string())
        .bind(row.org_id.to_string())
        .bind(&row.actor)
        .bind(row.source_dataset_id.to_string())
        .bind(row.target_dataset_id.to_string())
        .bind(&row.request)
        .bind(i64::from(row.policy_version))
        .bind(&row.created_at)
        .execute(&mut *tx)
        .await?;
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_activation(&self, id: ActivationId) -> Result<Option<ActivationRow>, MetaError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{ACTIVATION_SELECT} WHERE id = ?"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.reader)
        .await?
        .as_ref()
        .map(activation_from)
        .transpose()
    }

    async fn list_activations(
        &self,
        collab: CollaborationId,
    ) -> Result<Vec<ActivationRow>, MetaError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{ACTIVATION_SELECT} WHERE collaboration_id = ? ORDER BY created_at, id"
        )))
        .bind(collab.to_string())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(activation_from)
        .collect()
    }

    async fn consumed_activations(
        &self,
        orphaned: Orphaned,
    ) -> Result<Vec<ActivationRow>, MetaError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{ACTIVATION_SELECT} WHERE status = 'consumed' AND {} ORDER BY created_at, id",
            gone("replica")
        )))
        .bind(&self.replica)
        .bind(orphan_cutoff(orphaned))
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(activation_from)
        .collect()
    }

    async fn move_activation(
        &self,
        id: ActivationId,
        mv: ActivationMove<'_>,
        audit: NewAudit,
    ) -> Result<(), MetaError> {
        if !mv.from.can_move_to(mv.to) {
            return Err(MetaError::Conflict(format!(
                "an activation cannot move from {} to {}",
                mv.from, mv.to
            )));
        }
        let mut tx = self.writer.begin().await?;
        let at = now();
        // Check and move in one statement: of two racing moves out of the same state, the
        // single writer connection lets exactly one match.
        let done = sqlx::query(
            "UPDATE activations SET status = ?,
                 decided_by = COALESCE(?, decided_by),
                 decided_at = CASE WHEN ? IS NULL THEN decided_at ELSE ? END,
                 delivered = COALESCE(?, delivered),
                 finished_at = CASE WHEN ? THEN ? ELSE finished_at END,
                 replica = CASE WHEN ? = 'consumed' THEN ? ELSE replica END
             WHERE id = ? AND status = ?",
        )
        .bind(mv.to.as_str())
        .bind(mv.decided_by)
        .bind(mv.decided_by)
        .bind(&at)
        .bind(mv.delivered.map(|n| n as i64))
        .bind(mv.finished)
        .bind(&at)
        .bind(mv.to.as_str())
        .bind(&self.replica)
        .bind(id.to_string())
        .bind(mv.from.as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(MetaError::Conflict(format!(
                "activation {id} is not {}",
                mv.from
            )));
        }
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn collaboration_keys(&self) -> Result<Vec<(CollaborationId, Vec<u8>)>, MetaError> {
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT id, wrapped_key FROM collaborations WHERE wrapped_key IS NOT NULL ORDER BY id",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|(id, key)| {
                let id = CollaborationId::parse(&id)
                    .map_err(|e| MetaError::Corrupt(format!("collaboration id: {e}")))?;
                Ok((id, key))
            })
            .collect()
    }

    async fn rewrap_keys(
        &self,
        collaborations: &[(CollaborationId, Vec<u8>)],
        settings: &[(&str, Vec<u8>)],
        audit: NewAudit,
    ) -> Result<(), MetaError> {
        let mut tx = self.writer.begin().await?;
        for (id, key) in collaborations {
            let done = sqlx::query(
                "UPDATE collaborations SET wrapped_key = ? WHERE id = ? AND wrapped_key IS NOT NULL",
            )
            .bind(key)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                return Err(MetaError::Conflict(format!(
                    "collaboration {id} has no key to re-wrap"
                )));
            }
        }
        for (name, value) in settings {
            let done = sqlx::query("UPDATE server_settings SET value = ? WHERE name = ?")
                .bind(value)
                .bind(*name)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() != 1 {
                return Err(MetaError::Conflict(format!("no setting {name} to re-wrap")));
            }
        }
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        // The old wrapped keys must not linger in the write-ahead log.
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    fn replica(&self) -> &str {
        &self.replica
    }

    async fn heartbeat(&self) -> Result<(), MetaError> {
        let at = now();
        sqlx::query(
            "INSERT INTO server_replicas (id, started_at, heartbeat_at) VALUES (?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        )
        .bind(&self.replica)
        .bind(&at)
        .bind(&at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn other_live_replicas(&self, lease: std::time::Duration) -> Result<u64, MetaError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM server_replicas WHERE id <> ? AND heartbeat_at >= ?",
        )
        .bind(&self.replica)
        .bind(orphan_cutoff(Orphaned::SilentFor(lease)))
        .fetch_one(&self.reader)
        .await?;
        Ok(n.max(0) as u64)
    }

    async fn retire(&self) -> Result<(), MetaError> {
        sqlx::query("DELETE FROM server_replicas WHERE id = ?")
            .bind(&self.replica)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, MetaError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM server_settings WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.reader)
                .await?,
        )
    }

    async fn init_setting(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, MetaError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO server_settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&mut *tx)
        .await?;
        let stored: Vec<u8> =
            sqlx::query_scalar("SELECT value FROM server_settings WHERE name = ?")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn append_audit(&self, audit: NewAudit) -> Result<AuditEntry, MetaError> {
        let mut tx = self.writer.begin().await?;
        let e = Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(e)
    }

    async fn audit_entries(
        &self,
        chain: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, MetaError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {AUDIT_COLS} FROM audit_entries WHERE chain = ? AND seq > ? ORDER BY seq LIMIT ?"
        )))
            .bind(chain)
            .bind(after as i64)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(audit_from)
            .collect()
    }

    async fn audit_page(
        &self,
        chain: &str,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<AuditEntry>, Option<ChainHead>), MetaError> {
        // One read transaction: a snapshot of the WAL database, so entries and head agree.
        let mut tx = self.reader.begin().await?;
        let entries = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {AUDIT_COLS} FROM audit_entries WHERE chain = ? AND seq > ? ORDER BY seq LIMIT ?"
        )))
        .bind(chain)
        .bind(after as i64)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(audit_from)
        .collect::<Result<Vec<_>, _>>()?;
        let head = sqlx::query("SELECT seq, hash FROM audit_heads WHERE chain = ?")
            .bind(chain)
            .fetch_optional(&mut *tx)
            .await?
            .as_ref()
            .map(head_from)
            .transpose()?;
        tx.commit().await?;
        Ok((entries, head))
    }

    async fn audit_head(&self, chain: &str) -> Result<Option<ChainHead>, MetaError> {
        sqlx::query("SELECT seq, hash FROM audit_heads WHERE chain = ?")
            .bind(chain)
            .fetch_optional(&self.reader)
            .await?
            .as_ref()
            .map(head_from)
            .transpose()
    }
}

async fn insert_membership(
    tx: &mut Transaction<'static, Sqlite>,
    m: &Membership,
) -> Result<(), MetaError> {
    sqlx::query(
        "INSERT INTO memberships (collaboration_id, org_id, abilities, status, invited_at, joined_at)
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(m.collaboration_id.to_string())
    .bind(m.org_id.to_string())
    .bind(m.abilities.to_bits())
    .bind(m.status.as_str())
    .bind(&m.invited_at)
    .bind(&m.joined_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The condition on a row's replica column `col` for work whose replica is gone: none
/// recorded, or not this one and without a heartbeat since the cutoff. Binds this replica's
/// id then the cutoff ([`orphan_cutoff`]), in that order.
fn gone(col: &str) -> String {
    format!(
        "({col} IS NULL OR ({col} <> ? AND {col} NOT IN \
         (SELECT id FROM server_replicas WHERE heartbeat_at >= ?)))"
    )
}
