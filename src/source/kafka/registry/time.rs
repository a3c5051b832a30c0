//! ISO-8601 text for the dates and times that Avro and Protobuf carry as numbers.

/// `YYYY-MM-DD` of a day count since 1970-01-01 (proleptic Gregorian).
pub(crate) fn date(days: i64) -> String {
    let (y, m, d) = civil(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `HH:MM:SS.f…` (`digits` fraction digits) of nanoseconds since midnight.
pub(crate) fn time_of_day(nanos: i64, digits: u32) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let frac = nanos.rem_euclid(1_000_000_000);
    let mut s = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    push_fraction(&mut s, frac, digits);
    s
}

/// `YYYY-MM-DDTHH:MM:SS.f…` of nanoseconds since the epoch, `Z` when `utc`.
pub(crate) fn timestamp(nanos: i128, digits: u32, utc: bool) -> String {
    let secs = nanos.div_euclid(1_000_000_000) as i64;
    let frac = nanos.rem_euclid(1_000_000_000) as i64;
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let mut s = format!(
        "{}T{:02}:{:02}:{:02}",
        date(days),
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    );
    push_fraction(&mut s, frac, digits);
    if utc {
        s.push('Z');
    }
    s
}

fn push_fraction(s: &mut String, nanos: i64, digits: u32) {
    if digits > 0 {
        let scaled = nanos / 10i64.pow(9 - digits);
        s.push_str(&format!(".{scaled:0width$}", width = digits as usize));
    }
}

/// Year, month, day of a day count (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates_and_times() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(-1), "1969-12-31");
        assert_eq!(date(11_016), "2000-02-29");
        assert_eq!(date(19_723), "2024-01-01");
        assert_eq!(time_of_day(0, 3), "00:00:00.000");
        assert_eq!(time_of_day(86_399_999_999_999, 6), "23:59:59.999999");
        assert_eq!(
            timestamp(1_704_164_645_123_000_000, 3, true),
            "2024-01-02T03:04:05.123Z"
        );
        assert_eq!(timestamp(-1, 9, false), "1969-12-31T23:59:59.999999999");
        assert_eq!(timestamp(0, 0, true), "1970-01-01T00:00:00Z");
    }
}
