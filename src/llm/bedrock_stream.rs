//! A streamed Converse reply (`converse-stream`), read frame by frame.
//!
//! The body is a sequence of AWS event-stream frames (length-prefixed, CRC-checked,
//! decoded by `aws-smithy-eventstream`), each with an `:event-type` header and a JSON
//! payload: `messageStart`; per content block `contentBlockStart` (a tool call's id
//! and name), `contentBlockDelta` (text, or a fragment of a tool call's input as JSON
//! text) and `contentBlockStop`; `messageStop` with the stop reason; and last
//! `metadata` with the usage. A frame whose `:message-type` is `exception` reports
//! an error. The blocks are put back together as the unstreamed reply's body, so one
//! parser reads both.

use std::collections::BTreeMap;

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use serde_json::{Value, json};

use super::stream::Deltas;
use super::transport::Flow;

/// What the frames read so far add up to.
#[derive(Debug, Default)]
pub(super) struct FrameReader {
    decoder: MessageFrameDecoder,
    /// Bytes received but not yet part of a whole frame.
    pending: Vec<u8>,
    /// Each content block by index: its text, or its tool call and input so far.
    blocks: BTreeMap<u64, Block>,
    stop_reason: Value,
    usage: Value,
}

#[derive(Debug)]
enum Block {
    Text(String),
    ToolUse { id: Value, name: Value, input: String },
}

impl FrameReader {
    /// Reads the frames `bytes` completes, handing text and tool input on to `deltas`.
    pub(super) fn read(&mut self, bytes: &[u8], deltas: &Deltas) -> Result<Flow, String> {
        self.pending.extend_from_slice(bytes);
        loop {
            let mut rest: &[u8] = &self.pending;
            let frame =
                self.decoder.decode_frame(&mut rest).map_err(|e| format!("a broken event-stream frame ({e})"))?;
            let consumed = self.pending.len() - rest.len();
            self.pending.drain(..consumed);
            let DecodedFrame::Complete(message) = frame else { return Ok(Flow::More) };
            let header = |name: &str| {
                let found = message.headers().iter().find(|h| h.name().as_str() == name);
                found.and_then(|h| h.value().as_string().ok()).map(|v| v.as_str().to_owned())
            };
            let payload: Value = serde_json::from_slice(message.payload())
                .map_err(|e| format!("an event of the reply stream is not JSON ({e})"))?;
            if header(":message-type").as_deref() != Some("event") {
                let kind = header(":exception-type").or_else(|| header(":error-code")).unwrap_or_default();
                let words = payload.get("message").and_then(Value::as_str).unwrap_or_default();
                return Err(format!("the reply stream reported {kind}: {words}"));
            }
            if self.event(header(":event-type").as_deref().unwrap_or_default(), &payload, deltas)? == Flow::Done {
                return Ok(Flow::Done);
            }
        }
    }

    fn event(&mut self, kind: &str, payload: &Value, deltas: &Deltas) -> Result<Flow, String> {
        let index = payload.get("contentBlockIndex").and_then(Value::as_u64).unwrap_or(0);
        match kind {
            "contentBlockStart" => {
                if let Some(tool) = payload.pointer("/start/toolUse") {
                    deltas.tool_arguments(position(index), tool["name"].as_str().unwrap_or_default(), "");
                    let block = Block::ToolUse {
                        id: tool["toolUseId"].clone(),
                        name: tool["name"].clone(),
                        input: String::new(),
                    };
                    self.blocks.insert(index, block);
                }
            }
            "contentBlockDelta" => self.grow(index, payload.get("delta").unwrap_or(&Value::Null), deltas)?,
            "messageStop" => self.stop_reason = payload.get("stopReason").cloned().unwrap_or(Value::Null),
            "metadata" => {
                self.usage = payload.get("usage").cloned().unwrap_or(Value::Null);
                return Ok(Flow::Done);
            }
            // `messageStart`, `contentBlockStop`, and kinds added later carry nothing to assemble.
            _ => {}
        }
        Ok(Flow::More)
    }

    fn grow(&mut self, index: u64, delta: &Value, deltas: &Deltas) -> Result<(), String> {
        if let Some(text) = delta.get("text").and_then(Value::as_str) {
            deltas.text(text);
            match self.blocks.entry(index).or_insert_with(|| Block::Text(String::new())) {
                Block::Text(so_far) => so_far.push_str(text),
                Block::ToolUse { .. } => return Err(format!("text arrived for the tool call of block {index}")),
            }
        } else if let Some(fragment) = delta.pointer("/toolUse/input").and_then(Value::as_str) {
            match self.blocks.get_mut(&index) {
                Some(Block::ToolUse { input, name, .. }) => {
                    input.push_str(fragment);
                    if !fragment.is_empty() {
                        deltas.tool_arguments(position(index), name.as_str().unwrap_or_default(), fragment);
                    }
                }
                _ => return Err(format!("tool input arrived for block {index}, which started no tool call")),
            }
        }
        // Reasoning deltas are the model's thinking, not its answer.
        Ok(())
    }

    /// The body an unstreamed `converse` call would have answered.
    pub(super) fn into_reply(self) -> Result<Value, String> {
        let mut content = Vec::new();
        for (index, block) in self.blocks {
            content.push(match block {
                Block::Text(text) => json!({"text": text}),
                Block::ToolUse { id, name, input } => {
                    let input: Value = if input.trim().is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str(&input)
                            .map_err(|e| format!("the streamed input of tool call {index} is not JSON ({e})"))?
                    };
                    json!({"toolUse": {"toolUseId": id, "name": name, "input": input}})
                }
            });
        }
        Ok(json!({
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": self.stop_reason,
            "usage": self.usage,
        }))
    }
}

/// A block index as a tool call's place in the reply.
fn position(index: u64) -> usize {
    usize::try_from(index).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One event-stream frame as AWS's framing documents it: total and header
    /// lengths, the prelude's CRC32, string headers (type 7), the payload, the CRC32
    /// of all before it.
    fn frame(headers: &[(&str, &str)], payload: &Value) -> Vec<u8> {
        let payload = payload.to_string().into_bytes();
        let mut encoded_headers = Vec::new();
        for (name, value) in headers {
            encoded_headers.push(u8::try_from(name.len()).unwrap());
            encoded_headers.extend(name.as_bytes());
            encoded_headers.push(7);
            encoded_headers.extend(u16::try_from(value.len()).unwrap().to_be_bytes());
            encoded_headers.extend(value.as_bytes());
        }
        let total = u32::try_from(12 + encoded_headers.len() + payload.len() + 4).unwrap();
        let mut out = total.to_be_bytes().to_vec();
        out.extend(u32::try_from(encoded_headers.len()).unwrap().to_be_bytes());
        out.extend(crc32(&out).to_be_bytes());
        out.extend(encoded_headers);
        out.extend(payload);
        out.extend(crc32(&out).to_be_bytes());
        out
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for byte in bytes {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    fn event(kind: &str, payload: Value) -> Vec<u8> {
        frame(&[(":event-type", kind), (":content-type", "application/json"), (":message-type", "event")], &payload)
    }

    #[tokio::test]
    async fn frames_split_anywhere_are_put_back_together_as_the_whole_reply() {
        let mut body = Vec::new();
        body.extend(event("messageStart", json!({"role": "assistant"})));
        body.extend(event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}})));
        body.extend(event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "lo"}})));
        body.extend(event("contentBlockStop", json!({"contentBlockIndex": 0})));
        let start = json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t1", "name": "f"}}});
        body.extend(event("contentBlockStart", start));
        body.extend(event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"a\":"}}}),
        ));
        body.extend(event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": " 1}"}}}),
        ));
        body.extend(event("messageStop", json!({"stopReason": "tool_use"})));
        body.extend(event(
            "metadata",
            json!({"usage": {"inputTokens": 9, "outputTokens": 4}, "metrics": {"latencyMs": 5}}),
        ));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let arguments = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (sink, args_sink) = (std::sync::Arc::clone(&seen), std::sync::Arc::clone(&arguments));
        let deltas = Deltas::new(move |delta| match delta {
            super::super::Delta::Text(text) => sink.lock().unwrap().push_str(&text),
            super::super::Delta::ToolArguments { index, tool, arguments } => {
                args_sink.lock().unwrap().push((index, tool, arguments));
            }
            super::super::Delta::Restarted => {}
        });
        let mut reader = FrameReader::default();
        let mut flows = Vec::new();
        for byte in &body {
            flows.push(reader.read(std::slice::from_ref(byte), &deltas).unwrap());
        }
        assert_eq!(flows.iter().filter(|f| **f == Flow::Done).count(), 1);
        assert_eq!(flows.last(), Some(&Flow::Done));
        assert_eq!(*seen.lock().unwrap(), "Hello");
        let piece = |arguments: &str| (1, "f".to_owned(), arguments.to_owned());
        assert_eq!(*arguments.lock().unwrap(), [piece(""), piece("{\"a\":"), piece(" 1}")]);
        assert_eq!(
            reader.into_reply().unwrap(),
            json!({
                "output": {"message": {"role": "assistant", "content": [
                    {"text": "Hello"},
                    {"toolUse": {"toolUseId": "t1", "name": "f", "input": {"a": 1}}},
                ]}},
                "stopReason": "tool_use",
                "usage": {"inputTokens": 9, "outputTokens": 4},
            })
        );
    }

    #[test]
    fn an_exception_frame_is_an_error_naming_it_and_a_bad_checksum_too() {
        let deltas = Deltas::new(|_| {});
        let exception = frame(
            &[
                (":exception-type", "throttlingException"),
                (":content-type", "application/json"),
                (":message-type", "exception"),
            ],
            &json!({"message": "Too many tokens"}),
        );
        let err = FrameReader::default().read(&exception, &deltas).unwrap_err();
        assert!(err.contains("throttlingException") && err.contains("Too many tokens"), "{err}");
        let mut broken = event("messageStart", json!({}));
        let last = broken.len() - 1;
        broken[last] ^= 0xff;
        assert!(FrameReader::default().read(&broken, &deltas).unwrap_err().contains("broken event-stream frame"));
    }
}
