//! Applying migrations to PostgreSQL on a live, possibly large table.
//!
//! Three rules keep writers moving while a table is migrated:
//! - A file marked [`NO_TRANSACTION_MARKER`](crate::store::NO_TRANSACTION_MARKER) runs one
//!   statement at a time, outside a transaction, so its `CREATE INDEX CONCURRENTLY` builds
//!   without blocking inserts. Its version is recorded only after its last statement; a run
//!   that stopped half-way (a crash, a cancelled build) is finished by the next one, and an
//!   index a cancelled concurrent build left `INVALID` is dropped and built again.
//! - Every other DDL statement waits at most the migration lock timeout (2 s by default) for its
//!   table lock, then gives up and retries after a pause. A waiting `ALTER TABLE` queues every
//!   writer behind it, so it must not wait long; between attempts the writers go through.
//! - One migrator per table at a time: a session-level advisory lock keyed by the table (a
//!   transaction-level one would end with the first statement of a non-transactional file). It
//!   is taken by polling `pg_try_advisory_lock`, never by waiting in `pg_advisory_lock`: a
//!   waiting statement holds a snapshot, and a concurrent index build waits for every older
//!   snapshot, so a second migrator waiting on the lock would deadlock with the first one's
//!   build. Migrators of different tables run side by side; where they create the same shared
//!   object (`IF NOT EXISTS` is not atomic in PostgreSQL's catalog) the loser retries.

use super::{pg, Pool};
use crate::backoff::Backoff;
use crate::store::migrations::{
    concurrent_index_name, is_concurrent, split_statements, Migration, PendingMigration,
    MIGRATIONS_TABLE,
};
use crate::store::StoreError;
use postgres::error::SqlState;
use postgres::Client;
use std::collections::HashSet;
use std::time::Duration;

/// The first key of the per-target migration lock (`pg_try_advisory_lock(key,
/// hashtext(target))`); any constant works, as long as every eventflow process uses the same
/// one. It differs from the cleanup lock's first key.
const MIGRATION_LOCK_KEY: i32 = 0x6566_6d67; // "efmg"

/// How long a DDL statement waits for its table lock before it gives up and retries.
pub(in crate::store) const DEFAULT_MIGRATION_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// Attempts per statement (or transactional file) that time out waiting for a lock before the
/// migration fails. With the pauses between them (0.1 s doubling to 5 s) and a 2 s lock timeout
/// that is about three minutes of a table kept busy by long transactions.
const LOCK_ATTEMPTS: u32 = 30;

/// Attempts of a statement that lost a race with another migrator creating the same shared
/// object (a unique violation in the catalog), or that a deadlock with another session's
/// snapshot cancelled (a concurrent build waits for older snapshots).
const RACE_ATTEMPTS: u32 = 5;

/// How often a second migrator asks for the migration lock while the first one works.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// What the migrations apply to.
pub(in crate::store) struct MigrationTarget<'a> {
    /// `inbox:<table>` or `outbox:<table>`, the key in the migrations table.
    pub target: String,
    /// The embedded files.
    pub migrations: &'a [Migration],
    /// A file's SQL for this table.
    pub render: Box<dyn Fn(&Migration) -> String + 'a>,
    /// How long a DDL statement waits for its lock before retrying.
    pub lock_timeout: Duration,
}

/// Applies the migrations not yet recorded for the target, each exactly once however many
/// processes race to do it.
pub(in crate::store) fn apply_migrations(
    pool: &Pool,
    target: &MigrationTarget<'_>,
) -> Result<(), StoreError> {
    let mut conn = pool.get().map_err(StoreError::Pool)?;
    let client: &mut Client = &mut conn;
    take_migration_lock(client, &target.target)?;
    // Migration statements may run long (an index build over millions of rows): no statement
    // timeout for them, whatever the connection's default; restored afterwards.
    let saved: Result<(String, String), StoreError> = client
        .query_one(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), \
             set_config('statement_timeout', '0', false)",
            &[],
        )
        .map(|row| (row.get(0), row.get(1)))
        .map_err(pg("set the migration session"));
    let result = match &saved {
        Ok(_) => apply_locked(client, target),
        Err(_) => Ok(()),
    };
    let restored = match &saved {
        Ok((statement_timeout, lock_timeout)) => client
            .execute(
                "SELECT set_config('statement_timeout', $1, false), \
                 set_config('lock_timeout', $2, false)",
                &[statement_timeout, lock_timeout],
            )
            .map(drop)
            .map_err(pg("restore the session settings")),
        Err(_) => Ok(()),
    };
    let unlocked = client
        .execute(
            "SELECT pg_advisory_unlock($1, hashtext($2))",
            &[&MIGRATION_LOCK_KEY, &target.target],
        )
        .map_err(pg("release the migration lock"));
    saved?;
    result?;
    restored?;
    unlocked.map(drop)
}

/// Applies the migrations not yet recorded for the target on the application's own client or
/// transaction, inside a transaction of its own (a savepoint when `client` is a transaction,
/// so the migration commits or rolls back with the caller's). Only targets whose files all run
/// in a transaction can be migrated so (the outbox's): a concurrent index build cannot.
///
/// One migrator per target still: the same lock key as [`apply_migrations`], taken at
/// transaction level and polled, held until the caller's transaction ends. Each file runs in
/// a savepoint with the migration lock timeout, retried as there after a lock wait or a lost
/// race; the caller's `lock_timeout` is put back afterwards.
pub(in crate::store) fn apply_migrations_on(
    client: &mut impl postgres::GenericClient,
    target: &MigrationTarget<'_>,
) -> Result<(), StoreError> {
    if let Some(migration) = target.migrations.iter().find(|m| !m.transactional()) {
        return Err(StoreError::InvalidConfig(format!(
            "{} cannot be migrated on a caller's connection: {} runs outside a transaction \
             (a concurrent index build); migrate through the store's pool instead",
            target.target, migration.name
        )));
    }
    let mut tx = client.transaction().map_err(pg("begin the migration"))?;
    loop {
        let taken: bool = tx
            .query_one(
                "SELECT pg_try_advisory_xact_lock($1, hashtext($2))",
                &[&MIGRATION_LOCK_KEY, &target.target],
            )
            .map_err(pg("take the migration lock"))?
            .get(0);
        if taken {
            break;
        }
        std::thread::sleep(LOCK_POLL);
    }
    let saved: String = tx
        .query_one(
            "SELECT current_setting('lock_timeout'), set_config('lock_timeout', $1, true)",
            &[&format!("{}ms", target.lock_timeout.as_millis().max(1))],
        )
        .map_err(pg("set the migration lock timeout"))?
        .get(0);
    let create = create_migrations_table();
    with_retries(None, &create, || {
        let mut savepoint = tx.transaction()?;
        savepoint.batch_execute(&create)?;
        savepoint.commit()
    })
    .map_err(pg("create the migrations table"))?;
    let applied: HashSet<i32> = tx
        .query(
            &format!("SELECT version FROM {MIGRATIONS_TABLE} WHERE target = $1"),
            &[&target.target],
        )
        .map_err(pg("read applied migrations"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for migration in target.migrations {
        if applied.contains(&(migration.version as i32)) {
            continue;
        }
        let sql = (target.render)(migration);
        with_retries(Some(migration), "the file", || {
            let mut savepoint = tx.transaction()?;
            savepoint.batch_execute(&sql)?;
            record(&mut savepoint, &target.target, migration)?;
            savepoint.commit()
        })
        .map_err(|e| StoreError::Migration {
            version: migration.version,
            name: migration.name,
            source: Box::new(pg("apply")(e)),
        })?;
        tracing::info!(
            target_table = %target.target,
            version = migration.version,
            name = migration.name,
            "applied migration on the caller's connection"
        );
    }
    tx.execute("SELECT set_config('lock_timeout', $1, true)", &[&saved])
        .map_err(pg("restore the lock timeout"))?;
    tx.commit().map_err(pg("commit the migration"))
}

/// Waits for the session-level migration lock by polling (see the module docs for why).
fn take_migration_lock(client: &mut Client, target: &str) -> Result<(), StoreError> {
    loop {
        let taken: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                &[&MIGRATION_LOCK_KEY, &target],
            )
            .map_err(pg("take the migration lock"))?
            .get(0);
        if taken {
            return Ok(());
        }
        std::thread::sleep(LOCK_POLL);
    }
}

fn apply_locked(client: &mut Client, target: &MigrationTarget<'_>) -> Result<(), StoreError> {
    let lock_timeout = format!("{}ms", target.lock_timeout.as_millis().max(1));
    let create = create_migrations_table();
    with_retries(None, &create, || client.batch_execute(&create))
        .map_err(pg("create the migrations table"))?;
    let applied = applied_versions(client, &target.target)?;
    for migration in target.migrations {
        if applied.contains(&(migration.version as i32)) {
            continue;
        }
        let failed = |source| StoreError::Migration {
            version: migration.version,
            name: migration.name,
            source: Box::new(source),
        };
        let sql = (target.render)(migration);
        if migration.transactional() {
            with_retries(Some(migration), "the file", || {
                let mut tx = client.transaction()?;
                tx.execute(
                    "SELECT set_config('lock_timeout', $1, true)",
                    &[&lock_timeout],
                )?;
                tx.batch_execute(&sql)?;
                record(&mut tx, &target.target, migration)?;
                tx.commit()
            })
            .map_err(|e| failed(pg("apply")(e)))?;
        } else {
            for statement in split_statements(&sql) {
                run_statement(client, migration, &statement, &lock_timeout)
                    .map_err(|e| failed(pg("apply")(e)))?;
            }
            // Recorded only now that every statement is done.
            record(client, &target.target, migration).map_err(|e| failed(pg("record")(e)))?;
        }
        tracing::info!(
            target_table = %target.target,
            version = migration.version,
            name = migration.name,
            transactional = migration.transactional(),
            "applied migration"
        );
    }
    Ok(())
}

/// One statement of a non-transactional file, on its own.
fn run_statement(
    client: &mut Client,
    migration: &Migration,
    statement: &str,
    lock_timeout: &str,
) -> Result<(), postgres::Error> {
    if is_concurrent(statement) {
        // A concurrent build or drop takes a lock that never blocks readers or writers, then
        // waits for every older transaction to end; a lock timeout would only cancel it
        // half-way and leave an invalid index behind, so it waits as long as it must.
        client.execute("SELECT set_config('lock_timeout', '0', false)", &[])?;
        return with_retries(Some(migration), statement, || {
            if let Some(index) = concurrent_index_name(statement) {
                drop_invalid_index(client, migration, index)?;
            }
            client.batch_execute(statement)
        });
    }
    client.execute(
        "SELECT set_config('lock_timeout', $1, false)",
        &[&lock_timeout],
    )?;
    with_retries(Some(migration), statement, || {
        client.batch_execute(statement)
    })
}

/// Drops `index` if a concurrent build that did not finish left it invalid, so that
/// `CREATE INDEX CONCURRENTLY IF NOT EXISTS` builds it again instead of keeping the husk.
fn drop_invalid_index(
    client: &mut Client,
    migration: &Migration,
    index: &str,
) -> Result<(), postgres::Error> {
    let invalid: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass($1) \
             AND NOT indisvalid)",
            &[&index],
        )?
        .get(0);
    if invalid {
        tracing::warn!(
            version = migration.version,
            name = migration.name,
            index,
            "rebuilding an index an interrupted concurrent build left invalid"
        );
        client.batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {index}"))?;
    }
    Ok(())
}

/// Runs `attempt` until it succeeds, retrying after a pause (logged) while it fails because
/// it waited longer than the lock timeout (at most [`LOCK_ATTEMPTS`] times) or lost a race with
/// another session (at most [`RACE_ATTEMPTS`] times).
fn with_retries(
    migration: Option<&Migration>,
    what: &str,
    mut attempt: impl FnMut() -> Result<(), postgres::Error>,
) -> Result<(), postgres::Error> {
    let mut backoff = Backoff::new();
    let (mut lock_waits, mut races) = (1, 1);
    let (version, name) = migration.map_or((0, "-"), |m| (m.version, m.name));
    loop {
        let error = match attempt() {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        let code = error.code();
        if code == Some(&SqlState::LOCK_NOT_AVAILABLE) && lock_waits < LOCK_ATTEMPTS {
            let pause = backoff.next_pause();
            tracing::warn!(
                version,
                name,
                statement = what,
                attempt = lock_waits,
                pause_ms = pause.as_millis() as u64,
                "migration timed out waiting for a table lock (other transactions hold it); \
                 retrying so writers are not queued behind it"
            );
            std::thread::sleep(pause);
            lock_waits += 1;
        } else if is_race(code) && races < RACE_ATTEMPTS {
            let pause = backoff.next_pause();
            tracing::warn!(
                version,
                name,
                statement = what,
                attempt = races,
                error = %error,
                "migration statement lost a race with another session; retrying"
            );
            std::thread::sleep(pause);
            races += 1;
        } else {
            return Err(error);
        }
    }
}

/// Errors a second attempt gets past: two sessions creating the same catalog object at once
/// (`IF NOT EXISTS` checks before it inserts), or a deadlock a concurrent index build's wait
/// for older snapshots ran into.
fn is_race(code: Option<&SqlState>) -> bool {
    [
        SqlState::UNIQUE_VIOLATION,
        SqlState::DUPLICATE_TABLE,
        SqlState::DUPLICATE_OBJECT,
        SqlState::T_R_DEADLOCK_DETECTED,
    ]
    .iter()
    .any(|race| code == Some(race))
}

fn record(
    client: &mut impl postgres::GenericClient,
    target: &str,
    migration: &Migration,
) -> Result<(), postgres::Error> {
    client
        .execute(
            &format!("INSERT INTO {MIGRATIONS_TABLE} (target, version, name) VALUES ($1, $2, $3)"),
            &[&target, &(migration.version as i32), &migration.name],
        )
        .map(drop)
}

fn applied_versions(client: &mut Client, target: &str) -> Result<HashSet<i32>, StoreError> {
    Ok(client
        .query(
            &format!("SELECT version FROM {MIGRATIONS_TABLE} WHERE target = $1"),
            &[&target],
        )
        .map_err(pg("read applied migrations"))?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// The migrations not yet recorded for the target, as they would run; changes nothing (the
/// migrations table is not created when missing).
pub(in crate::store) fn pending_migrations(
    pool: &Pool,
    target: &MigrationTarget<'_>,
) -> Result<Vec<PendingMigration>, StoreError> {
    let mut conn = pool.get().map_err(StoreError::Pool)?;
    let client: &mut Client = &mut conn;
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&MIGRATIONS_TABLE])
        .map_err(pg("look for the migrations table"))?
        .get(0);
    let applied = if exists {
        applied_versions(client, &target.target)?
    } else {
        HashSet::new()
    };
    Ok(target
        .migrations
        .iter()
        .filter(|m| !applied.contains(&(m.version as i32)))
        .map(|m| PendingMigration::new(m, &(target.render)(m), m.transactional()))
        .collect())
}

/// The table that records applied migrations, shared by every target (inbox tables, outbox
/// tables), made when the first migration runs.
fn create_migrations_table() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
            target VARCHAR(255) NOT NULL,
            version INTEGER NOT NULL,
            name VARCHAR(255) NOT NULL,
            applied_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
            PRIMARY KEY (target, version))"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::MIGRATIONS;

    /// A file that runs outside a transaction is finished by the next run when one stops
    /// half-way, so each statement must be safe to run again; its indexes build concurrently
    /// (a plain CREATE INDEX there would block writers for the whole build); and it must split
    /// cleanly (no dollar-quoted bodies the splitter does not know).
    #[test]
    fn non_transactional_files_are_rerunnable_and_build_indexes_concurrently() {
        let marked: Vec<&Migration> = MIGRATIONS.iter().filter(|m| !m.transactional()).collect();
        assert!(
            !marked.is_empty(),
            "the inbox files that add indexes are marked"
        );
        for migration in marked {
            assert!(!migration.sql.contains("$$"), "{}", migration.name);
            for statement in split_statements(migration.sql) {
                let upper = statement.to_uppercase();
                if upper.contains("CREATE INDEX") || upper.contains("CREATE UNIQUE INDEX") {
                    assert!(
                        concurrent_index_name(&statement).is_some(),
                        "{}: build concurrently, IF NOT EXISTS, named: {statement}",
                        migration.name
                    );
                }
                if upper.starts_with("CREATE TABLE")
                    || upper.starts_with("CREATE SEQUENCE")
                    || upper.contains("ADD COLUMN")
                {
                    assert!(
                        upper.contains("IF NOT EXISTS"),
                        "{}: {statement}",
                        migration.name
                    );
                }
            }
        }
    }
}
