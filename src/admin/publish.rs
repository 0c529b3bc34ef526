//! Publishing an event by hand, in the recommended entry style.

use super::{AdminError, AdminResult};
use crate::event::Event;
use crate::transport::Transport;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

/// Parses an event from its JSON attributes (the `data` style's object) and validates it.
///
/// `event_id` and `occurred_on` may be left out: they become a random UUID and `now`. Every
/// other rule of the contract applies (`event_type`, a UUID `aggregate_id`, an object
/// `payload`, lengths), and the error names the field at fault.
pub fn parse_event_json(text: &str, now: DateTime<Utc>) -> AdminResult<Event> {
    let value: Value = serde_json::from_str(text)
        .map_err(|error| AdminError::InvalidInput(format!("the event is not JSON: {error}")))?;
    let Value::Object(mut attributes) = value else {
        return Err(AdminError::InvalidInput(
            "the event must be a JSON object".into(),
        ));
    };
    attributes
        .entry("event_id")
        .or_insert_with(|| uuid::Uuid::new_v4().to_string().into());
    attributes
        .entry("occurred_on")
        .or_insert_with(|| now.to_rfc3339_opts(SecondsFormat::Micros, true).into());
    let event = Event::from_attributes(&attributes)?;
    event.validate()?;
    Ok(event)
}

/// Appends `event` to `stream` as one `data` field of JSON ([`Event::to_entry_fields`]) after
/// validating it; returns the entry id.
pub fn publish_event(
    transport: &dyn Transport,
    stream: &str,
    event: &Event,
) -> AdminResult<String> {
    event.validate()?;
    Ok(transport.publish(stream, event.to_entry_fields())?)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
