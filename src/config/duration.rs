//! Durations as written in `config.toml`: a whole number and a unit, `"500ms"`, `"5s"`,
//! `"2m"`, `"1h"`. No fractions and no compound forms ("1m30s"): one obvious spelling per
//! value keeps files easy to read and diagnostics easy to state.

use std::time::Duration;

/// Parses "250ms", "5s", "2m" or "1h" (a non-negative integer and a unit); `None` for
/// anything else, including an overflow.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(n.checked_mul(60 * 60)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_refusals() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration(" 2 m "), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        for bad in ["5", "s", "1.5s", "-1s", "1m30s", "2d", "soon", ""] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        assert_eq!(parse_duration(&format!("{}h", u64::MAX)), None);
    }
}
