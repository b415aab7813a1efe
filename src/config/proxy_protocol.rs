//! The PROXY protocol keys: a listener's `accept_proxy` and `trusted_proxies` (which peers
//! may tell the proxy who the client is), and a pool's `send_proxy` (what the proxy tells
//! its workers). Checked here so that a listener trusting nobody, or a mistyped block, is
//! refused before anything starts rather than closing every connection later.

use std::net::IpAddr;

use ipnet::IpNet;
use toml::Spanned;

use super::ConfigError;
use super::raw::RawListener;
use super::source::Source;

const TRUSTED_EXAMPLE: &str = "e.g. trusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1/32\"]: the \
                               load balancers in front of this one";

/// The peers whose PROXY headers are believed (a listener's `trusted_proxies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(blocks: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies(blocks)
    }

    /// Whether `ip` is in one of the blocks. An IPv4 client of a socket bound to `[::]`
    /// shows as `::ffff:a.b.c.d`: it is matched as the IPv4 address it is, so
    /// "10.0.0.0/8" means the same on either kind of socket.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|block| block.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A pool's `send_proxy`: the PROXY header written first on each new worker connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SendProxy {
    /// `"off"` (the default): the worker sees the proxy's address as its peer.
    #[default]
    Off,
    /// `"v1"`: the text header (`PROXY TCP4 …\r\n`).
    V1,
    /// `"v2"`: the binary header.
    V2,
}

impl SendProxy {
    pub const ALL: [SendProxy; 3] = [SendProxy::Off, SendProxy::V1, SendProxy::V2];

    /// The value written in `config.toml`.
    pub fn name(self) -> &'static str {
        match self {
            SendProxy::Off => "off",
            SendProxy::V1 => "v1",
            SendProxy::V2 => "v2",
        }
    }

    pub fn from_name(name: &str) -> Option<SendProxy> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl Source<'_> {
    /// A listener's `accept_proxy` and `trusted_proxies`; `key` is `listeners[i]`. Returns
    /// whether headers are accepted and from whom. A list without `accept_proxy = true` is
    /// kept but unused, so PROXY headers can be turned off with one line.
    pub fn accept_proxy(
        &self,
        key: &str,
        raw: &RawListener,
    ) -> Result<(bool, TrustedProxies), ConfigError> {
        let trusted = match &raw.trusted_proxies {
            None => TrustedProxies::default(),
            Some(list) => {
                let blocks = list
                    .get_ref()
                    .iter()
                    .enumerate()
                    .map(|(i, b)| self.block(&format!("{key}.trusted_proxies[{i}]"), b))
                    .collect::<Result<Vec<_>, _>>()?;
                TrustedProxies::new(blocks)
            }
        };
        // The contract shows `accept_proxy` in `[listeners.tls]` too: one setting, written
        // in either place (the header comes before the handshake either way).
        let in_tls = raw.tls.as_ref().and_then(|t| t.accept_proxy.as_ref());
        if let (Some(a), Some(t)) = (&raw.accept_proxy, in_tls)
            && a.get_ref() != t.get_ref()
        {
            return Err(self.invalid(
                format!("`{key}.tls.accept_proxy` contradicts `{key}.accept_proxy`"),
                t.span(),
                "contradicts the listener's",
                Some("they are one setting (the PROXY header comes before the TLS handshake): write it once"),
            ));
        }
        let written = raw.accept_proxy.as_ref().or(in_tls);
        let accept = written.is_some_and(|a| *a.get_ref());
        if let (true, Some(a)) = (accept && trusted.is_empty(), written) {
            // Trusting nobody would close every connection: surely not what was meant.
            let (span, label) = match &raw.trusted_proxies {
                Some(list) => (list.span(), "empty"),
                None => (a.span(), "no trusted_proxies for it"),
            };
            return Err(self.invalid(
                format!("`{key}.accept_proxy` needs `{key}.trusted_proxies`: the addresses allowed to send PROXY headers"),
                span,
                label,
                Some(TRUSTED_EXAMPLE),
            ));
        }
        Ok((accept, trusted))
    }

    /// One `trusted_proxies` entry: a CIDR block, or a bare address for that address alone.
    /// A block with host bits set ("10.0.0.1/8") is refused: it reads like one host but
    /// would trust sixteen million.
    fn block(&self, key: &str, raw: &Spanned<String>) -> Result<IpNet, ConfigError> {
        let text = raw.get_ref().trim();
        let block = match text.parse::<IpNet>() {
            Ok(b) => b,
            Err(_) => match text.parse::<IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => {
                    return Err(self.invalid(
                        format!(
                            "`{key}` is not an address or CIDR block: {:?}",
                            raw.get_ref()
                        ),
                        raw.span(),
                        "not a CIDR block",
                        Some(
                            "write an address and its prefix length, e.g. \"10.0.0.0/8\" or \
                             \"2001:db8::/32\"; a bare address means that address alone",
                        ),
                    ));
                }
            },
        };
        if block.trunc() != block {
            return Err(self.invalid(
                format!("`{key}` {:?} has host bits set", raw.get_ref()),
                raw.span(),
                "host bits set",
                Some(&format!(
                    "write {:?} for the whole block, or {:?} for that address alone",
                    block.trunc().to_string(),
                    IpNet::from(block.addr()).to_string()
                )),
            ));
        }
        Ok(block)
    }

    /// A pool's `send_proxy`; `key` is `pools.NAME.send_proxy`.
    pub fn send_proxy(
        &self,
        key: &str,
        raw: &Option<Spanned<String>>,
    ) -> Result<SendProxy, ConfigError> {
        let Some(value) = raw else {
            return Ok(SendProxy::Off);
        };
        SendProxy::from_name(value.get_ref()).ok_or_else(|| {
            let names: Vec<String> = SendProxy::ALL.map(|s| format!("{:?}", s.name())).into();
            self.invalid(
                format!(
                    "`{key}` must be {} or {}, not {:?}",
                    names[..2].join(", "),
                    names[2],
                    value.get_ref()
                ),
                value.span(),
                "unknown PROXY protocol version",
                Some(
                    "\"v1\" sends the text header, \"v2\" the binary one; only turn it on for \
                     workers that expect it (they would read it as the start of the request)",
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{GOOD, first_listener_with, help_of, line_of, parse};
    use super::*;

    #[test]
    fn off_by_default() {
        let c = parse(GOOD).unwrap();
        assert!(!c.listeners[0].accept_proxy);
        assert!(c.listeners[0].trusted_proxies.is_empty());
        assert_eq!(c.pool("default").send_proxy, SendProxy::Off);
    }

    #[test]
    fn trusted_blocks_and_addresses() {
        let text = first_listener_with(
            "accept_proxy = true\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\", \"2001:db8::/32\"]",
        );
        let c = parse(&text).unwrap();
        let l = &c.listeners[0];
        assert!(l.accept_proxy);
        let t = &l.trusted_proxies;
        for yes in ["10.1.2.3", "127.0.0.1", "::ffff:10.9.9.9", "2001:db8::1"] {
            assert!(t.contains(yes.parse().unwrap()), "{yes}");
        }
        for no in ["11.0.0.1", "127.0.0.2", "2001:db9::1", "::1"] {
            assert!(!t.contains(no.parse().unwrap()), "{no}");
        }
    }

    #[test]
    fn accept_proxy_needs_trusted_proxies() {
        let text = first_listener_with("accept_proxy = true");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`listeners[0].accept_proxy` needs `listeners[0].trusted_proxies`: the addresses \
             allowed to send PROXY headers"
        );
        assert_eq!(line_of(&text, &e), 10);
        assert_eq!(help_of(&e), TRUSTED_EXAMPLE);

        let text = first_listener_with("accept_proxy = true\ntrusted_proxies = []");
        let e = parse(&text).unwrap_err();
        assert_eq!(line_of(&text, &e), 11);

        // Written in the tls table (as the contract's example does), it is the same setting.
        let certs = "[listeners.tls]\ncertificates = []";
        let text = first_listener_with(&format!("{certs}\naccept_proxy = true"));
        let e = parse(&text).unwrap_err();
        assert!(
            e.to_string()
                .contains("needs `listeners[0].trusted_proxies`"),
            "{e}"
        );
        let text = first_listener_with(&format!(
            "accept_proxy = false\n{certs}\naccept_proxy = true"
        ));
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains("contradicts"), "{e}");

        // Off, the list may stay.
        let text = first_listener_with("accept_proxy = false\ntrusted_proxies = [\"10.0.0.0/8\"]");
        assert!(!parse(&text).unwrap().listeners[0].accept_proxy);
    }

    #[test]
    fn bad_blocks_are_refused_at_the_entry() {
        let text = first_listener_with(
            "accept_proxy = true\ntrusted_proxies = [\"10.0.0.0/8\",\n  \"10.0.0.0/33\"]",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`listeners[0].trusted_proxies[1]` is not an address or CIDR block: \"10.0.0.0/33\""
        );
        assert_eq!(line_of(&text, &e), 12);

        let text = first_listener_with("accept_proxy = true\ntrusted_proxies = [\"localhost\"]");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`listeners[0].trusted_proxies[0]` is not an address or CIDR block: \"localhost\""
        );

        let text = first_listener_with("accept_proxy = true\ntrusted_proxies = [\"10.0.0.1/8\"]");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`listeners[0].trusted_proxies[0]` \"10.0.0.1/8\" has host bits set"
        );
        assert_eq!(
            help_of(&e),
            "write \"10.0.0.0/8\" for the whole block, or \"10.0.0.1/32\" for that address alone"
        );
    }

    #[test]
    fn send_proxy_values() {
        let with = |v: &str| format!("{GOOD}\n[pools.default]\nsend_proxy = \"{v}\"\n");
        assert_eq!(
            parse(&with("v1")).unwrap().pool("default").send_proxy,
            SendProxy::V1
        );
        assert_eq!(
            parse(&with("v2")).unwrap().pool("default").send_proxy,
            SendProxy::V2
        );
        assert_eq!(
            parse(&with("off")).unwrap().pool("default").send_proxy,
            SendProxy::Off
        );
        let text = with("v3");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`pools.default.send_proxy` must be \"off\", \"v1\" or \"v2\", not \"v3\""
        );
        assert_eq!(line_of(&text, &e), text.lines().count());
    }

    #[test]
    fn send_proxy_names_round_trip() {
        for s in SendProxy::ALL {
            assert_eq!(SendProxy::from_name(s.name()), Some(s));
        }
    }
}
