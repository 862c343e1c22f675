//! Fitting a wanted output schema to what providers accept.
//!
//! Both OpenAI's `json_schema`/`json_object` modes and Anthropic's tool inputs only
//! produce JSON objects. A schema whose root is something else (a list, a string,
//! an enum) is asked for inside a `{"value": ...}` object, and the value is taken
//! back out of the reply.

use serde_json::{Map, Value, json};

/// The property a non-object schema is wrapped in.
const WRAPPED_VALUE: &str = "value";

/// The schema sent to the provider for one wanted output schema.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SentSchema {
    /// What the provider is asked for: always an object schema.
    pub(crate) schema: Value,
    /// Whether the wanted schema was wrapped in a `value` property.
    pub(crate) wrapped: bool,
}

impl SentSchema {
    /// The object schema to send for `wanted`.
    pub(crate) fn new(wanted: &Value) -> Self {
        match object_schema(wanted) {
            Some(schema) => Self { schema, wrapped: false },
            None => Self { schema: wrap_in_object(wanted), wrapped: true },
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_object_schemas_are_wrapped_with_their_definitions_lifted() {
        let wanted = json!({"type": "array", "items": {"$ref": "#/$defs/Item"}, "$defs": {"Item": {"type": "string"}}});
        let sent = SentSchema::new(&wanted);
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
        let sent = SentSchema::new(&wanted);
        assert_eq!(sent, SentSchema { schema: wanted.clone(), wrapped: false });
        assert_eq!(sent.unwrap_text("{}".into()), "{}");
        assert_eq!(object_schema(&json!({"properties": {}})), Some(json!({"type": "object", "properties": {}})));
        assert_eq!(object_schema(&json!({"type": ["object", "null"]})), None);
    }
}
