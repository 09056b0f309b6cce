//! The PostgreSQL metadata store, for rooms that outgrow one machine.
//!
//! Same semantics as the SQLite store, under PostgreSQL's default READ COMMITTED isolation
//! and without retry loops; what SQLite's single writer connection guaranteed is made explicit:
//!
//! - Every write that records an audit entry first takes a transaction-scoped advisory lock
//!   on its chain (`pg_advisory_xact_lock`), then makes its change and appends the entry in
//!   the same transaction. Appends to one chain are therefore serialised (no gap, no fork), and
//!   so are the read-then-write steps of one collaboration (invitations, dataset names, policy
//!   versions), whose audit entries go to the collaboration's chain. Chain locks are taken in
//!   one order (by lock key, before any row lock), so these transactions do not deadlock.
//! - Budget charges are one conditional `UPDATE … WHERE spent + x <= total` each: under READ
//!   COMMITTED a waiting update re-checks its condition on the row as the winner left it, so
//!   concurrent charges never overspend, whatever chain their audit entries go to. Ledgers are
//!   charged in a fixed order (by organisation id).
//! - Analysis, activation, upload and invitation state moves are compare-and-set updates
//!   (`… WHERE id = $1 AND status = $2`): of two racing moves exactly one matches.
//! - The invariants a race could otherwise break are also constraints of the schema (one
//!   operator; one ready dataset per name in a collaboration), see `migrations/postgres`.
//!
//! Crypto-shredding: closing a collaboration overwrites the wrapped keys with NULL, but
//! PostgreSQL keeps the old row versions until VACUUM reclaims them (and in its WAL and any
//! backups): the operator's retention of those is outside the store.

use std::str::FromStr;

use async_trait::async_trait;
use cleanroom_core::audit::{AuditEntry, ChainHead};
use cleanroom_core::entities::{Collaboration, Dataset, Membership, Organisation, Token, User};
use cleanroom_core::ids::{
    ActivationId, AnalysisId, CollaborationId, DatasetId, OrgId, TokenId, UserId,
};
use cleanroom_core::names::{DatasetName, OrgName};
use cleanroom_core::party::AnalysisStatus;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::MetaError;
use crate::chain::next_entry;
use crate::rows::*;
use crate::store::{
    ActivationMove, ActivationRow, AnalysisRow, ApprovalRow, Authenticated, Charge, Grant,
    LedgerRow, MetaStore, NewAudit, Orphaned, StoredPolicy,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The first key of the store's advisory locks (the second is [`chain_lock_key`]), so that they
/// do not meet other applications' advisory locks in a shared database. "clr1" in ASCII.
const CHAIN_LOCK_CLASS: i32 = 0x636c_7231;

/// Connections the store keeps by default.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// This process's replica id ([`MetaStore::replica`]).
    replica: String,
}

impl PgStore {
    /// Connects to a `postgres://` (or `postgresql://`) URL and applies pending migrations.
    /// TLS follows the URL's `sslmode` (rustls; `verify-full` checks the certificate against
    /// the web PKI roots or `sslrootcert`).
    pub async fn connect(url: &str) -> Result<Self, MetaError> {
        let opts = PgConnectOptions::from_str(url).map_err(MetaError::Unavailable)?;
        Self::connect_with(opts, DEFAULT_MAX_CONNECTIONS).await
    }

    /// Connects with explicit options (a schema through `search_path`, say) and pool size,
    /// and applies pending migrations.
    pub async fn connect_with(
        opts: PgConnectOptions,
        max_connections: u32,
    ) -> Result<Self, MetaError> {
        // A database that does not answer is reported after 10 s, not sqlx's default 30.
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| MetaError::Corrupt(format!("applying migrations: {e}")))?;
        Ok(PgStore {
            pool,
            replica: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// Whether the database at `url` (in its `search_path`) already holds a room's tables,
    /// asked on one connection and without applying migrations: a server that is not creating
    /// a room checks this first, so a wrong URL leaves the database as it found it.
    pub async fn holds_room(url: &str) -> Result<bool, MetaError> {
        let opts = PgConnectOptions::from_str(url).map_err(MetaError::Unavailable)?;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        let held = sqlx::query_scalar("SELECT to_regclass('server_settings') IS NOT NULL")
            .fetch_one(&pool)
            .await;
        pool.close().await;
        Ok(held?)
    }

    /// The connection pool (for the migration from SQLite).
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Begins a write transaction holding the lock of every chain in `chains`, taken in the
    /// order of their lock keys (not their names: two chains may share a key), so two
    /// transactions never wait on each other's chains.
    async fn begin_on<'a>(
        &self,
        chains: impl IntoIterator<Item = &'a str>,
    ) -> Result<Transaction<'static, Postgres>, MetaError> {
        let mut keys: Vec<i32> = chains.into_iter().map(chain_lock_key).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut tx = self.pool.begin().await?;
        for key in keys {
            lock_key(&mut tx, key).await?;
        }
        Ok(tx)
    }

    /// Begins a write transaction that will append to `chain`, holding its lock.
    async fn begin(&self, chain: &str) -> Result<Transaction<'static, Postgres>, MetaError> {
        self.begin_on([chain]).await
    }

    async fn append_in(
        tx: &mut Transaction<'static, Postgres>,
        a: NewAudit,
    ) -> Result<AuditEntry, MetaError> {
        // Held already when the transaction began with `begin`; taking it again is free and
        // keeps this function correct on its own.
        lock_chain(tx, &a.chain).await?;
        let head = sqlx::query("SELECT seq, hash FROM audit_heads WHERE chain = $1")
            .bind(&a.chain)
            .fetch_optional(&mut **tx)
            .await?
            .as_ref()
            .map(head_from)
            .transpose()?;
        let last: Option<i64> =
            sqlx::query_scalar("SELECT MAX(seq) FROM audit_entries WHERE chain = $1")
                .bind(&a.chain)
                .fetch_one(&mut **tx)
                .await?;
        let e = next_entry(a, head, last)?;
        sqlx::query(
            "INSERT INTO audit_entries (chain, seq, at, actor, action, target, outcome, detail, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
            "INSERT INTO audit_heads (chain, seq, hash) VALUES ($1, $2, $3)
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
        tx: &mut Transaction<'static, Postgres>,
        org: &Organisation,
        admin: &User,
        token: &Token,
    ) -> Result<(), MetaError> {
        sqlx::query(
            "INSERT INTO organisations (id, name, is_operator, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(org.id.to_string())
        .bind(org.name.as_str())
        .bind(org.is_operator)
        .bind(&org.created_at)
        .execute(&mut **tx)
        .await
        .map_err(|e| {
            if let sqlx::Error::Database(db) = &e
                && db.constraint() == Some("organisations_one_operator")
            {
                return MetaError::Conflict(
                    "this server is initialised already (an operator exists)".into(),
                );
            }
            conflict_as(
                e,
                format!("an organisation named {} exists already", org.name),
            )
        })?;
        Self::insert_user_token(tx, admin, token).await
    }

    async fn insert_user_token(
        tx: &mut Transaction<'static, Postgres>,
        user: &User,
        token: &Token,
    ) -> Result<(), MetaError> {
        sqlx::query(
            "INSERT INTO users (id, org_id, name, role, created_at) VALUES ($1, $2, $3, $4, $5)",
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
        tx: &mut Transaction<'static, Postgres>,
        t: &Token,
    ) -> Result<(), MetaError> {
        sqlx::query("INSERT INTO tokens (id, user_id, label, secret_hash, created_at, revoked_at, expires_at, parent_id) VALUES ($1, $2, $3, $4, $5, NULL, $6, $7)")
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

const NAME_TAKEN_WHILE_UPLOADING: &str = "another member's dataset of the same name became \
    available in this collaboration while this one was uploading: declare yours under another name";

fn conflict_as(e: sqlx::Error, msg: String) -> MetaError {
    match MetaError::from(e) {
        MetaError::Conflict(_) => MetaError::Conflict(msg),
        other => other,
    }
}

#[async_trait]
impl MetaStore for PgStore {
    async fn close(&self) {
        self.pool.close().await;
    }

    async fn bootstrap_operator(
        &self,
        org: &Organisation,
        admin: &User,
        token: &Token,
        audit: NewAudit,
    ) -> Result<(), MetaError> {
        let mut tx = self.begin(&audit.chain).await?;
        let exists: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM organisations WHERE is_operator")
                .fetch_one(&mut *tx)
                .await?;
        if exists > 0 {
            return Err(MetaError::Conflict(
                "this server is initialised already (an operator exists)".into(),
            ));
        }
        // Two first starts racing with different chains: the schema's one-operator index stops
        // the second.
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
        let mut tx = self.begin(&audit.chain).await?;
        Self::insert_org_admin_token(&mut tx, org, admin, token).await?;
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_orgs(&self) -> Result<Vec<Organisation>, MetaError> {
        sqlx::query("SELECT * FROM organisations ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| org_from(r, ""))
            .collect()
    }

    async fn find_org(&self, name: &OrgName) -> Result<Option<Organisation>, MetaError> {
        sqlx::query("SELECT * FROM organisations WHERE name = $1")
            .bind(name.as_str())
            .fetch_optional(&self.pool)
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
        let mut tx = self.begin(&audit.chain).await?;
        Self::insert_user_token(&mut tx, user, token).await?;
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_users(&self, org: OrgId) -> Result<Vec<User>, MetaError> {
        sqlx::query("SELECT * FROM users WHERE org_id = $1 ORDER BY name")
            .bind(org.to_string())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| user_from(r, ""))
            .collect()
    }

    async fn get_user(&self, id: UserId) -> Result<Option<User>, MetaError> {
        sqlx::query("SELECT * FROM users WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .map(|r| user_from(&r, ""))
            .transpose()
    }

    async fn create_token(&self, token: &Token, audit: NewAudit) -> Result<(), MetaError> {
        let mut tx = self.begin(&audit.chain).await?;
        Self::insert_token(&mut tx, token).await?;
        Self::append_in(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_tokens(&self, org: OrgId) -> Result<Vec<(Token, User)>, MetaError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_USER_COLS} FROM tokens t JOIN users u ON u.id = t.user_id
             WHERE u.org_id = $1 ORDER BY u.name, t.created_at"
        )))
        .bind(org.to_string())
        .fetch_all(&self.pool)
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
        let mut tx = self.begin(&audit.chain).await?;
        let done = sqlx::query(
            "UPDATE tokens SET revoked_at = $1
             WHERE id = $2 AND revoked_at IS NULL
               AND user_id IN (SELECT id FROM users WHERE org_id = $3)",
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
        sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE parent_id = $2 AND revoked_at IS NULL",
        )
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
             WHERE t.id = $1"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
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
        let mut tx = self.begin(&audit.chain).await?;
        sqlx::query(
            "INSERT INTO collaborations (id, name, description, creator_org_id, status, wrapped_key, created_at, closed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
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
            "SELECT {COLLAB_COLS} FROM collaborations c WHERE c.id = $1"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
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
             WHERE m.org_id = $1 ORDER BY c.created_at, c.name"
        )))
        .bind(org.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((collab_from(r)?, membership_from(r)?)))
            .collect()
    }

    async fn collaboration_key(&self, id: CollaborationId) -> Result<Option<Vec<u8>>, MetaError> {
        Ok(sqlx::query_scalar::<_, Option<Vec<u8>>>(
            "SELECT wrapped_key FROM collaborations WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
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
             WHERE m.collaboration_id = $1 AND m.org_id = $2"
        )))
        .bind(collab.to_string())
        .bind(org.to_string())
        .fetch_optional(&self.pool)
        .await?
        .map(|r| membership_from(&r))
        .transpose()
    }

    async fn list_members(&self, collab: CollaborationId) -> Result<Vec<Membership>, MetaError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {MEMBER_COLS} FROM memberships m JOIN organisations mo ON mo.id = m.org_id
             WHERE m.collaboration_id = $1 ORDER BY m.invited_at, mo.name"
        )))
        .bind(collab.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(membership_from)
        .collect()
    }

    async fn invite(&self, m: &Membership, audit: NewAudit) -> Result<(), MetaError> {
        let mut tx = self.begin(&audit.chain).await?;
        // A declined invitation may be renewed; anything else is a conflict.
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT status FROM memberships WHERE collaboration_id = $1 AND org_id = $2",
        )
        .bind(m.collaboration_id.to_string())
        .bind(m.org_id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        match existing.as_deref() {
            None => insert_membership(&mut tx, m).await?,
            Some("declined") => {
                sqlx::query(
                    "UPDATE memberships SET abilities = $1, status = 'invited', invited_at = $2, joined_at = NULL
                     WHERE collaboration_id = $3 AND org_id = $4",
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
        let mut tx = self.begin(&audit.chain).await?;
        let (status, joined) = if accept {
            ("active", Some(now()))
        } else {
            ("declined", None)
        };
        let done = sqlx::query(
            "UPDATE memberships SET status = $1, joined_at = $2
             WHERE collaboration_id = $3 AND org_id = $4 AND status = 'invited'",
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
        let mut tx = self.begin(&audit.chain).await?;
        let done = sqlx::query(
            "UPDATE collaborations SET status = 'closed', wrapped_key = NULL, closed_at = $1
             WHERE id = $2 AND status = 'open'",
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
             WHERE collaboration_id = $1 AND wrapped_key IS NOT NULL",
        )
        .bind(collab.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let results = sqlx::query(
            "UPDATE analyses SET result = NULL WHERE collaboration_id = $1 AND result IS NOT NULL",
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
        Ok(shredded)
    }

    async fn create_dataset(
        &self,
        d: &Dataset,
        wrapped_key: &[u8],
        audit: NewAudit,
    ) -> Result<(), MetaError> {
        let mut tx = self.begin(&audit.chain).await?;
        // Another member's dataset of this name counts only once every member sees it.
        let visible: Option<String> = sqlx::query_scalar(
            "SELECT id FROM datasets WHERE collaboration_id = $1 AND name = $2 AND owner_org_id <> $3
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, $8, NULL)",
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
            "{DATASET_SELECT} WHERE d.collaboration_id = $1 AND d.name = $2 ORDER BY d.created_at"
        )))
        .bind(collab.to_string())
        .bind(name.as_str())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(dataset_from)
        .collect()
    }

    async fn list_datasets(&self, collab: CollaborationId) -> Result<Vec<Dataset>, MetaError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{DATASET_SELECT} WHERE d.collaboration_id = $1 ORDER BY d.created_at, d.name"
        )))
        .bind(collab.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(dataset_from)
        .collect()
    }

    async fn dataset_key(&self, id: DatasetId) -> Result<Option<Vec<u8>>, MetaError> {
        Ok(sqlx::query_scalar::<_, Option<Vec<u8>>>(
            "SELECT wrapped_key FROM datasets WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .flatten())
    }

    async fn begin_upload(&self, id: DatasetId) -> Result<(), MetaError> {
        let done = sqlx::query(
            "UPDATE datasets SET status = 'uploading', upload_replica = $1
             WHERE id = $2 AND status = 'pending'",
        )
        .bind(&self.replica)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() != 1 {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM datasets WHERE id = $1")
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
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
        let mut tx = self.begin(&audit.chain).await?;
        // Names are unique among the datasets every member sees: another member's dataset of
        // the same name may have become ready while this one was private.
        let clash: Option<String> = sqlx::query_scalar(
            "SELECT o.id FROM datasets o JOIN datasets d ON d.collaboration_id = o.collaboration_id
               AND d.name = o.name AND d.id <> o.id
             WHERE d.id = $1 AND o.status IN ('ready', 'shredded') LIMIT 1",
        )
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        if clash.is_some() {
            return Err(MetaError::Conflict(NAME_TAKEN_WHILE_UPLOADING.into()));
        }
        let done = sqlx::query(
            "UPDATE datasets SET status = 'ready', row_count = $1, byte_size = $2, ready_at = $3
             WHERE id = $4 AND status = 'uploading'",
        )
        .bind(db_int(rows, "a row count")?)
        .bind(db_int(bytes, "a file size")?)
        .bind(now())
        .bind(id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict_as(e, NAME_TAKEN_WHILE_UPLOADING.into()))?;
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
        let mut tx = self.begin(&audit.chain).await?;
        let done = sqlx::query(
            "UPDATE datasets SET status = 'pending', upload_replica = NULL
             WHERE id = $1 AND status = 'uploading'",
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
        .bind(silent_secs(orphaned))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(dataset_from)
        .collect()
    }

    async fn recover_uploads(&self) -> Result<Vec<(CollaborationId, DatasetId)>, MetaError> {
        let rows = sqlx::query(
            "SELECT collaboration_id, id FROM datasets WHERE status IN ('ready', 'uploading')",
        )
        .fetch_all(&self.pool)
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
        let mut tx = self.begin(&audit.chain).await?;
        let last: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM analysis_policies WHERE dataset_id = $1")
                .bind(dataset.to_string())
                .fetch_one(&mut *tx)
                .await?;
        let version = last.unwrap_or(0) + 1;
        sqlx::query(
            "INSERT INTO analysis_policies (dataset_id, version, policy, set_by, created_at)
             VALUES ($1, $2, $3, $4, $5)",
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
             WHERE dataset_id = $1 ORDER BY version DESC LIMIT 1",
        )
        .bind(dataset.to_string())
        .fetch_optional(&self.pool)
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
        let mut tx = self.begin(&audit.chain).await?;
        let existing = sqlx::query(
            "SELECT epsilon_total, delta_total FROM privacy_ledgers
             WHERE collaboration_id = $1 AND org_id = $2 FOR UPDATE",
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
                     VALUES ($1, $2, $3, $4, $5, $6, 0, 0, $7)",
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
                    "UPDATE privacy_ledgers SET epsilon_total = $1, delta_total = $2,
                         epsilon_per_query = COALESCE($3, epsilon_per_query),
                         delta_per_query = COALESCE($4, delta_per_query), updated_at = $5
                     WHERE collaboration_id = $6 AND org_id = $7",
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
            "{LEDGER_SELECT} WHERE l.collaboration_id = $1 AND l.org_id = $2"
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
            "{LEDGER_SELECT} WHERE l.collaboration_id = $1 ORDER BY o.name"
        )))
        .bind(collab.to_string())
        .fetch_all(&self.pool)
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
        let mut tx = self
            .begin_on(audits.iter().map(|a| a.chain.as_str()))
            .await?;
        // Ledgers in one order, so two analyses charging the same ledgers never deadlock.
        let mut charges: Vec<&Charge> = charges.iter().collect();
        charges.sort_by_key(|c| c.org_id.to_string());
        for c in charges {
            let (e, d) = (
                db_int(c.epsilon, "an epsilon charge")?,
                db_int(c.delta, "a delta charge")?,
            );
            // Check and debit in one statement: a concurrent charge of the same ledger waits
            // for this transaction, then re-checks the condition on the row as it left it
            // (READ COMMITTED), so concurrent analyses cannot overspend.
            let done = sqlx::query(
                "UPDATE privacy_ledgers
                 SET epsilon_spent = epsilon_spent + $1, delta_spent = delta_spent + $2, updated_at = $3
                 WHERE collaboration_id = $4 AND org_id = $5
                   AND $6 <= epsilon_per_query AND $7 <= delta_per_query
                   AND epsilon_spent + $8 <= epsilon_total AND delta_spent + $9 <= delta_total",
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'running', NULL, NULL, NULL, $10, NULL,
                 $11)",
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
        let mut tx = self.begin(&audit.chain).await?;
        let (status, res, err) = match result {
            Ok(r) => (AnalysisStatus::Released, Some(r), None),
            Err(e) => (AnalysisStatus::Failed, None, Some(e)),
        };
        let done = sqlx::query(
            "UPDATE analyses SET status = $1, result = $2, error = $3, finished_at = $4
             WHERE id = $5 AND status = 'running'",
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
        let mut tx = self.begin(&audit.chain).await?;
        sqlx::query(
            "INSERT INTO analyses (id, collaboration_id, org_id, actor, kind, request, fingerprint,
                 receivers, charges, status, result, error, reused_from, created_at, finished_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'released', $10, NULL, $11, $12, $13)",
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
            "{ANALYSIS_SELECT} WHERE id = $1"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
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
        .bind(silent_secs(orphaned))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(analysis_from)
        .collect()
    }

    async fn list_analyses(&self, collab: CollaborationId) -> Result<Vec<AnalysisRow>, MetaError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{ANALYSIS_SELECT} WHERE collaboration_id = $1 ORDER BY created_at, id"
        )))
        .bind(collab.to_string())
        .fetch_all(&self.pool)
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
            "{ANALYSIS_SELECT} WHERE collaboration_id = $1 AND fingerprint = $2 AND status = 'released'
               AND result IS NOT NULL AND reused_from IS NULL
             ORDER BY created_at DESC LIMIT 1"
        )))
        .bind(collab.to_string())
        .bind(fingerprint)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(analysis_from)
        .transpose()
    }

    async fn dataset_stats(&self, dataset: DatasetId) -> Result<Option<String>, MetaError> {
        Ok(
            sqlx::query_scalar("SELECT stats FROM dataset_stats WHERE dataset_id = $1")
                .bind(dataset.to_string())
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn set_dataset_stats(&self, dataset: DatasetId, stats: &str) -> Result<(), MetaError> {
        sqlx::query(
            "INSERT INTO dataset_stats (dataset_id, stats, computed_at) VALUES ($1, $2, $3)
             ON CONFLICT (dataset_id) DO NOTHING",
        )
        .bind(dataset.to_string())
        .bind(stats)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn approve_template(&self, row: &ApprovalRow, audit: NewAudit) -> Result<(), MetaError> {
        let mut tx = self.begin(&audit.chain).await?;
        sqlx::query(
            "INSERT INTO template_approvals (dataset_id, template, version, approved_by, approved_at)
             VALUES ($1, $2, $3, $4, $5)",
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
        let mut tx = self.begin(&audit.chain).await?;
        let done = sqlx::query(
            "DELETE FROM template_approvals WHERE dataset_id = $1 AND template = $2 AND version = $3",
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
            "{APPROVAL_SELECT} WHERE d.collaboration_id = $1 ORDER BY a.approved_at"
        )))
        .bind(collab.to_string())
        .fetch_all(&self.pool)
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
        let mut tx = self.begin(&audit.chain).await?;
        sqlx::query(
            "INSERT INTO activations (id, collaboration_id, org_id, actor, source_dataset_id,
                 target_dataset_id, request, policy_version, status, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9)",
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
            "{ACTIVATION_SELECT} WHERE id = $1"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
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
            "{ACTIVATION_SELECT} WHERE collaboration_id = $1 ORDER BY created_at, id"
        )))
        .bind(collab.to_string())
        .fetch_all(&self.pool)
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
        .bind(silent_secs(orphaned))
        .fetch_all(&self.pool)
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
        let mut tx = self.begin(&audit.chain).await?;
        let at = now();
        // Check and move in one statement: of two racing moves out of the same state, the
        // second waits for the first's row lock, re-checks `status` and matches nothing.
        let done = sqlx::query(
            "UPDATE activations SET status = $1,
                 decided_by = COALESCE($2, decided_by),
                 decided_at = CASE WHEN $3 IS NULL THEN decided_at ELSE $4 END,
                 delivered = COALESCE($5, delivered),
                 finished_at = CASE WHEN $6 THEN $7 ELSE finished_at END,
                 replica = CASE WHEN $1 = 'consumed' THEN $10 ELSE replica END
             WHERE id = $8 AND status = $9",
        )
        .bind(mv.to.as_str())
        .bind(mv.decided_by)
        .bind(mv.decided_by)
        .bind(&at)
        .bind(mv.delivered.map(|n| n as i64))
        .bind(mv.finished)
        .bind(&at)
        .bind(id.to_string())
        .bind(mv.from.as_str())
        .bind(&self.replica)
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
        .fetch_all(&self.pool)
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
        let mut tx = self.begin(&audit.chain).await?;
        for (id, key) in collaborations {
            let done = sqlx::query(
                "UPDATE collaborations SET wrapped_key = $1 WHERE id = $2 AND wrapped_key IS NOT NULL",
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
            let done = sqlx::query("UPDATE server_settings SET value = $1 WHERE name = $2")
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
        Ok(())
    }

    fn replica(&self) -> &str {
        &self.replica
    }

    async fn heartbeat(&self) -> Result<(), MetaError> {
        // The database's clock, not this machine's: replicas on machines whose clocks differ
        // by more than the lease must not take each other for dead.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO server_replicas (id, started_at, heartbeat_at)
             VALUES ($1, {DB_NOW}, {DB_NOW})
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at"
        )))
        .bind(&self.replica)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn other_live_replicas(&self, lease: std::time::Duration) -> Result<u64, MetaError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM server_replicas WHERE id <> $1 AND heartbeat_at >= to_char( \
               (clock_timestamp() AT TIME ZONE 'UTC') - make_interval(secs => $2), \
               'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
        )
        .bind(&self.replica)
        .bind(lease.as_secs_f64())
        .fetch_one(&self.pool)
        .await?;
        Ok(n.max(0) as u64)
    }

    async fn retire(&self) -> Result<(), MetaError> {
        sqlx::query("DELETE FROM server_replicas WHERE id = $1")
            .bind(&self.replica)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn get_setting(&self, name: &str) -> Result<Option<Vec<u8>>, MetaError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM server_settings WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn init_setting(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, MetaError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO server_settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&mut *tx)
        .await?;
        let stored: Vec<u8> =
            sqlx::query_scalar("SELECT value FROM server_settings WHERE name = $1")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn append_audit(&self, audit: NewAudit) -> Result<AuditEntry, MetaError> {
        let mut tx = self.begin(&audit.chain).await?;
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
            "SELECT {AUDIT_COLS} FROM audit_entries WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        )))
            .bind(chain)
            .bind(after as i64)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
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
        // One snapshot for both reads (READ COMMITTED would take one per statement), so
        // entries and head agree. A read-only REPEATABLE READ transaction never fails with a
        // serialisation error.
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let entries = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {AUDIT_COLS} FROM audit_entries WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        )))
        .bind(chain)
        .bind(after as i64)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(audit_from)
        .collect::<Result<Vec<_>, _>>()?;
        let head = sqlx::query("SELECT seq, hash FROM audit_heads WHERE chain = $1")
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
        sqlx::query("SELECT seq, hash FROM audit_heads WHERE chain = $1")
            .bind(chain)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(head_from)
            .transpose()
    }
}

async fn insert_membership(
    tx: &mut Transaction<'static, Postgres>,
    m: &Membership,
) -> Result<(), MetaError> {
    sqlx::query(
        "INSERT INTO memberships (collaboration_id, org_id, abilities, status, invited_at, joined_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
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

/// The second key of a chain's advisory lock: FNV-1a of its name, computed here (stable across
/// versions, and known before any lock is taken, so locks can be taken in key order). Chains
/// that hash alike share a lock, which only serialises more.
fn chain_lock_key(chain: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in chain.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h as i32
}

/// Takes the transaction-scoped lock of an audit chain: until the transaction ends, no other
/// transaction appends to the chain.
async fn lock_chain(tx: &mut Transaction<'static, Postgres>, chain: &str) -> Result<(), MetaError> {
    lock_key(tx, chain_lock_key(chain)).await
}

async fn lock_key(tx: &mut Transaction<'static, Postgres>, key: i32) -> Result<(), MetaError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(CHAIN_LOCK_CLASS)
        .bind(key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The database's clock in the stored time form (RFC 3339, UTC, milliseconds).
const DB_NOW: &str =
    "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";

/// The condition on a row's replica column `col` for work whose replica is gone: none
/// recorded, or not this one and without a heartbeat in the last `$2` seconds by the
/// database's clock (heartbeats are written by that clock too). Binds `$1` this replica's id
/// and `$2` the seconds ([`silent_secs`]); the query must have no other binds.
fn gone(col: &str) -> String {
    format!(
        "({col} IS NULL OR ({col} <> $1 AND {col} NOT IN \
         (SELECT id FROM server_replicas WHERE heartbeat_at >= to_char( \
           (clock_timestamp() AT TIME ZONE 'UTC') - make_interval(secs => $2), \
           'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))))"
    )
}

/// The silence after which a replica is gone, in seconds, for [`gone`]: for `AllButMine` a
/// cutoff far in the future, so every other replica is gone.
fn silent_secs(o: Orphaned) -> f64 {
    match o {
        Orphaned::AllButMine => -1e9,
        Orphaned::SilentFor(d) => d.as_secs_f64(),
    }
}
