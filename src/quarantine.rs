//! Malformed stream entries, kept instead of dropped.
//!
//! An entry that does not parse into an [`Event`] is stored in the inbox's
//! quarantine table with its raw fields, stream id and the reason, and only then acknowledged.
//! Raw fields are stored as a JSON array of `[name, value]` pairs in stream order; a name or value
//! that is not UTF-8, or holds a NUL character (which PostgreSQL's `jsonb` refuses), is stored as
//! `{"hex": "..."}` so that nothing is lost: names and values read back byte for byte.
//!
//! An entry larger than the consumer's maximum entry size is not kept whole (that would let one
//! producer fill the database): it is recorded as a JSON object
//! `{"oversized": {"entry_bytes": N, "field_count": F}, "fields": [[name, prefix, bytes], ...]}`
//! holding its size, its first [`OVERSIZED_KEPT_FIELDS`] field names (each cut to
//! [`OVERSIZED_PREFIX_BYTES`]) and the first [`OVERSIZED_PREFIX_BYTES`] bytes of their values,
//! with each value's full length. Such an entry cannot be replayed as it is, only with a
//! correction that replaces all of its fields.

use crate::error::{Error, Result};
use crate::event::{EntryError, Event};
use crate::store::{printable, InboxStore, MalformedEntry, QuarantineReplay, ReceivedEvent};
use crate::transport::StreamEntry;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

/// How many bytes of each field name and value an oversized entry's record keeps.
pub const OVERSIZED_PREFIX_BYTES: usize = 1024;
/// How many of an oversized entry's fields its record keeps (in stream order).
pub const OVERSIZED_KEPT_FIELDS: usize = 64;

/// Raw stream entry fields: names and values as bytes, in stream order.
pub type RawFields = Vec<(Vec<u8>, Vec<u8>)>;

/// A stream entry that could not be parsed, as the quarantine table holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantinedEntry {
    /// The quarantine row's id.
    pub id: Uuid,
    /// The stream the entry came from.
    pub stream: String,
    /// The entry's stream id.
    pub stream_id: String,
    /// The entry's fields exactly as they arrived, names and values as bytes; for an
    /// [`oversized`](Self::oversized) entry only the prefix kept of each.
    pub fields: RawFields,
    /// Set when the entry was larger than the consumer's maximum entry size and only a
    /// bounded prefix of it was kept.
    pub oversized: Option<Oversized>,
    /// Why it was quarantined.
    pub reason: String,
    /// When it was quarantined.
    pub received_at: DateTime<Utc>,
    /// When an operator replayed it into the inbox, if they have.
    pub replayed_at: Option<DateTime<Utc>>,
    /// The `event_id` it was replayed as.
    pub replayed_event_id: Option<String>,
}

/// What is known of an entry too large to keep whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oversized {
    /// The entry's size: every field name and value, in bytes.
    pub entry_bytes: u64,
    /// How many fields it had (the record keeps at most [`OVERSIZED_KEPT_FIELDS`]).
    pub field_count: u64,
    /// The full length of each kept field's value, in the order of the kept fields.
    pub value_bytes: Vec<u64>,
}

impl QuarantinedEntry {
    /// The entry as the transport delivered it, for re-parsing (for an oversized entry, only
    /// its kept prefix).
    pub fn to_stream_entry(&self) -> StreamEntry {
        StreamEntry {
            id: self.stream_id.clone(),
            fields: self.fields.clone(),
        }
    }
}

/// What the inbox makes of a stream entry: the event it holds, or, when it is larger than
/// `max_entry_bytes` or does not parse, the quarantine record to keep instead (its raw fields
/// exactly, or for an oversized entry its size, names and value prefixes; see the module docs).
pub fn triage(entry: &StreamEntry, max_entry_bytes: usize) -> Result<Event, MalformedEntry> {
    let (raw_fields, reason) = if entry.size() > max_entry_bytes {
        encode_oversized(entry, max_entry_bytes)
    } else {
        match Event::from_entry(entry) {
            Ok(event) => return Ok(event),
            Err(reason) => (encode_fields(&entry.fields), reason.to_string()),
        }
    };
    Err(MalformedEntry {
        id: Uuid::now_v7(),
        stream_id: entry.id.clone(),
        raw_fields,
        reason: printable(&reason),
    })
}

/// Encodes raw fields as the quarantine table's JSON.
pub fn encode_fields(fields: &[(Vec<u8>, Vec<u8>)]) -> Value {
    Value::Array(
        fields
            .iter()
            .map(|(name, raw)| json!([encode_text(name), encode_text(raw)]))
            .collect(),
    )
}

/// The quarantine record of an entry larger than `limit` bytes, and its reason: the entry's
/// size, its first fields' names and a bounded prefix of their values (see the module docs).
fn encode_oversized(entry: &StreamEntry, limit: usize) -> (Value, String) {
    let size = entry.size();
    let prefix = |bytes: &[u8]| encode_text(&bytes[..bytes.len().min(OVERSIZED_PREFIX_BYTES)]);
    let kept: Vec<Value> = entry
        .fields
        .iter()
        .take(OVERSIZED_KEPT_FIELDS)
        .map(|(name, value)| json!([prefix(name), prefix(value), value.len()]))
        .collect();
    let record = json!({
        "oversized": {"entry_bytes": size, "field_count": entry.fields.len()},
        "fields": kept,
    });
    let reason = format!(
        "entry is {size} bytes, over the maximum entry size of {limit} bytes \
         (max_entry_bytes); kept: its size, its first {} of {} field names and the first \
         {OVERSIZED_PREFIX_BYTES} bytes of each of their values",
        entry.fields.len().min(OVERSIZED_KEPT_FIELDS),
        entry.fields.len(),
    );
    (record, reason)
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
        Value::Object(map) if map.len() == 1 => unhex(map.get("hex")?.as_str()?),
        _ => None,
    }
}

/// Decodes the quarantine table's JSON of a whole entry back into raw fields.
pub fn decode_fields(value: &Value) -> Result<RawFields, String> {
    let pairs = value.as_array().ok_or("raw fields are not a JSON array")?;
    pairs
        .iter()
        .map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([name, value]) => decode_pair(name, value),
            _ => Err(format!("raw field {pair} is not a [name, value] pair")),
        })
        .collect()
}

fn decode_pair(name: &Value, value: &Value) -> Result<(Vec<u8>, Vec<u8>), String> {
    let raw_name =
        decode_text(name).ok_or_else(|| format!("raw field name {name} is not text or hex"))?;
    let raw = decode_text(value)
        .ok_or_else(|| format!("field {name}: value {value} is not text or hex"))?;
    Ok((raw_name, raw))
}

/// Decodes a quarantine record, whole ([`encode_fields`]) or oversized: its raw fields, and
/// what is known of an oversized entry.
pub fn decode_record(value: &Value) -> Result<(RawFields, Option<Oversized>), String> {
    let Some(record) = value.as_object() else {
        return Ok((decode_fields(value)?, None));
    };
    let bad = || format!("oversized record {value} is not as written");
    let info = record.get("oversized").ok_or_else(bad)?;
    let count = |key: &str| info.get(key).and_then(Value::as_u64).ok_or_else(bad);
    let mut oversized = Oversized {
        entry_bytes: count("entry_bytes")?,
        field_count: count("field_count")?,
        value_bytes: Vec::new(),
    };
    let mut fields = Vec::new();
    for kept in record
        .get("fields")
        .and_then(Value::as_array)
        .ok_or_else(bad)?
    {
        match kept.as_array().map(Vec::as_slice) {
            Some([name, prefix, Value::Number(bytes)]) => {
                fields.push(decode_pair(name, prefix)?);
                oversized.value_bytes.push(bytes.as_u64().ok_or_else(bad)?);
            }
            _ => return Err(bad()),
        }
    }
    Ok((fields, Some(oversized)))
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
/// re-parses them as they are (after a parser or contract change), which an oversized entry
/// refuses: only a prefix of it was kept. The entry is marked replayed in the same transaction
/// that stores the event. Returns the stored event's id.
pub fn replay<S: InboxStore>(
    store: &S,
    id: Uuid,
    corrected: Option<RawFields>,
    max_retries: i32,
    now: DateTime<Utc>,
) -> Result<String> {
    let entry = store.find_quarantined(id)?.ok_or(Error::NotFound(id))?;
    if entry.oversized.is_some() && corrected.is_none() {
        return Err(Error::Entry(EntryError::Invalid {
            field: "entry".into(),
            reason: "it was over the maximum entry size and only a prefix of it was kept; \
                     replay it with corrected fields"
                .into(),
        }));
    }
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
            (b"data".to_vec(), b"{not json".to_vec()),
            (b"blob".to_vec(), vec![0x00, 0xff, 0x10]),
            (b"data".to_vec(), "é".as_bytes().to_vec()),
            (b"nul\0name".to_vec(), b"a\0b".to_vec()),
            (vec![0xc3, 0x28], b"name is not UTF-8".to_vec()),
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
        assert_eq!(encoded[4][0], json!({"hex": "c328"}));
        assert_eq!(decode_fields(&encoded).unwrap(), fields);
        assert_eq!(decode_record(&encoded).unwrap(), (fields, None));
    }

    #[test]
    fn oversized_entries_keep_their_size_names_and_a_bounded_prefix() {
        let mut fields = vec![
            (b"data".to_vec(), vec![b'x'; 5000]),
            (vec![0xff; 2000], vec![0x00, 0x01]),
        ];
        for n in 0..100 {
            fields.push((format!("f{n}").into_bytes(), b"v".to_vec()));
        }
        let entry = StreamEntry {
            id: "7-1".into(),
            fields,
        };
        let (record, reason) = encode_oversized(&entry, 4096);
        let size = entry.size();
        assert!(
            reason.contains(&format!("entry is {size} bytes")) && reason.contains("4096 bytes"),
            "{reason}"
        );
        assert!(record.to_string().len() < 8 * OVERSIZED_PREFIX_BYTES);
        let (kept, oversized) = decode_record(&record).unwrap();
        let oversized = oversized.unwrap();
        assert_eq!(oversized.entry_bytes, size as u64);
        assert_eq!(oversized.field_count, 102);
        assert_eq!(kept.len(), OVERSIZED_KEPT_FIELDS);
        assert_eq!(oversized.value_bytes[..2], [5000, 2]);
        assert_eq!(
            kept[0],
            (b"data".to_vec(), vec![b'x'; OVERSIZED_PREFIX_BYTES])
        );
        assert_eq!(
            kept[1],
            (vec![0xff; OVERSIZED_PREFIX_BYTES], vec![0x00, 0x01])
        );
        assert_eq!(kept[2], (b"f0".to_vec(), b"v".to_vec()));
    }

    #[test]
    fn decode_rejects_other_shapes() {
        assert!(decode_fields(&json!({"a": 1})).is_err());
        assert!(decode_fields(&json!([["a"]])).is_err());
        assert!(decode_fields(&json!([["a", {"hex": "0"}]])).is_err());
        assert!(decode_record(&json!({"fields": []})).is_err());
        assert!(decode_record(&json!({"oversized": {"entry_bytes": 1}, "fields": []})).is_err());
    }
}
