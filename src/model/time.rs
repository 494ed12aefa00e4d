//! Calendar arithmetic for the API's times, with no I/O and no time crate:
//! dates and RFC 3339 times in, unix milliseconds out, and back. Civil
//! dates are proleptic Gregorian, UTC.

pub const DAY_MS: i64 = 86_400_000;

/// Which end of the window a bound is: a bare date covers its whole UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Since,
    Until,
}

/// A date (`YYYY-MM-DD`: the day's start for `since`, its last millisecond
/// for `until`) or an RFC 3339 time with `Z` or an offset.
pub fn parse_time(text: &str, bound: Bound) -> Option<i64> {
    let day_start = date_ms(text.get(..10)?)?;
    let rest = &text[10..];
    if rest.is_empty() {
        return Some(match bound {
            Bound::Since => day_start,
            Bound::Until => day_start + DAY_MS - 1,
        });
    }
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let (h, m, s) = (
        two_digits(rest.get(0..2)?)?,
        two_digits(rest.get(3..5)?)?,
        two_digits(rest.get(6..8)?)?,
    );
    if rest.get(2..3)? != ":" || rest.get(5..6)? != ":" || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let mut rest = &rest[8..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        ms = padded.parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.get(..1)? {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.get(3..4)? != ":" {
                return None;
            }
            let (oh, om) = (two_digits(&rest[1..3])?, two_digits(&rest[4..6])?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    Some(day_start + ((h * 3600 + m * 60 + s.min(59)) - offset_s) * 1000 + ms)
}

fn two_digits(t: &str) -> Option<i64> {
    (t.len() == 2 && t.bytes().all(|b| b.is_ascii_digit()))
        .then(|| t.parse().ok())
        .flatten()
}

/// `YYYY-MM-DD` as the unix ms of that UTC day's start.
fn date_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year: i64 = text[..4]
        .parse()
        .ok()
        .filter(|_| b[..4].iter().all(u8::is_ascii_digit))?;
    let month = two_digits(&text[5..7])?;
    let day = two_digits(&text[8..10])?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day) * DAY_MS)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Howard Hinnant's `days_from_civil`: days since 1970-01-01.
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Howard Hinnant's `civil_from_days`: (year, month, day) of a day since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, UTC).
pub fn rfc3339_secs(secs: i64) -> String {
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let tod = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

/// Unix ms as `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC).
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = rfc3339_secs(ms.div_euclid(1000));
    format!("{}.{:03}Z", &secs[..secs.len() - 1], ms.rem_euclid(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEC_1: i64 = 1_796_083_200_000; // 2026-12-01T00:00:00Z

    #[test]
    fn a_date_covers_its_whole_utc_day() {
        assert_eq!(parse_time("2026-12-01", Bound::Since), Some(DEC_1));
        assert_eq!(
            parse_time("2026-12-01", Bound::Until),
            Some(DEC_1 + DAY_MS - 1)
        );
        assert_eq!(parse_time("1970-01-01", Bound::Since), Some(0));
        assert_eq!(
            parse_time("2024-02-29", Bound::Since),
            Some(1_709_164_800_000)
        );
    }

    #[test]
    fn rfc3339_times_with_offsets_and_fractions() {
        assert_eq!(
            parse_time("2026-12-01T10:00:00Z", Bound::Since),
            Some(DEC_1 + 36_000_000)
        );
        assert_eq!(
            parse_time("2026-12-01T10:00:00.5Z", Bound::Until),
            Some(DEC_1 + 36_000_500)
        );
        assert_eq!(
            parse_time("2026-12-01T12:00:00+02:00", Bound::Since),
            Some(DEC_1 + 36_000_000)
        );
        assert_eq!(
            parse_time("2026-11-30T23:00:00-01:00", Bound::Since),
            Some(DEC_1)
        );
    }

    #[test]
    fn bad_times_are_refused() {
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-02-30",
            "2023-02-29",
            "2026-12-1",
            "2026-12-01T25:00:00Z",
            "2026-12-01T10:00:00",
            "2026-12-01T10:00Z",
            "2026-12-01T10:00:00+2",
            "2026-12-01T10:00:00.Z",
            "+026-12-01",
        ] {
            assert_eq!(parse_time(bad, Bound::Since), None, "{bad:?}");
        }
    }

    #[test]
    fn resolved_bounds_print_as_rfc3339_ms() {
        assert_eq!(rfc3339_ms(DEC_1), "2026-12-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(DEC_1 + DAY_MS - 1), "2026-12-01T23:59:59.999Z");
        for t in [0, DEC_1 + 36_000_500, 951_782_400_000] {
            assert_eq!(parse_time(&rfc3339_ms(t), Bound::Since), Some(t));
        }
    }

    #[test]
    fn seconds_print_without_a_fraction() {
        assert_eq!(rfc3339_secs(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_secs(DEC_1 / 1000), "2026-12-01T00:00:00Z");
        assert_eq!(rfc3339_secs(-1), "1969-12-31T23:59:59Z");
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }
}
