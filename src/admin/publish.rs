//! Publishing an event by hand, in the recommended entry style.

use super::{AdminError, AdminResult};
use crate::event::Event;
use crate::transport::Transport;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

/// The top-level fields an event has; any other is refused, so a misspelling such as
/// `evnet_id` is not silently dropped (and a random id invented in its place).
pub const EVENT_FIELDS: [&str; 8] = [
    "event_id",
    "event_type",
    "aggregate_id",
    "occurred_on",
    "payload",
    "correlation_id",
    "causation_id",
    "headers",
];

/// Parses an event from its JSON attributes (the `data` style's object) and validates it.
///
/// `event_id` and `occurred_on` may be left out: they become a random UUID and `now`. A field
/// that is not one of [`EVENT_FIELDS`] is refused, naming it (and the field it most likely
/// misspells). Every other rule of the contract applies (`event_type`, a UUID
/// `aggregate_id`, lengths), and the error names the field at fault. The payload may be any
/// JSON value and is published as it is: the inbox keeps a payload that is not an object as
/// it arrives.
///
/// ```
/// use eventflow::admin::parse_event_json;
///
/// let text = r#"{"event_type": "OrderCreated",
///                "aggregate_id": "7c8f0a6a-7b7c-4c74-9cfb-2e2e2b9b1d33",
///                "payload": {"order_id": "o-1"}}"#;
/// let event = parse_event_json(text, chrono::Utc::now())?;
/// assert_eq!(event.event_type, "OrderCreated");
/// assert!(!event.event_id.is_empty(), "filled in when missing");
/// // A misspelt field is refused, naming the field it most likely means.
/// let typo = parse_event_json(r#"{"evnet_type": "X"}"#, chrono::Utc::now()).unwrap_err();
/// assert!(typo.to_string().contains("event_type"), "{typo}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn parse_event_json(text: &str, now: DateTime<Utc>) -> AdminResult<Event> {
    let value: Value = serde_json::from_str(text)
        .map_err(|error| AdminError::InvalidInput(format!("the event is not JSON: {error}")))?;
    let Value::Object(mut attributes) = value else {
        return Err(AdminError::InvalidInput(
            "the event must be a JSON object".into(),
        ));
    };
    if let Some(unknown) = attributes
        .keys()
        .find(|key| !EVENT_FIELDS.contains(&key.as_str()))
    {
        let hint = closest_field(unknown)
            .map(|field| format!("; did you mean `{field}`?"))
            .unwrap_or_default();
        return Err(AdminError::InvalidInput(format!(
            "unknown field `{}` in the event{hint} (an event has {})",
            unknown.escape_debug(),
            EVENT_FIELDS.join(", ")
        )));
    }
    attributes
        .entry("event_id")
        .or_insert_with(|| uuid::Uuid::new_v4().to_string().into());
    attributes
        .entry("occurred_on")
        .or_insert_with(|| now.to_rfc3339_opts(SecondsFormat::Micros, true).into());
    let event = Event::from_attributes(&attributes)?;
    event.validate_received()?;
    Ok(event)
}

/// The event field `name` most likely misspells: at most two edits away, ignoring case.
fn closest_field(name: &str) -> Option<&'static str> {
    let name = name.to_lowercase();
    EVENT_FIELDS
        .iter()
        .map(|field| (edit_distance(&name, field), *field))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, field)| field)
}

/// Levenshtein distance, counting a swap of two neighbours as one edit (`evnet`/`event`).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// Appends `event` to `stream` as one `data` field of JSON ([`Event::to_entry_fields`]) after
/// checking it as the inbox would ([`Event::validate_received`]: a payload of any JSON kind
/// is kept as it is); returns the entry id.
///
/// ```
/// use eventflow::admin::publish_event;
/// use eventflow::transport::MemoryStream;
/// use eventflow::Event;
///
/// let stream = MemoryStream::new();
/// let event = Event::new("OrderCreated", eventflow::uuid::Uuid::new_v4(), serde_json::json!({}));
/// let entry_id = publish_event(&stream, "orders", &event)?;
/// println!("published as {entry_id}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn publish_event(
    transport: &dyn Transport,
    stream: &str,
    event: &Event,
) -> AdminResult<String> {
    event.validate_received()?;
    Ok(transport.publish(stream, event.to_entry_fields())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
            .unwrap()
            .to_utc()
    }

    #[test]
    fn missing_ids_and_times_are_filled_and_the_rest_validated() {
        let event = parse_event_json(
            r#"{"event_type":"OrderCreated","aggregate_id":"7c8f0a6a-7b7c-4c74-9cfb-2e2e2b9b1d33","payload":{"a":1}}"#,
            now(),
        )
        .unwrap();
        assert_eq!(event.occurred_on, now());
        assert_eq!(event.event_id.len(), 36);
        assert_eq!(event.payload, serde_json::json!({"a": 1}));

        let missing_type = parse_event_json(
            r#"{"aggregate_id":"7c8f0a6a-7b7c-4c74-9cfb-2e2e2b9b1d33"}"#,
            now(),
        );
        assert!(missing_type.unwrap_err().to_string().contains("event_type"),);
        assert!(matches!(
            parse_event_json("{nope", now()),
            Err(AdminError::InvalidInput(_))
        ));
        assert!(matches!(
            parse_event_json("[1]", now()),
            Err(AdminError::InvalidInput(_))
        ));
    }

    const AGGREGATE: &str = "7c8f0a6a-7b7c-4c74-9cfb-2e2e2b9b1d33";

    #[test]
    fn unknown_and_misspelled_fields_are_refused_by_name() {
        for (field, hint) in [
            ("evnet_type", Some("event_type")),
            ("event_Id", Some("event_id")),
            ("payloads", Some("payload")),
            ("priority", None),
        ] {
            let text =
                format!(r#"{{"event_type":"T","aggregate_id":"{AGGREGATE}","{field}":"x"}}"#);
            let error = parse_event_json(&text, now()).unwrap_err().to_string();
            assert!(
                error.contains(&format!("unknown field `{field}`")),
                "{error}"
            );
            match hint {
                Some(hint) => assert!(error.contains(&format!("did you mean `{hint}`")), "{error}"),
                None => assert!(!error.contains("did you mean"), "{error}"),
            }
        }
    }

    #[test]
    fn a_payload_that_is_not_an_object_is_kept_as_it_is() {
        for payload in [json!("plain text"), json!([1, 2]), json!(42), json!(null)] {
            let text = json!({"event_type": "T", "aggregate_id": AGGREGATE, "payload": payload})
                .to_string();
            let event = parse_event_json(&text, now()).unwrap();
            assert_eq!(event.payload, payload);
            assert_eq!(event.to_json()["payload"], payload);
        }
    }
}
