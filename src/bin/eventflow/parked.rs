//! `eventflow parked list|show|skip`: aggregates held back by a dead letter under
//! per-aggregate order.

use super::cli::{Cli, Parked};
use super::dead_letters::{inbox_row_json, print_row, row_json};
use super::output::{self, Table};
use super::text::{cut, format_age, format_time, safe};
use super::Failure;
use chrono::{DateTime, Utc};
use eventflow::admin::{Admin, AdminError};
use eventflow::store::{InboxStore, ParkedAggregate, ParkedPage};
use serde_json::{json, Value};
use uuid::Uuid;

pub fn run<S: InboxStore>(cli: &Cli, admin: &Admin<S>, command: &Parked) -> Result<(), Failure> {
    match command {
        Parked::List { limit, after } => list(cli, admin, *limit as usize, *after),
        Parked::Show { aggregate_id } => show(cli, admin, *aggregate_id),
        Parked::Skip {
            aggregate_id: Some(aggregate_id),
            ..
        } => skip_aggregate(cli, admin, *aggregate_id),
        Parked::Skip {
            event_id: Some(key),
            ..
        } => {
            let record = admin.skip_dead_letter(key)?;
            let aggregate_id = record.row.event.aggregate_id;
            if cli.json {
                output::json(&json!({
                    "skipped": row_json(&record),
                    "aggregate_id": aggregate_id,
                    "still_parked_by": still_parked_by(admin, aggregate_id)?,
                }));
            } else {
                say!(
                    "skipped dead letter {} of aggregate {aggregate_id}",
                    safe(&record.row.event.event_id)
                );
                print_still_parked(admin, aggregate_id)?;
            }
            Ok(())
        }
        Parked::Skip { .. } => Err(Failure::Usage(
            "say what to skip: an aggregate id, or --event-id".into(),
        )),
    }
}

fn list<S: InboxStore>(
    cli: &Cli,
    admin: &Admin<S>,
    limit: usize,
    after: Option<Uuid>,
) -> Result<(), Failure> {
    let listed = admin.list_parked(ParkedPage {
        limit,
        after,
        aggregate_id: None,
    })?;
    if cli.json {
        output::json(&json!({
            "aggregates": listed.aggregates.iter().map(parked_json).collect::<Vec<_>>(),
            "next_cursor": listed.next.map(|cursor| cursor.to_string()),
        }));
        return Ok(());
    }
    if listed.aggregates.is_empty() {
        say!("no parked aggregates");
        return Ok(());
    }
    let mut table = Table::new(&[
        "AGGREGATE ID",
        "DEAD LETTER",
        "TYPE",
        "FAILED",
        "WAITING",
        "OLDEST WAITING",
        "ERROR",
    ]);
    for parked in &listed.aggregates {
        let row = &parked.dead_letter;
        table.row(vec![
            parked.aggregate_id.to_string(),
            row.event.event_id.clone(),
            row.event.event_type.clone(),
            row.last_error_at.map(format_time).unwrap_or_default(),
            parked.waiting.to_string(),
            parked.oldest_waiting.map(ago).unwrap_or_default(),
            cut(row.error_message.as_deref().unwrap_or(""), 60),
        ]);
    }
    table.print();
    if let Some(next) = listed.next {
        say!("more: --after {next}");
    }
    Ok(())
}

fn show<S: InboxStore>(cli: &Cli, admin: &Admin<S>, aggregate_id: Uuid) -> Result<(), Failure> {
    let parked = admin
        .parked_aggregate(aggregate_id)?
        .ok_or_else(|| not_parked(aggregate_id))?;
    // The full record, for what operators did to the dead letter before (requeues).
    let record = admin.find_row(&parked.dead_letter.id.to_string())?;
    if cli.json {
        let mut json = parked_json(&parked);
        json["dead_letter"] = row_json(&record);
        output::json(&json);
        return Ok(());
    }
    say!("{:<15} {aggregate_id}", "aggregate id");
    say!("{:<15} {}", "waiting", waiting_text(&parked));
    say!(
        "{:<15} dead letter {}",
        "parked by",
        safe(&parked.dead_letter.event.event_id)
    );
    say!();
    print_row(&record);
    say!();
    say!(
        "release it: `eventflow parked skip {aggregate_id}` (the dead letter stays, skipped), \
         or `eventflow dead-letters requeue {}` (handled again, in its place in the order)",
        safe(&parked.dead_letter.event.event_id)
    );
    Ok(())
}

fn skip_aggregate<S: InboxStore>(
    cli: &Cli,
    admin: &Admin<S>,
    aggregate_id: Uuid,
) -> Result<(), Failure> {
    let parked = admin.skip_parked(aggregate_id)?;
    if cli.json {
        output::json(&json!({
            "skipped": inbox_row_json(&parked.dead_letter),
            "aggregate_id": aggregate_id,
            "released": parked.waiting,
            "still_parked_by": still_parked_by(admin, aggregate_id)?,
        }));
        return Ok(());
    }
    say!(
        "skipped dead letter {} of aggregate {aggregate_id}; {} waiting events go on",
        safe(&parked.dead_letter.event.event_id),
        parked.waiting
    );
    print_still_parked(admin, aggregate_id)
}

/// The event id of the dead letter that parks `aggregate_id` now, if one does: a later dead
/// letter of the aggregate parks it again after a skip.
fn still_parked_by<S: InboxStore>(
    admin: &Admin<S>,
    aggregate_id: Uuid,
) -> Result<Option<String>, Failure> {
    Ok(admin
        .parked_aggregate(aggregate_id)?
        .map(|parked| parked.dead_letter.event.event_id))
}

fn print_still_parked<S: InboxStore>(admin: &Admin<S>, aggregate_id: Uuid) -> Result<(), Failure> {
    if let Some(event_id) = still_parked_by(admin, aggregate_id)? {
        say!(
            "aggregate {aggregate_id} is still parked, by its later dead letter {}",
            safe(&event_id)
        );
    }
    Ok(())
}

fn not_parked(aggregate_id: Uuid) -> Failure {
    Failure::Admin(AdminError::NotFound {
        what: "parked aggregate",
        key: aggregate_id.to_string(),
    })
}

fn parked_json(parked: &ParkedAggregate) -> Value {
    json!({
        "aggregate_id": parked.aggregate_id,
        "waiting": parked.waiting,
        "oldest_waiting_at": parked.oldest_waiting,
        "oldest_waiting_age_seconds": parked.oldest_waiting.map(|at| age(at).as_secs()),
        "dead_letter": inbox_row_json(&parked.dead_letter),
    })
}

fn waiting_text(parked: &ParkedAggregate) -> String {
    match parked.oldest_waiting {
        Some(oldest) => format!(
            "{} events, the oldest received {} ({})",
            parked.waiting,
            format_time(oldest),
            ago(oldest)
        ),
        None => "no events yet".into(),
    }
}

/// How long ago `at` was, zero when it is ahead (another machine's clock).
fn age(at: DateTime<Utc>) -> std::time::Duration {
    (Utc::now() - at).to_std().unwrap_or_default()
}

fn ago(at: DateTime<Utc>) -> String {
    format!("{} ago", format_age(age(at)))
}
