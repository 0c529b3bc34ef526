//! Partitioned streams: one logical stream split over N streams, so that it can grow past one
//! Redis Cluster master while each aggregate's events stay in order.
//!
//! Partition `i` of the logical stream `orders` is the stream `orders:{<tag>}`, where the tag is
//! `i` followed by one or two letters ([`partition_stream`]: `orders:{0a}`, `orders:{1a}`,
//! `orders:{2a}`, `orders:{3m}`, ...). The braces make the tag the key's *hash tag*: Redis
//! Cluster places the key by the tag alone, so each partition lives in one slot, and the
//! letters are chosen so that the partitions spread over the masters. Plain numbers would not:
//! `{0}`, `{1}` and `{2}` hash to slots 13907, 9842 and 5649, so on three masters splitting the
//! 16,384 slots evenly (as `redis-cli --cluster create` does) two of them would share a master
//! and the third master would hold none. With the tags below, for every N up to the length of
//! the table, the first N partitions fall in N different ranges when the slots are cut into N
//! even ranges; so N partitions on M evenly split masters, M dividing N, put exactly N / M on
//! each (3 on 3 masters: one each; 6 on 3: two each; 4 on 2: two each). Beyond the table the
//! tag is the number and `a`, spread only as the hash falls. A cluster whose slots are not
//! split evenly spreads them as its slots lie; move slots (`redis-cli --cluster reshard`) to
//! even out.
//!
//! The relay sends an event to partition [`partition_of`] its `aggregate_id`: the 64-bit
//! FNV-1a hash of the UUID's 16 bytes (in RFC 9562 order, as [`Uuid::as_bytes`] gives them),
//! modulo N. This is fixed: it does not change between versions or platforms (it is not
//! `std`'s `DefaultHasher`), so every relay process, old or new, and any other producer that
//! writes it down sends an aggregate to the same partition. Every event has an aggregate (the
//! field is required); events that belong to no real entity should carry a fresh random UUID,
//! which spreads them over the partitions, rather than one fixed UUID, which sends them all to
//! one partition.
//!
//! On a single Redis, or the in-process [`MemoryStream`](super::MemoryStream), partitions are
//! plain streams with these names.

use std::borrow::Cow;
use std::collections::HashMap;
use uuid::Uuid;

/// The most partitions a logical stream may have: each partition is read by its own reader
/// threads (each holding a blocking Redis connection), so more than this is a mistake rather
/// than a plan.
pub const MAX_PARTITIONS: u32 = 1024;

/// The hash tags of the first partitions, by partition number: each the number and the first
/// letters (in the order `a`..`z`, then `aa`..`zz`) that a search found to give every prefix of
/// the table the spreading property the [module docs](self) state; checked by a unit test.
const TAGS: [&str; 8] = ["0a", "1a", "2a", "3m", "4g", "5c", "6d", "7d"];

/// The stream that holds partition `partition` of the logical stream `stream`:
/// `orders:{0a}` for partition 0 of `orders`.
pub fn partition_stream(stream: &str, partition: u32) -> String {
    match TAGS.get(partition as usize) {
        Some(tag) => format!("{stream}:{{{tag}}}"),
        None => format!("{stream}:{{{partition}a}}"),
    }
}

/// The streams of every partition of `stream`, in partition order.
pub fn partition_streams(stream: &str, partitions: u32) -> Vec<String> {
    (0..partitions)
        .map(|partition| partition_stream(stream, partition))
        .collect()
}

/// The partition (`0..partitions`) that holds the events of `aggregate_id`: the 64-bit FNV-1a
/// hash of its 16 bytes, modulo `partitions`. `partitions` of 0 counts as 1.
pub fn partition_of(aggregate_id: &Uuid, partitions: u32) -> u32 {
    let hash = fnv1a_64(aggregate_id.as_bytes());
    (hash % u64::from(partitions.max(1))) as u32
}

/// 64-bit FNV-1a: small, fixed and specified (the offset basis and prime below), so other
/// producers can compute the same partition.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

/// Why a partition count is refused, for the builders' errors; `None` when it is accepted.
pub(crate) fn invalid_partition_count(stream: &str, partitions: u32) -> Option<String> {
    if stream.trim().is_empty() {
        return Some("the logical stream's name must not be empty".to_string());
    }
    if !(1..=MAX_PARTITIONS).contains(&partitions) {
        return Some(format!(
            "{stream:?} has {partitions} partitions; give between 1 and {MAX_PARTITIONS}"
        ));
    }
    None
}

/// The logical streams a relay splits, and into how many partitions each.
#[derive(Debug, Clone, Default)]
pub(crate) struct Partitioning {
    partitions: HashMap<String, u32>,
}

impl Partitioning {
    /// Splits `stream` into `partitions`, replacing an earlier count for it.
    pub(crate) fn insert(&mut self, stream: String, partitions: u32) {
        self.partitions.insert(stream, partitions);
    }

    /// The stream an event enqueued for `stream` goes to: its aggregate's partition when
    /// `stream` is split, else `stream` itself.
    pub(crate) fn stream_for<'a>(&self, stream: &'a str, aggregate_id: &Uuid) -> Cow<'a, str> {
        match self.partitions.get(stream) {
            Some(&partitions) => Cow::Owned(partition_stream(
                stream,
                partition_of(aggregate_id, partitions),
            )),
            None => Cow::Borrowed(stream),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Redis Cluster's key slot of a hash tag: CRC16 (XMODEM) modulo 16,384.
    fn slot(tag: &str) -> u16 {
        let crc = tag.bytes().fold(0u16, |crc, byte| {
            (0..8).fold(crc ^ (u16::from(byte) << 8), |crc, _| {
                if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                }
            })
        });
        crc % 16_384
    }

    /// Which of `ranges` even slot ranges holds `slot`, with the boundaries `redis-cli
    /// --cluster create` draws for that many masters.
    fn range_of(slot: u16, ranges: usize) -> usize {
        let per_range = 16_384.0 / ranges as f64;
        let mut first = 0u16;
        for range in 0..ranges {
            let last = if range == ranges - 1 {
                16_383
            } else {
                (per_range * range as f64 + per_range - 1.0).round() as u16
            };
            if (first..=last).contains(&slot) {
                return range;
            }
            first = last + 1;
        }
        unreachable!("slot {slot} is below 16,384")
    }

    fn tag_of(stream: &str) -> &str {
        stream
            .split_once('{')
            .and_then(|(_, rest)| rest.strip_suffix('}'))
            .unwrap()
    }

    #[test]
    fn the_slot_function_is_redis_clusters() {
        // CLUSTER KEYSLOT answers for these, and the Redis Cluster specification's example.
        assert_eq!(slot("0"), 13_907);
        assert_eq!(slot("1"), 9_842);
        assert_eq!(slot("2"), 5_649);
        // The CRC16 (XMODEM) check value, below 16,384.
        assert_eq!(slot("123456789"), 0x31c3);
    }

    #[test]
    fn the_first_n_partitions_fall_in_n_different_even_ranges() {
        for n in 1..=TAGS.len() {
            let mut taken = vec![false; n];
            for partition in 0..n {
                let stream = partition_stream("orders", partition as u32);
                let range = range_of(slot(tag_of(&stream)), n);
                assert!(!taken[range], "{n} partitions: two in range {range}");
                taken[range] = true;
            }
        }
        // So three partitions on three evenly split masters land one on each.
        let masters: Vec<usize> = partition_streams("orders", 3)
            .iter()
            .map(|stream| range_of(slot(tag_of(stream)), 3))
            .collect();
        assert_eq!(masters.len(), 3);
        assert!(masters.contains(&0) && masters.contains(&1) && masters.contains(&2));
    }

    #[test]
    fn partition_names_are_fixed() {
        assert_eq!(partition_stream("orders", 0), "orders:{0a}");
        assert_eq!(partition_stream("orders", 2), "orders:{2a}");
        assert_eq!(
            partition_streams("o", 3),
            vec!["o:{0a}".to_string(), "o:{1a}".into(), "o:{2a}".into()]
        );
        assert_eq!(partition_stream("orders", 500), "orders:{500a}");
        // Every name differs, within and beyond the table.
        let names: std::collections::HashSet<String> = partition_streams("orders", MAX_PARTITIONS)
            .into_iter()
            .collect();
        assert_eq!(names.len(), MAX_PARTITIONS as usize);
    }

    #[test]
    fn the_hash_is_fnv1a_64_of_the_uuid_bytes() {
        // Computed independently (Python: the FNV-1a loop over uuid.UUID(..).bytes).
        let cases = [
            (
                "00000000-0000-0000-0000-000000000000",
                0x8820_1fb9_60ff_6465,
            ),
            (
                "7c8f0a6a-7b7c-4c74-9cfb-2e2e2b9b1d33",
                0x86a6_e285_2e9f_4f44,
            ),
            (
                "123e4567-e89b-12d3-a456-426614174000",
                0x7f0c_9ad0_1399_33e0,
            ),
        ];
        for (uuid, hash) in cases {
            let uuid: Uuid = uuid.parse().unwrap();
            assert_eq!(fnv1a_64(uuid.as_bytes()), hash, "{uuid}");
            assert_eq!(partition_of(&uuid, 7), (hash % 7) as u32);
            assert_eq!(partition_of(&uuid, 1), 0);
            assert_eq!(partition_of(&uuid, 0), 0);
        }
        let known: Uuid = "7c8f0a6a-7b7c-4c74-9cfb-2e2e2b9b1d33".parse().unwrap();
        assert_eq!(partition_of(&known, 7), 5);
        assert_eq!(partition_of(&known, 1024), 836);
    }

    #[test]
    fn random_aggregates_spread_over_the_partitions() {
        let mut counts = [0u32; 3];
        for n in 0..3_000u128 {
            // Spread-out ids, the same on every run.
            let aggregate =
                Uuid::from_u128(n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
            counts[partition_of(&aggregate, 3) as usize] += 1;
        }
        // 1,000 expected each; 800 is more than six standard deviations below.
        assert!(counts.iter().all(|&count| count > 800), "{counts:?}");
    }

    #[test]
    fn a_split_stream_sends_each_aggregate_to_its_partition_and_others_stay_whole() {
        let mut split = Partitioning::default();
        split.insert("orders".into(), 3);
        let aggregate = Uuid::new_v4();
        let partition = partition_of(&aggregate, 3);
        assert_eq!(
            split.stream_for("orders", &aggregate),
            partition_stream("orders", partition)
        );
        assert_eq!(split.stream_for("payments", &aggregate), "payments");
    }

    #[test]
    fn counts_outside_one_to_the_maximum_are_refused() {
        assert!(invalid_partition_count("orders", 0).is_some());
        assert!(invalid_partition_count("orders", MAX_PARTITIONS + 1).is_some());
        assert!(invalid_partition_count(" ", 3).is_some());
        assert!(invalid_partition_count("orders", 1).is_none());
        assert!(invalid_partition_count("orders", MAX_PARTITIONS).is_none());
    }
}
