//! `/dead-letters`: dead letters with filters and paging, each requeued or skipped, or all those
//! matching requeued at once; `/event`: one inbox row (any status) with its payload.

use super::super::super::text::{cut, format_time};
use super::{back, cursor, done, here, limit, required, time, Ctx, PageError};
use crate::console::backends::Backends;
use crate::console::html::Html;
use crate::console::layout::{self, href, Button};
use crate::console::request::{Params, Request};
use eventflow::store::{InboxStore, Page, RowFilter};
use eventflow::{EventStatus, InboxRow};

/// The filter fields of the listing: query parameter, label, placeholder.
const FILTERS: [(&str, &str, &str); 5] = [
    ("event_type", "Event type", "exact"),
    ("error", "Error contains", "text"),
    ("from_stream", "Stream", "exact"),
    ("since", "Since", "RFC 3339 or 2h"),
    ("until", "Until", "RFC 3339 or 30m"),
];

/// The dead-letter filter the parameters describe.
fn filter(params: &Params) -> Result<RowFilter, PageError> {
    Ok(RowFilter {
        status: Some(EventStatus::DeadLetter),
        event_type: params.get("event_type").map(str::to_string),
        error_contains: params.get("error").map(str::to_string),
        stream: params.get("from_stream").map(str::to_string),
        received_from: time(params, "since")?,
        received_before: time(params, "until")?,
        ..RowFilter::default()
    })
}

/// The filter parameters as given, to carry into links and forms.
fn filter_params(params: &Params) -> Vec<(&'static str, &str)> {
    FILTERS
        .iter()
        .filter_map(|(name, _, _)| params.get(name).map(|value| (*name, value)))
        .collect()
}

/// Lists one page of dead letters.
pub fn list<S: InboxStore>(
    backends: &Backends<S>,
    ctx: Ctx<'_>,
    request: &Request,
) -> Result<Html, PageError> {
    let params = &request.query;
    let rows_filter = filter(params)?;
    let page = Page {
        limit: limit(params)?,
        after: cursor(params)?,
    };
    let listed = backends.admin.list_rows(&rows_filter, page)?;
    let kept = filter_params(params);
    // Links to other pages keep the page size too; the bulk requeue form takes only filters.
    let mut paging = kept.clone();
    paging.push(("limit", params.get("limit").unwrap_or_default()));
    let mut this_page = paging.clone();
    let after = params.get("after").unwrap_or_default();
    this_page.push(("after", after));
    let back_here = here("/dead-letters", &this_page);

    let mut body = Html::new();
    body.raw("<form class=\"filters\" method=\"get\" action=\"/dead-letters\">");
    for (name, label, hint) in FILTERS {
        layout::filter_field(&mut body, label, name, params.get(name), hint);
    }
    body.raw("<button type=\"submit\">Filter</button> ");
    layout::link(&mut body, "/dead-letters", "Clear");
    body.raw("</form>");

    if listed.rows.is_empty() {
        body.raw("<p class=\"muted\">No dead letters")
            .raw(if page.after.is_some() {
                " after this point"
            } else {
                ""
            })
            .raw(if kept.is_empty() {
                ""
            } else {
                " matching these filters"
            })
            .raw(".</p>");
    } else {
        body.raw(
            "<table><tr><th>Received</th><th>Event type</th><th>Event id</th>\
                  <th>Stream</th><th>Attempts</th><th>Error</th><th>Actions</th></tr>",
        );
        for record in &listed.rows {
            row_line(&mut body, ctx, &record.row, &back_here);
        }
        body.raw("</table>");
    }
    body.raw("<p>");
    if page.after.is_some() {
        layout::link(&mut body, &href("/dead-letters", &paging), "First page");
        body.raw(" · ");
    }
    if let Some(next) = listed.next {
        let next = next.to_string();
        let mut next_params = paging.clone();
        next_params.push(("after", &next));
        layout::link(
            &mut body,
            &href("/dead-letters", &next_params),
            "Next page →",
        );
    }
    body.raw("</p>");

    if !listed.rows.is_empty() {
        body.raw("<h2>All at once</h2><p>");
        let mut fields = kept.clone();
        fields.push(("back", &back_here));
        Button {
            action: "/dead-letters/requeue-matching",
            fields: &fields,
            label: if kept.is_empty() {
                "Requeue every dead letter"
            } else {
                "Requeue every dead letter matching these filters"
            },
            class: "act",
        }
        .write(&mut body, ctx.csrf_token);
        body.raw(" <span class=\"muted\">(all pages, 1,000 per transaction)</span></p>");
    }
    Ok(layout::page("Dead letters", "/dead-letters", body))
}

/// One dead letter's line of the listing, with its buttons.
fn row_line(body: &mut Html, ctx: Ctx<'_>, row: &InboxRow, back_here: &str) {
    let id = row.id.to_string();
    body.raw("<tr id=\"row-")
        .text(&id)
        .raw("\" data-event-id=\"")
        .text(&row.event.event_id)
        .raw("\"><td>")
        .text(format_time(row.received_at))
        .raw("</td><td>")
        .text(&row.event.event_type)
        .raw("</td><td class=\"id\">");
    layout::link(body, &href("/event", &[("key", &id)]), &row.event.event_id);
    body.raw("</td><td>")
        .text(row.stream.as_deref().unwrap_or("–"))
        .raw("</td><td class=\"n\">")
        .text(row.retry_count)
        .raw("</td><td>")
        .text(cut(row.error_message.as_deref().unwrap_or_default(), 120))
        .raw("</td><td>");
    dead_letter_buttons(body, ctx, &id, back_here);
    body.raw("</td></tr>");
}

/// Requeue and skip for the dead letter with row id `id`.
pub fn dead_letter_buttons(body: &mut Html, ctx: Ctx<'_>, id: &str, back_here: &str) {
    let fields = [("key", id), ("back", back_here)];
    Button {
        action: "/dead-letters/requeue",
        fields: &fields,
        label: "Requeue",
        class: "act requeue",
    }
    .write(body, ctx.csrf_token);
    body.raw(" ");
    Button {
        action: "/dead-letters/skip",
        fields: &fields,
        label: "Skip",
        class: "warn skip",
    }
    .write(body, ctx.csrf_token);
}

/// Shows one inbox row by event id or row id: every column and the payload.
pub fn show<S: InboxStore>(
    backends: &Backends<S>,
    ctx: Ctx<'_>,
    request: &Request,
) -> Result<Html, PageError> {
    let key = required(&request.query, "key")?;
    let record = backends.admin.find_row(key)?;
    let row = &record.row;
    let optional_time =
        |at: Option<chrono::DateTime<chrono::Utc>>| at.map_or_else(|| "–".to_string(), format_time);
    let fields: [(&str, String); 14] = [
        ("Status", row.status.to_string()),
        ("Event id", row.event.event_id.clone()),
        ("Event type", row.event.event_type.clone()),
        ("Aggregate id", row.event.aggregate_id.to_string()),
        ("Occurred on", format_time(row.event.occurred_on)),
        ("Row id", row.id.to_string()),
        ("Stream", row.stream.clone().unwrap_or_else(|| "–".into())),
        ("Stream entry id", row.stream_id.clone()),
        ("Received", format_time(row.received_at)),
        ("Processed", optional_time(row.processed_at)),
        (
            "Attempts",
            format!("{} of {}", row.retry_count, row.max_retries),
        ),
        ("Next retry", optional_time(row.next_retry_at)),
        ("Last error at", optional_time(row.last_error_at)),
        (
            "Requeued",
            match record.last_replayed_at {
                Some(at) => format!("{} times, last {}", record.replay_count, format_time(at)),
                None => "never".into(),
            },
        ),
    ];
    let mut body = Html::new();
    body.raw("<table>");
    for (label, value) in &fields {
        body.raw("<tr><th>").text(label).raw("</th><td");
        if *label == "Status" {
            body.raw(" id=\"status\"");
        }
        body.raw(">").text(value).raw("</td></tr>");
    }
    body.raw("</table>");
    if let Some(error) = &row.error_message {
        body.raw("<h2>Last error</h2><pre id=\"error\">")
            .text(error)
            .raw("</pre>");
    }
    body.raw("<h2>Payload</h2><pre id=\"payload\">")
        .text(serde_json::to_string_pretty(&row.event.payload).unwrap_or_default())
        .raw("</pre>");
    if let Some(correlation) = &row.event.correlation_id {
        body.raw("<p>Correlation id <code>")
            .text(correlation)
            .raw("</code></p>");
    }
    if let Some(causation) = &row.event.causation_id {
        body.raw("<p>Causation id <code>")
            .text(causation)
            .raw("</code></p>");
    }
    if row.status == EventStatus::DeadLetter {
        body.raw("<h2>Actions</h2><p>");
        let id = row.id.to_string();
        dead_letter_buttons(&mut body, ctx, &id, &href("/event", &[("key", &id)]));
        body.raw(
            "</p><p class=\"muted\">Requeue: handled again, retries reset. Skip: stays a \
                  dead letter, and no longer holds back its aggregate's later events.</p>",
        );
    }
    Ok(layout::page("Inbox event", "/dead-letters", body))
}

/// POST `/dead-letters/requeue`: one dead letter, by `key` (row id or event id).
pub fn requeue<S: InboxStore>(
    backends: &Backends<S>,
    request: &Request,
) -> Result<Html, PageError> {
    let form = &request.form;
    let record = backends.admin.requeue_dead_letter(required(form, "key")?)?;
    Ok(done(
        "Requeued",
        &format!(
            "Requeued dead letter {} ({}); it is {} again and is handled on the workers' next poll.",
            record.row.event.event_id, record.row.event.event_type, record.row.status
        ),
        back(form),
    ))
}

/// POST `/dead-letters/requeue-matching`: every dead letter matching the filter fields.
pub fn requeue_matching<S: InboxStore>(
    backends: &Backends<S>,
    request: &Request,
) -> Result<Html, PageError> {
    let form = &request.form;
    let requeued = backends
        .admin
        .requeue_dead_letters(&filter(form)?, &mut |_so_far| {})?;
    Ok(done(
        "Requeued",
        &format!("Requeued {requeued} dead letters."),
        back(form),
    ))
}

/// POST `/dead-letters/skip`: one dead letter, by `key`.
pub fn skip<S: InboxStore>(backends: &Backends<S>, request: &Request) -> Result<Html, PageError> {
    let form = &request.form;
    let record = backends.admin.skip_dead_letter(required(form, "key")?)?;
    Ok(done(
        "Skipped",
        &format!(
            "Skipped dead letter {} ({}): it stays a dead letter and no longer holds back its \
             aggregate's later events.",
            record.row.event.event_id, record.row.event.event_type
        ),
        back(form),
    ))
}
