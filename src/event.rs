//! The event model: what a stream entry means, and the inbox row that tracks its handling.
//!
//! Two entry styles are accepted (see the crate docs): one `data` field holding a JSON object, or
//! "flattened" fields, one per attribute, where a value that looks like a JSON object or array is
//! parsed as JSON. Parsing is strict about what the inbox needs (a precise [`EntryError`] names
//! the missing or bad field) and lenient where the reference contract is: a missing `payload`
//! means `{}`, and a payload that is not a JSON object is kept as it arrived (the earlier toolkit
//! replaced it with `{}`, losing it).

use crate::headers::{self, Headers};
use crate::transport::StreamEntry;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Longest `event_id`, `correlation_id` and `causation_id` the table stores (characters).
pub const MAX_ID_LEN: usize = 255;
/// Longest `event_type` the table stores (characters).
pub const MAX_EVENT_TYPE_LEN: usize = 128;

/// A domain event as producers publish it.
///
/// Made with [`Event::new`] and the `with_*` setters (the struct is `#[non_exhaustive]`, so
/// fields can be added without breaking your code); its fields are public to read and change.
/// It serializes to the JSON object producers put in an entry's `data` field, and deserializes
/// from one with the same rules as a stream entry ([`Event::from_attributes`]): a missing
/// `payload` is `{}`, a timestamp without an offset is UTC, and a bad field is refused with
/// the [`EntryError`] that names it.
///
/// ```
/// use eventflow::Event;
/// use eventflow::uuid::Uuid;
///
/// let event = Event::new("OrderCreated", Uuid::new_v4(), serde_json::json!({"order_id": "o-1"}))
///     .with_event_id("order-o-1-created")
///     .with_correlation_id("checkout-42")
///     .with_header("tenant", "acme");
/// let json = serde_json::to_string(&event)?;
/// let back: Event = serde_json::from_str(&json)?;
/// assert_eq!(back, event);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Map<String, Value>")]
#[non_exhaustive]
pub struct Event {
    /// Producer-chosen unique id; the inbox handles each `event_id` once.
    pub event_id: String,
    /// What happened, e.g. `OrderCreated`.
    pub event_type: String,
    /// The entity the event is about.
    pub aggregate_id: Uuid,
    /// When it happened, by the producer's clock.
    pub occurred_on: DateTime<Utc>,
    /// The event's data. Producers should send a JSON object (eventflow's own producers only
    /// send objects); a payload that arrived as another JSON value, or as plain text in the
    /// flattened style (a JSON string here), is kept as it is, so the handler sees what was
    /// published.
    pub payload: Value,
    /// Id shared by all events of one business operation, if the producer set one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Id of the event or command that caused this one, if the producer set one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// Metadata carried beside the payload, such as the W3C trace context (`traceparent`,
    /// `tracestate`); empty when the producer set none. Bounded, see [`crate::headers`].
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
}

/// Why a stream entry is not a valid event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// A required attribute is absent.
    #[error("missing required field `{field}`")]
    Missing {
        /// The attribute's name.
        field: &'static str,
    },
    /// An attribute is present but unusable.
    #[error("field `{field}` is invalid: {reason}")]
    Invalid {
        /// The attribute's name.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl EntryError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl Event {
    /// A new event that happened now, with a random v4 `event_id` and no correlation.
    ///
    /// `occurred_on` is cut to whole microseconds, the precision both databases keep, so the
    /// event reads back from an inbox or outbox table exactly as it was made. `payload` should
    /// be a JSON object: the outbox refuses anything else (see [`Event::validate`]), though
    /// the inbox keeps whatever payload arrives and `eventflow publish` sends it as it is.
    pub fn new(event_type: impl Into<String>, aggregate_id: Uuid, payload: Value) -> Self {
        let now = Utc::now();
        Self {
            event_id: Uuid::new_v4().to_string(),
            event_type: event_type.into(),
            aggregate_id,
            occurred_on: DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now),
            payload,
            correlation_id: None,
            causation_id: None,
            headers: Headers::new(),
        }
    }

    /// The event with this `event_id` in place of the random one [`Event::new`] gave it: an id
    /// derived from the business fact (`order-o-1-created`) makes a producer's retries
    /// duplicates the inbox skips.
    pub fn with_event_id(mut self, event_id: impl Into<String>) -> Self {
        self.event_id = event_id.into();
        self
    }

    /// The event with this `occurred_on` in place of the time [`Event::new`] was called.
    pub fn with_occurred_on(mut self, occurred_on: DateTime<Utc>) -> Self {
        self.occurred_on = occurred_on;
        self
    }

    /// The event with this `correlation_id`: the id shared by every event of one business
    /// operation.
    pub fn with_correlation_id(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// The event with this `causation_id`: the id of the event or command that caused it.
    pub fn with_causation_id(mut self, causation_id: impl Into<String>) -> Self {
        self.causation_id = Some(causation_id.into());
        self
    }

    /// The event with these headers in place of any it had.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// The event with header `name` set to `value` (replacing any value it had).
    ///
    /// ```
    /// # use eventflow::Event;
    /// let event = Event::new("OrderCreated", uuid::Uuid::nil(), serde_json::json!({}))
    ///     .with_header("tenant", "acme");
    /// assert_eq!(event.headers["tenant"], "acme");
    /// ```
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The payload deserialized into `T`.
    ///
    /// ```
    /// # use eventflow::Event;
    /// #[derive(serde::Deserialize)]
    /// struct OrderCreated { order_id: String }
    ///
    /// let event = Event::new("OrderCreated", uuid::Uuid::nil(), serde_json::json!({"order_id": "o-1"}));
    /// let order: OrderCreated = event.payload_as().unwrap();
    /// assert_eq!(order.order_id, "o-1");
    /// ```
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.payload)
    }

    /// Parses a stream entry in either accepted style.
    pub fn from_entry(entry: &StreamEntry) -> Result<Self, EntryError> {
        let attributes = match entry.field("data") {
            Some(data) => {
                let text = utf8("data", data)?;
                match serde_json::from_str::<Value>(text) {
                    Ok(Value::Object(map)) => map,
                    Ok(other) => {
                        return Err(EntryError::invalid(
                            "data",
                            format!("expected a JSON object, got {}", json_kind(&other)),
                        ))
                    }
                    Err(error) => {
                        return Err(EntryError::invalid("data", format!("not JSON: {error}")))
                    }
                }
            }
            None => flattened(entry)?,
        };
        Self::from_attributes(&attributes)
    }

    /// Builds an event from its attributes as a JSON object (the `data` style's content).
    pub fn from_attributes(attributes: &Map<String, Value>) -> Result<Self, EntryError> {
        let event = Self {
            event_id: required_string(attributes, "event_id", MAX_ID_LEN)?,
            event_type: required_string(attributes, "event_type", MAX_EVENT_TYPE_LEN)?,
            aggregate_id: {
                let text = required_string(attributes, "aggregate_id", usize::MAX)?;
                Uuid::parse_str(&text).map_err(|error| {
                    EntryError::invalid("aggregate_id", format!("not a UUID: {error}"))
                })?
            },
            occurred_on: parse_timestamp(&required_string(attributes, "occurred_on", usize::MAX)?)?,
            // Kept whatever its kind: the reference contract keeps a non-object payload as it is.
            payload: match attributes.get("payload") {
                Some(payload) => {
                    check_no_nul(payload)?;
                    payload.clone()
                }
                None => Value::Object(Map::new()),
            },
            correlation_id: optional_string(attributes, "correlation_id")?,
            causation_id: optional_string(attributes, "causation_id")?,
            headers: headers::from_attribute(attributes.get(headers::FIELD))?,
        };
        Ok(event)
    }

    /// Checks what the inbox and outbox tables require: non-empty ids and type within their
    /// column lengths, and an object payload.
    pub fn validate(&self) -> Result<(), EntryError> {
        self.validate_received()?;
        if !self.payload.is_object() {
            return Err(EntryError::invalid(
                "payload",
                format!("expected a JSON object, got {}", json_kind(&self.payload)),
            ));
        }
        Ok(())
    }

    /// Checks what the inbox requires of an event it receives: what [`Event::validate`]
    /// checks, but a payload of any JSON kind, which the inbox keeps as it arrives. Headers
    /// must be within their bounds (see [`crate::headers`]).
    pub fn validate_received(&self) -> Result<(), EntryError> {
        check_text("event_id", &self.event_id, MAX_ID_LEN)?;
        check_year(self.occurred_on)?;
        check_text("event_type", &self.event_type, MAX_EVENT_TYPE_LEN)?;
        for (field, value) in [
            ("correlation_id", &self.correlation_id),
            ("causation_id", &self.causation_id),
        ] {
            if let Some(value) = value {
                check_text(field, value, MAX_ID_LEN)?;
            }
        }
        check_no_nul(&self.payload)?;
        headers::check(&self.headers)
    }

    /// The event as the JSON object producers put in the `data` field; `headers` is left out
    /// when there are none.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("an Event always serializes")
    }

    /// The event as stream entry fields in the recommended style: one `data` field of JSON.
    pub fn to_entry_fields(&self) -> Vec<(String, Vec<u8>)> {
        vec![("data".to_string(), self.to_json().to_string().into_bytes())]
    }
}

impl TryFrom<Map<String, Value>> for Event {
    type Error = EntryError;

    /// [`Event::from_attributes`], for `Deserialize`.
    fn try_from(attributes: Map<String, Value>) -> Result<Self, EntryError> {
        Self::from_attributes(&attributes)
    }
}

/// Where an event stands in the inbox. The names are the `status` column's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventStatus {
    /// Stored, not yet handled.
    Pending,
    /// Allowed by the reference schema; eventflow holds rows by lock instead and never sets it.
    Processing,
    /// Handled; the handler's writes are committed.
    Processed,
    /// The last attempt failed; retried at `next_retry_at`.
    Failed,
    /// Given up on: out of retries or the handler said so. Requeue it once the cause is fixed.
    DeadLetter,
}

impl EventStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [EventStatus; 5] = [
        Self::Pending,
        Self::Processing,
        Self::Processed,
        Self::Failed,
        Self::DeadLetter,
    ];

    /// The `status` column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Processed => "processed",
            Self::Failed => "failed",
            Self::DeadLetter => "dead_letter",
        }
    }

    /// Parses a `status` column value.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == value)
    }
}

impl std::fmt::Display for EventStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event as the inbox holds it: the event plus where its handling stands.
///
/// The store makes these; handlers and operators read them. It is `#[non_exhaustive]`, so
/// columns can be added without breaking your code (a test that needs one builds it with
/// [`InboxRow::pending`] and sets the fields it cares about).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct InboxRow {
    /// The row's own id.
    pub id: Uuid,
    /// The stream entry id the event arrived with.
    pub stream_id: String,
    /// The stream the event arrived on; `None` for rows stored by other writers (the reference
    /// toolkit) or before eventflow recorded it.
    pub stream: Option<String>,
    /// The event.
    pub event: Event,
    /// Where handling stands.
    pub status: EventStatus,
    /// Failed attempts so far (reset to 0 when processed).
    pub retry_count: i32,
    /// Attempts after which the row is dead-lettered; 0 retries for ever.
    pub max_retries: i32,
    /// When the inbox stored the event.
    pub received_at: DateTime<Utc>,
    /// When the handler's transaction committed.
    pub processed_at: Option<DateTime<Utc>>,
    /// When a failed row becomes due again.
    pub next_retry_at: Option<DateTime<Utc>>,
    /// The last failure, at most 1000 characters.
    pub error_message: Option<String>,
    /// When the last failure happened.
    pub last_error_at: Option<DateTime<Utc>>,
}

impl InboxRow {
    /// A row as the inbox stores a new event: a new `id`, `stream_id` `0-0` on no stream,
    /// pending with no attempts, received now, `max_retries` 3 (the consumer's default). For
    /// tests and tools that need a row without a store; set the fields you care about.
    ///
    /// ```
    /// use eventflow::{Event, EventStatus, InboxRow};
    ///
    /// let event = Event::new("OrderCreated", eventflow::uuid::Uuid::nil(), serde_json::json!({}));
    /// let mut row = InboxRow::pending(event);
    /// row.retry_count = 2;
    /// assert_eq!(row.status, EventStatus::Pending);
    /// ```
    pub fn pending(event: Event) -> Self {
        Self {
            id: Uuid::now_v7(),
            stream_id: "0-0".to_string(),
            stream: None,
            event,
            status: EventStatus::Pending,
            retry_count: 0,
            max_retries: 3,
            received_at: Utc::now(),
            processed_at: None,
            next_retry_at: None,
            error_message: None,
            last_error_at: None,
        }
    }
}

fn flattened(entry: &StreamEntry) -> Result<Map<String, Value>, EntryError> {
    let mut attributes = Map::new();
    for (name, raw) in &entry.fields {
        let name = std::str::from_utf8(name).map_err(|error| {
            EntryError::invalid(
                String::from_utf8_lossy(name),
                format!("the field name is not UTF-8: {error}"),
            )
        })?;
        let text = utf8(name, raw)?;
        let trimmed = text.trim_start();
        let value = if trimmed.starts_with('{') || trimmed.starts_with('[') {
            serde_json::from_str(text).map_err(|error| {
                EntryError::invalid(name, format!("looks like JSON but is not: {error}"))
            })?
        } else {
            Value::String(text.to_string())
        };
        attributes.insert(name.to_string(), value);
    }
    Ok(attributes)
}

fn utf8<'a>(field: &str, raw: &'a [u8]) -> Result<&'a str, EntryError> {
    std::str::from_utf8(raw)
        .map_err(|error| EntryError::invalid(field, format!("not UTF-8: {error}")))
}

fn required_string(
    attributes: &Map<String, Value>,
    field: &'static str,
    max: usize,
) -> Result<String, EntryError> {
    match attributes.get(field) {
        None | Some(Value::Null) => Err(EntryError::Missing { field }),
        Some(Value::String(text)) => {
            check_text(field, text, max)?;
            Ok(text.clone())
        }
        Some(other) => Err(EntryError::invalid(
            field,
            format!("expected a string, got {}", json_kind(other)),
        )),
    }
}

fn optional_string(
    attributes: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, EntryError> {
    match attributes.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.is_empty() => Ok(None),
        Some(_) => required_string(attributes, field, MAX_ID_LEN).map(Some),
    }
}

fn check_text(field: &str, text: &str, max: usize) -> Result<(), EntryError> {
    if text.trim().is_empty() {
        return Err(EntryError::invalid(field, "empty"));
    }
    if text.contains('\0') {
        return Err(EntryError::invalid(field, NUL_REASON));
    }
    let len = text.chars().count();
    if len > max {
        return Err(EntryError::invalid(
            field,
            format!("{len} characters, at most {max} allowed"),
        ));
    }
    Ok(())
}

const NUL_REASON: &str = "contains a NUL character (U+0000), which PostgreSQL cannot store";

/// PostgreSQL's `jsonb` refuses U+0000 in strings and keys, so such an event could never be
/// stored: it is malformed, and quarantined with its raw fields instead.
fn check_no_nul(payload: &Value) -> Result<(), EntryError> {
    fn has_nul(value: &Value) -> bool {
        match value {
            Value::String(text) => text.contains('\0'),
            Value::Array(items) => items.iter().any(has_nul),
            Value::Object(map) => map
                .iter()
                .any(|(key, value)| key.contains('\0') || has_nul(value)),
            _ => false,
        }
    }
    if has_nul(payload) {
        return Err(EntryError::invalid("payload", NUL_REASON));
    }
    Ok(())
}

/// ISO-8601 / RFC 3339 with an offset or `Z`; a timestamp without an offset is taken as UTC.
fn parse_timestamp(text: &str) -> Result<DateTime<Utc>, EntryError> {
    let parsed = DateTime::parse_from_rfc3339(text)
        .map(|at| at.to_utc())
        .ok()
        .or_else(|| {
            ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
                .iter()
                .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
                .map(|naive| naive.and_utc())
        });
    if let Some(at) = parsed {
        check_year(at)?;
        return Ok(at);
    }
    Err(EntryError::invalid(
        "occurred_on",
        format!("{text:?} is not an ISO-8601 timestamp such as 2025-01-01T00:00:00Z"),
    ))
}

/// Years 1 to 9999: what both stores can hold and read back (SQLite keeps four-digit text).
fn check_year(at: DateTime<Utc>) -> Result<(), EntryError> {
    use chrono::Datelike;
    if !(1..=9999).contains(&at.year()) {
        return Err(EntryError::invalid(
            "occurred_on",
            format!("year {} is outside 1..=9999", at.year()),
        ));
    }
    Ok(())
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const AGGREGATE: &str = "7c8f0a6a-7b7c-4c74-9cfb-2e2e2b9b1d33";

    fn entry(fields: &[(&str, &str)]) -> StreamEntry {
        StreamEntry::from_text_fields("1-0", fields.iter().copied())
    }

    #[test]
    fn parses_the_data_style() {
        let data = json!({"event_id": "e-1", "event_type": "OrderCreated", "aggregate_id": AGGREGATE,
            "occurred_on": "2025-01-01T00:00:00Z", "payload": {"order_id": "o-123"},
            "correlation_id": "c-1"});
        let event = Event::from_entry(&entry(&[("data", &data.to_string())])).unwrap();
        assert_eq!(event.event_id, "e-1");
        assert_eq!(event.event_type, "OrderCreated");
        assert_eq!(event.aggregate_id.to_string(), AGGREGATE);
        assert_eq!(event.occurred_on.to_rfc3339(), "2025-01-01T00:00:00+00:00");
        assert_eq!(event.payload, json!({"order_id": "o-123"}));
        assert_eq!(event.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(event.causation_id, None);
    }

    #[test]
    fn deserializes_what_it_serializes_and_refuses_what_an_entry_would() {
        let event = Event::new("OrderCreated", Uuid::nil(), json!({"lines": [{"qty": 2}]}))
            .with_event_id("e-9")
            .with_occurred_on(DateTime::from_timestamp_micros(1_735_689_600_123_456).unwrap())
            .with_correlation_id("c-9")
            .with_causation_id("e-8")
            .with_header("tenant", "acme");
        let back: Event = serde_json::from_value(event.to_json()).unwrap();
        assert_eq!(back, event);

        // The entry rules: a missing payload is `{}`, an offset-less time is UTC.
        let lenient: Event = serde_json::from_value(json!({"event_id": "e", "event_type": "T",
            "aggregate_id": AGGREGATE, "occurred_on": "2025-01-01T00:00:00"}))
        .unwrap();
        assert_eq!(lenient.payload, json!({}));
        assert_eq!(
            lenient.occurred_on.to_rfc3339(),
            "2025-01-01T00:00:00+00:00"
        );

        let refused = serde_json::from_value::<Event>(json!({"event_id": "e", "event_type": "T",
            "aggregate_id": "not-a-uuid", "occurred_on": "2025-01-01T00:00:00Z"}))
        .unwrap_err();
        assert!(refused.to_string().contains("aggregate_id"), "{refused}");
    }

    #[test]
    fn parses_the_flattened_style_with_a_json_payload_field() {
        let event = Event::from_entry(&entry(&[
            ("event_id", "e-2"),
            ("event_type", "OrderPaid"),
            ("aggregate_id", AGGREGATE),
            ("occurred_on", "2025-01-01T10:00:00.250+02:00"),
            ("payload", r#"{"amount": 5}"#),
            ("causation_id", "e-1"),
        ]))
        .unwrap();
        assert_eq!(event.payload, json!({"amount": 5}));
        assert_eq!(
            event.occurred_on.to_rfc3339(),
            "2025-01-01T08:00:00.250+00:00"
        );
        assert_eq!(event.causation_id.as_deref(), Some("e-1"));
    }

    #[test]
    fn missing_payload_means_empty_object_and_others_are_kept_as_they_are() {
        let base = [
            ("event_id", "e"),
            ("event_type", "T"),
            ("aggregate_id", AGGREGATE),
            ("occurred_on", "2025-01-01T00:00:00"),
        ];
        assert_eq!(Event::from_entry(&entry(&base)).unwrap().payload, json!({}));
        // Flattened style: plain text is a string, an array is parsed as JSON.
        for (text, expected) in [
            ("plain text", json!("plain text")),
            ("[1, 2]", json!([1, 2])),
        ] {
            let mut fields = base.to_vec();
            fields.push(("payload", text));
            assert_eq!(
                Event::from_entry(&entry(&fields)).unwrap().payload,
                expected,
                "{text}"
            );
        }
        // The `data` style: any JSON value.
        for payload in [
            json!([1, "two"]),
            json!("text"),
            json!(42),
            json!(null),
            json!(true),
        ] {
            let data = json!({
                "event_id": "e", "event_type": "T", "aggregate_id": AGGREGATE,
                "occurred_on": "2025-01-01T00:00:00Z", "payload": payload,
            })
            .to_string();
            let event = Event::from_entry(&entry(&[("data", data.as_str())])).unwrap();
            assert_eq!(event.payload, payload);
        }
    }

    #[test]
    fn errors_name_the_field() {
        let missing = Event::from_entry(&entry(&[("event_id", "e"), ("aggregate_id", AGGREGATE)]))
            .unwrap_err();
        assert_eq!(
            missing,
            EntryError::Missing {
                field: "event_type"
            }
        );

        let bad_uuid = Event::from_entry(&entry(&[
            ("event_id", "e"),
            ("event_type", "T"),
            ("aggregate_id", "nope"),
            ("occurred_on", "2025-01-01T00:00:00Z"),
        ]))
        .unwrap_err();
        assert!(
            matches!(&bad_uuid, EntryError::Invalid { field, .. } if field == "aggregate_id"),
            "{bad_uuid}"
        );

        let far = Event::from_entry(&entry(&[
            ("event_id", "e"),
            ("event_type", "T"),
            ("aggregate_id", AGGREGATE),
            ("occurred_on", "+10000-01-01T00:00:00Z"),
        ]));
        assert!(far.is_err(), "{far:?}");
        let ancient = Event::from_entry(&entry(&[
            ("event_id", "e"),
            ("event_type", "T"),
            ("aggregate_id", AGGREGATE),
            ("occurred_on", "-5000-01-01T00:00:00"),
        ]))
        .unwrap_err();
        assert!(
            ancient.to_string().contains("outside 1..=9999"),
            "{ancient}"
        );

        let bad_time = Event::from_entry(&entry(&[
            ("event_id", "e"),
            ("event_type", "T"),
            ("aggregate_id", AGGREGATE),
            ("occurred_on", "yesterday"),
        ]))
        .unwrap_err();
        assert!(bad_time.to_string().contains("occurred_on"), "{bad_time}");

        let not_object = Event::from_entry(&entry(&[("data", "[1,2]")])).unwrap_err();
        assert!(
            not_object
                .to_string()
                .contains("expected a JSON object, got an array"),
            "{not_object}"
        );

        let not_json = Event::from_entry(&entry(&[("data", "{oops")])).unwrap_err();
        assert!(matches!(&not_json, EntryError::Invalid { field, .. } if field == "data"));

        let number_id = Event::from_entry(&entry(&[("data", &json!({"event_id": 5}).to_string())]))
            .unwrap_err();
        assert!(
            number_id
                .to_string()
                .contains("expected a string, got a number"),
            "{number_id}"
        );

        let long_type = "x".repeat(129);
        let too_long = Event::from_entry(&entry(&[("event_id", "e"), ("event_type", &long_type)]))
            .unwrap_err();
        assert!(too_long.to_string().contains("at most 128"), "{too_long}");
    }

    #[test]
    fn nul_characters_are_refused_in_ids_and_payload() {
        let data = json!({"event_id": "e\u{0}1", "event_type": "T", "aggregate_id": AGGREGATE,
            "occurred_on": "2025-01-01T00:00:00Z"});
        let error = Event::from_entry(&entry(&[("data", &data.to_string())])).unwrap_err();
        assert!(
            matches!(&error, EntryError::Invalid { field, .. } if field == "event_id"),
            "{error}"
        );
        let data = json!({"event_id": "e", "event_type": "T", "aggregate_id": AGGREGATE,
            "occurred_on": "2025-01-01T00:00:00Z", "payload": {"deep": [{"k\u{0}": 1}]}});
        let error = Event::from_entry(&entry(&[("data", &data.to_string())])).unwrap_err();
        assert!(
            matches!(&error, EntryError::Invalid { field, .. } if field == "payload"),
            "{error}"
        );
    }

    #[test]
    fn non_utf8_values_are_an_error_not_a_panic() {
        let entry = StreamEntry::from_text_fields("1-0", [("data", vec![0xff, 0xfe])]);
        assert!(Event::from_entry(&entry)
            .unwrap_err()
            .to_string()
            .contains("not UTF-8"));
        let bad_name = StreamEntry {
            id: "1-0".into(),
            fields: vec![(vec![b'e', 0xff], b"x".to_vec())],
        };
        let error = Event::from_entry(&bad_name).unwrap_err();
        assert!(
            error.to_string().contains("field name is not UTF-8"),
            "{error}"
        );
    }

    #[test]
    fn entry_fields_round_trip() {
        let mut event = Event::new("OrderCreated", Uuid::new_v4(), json!({"order_id": "o-1"}));
        event.correlation_id = Some("c".into());
        let entry = StreamEntry::from_text_fields("1-0", event.to_entry_fields());
        let parsed = Event::from_entry(&entry).unwrap();
        assert_eq!(parsed, event);
    }

    #[test]
    fn headers_travel_as_one_attribute_in_either_style_and_are_absent_when_empty() {
        let plain = Event::new("OrderCreated", Uuid::new_v4(), json!({}));
        assert!(
            plain.to_json().get("headers").is_none(),
            "no headers, no key"
        );

        let event = plain
            .with_header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .with_header("tenant", "acme");
        let fields = event.to_entry_fields();
        assert_eq!(fields.len(), 1, "still one `data` field");
        let parsed = Event::from_entry(&StreamEntry::from_text_fields("1-0", fields)).unwrap();
        assert_eq!(parsed, event);

        // Flattened: a `headers` field holding the object's JSON.
        let flattened = Event::from_entry(&entry(&[
            ("event_id", "e-3"),
            ("event_type", "T"),
            ("aggregate_id", AGGREGATE),
            ("occurred_on", "2025-01-01T00:00:00Z"),
            ("headers", r#"{"tenant": "acme"}"#),
        ]))
        .unwrap();
        assert_eq!(flattened.headers["tenant"], "acme");
        assert_eq!(flattened.headers.len(), 1);
    }

    #[test]
    fn bad_headers_are_an_entry_error_naming_the_field() {
        let base = [
            ("event_id", "e"),
            ("event_type", "T"),
            ("aggregate_id", AGGREGATE),
            ("occurred_on", "2025-01-01T00:00:00Z"),
        ];
        for bad in ["plain text", r#"{"n": 1}"#, "[1]"] {
            let mut fields = base.to_vec();
            fields.push(("headers", bad));
            let error = Event::from_entry(&entry(&fields)).unwrap_err();
            assert!(
                matches!(&error, EntryError::Invalid { field, .. } if field == "headers"),
                "{bad}: {error}"
            );
        }
        let too_many: Map<String, Value> = (0..65).map(|n| (format!("h{n}"), json!("v"))).collect();
        let data = json!({"event_id": "e", "event_type": "T", "aggregate_id": AGGREGATE,
            "occurred_on": "2025-01-01T00:00:00Z", "headers": too_many});
        let error = Event::from_entry(&entry(&[("data", &data.to_string())])).unwrap_err();
        assert!(
            error.to_string().contains("65 headers, at most 64"),
            "{error}"
        );

        let mut event = Event::new("T", Uuid::nil(), json!({}));
        event.headers.insert("n".into(), "x".repeat(10_000));
        assert!(event.validate().is_err(), "the outbox refuses it too");
    }

    #[test]
    fn payload_as_reports_shape_mismatch() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Needs {
            order_id: String,
        }
        let event = Event::new("T", Uuid::nil(), json!({"other": 1}));
        assert!(event.payload_as::<Needs>().is_err());
    }

    #[test]
    fn status_names_match_the_column_values() {
        let names: Vec<&str> = EventStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "pending",
                "processing",
                "processed",
                "failed",
                "dead_letter"
            ]
        );
        assert_eq!(
            EventStatus::parse("dead_letter"),
            Some(EventStatus::DeadLetter)
        );
        assert_eq!(EventStatus::parse("nope"), None);
    }
}
