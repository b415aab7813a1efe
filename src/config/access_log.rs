//! A listener's `access_log` and `access_log_format` keys: where its access-log lines go and
//! how they are written. Checked here, with the listener, so a log that cannot be written is
//! refused before anything starts (and a reload with such a log changes nothing).

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::source::Source;
use super::{AccessLogFormat, AccessLogTarget, ConfigError, Protocol};

const TARGET_HELP: &str = "access_log is \"off\" (the default), \"stdout\", or the path of a file \
                           (created if missing, appended to)";

impl Source<'_> {
    /// `access_log`: `"off"`, `"stdout"` or a file path. The file itself is created when the
    /// listener starts, but its directory must already exist: a typo in it would otherwise
    /// only show as an error at start, or after a reload, as lines silently missing.
    pub fn access_log(
        &self,
        key: &str,
        raw: &Option<Spanned<String>>,
    ) -> Result<AccessLogTarget, ConfigError> {
        let Some(value) = raw else {
            return Ok(AccessLogTarget::Off);
        };
        let refuse = |message: String, label: &str, help: &str| {
            self.invalid(message, value.span(), label, Some(help))
        };
        match value.get_ref().as_str() {
            "off" => Ok(AccessLogTarget::Off),
            "stdout" => Ok(AccessLogTarget::Stdout),
            "" => Err(refuse(format!("`{key}` is empty"), "empty", TARGET_HELP)),
            // Accepting it would create a file named "stderr" in the working directory.
            "stderr" => Err(refuse(
                format!("`{key}` cannot be \"stderr\": stderr carries the proxy's own logs"),
                "not a target",
                TARGET_HELP,
            )),
            path => {
                let path = PathBuf::from(path);
                if path.is_dir() {
                    return Err(refuse(
                        format!("`{key}` {:?} is a directory", path.display().to_string()),
                        "a directory",
                        "name a file in it, e.g. \"/var/log/load_balancer/access.log\"",
                    ));
                }
                let dir = directory_of(&path);
                if !dir.is_dir() {
                    return Err(refuse(
                        format!(
                            "`{key}`: directory {:?} does not exist",
                            dir.display().to_string()
                        ),
                        "no such directory",
                        "create the directory first (the file itself is created), or set \
                         access_log = \"stdout\"",
                    ));
                }
                Ok(AccessLogTarget::File(path))
            }
        }
    }

    /// `access_log_format`: `"json"` (the default) or `"combined"`, which only HTTP listeners
    /// may use: its request line and status have no meaning for a TCP connection, and the
    /// tools that read combined logs would choke on a made-up one.
    pub fn access_log_format(
        &self,
        key: &str,
        raw: &Option<Spanned<String>>,
        protocol: Protocol,
    ) -> Result<AccessLogFormat, ConfigError> {
        let Some(value) = raw else {
            return Ok(AccessLogFormat::Json);
        };
        let Some(format) = AccessLogFormat::from_name(value.get_ref()) else {
            let valid = AccessLogFormat::ALL.map(|f| format!("{:?}", f.name()));
            return Err(self.invalid(
                format!(
                    "`{key}` must be {}, not {:?}",
                    valid.join(" or "),
                    value.get_ref()
                ),
                value.span(),
                "unknown format",
                Some("\"json\" (the default): one JSON object per line; \"combined\": Apache/nginx combined log format"),
            ));
        };
        if format == AccessLogFormat::Combined && protocol == Protocol::Tcp {
            return Err(self.invalid(
                format!("`{key}` \"combined\" applies to http listeners only"),
                value.span(),
                "on a tcp listener",
                Some(
                    "a TCP connection has no request line or status for a combined line; \
                     use \"json\"",
                ),
            ));
        }
        Ok(format)
    }
}

/// The directory `path` is created in: a bare file name lives in the working directory.
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{GOOD, first_listener_with, help_of, line_of, parse};
    use super::*;

    #[test]
    fn off_and_json_by_default() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.listeners[0].access_log, AccessLogTarget::Off);
        assert_eq!(c.listeners[0].access_log_format, AccessLogFormat::Json);
    }

    #[test]
    fn off_stdout_and_a_file() {
        let c = parse(&first_listener_with("access_log = \"off\"")).unwrap();
        assert_eq!(c.listeners[0].access_log, AccessLogTarget::Off);

        let text = first_listener_with("access_log = \"stdout\"\naccess_log_format = \"combined\"");
        let c = parse(&text).unwrap();
        assert_eq!(c.listeners[0].access_log, AccessLogTarget::Stdout);
        assert_eq!(c.listeners[0].access_log_format, AccessLogFormat::Combined);

        let file = std::env::temp_dir().join("access.log");
        let text = first_listener_with(&format!("access_log = {:?}", file.display().to_string()));
        let c = parse(&text).unwrap();
        assert_eq!(c.listeners[0].access_log, AccessLogTarget::File(file));

        // A bare name is a file in the working directory, which exists.
        let c = parse(&first_listener_with("access_log = \"access.log\"")).unwrap();
        assert_eq!(
            c.listeners[0].access_log,
            AccessLogTarget::File("access.log".into())
        );
    }

    #[test]
    fn a_missing_directory_is_refused_at_the_key() {
        let text = first_listener_with("access_log = \"/nonexistent-lb-dir/access.log\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`listeners[0].access_log`: directory \"/nonexistent-lb-dir\" does not exist"
        );
        assert_eq!(line_of(&text, &e), 10);
        assert_eq!(
            help_of(&e),
            "create the directory first (the file itself is created), or set access_log = \"stdout\""
        );
    }

    #[test]
    fn a_directory_empty_and_stderr_are_refused() {
        let dir = std::env::temp_dir().display().to_string();
        let text = first_listener_with(&format!("access_log = {dir:?}"));
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("`listeners[0].access_log` {dir:?} is a directory")
        );
        assert_eq!(line_of(&text, &e), 10);

        let text = first_listener_with("access_log = \"\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.to_string(), "`listeners[0].access_log` is empty");
        assert_eq!(help_of(&e), TARGET_HELP);

        let text = first_listener_with("access_log = \"stderr\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`listeners[0].access_log` cannot be \"stderr\": stderr carries the proxy's own logs"
        );
    }

    #[test]
    fn unknown_format_is_refused() {
        let text = first_listener_with("access_log_format = \"clf\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`listeners[0].access_log_format` must be \"json\" or \"combined\", not \"clf\""
        );
        assert_eq!(line_of(&text, &e), 10);
    }

    #[test]
    fn combined_is_refused_on_tcp_listeners() {
        let text = GOOD.replace(
            "bind = \"127.0.0.1:8081\"",
            "bind = \"127.0.0.1:8081\"\nprotocol = \"tcp\"\naccess_log = \"stdout\"\naccess_log_format = \"combined\"",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`listeners[1].access_log_format` \"combined\" applies to http listeners only"
        );
        assert_eq!(line_of(&text, &e), 15);
        assert_eq!(
            help_of(&e),
            "a TCP connection has no request line or status for a combined line; use \"json\""
        );
        parse(&text.replace("\"combined\"", "\"json\"")).unwrap();
    }

    #[test]
    fn format_names_round_trip() {
        for f in AccessLogFormat::ALL {
            assert_eq!(AccessLogFormat::from_name(f.name()), Some(f));
        }
        assert_eq!(AccessLogFormat::from_name("common"), None);
    }
}
