//! What poem-openapi cannot say by itself, so that `/openapi.json` says exactly what the
//! server does (clients are generated from it; `scripts/contract` checks it with schemathesis):
//!
//! - a response field sent as `null` when it has no value is always present: every nullable
//!   property of a response schema is also `required` (fields left out when empty are not
//!   nullable: `#[oai(skip_serializing_if_is_none)]`);
//! - every request body refuses fields it does not know (serde's `deny_unknown_fields` on each
//!   JSON body type; the upload form reads only `file`): request schemas say
//!   `additionalProperties: false`;
//! - a 405 names the methods the path has in `Allow` (RFC 9110), read from the document.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use poem::{
    Endpoint, IntoResponse, Request, Response,
    http::{Method, StatusCode},
};
use serde_json::{Map, Value};

use super::rules::{IdempotencyKey, Rule};

/// The document as served: poem-openapi's, with the two rules above applied.
pub fn exact_document(raw: &str) -> String {
    let Ok(mut doc) = serde_json::from_str::<Value>(raw) else {
        return raw.to_owned();
    };
    let requests = request_schemas(&doc);
    declare_idempotency_key(&mut doc);
    // Request bodies written inline (the upload's multipart form).
    if let Some(paths) = doc["paths"].as_object_mut() {
        for op in paths.values_mut().filter_map(Value::as_object_mut) {
            for op in op.values_mut() {
                let content = op
                    .get_mut("requestBody")
                    .and_then(|b| b.get_mut("content"))
                    .and_then(Value::as_object_mut);
                for media in content.into_iter().flat_map(|c| c.values_mut()) {
                    if let Some(schema) = media.get_mut("schema") {
                        close(schema);
                    }
                }
            }
        }
    }
    if let Some(schemas) = doc["components"]["schemas"].as_object_mut() {
        for (name, schema) in schemas.iter_mut() {
            if requests.contains(name) {
                close(schema);
            } else {
                require_nullable(schema);
            }
        }
    }
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| raw.to_owned())
}

/// Whether a request's `Idempotency-Key` is honoured: on every `POST` under `/api` (the
/// idempotency layer asks, and the document says so).
pub fn honoured(method: &Method, path: &str) -> bool {
    method == Method::POST && path.starts_with("/api/")
}

/// The header as `/openapi.json` declares it, once, on every route that honours it: handlers
/// do not declare it, the idempotency layer (`super::idempotency`) reads it.
pub fn parameter() -> serde_json::Value {
    serde_json::json!({
        "name": "Idempotency-Key",
        "in": "header",
        "description": "Makes a retry safe: a repeat of the request with this key gets the \
                        first answer again and does nothing (24 hours, per user; see the README).",
        "required": false,
        "deprecated": false,
        "explode": true,
        "schema": IdempotencyKey::schema(),
    })
}

/// The `Idempotency-Key` header on every operation that honours it, declared here once
/// rather than on each handler.
fn declare_idempotency_key(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        for (method, op) in item.as_object_mut().into_iter().flatten() {
            let method = method.to_uppercase().parse().unwrap_or_default();
            if !honoured(&method, path) {
                continue;
            }
            let parameters = op.as_object_mut().map(|op| {
                op.entry("parameters")
                    .or_insert_with(|| Value::Array(vec![]))
            });
            if let Some(Value::Array(parameters)) = parameters {
                parameters.push(parameter());
            }
        }
    }
}

/// Names of the component schemas a request body or parameter uses, directly or nested.
fn request_schemas(doc: &Value) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut todo: Vec<&Value> = Vec::new();
    for item in doc["paths"]
        .as_object()
        .into_iter()
        .flat_map(|p| p.values())
    {
        for op in item.as_object().into_iter().flat_map(|o| o.values()) {
            todo.push(&op["requestBody"]);
            todo.push(&op["parameters"]);
        }
    }
    while let Some(v) = todo.pop() {
        match v {
            Value::Object(map) => {
                if let Some(name) = map
                    .get("$ref")
                    .and_then(Value::as_str)
                    .and_then(|r| r.strip_prefix("#/components/schemas/"))
                    && found.insert(name.to_owned())
                {
                    todo.push(&doc["components"]["schemas"][name]);
                }
                todo.extend(map.values());
            }
            Value::Array(items) => todo.extend(items),
            _ => {}
        }
    }
    found
}

/// `additionalProperties: false` on an object schema (a request body). Not on a union
/// (`oneOf`, `anyOf`): its properties are its branches', each closed on its own, and closing
/// the union itself would refuse every property.
fn close(schema: &mut Value) {
    if let Some(map) = schema.as_object_mut()
        && map.get("type").and_then(Value::as_str) == Some("object")
        && !map.contains_key("oneOf")
        && !map.contains_key("anyOf")
    {
        map.entry("additionalProperties")
            .or_insert(Value::Bool(false));
    }
}

/// Every nullable property of a response object schema becomes required.
fn require_nullable(schema: &mut Value) {
    let Some(map) = schema.as_object_mut() else {
        return;
    };
    let nullable: Vec<Value> = map
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(_, p)| is_nullable(p))
        .map(|(name, _)| Value::String(name.clone()))
        .collect();
    if nullable.is_empty() {
        return;
    }
    let required = map
        .entry("required")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(required) = required {
        for name in nullable {
            if !required.contains(&name) {
                required.push(name);
            }
        }
    }
}

fn is_nullable(property: &Value) -> bool {
    property["nullable"] == Value::Bool(true)
}

/// The methods of each path of the document, by the path's shape (`/api/jobs/*`).
pub struct Methods(HashMap<Vec<Segment>, String>);

#[derive(PartialEq, Eq, Hash, Clone)]
enum Segment {
    Literal(String),
    Param,
}

impl Methods {
    pub fn of(document: &str) -> Self {
        let doc: Value = serde_json::from_str(document).unwrap_or_default();
        let empty = Map::new();
        let paths = doc["paths"].as_object().unwrap_or(&empty);
        Methods(
            paths
                .iter()
                .map(|(template, item)| {
                    let mut methods: Vec<String> = item
                        .as_object()
                        .into_iter()
                        .flat_map(|o| o.keys())
                        .map(|m| m.to_ascii_uppercase())
                        .collect();
                    // poem answers HEAD wherever it answers GET.
                    if methods.iter().any(|m| m == "GET") {
                        methods.push("HEAD".to_owned());
                    }
                    methods.sort();
                    (shape(template, true), methods.join(", "))
                })
                .collect(),
        )
    }

    /// The `Allow` value for a request path, if the document has the path.
    fn allow(&self, path: &str) -> Option<&str> {
        let segments = shape(path, false);
        // A literal segment wins over a parameter, as in the router.
        self.0
            .iter()
            .filter(|(pattern, _)| {
                pattern.len() == segments.len()
                    && pattern.iter().zip(&segments).all(|(p, s)| match (p, s) {
                        (Segment::Param, Segment::Literal(s)) => !s.is_empty(),
                        (p, s) => p == s,
                    })
            })
            .min_by_key(|(pattern, _)| pattern.iter().filter(|s| **s == Segment::Param).count())
            .map(|(_, methods)| methods.as_str())
    }
}

fn shape(path: &str, template: bool) -> Vec<Segment> {
    path.trim_end_matches('/')
        .split('/')
        .map(|seg| {
            if template && seg.starts_with('{') {
                Segment::Param
            } else {
                Segment::Literal(seg.to_owned())
            }
        })
        .collect()
}

/// Adds `Allow` to a 405 answer.
pub async fn allow<E: Endpoint>(
    ep: Arc<E>,
    req: Request,
    methods: Arc<Methods>,
) -> poem::Result<Response> {
    let path = req.uri().path().to_owned();
    let mut resp = ep.call(req).await?.into_response();
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED
        && let Some(value) = methods
            .allow(&path)
            .and_then(|m| poem::http::HeaderValue::from_str(m).ok())
    {
        resp.headers_mut().insert(poem::http::header::ALLOW, value);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nullable_response_fields_are_required_and_request_bodies_closed() {
        let raw = serde_json::json!({
            "paths": {"/x": {"post": {
                "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/In"}}}},
                "responses": {"200": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Out"}}}}}
            }}},
            "components": {"schemas": {
                "In": {"type": "object", "properties": {"a": {"type": "string", "nullable": true},
                        "b": {"type": "array", "items": {"$ref": "#/components/schemas/Part"}},
                        "u": {"$ref": "#/components/schemas/Either"}}},
                "Either": {"type": "object", "oneOf": [{"$ref": "#/components/schemas/Part"}]},
                "Part": {"type": "object", "properties": {"c": {"type": "string"}}},
                "Out": {"type": "object", "required": ["id"], "properties": {
                    "id": {"type": "integer"}, "name": {"type": "string", "nullable": true},
                    "skipped": {"type": "string"}}}
            }}
        });
        let doc: Value = serde_json::from_str(&exact_document(&raw.to_string())).unwrap();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["In"]["additionalProperties"], false);
        assert_eq!(schemas["Part"]["additionalProperties"], false);
        assert!(
            schemas["Either"]["additionalProperties"].is_null(),
            "a union is closed by its branches"
        );
        assert!(
            schemas["In"]["required"].is_null(),
            "requests keep optional fields"
        );
        assert_eq!(
            schemas["Out"]["required"],
            serde_json::json!(["id", "name"])
        );
        assert!(schemas["Out"]["additionalProperties"].is_null());
    }

    #[test]
    fn allow_lists_the_methods_of_the_matching_path() {
        let doc = serde_json::json!({"paths": {
            "/api/jobs": {"get": {}},
            "/api/jobs/{id}": {"get": {}, "delete": {}},
            "/metrics": {"get": {}},
        }});
        let m = Methods::of(&doc.to_string());
        assert_eq!(
            m.allow("/api/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV"),
            Some("DELETE, GET, HEAD")
        );
        assert_eq!(m.allow("/api/jobs"), Some("GET, HEAD"));
        assert_eq!(m.allow("/api/jobs/"), Some("GET, HEAD"));
        assert_eq!(m.allow("/api/nothing"), None);
    }
}
