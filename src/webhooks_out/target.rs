//! The SSRF guard for subscribers' endpoint URLs.
//!
//! A subscriber chooses the URL we POST to, from inside our network. Without a guard that is a way
//! to make us call our own admin ports, the database's HTTP interface or the cloud metadata service
//! at 169.254.169.254 (which hands out credentials). So a webhook goes only to a public unicast
//! address, over https, and the check is made twice:
//!
//! - [`Endpoint::parse`], when the subscription is created: the URL's shape, and hosts that are
//!   local whatever DNS says (IP literals, `localhost`), with an error the client can act on;
//! - [`resolve`], before every delivery: the host's addresses, all of which must be public. The
//!   sender then connects to exactly those addresses (reqwest's `ClientBuilder::resolve_to_addrs`),
//!   so a name that answers a public address to the check and 127.0.0.1 to the connection (DNS
//!   rebinding) gets nowhere.
//!
//! What the sender must add for this to hold: no redirects (`redirect::Policy::none()`; a public
//! endpoint could answer 307 to the metadata address) and no proxy from the environment
//! (`no_proxy()`; through a proxy, the pinned addresses are not the ones connected to).
//!
//! [`EndpointPolicy`] relaxes the guard for tests and single-machine installs, where the subscriber
//! is on the same host or network (`--webhook-allow-private-targets`).

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;

/// The longest endpoint URL accepted, in bytes, before and after normalisation: longer is not a
/// real endpoint, and the URL is stored and shown.
pub const MAX_URL_LEN: usize = 2048;

/// Where webhooks may go. Both `false` (the default) in production.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// Allow loopback, private, link-local and other non-public addresses, and `localhost`.
    pub allow_private_targets: bool,
    /// Allow `http://` (plain text: the payload and its signature readable on the way).
    pub allow_http: bool,
}

impl EndpointPolicy {
    /// The production policy: public https endpoints only.
    pub const STRICT: Self = Self {
        allow_private_targets: false,
        allow_http: false,
    };
}

/// Why an endpoint URL is refused. The messages are meant for the client that gave the URL, so
/// they say what to change and never repeat a user name or password.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("the endpoint URL is {len} bytes long; at most {MAX_URL_LEN} are accepted")]
    TooLong { len: usize },
    #[error("the endpoint URL is empty")]
    Empty,
    #[error(
        "the endpoint URL contains whitespace or control characters; percent-encode them or remove them"
    )]
    Whitespace,
    #[error("the endpoint URL is not a valid absolute URL: {reason}")]
    Invalid { reason: String },
    #[error("the endpoint URL's scheme is \"{scheme}\"; use https")]
    UnsupportedScheme { scheme: String },
    #[error("the endpoint URL uses plain http; use https")]
    HttpNotAllowed,
    #[error(
        "the endpoint URL contains a user name or password; remove them (the webhook's signature authenticates us)"
    )]
    UserInfo,
    #[error("the endpoint URL has no host")]
    NoHost,
    #[error("the endpoint host {host} is this machine (localhost); use a publicly reachable host")]
    LocalHostName { host: String },
    /// The address is kept for logs but left out of the message: for a name only our internal DNS
    /// knows, it would tell the client the inside of our network.
    #[error(
        "the endpoint host {host} is or resolves to an address that is not public (loopback, \
         private, link-local, shared, reserved or multicast); use a publicly reachable host"
    )]
    NonPublicAddress { host: String, addr: IpAddr },
    #[error("the endpoint host {host} could not be resolved: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the endpoint host {host} resolves to no address")]
    NoAddresses { host: String },
}

// === impl Endpoint ===

/// A subscriber's endpoint URL that passed [`Endpoint::parse`]: absolute, http(s), no user info,
/// a host that is not local by its very name. Keeps the normalised URL (lower-case scheme and
/// host, punycode, IPv4 forms such as `0x7f.1` written out), which is what is stored and sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    url: Url,
}

impl Endpoint {
    /// Checks `input` when a subscription is created. Hosts given by name are checked again, with
    /// their addresses, by [`resolve`] before each delivery.
    pub fn parse(input: &str, policy: EndpointPolicy) -> Result<Self, TargetError> {
        if input.len() > MAX_URL_LEN {
            return Err(TargetError::TooLong { len: input.len() });
        }
        if input.is_empty() {
            return Err(TargetError::Empty);
        }
        // The URL parser silently drops tabs and newlines anywhere and trims spaces at the ends;
        // refusing them instead means what the client sent is what it gets.
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(TargetError::Whitespace);
        }
        let url = Url::parse(input).map_err(|e| TargetError::Invalid {
            reason: e.to_string(),
        })?;
        match url.scheme() {
            "https" => {}
            "http" if policy.allow_http => {}
            "http" => return Err(TargetError::HttpNotAllowed),
            other => {
                return Err(TargetError::UnsupportedScheme {
                    scheme: other.to_owned(),
                });
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(TargetError::UserInfo);
        }
        // Normalisation can lengthen the URL (percent-encoding, punycode).
        let len = url.as_str().len();
        if len > MAX_URL_LEN {
            return Err(TargetError::TooLong { len });
        }
        let endpoint = Self { url };
        endpoint.check_host_name(policy)?;
        Ok(endpoint)
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    /// The host as it appears in the URL (a name, an IPv4 address, or an IPv6 one in brackets),
    /// the name to give `resolve_to_addrs` beside [`resolve`]'s addresses.
    pub fn host_str(&self) -> &str {
        self.url.host_str().unwrap_or_default()
    }

    /// The port connected to: the URL's own, or the scheme's (443, 80).
    fn port(&self) -> u16 {
        self.url.port_or_known_default().unwrap_or(443)
    }

    /// The host, told apart from its serialisation (reqwest re-exports `Url` but not `url::Host`).
    /// That is exact: the URL parser writes an IPv6 host in brackets and an IPv4 one in dotted
    /// decimal, and any host a strict IPv4 parse accepts was already read as an IPv4 address.
    fn host(&self) -> Option<HostKind<'_>> {
        let host = self.url.host_str()?;
        if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return v6.parse().ok().map(|ip| HostKind::Ip(IpAddr::V6(ip)));
        }
        Some(match host.parse::<Ipv4Addr>() {
            Ok(ip) => HostKind::Ip(IpAddr::V4(ip)),
            Err(_) => HostKind::Name(host),
        })
    }

    /// What can be refused without DNS: IP literals, and names that are local by definition
    /// (RFC 6761 reserves `localhost` and `*.localhost` for loopback, and resolvers may answer
    /// them without asking DNS, so the address check after resolution is not enough alone).
    fn check_host_name(&self, policy: EndpointPolicy) -> Result<(), TargetError> {
        let host = self.host().ok_or(TargetError::NoHost)?;
        if policy.allow_private_targets {
            return Ok(());
        }
        match host {
            HostKind::Name(name) => {
                // A fully qualified name may end in a dot: "localhost." is still localhost.
                let name = name.strip_suffix('.').unwrap_or(name);
                if name.is_empty() {
                    return Err(TargetError::NoHost);
                }
                if name == "localhost" || name.ends_with(".localhost") {
                    return Err(TargetError::LocalHostName {
                        host: self.host_str().to_owned(),
                    });
                }
                Ok(())
            }
            HostKind::Ip(ip) => self.check_address(ip),
        }
    }

    fn check_address(&self, addr: IpAddr) -> Result<(), TargetError> {
        if is_public(addr) {
            Ok(())
        } else {
            Err(TargetError::NonPublicAddress {
                host: self.host_str().to_owned(),
                addr,
            })
        }
    }
}

enum HostKind<'a> {
    Name(&'a str),
    Ip(IpAddr),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === resolve ===

/// The addresses to deliver to `endpoint`, all of them allowed by `policy`: an IP literal as it
/// is, a name through the system resolver (`tokio::net::lookup_host`). Refused when ANY address is
/// not public (unless `allow_private_targets`): a name with one public and one private address
/// would otherwise reach the private one whenever the connection picks it.
///
/// The caller bounds the time this takes (the resolver's own timeouts can be long) and pins the
/// connection to the result. Call it before every delivery: the answer may change.
pub async fn resolve(
    endpoint: &Endpoint,
    policy: EndpointPolicy,
) -> Result<Vec<SocketAddr>, TargetError> {
    // Again, with this policy: the endpoint may have been parsed under another.
    endpoint.check_host_name(policy)?;
    let port = endpoint.port();
    let host = endpoint.host().ok_or(TargetError::NoHost)?;
    let addrs: Vec<SocketAddr> = match host {
        HostKind::Ip(ip) => vec![SocketAddr::new(ip, port)],
        HostKind::Name(name) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|source| TargetError::Resolve {
                host: endpoint.host_str().to_owned(),
                source,
            })?
            .collect(),
    };
    check_addresses(endpoint.host_str(), addrs, policy)
}

/// The policy applied to a host's addresses: none at all is an error, any non-public one refuses
/// the lot (unless allowed), and duplicates (resolvers repeat an address per socket type) go.
fn check_addresses(
    host: &str,
    addrs: Vec<SocketAddr>,
    policy: EndpointPolicy,
) -> Result<Vec<SocketAddr>, TargetError> {
    if addrs.is_empty() {
        return Err(TargetError::NoAddresses {
            host: host.to_owned(),
        });
    }
    if !policy.allow_private_targets
        && let Some(bad) = addrs.iter().find(|a| !is_public(a.ip()))
    {
        return Err(TargetError::NonPublicAddress {
            host: host.to_owned(),
            addr: bad.ip(),
        });
    }
    let mut seen = HashSet::new();
    Ok(addrs.into_iter().filter(|a| seen.insert(*a)).collect())
}

// === is_public ===

/// Whether `ip` is a public unicast address, one a webhook may be sent to.
///
/// Refused: everything the IANA special-purpose registries mark as not globally reachable, plus
/// multicast, broadcast, and shared address space (CGNAT 100.64/10, which is the provider's
/// inside). IPv6 addresses that carry an IPv4 address a stack or gateway will use (IPv4-mapped
/// `::ffff:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by that address, since
/// `::ffff:127.0.0.1` is loopback in disguise. IPv6 is otherwise an allow-list: only global
/// unicast (2000::/3) minus its special blocks, so blocks assigned in future are refused until
/// looked at rather than let through.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// `(network, prefix length)`: IPv4 blocks that are never a webhook's destination.
const NON_PUBLIC_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8), // "this network", incl. unspecified 0.0.0.0
    (Ipv4Addr::new(10, 0, 0, 0), 8), // private (RFC 1918)
    (Ipv4Addr::new(100, 64, 0, 0), 10), // shared address space, CGNAT (RFC 6598)
    (Ipv4Addr::new(127, 0, 0, 0), 8), // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16), // link-local, incl. cloud metadata 169.254.169.254
    (Ipv4Addr::new(172, 16, 0, 0), 12), // private (RFC 1918)
    (Ipv4Addr::new(192, 0, 0, 0), 24), // IETF protocol assignments (RFC 6890)
    (Ipv4Addr::new(192, 0, 2, 0), 24), // documentation TEST-NET-1
    (Ipv4Addr::new(192, 88, 99, 0), 24), // 6to4 relay anycast (deprecated, RFC 7526)
    (Ipv4Addr::new(192, 168, 0, 0), 16), // private (RFC 1918)
    (Ipv4Addr::new(198, 18, 0, 0), 15), // benchmarking (RFC 2544)
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation TEST-NET-2
    (Ipv4Addr::new(203, 0, 113, 0), 24), // documentation TEST-NET-3
    (Ipv4Addr::new(224, 0, 0, 0), 4), // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4), // reserved, incl. broadcast 255.255.255.255
];

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let bits = ip.to_bits();
    !NON_PUBLIC_V4.iter().any(|&(net, len)| {
        let mask = u32::MAX << (32 - u32::from(len));
        bits & mask == net.to_bits()
    })
}

/// IPv6 blocks inside 2000::/3 that are not public (those that embed IPv4 are handled apart).
const NON_PUBLIC_V6_GLOBAL: &[(Ipv6Addr, u8)] = &[
    // IETF protocol assignments: Teredo 2001::/32 (hides an IPv4 address, obfuscated),
    // benchmarking 2001:2::/48, ORCHID; none is a web server's address.
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23),
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation (RFC 3849)
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),     // documentation (RFC 9637)
];

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let bits = ip.to_bits();
    let within = |net: Ipv6Addr, len: u8| {
        let mask = u128::MAX << (128 - u32::from(len));
        bits & mask == net.to_bits()
    };
    // Ipv4-mapped ::ffff:a.b.c.d: a dual-stack socket connects to a.b.c.d itself.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // NAT64 well-known prefix (RFC 6052): the gateway connects to the last 32 bits.
    if within(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return is_public_v4(embedded_v4(bits));
    }
    // 6to4 (RFC 3056): 2002:AABB:CCDD::/48 is routed through the IPv4 address AA.BB.CC.DD.
    if within(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        return is_public_v4(embedded_v4(bits >> 80));
    }
    // Everything else outside global unicast is refused, which covers unspecified ::, loopback
    // ::1, IPv4-compatible ::a.b.c.d (deprecated by RFC 4291; what a stack does with one is not
    // worth guessing), local-use NAT64 64:ff9b:1::/48, discard 100::/64, SRv6 5f00::/16,
    // unique local fc00::/7, link-local fe80::/10, site-local fec0::/10 and multicast ff00::/8.
    if !within(Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3) {
        return false;
    }
    !NON_PUBLIC_V6_GLOBAL
        .iter()
        .any(|&(net, len)| within(net, len))
}

/// The IPv4 address in the low 32 bits of `bits`.
fn embedded_v4(bits: u128) -> Ipv4Addr {
    // Truncation is the point: the low 32 bits are the address.
    Ipv4Addr::from_bits((bits & u128::from(u32::MAX)) as u32)
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use proptest::prelude::*;

    use super::*;

    const STRICT: EndpointPolicy = EndpointPolicy::STRICT;
    const OPEN: EndpointPolicy = EndpointPolicy {
        allow_private_targets: true,
        allow_http: true,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("IP literal")
    }

    #[test]
    fn classifies_addresses() {
        #[rustfmt::skip]
        let table: &[(&str, bool)] = &[
            // IPv4 public
            ("1.1.1.1", true), ("8.8.8.8", true), ("93.184.215.14", true),
            ("9.255.255.255", true), ("11.0.0.0", true),
            ("100.63.255.255", true), ("100.128.0.0", true),
            ("126.255.255.255", true), ("128.0.0.0", true),
            ("169.253.255.255", true), ("169.255.0.0", true),
            ("172.15.255.255", true), ("172.32.0.0", true),
            ("192.0.1.0", true), ("192.0.3.0", true), ("192.88.98.255", true),
            ("192.167.255.255", true), ("192.169.0.0", true),
            ("198.17.255.255", true), ("198.20.0.0", true),
            ("198.51.99.255", true), ("203.0.112.255", true),
            ("223.255.255.255", true),
            // IPv4 not public
            ("0.0.0.0", false), ("0.1.2.3", false),
            ("10.0.0.1", false), ("10.255.255.255", false),
            ("100.64.0.0", false), ("100.127.255.255", false),
            ("127.0.0.1", false), ("127.255.255.254", false),
            ("169.254.0.1", false), ("169.254.169.254", false),
            ("172.16.0.0", false), ("172.31.255.255", false),
            ("192.0.0.8", false), ("192.0.2.1", false), ("192.88.99.1", false),
            ("192.168.0.1", false), ("192.168.255.255", false),
            ("198.18.0.0", false), ("198.19.255.255", false),
            ("198.51.100.7", false), ("203.0.113.9", false),
            ("224.0.0.1", false), ("239.255.255.250", false),
            ("240.0.0.1", false), ("255.255.255.255", false),
            // IPv6 public
            ("2606:4700:4700::1111", true), ("2001:4860:4860::8888", true),
            ("2a00:1450:4001::1", true), ("2001:200::1", true),
            ("2002:808:808::1", true),        // 6to4 of 8.8.8.8
            ("64:ff9b::808:808", true),       // NAT64 of 8.8.8.8
            ("::ffff:8.8.8.8", true),         // mapped 8.8.8.8
            ("3ffe::1", true), ("3fff:1000::1", true),
            // IPv6 not public
            ("::", false), ("::1", false),
            ("::ffff:127.0.0.1", false), ("::ffff:10.0.0.1", false),
            ("::ffff:169.254.169.254", false), ("::ffff:0.0.0.0", false),
            ("::127.0.0.1", false), ("::8.8.8.8", false), // IPv4-compatible
            ("64:ff9b::7f00:1", false), ("64:ff9b::a9fe:a9fe", false),
            ("64:ff9b:1::808:808", false),
            ("2002:7f00:1::1", false), ("2002:a00:1::", false), ("2002:c0a8:101::1", false),
            ("100::1", false),
            ("2001::1", false), ("2001:0:4136:e378:8000:63bf:3fff:fdd2", false), // Teredo
            ("2001:2::1", false), ("2001:1ff:ffff::1", false),
            ("2001:db8::1", false), ("2001:db8:ffff::1", false),
            ("3fff::1", false), ("3fff:fff:ffff::1", false),
            ("5f00::1", false),
            ("fc00::1", false), ("fd12:3456:789a::1", false),
            ("fe80::1", false), ("febf::1", false), ("fec0::1", false),
            ("ff02::1", false), ("ff0e::1", false),
            ("1000::1", false), ("4000::1", false), // outside 2000::/3
        ];
        for &(addr, want) in table {
            assert_eq!(is_public(ip(addr)), want, "{addr}");
        }
    }

    /// The blocks the issue names, each written as a URL literal, refused unless allowed.
    #[tokio::test]
    async fn issue_cases_refused_unless_allowed() {
        for url in [
            "https://127.0.0.1/hook",
            "https://10.0.0.1/hook",
            "https://169.254.169.254/latest/meta-data/",
            "https://[::1]/hook",
        ] {
            let err = Endpoint::parse(url, STRICT).expect_err(url);
            assert!(
                matches!(err, TargetError::NonPublicAddress { .. }),
                "{url}: {err:?}"
            );
            // Parsed under the open policy, it is still refused at delivery under the strict one.
            let endpoint = Endpoint::parse(url, OPEN).expect(url);
            let err = resolve(&endpoint, STRICT).await.expect_err(url);
            assert!(
                matches!(err, TargetError::NonPublicAddress { .. }),
                "{url}: {err:?}"
            );
            let addrs = resolve(&endpoint, OPEN).await.expect(url);
            assert_eq!(addrs.len(), 1, "{url}");
            assert_eq!(addrs[0].port(), 443, "{url}");
        }
    }

    #[tokio::test]
    async fn ip_literals_resolve_to_themselves_with_the_port() {
        let endpoint = Endpoint::parse("https://8.8.8.8:8443/x", STRICT).expect("public");
        assert_eq!(
            resolve(&endpoint, STRICT).await.expect("public"),
            vec!["8.8.8.8:8443".parse::<SocketAddr>().expect("addr")]
        );
        let endpoint = Endpoint::parse("https://[2606:4700:4700::1111]/", STRICT).expect("public");
        assert_eq!(
            resolve(&endpoint, STRICT).await.expect("public"),
            vec![
                "[2606:4700:4700::1111]:443"
                    .parse::<SocketAddr>()
                    .expect("addr")
            ]
        );
        let endpoint = Endpoint::parse("http://127.0.0.1:8080/", OPEN).expect("allowed");
        assert_eq!(
            resolve(&endpoint, OPEN).await.expect("allowed"),
            vec!["127.0.0.1:8080".parse::<SocketAddr>().expect("addr")]
        );
    }

    #[tokio::test]
    async fn localhost_is_refused_by_name_and_resolved_only_when_allowed() {
        for url in [
            "https://localhost/",
            "https://LOCALHOST:8443/",
            "https://localhost./",
            "https://api.localhost/",
            "https://a.b.localhost./",
        ] {
            let err = Endpoint::parse(url, STRICT).expect_err(url);
            assert!(
                matches!(err, TargetError::LocalHostName { .. }),
                "{url}: {err:?}"
            );
            let endpoint = Endpoint::parse(url, OPEN).expect(url);
            // Refused by its name, before any lookup.
            let err = resolve(&endpoint, STRICT).await.expect_err(url);
            assert!(
                matches!(err, TargetError::LocalHostName { .. }),
                "{url}: {err:?}"
            );
        }
        // Allowed: `localhost` goes to the system resolver (the hosts file), and its loopback
        // addresses come back to be pinned.
        let endpoint = Endpoint::parse("http://localhost:8080/hook", OPEN).expect("allowed");
        let addrs = resolve(&endpoint, OPEN).await.expect("localhost resolves");
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 8080),
            "{addrs:?}"
        );
        // Names that merely contain "localhost" are names like any other.
        assert!(Endpoint::parse("https://localhost.example.com/", STRICT).is_ok());
        assert!(Endpoint::parse("https://mylocalhost/", STRICT).is_ok());
    }

    #[test]
    fn any_non_public_address_refuses_the_whole_answer() {
        let sa = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let mixed = vec![sa("8.8.8.8:443"), sa("10.0.0.1:443")];
        let err = check_addresses("mixed.example", mixed.clone(), STRICT).expect_err("mixed");
        assert!(
            matches!(err, TargetError::NonPublicAddress { addr, .. } if addr == ip("10.0.0.1")),
            "{err:?}"
        );
        assert_eq!(
            check_addresses("mixed.example", mixed.clone(), OPEN).expect("open"),
            mixed
        );
        let rebinding = vec![sa("[2606:4700::1]:443"), sa("[::ffff:127.0.0.1]:443")];
        assert!(check_addresses("r.example", rebinding, STRICT).is_err());
        let dup = vec![sa("8.8.8.8:443"), sa("1.1.1.1:443"), sa("8.8.8.8:443")];
        assert_eq!(
            check_addresses("dup.example", dup, STRICT).expect("public"),
            vec![sa("8.8.8.8:443"), sa("1.1.1.1:443")]
        );
        assert!(matches!(
            check_addresses("none.example", vec![], OPEN),
            Err(TargetError::NoAddresses { .. })
        ));
    }

    #[test]
    fn parse_accepts_public_https_urls_and_normalises_them() {
        for (input, normalised) in [
            ("https://example.com/hook", "https://example.com/hook"),
            ("https://Example.COM", "https://example.com/"),
            (
                "HTTPS://example.com:8443/a?b=c#d",
                "https://example.com:8443/a?b=c#d",
            ),
            ("https://example.com:443/", "https://example.com/"),
            ("https://bücher.example/", "https://xn--bcher-kva.example/"),
            ("https://8.8.8.8/", "https://8.8.8.8/"),
            (
                "https://[2606:4700:4700::1111]/",
                "https://[2606:4700:4700::1111]/",
            ),
        ] {
            let endpoint = Endpoint::parse(input, STRICT).expect(input);
            assert_eq!(endpoint.as_str(), normalised, "{input}");
            assert_eq!(endpoint.to_string(), normalised, "{input}");
        }
        let endpoint = Endpoint::parse("https://[2606:4700::1]:8443/", STRICT).expect("v6");
        assert_eq!(endpoint.host_str(), "[2606:4700::1]");
        assert_eq!(endpoint.port(), 8443);
    }

    /// Other spellings of an address are read the way a browser (and reqwest) reads them, so
    /// they cannot slip a loopback address past the literal check.
    #[test]
    fn obfuscated_ipv4_literals_are_read_as_addresses() {
        for url in [
            "https://0x7f.1/",
            "https://2130706433/",
            "https://017700000001/",
            "https://127.1/",
            "https://0/",
            "https://0x7f000001/",
            "https://[::ffff:7f00:1]/",
            "https://[::ffff:169.254.169.254]/",
            "https://[64:ff9b::a9fe:a9fe]/",
            "https://%31%32%37.0.0.1/",
        ] {
            let err = Endpoint::parse(url, STRICT).expect_err(url);
            assert!(
                matches!(err, TargetError::NonPublicAddress { .. }),
                "{url}: {err:?}"
            );
        }
    }

    #[test]
    fn parse_refuses_malformed_urls_precisely() {
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        // 1000 bytes of path, which percent-encoding makes 3000.
        let grows = format!("https://example.com/{}", "é".repeat(500));
        type Expect = fn(&TargetError) -> bool;
        let cases: Vec<(&str, Expect)> = vec![
            ("", |e| matches!(e, TargetError::Empty)),
            (&long, |e| matches!(e, TargetError::TooLong { .. })),
            (
                &grows,
                |e| matches!(e, TargetError::TooLong { len } if *len > MAX_URL_LEN),
            ),
            ("https://exa mple.com/", |e| {
                matches!(e, TargetError::Whitespace)
            }),
            (" https://example.com/", |e| {
                matches!(e, TargetError::Whitespace)
            }),
            ("https://example.com/\n", |e| {
                matches!(e, TargetError::Whitespace)
            }),
            ("https://exa\tmple.com/", |e| {
                matches!(e, TargetError::Whitespace)
            }),
            ("https://example.com/\u{0}", |e| {
                matches!(e, TargetError::Whitespace)
            }),
            ("/hook", |e| matches!(e, TargetError::Invalid { .. })),
            ("example.com/hook", |e| {
                matches!(e, TargetError::Invalid { .. })
            }),
            ("https://", |e| matches!(e, TargetError::Invalid { .. })),
            ("https://exa<mple.com/", |e| {
                matches!(e, TargetError::Invalid { .. })
            }),
            ("https://[::1/", |e| {
                matches!(e, TargetError::Invalid { .. })
            }),
            ("https://example.com:99999/", |e| {
                matches!(e, TargetError::Invalid { .. })
            }),
            (
                "ftp://example.com/",
                |e| matches!(e, TargetError::UnsupportedScheme { scheme } if scheme == "ftp"),
            ),
            ("file:///etc/passwd", |e| {
                matches!(e, TargetError::UnsupportedScheme { .. })
            }),
            ("gopher://example.com/", |e| {
                matches!(e, TargetError::UnsupportedScheme { .. })
            }),
            ("data:text/plain,hi", |e| {
                matches!(e, TargetError::UnsupportedScheme { .. })
            }),
            ("http://example.com/", |e| {
                matches!(e, TargetError::HttpNotAllowed)
            }),
            ("https://user@example.com/", |e| {
                matches!(e, TargetError::UserInfo)
            }),
            ("https://user:pw@example.com/", |e| {
                matches!(e, TargetError::UserInfo)
            }),
            ("https://:pw@example.com/", |e| {
                matches!(e, TargetError::UserInfo)
            }),
            ("https://./", |e| matches!(e, TargetError::NoHost)),
        ];
        for (input, want) in cases {
            let err = Endpoint::parse(input, STRICT).expect_err(input);
            assert!(want(&err), "{input:?}: {err:?}");
            // Every refusal has a message and implements std::error::Error.
            assert!(!err.to_string().is_empty());
            let _ = err.source();
        }
        // The message never repeats a password.
        let err =
            Endpoint::parse("https://user:hunter2@example.com/", STRICT).expect_err("userinfo");
        assert!(!format!("{err} {err:?}").contains("hunter2"));
    }

    #[test]
    fn the_open_policy_allows_http_and_private_hosts_but_not_malformed_urls() {
        for url in [
            "http://127.0.0.1:8080/",
            "http://localhost/",
            "https://10.0.0.1/",
            "http://[::1]:9000/x",
            "http://169.254.169.254/",
        ] {
            assert!(Endpoint::parse(url, OPEN).is_ok(), "{url}");
        }
        let http_only = EndpointPolicy {
            allow_private_targets: false,
            allow_http: true,
        };
        assert!(Endpoint::parse("http://example.com/", http_only).is_ok());
        assert!(Endpoint::parse("http://127.0.0.1/", http_only).is_err());
        for url in ["ftp://127.0.0.1/", "http://u@localhost/", "localhost:8080"] {
            assert!(Endpoint::parse(url, OPEN).is_err(), "{url}");
        }
    }

    /// A private block as (network, prefix length), for the property tests.
    fn private_v4() -> impl Strategy<Value = Ipv4Addr> {
        let blocks = prop_oneof![
            Just((0x0000_0000u32, 8u32)), // 0/8
            Just((0x0a00_0000, 8)),       // 10/8
            Just((0x6440_0000, 10)),      // 100.64/10
            Just((0x7f00_0000, 8)),       // 127/8
            Just((0xa9fe_0000, 16)),      // 169.254/16
            Just((0xac10_0000, 12)),      // 172.16/12
            Just((0xc0a8_0000, 16)),      // 192.168/16
            Just((0xc612_0000, 15)),      // 198.18/15
            Just((0xe000_0000, 4)),       // 224/4
            Just((0xf000_0000, 4)),       // 240/4
        ];
        (blocks, any::<u32>())
            .prop_map(|((net, len), host)| Ipv4Addr::from_bits(net | (host >> len)))
    }

    proptest! {
        #[test]
        fn private_ipv4_is_never_public(v4 in private_v4()) {
            prop_assert!(!is_public(IpAddr::V4(v4)), "{}", v4);
        }

        #[test]
        fn private_ipv4_in_ipv6_clothing_is_never_public(v4 in private_v4()) {
            let b = u128::from(v4.to_bits());
            for v6 in [
                v4.to_ipv6_mapped(),
                v4.to_ipv6_compatible(),
                Ipv6Addr::from_bits(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0).to_bits() | b),
                Ipv6Addr::from_bits((0x2002u128 << 112) | (b << 80) | 1),
            ] {
                prop_assert!(!is_public(IpAddr::V6(v6)), "{}", v6);
            }
        }

        #[test]
        fn mapped_nat64_and_6to4_agree_with_the_embedded_ipv4(bits in any::<u32>()) {
            let v4 = Ipv4Addr::from_bits(bits);
            let b = u128::from(bits);
            let want = is_public(IpAddr::V4(v4));
            prop_assert_eq!(is_public(IpAddr::V6(v4.to_ipv6_mapped())), want);
            let nat64 = Ipv6Addr::from_bits(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0).to_bits() | b);
            prop_assert_eq!(is_public(IpAddr::V6(nat64)), want);
            let six_to_four = Ipv6Addr::from_bits((0x2002u128 << 112) | (b << 80) | 0xabcd);
            prop_assert_eq!(is_public(IpAddr::V6(six_to_four)), want);
        }

        #[test]
        fn unique_local_and_link_local_ipv6_are_never_public(low in any::<u128>()) {
            let ula = Ipv6Addr::from_bits((0xfc00u128 << 112) | (low >> 7));
            let link = Ipv6Addr::from_bits((0xfe80u128 << 112) | (low >> 10));
            prop_assert!(!is_public(IpAddr::V6(ula)), "{}", ula);
            prop_assert!(!is_public(IpAddr::V6(link)), "{}", link);
        }

        #[test]
        fn parse_never_panics(input in ".{0,300}") {
            let _ = Endpoint::parse(&input, STRICT);
            let _ = Endpoint::parse(&format!("https://{input}"), STRICT);
            let _ = Endpoint::parse(&format!("https://{input}"), OPEN);
        }
    }
}
