//! OpenTelemetry trace context from the enqueuing code to the handler (feature `otel`).
//!
//! At enqueue, the current `tracing` span's OpenTelemetry context (through the
//! `tracing-opentelemetry` layer, or else the OpenTelemetry API's own current context) is written
//! into the event's headers as W3C trace context: `traceparent`, and `tracestate` when there is
//! one. The relay publishes the headers with the event and the inbox keeps them on the row. The
//! inbox then runs each handler in a span of kind CONSUMER (see `inbox::handler_span`) that is a
//! child of that remote context on the first attempt, so the handler shows up in the producer's
//! trace, and on a retry is the root of a trace of its own with a link to it, as the
//! OpenTelemetry messaging conventions ask of work that is not part of the producing operation.
//!
//! The W3C format is written and read here rather than through a propagator: the API crate has
//! none (the SDK's `TraceContextPropagator` would pull the whole SDK into applications that
//! only use the API), and the format is a few fixed-width fields.

use crate::event::Event;
use crate::headers::{Headers, MAX_HEADER_VALUE_LEN};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C trace-context header holding the trace id, the parent span id and the flags.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C trace-context header holding vendor-specific trace state.
pub const TRACESTATE: &str = "tracestate";

/// The only `traceparent` version this writes; later versions are read by their first four
/// fields, as the W3C recommendation asks.
const VERSION: &str = "00";

/// `entries` with the current span's trace context added to each event's headers, or `None`
/// when there is no valid current context (nothing to add). An event that already carries a
/// `traceparent` keeps its own: the producer set it on purpose.
pub(crate) fn with_current_context<'a>(
    entries: &[(&'a str, &Event)],
) -> Option<Vec<(&'a str, Event)>> {
    let trace = current_trace_headers();
    if trace.is_empty() {
        return None;
    }
    Some(
        entries
            .iter()
            .map(|(stream, event)| {
                let mut event = (*event).clone();
                if !event.headers.contains_key(TRACEPARENT) {
                    event.headers.remove(TRACESTATE);
                    event.headers.extend(trace.clone());
                }
                (*stream, event)
            })
            .collect(),
    )
}

/// The current trace context as W3C headers; empty when there is no valid context.
fn current_trace_headers() -> Headers {
    let from_tracing = tracing::Span::current().context();
    let span_context = from_tracing.span().span_context().clone();
    let span_context = match span_context.is_valid() {
        true => span_context,
        // Code instrumented with the OpenTelemetry API directly, not through `tracing`.
        false => Context::current().span().span_context().clone(),
    };
    to_headers(&span_context)
}

/// `context` as W3C trace-context headers; none for an invalid context. A `tracestate` longer
/// than a header value may be is left out (W3C lets a vendor drop trace state it cannot carry;
/// the trace itself goes on).
pub fn to_headers(context: &SpanContext) -> Headers {
    let mut headers = Headers::new();
    if !context.is_valid() {
        return headers;
    }
    headers.insert(
        TRACEPARENT.to_string(),
        format!(
            "{VERSION}-{}-{}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8()
        ),
    );
    let state = context.trace_state().header();
    if !state.is_empty() && state.chars().count() <= MAX_HEADER_VALUE_LEN {
        headers.insert(TRACESTATE.to_string(), state);
    }
    headers
}

/// The remote span context W3C headers carry, if `traceparent` is there and well formed (an
/// unreadable `tracestate` is dropped, the parent kept).
pub fn from_headers(headers: &Headers) -> Option<SpanContext> {
    let (trace_id, span_id, flags) = parse_traceparent(headers.get(TRACEPARENT)?)?;
    let state = headers
        .get(TRACESTATE)
        .and_then(|state| state.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// Parses `traceparent`: `version-traceid-parentid-flags`, lowercase hex of 2, 32, 16 and 2
/// digits, ids not all zero; version `ff` is invalid, and version `00` has exactly these fields.
fn parse_traceparent(value: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    let rest = parts.next();
    let hex = |text: &str, len: usize| {
        text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !hex(version, 2) || version == "ff" || (version == VERSION && rest.is_some()) {
        return None;
    }
    if !hex(trace_id, 32) || !hex(span_id, 16) || !hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
    ))
}

/// Ties a handler's span to the trace context in the event's headers: the remote context is
/// its parent on the first attempt, and a link on a retry (the span is then a root, as
/// created). Call before the span is first entered; without a `tracing-opentelemetry` layer
/// it does nothing.
pub(crate) fn connect(span: &tracing::Span, headers: &Headers, first_attempt: bool) {
    let Some(remote) = from_headers(headers) else {
        return;
    };
    if first_attempt {
        // Fails only when no OpenTelemetry layer is installed or the span is disabled:
        // then there is no trace to join.
        let _ = span.set_parent(Context::new().with_remote_span_context(remote));
    } else {
        span.add_link(remote);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_context_round_trips_through_the_headers() {
        let read = from_headers(&headers(&[
            (TRACEPARENT, PARENT),
            (TRACESTATE, "vendor=x,b=2"),
        ]))
        .unwrap();
        assert!(read.is_remote() && read.is_sampled());
        assert_eq!(
            read.trace_id(),
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap()
        );
        assert_eq!(
            read.span_id(),
            SpanId::from_hex("b7ad6b7169203331").unwrap()
        );
        let written = to_headers(&read);
        assert_eq!(written[TRACEPARENT], PARENT);
        assert_eq!(written[TRACESTATE], "vendor=x,b=2");
    }

    #[test]
    fn an_invalid_context_writes_nothing() {
        assert!(to_headers(&SpanContext::empty_context()).is_empty());
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(
                from_headers(&headers(&[(TRACEPARENT, bad)])).is_none(),
                "{bad:?}"
            );
        }
        assert!(from_headers(&Headers::new()).is_none());
    }

    #[test]
    fn later_versions_are_read_by_their_first_fields_and_bad_state_is_dropped() {
        let future = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03-more";
        let read = from_headers(&headers(&[(TRACEPARENT, future), (TRACESTATE, "=bad=")])).unwrap();
        assert_eq!(
            read.trace_flags(),
            TraceFlags::SAMPLED,
            "unknown flags dropped"
        );
        assert_eq!(read.trace_state().header(), "");
    }

    #[test]
    fn enqueue_adds_the_current_context_but_keeps_an_events_own() {
        let plain = Event::new("T", uuid::Uuid::nil(), serde_json::json!({}))
            .with_header(TRACESTATE, "stale=1");
        let own = "00-11111111111111111111111111111111-2222222222222222-00";
        let explicit =
            Event::new("T", uuid::Uuid::nil(), serde_json::json!({})).with_header(TRACEPARENT, own);
        assert!(
            with_current_context(&[("s", &plain)]).is_none(),
            "no current context, nothing to add"
        );

        let current = from_headers(&headers(&[(TRACEPARENT, PARENT)])).unwrap();
        let _attached = Context::new().with_remote_span_context(current).attach();
        let traced = with_current_context(&[("s", &plain), ("t", &explicit)]).unwrap();
        assert_eq!(traced[0].0, "s");
        assert_eq!(traced[0].1.headers[TRACEPARENT], PARENT);
        assert!(
            !traced[0].1.headers.contains_key(TRACESTATE),
            "a trace state belongs with its own parent"
        );
        assert_eq!(traced[1].1.headers[TRACEPARENT], own);
    }
}
