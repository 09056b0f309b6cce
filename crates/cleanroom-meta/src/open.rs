//! Choosing a backend: the embedded SQLite file in a data directory (the default) or a
//! PostgreSQL database named by URL. The caller gets a `dyn MetaStore` and does not learn
//! which.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use sqlx::postgres::PgConnectOptions;

use crate::{MetaError, MetaStore, PgStore, SqliteStore};

/// Where the metadata lives.
#[derive(Clone)]
pub enum MetaSpec {
    /// `<dir>/meta.sqlite`, created if missing.
    Embedded(PathBuf),
    /// A PostgreSQL database; the URL may hold a password, so `Debug` does not show it.
    Postgres(PgUrl),
}

/// A `postgres://` or `postgresql://` URL that parses as connection options.
#[derive(Clone)]
pub struct PgUrl(String);

impl PgUrl {
    pub fn parse(url: &str) -> Result<Self, MetaError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(MetaError::Unavailable(sqlx::Error::Configuration(
                "a metadata URL starts with postgres:// or postgresql://".into(),
            )));
        }
        PgConnectOptions::from_str(url).map_err(MetaError::Unavailable)?;
        Ok(PgUrl(url.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Host, port and database only: never the user's password.
        match PgConnectOptions::from_str(&self.0) {
            Ok(o) => write!(
                f,
                "postgres://{}:{}/{}",
                o.get_host(),
                o.get_port(),
                o.get_database().unwrap_or("")
            ),
            Err(_) => f.write_str("postgres://[unparsable]"),
        }
    }
}

impl fmt::Debug for MetaSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaSpec::Embedded(dir) => f.debug_tuple("Embedded").field(dir).finish(),
            MetaSpec::Postgres(url) => f.debug_tuple("Postgres").field(url).finish(),
        }
    }
}

impl MetaSpec {
    /// The metadata of a room whose data directory is `data_dir`: `url` when one is given
    /// (`--metadata`), else the embedded SQLite file in the data directory.
    pub fn resolve(url: Option<&str>, data_dir: &Path) -> Result<Self, MetaError> {
        match url {
            Some(u) => Ok(MetaSpec::Postgres(PgUrl::parse(u)?)),
            None => Ok(MetaSpec::Embedded(data_dir.to_owned())),
        }
    }
}

/// Whether the store `spec` names already holds a room, without creating or migrating
/// anything (the embedded store: whether its database file exists).
pub async fn holds_room(spec: &MetaSpec) -> Result<bool, MetaError> {
    match spec {
        MetaSpec::Embedded(dir) => Ok(dir.join(crate::sqlite::DB_FILE).is_file()),
        MetaSpec::Postgres(url) => PgStore::holds_room(url.as_str()).await,
    }
}

/// Opens the store `spec` names, applying pending migrations.
pub async fn open(spec: &MetaSpec) -> Result<Arc<dyn MetaStore>, MetaError> {
    Ok(match spec {
        MetaSpec::Embedded(dir) => Arc::new(SqliteStore::open(dir).await?),
        MetaSpec::Postgres(url) => Arc::new(PgStore::connect(url.as_str()).await?),
    })
}
