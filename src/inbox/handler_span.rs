//! The `tracing` span each handler call runs in, named and attributed after the OpenTelemetry
//! messaging conventions for a "process" operation, so that a `tracing-opentelemetry` layer
//! turns it into a CONSUMER span (`process <stream>`) and any other subscriber shows the event
//! beside whatever the handler logs.
//!
//! With the `otel` feature the span is also joined to the trace context the event carries in its
//! headers (see the `otel` module): the producer's span is its parent on the first attempt and a
//! link on retries.

use crate::event::InboxRow;
use crate::handler::HandlerResult;
use std::fmt;
use tracing::field::Empty;

/// The span for handling `row` as consumer `group`. A root span whatever the worker thread's
/// current span (a worker thread has no caller whose trace the handler belongs to); enter it
/// around the handler call only, so its duration is the handler's.
pub(crate) fn handler_span(row: &InboxRow, group: &str) -> tracing::Span {
    let stream = row.stream.as_deref().unwrap_or_default();
    let event = &row.event;
    let span = tracing::info_span!(
        parent: None,
        "process",
        otel.name = %ProcessName(stream),
        otel.kind = "consumer",
        otel.status_code = Empty,
        messaging.system = "redis",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = stream,
        messaging.consumer.group.name = group,
        messaging.message.id = %event.event_id,
        messaging.message.conversation_id = event.correlation_id.as_deref(),
        event_type = %event.event_type,
        retry_count = row.retry_count,
        error.type = Empty,
    );
    #[cfg(feature = "otel")]
    if !span.is_disabled() {
        crate::otel::connect(&span, &event.headers, row.retry_count == 0);
    }
    span
}

/// Marks the span failed when the handler returned an error or panicked (the attempt will be
/// retried or the event dead-lettered), with `error.type` a low-cardinality class of failure as
/// the conventions ask: `handler_error`, `give_up` or `panic`.
pub(crate) fn record_outcome(span: &tracing::Span, outcome: &std::thread::Result<HandlerResult>) {
    let error_type = match outcome {
        Ok(Ok(())) => return,
        Ok(Err(error)) if error.is_give_up() => "give_up",
        Ok(Err(_)) => "handler_error",
        Err(_) => "panic",
    };
    span.record("otel.status_code", "error");
    span.record("error.type", error_type);
}

/// The span name the messaging conventions give a process operation: `process <destination>`,
/// or `process` alone for a row stored without its stream.
struct ProcessName<'a>(&'a str);

impl fmt::Display for ProcessName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            "" => f.write_str("process"),
            stream => write!(f, "process {stream}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ProcessName;

    #[test]
    fn the_span_name_names_the_stream() {
        assert_eq!(ProcessName("orders").to_string(), "process orders");
        assert_eq!(ProcessName("").to_string(), "process");
    }
}
