//! Streaming parser for creators' fan-export CSV files.
//!
//! Real exports come from spreadsheets and platform tools, so they are messy: a BOM, `;` or tab
//! delimiters, headers spelled a dozen ways, money as `$1,234.50` or `1.234,56 €`, dates in US,
//! EU or ISO order. Everything is read record by record from an async reader, so the file is
//! never held whole in memory. A problem in one row is a [`RowError`] and the import goes on;
//! only whole-file problems are a [`FileError`].

use std::io;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use csv_async::{AsyncReader, AsyncReaderBuilder, ByteRecord};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader, Chain};

use crate::domain::{Cents, Email, Handle, Line};

/// How many bytes are looked at to sniff the encoding and the delimiter: enough for any
/// real header line, small enough to never matter for memory.
const SNIFF_LEN: usize = 8 * 1024;

/// At most this many header names are echoed back in [`FileError::NoUsableHeader`].
const MAX_FOUND_HEADERS: usize = 20;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Longest display name kept; longer ones are refused rather than silently cut.
const NAME_MAX: usize = 200;
/// Longest subscription tier label kept.
const TIER_MAX: usize = 50;

/// One mapped data row (records are counted by the CSV parser, so quoted fields with
/// newlines do not shift row numbers).
pub use crate::crm::fans::import::FanRow;

/// A row that could not be imported. `error` is short and shown to the creator next to the
/// row number, so it says what to fix; several problems in one row are joined with `; `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("row {row}: {error}")]
pub struct RowError {
    pub row: u64,
    pub error: String,
}

/// A permanent, whole-file problem: retrying the same file can never succeed (except `Io`,
/// which the caller may treat as transient).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("The file is empty.")]
    Empty,
    #[error(
        "The file is not a text CSV file: it looks binary or is not UTF-8 encoded (for example \
         UTF-16 or Windows-1252). Save it as \"CSV UTF-8\" and upload it again."
    )]
    NotText,
    #[error(
        "The first row has no username or display name column, so no fan can be identified \
         (columns found: {}).",
        list_found(found)
    )]
    NoUsableHeader { found: Vec<String> },
    #[error("The file could not be read: {0}.")]
    Io(#[from] io::Error),
}

fn list_found(found: &[String]) -> String {
    if found.is_empty() {
        return "none".to_owned();
    }
    found
        .iter()
        .map(|h| format!("'{h}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The fields a fan export can fill, in the order [`FanCsvReader::mapping`] reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Handle,
    Name,
    Email,
    Tier,
    Spent,
    LastSeen,
}

const FIELD_COUNT: usize = 6;

/// Each field's log name and the header spellings seen in real exports. Headers are compared
/// after [`normalize_header`], so `E-Mail`, `email_address` and `Email Address` all match.
const FIELDS: [(Field, &str, &[&str]); FIELD_COUNT] = [
    (
        Field::Handle,
        "handle",
        &[
            "username",
            "user name",
            "handle",
            "user",
            "fan",
            "fan username",
            "onlyfans username",
            "account",
        ],
    ),
    (
        Field::Name,
        "name",
        &["display name", "name", "fan name", "full name"],
    ),
    (
        Field::Email,
        "email",
        &["email", "email address", "e-mail", "mail"],
    ),
    (
        Field::Tier,
        "tier",
        &["subscription tier", "tier", "subscription", "plan"],
    ),
    (
        Field::Spent,
        "spent",
        &[
            "total spent",
            "spent",
            "lifetime spend",
            "lifetime value",
            "total spend",
            "amount spent",
            "revenue",
            "ltv",
        ],
    ),
    (
        Field::LastSeen,
        "last_seen",
        &[
            "last seen",
            "last active",
            "last activity",
            "last online",
            "last seen at",
        ],
    ),
];

/// Header text reduced to what distinguishes it: case, spaces, `_`, `-` and `.` vary between
/// tools and never carry meaning.
fn normalize_header(raw: &str) -> String {
    raw.chars()
        .filter(|c| !(c.is_whitespace() || matches!(c, '_' | '-' | '.' | '\u{feff}')))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Where one field lives in the file, with the header text as written (for messages and logs).
#[derive(Debug, Clone)]
struct Column {
    index: usize,
    header: String,
}

/// The buffered stream the CSV parser reads: the sniffed first bytes, then the rest.
type Source<R> = BufReader<Chain<io::Cursor<Vec<u8>>, R>>;

/// Bytes read from the file at a time (8 KiB reads cost a tenth of a scan in hand-offs).
const READ_BUFFER: usize = 256 * 1024;

/// Reads a fan export one record at a time. Build it with [`FanCsvReader::open`].
pub struct FanCsvReader<R> {
    csv: AsyncReader<Source<R>>,
    columns: [Option<Column>; FIELD_COUNT],
    record: ByteRecord,
    /// Spreadsheet row number of the last record read (the header is 1).
    row: u64,
}

impl<R: AsyncRead + Unpin + Send> FanCsvReader<R> {
    /// Sniffs BOM and delimiter from the first bytes, reads and maps the header.
    ///
    /// The first bytes are read in full (up to 8 KiB) rather than taken from a single
    /// `fill_buf`, because an upload stream may hand back only a few bytes per read and the
    /// sniff must see the whole header line. They are then replayed in front of the rest of
    /// the stream, so memory stays bounded by that window plus the parser's buffer.
    pub async fn open(reader: R) -> Result<Self, FileError> {
        let mut reader = reader;
        let (mut head, mut eof) = read_window(&mut reader).await?;
        if head.starts_with(UTF8_BOM) {
            head.drain(..UTF8_BOM.len());
        }
        // A window of nothing but blank space says nothing; look further before calling
        // the file empty (only a pathological file gets here more than once).
        while head.iter().all(u8::is_ascii_whitespace) {
            if eof {
                return Err(FileError::Empty);
            }
            (head, eof) = read_window(&mut reader).await?;
        }
        if head.contains(&0) {
            return Err(FileError::NotText);
        }
        if let Err(e) = std::str::from_utf8(&head) {
            // A multibyte character cut by the window edge is fine; anything else is not text.
            if e.error_len().is_some() || eof {
                return Err(FileError::NotText);
            }
        }
        let delimiter = match excel_sep_line(&head) {
            Some((delimiter, line_len)) => {
                head.drain(..line_len);
                delimiter
            }
            None => sniff_delimiter(&head),
        };

        // Large reads: a local blob is read through tokio's blocking pool, one hand-off a read.
        let source = BufReader::with_capacity(READ_BUFFER, io::Cursor::new(head).chain(reader));
        let mut csv = AsyncReaderBuilder::new()
            .flexible(true)
            .has_headers(true)
            .delimiter(delimiter)
            .create_reader(source);
        let headers: Vec<String> = csv
            .byte_headers()
            .await
            .map_err(csv_error)?
            .iter()
            .map(|h| String::from_utf8_lossy(h).trim().to_owned())
            .collect();

        let columns = map_columns(&headers);
        if columns[Field::Handle as usize].is_none() && columns[Field::Name as usize].is_none() {
            let found = headers
                .iter()
                .filter(|h| !h.is_empty())
                .take(MAX_FOUND_HEADERS)
                .map(|h| shorten(h))
                .collect();
            return Err(FileError::NoUsableHeader { found });
        }
        Ok(FanCsvReader {
            csv,
            columns,
            record: ByteRecord::new(),
            row: 1,
        })
    }

    /// The next data record: `Ok(Some(Ok(row)))`, `Ok(Some(Err(row_error)))` for a bad row
    /// (the import goes on), `Ok(None)` at the end, `Err` for I/O failure.
    ///
    /// Records whose fields are all blank (Excel's trailing `,,,,` lines) are skipped but
    /// still advance the row number, so numbers keep matching what the creator's sheet shows.
    pub async fn next_row(&mut self) -> Result<Option<Result<FanRow, RowError>>, FileError> {
        loop {
            let more = self
                .csv
                .read_byte_record(&mut self.record)
                .await
                .map_err(csv_error)?;
            if !more {
                return Ok(None);
            }
            self.row += 1;
            let blank = |f: &[u8]| std::str::from_utf8(f).is_ok_and(|t| t.trim().is_empty());
            if self.record.iter().all(blank) {
                continue;
            }
            let row = self.row;
            return Ok(Some(
                self.map_record().map_err(|error| RowError { row, error }),
            ));
        }
    }

    /// Which header each field was matched from, for logs: e.g.
    /// `[("handle","Username"),("spent","Total Spent")]`.
    pub fn mapping(&self) -> Vec<(&'static str, String)> {
        FIELDS
            .iter()
            .zip(&self.columns)
            .filter_map(|((_, name, _), column)| column.as_ref().map(|c| (*name, c.header.clone())))
            .collect()
    }

    /// The trimmed, non-empty text of one field of the current record.
    fn cell(&self, field: Field) -> Result<Option<(&str, &str)>, String> {
        let Some(column) = &self.columns[field as usize] else {
            return Ok(None);
        };
        let Some(bytes) = self.record.get(column.index) else {
            return Ok(None);
        };
        let text = std::str::from_utf8(bytes).map_err(|_| {
            format!(
                "row is not valid UTF-8 (column '{}'); save the file as CSV UTF-8",
                column.header
            )
        })?;
        let text = text.trim();
        Ok((!text.is_empty()).then_some((text, column.header.as_str())))
    }

    /// Validates every mapped field of the current record, reporting all problems at once so
    /// the creator can fix a row in one go.
    fn map_record(&self) -> Result<FanRow, String> {
        // Decode first: a row with bytes that are not UTF-8 is not worth validating further.
        let username = self.cell(Field::Handle)?;
        let name = self.cell(Field::Name)?;
        let email = self.cell(Field::Email)?;
        let tier = self.cell(Field::Tier)?;
        let spent = self.cell(Field::Spent)?;
        let last_seen = self.cell(Field::LastSeen)?;

        let mut errors = Vec::new();
        let name = name.map(|(v, header)| (fold_breaks(v), header));
        let handle = keep(
            &mut errors,
            row_handle(username.map(|u| u.0), name.as_ref().map(|n| n.0.as_ref())),
        );
        let name = keep(
            &mut errors,
            name.map(|(v, header)| Line::parse(&v, NAME_MAX).map_err(|e| format!("{header}: {e}")))
                .transpose(),
        )
        .flatten();
        let email = keep(
            &mut errors,
            email
                .map(|(v, _)| {
                    Email::parse(v).map_err(|e| format!("invalid email: '{}' {e}", shorten(v)))
                })
                .transpose(),
        )
        .flatten();
        let tier = keep(
            &mut errors,
            tier.map(|(v, header)| Line::parse(v, TIER_MAX).map_err(|e| format!("{header}: {e}")))
                .transpose(),
        )
        .flatten();
        let value_cents = keep(
            &mut errors,
            spent
                .map(|(v, header)| parse_money(v).map_err(|e| format!("{header}: {e}")))
                .transpose(),
        )
        .flatten()
        .flatten();
        let last_seen_at = keep(
            &mut errors,
            last_seen
                .map(|(v, header)| parse_date(v).map_err(|e| format!("{header}: {e}")))
                .transpose(),
        )
        .flatten()
        .flatten();

        match handle {
            Some(handle) if errors.is_empty() => Ok(FanRow {
                row: self.row,
                handle,
                name,
                email,
                tier,
                value_cents,
                last_seen_at,
            }),
            _ => Err(errors.join("; ")),
        }
    }
}

/// The value, or `None` after noting why it was refused.
fn keep<T>(errors: &mut Vec<String>, result: Result<T, String>) -> Option<T> {
    result.map_err(|e| errors.push(e)).ok()
}

/// Reads up to [`SNIFF_LEN`] bytes, looping over short reads; `true` when the stream ended.
async fn read_window<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<(Vec<u8>, bool)> {
    let mut window = Vec::with_capacity(SNIFF_LEN);
    while window.len() < SNIFF_LEN {
        let n = (&mut *reader)
            .take((SNIFF_LEN - window.len()) as u64)
            .read_buf(&mut window)
            .await?;
        if n == 0 {
            return Ok((window, true));
        }
    }
    Ok((window, false))
}

/// Excel writes and honours a first line `sep=;` naming the delimiter; Excel itself hides that
/// line, so it is dropped here too. Returns the delimiter and the line's length in bytes.
fn excel_sep_line(head: &[u8]) -> Option<(u8, usize)> {
    let rest = head.strip_prefix(b"sep=")?;
    let (&delimiter, rest) = rest.split_first()?;
    let eol = match rest {
        [b'\r', b'\n', ..] => 2,
        [b'\n', ..] => 1,
        _ => return None,
    };
    (delimiter.is_ascii() && delimiter != b'"').then_some((delimiter, 5 + eol))
}

/// The delimiter among `,`, `;` and tab that occurs most in the first non-blank line, outside
/// double quotes (so a quoted `"Doe, John"` header does not vote). Ties and no votes give `,`.
fn sniff_delimiter(head: &[u8]) -> u8 {
    let mut counts = [(b',', 0usize), (b';', 0), (b'\t', 0)];
    let mut in_quotes = false;
    let mut line_has_text = false;
    for &b in head {
        match b {
            b'"' => {
                in_quotes = !in_quotes;
                line_has_text = true;
            }
            b'\n' | b'\r' if !in_quotes => {
                if line_has_text {
                    break;
                }
            }
            _ if in_quotes => {}
            _ => {
                if let Some(count) = counts.iter_mut().find(|(d, _)| *d == b) {
                    count.1 += 1;
                }
                line_has_text |= !b.is_ascii_whitespace() || b == b'\t';
            }
        }
    }
    // `max_by_key` keeps the last maximum; scan in reverse so the first listed wins ties.
    counts
        .iter()
        .rev()
        .max_by_key(|(_, n)| *n)
        .filter(|(_, n)| *n > 0)
        .map_or(b',', |(d, _)| *d)
}

/// Assigns each field the first column whose header matches one of its aliases.
fn map_columns(headers: &[String]) -> [Option<Column>; FIELD_COUNT] {
    let mut columns: [Option<Column>; FIELD_COUNT] = Default::default();
    for (index, header) in headers.iter().enumerate() {
        let key = normalize_header(header);
        if key.is_empty() {
            continue;
        }
        for (slot, (_, _, aliases)) in columns.iter_mut().zip(FIELDS.iter()) {
            if slot.is_none() && aliases.iter().any(|a| normalize_header(a) == key) {
                *slot = Some(Column {
                    index,
                    header: header.clone(),
                });
            }
        }
    }
    columns
}

/// The fan's handle: the username cell if there is one, else one derived from the display
/// name (exports from some tools only carry names).
fn row_handle(username: Option<&str>, name: Option<&str>) -> Result<Handle, String> {
    match (username, name) {
        (Some(username), _) => Handle::parse(username)
            .map_err(|e| format!("invalid username: '{}' {e}", shorten(username))),
        (None, Some(name)) => {
            let derived = handle_from_name(name);
            if derived.is_empty() {
                return Err(format!(
                    "no username, and display name '{}' has no letters or digits to make one",
                    shorten(name)
                ));
            }
            Handle::parse(&derived).map_err(|e| format!("invalid username: '{derived}' {e}"))
        }
        (None, None) => Err("no username or display name".to_owned()),
    }
}

/// `John  Doe!` -> `john_doe`: lower case, each run of characters a handle cannot hold
/// becomes one `_`, no `_` at the ends, cut to [`Handle::MAX_LEN`] so long names still import.
fn handle_from_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() || matches!(c, '_' | '.' | '-') {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let cut: String = out
        .trim_matches('_')
        .chars()
        .take(Handle::MAX_LEN)
        .collect();
    cut.trim_end_matches('_').to_owned()
}

fn csv_error(e: csv_async::Error) -> FileError {
    match e.into_kind() {
        csv_async::ErrorKind::Io(e) => FileError::Io(e),
        // Byte records in flexible mode raise nothing else; keep the detail if one appears.
        other => FileError::Io(io::Error::other(format!("{other:?}"))),
    }
}

/// A display name from an export may span lines (a quoted cell holding a line break): each line
/// break or tab, with the spaces around it, becomes one space, and the row imports. Other
/// control characters stay, and the name is refused for them.
fn fold_breaks(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.contains(['\r', '\n', '\t']) {
        return std::borrow::Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len());
    let mut gap = false;
    for c in name.chars() {
        if matches!(c, '\r' | '\n' | '\t') {
            gap = true;
            continue;
        }
        if gap {
            if c == ' ' {
                continue;
            }
            out.truncate(out.trim_end_matches(' ').len());
            if !out.is_empty() {
                out.push(' ');
            }
            gap = false;
        }
        out.push(c);
    }
    std::borrow::Cow::Owned(out)
}

/// Caps user text echoed back in messages.
fn shorten(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut cut: String = s.chars().take(MAX).collect();
        cut.push('…');
        cut
    }
}

// ---------------------------------------------------------------------------------------------
// Money
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Dates
// ---------------------------------------------------------------------------------------------

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
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use proptest::prelude::*;
    use tokio::io::ReadBuf;

    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    type Parsed = (Vec<FanRow>, Vec<RowError>, Vec<(&'static str, String)>);

    /// Reads everything: the rows, the row errors, and the mapping.
    async fn read_all<R: AsyncRead + Unpin + Send>(reader: R) -> Result<Parsed, FileError> {
        let mut csv = FanCsvReader::open(reader).await?;
        let mapping = csv.mapping();
        let (mut rows, mut errors) = (Vec::new(), Vec::new());
        while let Some(row) = csv.next_row().await? {
            match row {
                Ok(row) => rows.push(row),
                Err(e) => errors.push(e),
            }
        }
        Ok((rows, errors, mapping))
    }

    fn parse_bytes(bytes: impl Into<Vec<u8>>) -> Result<Parsed, FileError> {
        rt().block_on(read_all(io::Cursor::new(bytes.into())))
    }

    fn cents(n: i64) -> Option<Cents> {
        Some(Cents::new(n).unwrap())
    }

    fn date(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// Hands out at most `step` bytes per read, like a slow upload stream.
    struct Trickle {
        data: io::Cursor<Vec<u8>>,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let step = self.step.min(buf.remaining());
            let mut small = vec![0; step];
            let mut small_buf = ReadBuf::new(&mut small);
            let poll = Pin::new(&mut self.data).poll_read(cx, &mut small_buf);
            buf.put_slice(small_buf.filled());
            poll
        }
    }

    /// Serves `ok` bytes, then fails: a dropped connection mid-upload.
    struct FailAfter {
        data: io::Cursor<Vec<u8>>,
        ok: usize,
    }

    impl AsyncRead for FailAfter {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let left = self.ok.saturating_sub(self.data.position() as usize);
            if left == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "connection reset",
                )));
            }
            let mut small = vec![0; left.min(buf.remaining())];
            let mut small_buf = ReadBuf::new(&mut small);
            let poll = Pin::new(&mut self.data).poll_read(cx, &mut small_buf);
            buf.put_slice(small_buf.filled());
            poll
        }
    }

    const SPEC_SAMPLE: &str = "Username,Display Name,Email,Subscription Tier,Total Spent,Last Seen\n\
        johndoe,John Doe,john@example.com,Premium,$500.00,2025-11-01\n\
        janedoe,Jane Doe,jane@example.com,Basic,$100.00,2025-10-30\n";

    #[test]
    fn spec_sample_maps_to_two_rows() {
        let (rows, errors, mapping) = parse_bytes(SPEC_SAMPLE).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(rows.len(), 2);
        let [john, jane] = &rows[..] else {
            unreachable!()
        };
        assert_eq!(john.row, 2);
        assert_eq!(john.handle.as_str(), "@johndoe");
        assert_eq!(john.name.as_ref().unwrap().as_str(), "John Doe");
        assert_eq!(john.email.as_ref().unwrap().as_str(), "john@example.com");
        assert_eq!(john.tier.as_ref().unwrap().as_str(), "Premium");
        assert_eq!(john.value_cents, cents(50_000));
        assert_eq!(john.last_seen_at, Some(date("2025-11-01T00:00:00Z")));
        assert_eq!(jane.row, 3);
        assert_eq!(jane.handle.as_str(), "@janedoe");
        assert_eq!(jane.tier.as_ref().unwrap().as_str(), "Basic");
        assert_eq!(jane.value_cents, cents(10_000));
        assert_eq!(jane.last_seen_at, Some(date("2025-10-30T00:00:00Z")));
        assert_eq!(
            mapping,
            [
                ("handle", "Username".to_owned()),
                ("name", "Display Name".to_owned()),
                ("email", "Email".to_owned()),
                ("tier", "Subscription Tier".to_owned()),
                ("spent", "Total Spent".to_owned()),
                ("last_seen", "Last Seen".to_owned()),
            ]
        );
    }

    #[test]
    fn bom_semicolons_and_eu_money() {
        let file = "\u{feff}Username;Display Name;Total Spent;Last Seen\r\n\
            anna;Anna Müller;1.234,56 €;01.11.2025\r\n\
            bert;Bert;12,50;15.10.2025\r\n";
        let (rows, errors, mapping) = parse_bytes(file).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(mapping[0], ("handle", "Username".to_owned()));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].handle.as_str(), "@anna");
        assert_eq!(rows[0].name.as_ref().unwrap().as_str(), "Anna Müller");
        assert_eq!(rows[0].value_cents, cents(123_456));
        assert_eq!(rows[0].last_seen_at, Some(date("2025-11-01T00:00:00Z")));
        assert_eq!(rows[1].value_cents, cents(1_250));
        assert_eq!(rows[1].last_seen_at, Some(date("2025-10-15T00:00:00Z")));
    }

    #[test]
    fn tab_delimited() {
        let file = "username\tname\tspent\n\
            tom\tTom, Jr.\t$1,000\n";
        let (rows, errors, _) = parse_bytes(file).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].handle.as_str(), "@tom");
        assert_eq!(rows[0].name.as_ref().unwrap().as_str(), "Tom, Jr.");
        assert_eq!(rows[0].value_cents, cents(100_000));
    }

    #[test]
    fn header_variants_are_recognised() {
        let file = "Notes,Fan,EMAIL_ADDRESS,Lifetime Spend,last-active,PLAN\n\
            hi,@Kim,kim@example.com,12,11/01/2025 3:04 PM,VIP\n";
        let (rows, errors, mapping) = parse_bytes(file).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            mapping,
            [
                ("handle", "Fan".to_owned()),
                ("email", "EMAIL_ADDRESS".to_owned()),
                ("tier", "PLAN".to_owned()),
                ("spent", "Lifetime Spend".to_owned()),
                ("last_seen", "last-active".to_owned()),
            ]
        );
        let row = &rows[0];
        assert_eq!(row.handle.as_str(), "@kim");
        assert_eq!(row.name, None);
        assert_eq!(row.email.as_ref().unwrap().as_str(), "kim@example.com");
        assert_eq!(row.value_cents, cents(1_200));
        assert_eq!(row.last_seen_at, Some(date("2025-11-01T15:04:00Z")));
    }

    #[test]
    fn first_matching_column_wins() {
        let file = "User,Username,Name,Full Name\nfirst,second,Ann,Ann Other\n";
        let (rows, _, mapping) = parse_bytes(file).unwrap();
        assert_eq!(mapping[0], ("handle", "User".to_owned()));
        assert_eq!(mapping[1], ("name", "Name".to_owned()));
        assert_eq!(rows[0].handle.as_str(), "@first");
        assert_eq!(rows[0].name.as_ref().unwrap().as_str(), "Ann");
    }

    #[test]
    fn fields_are_listed_in_enum_order() {
        for (i, (field, _, _)) in FIELDS.iter().enumerate() {
            assert_eq!(*field as usize, i);
        }
    }

    #[test]
    fn aliases_belong_to_one_field_each() {
        let mut seen = std::collections::HashMap::new();
        for (field, _, aliases) in FIELDS {
            for alias in aliases {
                let owner = *seen.entry(normalize_header(alias)).or_insert(field);
                assert_eq!(owner, field, "{alias} is claimed by two fields");
            }
        }
    }

    #[test]
    fn quoted_newlines_quotes_and_delimiters_keep_row_numbers() {
        let file = "username,name,notes,spent\n\
            a,\"Doe, \"\"Johnny\"\"\",\"line one\nline two\n\nline four\",\"1,234.50\"\n\
            b,Bee,plain,2\n";
        let (rows, errors, _) = parse_bytes(file).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].row, 2);
        assert_eq!(rows[0].name.as_ref().unwrap().as_str(), "Doe, \"Johnny\"");
        assert_eq!(rows[0].value_cents, cents(123_450));
        assert_eq!(rows[1].row, 3);
        assert_eq!(rows[1].handle.as_str(), "@b");
    }

    #[test]
    fn bad_email_is_a_row_error_and_the_import_goes_on() {
        let file = "username,email\n\
            good,good@example.com\n\
            bad,not-an-email\n\
            next,next@example.com\n";
        let (rows, errors, _) = parse_bytes(file).unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].row, 3);
        assert!(
            errors[0].error.starts_with("invalid email: "),
            "{}",
            errors[0].error
        );
        assert_eq!(
            rows.iter()
                .map(|r| (r.row, r.handle.as_str()))
                .collect::<Vec<_>>(),
            [(2, "@good"), (4, "@next")]
        );
    }

    #[test]
    fn row_errors_list_every_problem_and_name_the_column() {
        let long = "x".repeat(NAME_MAX + 1);
        let file =
            format!("username,Display Name,Tier,Spent,Last Seen\nok,{long},Gold,-5,someday\n");
        let (rows, errors, _) = parse_bytes(file).unwrap();
        assert!(rows.is_empty());
        let error = &errors[0].error;
        assert!(
            error.contains("Display Name: must be at most 200 characters"),
            "{error}"
        );
        assert!(error.contains("Spent: negative amount"), "{error}");
        assert!(
            error.contains("Last Seen: unparseable date 'someday'"),
            "{error}"
        );
        let tier = format!("username,tier\nok,{}\n", "t".repeat(TIER_MAX + 1));
        let (_, errors, _) = parse_bytes(tier).unwrap();
        assert_eq!(errors[0].error, "tier: must be at most 50 characters");
    }

    #[test]
    fn line_breaks_and_tabs_in_a_display_name_fold_to_spaces_and_the_row_imports() {
        let file = "Username,Display Name\n\
            ann,\"Ann\r\n  Smith\"\n\
            bo,\"Bo\tJones \n\"\n\
            ,\"Cy\nDee\"\n\
            dan,\"Dan\u{7}\"\n";
        let (rows, errors, _) = parse_bytes(file).unwrap();
        let names: Vec<_> = rows
            .iter()
            .map(|r| (r.handle.as_str(), r.name.as_ref().unwrap().as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("@ann", "Ann Smith"),
                ("@bo", "Bo Jones"),
                ("@cy_dee", "Cy Dee")
            ]
        );
        // Any other control character is still refused, with the row's number.
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].row, 5);
        assert!(errors[0].error.contains("control characters"), "{errors:?}");
    }

    #[test]
    fn handles_are_normalised_or_derived_from_the_display_name() {
        let file = "username,display name\n\
            @JohnDoe,John\n\
            ,Mary-Jane  O'Neil!\n\
            ,\n\
            ,★★\n\
            john doe,John\n\
            ,=1+1\n";
        let (rows, errors, _) = parse_bytes(file).unwrap();
        let handles: Vec<_> = rows.iter().map(|r| (r.row, r.handle.as_str())).collect();
        // Row 4 is all blank: skipped, yet the next rows keep their spreadsheet numbers.
        assert_eq!(
            handles,
            [(2, "@johndoe"), (3, "@mary-jane_o_neil"), (7, "@1_1")]
        );
        assert_eq!(rows[2].name.as_ref().unwrap().as_str(), "=1+1");
        let errors: Vec<_> = errors.iter().map(|e| (e.row, e.error.as_str())).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].0, 5);
        assert!(
            errors[0]
                .1
                .starts_with("no username, and display name '★★'")
        );
        assert_eq!(errors[1].0, 6);
        assert!(
            errors[1]
                .1
                .starts_with("invalid username: 'john doe' may hold only")
        );
    }

    #[test]
    fn a_row_with_neither_username_nor_name_is_refused() {
        let file = "username,name,email\n,,x@example.com\n";
        let (_, errors, _) = parse_bytes(file).unwrap();
        assert_eq!(
            errors,
            [RowError {
                row: 2,
                error: "no username or display name".to_owned()
            }]
        );
    }

    #[test]
    fn long_display_names_make_handles_cut_to_the_limit() {
        let name = format!("{} {}", "a".repeat(60), "b".repeat(60));
        let file = format!("name\n{name}\n");
        let (rows, errors, _) = parse_bytes(file).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let handle = rows[0].handle.as_str();
        assert_eq!(handle.chars().count(), Handle::MAX_LEN + 1);
        assert!(handle.starts_with(&format!("@{}_bbb", "a".repeat(60))));
    }

    #[test]
    fn formula_looking_values_are_stored_verbatim() {
        let file = "username,name,tier\n\
            a,=HYPERLINK(\"http://x\";\"y\"),+tier\n\
            b,-2+3,@SUM(A1)\n\
            c,@bob,=1\n";
        let (rows, errors, _) = parse_bytes(file).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let got: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.name.as_ref().unwrap().as_str(),
                    r.tier.as_ref().unwrap().as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("=HYPERLINK(\"http://x\";\"y\")", "+tier"),
                ("-2+3", "@SUM(A1)"),
                ("@bob", "=1"),
            ]
        );
    }

    #[test]
    fn empty_and_blank_files_are_empty() {
        for file in [
            &b""[..],
            b"\xEF\xBB\xBF",
            b"  \r\n\t\n",
            b"\xEF\xBB\xBF\n\n",
        ] {
            let err = parse_bytes(file).err().unwrap();
            assert!(matches!(err, FileError::Empty), "{file:?}: {err:?}");
        }
        // More blank space than one sniff window is still empty.
        let err = parse_bytes(vec![b'\n'; SNIFF_LEN * 2 + 7]).err().unwrap();
        assert!(matches!(err, FileError::Empty), "{err:?}");
    }

    #[test]
    fn binary_and_non_utf8_files_are_not_text() {
        // A deterministic pseudo-random blob with NULs, like an image or a zip.
        let mut x: u32 = 0x2545_f491;
        let garbage: Vec<u8> = (0..4096)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i % 97 == 0 { 0 } else { x as u8 }
            })
            .collect();
        assert!(matches!(parse_bytes(garbage), Err(FileError::NotText)));
        // UTF-16 (Excel's "Unicode text") is full of NULs.
        let utf16: Vec<u8> = "\u{feff}username\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert!(matches!(parse_bytes(utf16), Err(FileError::NotText)));
        // Windows-1252 "Müller".
        let latin1 = b"username,name\nm,M\xFCller\n".to_vec();
        assert!(matches!(parse_bytes(latin1), Err(FileError::NotText)));
    }

    #[test]
    fn a_multibyte_char_cut_by_the_sniff_window_is_fine() {
        let mut file = String::from("username,name\n");
        let mut n = 0;
        while file.len() < SNIFF_LEN - 50 {
            file.push_str(&format!("u{n},N\n"));
            n += 1;
        }
        // `x…x,é`: the two bytes of 'é' sit at SNIFF_LEN - 1 and SNIFF_LEN.
        let pad = SNIFF_LEN - 2 - file.len();
        file.push_str(&format!("{},é\n", "x".repeat(pad)));
        assert!(
            !file.is_char_boundary(SNIFF_LEN),
            "'é' must straddle the window"
        );
        let (rows, errors, _) = parse_bytes(file).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(rows.last().unwrap().name.as_ref().unwrap().as_str(), "é");
    }

    #[test]
    fn a_header_only_file_has_no_rows() {
        let (rows, errors, mapping) = parse_bytes("Username,Email\r\n").unwrap();
        assert!(rows.is_empty() && errors.is_empty());
        assert_eq!(mapping.len(), 2);
    }

    #[test]
    fn a_header_without_username_or_name_is_refused() {
        match parse_bytes("Email,Spent,,Notes\nx@example.com,12,,\n") {
            Err(FileError::NoUsableHeader { found }) => {
                assert_eq!(found, ["Email", "Spent", "Notes"]);
            }
            other => panic!("{other:?}"),
        }
        // A file that starts with data instead of a header; the list is capped.
        let wide = (0..30)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(",");
        match parse_bytes(format!("{wide}\n")) {
            Err(e @ FileError::NoUsableHeader { .. }) => {
                let FileError::NoUsableHeader { found } = &e else {
                    unreachable!()
                };
                assert_eq!(found.len(), MAX_FOUND_HEADERS);
                assert!(e.to_string().contains("'c0', 'c1'"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn file_errors_read_as_sentences() {
        let errors = [
            FileError::Empty,
            FileError::NotText,
            FileError::NoUsableHeader { found: vec![] },
            FileError::Io(io::Error::other("boom")),
        ];
        for e in errors {
            let text = e.to_string();
            assert!(text.ends_with('.'), "{text}");
            assert!(text.chars().next().unwrap().is_uppercase(), "{text}");
        }
    }

    #[test]
    fn bad_utf8_in_one_row_is_a_row_error() {
        let mut file = b"username,name,notes\na,Ann,x\nb,B\xFF,x\nc,Cy,\xFF\n".to_vec();
        // Push the bad bytes past the sniff window so only the row check can see them.
        let pad: Vec<u8> = (0..2000)
            .flat_map(|i| format!("p{i},P,x\n").into_bytes())
            .collect();
        file.splice(20..20, pad);
        let (rows, errors, _) = parse_bytes(file).unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].row, 2003);
        assert!(errors[0].error.starts_with("row is not valid UTF-8"));
        // Bad bytes in an ignored column do not cost the row.
        assert_eq!(rows.last().unwrap().handle.as_str(), "@c");
        assert_eq!(rows.last().unwrap().row, 2004);
    }

    #[test]
    fn a_large_file_streams_every_row() {
        const ROWS: u64 = 100_000;
        let mut file = String::from("Username;Display Name;Email;Total Spent;Last Seen\n");
        for i in 0..ROWS {
            file.push_str(&format!(
                "user{i};User {i};user{i}@example.com;{},{:02} €;2025-11-01 12:00:00\n",
                i,
                i % 100
            ));
        }
        assert!(file.len() > 10 * SNIFF_LEN);
        rt().block_on(async {
            let mut csv = FanCsvReader::open(io::Cursor::new(file.into_bytes()))
                .await
                .unwrap();
            let mut count = 0;
            while let Some(row) = csv.next_row().await.unwrap() {
                let row = row.unwrap();
                assert_eq!(row.row, count + 2);
                assert_eq!(row.value_cents, cents((count * 100 + count % 100) as i64));
                count += 1;
            }
            assert_eq!(count, ROWS);
        });
    }

    #[test]
    fn slow_streams_are_sniffed_whole() {
        let file = "\u{feff}Username;Display Name;Total Spent\nann;Ann;1.234,56\nbo;Bo;7\n";
        for step in [1, 2, 3, 7] {
            let reader = Trickle {
                data: io::Cursor::new(file.as_bytes().to_vec()),
                step,
            };
            let (rows, errors, _) = rt().block_on(read_all(reader)).unwrap();
            assert!(errors.is_empty(), "{errors:?}");
            assert_eq!(rows.len(), 2, "step {step}");
            assert_eq!(rows[0].value_cents, cents(123_456));
        }
    }

    #[test]
    fn a_read_failure_mid_file_is_an_io_error() {
        let mut file = String::from("username\n");
        for i in 0..5000 {
            file.push_str(&format!("u{i}\n"));
        }
        let reader = FailAfter {
            data: io::Cursor::new(file.into_bytes()),
            ok: 20_000,
        };
        let err = rt().block_on(read_all(reader)).err().unwrap();
        assert!(
            matches!(&err, FileError::Io(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{err:?}"
        );
    }

    #[test]
    fn excel_sep_line_sets_the_delimiter() {
        let (rows, errors, _) = parse_bytes("sep=;\r\nusername;spent\nann;1,5\n").unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(rows[0].row, 2);
        assert_eq!(rows[0].value_cents, cents(150));
    }

    #[test]
    fn delimiter_sniffing_ignores_quoted_text() {
        assert_eq!(sniff_delimiter(b"\"a,b,c\";\"d\";e\nx,y,z,w,v"), b';');
        assert_eq!(sniff_delimiter(b"\n\na\tb\tc\n"), b'\t');
        assert_eq!(sniff_delimiter(b"username"), b',');
        assert_eq!(sniff_delimiter(b"a;b,c"), b',');
    }

    #[test]
    fn trailing_empty_records_are_skipped() {
        let file = "username,name,spent\nann,Ann,1\n,,\n, ,\n,,,,\n";
        let (rows, errors, _) = parse_bytes(file).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(rows.len(), 1);
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
        fn money_and_dates_never_panic(raw in "\\PC{0,30}") {
            let _ = parse_money(&raw);
            let _ = parse_date(&raw);
        }

        #[test]
        fn quoted_cells_round_trip_with_the_right_row_numbers(
            names in proptest::collection::vec("[a-zA-Z ,;\"'=+@-]{1,20}", 1..20),
            notes in proptest::collection::vec("[a-z,\"\n\r]{0,12}", 20),
        ) {
            let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
            let mut file = String::from("Notes,Username,Display Name\n");
            for (i, name) in names.iter().enumerate() {
                file.push_str(&format!("{},u{i},{}\n", quote(&notes[i]), quote(name)));
            }
            let (rows, errors, _) = parse_bytes(file).unwrap();
            prop_assert!(errors.is_empty(), "{:?}", errors);
            prop_assert_eq!(rows.len(), names.len());
            for (i, (row, name)) in rows.iter().zip(&names).enumerate() {
                prop_assert_eq!(row.row, i as u64 + 2);
                let want = Some(name.trim()).filter(|n| !n.is_empty());
                prop_assert_eq!(row.name.as_ref().map(Line::as_str), want);
            }
        }
    }
}
