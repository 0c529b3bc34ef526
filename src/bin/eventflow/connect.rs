//! Opening the database and Redis from the connection settings.

use super::cli::Connection;
use super::Failure;
use eventflow::store::{PostgresStore, SqliteStore, StoreError};
use eventflow::transport::RedisStreams;
use std::path::PathBuf;

/// The inbox database, whichever backend the URL names.
pub enum Database {
    /// `postgres://...`, `postgresql://...` or `host=... user=...`.
    Postgres(PostgresStore),
    /// `sqlite://path`, `sqlite:path` or a plain path.
    Sqlite(SqliteStore),
}

/// Where a database URL points.
enum Target {
    Postgres(String),
    Sqlite(PathBuf),
}

fn target(url: &str) -> Target {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") || url.contains('=') {
        return Target::Postgres(url.to_string());
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    Target::Sqlite(PathBuf::from(path))
}

/// Opens the inbox database. A SQLite file must exist unless `create` (for `migrate`).
pub fn open_database(connection: &Connection, create: bool) -> Result<Database, Failure> {
    let Some(url) = &connection.database_url else {
        return Err(Failure::Usage(
            "no database: set EVENTFLOW_DATABASE_URL or pass --database-url".into(),
        ));
    };
    let invalid = |error: StoreError| match error {
        StoreError::InvalidTableName { .. } | StoreError::InvalidConfig(_) => {
            Failure::Usage(error.to_string())
        }
        other => Failure::Admin(other.into()),
    };
    match target(url) {
        Target::Postgres(url) => PostgresStore::builder(url)
            .table(&connection.table)
            .pool_size(2)
            .connect_timeout(connection.connect_timeout)
            .build()
            .map(Database::Postgres)
            .map_err(invalid),
        Target::Sqlite(path) => {
            if !create && !path.exists() {
                return Err(Failure::Unreachable(format!(
                    "no SQLite database at {} (run `eventflow migrate` to create one)",
                    path.display()
                )));
            }
            SqliteStore::open(&path)
                .and_then(|store| store.with_table(&connection.table))
                .map(Database::Sqlite)
                .map_err(invalid)
        }
    }
}

/// The Redis transport (connections are made on first use).
pub fn open_redis(connection: &Connection) -> Result<RedisStreams, Failure> {
    RedisStreams::builder(connection.redis_url.clone())
        .pool_size(1)
        .connect_timeout(connection.connect_timeout)
        .build()
        .map_err(|error| Failure::Usage(format!("--redis-url: {error}")))
}

impl Database {
    /// The backend's name, for humans.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "PostgreSQL",
            Self::Sqlite(_) => "SQLite",
        }
    }
}
