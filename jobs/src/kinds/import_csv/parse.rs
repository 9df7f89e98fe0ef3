//! Streaming parser for creators' fan-export CSV files.
//!
//! Real exports come from spreadsheets and platform tools, so they are messy: a BOM, `;` or tab
//! delimiters, headers spelled a dozen ways, money as `$1,234.50` or `1.234,56 €`, dates in US,
//! EU or ISO order. Everything is read record by record from an async reader, so the file is
//! never held whole in memory. A problem in one row is a [`RowError`] and the import goes on;
//! only whole-file problems are a [`FileError`].

use std::io;

use csv_async::{AsyncReader, AsyncReaderBuilder, ByteRecord};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader, Chain};

use super::{dates::parse_date, money::parse_money, text::shorten};
use crate::domain::{Email, Handle, Line};

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

#[cfg(test)]
mod tests;
