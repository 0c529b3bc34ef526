//! Redis Cluster URLs: `redis+cluster://[user[:password]@]host:port[,host:port...][/][?query]`,
//! or `rediss+cluster://...` for TLS to every node.
//!
//! One URL names the cluster by a list of seed nodes, so a cluster fits every place that takes
//! one Redis URL (`RedisStreams::builder`, the consumer and relay builders' `.redis(url)`,
//! `EVENTFLOW_REDIS_URL`). The client asks the first seed that answers for the cluster's
//! layout, so the list need not name every node; more than one keeps a start possible while a
//! seed is down. The credentials and query are shared by every node, as the cluster client
//! requires. A cluster has only database 0, so a path other than `/` or `/0` is refused.
//!
//! This module only splits the URL; each seed is then read by the redis crate (for the
//! connection) or the URL parser (for [`crate::redact`]) as an ordinary `redis://` URL.

/// The scheme of a cluster URL, lower case, and whether it asks for TLS.
const SCHEMES: &[(&str, bool)] = &[("redis+cluster://", false), ("rediss+cluster://", true)];

/// A cluster URL split into its parts, borrowing from the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterUrl<'a> {
    /// `rediss+cluster://`: TLS to every node.
    pub(crate) tls: bool,
    /// `user:password` as written (percent-encoded), without the `@`.
    pub(crate) userinfo: Option<&'a str>,
    /// `host:port` (or `host`, port 6379) of each seed, as written.
    pub(crate) seeds: Vec<&'a str>,
    /// What follows the hosts: path, query and fragment, as written (may be empty).
    pub(crate) rest: &'a str,
}

/// Whether `setting` is written as a cluster URL (any case of the scheme).
pub(crate) fn is_cluster_url(setting: &str) -> bool {
    scheme_of(setting.trim()).is_some()
}

fn scheme_of(setting: &str) -> Option<(usize, bool)> {
    SCHEMES.iter().find_map(|(scheme, tls)| {
        setting
            .get(..scheme.len())
            .filter(|head| head.eq_ignore_ascii_case(scheme))
            .map(|_| (scheme.len(), *tls))
    })
}

impl<'a> ClusterUrl<'a> {
    /// Splits a cluster URL. The error says what is wrong without repeating the URL, which may
    /// hold a password.
    pub(crate) fn parse(setting: &'a str) -> Result<Self, String> {
        let setting = setting.trim();
        let (scheme_len, tls) = scheme_of(setting)
            .ok_or("a cluster URL starts with redis+cluster:// or rediss+cluster://")?;
        let after_scheme = &setting[scheme_len..];
        let authority_end = after_scheme
            .find(['/', '?', '#'])
            .unwrap_or(after_scheme.len());
        let (authority, rest) = after_scheme.split_at(authority_end);
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let seeds: Vec<&str> = hosts.split(',').map(str::trim).collect();
        if seeds.iter().any(|seed| seed.is_empty()) {
            return Err(
                "a cluster URL needs one or more seed nodes, host:port, separated by \
                        commas and none empty"
                    .into(),
            );
        }
        let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
        if !matches!(&rest[..path_end], "" | "/" | "/0") {
            return Err("a Redis Cluster has only database 0; leave the path out".into());
        }
        Ok(Self {
            tls,
            userinfo,
            seeds,
            rest,
        })
    }

    /// Each seed as a single-node URL (`redis://` or `rediss://`) with the shared credentials
    /// and query.
    pub(crate) fn seed_urls(&self) -> Vec<String> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let userinfo = self
            .userinfo
            .map(|userinfo| format!("{userinfo}@"))
            .unwrap_or_default();
        let rest = if self.rest.starts_with('/') || self.rest.is_empty() {
            self.rest.to_string()
        } else {
            format!("/{}", self.rest)
        };
        self.seeds
            .iter()
            .map(|seed| format!("{scheme}://{userinfo}{seed}{rest}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_credentials_seeds_and_query() {
        let url = ClusterUrl::parse("redis+cluster://app:s%40cret@a:7000, b:7001/?protocol=resp3")
            .unwrap();
        assert!(!url.tls);
        assert_eq!(url.userinfo, Some("app:s%40cret"));
        assert_eq!(url.seeds, ["a:7000", "b:7001"]);
        assert_eq!(
            url.seed_urls(),
            [
                "redis://app:s%40cret@a:7000/?protocol=resp3",
                "redis://app:s%40cret@b:7001/?protocol=resp3"
            ]
        );
        let url = ClusterUrl::parse("REDISS+CLUSTER://cache:6380").unwrap();
        assert!(url.tls);
        assert_eq!(url.seed_urls(), ["rediss://cache:6380"]);
        assert_eq!(
            ClusterUrl::parse("redis+cluster://a:1?x=1")
                .unwrap()
                .seed_urls(),
            ["redis://a:1/?x=1"]
        );
    }

    #[test]
    fn refuses_empty_seeds_and_databases_without_echoing_the_url() {
        for bad in [
            "redis+cluster://",
            "redis+cluster://:hunter2@",
            "redis+cluster://a:1,,b:2",
            "redis+cluster://a:1,",
            "redis+cluster://:hunter2@a:1/2",
            "redis://a:1",
        ] {
            let error = ClusterUrl::parse(bad).unwrap_err();
            assert!(!error.contains("hunter2"), "{error}");
        }
        assert!(ClusterUrl::parse("redis+cluster://a:1/0").is_ok());
        assert!(is_cluster_url(" Redis+Cluster://a:1"));
        assert!(!is_cluster_url("redis://a:1"));
    }
}
