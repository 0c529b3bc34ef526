//! `eventflow`: operate an eventflow inbox and outbox from the command line. A thin layer over
//! [`eventflow::admin`]: parsing arguments, opening connections, printing results.
//!
//! Exit codes: 0 ok; 1 the operation failed; 2 usage error (bad arguments or input); 3 cannot
//! connect to the database or Redis; 4 not found (a row, an event, a parked aggregate, or the
//! outbox table).
//! Errors go to standard error, with any password from the connection settings replaced by
//! `***`.

mod cli;
mod commands;
mod connect;
mod dead_letters;
mod migrate;
mod outbox;
mod output;
mod parked;
mod publish;
mod quarantine;
mod redact;
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
    let mut secrets = redact::Secrets::default();
    if let Some(url) = &cli.connection.database_url {
        secrets.add_from(url);
    }
    secrets.add_from(&cli.connection.redis_url);
    match commands::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("eventflow: {}", secrets.scrub(&failure.message()));
            ExitCode::from(failure.exit_code())
        }
    }
}
