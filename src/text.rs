//! Small text helpers shared by the prompts, the providers and the tools.

use serde_json::Value;

/// `text` cut to at most `limit` characters (on a character boundary), with `marker`
/// appended when something was cut.
pub(crate) fn clip(text: &str, limit: usize, marker: &str) -> String {
    match text.char_indices().nth(limit) {
        Some((cut, _)) => format!("{}{marker}", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The human-readable message in an API's JSON error body, in the shapes APIs use:
/// `{"error": {"message"}}`, `{"error": "..."}`, `{"message"}`, `{"detail": {"error"}}`,
/// `{"detail": "..."}`. `None` when the body is not JSON or holds no message.
pub(crate) fn api_error_message(body: &[u8]) -> Option<String> {
    let json: Value = serde_json::from_slice(body).ok()?;
    ["/error/message", "/error", "/message", "/detail/error", "/detail"]
        .into_iter()
        .find_map(|pointer| json.pointer(pointer).and_then(Value::as_str))
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
}

/// A value as the LLM should read it: strings as they are, anything else as compact JSON.
pub(crate) fn render_value(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        // Written straight into the text, not through `Display`'s formatter, which
        // costs twice as much on a search's results. A `Value` always writes out.
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

/// A value as a prompt shows it: rendered, and clipped to `limit` characters with a
/// note saying so (the stored value stays whole).
pub(crate) fn prompt_value(value: &Value, limit: usize) -> String {
    let text = render_value(value);
    let total = text.chars().count();
    if total <= limit {
        return text;
    }
    let note = format!(" …[clipped: only the first {limit} of {total} characters are shown]");
    clip(&text, limit, &note)
}

/// The JSON a text holds (a model's answer, an exit's message), fenced in
/// Markdown or not; `None` when it holds none.
pub(crate) fn json_in(text: &str) -> Option<serde_json::Value> {
    serde_json::from_str(strip_code_fence(text)).ok()
}

/// Models served without native JSON mode often wrap JSON in a Markdown fence.
pub(crate) fn strip_code_fence(text: &str) -> &str {
    let trimmed = text.trim();
    let Some(inner) = trimmed.strip_prefix("```") else { return trimmed };
    let inner = inner.trim_start_matches(|c: char| c.is_ascii_alphanumeric());
    inner.strip_suffix("```").unwrap_or(inner).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_respects_character_boundaries() {
        assert_eq!(clip("héllo", 2, "…"), "hé…");
        assert_eq!(clip("hi", 5, "…"), "hi");
        assert_eq!(clip("hi", 2, "…"), "hi");
    }

    #[test]
    fn messages_are_found_in_every_common_shape() {
        let message = |body: &str| api_error_message(body.as_bytes());
        assert_eq!(message(r#"{"error": {"message": "bad model", "type": "x"}}"#).as_deref(), Some("bad model"));
        assert_eq!(message(r#"{"error": "plain"}"#).as_deref(), Some("plain"));
        assert_eq!(message(r#"{"cod": "404", "message": "city not found"}"#).as_deref(), Some("city not found"));
        assert_eq!(message(r#"{"detail": {"error": "Unauthorized"}}"#).as_deref(), Some("Unauthorized"));
        assert_eq!(message(r#"{"detail": "nope"}"#).as_deref(), Some("nope"));
        assert_eq!(message("<html>502</html>"), None);
        assert_eq!(message(r#"{"error": {"message": "  "}}"#), None);
    }

    #[test]
    fn strings_render_raw_and_others_as_json() {
        assert_eq!(render_value(&Value::from("a <b> & 'c'")), "a <b> & 'c'");
        assert_eq!(render_value(&serde_json::json!({"x": 1})), "{\"x\":1}");
    }
}
