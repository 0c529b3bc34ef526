//! `/parked`: aggregates that per-aggregate order holds behind a dead letter, each released by
//! skipping its dead letter or unblocked by requeueing it.

use super::super::super::text::{cut, format_age, format_time};
use super::{back, done, here, limit, required, Ctx, PageError};
use crate::console::backends::Backends;
use crate::console::html::Html;
use crate::console::layout::{self, href, Button};
use crate::console::request::Request;
use eventflow::store::{InboxStore, ParkedPage};
use uuid::Uuid;

/// Lists one page of parked aggregates, by aggregate id.
pub fn list<S: InboxStore>(
    backends: &Backends<S>,
    ctx: Ctx<'_>,
    request: &Request,
) -> Result<Html, PageError> {
    let params = &request.query;
    let after = params
        .get("after")
        .map(|text| {
            Uuid::parse_str(text)
                .map_err(|_| PageError::BadInput(format!("after {text:?} is not an aggregate id")))
        })
        .transpose()?;
    let listed = backends.admin.list_parked(ParkedPage {
        limit: limit(params)?,
        after,
        aggregate_id: None,
    })?;
    let now = chrono::Utc::now();
    let after_text = after.map(|id| id.to_string()).unwrap_or_default();
    let limit_text = params.get("limit").unwrap_or_default();
    let back_here = here("/parked", &[("limit", limit_text), ("after", &after_text)]);

    let mut body = Html::new();
    body.raw(
        "<p class=\"muted\">With per-aggregate order, a dead letter holds back its \
              aggregate's later events. Requeue it (handled again in its place) or skip it \
              (stays a dead letter; the waiting events go on now).</p>",
    );
    if listed.aggregates.is_empty() {
        body.raw("<p class=\"muted\">No parked aggregates.</p>");
    } else {
        body.raw(
            "<table><tr><th>Aggregate</th><th>Waiting events</th><th>Oldest waiting</th>\
                  <th>Dead letter</th><th>Its error</th><th>Actions</th></tr>",
        );
        for parked in &listed.aggregates {
            let aggregate = parked.aggregate_id.to_string();
            let dead_letter = parked.dead_letter.id.to_string();
            body.raw("<tr id=\"aggregate-")
                .text(&aggregate)
                .raw("\"><td class=\"id\">")
                .text(&aggregate)
                .raw("</td><td class=\"n\">")
                .text(parked.waiting)
                .raw("</td><td>");
            match parked.oldest_waiting {
                Some(at) => body
                    .text(format_time(at))
                    .raw(" (")
                    .text(format_age((now - at).to_std().unwrap_or_default()))
                    .raw(" ago)"),
                None => body.raw("–"),
            };
            body.raw("</td><td class=\"id\">");
            layout::link(
                &mut body,
                &href("/event", &[("key", &dead_letter)]),
                &parked.dead_letter.event.event_id,
            );
            body.raw(" <span class=\"muted\">")
                .text(&parked.dead_letter.event.event_type)
                .raw("</span></td><td>")
                .text(cut(
                    parked
                        .dead_letter
                        .error_message
                        .as_deref()
                        .unwrap_or_default(),
                    100,
                ))
                .raw("</td><td>");
            Button {
                action: "/dead-letters/requeue",
                fields: &[("key", &dead_letter), ("back", &back_here)],
                label: "Requeue dead letter",
                class: "act",
            }
            .write(&mut body, ctx.csrf_token);
            body.raw(" ");
            Button {
                action: "/parked/skip",
                fields: &[("aggregate_id", &aggregate), ("back", &back_here)],
                label: "Skip it and release",
                class: "warn",
            }
            .write(&mut body, ctx.csrf_token);
            body.raw("</td></tr>");
        }
        body.raw("</table>");
    }
    body.raw("<p>");
    if after.is_some() {
        layout::link(
            &mut body,
            &href("/parked", &[("limit", limit_text)]),
            "First page",
        );
        body.raw(" · ");
    }
    if let Some(next) = listed.next {
        let next = next.to_string();
        layout::link(
            &mut body,
            &href("/parked", &[("limit", limit_text), ("after", &next)]),
            "Next page →",
        );
    }
    body.raw("</p>");
    Ok(layout::page("Parked aggregates", "/parked", body))
}

/// POST `/parked/skip`: releases `aggregate_id` by skipping the dead letter holding it back.
pub fn skip<S: InboxStore>(backends: &Backends<S>, request: &Request) -> Result<Html, PageError> {
    let form = &request.form;
    let text = required(form, "aggregate_id")?;
    let aggregate_id = Uuid::parse_str(text)
        .map_err(|_| PageError::BadInput(format!("{text:?} is not an aggregate id")))?;
    let parked = backends.admin.skip_parked(aggregate_id)?;
    Ok(done(
        "Released",
        &format!(
            "Skipped dead letter {} and released aggregate {aggregate_id}: its {} waiting events \
             are handled on the workers' next poll.",
            parked.dead_letter.event.event_id, parked.waiting
        ),
        back(form),
    ))
}
