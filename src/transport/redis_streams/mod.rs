//! The production transport: Redis Streams consumer groups over a pool of blocking connections.
//!
//! Each [`Transport`] method is one Redis command (publishing is one pipeline), sent with raw
//! `redis::cmd` and parsed from [`redis::Value`] here, so field values stay bytes and nil
//! entries are seen rather than turned into conversion errors. Blocking reads hold a pooled
//! connection for their whole wait, which is why the pool has a size. Reclaiming needs Redis 6.2
//! (`XAUTOCLAIM`); group lag needs Redis 7.

use std::fmt;
use std::time::Duration;

use redis::{ConnectionLike, ErrorKind, RedisError, RedisResult, Value};

use super::{
    GroupStats, ReadRequest, ReclaimRequest, Reclaimed, StreamEntry, Transport, TransportError,
};

const DEFAULT_POOL_SIZE: u32 = 16;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Server error codes that say "not now" rather than "wrong request": a server loading its
/// data, a cluster or replica without a master, a failover in progress. Callers back off on
/// [`TransportError::Unavailable`], which is what these need.
const TRANSIENT_SERVER_CODES: &[&str] = &[
    "LOADING",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "READONLY",
];

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
    io_timeout: Duration,
}

/// Settings for [`RedisStreams`]; see [`RedisStreams::builder`].
#[must_use = "a builder does nothing until build() is called"]
pub struct RedisStreamsBuilder {
    url: String,
    pool_size: u32,
    connect_timeout: Duration,
    io_timeout: Duration,
}

impl RedisStreams {
    /// Starts configuring a transport for the Redis at `url`
    /// (`redis://[user:password@]host[:port][/db]`, or `rediss://` when the redis crate is built
    /// with TLS).
    pub fn builder(url: impl Into<String>) -> RedisStreamsBuilder {
        RedisStreamsBuilder {
            url: url.into(),
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            io_timeout: DEFAULT_IO_TIMEOUT,
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

    /// Checks the settings and the URL and creates the transport, without contacting Redis.
    ///
    /// Fails with [`TransportError::Broker`] naming the setting when the URL does not parse, the
    /// pool size is zero or a timeout is zero.
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
        let client = redis::Client::open(self.url.as_str()).map_err(|error| {
            invalid_setting(
                "url",
                format!("not a Redis URL ({error}); expected redis://host:port/db"),
            )
        })?;
        let manager = ConnectionManager {
            client,
            connect_timeout: self.connect_timeout,
            io_timeout: self.io_timeout,
        };
        let pool = r2d2::Pool::builder()
            .max_size(self.pool_size)
            // Open connections on demand: eager ones would hammer a Redis that is still down
            // and make building depend on it.
            .min_idle(Some(0))
            .connection_timeout(self.connect_timeout)
            .error_handler(Box::new(TraceConnectErrors))
            .build_unchecked(manager);
        tracing::debug!(
            pool_size = self.pool_size,
            io_timeout = ?self.io_timeout,
            "redis streams transport ready"
        );
        Ok(RedisStreams {
            pool,
            io_timeout: self.io_timeout,
        })
    }
}

impl fmt::Debug for RedisStreamsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStreamsBuilder")
            .field("url", &"<redacted>")
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
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

/// Opens connections for the pool with socket timeouts set, and tells it which ones to drop.
struct ConnectionManager {
    client: redis::Client,
    connect_timeout: Duration,
    io_timeout: Duration,
}

/// A pooled connection and whether a failure has made it unusable.
struct Connection {
    inner: redis::Connection,
    /// Set after a failure that was not a server reply. After a timed-out read the reply may
    /// still arrive later and would be taken as the answer to the next command, so such a
    /// connection must never be reused even though the socket looks open.
    broken: bool,
}

impl Connection {
    /// Runs `command`, marking the connection broken when it fails in a way that leaves the
    /// socket in an unknown state.
    fn run<R>(
        &mut self,
        command: impl FnOnce(&mut redis::Connection) -> RedisResult<R>,
    ) -> RedisResult<R> {
        let result = command(&mut self.inner);
        if let Err(error) = &result {
            if is_unavailable(error) {
                self.broken = true;
            }
        }
        result
    }
}

impl r2d2::ManageConnection for ConnectionManager {
    type Connection = Connection;
    type Error = RedisError;

    fn connect(&self) -> Result<Connection, RedisError> {
        let inner = self
            .client
            .get_connection_with_timeout(self.connect_timeout)?;
        inner.set_read_timeout(Some(self.io_timeout))?;
        inner.set_write_timeout(Some(self.io_timeout))?;
        tracing::debug!("redis streams: opened a connection");
        Ok(Connection {
            inner,
            broken: false,
        })
    }

    fn is_valid(&self, conn: &mut Connection) -> Result<(), RedisError> {
        match conn.run(|c| redis::cmd("PING").query::<Value>(c))? {
            Value::SimpleString(pong) if pong == "PONG" => Ok(()),
            other => Err(RedisError::from((
                ErrorKind::UnexpectedReturnType,
                "PING did not answer PONG",
                format!("{other:?}"),
            ))),
        }
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        let broken = conn.broken || !conn.inner.is_open();
        if broken {
            tracing::debug!("redis streams: discarding a broken connection");
        }
        broken
    }
}

/// Sends the pool's connection failures to `tracing` instead of the `log` crate.
#[derive(Debug)]
struct TraceConnectErrors;

impl r2d2::HandleError<RedisError> for TraceConnectErrors {
    fn handle_error(&self, error: RedisError) {
        tracing::debug!(%error, "redis streams: cannot open a connection");
    }
}

/// Whether a failure means the connection or the server is not usable right now, rather than
/// that the server refused this request.
fn is_unavailable(error: &RedisError) -> bool {
    let server_reply = matches!(error.kind(), ErrorKind::Server(_) | ErrorKind::Extension);
    !server_reply
        || error
            .code()
            .is_some_and(|code| TRANSIENT_SERVER_CODES.contains(&code))
}

/// Maps a failed command to the transport's error.
fn command_error(error: RedisError) -> TransportError {
    if is_unavailable(&error) {
        TransportError::Unavailable(Box::new(error))
    } else {
        TransportError::Broker(Box::new(error))
    }
}

/// Maps a failed command on a consumer group, telling a missing group apart.
fn group_error(error: RedisError, stream: &str, group: &str) -> TransportError {
    if error.code() == Some("NOGROUP") {
        no_group(stream, group)
    } else {
        command_error(error)
    }
}

fn no_group(stream: &str, group: &str) -> TransportError {
    TransportError::NoGroup {
        stream: stream.to_owned(),
        group: group.to_owned(),
    }
}

/// A reply this module does not understand; `part` says which piece was off.
fn malformed(command: &str, part: &str) -> TransportError {
    TransportError::Broker(format!("unexpected {command} reply: bad {part}").into())
}

/// Redis reads `BLOCK 0` as "wait forever", so a requested wait is never sent as 0 ms.
fn block_millis(block: Duration) -> u64 {
    u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Transport for RedisStreams {
    fn ensure_group(&self, stream: &str, group: &str) -> Result<(), TransportError> {
        let mut conn = self.connection()?;
        let created = conn.run(|c| {
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(group)
                .arg("0")
                .arg("MKSTREAM")
                .query::<Value>(c)
        });
        match created {
            Ok(_) => {
                tracing::debug!(stream, group, "redis streams: created consumer group");
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
            conn.run(|c| c.set_read_timeout(Some(wait)))
                .map_err(|error| group_error(error, stream, group))?;
        }
        let reply = conn.run(|c| command.query::<Value>(c));
        if blocking && !conn.broken {
            // A connection left with the long timeout would let a later stuck command hang for
            // the whole block time; if the reset fails, `run` marks it broken and it is dropped.
            let _ = conn.run(|c| c.set_read_timeout(Some(self.io_timeout)));
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

    fn publish_batch(
        &self,
        stream: &str,
        entries: &[Vec<(String, Vec<u8>)>],
    ) -> Result<Vec<String>, TransportError> {
        super::refuse_empty_entries(entries)?;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipeline = redis::pipe();
        for fields in entries {
            pipeline.cmd("XADD").arg(stream).arg("*");
            for (name, value) in fields {
                pipeline.arg(name).arg(value.as_slice());
            }
        }
        let mut conn = self.connection()?;
        let replies = conn
            .run(|c| pipeline.query::<Vec<Value>>(c))
            .map_err(command_error)?;
        if replies.len() != entries.len() {
            return Err(malformed("XADD", "number of replies"));
        }
        replies
            .into_iter()
            .map(|reply| into_string(reply).ok_or_else(|| malformed("XADD", "entry id")))
            .collect()
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
            Err(error)
                if error.code() == Some("ERR")
                    && error.detail().is_some_and(|d| d.contains("no such key")) =>
            {
                return Err(no_group(stream, group));
            }
            Err(error) => return Err(group_error(error, stream, group)),
        };
        parse_group_stats(reply, group)?.ok_or_else(|| no_group(stream, group))
    }
}

/// An `XAUTOCLAIM` reply: what to hand back, and ids Redis 6.2 claimed although their entries
/// are gone (they still need acknowledging).
#[derive(Debug, PartialEq)]
struct AutoClaimReply {
    reclaimed: Reclaimed,
    vanished: Vec<String>,
}

fn into_bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        _ => None,
    }
}

fn into_string(value: Value) -> Option<String> {
    String::from_utf8(into_bytes(value)?).ok()
}

fn into_items(value: Value) -> Option<Vec<Value>> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

/// Key-value pairs from a RESP3 map or a RESP2 flat array of alternating keys and values.
fn into_pairs(value: Value) -> Option<Vec<(Value, Value)>> {
    match value {
        Value::Map(pairs) => Some(pairs),
        Value::Array(items) if items.len() % 2 == 0 => {
            let mut pairs = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(key), Some(value)) = (items.next(), items.next()) {
                pairs.push((key, value));
            }
            Some(pairs)
        }
        _ => None,
    }
}

fn parse_count(value: Value) -> Option<u64> {
    match value {
        Value::Int(count) => u64::try_from(count).ok(),
        other => into_string(other)?.parse().ok(),
    }
}

/// One entry of a reply listing entries.
enum ParsedEntry {
    /// An entry with its fields.
    Present(StreamEntry),
    /// A pending id whose entry is gone: Redis sends nil fields.
    Deleted(String),
}

/// One `[id, [field, value, ...]]` entry, or `[id, nil]` for an entry that was deleted.
fn parse_entry(value: Value, command: &str) -> Result<ParsedEntry, TransportError> {
    let mut parts = into_items(value)
        .filter(|parts| parts.len() == 2)
        .ok_or_else(|| malformed(command, "entry"))?
        .into_iter();
    let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
        return Err(malformed(command, "entry"));
    };
    let id = into_string(id).ok_or_else(|| malformed(command, "entry id"))?;
    if fields == Value::Nil {
        return Ok(ParsedEntry::Deleted(id));
    }
    let fields = into_pairs(fields)
        .ok_or_else(|| malformed(command, "entry fields"))?
        .into_iter()
        .map(|(name, value)| {
            let name = into_bytes(name).ok_or_else(|| malformed(command, "field name"))?;
            let value = into_bytes(value).ok_or_else(|| malformed(command, "field value"))?;
            // Field names are ours and ASCII; values stay bytes so bad payloads survive intact.
            Ok((String::from_utf8_lossy(&name).into_owned(), value))
        })
        .collect::<Result<_, TransportError>>()?;
    Ok(ParsedEntry::Present(StreamEntry { id, fields }))
}

/// An `XREADGROUP` reply for one stream: nil on timeout, else `[[stream, [entry, ...]]]`
/// (RESP2) or `{stream: [entry, ...]}` (RESP3).
fn parse_read_reply(value: Value) -> Result<Vec<StreamEntry>, TransportError> {
    let streams = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs.into_iter().map(|(_, entries)| entries).collect(),
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| {
                into_items(stream)
                    .filter(|parts| parts.len() == 2)
                    .and_then(|parts| parts.into_iter().nth(1))
                    .ok_or_else(|| malformed("XREADGROUP", "stream"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(malformed("XREADGROUP", "reply")),
    };
    let mut entries = Vec::new();
    for stream_entries in streams {
        for entry in into_items(stream_entries).ok_or_else(|| malformed("XREADGROUP", "entries"))? {
            match parse_entry(entry, "XREADGROUP")? {
                ParsedEntry::Present(entry) => entries.push(entry),
                // Only re-reads of history can meet deleted entries; `>` reads never do.
                ParsedEntry::Deleted(id) => {
                    tracing::warn!(id, "redis streams: skipping a deleted entry in a new read")
                }
            }
        }
    }
    Ok(entries)
}

/// An `XAUTOCLAIM` reply: `[cursor, [entry, ...], [deleted id, ...]]` on Redis 7, without the
/// third element on Redis 6.2, which instead lists deleted entries with nil fields.
fn parse_autoclaim(value: Value) -> Result<AutoClaimReply, TransportError> {
    let mut parts = into_items(value)
        .filter(|parts| parts.len() == 2 || parts.len() == 3)
        .ok_or_else(|| malformed("XAUTOCLAIM", "reply"))?
        .into_iter();
    let next_cursor = parts
        .next()
        .and_then(into_string)
        .ok_or_else(|| malformed("XAUTOCLAIM", "cursor"))?;
    let mut reply = AutoClaimReply {
        reclaimed: Reclaimed {
            next_cursor,
            ..Reclaimed::default()
        },
        vanished: Vec::new(),
    };
    let claimed = parts
        .next()
        .and_then(into_items)
        .ok_or_else(|| malformed("XAUTOCLAIM", "entries"))?;
    for entry in claimed {
        match parse_entry(entry, "XAUTOCLAIM")? {
            ParsedEntry::Present(entry) => reply.reclaimed.entries.push(entry),
            ParsedEntry::Deleted(id) => reply.vanished.push(id),
        }
    }
    if let Some(deleted) = parts.next() {
        reply.reclaimed.deleted = into_items(deleted)
            .ok_or_else(|| malformed("XAUTOCLAIM", "deleted ids"))?
            .into_iter()
            .map(|id| into_string(id).ok_or_else(|| malformed("XAUTOCLAIM", "deleted id")))
            .collect::<Result<_, _>>()?;
    }
    Ok(reply)
}

/// Pending and lag of `group` from an `XINFO GROUPS` reply; `None` when the group is not listed.
/// Lag is nil on Redis 7 when it cannot be computed and absent before Redis 7.
fn parse_group_stats(value: Value, group: &str) -> Result<Option<GroupStats>, TransportError> {
    for info in into_items(value).ok_or_else(|| malformed("XINFO GROUPS", "reply"))? {
        let mut name = None;
        let mut stats = GroupStats::default();
        for (key, value) in into_pairs(info).ok_or_else(|| malformed("XINFO GROUPS", "group"))? {
            match into_string(key).as_deref() {
                Some("name") => name = into_string(value),
                Some("pending") => {
                    stats.pending =
                        parse_count(value).ok_or_else(|| malformed("XINFO GROUPS", "pending"))?;
                }
                Some("lag") if value != Value::Nil => {
                    stats.lag =
                        Some(parse_count(value).ok_or_else(|| malformed("XINFO GROUPS", "lag"))?);
                }
                _ => {}
            }
        }
        if name.as_deref() == Some(group) {
            return Ok(Some(stats));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &[u8])]) -> Value {
        let fields = fields
            .iter()
            .flat_map(|(name, value)| [bulk(name), Value::BulkString(value.to_vec())])
            .collect();
        Value::Array(vec![bulk(id), Value::Array(fields)])
    }

    fn stream_entry(id: &str, fields: &[(&str, &[u8])]) -> StreamEntry {
        StreamEntry {
            id: id.to_owned(),
            fields: fields
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_vec()))
                .collect(),
        }
    }

    #[test]
    fn read_replies_parse_in_resp2_and_resp3_with_binary_values() {
        let entries = Value::Array(vec![
            entry("1-0", &[("a", b"\xff\x00")]),
            entry("1-1", &[("b", b"2")]),
        ]);
        let expected = vec![
            stream_entry("1-0", &[("a", b"\xff\x00")]),
            stream_entry("1-1", &[("b", b"2")]),
        ];
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("s"), entries.clone()])]);
        assert_eq!(parse_read_reply(resp2).unwrap(), expected);
        let resp3 = Value::Map(vec![(bulk("s"), entries)]);
        assert_eq!(parse_read_reply(resp3).unwrap(), expected);
        assert_eq!(parse_read_reply(Value::Nil).unwrap(), vec![]);
        assert!(matches!(
            parse_read_reply(Value::Int(3)),
            Err(TransportError::Broker(_))
        ));
    }

    #[test]
    fn autoclaim_reply_of_redis_7_reports_deleted_ids() {
        let reply = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![entry("5-0", &[("k", b"v")])]),
            Value::Array(vec![bulk("3-0"), bulk("4-0")]),
        ]);
        let parsed = parse_autoclaim(reply).unwrap();
        assert_eq!(parsed.reclaimed.next_cursor, "0-0");
        assert_eq!(
            parsed.reclaimed.entries,
            vec![stream_entry("5-0", &[("k", b"v")])]
        );
        assert_eq!(parsed.reclaimed.deleted, vec!["3-0", "4-0"]);
        assert!(parsed.vanished.is_empty());
    }

    #[test]
    fn autoclaim_reply_of_redis_6_2_turns_nil_entries_into_ids_to_acknowledge() {
        let reply = Value::Array(vec![
            bulk("9-0"),
            Value::Array(vec![
                Value::Array(vec![bulk("3-0"), Value::Nil]),
                entry("5-0", &[("k", b"v")]),
            ]),
        ]);
        let parsed = parse_autoclaim(reply).unwrap();
        assert_eq!(parsed.reclaimed.next_cursor, "9-0");
        assert_eq!(
            parsed.reclaimed.entries,
            vec![stream_entry("5-0", &[("k", b"v")])]
        );
        assert!(parsed.reclaimed.deleted.is_empty());
        assert_eq!(parsed.vanished, vec!["3-0"]);
    }

    #[test]
    fn group_stats_find_the_group_and_read_a_nil_lag_as_unknown() {
        let group = |name: &str, pending: i64, lag: Value| {
            Value::Array(vec![
                bulk("name"),
                bulk(name),
                bulk("consumers"),
                Value::Int(1),
                bulk("pending"),
                Value::Int(pending),
                bulk("lag"),
                lag,
            ])
        };
        let reply = Value::Array(vec![
            group("other", 9, Value::Int(9)),
            group("g", 2, Value::Nil),
        ]);
        assert_eq!(
            parse_group_stats(reply.clone(), "g").unwrap(),
            Some(GroupStats {
                pending: 2,
                lag: None
            })
        );
        assert_eq!(
            parse_group_stats(reply.clone(), "other").unwrap(),
            Some(GroupStats {
                pending: 9,
                lag: Some(9)
            })
        );
        assert_eq!(parse_group_stats(reply, "missing").unwrap(), None);
        let resp3 = Value::Array(vec![Value::Map(vec![
            (bulk("name"), bulk("g")),
            (bulk("pending"), Value::Int(1)),
            (bulk("lag"), Value::Int(4)),
        ])]);
        assert_eq!(
            parse_group_stats(resp3, "g").unwrap(),
            Some(GroupStats {
                pending: 1,
                lag: Some(4)
            })
        );
    }

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

    /// A fake Redis on an ephemeral port: `reply` gives the raw answer to a command by name and
    /// how long to wait before sending it. Returns its URL and how many connections it accepted.
    fn fake_redis(reply: fn(&str) -> (&'static str, Duration)) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for socket in listener.incoming() {
                let socket = socket.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut writer = socket.try_clone().unwrap();
                    let mut reader = BufReader::new(socket);
                    while let Some(name) = read_command(&mut reader) {
                        let (answer, delay) = reply(&name);
                        std::thread::sleep(delay);
                        if writer.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    /// Reads one RESP command and returns its name, upper-cased; `None` at end of input.
    fn read_command(reader: &mut impl BufRead) -> Option<String> {
        let mut line = String::new();
        reader.read_line(&mut line).ok().filter(|read| *read > 0)?;
        let args: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
        let mut name = None;
        for _ in 0..args {
            line.clear();
            reader.read_line(&mut line).ok()?;
            let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
            let mut arg = vec![0; len + 2];
            reader.read_exact(&mut arg).ok()?;
            name.get_or_insert_with(|| String::from_utf8_lossy(&arg[..len]).to_uppercase());
        }
        name
    }

    /// Answers like a healthy Redis, except `XTRIM` fails and `slow` answers after 300 ms.
    fn answer(slow: &str, name: &str) -> (&'static str, Duration) {
        let delay = if name == slow {
            Duration::from_millis(300)
        } else {
            Duration::ZERO
        };
        let answer = match name {
            "PING" => "+PONG\r\n",
            "XTRIM" => "-ERR boom\r\n",
            _ => "+OK\r\n",
        };
        (answer, delay)
    }

    #[test]
    fn a_connection_that_timed_out_is_never_reused() {
        let (url, accepted) = fake_redis(|name| answer("XGROUP", name));
        let redis = RedisStreams::builder(url)
            .pool_size(1)
            .io_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        for attempt in 1..=2 {
            let result = redis.ensure_group("s", "g");
            assert!(
                matches!(result, Err(TransportError::Unavailable(_))),
                "{result:?}"
            );
            // The late reply arrives after the timeout and could be read as the answer to the
            // next command, so the next call must get a new connection.
            assert_eq!(accepted.load(Ordering::SeqCst), attempt);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    #[test]
    fn a_server_error_is_a_broker_error_and_keeps_the_connection() {
        let (url, accepted) = fake_redis(|name| answer("", name));
        let redis = RedisStreams::builder(url).pool_size(1).build().unwrap();
        for _ in 0..2 {
            let result = redis.trim("s", 1);
            assert!(
                matches!(result, Err(TransportError::Broker(_))),
                "{result:?}"
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn build_needs_no_server_and_calls_then_report_unavailable() {
        // Port 1 is reserved (tcpmux) and closed on any machine that runs these tests.
        let redis = RedisStreams::builder("redis://127.0.0.1:1")
            .connect_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let result = redis.ensure_group("s", "g");
        assert!(
            matches!(result, Err(TransportError::Unavailable(_))),
            "{result:?}"
        );
    }
}
