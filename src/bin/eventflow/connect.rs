//! Opening the database and Redis from the connection settings.

use super::cli::Connection;
use super::Failure;
use eventflow::admin::OutboxAdmin;
use eventflow::redact::redact;
use eventflow::store::outbox::{OutboxStore, PostgresOutbox, SqliteOutbox};
use eventflow::store::{PostgresStore, SqliteStore, StoreError};
use eventflow::tls::TlsSettings;
use eventflow::transport::RedisStreams;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// A SQLite file; `explicit` when written as `sqlite:path` (a new file may then be created).
    Sqlite {
        path: PathBuf,
        explicit: bool,
    },
}

/// Reads a database URL. A misspelt scheme (`postgress://`) is refused rather than taken for a
/// file name.
fn target(url: &str) -> Result<Target, Failure> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") || url.contains('=') {
        return Ok(Target::Postgres(url.to_string()));
    }
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        return Ok(Target::Sqlite {
            path: PathBuf::from(path),
            explicit: true,
        });
    }
    if url.contains("://") {
        return Err(Failure::Usage(format!(
            "{} is not a database URL: use postgres://..., key=value (host=... dbname=...), \
             or sqlite:path",
            redact(url)
        )));
    }
    Ok(Target::Sqlite {
        path: PathBuf::from(url),
        explicit: false,
    })
}

/// The database URL, or a usage error saying how to give one.
fn database_url(connection: &Connection) -> Result<&str, Failure> {
    connection.database_url.as_deref().ok_or_else(|| {
        Failure::Usage("no database: set EVENTFLOW_DATABASE_URL or pass --database-url".into())
    })
}

/// A bad table name or connection string is a usage error; anything else is the store's.
fn invalid(error: StoreError) -> Failure {
    match error {
        StoreError::InvalidTableName { .. } | StoreError::InvalidConfig(_) | StoreError::Tls(_) => {
            Failure::Usage(error.to_string())
        }
        other => Failure::Admin(other.into()),
    }
}

/// A SQLite file must exist unless `create` (for `migrate`) and it was written as
/// `sqlite:path`: opening would create an empty one, and a plain path may be a typo.
fn check_exists(path: &Path, explicit: bool, create: bool) -> Result<(), Failure> {
    if path.exists() || (create && explicit) {
        return Ok(());
    }
    // A string with no scheme that is not a path (`user:password@host/db`) lands here.
    let shown = redact(&path.to_string_lossy());
    if create {
        return Err(Failure::Usage(format!(
            "no SQLite database at {shown}; to create one, write it as sqlite:{shown}"
        )));
    }
    Err(Failure::Unreachable(format!(
        "no SQLite database at {shown} (create one with `eventflow migrate` and \
         --database-url sqlite:{shown})"
    )))
}

/// The backend the database URL names, for humans: "PostgreSQL" or "SQLite".
pub fn database_kind(connection: &Connection) -> Result<&'static str, Failure> {
    Ok(match target(database_url(connection)?)? {
        Target::Postgres(_) => "PostgreSQL",
        Target::Sqlite { .. } => "SQLite",
    })
}

/// Opens the inbox database. A SQLite file must exist unless `create` (for `migrate`).
pub fn open_database(connection: &Connection, create: bool) -> Result<Database, Failure> {
    match target(database_url(connection)?)? {
        Target::Postgres(url) => PostgresStore::builder(url)
            .table(&connection.table)
            .pool_size(2)
            .connect_timeout(connection.connect_timeout)
            .build()
            .map(Database::Postgres)
            .map_err(invalid),
        Target::Sqlite { path, explicit } => {
            check_exists(&path, explicit, create)?;
            SqliteStore::open(&path)
                .and_then(|store| store.with_table(&connection.table))
                .map(Database::Sqlite)
                .map_err(invalid)
        }
    }
}

/// Opens the outbox table `--outbox-table` in the same database. A SQLite file must exist
/// unless `create` (for `migrate`).
pub fn open_outbox(connection: &Connection, create: bool) -> Result<OutboxAdmin, Failure> {
    let store: Arc<dyn OutboxStore> = match target(database_url(connection)?)? {
        Target::Postgres(url) => Arc::new(
            PostgresOutbox::builder(url)
                .table(&connection.outbox_table)
                .pool_size(1)
                .connect_timeout(connection.connect_timeout)
                .build()
                .map_err(invalid)?,
        ),
        Target::Sqlite { path, explicit } => {
            check_exists(&path, explicit, create)?;
            Arc::new(
                SqliteOutbox::open(&path)
                    .and_then(|store| store.with_table(&connection.outbox_table))
                    .map_err(invalid)?,
            )
        }
    };
    Ok(OutboxAdmin::new(store))
}

/// The Redis transport (connections are made on first use).
pub fn open_redis(connection: &Connection) -> Result<RedisStreams, Failure> {
    let mut tls = TlsSettings::new();
    if let Some(ca_file) = &connection.redis_ca_file {
        tls = tls.ca_file(ca_file);
    }
    if let (Some(cert), Some(key)) = (&connection.redis_client_cert, &connection.redis_client_key) {
        tls = tls.client_cert(cert, key);
    }
    RedisStreams::builder(connection.redis_url.clone())
        .tls(tls)
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
