//! Why a command failed, and how that is told: its kind and exit code, its message, and every
//! cause the error carries (a refused port, a missing database, a wrong password), as text on
//! standard error or, under `--json`, as one JSON object there:
//!
//! ```json
//! {"error": {"kind": "unreachable", "exit_code": 3, "message": "...", "causes": ["..."]}}
//! ```

use super::output::json_text;
use super::text::safe;
use eventflow::admin::AdminError;
use eventflow::redact::Scrubber;
use serde_json::json;
use std::error::Error;

/// Why a command failed, which decides the exit code.
pub enum Failure {
    /// The operation could not be done (or was not confirmed): exit code 1.
    Failed(String),
    /// Bad arguments or input: exit code 2.
    Usage(String),
    /// The database or Redis cannot be reached: exit code 3.
    Unreachable(String),
    /// The inbox table does not exist: exit code 4, with the command that creates it.
    InboxNotInstalled {
        /// The inbox table looked for.
        table: String,
        /// What the database said.
        error: AdminError,
    },
    /// What the operations API said: 3 when unreachable, 4 when not found (the outbox table
    /// included), 2 for bad input, else 1.
    Admin(AdminError),
}

impl From<AdminError> for Failure {
    fn from(error: AdminError) -> Self {
        Self::Admin(error)
    }
}

/// What kind of failure it was, as `--json` names it. Each kind has one exit code, and the
/// names are stable: scripts may match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Exit code 1.
    Failed,
    /// Exit code 2.
    Usage,
    /// Exit code 3.
    Unreachable,
    /// Exit code 4: no such row, event, entry or parked aggregate.
    NotFound,
    /// Exit code 4: the inbox or outbox table does not exist; `eventflow migrate` creates it.
    NotInstalled,
}

impl Kind {
    /// The name `--json` prints.
    pub fn name(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Usage => "usage",
            Self::Unreachable => "unreachable",
            Self::NotFound => "not_found",
            Self::NotInstalled => "not_installed",
        }
    }

    /// The process's exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Failed => 1,
            Self::Usage => 2,
            Self::Unreachable => 3,
            Self::NotFound | Self::NotInstalled => 4,
        }
    }
}

impl Failure {
    /// An error from an inbox command, with a missing table told as such: the database's
    /// "relation does not exist" is true but does not say what to do.
    pub fn from_inbox(error: AdminError, table: &str) -> Self {
        match &error {
            AdminError::Store(store) if store.is_missing_table() => Self::InboxNotInstalled {
                table: table.to_string(),
                error,
            },
            _ => Self::Admin(error),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Self::Failed(_) => Kind::Failed,
            Self::Usage(_) => Kind::Usage,
            Self::Unreachable(_) => Kind::Unreachable,
            Self::InboxNotInstalled { .. } => Kind::NotInstalled,
            Self::Admin(error) if error.is_unreachable() => Kind::Unreachable,
            Self::Admin(AdminError::NotFound { .. }) => Kind::NotFound,
            Self::Admin(AdminError::NotInstalled { .. }) => Kind::NotInstalled,
            Self::Admin(AdminError::InvalidEvent(_) | AdminError::InvalidInput(_)) => Kind::Usage,
            Self::Admin(_) => Kind::Failed,
        }
    }

    /// What went wrong, in one line.
    pub fn message(&self) -> String {
        match self {
            Self::Failed(message) | Self::Usage(message) | Self::Unreachable(message) => {
                message.clone()
            }
            Self::InboxNotInstalled { table, .. } => {
                let flag = if table == eventflow::store::DEFAULT_INBOX_TABLE {
                    String::new()
                } else {
                    format!(" --table {table}")
                };
                format!(
                    "the inbox is not installed: table {table} does not exist in this database \
                     (create it with `eventflow migrate{flag}`)"
                )
            }
            Self::Admin(error) if error.is_unreachable() => format!("cannot connect: {error}"),
            Self::Admin(error) => error.to_string(),
        }
    }

    /// The error's causes, outermost first: each `source()` in turn, leaving out those whose
    /// words the text before already holds (many errors repeat their source in their own
    /// message, in other punctuation) and the PostgreSQL driver's "db error", which only says
    /// that the server's own words follow.
    pub fn causes(&self) -> Vec<String> {
        let error: &dyn Error = match self {
            Self::Failed(_) | Self::Usage(_) | Self::Unreachable(_) => return Vec::new(),
            Self::InboxNotInstalled { error, .. } => error,
            Self::Admin(error) => match error.source() {
                Some(source) => source,
                None => return Vec::new(),
            },
        };
        let mut told = words(&self.message());
        let mut causes = Vec::new();
        let mut next = Some(error);
        while let Some(error) = next {
            let text = error.to_string();
            let said = words(&text);
            if text != "db error" && !said.is_subset(&told) {
                told.extend(said);
                causes.push(text);
            }
            next = error.source();
        }
        causes
    }

    /// Prints the failure on standard error, as text or `--json`, without the connection
    /// settings' secrets, and returns the exit code.
    pub fn report(&self, json: bool, secrets: &Scrubber) -> u8 {
        let kind = self.kind();
        let message = secrets.scrub(&self.message());
        let causes: Vec<String> = self.causes().iter().map(|c| secrets.scrub(c)).collect();
        if json {
            eprintln!("{}", error_json(kind, &message, &causes));
        } else {
            eprintln!("eventflow: {}", safe(&message));
            for cause in &causes {
                eprintln!("  caused by: {}", safe(cause));
            }
        }
        kind.exit_code()
    }
}

/// The words of `text`, in lower case, for telling whether a cause says anything new.
fn words(text: &str) -> std::collections::HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '_')
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The `--json` error object, terminal-safe.
pub fn error_json(kind: Kind, message: &str, causes: &[String]) -> String {
    json_text(&json!({
        "error": {
            "kind": kind.name(),
            "exit_code": kind.exit_code(),
            "message": message,
            "causes": causes,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1
                .as_deref()
                .map(|layer| layer as &(dyn Error + 'static))
        }
    }

    #[test]
    fn causes_leave_out_what_was_said_already() {
        let chain = Layer(
            "error connecting to server",
            Some(Box::new(Layer(
                "Connection refused (os error 111)",
                Some(Box::new(Layer(
                    "db error",
                    Some(Box::new(Layer("CONNECTION: refused", None))),
                ))),
            ))),
        );
        let failure = Failure::Admin(AdminError::Transport(
            eventflow::transport::TransportError::Broker(Box::new(chain)),
        ));
        assert_eq!(
            failure.message(),
            "stream broker error: error connecting to server"
        );
        assert_eq!(failure.causes(), ["Connection refused (os error 111)"]);
        assert!(Failure::Usage("no".into()).causes().is_empty());
    }

    #[test]
    fn every_kind_has_its_exit_code_and_name() {
        let kinds = [
            (Kind::Failed, 1, "failed"),
            (Kind::Usage, 2, "usage"),
            (Kind::Unreachable, 3, "unreachable"),
            (Kind::NotFound, 4, "not_found"),
            (Kind::NotInstalled, 4, "not_installed"),
        ];
        for (kind, code, name) in kinds {
            assert_eq!((kind.exit_code(), kind.name()), (code, name));
        }
        let parsed: serde_json::Value =
            serde_json::from_str(&error_json(Kind::NotFound, "gone", &["why".into()])).unwrap();
        assert_eq!(
            parsed,
            json!({"error": {"kind": "not_found", "exit_code": 4, "message": "gone", "causes": ["why"]}})
        );
    }
}
