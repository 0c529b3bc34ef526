//! `eventflow`: operate an eventflow inbox and outbox from the command line. A thin layer over
//! [`eventflow::admin`]: parsing arguments, opening connections, printing results.
//!
//! Exit codes: 0 ok; 1 the operation failed; 2 usage error (bad arguments or input); 3 cannot
//! connect to the database or Redis; 4 not found (a row, an event, a parked aggregate, or the
//! outbox table).
//! Errors go to standard error. Connection settings are only ever shown
//! [`redact`](eventflow::redact::redact)ed; as a second line of defence, any password from them
//! found in an error message (a driver's or a server's words) is replaced by `<redacted>`, and
//! control characters are escaped, since a message can quote stored values.
//!
//! Everything printed in text mode that comes from the database or the stream goes through
//! [`text::safe`] (tables do it for every cell), and `--json` output through
//! [`output::json_text`]: stream entries are written by whoever can `XADD`, and must not write
//! escape sequences into an operator's terminal.

mod cli;
mod commands;
mod connect;
mod console;
mod dead_letters;
mod migrate;
mod outbox;
mod output;
mod parked;
mod publish;
mod quarantine;
mod status;
mod text;

use clap::Parser;
use eventflow::admin::AdminError;
use std::process::ExitCode;

/// Why a command failed, which decides the exit code.
pub enum Failure {
    /// Bad arguments or input: exit code 2.
    Usage(String),
    /// The database or Redis cannot be reached: exit code 3.
    Unreachable(String),
    /// What the operations API said: 3 when unreachable, 4 when not found (the outbox table
    /// included), 2 for bad input, else 1.
    Admin(AdminError),
}

impl From<AdminError> for Failure {
    fn from(error: AdminError) -> Self {
        Self::Admin(error)
    }
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Unreachable(_) => 3,
            Self::Admin(error) if error.is_unreachable() => 3,
            Self::Admin(AdminError::NotFound { .. } | AdminError::NotInstalled { .. }) => 4,
            Self::Admin(AdminError::InvalidEvent(_) | AdminError::InvalidInput(_)) => 2,
            Self::Admin(_) => 1,
        }
    }

    fn message(&self) -> String {
        match self {
            Self::Usage(message) | Self::Unreachable(message) => message.clone(),
            Self::Admin(error) if error.is_unreachable() => format!("cannot connect: {error}"),
            Self::Admin(error) => error.to_string(),
        }
    }
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse(); // exits with 2 on a usage error, 0 for --help
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
        Err(failure) => {
            eprintln!(
                "eventflow: {}",
                text::safe(&secrets.scrub(&failure.message()))
            );
            ExitCode::from(failure.exit_code())
        }
    }
}
