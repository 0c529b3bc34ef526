//! `eventflow status`: the inbox, the stream and the outbox at a glance.

use super::cli::Cli;
use super::connect::{open_outbox, open_redis};
use super::output::{self, Table};
use super::redact::redacted;
use super::text::format_age;
use super::Failure;
use eventflow::admin::{stream_status, Admin, AdminError, InboxStatus, OutboxState};
use eventflow::store::outbox::OutboxStatus;
use eventflow::store::InboxStore;
use eventflow::transport::{GroupStats, TransportError};
use eventflow::EventStatus;
use serde_json::{json, Value};

/// What the stream section found.
enum Stream {
    /// No --stream/--group given.
    NotConfigured,
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
    let stream = stream_section(cli)?;
    if cli.json {
        output::json(&json!({
            "inbox": inbox_json(&inbox, &cli.connection.table, kind),
            "stream": stream_json(&stream),
            "outbox": outbox_json(&outbox),
        }));
    } else {
        let url = cli.connection.database_url.as_deref().unwrap_or_default();
        print_inbox(&inbox, &cli.connection.table, kind, url);
        print_stream(&stream);
        print_outbox(&outbox);
    }
    match stream {
        // Printed above; the exit code says the stream could not be read.
        Stream::Failed { error, .. } => Err(Failure::Admin(error)),
        _ => Ok(()),
    }
}

fn stream_section(cli: &Cli) -> Result<Stream, Failure> {
    let (Some(stream), Some(group)) = (&cli.connection.stream, &cli.connection.group) else {
        return Ok(Stream::NotConfigured);
    };
    let (stream, group) = (stream.clone(), group.clone());
    let redis = open_redis(&cli.connection)?;
    Ok(match stream_status(&redis, &stream, &group) {
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
    })
}

fn inbox_json(inbox: &InboxStatus, table: &str, kind: &str) -> Value {
    let counts: serde_json::Map<String, Value> = EventStatus::ALL
        .iter()
        .map(|status| {
            (
                status.as_str().to_string(),
                inbox.counts.get(*status).into(),
            )
        })
        .collect();
    json!({
        "table": table,
        "database": kind,
        "counts": counts,
        "total": inbox.counts.total(),
        "oldest_pending_age_seconds": inbox.pending_lag().map(|age| age.as_secs()),
        "oldest_failed_age_seconds": inbox.failed_lag().map(|age| age.as_secs()),
    })
}

fn print_inbox(inbox: &InboxStatus, table: &str, kind: &str, url: &str) {
    println!("inbox: {table} ({kind} at {})", redacted(url));
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
}

fn stream_json(stream: &Stream) -> Value {
    match stream {
        Stream::NotConfigured => Value::Null,
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

fn print_stream(stream: &Stream) {
    match stream {
        Stream::NotConfigured => {
            println!("stream: not shown (give --stream and --group, or EVENTFLOW_STREAM and EVENTFLOW_GROUP)")
        }
        Stream::Stats {
            stream,
            group,
            stats,
        } => {
            println!("stream: {stream}, group {group}");
            println!("  pending (delivered, not acknowledged)  {}", stats.pending);
            println!(
                "  lag (not yet delivered)                {}",
                stats
                    .lag
                    .map_or("unknown".to_string(), |lag| lag.to_string())
            );
        }
        Stream::NoGroup { stream, group } => {
            println!("stream: {stream}, group {group}: the group does not exist")
        }
        Stream::Failed {
            stream,
            group,
            error,
        } => {
            println!("stream: {stream}, group {group}: cannot read: {error}")
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
