//! Load balancers in front of a node: which peers are trusted proxies (addresses or CIDR networks), the client address they pass on (`X-Forwarded-For`, the PROXY protocol v1 and v2), and a warning, once per address, when a proxy is not trusted.
//!
//! Per-IP limits and logs need the real client's address. Behind a balancer
//! every connection comes from the balancer's own address, so unless it is
//! listed in `server.trusted_proxies` every client shares one per-IP budget.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Mutex;

use axum::http::HeaderMap;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// One entry of `server.trusted_proxies`: an address (`10.0.0.7`) or a
/// network in CIDR form (`10.0.0.0/16`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyNet(IpNet);

#[derive(Debug, thiserror::Error)]
#[error("`{text}` is neither an IP address nor a network in CIDR form (for example 10.0.0.0/16)")]
pub struct ProxyNetError {
    text: String,
    #[source]
    source: ipnet::AddrParseError,
}

impl FromStr for ProxyNet {
    type Err = ProxyNetError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(ProxyNet(IpNet::from(ip)));
        }
        text.parse::<IpNet>()
            // `10.0.0.7/16` means the network it lies in.
            .map(|net| ProxyNet(net.trunc()))
            .map_err(|source| ProxyNetError {
                text: text.to_owned(),
                source,
            })
    }
}

impl fmt::Display for ProxyNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len() == self.0.max_prefix_len() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl Serialize for ProxyNet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ProxyNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl ProxyNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
        self.0.contains(&ip.to_canonical())
    }
}

/// Whether `ip` is one of the trusted proxies.
pub fn is_trusted(trusted: &[ProxyNet], ip: IpAddr) -> bool {
    trusted.iter().any(|net| net.contains(ip))
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy,
/// the right-most `X-Forwarded-For` hop that is not itself trusted. A peer
/// that is not trusted but sends the header is reported once (see [`warn_once`]).
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[ProxyNet]) -> IpAddr {
    let mut ip = peer.ip().to_canonical();
    if !is_trusted(trusted, ip) {
        if headers.contains_key("x-forwarded-for") || headers.contains_key("forwarded") {
            warn_once(
                ip,
                "sends X-Forwarded-For or Forwarded but is not in server.trusted_proxies: \
                 its clients share this address's per-IP limit; list the load balancer's \
                 addresses or network there",
            );
        }
        return ip;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for hop in hops.into_iter().rev() {
        ip = hop;
        if !is_trusted(trusted, hop) {
            break;
        }
    }
    ip
}

/// Addresses already warned about; bounded so a scan of many addresses
/// cannot grow it (past the bound, nothing more is logged).
const MAX_WARNED: usize = 1024;
static WARNED: Mutex<Option<HashSet<(IpAddr, &'static str)>>> = Mutex::new(None);

/// Logs `why` for `ip` once per process lifetime.
pub fn warn_once(ip: IpAddr, why: &'static str) {
    let first = {
        let mut warned = WARNED.lock().expect("warned lock");
        let warned = warned.get_or_insert_with(HashSet::new);
        warned.len() < MAX_WARNED && warned.insert((ip, why))
    };
    if first {
        tracing::warn!(peer = %ip, "this peer {why}");
    }
}

/// Longest PROXY protocol v1 line, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
/// The PROXY protocol v2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Reads a PROXY protocol header (v1 or v2) from a trusted proxy's
/// connection, consuming exactly the header so the request behind it is
/// untouched. Returns the client's address, or `None` for a connection the
/// proxy makes on its own behalf (v2 `LOCAL`, v1 `UNKNOWN`: health checks).
/// The caller bounds the time (the header-read timeout).
pub async fn read_header(stream: &mut TcpStream) -> io::Result<Option<SocketAddr>> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let mut peeked = [0u8; V1_MAX];
    let n = peek_at_least(stream, &mut peeked, 12).await?;
    if peeked[..n.min(12)] == V2_SIGNATURE[..n.min(12)] {
        let mut fixed = [0u8; 16];
        stream.read_exact(&mut fixed).await?;
        let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
        let mut header = fixed.to_vec();
        header.resize(16 + len, 0);
        stream.read_exact(&mut header[16..]).await?;
        let parsed = ppp::v2::Header::try_from(&header[..])
            .map_err(|e| bad(format!("bad PROXY v2 header: {e}")))?;
        if parsed.command == ppp::v2::Command::Local {
            return Ok(None);
        }
        return Ok(match parsed.addresses {
            ppp::v2::Addresses::IPv4(a) => {
                Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
            }
            ppp::v2::Addresses::IPv6(a) => {
                Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
            }
            _ => None,
        });
    }
    if !peeked[..n].starts_with(b"PROXY ") {
        return Err(bad(
            "no PROXY protocol header from a trusted proxy (server.proxy_protocol is on)".into(),
        ));
    }
    // v1: a text line; peek until its CRLF is in, then take exactly the line.
    let mut n = n;
    let end = loop {
        if let Some(at) = peeked[..n].windows(2).position(|w| w == b"\r\n") {
            break at + 2;
        }
        if n == V1_MAX {
            return Err(bad("PROXY v1 line longer than 107 bytes".into()));
        }
        n = peek_at_least(stream, &mut peeked, n + 1).await?;
    };
    let mut line = vec![0u8; end];
    stream.read_exact(&mut line).await?;
    let text = std::str::from_utf8(&line).map_err(|_| bad("PROXY v1 line is not text".into()))?;
    let parsed =
        ppp::v1::Header::try_from(text).map_err(|e| bad(format!("bad PROXY v1 header: {e}")))?;
    Ok(match parsed.addresses {
        ppp::v1::Addresses::Tcp4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        ppp::v1::Addresses::Tcp6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        ppp::v1::Addresses::Unknown => None,
    })
}

/// Peeks until at least `want` bytes (or all `buf` holds) are in; returns how many.
async fn peek_at_least(stream: &TcpStream, buf: &mut [u8], want: usize) -> io::Result<usize> {
    let want = want.min(buf.len());
    loop {
        let n = stream.peek(buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if n >= want {
            return Ok(n);
        }
        // The peek returns at once while the bytes it has are unread: wait a little.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<ProxyNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn addresses_and_networks_parse() {
        let list = nets(&["10.0.0.0/16", "127.0.0.1/32", "192.168.1.7", "fd00::/8"]);
        assert!(is_trusted(&list, "10.0.200.3".parse().unwrap()));
        assert!(!is_trusted(&list, "10.1.0.1".parse().unwrap()));
        assert!(is_trusted(&list, "127.0.0.1".parse().unwrap()));
        assert!(!is_trusted(&list, "127.0.0.2".parse().unwrap()));
        assert!(is_trusted(&list, "192.168.1.7".parse().unwrap()));
        assert!(is_trusted(&list, "fd12::1".parse().unwrap()));
        assert!(
            is_trusted(&list, "::ffff:10.0.0.9".parse().unwrap()),
            "IPv4-mapped peers match IPv4 networks"
        );
        let err = "10.0.0.0/33".parse::<ProxyNet>().unwrap_err().to_string();
        assert!(err.contains("CIDR"), "{err}");
        assert!("nonsense".parse::<ProxyNet>().is_err());
        assert_eq!(list[0].to_string(), "10.0.0.0/16");
        assert_eq!(list[2].to_string(), "192.168.1.7");
        assert_eq!(
            "10.0.3.7/16".parse::<ProxyNet>().unwrap().to_string(),
            "10.0.0.0/16"
        );
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "9.9.9.9, 10.0.0.7".parse().unwrap());
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let peer = SocketAddr::new(proxy, 5000);
        assert_eq!(client_ip(peer, &h, &[]), proxy);
        assert_eq!(
            client_ip(peer, &h, &nets(&["127.0.0.1"])),
            "10.0.0.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer, &h, &nets(&["127.0.0.0/8", "10.0.0.0/24"])),
            "9.9.9.9".parse::<IpAddr>().unwrap()
        );
    }

    async fn header_through(bytes: &[u8]) -> (io::Result<Option<SocketAddr>>, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut sent = bytes.to_vec();
        sent.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let client = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut c = TcpStream::connect(addr).await.unwrap();
            // In two pieces, so the reader meets a partial header.
            let (a, b) = sent.split_at(sent.len() / 3);
            c.write_all(a).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            c.write_all(b).await.unwrap();
            c
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        let result = read_header(&mut stream).await;
        let _client = client.await.unwrap();
        let mut rest = vec![0u8; 18];
        if result.is_ok() {
            stream.read_exact(&mut rest).await.unwrap();
        }
        (result, rest)
    }

    #[tokio::test]
    async fn proxy_protocol_v1_and_v2_give_the_client_and_leave_the_request() {
        let (got, rest) = header_through(b"PROXY TCP4 203.0.113.9 10.0.0.1 51234 8080\r\n").await;
        assert_eq!(got.unwrap(), Some("203.0.113.9:51234".parse().unwrap()));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n\r\n");

        let v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "[2001:db8::5]:4000".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:8080".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let (got, rest) = header_through(&v2).await;
        assert_eq!(got.unwrap(), Some("[2001:db8::5]:4000".parse().unwrap()));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n\r\n");

        let local = ppp::v2::Builder::new(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::AddressFamily::Unspecified | ppp::v2::Protocol::Unspecified,
        )
        .build()
        .unwrap();
        let (got, _) = header_through(&local).await;
        assert_eq!(got.unwrap(), None, "LOCAL: the proxy's own connection");

        let (got, _) = header_through(b"").await;
        assert!(got.is_err(), "a trusted peer without a header is refused");
        let (got, _) = header_through(b"PROXY TCP4 nonsense\r\n").await;
        assert!(got.is_err());
    }
}
