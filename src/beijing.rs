//! Beijing time (UTC+8), the only clock the provincial platform knows.
//!
//! Every platform time — `inf_time`, the time inside `msgid`, record times, token expiry and
//! the day of the daily call limit — is Beijing time whatever the host's time zone, so this
//! module never consults the local zone.

use std::fmt;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};

/// The platform's textual time format, `yyyy-MM-dd HH:mm:ss`.
pub const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// The fixed UTC+8 offset of China Standard Time (no daylight saving).
pub fn offset() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset")
}

/// The current time in Beijing.
pub fn now() -> DateTime<FixedOffset> {
    Utc::now().with_timezone(&offset())
}

/// Converts any instant to Beijing time.
pub fn at(instant: DateTime<Utc>) -> DateTime<FixedOffset> {
    instant.with_timezone(&offset())
}

/// Formats an instant as `yyyy-MM-dd HH:mm:ss` in Beijing time.
pub fn format(instant: DateTime<Utc>) -> String {
    let mut text = String::with_capacity(19);
    // Writing into a String cannot fail.
    let _ = write_time(&mut text, &at(instant).naive_local());
    text
}

/// Writes a wall-clock time as `yyyy-MM-dd HH:mm:ss` (the text of [`TIME_FORMAT`]), digit
/// by digit: chrono's `format` reads its format string again at every call, and every
/// record's time is written this way into each upload and each receipt.
pub fn write_time(out: &mut impl fmt::Write, time: &NaiveDateTime) -> fmt::Result {
    let Some(year) = u32::try_from(time.year()).ok().filter(|year| *year <= 9999) else {
        // Years chrono writes with a sign: never a platform time, but written as chrono would.
        return write!(out, "{}", time.format(TIME_FORMAT));
    };
    let mut text = *b"0000-00-00 00:00:00";
    let mut put = |at: usize, value: u32, digits: usize| {
        let mut value = value;
        for i in (at..at + digits).rev() {
            text[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year, 4);
    put(5, time.month(), 2);
    put(8, time.day(), 2);
    put(11, time.hour(), 2);
    put(14, time.minute(), 2);
    // chrono keeps a leap second as second 59 with over a second of nanoseconds.
    put(17, time.second() + u32::from(time.nanosecond() >= 1_000_000_000), 2);
    out.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
}

/// Reads a `yyyy-MM-dd HH:mm:ss` Beijing wall-clock time as an instant.
pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    let naive = NaiveDateTime::parse_from_str(text, TIME_FORMAT).ok()?;
    Some(offset().from_local_datetime(&naive).single()?.with_timezone(&Utc))
}

/// The calendar day in Beijing of an instant (the day of the daily call limit).
pub fn day(instant: DateTime<Utc>) -> NaiveDate {
    at(instant).date_naive()
}

/// The next Beijing midnight after `instant`, when a daily call limit resets.
pub fn next_midnight(instant: DateTime<Utc>) -> DateTime<Utc> {
    let tomorrow = day(instant).succ_opt().unwrap_or(NaiveDate::MAX);
    let midnight = tomorrow.and_hms_opt(0, 0, 0).unwrap_or(NaiveDateTime::MAX);
    offset().from_local_datetime(&midnight).single().map(|t| t.with_timezone(&Utc)).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Time until the next Beijing midnight, plus up to a minute of jitter so that a fleet
/// held until then (the daily call limit) does not start again in one burst.
pub fn until_next_midnight_with_jitter() -> std::time::Duration {
    let now = Utc::now();
    let wait = (next_midnight(now) - now).to_std().unwrap_or_default();
    wait + std::time::Duration::from_millis(rand::random_range(0..60_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn formats_in_utc_plus_8() {
        assert_eq!(format(utc("2026-11-25T17:30:05Z")), "2026-11-26 01:30:05");
    }

    #[test]
    fn times_are_written_as_chrono_writes_them() {
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31).unwrap().and_hms_milli_opt(23, 59, 59, 1_500).unwrap();
        let mut times = vec![leap, NaiveDateTime::MIN, NaiveDateTime::MAX];
        for year in [-1, 0, 7, 99, 1900, 2026, 9999, 10_000] {
            for (month, day, hour, minute, second) in [(1, 1, 0, 0, 0), (2, 28, 9, 5, 7), (12, 31, 23, 59, 59)] {
                times.push(NaiveDate::from_ymd_opt(year, month, day).unwrap().and_hms_opt(hour, minute, second).unwrap());
            }
        }
        for time in times {
            let mut text = String::new();
            write_time(&mut text, &time).unwrap();
            assert_eq!(text, time.format(TIME_FORMAT).to_string(), "{time:?}");
        }
    }

    #[test]
    fn parse_is_the_inverse_of_format() {
        let t = utc("2026-01-01T00:00:00Z");
        assert_eq!(parse(&format(t)), Some(t));
        assert_eq!(parse("2026-01-01 08:00:00"), Some(t));
        assert_eq!(parse("2026-01-01"), None);
    }

    #[test]
    fn the_day_changes_at_beijing_midnight() {
        assert_eq!(day(utc("2026-11-25T15:59:59Z")).to_string(), "2026-11-25");
        assert_eq!(day(utc("2026-11-25T16:00:00Z")).to_string(), "2026-11-26");
        assert_eq!(next_midnight(utc("2026-11-25T10:00:00Z")), utc("2026-11-25T16:00:00Z"));
        assert_eq!(next_midnight(utc("2026-11-25T16:00:00Z")), utc("2026-11-26T16:00:00Z"));
    }
}
