//! TLS end to end: a throwaway certificate authority made with `openssl`, a PostgreSQL cluster
//! with `ssl=on` whose roles are allowed only through `hostssl`, Redis servers with only a TLS
//! port, and a Redis Cluster whose nodes speak only TLS, all on loopback ports of their own,
//! started here and stopped when the test ends.
//!
//! Skipped with a message when `openssl`, `initdb` or `redis-server` is missing, unless
//! `EVENTFLOW_REQUIRE_SERVICES=1`. One test runs the steps in order, so the servers are started
//! once and always stopped (their guard is dropped on panic too).

mod support;

use eventflow::outbox::{OutboxRelay, OutboxTable};
use eventflow::store::outbox::PostgresOutbox;
use eventflow::store::{InboxStore, PostgresStore, StoreError};
use eventflow::tls::TlsSettings;
use eventflow::transport::{RedisStreams, Transport, TransportError};
use eventflow::{Event, EventStatus, HandlerResult, InboxConsumer};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{error_chain, unique_name, wait_until};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn tls_to_postgres_and_redis() {
    let Some(servers) = Servers::start() else {
        return;
    };
    consumer_end_to_end(&servers);
    relay_end_to_end_with_listen(&servers);
    cli_over_tls(&servers);
    plaintext_to_a_hostssl_role_is_refused(&servers);
    another_authority_is_refused_when_verifying(&servers);
    require_without_a_ca_does_not_verify(&servers);
    verify_ca_skips_the_name_and_verify_full_checks_it(&servers);
    client_certificates(&servers);
    cluster_over_tls(&servers);
}

/// Verified all the way (`verify-full` against the test CA) for `user`.
fn pg_url(servers: &Servers, user: &str) -> String {
    format!(
        "host=localhost port={} user={user} dbname=postgres sslmode=verify-full sslrootcert={}",
        servers.pg_port,
        servers.file("ca.pem").display()
    )
}

fn redis_tls(servers: &Servers) -> TlsSettings {
    TlsSettings::new().ca_file(servers.file("ca.pem"))
}

fn events(n: usize) -> Vec<Event> {
    let aggregate = Uuid::new_v4();
    (0..n)
        .map(|i| Event::new("TlsChecked", aggregate, json!({ "n": i })))
        .collect()
}

fn consumer_end_to_end(servers: &Servers) {
    let url = pg_url(servers, "tls_user");
    let table = unique_name("tls_inbox");
    let stream = unique_name("tls_stream");
    let redis = RedisStreams::builder(servers.redis_url())
        .tls(redis_tls(servers))
        .build()
        .unwrap();
    let sent = events(20);
    let entries: Vec<_> = sent.iter().map(Event::to_entry_fields).collect();
    redis.publish_batch(&stream, &entries).unwrap();

    let handle = InboxConsumer::builder()
        .postgres(&url)
        .handler(|tx, _row| -> HandlerResult {
            // The handler's transaction is on the TLS connection.
            let ssl: bool = tx
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )?
                .get(0);
            assert!(ssl, "a handler ran on a plaintext connection");
            Ok(())
        })
        .redis(servers.redis_url())
        .redis_tls(redis_tls(servers))
        .stream(&stream)
        .group("tls")
        .table(&table)
        .block(Duration::from_millis(200))
        .build()
        .unwrap()
        .start()
        .unwrap();
    let store = PostgresStore::builder(&url).table(&table).build().unwrap();
    let done = wait_until(WAIT, || {
        store
            .count_by_status()
            .is_ok_and(|counts| counts.get(EventStatus::Processed) == 20)
    });
    handle.shutdown(WAIT).unwrap();
    assert!(done, "consumer over TLS: {:?}", store.count_by_status());
}

fn relay_end_to_end_with_listen(servers: &Servers) {
    let url = pg_url(servers, "tls_user");
    let table = unique_name("tls_outbox");
    let stream = unique_name("tls_stream");
    // Polling once a minute: only the LISTEN connection's wake-up publishes within the wait.
    let relay = OutboxRelay::builder()
        .postgres(&url)
        .redis(servers.redis_url())
        .redis_tls(redis_tls(servers))
        .table(&table)
        .poll_interval(Duration::from_secs(60))
        .build()
        .unwrap()
        .start()
        .unwrap();
    let outbox = PostgresOutbox::builder(&url).table(&table).build().unwrap();
    let mut conn = outbox.pool().get().unwrap();
    let event = events(1).remove(0);
    // Give the listener a moment to be listening; a notice before that waits for the poll.
    std::thread::sleep(Duration::from_millis(500));
    OutboxTable::named(&table)
        .unwrap()
        .enqueue(&mut **conn, &stream, &event)
        .unwrap();
    let published = wait_until(Duration::from_secs(20), || relay.stats().published == 1);
    let stats = relay.stats();
    relay.shutdown(WAIT).unwrap();
    assert!(published, "relay over TLS: {stats:?}");
}

fn cli_over_tls(servers: &Servers) {
    let url = pg_url(servers, "tls_user");
    let table = unique_name("tls_cli");
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_eventflow"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .args(["--database-url", &url, "--table", &table])
            .args(["--redis-url", &servers.redis_url()])
            .arg("--redis-ca-file")
            .arg(servers.file("ca.pem"))
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), stderr)
    };
    let (code, stderr) = run(&["migrate"]);
    assert_eq!(code, Some(0), "eventflow migrate over TLS: {stderr}");
    let (code, stderr) = run(&["status", "--stream", "tls_cli_stream", "--group", "g"]);
    assert_eq!(code, Some(0), "eventflow status over TLS: {stderr}");
    // The Redis CA file is what made that work: without it, the system's store refuses.
    let output = Command::new(env!("CARGO_BIN_EXE_eventflow"))
        .env_clear()
        .args(["--database-url", &url, "--table", &table])
        .args([
            "--redis-url",
            &servers.redis_url(),
            "--connect-timeout",
            "2s",
        ])
        .args(["status", "--stream", "tls_cli_stream", "--group", "g"])
        .output()
        .unwrap();
    assert_ne!(output.status.code(), Some(0));
}

fn pg_error(url: &str) -> String {
    let store = PostgresStore::builder(url)
        .connect_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    match store.ping() {
        Ok(()) => panic!("connected with {url}"),
        Err(error) => error_chain(&error),
    }
}

fn pg_ok(url: &str) {
    let store = PostgresStore::builder(url)
        .connect_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    store
        .ping()
        .unwrap_or_else(|error| panic!("{url}: {}", error_chain(&error)));
}

fn plaintext_to_a_hostssl_role_is_refused(servers: &Servers) {
    let url = format!(
        "host=127.0.0.1 port={} user=tls_user dbname=postgres sslmode=disable",
        servers.pg_port
    );
    let error = pg_error(&url);
    assert!(
        error.contains("no encryption") || error.contains("pg_hba.conf"),
        "{error}"
    );
}

fn another_authority_is_refused_when_verifying(servers: &Servers) {
    let rogue = servers.file("rogue-ca.pem");
    for mode in ["verify-full", "verify-ca", "require"] {
        let url = format!(
            "host=localhost port={} user=tls_user dbname=postgres sslmode={mode} sslrootcert={}",
            servers.pg_port,
            rogue.display()
        );
        let error = pg_error(&url);
        assert!(
            error.to_lowercase().contains("certificate"),
            "{mode}: {error}"
        );
    }
    // The system's store does not hold the test CA either.
    let system = format!(
        "host=localhost port={} user=tls_user dbname=postgres sslmode=verify-full",
        servers.pg_port
    );
    pg_error(&system);
    let redis = RedisStreams::builder(servers.redis_url())
        .tls(TlsSettings::new().ca_file(&rogue))
        .connect_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let error = redis.ping(Duration::from_secs(3)).unwrap_err();
    assert!(matches!(error, TransportError::Unavailable(_)), "{error}");
}

fn require_without_a_ca_does_not_verify(servers: &Servers) {
    pg_ok(&format!(
        "postgres://tls_user@localhost:{}/postgres?sslmode=require",
        servers.pg_port
    ));
    // `prefer`, the default, takes TLS when offered, and the role allows nothing else.
    pg_ok(&format!(
        "host=127.0.0.1 port={} user=tls_user dbname=postgres",
        servers.pg_port
    ));
    // Verification off in code wins over the URL's `verify-full`.
    let store = PostgresStore::builder(format!(
        "host=localhost port={} user=tls_user dbname=postgres sslmode=verify-full",
        servers.pg_port
    ))
    .tls(TlsSettings::new().verify(false))
    .build()
    .unwrap();
    store.ping().unwrap();
    // Redis: `#insecure` takes the server's certificate unchecked.
    let redis = RedisStreams::connect(&format!("{}/#insecure", servers.redis_url())).unwrap();
    redis.ping(Duration::from_secs(3)).unwrap();
}

fn verify_ca_skips_the_name_and_verify_full_checks_it(servers: &Servers) {
    let with = |mode: &str| {
        format!(
            "host=wrong-name.invalid hostaddr=127.0.0.1 port={} user=tls_user dbname=postgres \
             sslmode={mode} sslrootcert={}",
            servers.pg_port,
            servers.file("ca.pem").display()
        )
    };
    pg_ok(&with("verify-ca"));
    let error = pg_error(&with("verify-full"));
    assert!(error.to_lowercase().contains("certificate"), "{error}");
}

fn client_certificates(servers: &Servers) {
    let (cert, key) = (servers.file("client.pem"), servers.file("client.key"));
    // `cert_user` is allowed only with a certificate whose CN names it.
    let url = pg_url(servers, "cert_user");
    pg_error(&url);
    pg_ok(&format!(
        "{url} sslcert={} sslkey={}",
        cert.display(),
        key.display()
    ));
    let store = PostgresStore::builder(&url)
        .tls(TlsSettings::new().verify(true).client_cert(&cert, &key))
        .build()
        .unwrap();
    store.ping().unwrap();

    // Redis with `--tls-auth-clients yes`.
    let redis_url = format!("rediss://localhost:{}", servers.redis_mtls_port);
    let without = RedisStreams::builder(&redis_url)
        .tls(redis_tls(servers))
        .connect_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    assert!(without.ping(Duration::from_secs(3)).is_err());
    let with = RedisStreams::builder(&redis_url)
        .tls(redis_tls(servers).client_cert(&cert, &key))
        .build()
        .unwrap();
    with.ping(Duration::from_secs(3)).unwrap();

    // A missing file is named at build(), not at the first connection.
    let missing = PostgresStore::builder(format!(
        "{url} sslcert=/nonexistent.pem sslkey={}",
        key.display()
    ))
    .build()
    .unwrap_err();
    assert!(matches!(missing, StoreError::Tls(_)), "{missing}");
    assert!(
        missing.to_string().contains("/nonexistent.pem"),
        "{missing}"
    );
}

/// A Redis Cluster over TLS (`rediss+cluster://`): entries published to streams on several
/// masters are read back with the test CA verified; another authority is refused, as an outage;
/// `#insecure` connects unchecked.
fn cluster_over_tls(servers: &Servers) {
    let tls_dir = servers.file("cluster-tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    for (from, to) in [
        ("cluster-node.pem", "server.pem"),
        ("cluster-node.key", "server.key"),
        ("ca.pem", "ca.pem"),
    ] {
        std::fs::copy(servers.file(from), tls_dir.join(to)).unwrap();
    }
    let Some(cluster) =
        support::cluster::PrivateCluster::start_with_tls("tls_to_postgres_and_redis", &tls_dir)
    else {
        return;
    };
    let url = cluster.url();
    assert!(url.starts_with("rediss+cluster://"), "{url}");

    let redis = RedisStreams::builder(&url)
        .tls(redis_tls(servers))
        .build()
        .unwrap();
    redis.ping(Duration::from_secs(5)).unwrap();
    // Their slots (877, 8888, 12365, 13997) put them on all three masters.
    let streams = ["tls-orders", "tls-payments", "tls-refunds", "tls-invoices"];
    let fields = vec![("n".to_string(), b"1".to_vec())];
    let outgoing: Vec<eventflow::transport::OutgoingEntry<'_>> = streams
        .iter()
        .map(|stream| eventflow::transport::OutgoingEntry {
            stream,
            fields: &fields,
        })
        .collect();
    let results = redis.publish_entries(&outgoing).unwrap();
    for (stream, result) in streams.iter().zip(results) {
        let id = result.unwrap();
        redis.ensure_group(stream, "g").unwrap();
        let read = redis
            .read_group(&eventflow::transport::ReadRequest {
                stream,
                group: "g",
                consumer: "c",
                count: 10,
                block: Duration::ZERO,
            })
            .unwrap();
        assert_eq!(read.len(), 1, "{stream}");
        assert_eq!(read[0].id, id, "{stream}");
    }

    let rogue = RedisStreams::builder(&url)
        .tls(TlsSettings::new().ca_file(servers.file("rogue-ca.pem")))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let refused = rogue.publish(streams[0], fields.clone());
    assert!(
        matches!(refused, Err(TransportError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(rogue.ping(Duration::from_secs(2)).is_err());

    let unchecked = RedisStreams::builder(format!("{url}#insecure"))
        .build()
        .unwrap();
    unchecked.ping(Duration::from_secs(5)).unwrap();
}

/// The certificate authorities, the PostgreSQL cluster and the Redis servers of one run.
struct Servers {
    dir: PathBuf,
    pg_bin: PathBuf,
    pg_data: PathBuf,
    pg_port: u16,
    pg_started: bool,
    redis_port: u16,
    redis_mtls_port: u16,
    redis: Vec<Child>,
}

impl Servers {
    fn start() -> Option<Self> {
        let test = "tls_to_postgres_and_redis";
        let pg_bin = find_pg_bin();
        for (tool, found) in [
            ("openssl", on_path("openssl")),
            ("redis-server", on_path("redis-server")),
            ("initdb", pg_bin.is_some()),
        ] {
            if !found {
                let message = format!("{test}: `{tool}` is not installed");
                if std::env::var("EVENTFLOW_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
                    panic!("{message} (required: EVENTFLOW_REQUIRE_SERVICES=1)");
                }
                support::skipped(&message);
                return None;
            }
        }
        let dir = std::env::temp_dir().join(unique_name("eventflow_tls"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut servers = Servers {
            pg_data: dir.join("pg"),
            dir,
            pg_bin: pg_bin.unwrap(),
            pg_port: free_port(),
            pg_started: false,
            redis_port: free_port(),
            redis_mtls_port: free_port(),
            redis: Vec::new(),
        };
        servers.make_certificates();
        servers.start_postgres();
        servers.start_redis();
        Some(servers)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn redis_url(&self) -> String {
        format!("rediss://localhost:{}", self.redis_port)
    }

    fn make_certificates(&self) {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "rogue-ca"] {
            openssl(
                &self.dir,
                &[
                    &["req", "-x509"][..],
                    &ec[..],
                    &[
                        "-keyout",
                        &format!("{ca}.key"),
                        "-out",
                        &format!("{ca}.pem"),
                        "-days",
                        "2",
                        "-subj",
                        &format!("/CN=eventflow test {ca}"),
                        "-addext",
                        "basicConstraints=critical,CA:TRUE",
                        "-addext",
                        "keyUsage=critical,keyCertSign,cRLSign",
                    ][..],
                ]
                .concat(),
            );
        }
        for (name, cn, ext) in [
            (
                "server",
                "localhost",
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
            ),
            (
                // Cluster nodes connect to one another with their certificate, so it serves
                // as a client certificate too.
                "cluster-node",
                "localhost",
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n\
                 extendedKeyUsage=serverAuth,clientAuth\n\
                 subjectAltName=DNS:localhost,IP:127.0.0.1\n",
            ),
            (
                "client",
                "cert_user",
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n\
                 extendedKeyUsage=clientAuth\n",
            ),
        ] {
            std::fs::write(self.file(&format!("{name}.ext")), ext).unwrap();
            openssl(
                &self.dir,
                &[
                    &["req"][..],
                    &ec[..],
                    &[
                        "-keyout",
                        &format!("{name}.key"),
                        "-out",
                        &format!("{name}.csr"),
                        "-subj",
                        &format!("/CN={cn}"),
                    ][..],
                ]
                .concat(),
            );
            openssl(
                &self.dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-out",
                    &format!("{name}.pem"),
                    "-extfile",
                    &format!("{name}.ext"),
                ],
            );
        }
    }

    /// The cluster, run as the `postgres` OS user when the test runs as root (initdb refuses
    /// root).
    fn start_postgres(&mut self) {
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
        // Others may pass through the directory to the cluster's files; the keys stay private.
        set_mode(&self.dir, 0o755);
        std::fs::create_dir_all(&self.pg_data).unwrap();
        if as_root {
            run(Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(&self.pg_data));
        }
        set_mode(&self.pg_data, 0o700);
        let pg = |tool: &str| {
            let path = self.pg_bin.join(tool);
            if as_root {
                let mut command = Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(path);
                command
            } else {
                Command::new(path)
            }
        };
        run(pg("initdb").arg("-D").arg(&self.pg_data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        ]));
        for name in ["server.pem", "server.key", "ca.pem"] {
            std::fs::copy(self.file(name), self.pg_data.join(name)).unwrap();
            if as_root {
                run(Command::new("chown")
                    .arg("postgres:")
                    .arg(self.pg_data.join(name)));
            }
            set_mode(&self.pg_data.join(name), 0o600);
        }
        let conf = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n\
             ssl_ca_file = 'ca.pem'\nfsync = off\nmax_connections = 60\n",
            self.pg_port,
            self.pg_data.display()
        );
        append(&self.pg_data.join("postgresql.conf"), &conf);
        std::fs::write(
            self.pg_data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all tls_user 127.0.0.1/32 trust\n\
             hostnossl all tls_user 127.0.0.1/32 reject\n\
             hostssl all cert_user 127.0.0.1/32 cert\n",
        )
        .unwrap();
        run(pg("pg_ctl")
            .arg("-D")
            .arg(&self.pg_data)
            .arg("-l")
            .arg(self.pg_data.join("log"))
            .args(["-w", "-t", "60", "start"]));
        self.pg_started = true;
        let mut admin = postgres::Client::connect(
            &format!(
                "host={} port={} user=postgres dbname=postgres",
                self.pg_data.display(),
                self.pg_port
            ),
            postgres::NoTls,
        )
        .unwrap();
        admin
            .batch_execute(
                "CREATE ROLE tls_user LOGIN SUPERUSER; CREATE ROLE cert_user LOGIN SUPERUSER;",
            )
            .unwrap();
    }

    fn start_redis(&mut self) {
        for (port, auth_clients) in [(self.redis_port, "optional"), (self.redis_mtls_port, "yes")] {
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    "0",
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args([
                    "--tls-port",
                    &port.to_string(),
                    "--tls-auth-clients",
                    auth_clients,
                ])
                .arg("--tls-cert-file")
                .arg(self.file("server.pem"))
                .arg("--tls-key-file")
                .arg(self.file("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(self.file("ca.pem"))
                .stdout(Stdio::null())
                .spawn()
                .expect("start redis-server");
            self.redis.push(child);
            let up = wait_until(WAIT, || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            assert!(up, "redis-server with TLS on port {port} did not come up");
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.redis {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.pg_started {
            let mut stop = if Path::new("/usr/sbin/runuser").exists() && is_root() {
                let mut command = Command::new("runuser");
                command
                    .args(["-u", "postgres", "--"])
                    .arg(self.pg_bin.join("pg_ctl"));
                command
            } else {
                Command::new(self.pg_bin.join("pg_ctl"))
            };
            let _ = stop
                .arg("-D")
                .arg(&self.pg_data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").current_dir(dir).args(args));
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("{command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// The directory of `initdb` and `pg_ctl`: on the PATH, else Debian's newest version.
fn find_pg_bin() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(dir) = std::env::split_paths(&path)
            .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        {
            return Some(
                std::fs::canonicalize(dir.join("initdb"))
                    .ok()?
                    .parent()?
                    .to_path_buf(),
            );
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
