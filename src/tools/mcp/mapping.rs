//! Pure mappings between MCP's types and this crate's: ids, specs, arguments, results.

use rmcp::model::{CallToolResult, Tool as McpToolInfo};
use serde_json::{Map, Value};

use crate::SharedValue;
use crate::tool::{ToolError, ToolOutput, ToolSpec};

/// The longest id OpenAI and Anthropic accept for a function.
const MAX_ID_LEN: usize = 64;
/// Hex digits of the hash that ends a shortened id.
const HASH_LEN: usize = 8;

/// The id of `server`'s tool `tool`: `server__tool`, with every character outside
/// `[a-zA-Z0-9_-]` replaced by `_`; past 64 characters it is cut and ends in a hash
/// of the unshortened `server__tool`, so it stays unique and the same on every run.
pub(crate) fn tool_id(server: &str, tool: &str) -> String {
    let full = format!("{server}__{tool}");
    let clean: String =
        full.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
    if clean.len() <= MAX_ID_LEN && clean == full {
        return clean;
    }
    // Too long, or characters replaced (`a.b` and `a:b` would meet): a hash of the
    // original keeps the id unique. `clean` is ASCII, so any cut is a char boundary.
    let keep = clean.len().min(MAX_ID_LEN - HASH_LEN - 1);
    format!("{}_{}", &clean[..keep], stable_hash(&full))
}

/// Eight hex digits of a hash that is the same on every run and platform.
pub(crate) fn stable_hash(text: &str) -> String {
    format!("{:08x}", fnv1a(text) as u32)
}

/// FNV-1a, 64 bits: tiny, and stable across Rust versions and platforms, unlike `DefaultHasher`.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// The [`ToolSpec`] of an MCP tool listed by `server`, flags from its annotations
/// (see the [module docs](crate::tools::mcp)).
pub(crate) fn spec_from_mcp(server: &str, tool: &McpToolInfo) -> ToolSpec {
    let annotations = tool.annotations.as_ref();
    let hint = |get: fn(&rmcp::model::ToolAnnotations) -> Option<bool>| annotations.and_then(get).unwrap_or(false);
    let read_only = hint(|a| a.read_only_hint);
    let name =
        tool.title.clone().or_else(|| annotations.and_then(|a| a.title.clone())).unwrap_or(tool.name.to_string());
    let mut description = tool.description.as_deref().unwrap_or_default().trim().to_owned();
    if !read_only && hint(|a| a.destructive_hint) {
        description.push_str(" (Destructive: it may delete or overwrite data.)");
    }
    let mut spec = ToolSpec::new(tool_id(server, &tool.name), format!("{server}: {name}"), description.trim())
        .args_schema(Value::Object((*tool.input_schema).clone()));
    if let Some(output) = &tool.output_schema {
        spec = spec.output_description(format!("JSON matching {}", Value::Object((**output).clone())));
    }
    if read_only { spec.read_only() } else { spec.idempotent(hint(|a| a.idempotent_hint)).side_effects(true) }
}

/// The output of a call: `structuredContent` as it is when the server gave it; else a
/// single text content as a string; else every content block as typed JSON (`{"type":
/// "image", "data": ..., "mimeType": ...}`, `{"type": "resource", ...}`).
///
/// # Errors
/// An `isError` result is a [`ToolError::Soft`] carrying the server's text, so the
/// model can correct the call.
pub(crate) fn output_from_result(result: CallToolResult) -> Result<ToolOutput, ToolError> {
    if result.is_error == Some(true) {
        return Err(ToolError::soft(texts(&result).unwrap_or_else(|| "the tool reported an error".into())));
    }
    if let Some(structured) = result.structured_content {
        return Ok(ToolOutput::Value(structured.into()));
    }
    if let [rmcp::model::ContentBlock::Text(text)] = result.content.as_slice() {
        return Ok(ToolOutput::value(text.text.clone()));
    }
    let blocks = result.content.iter().map(|block| serde_json::to_value(block).unwrap_or(Value::Null)).collect();
    Ok(ToolOutput::Value(Value::Array(blocks).into()))
}

/// The text blocks of a result, joined.
fn texts(result: &CallToolResult) -> Option<String> {
    let texts: Vec<&str> = result
        .content
        .iter()
        .filter_map(|block| match block {
            rmcp::model::ContentBlock::Text(text) => Some(text.text.as_str()),
            _ => None,
        })
        .collect();
    (!texts.is_empty()).then(|| texts.join("\n"))
}

/// Checks `args` against a tool's input schema before anything is sent, in full:
/// nested objects and arrays, `enum`, bounds, patterns, local `$ref`s and closed
/// objects (`additionalProperties: false`). Formats are not asserted. Returns the
/// arguments to send: a `null` the schema refuses for an optional property is left
/// out, as models often write `null` for "not given" (for a required one it is
/// missing). A schema that is itself invalid, or refers to another document, lets
/// the arguments through with a logged warning: the server checks them too.
///
/// # Errors
/// A [`ToolError::Soft`] for the model to correct the call: each value that does not
/// fit (up to five), by its path such as `items/0/price`, and what it must be.
pub(crate) fn check_arguments(schema: &SharedValue, args: &Value) -> Result<Map<String, Value>, ToolError> {
    crate::schema_check::check(schema, args).map_err(ToolError::soft)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(value: Value) -> McpToolInfo {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn ids_are_namespaced_cleaned_and_shortened_stably() {
        assert_eq!(tool_id("time", "get_current_time"), "time__get_current_time");
        assert_eq!(tool_id("everything", "get-sum"), "everything__get-sum");
        let dotted = tool_id("a", "b.c");
        assert!(dotted.starts_with("a__b_c_") && dotted != tool_id("a", "b:c"), "{dotted}");
        let long = tool_id("server", &"t".repeat(80));
        assert_eq!(long.len(), 64);
        assert_ne!(long, tool_id("server", &format!("{}u", "t".repeat(79))));
        let re = |id: &str| {
            !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
        };
        for id in [long, dotted, tool_id("ü", "ß ∑ ")] {
            assert!(re(&id), "{id}");
        }
    }

    #[test]
    fn annotations_map_to_flags_and_no_annotations_mean_unsafe_to_repeat() {
        let base = json!({"name": "t", "inputSchema": {"type": "object"}});
        let plain = spec_from_mcp("s", &tool(base.clone()));
        assert!(!plain.idempotent && plain.side_effects, "nothing known: not repeated silently");
        let mut read = base.clone();
        read["annotations"] = json!({"readOnlyHint": true});
        let read = spec_from_mcp("s", &tool(read));
        assert!(read.idempotent && !read.side_effects);
        let mut idem = base.clone();
        idem["annotations"] = json!({"idempotentHint": true, "destructiveHint": true});
        let idem = spec_from_mcp("s", &tool(idem));
        assert!(idem.idempotent && idem.side_effects);
        assert!(idem.description.contains("Destructive"));
        assert_eq!(idem.id, "s__t");
    }

    #[test]
    fn results_keep_their_types_and_errors_are_soft() {
        let structured: CallToolResult = serde_json::from_value(
            json!({"content": [{"type": "text", "text": "{\"a\":1}"}], "structuredContent": {"a": 1}}),
        )
        .unwrap();
        assert_eq!(output_from_result(structured).unwrap(), ToolOutput::value(json!({"a": 1})));
        let text: CallToolResult =
            serde_json::from_value(json!({"content": [{"type": "text", "text": "hi"}]})).unwrap();
        assert_eq!(output_from_result(text).unwrap(), ToolOutput::value("hi"));
        let image: CallToolResult = serde_json::from_value(json!({"content": [
            {"type": "text", "text": "a picture"},
            {"type": "image", "data": "iVBOR", "mimeType": "image/png"}]}))
        .unwrap();
        let ToolOutput::Value(value) = output_from_result(image).unwrap() else { panic!() };
        let Value::Array(blocks) = &*value else { panic!() };
        assert_eq!(blocks[1]["type"], "image");
        assert_eq!(blocks[1]["mimeType"], "image/png");
        let error: CallToolResult =
            serde_json::from_value(json!({"content": [{"type": "text", "text": "bad city"}], "isError": true}))
                .unwrap();
        assert_eq!(output_from_result(error), Err(ToolError::soft("bad city")));
    }

    #[test]
    fn arguments_are_checked_against_the_schema() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "string"}},
            "required": ["a"], "additionalProperties": false});
        let schema = &SharedValue::from(schema);
        assert!(check_arguments(schema, &json!({"a": 1, "b": "x"})).is_ok());
        let missing = check_arguments(schema, &json!({"b": "x"})).unwrap_err();
        assert!(missing.is_soft() && missing.to_string().contains("the required argument `a` is missing"));
        assert!(check_arguments(schema, &json!({"a": "1"})).unwrap_err().to_string().contains("type number"));
        assert!(check_arguments(schema, &json!({"a": 1, "c": 2})).unwrap_err().to_string().contains("unknown"));
        assert!(check_arguments(schema, &json!([1])).is_err());
    }

    #[test]
    fn tool_ids_are_clean_unique_and_at_most_64_characters() {
        assert_eq!(tool_id("github", "search_issues"), "github__search_issues");
        // A replaced character adds a hash, so `search.issues` and `search:issues` stay apart.
        assert!(tool_id("github", "search.issues").starts_with("github__search_issues_"));
        let long = tool_id("server", &"x".repeat(100));
        assert_eq!(long.len(), 64);
        assert_eq!(long, tool_id("server", &"x".repeat(100)));
    }

    #[test]
    fn arguments_are_checked_and_a_null_optional_is_left_out() {
        let schema = json!({"type": "object", "required": ["a"],
            "properties": {"a": {"type": "number"}, "note": {"type": "string"}}});
        let schema = &SharedValue::from(schema);
        let sent = check_arguments(schema, &json!({"a": 1, "note": null})).unwrap();
        assert_eq!(serde_json::Value::Object(sent), json!({"a": 1}));
        let error = check_arguments(schema, &json!({"a": "1"})).unwrap_err();
        assert_eq!(error.to_string(), r#"`a` must be of type number, got "1""#);
    }
}
