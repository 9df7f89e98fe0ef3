//! Domain values parsed once at the edge. Each constructor is the only way in, so a value of
//! these types is valid wherever it travels; the storage layer never re-checks.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// U+FFFE and U+FFFF are not characters: SQS refuses a message holding one, and text
/// exports choke on them.
fn is_noncharacter(c: char) -> bool {
    matches!(c, '\u{FFFE}' | '\u{FFFF}')
}

/// Why a raw value was refused. The caller knows which field it came from and names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn invalid(reason: impl Into<String>) -> ParseError {
    ParseError(reason.into())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type)]
        #[sqlx(transparent)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// The creator: the `sub` of the caller's token. Every row belongs to one.
    UserId
);
id_type!(FanId);

impl UserId {
    /// The owner of the jobs fanqueue starts by itself (sweeps): no token has `sub` 0, and an
    /// operator sees them.
    pub const SYSTEM: UserId = UserId(0);
}
id_type!(ConversationId);
id_type!(MessageId);
id_type!(CampaignId);
id_type!(SegmentId);
id_type!(AutomationId);
id_type!(
    /// One fan going through one automation.
    EnrollmentId
);
id_type!(
    /// One occurrence of a campaign (a recurring campaign has one per tick).
    RunId
);

/// A value read back from the database that is not one of its type's words: the row was
/// written by something else (or a newer release), and pretending otherwise would hide it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?} (expected one of: {expected})")]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
    pub expected: String,
}

/// A closed set of words (statuses, kinds, platforms), as a schema or a client sees it: the
/// API publishes [`Words::all`] as an enum and reads a value with [`Words::from_word`], so the
/// list is written once, here, and never again at the edge (this crate knows nothing of the
/// API's schema library).
pub trait Words: Copy + Send + Sync + 'static {
    /// The set's name in a schema (`MessageStatus`).
    const NAME: &'static str;
    /// Every value, in the order the set declares them.
    fn all() -> &'static [Self];
    /// The value's word on the wire and in the database.
    fn word(self) -> &'static str;
    /// The value of a word; any other word is an error naming the set and the words.
    fn from_word(raw: &str) -> Result<Self, UnknownValue>;
}

/// A closed set of words stored as text (statuses, kinds, platforms): `as_str` writes it,
/// `parse` reads it back exactly, and decoding a row holding any other word is an error that
/// names the type and the word.
#[macro_export]
macro_rules! text_enum {
    ($(#[$doc:meta])* $vis:vis enum $name:ident as $what:literal {
        $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)?
    }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The value a stored word stands for; any other word is an error.
            pub fn parse(raw: &str) -> Result<Self, $crate::domain::UnknownValue> {
                match raw {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::domain::UnknownValue {
                        what: $what,
                        value: raw.to_owned(),
                        expected: [$($text),+].join(", "),
                    }),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::domain::Words for $name {
            const NAME: &'static str = stringify!($name);

            fn all() -> &'static [Self] {
                Self::ALL
            }

            fn word(self) -> &'static str {
                self.as_str()
            }

            fn from_word(raw: &str) -> Result<Self, $crate::domain::UnknownValue> {
                Self::parse(raw)
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = <::std::borrow::Cow<'de, str> as ::serde::Deserialize>::deserialize(d)?;
                $name::parse(&raw).map_err(::serde::de::Error::custom)
            }
        }

        impl ::sqlx::Type<::sqlx::Postgres> for $name {
            fn type_info() -> ::sqlx::postgres::PgTypeInfo {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &::sqlx::postgres::PgTypeInfo) -> bool {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::compatible(ty)
            }
        }

        impl ::sqlx::Encode<'_, ::sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut ::sqlx::postgres::PgArgumentBuffer,
            ) -> Result<::sqlx::encode::IsNull, ::sqlx::error::BoxDynError> {
                <&str as ::sqlx::Encode<::sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> ::sqlx::Decode<'r, ::sqlx::Postgres> for $name {
            fn decode(value: ::sqlx::postgres::PgValueRef<'r>) -> Result<Self, ::sqlx::error::BoxDynError> {
                let raw = <&str as ::sqlx::Decode<::sqlx::Postgres>>::decode(value)?;
                Ok($name::parse(raw)?)
            }
        }

        impl ::sqlx::Type<::sqlx::Sqlite> for $name {
            fn type_info() -> ::sqlx::sqlite::SqliteTypeInfo {
                <&str as ::sqlx::Type<::sqlx::Sqlite>>::type_info()
            }
            fn compatible(ty: &::sqlx::sqlite::SqliteTypeInfo) -> bool {
                <&str as ::sqlx::Type<::sqlx::Sqlite>>::compatible(ty)
            }
        }

        impl<'q> ::sqlx::Encode<'q, ::sqlx::Sqlite> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut <::sqlx::Sqlite as ::sqlx::Database>::ArgumentBuffer,
            ) -> Result<::sqlx::encode::IsNull, ::sqlx::error::BoxDynError> {
                <&str as ::sqlx::Encode<'q, ::sqlx::Sqlite>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> ::sqlx::Decode<'r, ::sqlx::Sqlite> for $name {
            fn decode(value: ::sqlx::sqlite::SqliteValueRef<'r>) -> Result<Self, ::sqlx::error::BoxDynError> {
                let raw = <&str as ::sqlx::Decode<::sqlx::Sqlite>>::decode(value)?;
                Ok($name::parse(raw)?)
            }
        }
    };
}

text_enum! {
    /// The platforms a fan can come from (SPEC section 3).
    pub enum Platform as "platform" {
        Onlyfans = "onlyfans",
        Fansly = "fansly",
        Other = "other",
    }
}

impl Platform {
    /// Reads a platform a client typed: spaces and case do not matter.
    pub fn parse_input(raw: &str) -> Result<Self, ParseError> {
        Self::parse(&raw.trim().to_ascii_lowercase())
            .map_err(|_| invalid("must be one of onlyfans, fansly, other"))
    }
}

/// A platform handle, kept as `@` + lower case so that `JohnDoe`, `@johndoe` and ` @JOHNDOE `
/// are one fan (platform usernames are case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Handle(String);

impl Handle {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let bare = raw.trim().trim_start_matches('@');
        if bare.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if bare.chars().count() > Self::MAX_LEN {
            return Err(invalid(format!(
                "must be at most {} characters",
                Self::MAX_LEN
            )));
        }
        if !bare
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(invalid(
                "may hold only letters, digits, '_', '.' and '-' after an optional '@'",
            ));
        }
        Ok(Handle(format!("@{}", bare.to_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A single line of human text (a fan's display name, a campaign name): trimmed, not empty,
/// bounded, no control characters (they break CSV exports and terminals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line(String);

impl Line {
    pub fn parse(raw: &str, max_chars: usize) -> Result<Self, ParseError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if s.chars().count() > max_chars {
            return Err(invalid(format!("must be at most {max_chars} characters")));
        }
        if s.chars().any(|c| c.is_control() || is_noncharacter(c)) {
            return Err(invalid(
                "must not contain control characters (or U+FFFE/U+FFFF)",
            ));
        }
        Ok(Line(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Free text (notes, message bodies): may span lines, bounded, not blank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(String);

impl Text {
    pub fn parse(raw: &str, max_chars: usize) -> Result<Self, ParseError> {
        if raw.trim().is_empty() {
            return Err(invalid("must not be empty"));
        }
        if raw.chars().count() > max_chars {
            return Err(invalid(format!("must be at most {max_chars} characters")));
        }
        if raw
            .chars()
            .any(|c| (c.is_control() && !matches!(c, '\n' | '\r' | '\t')) || is_noncharacter(c))
        {
            return Err(invalid(
                "must not contain control characters (or U+FFFE/U+FFFF)",
            ));
        }
        Ok(Text(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address per RFC 5322's addr-spec, as the `email_address` crate reads it, and
/// with a dotted domain (a bare `john@localhost` is never a fan's real address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub const MAX_LEN: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let s = raw.trim();
        if s.len() > Self::MAX_LEN {
            return Err(invalid(format!(
                "must be at most {} characters",
                Self::MAX_LEN
            )));
        }
        let parsed = email_address::EmailAddress::parse_with_options(
            s,
            email_address::Options::default().without_display_text(),
        )
        .map_err(|e| invalid(format!("is not a valid email address ({e})")))?;
        if !parsed.domain().contains('.') {
            return Err(invalid("is not a valid email address (domain has no dot)"));
        }
        Ok(Email(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An absolute http(s) URL (avatars, attachments). Anything else (`javascript:`, `file:`,
/// relative paths) is refused: these URLs are rendered by clients and fetched by the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(String);

impl HttpUrl {
    pub const MAX_LEN: usize = 2048;

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let s = raw.trim();
        if s.len() > Self::MAX_LEN {
            return Err(invalid(format!(
                "must be at most {} characters",
                Self::MAX_LEN
            )));
        }
        let rest = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
            .ok_or_else(|| invalid("must be an http:// or https:// URL"))?;
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if host.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("must be an absolute URL with a host and no spaces"));
        }
        Ok(HttpUrl(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Money in integer cents, never negative. Floats never touch money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Cents(i64);

impl TryFrom<i64> for Cents {
    type Error = ParseError;

    fn try_from(cents: i64) -> Result<Self, ParseError> {
        Cents::new(cents)
    }
}

impl From<Cents> for i64 {
    fn from(c: Cents) -> i64 {
        c.0
    }
}

impl Cents {
    /// A billion dollars: well above any fan's spend, well below i64 overflow in sums.
    pub const MAX: i64 = 100_000_000_000;

    pub fn new(cents: i64) -> Result<Self, ParseError> {
        if cents < 0 {
            return Err(invalid("must not be negative"));
        }
        if cents > Self::MAX {
            return Err(invalid(format!("must be at most {}", Self::MAX)));
        }
        Ok(Cents(cents))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// A fan's tags: each a trimmed [`Line`] of at most 50 characters, at most 50 of them, kept
/// in first-seen order without duplicates (compared without case).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct Tags(Vec<String>);

impl TryFrom<Vec<String>> for Tags {
    type Error = ParseError;

    fn try_from(raw: Vec<String>) -> Result<Self, ParseError> {
        Tags::parse(&raw)
    }
}

impl From<Tags> for Vec<String> {
    fn from(t: Tags) -> Vec<String> {
        t.0
    }
}

impl Tags {
    pub const MAX_COUNT: usize = 50;
    pub const MAX_LEN: usize = 50;

    pub fn parse<S: AsRef<str>>(raw: &[S]) -> Result<Self, ParseError> {
        let mut tags: Vec<String> = Vec::with_capacity(raw.len());
        for tag in raw {
            let tag = Line::parse(tag.as_ref(), Self::MAX_LEN)
                .map_err(|e| invalid(format!("each tag {e}")))?;
            if !tags.iter().any(|t| t.eq_ignore_ascii_case(tag.as_str())) {
                tags.push(tag.0);
            }
        }
        if tags.len() > Self::MAX_COUNT {
            return Err(invalid(format!(
                "must hold at most {} tags",
                Self::MAX_COUNT
            )));
        }
        Ok(Tags(tags))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}

/// A timestamp as the SQL layer writes it. Postgres gets `timestamptz`; SQLite gets fixed-width
/// RFC 3339 text with microseconds, so that text order is time order (sqlx's own encoding
/// drops trailing zeros and would sort `…:05Z` after `…:05.5Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub DateTime<Utc>);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(Utc::now())
    }

    fn to_sqlite_text(self) -> String {
        self.0.to_rfc3339_opts(SecondsFormat::Micros, true)
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(t: DateTime<Utc>) -> Self {
        Timestamp(t)
    }
}

impl sqlx::Type<sqlx::Sqlite> for Timestamp {
    fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
        <String as sqlx::Type<sqlx::Sqlite>>::type_info()
    }
}

impl sqlx::Encode<'_, sqlx::Sqlite> for Timestamp {
    fn encode_by_ref(
        &self,
        buf: &mut <sqlx::Sqlite as sqlx::Database>::ArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <String as sqlx::Encode<sqlx::Sqlite>>::encode(self.to_sqlite_text(), buf)
    }
}

impl sqlx::Type<sqlx::Postgres> for Timestamp {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <DateTime<Utc> as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for Timestamp {
    fn encode_by_ref(
        &self,
        buf: &mut <sqlx::Postgres as sqlx::Database>::ArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <DateTime<Utc> as sqlx::Encode<sqlx::Postgres>>::encode_by_ref(&self.0, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_trimmed_prefixed_once_and_lower_cased() {
        for raw in ["johndoe", "@johndoe", " @JohnDoe ", "@@johndoe"] {
            assert_eq!(Handle::parse(raw).unwrap().as_str(), "@johndoe", "{raw:?}");
        }
    }

    #[test]
    fn handles_refuse_empty_spaces_and_overlong() {
        assert!(Handle::parse("  @ ").is_err());
        assert!(Handle::parse("john doe").is_err());
        assert!(Handle::parse(&"a".repeat(65)).is_err());
        assert!(Handle::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn emails_need_a_local_part_and_a_dotted_domain() {
        assert_eq!(
            Email::parse(" john@example.com ").unwrap().as_str(),
            "john@example.com"
        );
        for bad in [
            "john",
            "john@",
            "@example.com",
            "john@localhost",
            "a b@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cents_refuse_negative_and_absurd_amounts() {
        assert_eq!(Cents::new(0).unwrap().get(), 0);
        assert!(Cents::new(-1).is_err());
        assert!(Cents::new(Cents::MAX + 1).is_err());
    }

    #[test]
    fn lines_are_trimmed_bounded_and_single_line() {
        assert_eq!(Line::parse("  Jane  ", 10).unwrap().as_str(), "Jane");
        assert!(Line::parse("", 10).is_err());
        assert!(Line::parse("Jane\nDoe", 10).is_err());
        assert!(Line::parse(&"é".repeat(11), 10).is_err());
        assert!(Line::parse(&"é".repeat(10), 10).is_ok());
    }

    #[test]
    fn text_refuses_noncharacters_sqs_would_refuse() {
        assert!(Text::parse("fine\ttext\n", 100).is_ok());
        assert!(Text::parse("bad \u{FFFF}", 100).is_err());
        assert!(Line::parse("bad \u{FFFE}", 100).is_err());
    }

    #[test]
    fn urls_must_be_absolute_http() {
        assert!(HttpUrl::parse("https://cdn.example.com/a.jpg").is_ok());
        for bad in [
            "javascript:alert(1)",
            "ftp://x/y",
            "/relative.jpg",
            "https://",
            "https://a b",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tags_drop_duplicates_without_case_and_keep_order() {
        let tags = Tags::parse(&["vip", "VIP", " whale "]).unwrap();
        assert_eq!(tags.as_slice(), ["vip", "whale"]);
        assert!(Tags::parse(&[""]).is_err());
        let many: Vec<String> = (0..51).map(|i| format!("t{i}")).collect();
        assert!(Tags::parse(&many).is_err());
    }

    #[test]
    fn sqlite_timestamps_are_fixed_width_so_text_order_is_time_order() {
        let a = Timestamp("2025-01-01T00:00:05Z".parse().unwrap());
        let b = Timestamp("2025-01-01T00:00:05.5Z".parse().unwrap());
        assert_eq!(a.to_sqlite_text().len(), b.to_sqlite_text().len());
        assert!(a.to_sqlite_text() < b.to_sqlite_text());
    }
}
