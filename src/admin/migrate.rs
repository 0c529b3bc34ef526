//! Creating and upgrading the inbox tables, and telling which migrations a table has.

use super::{Admin, AdminResult};
use crate::store::{InboxStore, Migration, PendingMigration};

/// One embedded migration, and whether the table has it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationState {
    /// Its version; migrations apply in increasing order.
    pub version: u32,
    /// Its file name.
    pub name: &'static str,
    /// Whether it is recorded as applied to the table.
    pub applied: bool,
}

impl MigrationState {
    /// Each of `all`, applied unless it is `pending`.
    pub(super) fn list(all: &[Migration], pending: &[PendingMigration]) -> Vec<Self> {
        all.iter()
            .map(|migration| Self {
                version: migration.version,
                name: migration.name,
                applied: !pending.iter().any(|p| p.version == migration.version),
            })
            .collect()
    }
}

impl<S: InboxStore> Admin<S> {
    /// Creates or upgrades the tables (idempotent; safe from several processes at once) and
    /// returns the migrations that were missing, now applied (by this call, or by a process
    /// migrating at the same time).
    ///
    /// ```
    /// # use eventflow::{admin::Admin, SqliteStore};
    /// # use std::sync::Arc;
    /// let admin = Admin::new(Arc::new(SqliteStore::open_in_memory()?));
    /// let applied = admin.migrate()?;
    /// assert!(!applied.is_empty(), "a new database gets every migration");
    /// assert!(admin.migrate()?.is_empty(), "and the second run has nothing to do");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn migrate(&self) -> AdminResult<Vec<PendingMigration>> {
        let pending = self.store.pending_migrations()?;
        self.store.migrate()?;
        Ok(pending)
    }

    /// The migrations [`migrate`](Self::migrate) would apply, in order, with their
    /// statements; changes nothing.
    ///
    /// ```
    /// # use eventflow::{admin::Admin, SqliteStore};
    /// # use std::sync::Arc;
    /// let admin = Admin::new(Arc::new(SqliteStore::open_in_memory()?));
    /// let pending = admin.pending_migrations()?;
    /// for migration in &pending {
    ///     println!("would apply {} ({})", migration.version, migration.name);
    /// }
    /// admin.migrate()?;
    /// assert!(admin.pending_migrations()?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pending_migrations(&self) -> AdminResult<Vec<PendingMigration>> {
        Ok(self.store.pending_migrations()?)
    }

    /// Every embedded migration of the inbox tables, in order, and whether it is applied.
    ///
    /// ```
    /// use eventflow::admin::Admin;
    /// use eventflow::SqliteStore;
    /// use std::sync::Arc;
    ///
    /// let admin = Admin::new(Arc::new(SqliteStore::open_in_memory()?));
    /// assert!(admin.migrations()?.iter().all(|m| !m.applied));
    /// let applied = admin.migrate()?;
    /// assert_eq!(applied.len(), admin.migrations()?.len());
    /// assert!(admin.migrations()?.iter().all(|m| m.applied));
    /// assert!(admin.migrate()?.is_empty(), "nothing left to apply");
    /// # Ok::<(), eventflow::admin::AdminError>(())
    /// ```
    pub fn migrations(&self) -> AdminResult<Vec<MigrationState>> {
        let pending = self.store.pending_migrations()?;
        Ok(MigrationState::list(self.store.migrations(), &pending))
    }

    /// Applies what only consumers with per-aggregate order need (see
    /// [`InboxStore::migrate_ordered`]; on PostgreSQL an index, built concurrently), after
    /// [`migrate`](Self::migrate), and returns the migrations that were missing, now applied.
    /// For deployments that migrate before rolling out ordered consumers built with
    /// `.migrations(Migrations::Verify)`.
    ///
    /// ```
    /// # use eventflow::{admin::Admin, SqliteStore};
    /// # use std::sync::Arc;
    /// let admin = Admin::new(Arc::new(SqliteStore::open_in_memory()?));
    /// admin.migrate()?;
    /// // SQLite's inbox migrations already make all that ordered claims need.
    /// assert!(admin.migrate_ordered()?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn migrate_ordered(&self) -> AdminResult<Vec<PendingMigration>> {
        let pending = self.store.pending_ordered_migrations()?;
        self.store.migrate_ordered()?;
        Ok(pending)
    }

    /// The migrations [`migrate_ordered`](Self::migrate_ordered) would apply, in order, with
    /// their statements; changes nothing.
    pub fn pending_ordered_migrations(&self) -> AdminResult<Vec<PendingMigration>> {
        Ok(self.store.pending_ordered_migrations()?)
    }

    /// Every migration of [`migrate_ordered`](Self::migrate_ordered), in order, and whether it
    /// is applied.
    pub fn ordered_migrations(&self) -> AdminResult<Vec<MigrationState>> {
        let pending = self.store.pending_ordered_migrations()?;
        Ok(MigrationState::list(
            self.store.ordered_migrations(),
            &pending,
        ))
    }
}
