//! The Redis Cluster the cluster tests run against: its URL, skipping (or failing under
//! `EVENTFLOW_REQUIRE_SERVICES=1`) when it does not answer, a raw connection for setting up and
//! cleaning up, and stream names placed on chosen masters; and [`PrivateCluster`], a cluster of
//! a test's own for tests that kill nodes.
//!
//! `.ci/redis-cluster start` starts the local one the default URL names (three masters and
//! three replicas on 127.0.0.1:7000-7005); `.ci/run` does so for the whole test run.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use redis::cluster::{ClusterClient, ClusterConnection};

/// The cluster's URL for tests: `EVENTFLOW_REDIS_CLUSTER_URL`, else the local cluster that
/// `.ci/redis-cluster start` makes.
pub fn cluster_url() -> String {
    std::env::var("EVENTFLOW_REDIS_CLUSTER_URL").unwrap_or_else(|_| {
        let seeds: Vec<String> = (7000..=7005)
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    })
}

/// A cluster URL's seeds as single-node URLs, for the redis crate's own cluster client (the
/// test URL has no path or query; credentials are kept).
fn seed_urls(url: &str) -> Vec<String> {
    let rest = url
        .strip_prefix("redis+cluster://")
        .expect("EVENTFLOW_REDIS_CLUSTER_URL starts with redis+cluster://");
    let rest = rest.trim_end_matches('/');
    let (userinfo, hosts) = match rest.rsplit_once('@') {
        Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
        None => (String::new(), rest),
    };
    hosts
        .split(',')
        .map(|host| format!("redis://{userinfo}{}", host.trim()))
        .collect()
}

/// A connection of the redis crate's own cluster client, beside the transport under test.
pub fn raw_cluster() -> Result<ClusterConnection, redis::RedisError> {
    raw_cluster_at(&cluster_url())
}

/// The same for the cluster at `url`.
pub fn raw_cluster_at(url: &str) -> Result<ClusterConnection, redis::RedisError> {
    ClusterClient::builder(seed_urls(url))
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(5))
        .build()?
        .get_connection()
}

/// Whether the cluster answers with every slot served (`cluster_state:ok`); same rules as
/// [`super::redis_available`].
pub fn cluster_available(test: &str) -> bool {
    let result = raw_cluster()
        .and_then(|mut conn| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut conn))
        .map_err(|error| error.to_string())
        .and_then(|info| {
            if info.contains("cluster_state:ok") {
                Ok(())
            } else {
                Err("cluster_state is not ok".to_string())
            }
        });
    super::available(
        "Redis Cluster (EVENTFLOW_REDIS_CLUSTER_URL; `.ci/redis-cluster start`)",
        test,
        result,
    )
}

/// Deletes keys one by one (each may live on another master).
pub fn delete_keys(conn: &mut ClusterConnection, keys: &[String]) {
    for key in keys {
        let _ = redis::cmd("DEL").arg(key).query::<i64>(conn);
    }
}

/// The masters, as `host:port`, by the first slot each serves.
fn slot_owners(conn: &mut ClusterConnection) -> BTreeMap<u16, (u16, String)> {
    let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query(conn)
        .expect("CLUSTER SLOTS");
    let mut owners = BTreeMap::new();
    for range in slots {
        let redis::Value::Array(parts) = range else {
            panic!("CLUSTER SLOTS gave {range:?}")
        };
        let number = |value: &redis::Value| match value {
            redis::Value::Int(n) => u16::try_from(*n).expect("slot number"),
            other => panic!("slot number {other:?}"),
        };
        let (first, last) = (number(&parts[0]), number(&parts[1]));
        let redis::Value::Array(master) = &parts[2] else {
            panic!("CLUSTER SLOTS master {:?}", parts[2])
        };
        let host: String = redis::from_redis_value(master[0].clone()).expect("master host");
        let port = number(&master[1]);
        owners.insert(first, (last, format!("{host}:{port}")));
    }
    owners
}

/// The master (`host:port`) that holds `key`.
pub fn master_of(conn: &mut ClusterConnection, key: &str) -> String {
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(conn)
        .expect("CLUSTER KEYSLOT");
    slot_owners(conn)
        .into_iter()
        .find(|(first, (last, _))| (*first..=*last).contains(&slot))
        .map(|(_, (_, master))| master)
        .expect("every slot is served")
}

/// A unique stream name starting with `prefix` whose other streams named by `suffixes` (added
/// to it) each live on a different master from it and from one another: a check across
/// streams then talks to several masters.
pub fn names_on_distinct_masters(prefix: &str, suffixes: &[&str]) -> String {
    let mut conn = raw_cluster().expect("cluster connection");
    for _ in 0..1000 {
        let name = super::unique_name(prefix);
        let mut masters: Vec<String> = vec![master_of(&mut conn, &name)];
        for suffix in suffixes {
            masters.push(master_of(&mut conn, &format!("{name}{suffix}")));
        }
        let count = masters.len();
        masters.sort();
        masters.dedup();
        if masters.len() == count {
            return name;
        }
    }
    panic!("no stream names on {} distinct masters", suffixes.len() + 1)
}

/// A cluster of three masters and three replicas of one test's own, on free loopback ports in a
/// folder of its own, made by `.ci/redis-cluster`; stopped and removed when dropped. For tests
/// that kill a node, which would disturb the tests sharing the common cluster.
pub struct PrivateCluster {
    base: u16,
    dir: PathBuf,
    /// Holds `server.pem`, `server.key` and `ca.pem` when the nodes speak only TLS.
    tls_dir: Option<PathBuf>,
}

impl PrivateCluster {
    /// Starts one; `None` (skipped, or a failure under `EVENTFLOW_REQUIRE_SERVICES=1`) when
    /// `redis-server` is not installed.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, None)
    }

    /// Starts one whose nodes speak only TLS, to clients and to one another, with the
    /// certificate `server.pem` (which must allow both server and client use, as the nodes
    /// connect to one another with it), its key `server.key` and the authority `ca.pem` in
    /// `tls_dir`.
    pub fn start_with_tls(test: &str, tls_dir: &std::path::Path) -> Option<Self> {
        Self::start_with(test, Some(tls_dir.to_path_buf()))
    }

    fn start_with(test: &str, tls_dir: Option<PathBuf>) -> Option<Self> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .output()
            .map(|_| ())
            .map_err(|error| format!("redis-server: {error}"));
        if !super::available(
            "redis-server (for a private Redis Cluster)",
            test,
            installed,
        ) {
            return None;
        }
        let base = free_port_block();
        let cluster = Self {
            base,
            dir: std::env::temp_dir().join(super::unique_name("ef_cluster")),
            tls_dir,
        };
        cluster.script("start");
        Some(cluster)
    }

    /// `.ci/redis-cluster <action>` for this cluster.
    fn command(&self, action: &str) -> Command {
        let mut command = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/redis-cluster"));
        command
            .arg(action)
            .env("EVENTFLOW_CLUSTER_PORT", self.base.to_string())
            .env("EVENTFLOW_CLUSTER_DIR", &self.dir);
        match &self.tls_dir {
            Some(tls_dir) => command.env("EVENTFLOW_CLUSTER_TLS_DIR", tls_dir),
            None => command.env_remove("EVENTFLOW_CLUSTER_TLS_DIR"),
        };
        command
    }

    fn script(&self, action: &str) {
        let out = self
            .command(action)
            .output()
            .expect(".ci/redis-cluster runs");
        assert!(
            out.status.success(),
            ".ci/redis-cluster {action}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Its URL, all six nodes as seeds (`rediss+cluster://` for TLS).
    pub fn url(&self) -> String {
        let seeds: Vec<String> = (self.base..self.base + 6)
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let scheme = match self.tls_dir {
            Some(_) => "rediss+cluster",
            None => "redis+cluster",
        };
        format!("{scheme}://{}", seeds.join(","))
    }

    /// Waits until the replica of the master holding `key` has every write the master has
    /// (replication is asynchronous, and a failover loses what the replica has not got).
    pub fn wait_for_replica_of(&self, key: &str) {
        let master = master_of(&mut raw_cluster_at(&self.url()).unwrap(), key);
        let mut conn = redis::Client::open(format!("redis://{master}"))
            .unwrap()
            .get_connection()
            .unwrap();
        let caught_up = super::wait_until(Duration::from_secs(10), || {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut conn)
                .unwrap();
            let field = |name: &str| {
                info.lines()
                    .find_map(|line| line.strip_prefix(name))
                    .map(str::to_string)
            };
            let master_offset = field("master_repl_offset:");
            let replica_offset = field("slave0:").and_then(|replica| {
                replica
                    .split(',')
                    .find_map(|part| part.strip_prefix("offset="))
                    .map(str::to_string)
            });
            master_offset.is_some() && master_offset == replica_offset
        });
        assert!(caught_up, "the replica of {master} caught up");
    }

    /// SIGKILLs the master holding `key`; returns its `host:port`.
    pub fn kill_master_of(&self, key: &str) -> String {
        let master = master_of(&mut raw_cluster_at(&self.url()).unwrap(), key);
        self.signal_node(&master, "KILL");
        master
    }

    /// The replica (`host:port`) of the master holding `key`.
    pub fn replica_of(&self, key: &str) -> String {
        let mut conn = raw_cluster_at(&self.url()).unwrap();
        let master = master_of(&mut conn, key);
        let master_id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query(
                &mut redis::Client::open(format!("redis://{master}"))
                    .unwrap()
                    .get_connection()
                    .unwrap(),
            )
            .expect("CLUSTER MYID");
        let replicas: Vec<String> = redis::cmd("CLUSTER")
            .arg("REPLICAS")
            .arg(&master_id)
            .query(&mut conn)
            .expect("CLUSTER REPLICAS");
        // Each line is CLUSTER NODES' format: `<id> <host:port@bus> ...`.
        let line = replicas.first().expect("the master has a replica");
        let address = line.split(' ').nth(1).expect("a node address");
        address.split('@').next().unwrap().to_string()
    }

    /// Closes the replication links of the master at `host:port` (`CLIENT KILL TYPE replica`):
    /// until its replica connects again, what the master takes reaches only the master.
    pub fn cut_replication_of(&self, master: &str) {
        let mut conn = redis::Client::open(format!("redis://{master}"))
            .unwrap()
            .get_connection()
            .unwrap();
        let cut: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("replica")
            .query(&mut conn)
            .expect("CLIENT KILL TYPE replica");
        assert!(cut >= 1, "{master} had a replica connected");
    }

    /// Sends the signal `name` (`STOP`, `CONT`, `KILL`) to the node at `host:port`.
    pub fn signal_node(&self, node: &str, name: &str) {
        let port = node.rsplit(':').next().unwrap();
        let pid = std::fs::read_to_string(self.dir.join(port).join("redis.pid"))
            .expect("the node's pid file");
        let sent = Command::new("kill")
            .args([format!("-{name}").as_str(), pid.trim()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{name} {pid}");
    }

    /// Starts again the node at `host:port` that [`kill_master_of`](Self::kill_master_of)
    /// killed, and waits for `cluster_state:ok` on every node: a master whose slots a replica
    /// took over rejoins as that replica's replica (empty, then synced), so the cluster is
    /// whole again.
    pub fn restart_node(&self, node: &str) {
        let port = node.rsplit(':').next().unwrap();
        let out = self
            .command("restart-node")
            .arg(port)
            .output()
            .expect(".ci/redis-cluster runs");
        assert!(
            out.status.success(),
            ".ci/redis-cluster restart-node {port}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until a replica has taken over the slot of `key` from `old_master`; returns the
    /// new master.
    pub fn wait_for_new_master_of(&self, key: &str, old_master: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut conn) = raw_cluster_at(&self.url()) {
                let info: Result<String, _> = redis::cmd("CLUSTER").arg("INFO").query(&mut conn);
                if info.is_ok_and(|info| info.contains("cluster_state:ok")) {
                    let master = master_of(&mut conn, key);
                    if master != old_master {
                        return master;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no replica took over from {old_master}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        // A node a failed test left stopped (SIGSTOP) would never answer the shutdown below.
        for port in self.base..self.base + 6 {
            if let Ok(pid) =
                std::fs::read_to_string(self.dir.join(port.to_string()).join("redis.pid"))
            {
                let _ = Command::new("kill").args(["-CONT", pid.trim()]).status();
            }
        }
        let _ = self.command("stop").output();
    }
}

/// A first port of six free loopback ports whose cluster bus ports (10000 above) are free too.
fn free_port_block() -> u16 {
    for _ in 0..200 {
        let base = 20_000 + (uuid::Uuid::new_v4().as_u128() % 20_000) as u16;
        let free = (base..base + 6)
            .flat_map(|port| [port, port + 10_000])
            .all(|port| TcpListener::bind(("127.0.0.1", port)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no six free loopback ports for a private Redis Cluster")
}
