//! `JsonBody<T>`: a JSON request body read with serde, so that a 400 names the field at fault
//! (`valueCents: invalid type: string "x", expected i64`), while `T`'s poem-openapi schema
//! still documents the body in `/openapi.json`.

use poem::{Request, RequestBody};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions,
    payload::{ParsePayload, Payload},
    registry::{MetaMediaType, MetaRequest, MetaSchemaRef, Registry},
    types::Type,
};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest JSON body accepted; a larger one gets 413 before it is parsed. Generous enough
/// that an over-long field is reported as that field's 400 rather than as a 413.
pub const MAX_BODY: usize = 2 * 1024 * 1024;

pub struct JsonBody<T>(pub T);

impl<T: Type> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn check_content_type(content_type: &str) -> bool {
        matches!(content_type.parse::<mime::Mime>(), Ok(m) if m.type_() == "application"
            && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json")))
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type + DeserializeOwned> ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(_request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let data = body.take()?.into_bytes_limit(MAX_BODY).await?;
        if data.is_empty() {
            return Err(ApiError::bad_request(
                "empty_body",
                "the request body must be a JSON object",
            )
            .into());
        }
        // serde would also read a struct from a JSON array, field by position: refuse that.
        if data.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::bad_request(
                "invalid_body",
                "the request body must be a JSON object",
            )
            .into());
        }
        let mut de = serde_json::Deserializer::from_slice(&data);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
            let path = err.path().to_string();
            let reason = err.into_inner().to_string();
            // serde reports a missing field at the object holding it, not at the field.
            if let Some(missing) = reason
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
            {
                let field = if path == "." {
                    missing.to_owned()
                } else {
                    format!("{path}.{missing}")
                };
                return ApiError::invalid(&field, "is required");
            }
            // `.` is the whole body; `?` is a place serde could not name (broken syntax).
            if path == "." || path.contains('?') {
                ApiError::bad_request(
                    "invalid_body",
                    format!("the body is not valid JSON for this route: {reason}"),
                )
            } else {
                ApiError::invalid(&path, reason)
            }
        })?;
        de.end().map_err(|e| {
            ApiError::bad_request(
                "invalid_body",
                format!("trailing data after the JSON body: {e}"),
            )
        })?;
        Ok(JsonBody(value))
    }
}

impl<'a, T: Type + DeserializeOwned> ApiExtractor<'a> for JsonBody<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <Self as Payload>::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: <Self as Payload>::CONTENT_TYPE,
                schema: <Self as Payload>::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        match request.content_type() {
            Some(ct) if Self::check_content_type(ct) => {
                <Self as ParsePayload>::from_request(request, body).await
            }
            Some(ct) => Err(poem_openapi::error::ContentTypeError::NotSupported {
                content_type: ct.to_owned(),
            }
            .into()),
            None => Err(poem_openapi::error::ContentTypeError::ExpectContentType.into()),
        }
    }
}

/// A JSON response written straight from `T`'s serde form in one pass. poem-openapi's `Json`
/// first builds a `serde_json::Value` tree (a map per object) and then writes that: for a page
/// of 50 fans that was most of the API's CPU per request. `T`'s poem-openapi schema still
/// documents the body; its serde derive writes the same fields (camelCase, times as RFC 3339
/// with an offset, as poem-openapi writes them: see [`rfc3339`]).
pub struct JsonOut<T>(pub T);

impl<T: Type> Payload for JsonOut<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn check_content_type(content_type: &str) -> bool {
        JsonBody::<T>::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: serde::Serialize + Send> poem::IntoResponse for JsonOut<T> {
    fn into_response(self) -> poem::Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => poem::Response::builder()
                .content_type("application/json; charset=utf-8")
                .body(body),
            Err(e) => ApiError::internal(anyhow::Error::new(e).context("writing a JSON response"))
                .into_response(),
        }
    }
}

/// serde's form of the API's times: RFC 3339 with an offset, as poem-openapi writes them, so a
/// time reads the same from every route.
pub mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&at.to_rfc3339())
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(
            at: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => super::serialize(at, s),
                None => s.serialize_none(),
            }
        }
    }
}
