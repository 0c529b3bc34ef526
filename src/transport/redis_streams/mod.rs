//! The production transport: Redis Streams consumer groups over a pool of blocking connections.
//!
//! This module owns `RedisStreams`, its builder and its [`Transport`] impl: which Redis command
//! each method sends and what it makes of the answer. Each method is one Redis command
//! (publishing is one pipeline), sent with raw `redis::cmd` and parsed from [`redis::Value`] by
//! `reply`, so field values stay bytes and nil entries are seen rather than turned into
//! conversion errors. Connections come from an r2d2 pool managed by `connection`; blocking reads
//! hold one for their whole wait, which is why the pool has a size. Reclaiming needs Redis 6.2
//! (`XAUTOCLAIM`); group lag needs Redis 7.
//!
//! On a Redis Cluster (`cluster_url`, `cluster`) each pooled connection is the redis crate's
//! cluster connection: every command here names one stream, so each is routed by that key's
//! slot and the methods need not know which kind of Redis they talk to.

mod cluster;
pub(crate) mod cluster_url;
mod connection;
mod reply;
mod tls;

use crate::redact::ConnectionString;
use crate::tls::TlsSettings;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use reply::fuzz_reply_parsers;

use std::fmt;
use std::time::Duration;

use redis::Value;

use super::parse_entry_id;
use super::{
    FoundEntries, GroupStats, OutgoingEntry, PendingEntry, ReadRequest, ReclaimRequest, Reclaimed,
    ReplicaWait, StreamEntry, Transport, TransportError,
};
use connection::{
    command_error, group_error, no_group, ConnectionManager, Target, TraceConnectErrors,
};
use reply::{
    into_string, malformed, parse_autoclaim, parse_count, parse_first_id, parse_group_cursors,
    parse_group_stats, parse_oldest_pending, parse_pending_entry, parse_read_reply, AutoClaimReply,
};

const DEFAULT_POOL_SIZE: u32 = 16;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Redis Streams as an eventflow [`Transport`].
///
/// Cloning is cheap and clones share one connection pool. Creating one does not contact Redis:
/// connections are opened on first use, and a Redis that is down shows up as
/// [`TransportError::Unavailable`] from the calls, which readers retry with back-off.
///
/// ```no_run
/// use std::time::Duration;
/// use eventflow::transport::RedisStreams;
///
/// let redis = RedisStreams::builder("redis://127.0.0.1:6379")
///     .pool_size(32)
///     .io_timeout(Duration::from_secs(5))
///     .build()?;
/// # Ok::<(), eventflow::transport::TransportError>(())
/// ```
#[derive(Clone)]
pub struct RedisStreams {
    pool: r2d2::Pool<ConnectionManager>,
    /// For pings, which use a connection of their own.
    ping_target: PingTarget,
    io_timeout: Duration,
}

/// What a ping opens a connection of its own to.
#[derive(Clone)]
enum PingTarget {
    /// Boxed: a client is ten times the size of the seed list.
    Node(Box<redis::Client>),
    /// The cluster's settings, for a client built with the ping's own timeouts.
    Cluster(cluster::ClusterSettings),
}

/// Settings for [`RedisStreams`]; see [`RedisStreams::builder`]. Every setter says its
/// default.
///
/// ```
/// use eventflow::transport::RedisStreams;
/// use eventflow::InboxConsumer;
/// use std::time::Duration;
///
/// // Connections are made on first use, so this builds while Redis is down.
/// let redis = RedisStreams::builder("redis://127.0.0.1:6379/0")
///     .pool_size(16)
///     .connect_timeout(Duration::from_secs(2))
///     .io_timeout(Duration::from_secs(5))
///     .build()?;
/// let consumer = InboxConsumer::builder()
///     .transport(redis)
///     .sqlite_in_memory()
///     .stream("orders")
///     .group("billing")
///     .handler(|_tx, _row| Ok(()))
///     .build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a builder does nothing until build() is called"]
pub struct RedisStreamsBuilder {
    url: ConnectionString,
    pool_size: u32,
    connect_timeout: Duration,
    io_timeout: Duration,
    tls: TlsSettings,
}

impl RedisStreams {
    /// Starts configuring a transport for the Redis at `url`
    /// (`redis://[user:password@]host[:port][/db]`, or `rediss://` for TLS, which needs the
    /// `tls` feature; see [`crate::tls`]), or for the Redis Cluster whose seed nodes `url` lists
    /// (`redis+cluster://[user:password@]host:port[,host:port...]`).
    ///
    /// On a cluster every command is routed to the master that owns its stream's slot;
    /// `MOVED` and `ASK` redirections are followed and the slot map is read again when
    /// slots move (after a failover or resharding). A call that still finds the cluster
    /// unsettled (`CLUSTERDOWN`, `TRYAGAIN`, a redirection left over after a few retries, a
    /// node that does not answer) fails with [`TransportError::Unavailable`], which readers
    /// and the outbox relay retry with back-off as they do for a single server, and the
    /// connection is dropped so the next one learns the cluster's layout anew.
    /// `rediss+cluster://` is TLS to every node, with [`tls`](RedisStreamsBuilder::tls) and
    /// `#insecure` read as for `rediss://`.
    pub fn builder(url: impl Into<String>) -> RedisStreamsBuilder {
        RedisStreamsBuilder {
            url: ConnectionString::new(url),
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            io_timeout: DEFAULT_IO_TIMEOUT,
            tls: TlsSettings::default(),
        }
    }

    /// A transport for the Redis at `url` with default settings; short for
    /// `RedisStreams::builder(url).build()`. Like `build`, this checks the URL but does not
    /// contact Redis.
    pub fn connect(url: &str) -> Result<Self, TransportError> {
        Self::builder(url).build()
    }

    fn connection(&self) -> Result<r2d2::PooledConnection<ConnectionManager>, TransportError> {
        self.pool
            .get()
            .map_err(|error| TransportError::Unavailable(Box::new(error)))
    }
}

impl fmt::Debug for RedisStreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL is left out on purpose: it may carry a password.
        f.debug_struct("RedisStreams")
            .field("pool_size", &self.pool.max_size())
            .field("io_timeout", &self.io_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStreamsBuilder {
    /// Most connections open at once. Every reader blocked in `read_group` holds one for its
    /// whole wait, so allow one per concurrent reader plus a few for acknowledgements,
    /// reclaiming and publishing. A call that finds every connection busy waits up to
    /// [`connect_timeout`](Self::connect_timeout) for one. Defaults to 16.
    pub fn pool_size(mut self, pool_size: u32) -> Self {
        self.pool_size = pool_size;
        self
    }

    /// How long opening a connection, or waiting for a free pooled one, may take before a call
    /// fails with [`TransportError::Unavailable`]. Defaults to 5 seconds.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one command may wait on the socket before the connection is given up as broken.
    /// A blocking `read_group` waits its `block` time plus this. Defaults to 10 seconds.
    pub fn io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self
    }

    /// TLS settings in code for a `rediss://` URL: a CA file in place of the system's trust
    /// store, a client certificate, verification on or off (off as the URL's `#insecure`).
    /// Refused at `build()` for a `redis://` URL. Defaults to none.
    pub fn tls(mut self, settings: TlsSettings) -> Self {
        self.tls = settings;
        self
    }

    /// Checks the settings and the URL and creates the transport, without contacting Redis.
    ///
    /// Fails with [`TransportError::Broker`] naming the setting when the URL does not parse, the
    /// pool size is zero or a timeout is zero, and holding a [`TlsError`](crate::tls::TlsError)
    /// when TLS cannot be set up (a CA file missing, `rediss://` without the `tls` feature).
    pub fn build(self) -> Result<RedisStreams, TransportError> {
        if self.pool_size == 0 {
            return Err(invalid_setting("pool_size", "must be at least 1".into()));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid_setting(
                "connect_timeout",
                "must be more than zero".into(),
            ));
        }
        if self.io_timeout.is_zero() {
            return Err(invalid_setting(
                "io_timeout",
                "must be more than zero".into(),
            ));
        }
        // The redis crate's parse errors describe the problem without echoing the URL, so no
        // password ends up in an error message or a log.
        let (target, ping_target) = if cluster_url::is_cluster_url(self.url.expose()) {
            let settings = cluster::ClusterSettings::new(self.url.expose(), &self.tls)?;
            let client = settings.client(self.connect_timeout, self.io_timeout)?;
            (Target::Cluster(client), PingTarget::Cluster(settings))
        } else {
            let client = tls::open_client(self.url.expose(), &self.tls)?;
            (
                Target::Node(client.clone()),
                PingTarget::Node(Box::new(client)),
            )
        };
        // A check-out test pings every node of a cluster; a cluster connection instead finds a
        // dead node when a command fails, and is then dropped (see `has_broken`).
        let test_on_check_out = matches!(target, Target::Node(_));
        let manager = ConnectionManager {
            target,
            connect_timeout: self.connect_timeout,
            io_timeout: self.io_timeout,
        };
        let pool = r2d2::Pool::builder()
            .max_size(self.pool_size)
            // Open connections on demand: eager ones would hammer a Redis that is still down
            // and make building depend on it.
            .min_idle(Some(0))
            .test_on_check_out(test_on_check_out)
            .connection_timeout(self.connect_timeout)
            .error_handler(Box::new(TraceConnectErrors))
            .build_unchecked(manager);
        tracing::debug!(
            url = %self.url,
            pool_size = self.pool_size,
            io_timeout = ?self.io_timeout,
            "redis streams transport ready"
        );
        Ok(RedisStreams {
            pool,
            ping_target,
            io_timeout: self.io_timeout,
        })
    }
}

impl fmt::Debug for RedisStreamsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStreamsBuilder")
            .field("url", &self.url)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

/// A setting that `build` refused.
#[derive(Debug)]
struct InvalidSetting {
    field: &'static str,
    problem: String,
}

impl fmt::Display for InvalidSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid RedisStreams setting `{}`: {}",
            self.field, self.problem
        )
    }
}

impl std::error::Error for InvalidSetting {}

fn invalid_setting(field: &'static str, problem: String) -> TransportError {
    TransportError::Broker(Box::new(InvalidSetting { field, problem }))
}

/// Redis reads `BLOCK 0` as "wait forever", so a requested wait is never sent as 0 ms.
/// `<millis>-<seq>` (or `<millis>`, sequence 0) as numbers, so ids compare numerically.
/// Redis says "no such key" for `XINFO` on a stream that does not exist.
fn is_no_such_key(error: &redis::RedisError) -> bool {
    error
        .detail()
        .is_some_and(|detail| detail.contains("no such key"))
}

fn block_millis(block: Duration) -> u64 {
    u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The `XADD` of each entry that has fields, with its stream: entries without fields never reach
/// Redis (the caller answers for them).
fn appended<'a>(
    entries: &'a [OutgoingEntry<'a>],
) -> impl Iterator<Item = (&'a str, redis::Cmd)> + 'a {
    entries
        .iter()
        .filter(|entry| !entry.fields.is_empty())
        .map(|entry| {
            let mut command = redis::cmd("XADD");
            command.arg(entry.stream).arg("*");
            for (name, value) in entry.fields {
                command.arg(name).arg(value.as_slice());
            }
            (entry.stream, command)
        })
}

/// An `XADD` reply as the entry's id or the reason it was not appended.
fn entry_id(reply: Option<redis::RedisResult<Value>>) -> Result<String, TransportError> {
    match reply {
        Some(Ok(reply)) => into_string(reply).ok_or_else(|| malformed("XADD", "entry id")),
        // "Try later" (out of memory, loading, ...) for this entry is an outage, like a failed
        // round trip; anything else refuses the entry.
        Some(Err(error)) => Err(command_error(error)),
        None => Err(malformed("XADD", "number of replies")),
    }
}

impl Transport for RedisStreams {
    fn create_group(&self, stream: &str, group: &str, after: &str) -> Result<(), TransportError> {
        let mut conn = self.connection()?;
        let created = conn.run(|c| {
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(group)
                .arg(after)
                .arg("MKSTREAM")
                .query::<Value>(c)
        });
        match created {
            Ok(_) => {
                tracing::debug!(
                    stream,
                    group,
                    after,
                    "redis streams: created consumer group"
                );
                Ok(())
            }
            Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
            Err(error) => Err(group_error(error, stream, group)),
        }
    }

    fn read_group(&self, request: &ReadRequest<'_>) -> Result<Vec<StreamEntry>, TransportError> {
        let ReadRequest {
            stream,
            group,
            consumer,
            ..
        } = *request;
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            // Redis reads COUNT 0 as "no limit"; one entry is the harmless reading of it.
            .arg(request.count.max(1));
        let blocking = !request.block.is_zero();
        if blocking {
            command.arg("BLOCK").arg(block_millis(request.block));
        }
        command.arg("STREAMS").arg(stream).arg(">");

        let mut conn = self.connection()?;
        if blocking {
            let wait = request.block.saturating_add(self.io_timeout);
            conn.set_read_timeout(wait)
                .map_err(|error| group_error(error, stream, group))?;
        }
        let reply = conn.run(|c| command.query::<Value>(c));
        if blocking && !conn.is_broken() {
            // A connection left with the long timeout would let a later stuck command hang for
            // the whole block time; if the reset fails, it is marked broken and dropped.
            let _ = conn.set_read_timeout(self.io_timeout);
        }
        let reply = reply.map_err(|error| group_error(error, stream, group))?;
        parse_read_reply(reply)
    }

    fn ack(&self, stream: &str, group: &str, ids: &[String]) -> Result<u64, TransportError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut conn = self.connection()?;
        let reply = conn
            .run(|c| {
                redis::cmd("XACK")
                    .arg(stream)
                    .arg(group)
                    .arg(ids)
                    .query::<Value>(c)
            })
            .map_err(|error| group_error(error, stream, group))?;
        parse_count(reply).ok_or_else(|| malformed("XACK", "count"))
    }

    fn reclaim_stale(&self, request: &ReclaimRequest<'_>) -> Result<Reclaimed, TransportError> {
        let ReclaimRequest {
            stream,
            group,
            consumer,
            ..
        } = *request;
        let mut conn = self.connection()?;
        let reply = conn
            .run(|c| {
                redis::cmd("XAUTOCLAIM")
                    .arg(stream)
                    .arg(group)
                    .arg(consumer)
                    .arg(millis(request.min_idle))
                    .arg(request.cursor)
                    .arg("COUNT")
                    // Redis refuses COUNT 0.
                    .arg(request.count.max(1))
                    .query::<Value>(c)
            })
            .map_err(|error| group_error(error, stream, group))?;
        let AutoClaimReply {
            mut reclaimed,
            vanished,
        } = parse_autoclaim(reply)?;
        if !vanished.is_empty() {
            // Redis 6.2 claims pending ids of trimmed entries (with nil fields) instead of
            // dropping them as Redis 7 does; acknowledge them so they leave the pending list too.
            conn.run(|c| {
                redis::cmd("XACK")
                    .arg(stream)
                    .arg(group)
                    .arg(&vanished)
                    .query::<Value>(c)
            })
            .map_err(|error| group_error(error, stream, group))?;
            reclaimed.deleted.extend(vanished);
        }
        if !reclaimed.entries.is_empty() || !reclaimed.deleted.is_empty() {
            tracing::debug!(
                stream,
                group,
                consumer,
                reclaimed = reclaimed.entries.len(),
                deleted = reclaimed.deleted.len(),
                "redis streams: reclaimed stale entries"
            );
        }
        Ok(reclaimed)
    }

    fn publish_entries(
        &self,
        entries: &[OutgoingEntry<'_>],
    ) -> Result<Vec<Result<String, TransportError>>, TransportError> {
        // Entries without fields never reach Redis; the rest go out as one pipeline whose
        // per-command errors come back one by one instead of failing the whole round trip (on
        // a cluster, one pipeline per node that owns one of the streams).
        let commands: Vec<redis::Cmd> = appended(entries).map(|(_, command)| command).collect();
        let sent = commands.len();
        let replies = if sent == 0 {
            Vec::new()
        } else {
            let mut conn = self.connection()?;
            conn.pipeline(commands).map_err(command_error)?
        };
        if replies.len() != sent {
            return Err(malformed("XADD", "number of replies"));
        }
        let mut replies = replies.into_iter();
        Ok(entries
            .iter()
            .map(|entry| {
                if entry.fields.is_empty() {
                    return Err(super::no_fields_error());
                }
                entry_id(replies.next())
            })
            .collect())
    }

    /// The entries' pipeline with `WAIT` after it, on the socket that carried the writes (see
    /// `Connection::pipeline_and_wait`). The socket's read timeout is raised by the wait's
    /// timeout meanwhile, as a blocking read raises it by its block time.
    fn publish_entries_replicated(
        &self,
        entries: &[OutgoingEntry<'_>],
        wait: ReplicaWait,
    ) -> Result<Vec<Result<String, TransportError>>, TransportError> {
        let commands: Vec<(&str, redis::Cmd)> = appended(entries).collect();
        let sent = commands.len();
        let replies = if sent == 0 {
            Vec::new()
        } else {
            let mut wait_command = redis::cmd("WAIT");
            // `WAIT n 0` would block for ever.
            wait_command
                .arg(wait.replicas)
                .arg(millis(wait.timeout).max(1));
            let mut conn = self.connection()?;
            conn.set_read_timeout(wait.timeout.saturating_add(self.io_timeout))
                .map_err(command_error)?;
            let replies = conn.pipeline_and_wait(commands, &wait_command);
            if !conn.is_broken() {
                // As in `read_group`: a failed reset marks the connection broken.
                let _ = conn.set_read_timeout(self.io_timeout);
            }
            replies.map_err(command_error)?
        };
        if replies.len() != sent {
            return Err(malformed("XADD", "number of replies"));
        }
        let mut replies = replies.into_iter();
        Ok(entries
            .iter()
            .map(|entry| {
                if entry.fields.is_empty() {
                    return Err(super::no_fields_error());
                }
                let (reply, waited) = replies
                    .next()
                    .ok_or_else(|| malformed("XADD", "number of replies"))?;
                let id = entry_id(Some(reply))?;
                match waited {
                    Ok(count) => {
                        let acknowledged =
                            parse_count(count).ok_or_else(|| malformed("WAIT", "count"))?;
                        let acknowledged = u32::try_from(acknowledged).unwrap_or(u32::MAX);
                        if acknowledged >= wait.replicas {
                            Ok(id)
                        } else {
                            Err(TransportError::NotReplicated {
                                wanted: wait.replicas,
                                acknowledged,
                            })
                        }
                    }
                    // Appended, but whether it reached a replica is unknown (the master went
                    // away, or is no longer a master): not this entry's fault, so an outage.
                    Err(error) => Err(TransportError::Unavailable(Box::new(error))),
                }
            })
            .collect())
    }

    fn trim(&self, stream: &str, max_len: usize) -> Result<u64, TransportError> {
        let mut conn = self.connection()?;
        let reply = conn
            .run(|c| {
                redis::cmd("XTRIM")
                    .arg(stream)
                    // Exact, not `~`: callers and tests rely on the stream length afterwards.
                    .arg("MAXLEN")
                    .arg(max_len)
                    .query::<Value>(c)
            })
            .map_err(command_error)?;
        parse_count(reply).ok_or_else(|| malformed("XTRIM", "count"))
    }

    fn trim_consumed(&self, stream: &str, before: &str) -> Result<u64, TransportError> {
        let mut floor = parse_entry_id(before).ok_or_else(|| {
            TransportError::Broker(format!("{before:?} is not a stream entry id").into())
        })?;
        let mut conn = self.connection()?;
        let groups = conn.run(|c| {
            redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(stream)
                .query::<Value>(c)
        });
        let groups = match groups {
            Ok(reply) => parse_group_cursors(reply)?,
            Err(error) if error.code() == Some("ERR") && is_no_such_key(&error) => return Ok(0),
            Err(error) => return Err(command_error(error)),
        };
        if groups.is_empty() {
            return Ok(0);
        }
        for group in groups {
            // The first entry this group still needs: its oldest unacknowledged one, or the one
            // after the last it was given.
            let needed = if group.pending > 0 {
                let reply = conn
                    .run(|c| {
                        redis::cmd("XPENDING")
                            .arg(stream)
                            .arg(&group.name)
                            .query::<Value>(c)
                    })
                    .map_err(command_error)?;
                parse_oldest_pending(reply)?.and_then(|id| parse_entry_id(&id))
            } else {
                parse_entry_id(&group.last_delivered)
                    .map(|(millis, seq)| (millis, seq.saturating_add(1)))
            };
            let needed = needed.ok_or_else(|| malformed("XINFO GROUPS", "entry id"))?;
            floor = floor.min(needed);
        }
        let reply = conn
            .run(|c| {
                redis::cmd("XTRIM")
                    .arg(stream)
                    .arg("MINID")
                    .arg(format!("{}-{}", floor.0, floor.1))
                    .query::<Value>(c)
            })
            .map_err(command_error)?;
        parse_count(reply).ok_or_else(|| malformed("XTRIM", "count"))
    }

    fn group_stats(&self, stream: &str, group: &str) -> Result<GroupStats, TransportError> {
        let mut conn = self.connection()?;
        let reply = conn.run(|c| {
            redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(stream)
                .query::<Value>(c)
        });
        let reply = match reply {
            Ok(reply) => reply,
            // A missing stream has no groups either.
            Err(error) if error.code() == Some("ERR") && is_no_such_key(&error) => {
                return Err(no_group(stream, group));
            }
            Err(error) => return Err(group_error(error, stream, group)),
        };
        parse_group_stats(reply, group)?.ok_or_else(|| no_group(stream, group))
    }

    fn stream_exists(&self, stream: &str) -> Result<Option<bool>, TransportError> {
        let mut conn = self.connection()?;
        let reply = conn
            .run(|c| redis::cmd("EXISTS").arg(stream).query::<Value>(c))
            .map_err(command_error)?;
        parse_count(reply)
            .map(|count| Some(count > 0))
            .ok_or_else(|| malformed("EXISTS", "count"))
    }

    /// `XRANGE <stream> - + COUNT 1` for the oldest entry, then `XRANGE <stream> <id> <id>` for
    /// each id, in one pipeline (one stream: one node on a cluster).
    fn find_entries(
        &self,
        stream: &str,
        ids: &[String],
    ) -> Result<Option<FoundEntries>, TransportError> {
        let mut commands = vec![{
            let mut oldest = redis::cmd("XRANGE");
            oldest.arg(stream).arg("-").arg("+").arg("COUNT").arg(1);
            oldest
        }];
        commands.extend(ids.iter().map(|id| {
            let mut command = redis::cmd("XRANGE");
            command.arg(stream).arg(id).arg(id);
            command
        }));
        let sent = commands.len();
        let mut conn = self.connection()?;
        let replies = conn.pipeline(commands).map_err(command_error)?;
        if replies.len() != sent {
            return Err(malformed("XRANGE", "number of replies"));
        }
        let mut replies = replies
            .into_iter()
            .map(|reply| reply.map_err(command_error).and_then(parse_first_id));
        let oldest = replies
            .next()
            .ok_or_else(|| malformed("XRANGE", "number of replies"))??;
        let present = replies
            .map(|found| found.map(|found| found.is_some()))
            .collect::<Result<_, _>>()?;
        Ok(Some(FoundEntries { oldest, present }))
    }

    fn oldest_pending_before(
        &self,
        stream: &str,
        group: &str,
        before: &str,
    ) -> Result<Option<PendingEntry>, TransportError> {
        let mut conn = self.connection()?;
        let reply = conn
            .run(|c| {
                redis::cmd("XPENDING")
                    .arg(stream)
                    .arg(group)
                    .arg("-")
                    .arg(format!("({before}"))
                    .arg(1)
                    .query::<Value>(c)
            })
            .map_err(|error| group_error(error, stream, group))?;
        parse_pending_entry(reply)
    }

    /// `PING` on a connection of its own, opened within `timeout`, answered within what is left
    /// of it (on a cluster: by every node, each step within `timeout`). Not a pooled one: checking one out runs a validity check bound only by
    /// `io_timeout`, and a new connection also proves that connections can be made.
    fn ping(&self, timeout: Duration) -> Result<(), TransportError> {
        let started = std::time::Instant::now();
        // Zero timeouts mean "none" to the redis crate and the socket: at least a millisecond.
        let at_least = |d: Duration| d.max(Duration::from_millis(1));
        let reply = match &self.ping_target {
            PingTarget::Node(client) => {
                let mut conn = client
                    .get_connection_with_timeout(at_least(timeout))
                    .map_err(command_error)?;
                let left = Some(at_least(timeout.saturating_sub(started.elapsed())));
                conn.set_read_timeout(left).map_err(command_error)?;
                conn.set_write_timeout(left).map_err(command_error)?;
                redis::cmd("PING").query::<Value>(&mut conn)
            }
            // Opening a cluster connection reads the slot map from a seed and connects to
            // every master; the PING then goes to every node and must be answered by all.
            // Each step is bounded by `timeout`, so the whole takes about that long at most.
            PingTarget::Cluster(settings) => {
                let client = settings.client(at_least(timeout), at_least(timeout))?;
                let mut conn = client.get_connection().map_err(command_error)?;
                redis::cmd("PING").query::<Value>(&mut conn)
            }
        };
        match reply.map_err(command_error)? {
            Value::SimpleString(pong) if pong == "PONG" => Ok(()),
            _ => Err(malformed("PING", "PONG")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn a_requested_wait_is_never_sent_as_block_0() {
        assert_eq!(block_millis(Duration::from_micros(10)), 1);
        assert_eq!(block_millis(Duration::from_millis(250)), 250);
        assert_eq!(block_millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn build_names_the_bad_setting_and_keeps_the_password_out() {
        let message = |builder: RedisStreamsBuilder| builder.build().unwrap_err().to_string();
        let url = "redis://user:hunter2@127.0.0.1:6379";
        assert!(message(RedisStreams::builder(url).pool_size(0)).contains("`pool_size`"));
        assert!(
            message(RedisStreams::builder(url).io_timeout(Duration::ZERO)).contains("`io_timeout`")
        );
        assert!(
            message(RedisStreams::builder(url).connect_timeout(Duration::ZERO))
                .contains("`connect_timeout`")
        );
        let bad_url = message(RedisStreams::builder("http://user:hunter2@host"));
        assert!(bad_url.contains("`url`"), "{bad_url}");
        assert!(!bad_url.contains("hunter2"), "{bad_url}");
        let built = RedisStreams::builder(url).build().unwrap();
        assert!(!format!("{built:?}").contains("hunter2"));
        assert!(!format!("{:?}", RedisStreams::builder(url)).contains("hunter2"));
    }

    #[test]
    fn cluster_urls_are_checked_at_build_without_echoing_the_password() {
        let message = |builder: RedisStreamsBuilder| builder.build().unwrap_err().to_string();
        for (url, expected) in [
            ("redis+cluster://:hunter2@a:7000,,b:7001", "seed nodes"),
            ("redis+cluster://:hunter2@a:7000/1", "only database 0"),
            (
                "redis+cluster://:hunter2@a:notaport",
                "not a Redis Cluster URL",
            ),
        ] {
            let shown = message(RedisStreams::builder(url));
            assert!(shown.contains("`url`"), "{url}: {shown}");
            assert!(shown.contains(expected), "{url}: {shown}");
            assert!(!shown.contains("hunter2"), "{url}: {shown}");
        }
        let with_tls =
            RedisStreams::builder("redis+cluster://a:7000").tls(TlsSettings::new().verify(true));
        assert!(message(with_tls).contains("rediss+cluster://"));
        #[cfg(feature = "tls")]
        {
            let missing_ca = RedisStreams::builder("rediss+cluster://:hunter2@a:7000")
                .tls(TlsSettings::new().ca_file("/nonexistent/ca.pem"));
            let shown = message(missing_ca);
            assert!(shown.contains("/nonexistent/ca.pem"), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(RedisStreams::builder("rediss+cluster://a:7000#insecure")
                .build()
                .is_ok());
        }
        let built = RedisStreams::builder("redis+cluster://:hunter2@a:7000,b:7001")
            .build()
            .unwrap();
        assert!(!format!("{built:?}").contains("hunter2"));
    }

    /// Builds a transport for `url`, where nothing listens, and checks that a command and a
    /// ping both report the broker unavailable.
    fn assert_unavailable(url: &str) {
        let redis = RedisStreams::builder(url)
            .connect_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let result = redis.ensure_group("s", "g");
        assert!(
            matches!(result, Err(TransportError::Unavailable(_))),
            "{result:?}"
        );
        let result = redis.ping(Duration::from_millis(200));
        assert!(
            matches!(result, Err(TransportError::Unavailable(_))),
            "{result:?}"
        );
    }

    #[test]
    fn a_cluster_that_does_not_answer_is_unavailable() {
        assert_unavailable("redis+cluster://127.0.0.1:1,127.0.0.1:2");
    }

    #[test]
    fn build_needs_no_server_and_calls_then_report_unavailable() {
        // Port 1 is reserved (tcpmux) and closed on any machine that runs these tests.
        assert_unavailable("redis://127.0.0.1:1");
    }
}
