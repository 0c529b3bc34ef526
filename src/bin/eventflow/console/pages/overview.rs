//! `/`: the inbox's counts by status (in all and per stream) and its lag, each configured
//! stream's consumer group, parked aggregates, and the outbox's backlog.

use super::super::super::text::format_age;
use super::{Ctx, PageError};
use crate::console::backends::Backends;
use crate::console::html::Html;
use crate::console::layout::{self, href};
use crate::console::request::Request;
use eventflow::admin::{stream_status, OutboxState, StreamStatus};
use eventflow::store::outbox::OutboxStatus;
use eventflow::store::InboxStore;
use eventflow::EventStatus;
use std::time::Duration;

/// Draws the overview.
pub fn show<S: InboxStore>(
    backends: &Backends<S>,
    _ctx: Ctx<'_>,
    _request: &Request,
) -> Result<Html, PageError> {
    let inbox = backends.admin.inbox_status()?;
    let mut body = Html::new();

    body.raw("<h2>Inbox</h2><p>Table <code>")
        .text(&backends.table)
        .raw("</code> (")
        .text(backends.kind)
        .raw(" at <code>")
        .text(&backends.database)
        .raw("</code>); ");
    match &inbox.owner {
        Some(owner) => body
            .raw("owned by consumer group <code>")
            .text(owner)
            .raw("</code>."),
        None => body.raw("no owner yet (the first consumer to start adopts the table)."),
    };
    body.raw("</p><table><tr><th>Status</th><th>Rows</th><th>Oldest</th></tr>");
    for status in EventStatus::ALL {
        let oldest = match status {
            EventStatus::Pending => inbox.pending_lag(),
            EventStatus::Failed => inbox.failed_lag(),
            _ => None,
        };
        body.raw("<tr><td>");
        if status == EventStatus::DeadLetter {
            layout::link(&mut body, "/dead-letters", status.as_str());
        } else {
            body.text(status);
        }
        body.raw("</td><td class=\"n\" id=\"count-")
            .text(status)
            .raw("\">")
            .text(inbox.counts.get(status))
            .raw("</td><td>")
            .text(age_or_dash(oldest))
            .raw("</td></tr>");
    }
    body.raw("<tr><th>total</th><th class=\"n\">")
        .text(inbox.counts.total())
        .raw("</th><th></th></tr></table>");

    if !inbox.by_stream.is_empty() {
        body.raw("<h3>By stream</h3><table><tr><th>Stream</th>");
        for status in EventStatus::ALL {
            body.raw("<th>").text(status).raw("</th>");
        }
        body.raw("<th>total</th></tr>");
        for (stream, counts) in &inbox.by_stream {
            body.raw("<tr><td>");
            match stream {
                Some(stream) => body.raw("<code>").text(stream).raw("</code>"),
                None => body.raw("<span class=\"muted\">(not recorded)</span>"),
            };
            body.raw("</td>");
            for status in EventStatus::ALL {
                body.raw("<td class=\"n\">")
                    .text(counts.get(status))
                    .raw("</td>");
            }
            body.raw("<td class=\"n\">")
                .text(counts.total())
                .raw("</td></tr>");
        }
        body.raw("</table>");
    }

    streams(backends, &mut body);

    body.raw("<h2>Parked aggregates</h2><p>");
    match inbox.parked.aggregates {
        0 => {
            body.raw("None: no aggregate waits behind a dead letter.");
        }
        1 => {
            body.raw("1 aggregate waits behind a dead letter");
        }
        many => {
            body.text(many).raw(" aggregates wait behind a dead letter");
        }
    }
    if inbox.parked.aggregates > 0 {
        if let Some(lag) = inbox.parked_lag() {
            body.raw("; the oldest event waiting has been in the inbox for ")
                .text(format_age(lag));
        }
        body.raw(". ");
        layout::link(&mut body, "/parked", "Requeue or release");
    }
    body.raw("</p>");

    outbox(backends, &mut body)?;

    body.raw("<h2>Quarantine</h2><p>");
    layout::link(
        &mut body,
        "/quarantine",
        "Stream entries that did not parse",
    );
    body.raw(", to look at and replay once fixed.</p>");
    Ok(layout::page("Overview", "/", body))
}

/// The consumer group's pending entries and lag on each configured stream.
fn streams<S: InboxStore>(backends: &Backends<S>, body: &mut Html) {
    body.raw("<h2>Streams</h2>");
    let (Some(redis), Some(group)) = (&backends.redis, &backends.group) else {
        body.raw(
            "<p class=\"muted\">Start the console with --stream and --group (or \
                  EVENTFLOW_STREAM and EVENTFLOW_GROUP) to see each stream's pending entries \
                  and lag.</p>",
        );
        return;
    };
    body.raw("<table><tr><th>Stream</th><th>Group</th><th>Pending entries</th><th>Lag</th></tr>");
    for stream in &backends.streams {
        body.raw("<tr><td><code>")
            .text(stream)
            .raw("</code></td><td><code>")
            .text(group)
            .raw("</code></td>");
        match stream_status(redis, stream, group) {
            Ok(StreamStatus::Group(stats)) => {
                body.raw("<td class=\"n\">")
                    .text(stats.pending)
                    .raw("</td><td class=\"n\">")
                    .text(
                        stats
                            .lag
                            .map_or("unknown".to_string(), |lag| lag.to_string()),
                    )
                    .raw("</td>");
            }
            Ok(StreamStatus::NoGroup) => {
                body.raw("<td colspan=\"2\" class=\"muted\">no such group yet</td>");
            }
            Ok(StreamStatus::NoStream) => {
                body.raw("<td colspan=\"2\" class=\"muted\">no such stream yet</td>");
            }
            Ok(_) => {
                body.raw("<td colspan=\"2\" class=\"muted\">unknown</td>");
            }
            Err(error) => {
                body.raw("<td colspan=\"2\" class=\"problem\">")
                    .text(backends.scrubber.scrub(&error.to_string()))
                    .raw("</td>");
            }
        }
        body.raw("</tr>");
    }
    body.raw("</table>");
}

/// The outbox's rows by status and how long the oldest unpublished one has waited.
fn outbox<S: InboxStore>(backends: &Backends<S>, body: &mut Html) -> Result<(), PageError> {
    body.raw("<h2>Outbox</h2>");
    let report = match backends.outbox.status()? {
        OutboxState::Installed(report) => report,
        OutboxState::NotInstalled { table } => {
            body.raw("<p class=\"muted\">Not installed: no table <code>")
                .text(table)
                .raw("</code> in this database.</p>");
            return Ok(());
        }
        _ => return Ok(()),
    };
    body.raw("<p>Table <code>")
        .text(&report.table)
        .raw("</code>: ")
        .text(report.backlog())
        .raw(" waiting to be published; the oldest for ")
        .text(age_or_dash(report.oldest_unpublished_age()))
        .raw(".</p><table><tr><th>Status</th><th>Rows</th></tr>");
    for status in OutboxStatus::ALL {
        body.raw("<tr><td>");
        layout::link(
            body,
            &href("/outbox", &[("status", status.as_str())]),
            status.as_str(),
        );
        body.raw("</td><td class=\"n\">")
            .text(report.count(status))
            .raw("</td></tr>");
    }
    body.raw("</table>");
    Ok(())
}

fn age_or_dash(age: Option<Duration>) -> String {
    age.map_or_else(|| "–".to_string(), format_age)
}
