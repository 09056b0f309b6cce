//! Moving a room's metadata from its embedded SQLite file to PostgreSQL, whole: every table,
//! row for row, in one PostgreSQL transaction, then checked — the same number of rows in every
//! table, and every audit chain verifying on PostgreSQL and ending at the head SQLite had.
//!
//! The copy is driven by PostgreSQL's own column list for each table (`information_schema`),
//! so a column the two schemas disagree on fails the migration instead of being dropped. The
//! target must hold no room yet; a failed migration leaves it as it was (the transaction rolls
//! back). Nothing is deleted from SQLite: the caller sets the file aside once this succeeds.

use std::collections::BTreeMap;

use cleanroom_core::audit::{ChainHead, verify_chain};
use sqlx::{Row, SqlitePool};

use crate::{MetaError, MetaStore, PgStore, SqliteStore};

/// Every table, parents before children (the order the foreign keys need).
pub const TABLES: &[&str] = &[
    "organisations",
    "users",
    "tokens",
    "collaborations",
    "memberships",
    "datasets",
    "audit_entries",
    "audit_heads",
    "server_settings",
    "analysis_policies",
    "privacy_ledgers",
    "analyses",
    "template_approvals",
    "dataset_stats",
    "activations",
];

/// What a migration moved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Rows per table, in [`TABLES`] order (the same on both sides, or the migration failed).
    pub rows: Vec<(String, u64)>,
    /// Audit chains verified on PostgreSQL, with their heads.
    pub chains: BTreeMap<String, ChainHead>,
}

/// A column as PostgreSQL declares it.
#[derive(Debug, Clone, Copy)]
enum ColumnKind {
    Text,
    Bytes,
    Int,
    Bool,
}

fn corrupt(what: String) -> MetaError {
    MetaError::Corrupt(what)
}

/// Copies everything in `from` into `to` and checks the result; see the module's text.
pub async fn sqlite_to_postgres(
    from: &SqliteStore,
    to: &PgStore,
) -> Result<MigrationReport, MetaError> {
    let src = from.reader_pool();
    let dst = to.pool();
    for t in TABLES {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {t}")))
            .fetch_one(dst)
            .await?;
        if n != 0 {
            return Err(MetaError::Conflict(format!(
                "the PostgreSQL database already holds a room (table {t} has {n} rows): migrate into an empty database"
            )));
        }
    }
    let mut tx = dst.begin().await?;
    let mut rows = Vec::new();
    for t in TABLES {
        let cols: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::TEXT, data_type::TEXT FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(*t)
        .fetch_all(&mut *tx)
        .await?;
        if cols.is_empty() {
            return Err(corrupt(format!("PostgreSQL has no table {t}")));
        }
        let kinds: Vec<ColumnKind> = cols
            .iter()
            .map(|(c, ty)| match ty.as_str() {
                "text" => Ok(ColumnKind::Text),
                "bytea" => Ok(ColumnKind::Bytes),
                "bigint" | "integer" => Ok(ColumnKind::Int),
                "boolean" => Ok(ColumnKind::Bool),
                other => Err(corrupt(format!(
                    "{t}.{c} has type {other}, which the migration does not know"
                ))),
            })
            .collect::<Result<_, _>>()?;
        let names: Vec<&str> = cols.iter().map(|(c, _)| c.as_str()).collect();
        let select = format!("SELECT {} FROM {t}", names.join(", "));
        let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
        let insert = format!(
            "INSERT INTO {t} ({}) VALUES ({})",
            names.join(", "),
            placeholders.join(", ")
        );
        let source_rows = sqlx::query(sqlx::AssertSqlSafe(select))
            .fetch_all(src)
            .await
            .map_err(|e| corrupt(format!("reading {t} from SQLite: {e}")))?;
        for r in &source_rows {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(insert.clone()));
            for (i, k) in kinds.iter().enumerate() {
                let col = names[i];
                let bad = |e: sqlx::Error| corrupt(format!("{t}.{col} in SQLite: {e}"));
                q = match k {
                    ColumnKind::Text => q.bind(r.try_get::<Option<String>, _>(i).map_err(bad)?),
                    ColumnKind::Bytes => q.bind(r.try_get::<Option<Vec<u8>>, _>(i).map_err(bad)?),
                    ColumnKind::Int => q.bind(r.try_get::<Option<i64>, _>(i).map_err(bad)?),
                    ColumnKind::Bool => {
                        q.bind(r.try_get::<Option<i64>, _>(i).map_err(bad)?.map(|v| v != 0))
                    }
                };
            }
            q.execute(&mut *tx)
                .await
                .map_err(|e| corrupt(format!("writing {t} to PostgreSQL: {e}")))?;
        }
        rows.push(((*t).to_owned(), source_rows.len() as u64));
    }
    tx.commit().await?;
    let chains = check(src, to, &rows).await?;
    Ok(MigrationReport { rows, chains })
}

/// Row counts equal on both sides; every chain verifies on PostgreSQL from its first entry and
/// ends at the head SQLite recorded.
async fn check(
    src: &SqlitePool,
    to: &PgStore,
    rows: &[(String, u64)],
) -> Result<BTreeMap<String, ChainHead>, MetaError> {
    for (t, n) in rows {
        let m: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {t}")))
            .fetch_one(to.pool())
            .await?;
        if m as u64 != *n {
            return Err(corrupt(format!(
                "after the migration {t} has {m} rows on PostgreSQL, {n} on SQLite"
            )));
        }
    }
    let heads: Vec<(String, i64, Vec<u8>)> =
        sqlx::query_as("SELECT chain, seq, hash FROM audit_heads ORDER BY chain")
            .fetch_all(src)
            .await?;
    let mut out = BTreeMap::new();
    for (chain, seq, hash) in heads {
        let expected = ChainHead {
            seq: u64::try_from(seq).map_err(|_| corrupt(format!("chain {chain}: head {seq}")))?,
            hash: hash
                .try_into()
                .map_err(|_| corrupt(format!("chain {chain}: head hash is not 32 bytes")))?,
        };
        let mut entries = Vec::new();
        loop {
            let page = to
                .audit_entries(&chain, entries.len() as u64, 10_000)
                .await?;
            if page.is_empty() {
                break;
            }
            entries.extend(page);
        }
        let head = verify_chain(&chain, &entries, Some(expected))
            .map_err(|b| corrupt(format!("after the migration: {b}")))?;
        out.insert(chain, head);
    }
    Ok(out)
}
