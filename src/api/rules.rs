//! Request rules as types. Each rule's schema (the `pattern`, `maxLength`, bounds a client and
//! the contract run read in `/openapi.json`) and the parser the server holds requests to are
//! written side by side, once, here; every body field, header and query parameter under the
//! rule uses the type, so the document and the server cannot drift apart field by field. A
//! value that reaches a handler is already parsed (a [`Text`], an [`HttpUrl`], a [`Handle`]).
//!
//! The patterns are ECMA regexes (what JSON Schema uses) for exactly what the parsers accept:
//! `\s` there is not Rust's `char::is_whitespace` (what `str::trim` strips), so whitespace is
//! spelled out (`\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000`), and "a
//! control character" is `\x00-\x1f\x7f-\x9f`. The tests hold each pattern to its parser.

use std::{borrow::Cow, fmt, marker::PhantomData};

use fanqueue_jobs::{
    crm::{automations, campaigns, fans, messages, segments},
    db::Page,
    domain::{Handle, HttpUrl, Line, Platform, Tags, Text},
};
use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef},
    types::{ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type},
};
use serde::{Deserialize, Deserializer, de};
use serde_json::Value;

/// Whitespace as `str::trim` strips it (ECMA's `\s` is another set).
const SPACE: &str = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// Control characters.
const CONTROL: &str = r"\x00-\x1f\x7f-\x9f";
/// What a line never holds: control characters, U+FFFE and U+FFFF.
const NOT_IN_LINE: &str = r"\x00-\x1f\x7f-\x9f\ufffe\uffff";
/// What a text never holds: the same, but for tabs and line breaks.
const NOT_IN_TEXT: &str = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffe\uffff";

/// The pattern of [`Line::parse`] with `max` characters: one line, not blank, at most `max`
/// characters once trimmed.
fn line_pattern(max: usize) -> String {
    let inner = max.saturating_sub(2);
    format!(
        "^[{SPACE}]*[^{SPACE}{NOT_IN_LINE}](?:[^{NOT_IN_LINE}]{{0,{inner}}}[^{SPACE}{NOT_IN_LINE}])?[{SPACE}]*$"
    )
}

/// The pattern of [`Text::parse`] (its length is the schema's `maxLength`): not blank, no
/// control characters but tabs and line breaks.
fn text_pattern() -> String {
    format!("^[^{NOT_IN_TEXT}]*[^{SPACE}{NOT_IN_TEXT}][^{NOT_IN_TEXT}]*$")
}

/// One rule over a string: its schema and its parser.
pub trait Rule: 'static {
    /// What it parses to.
    type Value: Clone + fmt::Debug + Send + Sync;
    /// A name for the type in poem's registry (inline schemas; never a component).
    const NAME: &'static str;
    /// The schema of the raw string.
    fn schema() -> MetaSchema;
    /// The only way in: the value, or why the raw string breaks the rule.
    fn parse(raw: &str) -> Result<Self::Value, String>;
    /// The value written back (for poem's `ToJSON`, which request types must have).
    fn write(value: &Self::Value) -> &str;
}

/// A string in a request held to the rule `R`, parsed when the request is read: from a JSON
/// body (serde, so that a 400 names the field's path) or a header or query parameter (poem).
pub struct In<R: Rule>(pub R::Value, PhantomData<R>);

impl<R: Rule> In<R> {
    pub fn parse(raw: &str) -> Result<Self, String> {
        R::parse(raw).map(|v| In(v, PhantomData))
    }

    pub fn into_inner(self) -> R::Value {
        self.0
    }
}

impl<R: Rule> Clone for In<R> {
    fn clone(&self) -> Self {
        In(self.0.clone(), PhantomData)
    }
}

impl<R: Rule> fmt::Debug for In<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de, R: Rule> Deserialize<'de> for In<R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        In::parse(&raw).map_err(de::Error::custom)
    }
}

impl<R: Rule + Send + Sync> Type for In<R> {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        R::NAME.into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(R::schema()))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl<R: Rule + Send + Sync> ParseFromJSON for In<R> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(s)) => In::parse(&s).map_err(ParseError::custom),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl<R: Rule + Send + Sync> ParseFromParameter for In<R> {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        In::parse(value).map_err(ParseError::custom)
    }
}

impl<R: Rule + Send + Sync> ToJSON for In<R> {
    fn to_json(&self) -> Option<Value> {
        Some(Value::from(R::write(&self.0)))
    }
}

/// A rule under a domain parser: `$parse` is the only way in, the value writes back with
/// `as_str`, and `$schema` says the same for clients.
macro_rules! rule {
    ($(#[$doc:meta])* $ty:ident: $value:ty as $name:literal, schema: $schema:expr, parse: $parse:expr $(,)?) => {
        $(#[$doc])*
        pub struct $ty;

        impl Rule for $ty {
            type Value = $value;
            const NAME: &'static str = $name;

            fn schema() -> MetaSchema {
                $schema
            }

            fn parse(raw: &str) -> Result<$value, String> {
                ($parse)(raw).map_err(|e| e.to_string())
            }

            fn write(value: &$value) -> &str {
                value.as_str()
            }
        }
    };
}

/// A string schema with `pattern` and, when given, `maxLength`.
fn string(pattern: String, max_length: Option<usize>) -> MetaSchema {
    MetaSchema {
        pattern: Some(pattern),
        max_length,
        ..MetaSchema::new("string")
    }
}

rule!(
    /// A message's text (sends, campaigns, conversation messages): not blank, at most 5,000
    /// characters, no control characters but line breaks and tabs, no U+FFFE/U+FFFF.
    MessageText: Text as "string(message text)",
    schema: MetaSchema {
        description: Some(
            "Not blank, at most 5,000 characters, no control characters but line breaks and tabs.",
        ),
        ..string(text_pattern(), Some(messages::TEXT_MAX))
    },
    parse: |raw| Text::parse(raw, messages::TEXT_MAX),
);

rule!(
    /// A fan's notes: free text as a message's, up to 10,000 characters.
    FanNotes: Text as "string(notes)",
    schema: string(text_pattern(), Some(fans::NOTES_MAX)),
    parse: |raw| Text::parse(raw, fans::NOTES_MAX),
);

rule!(
    /// A fan's display name.
    FanName: Line as "string(fan name)",
    schema: string(line_pattern(fans::NAME_MAX), None),
    parse: |raw| Line::parse(raw, fans::NAME_MAX),
);

rule!(
    /// A campaign's name.
    CampaignName: Line as "string(campaign name)",
    schema: string(line_pattern(campaigns::NAME_MAX), None),
    parse: |raw| Line::parse(raw, campaigns::NAME_MAX),
);

rule!(
    /// An automation's name.
    AutomationName: Line as "string(automation name)",
    schema: string(line_pattern(automations::NAME_MAX), None),
    parse: |raw| Line::parse(raw, automations::NAME_MAX),
);

rule!(
    /// A segment's name.
    SegmentName: Line as "string(segment name)",
    schema: string(line_pattern(segments::NAME_MAX), None),
    parse: |raw| Line::parse(raw, segments::NAME_MAX),
);

rule!(
    /// One of a fan's tags (and the fan list's `tag` filter).
    FanTag: Line as "string(tag)",
    schema: string(line_pattern(Tags::MAX_LEN), None),
    parse: |raw| Line::parse(raw, Tags::MAX_LEN),
);

rule!(
    /// What the fan list's `q` looks for in handles and names.
    FanSearch: Line as "string(search)",
    schema: string(line_pattern(fans::SEARCH_MAX), None),
    parse: |raw| Line::parse(raw, fans::SEARCH_MAX),
);

rule!(
    /// A platform a client types: onlyfans, fansly or other, case and surrounding spaces aside.
    PlatformName: Platform as "string(platform)",
    schema: string(platform_pattern(), None),
    parse: Platform::parse_input,
);

/// Each platform's word with its letters in either case (JSON Schema has no flag for case).
fn platform_pattern() -> String {
    let words: Vec<String> = Platform::ALL
        .iter()
        .map(|p| {
            p.as_str()
                .chars()
                .map(|c| format!("[{}{}]", c.to_ascii_uppercase(), c))
                .collect()
        })
        .collect();
    format!("^[{SPACE}]*(?:{})[{SPACE}]*$", words.join("|"))
}

rule!(
    /// A media or attachment URL (and an avatar): an absolute http(s) URL with a host and no
    /// spaces, surrounding whitespace ignored.
    MediaUrl: HttpUrl as "string(http url)",
    schema: MetaSchema {
        description: Some("An absolute http(s) URL with a host, no spaces, at most 2048 bytes."),
        ..string(
            format!(
                "^[{SPACE}]*https?://[^/?#{SPACE}{CONTROL}][^{SPACE}{CONTROL}]*[{SPACE}]*$"
            ),
            None,
        )
    },
    parse: HttpUrl::parse,
);

rule!(
    /// A fan's handle on the platform: `@name` or `name`, 1 to 64 letters, digits, `_`, `.` or
    /// `-`, matched without case (surrounding whitespace ignored).
    FanHandle: Handle as "string(handle)",
    schema: MetaSchema {
        description: Some(
            "`@name` or `name`: 1 to 64 letters, digits, `_`, `.` or `-`, matched without case.",
        ),
        ..string(format!("^[{SPACE}]*@*[\\w.-]{{1,64}}[{SPACE}]*$"), None)
    },
    parse: Handle::parse,
);

rule!(
    /// `Idempotency-Key`: 1 to 255 printable ASCII characters, not starting or ending with a
    /// space (HTTP strips those from a header value anyway).
    IdempotencyKey: String as "string(idempotency key)",
    schema: string(r"^[!-~](?:[ -~]{0,253}[!-~])?$".to_owned(), None),
    parse: idempotency_key,
);

/// The longest `Idempotency-Key`.
pub const IDEMPOTENCY_KEY_MAX: usize = 255;

fn idempotency_key(raw: &str) -> Result<String, String> {
    let printable = |b: &u8| (0x20..0x7f).contains(b);
    let bytes = raw.as_bytes();
    if (1..=IDEMPOTENCY_KEY_MAX).contains(&bytes.len())
        && bytes.iter().all(printable)
        && bytes.first() != Some(&b' ')
        && bytes.last() != Some(&b' ')
    {
        Ok(raw.to_owned())
    } else {
        Err(format!(
            "must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters"
        ))
    }
}

/// Bounds of list endpoints.
pub const DEFAULT_PAGE: i64 = 50;
pub const MAX_PAGE: i64 = 200;

/// A page's `limit` query parameter: 1 to [`MAX_PAGE`] items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub i64);

/// A page's `offset` query parameter: items to skip, not negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offset(pub i64);

impl Limit {
    fn parse(n: i64) -> Result<Self, String> {
        if (1..=MAX_PAGE).contains(&n) {
            Ok(Limit(n))
        } else {
            Err(format!("must be between 1 and {MAX_PAGE}"))
        }
    }
}

impl Offset {
    fn parse(n: i64) -> Result<Self, String> {
        if n >= 0 {
            Ok(Offset(n))
        } else {
            Err("must not be negative".to_owned())
        }
    }
}

/// The page `limit` and `offset` ask for, with the defaults.
pub fn page(limit: Option<Limit>, offset: Option<Offset>) -> Page {
    Page {
        limit: limit.map_or(DEFAULT_PAGE, |l| l.0),
        offset: offset.map_or(0, |o| o.0),
    }
}

/// `Limit` and `Offset` as poem types: an integer schema with the parser's bounds.
macro_rules! page_param {
    ($ty:ident, $name:literal, $min:expr, $max:expr) => {
        impl Type for $ty {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> Cow<'static, str> {
                $name.into()
            }

            fn schema_ref() -> MetaSchemaRef {
                MetaSchemaRef::Inline(Box::new(MetaSchema {
                    minimum: $min,
                    maximum: $max,
                    ..MetaSchema::new_with_format("integer", "int64")
                }))
            }

            fn as_raw_value(&self) -> Option<&Self::RawValueType> {
                Some(self)
            }

            fn raw_element_iter<'a>(
                &'a self,
            ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
                Box::new(self.as_raw_value().into_iter())
            }
        }

        impl ParseFromParameter for $ty {
            fn parse_from_parameter(value: &str) -> ParseResult<Self> {
                let n: i64 = value
                    .parse()
                    .map_err(|_| ParseError::custom("must be a whole number"))?;
                $ty::parse(n).map_err(ParseError::custom)
            }
        }

        impl ParseFromJSON for $ty {
            fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
                let n = i64::parse_from_json(value).map_err(ParseError::propagate)?;
                $ty::parse(n).map_err(ParseError::custom)
            }
        }

        impl ToJSON for $ty {
            fn to_json(&self) -> Option<Value> {
                Some(Value::from(self.0))
            }
        }
    };
}

page_param!(Limit, "integer(limit)", Some(1.0), Some(MAX_PAGE as f64));
page_param!(Offset, "integer(offset)", Some(0.0), None);

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;

    /// The schema's pattern and the parser agree on every sample: what one accepts the other
    /// does. (The `regex` crate reads these ECMA patterns as a client does, but for `\w`,
    /// which is Unicode there and ASCII in ECMA: samples stay ASCII where `\w` is used.)
    fn agree<R: Rule>(samples: &[&str]) {
        let schema = R::schema();
        let pattern = Regex::new(schema.pattern.as_deref().unwrap()).unwrap();
        for s in samples {
            let by_schema =
                pattern.is_match(s) && schema.max_length.is_none_or(|max| s.chars().count() <= max);
            assert_eq!(
                by_schema,
                R::parse(s).is_ok(),
                "{}: {s:?} (schema says {by_schema})",
                R::NAME
            );
        }
    }

    #[test]
    fn each_rule_s_schema_and_parser_accept_the_same_strings() {
        let long = "x".repeat(5000);
        let too_long = "x".repeat(5001);
        agree::<MessageText>(&[
            "Hello!",
            " hi ",
            "a\nb",
            "\t",
            "",
            " ",
            "a\u{0}b",
            "a\u{7f}",
            "a\u{fffe}",
            &long,
            &too_long,
            "\u{3000}x",
        ]);
        agree::<MediaUrl>(&[
            "https://cdn.example.com/a.jpg",
            " http://x ",
            "ftp://x/y",
            "javascript:alert(1)",
            "https://",
            "https:///path",
            "https://a b",
            "https://a\u{85}b",
        ]);
        agree::<FanHandle>(&[
            "johndoe",
            "@JohnDoe",
            " @x ",
            "two words",
            "",
            "@",
            "a!",
            "@@x",
            "a.b-c_d",
        ]);
        let line = "x".repeat(200);
        let long_line = "x".repeat(201);
        let lines = [
            "Jane Doe",
            "  Jane  ",
            "a",
            "",
            "   ",
            "a\nb",
            "a\tb",
            "\u{3000}a\u{85}",
            "a\u{fffe}",
            "a\u{9f}",
            "é ü",
            &line,
            &long_line,
        ];
        agree::<FanName>(&lines);
        agree::<CampaignName>(&lines);
        agree::<SegmentName>(&lines);
        agree::<AutomationName>(&lines);
        agree::<FanTag>(&lines);
        agree::<FanTag>(&[&"t".repeat(50), &"t".repeat(51), " vip "]);
        agree::<FanSearch>(&[&"q".repeat(100), &"q".repeat(101), " jane "]);
        let notes = "n".repeat(10_000);
        let long_notes = "n".repeat(10_001);
        agree::<FanNotes>(&[
            "Met at a show.\nLikes cats.",
            "",
            " \n ",
            "a\u{1}",
            &notes,
            &long_notes,
        ]);
        agree::<PlatformName>(&[
            "onlyfans",
            " OnlyFans ",
            "FANSLY",
            "other",
            "x",
            "",
            "only fans",
            "fansly2",
        ]);
        agree::<IdempotencyKey>(&[
            "k",
            "key-1",
            "a b",
            " a",
            "a ",
            "",
            "é",
            &"k".repeat(255),
            &"k".repeat(256),
        ]);
    }

    #[test]
    fn pages_are_bounded_and_default_to_50_from_0() {
        let default = page(None, None);
        assert_eq!((default.limit, default.offset), (50, 0));
        assert!(Limit::parse_from_parameter("0").is_err());
        assert!(Limit::parse_from_parameter("201").is_err());
        assert!(Limit::parse_from_parameter("x").is_err());
        assert_eq!(Limit::parse_from_parameter("200").unwrap(), Limit(200));
        assert!(Offset::parse_from_parameter("-1").is_err());
        assert_eq!(Offset::parse_from_parameter("0").unwrap(), Offset(0));
    }
}
