//! `eventflow publish`: add an event to the stream by hand.

use super::cli::Cli;
use super::connect::open_redis;
use super::output;
use super::text::safe;
use super::Failure;
use eventflow::admin::{parse_event_json, publish_event};
use eventflow::transport::partition::{partition_of, partition_stream};
use serde_json::json;
use std::io::Read;
use std::path::Path;

pub fn run(
    cli: &Cli,
    streams: &[String],
    partitions: &[(String, u32)],
    inline: Option<&str>,
    file: Option<&Path>,
) -> Result<(), Failure> {
    let stream = match streams {
        [stream] => stream,
        [] => {
            return Err(Failure::Usage(
                "publish needs the stream: pass --stream or set EVENTFLOW_STREAM".into(),
            ))
        }
        several => {
            return Err(Failure::Usage(format!(
                "publish adds to one stream; --stream names {}: pass just one",
                several.join(", ")
            )))
        }
    };
    let text = match (inline, file) {
        (Some("-"), _) => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|error| Failure::Usage(format!("cannot read standard input: {error}")))?;
            text
        }
        (Some(text), _) => text.to_string(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|error| Failure::Usage(format!("cannot read {}: {error}", path.display())))?,
        (None, None) => return Err(Failure::Usage("give the event as JSON, or --file".into())),
    };
    let event = parse_event_json(&text, chrono::Utc::now())?;
    // A split stream's event goes where the relay would send it: its aggregate's partition.
    let partition = partitions
        .iter()
        .find(|(split, _)| split == stream)
        .map(|(_, count)| partition_of(&event.aggregate_id, *count));
    let target = partition.map_or_else(
        || stream.clone(),
        |partition| partition_stream(stream, partition),
    );
    let redis = open_redis(&cli.connection)?;
    let entry_id = publish_event(&redis, &target, &event)?;
    if cli.json {
        let mut said = json!({
            "stream": target,
            "entry_id": entry_id,
            "event_id": event.event_id,
        });
        if let Some(partition) = partition {
            said["partition_of"] = json!(stream);
            said["partition"] = json!(partition);
        }
        output::json(&said);
    } else {
        say!(
            "published event {} to {} as entry {}",
            safe(&event.event_id),
            safe(&target),
            safe(&entry_id)
        );
    }
    Ok(())
}
