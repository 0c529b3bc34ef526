//! HTML built so that escaping is the default: markup goes in only as `&'static str` literals
//! written here in the source, and every other value through [`Html::text`], escaped.
//!
//! Event payloads, types, errors and stream fields are written by whoever can `XADD` or enqueue,
//! so they are attacker-controlled: a value that reached the page raw could run script in an
//! operator's browser, with the operator's power to requeue and skip.

use super::super::text::is_unsafe;
use std::fmt::{Display, Write};

/// A page (or a piece of one) being written.
#[derive(Debug, Default)]
pub struct Html(String);

impl Html {
    /// An empty document.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends markup. `'static` so that only literals from the source qualify: anything read
    /// at run time goes through [`text`](Self::text).
    pub fn raw(&mut self, markup: &'static str) -> &mut Self {
        self.0.push_str(markup);
        self
    }

    /// Appends `value` escaped, fit for element content and for double-quoted attribute values.
    pub fn text(&mut self, value: impl Display) -> &mut Self {
        let mut text = String::new();
        let _ = write!(text, "{value}");
        escape_into(&mut self.0, &text);
        self
    }

    /// Appends another piece, already built (and so already escaped).
    pub fn append(&mut self, piece: Html) -> &mut Self {
        self.0.push_str(&piece.0);
        self
    }

    /// The finished markup.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// Writes `text` escaped: the five characters HTML gives meaning to become entities, and
/// characters that would mislead a reader without showing (controls other than newline and
/// tab, bidirectional overrides) are written as visible `\u{..}` escapes, as the text output
/// does for terminals.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' => out.push(c),
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_markup_is_not() {
        let mut html = Html::new();
        html.raw("<td title=\"")
            .text("\"><script>alert('x')</script>&")
            .raw("\">")
            .text(42)
            .raw("</td>");
        assert_eq!(
            html.into_string(),
            "<td title=\"&quot;&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;\">42</td>"
        );
    }

    #[test]
    fn invisible_controls_show_as_escapes_but_newlines_stay() {
        let mut html = Html::new();
        html.text("a\u{202e}b\u{1b}[2Jc\nd");
        assert_eq!(html.into_string(), "a\\u{202e}b\\u{1b}[2Jc\nd");
    }
}
