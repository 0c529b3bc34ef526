//! Connection strings and URLs shown without their secrets.
//!
//! A database or Redis setting can carry a password in many forms: URL userinfo
//! (`postgres://app:secret@db/app`, `redis://:secret@host`, `rediss://user:secret@host`), a query
//! parameter (`postgres://app@db/app?password=secret`), or `key=value` text with or without
//! spaces and quotes (`password = secret`, `password='se cret'`). Hand-made search-and-replace
//! misses some of them, so every place eventflow shows a setting (`Debug` of builders, stores
//! and relays, error messages, `tracing` fields, the `eventflow` command) goes through
//! [`redact`]: it parses the setting with the driver's own parser (`postgres::Config` for
//! PostgreSQL) or a URL parser (the `url` crate, for Redis and other URLs), and renders it again
//! from the parsed parts with every credential replaced by `<redacted>`. A setting that does not
//! parse is shown as a placeholder, never as given: when the parser cannot read a setting, it
//! cannot say where the password in it is either.
//!
//! [`Scrubber`] is the second line of defence for text eventflow did not write (a driver's or a
//! server's error message): it replaces every secret the settings hold, as given and decoded.

use std::fmt;

#[cfg(feature = "redis")]
use crate::transport::redis_streams::cluster_url;

/// What a credential is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Shown for a PostgreSQL connection string the driver cannot parse.
pub const UNPARSEABLE_POSTGRES: &str = "<unparseable PostgreSQL connection string>";

/// Shown for a URL the URL parser cannot parse.
pub const UNPARSEABLE_URL: &str = "<unparseable URL>";

/// Shown for a setting that is neither a URL, a `key=value` string nor a plain file path.
pub const UNRECOGNISED: &str = "<unrecognised connection setting>";

/// Query parameters whose values are never secret, so they are shown.
#[cfg(feature = "redis")]
const PLAIN_QUERY_KEYS: &[&str] = &["db", "protocol"];

/// The forms a setting comes in.
enum Form {
    /// `postgres://...`, `postgresql://...` or `key=value ...`: the PostgreSQL driver's forms.
    Postgres,
    /// Any other `scheme://...`: Redis (`redis`, `rediss`, `redis+unix`, `valkey`, ...).
    Url,
    /// `sqlite:path`, `sqlite://path` or a plain path: nothing secret in it.
    Path,
}

impl Form {
    fn of(setting: &str) -> Self {
        let trimmed = setting.trim_start();
        if trimmed.starts_with("sqlite:") {
            Self::Path
        } else if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
            Self::Postgres
        } else if starts_with_scheme(trimmed) {
            Self::Url
        } else if trimmed.contains('=') {
            Self::Postgres
        } else {
            Self::Path
        }
    }
}

/// Whether `setting` opens with a URL scheme (`redis://`): letters, then letters, digits, `+`,
/// `-` or `.`, then `://`. A `://` further on is a value's (`password='a://b'` in `key=value`
/// text), not a scheme.
fn starts_with_scheme(setting: &str) -> bool {
    setting.split_once("://").is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// `setting` (a PostgreSQL connection string in URL or `key=value` form, a Redis URL, or a
/// SQLite path) rendered from its parsed parts with every credential shown as `<redacted>`.
///
/// A PostgreSQL string comes out in `key=value` form (`host=db user=app dbname=app
/// password=<redacted>`) whichever form it went in; a URL keeps its form, with the password in
/// its userinfo and the values of its query parameters other than `db` and `protocol`
/// redacted. A setting that does not parse comes out as a placeholder such as
/// [`UNPARSEABLE_POSTGRES`], with nothing of it shown. A plain path is shown as it is, unless it
/// holds an `@` (it may be a URL without its scheme).
///
/// ```
/// use eventflow::redact::redact;
/// assert_eq!(
///     redact("postgres://app@db.example/app?password=s3cret"),
///     "host=db.example port=5432 user=app dbname=app password=<redacted>"
/// );
/// assert_eq!(
///     redact("host=db user = app password = 's3 cret'"),
///     "host=db user=app password=<redacted>"
/// );
/// assert_eq!(
///     redact("rediss://default:s3cret@cache:6380/2"),
///     "rediss://default:<redacted>@cache:6380/2"
/// );
/// assert_eq!(
///     redact("redis+cluster://:s3cret@10.0.0.1:7000,10.0.0.2:7000"),
///     "redis+cluster://:<redacted>@10.0.0.1:7000,10.0.0.2:7000"
/// );
/// assert_eq!(redact("sqlite:///var/lib/app/inbox.db"), "sqlite:///var/lib/app/inbox.db");
/// ```
pub fn redact(setting: &str) -> String {
    match Form::of(setting) {
        Form::Postgres => postgres(setting),
        Form::Url => url(setting),
        Form::Path if setting.contains('@') => UNRECOGNISED.to_string(),
        Form::Path => setting.to_string(),
    }
}

/// The secrets in `setting` (passwords, and the values of query parameters other than `db` and
/// `protocol`), both as written and decoded, for a [`Scrubber`]. Empty when there are none or
/// the setting does not parse.
pub fn secrets(setting: &str) -> Vec<String> {
    let mut found = Vec::new();
    match Form::of(setting) {
        Form::Postgres => {
            #[cfg(feature = "postgres")]
            if let Ok(info) = parse_postgres(setting) {
                if let Some(password) = info.config.get_password() {
                    found.push(String::from_utf8_lossy(password).into_owned());
                }
                found.extend(info.tls.password);
            }
            // The URL form's passwords as written (percent-encoded) too.
            if setting.contains("://") {
                found.extend(url_secrets(setting, Some(&["password", "sslpassword"])));
            }
        }
        Form::Url => found.extend(url_secrets(setting, None)),
        Form::Path => {}
    }
    found.retain(|secret| !secret.is_empty());
    found.sort();
    found.dedup();
    found
}

/// Replaces the secrets of some settings wherever they appear in a text: for messages
/// eventflow did not write itself (a driver's or a server's), before they are shown.
#[derive(Clone, Default)]
pub struct Scrubber {
    /// Longest first, so a secret holding another is replaced whole.
    secrets: Vec<String>,
}

impl Scrubber {
    /// A scrubber of every secret in `settings` (see [`secrets`]).
    pub fn new<'a>(settings: impl IntoIterator<Item = &'a str>) -> Self {
        let mut secrets: Vec<String> = settings.into_iter().flat_map(secrets).collect();
        secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        secrets.dedup();
        Self { secrets }
    }

    /// `text` with every secret replaced by `<redacted>`.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), REDACTED);
            }
        }
        text
    }
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scrubber")
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

/// A connection setting kept by a builder: its `Debug` is the [`redact`]ed form, so deriving
/// `Debug` on the builder cannot show the password.
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(dead_code))]
pub(crate) struct ConnectionString(String);

#[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(dead_code))]
impl ConnectionString {
    pub(crate) fn new(setting: impl Into<String>) -> Self {
        Self(setting.into())
    }

    /// The setting as given, for the driver; never for display.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact(&self.0), f)
    }
}

impl fmt::Display for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

/// The parser every connection uses (the driver's, behind eventflow's reading of the TLS
/// keys), so the password is found in every form the driver accepts.
#[cfg(feature = "postgres")]
pub(crate) fn parse_postgres(
    setting: &str,
) -> Result<crate::store::conninfo::ConnInfo, crate::store::conninfo::ParseError> {
    crate::store::conninfo::parse(setting)
}

/// The driver's message for a connection string it could not parse, with whatever it quotes
/// from the string (between backticks: an option name, a character) kept only when it is one
/// of the driver's own option names or punctuation. The driver names an unknown option as
/// written, and in `password=se cret=x` that "option" is part of the password.
#[cfg(feature = "postgres")]
pub(crate) fn parse_error(error: &postgres::Error) -> String {
    const KNOWN: &[&str] = &[
        "host",
        "hostaddr",
        "port",
        "user",
        "password",
        "dbname",
        "options",
        "application_name",
        "sslmode",
        "sslnegotiation",
        "connect_timeout",
        "tcp_user_timeout",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_retries",
        "target_session_attrs",
        "channel_binding",
        "load_balance_hosts",
        "=",
        "'",
    ];
    let message = match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    };
    let mut out = String::new();
    for (i, piece) in message.split('`').enumerate() {
        if i > 0 {
            out.push('`');
        }
        // Odd pieces are between backticks.
        if i % 2 == 1 && !KNOWN.contains(&piece) {
            out.push_str("...");
        } else {
            out.push_str(piece);
        }
    }
    out
}

#[cfg(feature = "postgres")]
fn postgres(setting: &str) -> String {
    match parse_postgres(setting) {
        Ok(info) => render_postgres(&info),
        Err(_) => UNPARSEABLE_POSTGRES.to_string(),
    }
}

#[cfg(not(feature = "postgres"))]
fn postgres(_setting: &str) -> String {
    // Without the driver there is no parser to trust.
    UNPARSEABLE_POSTGRES.to_string()
}

/// `key=value` text of the parts worth seeing, the passwords as `<redacted>`. Options and the
/// other settings are left out: `options` is free text that could hold anything. The TLS
/// files are named (paths are not secret); their contents are never read here.
#[cfg(feature = "postgres")]
fn render_postgres(info: &crate::store::conninfo::ConnInfo) -> String {
    use postgres::config::Host;
    let config = &info.config;
    let mut parts = Vec::new();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.to_string_lossy().into_owned(),
        })
        .collect();
    if !hosts.is_empty() {
        parts.push(format!("host={}", quote(&hosts.join(","))));
    }
    let addrs: Vec<String> = config
        .get_hostaddrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    if !addrs.is_empty() {
        parts.push(format!("hostaddr={}", addrs.join(",")));
    }
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    if !ports.is_empty() {
        parts.push(format!("port={}", ports.join(",")));
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("user={}", quote(user)));
    }
    if let Some(dbname) = config.get_dbname() {
        parts.push(format!("dbname={}", quote(dbname)));
    }
    match info.tls.mode {
        // `prefer` is the default; say nothing.
        None | Some(crate::tls::SslMode::Prefer) => {}
        Some(mode) => parts.push(format!("sslmode={}", mode.as_str())),
    }
    if let Some(root) = &info.tls.root_cert {
        parts.push(format!("sslrootcert={}", quote(root)));
    }
    if let Some(cert) = &info.tls.cert {
        parts.push(format!("sslcert={}", quote(&cert.to_string_lossy())));
    }
    if let Some(key) = &info.tls.key {
        parts.push(format!("sslkey={}", quote(&key.to_string_lossy())));
    }
    if config.get_password().is_some() {
        parts.push(format!("password={REDACTED}"));
    }
    if info.tls.password.is_some() {
        parts.push(format!("sslpassword={REDACTED}"));
    }
    parts.join(" ")
}

/// A `key=value` value, quoted when it needs to be.
#[cfg(feature = "postgres")]
fn quote(value: &str) -> String {
    if !value.is_empty() && !value.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return value.to_string();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The URL with its password and secret query values as `<redacted>`; a fragment other than
/// `#insecure` (the only one Redis reads) is redacted too.
#[cfg(feature = "redis")]
fn url(setting: &str) -> String {
    if cluster_url::is_cluster_url(setting) {
        return redis_cluster_url(setting);
    }
    let Ok(url) = url::Url::parse(setting.trim()) else {
        return UNPARSEABLE_URL.to_string();
    };
    render_url(&url, url.scheme(), &host_and_port(&url))
}

/// A Redis Cluster URL (`redis+cluster://user:secret@a:7000,b:7001`) redacted as its first
/// seed would be, with every seed's host and port shown; a placeholder if any seed does not
/// parse.
#[cfg(feature = "redis")]
fn redis_cluster_url(setting: &str) -> String {
    let Ok(parsed) = cluster_url::ClusterUrl::parse(setting) else {
        return UNPARSEABLE_URL.to_string();
    };
    let seeds: Option<Vec<url::Url>> = parsed
        .seed_urls()
        .iter()
        .map(|seed| url::Url::parse(seed).ok())
        .collect();
    let Some(seeds) = seeds.filter(|seeds| !seeds.is_empty()) else {
        return UNPARSEABLE_URL.to_string();
    };
    let hosts: Vec<String> = seeds.iter().map(host_and_port).collect();
    let scheme = if parsed.tls {
        "rediss+cluster"
    } else {
        "redis+cluster"
    };
    render_url(&seeds[0], scheme, &hosts.join(","))
}

#[cfg(feature = "redis")]
fn host_and_port(url: &url::Url) -> String {
    let mut out = url.host_str().unwrap_or_default().to_string();
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    out
}

/// `url` rendered with `scheme` and `hosts` in place of its own, its credentials redacted.
#[cfg(feature = "redis")]
fn render_url(url: &url::Url, scheme: &str, hosts: &str) -> String {
    let mut out = format!("{scheme}:");
    if url.has_authority() {
        out.push_str("//");
    }
    if !url.username().is_empty() || url.password().is_some() {
        out.push_str(url.username());
        if url.password().is_some() {
            out.push(':');
            out.push_str(REDACTED);
        }
        out.push('@');
    }
    out.push_str(hosts);
    out.push_str(url.path());
    if url.query().is_some() {
        let pairs: Vec<String> = url
            .query_pairs()
            .map(|(key, value)| {
                let key: String = url::form_urlencoded::byte_serialize(key.as_bytes()).collect();
                if PLAIN_QUERY_KEYS.contains(&key.as_str()) {
                    let value: String =
                        url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
                    format!("{key}={value}")
                } else {
                    format!("{key}={REDACTED}")
                }
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    match url.fragment() {
        None => {}
        Some("insecure") => out.push_str("#insecure"),
        Some(_) => {
            out.push('#');
            out.push_str(REDACTED);
        }
    }
    out
}

#[cfg(not(feature = "redis"))]
fn url(_setting: &str) -> String {
    // Without the URL parser there is nothing to trust.
    UNPARSEABLE_URL.to_string()
}

/// The URL's password and secret query values, as written and decoded: the values of
/// `only_keys` (PostgreSQL URLs, whose other parameters such as `sslmode` and `host` are not
/// secret and would be scrubbed from every message), else of every key but `db` and
/// `protocol`.
#[cfg(feature = "redis")]
fn url_secrets(setting: &str, only_keys: Option<&[&str]>) -> Vec<String> {
    let secret_key = |key: &str| match only_keys {
        Some(only) => only.contains(&key),
        None => !PLAIN_QUERY_KEYS.contains(&key),
    };
    if cluster_url::is_cluster_url(setting) {
        // Every seed carries the same credentials and query: the first one's are all of them.
        return match cluster_url::ClusterUrl::parse(setting) {
            Ok(parsed) => parsed
                .seed_urls()
                .first()
                .map(|seed| url_secrets(seed, only_keys))
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
    }
    let Ok(url) = url::Url::parse(setting.trim()) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    if let Some(password) = url.password() {
        found.push(password.to_string());
        found.push(percent_decode(password));
    }
    if let Some(query) = url.query() {
        for raw in query.split('&') {
            let (key, value) = raw.split_once('=').unwrap_or((raw, ""));
            if secret_key(key) {
                found.push(value.to_string());
            }
        }
        for (key, value) in url.query_pairs() {
            if secret_key(&key) {
                found.push(value.into_owned());
            }
        }
    }
    if let Some(fragment) = url.fragment().filter(|_| only_keys.is_none()) {
        if fragment != "insecure" {
            found.push(fragment.to_string());
        }
    }
    found
}

#[cfg(not(feature = "redis"))]
fn url_secrets(_setting: &str, _only_keys: Option<&[&str]>) -> Vec<String> {
    Vec::new()
}

/// `%XX` decoded, as drivers decode userinfo (`+` stays `+`).
#[cfg(feature = "redis")]
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "Hunter2-Xyzzy";

    /// Every form a driver accepts, each holding `SECRET` as its credential.
    fn forms() -> Vec<String> {
        vec![
            format!("postgres://app:{SECRET}@db.example:5432/app"),
            format!("postgresql://app:{SECRET}@db.example/app?sslmode=require"),
            format!("postgres://app@db.example/app?password={SECRET}"),
            format!("postgresql:///app?host=/run/postgresql&password={SECRET}"),
            format!("host=db user=app password={SECRET} dbname=app"),
            format!("host=db user=app password = {SECRET} dbname=app"),
            format!("host=db user=app password ={SECRET}"),
            format!("host=db password='{SECRET}' user=app"),
            format!("host=db password = 'se cret {SECRET}' user=app"),
            format!("password='{SECRET}\\'s' host=db"),
            format!("host=db sslmode=verify-full sslrootcert=/ca.pem password={SECRET}"),
            format!("host=db sslcert=/c.pem sslkey=/c.key sslpassword='{SECRET}'"),
            format!("postgres://app@db/app?sslrootcert=%2Fca.pem&sslpassword={SECRET}"),
            format!("redis://:{SECRET}@127.0.0.1:6379/0"),
            format!("redis://default:{SECRET}@127.0.0.1:6379"),
            format!("rediss://default:{SECRET}@cache.example:6380/1"),
            format!("rediss://:{SECRET}@cache.example#insecure"),
            format!("redis+unix:///run/redis.sock?db=1&pass={SECRET}"),
            format!("redis://127.0.0.1:6379/?password={SECRET}"),
            format!("redis+cluster://:{SECRET}@10.0.0.1:7000,10.0.0.2:7000"),
            format!("redis+cluster://app:{SECRET}@a:7000,b:7001/?protocol=resp3"),
            format!("rediss+cluster://10.0.0.1:7000/0?pass={SECRET}"),
        ]
    }

    #[test]
    fn no_form_shows_its_secret() {
        for form in forms() {
            let shown = redact(&form);
            assert!(!shown.contains(SECRET), "{form} → {shown}");
            assert!(!shown.contains("cret"), "{form} → {shown}");
            assert!(shown.contains(REDACTED), "{form} → {shown}");
            assert!(
                secrets(&form).iter().any(|secret| secret.contains(SECRET)),
                "{form}: {:?}",
                secrets(&form)
            );
        }
    }

    #[test]
    fn the_rest_of_the_setting_is_shown() {
        assert_eq!(
            redact(&format!("postgres://app:{SECRET}@db.example:5432/app")),
            "host=db.example port=5432 user=app dbname=app password=<redacted>"
        );
        assert_eq!(
            redact("host=/run/postgresql user='my app' dbname=app sslmode=disable"),
            "host=/run/postgresql user='my app' dbname=app sslmode=disable"
        );
        assert_eq!(
            redact(&format!("redis+unix:///run/redis.sock?db=1&pass={SECRET}")),
            "redis+unix:///run/redis.sock?db=1&pass=<redacted>"
        );
        assert_eq!(
            redact(&format!(
                "postgresql://app:{SECRET}@db/app?sslmode=verify-ca&sslrootcert=/etc/ca.pem"
            )),
            "host=db port=5432 user=app dbname=app sslmode=verify-ca sslrootcert=/etc/ca.pem \
             password=<redacted>"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact(&format!(
                "redis+cluster://app:{SECRET}@a:7000, b:7001/?db=0"
            )),
            "redis+cluster://app:<redacted>@a:7000,b:7001/?db=0"
        );
        assert_eq!(redact("/var/lib/app/inbox.db"), "/var/lib/app/inbox.db");
        assert_eq!(redact("sqlite:inbox.db"), "sqlite:inbox.db");
    }

    #[test]
    fn what_does_not_parse_is_not_shown() {
        for (bad, placeholder) in [
            (format!("host=db password='{SECRET}"), UNPARSEABLE_POSTGRES),
            (
                format!("host=db port=x password={SECRET}"),
                UNPARSEABLE_POSTGRES,
            ),
            (
                format!("postgres://app:{SECRET}@db:99999/app"),
                UNPARSEABLE_POSTGRES,
            ),
            (format!("redis://:{SECRET}@[::1/"), UNPARSEABLE_URL),
            (
                format!("redis+cluster://:{SECRET}@a:1,[::1"),
                UNPARSEABLE_URL,
            ),
            (
                format!("redis+cluster://:{SECRET}@a:1,,b:2"),
                UNPARSEABLE_URL,
            ),
            (format!("app:{SECRET}@db/app"), UNRECOGNISED),
        ] {
            assert_eq!(redact(&bad), placeholder, "{bad}");
        }
    }

    #[test]
    #[cfg(feature = "postgres")]
    fn a_value_holding_a_scheme_does_not_make_key_value_text_a_url() {
        let setting = "host=db user=app password='Qz://' dbname=app";
        let shown = redact(setting);
        assert!(!shown.contains("Qz://"), "{shown}");
        assert!(shown.contains(&format!("password={REDACTED}")), "{shown}");
        assert_eq!(secrets(setting), ["Qz://"]);
    }

    #[test]
    #[cfg(feature = "postgres")]
    fn parse_errors_quote_only_option_names() {
        let message = |setting: &str| parse_postgres(setting).unwrap_err().to_string();
        let unknown = message("host=db password=se cret=x");
        assert!(!unknown.contains("cret"), "{unknown}");
        assert!(unknown.contains("unknown option"), "{unknown}");
        let invalid = message("host=db port=x");
        assert!(invalid.contains("`port`"), "{invalid}");
        let unexpected = message("host=db password se");
        assert!(!unexpected.contains("`s`"), "{unexpected}");
        assert!(unexpected.contains("`=`"), "{unexpected}");
    }

    #[test]
    fn scrubbing_finds_secrets_as_written_and_decoded() {
        let scrubber = Scrubber::new([
            "postgres://app:p%40ss-word@db/app",
            "redis://:other-one@cache",
            "sqlite:inbox.db",
        ]);
        assert_eq!(
            scrubber.scrub("failed for p@ss-word, p%40ss-word and other-one"),
            "failed for <redacted>, <redacted> and <redacted>"
        );
        assert!(!format!("{scrubber:?}").contains("other-one"));
        // What is not secret stays, so messages keep their meaning.
        assert_eq!(
            secrets("postgresql://app@db/app?sslmode=require&host=/run/pg&password=pw-1"),
            ["pw-1"]
        );
    }

    #[test]
    fn a_kept_setting_debugs_redacted() {
        let kept = ConnectionString::new(format!("host=db password = {SECRET}"));
        assert_eq!(format!("{kept:?}"), "\"host=db password=<redacted>\"");
        assert_eq!(kept.to_string(), "host=db password=<redacted>");
        assert!(kept.expose().contains(SECRET));
    }
}
