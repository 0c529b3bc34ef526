//! Event headers: string metadata that travels with an event, apart from its payload, from the
//! outbox row through the stream entry to the inbox row (and so to dead letters). The W3C trace
//! context (`traceparent`, `tracestate`) is the first user; a tenant or a schema version are
//! others.
//!
//! On the stream, headers are one more attribute, `headers`, holding a JSON object of strings:
//! a key of the `data` object in the recommended style, a field holding the object's JSON in
//! the flattened style. It is left out when there are none, so entries without it (from other
//! producers, or written before headers existed) still parse, with no headers. In the tables
//! they are a nullable `headers` column (`jsonb` on PostgreSQL, JSON text on SQLite), null when
//! there are none, so rows written by other tools keep working.
//!
//! Headers are bounded ([`MAX_HEADERS`], [`MAX_HEADER_NAME_LEN`], [`MAX_HEADER_VALUE_LEN`]) so
//! one producer cannot make every row it touches large: the outbox refuses such an event, and
//! the inbox quarantines such an entry with a reason naming the bound.

use crate::event::EntryError;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Header names and values, sorted by name.
pub type Headers = BTreeMap<String, String>;

/// Most headers one event may carry: far more than trace context and a few application
/// headers need, few enough to keep a row small.
pub const MAX_HEADERS: usize = 64;
/// Longest header name (characters): W3C trace-context keys are at most 256.
pub const MAX_HEADER_NAME_LEN: usize = 256;
/// Longest header value (characters): room for a `tracestate` of the 512 characters W3C asks
/// every vendor to propagate many times over, and for a small token, but not for a payload.
pub const MAX_HEADER_VALUE_LEN: usize = 8192;

/// The entry attribute (and table column) that holds the headers.
pub(crate) const FIELD: &str = "headers";

/// Checks the bounds and what the tables can store: names not empty, no NUL character
/// anywhere (PostgreSQL's `jsonb` refuses it).
pub(crate) fn check(headers: &Headers) -> Result<(), EntryError> {
    if headers.len() > MAX_HEADERS {
        return Err(invalid(format!(
            "{} headers, at most {MAX_HEADERS} allowed",
            headers.len()
        )));
    }
    for (name, value) in headers {
        if name.is_empty() {
            return Err(invalid("a header name is empty"));
        }
        let name_len = name.chars().count();
        if name_len > MAX_HEADER_NAME_LEN {
            return Err(invalid(format!(
                "header name {:?}... is {name_len} characters, at most {MAX_HEADER_NAME_LEN} allowed",
                prefix(name)
            )));
        }
        let value_len = value.chars().count();
        if value_len > MAX_HEADER_VALUE_LEN {
            return Err(invalid(format!(
                "header {:?} is {value_len} characters, at most {MAX_HEADER_VALUE_LEN} allowed",
                prefix(name)
            )));
        }
        if name.contains('\0') || value.contains('\0') {
            return Err(invalid(format!(
                "header {:?} contains a NUL character (U+0000), which PostgreSQL cannot store",
                prefix(name)
            )));
        }
    }
    Ok(())
}

/// Reads the `headers` attribute of a stream entry: a JSON object of strings, or null for none.
pub(crate) fn from_attribute(value: Option<&Value>) -> Result<Headers, EntryError> {
    let headers = match value {
        None | Some(Value::Null) => return Ok(Headers::new()),
        Some(Value::Object(map)) => strings(map).map_err(invalid)?,
        Some(_) => return Err(invalid("expected a JSON object of strings")),
    };
    check(&headers)?;
    Ok(headers)
}

/// Reads a table's `headers` column (as parsed JSON); null is none. A value that is not an
/// object of strings is returned as the reason it cannot be read.
pub(crate) fn from_column(value: Option<Value>) -> Result<Headers, String> {
    match value {
        None | Some(Value::Null) => Ok(Headers::new()),
        Some(Value::Object(map)) => strings(&map).map_err(|reason| format!("headers: {reason}")),
        Some(other) => Err(format!("headers: expected a JSON object, got {other}")),
    }
}

/// Reads a SQLite `headers` column (JSON text); null is none.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn from_column_text(text: Option<&str>) -> Result<Headers, String> {
    match text {
        None => Ok(Headers::new()),
        Some(text) => from_column(Some(
            serde_json::from_str(text).map_err(|error| format!("headers are not JSON: {error}"))?,
        )),
    }
}

/// What a table's `headers` column holds: null when there are none, so rows stay as rows
/// written by tools that know nothing of headers.
pub(crate) fn to_column(headers: &Headers) -> Option<Value> {
    (!headers.is_empty()).then(|| {
        Value::Object(
            headers
                .iter()
                .map(|(name, value)| (name.clone(), Value::String(value.clone())))
                .collect(),
        )
    })
}

/// [`to_column`] as JSON text, for SQLite and for PostgreSQL's `text[]` batch parameters.
pub(crate) fn to_column_text(headers: &Headers) -> Option<String> {
    to_column(headers).map(|value| value.to_string())
}

fn strings(map: &Map<String, Value>) -> Result<Headers, String> {
    map.iter()
        .map(|(name, value)| match value {
            Value::String(text) => Ok((name.clone(), text.clone())),
            other => Err(format!(
                "header {:?} is not a string but {other}",
                prefix(name)
            )),
        })
        .collect()
}

/// A name cut short for an error message, so a huge bad name does not make a huge reason.
fn prefix(name: &str) -> String {
    name.chars().take(64).collect()
}

fn invalid(reason: impl Into<String>) -> EntryError {
    EntryError::Invalid {
        field: FIELD.to_string(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn absent_or_null_means_none() {
        assert_eq!(from_attribute(None).unwrap(), Headers::new());
        assert_eq!(from_attribute(Some(&Value::Null)).unwrap(), Headers::new());
        assert_eq!(from_column(None).unwrap(), Headers::new());
        assert_eq!(from_column_text(None).unwrap(), Headers::new());
        assert_eq!(to_column(&Headers::new()), None);
    }

    #[test]
    fn an_object_of_strings_round_trips_through_the_column() {
        let kept = headers(&[("traceparent", "00-abc"), ("tenant", "")]);
        let text = to_column_text(&kept).unwrap();
        assert_eq!(from_column_text(Some(&text)).unwrap(), kept);
        assert_eq!(from_column(to_column(&kept)).unwrap(), kept);
        let parsed = from_attribute(Some(&json!({"traceparent": "00-abc", "tenant": ""})));
        assert_eq!(parsed.unwrap(), kept);
    }

    #[test]
    fn other_shapes_are_refused_naming_the_field() {
        for bad in [
            json!("text"),
            json!([1]),
            json!({"n": 1}),
            json!({"n": null}),
        ] {
            let error = from_attribute(Some(&bad)).unwrap_err();
            assert!(
                matches!(&error, EntryError::Invalid { field, .. } if field == "headers"),
                "{bad}: {error}"
            );
        }
        assert!(from_column(Some(json!([]))).is_err());
        assert!(from_column_text(Some("{oops")).is_err());
    }

    #[test]
    fn bounds_are_enforced_with_a_reason_that_names_them() {
        let many: Headers = (0..=MAX_HEADERS)
            .map(|n| (format!("h{n}"), "v".to_string()))
            .collect();
        let error = check(&many).unwrap_err().to_string();
        assert!(error.contains("65 headers, at most 64 allowed"), "{error}");
        let fine: Headers = many.into_iter().take(MAX_HEADERS).collect();
        assert!(check(&fine).is_ok());

        let long_name = "n".repeat(MAX_HEADER_NAME_LEN + 1);
        let error = check(&headers(&[(&long_name, "v")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("257 characters, at most 256"), "{error}");
        assert!(check(&headers(&[(&long_name[1..], "v")])).is_ok());

        let long_value = "v".repeat(MAX_HEADER_VALUE_LEN + 1);
        let error = check(&headers(&[("big", &long_value)]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("8193 characters, at most 8192"), "{error}");
        assert!(error.len() < 200, "the reason stays short: {error}");

        assert!(check(&headers(&[("", "v")])).is_err());
        assert!(check(&headers(&[("n", "a\0b")])).is_err());
        assert!(check(&headers(&[("n\0", "v")])).is_err());
    }
}
