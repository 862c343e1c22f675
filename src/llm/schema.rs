//! Fitting schemas to what providers accept.
//!
//! [`portable`] rewrites any schema the crate sends (structured output and tool
//! parameters) into the subset real servers take: llama.cpp's `llama-server`
//! refuses a boolean subschema (`true` for "any value"), strict validators refuse a
//! `default` on a required property, and grammar builders stumble on formats such
//! as `uint32` that only describe a Rust type.
//!
//! Both OpenAI's `json_schema`/`json_object` modes and Anthropic's tool inputs only
//! produce JSON objects. A schema whose root is something else (a list, a string,
//! an enum) is asked for inside a `{"value": ...}` object, and the value is taken
//! back out of the reply.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::SharedValue;
use crate::memo::SchemaMemo;

/// The property a non-object schema is wrapped in.
const WRAPPED_VALUE: &str = "value";

/// The schema sent to the provider for one wanted output schema.
#[derive(Debug, Clone)]
pub(crate) struct SentSchema {
    /// What the provider is asked for: always an object schema.
    pub(crate) schema: Value,
    /// [`schema`](Self::schema) as compact JSON text, written into every request
    /// as it is rather than written out again from the tree each time.
    pub(crate) json: Box<RawValue>,
    /// Whether the wanted schema was wrapped in a `value` property.
    pub(crate) wrapped: bool,
    /// Whether OpenAI's strict mode accepts the schema as it is ([`is_strict`]).
    pub(crate) strict: bool,
}

/// Formats every JSON-schema consumer knows; others are dropped.
const KNOWN_FORMATS: [&str; 10] =
    ["date-time", "date", "time", "duration", "email", "hostname", "ipv4", "ipv6", "uri", "uuid"];

/// The keywords whose value is one schema, or a list of schemas.
const SCHEMA_KEYWORDS: [&str; 11] = [
    "items",
    "prefixItems",
    "additionalProperties",
    "contains",
    "anyOf",
    "oneOf",
    "allOf",
    "not",
    "if",
    "then",
    "else",
];

/// The keywords whose value maps names to schemas.
const SCHEMA_MAPS: [&str; 4] = ["properties", "$defs", "definitions", "patternProperties"];

/// `schema` in the portable subset: boolean subschemas become objects (`{}` for
/// any value, `{"not": {}}` for none), required properties lose their `default`,
/// and formats only Rust knows are dropped. `additionalProperties: false` stays: it
/// is a keyword's value there, not a subschema.
pub fn portable(schema: &Value) -> Value {
    let mut schema = schema.clone();
    normalize(&mut schema, true);
    schema
}

/// A schema in the portable subset, as a tree and as compact JSON text.
#[derive(Debug)]
pub(crate) struct Portable {
    /// [`portable`] of the schema.
    pub(crate) value: Value,
    /// [`value`](Self::value) written out, ready to go into a request as it is.
    pub(crate) json: Box<RawValue>,
}

/// [`portable`] of `schema`, made once per schema and shared: a tool's parameters
/// are sent on every call that offers the tool.
pub(crate) fn portable_shared(schema: &SharedValue) -> Arc<Portable> {
    static MADE: LazyLock<SchemaMemo<Portable>> = LazyLock::new(Default::default);
    MADE.get_shared(schema, |schema| {
        let value = portable(schema);
        Portable { json: json_text(&value), value }
    })
}

impl serde::Serialize for Portable {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(serializer)
    }
}

/// `value` as compact JSON text.
fn json_text(value: &Value) -> Box<RawValue> {
    // Writing out a `Value` cannot fail: its keys are strings and its numbers finite.
    serde_json::value::to_raw_value(value).unwrap_or_default()
}

fn normalize(schema: &mut Value, allow_bool: bool) {
    match schema {
        Value::Bool(any) if !allow_bool => *schema = if *any { json!({}) } else { json!({"not": {}}) },
        Value::Object(node) => normalize_node(node),
        _ => {}
    }
}

fn normalize_node(node: &mut Map<String, Value>) {
    if node.get("format").and_then(Value::as_str).is_some_and(|f| !KNOWN_FORMATS.contains(&f)) {
        node.remove("format");
    }
    let required: Vec<String> = node
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    if let Some(Value::Object(properties)) = node.get_mut("properties") {
        for name in &required {
            if let Some(Value::Object(property)) = properties.get_mut(name) {
                property.remove("default");
            }
        }
    }
    for key in SCHEMA_MAPS {
        if let Some(Value::Object(map)) = node.get_mut(key) {
            map.values_mut().for_each(|v| normalize(v, false));
        }
    }
    for key in SCHEMA_KEYWORDS {
        match node.get_mut(key) {
            // `additionalProperties: false` is how a closed object is written everywhere.
            Some(Value::Bool(false)) if key == "additionalProperties" => {}
            Some(Value::Array(list)) => list.iter_mut().for_each(|v| normalize(v, false)),
            Some(value) => normalize(value, false),
            None => {}
        }
    }
}

/// Every problem that keeps `schema` out of the portable subset, with its JSON
/// pointer: what [`portable`] removes. Empty for a portable schema.
pub fn portability_problems(schema: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if !schema.is_object() {
        problems.push("#: the root must be an object schema".to_owned());
    }
    walk(schema, "#", &mut problems);
    problems
}

fn walk(schema: &Value, at: &str, problems: &mut Vec<String>) {
    let Some(node) = schema.as_object() else {
        if schema.is_boolean() && at != "#" {
            problems.push(format!("{at}: a boolean subschema; servers such as llama.cpp want an object"));
        }
        return;
    };
    if let Some(format) = node.get("format").and_then(Value::as_str).filter(|f| !KNOWN_FORMATS.contains(f)) {
        problems.push(format!("{at}: the format {format:?} is not a standard one"));
    }
    let required = node.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str);
    for name in required {
        if node.get("properties").and_then(|p| p.get(name)).and_then(|p| p.get("default")).is_some() {
            problems.push(format!("{at}/properties/{name}: a default on a required property"));
        }
    }
    for key in SCHEMA_MAPS {
        for (name, sub) in node.get(key).and_then(Value::as_object).into_iter().flatten() {
            walk(sub, &format!("{at}/{key}/{name}"), problems);
        }
    }
    for key in SCHEMA_KEYWORDS {
        match node.get(key) {
            Some(Value::Bool(false)) if key == "additionalProperties" => {}
            Some(Value::Array(list)) => {
                list.iter().enumerate().for_each(|(i, sub)| walk(sub, &format!("{at}/{key}/{i}"), problems));
            }
            Some(sub) => walk(sub, &format!("{at}/{key}"), problems),
            None => {}
        }
    }
}

impl SentSchema {
    /// The object schema to send for `wanted`, in the portable subset (made once
    /// per schema, as the same few are sent on every call).
    pub(crate) fn new(wanted: &SharedValue) -> Arc<Self> {
        static MADE: LazyLock<SchemaMemo<SentSchema>> = LazyLock::new(Default::default);
        MADE.get_shared(wanted, Self::make)
    }

    fn make(wanted: &Value) -> Self {
        let wanted = &portable(wanted);
        let (schema, wrapped) = match object_schema(wanted) {
            Some(schema) => (schema, false),
            None => (wrap_in_object(wanted), true),
        };
        Self { strict: is_strict(&schema), json: json_text(&schema), schema, wrapped }
    }

    /// The reply the caller asked for, out of the object the provider produced.
    pub(crate) fn unwrap<'a>(&self, reply: &'a Value) -> &'a Value {
        if self.wrapped { reply.get(WRAPPED_VALUE).unwrap_or(&Value::Null) } else { reply }
    }

    /// Like [`SentSchema::unwrap`], for a reply still in text. Text that is not
    /// JSON is left alone, so the caller's parse error shows the model's words.
    pub(crate) fn unwrap_text(&self, text: String) -> String {
        if !self.wrapped {
            return text;
        }
        match serde_json::from_str::<Value>(super::strip_code_fence(&text)) {
            Ok(reply) if reply.get(WRAPPED_VALUE).is_some() => self.unwrap(&reply).to_string(),
            _ => text,
        }
    }
}

/// `schema` as an object schema, if it is one (a missing `type` next to `properties` is filled in).
pub(crate) fn object_schema(schema: &Value) -> Option<Value> {
    let node = schema.as_object()?;
    match node.get("type") {
        Some(Value::String(t)) if t == "object" => Some(schema.clone()),
        None if node.contains_key("properties") => {
            let mut node = node.clone();
            node.insert("type".into(), json!("object"));
            Some(Value::Object(node))
        }
        _ => None,
    }
}

/// Wraps a schema in `{value: schema}`, lifting its definitions to the new root so
/// that its `#/$defs/...` references still resolve. The wrapper itself is closed,
/// so it does not stop OpenAI's strict mode when the wrapped schema allows it.
fn wrap_in_object(schema: &Value) -> Value {
    let mut inner = schema.clone();
    let mut root = Map::new();
    root.insert("type".into(), json!("object"));
    if let Some(node) = inner.as_object_mut() {
        for key in ["$defs", "definitions"] {
            if let Some(defs) = node.remove(key) {
                root.insert(key.into(), defs);
            }
        }
    }
    root.insert("properties".into(), json!({ WRAPPED_VALUE: inner }));
    root.insert("required".into(), json!([WRAPPED_VALUE]));
    root.insert("additionalProperties".into(), json!(false));
    Value::Object(root)
}

/// Whether OpenAI's strict mode would accept `schema` as it is: the root and every
/// object in it close their properties (`additionalProperties: false`) and require
/// all of them. Schemas with optional fields are sent non-strict rather than
/// rewritten, since the types they come from rely on serde defaults.
fn is_strict(schema: &Value) -> bool {
    schema.as_object().is_some_and(is_object_schema) && all_objects_closed(schema)
}

fn all_objects_closed(schema: &Value) -> bool {
    let Some(node) = schema.as_object() else { return true };
    if is_object_schema(node) && !closes_all_properties(node) {
        return false;
    }
    subschemas(node).all(all_objects_closed)
}

fn is_object_schema(node: &Map<String, Value>) -> bool {
    let typed_object = match node.get("type") {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(types)) => types.iter().any(|t| t == "object"),
        _ => false,
    };
    typed_object || node.contains_key("properties")
}

fn closes_all_properties(node: &Map<String, Value>) -> bool {
    let required: HashSet<&str> =
        node.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let properties = node.get("properties").and_then(Value::as_object);
    node.get("additionalProperties") == Some(&Value::Bool(false))
        && properties.into_iter().flat_map(Map::keys).all(|name| required.contains(name.as_str()))
}

/// The schemas nested in `node`, found by keyword so that a property that happens
/// to be called `items` or `type` is not mistaken for one.
fn subschemas(node: &Map<String, Value>) -> impl Iterator<Item = &Value> {
    let named = SCHEMA_MAPS.iter().filter_map(|k| node.get(*k)).filter_map(Value::as_object).flat_map(Map::values);
    let direct = SCHEMA_KEYWORDS.iter().filter_map(|k| node.get(*k)).flat_map(|v| match v {
        Value::Array(items) => items.iter().collect::<Vec<_>>(),
        other => vec![other],
    });
    named.chain(direct)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tool::ToolRegistry;

    #[test]
    fn strict_needs_every_object_closed_and_fully_required() {
        let closed = json!({
            "type": "object",
            "properties": {"a": {"type": "string"}, "b": {"$ref": "#/$defs/B"}},
            "required": ["a", "b"],
            "additionalProperties": false,
            "$defs": {"B": {"type": "object", "properties": {"c": {"type": "integer"}}, "required": ["c"], "additionalProperties": false}},
        });
        assert!(is_strict(&closed));

        let mut optional = closed.clone();
        optional["required"] = json!(["a"]);
        assert!(!is_strict(&optional));

        let mut open_def = closed.clone();
        open_def["$defs"]["B"]["additionalProperties"] = json!(true);
        assert!(!is_strict(&open_def));

        let mut open_in_array = closed.clone();
        open_in_array["properties"]["list"] = json!({"type": "array", "items": {"type": "object", "properties": {}}});
        open_in_array["required"] = json!(["a", "b", "list"]);
        assert!(!is_strict(&open_in_array));

        let mut open_in_contains = closed.clone();
        open_in_contains["properties"]["list"] = json!({"type": "array", "contains": {"type": "object"}});
        open_in_contains["required"] = json!(["a", "b", "list"]);
        assert!(!is_strict(&open_in_contains));

        let mut open_in_any_of = closed;
        open_in_any_of["properties"]["b"] = json!({"anyOf": [{"type": "null"}, {"type": ["object", "null"]}]});
        assert!(!is_strict(&open_in_any_of));

        assert!(!is_strict(&json!({"type": "array", "items": {"type": "string"}})), "the root must be an object");
    }

    #[test]
    fn a_property_named_like_a_keyword_is_not_a_schema() {
        let schema = json!({
            "type": "object",
            "properties": {"items": {"type": "string"}, "properties": {"type": "string"}},
            "required": ["items", "properties"],
            "additionalProperties": false,
        });
        assert!(is_strict(&schema));
    }

    #[test]
    fn every_schema_the_crate_sends_is_portable() {
        let outputs = std::iter::once(crate::planner::output_schema()).chain(crate::agent::output_schemas());
        let mut sent: Vec<(String, Value)> =
            outputs.map(|o| (o.name.clone(), SentSchema::new(&o.schema).schema.clone())).collect();
        for tool in crate::tools::open_source_tool_registry(&crate::Config::default()).get_tools() {
            let spec = tool.spec();
            sent.push((format!("{} as declared", spec.id), (*spec.args_schema).clone()));
            sent.push((format!("{} as sent", spec.id), portable(&spec.definition().parameters)));
        }
        assert!(sent.len() >= 14, "planner, verifier and six tools twice: {}", sent.len());
        for (name, schema) in sent {
            let problems = portability_problems(&schema);
            assert!(problems.is_empty(), "{name}: {problems:?}\n{schema}");
        }
    }

    #[test]
    fn any_value_becomes_an_object_and_required_properties_lose_their_default() {
        let schema = json!({
            "type": "object",
            "properties": {
                "value": true,
                "never": false,
                "steps": {"type": "array", "default": [], "items": {"$ref": "#/$defs/S"}},
                "n": {"type": "integer", "format": "uint32", "default": 3},
                "when": {"type": "string", "format": "date-time"},
            },
            "required": ["value", "steps"],
            "additionalProperties": false,
            "$defs": {"S": {"type": "object", "properties": {"x": true}, "additionalProperties": true}},
        });
        assert_eq!(portability_problems(&schema).len(), 6, "{:?}", portability_problems(&schema));
        let fixed = portable(&schema);
        assert!(portability_problems(&fixed).is_empty(), "{fixed}");
        assert_eq!(fixed["properties"]["value"], json!({}));
        assert_eq!(fixed["properties"]["never"], json!({"not": {}}));
        assert_eq!(fixed["properties"]["steps"].get("default"), None);
        assert_eq!(fixed["properties"]["n"], json!({"type": "integer", "default": 3}), "optional: default kept");
        assert_eq!(fixed["properties"]["when"]["format"], "date-time");
        assert_eq!(fixed["additionalProperties"], json!(false));
        assert_eq!(fixed["$defs"]["S"]["properties"]["x"], json!({}));
        assert_eq!(fixed["$defs"]["S"]["additionalProperties"], json!({}));
    }

    #[test]
    fn non_object_schemas_are_wrapped_with_their_definitions_lifted() {
        let wanted = json!({"type": "array", "items": {"$ref": "#/$defs/Item"}, "$defs": {"Item": {"type": "string"}}});
        let sent = SentSchema::new(&wanted.into());
        assert!(sent.wrapped);
        assert_eq!(
            sent.schema,
            json!({
                "type": "object",
                "$defs": {"Item": {"type": "string"}},
                "properties": {"value": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
                "required": ["value"],
                "additionalProperties": false,
            })
        );
        assert_eq!(sent.unwrap(&json!({"value": ["a"]})), &json!(["a"]));
        assert_eq!(sent.unwrap_text(r#"{"value": ["a"]}"#.into()), r#"["a"]"#);
        assert_eq!(sent.unwrap_text("not json".into()), "not json");
    }

    #[test]
    fn object_schemas_are_sent_as_they_are() {
        let wanted = json!({"type": "object", "properties": {}});
        let sent = SentSchema::new(&wanted.clone().into());
        assert_eq!((&sent.schema, sent.wrapped, sent.strict), (&wanted, false, false));
        assert_eq!(sent.json.get(), wanted.to_string());
        assert_eq!(sent.unwrap_text("{}".into()), "{}");
        assert_eq!(object_schema(&json!({"properties": {}})), Some(json!({"type": "object", "properties": {}})));
        assert_eq!(object_schema(&json!({"type": ["object", "null"]})), None);
    }
}
