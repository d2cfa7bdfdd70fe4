//! Where a self-update may send agents: the download URL policy.
//!
//! An agent fetches the URL of a self-update from inside its own network, so the URL is a
//! request the api makes every targeted agent send on an admin's behalf. Only `https` to a host
//! that is named or public is accepted: no credentials, no whitespace or control characters,
//! at most [`MAX_URL_BYTES`]. Addresses that are loopback, link-local, private, shared (CGNAT),
//! unspecified, multicast or broadcast, and the names `localhost` and `*.localhost`, are refused
//! unless `api.self_update_allowed_hosts` ([`AllowList`]) names them. Host names are not
//! resolved here (the api must not probe DNS on an admin's behalf): a name that resolves to an
//! internal address is not caught.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use url::{Host, Url};

/// Longest download URL accepted, in bytes.
pub const MAX_URL_BYTES: usize = 2048;

/// The setting that allows internal hosts.
const SETTING: &str = "api.self_update_allowed_hosts";

/// Why a download URL is refused; the message is the `reason` the operator sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Longer than [`MAX_URL_BYTES`].
    #[error("must be at most {MAX_URL_BYTES} bytes")]
    TooLong,
    /// Whitespace or a control character somewhere (URL parsers drop some of them silently).
    #[error("must not contain whitespace or control characters")]
    Whitespace,
    /// Not a URL.
    #[error("must be an absolute https URL")]
    Malformed,
    /// A scheme other than https.
    #[error("must be https")]
    NotHttps,
    /// A user name or password (shown to every viewer of the node).
    #[error("must not carry credentials")]
    Credentials,
    /// No host.
    #[error("must name a host")]
    NoHost,
    /// `localhost` or a name under it.
    #[error("names localhost; allow it with {SETTING}")]
    Localhost,
    /// An IP literal of an internal range; the range's kind.
    #[error("names a {0} address; allow it with {SETTING}")]
    Internal(&'static str),
}

/// Hosts a download URL may name although they are internal (`api.self_update_allowed_hosts`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    /// Host names, lower case, matched exactly.
    names: Vec<String>,
    /// Addresses (as /32 or /128) and CIDR blocks.
    nets: Vec<IpNet>,
}

impl AllowList {
    /// Parses the comma-separated setting: host names, IP addresses or CIDR blocks; empty
    /// entries are skipped. The error names the entry that is none of these.
    pub fn parse(setting: &str) -> Result<Self, String> {
        let mut list = Self::default();
        for entry in setting.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = || format!("{entry:?} is not a host name, IP address or CIDR block");
            if let Some((ip, len)) = entry.split_once('/') {
                let ip: IpAddr = ip.parse().map_err(|_| bad())?;
                let len: u8 = len.parse().map_err(|_| bad())?;
                list.nets.push(IpNet::new(ip, len).map_err(|_| bad())?);
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                list.nets.push(IpNet::from(ip));
            } else if is_host_name(entry) {
                list.names.push(entry.to_ascii_lowercase());
            } else {
                return Err(bad());
            }
        }
        Ok(list)
    }

    fn allows_name(&self, name: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

/// Dot-separated labels of ASCII letters, digits, `-` and `_` (1 to 63 each, 253 in all).
fn is_host_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Checks a download URL; returns it as agents are sent it: the parsed URL's canonical form,
/// so every agent reads the host that was checked (no parser can find another one in it).
pub fn check(raw: &str, allowed: &AllowList) -> Result<String, Refused> {
    if raw.len() > MAX_URL_BYTES {
        return Err(Refused::TooLong);
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Refused::Whitespace);
    }
    let url = Url::parse(raw).map_err(|_| Refused::Malformed)?;
    if url.scheme() != "https" {
        return Err(Refused::NotHttps);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refused::Credentials);
    }
    match url.host().ok_or(Refused::NoHost)? {
        Host::Domain(name) => {
            // A trailing dot names the same host.
            let name = name.trim_end_matches('.');
            if name.is_empty() {
                return Err(Refused::NoHost);
            }
            let local = name == "localhost" || name.ends_with(".localhost");
            if local && !allowed.allows_name(name) {
                return Err(Refused::Localhost);
            }
        }
        Host::Ipv4(ip) => internal(IpAddr::V4(ip), allowed)?,
        Host::Ipv6(ip) => internal(IpAddr::V6(ip), allowed)?,
    }
    Ok(url.into())
}

/// Refuses an internal address the allow-list does not name (by itself or, for an IPv6
/// address that carries an IPv4 one, by that).
fn internal(ip: IpAddr, allowed: &AllowList) -> Result<(), Refused> {
    let Some(kind) = internal_kind(ip) else {
        return Ok(());
    };
    let carried = match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
        IpAddr::V4(_) => None,
    };
    if allowed.allows_ip(ip) || carried.is_some_and(|v4| allowed.allows_ip(v4)) {
        return Ok(());
    }
    Err(Refused::Internal(kind))
}

/// The kind of internal range `ip` is in, if any.
fn internal_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => v4_kind(v4),
            None => v6_kind(v6),
        },
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match a {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_link_local() => "link-local",
        _ if ip.is_private() => "private",
        // 0.0.0.0/8: "this network"; 0.0.0.0 reaches the local host on most systems.
        0 => "unspecified",
        100 if b & 0xc0 == 64 => "shared (CGNAT)",
        // 192.0.0.0/24: protocol assignments, home of some clouds' metadata (192.0.0.192).
        192 if b == 0 && ip.octets()[2] == 0 => "special-purpose",
        // 198.18.0.0/15: benchmarking, routed inside some networks.
        198 if b & 0xfe == 18 => "special-purpose",
        _ if ip.is_multicast() => "multicast",
        // 240.0.0.0/4, reserved, ends in the broadcast address.
        240.. => "broadcast or reserved",
        _ => return None,
    })
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(match first {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() => "unspecified",
        _ if first & 0xffc0 == 0xfe80 => "link-local",
        // Unique local (fc00::/7) and the deprecated site-local (fec0::/10).
        _ if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0 => "private",
        _ if first & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    })
}

/// The IPv4 address an IPv6 one leads to: IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d` and 6to4 `2002:aabb:ccdd::`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0, ..] if !ip.is_loopback() && !ip.is_unspecified() => Some(v4(s[6], s[7])),
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => Some(v4(s[6], s[7])),
        // Local-use NAT64 (64:ff9b:1::/48), the IPv4 address in its last 32 bits.
        [0x64, 0xff9b, 1, ..] => Some(v4(s[6], s[7])),
        [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(raw: &str) -> Refused {
        check(raw, &AllowList::default()).unwrap_err()
    }

    #[test]
    fn https_to_a_public_host_is_accepted_in_canonical_form() {
        let none = AllowList::default();
        for (given, sent) in [
            ("https://example.com/agent", "https://example.com/agent"),
            ("https://dl/agent", "https://dl/agent"),
            ("HTTPS://Example.COM", "https://example.com/"),
            ("https://8.8.8.8:8443/a?v=1", "https://8.8.8.8:8443/a?v=1"),
            ("https://[2606:4700::1]/a", "https://[2606:4700::1]/a"),
            (
                "https://[64:ff9b::808:808]/a",
                "https://[64:ff9b::808:808]/a",
            ),
            ("https://100.128.0.1/a", "https://100.128.0.1/a"),
            ("https://172.32.0.1/a", "https://172.32.0.1/a"),
            // A backslash is a path separator for https: the host is the one before it.
            (
                "https://example.com\\@127.0.0.1/",
                "https://example.com/@127.0.0.1/",
            ),
        ] {
            assert_eq!(check(given, &none).as_deref(), Ok(sent), "{given}");
        }
    }

    #[test]
    fn only_https_without_credentials_or_odd_characters() {
        assert_eq!(refused("http://example.com/agent"), Refused::NotHttps);
        assert_eq!(refused("ftp://example.com/agent"), Refused::NotHttps);
        assert_eq!(refused("file:///usr/bin/agent"), Refused::NotHttps);
        assert_eq!(refused("example.com/agent"), Refused::Malformed);
        assert_eq!(refused(""), Refused::Malformed);
        assert_eq!(refused("https://"), Refused::Malformed);
        assert_eq!(
            refused("https://user:pass@example.com/agent"),
            Refused::Credentials
        );
        assert_eq!(
            refused("https://user@example.com/agent"),
            Refused::Credentials
        );
        assert_eq!(
            refused("https://:pass@example.com/agent"),
            Refused::Credentials
        );
        for raw in [
            "https://example.com/agent\r\nX-Injected: 1",
            "https://example.com/a\ngent",
            "https://exa\tmple.com/agent",
            "https://example.com/a gent",
            " https://example.com/agent",
            "https://example.com/agent\u{0}",
            "https://example.com/agent\u{7f}",
            "https://example.com/\u{a0}agent",
        ] {
            assert_eq!(refused(raw), Refused::Whitespace, "{raw:?}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert_eq!(refused(&long), Refused::TooLong);
        let exact = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES - 20));
        assert_eq!(exact.len(), MAX_URL_BYTES);
        assert!(check(&exact, &AllowList::default()).is_ok());
    }

    #[test]
    fn internal_addresses_are_refused_by_kind() {
        for (raw, kind) in [
            ("https://127.0.0.1:6379", "loopback"),
            ("https://127.1/", "loopback"),
            ("https://0x7f000001/", "loopback"),
            ("https://2130706433/", "loopback"),
            ("https://[::1]/agent", "loopback"),
            ("https://[::ffff:127.0.0.1]/agent", "loopback"),
            ("https://[::127.0.0.1]/agent", "loopback"),
            ("https://169.254.169.254/latest/meta-data/", "link-local"),
            ("https://[fe80::1]/", "link-local"),
            ("https://[::ffff:169.254.169.254]/", "link-local"),
            ("https://10.1.2.3/", "private"),
            ("https://172.16.0.1/", "private"),
            ("https://172.31.255.255/", "private"),
            ("https://192.168.1.1/", "private"),
            ("https://[fc00::1]/", "private"),
            ("https://[fd12:3456::1]/", "private"),
            ("https://[fec0::1]/", "private"),
            ("https://[64:ff9b::a01:203]/", "private"),
            ("https://[2002:a01:203::1]/", "private"),
            ("https://0.0.0.0/", "unspecified"),
            ("https://0.1.2.3/", "unspecified"),
            ("https://[::]/", "unspecified"),
            ("https://100.64.0.1/", "shared (CGNAT)"),
            ("https://100.127.255.255/", "shared (CGNAT)"),
            ("https://224.0.0.1/", "multicast"),
            ("https://239.255.255.250/", "multicast"),
            ("https://[ff02::1]/", "multicast"),
            ("https://255.255.255.255/", "broadcast or reserved"),
            ("https://240.0.0.1/", "broadcast or reserved"),
            ("https://192.0.0.192/", "special-purpose"),
            ("https://198.18.0.1/", "special-purpose"),
            ("https://198.19.255.255/", "special-purpose"),
            ("https://[64:ff9b:1::a01:203]/", "private"),
        ] {
            assert_eq!(refused(raw), Refused::Internal(kind), "{raw}");
        }
        for raw in [
            "https://localhost/agent",
            "https://LOCALHOST:8443/agent",
            "https://localhost./agent",
            "https://api.localhost/agent",
        ] {
            assert_eq!(refused(raw), Refused::Localhost, "{raw}");
        }
        // A name merely containing "localhost" is an ordinary name.
        assert!(check("https://localhost.example.com/a", &AllowList::default()).is_ok());
        assert!(check("https://notlocalhost/a", &AllowList::default()).is_ok());
    }

    #[test]
    fn the_allow_list_opens_named_hosts_addresses_and_blocks() {
        let list =
            AllowList::parse(" Updates.LOCALHOST , 10.0.0.0/8, fd00::/8,127.0.0.1,, ::1 ").unwrap();
        for raw in [
            "https://updates.localhost/agent",
            "https://10.20.30.40/agent",
            "https://[::ffff:10.0.0.1]/agent",
            "https://[fd00::5]/agent",
            "https://127.0.0.1:8443/agent",
            "https://[::1]/agent",
        ] {
            assert!(check(raw, &list).is_ok(), "{raw}");
        }
        for (raw, why) in [
            ("https://localhost/agent", Refused::Localhost),
            ("https://other.localhost/agent", Refused::Localhost),
            ("https://127.0.0.2/agent", Refused::Internal("loopback")),
            ("https://192.168.0.1/agent", Refused::Internal("private")),
            ("https://[fc00::1]/agent", Refused::Internal("private")),
        ] {
            assert_eq!(check(raw, &list), Err(why), "{raw}");
        }
        // The allow-list opens hosts, never plain http or credentials.
        assert_eq!(
            check("http://10.0.0.1/agent", &list),
            Err(Refused::NotHttps)
        );
        assert_eq!(
            check("https://u:p@10.0.0.1/agent", &list),
            Err(Refused::Credentials)
        );
    }

    #[test]
    fn the_allow_list_names_its_bad_entry() {
        assert_eq!(AllowList::parse(""), Ok(AllowList::default()));
        assert_eq!(AllowList::parse(" , "), Ok(AllowList::default()));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/x",
            "nope/8",
            "*.example.com",
            "https://example.com",
            "a..b",
            "[::1]",
            "host name",
        ] {
            let e = AllowList::parse(&format!("example.com,{bad}")).unwrap_err();
            assert!(e.contains(bad.trim()), "{bad}: {e}");
        }
    }
}
