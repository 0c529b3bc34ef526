//! Versioned schema migrations, embedded from `sql/` so the code applies exactly those files,
//! and what a deployment chooses to do with them at `start()`.

/// The first line of a migration file that must run outside a transaction (PostgreSQL's
/// `CREATE INDEX CONCURRENTLY` cannot run inside one). Such a file runs one statement at a time,
/// so each of its statements must be safe to run again (`IF NOT EXISTS`): a run that stops
/// half-way is finished by the next one.
pub const NO_TRANSACTION_MARKER: &str = "-- eventflow: no-transaction";

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

    /// Whether the file runs in one transaction (all or nothing), which is every file not
    /// starting with [`NO_TRANSACTION_MARKER`].
    pub fn transactional(&self) -> bool {
        !self.sql.starts_with(NO_TRANSACTION_MARKER)
    }
}

/// A migration not yet applied to a table, as `eventflow migrate --dry-run` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingMigration {
    /// Its version.
    pub version: u32,
    /// Its file name.
    pub name: &'static str,
    /// Whether it runs in one transaction; when false it runs statement by statement, building
    /// indexes concurrently, so writers are not blocked while an index builds.
    pub transactional: bool,
    /// Its statements, rendered for the table, without comments.
    pub statements: Vec<String>,
}

impl PendingMigration {
    /// The migration as it would run on the table `render` renders it for.
    pub fn new(migration: &Migration, rendered: &str, transactional: bool) -> Self {
        Self {
            version: migration.version,
            name: migration.name,
            transactional,
            statements: split_statements(rendered),
        }
    }
}

/// What a consumer's or relay's `start()` does about the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Migrations {
    /// Apply the migrations not yet applied (idempotent, safe from several processes at once),
    /// for a consumer with per-aggregate order its ordered ones too.
    #[default]
    Apply,
    /// Apply nothing, but fail `start()` if a migration is missing, with an error naming the
    /// missing files and the command that applies them (`eventflow migrate`; for a consumer
    /// with per-aggregate order, whose migrations include
    /// [`InboxStore::migrate_ordered`](super::InboxStore::migrate_ordered)'s,
    /// `eventflow migrate --ordered`). For deployments that migrate from the command line
    /// before rolling out.
    Verify,
    /// Neither apply nor check.
    Skip,
}

/// The error for a table with `pending` migrations; `command` is how to apply them.
pub(crate) fn not_migrated(
    table: &str,
    pending: &[PendingMigration],
    command: String,
) -> super::StoreError {
    super::StoreError::NotMigrated {
        table: table.to_string(),
        missing: pending.iter().map(|m| m.name.to_string()).collect(),
        command,
    }
}

/// The statements of a SQL file, without `--` comments, split at the `;` ending each (a `;`
/// inside a quoted string, a quoted identifier or a dollar-quoted body such as a `DO $$ ... $$`
/// block does not end one).
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                current.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                current.push(c);
            }
            None if c == '$' => {
                current.push(c);
                // `$tag$` (tag empty or an identifier) opens a body that runs to the same tag.
                let mut tag = String::from("$");
                while let Some(&next) = chars.peek() {
                    if next == '_' || next.is_ascii_alphanumeric() {
                        tag.push(next);
                        current.push(next);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if chars.peek() == Some(&'$') && !tag[1..].starts_with(|c: char| c.is_ascii_digit())
                {
                    chars.next();
                    current.push('$');
                    tag.push('$');
                    let mut body = String::new();
                    for c in chars.by_ref() {
                        body.push(c);
                        if body.ends_with(&tag) {
                            break;
                        }
                    }
                    current.push_str(&body);
                }
            }
            None if c == '-' && chars.peek() == Some(&'-') => {
                // A comment runs to the end of the line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        current.push('\n');
                        break;
                    }
                }
            }
            None if c == ';' => {
                push_statement(&mut statements, &current);
                current.clear();
            }
            None => current.push(c),
        }
    }
    push_statement(&mut statements, &current);
    statements
}

/// Adds `text` as a statement, its lines trimmed and blank lines dropped, if anything is left.
fn push_statement(statements: &mut Vec<String>, text: &str) {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|line| !line.trim().is_empty())
        .collect();
    if lines.is_empty() {
        return;
    }
    // Keep the relative indentation of continuation lines, dropping the common one.
    let indent = lines
        .iter()
        .map(|line| line.len() - line.trim_start().len())
        .min()
        .unwrap_or(0);
    let statement: Vec<&str> = lines.iter().map(|line| &line[indent..]).collect();
    statements.push(statement.join("\n"));
}

/// The index a `CREATE [UNIQUE] INDEX CONCURRENTLY IF NOT EXISTS <name> ...` statement builds,
/// or `None` for any other statement.
#[cfg(feature = "postgres")]
pub(crate) fn concurrent_index_name(statement: &str) -> Option<&str> {
    let words: Vec<&str> = statement.split_whitespace().collect();
    let upper: Vec<String> = words.iter().take(8).map(|w| w.to_uppercase()).collect();
    let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
    let rest = match upper.as_slice() {
        ["CREATE", "INDEX", "CONCURRENTLY", "IF", "NOT", "EXISTS", ..] => 6,
        ["CREATE", "UNIQUE", "INDEX", "CONCURRENTLY", "IF", "NOT", "EXISTS", ..] => 7,
        _ => return None,
    };
    words.get(rest).copied()
}

/// Whether a statement builds or drops an index concurrently (and so must run outside a
/// transaction).
#[cfg(feature = "postgres")]
pub(crate) fn is_concurrent(statement: &str) -> bool {
    let upper = statement.to_uppercase();
    let words: Vec<&str> = upper.split_whitespace().take(5).collect();
    words.contains(&"CONCURRENTLY")
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

    #[test]
    fn split_keeps_dollar_quoted_bodies_whole() {
        let sql = "DO $$ BEGIN PERFORM 1; END $$;\nSELECT $tag$a;b$tag$; SELECT $1;";
        assert_eq!(
            split_statements(sql),
            [
                "DO $$ BEGIN PERFORM 1; END $$",
                "SELECT $tag$a;b$tag$",
                "SELECT $1"
            ]
        );
    }

    #[test]
    fn split_drops_comments_and_keeps_semicolons_in_strings() {
        let sql = "-- a comment; not a statement\nCREATE TABLE t (\n    a TEXT DEFAULT ';' -- why\n);\n\n\
                   ALTER TABLE t ADD COLUMN \"b;c\" INT;\n-- trailing\n";
        assert_eq!(
            split_statements(sql),
            vec![
                "CREATE TABLE t (\n    a TEXT DEFAULT ';'\n)".to_string(),
                "ALTER TABLE t ADD COLUMN \"b;c\" INT".to_string(),
            ]
        );
    }

    #[test]
    #[cfg(feature = "postgres")]
    fn concurrent_index_names_are_found() {
        assert_eq!(
            concurrent_index_name("CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_a\n ON t(a)"),
            Some("ix_a")
        );
        assert_eq!(
            concurrent_index_name("create unique index concurrently if not exists uq_b on t(b)"),
            Some("uq_b")
        );
        assert_eq!(
            concurrent_index_name("CREATE INDEX IF NOT EXISTS ix_a ON t(a)"),
            None
        );
        assert!(is_concurrent("DROP INDEX CONCURRENTLY IF EXISTS ix_a"));
        assert!(!is_concurrent("ALTER TABLE t ADD COLUMN concurrently INT"));
    }

    #[test]
    fn a_marked_file_is_not_transactional() {
        let marked = Migration {
            version: 6,
            name: "x",
            sql: "-- eventflow: no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t(a);",
        };
        assert!(!marked.transactional());
        let plain = Migration {
            sql: "CREATE TABLE t (a INT);",
            ..marked
        };
        assert!(plain.transactional());
    }
}
