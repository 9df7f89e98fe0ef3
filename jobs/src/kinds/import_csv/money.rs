//! Money as exports write it, parsed into integer cents (never through floats).

use crate::domain::Cents;

use super::text::shorten;

/// Parses a money amount into integer cents (never through floats): `$1,234.50`, `1.234,56 €`,
/// `1 234,56`, `USD 12.00`, `12`. `None` for an empty cell.
///
/// Separators: if both `.` and `,` appear, the last one is the decimal separator. If only one
/// kind appears once, followed by exactly 3 digits, it groups thousands (`1,234` is 1234.00),
/// unless the integer part is zero (`0.125`) or already grouped with spaces (`1 234.567`);
/// otherwise it is the decimal separator. Several of one kind group thousands. Groups must be
/// of 3 digits. Beyond 2 decimals the amount rounds half away from zero.
pub fn parse_money(raw: &str) -> Result<Option<Cents>, String> {
    let s = raw.trim();
    if s.is_empty() {
        return Ok(None);
    }
    // Most exports' shape, read without the general way's allocations (the import reads every
    // row twice); anything else, or too large an amount, takes the general way.
    if let Some(cents) = plain_dollars(s).and_then(|c| Cents::new(c).ok()) {
        return Ok(Some(cents));
    }
    let unparseable = || format!("unparseable amount '{}'", shorten(s));
    let (negative, body) = split_sign(s).ok_or_else(unparseable)?;
    let (int_digits, frac_digits) = split_number(body).ok_or_else(unparseable)?;
    let cents = to_cents(&int_digits, &frac_digits);
    if negative && cents != Some(0) {
        return Err("negative amount".to_owned());
    }
    cents
        .and_then(|c| Cents::new(c).ok())
        .map(Some)
        .ok_or_else(|| {
            format!(
                "amount too large (the maximum is {}.{:02})",
                Cents::MAX / 100,
                Cents::MAX % 100
            )
        })
}

/// `$1,234.50` or `1234`: an optional `$`, whole dollars (plain, or in groups of 3 after
/// a first group of 1 to 3 digits that is not `0`), and optionally `.` with exactly 2 digits.
/// Its cents, as [`parse_money`]'s general way reads the same text; `None` for any other text.
fn plain_dollars(s: &str) -> Option<i64> {
    let b = s.strip_prefix('$').unwrap_or(s).as_bytes();
    let (int, frac) = match b.len().checked_sub(3) {
        Some(dot) if b[dot] == b'.' => (&b[..dot], &b[dot + 1..]),
        _ => (b, &b[b.len()..]),
    };
    if int.contains(&b',') {
        let mut groups = int.split(|c| *c == b',');
        let first = groups.next()?;
        if first.is_empty() || first.len() > 3 || first[0] == b'0' || groups.any(|g| g.len() != 3) {
            return None;
        }
    } else if int.is_empty() {
        return None;
    }
    let number = |digits: &[u8]| -> Option<i64> {
        digits
            .iter()
            .filter(|c| **c != b',')
            .try_fold(0i64, |n, c| {
                if c.is_ascii_digit() {
                    n.checked_mul(10)?.checked_add(i64::from(c - b'0'))
                } else {
                    None
                }
            })
    };
    number(int)?.checked_mul(100)?.checked_add(number(frac)?)
}

/// Strips currency marks and the sign: `(€12)`, `-$12`, `$-12` and `USD -12` are all negative.
fn split_sign(s: &str) -> Option<(bool, &str)> {
    let (mut negative, s) = match s.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
        Some(inner) => (true, inner),
        None => (false, s),
    };
    let mut body = strip_currency(s)?;
    if let Some(rest) = body.strip_prefix(['-', '\u{2212}']) {
        if negative {
            return None;
        }
        negative = true;
        body = strip_currency(rest)?;
    } else if let Some(rest) = body.strip_prefix('+') {
        body = strip_currency(rest)?;
    }
    Some((negative, body))
}

/// Currency symbols seen in creators' exports (letters such as `USD` or `zł` are handled apart).
const CURRENCY_SYMBOLS: &str = "$€£¥¢¤₹₽₩₺₴₱₪₫฿₦₲₵₡₭₮₸₼₾";

/// Removes one currency mark at each end (`$`, `€`, `USD`, `US$`, `R$`, `zł`): symbols plus
/// at most 3 letters, so words like `twelve` are not mistaken for a currency.
fn strip_currency(s: &str) -> Option<&str> {
    let is_mark = |c: char| CURRENCY_SYMBOLS.contains(c) || c.is_alphabetic();
    let letters = |t: &str| t.chars().filter(|c| c.is_alphabetic()).count();
    let s = s.trim();
    let rest = s.trim_start_matches(is_mark);
    let prefix = &s[..s.len() - rest.len()];
    let core = rest.trim_end_matches(is_mark);
    let suffix = &rest[core.len()..];
    (letters(prefix) <= 3 && letters(suffix) <= 3).then(|| core.trim())
}

/// Characters that group thousands besides `.` and `,`: spaces (including the no-break
/// spaces French and Nordic locales write) and Swiss apostrophes.
fn is_group_mark(c: char) -> bool {
    matches!(
        c,
        ' ' | '\u{a0}' | '\u{202f}' | '\u{2009}' | '\'' | '\u{2019}'
    )
}

/// Splits a bare number into its integer digits and fraction digits (see [`parse_money`]).
fn split_number(body: &str) -> Option<(String, String)> {
    if !body
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | ',') || is_group_mark(c))
    {
        return None;
    }
    let dots = body.matches('.').count();
    let commas = body.matches(',').count();
    let decimal = if dots > 0 && commas > 0 {
        let last = body.rfind(['.', ','])?;
        let mark = &body[last..=last];
        if body.matches(mark).count() != 1 {
            return None;
        }
        Some(last)
    } else if dots + commas == 1 {
        let at = body.find(['.', ','])?;
        let (before, after) = (&body[..at], &body[at + 1..]);
        let grouped_otherwise = before.chars().any(is_group_mark);
        let integer_is_zero = !before.chars().any(|c| matches!(c, '1'..='9'));
        let thousands = after.len() == 3
            && after.bytes().all(|b| b.is_ascii_digit())
            && !integer_is_zero
            && !grouped_otherwise;
        (!thousands).then_some(at)
    } else {
        None
    };
    let (int_part, frac_part) = match decimal {
        Some(at) => (&body[..at], &body[at + 1..]),
        None => (body, ""),
    };
    if decimal.is_some() && (frac_part.is_empty() || !frac_part.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let int_digits = ungroup(int_part)?;
    if int_digits.is_empty() && frac_part.is_empty() {
        return None;
    }
    Some((int_digits, frac_part.to_owned()))
}

/// `1,234,567` -> `1234567`, checking one kind of separator and groups of 3 after a first
/// group of 1 to 3 digits, so `12,34` is refused rather than guessed.
fn ungroup(int_part: &str) -> Option<String> {
    let Some(sep) = int_part.chars().find(|c| !c.is_ascii_digit()) else {
        return Some(int_part.to_owned());
    };
    let mut groups = int_part.split(sep);
    let first = groups.next()?;
    if !(1..=3).contains(&first.len()) || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits = first.to_owned();
    for group in groups {
        if group.len() != 3 || !group.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.push_str(group);
    }
    Some(digits)
}

/// Whole cents from digit strings, rounding half away from zero on the third decimal.
/// `None` when the amount is beyond any sensible sum.
fn to_cents(int_digits: &str, frac_digits: &str) -> Option<i64> {
    let int_digits = int_digits.trim_start_matches('0');
    // 13 digits of whole units is already 10x Cents::MAX; stop before overflow can happen.
    if int_digits.len() > 13 {
        return None;
    }
    let units: i64 = if int_digits.is_empty() {
        0
    } else {
        int_digits.parse().ok()?
    };
    let frac = frac_digits.as_bytes();
    let digit = |i: usize| frac.get(i).map_or(0, |b| i64::from(b - b'0'));
    let round_up = i64::from(digit(2) >= 5);
    units
        .checked_mul(100)?
        .checked_add(digit(0) * 10 + digit(1) + round_up)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cents(n: i64) -> Option<Cents> {
        Some(Cents::new(n).unwrap())
    }

    /// `parse_money` without its short way.
    fn general(raw: &str) -> Result<Option<Cents>, ()> {
        let (negative, body) = split_sign(raw).ok_or(())?;
        let (int_digits, frac_digits) = split_number(body).ok_or(())?;
        let cents = to_cents(&int_digits, &frac_digits).ok_or(())?;
        assert!(!negative);
        Cents::new(cents).map(Some).map_err(|_| ())
    }

    #[test]
    fn plain_dollars_cover_the_common_shapes_and_leave_the_rest() {
        for (raw, want) in [
            ("$1,234.50", Some(123_450)),
            ("1234", Some(123_400)),
            ("$12.34", Some(1_234)),
            ("1,234,567", Some(123_456_700)),
            ("0,125", None),
            ("12.345", None),
            ("12.5", None),
            ("1234,567", None),
            ("$", None),
            ("-$12", None),
            ("1.234,56", None),
        ] {
            assert_eq!(plain_dollars(raw), want, "{raw}");
        }
    }

    #[test]
    fn money_formats() {
        let ok = [
            ("$1,234.50", 123_450),
            ("1234.5", 123_450),
            ("1.234,56 €", 123_456),
            ("1 234,56", 123_456),
            ("1\u{a0}234,56", 123_456),
            ("1\u{202f}234,56 €", 123_456),
            ("€12", 1_200),
            ("USD 12.00", 1_200),
            ("12 EUR", 1_200),
            ("US$ 12", 1_200),
            ("12", 1_200),
            ("0", 0),
            ("-0.00", 0),
            ("1,234", 123_400),
            ("1.234", 123_400),
            ("1,234,567", 123_456_700),
            ("1.234.567,89", 123_456_789),
            ("1'234.50", 123_450),
            ("0.125", 13),
            ("0,124", 12),
            ("2.345", 234_500),
            ("2.3456", 235),
            ("1.005", 100_500),
            ("12.345,675", 1_234_568),
            (".5", 50),
            ("+7", 700),
            ("$1,000,000,000.00", 100_000_000_000),
        ];
        for (raw, want) in ok {
            assert_eq!(parse_money(raw), Ok(cents(want)), "{raw:?}");
        }
        assert_eq!(parse_money(""), Ok(None));
        assert_eq!(parse_money("  "), Ok(None));
        for raw in ["-5", "-$5.00", "$-5", "($12.00)", "(12)", "USD -1"] {
            assert_eq!(
                parse_money(raw),
                Err("negative amount".to_owned()),
                "{raw:?}"
            );
        }
        for raw in [
            "abc",
            "12abcd",
            "1,2,3",
            "12,34,567",
            "1.2.3,4,5",
            "1e5",
            "$",
            "-",
            "12.",
            "1 2",
            "1..2",
            "--5",
            "(-5)",
            "1,234 567",
            "twelve",
        ] {
            assert_eq!(
                parse_money(raw),
                Err(format!("unparseable amount '{raw}'")),
                "{raw:?}"
            );
        }
        let too_large = parse_money("$1,000,000,000.01").unwrap_err();
        assert!(too_large.starts_with("amount too large"), "{too_large}");
        assert!(parse_money(&"9".repeat(40)).is_err());
    }

    fn us_format(cents: i64) -> String {
        format!("${}.{:02}", group(cents / 100, ','), cents % 100)
    }

    fn eu_format(cents: i64) -> String {
        format!("{},{:02} €", group(cents / 100, '.'), cents % 100)
    }

    fn group(units: i64, sep: char) -> String {
        let digits = units.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(sep);
            }
            out.push(c);
        }
        out
    }

    #[test]
    fn grouping_helper_groups() {
        assert_eq!(us_format(123_456_789), "$1,234,567.89");
        assert_eq!(eu_format(5), "0,05 €");
    }

    proptest! {
        #[test]
        fn money_round_trips_in_us_and_eu_style(value in 0..=Cents::MAX) {
            prop_assert_eq!(parse_money(&us_format(value)), Ok(cents(value)));
            prop_assert_eq!(parse_money(&eu_format(value)), Ok(cents(value)));
        }

        #[test]
        fn money_never_panics(raw in "\\PC{0,30}") {
            let _ = parse_money(&raw);
        }

        /// The short way for plain dollars reads them as the general way does, or leaves them
        /// to it.
        #[test]
        fn plain_dollars_read_as_the_general_way_reads_them(
            raw in "\\$?[0-9,]{1,14}(\\.[0-9]{0,3})?"
        ) {
            if let Some(cents) = plain_dollars(&raw) {
                prop_assert_eq!(general(&raw), Cents::new(cents).map(Some).map_err(|_| ()));
            }
        }
    }
}
