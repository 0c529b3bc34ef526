//! Opening the redis client for a URL and the builder's [`TlsSettings`]: `rediss://` is TLS,
//! with the chain and host name checked against the system's trust store or the CA file,
//! unless `#insecure` or `verify(false)`. The redis crate's rustls reads the system's store
//! itself and takes rustls' process-default provider (see [`crate::tls`]).

use super::{invalid_setting, TransportError};
use crate::tls::{TlsError, TlsSettings};

/// Whether `url` asks for TLS (`rediss://`, any case).
fn is_tls(url: &str) -> bool {
    url.trim_start()
        .get(..9)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("rediss://"))
}

/// The client for `url`; the URL parse error says what is wrong without repeating the URL.
pub(super) fn open_client(url: &str, tls: &TlsSettings) -> Result<redis::Client, TransportError> {
    let not_a_url = |error: redis::RedisError| {
        invalid_setting(
            "url",
            format!("not a Redis URL ({error}); expected redis://host:port/db"),
        )
    };
    if !is_tls(url) {
        if !tls.is_empty() {
            return Err(tls_error(TlsError::Conflict(
                "TLS settings were given for a redis:// URL; use rediss:// for TLS".into(),
            )));
        }
        return redis::Client::open(url).map_err(not_a_url);
    }
    #[cfg(not(feature = "tls"))]
    {
        Err(tls_error(TlsError::FeatureOff {
            what: "a rediss:// URL".into(),
        }))
    }
    #[cfg(feature = "tls")]
    {
        use redis::{ConnectionAddr, IntoConnectionInfo};
        let info = url.into_connection_info().map_err(not_a_url)?;
        let info = match (info.addr().clone(), tls.get_verify()) {
            (
                ConnectionAddr::TcpTls {
                    host,
                    port,
                    tls_params,
                    ..
                },
                Some(verify),
            ) => info.set_addr(ConnectionAddr::TcpTls {
                host,
                port,
                insecure: !verify,
                tls_params,
            }),
            _ => info,
        };
        match certificates(tls)? {
            None => redis::Client::open(info).map_err(not_a_url),
            Some(certificates) => redis::Client::build_with_tls(info, certificates)
                .map_err(|error| tls_error(TlsError::Config(error.to_string()))),
        }
    }
}

/// The CA file and client certificate of `tls`, read now so that a missing or empty file is
/// named at `build()`; `None` when neither is set (the system's trust store, no client
/// certificate).
#[cfg(feature = "tls")]
pub(super) fn certificates(
    tls: &TlsSettings,
) -> Result<Option<redis::TlsCertificates>, TransportError> {
    if tls.get_ca_file().is_none() && tls.get_client_cert().is_none() {
        return Ok(None);
    }
    let read = |path: &std::path::Path, what: &'static str| {
        // Parsed now, so a file without certificates is named at build().
        crate::tls::config::certificates(path, what).map_err(tls_error)?;
        std::fs::read(path).map_err(|source| {
            tls_error(TlsError::Read {
                what,
                path: path.to_path_buf(),
                source,
            })
        })
    };
    let root_cert = match tls.get_ca_file() {
        Some(path) => Some(read(path, "CA file")?),
        None => None,
    };
    let client_tls = match tls.get_client_cert() {
        Some((cert, key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert, "client certificate")?,
            client_key: std::fs::read(key).map_err(|source| {
                tls_error(TlsError::Read {
                    what: "client key",
                    path: key.to_path_buf(),
                    source,
                })
            })?,
        }),
        None => None,
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

pub(super) fn tls_error(error: TlsError) -> TransportError {
    TransportError::Broker(Box::new(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_need_rediss() {
        let error = open_client("redis://127.0.0.1", &TlsSettings::new().verify(true))
            .unwrap_err()
            .to_string();
        assert!(error.contains("rediss://"), "{error}");
        assert!(is_tls("REDISS://cache:6380"));
        assert!(!is_tls("redis://cache"));
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn rediss_without_the_feature_names_it() {
        let error = open_client("rediss://cache", &TlsSettings::new())
            .unwrap_err()
            .to_string();
        assert!(error.contains("`tls` cargo feature"), "{error}");
    }
}
