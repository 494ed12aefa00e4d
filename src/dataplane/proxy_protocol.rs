//! The PROXY protocol header (HAProxy's spec, v1 text and v2 binary) that a
//! TCP node sends first on each backend connection, so the backend learns the
//! client's address.

use std::net::SocketAddr;

use crate::model::ProxyProtocol;

const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// The header for a connection from `client` to `local` (the node's listener).
pub fn header(kind: ProxyProtocol, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    match kind {
        ProxyProtocol::None => Vec::new(),
        ProxyProtocol::V1 => v1(client, local),
        ProxyProtocol::V2 => v2(client, local),
    }
}

fn v1(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    match (client, local) {
        (SocketAddr::V4(c), SocketAddr::V4(l)) => format!(
            "PROXY TCP4 {} {} {} {}\r\n",
            c.ip(),
            l.ip(),
            c.port(),
            l.port()
        )
        .into_bytes(),
        (SocketAddr::V6(c), SocketAddr::V6(l)) => format!(
            "PROXY TCP6 {} {} {} {}\r\n",
            c.ip(),
            l.ip(),
            c.port(),
            l.port()
        )
        .into_bytes(),
        // Mixed families cannot be described; the spec's answer is UNKNOWN.
        _ => b"PROXY UNKNOWN\r\n".to_vec(),
    }
}

fn v2(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    // Version 2, command PROXY.
    out.push(0x21);
    match (client, local) {
        (SocketAddr::V4(c), SocketAddr::V4(l)) => {
            out.push(0x11); // TCP over IPv4
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&c.ip().octets());
            out.extend_from_slice(&l.ip().octets());
            out.extend_from_slice(&c.port().to_be_bytes());
            out.extend_from_slice(&l.port().to_be_bytes());
        }
        (SocketAddr::V6(c), SocketAddr::V6(l)) => {
            out.push(0x21); // TCP over IPv6
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&c.ip().octets());
            out.extend_from_slice(&l.ip().octets());
            out.extend_from_slice(&c.port().to_be_bytes());
            out.extend_from_slice(&l.port().to_be_bytes());
        }
        _ => {
            out.push(0x00); // UNSPEC, no addresses
            out.extend_from_slice(&0u16.to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_text() {
        let h = header(
            ProxyProtocol::V1,
            "127.0.0.9:51000".parse().unwrap(),
            "127.1.0.2:7000".parse().unwrap(),
        );
        assert_eq!(h, b"PROXY TCP4 127.0.0.9 127.1.0.2 51000 7000\r\n");
        let h6 = header(
            ProxyProtocol::V1,
            "[::1]:5".parse().unwrap(),
            "[::2]:6".parse().unwrap(),
        );
        assert_eq!(h6, b"PROXY TCP6 ::1 ::2 5 6\r\n");
    }

    #[test]
    fn v2_binary() {
        let h = header(
            ProxyProtocol::V2,
            "127.0.0.9:51000".parse().unwrap(),
            "127.1.0.2:7000".parse().unwrap(),
        );
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0, 0, 9, 127, 1, 0, 2]);
        want.extend_from_slice(&51000u16.to_be_bytes());
        want.extend_from_slice(&7000u16.to_be_bytes());
        assert_eq!(h, want);
        assert!(header(
            ProxyProtocol::None,
            "1.1.1.1:1".parse().unwrap(),
            "2.2.2.2:2".parse().unwrap()
        )
        .is_empty());
    }
}
