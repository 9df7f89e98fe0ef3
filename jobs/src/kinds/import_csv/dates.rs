//! Dates and date-times as exports write them (ISO, US, EU, month names), read as UTC.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};

use super::text::shorten;

/// Parses a date or date-time as exports write them: ISO / RFC 3339 (with or without zone),
/// US `11/01/2025 3:04 PM`, EU `01.11.2025` / `01-11-2025`, and month names (`1 Nov 2025`,
/// `November 1, 2025`). `None` for an empty cell.
///
/// Slash dates are month/day unless the first number is over 12; dot and dash dates are
/// day/month unless the second number is over 12 (then the day/month reading is impossible
/// and the order is swapped). Dates without a time are midnight, and times without a zone UTC.
pub fn parse_date(raw: &str) -> Result<Option<DateTime<Utc>>, String> {
    let s = raw.trim();
    if s.is_empty() {
        return Ok(None);
    }
    // Most exports' shape, read without trying the others first (the import reads every row
    // twice); any other text, or a day that does not exist, takes the general way.
    if let Some(day) = iso_day(s) {
        return Ok(Some(day));
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Ok(Some(dt.to_utc()));
    }
    if let Ok(dt) = DateTime::parse_from_rfc2822(s) {
        return Ok(Some(dt.to_utc()));
    }
    numeric_date(s)
        .or_else(|| month_name_date(s))
        .map(Some)
        .ok_or_else(|| format!("unparseable date '{}'", shorten(s)))
}

/// Exactly `YYYY-MM-DD`, a day that exists: its midnight, UTC (what [`numeric_date`] makes of
/// it).
fn iso_day(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let date = NaiveDate::from_ymd_opt(year as i32, month, day)?;
    Some(date.and_time(NaiveTime::MIN).and_utc())
}

/// `2025-11-01`, `2025-11-01T12:00`, `11/1/2025 3:04 PM`, `01.11.2025 15:04:05 +02:00`.
fn numeric_date(s: &str) -> Option<DateTime<Utc>> {
    let date_end = s
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '-' | '/' | '.')))
        .unwrap_or(s.len());
    let (date, rest) = s.split_at(date_end);
    let time = match rest.chars().next() {
        None => None,
        Some('T' | 't') => Some(&rest[1..]),
        Some(c) if c.is_whitespace() => Some(rest.trim_start()),
        Some(_) => return None,
    };

    let sep = date.chars().find(|c| !c.is_ascii_digit())?;
    let parts: Vec<&str> = date.split(sep).collect();
    let [a, b, c] = parts[..] else {
        return None;
    };
    if [a, b, c].iter().any(|p| p.is_empty() || p.len() > 4) {
        return None;
    }
    let (na, nb, nc): (u32, u32, u32) = (a.parse().ok()?, b.parse().ok()?, c.parse().ok()?);
    let (year, month, day) = if a.len() == 4 {
        (na as i32, nb, nc)
    } else if c.len() == 4 || c.len() == 2 {
        let year = expand_year(c)?;
        let month_first = match sep {
            '/' => na <= 12,
            _ => nb > 12 && na <= 12,
        };
        if month_first {
            (year, na, nb)
        } else {
            (year, nb, na)
        }
    } else {
        return None;
    };
    let date = NaiveDate::from_ymd_opt(year, month, day)?;
    match time {
        None => Some(date.and_time(NaiveTime::MIN).and_utc()),
        Some(time) => {
            let (time, offset) = parse_time(time)?;
            to_utc(date.and_time(time), offset)
        }
    }
}

/// Two-digit years are this century up to 69 and the last from 70, as chrono's `%y` reads them.
fn expand_year(digits: &str) -> Option<i32> {
    let n: i32 = digits.parse().ok()?;
    match digits.len() {
        4 => Some(n),
        2 if n < 70 => Some(2000 + n),
        2 => Some(1900 + n),
        _ => None,
    }
}

/// `15:04`, `15:04:05.123`, `3:04 PM`, `3 pm`, with an optional zone `Z`, `UTC`, `GMT`,
/// `+02:00` or `-0500`. Returns the time and the zone's offset east of UTC in seconds.
fn parse_time(raw: &str) -> Option<(NaiveTime, i32)> {
    let mut s = raw.trim();
    let mut offset = 0;
    let upper = s.to_ascii_uppercase();
    if let Some(at) = s.rfind(['+', '-']) {
        offset = parse_offset(&s[at..])?;
        s = s[..at].trim_end();
    } else if upper.ends_with("UTC") || upper.ends_with("GMT") {
        s = s[..s.len() - 3].trim_end();
    } else if upper.ends_with('Z') {
        s = s[..s.len() - 1].trim_end();
    }

    let lower = s.to_ascii_lowercase();
    let mut meridiem = None;
    for (suffix, pm) in [("a.m.", false), ("p.m.", true), ("am", false), ("pm", true)] {
        if lower.ends_with(suffix) {
            meridiem = Some(pm);
            s = s[..s.len() - suffix.len()].trim_end();
            break;
        }
    }

    let parts: Vec<&str> = s.split(':').collect();
    let (hour, minute, second) = match parts[..] {
        [h] if meridiem.is_some() => (h, "0", "0"),
        [h, m] => (h, m, "0"),
        [h, m, sec] => (h, m, sec),
        _ => return None,
    };
    let (second, nanos) = match second.split_once('.') {
        Some((sec, frac)) => (sec, fraction_nanos(frac)?),
        None => (second, 0),
    };
    let digits = |p: &str, max_len| {
        (!p.is_empty() && p.len() <= max_len && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u32>().ok())
            .flatten()
    };
    let (mut hour, minute, second) = (digits(hour, 2)?, digits(minute, 2)?, digits(second, 2)?);
    if let Some(pm) = meridiem {
        if !(1..=12).contains(&hour) {
            return None;
        }
        hour = hour % 12 + if pm { 12 } else { 0 };
    }
    Some((
        NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?,
        offset,
    ))
}

/// `123` -> 123_000_000 nanoseconds; digits past nanosecond precision are dropped.
fn fraction_nanos(frac: &str) -> Option<u32> {
    if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    digits.parse().ok()
}

/// `+02:00`, `+0200`, `+02`, `-05:30` -> seconds east of UTC.
fn parse_offset(raw: &str) -> Option<i32> {
    let (sign, rest) = match raw.split_at(1) {
        ("+", rest) => (1, rest),
        ("-", rest) => (-1, rest),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|&c| c != ':').collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) || rest.matches(':').count() > 1 {
        return None;
    }
    let (hours, minutes) = match digits.len() {
        2 => (digits.parse::<i32>().ok()?, 0),
        4 => (digits[..2].parse().ok()?, digits[2..].parse::<i32>().ok()?),
        _ => return None,
    };
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some(sign * (hours * 3600 + minutes * 60))
}

fn to_utc(local: NaiveDateTime, offset_secs: i32) -> Option<DateTime<Utc>> {
    let zone = FixedOffset::east_opt(offset_secs)?;
    Some(zone.from_local_datetime(&local).single()?.to_utc())
}

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

const WEEKDAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// A month given by at least its first three letters (`Nov`, `Sept`, `November`).
fn month_number(word: &str) -> Option<u32> {
    if word.len() < 3 {
        return None;
    }
    MONTHS
        .iter()
        .position(|m| m.starts_with(word))
        .and_then(|i| u32::try_from(i + 1).ok())
}

/// `1 Nov 2025`, `Nov 1, 2025`, `Saturday, November 1st, 2025 3:04 PM`, `01-Nov-2025`.
fn month_name_date(s: &str) -> Option<DateTime<Utc>> {
    let mut month = None;
    let mut numbers: Vec<&str> = Vec::new();
    let mut time: Option<String> = None;
    let tokens = s
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | '-' | '/'))
        .filter(|t| !t.is_empty());
    for token in tokens {
        if let Some(time) = time.as_mut() {
            // Everything after the clock time belongs to it (`PM`, `UTC`).
            time.push(' ');
            time.push_str(token);
            continue;
        }
        if token.contains(':') {
            time = Some(token.to_owned());
            continue;
        }
        let word = token.trim_end_matches('.').to_lowercase();
        if word.chars().all(|c| c.is_alphabetic()) {
            if let Some(m) = month_number(&word) {
                if month.replace(m).is_some() {
                    return None;
                }
            } else if word != "at"
                && !(word.len() >= 3 && WEEKDAYS.iter().any(|d| d.starts_with(word.as_str())))
            {
                return None;
            }
            continue;
        }
        let number = ["st", "nd", "rd", "th"]
            .iter()
            .find_map(|suffix| word.strip_suffix(suffix))
            .unwrap_or(&word);
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        numbers.push(&token[..number.len()]);
    }
    let month = month?;
    let (day, year) = match numbers[..] {
        [a, b] if b.len() == 4 || (a.len() <= 2 && b.len() == 2) => (a, b),
        [a, b] if a.len() == 4 => (b, a),
        _ => return None,
    };
    if day.len() > 2 {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(expand_year(year)?, month, day.parse().ok()?)?;
    match time {
        None => Some(date.and_time(NaiveTime::MIN).and_utc()),
        Some(time) => {
            let (time, offset) = parse_time(&time)?;
            to_utc(date.and_time(time), offset)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn date(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn date_formats() {
        let midnight = date("2025-11-01T00:00:00Z");
        for raw in [
            "2025-11-01",
            "11/01/2025",
            "11/1/2025",
            "11/01/25",
            "01.11.2025",
            "01-11-2025",
            "1 Nov 2025",
            "Nov 1, 2025",
            "November 1, 2025",
            "Saturday, November 1st, 2025",
            "01-Nov-2025",
            "2025/11/01",
        ] {
            assert_eq!(parse_date(raw), Ok(Some(midnight)), "{raw:?}");
        }
        let cases = [
            ("2025-11-01T12:00:00Z", "2025-11-01T12:00:00Z"),
            ("2025-11-01 12:00:00", "2025-11-01T12:00:00Z"),
            ("2025-11-01T12:00:00", "2025-11-01T12:00:00Z"),
            ("2025-11-01T12:00", "2025-11-01T12:00:00Z"),
            ("2025-11-01T12:00:00.123+02:00", "2025-11-01T10:00:00.123Z"),
            ("2025-11-01 12:00:00 -0500", "2025-11-01T17:00:00Z"),
            ("2025-11-01 12:00:00 UTC", "2025-11-01T12:00:00Z"),
            ("11/01/2025 3:04 PM", "2025-11-01T15:04:00Z"),
            ("11/01/2025 12:04 am", "2025-11-01T00:04:00Z"),
            ("11/01/2025 15:04:05", "2025-11-01T15:04:05Z"),
            ("Nov 1, 2025 3:04 PM", "2025-11-01T15:04:00Z"),
            ("Sat, 01 Nov 2025 12:00:00 +0000", "2025-11-01T12:00:00Z"),
            ("13/01/2025", "2025-01-13T00:00:00Z"),
            ("02/03/2025", "2025-02-03T00:00:00Z"),
            ("02.03.2025", "2025-03-02T00:00:00Z"),
            ("11-25-2025", "2025-11-25T00:00:00Z"),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_date(raw), Ok(Some(date(want))), "{raw:?}");
        }
        assert_eq!(parse_date(" "), Ok(None));
        for raw in [
            "yesterday",
            "2025-13-01",
            "31/02/2025",
            "13/13/2025",
            "11/01/2025 25:00",
            "11/01/2025 13:00 PM",
            "Nov 2025",
            "1 Foo 2025",
            "12345",
            "2025-11-01X",
            "11/01/2025 3:04 PM junk",
        ] {
            assert_eq!(
                parse_date(raw),
                Err(format!("unparseable date '{raw}'")),
                "{raw:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn dates_never_panic(raw in "\\PC{0,30}") {
            let _ = parse_date(&raw);
        }

        /// The short way for ISO days reads them as the general way does, or leaves them to it.
        #[test]
        fn iso_days_read_as_the_general_way_reads_them(raw in "[0-9]{4}-[0-9]{2}-[0-9]{2}") {
            if let Some(day) = iso_day(&raw) {
                prop_assert_eq!(Some(day), numeric_date(&raw));
            } else {
                prop_assert_eq!(numeric_date(&raw), None);
            }
        }
    }
}
