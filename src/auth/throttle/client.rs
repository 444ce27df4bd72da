//! Who a login comes from: the client address, per `HTTP_TRUSTED_PROXY_HOPS`, and the bucket
//! it is counted in.

use std::{
    convert::Infallible,
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{request::Parts, HeaderMap},
};

/// The TCP peer's address, when the server was started with connect info (`startup::serve`
/// is); `None` otherwise, e.g. in a test router served without it.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip()),
        ))
    }
}

/// The client's address: the TCP peer, or with `hops` trusted proxies in front (each
/// appending the address it received the request from to `X-Forwarded-For`), the entry
/// `hops` places from the right — the one the outermost trusted proxy wrote. Entries to its
/// left were written by the client and are ignored; a header with too few entries falls
/// back to the peer.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, hops: usize) -> Option<IpAddr> {
    if hops == 0 {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    entries
        .len()
        .checked_sub(hops)
        .and_then(|i| parse_ip(entries[i]))
        .or(peer)
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:443`.
fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// The name a client is counted under: IPv4 as is, IPv6 by its /64 (the block one
/// subscriber gets).
pub fn client_bucket(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let net = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("{net}/64")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_ignored_unless_proxies_are_trusted() {
        let peer = Some("10.0.0.5".parse().unwrap());
        let h = xff(&["203.0.113.9"]);
        assert_eq!(client_ip(peer, &h, 0), peer);
        assert_eq!(client_ip(peer, &h, 1), Some("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn the_entry_written_by_the_outermost_trusted_proxy_is_used() {
        let peer = Some("10.0.0.5".parse().unwrap());
        // The client forged the first entry; the two trusted proxies wrote the last two.
        let h = xff(&["1.1.1.1, 198.51.100.7", "10.0.0.9:4431"]);
        assert_eq!(client_ip(peer, &h, 1), Some("10.0.0.9".parse().unwrap()));
        assert_eq!(
            client_ip(peer, &h, 2),
            Some("198.51.100.7".parse().unwrap())
        );
        assert_eq!(client_ip(peer, &xff(&["x"]), 2), peer, "too few entries");
        assert_eq!(
            client_ip(peer, &xff(&["junk"]), 1),
            peer,
            "unparsable entry"
        );
        assert_eq!(
            client_ip(peer, &xff(&["[2001:db8::1]:443"]), 1),
            Some("2001:db8::1".parse().unwrap())
        );
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let a = client_bucket("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = client_bucket("2001:db8:1:2:bbbb::2".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(a, "2001:db8:1:2::/64");
        assert_ne!(a, client_bucket("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(
            client_bucket("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1"
        );
    }
}
