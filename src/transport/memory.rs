//! An in-process stream broker with Redis consumer-group semantics, for tests and demos.
//!
//! [`MemoryStream`] keeps every stream in one mutex-guarded map and mirrors what Redis 7 does for
//! the commands eventflow uses: `<millis>-<seq>` entry ids that only grow, one last-delivered id
//! and one pending-entries list per group, `XAUTOCLAIM` cursors that walk the pending list in id
//! order, and trimming that leaves pending records of trimmed entries behind. It passes the same
//! conformance suite as the Redis transport, so code tested against it behaves the same against
//! Redis. Nothing is persisted.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};

use super::{
    FoundEntries, GroupStats, OutgoingEntry, PendingEntry, ReadRequest, ReclaimRequest, Reclaimed,
    StreamEntry, Transport, TransportError,
};

/// How many pending entries one reclaim call looks at per entry it may return. Redis hard-codes
/// the same factor in `XAUTOCLAIM`, so a call over a long list of fresh entries stops early and
/// hands back a cursor instead of walking the whole list under the lock.
const RECLAIM_SCAN_FACTOR: usize = 10;

/// An in-process stream broker with consumer groups.
///
/// Cloning is cheap and every clone sees the same streams, so one clone can publish while
/// another blocks in [`Transport::read_group`]. Streams are created on demand; groups by
/// [`Transport::ensure_group`]. Idle times of pending entries are measured with
/// [`Instant`], so tests can use reclaim thresholds of a few milliseconds.
///
/// ```
/// use std::time::Duration;
/// use eventflow::transport::{MemoryStream, ReadRequest, Transport};
///
/// let broker = MemoryStream::new();
/// broker.ensure_group("orders", "billing").unwrap();
/// broker.publish("orders", vec![("payload".into(), b"{}".to_vec())]).unwrap();
/// let entries = broker
///     .read_group(&ReadRequest {
///         stream: "orders",
///         group: "billing",
///         consumer: "worker-1",
///         count: 10,
///         block: Duration::ZERO,
///     })
///     .unwrap();
/// assert_eq!(entries.len(), 1);
/// ```
#[derive(Clone, Default)]
pub struct MemoryStream {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    streams: Mutex<HashMap<String, Stream>>,
    /// Woken on every publish and group change so blocked readers look again. One condvar for all
    /// streams keeps the code simple; readers of other streams just go back to sleep.
    changed: Condvar,
}

/// Field names and raw values of one entry.
type Fields = Vec<(String, Vec<u8>)>;

#[derive(Default)]
struct Stream {
    entries: BTreeMap<EntryId, Fields>,
    /// The highest id ever added, kept apart from `entries` so ids never repeat after a trim.
    last_id: EntryId,
    groups: HashMap<String, Group>,
}

#[derive(Default)]
struct Group {
    last_delivered: EntryId,
    pending: BTreeMap<EntryId, Pending>,
}

/// One record of a group's pending-entries list.
struct Pending {
    consumer: String,
    delivered_at: Instant,
    deliveries: u64,
}

/// A Redis-style entry id, `<millis>-<seq>`, ordered numerically.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct EntryId {
    millis: u64,
    seq: u64,
}

impl EntryId {
    /// Parses `<millis>-<seq>`, or `<millis>` meaning sequence 0, as Redis accepts.
    fn parse(text: &str) -> Option<Self> {
        let (millis, seq) = match text.split_once('-') {
            Some((millis, seq)) => (millis, seq),
            None => (text, "0"),
        };
        Some(Self {
            millis: millis.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The id for an entry added at wall-clock `now_millis` after `last`: the current
    /// millisecond with sequence 0, or `last`'s millisecond with the next sequence when the clock
    /// has not moved on (or went backwards), so ids strictly increase as in Redis.
    fn next_after(last: Self, now_millis: u64) -> Option<Self> {
        if now_millis > last.millis {
            return Some(Self {
                millis: now_millis,
                seq: 0,
            });
        }
        match last.seq.checked_add(1) {
            Some(seq) => Some(Self {
                millis: last.millis,
                seq,
            }),
            None => Some(Self {
                millis: last.millis.checked_add(1)?,
                seq: 0,
            }),
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.millis, self.seq)
    }
}

impl MemoryStream {
    /// Creates a broker with no streams.
    pub fn new() -> Self {
        Self::default()
    }

    /// Deletes a consumer group with its pending-entries list, as Redis `XGROUP DESTROY` does;
    /// returns whether it existed. Readers blocked on the group wake up with
    /// [`TransportError::NoGroup`]. Meant for tests of group loss.
    pub fn destroy_group(&self, stream: &str, group: &str) -> bool {
        let removed = self
            .shared
            .streams
            .lock()
            .get_mut(stream)
            .and_then(|s| s.groups.remove(group))
            .is_some();
        self.shared.changed.notify_all();
        removed
    }
}

impl fmt::Debug for MemoryStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No lock here: a Debug call must never wait on, or deadlock with, a publisher.
        f.debug_struct("MemoryStream").finish_non_exhaustive()
    }
}

impl Group {
    /// Hands the next `count` never-delivered entries to `consumer` and records them as pending.
    fn deliver(
        &mut self,
        entries: &BTreeMap<EntryId, Fields>,
        consumer: &str,
        count: usize,
        now: Instant,
    ) -> Vec<StreamEntry> {
        let mut delivered = Vec::new();
        for (id, fields) in entries
            .range((Excluded(self.last_delivered), Unbounded))
            .take(count)
        {
            self.pending.insert(
                *id,
                Pending {
                    consumer: consumer.to_owned(),
                    delivered_at: now,
                    deliveries: 1,
                },
            );
            self.last_delivered = *id;
            delivered.push(StreamEntry {
                id: id.to_string(),
                fields: raw_fields(fields),
            });
        }
        delivered
    }
}

/// Fields as a delivered entry holds them: names as bytes, as Redis delivers them.
fn raw_fields(fields: &Fields) -> Vec<(Vec<u8>, Vec<u8>)> {
    fields
        .iter()
        .map(|(name, value)| (name.clone().into_bytes(), value.clone()))
        .collect()
}

fn no_group(stream: &str, group: &str) -> TransportError {
    TransportError::NoGroup {
        stream: stream.to_owned(),
        group: group.to_owned(),
    }
}

fn parse_id(text: &str) -> Result<EntryId, TransportError> {
    EntryId::parse(text).ok_or_else(|| {
        TransportError::Broker(
            format!("invalid stream entry id {text:?}; expected <millis>-<seq>").into(),
        )
    })
}

fn now_millis() -> u64 {
    // A clock before 1970 only makes ids fall back to the last id's millisecond.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

impl Transport for MemoryStream {
    fn create_group(&self, stream: &str, group: &str, after: &str) -> Result<(), TransportError> {
        let after = parse_id(after)?;
        self.shared
            .streams
            .lock()
            .entry(stream.to_owned())
            .or_default()
            .groups
            .entry(group.to_owned())
            .or_insert_with(|| Group {
                last_delivered: after,
                pending: BTreeMap::new(),
            });
        Ok(())
    }

    fn read_group(&self, request: &ReadRequest<'_>) -> Result<Vec<StreamEntry>, TransportError> {
        // Redis reads COUNT 0 as "no limit"; both transports read it as 1, the harmless choice.
        let count = request.count.max(1);
        // `None` only for a block so long that it overflows: wait without a deadline.
        let deadline = Instant::now().checked_add(request.block);
        let mut streams = self.shared.streams.lock();
        loop {
            let Stream {
                entries, groups, ..
            } = streams
                .get_mut(request.stream)
                .ok_or_else(|| no_group(request.stream, request.group))?;
            let group = groups
                .get_mut(request.group)
                .ok_or_else(|| no_group(request.stream, request.group))?;
            let delivered = group.deliver(entries, request.consumer, count, Instant::now());
            if !delivered.is_empty() {
                return Ok(delivered);
            }
            match deadline {
                Some(deadline) if Instant::now() >= deadline => return Ok(Vec::new()),
                Some(deadline) => {
                    self.shared.changed.wait_until(&mut streams, deadline);
                }
                None => self.shared.changed.wait(&mut streams),
            }
        }
    }

    fn ack(&self, stream: &str, group: &str, ids: &[String]) -> Result<u64, TransportError> {
        let ids = ids
            .iter()
            .map(|id| parse_id(id))
            .collect::<Result<Vec<_>, _>>()?;
        let mut streams = self.shared.streams.lock();
        // Like Redis XACK, a missing stream or group acknowledges nothing rather than failing.
        let Some(group) = streams
            .get_mut(stream)
            .and_then(|s| s.groups.get_mut(group))
        else {
            return Ok(0);
        };
        let acked = ids
            .iter()
            .filter(|id| group.pending.remove(id).is_some())
            .count();
        Ok(acked as u64)
    }

    fn reclaim_stale(&self, request: &ReclaimRequest<'_>) -> Result<Reclaimed, TransportError> {
        let count = request.count.max(1);
        let cursor = parse_id(request.cursor)?;
        let mut streams = self.shared.streams.lock();
        let Stream {
            entries, groups, ..
        } = streams
            .get_mut(request.stream)
            .ok_or_else(|| no_group(request.stream, request.group))?;
        let group = groups
            .get_mut(request.group)
            .ok_or_else(|| no_group(request.stream, request.group))?;

        let now = Instant::now();
        let mut reclaimed = Reclaimed::default();
        let mut budget = count;
        let mut attempts = count.saturating_mul(RECLAIM_SCAN_FACTOR);
        let mut next = group.pending.range(cursor..).next().map(|(id, _)| *id);
        while let Some(id) = next {
            if budget == 0 || attempts == 0 {
                break;
            }
            attempts -= 1;
            if let Some(fields) = entries.get(&id) {
                if let Some(pending) = group
                    .pending
                    .get_mut(&id)
                    .filter(|p| now.saturating_duration_since(p.delivered_at) >= request.min_idle)
                {
                    tracing::debug!(
                        entry = %id,
                        from = %pending.consumer,
                        to = request.consumer,
                        deliveries = pending.deliveries + 1,
                        "memory stream: reclaiming stale entry"
                    );
                    pending.consumer = request.consumer.to_owned();
                    pending.delivered_at = now;
                    pending.deliveries += 1;
                    reclaimed.entries.push(StreamEntry {
                        id: id.to_string(),
                        fields: raw_fields(fields),
                    });
                    budget -= 1;
                }
            } else {
                // Redis drops pending records of trimmed entries whatever their idle time, and
                // counts them against COUNT; do the same so cursors advance identically.
                group.pending.remove(&id);
                reclaimed.deleted.push(id.to_string());
                budget -= 1;
            }
            next = group
                .pending
                .range((Excluded(id), Unbounded))
                .next()
                .map(|(id, _)| *id);
        }
        reclaimed.next_cursor = next.unwrap_or_default().to_string();
        Ok(reclaimed)
    }

    fn publish_entries(
        &self,
        entries: &[OutgoingEntry<'_>],
    ) -> Result<Vec<Result<String, TransportError>>, TransportError> {
        let mut results = Vec::with_capacity(entries.len());
        {
            let mut streams = self.shared.streams.lock();
            let now = now_millis();
            for entry in entries {
                if entry.fields.is_empty() {
                    results.push(Err(super::no_fields_error()));
                    continue;
                }
                let target = streams.entry(entry.stream.to_owned()).or_default();
                let Some(id) = EntryId::next_after(target.last_id, now) else {
                    results.push(Err(TransportError::Broker(
                        format!("stream {:?} has used up its id space", entry.stream).into(),
                    )));
                    continue;
                };
                target.last_id = id;
                target.entries.insert(id, entry.fields.to_vec());
                results.push(Ok(id.to_string()));
            }
        }
        self.shared.changed.notify_all();
        Ok(results)
    }

    fn trim(&self, stream: &str, max_len: usize) -> Result<u64, TransportError> {
        let mut streams = self.shared.streams.lock();
        let Some(target) = streams.get_mut(stream) else {
            return Ok(0);
        };
        // Pending records of trimmed entries stay, as in Redis; reclaim reports them as deleted.
        let mut removed = 0;
        while target.entries.len() > max_len {
            target.entries.pop_first();
            removed += 1;
        }
        Ok(removed)
    }

    fn trim_consumed(&self, stream: &str, before: &str) -> Result<u64, TransportError> {
        let before = parse_id(before)?;
        let mut streams = self.shared.streams.lock();
        let Some(target) = streams.get_mut(stream) else {
            return Ok(0);
        };
        if target.groups.is_empty() {
            return Ok(0);
        }
        // The first entry some group still needs: its oldest unacknowledged one, or the one
        // after the last it was given.
        let needed = target
            .groups
            .values()
            .map(|group| match group.pending.keys().next() {
                Some(oldest_pending) => *oldest_pending,
                None => EntryId {
                    millis: group.last_delivered.millis,
                    seq: group.last_delivered.seq.saturating_add(1),
                },
            })
            .min()
            .unwrap_or(before);
        let floor = needed.min(before);
        let keep = target.entries.split_off(&floor);
        let removed = target.entries.len() as u64;
        target.entries = keep;
        Ok(removed)
    }

    fn oldest_pending_before(
        &self,
        stream: &str,
        group: &str,
        before: &str,
    ) -> Result<Option<PendingEntry>, TransportError> {
        let before = parse_id(before)?;
        let streams = self.shared.streams.lock();
        let found = streams
            .get(stream)
            .and_then(|s| s.groups.get(group))
            .ok_or_else(|| no_group(stream, group))?;
        Ok(found
            .pending
            .range(..before)
            .next()
            .map(|(id, pending)| PendingEntry {
                id: id.to_string(),
                consumer: pending.consumer.clone(),
                idle: pending.delivered_at.elapsed(),
            }))
    }

    fn group_stats(&self, stream: &str, group: &str) -> Result<GroupStats, TransportError> {
        let streams = self.shared.streams.lock();
        let target = streams.get(stream).ok_or_else(|| no_group(stream, group))?;
        let found = target
            .groups
            .get(group)
            .ok_or_else(|| no_group(stream, group))?;
        let lag = target
            .entries
            .range((Excluded(found.last_delivered), Unbounded))
            .count();
        Ok(GroupStats {
            pending: found.pending.len() as u64,
            lag: Some(lag as u64),
        })
    }

    fn stream_exists(&self, stream: &str) -> Result<Option<bool>, TransportError> {
        Ok(Some(self.shared.streams.lock().contains_key(stream)))
    }

    fn find_entries(
        &self,
        stream: &str,
        ids: &[String],
    ) -> Result<Option<FoundEntries>, TransportError> {
        let wanted = ids
            .iter()
            .map(|id| {
                EntryId::parse(id).ok_or_else(|| {
                    TransportError::Broker(format!("{id:?} is not a stream entry id").into())
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let streams = self.shared.streams.lock();
        let Some(found) = streams.get(stream) else {
            return Ok(Some(FoundEntries {
                oldest: None,
                present: vec![false; ids.len()],
            }));
        };
        Ok(Some(FoundEntries {
            oldest: found.entries.keys().next().map(ToString::to_string),
            present: wanted
                .iter()
                .map(|id| found.entries.contains_key(id))
                .collect(),
        }))
    }

    /// Answers when the streams' lock can be had within `timeout`: the only way this broker can
    /// fail to answer is a caller holding it.
    fn ping(&self, timeout: Duration) -> Result<(), TransportError> {
        match self.shared.streams.try_lock_for(timeout) {
            Some(_) => Ok(()),
            None => Err(TransportError::Unavailable(
                format!("the in-process stream stayed locked for {timeout:?}").into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn entry_ids_parse_print_and_order_numerically() {
        let id = EntryId::parse("1700000000000-12").unwrap();
        assert_eq!(id.to_string(), "1700000000000-12");
        assert_eq!(EntryId::parse("5").unwrap(), EntryId { millis: 5, seq: 0 });
        assert!(EntryId::parse("9-1").unwrap() < EntryId::parse("10-0").unwrap());
        assert!(EntryId::parse("x-1").is_none());
        assert!(EntryId::parse("1-").is_none());
    }

    #[test]
    fn next_id_strictly_increases_even_when_the_clock_goes_back() {
        let last = EntryId {
            millis: 100,
            seq: 3,
        };
        assert_eq!(
            EntryId::next_after(last, 101),
            Some(EntryId {
                millis: 101,
                seq: 0
            })
        );
        assert_eq!(
            EntryId::next_after(last, 100),
            Some(EntryId {
                millis: 100,
                seq: 4
            })
        );
        assert_eq!(
            EntryId::next_after(last, 50),
            Some(EntryId {
                millis: 100,
                seq: 4
            })
        );
        let full = EntryId {
            millis: 7,
            seq: u64::MAX,
        };
        assert_eq!(
            EntryId::next_after(full, 7),
            Some(EntryId { millis: 8, seq: 0 })
        );
        let exhausted = EntryId {
            millis: u64::MAX,
            seq: u64::MAX,
        };
        assert_eq!(EntryId::next_after(exhausted, 0), None);
    }

    #[test]
    fn destroying_a_group_wakes_a_blocked_reader_with_no_group() {
        let broker = MemoryStream::new();
        broker.ensure_group("s", "g").unwrap();
        let reader = {
            let broker = broker.clone();
            std::thread::spawn(move || {
                broker.read_group(&ReadRequest {
                    stream: "s",
                    group: "g",
                    consumer: "c",
                    count: 1,
                    block: Duration::from_secs(10),
                })
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(broker.destroy_group("s", "g"));
        let started = Instant::now();
        let result = reader.join().unwrap();
        assert!(
            matches!(result, Err(TransportError::NoGroup { .. })),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!broker.destroy_group("s", "g"));
    }
}
