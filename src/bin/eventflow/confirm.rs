//! Asking before a purge takes every row: `--older-than 0s` is more often a slip (a missing
//! unit, a script's empty variable) than a wish, and what it deletes cannot be had back.

use super::cli::PurgeArgs;
use super::text::format_age;
use super::Failure;
use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

/// Ages under this delete everything finished before the command ran: as good as all.
const TAKES_EVERYTHING: Duration = Duration::from_secs(1);

/// Goes on when the purge keeps recent rows, when `--yes` was given, or when the operator
/// answers `y` on a terminal. Without a terminal to ask on, refuses (exit code 2) instead of
/// waiting for an answer that never comes. `what` names the rows: "processed rows".
pub fn purge_confirmed(purge: &PurgeArgs, what: &str) -> Result<(), Failure> {
    if purge.yes || purge.older_than >= TAKES_EVERYTHING {
        return Ok(());
    }
    let age = format_age(purge.older_than);
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Failure::Usage(format!(
            "--older-than {age} deletes every {what}; pass --yes to confirm \
             (standard input is not a terminal to ask on)"
        )));
    }
    eprint!("--older-than {age} deletes every {what}, however recent. Go on? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(|error| Failure::Usage(format!("cannot read the answer: {error}")))?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(Failure::Failed("not confirmed: nothing was deleted".into()))
    }
}
