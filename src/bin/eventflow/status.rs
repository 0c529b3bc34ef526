//! `eventflow status`: the inbox (its owner, counts in all and per stream, parked aggregates,
//! quarantined entries), the streams and the outbox at a glance.

use super::cli::{Cli, StreamArgs};
use super::connect::{open_outbox, open_redis};
use super::output::{self, Table};
use super::text::{format_age, safe};
use super::Failure;
use eventflow::admin::{stream_status, Admin, AdminError, InboxStatus, OutboxState, StreamStatus};
use eventflow::redact::redact;
use eventflow::store::outbox::OutboxStatus;
use eventflow::store::{InboxStore, StatusCounts};
use eventflow::transport::GroupStats;
use eventflow::EventStatus;
use serde_json::{json, Value};

/// What the stream section found for one stream.
enum StreamLine {
    Stats {
        stream: String,
        group: String,
        stats: GroupStats,
    },
    NoGroup {
        stream: String,
        group: String,
    },
    NoStream {
        stream: String,
        group: String,
    },
    Failed {
        stream: String,
        group: String,
        error: AdminError,
    },
}

pub fn run<S: InboxStore>(
    cli: &Cli,
    admin: &Admin<S>,
    kind: &str,
    streams: &StreamArgs,
) -> Result<(), Failure> {
    let inbox = admin.inbox_status()?;
    let outbox = open_outbox(&cli.connection, false)?.status()?;
    let streams = stream_section(cli, streams)?;
    if cli.json {
        let streams_json: Vec<Value> = streams
            .iter()
            .map(|(partition_of, line)| partitioned_json(stream_json(line), partition_of))
            .collect();
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
    match streams.into_iter().find_map(|(_, stream)| match stream {
        StreamLine::Failed { error, .. } => Some(error),
        _ => None,
    }) {
        Some(error) => Err(Failure::Admin(error)),
        None => Ok(()),
    }
}

/// The split stream and partition number a line is about, for a partition.
type PartitionOf = Option<(String, u32)>;

/// Each `--stream`'s group stats, partition by partition for a split one; none without
/// `--group`.
fn stream_section(
    cli: &Cli,
    streams: &StreamArgs,
) -> Result<Vec<(PartitionOf, StreamLine)>, Failure> {
    let Some(group) = &streams.group else {
        return Ok(Vec::new());
    };
    if !streams.any() {
        return Ok(Vec::new());
    }
    let redis = open_redis(&cli.connection)?;
    Ok(streams
        .shown()
        .into_iter()
        .map(|shown| {
            let (stream, group) = (shown.stream, group.clone());
            let line = match stream_status(&redis, &stream, &group) {
                Ok(StreamStatus::Group(stats)) => StreamLine::Stats {
                    stream,
                    group,
                    stats,
                },
                Ok(StreamStatus::NoStream) => StreamLine::NoStream { stream, group },
                Ok(_) => StreamLine::NoGroup { stream, group },
                Err(error) => StreamLine::Failed {
                    stream,
                    group,
                    error,
                },
            };
            (shown.partition_of, line)
        })
        .collect())
}

/// A stream's JSON object, with `partition_of` and `partition` when it is a partition.
fn partitioned_json(mut stream: Value, partition_of: &PartitionOf) -> Value {
    if let (Some((split, partition)), Some(object)) = (partition_of, stream.as_object_mut()) {
        object.insert("partition_of".into(), json!(split));
        object.insert("partition".into(), json!(partition));
    }
    stream
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
        "quarantine": {
            "waiting": inbox.quarantine.waiting,
            "replayed": inbox.quarantine.replayed,
            "oldest_waiting_at": inbox.quarantine.oldest_waiting,
            "oldest_waiting_age_seconds": inbox.quarantine_lag().map(|age| age.as_secs()),
        },
    })
}

fn print_inbox(inbox: &InboxStatus, table: &str, kind: &str, url: &str) {
    say!("inbox: {table} ({kind} at {})", safe(&redact(url)));
    match &inbox.owner {
        Some(owner) => say!("  owner: consumer group {}", safe(owner)),
        None => say!("  owner: no owner yet (the first consumer to start adopts the table)"),
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
        _ if inbox.parked.aggregates == 0 => say!("  parked: none"),
        Some(age) => say!(
            "  parked: {parked}, the oldest waiting event {} ago (`eventflow parked list`)",
            format_age(age)
        ),
        None => say!("  parked: {parked}, no events waiting yet (`eventflow parked list`)"),
    }
    let quarantine = &inbox.quarantine;
    let replayed = match quarantine.replayed {
        0 => String::new(),
        n => format!(" ({n} replayed kept)"),
    };
    match inbox.quarantine_lag() {
        _ if quarantine.waiting == 0 => say!("  quarantined: none waiting{replayed}"),
        Some(age) => say!(
            "  quarantined: {} waiting, the oldest {} ago{replayed} (`eventflow quarantine list`)",
            quarantine.waiting,
            format_age(age)
        ),
        None => say!(
            "  quarantined: {} waiting{replayed} (`eventflow quarantine list`)",
            quarantine.waiting
        ),
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

fn stream_json(stream: &StreamLine) -> Value {
    match stream {
        StreamLine::Stats {
            stream,
            group,
            stats,
        } => json!({
            "stream": stream,
            "group": group,
            "pending": stats.pending,
            "lag": stats.lag,
        }),
        StreamLine::NoGroup { stream, group } => json!({
            "stream": stream,
            "group": group,
            "missing": "group",
            "error": "the consumer group does not exist",
        }),
        StreamLine::NoStream { stream, group } => json!({
            "stream": stream,
            "group": group,
            "missing": "stream",
            "error": "the stream does not exist",
        }),
        StreamLine::Failed {
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

fn print_streams(streams: &[(PartitionOf, StreamLine)]) {
    if streams.is_empty() {
        say!("stream: not shown (give --stream and --group, or EVENTFLOW_STREAM and EVENTFLOW_GROUP)");
    }
    for (partition_of, stream) in streams {
        print_stream(stream);
        if let Some((split, partition)) = partition_of {
            say!("  partition {partition} of {}", safe(split));
        }
    }
}

fn print_stream(stream: &StreamLine) {
    match stream {
        StreamLine::Stats {
            stream,
            group,
            stats,
        } => {
            say!("stream: {}, group {}", safe(stream), safe(group));
            say!("  pending (delivered, not acknowledged)  {}", stats.pending);
            say!(
                "  lag (not yet delivered)                {}",
                stats
                    .lag
                    .map_or("unknown".to_string(), |lag| lag.to_string())
            );
        }
        StreamLine::NoGroup { stream, group } => {
            say!(
                "stream: {}, group {}: the group does not exist (a consumer creates it when it \
                 starts)",
                safe(stream),
                safe(group)
            )
        }
        StreamLine::NoStream { stream, group } => {
            say!(
                "stream: {}, group {}: the stream does not exist (nothing published to it yet, \
                 or a misspelt name)",
                safe(stream),
                safe(group)
            )
        }
        StreamLine::Failed {
            stream,
            group,
            error,
        } => {
            say!(
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
            say!(
                "outbox: not installed (no table {table}; `eventflow migrate --outbox` creates it)"
            );
            return;
        }
        _ => {
            say!("outbox: installed");
            return;
        }
    };
    say!("outbox: {}", report.table);
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
