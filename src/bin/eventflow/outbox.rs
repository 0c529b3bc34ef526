//! `eventflow outbox list|show|requeue|purge|lost`.

use super::cli::{Cli, Outbox};
use super::confirm::purge_confirmed;
use super::connect::open_redis;
use super::output::{self, progress, Table};
use super::text::{cut, format_age, format_time, headers_text, safe};
use super::Failure;
use chrono::{DateTime, Utc};
use eventflow::admin::OutboxAdmin;
use eventflow::store::outbox::{OutboxRow, OutboxStatus, Requeue};
use serde_json::{json, Value};

pub fn run(cli: &Cli, admin: &OutboxAdmin, command: &Outbox) -> Result<(), Failure> {
    match command {
        Outbox::List {
            status,
            limit,
            after,
        } => list(cli, admin, *status, *limit as usize, *after),
        Outbox::Show { key } => {
            let rows = admin.show(key)?;
            if cli.json {
                output::json(&json!({
                    "event_id": rows[0].event.event_id,
                    "rows": rows.iter().map(row_json).collect::<Vec<_>>(),
                }));
            } else {
                for (i, row) in rows.iter().enumerate() {
                    if i > 0 {
                        say!();
                    }
                    print_row(row);
                }
            }
            Ok(())
        }
        Outbox::Requeue { ids, id, all } => {
            let ids: Vec<i64> = ids.iter().chain(id).copied().collect();
            if ids.is_empty() && !all {
                return Err(Failure::Usage(
                    "say which dead letters to requeue: their row ids, or --all".into(),
                ));
            }
            let which = if *all {
                Requeue::All
            } else {
                Requeue::Ids(&ids)
            };
            let requeued = admin.requeue_dead_letters(which)?;
            if cli.json {
                output::json(&json!({ "requeued": requeued }));
            } else {
                say!("requeued {requeued} outbox dead letters");
            }
            Ok(())
        }
        Outbox::Lost {
            limit,
            after,
            partitions,
        } => lost(cli, admin, partitions, *limit as usize, *after),
        Outbox::Purge(purge) => {
            purge_confirmed(purge, "published outbox row")?;
            let older_than = &purge.older_than;
            let bar = progress(cli.json, "deleted");
            let deleted = admin.purge_published(*older_than, &mut |so_far| {
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
                say!(
                    "deleted {deleted} published outbox rows older than {}",
                    format_age(*older_than)
                );
            }
            Ok(())
        }
    }
}

fn list(
    cli: &Cli,
    admin: &OutboxAdmin,
    status: Option<OutboxStatus>,
    limit: usize,
    after: Option<i64>,
) -> Result<(), Failure> {
    let listed = admin.list_rows(status, after, limit)?;
    if cli.json {
        output::json(&json!({
            "rows": listed.rows.iter().map(row_json).collect::<Vec<_>>(),
            "next_cursor": listed.next.map(|cursor| cursor.to_string()),
        }));
        return Ok(());
    }
    if listed.rows.is_empty() {
        match status {
            Some(status) => say!("no {} rows", status.as_str()),
            None => say!("no rows"),
        }
        return Ok(());
    }
    let mut table = Table::new(&[
        "ID", "EVENT ID", "TYPE", "STREAM", "STATUS", "ATTEMPTS", "CREATED", "ERROR",
    ]);
    for row in &listed.rows {
        table.row(vec![
            row.id.to_string(),
            row.event.event_id.clone(),
            row.event.event_type.clone(),
            row.stream.clone(),
            row.status.as_str().to_string(),
            row.attempts.to_string(),
            format_time(row.created_at),
            cut(row.last_error.as_deref().unwrap_or(""), 60),
        ]);
    }
    table.print();
    if let Some(next) = listed.next {
        say!("more: --after {next}");
    }
    Ok(())
}

fn lost(
    cli: &Cli,
    admin: &OutboxAdmin,
    partitions: &[(String, u32)],
    limit: usize,
    after: Option<i64>,
) -> Result<(), Failure> {
    let partitioned: Vec<(&str, u32)> = partitions
        .iter()
        .map(|(stream, count)| (stream.as_str(), *count))
        .collect();
    let redis = open_redis(&cli.connection)?;
    let page = admin.lost_entries(&redis, &partitioned, after, limit)?;
    if cli.json {
        output::json(&json!({
            "lost": page.lost.iter().map(row_json).collect::<Vec<_>>(),
            "checked": page.checked,
            "unknown": page.unknown,
            "next_cursor": page.next.map(|cursor| cursor.to_string()),
        }));
        return Ok(());
    }
    if page.lost.is_empty() {
        say!("no lost entries among {} published rows", page.checked);
    } else {
        let mut table = Table::new(&["ID", "EVENT ID", "TYPE", "STREAM", "ENTRY ID", "PUBLISHED"]);
        for row in &page.lost {
            table.row(vec![
                row.id.to_string(),
                row.event.event_id.clone(),
                row.event.event_type.clone(),
                row.stream.clone(),
                row.stream_entry_id.clone().unwrap_or_default(),
                row.published_at.map(format_time).unwrap_or_default(),
            ]);
        }
        table.print();
        say!(
            "{} of {} published rows lost their entries",
            page.lost.len(),
            page.checked
        );
    }
    if page.unknown > 0 {
        say!(
            "{} rows not checked: their streams hold no entries, or cannot be asked",
            page.unknown
        );
    }
    if let Some(next) = page.next {
        say!("more: --after {next}");
    }
    Ok(())
}

fn row_json(row: &OutboxRow) -> Value {
    json!({
        "id": row.id,
        "stream": row.stream,
        "event_id": row.event.event_id,
        "event_type": row.event.event_type,
        "aggregate_id": row.event.aggregate_id,
        "occurred_on": row.event.occurred_on,
        "correlation_id": row.event.correlation_id,
        "causation_id": row.event.causation_id,
        "headers": row.event.headers,
        "payload": row.event.payload,
        "status": row.status.as_str(),
        "attempts": row.attempts,
        "next_attempt_at": row.next_attempt_at,
        "created_at": row.created_at,
        "published_at": row.published_at,
        "last_error": row.last_error,
        "last_error_at": row.last_error_at,
        "entry_id": row.stream_entry_id,
    })
}

fn print_row(row: &OutboxRow) {
    let time = |at: Option<DateTime<Utc>>| at.map(format_time).unwrap_or_else(|| "-".into());
    let text = |value: Option<&str>| value.unwrap_or("-").to_string();
    let lines = [
        ("event id", row.event.event_id.clone()),
        ("row id", row.id.to_string()),
        ("status", row.status.as_str().to_string()),
        ("stream", row.stream.clone()),
        ("event type", row.event.event_type.clone()),
        ("aggregate id", row.event.aggregate_id.to_string()),
        ("occurred on", format_time(row.event.occurred_on)),
        ("correlation id", text(row.event.correlation_id.as_deref())),
        ("causation id", text(row.event.causation_id.as_deref())),
        ("headers", headers_text(&row.event.headers)),
        ("created", format_time(row.created_at)),
        ("attempts", row.attempts.to_string()),
        ("next attempt", time(row.next_attempt_at)),
        ("published", time(row.published_at)),
        ("entry id", text(row.stream_entry_id.as_deref())),
        ("last error at", time(row.last_error_at)),
        ("error", text(row.last_error.as_deref())),
    ];
    for (name, value) in lines {
        say!("{name:<15} {}", safe(&value));
    }
    say!("payload\n{}", output::json_text(&row.event.payload));
}
