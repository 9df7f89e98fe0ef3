//! `Word<T>`: a value of one of the engine's closed sets of words (statuses, kinds, platforms,
//! directions) as the API shows and reads it. The schema is an `enum` component named after
//! the set, listing [`Words::all`], so the list lives once, in `fanqueue_jobs`, and a generated
//! client gets a union of literals instead of a `string` a typo slips through. The wire form
//! is the word itself, exactly as the database stores it.

use std::{borrow::Cow, fmt};

use fanqueue_jobs::domain::Words;
use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef, Registry},
    types::{ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type},
};
use serde::{Serialize, Serializer};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Word<T>(pub T);

impl<T: Words> From<T> for Word<T> {
    fn from(value: T) -> Self {
        Word(value)
    }
}

impl<T: Words> fmt::Display for Word<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.word())
    }
}

impl<T: Words> Word<T> {
    /// The words a client may send, for an error message.
    fn expected() -> String {
        let words: Vec<&str> = T::all().iter().map(|w| w.word()).collect();
        format!("must be one of {}", words.join(", "))
    }
}

impl<T: Words> Type for Word<T> {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        T::NAME.into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Reference(T::NAME.to_owned())
    }

    fn register(registry: &mut Registry) {
        registry.create_schema::<Self, _>(T::NAME.to_owned(), |_| MetaSchema {
            enum_items: T::all().iter().map(|w| Value::from(w.word())).collect(),
            ..MetaSchema::new("string")
        });
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

impl<T: Words> ParseFromJSON for Word<T> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(s)) => Self::parse_from_parameter(&s),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl<T: Words> ParseFromParameter for Word<T> {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        T::from_word(value)
            .map(Word)
            .map_err(|_| ParseError::custom(Self::expected()))
    }
}

impl<T: Words> ToJSON for Word<T> {
    fn to_json(&self) -> Option<Value> {
        Some(Value::from(self.0.word()))
    }
}

impl<T: Words> Serialize for Word<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.word())
    }
}

#[cfg(test)]
mod tests {
    use fanqueue_jobs::crm::messages::MessageStatus;

    use super::*;

    #[test]
    fn a_word_reads_and_writes_as_the_database_stores_it_and_nothing_else_reads() {
        let sent = Word::<MessageStatus>::parse_from_parameter("sent").unwrap();
        assert_eq!(sent, Word(MessageStatus::Sent));
        assert_eq!(sent.to_json(), Some(Value::from("sent")));
        assert_eq!(serde_json::to_string(&sent).unwrap(), "\"sent\"");
        for bad in ["Sent", " sent", "", "delivered"] {
            let err = Word::<MessageStatus>::parse_from_parameter(bad).unwrap_err();
            let message = err.into_message();
            assert!(
                message.ends_with("must be one of queued, sending, sent, failed"),
                "{bad:?}: {message}"
            );
        }
        assert!(Word::<MessageStatus>::parse_from_json(Some(Value::from(1))).is_err());
    }
}
