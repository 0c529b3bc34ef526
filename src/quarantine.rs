//! Malformed stream entries, kept instead of dropped.
//!
//! An entry that does not parse into an [`Event`] is stored in the inbox's
//! quarantine table with its raw fields, stream id and the reason, and only then acknowledged.
//! Raw fields are stored as a JSON array of `[name, value]` pairs in stream order; a name or value
//! that is not UTF-8, or holds a NUL character (which PostgreSQL's `jsonb` refuses), is stored as
//! `{"hex": "..."}` so that nothing is lost.

use crate::error::{Error, Result};
use crate::event::Event;
use crate::store::{InboxStore, QuarantineReplay, ReceivedEvent};
use crate::transport::StreamEntry;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

/// A stream entry that could not be parsed, as the quarantine table holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantinedEntry {
    /// The quarantine row's id.
    pub id: Uuid,
    /// The stream the entry came from.
    pub stream: String,
    /// The entry's stream id.
    pub stream_id: String,
    /// The entry's fields exactly as they arrived.
    pub fields: Vec<(String, Vec<u8>)>,
    /// Why it was quarantined.
    pub reason: String,
    /// When it was quarantined.
    pub received_at: DateTime<Utc>,
    /// When an operator replayed it into the inbox, if they have.
    pub replayed_at: Option<DateTime<Utc>>,
    /// The `event_id` it was replayed as.
    pub replayed_event_id: Option<String>,
}

impl QuarantinedEntry {
    /// The entry as the transport delivered it, for re-parsing.
    pub fn to_stream_entry(&self) -> StreamEntry {
        StreamEntry {
            id: self.stream_id.clone(),
            fields: self.fields.clone(),
        }
    }
}

/// Encodes raw fields as the quarantine table's JSON.
pub fn encode_fields(fields: &[(String, Vec<u8>)]) -> Value {
    Value::Array(
        fields
            .iter()
            .map(|(name, raw)| json!([encode_text(name.as_bytes()), encode_text(raw)]))
            .collect(),
    )
}

fn encode_text(raw: &[u8]) -> Value {
    match std::str::from_utf8(raw) {
        Ok(text) if !text.contains('\0') => Value::String(text.to_string()),
        _ => json!({ "hex": hex(raw) }),
    }
}

fn decode_text(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::String(text) => Some(text.clone().into_bytes()),
        Value::Object(map) => unhex(map.get("hex")?.as_str()?),
        _ => None,
    }
}

/// Decodes the quarantine table's JSON back into raw fields.
pub fn decode_fields(value: &Value) -> Result<Vec<(String, Vec<u8>)>, String> {
    let pairs = value.as_array().ok_or("raw fields are not a JSON array")?;
    pairs
        .iter()
        .map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([name, value]) => {
                let name = decode_text(name)
                    .and_then(|raw| String::from_utf8(raw).ok())
                    .ok_or_else(|| format!("raw field name {name} is not text or hex text"))?;
                let raw = decode_text(value)
                    .ok_or_else(|| format!("field {name}: value {value} is not text or hex"))?;
                Ok((name, raw))
            }
            _ => Err(format!("raw field {pair} is not a [name, value] pair")),
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(digits: &str) -> Option<Vec<u8>> {
    if digits.len() % 2 != 0 {
        return None;
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(digits.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Replays a quarantined entry into the inbox as a new pending event, once its cause is fixed.
///
/// `corrected` replaces the entry's raw fields (to fix a producer's mistake by hand); `None`
/// re-parses them as they are (after a parser or contract change). The entry is marked replayed
/// in the same transaction that stores the event. Returns the stored event's id.
pub fn replay<S: InboxStore>(
    store: &S,
    id: Uuid,
    corrected: Option<Vec<(String, Vec<u8>)>>,
    max_retries: i32,
    now: DateTime<Utc>,
) -> Result<String> {
    let entry = store.find_quarantined(id)?.ok_or(Error::NotFound(id))?;
    let stream_entry = StreamEntry {
        id: entry.stream_id.clone(),
        fields: corrected.unwrap_or(entry.fields),
    };
    let event = Event::from_entry(&stream_entry)?;
    let received = ReceivedEvent {
        row_id: Uuid::now_v7(),
        stream_id: entry.stream_id,
        event,
    };
    let replayed = store.replay_quarantined(&QuarantineReplay {
        id,
        event: &received,
        now,
        max_retries,
    })?;
    if !replayed {
        return Err(Error::NotFound(id));
    }
    tracing::info!(quarantine_id = %id, event_id = %received.event.event_id, "replayed a quarantined entry");
    Ok(received.event.event_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_including_binary_values() {
        let fields = vec![
            ("data".to_string(), b"{not json".to_vec()),
            ("blob".to_string(), vec![0x00, 0xff, 0x10]),
            ("data".to_string(), "é".as_bytes().to_vec()),
            ("nul\0name".to_string(), b"a\0b".to_vec()),
        ];
        let encoded = encode_fields(&fields);
        assert_eq!(encoded[1][1], json!({"hex": "00ff10"}));
        assert_eq!(
            encoded[3],
            json!([{"hex": "6e756c006e616d65"}, {"hex": "610062"}])
        );
        assert!(
            !encoded.to_string().contains("\\u0000"),
            "no NUL reaches jsonb"
        );
        assert_eq!(decode_fields(&encoded).unwrap(), fields);
    }

    #[test]
    fn decode_rejects_other_shapes() {
        assert!(decode_fields(&json!({"a": 1})).is_err());
        assert!(decode_fields(&json!([["a"]])).is_err());
        assert!(decode_fields(&json!([["a", {"hex": "0"}]])).is_err());
    }
}
