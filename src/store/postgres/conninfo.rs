//! PostgreSQL connection strings, read once for every use: connecting, and showing them
//! redacted ([`crate::redact`]).
//!
//! The driver's parser (`postgres::Config`) refuses libpq's TLS keys it does not know
//! (`sslrootcert`, `sslcert`, `sslkey`, `sslpassword`, and `sslmode=verify-ca|verify-full`).
//! So those keys are taken out here, in both the `key=value` and the URL form, with the
//! driver's own tokenizing rules (quotes, backslash escapes, spaces around `=`; in URLs,
//! parameters split at `&` and percent-decoded), and the rest is handed to the driver's
//! parser. Errors never repeat a value: it may be a password.

use crate::tls::SslMode;
use postgres::config::SslMode as DriverSslMode;
use std::fmt;
use std::path::PathBuf;

/// The TLS keys of libpq that eventflow reads itself.
const TLS_KEYS: &[&str] = &["sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword"];

/// A connection string, read.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// Everything but the TLS keys, for the driver; its `sslmode` is set from
    /// [`TlsKeys::mode`].
    pub(crate) config: postgres::Config,
    /// The TLS keys given.
    pub(crate) tls: TlsKeys,
}

/// libpq's TLS keys, as given. Its `Debug` never shows `sslpassword`.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsKeys {
    pub(crate) mode: Option<SslMode>,
    /// A CA file, or `system` for the system's trust store.
    pub(crate) root_cert: Option<String>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    /// Never shown; eventflow refuses it (encrypted keys are not supported).
    pub(crate) password: Option<String>,
}

impl fmt::Debug for TlsKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsKeys")
            .field("mode", &self.mode)
            .field("root_cert", &self.root_cert)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field(
                "password",
                &self.password.as_ref().map(|_| crate::redact::REDACTED),
            )
            .finish()
    }
}

/// Why a connection string could not be read.
#[derive(Debug)]
pub(crate) enum ParseError {
    /// The string's syntax, described without its contents.
    Syntax(&'static str),
    /// `sslmode` named no mode eventflow knows.
    SslMode,
    /// The driver refused the rest.
    Driver(postgres::Error),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax(problem) => f.write_str(problem),
            Self::SslMode => f.write_str(
                "invalid value for option `sslmode`: expected disable, prefer, require, \
                 verify-ca or verify-full (`allow` is not supported)",
            ),
            Self::Driver(error) => f.write_str(&crate::redact::parse_error(error)),
        }
    }
}

impl std::error::Error for ParseError {}

/// Reads `setting` (`postgres://...`, `postgresql://...` or `key=value ...`).
pub(crate) fn parse(setting: &str) -> Result<ConnInfo, ParseError> {
    let mut tls = TlsKeys::default();
    let rest = match url_rest(setting) {
        Some(_) => take_from_url(setting, &mut tls)?,
        None => take_from_pairs(setting, &mut tls)?,
    };
    let mut config: postgres::Config = rest.parse().map_err(ParseError::Driver)?;
    if let Some(mode) = tls.mode {
        config.ssl_mode(match mode {
            SslMode::Disable => DriverSslMode::Disable,
            SslMode::Prefer => DriverSslMode::Prefer,
            _ => DriverSslMode::Require,
        });
    }
    Ok(ConnInfo { config, tls })
}

fn url_rest(setting: &str) -> Option<&str> {
    setting
        .strip_prefix("postgres://")
        .or_else(|| setting.strip_prefix("postgresql://"))
}

/// Records a TLS key's value; `false` when `key` is not one.
fn take(tls: &mut TlsKeys, key: &str, value: String) -> Result<bool, ParseError> {
    match key {
        "sslmode" => tls.mode = Some(SslMode::parse(&value).ok_or(ParseError::SslMode)?),
        "sslrootcert" => tls.root_cert = Some(value),
        "sslcert" => tls.cert = Some(value.into()),
        "sslkey" => tls.key = Some(value.into()),
        "sslpassword" => tls.password = Some(value),
        _ => return Ok(false),
    }
    debug_assert!(TLS_KEYS.contains(&key));
    Ok(true)
}

/// The URL without its TLS query parameters. As the driver does, the credentials end at the
/// first `@` and the query starts at the first `?` after them.
fn take_from_url(setting: &str, tls: &mut TlsKeys) -> Result<String, ParseError> {
    let after_credentials = setting.find('@').map_or(0, |at| at + 1);
    let Some(question) = setting[after_credentials..].find('?') else {
        return Ok(setting.to_string());
    };
    let question = after_credentials + question;
    let mut query = &setting[question + 1..];
    let mut kept = Vec::new();
    while !query.is_empty() {
        let Some(equals) = query.find('=') else {
            return Err(ParseError::Syntax(
                "unterminated parameter in the URL's query",
            ));
        };
        let raw_key = &query[..equals];
        let after = &query[equals + 1..];
        let (raw_value, next) = match after.find('&') {
            Some(amp) => (&after[..amp], &after[amp + 1..]),
            None => (after, ""),
        };
        query = next;
        let key = decode(raw_key)?;
        if !take(tls, &key, decode(raw_value)?)? {
            kept.push(format!("{raw_key}={raw_value}"));
        }
    }
    let mut rest = setting[..question].to_string();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok(rest)
}

fn decode(text: &str) -> Result<String, ParseError> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| ParseError::Syntax("a URL parameter is not UTF-8 once decoded"))
}

/// `key=value` text without the TLS keys, every value quoted again for the driver.
fn take_from_pairs(setting: &str, tls: &mut TlsKeys) -> Result<String, ParseError> {
    let mut kept = Vec::new();
    for (key, value) in Pairs::new(setting) {
        let (key, value) = (key?, value?);
        if !take(tls, key, value.clone())? {
            kept.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            ));
        }
    }
    Ok(kept.join(" "))
}

/// The driver's `key=value` tokenizer: keys run to whitespace or `=`, spaces may stand
/// around `=`, a value is quoted (`'...'`) or runs to whitespace, and a backslash takes the
/// next character as it is.
struct Pairs<'a> {
    text: &'a str,
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    failed: bool,
}

type Pair<'a> = (Result<&'a str, ParseError>, Result<String, ParseError>);

impl<'a> Pairs<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            chars: text.char_indices().peekable(),
            failed: false,
        }
    }

    fn skip_whitespace(&mut self) {
        while self.chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    }

    fn keyword(&mut self) -> Option<&'a str> {
        let start = self.chars.peek()?.0;
        let mut end = start;
        while let Some((i, c)) = self.chars.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            end = i + c.len_utf8();
        }
        (end > start).then(|| &self.text[start..end])
    }

    fn value(&mut self) -> Result<String, ParseError> {
        let quoted = self.chars.next_if(|(_, c)| *c == '\'').is_some();
        let mut value = String::new();
        loop {
            match self.chars.peek().map(|&(_, c)| c) {
                None if quoted => {
                    return Err(ParseError::Syntax(
                        "unterminated quoted connection parameter value",
                    ))
                }
                None => break,
                Some('\'') if quoted => {
                    self.chars.next();
                    return Ok(value);
                }
                Some(c) if c.is_whitespace() && !quoted => break,
                Some(c) => {
                    self.chars.next();
                    if c == '\\' {
                        if let Some((_, escaped)) = self.chars.next() {
                            value.push(escaped);
                        }
                    } else {
                        value.push(c);
                    }
                }
            }
        }
        if value.is_empty() {
            return Err(ParseError::Syntax(
                "unexpected end of the connection string",
            ));
        }
        Ok(value)
    }
}

impl<'a> Iterator for Pairs<'a> {
    type Item = Pair<'a>;

    fn next(&mut self) -> Option<Pair<'a>> {
        if self.failed {
            return None;
        }
        self.skip_whitespace();
        let key = self.keyword()?;
        self.skip_whitespace();
        if self.chars.next_if(|(_, c)| *c == '=').is_none() {
            self.failed = true;
            return Some((
                Ok(key),
                Err(ParseError::Syntax(
                    "expected `=` after an option name in the connection string",
                )),
            ));
        }
        self.skip_whitespace();
        let value = self.value();
        self.failed = value.is_err();
        Some((Ok(key), value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_passwords() {
        let info = parse("host=db user=app password=s3cret sslpassword=k3y-pass").unwrap();
        let shown = format!("{info:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("k3y-pass"), "{shown}");
        assert!(shown.contains("password: Some(\"<redacted>\")"), "{shown}");
    }

    #[test]
    fn tls_keys_come_out_of_key_value_strings() {
        let info = parse(
            "host=db user = app sslmode=verify-full sslrootcert='/etc/my ca.pem' \
             sslcert=/c.pem sslkey = /c.key password='p w'",
        )
        .unwrap();
        assert_eq!(info.tls.mode, Some(SslMode::VerifyFull));
        assert_eq!(info.tls.root_cert.as_deref(), Some("/etc/my ca.pem"));
        assert_eq!(info.tls.cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(info.tls.key, Some(PathBuf::from("/c.key")));
        assert_eq!(info.config.get_user(), Some("app"));
        assert_eq!(info.config.get_password(), Some(&b"p w"[..]));
        assert_eq!(info.config.get_ssl_mode(), DriverSslMode::Require);
    }

    #[test]
    fn tls_keys_come_out_of_urls() {
        let info = parse(
            "postgres://app:p%3Fw@db:5433/app?sslmode=verify-ca&sslrootcert=%2Fca.pem\
             &application_name=x&sslpassword=k",
        )
        .unwrap();
        assert_eq!(info.tls.mode, Some(SslMode::VerifyCa));
        assert_eq!(info.tls.root_cert.as_deref(), Some("/ca.pem"));
        assert_eq!(info.tls.password.as_deref(), Some("k"));
        assert_eq!(info.config.get_password(), Some(&b"p?w"[..]));
        assert_eq!(info.config.get_application_name(), Some("x"));
        assert_eq!(info.config.get_ports(), [5433]);
        let plain = parse("postgresql://u@h/d").unwrap();
        assert_eq!(plain.tls, TlsKeys::default());
        assert_eq!(plain.config.get_ssl_mode(), DriverSslMode::Prefer);
    }

    #[test]
    fn escapes_and_quotes_survive_the_round_trip() {
        let info = parse(r"password='it\'s \\ x' user=a\ b").unwrap();
        assert_eq!(info.config.get_password(), Some(&br"it's \ x"[..]));
        assert_eq!(info.config.get_user(), Some("a b"));
    }

    #[test]
    fn errors_do_not_repeat_values() {
        for bad in [
            "host=db password='s3cret",
            "host=db password s3cret",
            "host=db sslmode=s3cret",
            "postgres://u@h/d?s3cret",
        ] {
            let message = parse(bad).unwrap_err().to_string();
            assert!(!message.contains("s3cret"), "{bad}: {message}");
        }
        assert!(parse("sslmode=allow").is_err());
    }
}
