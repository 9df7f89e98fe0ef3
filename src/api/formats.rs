//! `EmailIn`: an email address in a request body. Read as a plain string (the handler parses
//! it with [`Email`](fanqueue_jobs::domain::Email)); the schema says `format: email`, so that
//! generated clients and the contract run know the field is not free text.

use std::{borrow::Cow, ops::Deref};

use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef},
    types::{ParseFromJSON, ParseResult, ToJSON, Type},
};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct EmailIn(pub String);

impl Deref for EmailIn {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Type for EmailIn {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string(email)".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            description: Some("An email address (RFC 5322 addr-spec, with a dotted domain)."),
            max_length: Some(254),
            ..MetaSchema::new_with_format("string", "email")
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

impl ParseFromJSON for EmailIn {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        String::parse_from_json(value)
            .map(EmailIn)
            .map_err(poem_openapi::types::ParseError::propagate)
    }
}

impl ToJSON for EmailIn {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}
