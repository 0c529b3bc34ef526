//! Who can reach the console: the rule that only loopback may go without a password, and the
//! `Host` check that keeps a loopback console from being read through DNS rebinding.

use super::request::Request;
use std::net::{IpAddr, SocketAddr};

/// Refuses to listen beyond loopback without basic authentication: the console requeues and
/// skips events, and anyone who reaches it could.
pub fn check_address(address: SocketAddr, authenticated: bool) -> Result<(), String> {
    if address.ip().is_loopback() || authenticated {
        return Ok(());
    }
    Err(format!(
        "refusing to serve the console on {address} without authentication: it is not a \
         loopback address; add --basic-auth-user (password in EVENTFLOW_CONSOLE_PASSWORD), \
         or listen on 127.0.0.1"
    ))
}

/// Which `Host` headers the console answers.
///
/// A page on another site can point its own host name at 127.0.0.1 (DNS rebinding) and then
/// read a loopback console as if it were its own, CSRF token included. Browsers send that
/// other name as the `Host`, so a console on loopback answers only loopback names. One
/// listening beyond loopback has a password, which the browser does not hand to another site.
#[derive(Debug, Clone, Copy)]
pub struct HostCheck {
    loopback_only: bool,
}

impl HostCheck {
    /// The check for a console listening on `address`.
    pub fn for_address(address: SocketAddr) -> Self {
        Self {
            loopback_only: address.ip().is_loopback(),
        }
    }

    /// Whether the request's `Host` is one this console answers.
    pub fn accepts(&self, request: &Request) -> bool {
        if !self.loopback_only {
            return true;
        }
        request.host.as_deref().is_some_and(is_loopback_host)
    }
}

/// `localhost`, `127.0.0.1`, `[::1]` (any loopback address), with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::request::Method;

    #[test]
    fn beyond_loopback_only_with_a_password() {
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let loopback6: SocketAddr = "[::1]:0".parse().unwrap();
        let error = check_address(public, false).unwrap_err();
        assert!(error.contains("--basic-auth-user"), "{error}");
        assert!(check_address(public, true).is_ok());
        assert!(check_address(loopback, false).is_ok());
        assert!(check_address(loopback6, false).is_ok());
    }

    #[test]
    fn a_loopback_console_answers_loopback_host_names_only() {
        let check = HostCheck::for_address("127.0.0.1:8080".parse().unwrap());
        let with_host = |host: Option<&str>| {
            let mut request = Request::new(Method::Get, "/");
            request.host = host.map(str::to_string);
            check.accepts(&request)
        };
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "127.1.2.3",
        ] {
            assert!(with_host(Some(host)), "{host}");
        }
        for host in [
            "evil.example:8080",
            "evil.example",
            "10.0.0.1:8080",
            "[::2]:80",
        ] {
            assert!(!with_host(Some(host)), "{host}");
        }
        assert!(!with_host(None));

        let public = HostCheck::for_address("0.0.0.0:8080".parse().unwrap());
        let mut request = Request::new(Method::Get, "/");
        request.host = Some("ops.example:8080".into());
        assert!(public.accepts(&request));
    }
}
