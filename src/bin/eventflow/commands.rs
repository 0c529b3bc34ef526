//! Dispatching a command to the operations API, with the store its URL names.

use super::cli::{Cli, Command};
use super::connect::{open_database, Database};
use super::output::{self, progress};
use super::text::format_age;
use super::{dead_letters, publish, quarantine, status, Failure};
use eventflow::admin::Admin;
use eventflow::store::InboxStore;
use serde_json::json;
use std::sync::Arc;

/// Runs the command line's command.
pub fn run(cli: &Cli) -> Result<(), Failure> {
    if let Command::Publish { event, file } = &cli.command {
        return publish::run(cli, event.as_deref(), file.as_deref());
    }
    let database = open_database(&cli.connection, matches!(cli.command, Command::Migrate))?;
    let kind = database.kind();
    match database {
        Database::Postgres(store) => with_store(cli, &Admin::new(Arc::new(store)), kind),
        Database::Sqlite(store) => with_store(cli, &Admin::new(Arc::new(store)), kind),
    }
}

fn with_store<S: InboxStore>(cli: &Cli, admin: &Admin<S>, kind: &str) -> Result<(), Failure> {
    let table = &cli.connection.table;
    match &cli.command {
        Command::Migrate => {
            admin.migrate()?;
            if cli.json {
                output::json(&json!({ "migrated": true, "table": table, "database": kind }));
            } else {
                println!("migrated {table} ({kind})");
            }
            Ok(())
        }
        Command::Status => status::run(cli, admin, kind),
        Command::DeadLetters(command) => dead_letters::run(cli, admin, command),
        Command::Quarantine(command) => quarantine::run(cli, admin, command),
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
        Command::Publish { .. } => unreachable!("publish needs no database"),
    }
}
