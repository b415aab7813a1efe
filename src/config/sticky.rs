//! `[pools.NAME.sticky]`: the cookie that pins a client to a worker, and the key it is
//! signed with (`secret`, else `LB_STICKY_SECRET`, else a random key for this process).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use toml::Spanned;

use super::raw::{Dur, RawSticky};
use super::source::{Source, TOKEN_CHARS, is_token};
use super::{ConfigError, SameSite, SecretSource, StickyConfig, StickySecret};

/// The shortest key accepted, in bytes: 128 bits, the least that is beyond guessing when
/// random, and a floor that keeps out a word typed as a placeholder.
pub(super) const MIN_SECRET_BYTES: usize = 16;

/// The length of the random key drawn when none is configured: 256 bits, twice the floor.
const RANDOM_SECRET_BYTES: usize = 32;

const DEFAULT_COOKIE: &str = "lb_sticky";

const SECRET_HELP: &str = "set a long random value, e.g. from `openssl rand -hex 32`";

/// `LB_STICKY_SECRET`, checked whether or not a pool uses it now, so a reload that adds a
/// `[pools.NAME.sticky]` table does not fail on it later. `None` when unset or empty.
pub(super) fn env_secret(value: Option<String>) -> Result<Option<StickySecret>, ConfigError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if value.len() < MIN_SECRET_BYTES {
        return Err(ConfigError::StickySecretEnv { len: value.len() });
    }
    Ok(Some(StickySecret {
        bytes: Arc::from(value.into_bytes()),
        source: SecretSource::Environment,
    }))
}

/// The key used when neither the file nor the environment sets one: drawn the first time it
/// is needed, then the same for the life of the process, so a reload keeps the cookies
/// already handed out valid (and an unchanged pool's config compares equal across it).
fn random_secret() -> StickySecret {
    static KEY: OnceLock<Arc<[u8]>> = OnceLock::new();
    let bytes = KEY.get_or_init(|| {
        // ThreadRng is a CSPRNG seeded from the OS: fit for a MAC key.
        let key: [u8; RANDOM_SECRET_BYTES] = rand::random();
        Arc::from(key.as_slice())
    });
    StickySecret {
        bytes: Arc::clone(bytes),
        source: SecretSource::Random,
    }
}

impl Source<'_> {
    /// `[pools.NAME.sticky]`; `key` is `pools.NAME.sticky`, `env_secret` the checked
    /// `LB_STICKY_SECRET` ([`env_secret`]).
    pub fn sticky(
        &self,
        key: &str,
        raw: &RawSticky,
        env_secret: Option<&StickySecret>,
    ) -> Result<StickyConfig, ConfigError> {
        let cookie = match &raw.cookie {
            None => DEFAULT_COOKIE.to_string(),
            Some(c) if is_token(c.get_ref()) => c.get_ref().clone(),
            Some(c) => {
                return Err(self.invalid(
                    format!(
                        "`{key}.cookie` must be a cookie name, not {:?}",
                        c.get_ref()
                    ),
                    c.span(),
                    "not a cookie name",
                    Some(&format!("a cookie name is 1 or more {TOKEN_CHARS}")),
                ));
            }
        };
        let max_age = self.max_age(&format!("{key}.max_age"), &raw.max_age)?;
        let secure = raw.secure.unwrap_or(false);
        let same_site = match &raw.same_site {
            None => SameSite::Lax,
            Some(v) => self.same_site(&format!("{key}.same_site"), v, secure)?,
        };
        let secret = match (&raw.secret, env_secret) {
            (Some(s), _) => self.file_secret(&format!("{key}.secret"), s)?,
            (None, Some(env)) => env.clone(),
            (None, None) => random_secret(),
        };
        Ok(StickyConfig {
            cookie,
            max_age,
            secure,
            http_only: raw.http_only.unwrap_or(true),
            same_site: Some(same_site),
            secret,
        })
    }

    /// `max_age`: `None` (a session cookie) when absent, else a duration of at least a
    /// second, since `Max-Age` counts whole seconds and `Max-Age=0` deletes the cookie.
    fn max_age(&self, key: &str, raw: &Dur) -> Result<Option<Duration>, ConfigError> {
        let Some(value) = raw else { return Ok(None) };
        let age = self.duration(key, raw, Duration::ZERO, false)?;
        if age < Duration::from_secs(1) {
            return Err(self.invalid(
                format!("`{key}` must be at least 1s: a cookie's Max-Age counts whole seconds"),
                value.span(),
                "under a second",
                Some(
                    "leave max_age out for a session cookie, which lasts until the browser closes",
                ),
            ));
        }
        Ok(Some(age))
    }

    /// `same_site`: `Strict`, `Lax` or `None`, in any case. `None` needs `secure`: browsers
    /// drop a `SameSite=None` cookie that is not `Secure`, and stickiness would silently stop.
    fn same_site(
        &self,
        key: &str,
        value: &Spanned<String>,
        secure: bool,
    ) -> Result<SameSite, ConfigError> {
        let text = value.get_ref();
        let Some(same_site) = SameSite::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(text))
        else {
            return Err(self.invalid(
                format!("`{key}` must be \"Strict\", \"Lax\" or \"None\", not {text:?}"),
                value.span(),
                "unknown SameSite",
                Some("\"Lax\" (the default) sends the cookie on top-level navigation from other sites; \"Strict\" never from other sites; \"None\" always (with secure = true)"),
            ));
        };
        if same_site == SameSite::None && !secure {
            return Err(self.invalid(
                format!("`{key}` \"None\" needs `secure = true`"),
                value.span(),
                "without secure = true",
                Some(
                    "browsers reject a SameSite=None cookie that is not Secure; set secure = true \
                     (the cookie is then only sent over HTTPS), or use \"Lax\"",
                ),
            ));
        }
        Ok(same_site)
    }

    /// `secret`, written in the file.
    fn file_secret(&self, key: &str, value: &Spanned<String>) -> Result<StickySecret, ConfigError> {
        let len = value.get_ref().len();
        if len < MIN_SECRET_BYTES {
            return Err(self.invalid(
                format!("`{key}` is {len} bytes long; it must be at least {MIN_SECRET_BYTES}"),
                value.span(),
                "too short",
                Some(SECRET_HELP),
            ));
        }
        Ok(StickySecret {
            bytes: Arc::from(value.get_ref().as_bytes()),
            source: SecretSource::File,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{GOOD, help_of, line_of, parse};
    use super::super::{Config, Overrides};
    use super::*;

    /// GOOD with a `[pools.default.sticky]` table holding `lines` (line 18 onwards).
    fn sticky_with(lines: &str) -> String {
        format!("{GOOD}\n[pools.default.sticky]\n{lines}")
    }

    fn with_env_secret(text: &str, secret: &str) -> Result<Config, ConfigError> {
        let overrides = Overrides {
            sticky_secret: Some(secret.to_string()),
            ..Overrides::default()
        };
        Config::parse_with("config.toml", text, overrides)
    }

    const SIXTEEN: &str = "0123456789abcdef";

    #[test]
    fn off_without_a_table_and_defaults_with_one() {
        assert_eq!(parse(GOOD).unwrap().pool("default").sticky, None);
        let text = sticky_with("");
        let s = parse(&text).unwrap().pool("default").sticky.unwrap();
        assert_eq!(s.cookie, "lb_sticky");
        assert_eq!(s.max_age, None);
        assert!(!s.secure);
        assert!(s.http_only);
        assert_eq!(s.same_site, Some(SameSite::Lax));
        assert_eq!(s.secret.source, SecretSource::Random);
        assert_eq!(s.secret.bytes.len(), 32);
    }

    #[test]
    fn the_random_key_is_drawn_once_per_process() {
        // A reload reads the file again: it must get the same key, and an equal pool.
        let text = sticky_with("");
        let first = parse(&text).unwrap().pool("default");
        let again = parse(&text).unwrap().pool("default");
        assert_eq!(first, again);
        assert_ne!(*first.sticky.unwrap().secret.bytes, [0; 32]);
    }

    #[test]
    fn every_key() {
        let text = sticky_with(&format!(
            "cookie = \"SRV\"\nmax_age = \"1h\"\nsecure = true\nhttp_only = false\n\
             same_site = \"strict\"\nsecret = \"{SIXTEEN}\"\n"
        ));
        let s = parse(&text).unwrap().pool("default").sticky.unwrap();
        assert_eq!(s.cookie, "SRV");
        assert_eq!(s.max_age, Some(Duration::from_secs(3600)));
        assert!(s.secure);
        assert!(!s.http_only);
        assert_eq!(s.same_site, Some(SameSite::Strict));
        assert_eq!(s.secret.source, SecretSource::File);
        assert_eq!(&*s.secret.bytes, SIXTEEN.as_bytes());
        // Never printed, not even in the config's Debug output.
        assert!(!format!("{s:?}").contains(SIXTEEN), "{s:?}");
    }

    #[test]
    fn same_site_in_any_case_and_none_only_when_secure() {
        for (written, parsed) in [
            ("Lax", SameSite::Lax),
            ("LAX", SameSite::Lax),
            ("Strict", SameSite::Strict),
        ] {
            let text = sticky_with(&format!("same_site = \"{written}\"\n"));
            let s = parse(&text).unwrap().pool("default").sticky.unwrap();
            assert_eq!(s.same_site, Some(parsed));
        }
        let text = sticky_with("secure = true\nsame_site = \"none\"\n");
        let s = parse(&text).unwrap().pool("default").sticky.unwrap();
        assert_eq!(s.same_site, Some(SameSite::None));

        let text = sticky_with("same_site = \"None\"\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`pools.default.sticky.same_site` \"None\" needs `secure = true`"
        );
        assert_eq!(line_of(&text, &e), 18);
        assert!(
            help_of(&e).starts_with("browsers reject a SameSite=None cookie that is not Secure"),
            "{e:?}"
        );
        let text = sticky_with("secure = false\nsame_site = \"None\"\n");
        assert_eq!(line_of(&text, &parse(&text).unwrap_err()), 19);

        let text = sticky_with("same_site = \"Loose\"\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`pools.default.sticky.same_site` must be \"Strict\", \"Lax\" or \"None\", not \"Loose\""
        );
        assert_eq!(line_of(&text, &e), 18);
    }

    #[test]
    fn cookie_must_be_a_cookie_name() {
        for bad in ["", "lb sticky", "lb;sticky", "lb=1", "\\\"lb\\\"", "lb/1"] {
            let text = sticky_with(&format!("cookie = \"{bad}\"\n"));
            let e = parse(&text).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("`pools.default.sticky.cookie` must be a cookie name, not "),
                "{e}"
            );
            assert_eq!(line_of(&text, &e), 18);
            assert_eq!(
                help_of(&e),
                "a cookie name is 1 or more letters, digits and !#$%&'*+-.^_`|~"
            );
        }
    }

    #[test]
    fn max_age_is_a_duration_of_at_least_a_second() {
        let text = sticky_with("max_age = \"30m\"\n");
        let s = parse(&text).unwrap().pool("default").sticky.unwrap();
        assert_eq!(s.max_age, Some(Duration::from_secs(1800)));
        for bad in ["0s", "1 day", "3600"] {
            let text = sticky_with(&format!("max_age = \"{bad}\"\n"));
            let e = parse(&text).unwrap_err();
            assert!(
                e.to_string().starts_with(
                    "`pools.default.sticky.max_age` must be a non-zero duration such as"
                ),
                "{e}"
            );
            assert_eq!(line_of(&text, &e), 18);
        }
        let text = sticky_with("max_age = \"500ms\"\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`pools.default.sticky.max_age` must be at least 1s: a cookie's Max-Age counts \
             whole seconds"
        );
        assert_eq!(line_of(&text, &e), 18);
        assert!(help_of(&e).contains("session cookie"), "{e:?}");
    }

    #[test]
    fn a_secret_in_the_file_is_at_least_16_bytes() {
        let text = sticky_with("secret = \"short\"\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`pools.default.sticky.secret` is 5 bytes long; it must be at least 16"
        );
        assert_eq!(line_of(&text, &e), 18);
        assert_eq!(help_of(&e), SECRET_HELP);
    }

    #[test]
    fn the_file_secret_wins_over_the_environment_which_wins_over_random() {
        let from_env = "fedcba9876543210-env";
        let text = sticky_with("");
        let s = with_env_secret(&text, from_env)
            .unwrap()
            .pool("default")
            .sticky
            .unwrap();
        assert_eq!(s.secret.source, SecretSource::Environment);
        assert_eq!(&*s.secret.bytes, from_env.as_bytes());

        let text = sticky_with(&format!("secret = \"{SIXTEEN}\"\n"));
        let s = with_env_secret(&text, from_env)
            .unwrap()
            .pool("default")
            .sticky
            .unwrap();
        assert_eq!(s.secret.source, SecretSource::File);

        // Empty is unset, as for the other variables.
        let s = with_env_secret(&sticky_with(""), "")
            .unwrap()
            .pool("default")
            .sticky
            .unwrap();
        assert_eq!(s.secret.source, SecretSource::Random);
    }

    #[test]
    fn a_short_env_secret_is_refused_naming_the_variable() {
        // Even with no sticky pool: it would fail the reload that adds one.
        let e = with_env_secret(GOOD, "short").unwrap_err();
        assert!(
            matches!(e, ConfigError::StickySecretEnv { len: 5 }),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "LB_STICKY_SECRET is 5 bytes long; a sticky-cookie key must be at least 16"
        );
    }

    #[test]
    fn unknown_sticky_key_is_refused() {
        let text = sticky_with("cookie_name = \"SRV\"\n");
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains("unknown field `cookie_name`"), "{e}");
        assert_eq!(line_of(&text, &e), 18);
    }
}
