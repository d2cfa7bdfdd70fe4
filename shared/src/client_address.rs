//! Which address a request counts against in the per-address budgets: the socket peer, or,
//! behind a balancer the service trusts, the hop that balancer appended to `X-Forwarded-For`.

use http::HeaderMap;
use std::net::IpAddr;

/// The client's address: the socket `peer`, or the last `X-Forwarded-For` hop when
/// `trust_forwarded_for` is set (the service sits behind its own balancer).
pub fn client_address(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trust_forwarded_for: bool,
) -> Option<IpAddr> {
    let forwarded = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .filter(|_| trust_forwarded_for)
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse().ok());
    forwarded.or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_counts_only_when_trusted() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let mut hops = HeaderMap::new();
        hops.insert(
            "x-forwarded-for",
            "203.0.113.5, 198.51.100.7".parse().unwrap(),
        );
        assert_eq!(client_address(Some(peer), &hops, false), Some(peer));
        assert_eq!(
            client_address(Some(peer), &hops, true),
            Some("198.51.100.7".parse().unwrap())
        );
        let mut junk = HeaderMap::new();
        junk.insert("x-forwarded-for", "junk".parse().unwrap());
        assert_eq!(client_address(Some(peer), &junk, true), Some(peer));
        assert_eq!(client_address(None, &HeaderMap::new(), true), None);
    }
}
