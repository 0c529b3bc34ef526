//! Versioned schema migrations, embedded from `sql/` so the code applies exactly those files.

/// One embedded migration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Its version; applied in increasing order, each once.
    pub version: u32,
    /// Its file name.
    pub name: &'static str,
    /// Its SQL, written for the reference table name `event_inbox`.
    pub sql: &'static str,
}

impl Migration {
    /// The SQL for an inbox named `table` (already validated): every `event_inbox`, in table,
    /// index and constraint names alike, becomes `table`.
    pub fn render(&self, table: &str) -> String {
        self.render_as(super::DEFAULT_INBOX_TABLE, table)
    }

    /// The SQL with every `template` table name (and the index and constraint names built
    /// from it) renamed to `table` (already validated).
    pub fn render_as(&self, template: &str, table: &str) -> String {
        self.sql.replace(template, table)
    }
}

/// The table recording applied migrations, per inbox table.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) const MIGRATIONS_TABLE: &str = "eventflow_migrations";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_renames_table_index_and_constraint_names() {
        let migration = Migration {
            version: 1,
            name: "x",
            sql: "CREATE TABLE event_inbox (); CREATE INDEX ix_event_inbox_a ON event_inbox(a);",
        };
        assert_eq!(
            migration.render("orders_inbox"),
            "CREATE TABLE orders_inbox (); CREATE INDEX ix_orders_inbox_a ON orders_inbox(a);"
        );
    }
}
