//! TLS settings for the connections eventflow opens to PostgreSQL and Redis.
//!
//! TLS needs the `tls` cargo feature (on by default, and always with `cli`): rustls with the
//! `aws-lc-rs` crypto provider, which eventflow passes to each PostgreSQL connection's
//! configuration rather than installing it as the process default. (The redis crate builds
//! its rustls configuration with `ClientConfig::builder()`, which takes the process default,
//! installing the one provider rustls was built with when none is; an application that
//! enables a second rustls provider must install its default before connecting to Redis.) Without the feature, a setting that asks for TLS
//! (`sslmode=require` or stricter, `sslrootcert`, `sslcert`, `rediss://`, or a
//! [`TlsSettings`]) fails at `build()` with [`TlsError::FeatureOff`]; nothing falls back to
//! plaintext.
//!
//! ## PostgreSQL: `sslmode`, as in libpq
//!
//! | `sslmode`          | TLS                       | certificate chain checked | host name checked |
//! |--------------------|---------------------------|---------------------------|-------------------|
//! | `disable`          | never                     | –                         | –                 |
//! | `prefer` (default) | when the server offers it | no                        | no                |
//! | `require`          | always                    | no, unless `sslrootcert` is given (then as `verify-ca`) | no |
//! | `verify-ca`        | always                    | yes                       | no                |
//! | `verify-full`      | always                    | yes                       | yes               |
//!
//! These are libpq's meanings. libpq's `allow` (plaintext first) is refused as a setting the
//! driver does not offer. The chain is checked against the `sslrootcert` file (or
//! [`TlsSettings::ca_file`]) when one is given, which then replaces the system's trust store
//! as in libpq; else against the system's trust store (`sslrootcert=system` says so
//! explicitly). Unlike libpq, no file is read from `~/.postgresql/` unless named. `sslcert`
//! and `sslkey` (or [`TlsSettings::client_cert`]) give a client certificate; the key must be
//! unencrypted PEM (`sslpassword` is refused).
//!
//! ## Redis
//!
//! `rediss://` turns TLS on, with the chain and host name checked against the system's trust
//! store or [`TlsSettings::ca_file`]; the redis crate's `#insecure` fragment, or
//! [`TlsSettings::verify(false)`](TlsSettings::verify), turns the check off.

#[cfg(feature = "tls")]
pub(crate) mod config;

use std::path::{Path, PathBuf};

/// What a PostgreSQL connection does about TLS: libpq's `sslmode`, see the
/// [module docs](self) for the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, without checking its certificate; else plaintext.
    Prefer,
    /// TLS, without checking the certificate (unless a CA file is given: then as `VerifyCa`).
    Require,
    /// TLS, the certificate chain checked against the CA file or the system's trust store.
    VerifyCa,
    /// TLS, the chain checked and the server's name matched against the certificate.
    VerifyFull,
}

impl SslMode {
    /// Reads libpq's names (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    /// libpq's name for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// How much of the server's certificate a TLS connection checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) enum Verification {
    /// Nothing: the connection is encrypted, but to whoever answered.
    None,
    /// The chain up to a trusted authority, not the name (`verify-ca`).
    Chain,
    /// The chain and the name (`verify-full`).
    Full,
}

/// TLS settings given in code, as an alternative to (and winning over) the connection
/// string's own keys: the CA file, a client certificate, and whether the server's certificate
/// is checked.
///
/// For PostgreSQL, [`verify(true)`](Self::verify) means `verify-full` (TLS required, chain and
/// host name checked) and `verify(false)` means no check, whatever `sslmode` says; a CA file
/// or client certificate given here replaces `sslrootcert` or `sslcert`/`sslkey`. Settings
/// given here make TLS required unless `sslmode=disable`, which is then refused as a
/// contradiction. For Redis they need a `rediss://` URL.
///
/// ```
/// use eventflow::tls::TlsSettings;
///
/// let tls = TlsSettings::new()
///     .ca_file("/etc/eventflow/ca.pem")
///     .client_cert("/etc/eventflow/client.pem", "/etc/eventflow/client.key");
/// # let _ = tls;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    verify: Option<bool>,
    ca_file: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
}

impl TlsSettings {
    /// Settings that change nothing until one of the setters is used.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the server's certificate is checked: `true` checks the chain and the host name
    /// (`verify-full`), `false` checks nothing (the link is encrypted, but to whoever
    /// answered: use it only where the network is trusted). Defaults to what the connection
    /// string says (`sslmode`; for Redis, checked unless `#insecure`).
    pub fn verify(mut self, on: bool) -> Self {
        self.verify = Some(on);
        self
    }

    /// A PEM file of the certificate authorities to trust, in place of the system's trust
    /// store. Defaults to the connection string's `sslrootcert`, else the system's store.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// A client certificate (PEM, the chain in leaf-first order) and its unencrypted private
    /// key (PEM: PKCS#8, PKCS#1 or SEC1), for servers that ask for one. Defaults to the
    /// connection string's `sslcert` and `sslkey`, else none.
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// The explicit verification switch, if set.
    pub fn get_verify(&self) -> Option<bool> {
        self.verify
    }

    /// The CA file, if set.
    pub fn get_ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The client certificate and key files, if set.
    pub fn get_client_cert(&self) -> Option<(&Path, &Path)> {
        self.client_cert
            .as_ref()
            .map(|(cert, key)| (cert.as_path(), key.as_path()))
    }

    /// Whether any setting was given.
    #[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(dead_code))]
    pub(crate) fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// Errors setting up TLS. File paths are shown (they are not secret); file contents never.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The setting asks for TLS, and eventflow was built without its `tls` feature.
    #[error("{what} needs TLS: build eventflow with its `tls` cargo feature")]
    FeatureOff {
        /// What asked for TLS (`sslmode=require`, `rediss://`, ...).
        what: String,
    },
    /// Two settings contradict each other, or one is not supported.
    #[error("{0}")]
    Conflict(String),
    /// A certificate or key file could not be read.
    #[error("cannot read the {what} {}: {source}", path.display())]
    Read {
        /// Which file (`CA file`, `client certificate`, `client key`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file held no usable PEM item of the kind expected.
    #[error("the {what} {} holds no usable PEM {expected}", path.display())]
    NoPem {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What was looked for (`CERTIFICATE`, `PRIVATE KEY`).
        expected: &'static str,
    },
    /// The system's trust store could not be loaded, or held no certificate.
    #[error("the system's trust store has no usable certificate ({0}); give a CA file")]
    SystemStore(String),
    /// rustls refused the configuration (a key that does not match its certificate, ...).
    #[error("TLS configuration refused: {0}")]
    Config(String),
}
