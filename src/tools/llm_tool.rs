//! `llm_tool`: a task answered by one LLM call over the step's context.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::llm::{LlmRequest, Message, ModelRole};
use crate::tool::{ToolError, ToolOutput, ToolRunContext, ToolSpec, TypedTool};

/// The id of the built-in LLM tool.
pub const LLM_TOOL_ID: &str = "llm_tool";

const DEFAULT_SYSTEM_PROMPT: &str = "You complete one task of a larger plan using only the task and the context \
given. Be concise and factual; do not invent data. Reply with the result only.";

/// Answers a task with one LLM call, given the step's context (its inputs and
/// earlier outputs): for summarising, comparing, writing or reasoning when no other
/// tool fits. Uses the runner's LLM with the execution model.
///
/// Agents call it directly with the step's task, without a tool-calling round trip.
#[derive(Debug, Clone)]
pub struct LlmTool {
    system_prompt: String,
}

/// The arguments of [`LlmTool`].
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct LlmToolArgs {
    /// What the model should do, such as "Summarise the search results in two sentences".
    pub task: String,
}

impl LlmTool {
    /// An LLM tool with the built-in instructions.
    pub fn new() -> Self {
        Self { system_prompt: DEFAULT_SYSTEM_PROMPT.to_owned() }
    }

    /// Replaces the instructions the model is given before the task.
    #[must_use]
    pub fn with_system_prompt(mut self, system_prompt: impl Into<String>) -> Self {
        self.system_prompt = system_prompt.into();
        self
    }

    /// The instructions the model is given before the task.
    pub fn system_prompt(&self) -> &str {
        &self.system_prompt
    }
}

impl Default for LlmTool {
    fn default() -> Self {
        Self::new()
    }
}

/// The user message: the task and the step's context. The runner's context already
/// starts with the task, so the task is not repeated then.
fn prompt(task: &str, step_context: &str) -> String {
    let context = step_context.trim();
    if context.is_empty() {
        task.to_owned()
    } else if context.contains(task) {
        context.to_owned()
    } else {
        format!("Task: {task}\n\nContext:\n{context}")
    }
}

#[async_trait::async_trait]
impl TypedTool for LlmTool {
    type Args = LlmToolArgs;

    fn spec(&self) -> ToolSpec {
        ToolSpec::new(
            LLM_TOOL_ID,
            "LLM Tool",
            "Asks a language model to do a task from the context: summarise, compare, write or reason. \
             Use only when no other tool fits.",
        )
        .output_description("The model's answer, as text.")
        // Answers vary from call to call, but nothing outside the workflow changes,
        // so repeating a call is harmless.
        .read_only()
        // Its only argument is the step's task: no LLM call is needed to choose it.
        .task_argument("task")
    }

    async fn call(&self, ctx: &ToolRunContext, args: LlmToolArgs) -> Result<ToolOutput, ToolError> {
        let Some(llm) = &ctx.llm else {
            return Err(ToolError::hard(
                "llm_tool needs an LLM, but the run context has none; run it through a Runner",
            ));
        };
        let task = args.task.trim();
        if task.is_empty() && ctx.step_context.trim().is_empty() {
            return Err(ToolError::soft("task is empty; say what the model should do"));
        }
        let messages =
            vec![Message::system(self.system_prompt.clone()), Message::user(prompt(task, &ctx.step_context))];
        let response = llm
            .chat(LlmRequest::new(ModelRole::Execution, messages))
            .await
            // The provider layer has already retried what retrying can fix.
            .map_err(|e| ToolError::hard(format!("the LLM call failed: {e}")))?;
        match response.text {
            Some(text) if !text.trim().is_empty() => Ok(ToolOutput::value(text)),
            _ => Err(ToolError::soft("the model gave an empty answer")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_is_not_repeated_when_the_context_holds_it() {
        assert_eq!(prompt("Sum up", ""), "Sum up");
        assert_eq!(prompt("Sum up", "Task: Sum up\nToday: x"), "Task: Sum up\nToday: x");
        assert_eq!(prompt("Sum up", "$a: 1"), "Task: Sum up\n\nContext:\n$a: 1");
    }
}
