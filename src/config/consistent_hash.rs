//! A listener's `hash_key` and `hash_balance_factor`: what `algorithm = "consistent_hash"`
//! hashes, and how far one worker may be loaded above the pool's average before keys spill
//! over. Both are refused with any other algorithm, where they would silently do nothing.

use toml::Spanned;

use super::raw::RawListener;
use super::source::{Source, TOKEN_CHARS, is_token};
use super::{AlgorithmKind, ConfigError, HashKey, Protocol};

/// The forms of `hash_key`, as diagnostics list them.
const HASH_KEY_FORMS: &str =
    "\"client_ip\", \"header:NAME\", \"cookie:NAME\", \"path\" or \"query:NAME\"";

const HASH_KEY_HELP: &str = "\"client_ip\" (the default): the client's address; \"header:NAME\": \
                             a request header; \"cookie:NAME\": a cookie; \"path\": the path \
                             without the query; \"query:NAME\": a query parameter";

/// The smallest `hash_balance_factor` other than 0: below 100% of the average, every
/// worker would count as overloaded at once.
const MIN_BALANCE_FACTOR: i64 = 100;

/// The largest `hash_balance_factor`: a worker at 100 times the average is no bound at all.
const MAX_BALANCE_FACTOR: i64 = 10_000;

impl Source<'_> {
    /// A listener's `hash_key` and `hash_balance_factor`; `key` is `listeners[i]`.
    pub fn consistent_hash(
        &self,
        key: &str,
        raw: &RawListener,
        protocol: Protocol,
        algorithm: AlgorithmKind,
    ) -> Result<(HashKey, u32), ConfigError> {
        let hash_key = match &raw.hash_key {
            None => HashKey::ClientIp,
            Some(v) => self.hash_key(&format!("{key}.hash_key"), v, protocol)?,
        };
        let factor = match &raw.hash_balance_factor {
            None => 0,
            Some(v) => self.hash_balance_factor(&format!("{key}.hash_balance_factor"), v)?,
        };
        if algorithm != AlgorithmKind::ConsistentHash {
            // Even a value equal to the default is refused: writing it says the listener is
            // believed to hash, and it does not.
            let written = [
                ("hash_key", raw.hash_key.as_ref().map(|v| v.span())),
                (
                    "hash_balance_factor",
                    raw.hash_balance_factor.as_ref().map(|v| v.span()),
                ),
            ];
            if let Some((k, Some(span))) = written.into_iter().find(|(_, span)| span.is_some()) {
                return Err(self.invalid(
                    format!("`{key}.{k}` applies only with `algorithm = \"consistent_hash\"`"),
                    span,
                    "not a consistent_hash listener",
                    Some(&format!(
                        "this listener's algorithm is {}: set algorithm = \"consistent_hash\", \
                         or remove `{k}`",
                        algorithm.name()
                    )),
                ));
            }
        }
        Ok((hash_key, factor))
    }

    /// `hash_key`, one of the five forms; `key` is `listeners[i].hash_key`.
    fn hash_key(
        &self,
        key: &str,
        value: &Spanned<String>,
        protocol: Protocol,
    ) -> Result<HashKey, ConfigError> {
        let text = value.get_ref().as_str();
        let refuse = |message: String, label: &str, help: &str| {
            self.invalid(message, value.span(), label, Some(help))
        };
        let bad_name = |what: &str, name: &str, help: &str| {
            refuse(
                format!("`{key}` {text:?}: {name:?} is not a {what} name"),
                &format!("not a {what} name"),
                help,
            )
        };
        let token_help = |what: &str| format!("a {what} name is 1 or more {TOKEN_CHARS}");
        let parsed = match text.split_once(':') {
            None if text == "client_ip" => HashKey::ClientIp,
            None if text == "path" => HashKey::Path,
            // Field names are case-insensitive: kept lower-case, as they are compared.
            Some(("header", name)) if is_token(name) => HashKey::Header(name.to_ascii_lowercase()),
            Some(("header", name)) => return Err(bad_name("header", name, &token_help("header"))),
            Some(("cookie", name)) if is_token(name) => HashKey::Cookie(name.to_string()),
            Some(("cookie", name)) => return Err(bad_name("cookie", name, &token_help("cookie"))),
            Some(("query", name)) if is_query_name(name) => HashKey::Query(name.to_string()),
            Some(("query", name)) => {
                return Err(bad_name(
                    "query parameter",
                    name,
                    "a query parameter name is not empty and has no `&`, `=`, `#` or space; \
                     it is matched as sent, not decoded",
                ));
            }
            _ => {
                return Err(refuse(
                    format!("`{key}` must be {HASH_KEY_FORMS}, not {text:?}"),
                    "unknown hash key",
                    HASH_KEY_HELP,
                ));
            }
        };
        if protocol == Protocol::Tcp && parsed != HashKey::ClientIp {
            return Err(refuse(
                format!(
                    "`{key}` {text:?} on a tcp listener: TCP listeners can only hash the \
                     client's address"
                ),
                "on a tcp listener",
                "a TCP connection has no header, cookie, path or query to hash; leave hash_key \
                 out (or write \"client_ip\")",
            ));
        }
        Ok(parsed)
    }

    /// `hash_balance_factor`: 0 (off) or a percentage of the average load, 100 to 10000;
    /// `key` is `listeners[i].hash_balance_factor`.
    fn hash_balance_factor(&self, key: &str, value: &Spanned<i64>) -> Result<u32, ConfigError> {
        let n = *value.get_ref();
        if n != 0 && !(MIN_BALANCE_FACTOR..=MAX_BALANCE_FACTOR).contains(&n) {
            return Err(self.invalid(
                format!(
                    "`{key}` must be 0 (off) or {MIN_BALANCE_FACTOR} to {MAX_BALANCE_FACTOR}, \
                     not {n}"
                ),
                value.span(),
                "out of range",
                Some(
                    "the percentage of the pool's average load a worker may carry before its keys \
                     go to the next worker: 125 allows 25% above the average; 0 turns the bound off",
                ),
            ));
        }
        // In range, so it fits.
        Ok(n as u32)
    }
}

/// Whether `name` can be a query parameter's name as sent: not empty, and none of the bytes
/// that end a name (`=`), a parameter (`&`) or the query (`#`), nor a space, which a
/// request-target cannot hold.
fn is_query_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['&', '=', '#', ' '])
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{GOOD, first_listener_with, help_of, line_of, parse};
    use super::*;

    /// `GOOD` with its first listener on `consistent_hash` and `lines` added (line 10 on).
    fn hashing_with(lines: &str) -> String {
        first_listener_with(lines).replace("\"weighted\"", "\"consistent_hash\"")
    }

    #[test]
    fn consistent_hash_is_accepted_and_hashes_the_client_by_default() {
        let c = parse(&hashing_with("")).unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.algorithm, AlgorithmKind::ConsistentHash);
        assert_eq!(
            (&l.hash_key, l.hash_balance_factor),
            (&HashKey::ClientIp, 0)
        );
    }

    #[test]
    fn every_hash_key_form() {
        for (written, parsed) in [
            ("client_ip", HashKey::ClientIp),
            ("header:X-User-Id", HashKey::Header("x-user-id".into())),
            ("cookie:Session_ID", HashKey::Cookie("Session_ID".into())),
            ("path", HashKey::Path),
            ("query:user.id[]", HashKey::Query("user.id[]".into())),
        ] {
            let text = hashing_with(&format!("hash_key = \"{written}\""));
            assert_eq!(parse(&text).unwrap().listeners[0].hash_key, parsed);
        }
    }

    #[test]
    fn unknown_hash_key_lists_the_five_forms() {
        for bad in ["ip", "Path", "Header:x", "header", "body:x", ""] {
            let text = hashing_with(&format!("hash_key = \"{bad}\""));
            let e = parse(&text).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "`listeners[0].hash_key` must be \"client_ip\", \"header:NAME\", \
                     \"cookie:NAME\", \"path\" or \"query:NAME\", not {bad:?}"
                )
            );
            assert_eq!(line_of(&text, &e), 10);
            assert_eq!(help_of(&e), HASH_KEY_HELP);
        }
    }

    #[test]
    fn hash_key_names_are_checked() {
        for (bad, message, help) in [
            (
                "header:",
                "\"header:\": \"\" is not a header name",
                "a header name is 1 or more letters, digits and !#$%&'*+-.^_`|~",
            ),
            (
                "header:X User",
                "\"header:X User\": \"X User\" is not a header name",
                "a header name is 1 or more letters, digits and !#$%&'*+-.^_`|~",
            ),
            (
                "cookie:a=b",
                "\"cookie:a=b\": \"a=b\" is not a cookie name",
                "a cookie name is 1 or more letters, digits and !#$%&'*+-.^_`|~",
            ),
            (
                "cookie:(sid)",
                "\"cookie:(sid)\": \"(sid)\" is not a cookie name",
                "a cookie name is 1 or more letters, digits and !#$%&'*+-.^_`|~",
            ),
            (
                "query:",
                "\"query:\": \"\" is not a query parameter name",
                "a query parameter name is not empty and has no `&`, `=`, `#` or space; it is \
                 matched as sent, not decoded",
            ),
            (
                "query:a&b",
                "\"query:a&b\": \"a&b\" is not a query parameter name",
                "a query parameter name is not empty and has no `&`, `=`, `#` or space; it is \
                 matched as sent, not decoded",
            ),
        ] {
            let text = hashing_with(&format!("hash_key = \"{bad}\""));
            let e = parse(&text).unwrap_err();
            assert_eq!(e.to_string(), format!("`listeners[0].hash_key` {message}"));
            assert_eq!(line_of(&text, &e), 10);
            assert_eq!(help_of(&e), help);
        }
        for bad in ["query:a=b", "query:a#b", "query:a b"] {
            let text = hashing_with(&format!("hash_key = \"{bad}\""));
            assert!(parse(&text).is_err(), "{bad}");
        }
    }

    #[test]
    fn tcp_listeners_hash_only_the_client_address() {
        let tcp = |lines: &str| hashing_with(lines).replace("\"http\"", "\"tcp\"");
        let text = tcp("hash_key = \"client_ip\"");
        assert_eq!(
            parse(&text).unwrap().listeners[0].hash_key,
            HashKey::ClientIp
        );
        for bad in ["header:x-user", "cookie:sid", "path", "query:id"] {
            let text = tcp(&format!("hash_key = \"{bad}\""));
            let e = parse(&text).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "`listeners[0].hash_key` {bad:?} on a tcp listener: TCP listeners can only \
                     hash the client's address"
                )
            );
            assert_eq!(line_of(&text, &e), 10);
            assert!(help_of(&e).contains("leave hash_key out"), "{e:?}");
        }
    }

    #[test]
    fn hash_keys_are_refused_without_consistent_hash() {
        // Even the default value: the listener does not hash at all.
        let text = first_listener_with("hash_key = \"client_ip\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`listeners[0].hash_key` applies only with `algorithm = \"consistent_hash\"`"
        );
        assert_eq!(line_of(&text, &e), 10);
        assert_eq!(
            help_of(&e),
            "this listener's algorithm is weighted: set algorithm = \"consistent_hash\", or \
             remove `hash_key`"
        );

        let text = first_listener_with("hash_balance_factor = 150");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`listeners[0].hash_balance_factor` applies only with `algorithm = \"consistent_hash\"`"
        );
        assert_eq!(line_of(&text, &e), 10);

        // Listener 1 writes no algorithm: weighted, refused the same way.
        let text = GOOD.replace(
            "bind = \"127.0.0.1:8081\"",
            "bind = \"127.0.0.1:8081\"\nhash_balance_factor = 0",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`listeners[1].hash_balance_factor` applies only with `algorithm = \"consistent_hash\"`"
        );
        assert_eq!(line_of(&text, &e), 13);
    }

    #[test]
    fn hash_balance_factor_is_off_or_at_least_the_average() {
        for ok in [0, 100, 125, 10_000] {
            let text = hashing_with(&format!("hash_balance_factor = {ok}"));
            assert_eq!(parse(&text).unwrap().listeners[0].hash_balance_factor, ok);
        }
        for bad in [-1, 1, 99, 10_001, i64::from(u32::MAX) + 1] {
            let text = hashing_with(&format!("hash_balance_factor = {bad}"));
            let e = parse(&text).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "`listeners[0].hash_balance_factor` must be 0 (off) or 100 to 10000, not {bad}"
                )
            );
            assert_eq!(line_of(&text, &e), 10);
            assert!(help_of(&e).contains("125 allows 25%"), "{e:?}");
        }
        // Not an integer: serde's diagnostic, at the value.
        let text = hashing_with("hash_balance_factor = \"150\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(line_of(&text, &e), 10);
    }
}
