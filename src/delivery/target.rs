//! Endpoint URL rules and destination address rules (the SSRF guard).
//!
//! Owns two decisions: is a `url` acceptable for an endpoint ([`validate_url`]), and may a
//! delivery connect to a resolved address ([`check_address`]). It promises that a refused URL
//! is an `InvalidArgument` naming `url` with the reason; that without `allow_private` no
//! loopback, private, link-local, unique-local, shared (CGNAT), unspecified, multicast,
//! broadcast or documentation address passes, including IPv4 addresses mapped into IPv6; and
//! that a refused connect-time address is reported as "destination refused".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::Error;

/// The longest `url` an endpoint may have, in characters.
pub const MAX_URL_LEN: usize = 2048;

/// The error of an attempt whose resolved address is refused at connect time.
pub const DESTINATION_REFUSED: &str = "destination refused";

/// What the operator allows beyond public HTTPS destinations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetRules {
    /// `--delivery-allow-private`: loopback and private addresses may be delivered to.
    pub allow_private: bool,
    /// `--delivery-allow-http`: plain `http` URLs are accepted.
    pub allow_http: bool,
}

fn bad_url(reason: impl Into<String>) -> Error {
    Error::InvalidArgument { field: "url".to_owned(), reason: reason.into() }
}

/// Validates an endpoint `url` and returns it parsed.
///
/// Refused: over [`MAX_URL_LEN`] characters, unparsable, a scheme other than `http`/`https`,
/// `http` while `allow_http` is off, userinfo, no host, and a host that is a literal private
/// address (or `localhost`) while `allow_private` is off. Names that resolve to private
/// addresses are caught at connect time by [`check_address`].
pub fn validate_url(raw: &str, rules: TargetRules) -> Result<url::Url, Error> {
    if raw.chars().count() > MAX_URL_LEN {
        return Err(bad_url(format!("must be at most {MAX_URL_LEN} characters")));
    }
    let parsed =
        url::Url::parse(raw).map_err(|error| bad_url(format!("is not a valid URL: {error}")))?;
    match parsed.scheme() {
        "https" => {}
        "http" if rules.allow_http => {}
        "http" => {
            return Err(bad_url("http is refused; use https or start with --delivery-allow-http"))
        }
        other => return Err(bad_url(format!("scheme {other:?} is not http or https"))),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad_url("must not contain userinfo"));
    }
    let host = match parsed.host() {
        None => return Err(bad_url("has no host")),
        Some(url::Host::Domain("")) => return Err(bad_url("has no host")),
        Some(host) => host,
    };
    if !rules.allow_private {
        let private = match host {
            url::Host::Ipv4(ip) => !is_public(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => !is_public(IpAddr::V6(ip)),
            url::Host::Domain(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                name == "localhost" || name.ends_with(".localhost")
            }
        };
        if private {
            return Err(bad_url(
                "is a private, loopback or link-local destination; start with --delivery-allow-private to allow it",
            ));
        }
    }
    Ok(parsed)
}

/// The connect-time check: may a delivery open a connection to `ip`?
///
/// Called with every address a host name resolves to, right before connecting, so a name that
/// turns private after validation (DNS rebinding) is still refused.
pub fn check_address(ip: IpAddr, rules: TargetRules) -> Result<(), &'static str> {
    if rules.allow_private || is_public(ip) {
        Ok(())
    } else {
        Err(DESTINATION_REFUSED)
    }
}

/// Is `ip` a globally routable unicast address?
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space, RFC 6598
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking, RFC 2544
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link local
        || (first & 0xffc0) == 0xfec0 // site local (deprecated)
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0064 && ip.segments()[1] == 0xff9b // NAT64, embeds IPv4
        || ip.segments()[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: TargetRules = TargetRules { allow_private: false, allow_http: false };
    const OPEN: TargetRules = TargetRules { allow_private: true, allow_http: true };

    fn refused(raw: &str, rules: TargetRules) -> String {
        match validate_url(raw, rules) {
            Err(Error::InvalidArgument { field, reason }) => {
                assert_eq!(field, "url");
                reason
            }
            other => panic!("{raw}: expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn public_https_is_accepted() {
        let url = validate_url("https://hooks.example.com/in?x=1", STRICT).unwrap();
        assert_eq!(url.host_str(), Some("hooks.example.com"));
        validate_url("https://93.184.216.34/", STRICT).unwrap();
    }

    #[test]
    fn bad_urls_name_url_and_the_reason() {
        assert!(refused("ftp://example.com/", OPEN).contains("scheme"));
        assert!(refused("https://user:pw@example.com/", OPEN).contains("userinfo"));
        assert!(refused("https://user@example.com/", OPEN).contains("userinfo"));
        assert!(refused("not a url", OPEN).contains("not a valid URL"));
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(refused(&long, OPEN).contains("2048"));
        validate_url(&format!("https://example.com/{}", "a".repeat(MAX_URL_LEN - 20)), OPEN)
            .unwrap();
    }

    #[test]
    fn http_needs_allow_http() {
        assert!(refused("http://example.com/", STRICT).contains("--delivery-allow-http"));
        validate_url("http://example.com/", TargetRules { allow_http: true, ..STRICT }).unwrap();
    }

    #[test]
    fn private_literals_need_allow_private() {
        for raw in [
            "https://127.0.0.1:8080/",
            "https://10.1.2.3/",
            "https://172.16.0.1/",
            "https://192.168.1.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://[::1]/",
            "https://[fe80::1]/",
            "https://[fd00::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://localhost/",
            "https://api.localhost./",
            "https://2130706433/", // 127.0.0.1 written as a number
        ] {
            assert!(refused(raw, STRICT).contains("--delivery-allow-private"), "{raw}");
            validate_url(raw, TargetRules { allow_private: true, ..STRICT }).unwrap();
        }
    }

    #[test]
    fn connect_time_check_refuses_private_addresses() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "169.254.1.1",
            "::1",
            "fd12::1",
            "::ffff:192.168.0.1",
            "224.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(check_address(ip, STRICT), Err(DESTINATION_REFUSED), "{ip}");
            assert_eq!(check_address(ip, OPEN), Ok(()));
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"] {
            assert_eq!(check_address(ip.parse().unwrap(), STRICT), Ok(()), "{ip}");
        }
    }
}
