//! The one TLS connector a PostgreSQL store or outbox makes all its connections with (pooled
//! ones, the outbox listener's, migrations'), resolved once at `build()` from the connection
//! string's TLS keys and the builder's [`TlsSettings`]. The rules are libpq's; the table is in
//! [`crate::tls`].

use super::conninfo::{ConnInfo, TlsKeys};
use crate::tls::{SslMode, TlsError, TlsSettings, Verification};
use postgres::{Client, NoTls};

/// How connections are made: plaintext, or TLS with one rustls configuration.
#[derive(Clone)]
pub(crate) enum PgConnector {
    /// No TLS: `sslmode=disable`, or `prefer` in a build without the `tls` feature.
    Plain,
    /// TLS as the mode says (`prefer`: when the server offers it).
    #[cfg(feature = "tls")]
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl std::fmt::Debug for PgConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain => f.write_str("Plain"),
            #[cfg(feature = "tls")]
            Self::Rustls(_) => f.write_str("Rustls"),
        }
    }
}

impl PgConnector {
    /// A connection to `config`'s server.
    pub(crate) fn connect(&self, config: &postgres::Config) -> Result<Client, postgres::Error> {
        match self {
            Self::Plain => config.connect(NoTls),
            #[cfg(feature = "tls")]
            Self::Rustls(tls) => config.connect(tls.clone()),
        }
    }

    /// The connector for `info`, with `settings` winning over its keys. Sets the driver's
    /// `sslmode` in `info.config` to what was resolved.
    pub(crate) fn new(info: &mut ConnInfo, settings: &TlsSettings) -> Result<Self, TlsError> {
        let resolved = resolve(&info.tls, settings)?;
        info.config.ssl_mode(match resolved.mode {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            _ => postgres::config::SslMode::Require,
        });
        if resolved.mode == SslMode::Disable {
            return Ok(Self::Plain);
        }
        #[cfg(feature = "tls")]
        {
            let config = crate::tls::config::client_config(&resolved.client)?;
            Ok(Self::Rustls(tokio_postgres_rustls::MakeRustlsConnect::new(
                config,
            )))
        }
        #[cfg(not(feature = "tls"))]
        {
            if resolved.mode == SslMode::Prefer {
                // As libpq built without TLS: `prefer` goes plaintext.
                return Ok(Self::Plain);
            }
            Err(TlsError::FeatureOff {
                what: resolved.asked_by,
            })
        }
    }
}

/// What the keys and settings come to.
struct Resolved {
    mode: SslMode,
    #[cfg(feature = "tls")]
    client: crate::tls::config::ClientTls,
    #[cfg(not(feature = "tls"))]
    asked_by: String,
}

fn resolve(keys: &TlsKeys, settings: &TlsSettings) -> Result<Resolved, TlsError> {
    if keys.password.is_some() {
        return Err(TlsError::Conflict(
            "sslpassword: encrypted client keys are not supported; give an unencrypted key file"
                .into(),
        ));
    }
    let explicit = !settings.is_empty();
    let mut mode = keys.mode.unwrap_or(SslMode::Prefer);
    if explicit && mode == SslMode::Disable {
        return Err(TlsError::Conflict(
            "sslmode=disable contradicts the TLS settings given to the builder".into(),
        ));
    }
    let ca_file = settings.get_ca_file().map(Into::into).or_else(|| {
        keys.root_cert
            .as_deref()
            .filter(|root| *root != "system")
            .map(std::path::PathBuf::from)
    });
    let client_cert = match (settings.get_client_cert(), &keys.cert, &keys.key) {
        (Some((cert, key)), _, _) => Some((cert.to_path_buf(), key.to_path_buf())),
        (None, Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None, None) => None,
        (None, _, _) => {
            return Err(TlsError::Conflict(
                "sslcert and sslkey must be given together".into(),
            ))
        }
    };
    // Settings in code, a CA file or a client certificate each make TLS required: they are
    // there to be used.
    if mode == SslMode::Prefer && (explicit || ca_file.is_some() || client_cert.is_some()) {
        mode = SslMode::Require;
    }
    let verification = match settings.get_verify() {
        Some(true) => Verification::Full,
        Some(false) => Verification::None,
        None => match mode {
            SslMode::Disable | SslMode::Prefer => Verification::None,
            // libpq: `require` with a root certificate given checks the chain.
            SslMode::Require if keys.root_cert.is_some() || ca_file.is_some() => {
                Verification::Chain
            }
            SslMode::Require => Verification::None,
            SslMode::VerifyCa => Verification::Chain,
            SslMode::VerifyFull => Verification::Full,
        },
    };
    if verification == Verification::Full && mode < SslMode::VerifyFull {
        mode = SslMode::VerifyFull;
    }
    #[cfg(feature = "tls")]
    {
        use crate::tls::config::{ClientTls, Roots};
        Ok(Resolved {
            mode,
            client: ClientTls {
                verification,
                roots: ca_file.map_or(Roots::System, Roots::File),
                client_cert,
            },
        })
    }
    #[cfg(not(feature = "tls"))]
    {
        let asked_by = if explicit {
            "the builder's TLS settings".to_string()
        } else if mode > SslMode::Prefer {
            format!("sslmode={}", mode.as_str())
        } else {
            "sslrootcert, sslcert or sslkey".to_string()
        };
        let _ = (verification, client_cert);
        Ok(Resolved { mode, asked_by })
    }
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    use super::*;
    use crate::tls::config::Roots;

    fn resolved(setting: &str, settings: TlsSettings) -> Resolved {
        let info = super::super::conninfo::parse(setting).unwrap();
        resolve(&info.tls, &settings).unwrap()
    }

    #[test]
    fn modes_follow_libpq() {
        for (setting, mode, verification) in [
            ("host=h", SslMode::Prefer, Verification::None),
            (
                "host=h sslmode=disable",
                SslMode::Disable,
                Verification::None,
            ),
            (
                "host=h sslmode=require",
                SslMode::Require,
                Verification::None,
            ),
            (
                "host=h sslmode=require sslrootcert=/ca.pem",
                SslMode::Require,
                Verification::Chain,
            ),
            (
                "host=h sslmode=verify-ca",
                SslMode::VerifyCa,
                Verification::Chain,
            ),
            (
                "host=h sslmode=verify-full",
                SslMode::VerifyFull,
                Verification::Full,
            ),
        ] {
            let got = resolved(setting, TlsSettings::new());
            assert_eq!(
                (got.mode, got.client.verification),
                (mode, verification),
                "{setting}"
            );
        }
        let with_ca = resolved(
            "host=h sslmode=verify-ca sslrootcert=/ca.pem",
            TlsSettings::new(),
        );
        assert_eq!(with_ca.client.roots, Roots::File("/ca.pem".into()));
        let system = resolved(
            "host=h sslmode=verify-ca sslrootcert=system",
            TlsSettings::new(),
        );
        assert_eq!(system.client.roots, Roots::System);
    }

    #[test]
    fn settings_in_code_win() {
        let on = resolved("host=h", TlsSettings::new().verify(true));
        assert_eq!(
            (on.mode, on.client.verification),
            (SslMode::VerifyFull, Verification::Full)
        );
        let off = resolved(
            "host=h sslmode=verify-full",
            TlsSettings::new().verify(false),
        );
        assert_eq!(off.client.verification, Verification::None);
        let ca = resolved(
            "host=h sslrootcert=/url.pem",
            TlsSettings::new().ca_file("/code.pem"),
        );
        assert_eq!(ca.mode, SslMode::Require);
        assert_eq!(ca.client.roots, Roots::File("/code.pem".into()));
        let info = super::super::conninfo::parse("host=h sslmode=disable").unwrap();
        assert!(resolve(&info.tls, &TlsSettings::new().verify(true)).is_err());
        let half = super::super::conninfo::parse("host=h sslcert=/c.pem").unwrap();
        assert!(resolve(&half.tls, &TlsSettings::new()).is_err());
    }
}
