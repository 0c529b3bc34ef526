//! `eventflow dead-letters list|show|requeue`.

use super::cli::{Cli, DeadLetters, PageArgs, RowFilterArgs};
use super::output::{self, json_text, progress, Table};
use super::text::{cut, format_time, headers_text, safe};
use super::Failure;
use eventflow::admin::Admin;
use eventflow::store::{InboxRecord, InboxStore, Page, RowFilter};
use eventflow::{EventStatus, InboxRow};
use serde_json::{json, Value};

pub fn run<S: InboxStore>(
    cli: &Cli,
    admin: &Admin<S>,
    command: &DeadLetters,
) -> Result<(), Failure> {
    match command {
        DeadLetters::List { filter, page } => list(cli, admin, filter, page),
        DeadLetters::Show { key } => {
            let record = admin.find_row(key)?;
            if cli.json {
                output::json(&row_json(&record));
            } else {
                print_row(&record);
            }
            Ok(())
        }
        DeadLetters::Requeue { key: Some(key), .. } => {
            let record = admin.requeue_dead_letter(key)?;
            if cli.json {
                output::json(&json!({ "requeued": 1, "row": row_json(&record) }));
            } else {
                say!(
                    "requeued {} (now {})",
                    safe(&record.row.event.event_id),
                    record.row.status
                );
            }
            Ok(())
        }
        DeadLetters::Requeue {
            key: None,
            all,
            filter,
        } => {
            if !all && filter.is_empty() {
                return Err(Failure::Usage(
                    "say which dead letters to requeue: an event id, filters \
                     (--event-type, --error, --since, --until, --stream), or --all"
                        .into(),
                ));
            }
            let bar = progress(cli.json, "requeued");
            let requeued = admin.requeue_dead_letters(&row_filter(filter), &mut |so_far| {
                bar.set_message(format!("requeued: {so_far}"));
            });
            bar.finish_and_clear();
            let requeued = requeued?;
            if cli.json {
                output::json(&json!({ "requeued": requeued }));
            } else {
                say!("requeued {requeued} dead letters");
            }
            Ok(())
        }
    }
}

fn row_filter(args: &RowFilterArgs) -> RowFilter {
    RowFilter {
        status: Some(EventStatus::DeadLetter),
        event_type: args.event_type.clone(),
        error_contains: args.error.clone(),
        received_from: args.since,
        received_before: args.until,
        stream: args.stream.clone(),
        ..RowFilter::default()
    }
}

fn list<S: InboxStore>(
    cli: &Cli,
    admin: &Admin<S>,
    filter: &RowFilterArgs,
    page: &PageArgs,
) -> Result<(), Failure> {
    let listed = admin.list_rows(
        &row_filter(filter),
        Page {
            limit: page.limit as usize,
            after: page.after,
        },
    )?;
    if cli.json {
        output::json(&json!({
            "rows": listed.rows.iter().map(row_json).collect::<Vec<_>>(),
            "next_cursor": listed.next.map(|cursor| cursor.to_string()),
        }));
        return Ok(());
    }
    if listed.rows.is_empty() {
        say!("no dead letters");
        return Ok(());
    }
    let mut table = Table::new(&[
        "EVENT ID", "TYPE", "RECEIVED", "RETRIES", "REPLAYS", "ERROR",
    ]);
    for record in &listed.rows {
        let row = &record.row;
        table.row(vec![
            row.event.event_id.clone(),
            row.event.event_type.clone(),
            format_time(row.received_at),
            row.retry_count.to_string(),
            record.replay_count.to_string(),
            cut(row.error_message.as_deref().unwrap_or(""), 60),
        ]);
    }
    table.print();
    if let Some(next) = listed.next {
        say!("more: --after {next}");
    }
    Ok(())
}

/// A row as `--json` prints it, with what operators did to it.
pub fn row_json(record: &InboxRecord) -> Value {
    let mut json = inbox_row_json(&record.row);
    json["replay_count"] = record.replay_count.into();
    json["last_replayed_at"] = json!(record.last_replayed_at);
    json["cursor"] = record.cursor().to_string().into();
    json
}

/// A row's own columns as `--json` prints them.
pub fn inbox_row_json(row: &InboxRow) -> Value {
    json!({
        "id": row.id,
        "event_id": row.event.event_id,
        "event_type": row.event.event_type,
        "aggregate_id": row.event.aggregate_id,
        "occurred_on": row.event.occurred_on,
        "correlation_id": row.event.correlation_id,
        "causation_id": row.event.causation_id,
        "headers": row.event.headers,
        "payload": row.event.payload,
        "stream": row.stream,
        "entry_id": row.stream_id,
        "status": row.status.as_str(),
        "retry_count": row.retry_count,
        "max_retries": row.max_retries,
        "received_at": row.received_at,
        "processed_at": row.processed_at,
        "next_retry_at": row.next_retry_at,
        "last_error": row.error_message,
        "last_error_at": row.last_error_at,
    })
}

/// A row as `show` prints it, one field a line, then the payload.
pub fn print_row(record: &InboxRecord) {
    let row = &record.row;
    let time = |at: Option<chrono::DateTime<chrono::Utc>>| {
        at.map(format_time).unwrap_or_else(|| "-".into())
    };
    let lines = [
        ("event id", row.event.event_id.clone()),
        ("row id", row.id.to_string()),
        ("status", row.status.to_string()),
        ("event type", row.event.event_type.clone()),
        ("aggregate id", row.event.aggregate_id.to_string()),
        ("occurred on", format_time(row.event.occurred_on)),
        (
            "correlation id",
            row.event
                .correlation_id
                .clone()
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "causation id",
            row.event.causation_id.clone().unwrap_or_else(|| "-".into()),
        ),
        ("headers", headers_text(&row.event.headers)),
        ("stream", row.stream.clone().unwrap_or_else(|| "-".into())),
        ("entry id", row.stream_id.clone()),
        ("received", format_time(row.received_at)),
        ("processed", time(row.processed_at)),
        (
            "retries",
            format!("{} of {}", row.retry_count, row.max_retries),
        ),
        ("next retry", time(row.next_retry_at)),
        ("last error at", time(row.last_error_at)),
        (
            "error",
            row.error_message.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "requeued",
            format!(
                "{} times, last {}",
                record.replay_count,
                time(record.last_replayed_at)
            ),
        ),
    ];
    for (name, value) in lines {
        say!("{name:<15} {}", safe(&value));
    }
    say!("payload\n{}", json_text(&row.event.payload));
}
