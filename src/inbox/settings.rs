//! The consumer's settings: every default in one place, validated once.

use super::dead_letter::DeadLetterHook;
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::retry::{ExponentialBackoff, RetryPolicy};
use crate::store::{AfterDeadLetter, Migrations};
use std::sync::Arc;
use std::time::Duration;

const MAX_BLOCK: Duration = Duration::from_secs(60);
const MAX_INTERVAL: Duration = Duration::from_secs(3600);
const MAX_RECLAIM_IDLE: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_RETENTION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
const MAX_RETENTION_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// The default largest stream entry stored as an event: 1 MiB.
pub(crate) const DEFAULT_MAX_ENTRY_BYTES: usize = 1024 * 1024;
/// The default bytes of entries a reader aims to hold at once: 16 MiB.
pub(crate) const DEFAULT_MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// The smallest maximum entry size accepted: an event's own attributes need a few hundred bytes.
const MIN_MAX_ENTRY_BYTES: usize = 1024;
/// The largest maximum entry size accepted: Redis's own limit on a value (`proto-max-bulk-len`).
const MAX_MAX_ENTRY_BYTES: usize = 512 * 1024 * 1024;

/// The longest handler time limit accepted: longer is no limit at all.
const MAX_HANDLER_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Validated settings shared by the reader and worker threads.
#[derive(Clone)]
pub(crate) struct Settings {
    pub streams: Vec<String>,
    pub group: String,
    pub consumer_prefix: String,
    pub readers: usize,
    pub workers: usize,
    pub read_batch: usize,
    pub max_entry_bytes: usize,
    pub max_batch_bytes: usize,
    pub block: Duration,
    pub claim_batch: usize,
    pub optimistic_batches: bool,
    pub poll_interval: Duration,
    pub orphan_after: Duration,
    pub process_leases: bool,
    pub reclaim_idle: Duration,
    pub reclaim_interval: Duration,
    pub max_retries: i32,
    pub retry_policy: Arc<dyn RetryPolicy>,
    pub clock: Arc<dyn Clock>,
    pub migrations: Migrations,
    pub on_dead_letter: Option<DeadLetterHook>,
    pub retention: Option<Duration>,
    pub retention_interval: Duration,
    pub quarantine_retention: Option<Duration>,
    pub ordered: bool,
    pub after_dead_letter: AfterDeadLetter,
    pub parked_gauge_interval: Duration,
    pub handler_timeout: Duration,
    #[cfg(feature = "postgres")]
    pub session_limits: Option<crate::store::SessionLimits>,
    /// TLS for a PostgreSQL store opened by the builder.
    #[cfg(feature = "postgres")]
    pub postgres_tls: crate::tls::TlsSettings,
    /// TLS for a Redis transport opened by the builder.
    #[cfg(feature = "redis")]
    pub redis_tls: crate::tls::TlsSettings,
    /// An event type given two routes on the builder; a setter cannot fail, so `validate`
    /// reports it.
    pub duplicate_route: Option<String>,
    /// Why a `partitioned_stream` count was refused, reported by `validate` likewise.
    pub bad_partitions: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            streams: Vec::new(),
            group: String::new(),
            consumer_prefix: "eventflow".to_string(),
            readers: 2,
            workers: 4,
            read_batch: 500,
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            block: Duration::from_millis(1000),
            claim_batch: 64,
            optimistic_batches: true,
            poll_interval: Duration::from_millis(500),
            orphan_after: Duration::from_secs(10),
            process_leases: true,
            reclaim_idle: Duration::from_secs(60),
            reclaim_interval: Duration::from_secs(15),
            max_retries: 3,
            retry_policy: Arc::new(ExponentialBackoff::default()),
            clock: Arc::new(SystemClock),
            migrations: Migrations::Apply,
            on_dead_letter: None,
            retention: None,
            retention_interval: Duration::from_secs(600),
            quarantine_retention: None,
            ordered: false,
            after_dead_letter: AfterDeadLetter::Park,
            parked_gauge_interval: Duration::from_secs(10),
            handler_timeout: Duration::from_secs(30),
            #[cfg(feature = "postgres")]
            session_limits: None,
            #[cfg(feature = "postgres")]
            postgres_tls: crate::tls::TlsSettings::default(),
            #[cfg(feature = "redis")]
            redis_tls: crate::tls::TlsSettings::default(),
            duplicate_route: None,
            bad_partitions: None,
        }
    }
}

impl Settings {
    /// Checks each setting and the rules between them; the error names the setter.
    pub fn validate(&self) -> Result<()> {
        if let Some(why) = &self.bad_partitions {
            return Err(Error::config("partitioned_stream", why.clone()));
        }
        if self.streams.is_empty() {
            return Err(Error::config(
                "stream",
                "required: the stream to read, e.g. .stream(\"orders\")",
            ));
        }
        if self.streams.iter().any(|stream| stream.trim().is_empty()) {
            return Err(Error::config("stream", "a stream name must not be empty"));
        }
        if let Some(twice) = self
            .streams
            .iter()
            .enumerate()
            .find_map(|(i, stream)| self.streams[..i].contains(stream).then_some(stream))
        {
            return Err(Error::config(
                "stream",
                format!("{twice:?} is given twice; each stream is read once"),
            ));
        }
        if self.group.trim().is_empty() {
            return Err(Error::config(
                "group",
                "required: the consumer group, usually the service's name",
            ));
        }
        if self.consumer_prefix.trim().is_empty() {
            return Err(Error::config("consumer_prefix", "must not be empty"));
        }
        if self.readers == 0 {
            return Err(Error::config("readers", "at least 1"));
        }
        if self.handler_timeout < Duration::from_millis(1)
            || self.handler_timeout > MAX_HANDLER_TIMEOUT
        {
            return Err(Error::config(
                "handler_timeout",
                "between 1 ms and 24 hours",
            ));
        }
        if !(1..=1024).contains(&self.workers) {
            return Err(Error::config("workers", "between 1 and 1024"));
        }
        if !(1..=10_000).contains(&self.read_batch) {
            return Err(Error::config("read_batch", "between 1 and 10000 entries"));
        }
        if !(MIN_MAX_ENTRY_BYTES..=MAX_MAX_ENTRY_BYTES).contains(&self.max_entry_bytes) {
            return Err(Error::config(
                "max_entry_bytes",
                "between 1 KiB and 512 MiB (Redis's own largest value)",
            ));
        }
        if self.max_batch_bytes < self.max_entry_bytes {
            return Err(Error::config(
                "max_batch_bytes",
                format!(
                    "at least max_entry_bytes ({} bytes), so that an entry of the largest size \
                     fits a batch",
                    self.max_entry_bytes
                ),
            ));
        }
        if self.block.is_zero() || self.block > MAX_BLOCK {
            return Err(Error::config(
                "block",
                "between 1 ms and 60 s: positive, or readers spin on an empty stream; short, \
                 since shutdown waits for it",
            ));
        }
        if !(1..=1000).contains(&self.claim_batch) {
            return Err(Error::config("claim_batch", "between 1 and 1000 rows"));
        }
        if self.poll_interval.is_zero() || self.poll_interval > MAX_INTERVAL {
            return Err(Error::config("poll_interval", "between 1 ms and 1 hour"));
        }
        if self.reclaim_idle <= self.block {
            return Err(Error::config(
                "reclaim_idle",
                format!(
                    "must be longer than block ({:?}), or live readers would take each other's entries",
                    self.block
                ),
            ));
        }
        if self.orphan_after > MAX_RECLAIM_IDLE {
            return Err(Error::config("orphan_after", "at most 7 days"));
        }
        if self.reclaim_idle > MAX_RECLAIM_IDLE {
            return Err(Error::config("reclaim_idle", "at most 7 days"));
        }
        if self.reclaim_interval.is_zero() || self.reclaim_interval > MAX_INTERVAL {
            return Err(Error::config("reclaim_interval", "between 1 ms and 1 hour"));
        }
        if let Some(retention) = self.retention {
            if retention < Duration::from_secs(1) || retention > MAX_RETENTION {
                return Err(Error::config(
                    "retention",
                    "between 1 s and 100 years (processed rows younger than it are kept)",
                ));
            }
        }
        if self.retention_interval.is_zero() || self.retention_interval > MAX_RETENTION_INTERVAL {
            return Err(Error::config(
                "retention_interval",
                "between 1 ms and 1 day",
            ));
        }
        if let Some(retention) = self.quarantine_retention {
            if retention < Duration::from_secs(1) || retention > MAX_RETENTION {
                return Err(Error::config(
                    "quarantine_retention",
                    "between 1 s and 100 years (quarantined entries younger than it are kept)",
                ));
            }
        }
        if self.parked_gauge_interval.is_zero() || self.parked_gauge_interval > MAX_INTERVAL {
            return Err(Error::config(
                "parked_gauge_interval",
                "between 1 ms and 1 hour",
            ));
        }
        if self.max_retries < 0 {
            return Err(Error::config("max_retries", "0 (retry for ever) or more"));
        }
        if let Some(event_type) = &self.duplicate_route {
            return Err(Error::config(
                "route",
                format!("event type {event_type} has two handlers; register each type once"),
            ));
        }
        Ok(())
    }

    /// Reader threads in all: `readers` for each stream.
    pub fn reader_threads(&self) -> usize {
        self.readers * self.streams.len()
    }

    /// Database connections the readers and workers hold at once.
    pub fn connections_needed(&self) -> u32 {
        (self.reader_threads() + self.workers) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Settings {
        Settings {
            streams: vec!["s".into()],
            group: "g".into(),
            ..Settings::default()
        }
    }

    fn field_of(settings: Settings) -> &'static str {
        match settings.validate() {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_once_stream_and_group_are_set() {
        assert!(valid().validate().is_ok());
        assert_eq!(field_of(Settings::default()), "stream");
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            field_of(Settings {
                workers: 0,
                ..valid()
            }),
            "workers"
        );
        assert_eq!(
            field_of(Settings {
                claim_batch: 0,
                ..valid()
            }),
            "claim_batch"
        );
        assert_eq!(
            field_of(Settings {
                max_retries: -1,
                ..valid()
            }),
            "max_retries"
        );
        assert_eq!(
            field_of(Settings {
                group: " ".into(),
                ..valid()
            }),
            "group"
        );
        assert_eq!(
            field_of(Settings {
                duplicate_route: Some("OrderCreated".into()),
                ..valid()
            }),
            "route"
        );
    }

    #[test]
    fn durations_too_large_to_add_to_an_instant_are_refused() {
        assert_eq!(
            field_of(Settings {
                reclaim_interval: Duration::MAX,
                ..valid()
            }),
            "reclaim_interval"
        );
        assert_eq!(
            field_of(Settings {
                poll_interval: Duration::MAX,
                ..valid()
            }),
            "poll_interval"
        );
        assert_eq!(
            field_of(Settings {
                block: Duration::MAX,
                ..valid()
            }),
            "block"
        );
        assert_eq!(
            field_of(Settings {
                reclaim_idle: Duration::MAX,
                ..valid()
            }),
            "reclaim_idle"
        );
    }

    #[test]
    fn retention_is_checked_when_set() {
        assert!(Settings {
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            ..valid()
        }
        .validate()
        .is_ok());
        assert_eq!(
            field_of(Settings {
                retention: Some(Duration::ZERO),
                ..valid()
            }),
            "retention"
        );
        assert_eq!(
            field_of(Settings {
                retention: Some(Duration::MAX),
                ..valid()
            }),
            "retention"
        );
        assert_eq!(
            field_of(Settings {
                retention_interval: Duration::ZERO,
                ..valid()
            }),
            "retention_interval"
        );
    }

    #[test]
    fn entry_and_batch_byte_limits_are_checked() {
        assert_eq!(
            field_of(Settings {
                max_entry_bytes: 10,
                ..valid()
            }),
            "max_entry_bytes"
        );
        assert_eq!(
            field_of(Settings {
                max_entry_bytes: 2 * 1024 * 1024,
                max_batch_bytes: 1024 * 1024,
                ..valid()
            }),
            "max_batch_bytes"
        );
        assert_eq!(
            field_of(Settings {
                quarantine_retention: Some(Duration::ZERO),
                ..valid()
            }),
            "quarantine_retention"
        );
        assert!(Settings {
            max_entry_bytes: 4096,
            max_batch_bytes: 4096,
            quarantine_retention: Some(Duration::from_secs(30 * 24 * 3600)),
            ..valid()
        }
        .validate()
        .is_ok());
    }

    #[test]
    fn streams_are_named_once_each() {
        assert_eq!(
            field_of(Settings {
                streams: vec!["a".into(), "b".into(), "a".into()],
                ..valid()
            }),
            "stream"
        );
        assert_eq!(
            field_of(Settings {
                streams: vec!["a".into(), " ".into()],
                ..valid()
            }),
            "stream"
        );
        let three = Settings {
            streams: vec!["a".into(), "b".into(), "c".into()],
            ..valid()
        };
        assert!(three.validate().is_ok());
        assert_eq!(three.connections_needed(), 3 * 2 + 4);
    }

    #[test]
    fn a_refused_partition_count_names_partitioned_stream() {
        assert_eq!(
            field_of(Settings {
                bad_partitions: Some("\"orders\" has 0 partitions".into()),
                ..valid()
            }),
            "partitioned_stream"
        );
    }

    #[test]
    fn reclaim_idle_must_exceed_block() {
        let settings = Settings {
            block: Duration::from_secs(5),
            reclaim_idle: Duration::from_secs(5),
            ..valid()
        };
        assert_eq!(field_of(settings), "reclaim_idle");
    }
}
