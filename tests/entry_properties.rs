//! Property tests of entry parsing and quarantine: any stream entry, in either style or in
//! none, with arbitrary field names and byte values, either parses into an event the store
//! takes (and reads back with its headers), or becomes a quarantine record that gives back its raw bytes exactly (names
//! included) when read and replayed; never a panic. Oversized entries keep a bounded record.
//!
//! Runs on SQLite always and on PostgreSQL (whose `jsonb` refuses NUL) when it answers.

mod support;

use chrono::Utc;
use eventflow::quarantine::{
    decode_record, encode_fields, triage, OVERSIZED_KEPT_FIELDS, OVERSIZED_PREFIX_BYTES,
};
use eventflow::store::{InboxStore, PostgresStore, ReceivedBatch, ReceivedEvent, SqliteStore};
use eventflow::transport::StreamEntry;
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use uuid::Uuid;

const MAX_ENTRY_BYTES: usize = 1024 * 1024;
const NAMES: [&str; 9] = [
    "data",
    "event_id",
    "event_type",
    "aggregate_id",
    "occurred_on",
    "payload",
    "correlation_id",
    "causation_id",
    "headers",
];

/// Bytes that are often text, sometimes not: NUL, invalid UTF-8, control characters.
fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..max),
        ".{0,12}".prop_map(String::into_bytes),
        Just(b"\0".to_vec()),
        Just(vec![0xc3, 0x28]),
    ]
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => proptest::sample::select(NAMES.to_vec()).prop_map(|n| n.as_bytes().to_vec()),
        1 => bytes(8),
    ]
}

/// A plausible value for an event attribute, or junk.
fn attribute() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(Uuid::new_v4().to_string())),
        Just(json!("2025-01-01T00:00:00Z")),
        Just(json!("+10000-01-01T00:00:00Z")),
        Just(json!("OrderCreated")),
        ".{0,10}".prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        Just(json!(null)),
        Just(json!({"k": "v\u{0}", "n": [1, 2]})),
        Just(json!([1, "two"])),
        Just(json!("x".repeat(300))),
    ]
}

/// A `data` object: mostly the event's attributes, some missing or odd, some extra.
fn data_object() -> impl Strategy<Value = Value> {
    vec(
        (
            prop_oneof![
                4 => proptest::sample::select(NAMES[1..].to_vec()).prop_map(str::to_string),
                1 => ".{0,6}",
            ],
            attribute(),
        ),
        0..9,
    )
    .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>()))
}

/// A whole valid event in the `data` style, so that the parsing side is well exercised; some
/// with headers (text of any kind, so some hold a NUL and are refused).
fn valid_data() -> impl Strategy<Value = Value> {
    let headers = proptest::option::of(vec(("[a-z-]{1,12}", ".{0,16}"), 0..4));
    ("[a-zA-Z0-9-]{1,20}", "[A-Za-z]{1,12}", attribute(), headers).prop_map(
        |(id, kind, payload, headers)| {
            let mut data = json!({"event_id": id, "event_type": kind,
                "aggregate_id": Uuid::new_v4().to_string(),
                "occurred_on": "2025-06-01T12:00:00.5+02:00", "payload": payload});
            if let Some(headers) = headers {
                data["headers"] = Value::Object(
                    headers
                        .into_iter()
                        .map(|(name, value)| (name, Value::String(value)))
                        .collect(),
                );
            }
            data
        },
    )
}

fn entry() -> impl Strategy<Value = StreamEntry> {
    let id = (1u64..1 << 45, 0u64..1000).prop_map(|(ms, seq)| format!("{ms}-{seq}"));
    let json_text = prop_oneof![data_object(), valid_data()].prop_map(|v| v.to_string());
    let fields = prop_oneof![
        // Anything at all.
        vec((name(), bytes(24)), 0..7),
        // The `data` style, with a JSON object (or broken text) and maybe more fields.
        (
            prop_oneof![json_text.clone().prop_map(String::into_bytes), bytes(16)],
            vec((name(), bytes(12)), 0..3)
        )
            .prop_map(|(data, more)| {
                let mut fields = vec![(b"data".to_vec(), data)];
                fields.extend(more);
                fields
            }),
        // The flattened style: one field per attribute.
        (data_object(), vec((bytes(6), bytes(8)), 0..2)).prop_map(|(object, more)| {
            let mut fields: Vec<(Vec<u8>, Vec<u8>)> = object
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    (k.as_bytes().to_vec(), text.into_bytes())
                })
                .collect();
            fields.extend(more);
            fields
        }),
    ];
    (id, fields).prop_map(|(id, fields)| StreamEntry { id, fields })
}

fn sqlite() -> &'static SqliteStore {
    static STORE: OnceLock<SqliteStore> = OnceLock::new();
    STORE.get_or_init(|| {
        let store = SqliteStore::open_in_memory().unwrap();
        store.migrate().unwrap();
        store
    })
}

fn postgres() -> Option<&'static PostgresStore> {
    static STORE: OnceLock<Option<PostgresStore>> = OnceLock::new();
    STORE
        .get_or_init(|| {
            if !support::postgres_available("entry_properties::postgres") {
                return None;
            }
            let store = PostgresStore::builder(support::postgres_url())
                .table(support::unique_name("props"))
                .build()
                .unwrap();
            store.migrate().unwrap();
            Some(store)
        })
        .as_ref()
}

/// Each case gets its own stream id, so that no case meets another's duplicate.
fn fresh_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{}-0", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The property on one store: a parsed event is stored; a malformed entry's record reads back
/// and replays as exactly the bytes that arrived.
fn check_on<S: InboxStore>(store: &S, mut entry: StreamEntry) -> Result<(), TestCaseError> {
    entry.id = fresh_id();
    match triage(&entry, MAX_ENTRY_BYTES) {
        Ok(event) => {
            prop_assert!(event.validate_received().is_ok(), "{event:?}");
            let received = ReceivedEvent {
                row_id: Uuid::now_v7(),
                stream_id: entry.id.clone(),
                event: event.clone(),
            };
            let batch = ReceivedBatch {
                stream: "props",
                ordered: false,
                events: std::slice::from_ref(&received),
                malformed: &[],
                received_at: Utc::now(),
                max_retries: 3,
                stored_by: None,
            };
            // A duplicate event id from an earlier case is skipped, as on the stream.
            let stored = store.store_received(&batch);
            prop_assert!(stored.is_ok(), "{stored:?} for {event:?}");
            if !stored.unwrap().inserted.is_empty() {
                let row = store
                    .find_by_event_id(&event.event_id)
                    .unwrap()
                    .expect("stored");
                prop_assert_eq!(&row.event.headers, &event.headers, "headers read back");
            }
        }
        Err(record) => {
            let id = record.id;
            let batch = ReceivedBatch {
                stream: "props",
                ordered: false,
                events: &[],
                malformed: std::slice::from_ref(&record),
                received_at: Utc::now(),
                max_retries: 3,
                stored_by: None,
            };
            let stored = store.store_received(&batch);
            prop_assert!(stored.is_ok(), "{stored:?} for {entry:?}");
            let kept = store.find_quarantined(id).unwrap().expect("quarantined");
            prop_assert_eq!(&kept.fields, &entry.fields, "raw bytes kept exactly");
            prop_assert_eq!(&kept.oversized, &None);
            prop_assert_eq!(kept.to_stream_entry(), entry, "replay sees what arrived");
        }
    }
    Ok(())
}

fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_entry_is_an_event_or_a_faithful_quarantine_record_on_sqlite(entry in entry()) {
        // The encoding alone round-trips, and never holds a NUL that jsonb would refuse.
        let encoded = encode_fields(&entry.fields);
        prop_assert!(!has_nul(&encoded), "{encoded}");
        prop_assert_eq!(decode_record(&encoded).unwrap(), (entry.fields.clone(), None));
        check_on(sqlite(), entry)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn oversized_entries_keep_a_bounded_prefix(
        fields in vec((bytes(1200), vec(any::<u8>(), 0..2000)), 1..70),
        limit in 1024usize..4096,
    ) {
        let entry = StreamEntry { id: fresh_id(), fields };
        let size = entry.size();
        match triage(&entry, limit) {
            Ok(_) => prop_assert!(size <= limit),
            Err(record) if size > limit => {
                let said = format!("entry is {size} bytes");
                prop_assert!(record.reason.contains(&said), "{}", record.reason);
                let (kept, oversized) = decode_record(&record.raw_fields).unwrap();
                let oversized = oversized.expect("marked oversized");
                prop_assert_eq!(oversized.entry_bytes, size as u64);
                prop_assert_eq!(oversized.field_count, entry.fields.len() as u64);
                prop_assert_eq!(kept.len(), entry.fields.len().min(OVERSIZED_KEPT_FIELDS));
                for (((name, prefix), (full_name, full)), bytes) in
                    kept.iter().zip(&entry.fields).zip(&oversized.value_bytes)
                {
                    prop_assert!(name.len() <= OVERSIZED_PREFIX_BYTES && full_name.starts_with(name));
                    prop_assert!(prefix.len() <= OVERSIZED_PREFIX_BYTES && full.starts_with(prefix));
                    prop_assert_eq!(*bytes, full.len() as u64);
                }
            }
            Err(_) => {} // small enough, and malformed: the first property's case
        }
    }

    #[test]
    fn any_entry_is_an_event_or_a_faithful_quarantine_record_on_postgres(entry in entry()) {
        if let Some(store) = postgres() {
            check_on(store, entry)?;
        }
    }
}
