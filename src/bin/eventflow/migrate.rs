//! `migrate --dry-run`: the migrations `migrate` would apply, with their statements.

use super::cli::Cli;
use super::connect::open_outbox;
use super::output;
use super::Failure;
use eventflow::admin::Admin;
use eventflow::store::{InboxStore, PendingMigration};
use serde_json::json;

/// Prints the inbox's pending migrations (and the outbox's with `outbox`); changes nothing.
pub fn dry_run<S: InboxStore>(
    cli: &Cli,
    admin: &Admin<S>,
    outbox: bool,
    kind: &str,
) -> Result<(), Failure> {
    let mut plans = vec![(cli.connection.table.clone(), admin.pending_migrations()?)];
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
        println!("{table} ({kind}) is up to date: nothing to migrate");
        return;
    }
    println!(
        "{table} ({kind}): {} migration(s) would run (dry run, nothing changed)",
        pending.len()
    );
    for migration in pending {
        let how = if migration.transactional {
            "in one transaction"
        } else {
            "outside a transaction, statement by statement; indexes built concurrently"
        };
        println!("\n{:04} {} ({how})", migration.version, migration.name);
        for statement in &migration.statements {
            println!("  {};", statement.replace('\n', "\n  "));
        }
    }
}
