//! `IdIn`: an id in a request body, accepted as a JSON number (`123`) or a string of digits
//! (`"123"`), as the seeds' clients write both (the developer guide's send example sends
//! `"recipientId": "123"`). Parsed once here; handlers see an `i64`. The schema says both.

use std::{borrow::Cow, fmt};

use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef},
    types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
};
use serde::{Deserialize, Deserializer, de};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdIn(pub i64);

/// The digits of an id written as a string: 1 to 19 of them (what fits an `i64`).
const DIGITS: &str = "^[0-9]{1,19}$";

impl IdIn {
    fn from_digits(s: &str) -> Option<Self> {
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok().map(IdIn)
    }
}

impl<'de> Deserialize<'de> for IdIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl de::Visitor<'_> for Visit {
            type Value = IdIn;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an id: a whole number, or a string of digits")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IdIn, E> {
                Ok(IdIn(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IdIn, E> {
                i64::try_from(v)
                    .map(IdIn)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<IdIn, E> {
                IdIn::from_digits(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(Visit)
    }
}

impl Type for IdIn {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "IdIn".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        let number = MetaSchema::new_with_format("integer", "int64");
        let digits = MetaSchema {
            pattern: Some(DIGITS.to_owned()),
            ..MetaSchema::new("string")
        };
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            description: Some("An id: a whole number, or a string of digits (\"123\")."),
            any_of: vec![
                MetaSchemaRef::Inline(Box::new(number)),
                MetaSchemaRef::Inline(Box::new(digits)),
            ],
            ..MetaSchema::ANY
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

impl ParseFromJSON for IdIn {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::Number(n)) => n
                .as_i64()
                .map(IdIn)
                .ok_or_else(|| ParseError::custom("not a whole number")),
            Some(Value::String(s)) => {
                IdIn::from_digits(&s).ok_or_else(|| ParseError::custom("not a string of digits"))
            }
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl ToJSON for IdIn {
    fn to_json(&self) -> Option<Value> {
        Some(Value::from(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<i64, String> {
        serde_json::from_str::<IdIn>(json)
            .map(|i| i.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_number_or_a_string_of_digits_is_an_id_and_nothing_else_is() {
        assert_eq!(parse("123"), Ok(123));
        assert_eq!(parse("\"123\""), Ok(123));
        assert_eq!(parse("\"0042\""), Ok(42));
        for bad in [
            "\"\"",
            "\"12a\"",
            "\" 12\"",
            "\"-3\"",
            "1.5",
            "true",
            "null",
            "\"99999999999999999999\"",
        ] {
            assert!(parse(bad).is_err(), "{bad} is not an id");
        }
    }
}
