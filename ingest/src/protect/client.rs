//! The client's address, for `RATE_LIMIT_PER_ADDR` and visitor ids (`VISITOR_HASH`):
//! the TCP peer, or, behind a proxy named by `TRUSTED_PROXY_HEADER`, the address
//! that proxy put in its header.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::{HeaderMap, HeaderName};

/// `TRUSTED_PROXY_HEADER`: the header a proxy in front of the ingest sets to the
/// client's address (`X-Forwarded-For`, `X-Real-IP`, `Forwarded`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyHeader(pub HeaderName);

impl std::str::FromStr for ProxyHeader {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HeaderName::from_bytes(s.trim().as_bytes())
            .map(ProxyHeader)
            .map_err(|_| format!("{s:?} is not a header name"))
    }
}

/// The address the limit is kept for: an IPv4 address, or the /64 network of an
/// IPv6 one (a single host usually holds a whole /64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(IpAddr);

impl ClientAddr {
    pub fn new(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let network = u128::from(v6) & !((1u128 << 64) - 1);
                    Self(IpAddr::V6(Ipv6Addr::from(network)))
                }
            },
        }
    }

    /// The address as 16 bytes (an IPv4 address in its IPv6-mapped form).
    pub(crate) fn octets(&self) -> [u8; 16] {
        match self.0 {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        }
    }
}

/// The client's address: from `header` when one is trusted and it gives a
/// readable address, else the TCP peer's (`None` only when neither is known).
pub fn client_addr(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    header: Option<&HeaderName>,
) -> Option<ClientAddr> {
    let from_header = header.and_then(|name| forwarded_ip(headers, name));
    from_header
        .or_else(|| peer.map(|p| p.ip()))
        .map(ClientAddr::new)
}

/// The address in the last `name` header: its rightmost entry, the one the
/// trusted proxy appended (entries to its left are whatever the client sent).
pub(crate) fn forwarded_ip(headers: &HeaderMap, name: &HeaderName) -> Option<IpAddr> {
    let value = headers.get_all(name).iter().next_back()?.to_str().ok()?;
    let last = value.rsplit(',').next()?.trim();
    if name.as_str() == "forwarded" {
        // RFC 7239: `for=192.0.2.60;proto=http`, `for="[2001:db8::1]:4711"`.
        let node = last
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))?
            .1;
        return parse_ip(node.trim().trim_matches('"'));
    }
    parse_ip(last)
}

/// `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1` or `[2001:db8::1]:80`.
fn parse_ip(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            text.strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse().ok())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, values: &[&'static str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(name, v.parse().expect("value"));
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");

    #[test]
    fn x_forwarded_for_gives_its_rightmost_entry() {
        let cases = [
            (vec!["203.0.113.7"], Some("203.0.113.7")),
            (vec!["1.1.1.1, 203.0.113.7"], Some("203.0.113.7")),
            (vec!["1.1.1.1,203.0.113.7 "], Some("203.0.113.7")),
            (
                vec!["1.1.1.1", "10.0.0.1, 203.0.113.8"],
                Some("203.0.113.8"),
            ),
            (vec!["2001:db8::1"], Some("2001:db8::1")),
            (vec!["[2001:db8::1]:4711"], Some("2001:db8::1")),
            (vec!["[2001:db8::2]"], Some("2001:db8::2")),
            (vec!["203.0.113.7:51234"], Some("203.0.113.7")),
            (vec!["203.0.113.7, unknown"], None),
            (vec!["not an address"], None),
            (vec![""], None),
            (vec![], None),
        ];
        for (values, want) in cases {
            let got = forwarded_ip(&headers("x-forwarded-for", &values), &XFF);
            assert_eq!(got, want.map(ip), "{values:?}");
        }
    }

    #[test]
    fn x_real_ip_and_forwarded() {
        let real = HeaderName::from_static("x-real-ip");
        assert_eq!(
            forwarded_ip(&headers("x-real-ip", &["198.51.100.4"]), &real),
            Some(ip("198.51.100.4"))
        );
        let fwd = HeaderName::from_static("forwarded");
        for (value, want) in [
            (
                "for=192.0.2.60;proto=http;by=203.0.113.43",
                Some("192.0.2.60"),
            ),
            (
                "for=1.2.3.4, for=\"[2001:db8:cafe::17]:4711\"",
                Some("2001:db8:cafe::17"),
            ),
            ("For=\"192.0.2.61:80\"", Some("192.0.2.61")),
            ("for=_hidden", None),
            ("proto=https", None),
        ] {
            let values = [value];
            let map = headers("forwarded", &values);
            assert_eq!(forwarded_ip(&map, &fwd), want.map(ip), "{value}");
        }
    }

    #[test]
    fn the_peer_is_used_unless_a_trusted_header_gives_an_address() {
        let peer: SocketAddr = "127.0.0.9:5000".parse().expect("addr");
        let map = headers("x-forwarded-for", &["203.0.113.7"]);
        let addr = |h, p| client_addr(p, &map, h);
        assert_eq!(
            addr(None, Some(peer)),
            Some(ClientAddr::new(ip("127.0.0.9")))
        );
        assert_eq!(
            addr(Some(&XFF), Some(peer)),
            Some(ClientAddr::new(ip("203.0.113.7")))
        );
        let broken = headers("x-forwarded-for", &["garbage"]);
        assert_eq!(
            client_addr(Some(peer), &broken, Some(&XFF)),
            Some(ClientAddr::new(ip("127.0.0.9"))),
            "an unreadable header falls back to the peer"
        );
        assert_eq!(client_addr(None, &HeaderMap::new(), Some(&XFF)), None);
    }

    #[test]
    fn ipv6_clients_are_kept_by_their_64_network() {
        let a = ClientAddr::new(ip("2001:db8:1:2:aaaa::1"));
        let b = ClientAddr::new(ip("2001:db8:1:2:bbbb::9"));
        let c = ClientAddr::new(ip("2001:db8:1:3::1"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            ClientAddr::new(ip("::ffff:192.0.2.1")),
            ClientAddr::new(ip("192.0.2.1"))
        );
    }

    #[test]
    fn proxy_header_names() {
        assert_eq!(
            "X-Forwarded-For".parse::<ProxyHeader>(),
            Ok(ProxyHeader(XFF))
        );
        assert!("X Forwarded".parse::<ProxyHeader>().is_err());
        assert!("".parse::<ProxyHeader>().is_err());
    }
}
