//! Execution agents: one runs each step of a workflow.
//!
//! An agent never holds the workflow. The runner hands it a [`StepContext`] (the
//! step, its resolved inputs, earlier outputs, this step's clarifications, the tool)
//! and gets a [`StepOutcome`] back; only the runner changes and saves the workflow.
//! Every tool call goes through [`StepContext::call_tool`], which journals it, and
//! every LLM call through [`StepContext::llm`], which meters it.
//!
//! - [`OneShotAgent`] (the default) makes one tool-calling LLM call per step.
//! - [`VerifierAgent`] first checks where each argument comes from and asks a human
//!   for any that is missing or would be invented.
//! - Whichever agent is chosen, a step without a tool is answered by one LLM call,
//!   and a tool whose arguments follow from the task (one with a
//!   [`ToolSpec::task_argument`], such as the LLM tool) is called directly, and a
//!   ReAct step (one listing [`Step::tools`]) runs a loop in which the model calls
//!   those tools until it answers.

mod condition;
mod context;
mod llm_step;
mod one_shot;
mod react;
mod summarize;
mod tool_call;
mod user_step;
mod verifier;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use crate::workflow::StepOutcome;
pub(crate) use condition::skip_unless_holds;
pub use one_shot::OneShotAgent;
pub(crate) use summarize::summarize_final_output;
pub(crate) use user_step::ask_user;
pub use verifier::VerifierAgent;

use crate::SharedValue;
use crate::clarification::Clarification;
use crate::execution_context::ExecutionContext;
use crate::ids::WorkflowId;
use crate::llm::LlmClient;
use crate::plan::Step;
use crate::tool::{Tool, ToolError, ToolOutput, ToolRunContext, ToolSpec};

/// How many times a soft tool error is shown to the model before the step fails.
pub(crate) const MAX_TOOL_RETRIES: usize = 3;

/// A declared input of the step, with its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StepInput {
    /// The input's name (`$name` for an earlier output).
    pub name: String,
    /// What it means.
    pub description: String,
    /// Its value: the constant, or the earlier step's output value (shared with
    /// that output when the input reads all of it).
    pub value: SharedValue,
}

/// The run's journaled path for a step's tool calls. The runner provides it, so an
/// agent reaches no store, lease or hook itself.
#[async_trait::async_trait]
pub(crate) trait StepCalls: Send + Sync {
    /// The tool and arguments journaled for the next call, when an interrupted run
    /// of this step made it: the agent calls with them instead of asking the model again.
    fn journaled_call(&self) -> Option<(String, Value)>;

    /// The arguments journaled for the next call (see [`StepCalls::journaled_call`]).
    fn journaled_args(&self) -> Option<Value> {
        self.journaled_call().map(|(_, args)| args)
    }

    /// The finished calls of this step's earlier attempts (before it asked a
    /// person something), in the order they were made.
    fn earlier_calls(&self) -> Vec<PastCall>;

    /// The token a running tool watches for cancellation.
    fn cancellation(&self) -> CancellationToken;

    /// Makes a journaled call of `tool` with `args`, each try with a fresh copy of
    /// `context`, sending the same arguments again while the service fails and a
    /// re-send is safe.
    async fn call(
        &self,
        tool: &dyn Tool,
        spec: &ToolSpec,
        context: &ToolRunContext,
        args: Value,
    ) -> Result<ToolOutput, ToolError>;
}

/// A finished call of an earlier attempt of a step, as journaled.
#[derive(Debug, Clone)]
pub(crate) struct PastCall {
    pub(crate) tool_id: String,
    pub(crate) args: Value,
    pub(crate) outcome: Result<ToolOutput, ToolError>,
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
    /// The step's plan-time tool arguments, with their `$name` references resolved.
    pub args: Option<Value>,
    /// Outputs of earlier steps that are not declared inputs: `(name, value)`.
    pub other_outputs: Vec<(String, SharedValue)>,
    /// This step's clarifications, with the responses given so far.
    pub clarifications: Vec<Clarification>,
    /// Who the workflow runs for.
    pub execution_context: ExecutionContext,
    /// The workflow the step belongs to.
    pub workflow_id: WorkflowId,
    /// The step's tool; `None` for a step the LLM answers itself.
    pub tool: Option<Arc<dyn Tool>>,
    /// A ReAct step's tools, which the model calls as it sees fit; empty for any
    /// other step.
    pub tools: Vec<Arc<dyn Tool>>,
    /// The LLM to call. What it spends is journaled and counted in the step's usage.
    pub llm: Arc<dyn LlmClient>,
    /// How many characters of a value a prompt shows; the rest is clipped with a
    /// note saying so (the stored value stays whole).
    pub max_output_chars: usize,
    /// Today's date, `YYYY-MM-DD`.
    pub today: String,
    /// For an item of a `for_each` step, the item's index (from 0).
    pub loop_item: Option<usize>,
    /// Whether this step's answer is the workflow's final output and should come
    /// with a summary for the user (the last step, answered by the LLM, with
    /// summaries on): then no separate summary call is made.
    pub writes_final_answer: bool,
    /// The run's journaled path for this step's tool calls.
    pub(crate) calls: Arc<dyn StepCalls>,
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
            .field("tools", &self.tools.iter().map(|t| t.spec().id).collect::<Vec<_>>())
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
            self.execution_context.clone(),
            self.clarifications.clone(),
        );
        ctx.step_context = self.prompt();
        ctx.llm = Some(Arc::clone(&self.llm));
        ctx.cancellation = self.calls.cancellation();
        ctx
    }

    /// Calls `tool` (described by `spec`, its [`Tool::spec`]) with `args`, the one way
    /// a step calls a tool: the call is journaled before it is made and its outcome
    /// after, so a resumed run replays a finished call instead of making it again.
    ///
    /// When the service fails (a soft error carrying a [`RetryHint`](crate::tool::RetryHint))
    /// and sending the same arguments again cannot repeat a side effect (the tool is
    /// idempotent, or the call did not take place), they are sent again after a
    /// backoff, up to `max_retries` times, each as a new journaled call; past that
    /// the error is hard. Other soft errors are returned for the model to fix.
    pub async fn call_tool(&self, tool: &dyn Tool, spec: &ToolSpec, args: Value) -> Result<ToolOutput, ToolError> {
        self.calls.call(tool, spec, &self.tool_run_context(), args).await
    }
}

/// How an agent goes about a step.
pub(crate) enum Route {
    /// The step was handled without choosing arguments: no tool, a direct tool, the
    /// plan's arguments, or calls replayed from the journal.
    Done(StepOutcome),
    /// The agent must choose the arguments of this tool, described by this spec
    /// (taken once per step and passed along), minding these notes on why the plan's
    /// own arguments could not be used.
    ChooseArgs(Arc<dyn Tool>, ToolSpec, Vec<String>),
}

/// Handles the steps every agent treats alike, and hands back the tool of the others.
pub(crate) async fn route(ctx: &StepContext) -> Route {
    if !ctx.tools.is_empty() {
        return Route::Done(react::run(ctx).await);
    }
    let Some(tool) = &ctx.tool else { return Route::Done(llm_step::answer(ctx).await) };
    let spec = tool.spec();
    if ctx.step.function.is_some() {
        let args = ctx.args.clone().unwrap_or_else(|| Value::Object(Default::default()));
        return Route::Done(tool_call::call_function(ctx, tool.as_ref(), &spec, args).await);
    }
    if let Some(args) = spec.direct_args(&ctx.step.task) {
        return Route::Done(tool_call::call_directly(ctx, tool.as_ref(), &spec, args).await);
    }
    let mut notes = Vec::new();
    if let Some(args) = &ctx.args {
        match tool_call::call_with_plan_args(ctx, tool.as_ref(), &spec, args.clone()).await {
            Ok(outcome) => return Route::Done(outcome),
            Err(note) => notes.push(note),
        }
    }
    match tool_call::replay(ctx, tool.as_ref(), &spec).await {
        Some(outcome) => Route::Done(outcome),
        None => Route::ChooseArgs(Arc::clone(tool), spec, notes),
    }
}

/// The structured-output schemas the agents ask for.
#[cfg(test)]
pub(crate) fn output_schemas() -> Vec<crate::llm::OutputSchema> {
    vec![verifier::output_schema(), crate::llm::OutputSchema::of::<condition::Decision>("decision")]
}

/// Runs one step. Implement it to bring your own execution strategy.
#[async_trait::async_trait]
pub trait Agent: Send + Sync + fmt::Debug {
    /// Runs the step described by `ctx`, calling its tool through
    /// [`StepContext::call_tool`] and its LLM through [`StepContext::llm`].
    /// Failures are a [`StepOutcome::Failed`], not a panic.
    async fn execute(&self, ctx: &StepContext) -> StepOutcome;
}
