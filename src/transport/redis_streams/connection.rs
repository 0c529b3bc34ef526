//! The connection pool's side of the Redis transport: opening connections with socket
//! timeouts, telling r2d2 which ones to drop, and classifying a failed command as "Redis is not
//! usable now" ([`TransportError::Unavailable`], which callers retry with back-off) or "Redis
//! refused this request" ([`TransportError::Broker`], or `NoGroup` for a missing group).
//!
//! Both jobs rest on one rule, `is_unavailable`, which is why they live together: a failure
//! that leaves the socket in an unknown state both breaks the connection and makes the call
//! worth retrying.
//!
//! A pooled connection is either a single server's or a Redis Cluster's (the redis crate's
//! cluster connection, which routes each command by its key's slot); [`Connection`] hides
//! which from the commands, save for pipelines, which a cluster splits per node.

use std::time::{Duration, Instant};

use redis::cluster::{ClusterClient, ClusterConnection};
use redis::cluster_routing::Slot;
use redis::{ConnectionLike, ErrorKind, RedisError, RedisResult, Value};

use crate::transport::TransportError;

/// Server error codes that say "not now" rather than "wrong request": a server loading its
/// data, out of memory (`maxmemory` reached with a no-eviction policy), unable to persist
/// (MISCONF), busy running a script, short of replicas, a cluster or replica without a master,
/// a failover in progress, a user not (yet) allowed the command or key (NOPERM: an ACL to
/// fix, not a bad entry), and on a cluster a redirection the cluster client did not follow in
/// its retries (`MOVED`, `ASK`: slots moving during a failover or resharding). Callers back off
/// on [`TransportError::Unavailable`], which is what these need: the outbox relay counts no
/// attempt and dead-letters nothing for them.
///
/// Every other reply code (`ERR`, `WRONGTYPE`: the key holds something that is not a stream,
/// or the command as built for this entry is wrong) refuses the request itself:
/// [`TransportError::Broker`], a failed attempt for an outbox row.
pub(super) const TRANSIENT_SERVER_CODES: &[&str] = &[
    "LOADING",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "READONLY",
    "OOM",
    "MISCONF",
    "BUSY",
    "NOREPLICAS",
    "NOPERM",
    "MOVED",
    "ASK",
];

/// What the pool opens connections to: one Redis server, or a Redis Cluster through its seeds.
pub(super) enum Target {
    /// A single server (or a proxy that looks like one).
    Node(redis::Client),
    /// A cluster: each connection holds a socket per node it has talked to and routes every
    /// command by its key's slot, following `MOVED` and `ASK` and re-reading the slot map.
    Cluster(ClusterClient),
}

/// Opens connections for the pool with socket timeouts set, and tells it which ones to drop.
pub(super) struct ConnectionManager {
    pub(super) target: Target,
    pub(super) connect_timeout: Duration,
    pub(super) io_timeout: Duration,
}

/// The open link behind a pooled connection.
enum Link {
    Node(redis::Connection),
    /// Boxed: it holds a map of node connections and is several times a node's size.
    Cluster(Box<ClusterConnection>),
}

/// A pooled connection and whether a failure has made it unusable.
pub(super) struct Connection {
    link: Link,
    /// Set after a failure that was not a server reply. After a timed-out read the reply may
    /// still arrive later and would be taken as the answer to the next command, so such a
    /// connection must never be reused even though the socket looks open.
    broken: bool,
    /// The socket read timeout now set, to tell a cluster call that timed out inside the
    /// cluster client's own retries (see [`Connection::run`]).
    read_timeout: Duration,
}

impl Connection {
    /// Runs `command`, marking the connection broken when it fails in a way that leaves the
    /// socket in an unknown state.
    ///
    /// A cluster connection retries a timed-out command itself, and a call that then succeeds
    /// may have left a late reply on a node's socket (a pipeline's later replies are not
    /// skipped by the redis crate as a single late reply is). So a cluster call that took
    /// longer than the read timeout is taken as having timed out inside, and its connection is
    /// dropped after it even when it succeeded.
    pub(super) fn run<R>(
        &mut self,
        command: impl FnOnce(&mut dyn ConnectionLike) -> RedisResult<R>,
    ) -> RedisResult<R> {
        let started = Instant::now();
        let result = match &mut self.link {
            Link::Node(conn) => command(conn),
            Link::Cluster(conn) => command(conn.as_mut()),
        };
        self.settle(&result, started);
        result
    }

    /// Sends `commands` in one round trip (one per node on a cluster) and returns each one's
    /// reply or server error, in order. The outer error means the round trip failed.
    ///
    /// A cluster pipeline reports only the errors when a command is refused, not the other
    /// replies. The commands that were not refused are then sent again one by one, so that
    /// each gets its own answer (an `XADD` among them is appended twice in that rare case), and
    /// so are those the cluster did not run at all (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`),
    /// which the cluster client then routes anew.
    pub(super) fn pipeline(
        &mut self,
        commands: Vec<redis::Cmd>,
    ) -> RedisResult<Vec<RedisResult<Value>>> {
        let started = Instant::now();
        let result = match &mut self.link {
            Link::Node(conn) => {
                let mut pipeline = redis::pipe();
                pipeline.ignore_errors();
                for command in commands {
                    pipeline.add_command(command);
                }
                pipeline.query::<Vec<RedisResult<Value>>>(conn)
            }
            Link::Cluster(conn) => cluster_pipeline(conn.as_mut(), commands),
        };
        self.settle(&result, started);
        result
    }

    /// Sends `commands`, each writing the key beside it, followed by `wait` (a `WAIT`) on the
    /// same socket, and returns each command's reply with the reply of the `WAIT` that followed
    /// it. `WAIT` counts the replicas holding this connection's own writes, so it must follow
    /// them on their socket: a single server gets one pipeline; a cluster one pipeline per slot
    /// (all its commands go to that slot's master, and a redirection or reconnection sends the
    /// commands and the `WAIT` again together), each with a `WAIT` of its own.
    ///
    /// On a cluster a pipeline's replies come back whole or not at all, so a command refused in
    /// it (a key of another type) fails every command of its slot with that error; the others
    /// may have been appended. A pipeline that could not be sent fails only its own slot's
    /// commands, as an outage.
    pub(super) fn pipeline_and_wait(
        &mut self,
        commands: Vec<(&str, redis::Cmd)>,
        wait: &redis::Cmd,
    ) -> RedisResult<Vec<(RedisResult<Value>, RedisResult<Value>)>> {
        let started = Instant::now();
        let result = match &mut self.link {
            Link::Node(conn) => {
                let mut pipeline = redis::pipe();
                pipeline.ignore_errors();
                for (_, command) in commands {
                    pipeline.add_command(command);
                }
                pipeline.add_command(wait.clone());
                pipeline
                    .query::<Vec<RedisResult<Value>>>(conn)
                    .and_then(|mut replies| {
                        let waited = replies.pop().ok_or_else(|| {
                            RedisError::from((ErrorKind::UnexpectedReturnType, "no WAIT reply"))
                        })?;
                        Ok(replies
                            .into_iter()
                            .map(|reply| (reply, waited.clone()))
                            .collect())
                    })
            }
            Link::Cluster(conn) => Ok(cluster_pipelines_and_wait(conn.as_mut(), commands, wait)),
        };
        if let Ok(replies) = &result {
            for (reply, waited) in replies {
                self.settle(reply, started);
                self.settle(waited, started);
            }
        }
        self.settle(&result, started);
        result
    }

    fn settle<R>(&mut self, result: &RedisResult<R>, started: Instant) {
        if let Err(error) = result {
            if is_unavailable(error) {
                self.broken = true;
            }
        }
        if matches!(self.link, Link::Cluster(_)) && started.elapsed() >= self.read_timeout {
            self.broken = true;
        }
    }

    /// Sets the socket read timeout, on every node's socket for a cluster.
    pub(super) fn set_read_timeout(&mut self, timeout: Duration) -> RedisResult<()> {
        let set = match &mut self.link {
            Link::Node(conn) => conn.set_read_timeout(Some(timeout)),
            Link::Cluster(conn) => conn.set_read_timeout(Some(timeout)),
        };
        match set {
            Ok(()) => self.read_timeout = timeout,
            Err(_) => self.broken = true,
        }
        set
    }

    /// Whether a failure has made this connection unusable; the pool drops it on return.
    pub(super) fn is_broken(&self) -> bool {
        self.broken
    }
}

/// A cluster pipeline whose refused commands come back as errors in their place (see
/// [`Connection::pipeline`]).
fn cluster_pipeline(
    conn: &mut ClusterConnection,
    commands: Vec<redis::Cmd>,
) -> RedisResult<Vec<RedisResult<Value>>> {
    let mut pipeline = redis::cluster::cluster_pipe();
    for command in &commands {
        pipeline.add_command(command.clone());
    }
    let error = match pipeline.query::<Vec<Value>>(conn) {
        Ok(replies) => return Ok(replies.into_iter().map(Ok).collect()),
        Err(error) => error,
    };
    if !matches!(error.kind(), ErrorKind::Server(_) | ErrorKind::Extension) {
        return Err(error);
    }
    let Some(refused) = error.clone().into_server_errors() else {
        return Err(error);
    };
    let mut replies: Vec<Option<RedisResult<Value>>> = commands.iter().map(|_| None).collect();
    for (index, server_error) in refused.iter() {
        let error = RedisError::from(server_error.clone());
        if error.is_cluster_error() {
            continue; // not run: sent again below
        }
        if let Some(reply) = replies.get_mut(*index) {
            *reply = Some(Err(error));
        }
    }
    commands
        .iter()
        .zip(replies)
        .map(|(command, reply)| match reply {
            Some(refused) => Ok(refused),
            None => match command.query::<Value>(conn) {
                Ok(value) => Ok(Ok(value)),
                Err(error) if matches!(error.kind(), ErrorKind::Server(_)) => Ok(Err(error)),
                Err(error) => Err(error),
            },
        })
        .collect()
}

/// One pipeline per slot, each ending in `wait` (see [`Connection::pipeline_and_wait`]).
fn cluster_pipelines_and_wait(
    conn: &mut ClusterConnection,
    commands: Vec<(&str, redis::Cmd)>,
    wait: &redis::Cmd,
) -> Vec<(RedisResult<Value>, RedisResult<Value>)> {
    let mut slots: Vec<(Slot, Vec<usize>)> = Vec::new();
    for (index, (key, _)) in commands.iter().enumerate() {
        let slot = Slot::for_key(key.as_bytes());
        match slots.iter_mut().find(|(known, _)| *known == slot) {
            Some((_, indexes)) => indexes.push(index),
            None => slots.push((slot, vec![index])),
        }
    }
    let mut replies: Vec<Option<(RedisResult<Value>, RedisResult<Value>)>> =
        commands.iter().map(|_| None).collect();
    for (_, indexes) in slots {
        let mut pipeline = redis::pipe();
        for index in &indexes {
            pipeline.add_command(commands[*index].1.clone());
        }
        pipeline.add_command(wait.clone());
        // Routed by the first command's key: every command here has that slot.
        let sent = conn.req_packed_commands(&pipeline.get_packed_pipeline(), 0, indexes.len() + 1);
        let mut sent = match sent {
            Ok(mut values) if values.len() == indexes.len() + 1 => {
                let waited = values.pop().map(Ok).unwrap_or(Ok(Value::Nil));
                values
                    .into_iter()
                    .map(|value| (Ok(value), waited.clone()))
                    .collect::<Vec<_>>()
            }
            Ok(_) => {
                let error = RedisError::from((
                    ErrorKind::UnexpectedReturnType,
                    "a pipeline with WAIT got the wrong number of replies",
                ));
                indexes
                    .iter()
                    .map(|_| (Err(error.clone()), Err(error.clone())))
                    .collect()
            }
            Err(error) => indexes
                .iter()
                .map(|_| (Err(error.clone()), Err(error.clone())))
                .collect(),
        }
        .into_iter();
        for index in indexes {
            replies[index] = sent.next();
        }
    }
    replies
        .into_iter()
        .map(|reply| {
            reply.unwrap_or_else(|| {
                let error = RedisError::from((ErrorKind::Client, "a command was not sent"));
                (Err(error.clone()), Err(error))
            })
        })
        .collect()
}

impl r2d2::ManageConnection for ConnectionManager {
    type Connection = Connection;
    type Error = RedisError;

    fn connect(&self) -> Result<Connection, RedisError> {
        let link = match &self.target {
            Target::Node(client) => {
                let conn = client.get_connection_with_timeout(self.connect_timeout)?;
                conn.set_read_timeout(Some(self.io_timeout))?;
                conn.set_write_timeout(Some(self.io_timeout))?;
                Link::Node(conn)
            }
            // The cluster client was built with the connect and read timeouts; the write
            // timeout it keeps per connection, and applies to each node's socket as it opens it.
            Target::Cluster(client) => {
                let conn = client.get_connection()?;
                conn.set_write_timeout(Some(self.io_timeout))?;
                Link::Cluster(Box::new(conn))
            }
        };
        tracing::debug!("redis streams: opened a connection");
        Ok(Connection {
            link,
            broken: false,
            read_timeout: self.io_timeout,
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
        // A cluster connection with a node's socket closed (the node died, or a failover
        // moved its slots) is dropped whole, so the next one reads the cluster's layout anew.
        let open = match &conn.link {
            Link::Node(inner) => inner.is_open(),
            Link::Cluster(inner) => inner.is_open(),
        };
        let broken = conn.broken || !open;
        if broken {
            tracing::debug!("redis streams: discarding a broken connection");
        }
        broken
    }
}

/// Sends the pool's connection failures to `tracing` instead of the `log` crate.
#[derive(Debug)]
pub(super) struct TraceConnectErrors;

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
pub(super) fn command_error(error: RedisError) -> TransportError {
    if is_unavailable(&error) {
        TransportError::Unavailable(Box::new(error))
    } else {
        TransportError::Broker(Box::new(error))
    }
}

/// Maps a failed command on a consumer group, telling a missing group apart.
pub(super) fn group_error(error: RedisError, stream: &str, group: &str) -> TransportError {
    if error.code() == Some("NOGROUP") {
        no_group(stream, group)
    } else {
        command_error(error)
    }
}

pub(super) fn no_group(stream: &str, group: &str) -> TransportError {
    TransportError::NoGroup {
        stream: stream.to_owned(),
        group: group.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use crate::transport::{RedisStreams, Transport, TransportError};

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

    /// Answers `XADD` with `error`, anything else like a healthy Redis.
    fn xadd_fails(name: &str, error: &'static str) -> (&'static str, Duration) {
        match name {
            "XADD" => (error, Duration::ZERO),
            _ => answer("", name),
        }
    }

    #[test]
    fn try_later_replies_to_an_entry_are_outages_and_others_refuse_it() {
        type Reply = fn(&str) -> (&'static str, Duration);
        let cases: [(&str, Reply, bool); 12] = [
            (
                "OOM",
                |n| {
                    xadd_fails(
                        n,
                        "-OOM command not allowed when used memory > 'maxmemory'.\r\n",
                    )
                },
                true,
            ),
            (
                "MISCONF",
                |n| xadd_fails(n, "-MISCONF Redis is configured to save RDB snapshots\r\n"),
                true,
            ),
            (
                "BUSY",
                |n| xadd_fails(n, "-BUSY Redis is busy running a script\r\n"),
                true,
            ),
            (
                "LOADING",
                |n| xadd_fails(n, "-LOADING Redis is loading the dataset in memory\r\n"),
                true,
            ),
            (
                "TRYAGAIN",
                |n| xadd_fails(n, "-TRYAGAIN Multiple keys request during rehashing\r\n"),
                true,
            ),
            (
                "NOREPLICAS",
                |n| xadd_fails(n, "-NOREPLICAS Not enough good replicas to write.\r\n"),
                true,
            ),
            (
                "READONLY",
                |n| {
                    xadd_fails(
                        n,
                        "-READONLY You can't write against a read only replica.\r\n",
                    )
                },
                true,
            ),
            (
                "MASTERDOWN",
                |n| xadd_fails(n, "-MASTERDOWN Link with MASTER is down\r\n"),
                true,
            ),
            (
                "CLUSTERDOWN",
                |n| xadd_fails(n, "-CLUSTERDOWN The cluster is down\r\n"),
                true,
            ),
            (
                "NOPERM",
                |n| xadd_fails(n, "-NOPERM User has no permissions to access the key\r\n"),
                true,
            ),
            (
                "WRONGTYPE",
                |n| {
                    xadd_fails(
                        n,
                        "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
                    )
                },
                false,
            ),
            (
                "ERR",
                |n| {
                    xadd_fails(
                        n,
                        "-ERR Invalid stream ID specified as stream command argument\r\n",
                    )
                },
                false,
            ),
        ];
        let fields = vec![("event_id".to_string(), b"e1".to_vec())];
        for (code, reply, outage) in cases {
            let (url, _) = fake_redis(reply);
            let redis = RedisStreams::builder(url).pool_size(1).build().unwrap();
            let results = redis
                .publish_entries(&[crate::transport::OutgoingEntry {
                    stream: "s",
                    fields: &fields,
                }])
                .unwrap();
            match (&results[..], outage) {
                ([Err(TransportError::Unavailable(_))], true)
                | ([Err(TransportError::Broker(_))], false) => {}
                (other, _) => panic!("{code}: expected outage={outage}, got {other:?}"),
            }
        }
    }

    /// Appends every `XADD` as entry `1-1` and answers `WAIT` with `wait`.
    fn xadd_then_wait(name: &str, wait: &'static str) -> (&'static str, Duration) {
        match name {
            "XADD" => ("$3\r\n1-1\r\n", Duration::ZERO),
            "WAIT" => (wait, Duration::ZERO),
            _ => answer("", name),
        }
    }

    #[test]
    fn entries_count_as_replicated_only_when_wait_answers_enough_replicas() {
        use crate::transport::{OutgoingEntry, ReplicaWait};
        let fields = vec![("event_id".to_string(), b"e1".to_vec())];
        let entries = [
            OutgoingEntry {
                stream: "s",
                fields: &fields,
            },
            OutgoingEntry {
                stream: "s",
                fields: &[],
            },
        ];
        let publish = |reply: fn(&str) -> (&'static str, Duration)| {
            let (url, _) = fake_redis(reply);
            let redis = RedisStreams::builder(url).pool_size(1).build().unwrap();
            let wait = ReplicaWait {
                replicas: 2,
                timeout: Duration::from_millis(10),
            };
            redis.publish_entries_replicated(&entries, wait).unwrap()
        };

        let enough = publish(|name| xadd_then_wait(name, ":2\r\n"));
        assert!(
            matches!(&enough[..], [Ok(id), Err(TransportError::Broker(_))] if id == "1-1"),
            "{enough:?}"
        );
        let short = publish(|name| xadd_then_wait(name, ":1\r\n"));
        assert!(
            matches!(
                &short[..],
                [
                    Err(TransportError::NotReplicated {
                        wanted: 2,
                        acknowledged: 1
                    }),
                    Err(TransportError::Broker(_))
                ]
            ),
            "{short:?}"
        );
        // Appended, but whether a replica has it is unknown: an outage, not the entry's fault.
        let unknown = publish(|name| {
            xadd_then_wait(name, "-ERR WAIT cannot be used with replica instances\r\n")
        });
        assert!(
            matches!(
                &unknown[..],
                [
                    Err(TransportError::Unavailable(_)),
                    Err(TransportError::Broker(_))
                ]
            ),
            "{unknown:?}"
        );
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
}
