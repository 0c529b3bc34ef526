//! `/outbox`: the outbox's rows by status with paging, its dead letters requeued one at a time
//! or all at once.

use super::super::super::text::{cut, format_time};
use super::{back, done, here, limit, required, Ctx, PageError};
use crate::console::backends::Backends;
use crate::console::html::Html;
use crate::console::layout::{self, href, Button};
use crate::console::request::Request;
use eventflow::admin::OutboxState;
use eventflow::store::outbox::{OutboxStatus, Requeue};
use eventflow::store::InboxStore;

/// Lists one page of outbox rows, all or in one status (dead letters by default: what an
/// operator comes here for).
pub fn list<S: InboxStore>(
    backends: &Backends<S>,
    ctx: Ctx<'_>,
    request: &Request,
) -> Result<Html, PageError> {
    let params = &request.query;
    let mut body = Html::new();
    let report = match backends.outbox.status()? {
        OutboxState::Installed(report) => report,
        OutboxState::NotInstalled { table } => {
            body.raw("<p class=\"muted\">The outbox is not installed: no table <code>")
                .text(table)
                .raw(
                    "</code> in this database (create it with <code>eventflow migrate \
                      --outbox</code>).</p>",
                );
            return Ok(layout::page("Outbox", "/outbox", body));
        }
        _ => return Ok(layout::page("Outbox", "/outbox", body)),
    };
    let status_text = params.get("status").unwrap_or("dead_letter");
    let status = match status_text {
        "all" => None,
        text => Some(OutboxStatus::parse(text).ok_or_else(|| {
            PageError::BadInput(format!(
                "status {text:?} is none of all, pending, failed, published, dead_letter"
            ))
        })?),
    };
    let after = params
        .get("after")
        .map(|text| {
            text.parse::<i64>()
                .map_err(|_| PageError::BadInput(format!("after {text:?} is not a row id")))
        })
        .transpose()?;
    let listed = backends.outbox.list_rows(status, after, limit(params)?)?;
    let after_text = after.map(|id| id.to_string()).unwrap_or_default();
    let limit_text = params.get("limit").unwrap_or_default();
    let back_here = here(
        "/outbox",
        &[
            ("status", status_text),
            ("limit", limit_text),
            ("after", &after_text),
        ],
    );

    body.raw("<p>Table <code>")
        .text(&report.table)
        .raw("</code>: ")
        .text(report.backlog())
        .raw(" waiting to be published. Show: ");
    let choices = ["all"]
        .into_iter()
        .chain(OutboxStatus::ALL.map(OutboxStatus::as_str));
    for (i, choice) in choices.enumerate() {
        if i > 0 {
            body.raw(" · ");
        }
        let count = OutboxStatus::parse(choice).map(|status| report.count(status));
        let label = match count {
            Some(count) => format!("{choice} ({count})"),
            None => choice.to_string(),
        };
        if choice == status_text {
            body.raw("<b>").text(label).raw("</b>");
        } else {
            layout::link(&mut body, &href("/outbox", &[("status", choice)]), &label);
        }
    }
    body.raw("</p>");

    if listed.rows.is_empty() {
        body.raw("<p class=\"muted\">No rows here.</p>");
    } else {
        body.raw(
            "<table><tr><th>Id</th><th>Enqueued</th><th>Event type</th><th>Event id</th>\
                  <th>Stream</th><th>Status</th><th>Attempts</th><th>Last error</th>\
                  <th>Actions</th></tr>",
        );
        for row in &listed.rows {
            let id = row.id.to_string();
            body.raw("<tr id=\"outbox-")
                .text(&id)
                .raw("\"><td class=\"n\">")
                .text(&id)
                .raw("</td><td>")
                .text(format_time(row.created_at))
                .raw("</td><td>")
                .text(&row.event.event_type)
                .raw("</td><td class=\"id\">")
                .text(&row.event.event_id)
                .raw("</td><td>")
                .text(&row.stream)
                .raw("</td><td>")
                .text(row.status.as_str())
                .raw("</td><td class=\"n\">")
                .text(row.attempts)
                .raw("</td><td>")
                .text(cut(row.last_error.as_deref().unwrap_or_default(), 100))
                .raw("</td><td>");
            if row.status == OutboxStatus::DeadLetter {
                Button {
                    action: "/outbox/requeue",
                    fields: &[("id", &id), ("back", &back_here)],
                    label: "Requeue",
                    class: "act",
                }
                .write(&mut body, ctx.csrf_token);
            }
            body.raw("</td></tr>");
        }
        body.raw("</table>");
    }
    body.raw("<p>");
    if after.is_some() {
        layout::link(
            &mut body,
            &href("/outbox", &[("status", status_text), ("limit", limit_text)]),
            "First page",
        );
        body.raw(" · ");
    }
    if let Some(next) = listed.next {
        let next = next.to_string();
        layout::link(
            &mut body,
            &href(
                "/outbox",
                &[
                    ("status", status_text),
                    ("limit", limit_text),
                    ("after", &next),
                ],
            ),
            "Next page →",
        );
    }
    body.raw("</p>");
    if report.counts.dead_letter > 0 {
        body.raw("<p>");
        Button {
            action: "/outbox/requeue-all",
            fields: &[("back", &back_here)],
            label: "Requeue every outbox dead letter",
            class: "act",
        }
        .write(&mut body, ctx.csrf_token);
        body.raw("</p>");
    }
    Ok(layout::page("Outbox", "/outbox", body))
}

/// POST `/outbox/requeue`: the dead letter with row id `id`.
pub fn requeue<S: InboxStore>(
    backends: &Backends<S>,
    request: &Request,
) -> Result<Html, PageError> {
    let form = &request.form;
    let text = required(form, "id")?;
    let id = text
        .parse::<i64>()
        .map_err(|_| PageError::BadInput(format!("{text:?} is not an outbox row id")))?;
    backends.outbox.requeue_dead_letters(Requeue::Ids(&[id]))?;
    Ok(done(
        "Requeued",
        &format!("Requeued outbox row {id}; the relay publishes it on its next round."),
        back(form),
    ))
}

/// POST `/outbox/requeue-all`: every outbox dead letter.
pub fn requeue_all<S: InboxStore>(
    backends: &Backends<S>,
    request: &Request,
) -> Result<Html, PageError> {
    let requeued = backends.outbox.requeue_dead_letters(Requeue::All)?;
    Ok(done(
        "Requeued",
        &format!("Requeued {requeued} outbox dead letters."),
        back(&request.form),
    ))
}
