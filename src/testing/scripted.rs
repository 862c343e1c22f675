use std::collections::VecDeque;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde_json::Value;

use crate::llm::{LlmClient, LlmError, LlmRequest, LlmResponse, ToolCall, Usage};

type Responder = Box<dyn Fn(&LlmRequest) -> Result<LlmResponse, LlmError> + Send + Sync>;

enum Reply {
    Fixed(Result<LlmResponse, LlmError>),
    Computed(Responder),
}

/// An LLM double that plays back a script. Strict: a call with nothing scripted
/// panics with the request, and dropping it with replies left, or after such a
/// call, panics too (unless the thread is already panicking). The runner catches a
/// step's panic as a failed step, so the panic at the drop is what fails a test
/// that did not look at the workflow's state.
///
/// Usage is estimated like the fake server does, one token per four characters of
/// the request's messages, tools and schema, so token budgets can be asserted offline.
pub struct ScriptedLlm {
    script: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<LlmRequest>>,
    /// The numbers of the calls that found nothing scripted.
    unexpected: Mutex<Vec<usize>>,
}

impl fmt::Debug for ScriptedLlm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedLlm")
            .field("remaining", &self.remaining())
            .field("calls", &lock(&self.requests).len())
            .finish()
    }
}

impl Default for ScriptedLlm {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One token per four characters, rounded up: the estimate the simulated APIs use too.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

fn estimate_prompt(request: &LlmRequest) -> u64 {
    let mut text = serde_json::to_string(&request.messages).unwrap_or_default();
    text.push_str(&serde_json::to_string(&request.tools).unwrap_or_default());
    if let Some(schema) = &request.output_schema {
        text.push_str(&schema.schema.to_string());
    }
    estimate_tokens(&text)
}

impl ScriptedLlm {
    /// An empty script.
    pub fn new() -> Self {
        Self { script: Mutex::new(VecDeque::new()), requests: Mutex::new(Vec::new()), unexpected: Mutex::default() }
    }

    fn push(self, reply: Reply) -> Self {
        lock(&self.script).push_back(reply);
        self
    }

    /// Then reply with this response.
    #[must_use]
    pub fn respond(self, response: LlmResponse) -> Self {
        self.push(Reply::Fixed(Ok(response)))
    }

    /// Then reply with text.
    #[must_use]
    pub fn text(self, text: impl Into<String>) -> Self {
        self.respond(LlmResponse::text(text))
    }

    /// Then reply with a JSON value as text (a structured reply).
    #[must_use]
    pub fn json(self, value: Value) -> Self {
        self.text(value.to_string())
    }

    /// Then reply with one call to `tool` with `arguments`.
    #[must_use]
    pub fn tool_call(self, tool: impl Into<String>, arguments: Value) -> Self {
        self.tool_calls(vec![(tool.into(), arguments)])
    }

    /// Then reply with several tool calls in one message.
    #[must_use]
    pub fn tool_calls(self, calls: Vec<(String, Value)>) -> Self {
        let n = lock(&self.script).len();
        let tool_calls = calls
            .into_iter()
            .enumerate()
            .map(|(i, (name, arguments))| ToolCall { id: format!("call_{n}_{i}"), name, arguments })
            .collect();
        self.respond(LlmResponse { text: None, tool_calls, usage: Usage::default(), model: None })
    }

    /// Then fail with `error`.
    #[must_use]
    pub fn error(self, error: LlmError) -> Self {
        self.push(Reply::Fixed(Err(error)))
    }

    /// Then reply with whatever `responder` makes of the request (to assert on it, or
    /// to answer from it).
    #[must_use]
    pub fn respond_with(
        self,
        responder: impl Fn(&LlmRequest) -> Result<LlmResponse, LlmError> + Send + Sync + 'static,
    ) -> Self {
        self.push(Reply::Computed(Box::new(responder)))
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<LlmRequest> {
        lock(&self.requests).clone()
    }

    /// How many scripted replies are left.
    pub fn remaining(&self) -> usize {
        lock(&self.script).len()
    }

    /// Panics unless every scripted reply was used and no call came with nothing
    /// scripted.
    pub fn assert_done(&self) {
        let unexpected = lock(&self.unexpected).clone();
        assert!(unexpected.is_empty(), "ScriptedLlm: calls {unexpected:?} came with nothing scripted");
        let left = self.remaining();
        assert!(left == 0, "ScriptedLlm: {left} scripted replies were never requested");
    }
}

#[async_trait::async_trait]
impl LlmClient for ScriptedLlm {
    async fn chat(&self, request: LlmRequest) -> Result<LlmResponse, LlmError> {
        let number = {
            let mut requests = lock(&self.requests);
            requests.push(request.clone());
            requests.len()
        };
        let Some(reply) = lock(&self.script).pop_front() else {
            lock(&self.unexpected).push(number);
            panic!(
                "ScriptedLlm: unexpected call #{number}; nothing left in the script. Request: {}",
                serde_json::to_string_pretty(&request).unwrap_or_default()
            );
        };
        let result = match reply {
            Reply::Fixed(result) => result,
            Reply::Computed(responder) => responder(&request),
        };
        result.map(|mut response| {
            if response.usage == Usage::default() {
                let completion = response.text.as_deref().map_or(0, estimate_tokens)
                    + response.tool_calls.iter().map(|c| estimate_tokens(&c.arguments.to_string())).sum::<u64>();
                response.usage = Usage::call(estimate_prompt(&request), completion);
            }
            response
        })
    }
}

impl Drop for ScriptedLlm {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.assert_done();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::Arc;

    use super::*;
    use crate::llm::{Message, ModelRole};

    fn message_of(panic: Box<dyn std::any::Any + Send>) -> String {
        panic.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    #[tokio::test]
    async fn a_call_with_nothing_scripted_fails_the_test_at_the_drop_though_its_panic_was_caught() {
        let llm = Arc::new(ScriptedLlm::new());
        let request = LlmRequest::new(ModelRole::Execution, vec![Message::user("hello")]);
        // As a runner does: the step's task panics and the panic becomes a failed step.
        let caller = Arc::clone(&llm);
        let caught = tokio::spawn(async move { caller.chat(request).await }).await;
        assert!(caught.is_err_and(|e| e.is_panic()));

        let llm = Arc::into_inner(llm).expect("the only reference is left");
        let dropped = catch_unwind(AssertUnwindSafe(|| drop(llm)));
        let message = message_of(dropped.expect_err("dropping it panics"));
        assert!(message.contains("calls [1] came with nothing scripted"), "{message}");
    }
}
