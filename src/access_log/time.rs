//! Calendar time in UTC for log lines (and the proxy's own 503s), from a `SystemTime`. A dozen lines of arithmetic
//! (Howard Hinnant's `civil_from_days`) instead of a date crate: log lines only ever need
//! UTC, no time zones, no parsing.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// A moment broken into UTC calendar fields, to the millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Utc {
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
    /// 1 to 31.
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millisecond: u32,
}

/// Month names as the combined format writes them (`10/Oct/2000`).
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

impl Utc {
    /// `time` in UTC; a time before 1970 (a clock set wrong) shows as the epoch rather than
    /// failing a log line.
    pub fn of(time: SystemTime) -> Utc {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
        // civil_from_days: days since 1970-01-01 to a proleptic Gregorian date, with years
        // starting in March so the leap day comes last.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Utc {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem / 60 % 60) as u32,
            second: (rem % 60) as u32,
            millisecond: since.subsec_millis(),
        }
    }

    /// RFC 3339 with milliseconds: `2000-10-10T13:55:36.123Z`.
    pub fn write_rfc3339(&self, out: &mut Vec<u8>) {
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.millisecond
        );
    }

    /// The combined format's `%t`, without the brackets: `10/Oct/2000:13:55:36 +0000`.
    pub fn write_common_log(&self, out: &mut Vec<u8>) {
        let _ = write!(
            out,
            "{:02}/{}/{:04}:{:02}:{:02}:{:02} +0000",
            self.day,
            MONTHS[self.month as usize - 1],
            self.year,
            self.hour,
            self.minute,
            self.second
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(unix_ms: u64) -> Utc {
        Utc::of(UNIX_EPOCH + Duration::from_millis(unix_ms))
    }

    impl Utc {
        fn rfc3339(&self) -> String {
            let mut out = Vec::new();
            self.write_rfc3339(&mut out);
            String::from_utf8(out).unwrap()
        }

        fn common_log(&self) -> String {
            let mut out = Vec::new();
            self.write_common_log(&mut out);
            String::from_utf8(out).unwrap()
        }
    }

    #[test]
    fn calendar_dates() {
        assert_eq!(at(0).rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(971_186_136_789).rfc3339(), "2000-10-10T13:55:36.789Z");
        // A leap day, the day after it, and the last millisecond of a year.
        assert_eq!(at(951_782_400_000).rfc3339(), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(951_868_800_000).rfc3339(), "2000-03-01T00:00:00.000Z");
        assert_eq!(at(1_798_761_599_999).rfc3339(), "2026-12-31T23:59:59.999Z");
        // 2100 is not a leap year.
        assert_eq!(at(4_107_542_400_000).rfc3339(), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn common_log_time() {
        assert_eq!(
            at(971_186_136_789).common_log(),
            "10/Oct/2000:13:55:36 +0000"
        );
        assert_eq!(at(0).common_log(), "01/Jan/1970:00:00:00 +0000");
    }

    #[test]
    fn before_the_epoch_is_the_epoch() {
        let t = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(Utc::of(t).rfc3339(), "1970-01-01T00:00:00.000Z");
    }
}
