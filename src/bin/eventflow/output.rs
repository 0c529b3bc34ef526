//! Printing: aligned tables for people, JSON for scripts, progress on a terminal.

use super::text::{is_unsafe, safe};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::time::Duration;

/// `println!` for the command's output: standard output closed by its reader
/// (`eventflow dead-letters list | head`) ends the process quietly instead of panicking.
macro_rules! say {
    () => {
        $crate::output::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}

/// Writes one line to standard output. When the reader has gone (a broken pipe) the output
/// is not wanted any more and the process exits with 0, as `grep` and `ripgrep` do; the work
/// was done before its report was printed. Any other write error exits with 1.
pub fn write_line(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(line)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => {
            eprintln!("eventflow: cannot write to standard output: {error}");
            std::process::exit(1);
        }
    }
}

/// A table printed with aligned columns.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; every cell is printed [`safe`], stored values and all.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.iter().map(|cell| safe(cell)).collect());
    }

    pub fn print(&self) {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let last = cells.len().saturating_sub(1);
            let text: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, cell)| {
                    if i == last {
                        cell.to_string()
                    } else {
                        format!("{cell:<width$}", width = widths[i])
                    }
                })
                .collect();
            say!("{}", text.join("  ").trim_end());
        };
        line(self.headers.clone());
        for row in &self.rows {
            line(row.iter().map(String::as_str).collect());
        }
    }
}

/// Prints `value` as pretty JSON, terminal-safe (see [`json_text`]).
pub fn json(value: &serde_json::Value) {
    say!("{}", json_text(value));
}

/// `value` as pretty JSON with every character that could act on a terminal escaped.
/// serde_json escapes C0 controls already, but writes DEL, C1 controls and the bidirectional
/// controls as they are; those are written `\uXXXX` here, which JSON readers decode to the same
/// value (such characters can only be inside strings, so escaping them keeps the JSON valid).
pub fn json_text(value: &serde_json::Value) -> String {
    let text = serde_json::to_string_pretty(value).expect("JSON values always print");
    if !text.contains(is_unsafe) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 12);
    for c in text.chars() {
        // C0 controls never get here raw: serde_json escaped them.
        if is_unsafe(c) && !c.is_ascii_whitespace() {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// A spinner counting rows on standard error, hidden when it is not a terminal or with
/// `--json`.
pub fn progress(hidden: bool, what: &'static str) -> ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("a valid template"),
    );
    bar.set_message(format!("{what}: 0"));
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_stays_json_and_terminal_safe() {
        let value = serde_json::json!({
            "id": "a\u{1b}[2Jb\u{7f}\u{9b}c\u{202e}d\u{2029}",
            "n": 1,
        });
        let text = json_text(&value);
        assert!(
            !text.contains(|c: char| is_unsafe(c) && c != '\n'),
            "{text:?}"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            value
        );
    }
}
