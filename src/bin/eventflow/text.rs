//! Ages, times and stored text as operators type and read them.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// An age or a timeout as people write them, read by `humantime`: `90s`, `30m`, `1h30m`, `7d`,
/// `1w`, `500ms`, `2 days`. A bare number is refused: `7` could mean seconds or days, and
/// guessing wrong in a purge deletes what was meant to stay.
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "{text:?} has no unit: write {text}s, {text}m, {text}h, {text}d or {text}w"
        ));
    }
    humantime::parse_duration(text)
        .map_err(|error| format!("{text:?} is not an age such as 90s, 1h30m, 7d or 1w: {error}"))
}

/// The longest `--connect-timeout`: a command that waits longer for a connection is hung.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(3600);

/// A connection timeout: an age (see [`parse_age`]) more than zero and at most an hour.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_age(text)?;
    if timeout.is_zero() {
        return Err("must be more than zero".into());
    }
    if timeout > MAX_CONNECT_TIMEOUT {
        return Err(format!("{} is too long: at most 1h", text.trim()));
    }
    Ok(timeout)
}

/// An RFC 3339 time, or an age meaning that long ago.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.to_utc());
    }
    let age = parse_age(text)
        .map_err(|_| format!("{text:?} is neither an RFC 3339 time nor an age such as 2h"))?;
    chrono::Duration::from_std(age)
        .ok()
        .and_then(|age| Utc::now().checked_sub_signed(age))
        .ok_or_else(|| format!("{text:?} is too long ago"))
}

/// `3d 4h`, `5m 2s`, `12s`: the two largest units.
pub fn format_age(age: Duration) -> String {
    let secs = age.as_secs();
    let parts = [
        (secs / 86_400, "d"),
        (secs % 86_400 / 3600, "h"),
        (secs % 3600 / 60, "m"),
        (secs % 60, "s"),
    ];
    let first = parts.iter().position(|(n, _)| *n > 0).unwrap_or(3);
    parts[first..]
        .iter()
        .take(2)
        .filter(|(n, _)| *n > 0 || first == 3)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A time as tables show it: UTC to the second.
pub fn format_time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// Event headers on one line, as their JSON object, or `-` for none (print it through
/// [`safe`], as any stored text).
pub fn headers_text(headers: &eventflow::Headers) -> String {
    match headers.is_empty() {
        true => "-".into(),
        false => serde_json::to_string(headers).expect("string pairs serialize"),
    }
}

/// `text` cut to `max` characters, with `…` when cut, on one line (escaped by [`safe`] when
/// printed in a table).
pub fn cut(text: &str, max: usize) -> String {
    let line = text.replace(['\n', '\r', '\t'], " ");
    if line.chars().count() <= max {
        return line;
    }
    let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Whether `c` could act on a terminal, or mislead whoever reads it, rather than show as
/// itself: C0 controls (ESC starts escape sequences; `\n` and `\r` can forge lines), DEL, C1
/// controls (U+0080 to U+009F, which some terminals obey as 8-bit escape sequences, CSI among
/// them), the line and paragraph separators, and the Unicode bidirectional controls (U+202E
/// RIGHT-TO-LEFT OVERRIDE and its kin), which reorder the text an operator reads.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// A stored value as the text output prints it: every [`is_unsafe`] character written as an
/// escape (`\n`, `\r`, `\t`, `\0`, else `\u{1b}`), the rest as it is. Stream entries are written
/// by whoever can `XADD`, so their ids, types, errors and fields must not reach an operator's
/// terminal raw. [`eventflow::store::printable`] escapes NUL for storage; this escapes what a
/// terminal would obey.
pub fn safe(text: &str) -> String {
    if !text.contains(is_unsafe) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if is_unsafe(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_with_units() {
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_age("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_age("1w"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_age("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_age("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["", "d", "7x", "-1d", "99999999999999999999d"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
        let bare = parse_age("15").unwrap_err();
        assert!(bare.contains("no unit") && bare.contains("15s"), "{bare}");
    }

    #[test]
    fn timeouts_are_more_than_zero_and_at_most_an_hour() {
        assert_eq!(parse_timeout("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_timeout("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_timeout("0s").unwrap_err().contains("more than zero"));
        assert!(parse_timeout("1h1s").unwrap_err().contains("at most 1h"));
        assert!(parse_timeout("300000000000y").is_err());
    }

    #[test]
    fn ages_print_two_units() {
        assert_eq!(format_age(Duration::from_secs(0)), "0s");
        assert_eq!(format_age(Duration::from_secs(59)), "59s");
        assert_eq!(format_age(Duration::from_secs(302)), "5m 2s");
        assert_eq!(
            format_age(Duration::from_secs(3 * 86_400 + 4 * 3600 + 5)),
            "3d 4h"
        );
        assert_eq!(format_age(Duration::from_secs(7200)), "2h");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(safe("plain text, é ü 日本"), "plain text, é ü 日本");
        assert_eq!(
            safe("a\u{1b}[31mred\u{7}\n\r\t\0"),
            "a\\u{1b}[31mred\\u{7}\\n\\r\\t\\0"
        );
        assert_eq!(safe("\u{7f}\u{9b}\u{85}"), "\\u{7f}\\u{9b}\\u{85}");
        assert_eq!(
            safe("abc\u{202e}fed\u{2066}\u{200f}\u{2028}"),
            "abc\\u{202e}fed\\u{2066}\\u{200f}\\u{2028}"
        );
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            assert!(!safe(&format!("x{c}y")).contains(c), "{:x}", c as u32);
        }
    }

    #[test]
    fn times_are_rfc3339_or_ages_ago() {
        assert_eq!(
            parse_time("2025-01-01T00:00:00Z").unwrap().to_rfc3339(),
            "2025-01-01T00:00:00+00:00"
        );
        let hour_ago = parse_time("1h").unwrap();
        let age = Utc::now() - hour_ago;
        assert!(age >= chrono::Duration::seconds(3600) && age < chrono::Duration::seconds(3700));
        assert!(parse_time("yesterday").is_err());
    }
}
