//! The file being validated, and the checks of single values that every section shares
//! (durations, percentages, addresses): each refusal becomes a diagnostic pointing at the
//! value's span in the text.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use miette::NamedSource;
use toml::Spanned;

use super::ConfigError;
use super::duration::parse_duration;
use super::raw::Dur;

/// The file being validated, for building diagnostics.
pub(super) struct Source<'a> {
    /// Shown in diagnostics as `name:line:column`.
    pub name: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    pub fn named(&self) -> NamedSource<String> {
        NamedSource::new(self.name, self.text.to_string())
    }

    pub fn invalid(
        &self,
        message: String,
        span: Range<usize>,
        label: &str,
        help: Option<&str>,
    ) -> ConfigError {
        ConfigError::Invalid {
            message,
            src: self.named(),
            span: span.into(),
            label: label.to_string(),
            help: help.map(str::to_string),
        }
    }

    /// A duration key: `default` when absent; zero refused unless `zero_ok`.
    pub fn duration(
        &self,
        key: &str,
        value: &Dur,
        default: Duration,
        zero_ok: bool,
    ) -> Result<Duration, ConfigError> {
        let Some(v) = value else {
            return Ok(default);
        };
        parse_duration(v.get_ref())
            .filter(|d| zero_ok || !d.is_zero())
            .ok_or_else(|| {
                self.invalid(
                    format!(
                        "`{key}` must be a{} duration such as \"500ms\", \"5s\", \"1m\" or \"1h\", not {:?}",
                        if zero_ok { "" } else { " non-zero" },
                        v.get_ref()
                    ),
                    v.span(),
                    "not a duration",
                    None,
                )
            })
    }

    pub fn percent(
        &self,
        key: &str,
        value: &Option<Spanned<u32>>,
        default: u32,
    ) -> Result<u32, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) if *v.get_ref() <= 100 => Ok(*v.get_ref()),
            Some(v) => Err(self.invalid(
                format!("`{key}` is a percentage: 0 to 100"),
                v.span(),
                "out of range",
                None,
            )),
        }
    }

    pub fn bind(&self, key: &str, value: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
        value.get_ref().parse().map_err(|_| {
            self.invalid(
                format!(
                    "`{key}` must be an IP address and port, not {:?}",
                    value.get_ref()
                ),
                value.span(),
                "not an address",
                Some("e.g. \"127.0.0.1:8080\", \"0.0.0.0:80\" or \"[::1]:8080\""),
            )
        })
    }
}

/// What a token may hold, for diagnostics: see [`is_token`].
pub(super) const TOKEN_CHARS: &str = "letters, digits and !#$%&'*+-.^_`|~";

/// Whether `name` is a token (RFC 9110 §5.6.2), which a header field's name must be. A
/// cookie's name is one too (RFC 6265 §4.1.1): its "visible ASCII but the separators
/// `()<>@,;:\"/[]?={}` and space" is the same set of characters.
pub(super) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `candidates` sorted closest to `word` first (by edit distance, ties kept in their order),
/// and whether the closest is near enough to be a likely typo of it.
pub(super) fn by_closeness<'c>(word: &str, candidates: &[&'c str]) -> (Vec<&'c str>, bool) {
    let mut ranked: Vec<(usize, &str)> = candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .collect();
    ranked.sort_by_key(|(d, _)| *d);
    // A third of the word, at least two edits: catches a swapped or doubled letter without
    // offering `api` for `web`.
    let near = ranked
        .first()
        .is_some_and(|(d, _)| *d <= (word.chars().count() / 3).max(2));
    (ranked.into_iter().map(|(_, c)| c).collect(), near)
}

/// Levenshtein distance, in characters. Config names are short and few, so the plain
/// quadratic algorithm is enough (and smaller than a dependency).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    // `row[j]`: the distance between the prefix of `a` read so far and `b[..j]`.
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("default", "default"), 0);
        assert_eq!(edit_distance("defualt", "default"), 2);
        assert_eq!(edit_distance("", "api"), 3);
        assert_eq!(edit_distance("api", "apis"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn tokens() {
        for yes in ["lb_sticky", "X-User-Id", "a", "!#$%&'*+-.^_`|~09AZaz"] {
            assert!(is_token(yes), "{yes:?}");
        }
        for no in [
            "", "a b", "a;b", "a=b", "\"a\"", "a:b", "a/b", "a\tb", "é", "a,b", "(a)", "{a}",
        ] {
            assert!(!is_token(no), "{no:?}");
        }
    }

    #[test]
    fn closest_first_and_only_near_ones_suggested() {
        assert_eq!(
            by_closeness("defualt", &["api", "default"]),
            (vec!["default", "api"], true)
        );
        assert_eq!(by_closeness("web", &["api"]), (vec!["api"], false));
        assert_eq!(by_closeness("x", &[]), (vec![], false));
    }
}
