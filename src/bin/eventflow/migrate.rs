//! `migrate`: applying the migrations and saying which ran; `--dry-run`, the ones it would
//! apply, with their statements; `list`, every migration and whether the table has it.

use super::cli::Cli;
use super::connect::{database_kind, open_outbox};
use super::output::{self, Table};
use super::Failure;
use eventflow::admin::{Admin, MigrationState};
use eventflow::store::{InboxStore, PendingMigration};
use serde_json::{json, Value};

/// Applies the inbox's migrations (with `ordered`, those for per-aggregate order too; and the
/// outbox's with `outbox`) and prints what ran.
pub fn apply<S: InboxStore>(
    cli: &Cli,
    admin: &Admin<S>,
    outbox: bool,
    ordered: bool,
    kind: &str,
) -> Result<(), Failure> {
    let table = cli.connection.table.as_str();
    let mut applied = vec![(table, "", admin.migrate()?)];
    if ordered {
        // Listed under the inbox table, as its own files are.
        applied[0].2.extend(admin.migrate_ordered()?);
    }
    if outbox {
        let outbox_table = cli.connection.outbox_table.as_str();
        let ran = open_outbox(&cli.connection, true)?.migrate()?;
        applied.push((outbox_table, "outbox ", ran));
    }
    if cli.json {
        let tables: Vec<Value> = applied
            .iter()
            .map(|(table, _, ran)| {
                json!({
                    "table": table,
                    "applied": ran.iter().map(|m| json!({
                        "version": m.version,
                        "name": m.name,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        output::json(&json!({
            "migrated": true,
            "database": kind,
            "table": table,
            "outbox_table": outbox.then_some(cli.connection.outbox_table.as_str()),
            "tables": tables,
        }));
        return Ok(());
    }
    for (table, what, ran) in &applied {
        match ran.len() {
            0 => say!("migrated {what}{table} ({kind}): up to date, nothing to apply"),
            1 => say!("migrated {what}{table} ({kind}): applied 1 migration"),
            n => say!("migrated {what}{table} ({kind}): applied {n} migrations"),
        }
        for migration in ran {
            say!("  {:04} {}", migration.version, migration.name);
        }
    }
    Ok(())
}

/// Prints every inbox migration (with `ordered`, every one for per-aggregate order) and
/// whether the table has it.
pub fn list_inbox<S: InboxStore>(
    cli: &Cli,
    admin: &Admin<S>,
    ordered: bool,
    kind: &str,
) -> Result<(), Failure> {
    let (migrations, command) = match ordered {
        true => (admin.ordered_migrations()?, "eventflow migrate --ordered"),
        false => (admin.migrations()?, "eventflow migrate"),
    };
    print_list(cli, &cli.connection.table, kind, &migrations, command);
    Ok(())
}

/// Prints every outbox migration and whether the table has it.
pub fn list_outbox(cli: &Cli) -> Result<(), Failure> {
    let kind = database_kind(&cli.connection)?;
    let migrations = open_outbox(&cli.connection, false)?.migrations()?;
    let command = "eventflow migrate --outbox";
    print_list(
        cli,
        &cli.connection.outbox_table,
        kind,
        &migrations,
        command,
    );
    Ok(())
}

fn print_list(cli: &Cli, table: &str, kind: &str, migrations: &[MigrationState], command: &str) {
    if cli.json {
        output::json(&json!({
            "database": kind,
            "table": table,
            "migrations": migrations.iter().map(|m| json!({
                "version": m.version,
                "name": m.name,
                "applied": m.applied,
            })).collect::<Vec<_>>(),
        }));
        return;
    }
    let pending = migrations.iter().filter(|m| !m.applied).count();
    match pending {
        0 => say!("{table} ({kind}): up to date"),
        n => say!("{table} ({kind}): {n} not applied (`{command}` applies them)"),
    }
    let mut rows = Table::new(&["  VERSION", "NAME", "APPLIED"]);
    for migration in migrations {
        rows.row(vec![
            format!("  {:04}", migration.version),
            migration.name.to_string(),
            if migration.applied { "yes" } else { "no" }.to_string(),
        ]);
    }
    rows.print();
}

/// Prints the inbox's pending migrations (with `ordered`, those for per-aggregate order too;
/// and the outbox's with `outbox`); changes nothing.
pub fn dry_run<S: InboxStore>(
    cli: &Cli,
    admin: &Admin<S>,
    outbox: bool,
    ordered: bool,
    kind: &str,
) -> Result<(), Failure> {
    let mut plans = vec![(cli.connection.table.clone(), admin.pending_migrations()?)];
    if ordered {
        plans[0].1.extend(admin.pending_ordered_migrations()?);
    }
    if outbox {
        let pending = open_outbox(&cli.connection, false)?.pending_migrations()?;
        plans.push((cli.connection.outbox_table.clone(), pending));
    }
    if cli.json {
        let tables: Vec<_> = plans
            .iter()
            .map(|(table, pending)| {
                json!({
                    "table": table,
                    "pending": pending.iter().map(|m| json!({
                        "version": m.version,
                        "name": m.name,
                        "transactional": m.transactional,
                        "statements": m.statements,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        output::json(&json!({ "dry_run": true, "database": kind, "tables": tables }));
        return Ok(());
    }
    for (table, pending) in &plans {
        print_plan(table, kind, pending);
    }
    Ok(())
}

fn print_plan(table: &str, kind: &str, pending: &[PendingMigration]) {
    if pending.is_empty() {
        say!("{table} ({kind}) is up to date: nothing to migrate");
        return;
    }
    say!(
        "{table} ({kind}): {} migration(s) would run (dry run, nothing changed)",
        pending.len()
    );
    for migration in pending {
        let how = if migration.transactional {
            "in one transaction"
        } else {
            "outside a transaction, statement by statement; indexes built concurrently"
        };
        say!("\n{:04} {} ({how})", migration.version, migration.name);
        for statement in &migration.statements {
            say!("  {};", statement.replace('\n', "\n  "));
        }
    }
}
