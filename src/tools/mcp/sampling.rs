//! MCP sampling: a server's request for an LLM completion, answered by the step's
//! LLM, so what it spends is metered and journaled with the step.
//!
//! The protocol deprecates sampling (SEP-2577) but servers still send it; this module
//! goes when rmcp drops it.
#![allow(deprecated)]

use std::sync::Arc;

use rmcp::model::{CreateMessageRequestParams, CreateMessageResult, ErrorData};
use serde_json::{Value, json};

use crate::llm::{LlmClient, LlmRequest, Message, ModelRole};

/// Asks `llm` what the server asked, as text messages (other content is described,
/// not sent), and returns its text as the assistant's message.
///
/// # Errors
/// The LLM's error, as an MCP internal error the server sees.
pub(crate) async fn answer(
    llm: &Arc<dyn LlmClient>,
    params: &CreateMessageRequestParams,
) -> Result<CreateMessageResult, ErrorData> {
    let mut messages: Vec<Message> = params.system_prompt.iter().map(Message::system).collect();
    for message in serde_json::to_value(&params.messages).unwrap_or_default().as_array().into_iter().flatten() {
        let text = text_of(&message["content"]);
        messages.push(if message["role"] == "assistant" {
            Message::assistant(text, vec![])
        } else {
            Message::user(text)
        });
    }
    let reply = llm
        .chat(LlmRequest::new(ModelRole::Execution, messages))
        .await
        .map_err(|e| ErrorData::internal_error(format!("the client's LLM failed: {e}"), None))?;
    let message = json!({"role": "assistant", "content": {"type": "text", "text": reply.text.unwrap_or_default()}});
    let message = serde_json::from_value(message).map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
    Ok(CreateMessageResult::new(message, "portia".into()).with_stop_reason("endTurn"))
}

/// The text of one content block or several.
fn text_of(content: &Value) -> String {
    let blocks = match content {
        Value::Array(blocks) => blocks.clone(),
        block => vec![block.clone()],
    };
    blocks
        .iter()
        .map(|b| match b["type"].as_str() {
            Some("text") => b["text"].as_str().unwrap_or_default().to_owned(),
            Some(other) => format!("[{other} content]"),
            None => String::new(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}
