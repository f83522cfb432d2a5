//! The client's IP behind proxies (`server.trusted_proxies`): what the
//! per-IP limits count and the logs show.
//!
//! Headers are believed only from a trusted peer. Each proxy appends the
//! address it received the request from, so the list is read from the
//! right, past the trusted proxies; the first address not in a trusted
//! block is the client. Anything left of it came from the client itself,
//! which can write whatever it likes there.

use crate::config::Cidr;
use http::header::{HeaderMap, FORWARDED};
use std::net::{IpAddr, SocketAddr};

/// The client IP of a request from `peer` with `headers`. `Forwarded`
/// (RFC 7239) wins over `X-Forwarded-For` when both are present.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded: Vec<&str> = values(headers, FORWARDED.as_str())
        .flat_map(|v| v.split(','))
        .filter_map(forwarded_for)
        .collect();
    let hops = if forwarded.is_empty() {
        values(headers, "x-forwarded-for")
            .flat_map(|v| v.split(','))
            .collect()
    } else {
        forwarded
    };
    let mut client = peer;
    for hop in hops.iter().rev() {
        // An unreadable hop ("unknown", an obfuscated name) ends the walk:
        // nothing left of it can be attributed.
        let Some(ip) = parse_hop(hop) else {
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

fn values<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok())
}

/// The `for=` of one `Forwarded` element (`for=1.2.3.4;proto=https`).
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim().trim_matches('"'))
    })
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`
/// or `[2001:db8::1]:4711`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))?
                .parse()
                .ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn proxies() -> Vec<Cidr> {
        ["127.0.0.0/8", "10.0.0.0/8"]
            .iter()
            .map(|c| Cidr::parse(c).unwrap())
            .collect()
    }

    #[test]
    fn x_forwarded_for_from_a_trusted_peer() {
        let t = proxies();
        let peer = ip("127.0.0.1");
        let one = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(client_ip(peer, &one, &t), ip("203.0.113.9"));
        // A client-written entry left of the client's is ignored; trusted
        // hops on the right are skipped.
        let chain = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.1.2.3")]);
        assert_eq!(client_ip(peer, &chain, &t), ip("203.0.113.9"));
        // Several header lines are one list, in order.
        let split = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.9:5555"),
        ]);
        assert_eq!(client_ip(peer, &split, &t), ip("203.0.113.9"));
        // Only proxies: the leftmost.
        let inner = headers(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(client_ip(peer, &inner, &t), ip("10.9.9.9"));
        // Garbage ends the walk at the last good hop.
        let junk = headers(&[("x-forwarded-for", "nonsense, 10.1.1.1")]);
        assert_eq!(client_ip(peer, &junk, &t), ip("10.1.1.1"));
        assert_eq!(client_ip(peer, &headers(&[]), &t), peer);
    }

    #[test]
    fn forwarded_for() {
        let t = proxies();
        let peer = ip("127.0.0.1");
        let h = headers(&[(
            "forwarded",
            r#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, For=10.0.0.2"#,
        )]);
        assert_eq!(client_ip(peer, &h, &t), ip("2001:db8:cafe::17"));
        let both = headers(&[
            ("forwarded", "for=198.51.100.1"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(client_ip(peer, &both, &t), ip("198.51.100.1"));
        let hidden = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(client_ip(peer, &hidden, &t), peer);
    }

    #[test]
    fn headers_from_anyone_else_are_ignored() {
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=198.51.100.1"),
        ]);
        assert_eq!(client_ip(ip("192.0.2.1"), &h, &proxies()), ip("192.0.2.1"));
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &[]), ip("127.0.0.1"));
    }
}
