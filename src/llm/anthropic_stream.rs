//! A streamed Messages reply (`stream: true`), read event by event.
//!
//! `message_start` carries the prompt's usage; each content block opens with
//! `content_block_start`, grows by `content_block_delta` (`text_delta` for text,
//! `input_json_delta` for a tool call's input as JSON fragments) and closes with
//! `content_block_stop`; `message_delta` carries the stop reason and the final
//! output count, and `message_stop` ends the reply. The blocks are put back
//! together as the unstreamed reply's body, so one parser reads both.

use serde_json::{Map, Value, json};

use super::stream::Deltas;
use super::transport::Flow;

/// What the events read so far add up to.
#[derive(Debug, Default)]
pub(super) struct EventReader {
    blocks: Vec<Value>,
    /// Each block's tool input so far, as the JSON text it arrives as.
    inputs: Vec<String>,
    stop_reason: Value,
    usage: Map<String, Value>,
}

impl EventReader {
    /// Reads one event (its name, and its data), handing text and tool input on to `deltas`.
    pub(super) fn read(&mut self, name: Option<&str>, data: &str, deltas: &Deltas) -> Result<Flow, String> {
        let event: Value =
            serde_json::from_str(data).map_err(|e| format!("an event of the reply stream is not JSON ({e})"))?;
        let kind = name.or_else(|| event.get("type").and_then(Value::as_str)).unwrap_or_default();
        match kind {
            "message_start" => self.add_usage(event.pointer("/message/usage")),
            "content_block_start" => self.start_block(&event, deltas)?,
            "content_block_delta" => self.grow_block(&event, deltas)?,
            "content_block_stop" => self.close_block(&event)?,
            "message_delta" => {
                if let Some(reason) = event.pointer("/delta/stop_reason").filter(|r| !r.is_null()) {
                    self.stop_reason = reason.clone();
                }
                self.add_usage(event.get("usage"));
            }
            "message_stop" => return Ok(Flow::Done),
            "error" => {
                let message = event.pointer("/error/message").and_then(Value::as_str).unwrap_or(data);
                return Err(format!("the reply stream reported an error: {message}"));
            }
            // `ping`, and kinds added later, carry nothing to assemble.
            _ => {}
        }
        Ok(Flow::More)
    }

    /// Counts present in a later event replace earlier ones: `message_delta`'s
    /// output count is the running total.
    fn add_usage(&mut self, usage: Option<&Value>) {
        for (field, count) in usage.and_then(Value::as_object).into_iter().flatten() {
            if count.is_u64() {
                self.usage.insert(field.clone(), count.clone());
            }
        }
    }

    fn index(event: &Value) -> Result<usize, String> {
        let index = event.get("index").and_then(Value::as_u64).ok_or("a content block event has no index")?;
        usize::try_from(index).map_err(|_| format!("content block index {index} is out of range"))
    }

    fn start_block(&mut self, event: &Value, deltas: &Deltas) -> Result<(), String> {
        let index = Self::index(event)?;
        let block = event.get("content_block").cloned().ok_or("content_block_start has no content_block")?;
        if self.blocks.len() <= index {
            self.blocks.resize(index + 1, Value::Null);
            self.inputs.resize(index + 1, String::new());
        }
        if let Some(text) = block.get("text").and_then(Value::as_str) {
            deltas.text(text);
        }
        if block.get("type").and_then(Value::as_str) == Some("tool_use") {
            deltas.tool_arguments(index, block.get("name").and_then(Value::as_str).unwrap_or_default(), "");
        }
        self.blocks[index] = block;
        Ok(())
    }

    fn grow_block(&mut self, event: &Value, deltas: &Deltas) -> Result<(), String> {
        let index = Self::index(event)?;
        let block = self.blocks.get_mut(index).filter(|b| !b.is_null());
        let block = block.ok_or_else(|| format!("a delta came for content block {index}, which never started"))?;
        let delta = event.get("delta").ok_or("content_block_delta has no delta")?;
        match delta.get("type").and_then(Value::as_str) {
            Some("text_delta") => {
                let piece = delta.get("text").and_then(Value::as_str).unwrap_or_default();
                let text = block.get("text").and_then(Value::as_str).unwrap_or_default();
                block["text"] = json!(format!("{text}{piece}"));
                deltas.text(piece);
            }
            Some("input_json_delta") => {
                let piece = delta.get("partial_json").and_then(Value::as_str).unwrap_or_default();
                self.inputs[index].push_str(piece);
                if !piece.is_empty() {
                    deltas.tool_arguments(index, block.get("name").and_then(Value::as_str).unwrap_or_default(), piece);
                }
            }
            // Thinking and signature deltas carry nothing the caller asked for.
            _ => {}
        }
        Ok(())
    }

    fn close_block(&mut self, event: &Value) -> Result<(), String> {
        let index = Self::index(event)?;
        let input = self.inputs.get(index).map(String::as_str).unwrap_or_default();
        if input.trim().is_empty() {
            return Ok(());
        }
        let parsed: Value = serde_json::from_str(input)
            .map_err(|e| format!("the input of tool_use block {index} is not valid JSON: {e}"))?;
        self.blocks[index]["input"] = parsed;
        Ok(())
    }

    /// The body an unstreamed request would have got.
    pub(super) fn into_reply(self) -> Value {
        let blocks: Vec<Value> = self.blocks.into_iter().filter(|b| !b.is_null()).collect();
        json!({"content": blocks, "stop_reason": self.stop_reason, "usage": self.usage})
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::llm::Delta;

    #[test]
    fn tool_input_fragments_are_joined_streamed_and_usage_is_the_last_count() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let deltas = Deltas::new(move |d| sink.lock().unwrap().push(d));
        let mut reader = EventReader::default();
        let events = [
            (
                "message_start",
                r#"{"type":"message_start","message":{"usage":{"input_tokens":25,"cache_read_input_tokens":5,"output_tokens":1}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_1","name":"add","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"a\": "}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"1}"}}"#,
            ),
            ("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":15}}"#,
            ),
        ];
        for (name, data) in events {
            assert_eq!(reader.read(Some(name), data, &deltas), Ok(Flow::More));
        }
        assert_eq!(reader.read(Some("message_stop"), r#"{"type":"message_stop"}"#, &deltas), Ok(Flow::Done));
        let reply = reader.into_reply();
        assert_eq!(reply["content"][0]["input"], json!({"a": 1}));
        assert_eq!(reply["usage"], json!({"input_tokens": 25, "cache_read_input_tokens": 5, "output_tokens": 15}));
        let pieces: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|d| match d {
                Delta::ToolArguments { index: 0, tool, arguments } if tool == "add" => arguments.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(pieces, ["", "{\"a\": ", "1}"], "the call is named first, then its input comes in pieces");
    }

    #[test]
    fn a_delta_for_a_block_never_started_is_an_error() {
        let mut reader = EventReader::default();
        let delta = r#"{"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":"x"}}"#;
        assert!(reader.read(None, delta, &Deltas::new(|_| {})).unwrap_err().contains("never started"));
    }
}
