//! The bounds every PostgreSQL session eventflow opens carries, so that a peer that stops
//! (SIGSTOP, a long GC-like pause, a partition) cannot hold its locks for as long as it is gone.
//!
//! They travel as startup options on the connection, so setting them costs no round trip. The
//! server enforces them: it cancels a statement that runs too long or waits too long for a lock,
//! ends a session left idle inside a transaction, and its TCP keepalives find a peer that went
//! away without closing its connection. Once a session ends, its transaction is rolled back and
//! its row locks go to the survivors.

use postgres::Config;
use std::time::Duration;

/// Limits set on every PostgreSQL connection of a store's pool (readers, workers, relays, and
/// the application's own use of [`pool()`](super::PostgresStore::pool)).
///
/// A zero duration turns that limit off, as in PostgreSQL. Options the connection string sets
/// itself (`options=-c statement_timeout=...`) come after these and win.
///
/// ```
/// use eventflow::store::SessionLimits;
/// use std::time::Duration;
///
/// let limits = SessionLimits::default()
///     .handler_timeout(Duration::from_secs(120))
///     .lock_timeout(Duration::from_secs(2));
/// assert_eq!(limits.get_handler_timeout(), Duration::from_secs(120));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLimits {
    statement_timeout: Duration,
    lock_timeout: Duration,
    idle_in_transaction_timeout: Duration,
    handler_timeout: Duration,
    keepalive_idle: Duration,
    keepalive_interval: Duration,
    keepalive_retries: u32,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            statement_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(10),
            idle_in_transaction_timeout: Duration::from_secs(30),
            handler_timeout: Duration::from_secs(30),
            keepalive_idle: Duration::from_secs(15),
            keepalive_interval: Duration::from_secs(5),
            keepalive_retries: 3,
        }
    }
}

impl SessionLimits {
    /// Longest any one of eventflow's own statements may run (`statement_timeout`); a claim,
    /// an insert or a cleanup that takes longer is cancelled and retried as after an outage.
    /// Defaults to 30 s.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Longest a statement waits for a lock (`lock_timeout`): a row or a key held by another
    /// session, such as an uncommitted insert of the same event id by a stopped peer. The
    /// statement then fails with SQLSTATE 55P03 and is retried after a pause. Defaults to 10 s.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// Longest a session may sit inside a transaction without sending a statement
    /// (`idle_in_transaction_session_timeout`): how long the locks of a process that stopped
    /// between two statements outlive it. Defaults to 30 s.
    pub fn idle_in_transaction_timeout(mut self, timeout: Duration) -> Self {
        self.idle_in_transaction_timeout = timeout;
        self
    }

    /// Longest a handler may run, in two parts the server enforces on the handler's transaction:
    /// each statement the handler sends, and each stretch between two statements (the
    /// handler's own code). A handler stuck longer has its transaction ended by the server; its
    /// rows go to other workers. When it differs from
    /// [`statement_timeout`](Self::statement_timeout) or
    /// [`idle_in_transaction_timeout`](Self::idle_in_transaction_timeout), each handled batch
    /// costs one more round trip (`SET LOCAL`). Defaults to 30 s.
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = timeout;
        self
    }

    /// TCP keepalives, on both ends of the connection: after `idle` without traffic, a probe
    /// every `interval`, and the connection is given up after `retries` unanswered probes. The
    /// server so ends the session (and rolls back the transaction) of a peer that is cut off,
    /// and the client stops waiting for a server that is. Defaults to 15 s, 5 s and 3.
    pub fn keepalives(mut self, idle: Duration, interval: Duration, retries: u32) -> Self {
        self.keepalive_idle = idle;
        self.keepalive_interval = interval;
        self.keepalive_retries = retries;
        self
    }

    /// The handler time limit; see [`handler_timeout`](Self::handler_timeout).
    pub fn get_handler_timeout(&self) -> Duration {
        self.handler_timeout
    }

    /// How long a dead or cut-off peer can keep a connection open: the keepalive idle time plus
    /// every unanswered probe.
    pub fn dead_peer_timeout(&self) -> Duration {
        self.keepalive_idle + self.keepalive_interval * self.keepalive_retries
    }

    /// Writes the limits into `config`, ahead of the connection string's own options.
    pub(in crate::store) fn apply(&self, config: &mut Config) {
        let mut options = vec![
            setting("statement_timeout", millis(self.statement_timeout)),
            setting("lock_timeout", millis(self.lock_timeout)),
            setting(
                "idle_in_transaction_session_timeout",
                millis(self.idle_in_transaction_timeout),
            ),
            // The server's end of the keepalives, in whole seconds (0 would mean the OS default).
            setting("tcp_keepalives_idle", whole_seconds(self.keepalive_idle)),
            setting(
                "tcp_keepalives_interval",
                whole_seconds(self.keepalive_interval),
            ),
            setting("tcp_keepalives_count", self.keepalive_retries.to_string()),
            setting("tcp_user_timeout", millis(self.dead_peer_timeout())),
        ];
        if let Some(own) = config.get_options() {
            options.push(own.to_string());
        }
        config
            .options(&options.join(" "))
            .keepalives(true)
            .keepalives_idle(self.keepalive_idle.max(Duration::from_secs(1)))
            .keepalives_interval(self.keepalive_interval.max(Duration::from_secs(1)))
            .keepalives_retries(self.keepalive_retries)
            .tcp_user_timeout(self.dead_peer_timeout());
    }

    /// The statement that gives a handler's transaction its own limits, when they differ from
    /// the session's.
    pub(in crate::store) fn handler_statement(&self) -> Option<String> {
        let handler = self.handler_timeout;
        if handler == self.statement_timeout && handler == self.idle_in_transaction_timeout {
            return None;
        }
        let ms = millis(handler);
        Some(format!(
            "SET LOCAL statement_timeout = {ms}; \
             SET LOCAL idle_in_transaction_session_timeout = {ms}"
        ))
    }
}

fn setting(name: &str, value: String) -> String {
    format!("-c {name}={value}")
}

/// Milliseconds, PostgreSQL's unit for these settings; at most what it accepts.
fn millis(duration: Duration) -> String {
    duration.as_millis().min(i32::MAX as u128).to_string()
}

fn whole_seconds(duration: Duration) -> String {
    duration.as_secs().clamp(1, i32::MAX as u64).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn limits_come_before_the_connection_strings_own_options() {
        let mut config =
            Config::from_str("host=localhost options='-c statement_timeout=5s'").unwrap();
        SessionLimits::default()
            .lock_timeout(Duration::from_millis(250))
            .apply(&mut config);
        let options = config.get_options().unwrap();
        assert!(options.starts_with("-c statement_timeout=30000 -c lock_timeout=250 "));
        assert!(options.ends_with("-c statement_timeout=5s"), "{options}");
        assert!(options.contains("-c idle_in_transaction_session_timeout=30000"));
        assert!(options.contains("-c tcp_keepalives_count=3"));
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(15));
        assert_eq!(
            config.get_tcp_user_timeout(),
            Some(&Duration::from_secs(30))
        );
    }

    #[test]
    fn a_handler_limit_equal_to_the_sessions_costs_no_statement() {
        assert_eq!(SessionLimits::default().handler_statement(), None);
        let longer = SessionLimits::default().handler_timeout(Duration::from_secs(90));
        let statement = longer.handler_statement().unwrap();
        assert!(
            statement.contains("statement_timeout = 90000"),
            "{statement}"
        );
        assert!(statement.contains("idle_in_transaction_session_timeout = 90000"));
    }
}
