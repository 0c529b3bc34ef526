//! `eventflow`: operate an eventflow inbox and outbox from the command line. A thin layer over
//! [`eventflow::admin`]: parsing arguments, opening connections, printing results.
//!
//! Exit codes: 0 ok; 1 the operation failed; 2 usage error (bad arguments or input); 3 cannot
//! connect to the database or Redis; 4 not found (a row, an event, a parked aggregate), or the
//! inbox or outbox table does not exist.
//! Errors go to standard error, with their causes; under `--json` as one JSON object (see
//! [`failure`]), arguments clap refuses included. Connection settings are only ever shown
//! [`redact`](eventflow::redact::redact)ed; as a second line of defence, any password from them
//! found in an error message (a driver's or a server's words) is replaced by `<redacted>`, and
//! control characters are escaped, since a message can quote stored values.
//!
//! Everything printed in text mode that comes from the database or the stream goes through
//! [`text::safe`] (tables do it for every cell), and `--json` output through
//! [`output::json_text`]: stream entries are written by whoever can `XADD`, and must not write
//! escape sequences into an operator's terminal.

#[macro_use]
mod output;
mod cli;
mod commands;
mod confirm;
mod connect;
mod console;
mod dead_letters;
mod failure;
mod migrate;
mod outbox;
mod parked;
mod publish;
mod quarantine;
mod status;
mod text;

use clap::error::ErrorKind;
use clap::Parser;
pub use failure::Failure;
use failure::{error_json, Kind};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(error),
    };
    let secrets = eventflow::redact::Scrubber::new(
        cli.connection
            .database_url
            .as_deref()
            .into_iter()
            .chain([cli.connection.redis_url.as_str()]),
    );
    let result = match &cli.command {
        cli::Command::Console(args) => console::run(&cli, args),
        _ => commands::run(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => ExitCode::from(failure.report(cli.json, &secrets)),
    }
}

/// Arguments clap refused (exit code 2), or `--help` and `--version` (0). Under `--json` a
/// refusal is the JSON error object too, so scripts read one shape whatever went wrong.
fn usage_error(error: clap::Error) -> ExitCode {
    let json = std::env::args_os()
        .skip(1)
        .take_while(|arg| arg != "--")
        .any(|arg| arg == "--json");
    let informational = matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if !json || informational {
        error.exit();
    }
    // clap's first line, without its `error: ` and the usage and tip that follow.
    let rendered = error.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    let message = first.strip_prefix("error: ").unwrap_or(first);
    // clap may quote an argument back; one could hold a connection setting's password.
    let args: Vec<String> = std::env::args_os()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let settings = ["EVENTFLOW_DATABASE_URL", "EVENTFLOW_REDIS_URL"]
        .into_iter()
        .filter_map(|name| std::env::var(name).ok());
    let settings: Vec<String> = args
        .iter()
        .map(|arg| match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => value.to_string(),
            _ => arg.clone(),
        })
        .chain(settings)
        .collect();
    let secrets = eventflow::redact::Scrubber::new(settings.iter().map(String::as_str));
    eprintln!("{}", error_json(Kind::Usage, &secrets.scrub(message), &[]));
    ExitCode::from(Kind::Usage.exit_code())
}
