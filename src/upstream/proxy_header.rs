//! Writing the PROXY protocol header a pool's `send_proxy` asks for, first on each new
//! connection to a worker, so the worker learns the client's address (the header format is
//! `ppp`'s).
//!
//! The destination it carries is the worker's own address (the connection's peer): the
//! proxy's listening address is not known where connections are made, and a worker behind
//! one proxy rarely needs it; what it needs is the source.

use std::net::{SocketAddr, SocketAddrV6};

use ppp::{v1, v2};

use crate::config::SendProxy;

/// The header for a connection carrying `client`'s traffic to `destination`, or `None`
/// when `send_proxy` is off.
pub fn header(send: SendProxy, client: SocketAddr, destination: SocketAddr) -> Option<Vec<u8>> {
    // Both addresses must be of one family in either version: an IPv4 client of an IPv6
    // worker (or the reverse) is written as IPv6, the IPv4 one mapped (`::ffff:a.b.c.d`),
    // which receivers read as the IPv4 address it is.
    let (client, destination) = match (client, destination) {
        (SocketAddr::V4(_), SocketAddr::V6(_)) => (v6(client), destination),
        (SocketAddr::V6(_), SocketAddr::V4(_)) => (client, v6(destination)),
        _ => (client, destination),
    };
    match send {
        SendProxy::Off => None,
        SendProxy::V1 => Some(
            v1::Addresses::from((client, destination))
                .to_string()
                .into_bytes(),
        ),
        SendProxy::V2 => {
            let addresses = v2::Addresses::from((client, destination));
            let builder = v2::Builder::with_addresses(
                v2::Version::Two | v2::Command::Proxy,
                v2::Protocol::Stream,
                addresses,
            );
            // Cannot fail: it writes 36 bytes at most into a Vec.
            builder.build().ok()
        }
    }
}

/// The header of a connection that carries no client's traffic (a health check), or
/// `None` when `send_proxy` is off: v2 `LOCAL`, v1 `UNKNOWN`, which tell the worker to use
/// the connection's own addresses. A worker that requires headers refuses a connection
/// without one, so its checks must send one too (HAProxy's `check-send-proxy`).
pub fn local_header(send: SendProxy) -> Option<Vec<u8>> {
    match send {
        SendProxy::Off => None,
        SendProxy::V1 => Some(v1::Addresses::Unknown.to_string().into_bytes()),
        SendProxy::V2 => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .ok(),
    }
}

fn v6(address: SocketAddr) -> SocketAddr {
    match address {
        SocketAddr::V4(a) => {
            SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
        }
        v6 => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn off_sends_nothing() {
        assert_eq!(
            header(SendProxy::Off, addr("192.0.2.7:5555"), addr("10.0.0.1:80")),
            None
        );
    }

    #[test]
    fn v1_text() {
        let h = header(SendProxy::V1, addr("192.0.2.7:5555"), addr("10.0.0.1:80")).unwrap();
        assert_eq!(h, b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 80\r\n");
        let h = header(
            SendProxy::V1,
            addr("192.0.2.7:5555"),
            addr("[2001:db8::1]:80"),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(h).unwrap(),
            "PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 5555 80\r\n"
        );
    }

    #[test]
    fn local_headers() {
        assert_eq!(local_header(SendProxy::Off), None);
        assert_eq!(local_header(SendProxy::V1).unwrap(), b"PROXY UNKNOWN\r\n");
        let h = local_header(SendProxy::V2).unwrap();
        let parsed = v2::Header::try_from(h.as_slice()).unwrap();
        assert_eq!(parsed.command, v2::Command::Local);
        assert_eq!(parsed.addresses, v2::Addresses::Unspecified);
    }

    #[test]
    fn v2_binary_round_trips() {
        let h = header(
            SendProxy::V2,
            addr("[2001:db8::7]:5555"),
            addr("10.0.0.1:80"),
        )
        .unwrap();
        let parsed = v2::Header::try_from(h.as_slice()).unwrap();
        assert_eq!(parsed.command, v2::Command::Proxy);
        let v2::Addresses::IPv6(a) = parsed.addresses else {
            panic!("{:?}", parsed.addresses)
        };
        assert_eq!(
            a.source_address,
            "2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap()
        );
        assert_eq!(a.source_port, 5555);
        assert_eq!(
            a.destination_address,
            "::ffff:10.0.0.1".parse::<std::net::Ipv6Addr>().unwrap()
        );
    }
}
