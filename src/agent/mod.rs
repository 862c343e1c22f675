//! Execution agents: one runs each step of a workflow.
//!
//! An agent never holds the workflow. The runner hands it a [`StepContext`] (the
//! step, its resolved inputs, earlier outputs, this step's clarifications, the tool)
//! and gets a [`StepResult`] back; only the runner changes and saves the workflow.
//!
//! - [`OneShotAgent`] (the default) makes one tool-calling LLM call per step.
//! - [`VerifierAgent`] first checks where each argument comes from and asks a human
//!   for any that is missing or would be invented.
//! - Whichever agent is chosen, a step without a tool is answered by one LLM call,
//!   and a tool whose arguments follow from the task (one with a
//!   [`ToolSpec::task_argument`], such as the LLM tool) is called directly.

mod context;
mod llm_step;
mod one_shot;
mod summarize;
mod tool_call;
mod verifier;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use context::render_value;
pub use one_shot::OneShotAgent;
pub use summarize::summarize_final_output;
pub use verifier::VerifierAgent;

use crate::clarification::Clarification;
use crate::config::Config;
use crate::execution_context::ExecutionContext;
use crate::ids::WorkflowId;
use crate::llm::{LlmClient, Usage};
use crate::plan::Step;
use crate::tool::{Tool, ToolRunContext, ToolSpec};
use crate::workflow::Output;

/// How many times a soft tool error is shown to the model before the step fails.
pub const MAX_TOOL_RETRIES: usize = 3;

/// A declared input of the step, with its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepInput {
    /// The input's name (`$name` for an earlier output).
    pub name: String,
    /// What it means.
    pub description: String,
    /// Its value: the constant, or the earlier step's output value.
    pub value: Value,
}

/// Everything an agent may use to run one step.
#[derive(Clone)]
#[non_exhaustive]
pub struct StepContext {
    /// The query the plan answers.
    pub query: String,
    /// The step's index in the plan.
    pub step_index: usize,
    /// The step.
    pub step: Step,
    /// The step's declared inputs with their values.
    pub inputs: Vec<StepInput>,
    /// Outputs of earlier steps that are not declared inputs: `(name, value)`.
    pub other_outputs: Vec<(String, Value)>,
    /// This step's clarifications, with the responses given so far.
    pub clarifications: Vec<Clarification>,
    /// Who the workflow runs for.
    pub execution_context: ExecutionContext,
    /// The workflow the step belongs to.
    pub workflow_id: WorkflowId,
    /// The step's tool; `None` for a step the LLM answers itself.
    pub tool: Option<Arc<dyn Tool>>,
    /// The LLM to call.
    pub llm: Arc<dyn LlmClient>,
    /// The SDK configuration.
    pub config: Arc<Config>,
    /// Today's date, `YYYY-MM-DD`.
    pub today: String,
}

impl fmt::Debug for StepContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepContext")
            .field("workflow_id", &self.workflow_id)
            .field("step_index", &self.step_index)
            .field("step", &self.step)
            .field("inputs", &self.inputs)
            .field("clarifications", &self.clarifications)
            .field("tool", &self.tool.as_ref().map(|t| t.spec().id))
            .finish_non_exhaustive()
    }
}

impl StepContext {
    /// The step's context as the LLM sees it: task, inputs, earlier outputs,
    /// clarification responses, end-user metadata, instructions and today's date.
    pub fn prompt(&self) -> String {
        context::render(self)
    }

    /// The context a tool run gets.
    pub fn tool_run_context(&self) -> ToolRunContext {
        let mut ctx = ToolRunContext::for_step(
            self.workflow_id,
            self.step_index,
            Arc::clone(&self.config),
            self.execution_context.clone(),
            self.clarifications.clone(),
        );
        ctx.step_context = self.prompt();
        ctx.llm = Some(Arc::clone(&self.llm));
        ctx
    }
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// The step produced its output.
    Output(Output),
    /// The step needs answers from a human first.
    Clarifications(Vec<Clarification>),
    /// The step failed; the message says why.
    Failed(String),
}

/// A step's outcome and the LLM usage it took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    /// How the step ended.
    pub outcome: StepOutcome,
    /// What it cost.
    pub usage: Usage,
}

impl StepResult {
    /// A result with no LLM usage recorded yet.
    pub fn new(outcome: StepOutcome) -> Self {
        Self { outcome, usage: Usage::default() }
    }
}

/// How an agent goes about a step.
pub(crate) enum Route {
    /// The step was handled without choosing arguments: no tool, or a direct tool.
    Done(StepResult),
    /// The agent must choose the arguments of this tool, described by this spec
    /// (taken once per step and passed along).
    ChooseArgs(Arc<dyn Tool>, ToolSpec),
}

/// Handles the steps every agent treats alike, and hands back the tool of the others.
pub(crate) async fn route(ctx: &StepContext) -> Route {
    let Some(tool) = &ctx.tool else { return Route::Done(llm_step::answer(ctx).await) };
    let spec = tool.spec();
    match spec.direct_args(&ctx.step.task) {
        Some(args) => Route::Done(tool_call::call_directly(ctx, tool.as_ref(), &spec, args).await),
        None => Route::ChooseArgs(Arc::clone(tool), spec),
    }
}

/// Runs one step. Implement it to bring your own execution strategy.
#[async_trait::async_trait]
pub trait Agent: Send + Sync + fmt::Debug {
    /// Runs the step described by `ctx`. Failures are a [`StepOutcome::Failed`], not a panic.
    async fn execute(&self, ctx: &StepContext) -> StepResult;
}
