//! The frame every page shares (title, navigation, a little inline style) and the small
//! pieces pages are made of: links with query strings, and action buttons that post a form
//! carrying the CSRF token.

use super::html::Html;
use url::form_urlencoded;

/// The sections, in navigation order: path and label.
const SECTIONS: [(&str, &str); 5] = [
    ("/", "Overview"),
    ("/dead-letters", "Dead letters"),
    ("/quarantine", "Quarantine"),
    ("/parked", "Parked"),
    ("/outbox", "Outbox"),
];

/// Plain and readable: system fonts, thin borders, monospace ids; no script anywhere.
const STYLE: &str = "<style>\
body{font-family:system-ui,sans-serif;margin:0;color:#1d232b;background:#f7f8fa}\
header{background:#1d232b;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.4rem;align-items:baseline}\
header b{font-size:1.1rem}header a{color:#cfd8e3;text-decoration:none}header a.here{color:#fff;font-weight:600}\
main{padding:1rem 1.2rem;max-width:1400px}\
table{border-collapse:collapse;background:#fff;margin:.4rem 0 1.2rem}\
th,td{border:1px solid #d6dbe1;padding:.3rem .55rem;text-align:left;vertical-align:top;font-size:.9rem}\
th{background:#eef1f5}td.n{text-align:right;font-variant-numeric:tabular-nums}\
code,pre,.id{font-family:ui-monospace,monospace;font-size:.85rem}\
pre{background:#fff;border:1px solid #d6dbe1;padding:.6rem;overflow:auto;max-height:28rem;white-space:pre-wrap}\
form.inline{display:inline;margin:0}\
button{cursor:pointer;border:1px solid #8896a7;background:#fff;border-radius:3px;padding:.15rem .5rem}\
button.act{border-color:#2f6fbf;color:#2f6fbf}button.warn{border-color:#b35c00;color:#b35c00}\
.filters{background:#fff;border:1px solid #d6dbe1;padding:.5rem .7rem;margin-bottom:.8rem}\
.filters label{margin-right:.8rem;font-size:.9rem}.filters input{width:11rem}\
.notice{background:#e7f4ea;border:1px solid #9cc9a6;padding:.6rem .8rem}\
.problem{background:#fbeaea;border:1px solid #d9a0a0;padding:.6rem .8rem}\
.muted{color:#66707c}\
</style>";

/// A whole page: `title` over `body`, with `current` (a section path) marked in the
/// navigation.
pub fn page(title: &str, current: &str, body: Html) -> Html {
    let mut html = Html::new();
    html.raw("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">")
        .raw("<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">")
        .raw("<title>")
        .text(title)
        .raw(" · eventflow console</title>")
        .raw(STYLE)
        .raw("</head><body><header><b>eventflow</b>");
    for (path, label) in SECTIONS {
        html.raw("<a href=\"").text(path).raw("\"");
        if path == current {
            html.raw(" class=\"here\"");
        }
        html.raw(">").text(label).raw("</a>");
    }
    html.raw("</header><main><h1>")
        .text(title)
        .raw("</h1>")
        .append(body)
        .raw("</main></body></html>");
    html
}

/// `path` with `params` as its query string (empty values left out), percent-encoded. Put
/// it in an attribute with [`Html::text`], which escapes the `&`s.
pub fn href(path: &str, params: &[(&str, &str)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in params.iter().filter(|(_, value)| !value.is_empty()) {
        query.append_pair(name, value);
    }
    let query = query.finish();
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
}

/// `<a href="...">label</a>`.
pub fn link(html: &mut Html, target: &str, label: &str) {
    html.raw("<a href=\"")
        .text(target)
        .raw("\">")
        .text(label)
        .raw("</a>");
}

/// A button that posts `fields` (and the CSRF token) to `action`. `class` is `act` for an
/// ordinary action and `warn` for one that gives something up (skipping).
pub struct Button<'a> {
    /// Where the form posts.
    pub action: &'a str,
    /// Hidden fields.
    pub fields: &'a [(&'a str, &'a str)],
    /// The button's text.
    pub label: &'a str,
    /// `act` or `warn`.
    pub class: &'static str,
}

impl Button<'_> {
    /// Writes the form.
    pub fn write(&self, html: &mut Html, csrf_token: &str) {
        html.raw("<form class=\"inline\" method=\"post\" action=\"")
            .text(self.action)
            .raw("\">");
        hidden(html, super::csrf::Csrf::FIELD, csrf_token);
        for (name, value) in self.fields {
            hidden(html, name, value);
        }
        html.raw("<button type=\"submit\" class=\"")
            .raw(self.class)
            .raw("\">")
            .text(self.label)
            .raw("</button></form>");
    }
}

/// `<input type="hidden" name="..." value="...">`.
pub fn hidden(html: &mut Html, name: &str, value: &str) {
    html.raw("<input type=\"hidden\" name=\"")
        .text(name)
        .raw("\" value=\"")
        .text(value)
        .raw("\">");
}

/// A text field of a filter form, filled with its current value.
pub fn filter_field(html: &mut Html, label: &str, name: &str, value: Option<&str>, hint: &str) {
    html.raw("<label>")
        .text(label)
        .raw(" <input type=\"text\" name=\"")
        .text(name)
        .raw("\" value=\"")
        .text(value.unwrap_or_default())
        .raw("\" placeholder=\"")
        .text(hint)
        .raw("\"></label>");
}

/// A message box: `notice` (green) or `problem` (red).
pub fn message(html: &mut Html, class: &'static str, text: &str) {
    html.raw("<p class=\"")
        .raw(class)
        .raw("\">")
        .text(text)
        .raw("</p>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_encode_their_query_and_leave_out_empty_values() {
        assert_eq!(href("/outbox", &[]), "/outbox");
        assert_eq!(
            href("/dead-letters", &[("event_type", "A&B <x>"), ("error", "")]),
            "/dead-letters?event_type=A%26B+%3Cx%3E"
        );
        let mut html = Html::new();
        link(
            &mut html,
            &href("/event", &[("key", "1"), ("b", "2")]),
            "<one>",
        );
        assert_eq!(
            html.into_string(),
            "<a href=\"/event?key=1&amp;b=2\">&lt;one&gt;</a>"
        );
    }

    #[test]
    fn buttons_carry_the_token_and_escape_their_fields() {
        let mut html = Html::new();
        Button {
            action: "/dead-letters/requeue",
            fields: &[("key", "\"><script>")],
            label: "Requeue",
            class: "act",
        }
        .write(&mut html, "tok");
        let html = html.into_string();
        assert!(html.contains("name=\"csrf\" value=\"tok\""), "{html}");
        assert!(
            html.contains("value=\"&quot;&gt;&lt;script&gt;\""),
            "{html}"
        );
    }
}
