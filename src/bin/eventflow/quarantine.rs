//! `eventflow quarantine list|show|replay|purge`.

use super::cli::{Cli, Quarantine};
use super::confirm::purge_confirmed;
use super::output::{self, progress, Table};
use super::text::{cut, format_age, format_time, safe};
use super::Failure;
use eventflow::admin::{Admin, Correction};
use eventflow::quarantine::{encode_fields, QuarantinedEntry};
use eventflow::store::{InboxStore, Page, QuarantineFilter};
use serde_json::{json, Value};

pub fn run<S: InboxStore>(
    cli: &Cli,
    admin: &Admin<S>,
    command: &Quarantine,
) -> Result<(), Failure> {
    match command {
        Quarantine::List {
            stream,
            reason,
            since,
            until,
            include_replayed,
            page,
        } => {
            let filter = QuarantineFilter {
                stream: stream.clone(),
                reason_contains: reason.clone(),
                received_from: *since,
                received_before: *until,
                replayed: if *include_replayed { None } else { Some(false) },
                ..QuarantineFilter::default()
            };
            let listed = admin.list_quarantined(
                &filter,
                Page {
                    limit: page.limit as usize,
                    after: page.after,
                },
            )?;
            if cli.json {
                output::json(&json!({
                    "entries": listed.entries.iter().map(entry_json).collect::<Vec<_>>(),
                    "next_cursor": listed.next.map(|cursor| cursor.to_string()),
                }));
                return Ok(());
            }
            if listed.entries.is_empty() {
                say!("no quarantined entries");
                return Ok(());
            }
            let mut table =
                Table::new(&["ID", "STREAM", "ENTRY", "RECEIVED", "REPLAYED", "REASON"]);
            for entry in &listed.entries {
                table.row(vec![
                    entry.id.to_string(),
                    entry.stream.clone(),
                    entry.stream_id.clone(),
                    format_time(entry.received_at),
                    entry
                        .replayed_event_id
                        .clone()
                        .unwrap_or_else(|| "-".into()),
                    cut(&entry.reason, 60),
                ]);
            }
            table.print();
            if let Some(next) = listed.next {
                say!("more: --after {next}");
            }
            Ok(())
        }
        Quarantine::Show { id } => {
            let entry = admin.find_quarantined(*id)?;
            if cli.json {
                output::json(&entry_json(&entry));
                return Ok(());
            }
            say!("id          {}", entry.id);
            say!(
                "stream      {} (entry {})",
                safe(&entry.stream),
                safe(&entry.stream_id)
            );
            say!("received    {}", format_time(entry.received_at));
            say!("reason      {}", safe(&entry.reason));
            if let Some(oversized) = &entry.oversized {
                say!(
                    "oversized   {} bytes in {} fields; only a prefix of each is kept",
                    oversized.entry_bytes,
                    oversized.field_count
                );
            }
            match (&entry.replayed_at, &entry.replayed_event_id) {
                (Some(at), Some(event_id)) => {
                    say!(
                        "replayed    {} as event {}",
                        format_time(*at),
                        safe(event_id)
                    )
                }
                _ => say!("replayed    no"),
            }
            say!("fields");
            for pair in encode_fields(&entry.fields)
                .as_array()
                .into_iter()
                .flatten()
            {
                let show = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
                say!("  {} = {}", safe(&show(&pair[0])), safe(&show(&pair[1])));
            }
            Ok(())
        }
        Quarantine::Replay {
            id,
            data,
            set,
            max_retries,
        } => {
            let correction = if let Some(data) = data {
                Correction::Data(
                    serde_json::from_str(data)
                        .map_err(|error| Failure::Usage(format!("--data is not JSON: {error}")))?,
                )
            } else if !set.is_empty() {
                let fields = set
                    .iter()
                    .map(|pair| {
                        pair.split_once('=')
                            .map(|(name, value)| (name.to_string(), value.to_string()))
                            .ok_or_else(|| {
                                Failure::Usage(format!("--set {pair:?}: expected NAME=VALUE"))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Correction::Fields(fields)
            } else {
                Correction::AsIs
            };
            let event_id = admin.replay_quarantined(*id, correction, *max_retries)?;
            if cli.json {
                output::json(&json!({ "replayed": id, "event_id": event_id }));
            } else {
                say!("replayed {id} as event {} (pending)", safe(&event_id));
            }
            Ok(())
        }
        Quarantine::Purge(purge) => {
            purge_confirmed(purge, "quarantined entry")?;
            let older_than = &purge.older_than;
            let bar = progress(cli.json, "deleted");
            let deleted = admin.purge_quarantined(*older_than, &mut |so_far| {
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
                    "deleted {deleted} quarantined entries older than {}",
                    format_age(*older_than)
                );
            }
            Ok(())
        }
    }
}

fn entry_json(entry: &QuarantinedEntry) -> Value {
    json!({
        "id": entry.id,
        "stream": entry.stream,
        "entry_id": entry.stream_id,
        "fields": encode_fields(&entry.fields),
        "oversized": entry.oversized.as_ref().map(|oversized| json!({
            "entry_bytes": oversized.entry_bytes,
            "field_count": oversized.field_count,
            "value_bytes": oversized.value_bytes,
        })),
        "reason": entry.reason,
        "received_at": entry.received_at,
        "replayed_at": entry.replayed_at,
        "replayed_event_id": entry.replayed_event_id,
    })
}
