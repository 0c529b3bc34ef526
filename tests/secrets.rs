//! No secret from a connection setting ever shows: not in `Debug` of builders, stores and
//! relays, not in the library's errors (servers unreachable, settings invalid), not in what it
//! logs through `tracing` (captured here at every level), in every form the drivers accept.
//! And redaction itself, as a property: no generated password survives it.

mod support;

use eventflow::redact::{redact, secrets, Scrubber, REDACTED};
use eventflow::store::outbox::PostgresOutbox;
use eventflow::store::{InboxStore, PostgresStore, SqliteStore};
use eventflow::transport::{MemoryStream, RedisStreams, Transport};
use eventflow::{Event, HandlerResult, InboxConsumer, OutboxRelay};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use support::secrets::{assert_no_secret, redis_forms, PasswordRedis, PgTarget, SECRET};

/// Everything logged in this test binary, every level, every field, as text.
fn logs() -> &'static Mutex<Vec<String>> {
    use tracing_subscriber::layer::SubscriberExt;

    struct Capture;
    struct Fields(String);

    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.push_str(&format!(" {}={value}", field.name()));
        }
        fn record_error(
            &mut self,
            field: &tracing::field::Field,
            value: &(dyn std::error::Error + 'static),
        ) {
            // The error and its whole chain of sources.
            let mut text = value.to_string();
            let mut source = value.source();
            while let Some(next) = source {
                text.push_str(&format!(": {next}"));
                source = next.source();
            }
            self.0
                .push_str(&format!(" {}={text} ({value:?})", field.name()));
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut fields = Fields(format!(
                "{} {}",
                event.metadata().level(),
                event.metadata().target()
            ));
            event.record(&mut fields);
            LOGS.lock().push(fields.0);
        }
    }

    static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture))
            .expect("no other global subscriber in this test binary");
    });
    &LOGS
}

/// Nothing captured so far shows the secret, and something was captured (the check can fail).
fn assert_logs_clean(at_least: usize) {
    let logs = logs().lock();
    assert!(
        logs.len() >= at_least,
        "expected at least {at_least} log events, got {}: {logs:#?}",
        logs.len()
    );
    for line in logs.iter() {
        assert_no_secret("a log event", line);
    }
}

/// An error as anyone could see it: its message, its `Debug`, and every source's message.
fn shown(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{error} / {error:?}");
    let mut source = error.source();
    while let Some(next) = source {
        text.push_str(&format!(" / {next} / {next:?}"));
        source = next.source();
    }
    text
}

#[test]
fn debug_of_builders_stores_and_relays_shows_no_secret() {
    logs();
    let redis = format!("redis://:{SECRET}@127.0.0.1:1");
    for form in PgTarget::unreachable().forms() {
        let builder = PostgresStore::builder(form.as_str());
        let debug = format!("{builder:?}");
        assert_no_secret("PostgresStoreBuilder", &debug);
        assert!(debug.contains(REDACTED), "{debug}");
        assert!(
            debug.contains("host=127.0.0.1"),
            "the rest is shown: {debug}"
        );
        let store = builder.build().expect("building does not connect");
        assert_no_secret("PostgresStore", &format!("{store:?} {:?}", store.pool()));
        let outbox = PostgresOutbox::builder(form.as_str());
        assert_no_secret("PostgresOutboxBuilder", &format!("{outbox:?}"));
        let outbox = outbox.build().expect("building does not connect");
        assert_no_secret("PostgresOutbox", &format!("{outbox:?} {:?}", outbox.pool()));

        let consumer = InboxConsumer::builder()
            .postgres(form.as_str())
            .redis(redis.as_str());
        let debug = format!("{consumer:?}");
        assert_no_secret("ConsumerBuilder", &debug);
        assert!(debug.matches(REDACTED).count() >= 2, "{debug}");
        let relay = OutboxRelay::builder()
            .postgres(form.as_str())
            .redis(redis.as_str());
        let debug = format!("{relay:?}");
        assert_no_secret("RelayBuilder", &debug);
        assert!(debug.matches(REDACTED).count() >= 2, "{debug}");
    }
    for form in redis_forms("127.0.0.1", 1) {
        let builder = RedisStreams::builder(form.as_str());
        let debug = format!("{builder:?}");
        assert_no_secret("RedisStreamsBuilder", &debug);
        assert!(debug.contains(REDACTED), "{debug}");
        match builder.build() {
            Ok(transport) => assert_no_secret("RedisStreams", &format!("{transport:?}")),
            // rediss:// without TLS support built in.
            Err(error) => assert_no_secret("RedisStreams::build", &shown(&error)),
        }
    }
    assert_logs_clean(0);
}

#[test]
fn errors_show_no_secret_when_servers_are_unreachable_or_settings_invalid() {
    logs();
    let quick = Duration::from_secs(1);
    let mut errors = 0;
    // Each form in a thread of its own: the consumer and the relay wait out their 5 s
    // connection timeout.
    let forms = PgTarget::unreachable().forms();
    errors += std::thread::scope(|scope| {
        let threads: Vec<_> = forms
            .iter()
            .map(|form| scope.spawn(move || unreachable_postgres(form, quick)))
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum::<usize>()
    });
    let forms = redis_forms("127.0.0.1", 1);
    errors += std::thread::scope(|scope| {
        let threads: Vec<_> = forms
            .iter()
            .map(|form| scope.spawn(move || unreachable_redis(form, quick)))
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum::<usize>()
    });
    // Settings that do not parse: the error says which setting, and nothing of its value.
    for bad in [
        format!("host=127.0.0.1 password='{SECRET}"),
        format!("host=127.0.0.1 port=x password={SECRET}"),
        format!("host=127.0.0.1 password=se cret={SECRET}"),
        format!("postgres://app:{SECRET}@127.0.0.1:99999/app"),
    ] {
        let error = PostgresStore::builder(bad.as_str()).build().unwrap_err();
        assert_no_secret("PostgresStoreBuilder::build", &shown(&error));
        let error = PostgresOutbox::builder(bad.as_str()).build().unwrap_err();
        assert_no_secret("PostgresOutboxBuilder::build", &shown(&error));
        let error = OutboxRelay::builder()
            .postgres(bad.as_str())
            .transport(MemoryStream::new())
            .build()
            .unwrap_err();
        assert_no_secret("RelayBuilder::build", &shown(&error));
        errors += 3;
    }
    for bad in [
        format!("redis://:{SECRET}@127.0.0.1:1/not-a-db"),
        format!("redis://:{SECRET}@[::1/"),
        format!("redis://:{SECRET}@0.0.0.0:1"),
    ] {
        let error = RedisStreams::builder(bad.as_str()).build().unwrap_err();
        assert_no_secret("RedisStreamsBuilder::build", &shown(&error));
        errors += 1;
    }
    assert_eq!(errors, 6 * 4 + 3 * 2 + 4 * 3 + 3);
    assert_logs_clean(1);
}

/// The store, the outbox, a consumer and a relay on the unreachable database `form`: their
/// errors never show its secret. Returns how many errors it checked.
fn unreachable_postgres(form: &str, quick: Duration) -> usize {
    let store = PostgresStore::builder(form)
        .connect_timeout(quick)
        .build()
        .unwrap();
    let error = store.migrate().expect_err("nothing listens on port 1");
    assert_no_secret("PostgresStore::migrate", &shown(&error));
    let outbox = PostgresOutbox::builder(form)
        .connect_timeout(quick)
        .build()
        .unwrap();
    let error = eventflow::store::outbox::OutboxStore::migrate(&outbox).unwrap_err();
    assert_no_secret("PostgresOutbox::migrate", &shown(&error));
    // The consumer and the relay fail to start on the unreachable database.
    let consumer = InboxConsumer::builder()
        .postgres(form)
        .transport(MemoryStream::new())
        .stream("s")
        .group("g")
        .handler(|_tx, _row| -> HandlerResult { Ok(()) })
        .build();
    let error = match consumer {
        Ok(consumer) => consumer.start().map(drop).unwrap_err(),
        Err(error) => error,
    };
    assert_no_secret("InboxConsumer", &shown(&error));
    let relay = OutboxRelay::builder()
        .postgres(form)
        .transport(MemoryStream::new())
        .build()
        .unwrap();
    let error = relay.start().map(drop).unwrap_err();
    assert_no_secret("OutboxRelay::start", &shown(&error));
    4
}

/// The transport and a consumer on the unreachable Redis `form`: their errors never show its
/// secret. Returns how many errors it checked.
fn unreachable_redis(form: &str, quick: Duration) -> usize {
    let error = match RedisStreams::builder(form).connect_timeout(quick).build() {
        Ok(redis) => redis.ensure_group("s", "g").unwrap_err(),
        Err(error) => error,
    };
    assert_no_secret("RedisStreams", &shown(&error));
    let consumer = InboxConsumer::builder()
        .sqlite_in_memory()
        .redis(form)
        .stream("s")
        .group("g")
        .handler(|_tx, _row| -> HandlerResult { Ok(()) })
        .build();
    let error = match consumer {
        Ok(consumer) => consumer.start().map(drop).unwrap_err(),
        Err(error) => error,
    };
    assert_no_secret("InboxConsumer", &shown(&error));
    2
}

/// A consumer and a relay reading and writing through a Redis that wants [`SECRET`], which
/// then dies: their retries log the driver's errors, at every level.
#[test]
fn logs_show_no_secret_while_redis_comes_and_goes() {
    let test = "logs_show_no_secret_while_redis_comes_and_goes";
    logs();
    let Some(redis) = PasswordRedis::start(test) else {
        return;
    };
    let mut forms = vec![
        format!("redis://:{SECRET}@127.0.0.1:{}", redis.port),
        format!("redis://default:{SECRET}@127.0.0.1:{}/0", redis.port),
    ];
    if let Some(postgres) = PgTarget::reachable().filter(|_| support::postgres_available(test)) {
        // The password is sent and ignored (trust): the store works, its logs stay clean.
        for form in postgres.forms() {
            let store = PostgresStore::builder(form.as_str()).build().unwrap();
            store.ping().expect("the test database answers");
            assert_no_secret("PostgresStore", &format!("{store:?}"));
        }
    }
    let stream = support::unique_name("secrets");
    let sqlite = Arc::new(SqliteStore::open_in_memory().unwrap());
    let handle = InboxConsumer::builder()
        .redis(forms[0].as_str())
        .store(sqlite.clone())
        .stream(&stream)
        .group("g")
        .block(Duration::from_millis(50))
        .handler(|_tx, _row| -> HandlerResult { Ok(()) })
        .build()
        .unwrap()
        .start()
        .expect("the private Redis answers with the password");
    let publisher = RedisStreams::connect(&forms[1]).unwrap();
    let event = Event::new("Secretive", uuid::Uuid::new_v4(), serde_json::json!({}));
    publisher.publish(&stream, event.to_entry_fields()).unwrap();
    assert!(support::wait_until(Duration::from_secs(20), || {
        handle.stats().processed == 1
    }));
    let relay = OutboxRelay::builder()
        .sqlite(std::env::temp_dir().join(format!("{}.db", support::unique_name("secrets"))))
        .redis(forms.pop().unwrap())
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap()
        .start()
        .unwrap();
    let before = logs().lock().len();
    drop(redis); // killed: the readers and the relay log their failures and retry
    assert!(
        support::wait_until(Duration::from_secs(20), || logs().lock().len() > before + 2),
        "the outage was logged"
    );
    handle.shutdown(Duration::from_secs(10)).unwrap();
    relay.shutdown(Duration::from_secs(10)).unwrap();
    assert_logs_clean(before + 3);
    // The transports logged their URL, redacted.
    let redacted = format!("url=redis://:{REDACTED}@127.0.0.1:");
    assert!(logs().lock().iter().any(|line| line.contains(&redacted)));
}

mod property {
    use super::*;
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    use proptest::prelude::*;

    /// A password: a marker that cannot appear in a rendered setting, then anything printable
    /// (spaces, quotes, backslashes, `@`, `:`, `/`, `%`, `=`, non-ASCII).
    fn password() -> impl Strategy<Value = String> {
        "[ -~é日€]{0,24}".prop_map(|rest| format!("Qz{rest}"))
    }

    /// `value` quoted for `key=value` text, as libpq reads it.
    fn quoted(value: &str) -> String {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
    }

    proptest! {
        #[test]
        fn no_generated_password_survives_redaction(password in password(), spaced in any::<bool>()) {
            let encoded = utf8_percent_encode(&password, NON_ALPHANUMERIC).to_string();
            let eq = if spaced { " = " } else { "=" };
            let forms = [
                format!("host=db user=app password{eq}{} dbname=app", quoted(&password)),
                format!("password{eq}{} host=db", quoted(&password)),
                format!("postgres://app:{encoded}@db:5432/app"),
                format!("postgresql://app@db/app?password={encoded}&sslmode=disable"),
                format!("redis://:{encoded}@cache:6379"),
                format!("redis://default:{encoded}@cache:6379/1"),
                format!("rediss://default:{encoded}@cache"),
                format!("redis+unix:///run/redis.sock?db=1&pass={encoded}"),
            ];
            for form in forms {
                let shown = redact(&form);
                prop_assert!(!shown.contains(&password), "{form} → {shown}");
                prop_assert!(!shown.contains(&encoded), "{form} → {shown}");
                prop_assert!(shown.contains(REDACTED), "{form} → {shown}");
                // The parser found the password, so a message echoing it is scrubbed too.
                prop_assert!(secrets(&form).contains(&password), "{form}: {:?}", secrets(&form));
                let scrubbed = Scrubber::new([form.as_str()])
                    .scrub(&format!("login as {password} failed ({encoded})"));
                prop_assert!(!scrubbed.contains(&password), "{scrubbed}");
            }
        }

        #[test]
        fn unparseable_settings_show_nothing_of_themselves(junk in "[ -&(-\\[\\]-~]{1,40}") {
            let form = format!("host=db password='{junk}Qz");
            let shown = redact(&form);
            // An unterminated quote (no quote or backslash in the junk) never parses: nothing of the setting is shown.
            prop_assert!(!shown.contains("Qz") && !shown.contains("host=db"), "{shown}");
        }
    }
}
