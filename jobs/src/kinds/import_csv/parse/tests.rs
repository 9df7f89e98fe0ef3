//! The fan-export reader's tests: files as creators' tools write them.

use std::pin::Pin;
use std::task::{Context, Poll};

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use tokio::io::ReadBuf;

use super::*;
use crate::domain::Cents;

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
    let file = format!("username,Display Name,Tier,Spent,Last Seen\nok,{long},Gold,-5,someday\n");
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

proptest! {
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
