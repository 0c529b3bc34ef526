//! `eventflow status`: the inbox (its owner, counts in all and per stream, parked aggregates),
//! the streams and the outbox at a glance.

use super::cli::Cli;
use super::connect::{open_outbox, open_redis};
use super::output::{self, Table};
use super::text::{format_age, safe};
use super::Failure;
use eventflow::admin::{stream_status, Admin, AdminError, InboxStatus, OutboxState};
use eventflow::redact::redact;
use eventflow::store::outbox::OutboxStatus;
use eventflow::store::{InboxStore, StatusCounts};
use eventflow::transport::{GroupStats, TransportError};
use eventflow::EventStatus;
use serde_json::{json, Value};

/// What the stream section found for one stream.
enum Stream {
    Stats {
        stream: String,
        group: String,
        stats: GroupStats,
    },
    NoGroup {
        stream: String,
        group: String,
    },
    Failed {
        stream: String,
        group: String,
        error: AdminError,
    },
}

pub fn run<S: InboxStore>(cli: &Cli, admin: &Admin<S>, kind: &str) -> Result<(), Failure> {
    let inbox = admin.inbox_status()?;
    let outbox = open_outbox(&cli.connection, false)?.status()?;
    let streams = stream_section(cli)?;
    if cli.json {
        let streams_json: Vec<Value> = streams.iter().map(stream_json).collect();
        output::json(&json!({
            "inbox": inbox_json(&inbox, &cli.connection.table, kind),
            // The first stream alone, as before several were shown; scripts reading one
            // stream keep working. `streams` has them all.
            "stream": streams_json.first().cloned().unwrap_or(Value::Null),
            "streams": streams_json,
            "outbox": outbox_json(&outbox),
        }));
    } else {
        let url = cli.connection.database_url.as_deref().unwrap_or_default();
        print_inbox(&inbox, &cli.connection.table, kind, url);
        print_streams(&streams);
        print_outbox(&outbox);
    }
    // Printed above; the exit code says a stream could not be read.
    match streams.into_iter().find_map(|stream| match stream {
        Stream::Failed { error, .. } => Some(error),
        _ => None,
    }) {
        Some(error) => Err(Failure::Admin(error)),
        None => Ok(()),
    }
}

/// Each `--stream`'s group stats; none without `--group`.
fn stream_section(cli: &Cli) -> Result<Vec<Stream>, Failure> {
    let Some(group) = &cli.connection.group else {
        return Ok(Vec::new());
    };
    if cli.connection.stream.is_empty() {
        return Ok(Vec::new());
    }
    let redis = open_redis(&cli.connection)?;
    Ok(cli
        .connection
        .stream
        .iter()
        .map(|stream| {
            let (stream, group) = (stream.clone(), group.clone());
            match stream_status(&redis, &stream, &group) {
                Ok(stats) => Stream::Stats {
                    stream,
                    group,
                    stats,
                },
                Err(AdminError::Transport(TransportError::NoGroup { .. })) => {
                    Stream::NoGroup { stream, group }
                }
                Err(error) => Stream::Failed {
                    stream,
                    group,
                    error,
                },
            }
        })
        .collect())
}

/// Counts by status as a JSON object, every status present.
fn counts_json(counts: &StatusCounts) -> Value {
    let counts: serde_json::Map<String, Value> = EventStatus::ALL
        .iter()
        .map(|status| (status.as_str().to_string(), counts.get(*status).into()))
        .collect();
    Value::Object(counts)
}

fn inbox_json(inbox: &InboxStatus, table: &str, kind: &str) -> Value {
    let by_stream: Vec<Value> = inbox
        .by_stream
        .iter()
        .map(|(stream, counts)| {
            json!({
                "stream": stream,
                "counts": counts_json(counts),
                "total": counts.total(),
            })
        })
        .collect();
    json!({
        "table": table,
        "database": kind,
        "owner": inbox.owner,
        "counts": counts_json(&inbox.counts),
        "total": inbox.counts.total(),
        "oldest_pending_age_seconds": inbox.pending_lag().map(|age| age.as_secs()),
        "oldest_failed_age_seconds": inbox.failed_lag().map(|age| age.as_secs()),
        "by_stream": by_stream,
        "parked": {
            "aggregates": inbox.parked.aggregates,
            "oldest_waiting_at": inbox.parked.oldest_waiting,
            "oldest_waiting_age_seconds": inbox.parked_lag().map(|age| age.as_secs()),
        },
    })
}

fn print_inbox(inbox: &InboxStatus, table: &str, kind: &str, url: &str) {
    println!("inbox: {table} ({kind} at {})", safe(&redact(url)));
    match &inbox.owner {
        Some(owner) => println!("  owner: consumer group {}", safe(owner)),
        None => println!("  owner: no owner yet (the first consumer to start adopts the table)"),
    }
    let mut rows = Table::new(&["  STATUS", "ROWS", "OLDEST"]);
    for status in EventStatus::ALL {
        let oldest = match status {
            EventStatus::Pending => inbox.pending_lag(),
            EventStatus::Failed => inbox.failed_lag(),
            _ => None,
        };
        rows.row(vec![
            format!("  {status}"),
            inbox.counts.get(status).to_string(),
            oldest
                .map(|age| format!("{} ago", format_age(age)))
                .unwrap_or_default(),
        ]);
    }
    rows.row(vec![
        "  total".into(),
        inbox.counts.total().to_string(),
        String::new(),
    ]);
    rows.print();
    print_by_stream(&inbox.by_stream);
    let parked = match inbox.parked.aggregates {
        0 => "none".to_string(),
        1 => "1 aggregate".to_string(),
        n => format!("{n} aggregates"),
    };
    match inbox.parked_lag() {
        _ if inbox.parked.aggregates == 0 => println!("  parked: none"),
        Some(age) => println!(
            "  parked: {parked}, the oldest waiting event {} ago (`eventflow parked list`)",
            format_age(age)
        ),
        None => println!("  parked: {parked}, no events waiting yet (`eventflow parked list`)"),
    }
}

/// Counts per stream, one line each; only worth a table when rows came from somewhere.
fn print_by_stream(by_stream: &[(Option<String>, StatusCounts)]) {
    if by_stream.is_empty() {
        return;
    }
    let mut rows = Table::new(&[
        "  STREAM",
        "PENDING",
        "FAILED",
        "DEAD_LETTER",
        "PROCESSED",
        "TOTAL",
    ]);
    for (stream, counts) in by_stream {
        rows.row(vec![
            format!("  {}", stream.as_deref().unwrap_or("(none)")),
            counts.get(EventStatus::Pending).to_string(),
            counts.get(EventStatus::Failed).to_string(),
            counts.get(EventStatus::DeadLetter).to_string(),
            counts.get(EventStatus::Processed).to_string(),
            counts.total().to_string(),
        ]);
    }
    rows.print();
}

fn stream_json(stream: &Stream) -> Value {
    match stream {
        Stream::Stats {
            stream,
            group,
            stats,
        } => json!({
            "stream": stream,
            "group": group,
            "pending": stats.pending,
            "lag": stats.lag,
        }),
        Stream::NoGroup { stream, group } => json!({
            "stream": stream,
            "group": group,
            "error": "the consumer group does not exist",
        }),
        Stream::Failed {
            stream,
            group,
            error,
        } => json!({
            "stream": stream,
            "group": group,
            "error": error.to_string(),
        }),
    }
}

fn print_streams(streams: &[Stream]) {
    if streams.is_empty() {
        println!("stream: not shown (give --stream and --group, or EVENTFLOW_STREAM and EVENTFLOW_GROUP)");
    }
    for stream in streams {
        print_stream(stream);
    }
}

fn print_stream(stream: &Stream) {
    match stream {
        Stream::Stats {
            stream,
            group,
            stats,
        } => {
            println!("stream: {}, group {}", safe(stream), safe(group));
            println!("  pending (delivered, not acknowledged)  {}", stats.pending);
            println!(
                "  lag (not yet delivered)                {}",
                stats
                    .lag
                    .map_or("unknown".to_string(), |lag| lag.to_string())
            );
        }
        Stream::NoGroup { stream, group } => {
            println!(
                "stream: {}, group {}: the group does not exist",
                safe(stream),
                safe(group)
            )
        }
        Stream::Failed {
            stream,
            group,
            error,
        } => {
            println!(
                "stream: {}, group {}: cannot read: {}",
                safe(stream),
                safe(group),
                safe(&error.to_string())
            )
        }
    }
}

fn outbox_json(outbox: &OutboxState) -> Value {
    match outbox {
        OutboxState::NotInstalled { table } => json!({ "installed": false, "table": table }),
        OutboxState::Installed(report) => {
            let counts: serde_json::Map<String, Value> = OutboxStatus::ALL
                .iter()
                .map(|status| (status.as_str().to_string(), report.count(*status).into()))
                .collect();
            json!({
                "installed": true,
                "table": report.table,
                "counts": counts,
                "backlog": report.backlog(),
                "oldest_unpublished_at": report.counts.oldest_unpublished,
                "oldest_unpublished_age_seconds":
                    report.oldest_unpublished_age().map(|age| age.as_secs()),
            })
        }
        _ => json!({ "installed": true }),
    }
}

fn print_outbox(outbox: &OutboxState) {
    let report = match outbox {
        OutboxState::Installed(report) => report,
        OutboxState::NotInstalled { table } => {
            println!(
                "outbox: not installed (no table {table}; `eventflow migrate --outbox` creates it)"
            );
            return;
        }
        _ => {
            println!("outbox: installed");
            return;
        }
    };
    println!("outbox: {}", report.table);
    let mut rows = Table::new(&["  STATUS", "ROWS", "OLDEST"]);
    for status in OutboxStatus::ALL {
        rows.row(vec![
            format!("  {}", status.as_str()),
            report.count(status).to_string(),
            String::new(),
        ]);
    }
    rows.row(vec![
        "  backlog".into(),
        report.backlog().to_string(),
        report
            .oldest_unpublished_age()
            .map(|age| format!("{} ago", format_age(age)))
            .unwrap_or_default(),
    ]);
    rows.print();
}
