//! Redis Cluster clients: what a cluster URL and the builder's TLS settings make of the redis
//! crate's cluster client, and how far that client retries on its own before a call fails.
//!
//! The pool's connections and the pings each build their client from one [`ClusterSettings`],
//! so both reach the same nodes the same way (a ping with timeouts of its own).

use std::time::Duration;

use redis::cluster::ClusterClient;

use super::cluster_url::ClusterUrl;
use super::{invalid_setting, TransportError};
use crate::tls::TlsSettings;

/// How many times the cluster client itself follows a redirection or waits out a
/// `CLUSTERDOWN`/`TRYAGAIN` before the call fails: enough for a redirection after slots moved
/// and a short election, few enough that a longer outage reaches the caller's own back-off
/// (readers, the outbox relay) within about a second instead of the crate's minutes.
const RETRIES: u32 = 3;
/// The cluster client's shortest and longest wait between those retries, in milliseconds (its
/// defaults, 1.28 s to 11 min, are for callers without back-off of their own).
const RETRY_WAIT_MS: (u64, u64) = (20, 400);

/// The seeds and TLS settings of one cluster, checked.
#[derive(Clone)]
pub(super) struct ClusterSettings {
    seeds: Vec<String>,
    #[cfg(feature = "tls")]
    tls: Option<ClusterTls>,
}

/// TLS to every node: whether certificates are checked, and the CA and client certificate
/// when given.
#[cfg(feature = "tls")]
#[derive(Clone)]
struct ClusterTls {
    mode: redis::TlsMode,
    certificates: Option<redis::TlsCertificates>,
}

impl ClusterSettings {
    /// Reads a cluster URL and the builder's TLS settings; the error says what is wrong without
    /// repeating the URL.
    pub(super) fn new(url: &str, tls: &TlsSettings) -> Result<Self, TransportError> {
        let parsed = ClusterUrl::parse(url).map_err(|problem| {
            invalid_setting(
                "url",
                format!("{problem} (redis+cluster://host:port,host:port)"),
            )
        })?;
        if !parsed.tls {
            if !tls.is_empty() {
                return Err(super::tls::tls_error(crate::tls::TlsError::Conflict(
                    "TLS settings were given for a redis+cluster:// URL; use rediss+cluster:// \
                     for TLS"
                        .into(),
                )));
            }
            return Ok(Self {
                seeds: parsed.seed_urls(),
                #[cfg(feature = "tls")]
                tls: None,
            });
        }
        #[cfg(not(feature = "tls"))]
        {
            Err(super::tls::tls_error(crate::tls::TlsError::FeatureOff {
                what: "a rediss+cluster:// URL".into(),
            }))
        }
        #[cfg(feature = "tls")]
        {
            let insecure_in_url = parsed
                .rest
                .split_once('#')
                .is_some_and(|(_, fragment)| fragment == "insecure");
            let verify = tls.get_verify().unwrap_or(!insecure_in_url);
            Ok(Self {
                seeds: parsed.seed_urls(),
                tls: Some(ClusterTls {
                    mode: if verify {
                        redis::TlsMode::Secure
                    } else {
                        redis::TlsMode::Insecure
                    },
                    certificates: super::tls::certificates(tls)?,
                }),
            })
        }
    }

    /// A cluster client with these timeouts; fails when a seed is not a Redis URL or the
    /// seeds' users and passwords differ. Creating one contacts no node.
    pub(super) fn client(
        &self,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Result<ClusterClient, TransportError> {
        let builder = ClusterClient::builder(self.seeds.iter().map(String::as_str))
            .connection_timeout(connect_timeout)
            .response_timeout(io_timeout)
            .retries(RETRIES)
            .min_retry_wait(RETRY_WAIT_MS.0)
            .max_retry_wait(RETRY_WAIT_MS.1);
        #[cfg(feature = "tls")]
        let builder = match &self.tls {
            None => builder,
            Some(tls) => {
                // The mode first: `certs` alone would switch an insecure one to verifying.
                let builder = builder.tls(tls.mode);
                match &tls.certificates {
                    Some(certificates) => builder.certs(certificates.clone()),
                    None => builder,
                }
            }
        };
        builder.build().map_err(|error| {
            invalid_setting(
                "url",
                format!(
                    "not a Redis Cluster URL ({error}); expected \
                     redis+cluster://host:port,host:port"
                ),
            )
        })
    }
}
