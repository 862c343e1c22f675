//! A streamed Gemini reply (`:streamGenerateContent?alt=sse`), read chunk by chunk.
//!
//! Each `data:` event is a whole `GenerateContentResponse` holding the next parts
//! of the first candidate: pieces of text, and function calls, which come whole.
//! The chunk that carries a `finishReason` is the last; `usageMetadata` counts up
//! as the chunks come, so the last one seen is the total. The parts are put back
//! together as the unstreamed reply's body, so one parser reads both.

use serde_json::{Value, json};

use super::stream::Deltas;
use super::transport::Flow;

/// What the chunks read so far add up to.
#[derive(Debug, Default)]
pub(super) struct ChunkReader {
    parts: Vec<Value>,
    finish_reason: Option<Value>,
    usage: Value,
    prompt_feedback: Value,
}

impl ChunkReader {
    /// Reads one event's data, handing text (not thoughts) and function calls (which
    /// come whole, so as one piece) on to `deltas`.
    pub(super) fn read(&mut self, data: &str, deltas: &Deltas) -> Result<Flow, String> {
        let chunk: Value =
            serde_json::from_str(data).map_err(|e| format!("a chunk of the reply stream is not JSON ({e})"))?;
        if let Some(error) = chunk.get("error") {
            let message = error.get("message").and_then(Value::as_str).map_or_else(|| error.to_string(), str::to_owned);
            return Err(format!("the reply stream reported an error: {message}"));
        }
        if let Some(usage) = chunk.get("usageMetadata") {
            self.usage = usage.clone();
        }
        if let Some(feedback) = chunk.get("promptFeedback") {
            self.prompt_feedback = feedback.clone();
        }
        let Some(candidate) = chunk.get("candidates").and_then(|c| c.get(0)) else {
            // A blocked prompt has no candidates, and nothing more comes.
            return Ok(if self.prompt_feedback.get("blockReason").is_some() { Flow::Done } else { Flow::More });
        };
        for part in candidate.pointer("/content/parts").and_then(Value::as_array).into_iter().flatten() {
            let thought = part.get("thought").and_then(Value::as_bool) == Some(true);
            if let (false, Some(text)) = (thought, part.get("text").and_then(Value::as_str)) {
                deltas.text(text);
            }
            if let Some(call) = part.get("functionCall") {
                let (index, name) = (self.parts.len(), call.get("name").and_then(Value::as_str).unwrap_or_default());
                deltas.tool_arguments(index, name, "");
                deltas.tool_arguments(index, name, &call.get("args").cloned().unwrap_or_else(|| json!({})).to_string());
            }
            self.parts.push(part.clone());
        }
        match candidate.get("finishReason").filter(|r| !r.is_null()) {
            Some(reason) => {
                self.finish_reason = Some(reason.clone());
                Ok(Flow::Done)
            }
            None => Ok(Flow::More),
        }
    }

    /// The body an unstreamed request would have got.
    pub(super) fn into_reply(self) -> Value {
        if self.parts.is_empty() && self.finish_reason.is_none() {
            return json!({"promptFeedback": self.prompt_feedback, "usageMetadata": self.usage});
        }
        json!({
            "candidates": [{"content": {"role": "model", "parts": self.parts}, "finishReason": self.finish_reason}],
            "usageMetadata": self.usage,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::llm::Delta;

    #[tokio::test]
    async fn text_pieces_stream_thoughts_do_not_and_the_parts_come_back_whole() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let deltas = Deltas::new(move |d| sink.lock().unwrap().push(d));
        let mut reader = ChunkReader::default();
        let chunks = [
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "planning…", "thought": true}]}}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Amazon "}]}}],
                   "usageMetadata": {"promptTokenCount": 9}}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "grew faster."}]},
                   "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 4}}),
        ];
        let flows: Vec<Flow> = chunks.iter().map(|c| reader.read(&c.to_string(), &deltas).unwrap()).collect();
        assert_eq!(flows, [Flow::More, Flow::More, Flow::Done]);
        assert_eq!(*seen.lock().unwrap(), [Delta::Text("Amazon ".into()), Delta::Text("grew faster.".into())]);
        let reply = reader.into_reply();
        assert_eq!(reply["candidates"][0]["content"]["parts"].as_array().unwrap().len(), 3);
        assert_eq!(reply["usageMetadata"]["candidatesTokenCount"], 4);
    }

    #[test]
    fn a_function_call_streams_as_one_piece_named_first() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let deltas = Deltas::new(move |d| sink.lock().unwrap().push(d));
        let chunk = json!({"candidates": [{"content": {"role": "model", "parts": [
            {"text": "Adding."}, {"functionCall": {"name": "add", "args": {"a": 1}}}]}, "finishReason": "STOP"}]});
        assert_eq!(ChunkReader::default().read(&chunk.to_string(), &deltas), Ok(Flow::Done));
        let piece =
            |arguments: &str| Delta::ToolArguments { index: 1, tool: "add".into(), arguments: arguments.into() };
        assert_eq!(*seen.lock().unwrap(), [Delta::Text("Adding.".into()), piece(""), piece(r#"{"a":1}"#)]);
    }

    #[test]
    fn an_error_in_the_stream_is_reported_with_its_message() {
        let error = ChunkReader::default()
            .read(r#"{"error":{"code":503,"message":"overloaded"}}"#, &Deltas::new(|_| {}))
            .unwrap_err();
        assert!(error.contains("overloaded"), "{error}");
    }
}
