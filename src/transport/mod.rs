//! Transports: the streams events arrive on.
//!
//! A [`Transport`] is the small contract eventflow needs from a broker with consumer groups:
//! create a group, read new entries for a named consumer, acknowledge them, and take over entries
//! that another consumer read but never acknowledged. `RedisStreams` is the production
//! implementation and [`MemoryStream`] an in-process one with the same semantics for tests and
//! demos (`RedisStreams` needs the `redis` feature); both pass one conformance suite (`tests/transport_conformance.rs`). Implement the trait
//! to bring another broker. [`partition`] names the streams a logical stream is split into.

mod memory;
pub mod partition;
#[cfg(feature = "redis")]
pub(crate) mod redis_streams;

pub use memory::MemoryStream;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use redis_streams::fuzz_reply_parsers;
#[cfg(feature = "redis")]
pub use redis_streams::{RedisStreams, RedisStreamsBuilder};

use std::time::Duration;

/// One stream entry as the broker delivered it: its id and its raw fields, in order.
///
/// Names and values are both kept as bytes (Redis field names are binary strings like the
/// values) so that an entry that is not valid UTF-8 can still be quarantined exactly as it
/// arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The broker's entry id, for Redis `<millis>-<seq>`.
    pub id: String,
    /// Raw field names and raw values, in the order the producer wrote them.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl StreamEntry {
    /// An entry from text field names, as producers usually write them.
    pub fn from_text_fields<N: Into<String>, V: Into<Vec<u8>>>(
        id: impl Into<String>,
        fields: impl IntoIterator<Item = (N, V)>,
    ) -> Self {
        Self {
            id: id.into(),
            fields: fields
                .into_iter()
                .map(|(name, value)| (name.into().into_bytes(), value.into()))
                .collect(),
        }
    }

    /// The raw value of the first field named `name`.
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(field, _)| field.as_slice() == name.as_bytes())
            .map(|(_, value)| value.as_slice())
    }

    /// The entry's size as the limits count it: every name and value, in bytes.
    pub fn size(&self) -> usize {
        self.fields
            .iter()
            .map(|(name, value)| name.len().saturating_add(value.len()))
            .fold(0, usize::saturating_add)
    }
}

/// What a reader asks for: up to `count` entries never delivered to the group before.
#[derive(Debug, Clone, Copy)]
pub struct ReadRequest<'a> {
    /// Stream name.
    pub stream: &'a str,
    /// Consumer group name.
    pub group: &'a str,
    /// This consumer's name within the group.
    pub consumer: &'a str,
    /// Most entries to return; at least 1.
    pub count: usize,
    /// How long to wait for an entry when there is none; zero returns at once.
    pub block: Duration,
}

/// What a reader asks for when it takes over stale entries (Redis `XAUTOCLAIM`).
#[derive(Debug, Clone, Copy)]
pub struct ReclaimRequest<'a> {
    /// Stream name.
    pub stream: &'a str,
    /// Consumer group name.
    pub group: &'a str,
    /// The consumer that takes the entries over.
    pub consumer: &'a str,
    /// Only entries delivered at least this long ago and still unacknowledged are taken.
    pub min_idle: Duration,
    /// Cursor: `"0-0"` to start, then [`Reclaimed::next_cursor`] to go on.
    pub cursor: &'a str,
    /// Most entries to take in this call; at least 1.
    pub count: usize,
}

/// The answer to a [`ReclaimRequest`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Entries now owned by the requesting consumer, with their fields.
    pub entries: Vec<StreamEntry>,
    /// Where the next call continues; `"0-0"` when the pending list has been walked through.
    pub next_cursor: String,
    /// Ids that were pending but whose entries had been trimmed or deleted from the stream.
    /// They are removed from the pending list; their content is gone and cannot be stored.
    pub deleted: Vec<String>,
}

/// One entry to append with [`Transport::publish_entries`].
#[derive(Debug, Clone, Copy)]
pub struct OutgoingEntry<'a> {
    /// The stream to append to.
    pub stream: &'a str,
    /// Field names and raw values, in order.
    pub fields: &'a [(String, Vec<u8>)],
}

/// How many replicas must hold appended entries before a publish counts as done, and how long to
/// wait for them: Redis `WAIT <replicas> <timeout>` after the writes, on the connection that made
/// them (on a cluster, per master written to). See [`Transport::publish_entries_replicated`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaWait {
    /// Replicas that must have acknowledged the entries; at least 1.
    pub replicas: u32,
    /// How long to wait for them; more than zero. Redis answers with the count reached when it
    /// runs out, and the entries then count as not (yet) safe.
    pub timeout: Duration,
}

/// What [`Transport::find_entries`] found in a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FoundEntries {
    /// The id of the stream's oldest entry; `None` when it holds none or does not exist.
    pub oldest: Option<String>,
    /// For each id asked about, in order, whether the stream holds that entry.
    pub present: Vec<bool>,
}

/// A stream entry id (`<millis>-<seq>`, or `<millis>` for `<millis>-0`) as numbers, which
/// order as the stream does; `None` when it is not one.
pub(crate) fn parse_entry_id(id: &str) -> Option<(u64, u64)> {
    let (millis, seq) = id.split_once('-').unwrap_or((id, "0"));
    Some((millis.parse().ok()?, seq.parse().ok()?))
}

/// The error for an entry without fields: Redis `XADD` needs at least one.
pub(crate) fn no_fields_error() -> TransportError {
    TransportError::Broker(
        "cannot publish an entry without fields; Redis XADD needs at least one".into(),
    )
}

/// One entry of a group's pending-entries list: delivered to a consumer, not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    /// The entry's id.
    pub id: String,
    /// The consumer it was delivered to.
    pub consumer: String,
    /// How long ago it was last delivered.
    pub idle: Duration,
}

/// Counts for one consumer group, for tests, health checks and the `status` command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Entries delivered to the group's consumers and not yet acknowledged.
    pub pending: u64,
    /// Entries in the stream not yet delivered to the group, when the broker can tell.
    pub lag: Option<u64>,
}

/// Errors from a transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The broker could not be reached or the connection broke. Readers back off and reconnect.
    #[error("cannot reach the stream broker: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The consumer group does not exist (for Redis: the server restarted without persistence,
    /// or someone destroyed the group). Readers create it again and go on.
    #[error("consumer group {group:?} does not exist on stream {stream:?}")]
    NoGroup {
        /// Stream name.
        stream: String,
        /// Group name.
        group: String,
    },
    /// The broker answered with an error or with a reply this transport does not understand.
    #[error("stream broker error: {0}")]
    Broker(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The entry was appended, but fewer replicas than a [`ReplicaWait`] asked for acknowledged
    /// it in time, so a failover of its master may lose it. Only
    /// [`Transport::publish_entries_replicated`] reports it; the outbox relay leaves such a row
    /// unpublished without counting an attempt and appends it again later (the copy that may
    /// already be in the stream is dropped by the inbox by event id).
    #[error(
        "entry appended but acknowledged by {acknowledged} of the {wanted} replicas asked for \
         in time; a failover could lose it"
    )]
    NotReplicated {
        /// Replicas asked for.
        wanted: u32,
        /// Replicas that acknowledged the write in time (for a broker without replicas, 0).
        acknowledged: u32,
    },
}

/// Refuses a batch holding an entry without fields, before anything is sent: Redis `XADD` needs
/// at least one field, and a pipeline would have added the entries before it.
pub(crate) fn refuse_empty_entries(
    entries: &[Vec<(String, Vec<u8>)>],
) -> Result<(), TransportError> {
    if entries.iter().any(Vec::is_empty) {
        return Err(no_fields_error());
    }
    Ok(())
}

/// A stream broker with consumer groups.
///
/// Every method may be called from several threads at once; an implementation that needs one
/// connection per caller (as Redis does for blocking reads) keeps a pool.
pub trait Transport: Send + Sync + 'static {
    /// Creates the consumer group reading from the start of the stream, creating the stream if
    /// needed. A group that already exists is not an error.
    fn ensure_group(&self, stream: &str, group: &str) -> Result<(), TransportError> {
        self.create_group(stream, group, "0")
    }

    /// Creates the consumer group so that it reads the entries after id `after` (`<ms>-<seq>`;
    /// `0` for the whole stream), creating the stream if needed (Redis `XGROUP CREATE ... MKSTREAM`).
    /// A group that already exists is not an error, and is left where it is.
    fn create_group(&self, stream: &str, group: &str, after: &str) -> Result<(), TransportError>;

    /// Reads entries never delivered to the group (Redis `XREADGROUP ... >`), waiting up to
    /// `request.block` when there are none. Returned entries are pending for `request.consumer`
    /// until acknowledged.
    fn read_group(&self, request: &ReadRequest<'_>) -> Result<Vec<StreamEntry>, TransportError>;

    /// Acknowledges entries in one call; returns how many were pending.
    fn ack(&self, stream: &str, group: &str, ids: &[String]) -> Result<u64, TransportError>;

    /// Takes over entries that have been pending at least `request.min_idle`
    /// (Redis `XAUTOCLAIM`).
    fn reclaim_stale(&self, request: &ReclaimRequest<'_>) -> Result<Reclaimed, TransportError>;

    /// Appends entries, to one stream or several, in one round trip. Returns one result per
    /// entry, in order: the broker may refuse one entry (a key holding another type, an entry
    /// without fields) and append the rest. The outer error means the round trip failed as a
    /// whole, and then nothing can be said about which entries were appended.
    fn publish_entries(
        &self,
        entries: &[OutgoingEntry<'_>],
    ) -> Result<Vec<Result<String, TransportError>>, TransportError>;

    /// Appends entries like [`publish_entries`](Self::publish_entries), then waits until
    /// `wait.replicas` replicas hold them or `wait.timeout` passes (Redis `WAIT`, sent after the
    /// writes on the same connection; on a cluster once per slot written to, to that slot's
    /// master). An appended entry whose replicas fell short is
    /// [`TransportError::NotReplicated`]; the other results are as for `publish_entries`, and an
    /// entry whose wait could not be sent (the master went away) is
    /// [`TransportError::Unavailable`].
    ///
    /// Defaults to what a Redis without replicas answers: every appended entry is
    /// `NotReplicated` with none acknowledged. The in-process [`MemoryStream`] keeps that
    /// default, so a relay waiting for replicas on it never marks a row published.
    fn publish_entries_replicated(
        &self,
        entries: &[OutgoingEntry<'_>],
        wait: ReplicaWait,
    ) -> Result<Vec<Result<String, TransportError>>, TransportError> {
        let results = self.publish_entries(entries)?;
        Ok(results
            .into_iter()
            .map(|result| {
                result.and_then(|_| {
                    Err(TransportError::NotReplicated {
                        wanted: wait.replicas,
                        acknowledged: 0,
                    })
                })
            })
            .collect())
    }

    /// Appends entries to a stream in one round trip and returns their ids in order. An entry
    /// with no fields is refused before anything is sent; any other refused entry fails the
    /// call (entries before it may have been appended).
    fn publish_batch(
        &self,
        stream: &str,
        entries: &[Vec<(String, Vec<u8>)>],
    ) -> Result<Vec<String>, TransportError> {
        refuse_empty_entries(entries)?;
        let outgoing: Vec<OutgoingEntry<'_>> = entries
            .iter()
            .map(|fields| OutgoingEntry { stream, fields })
            .collect();
        self.publish_entries(&outgoing)?.into_iter().collect()
    }

    /// Appends one entry to a stream and returns its id.
    fn publish(
        &self,
        stream: &str,
        fields: Vec<(String, Vec<u8>)>,
    ) -> Result<String, TransportError> {
        let mut ids = self.publish_batch(stream, &[fields])?;
        ids.pop()
            .ok_or_else(|| TransportError::Broker("publish returned no entry id".into()))
    }

    /// Trims the stream to exactly `max_len` entries, oldest first; returns how many were removed.
    fn trim(&self, stream: &str, max_len: usize) -> Result<u64, TransportError>;

    /// Removes the entries of `stream` with ids below `before` (`<millis>-<seq>`) that every
    /// consumer group of the stream has read and acknowledged; returns how many went. Entries a
    /// group has not read yet, or read and not acknowledged, stay. A stream without consumer
    /// groups is left whole: nobody has read it yet.
    fn trim_consumed(&self, stream: &str, before: &str) -> Result<u64, TransportError>;

    /// Pending and lag counts of a consumer group. [`TransportError::NoGroup`] when the group
    /// does not exist, the stream included; [`Transport::stream_exists`] tells which.
    fn group_stats(&self, stream: &str, group: &str) -> Result<GroupStats, TransportError>;

    /// Whether `stream` exists, to tell a missing stream from a missing group (`eventflow
    /// status` does). Defaults to `None`, "cannot tell", for transports wrapping another or
    /// test doubles; the Redis and in-process transports answer.
    fn stream_exists(&self, stream: &str) -> Result<Option<bool>, TransportError> {
        let _ = stream;
        Ok(None)
    }

    /// Which of `ids` (`<millis>-<seq>`) `stream` still holds, and its oldest entry, in one
    /// round trip (Redis `XRANGE`): an absent entry younger than the oldest was not trimmed
    /// away, so it was lost (with a master that failed over before passing it on). Defaults
    /// to `None`, "cannot tell", for transports wrapping another or test doubles; the Redis
    /// and in-process transports answer.
    fn find_entries(
        &self,
        stream: &str,
        ids: &[String],
    ) -> Result<Option<FoundEntries>, TransportError> {
        let _ = (stream, ids);
        Ok(None)
    }

    /// The group's oldest pending entry with an id below `before` (`<millis>-<seq>`), whoever
    /// holds it (Redis `XPENDING <stream> <group> - (<before> 1`). An ordered reader waits
    /// for it before storing entries that come after it.
    fn oldest_pending_before(
        &self,
        stream: &str,
        group: &str,
        before: &str,
    ) -> Result<Option<PendingEntry>, TransportError>;

    /// Checks that the broker answers, within about `timeout`: waiting for a connection and for
    /// the answer together take no longer, so a health probe never hangs on a broker that does.
    /// [`TransportError::Unavailable`] when it does not answer in time.
    fn ping(&self, timeout: Duration) -> Result<(), TransportError>;
}

/// A shared transport is a transport, so one broker connection pool can serve a consumer and the
/// application's own publishing.
impl<T: Transport + ?Sized> Transport for std::sync::Arc<T> {
    fn ensure_group(&self, stream: &str, group: &str) -> Result<(), TransportError> {
        (**self).ensure_group(stream, group)
    }

    fn create_group(&self, stream: &str, group: &str, after: &str) -> Result<(), TransportError> {
        (**self).create_group(stream, group, after)
    }

    fn read_group(&self, request: &ReadRequest<'_>) -> Result<Vec<StreamEntry>, TransportError> {
        (**self).read_group(request)
    }

    fn ack(&self, stream: &str, group: &str, ids: &[String]) -> Result<u64, TransportError> {
        (**self).ack(stream, group, ids)
    }

    fn reclaim_stale(&self, request: &ReclaimRequest<'_>) -> Result<Reclaimed, TransportError> {
        (**self).reclaim_stale(request)
    }

    fn publish_entries(
        &self,
        entries: &[OutgoingEntry<'_>],
    ) -> Result<Vec<Result<String, TransportError>>, TransportError> {
        (**self).publish_entries(entries)
    }

    fn publish_entries_replicated(
        &self,
        entries: &[OutgoingEntry<'_>],
        wait: ReplicaWait,
    ) -> Result<Vec<Result<String, TransportError>>, TransportError> {
        (**self).publish_entries_replicated(entries, wait)
    }

    fn trim(&self, stream: &str, max_len: usize) -> Result<u64, TransportError> {
        (**self).trim(stream, max_len)
    }

    fn trim_consumed(&self, stream: &str, before: &str) -> Result<u64, TransportError> {
        (**self).trim_consumed(stream, before)
    }

    fn group_stats(&self, stream: &str, group: &str) -> Result<GroupStats, TransportError> {
        (**self).group_stats(stream, group)
    }

    fn stream_exists(&self, stream: &str) -> Result<Option<bool>, TransportError> {
        (**self).stream_exists(stream)
    }

    fn find_entries(
        &self,
        stream: &str,
        ids: &[String],
    ) -> Result<Option<FoundEntries>, TransportError> {
        (**self).find_entries(stream, ids)
    }

    fn oldest_pending_before(
        &self,
        stream: &str,
        group: &str,
        before: &str,
    ) -> Result<Option<PendingEntry>, TransportError> {
        (**self).oldest_pending_before(stream, group, before)
    }

    fn ping(&self, timeout: Duration) -> Result<(), TransportError> {
        (**self).ping(timeout)
    }
}
