//! Dispatching a command to the operations API, with the store its URL names.

use super::cli::{Cli, Command};
use super::connect::{open_database, open_outbox, Database};
use super::output::{self, progress};
use super::text::format_age;
use super::{dead_letters, migrate, outbox, parked, publish, quarantine, status, Failure};
use eventflow::admin::Admin;
use eventflow::store::InboxStore;
use serde_json::json;
use std::sync::Arc;

/// Runs the command line's command.
pub fn run(cli: &Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Publish { event, file } => {
            return publish::run(cli, event.as_deref(), file.as_deref())
        }
        // The outbox needs no inbox.
        Command::Outbox(command) => {
            return outbox::run(cli, &open_outbox(&cli.connection, false)?, command)
        }
        _ => {}
    }
    // Only a real `migrate` may create a SQLite file; a dry run changes nothing.
    let create = matches!(cli.command, Command::Migrate { dry_run: false, .. });
    let database = open_database(&cli.connection, create)?;
    let kind = database.kind();
    match database {
        Database::Postgres(store) => with_store(cli, &Admin::new(Arc::new(store)), kind),
        Database::Sqlite(store) => with_store(cli, &Admin::new(Arc::new(store)), kind),
    }
}

fn with_store<S: InboxStore>(cli: &Cli, admin: &Admin<S>, kind: &str) -> Result<(), Failure> {
    let table = &cli.connection.table;
    match &cli.command {
        Command::Migrate {
            outbox,
            dry_run: true,
        } => migrate::dry_run(cli, admin, *outbox, kind),
        Command::Migrate { outbox, .. } => {
            admin.migrate()?;
            let outbox_table = if *outbox {
                open_outbox(&cli.connection, true)?.migrate()?;
                Some(cli.connection.outbox_table.as_str())
            } else {
                None
            };
            if cli.json {
                output::json(&json!({
                    "migrated": true,
                    "table": table,
                    "outbox_table": outbox_table,
                    "database": kind,
                }));
            } else {
                println!("migrated {table} ({kind})");
                if let Some(outbox_table) = outbox_table {
                    println!("migrated outbox {outbox_table} ({kind})");
                }
            }
            Ok(())
        }
        Command::Status => status::run(cli, admin, kind),
        Command::DeadLetters(command) => dead_letters::run(cli, admin, command),
        Command::Quarantine(command) => quarantine::run(cli, admin, command),
        Command::Parked(command) => parked::run(cli, admin, command),
        Command::Purge { older_than } => {
            let bar = progress(cli.json, "deleted");
            let deleted = admin.purge_processed(*older_than, &mut |so_far| {
                bar.set_message(format!("deleted: {so_far}"));
            });
            bar.finish_and_clear();
            let deleted = deleted?;
            if cli.json {
                output::json(&json!({
                    "deleted": deleted,
                    "older_than_seconds": older_than.as_secs(),
                }));
            } else {
                println!(
                    "deleted {deleted} processed rows older than {}",
                    format_age(*older_than)
                );
            }
            Ok(())
        }
        Command::Publish { .. } | Command::Outbox(_) | Command::Console(_) => {
            unreachable!("run before the inbox is opened")
        }
    }
}
