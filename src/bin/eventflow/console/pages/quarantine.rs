//! `/quarantine`: stream entries that did not parse, with filters and paging;
//! `/quarantine/entry`: one with its raw fields, replayed as it is or with corrected data.

use super::super::super::text::{cut, format_time};
use super::{back, cursor, done, here, limit, required, time, Ctx, PageError};
use crate::console::backends::Backends;
use crate::console::html::Html;
use crate::console::layout::{self, href, Button};
use crate::console::request::{Params, Request};
use eventflow::admin::Correction;
use eventflow::quarantine::QuarantinedEntry;
use eventflow::store::{InboxStore, Page, QuarantineFilter};
use uuid::Uuid;

/// The filter fields: query parameter, label, placeholder.
const FILTERS: [(&str, &str, &str); 4] = [
    ("from_stream", "Stream", "exact"),
    ("reason", "Reason contains", "text"),
    ("since", "Since", "RFC 3339 or 2h"),
    ("until", "Until", "RFC 3339 or 30m"),
];

/// A replayed entry's new row retries this often unless the form says otherwise, as the
/// CLI's `quarantine replay`.
const DEFAULT_MAX_RETRIES: i32 = 3;

/// Lists one page of quarantined entries (not yet replayed, unless `include_replayed`).
pub fn list<S: InboxStore>(
    backends: &Backends<S>,
    _ctx: Ctx<'_>,
    request: &Request,
) -> Result<Html, PageError> {
    let params = &request.query;
    let include_replayed = params.get("include_replayed").is_some();
    let filter = QuarantineFilter {
        stream: params.get("from_stream").map(str::to_string),
        reason_contains: params.get("reason").map(str::to_string),
        received_from: time(params, "since")?,
        received_before: time(params, "until")?,
        replayed: if include_replayed { None } else { Some(false) },
        ..QuarantineFilter::default()
    };
    let page = Page {
        limit: limit(params)?,
        after: cursor(params)?,
    };
    let listed = backends.admin.list_quarantined(&filter, page)?;
    let mut kept: Vec<(&str, &str)> = FILTERS
        .iter()
        .filter_map(|(name, _, _)| params.get(name).map(|value| (*name, value)))
        .collect();
    if include_replayed {
        kept.push(("include_replayed", "1"));
    }
    kept.push(("limit", params.get("limit").unwrap_or_default()));

    let mut body = Html::new();
    body.raw("<form class=\"filters\" method=\"get\" action=\"/quarantine\">");
    for (name, label, hint) in FILTERS {
        layout::filter_field(&mut body, label, name, params.get(name), hint);
    }
    body.raw("<label><input type=\"checkbox\" name=\"include_replayed\" value=\"1\"");
    if include_replayed {
        body.raw(" checked");
    }
    body.raw("> include replayed</label> <button type=\"submit\">Filter</button> ");
    layout::link(&mut body, "/quarantine", "Clear");
    body.raw("</form>");

    if listed.entries.is_empty() {
        body.raw("<p class=\"muted\">No quarantined entries here.</p>");
    } else {
        body.raw(
            "<table><tr><th>Quarantined</th><th>Stream</th><th>Entry id</th>\
                  <th>Reason</th><th>Fields</th><th>Replayed</th></tr>",
        );
        for entry in &listed.entries {
            entry_line(&mut body, entry);
        }
        body.raw("</table>");
    }
    body.raw("<p>");
    if page.after.is_some() {
        layout::link(&mut body, &href("/quarantine", &kept), "First page");
        body.raw(" · ");
    }
    if let Some(next) = listed.next {
        let next = next.to_string();
        let mut next_params = kept.clone();
        next_params.push(("after", &next));
        layout::link(&mut body, &href("/quarantine", &next_params), "Next page →");
    }
    body.raw("</p>");
    Ok(layout::page("Quarantine", "/quarantine", body))
}

fn entry_line(body: &mut Html, entry: &QuarantinedEntry) {
    let id = entry.id.to_string();
    body.raw("<tr id=\"entry-")
        .text(&id)
        .raw("\"><td>")
        .text(format_time(entry.received_at))
        .raw("</td><td>")
        .text(&entry.stream)
        .raw("</td><td class=\"id\">");
    layout::link(
        body,
        &href("/quarantine/entry", &[("id", &id)]),
        &entry.stream_id,
    );
    body.raw("</td><td>")
        .text(cut(&entry.reason, 120))
        .raw("</td><td class=\"id\">")
        .text(cut(&fields_preview(entry), 80))
        .raw("</td><td>")
        .text(
            entry
                .replayed_at
                .map_or_else(|| "no".to_string(), format_time),
        )
        .raw("</td></tr>");
}

/// `name=value name=value`, bytes shown as UTF-8 where they are.
fn fields_preview(entry: &QuarantinedEntry) -> String {
    entry
        .fields
        .iter()
        .map(|(name, value)| {
            format!(
                "{}={}",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(value)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn entry_id(params: &Params) -> Result<Uuid, PageError> {
    let text = required(params, "id")?;
    Uuid::parse_str(text)
        .map_err(|_| PageError::BadInput(format!("{text:?} is not a quarantined entry's id")))
}

/// Shows one quarantined entry, with the replay forms unless it was replayed.
pub fn show<S: InboxStore>(
    backends: &Backends<S>,
    ctx: Ctx<'_>,
    request: &Request,
) -> Result<Html, PageError> {
    let entry = backends.admin.find_quarantined(entry_id(&request.query)?)?;
    let id = entry.id.to_string();
    let mut body = Html::new();
    body.raw("<table><tr><th>Id</th><td class=\"id\">")
        .text(&id)
        .raw("</td></tr><tr><th>Stream</th><td>")
        .text(&entry.stream)
        .raw("</td></tr><tr><th>Entry id</th><td class=\"id\">")
        .text(&entry.stream_id)
        .raw("</td></tr><tr><th>Quarantined</th><td>")
        .text(format_time(entry.received_at))
        .raw("</td></tr><tr><th>Reason</th><td>")
        .text(&entry.reason)
        .raw("</td></tr><tr><th>Replayed</th><td>");
    match (&entry.replayed_at, &entry.replayed_event_id) {
        (Some(at), Some(event_id)) => {
            body.text(format_time(*at)).raw(" as ");
            layout::link(&mut body, &href("/event", &[("key", event_id)]), event_id);
        }
        (Some(at), None) => {
            body.text(format_time(*at));
        }
        _ => {
            body.raw("no");
        }
    }
    body.raw("</td></tr></table>");
    if let Some(oversized) = &entry.oversized {
        body.raw("<p class=\"problem\">Over the maximum entry size (")
            .text(oversized.entry_bytes)
            .raw(" bytes in ")
            .text(oversized.field_count)
            .raw(
                " fields): only a prefix of each field was kept. Replay it with corrected \
                  data.</p>",
            );
    }
    body.raw("<h2>Fields</h2><table><tr><th>Name</th><th>Value</th></tr>");
    for (name, value) in &entry.fields {
        body.raw("<tr><td class=\"id\">")
            .text(String::from_utf8_lossy(name))
            .raw("</td><td><pre>")
            .text(String::from_utf8_lossy(value))
            .raw("</pre></td></tr>");
    }
    body.raw("</table>");

    if entry.replayed_at.is_none() {
        let back_here = here("/quarantine/entry", &[("id", &id)]);
        body.raw(
            "<h2>Replay</h2><p>Stores the entry as a new pending event, once the parser \
                  or the entry is fixed.</p><p>",
        );
        if entry.oversized.is_none() {
            Button {
                action: "/quarantine/replay",
                fields: &[("id", &id), ("back", &back_here)],
                label: "Replay as it is",
                class: "act",
            }
            .write(&mut body, ctx.csrf_token);
        }
        body.raw("</p><form method=\"post\" action=\"/quarantine/replay\">");
        layout::hidden(&mut body, crate::console::csrf::Csrf::FIELD, ctx.csrf_token);
        layout::hidden(&mut body, "id", &id);
        layout::hidden(&mut body, "back", &back_here);
        body.raw(
            "<p><label>Corrected <code>data</code> (a JSON object: the whole event)<br>\
                  <textarea name=\"data\" rows=\"10\" cols=\"90\"></textarea></label></p>\
                  <p><label>Max retries <input type=\"number\" name=\"max_retries\" min=\"0\" \
                  value=\"3\"></label> <button type=\"submit\" class=\"act\">Replay with this \
                  data</button></p></form>",
        );
    }
    Ok(layout::page("Quarantined entry", "/quarantine", body))
}

/// POST `/quarantine/replay`: entry `id`, as it is, or with `data` as its one field.
pub fn replay<S: InboxStore>(backends: &Backends<S>, request: &Request) -> Result<Html, PageError> {
    let form = &request.form;
    let id = entry_id(form)?;
    let correction = match form.get_untrimmed("data") {
        None => Correction::AsIs,
        Some(text) => Correction::Data(serde_json::from_str(text).map_err(|error| {
            PageError::BadInput(format!("the corrected data is not JSON: {error}"))
        })?),
    };
    let max_retries = match form.get("max_retries") {
        None => DEFAULT_MAX_RETRIES,
        Some(text) => text
            .parse::<i32>()
            .ok()
            .filter(|retries| *retries >= 0)
            .ok_or_else(|| {
                PageError::BadInput(format!("max_retries {text:?} is not a number from 0 up"))
            })?,
    };
    let event_id = backends
        .admin
        .replay_quarantined(id, correction, max_retries)?;
    Ok(done(
        "Replayed",
        &format!("Replayed quarantined entry {id} as event {event_id}; it is pending."),
        back(form),
    ))
}
