//! A listener's routing keys: its `name`, which the `routes` table's `listener` column
//! matches, and `sni_routing`, which routes TCP connections by the server name of their TLS
//! ClientHello.

use std::collections::HashMap;

use toml::Spanned;

use super::raw::RawListener;
use super::source::Source;
use super::{ConfigError, ListenerConfig, Protocol};

/// The longest listener name: the same bound as pool names.
const MAX_NAME_LEN: usize = 200;

const NAME_HELP: &str =
    "it is what the `listener` column of `routes` names, e.g. name = \"public\"";

impl Source<'_> {
    /// A listener's `name`; `key` is `listeners[i].name`. Kept to a plain set of characters
    /// so it can be written in SQL and shown in logs without quoting.
    pub fn listener_name(
        &self,
        key: &str,
        raw: &Option<Spanned<String>>,
    ) -> Result<Option<String>, ConfigError> {
        let Some(name) = raw else { return Ok(None) };
        let text = name.get_ref();
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if text.is_empty() || text.len() > MAX_NAME_LEN || !text.chars().all(plain) {
            return Err(self.invalid(
                format!(
                    "`{key}` must be 1 to {MAX_NAME_LEN} letters, digits, `.`, `_` or `-`, \
                     not {text:?}"
                ),
                name.span(),
                "bad listener name",
                Some(NAME_HELP),
            ));
        }
        Ok(Some(text.clone()))
    }

    /// No two listeners share a name: a route naming it would otherwise apply to both,
    /// which is never what a route for "the public listener" means.
    pub fn distinct_names(
        &self,
        raw: &[RawListener],
        listeners: &[ListenerConfig],
    ) -> Result<(), ConfigError> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, (r, l)) in raw.iter().zip(listeners).enumerate() {
            let (Some(spanned), Some(name)) = (&r.name, &l.name) else {
                continue;
            };
            if let Some(first) = seen.insert(name, i) {
                return Err(self.invalid(
                    format!("`listeners[{i}].name` {name:?} is already the name of listeners[{first}]"),
                    spanned.span(),
                    "second listener with this name",
                    Some("each listener's name must be unique: a route names the one listener it applies to"),
                ));
            }
        }
        Ok(())
    }

    /// A listener's `sni_routing`; `key` is `listeners[i]`. `false` is accepted anywhere
    /// (it is the default and claims nothing); `true` only on a TCP listener that does not
    /// terminate TLS itself.
    pub fn sni_routing(
        &self,
        key: &str,
        raw: &RawListener,
        protocol: Protocol,
    ) -> Result<bool, ConfigError> {
        let Some(value) = &raw.sni_routing else {
            return Ok(false);
        };
        if !*value.get_ref() {
            return Ok(false);
        }
        if protocol == Protocol::Http {
            return Err(self.invalid(
                format!("`{key}.sni_routing` applies to tcp listeners only"),
                value.span(),
                "on an http listener",
                Some(
                    "an http listener already routes each request by its Host header through \
                     the routes table; sni_routing is for tcp listeners that pass TLS through",
                ),
            ));
        }
        if raw.tls.is_some() {
            return Err(self.invalid(
                format!(
                    "`{key}.sni_routing` cannot go with `[{key}.tls]`: a listener that \
                     terminates TLS cannot pass it through"
                ),
                value.span(),
                "with [listeners.tls]",
                Some(
                    "sni_routing reads the server name from the ClientHello and passes the \
                     encrypted stream to the worker unread; to terminate TLS here instead, \
                     remove sni_routing",
                ),
            ));
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{GOOD, first_listener_with, help_of, line_of, parse};

    #[test]
    fn names_are_optional_and_kept_as_written() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.listeners[0].name, None);
        let text = first_listener_with("name = \"Public-1.edge_a\"");
        let c = parse(&text).unwrap();
        assert_eq!(c.listeners[0].name.as_deref(), Some("Public-1.edge_a"));
        let longest = "n".repeat(200);
        let text = first_listener_with(&format!("name = \"{longest}\""));
        assert_eq!(parse(&text).unwrap().listeners[0].name, Some(longest));
    }

    #[test]
    fn bad_names_are_refused() {
        let too_long = "n".repeat(201);
        for bad in ["", "pub lic", "public/1", "público", too_long.as_str()] {
            let text = first_listener_with(&format!("name = \"{bad}\""));
            let e = parse(&text).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "`listeners[0].name` must be 1 to 200 letters, digits, `.`, `_` or `-`, \
                     not {bad:?}"
                )
            );
            assert_eq!(line_of(&text, &e), 10);
            assert_eq!(
                help_of(&e),
                "it is what the `listener` column of `routes` names, e.g. name = \"public\""
            );
        }
    }

    #[test]
    fn a_name_is_unique_among_listeners() {
        let text = first_listener_with("name = \"public\"").replace(
            "bind = \"127.0.0.1:8081\"",
            "bind = \"127.0.0.1:8081\"\nname = \"public\"",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`listeners[1].name` \"public\" is already the name of listeners[0]"
        );
        assert_eq!(line_of(&text, &e), 14, "the second one");
        assert_eq!(
            help_of(&e),
            "each listener's name must be unique: a route names the one listener it applies to"
        );
    }

    #[test]
    fn sni_routing_on_tcp_listeners() {
        assert!(!parse(GOOD).unwrap().listeners[0].sni_routing);
        let tcp = GOOD.replace("protocol = \"http\"", "protocol = \"tcp\"");
        let text = tcp.replace(
            "algorithm = \"weighted\"",
            "algorithm = \"weighted\"\nsni_routing = true",
        );
        assert!(parse(&text).unwrap().listeners[0].sni_routing);
        // `false` claims nothing, so it is accepted on an http listener too.
        let text = first_listener_with("sni_routing = false");
        assert!(!parse(&text).unwrap().listeners[0].sni_routing);
    }

    #[test]
    fn sni_routing_is_refused_on_http_listeners() {
        let text = first_listener_with("sni_routing = true");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`listeners[0].sni_routing` applies to tcp listeners only"
        );
        assert_eq!(line_of(&text, &e), 10);
        assert!(help_of(&e).contains("Host header"), "{e:?}");
    }

    #[test]
    fn sni_routing_is_refused_on_a_listener_that_terminates_tls() {
        // Refused before the certificates are read: fixing them would not help.
        let text = first_listener_with(
            "sni_routing = true\n[listeners.tls]\ncertificates = [{ cert = \"c.pem\", key = \"k.pem\" }]",
        )
        .replace("protocol = \"http\"", "protocol = \"tcp\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`listeners[0].sni_routing` cannot go with `[listeners[0].tls]`: a listener that \
             terminates TLS cannot pass it through"
        );
        assert_eq!(line_of(&text, &e), 10);
        assert!(help_of(&e).contains("remove sni_routing"), "{e:?}");
    }
}
