//! Dispatching a command to the operations API, with the store its URL names.

use super::cli::{Cli, Command, MigrateList};
use super::confirm::purge_confirmed;
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
        Command::Publish {
            stream,
            partitions,
            event,
            file,
        } => return publish::run(cli, stream, partitions, event.as_deref(), file.as_deref()),
        // The outbox needs no inbox.
        Command::Outbox(command) => {
            return outbox::run(cli, &open_outbox(&cli.connection, false)?, command)
        }
        Command::Migrate {
            list: Some(MigrateList::List { outbox: true, .. }),
            ..
        } => return migrate::list_outbox(cli),
        _ => {}
    }
    // Only a real `migrate` may create a SQLite file; a dry run or a list changes nothing.
    let create = matches!(
        cli.command,
        Command::Migrate {
            dry_run: false,
            list: None,
            ..
        }
    );
    let database = open_database(&cli.connection, create)?;
    let kind = database.kind();
    let done = match database {
        Database::Postgres(store) => with_store(cli, &Admin::new(Arc::new(store)), kind),
        Database::Sqlite(store) => with_store(cli, &Admin::new(Arc::new(store)), kind),
    };
    done.map_err(|failure| match failure {
        Failure::Admin(error) => Failure::from_inbox(error, &cli.connection.table),
        other => other,
    })
}

fn with_store<S: InboxStore>(cli: &Cli, admin: &Admin<S>, kind: &str) -> Result<(), Failure> {
    match &cli.command {
        Command::Migrate {
            list: Some(MigrateList::List { ordered, .. }),
            ..
        } => migrate::list_inbox(cli, admin, *ordered, kind),
        Command::Migrate {
            outbox,
            ordered,
            dry_run: true,
            ..
        } => migrate::dry_run(cli, admin, *outbox, *ordered, kind),
        Command::Migrate {
            outbox, ordered, ..
        } => migrate::apply(cli, admin, *outbox, *ordered, kind),
        Command::Status { streams } => status::run(cli, admin, kind, streams),
        Command::DeadLetters(command) => dead_letters::run(cli, admin, command),
        Command::Quarantine(command) => quarantine::run(cli, admin, command),
        Command::Parked(command) => parked::run(cli, admin, command),
        Command::Purge(purge) => {
            purge_confirmed(purge, "processed row")?;
            let bar = progress(cli.json, "deleted");
            let deleted = admin.purge_processed(purge.older_than, &mut |so_far| {
                bar.set_message(format!("deleted: {so_far}"));
            });
            bar.finish_and_clear();
            let deleted = deleted?;
            if cli.json {
                output::json(&json!({
                    "deleted": deleted,
                    "older_than_seconds": purge.older_than.as_secs(),
                }));
            } else {
                say!(
                    "deleted {deleted} processed rows older than {}",
                    format_age(purge.older_than)
                );
            }
            Ok(())
        }
        Command::Publish { .. } | Command::Outbox(_) | Command::Console(_) => {
            unreachable!("run before the inbox is opened")
        }
    }
}
