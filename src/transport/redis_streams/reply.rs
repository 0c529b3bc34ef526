//! Parsing of Redis replies into the transport's types.
//!
//! Replies are read from raw [`redis::Value`]s rather than through the redis crate's
//! conversions, so field values stay bytes, nil entries (deleted while pending) are seen instead
//! of failing a conversion, and both RESP2 and RESP3 shapes are accepted. Keeping the parsing
//! apart from the commands lets it be tested on hand-built replies, without a server.

use redis::Value;

use crate::transport::{GroupStats, PendingEntry, Reclaimed, StreamEntry, TransportError};

/// A reply this module does not understand; `part` says which piece was off.
pub(super) fn malformed(command: &str, part: &str) -> TransportError {
    TransportError::Broker(format!("unexpected {command} reply: bad {part}").into())
}

/// An `XAUTOCLAIM` reply: what to hand back, and ids Redis 6.2 claimed although their entries
/// are gone (they still need acknowledging).
#[derive(Debug, PartialEq)]
pub(super) struct AutoClaimReply {
    pub(super) reclaimed: Reclaimed,
    pub(super) vanished: Vec<String>,
}

fn into_bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        _ => None,
    }
}

pub(super) fn into_string(value: Value) -> Option<String> {
    String::from_utf8(into_bytes(value)?).ok()
}

fn into_items(value: Value) -> Option<Vec<Value>> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

/// Key-value pairs from a RESP3 map or a RESP2 flat array of alternating keys and values.
fn into_pairs(value: Value) -> Option<Vec<(Value, Value)>> {
    match value {
        Value::Map(pairs) => Some(pairs),
        Value::Array(items) if items.len() % 2 == 0 => {
            let mut pairs = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(key), Some(value)) = (items.next(), items.next()) {
                pairs.push((key, value));
            }
            Some(pairs)
        }
        _ => None,
    }
}

pub(super) fn parse_count(value: Value) -> Option<u64> {
    match value {
        Value::Int(count) => u64::try_from(count).ok(),
        other => into_string(other)?.parse().ok(),
    }
}

/// One entry of a reply listing entries.
enum ParsedEntry {
    /// An entry with its fields.
    Present(StreamEntry),
    /// A pending id whose entry is gone: Redis sends nil fields.
    Deleted(String),
}

/// One `[id, [field, value, ...]]` entry, or `[id, nil]` for an entry that was deleted.
fn parse_entry(value: Value, command: &str) -> Result<ParsedEntry, TransportError> {
    let mut parts = into_items(value)
        .filter(|parts| parts.len() == 2)
        .ok_or_else(|| malformed(command, "entry"))?
        .into_iter();
    let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
        return Err(malformed(command, "entry"));
    };
    let id = into_string(id).ok_or_else(|| malformed(command, "entry id"))?;
    if fields == Value::Nil {
        return Ok(ParsedEntry::Deleted(id));
    }
    let fields = into_pairs(fields)
        .ok_or_else(|| malformed(command, "entry fields"))?
        .into_iter()
        .map(|(name, value)| {
            let name = into_bytes(name).ok_or_else(|| malformed(command, "field name"))?;
            let value = into_bytes(value).ok_or_else(|| malformed(command, "field value"))?;
            // Names and values stay bytes, so a bad entry is quarantined exactly as it arrived.
            Ok((name, value))
        })
        .collect::<Result<_, TransportError>>()?;
    Ok(ParsedEntry::Present(StreamEntry { id, fields }))
}

/// An `XRANGE ... COUNT 1` reply: the id of its one entry, `None` for none.
pub(super) fn parse_first_id(value: Value) -> Result<Option<String>, TransportError> {
    let entries = into_items(value).ok_or_else(|| malformed("XRANGE", "entries"))?;
    match entries.into_iter().next() {
        None => Ok(None),
        Some(entry) => match parse_entry(entry, "XRANGE")? {
            ParsedEntry::Present(entry) => Ok(Some(entry.id)),
            ParsedEntry::Deleted(id) => Ok(Some(id)),
        },
    }
}

/// An `XREADGROUP` reply for one stream: nil on timeout, else `[[stream, [entry, ...]]]`
/// (RESP2) or `{stream: [entry, ...]}` (RESP3).
pub(super) fn parse_read_reply(value: Value) -> Result<Vec<StreamEntry>, TransportError> {
    let streams = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs.into_iter().map(|(_, entries)| entries).collect(),
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| {
                into_items(stream)
                    .filter(|parts| parts.len() == 2)
                    .and_then(|parts| parts.into_iter().nth(1))
                    .ok_or_else(|| malformed("XREADGROUP", "stream"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(malformed("XREADGROUP", "reply")),
    };
    let mut entries = Vec::new();
    for stream_entries in streams {
        for entry in into_items(stream_entries).ok_or_else(|| malformed("XREADGROUP", "entries"))? {
            match parse_entry(entry, "XREADGROUP")? {
                ParsedEntry::Present(entry) => entries.push(entry),
                // Only re-reads of history can meet deleted entries; `>` reads never do.
                ParsedEntry::Deleted(id) => {
                    tracing::warn!(id, "redis streams: skipping a deleted entry in a new read")
                }
            }
        }
    }
    Ok(entries)
}

/// An `XAUTOCLAIM` reply: `[cursor, [entry, ...], [deleted id, ...]]` on Redis 7, without the
/// third element on Redis 6.2, which instead lists deleted entries with nil fields.
pub(super) fn parse_autoclaim(value: Value) -> Result<AutoClaimReply, TransportError> {
    let mut parts = into_items(value)
        .filter(|parts| parts.len() == 2 || parts.len() == 3)
        .ok_or_else(|| malformed("XAUTOCLAIM", "reply"))?
        .into_iter();
    let next_cursor = parts
        .next()
        .and_then(into_string)
        .ok_or_else(|| malformed("XAUTOCLAIM", "cursor"))?;
    let mut reply = AutoClaimReply {
        reclaimed: Reclaimed {
            next_cursor,
            ..Reclaimed::default()
        },
        vanished: Vec::new(),
    };
    let claimed = parts
        .next()
        .and_then(into_items)
        .ok_or_else(|| malformed("XAUTOCLAIM", "entries"))?;
    for entry in claimed {
        match parse_entry(entry, "XAUTOCLAIM")? {
            ParsedEntry::Present(entry) => reply.reclaimed.entries.push(entry),
            ParsedEntry::Deleted(id) => reply.vanished.push(id),
        }
    }
    if let Some(deleted) = parts.next() {
        reply.reclaimed.deleted = into_items(deleted)
            .ok_or_else(|| malformed("XAUTOCLAIM", "deleted ids"))?
            .into_iter()
            .map(|id| into_string(id).ok_or_else(|| malformed("XAUTOCLAIM", "deleted id")))
            .collect::<Result<_, _>>()?;
    }
    Ok(reply)
}

/// Pending and lag of `group` from an `XINFO GROUPS` reply; `None` when the group is not listed.
/// Lag is nil on Redis 7 when it cannot be computed and absent before Redis 7.
pub(super) fn parse_group_stats(
    value: Value,
    group: &str,
) -> Result<Option<GroupStats>, TransportError> {
    for info in into_items(value).ok_or_else(|| malformed("XINFO GROUPS", "reply"))? {
        let mut name = None;
        let mut stats = GroupStats::default();
        for (key, value) in into_pairs(info).ok_or_else(|| malformed("XINFO GROUPS", "group"))? {
            match into_string(key).as_deref() {
                Some("name") => name = into_string(value),
                Some("pending") => {
                    stats.pending =
                        parse_count(value).ok_or_else(|| malformed("XINFO GROUPS", "pending"))?;
                }
                Some("lag") if value != Value::Nil => {
                    stats.lag =
                        Some(parse_count(value).ok_or_else(|| malformed("XINFO GROUPS", "lag"))?);
                }
                _ => {}
            }
        }
        if name.as_deref() == Some(group) {
            return Ok(Some(stats));
        }
    }
    Ok(None)
}

/// Where one consumer group stands, from `XINFO GROUPS`: what trimming must keep for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GroupCursor {
    pub name: String,
    pub pending: u64,
    pub last_delivered: String,
}

/// Every group's cursor from an `XINFO GROUPS` reply.
pub(super) fn parse_group_cursors(value: Value) -> Result<Vec<GroupCursor>, TransportError> {
    let bad = |part| malformed("XINFO GROUPS", part);
    let mut cursors = Vec::new();
    for info in into_items(value).ok_or_else(|| bad("reply"))? {
        let (mut name, mut pending, mut last_delivered) = (None, None, None);
        for (key, value) in into_pairs(info).ok_or_else(|| bad("group"))? {
            match into_string(key).as_deref() {
                Some("name") => name = into_string(value),
                Some("pending") => pending = parse_count(value),
                Some("last-delivered-id") => last_delivered = into_string(value),
                _ => {}
            }
        }
        cursors.push(GroupCursor {
            name: name.ok_or_else(|| bad("name"))?,
            pending: pending.ok_or_else(|| bad("pending"))?,
            last_delivered: last_delivered.ok_or_else(|| bad("last-delivered-id"))?,
        });
    }
    Ok(cursors)
}

/// The oldest pending id from an `XPENDING <stream> <group>` summary
/// (`[count, min, max, consumers]`); `None` when nothing is pending.
pub(super) fn parse_oldest_pending(value: Value) -> Result<Option<String>, TransportError> {
    let mut parts = into_items(value)
        .ok_or_else(|| malformed("XPENDING", "summary"))?
        .into_iter();
    let _count = parts.next();
    match parts.next() {
        None | Some(Value::Nil) => Ok(None),
        Some(id) => into_string(id)
            .map(Some)
            .ok_or_else(|| malformed("XPENDING", "oldest id")),
    }
}

/// The first record of an extended `XPENDING <stream> <group> <start> <end> <count>` reply
/// (`[[id, consumer, idle millis, deliveries], ...]`); `None` when the range has none.
pub(super) fn parse_pending_entry(value: Value) -> Result<Option<PendingEntry>, TransportError> {
    let bad = || malformed("XPENDING", "pending entry");
    let Some(record) = into_items(value).ok_or_else(bad)?.into_iter().next() else {
        return Ok(None);
    };
    let mut parts = into_items(record).ok_or_else(bad)?.into_iter();
    let id = parts.next().and_then(into_string).ok_or_else(bad)?;
    let consumer = parts.next().and_then(into_string).ok_or_else(bad)?;
    let idle = parts.next().and_then(parse_count).ok_or_else(bad)?;
    Ok(Some(PendingEntry {
        id,
        consumer,
        idle: std::time::Duration::from_millis(idle),
    }))
}

/// Runs every reply parser on `value`, each of which parses it or refuses it with an error:
/// the entry point of the `reply` fuzz target (`fuzz/`), which has no other way in.
#[cfg(feature = "fuzzing")]
pub fn fuzz_reply_parsers(value: Value) {
    let _ = parse_read_reply(value.clone());
    let _ = parse_autoclaim(value.clone());
    let _ = parse_group_stats(value.clone(), "g");
    let _ = parse_group_cursors(value.clone());
    let _ = parse_oldest_pending(value.clone());
    let _ = parse_pending_entry(value.clone());
    let _ = parse_count(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_pending_replies_give_the_first_record() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("5-0"),
            bulk("c-1"),
            Value::Int(1500),
            Value::Int(2),
        ])]);
        assert_eq!(
            parse_pending_entry(reply).unwrap(),
            Some(PendingEntry {
                id: "5-0".into(),
                consumer: "c-1".into(),
                idle: std::time::Duration::from_millis(1500),
            })
        );
        assert_eq!(parse_pending_entry(Value::Array(vec![])).unwrap(), None);
        assert!(parse_pending_entry(Value::Int(3)).is_err());
    }

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &[u8])]) -> Value {
        let fields = fields
            .iter()
            .flat_map(|(name, value)| [bulk(name), Value::BulkString(value.to_vec())])
            .collect();
        Value::Array(vec![bulk(id), Value::Array(fields)])
    }

    fn stream_entry(id: &str, fields: &[(&str, &[u8])]) -> StreamEntry {
        StreamEntry {
            id: id.to_owned(),
            fields: fields
                .iter()
                .map(|(name, value)| (name.as_bytes().to_vec(), value.to_vec()))
                .collect(),
        }
    }

    #[test]
    fn read_replies_parse_in_resp2_and_resp3_with_binary_values() {
        let entries = Value::Array(vec![
            entry("1-0", &[("a", b"\xff\x00")]),
            entry("1-1", &[("b", b"2")]),
        ]);
        let expected = vec![
            stream_entry("1-0", &[("a", b"\xff\x00")]),
            stream_entry("1-1", &[("b", b"2")]),
        ];
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("s"), entries.clone()])]);
        assert_eq!(parse_read_reply(resp2).unwrap(), expected);
        let resp3 = Value::Map(vec![(bulk("s"), entries)]);
        assert_eq!(parse_read_reply(resp3).unwrap(), expected);
        assert_eq!(parse_read_reply(Value::Nil).unwrap(), vec![]);
        assert!(matches!(
            parse_read_reply(Value::Int(3)),
            Err(TransportError::Broker(_))
        ));
    }

    #[test]
    fn autoclaim_reply_of_redis_7_reports_deleted_ids() {
        let reply = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![entry("5-0", &[("k", b"v")])]),
            Value::Array(vec![bulk("3-0"), bulk("4-0")]),
        ]);
        let parsed = parse_autoclaim(reply).unwrap();
        assert_eq!(parsed.reclaimed.next_cursor, "0-0");
        assert_eq!(
            parsed.reclaimed.entries,
            vec![stream_entry("5-0", &[("k", b"v")])]
        );
        assert_eq!(parsed.reclaimed.deleted, vec!["3-0", "4-0"]);
        assert!(parsed.vanished.is_empty());
    }

    #[test]
    fn autoclaim_reply_of_redis_6_2_turns_nil_entries_into_ids_to_acknowledge() {
        let reply = Value::Array(vec![
            bulk("9-0"),
            Value::Array(vec![
                Value::Array(vec![bulk("3-0"), Value::Nil]),
                entry("5-0", &[("k", b"v")]),
            ]),
        ]);
        let parsed = parse_autoclaim(reply).unwrap();
        assert_eq!(parsed.reclaimed.next_cursor, "9-0");
        assert_eq!(
            parsed.reclaimed.entries,
            vec![stream_entry("5-0", &[("k", b"v")])]
        );
        assert!(parsed.reclaimed.deleted.is_empty());
        assert_eq!(parsed.vanished, vec!["3-0"]);
    }

    #[test]
    fn group_cursors_and_oldest_pending_parse() {
        let groups = Value::Array(vec![Value::Map(vec![
            (bulk("name"), bulk("billing")),
            (bulk("consumers"), Value::Int(1)),
            (bulk("pending"), Value::Int(2)),
            (bulk("last-delivered-id"), bulk("5-1")),
        ])]);
        assert_eq!(
            parse_group_cursors(groups).unwrap(),
            vec![GroupCursor {
                name: "billing".into(),
                pending: 2,
                last_delivered: "5-1".into(),
            }]
        );
        let summary = Value::Array(vec![Value::Int(2), bulk("3-0"), bulk("5-1"), Value::Nil]);
        assert_eq!(
            parse_oldest_pending(summary).unwrap().as_deref(),
            Some("3-0")
        );
        let empty = Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil]);
        assert_eq!(parse_oldest_pending(empty).unwrap(), None);
    }

    #[test]
    fn group_stats_find_the_group_and_read_a_nil_lag_as_unknown() {
        let group = |name: &str, pending: i64, lag: Value| {
            Value::Array(vec![
                bulk("name"),
                bulk(name),
                bulk("consumers"),
                Value::Int(1),
                bulk("pending"),
                Value::Int(pending),
                bulk("lag"),
                lag,
            ])
        };
        let reply = Value::Array(vec![
            group("other", 9, Value::Int(9)),
            group("g", 2, Value::Nil),
        ]);
        assert_eq!(
            parse_group_stats(reply.clone(), "g").unwrap(),
            Some(GroupStats {
                pending: 2,
                lag: None
            })
        );
        assert_eq!(
            parse_group_stats(reply.clone(), "other").unwrap(),
            Some(GroupStats {
                pending: 9,
                lag: Some(9)
            })
        );
        assert_eq!(parse_group_stats(reply, "missing").unwrap(), None);
        let resp3 = Value::Array(vec![Value::Map(vec![
            (bulk("name"), bulk("g")),
            (bulk("pending"), Value::Int(1)),
            (bulk("lag"), Value::Int(4)),
        ])]);
        assert_eq!(
            parse_group_stats(resp3, "g").unwrap(),
            Some(GroupStats {
                pending: 1,
                lag: Some(4)
            })
        );
    }

    mod properties {
        //! Property tests: any reply value is parsed or refused, never a panic; well-formed
        //! stream replies give back exactly the entries they hold, in RESP2 and RESP3 shapes.

        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        /// Any reply Redis could send (and some it never would), nested a few levels deep,
        /// with the words the parsers look for among the strings.
        fn any_value() -> impl Strategy<Value = Value> {
            let word = prop_oneof![
                Just(b"name".to_vec()),
                Just(b"pending".to_vec()),
                Just(b"lag".to_vec()),
                Just(b"last-delivered-id".to_vec()),
                Just(b"g".to_vec()),
                Just(b"0-0".to_vec()),
                Just(b"5-1".to_vec()),
                vec(any::<u8>(), 0..6),
            ];
            let leaf = prop_oneof![
                Just(Value::Nil),
                Just(Value::Okay),
                any::<i64>().prop_map(Value::Int),
                word.clone().prop_map(Value::BulkString),
                "[a-z0-9-]{0,6}".prop_map(Value::SimpleString),
                any::<f64>().prop_map(Value::Double),
                any::<bool>().prop_map(Value::Boolean),
                word.prop_map(Value::BigNumber),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    vec(inner.clone(), 0..6).prop_map(Value::Array),
                    vec(inner.clone(), 0..4).prop_map(Value::Set),
                    vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
                ]
            })
        }

        fn raw_entry() -> impl Strategy<Value = StreamEntry> {
            let field = (vec(any::<u8>(), 0..12), vec(any::<u8>(), 0..24));
            ((1u64..u64::MAX, any::<u64>()), vec(field, 1..6)).prop_map(|((ms, seq), fields)| {
                StreamEntry {
                    id: format!("{ms}-{seq}"),
                    fields,
                }
            })
        }

        fn entry_value(entry: &StreamEntry) -> Value {
            let flat = entry
                .fields
                .iter()
                .flat_map(|(name, value)| {
                    [
                        Value::BulkString(name.clone()),
                        Value::BulkString(value.clone()),
                    ]
                })
                .collect();
            Value::Array(vec![bulk(&entry.id), Value::Array(flat)])
        }

        proptest! {
            #[test]
            fn arbitrary_replies_never_panic(value in any_value()) {
                // Each parser either understands the value or refuses it with an error.
                let _ = parse_read_reply(value.clone());
                let _ = parse_autoclaim(value.clone());
                let _ = parse_group_stats(value.clone(), "g");
                let _ = parse_group_cursors(value.clone());
                let _ = parse_oldest_pending(value.clone());
                let _ = parse_pending_entry(value.clone());
                let _ = parse_count(value);
            }

            #[test]
            fn stream_replies_round_trip_with_raw_names_and_values(
                entries in vec(raw_entry(), 0..6),
                resp3 in any::<bool>(),
            ) {
                let listed = Value::Array(entries.iter().map(entry_value).collect());
                let reply = if resp3 {
                    Value::Map(vec![(bulk("s"), listed.clone())])
                } else {
                    Value::Array(vec![Value::Array(vec![bulk("s"), listed.clone()])])
                };
                prop_assert_eq!(parse_read_reply(reply).unwrap(), entries.clone());
                let claimed = Value::Array(vec![bulk("0-0"), listed, Value::Array(vec![])]);
                let parsed = parse_autoclaim(claimed).unwrap();
                prop_assert_eq!(parsed.reclaimed.entries, entries);
            }
        }
    }
}
