//! What the console reads and acts on: the inbox's and the outbox's operations APIs, the
//! streams' consumer group in Redis, and what to say about where they are.

use eventflow::admin::{Admin, OutboxAdmin};
use eventflow::redact::Scrubber;
use eventflow::store::InboxStore;
use eventflow::transport::RedisStreams;

/// The operations APIs the pages call; the same ones the CLI's commands use.
pub struct Backends<S: InboxStore> {
    /// The inbox.
    pub admin: Admin<S>,
    /// The outbox table (which may not be installed: its page says so).
    pub outbox: OutboxAdmin,
    /// Redis, when `--stream` and `--group` name a consumer group to show.
    pub redis: Option<RedisStreams>,
    /// The streams whose pending entries and lag the overview shows.
    pub streams: Vec<String>,
    /// Their consumer group.
    pub group: Option<String>,
    /// The inbox table, for the overview's heading.
    pub table: String,
    /// `PostgreSQL` or `SQLite`.
    pub kind: &'static str,
    /// The database URL, redacted.
    pub database: String,
    /// Removes the connection settings' secrets from error messages before they are shown.
    pub scrubber: Scrubber,
}
