//! A streamed Chat Completions reply (`stream: true`), read chunk by chunk.
//!
//! Each `data:` event is a `chat.completion.chunk` whose first choice carries a
//! `delta`: a piece of the text, or pieces of tool calls keyed by their `index`
//! (the id and name come once, the arguments as string fragments). With
//! `stream_options.include_usage` a last chunk with no choices carries the usage,
//! and `data: [DONE]` ends the stream. The pieces are put back together as the
//! unstreamed reply's body, so one parser reads both.

use serde_json::{Value, json};

use super::stream::Deltas;
use super::transport::Flow;

/// What the chunks read so far add up to.
#[derive(Debug, Default)]
pub(super) struct ChunkReader {
    text: String,
    calls: Vec<CallParts>,
    finish_reason: Value,
    usage: Value,
}

/// One tool call as its pieces arrive.
#[derive(Debug, Default)]
struct CallParts {
    id: Option<String>,
    name: String,
    arguments: String,
}

impl ChunkReader {
    /// Reads one event's data, handing text and tool-call arguments on to `deltas`.
    pub(super) fn read(&mut self, data: &str, deltas: &Deltas) -> Result<Flow, String> {
        if data.trim() == "[DONE]" {
            return Ok(Flow::Done);
        }
        let chunk: Value =
            serde_json::from_str(data).map_err(|e| format!("a chunk of the reply stream is not JSON ({e})"))?;
        if let Some(error) = chunk.get("error") {
            let message = error.get("message").and_then(Value::as_str).map_or_else(|| error.to_string(), str::to_owned);
            return Err(format!("the reply stream reported an error: {message}"));
        }
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage = usage.clone();
        }
        let first = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|choices| choices.iter().find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0));
        let Some(choice) = first else { return Ok(Flow::More) };
        if let Some(reason) = choice.get("finish_reason").filter(|r| !r.is_null()) {
            self.finish_reason = reason.clone();
        }
        let Some(delta) = choice.get("delta") else { return Ok(Flow::More) };
        if let Some(text) = delta.get("content").and_then(Value::as_str) {
            self.text.push_str(text);
            deltas.text(text);
        }
        for (position, call) in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten().enumerate() {
            self.read_call(position, call, deltas);
        }
        Ok(Flow::More)
    }

    fn read_call(&mut self, position: usize, call: &Value, deltas: &Deltas) {
        let index = call.get("index").and_then(Value::as_u64).map_or(position, |i| usize::try_from(i).unwrap_or(0));
        if self.calls.len() <= index {
            self.calls.resize_with(index + 1, CallParts::default);
        }
        let parts = &mut self.calls[index];
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            parts.id = Some(id.to_owned());
        }
        let function = call.get("function");
        if let Some(name) = function.and_then(|f| f.get("name")).and_then(Value::as_str)
            && parts.name.is_empty()
            && !name.is_empty()
        {
            name.clone_into(&mut parts.name);
            deltas.tool_arguments(index, name, "");
        }
        if let Some(arguments) = function.and_then(|f| f.get("arguments")).and_then(Value::as_str) {
            parts.arguments.push_str(arguments);
            if !arguments.is_empty() {
                deltas.tool_arguments(index, &parts.name, arguments);
            }
        }
    }

    /// The body an unstreamed request would have got.
    pub(super) fn into_reply(self) -> Value {
        let calls: Vec<Value> = self
            .calls
            .into_iter()
            .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
            .collect();
        let content = (!self.text.is_empty()).then_some(self.text);
        json!({
            "choices": [{"message": {"role": "assistant", "content": content, "tool_calls": calls}, "finish_reason": self.finish_reason}],
            "usage": self.usage,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::llm::Delta;

    #[test]
    fn tool_call_pieces_are_joined_by_index_and_streamed_as_they_come() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let deltas = Deltas::new(move |d| sink.lock().unwrap().push(d));
        let mut reader = ChunkReader::default();
        let chunks = [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"add","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":"}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_2","function":{"name":"neg","arguments":"{}"}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}"#,
        ];
        for chunk in chunks {
            assert_eq!(reader.read(chunk, &deltas), Ok(Flow::More));
        }
        assert_eq!(reader.read("[DONE]", &deltas), Ok(Flow::Done));
        let reply = reader.into_reply();
        assert_eq!(reply["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{\"a\":1}");
        assert_eq!(reply["choices"][0]["message"]["tool_calls"][1]["id"], "call_2");
        assert_eq!(reply["usage"]["completion_tokens"], 4);
        let piece = |index, tool: &str, arguments: &str| Delta::ToolArguments {
            index,
            tool: tool.into(),
            arguments: arguments.into(),
        };
        assert_eq!(
            *seen.lock().unwrap(),
            [
                piece(0, "add", ""),
                piece(0, "add", "{\"a\":"),
                piece(1, "neg", ""),
                piece(1, "neg", "{}"),
                piece(0, "add", "1}")
            ]
        );
    }

    #[test]
    fn an_error_chunk_is_an_error() {
        let mut reader = ChunkReader::default();
        let error = reader.read(r#"{"error":{"message":"overloaded"}}"#, &Deltas::new(|_| {})).unwrap_err();
        assert!(error.ends_with("overloaded"), "{error}");
    }
}
