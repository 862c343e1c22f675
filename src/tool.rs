//! Tools: what a step calls to act on the world, and registries to find them.
//!
//! Implement [`Tool`] directly with a JSON schema of your own, or implement
//! [`TypedTool`] with an argument struct that derives `Deserialize` and `JsonSchema`
//! and get the schema and argument parsing for free, as [`Tool`]'s example shows.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::SharedValue;
use crate::clarification::Clarification;
pub use crate::events::ToolEvents;
use crate::execution_context::ExecutionContext;
use crate::ids::WorkflowId;
use crate::live::Asker;
use crate::llm::{LlmClient, ToolDefinition};
use crate::plan::ToolLookup;
use crate::{Error, Result};

/// What a tool run produced.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ToolOutput {
    /// A value, which becomes the step's output (shared with the journal, the
    /// events and the step's output, not copied).
    Value(SharedValue),
    /// Questions for a human; the workflow waits for them before the step runs again.
    Clarifications(Vec<Clarification>),
}

impl ToolOutput {
    /// A value output.
    pub fn value(value: impl Into<Value>) -> Self {
        Self::Value(SharedValue::new(value.into()))
    }

    /// One clarification.
    pub fn clarification(clarification: Clarification) -> Self {
        Self::Clarifications(vec![clarification])
    }
}

/// A tool run that failed, or a call that was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// Worth retrying with other arguments: the agent shows the model the message and
    /// asks again (arguments that do not fit, a value the service does not know).
    #[error("{0}")]
    Soft(String),
    /// The service failed (a rate limit, an outage, a lost connection, a garbled
    /// reply), not the arguments. The same arguments are sent again when the
    /// [`RetryHint`] says that cannot repeat a side effect; otherwise, or once the
    /// retries are spent, the model sees it as a soft error.
    #[error("{message}")]
    Transient {
        /// What went wrong.
        message: String,
        /// What the service said of the call.
        hint: RetryHint,
    },
    /// Retrying cannot help: the step, and the workflow, fail at once.
    #[error("{0}")]
    Hard(String),
    /// A hook, or a person at an approval gate, refused the call; it was not made.
    #[error("the call was denied: {0}")]
    Denied(String),
    /// A hook failed before or after the call.
    #[error("a hook failed: {0}")]
    Hook(String),
    /// The service kept failing and every re-send the retry policy allows was made.
    #[error("{0}")]
    RetriesExhausted(String),
}

impl ToolError {
    /// A retryable error.
    pub fn soft(message: impl fmt::Display) -> Self {
        Self::Soft(message.to_string())
    }

    /// A final error.
    pub fn hard(message: impl fmt::Display) -> Self {
        Self::Hard(message.to_string())
    }

    /// A failure of the service rather than of the arguments:
    /// `return Err(ToolError::transient("busy", RetryHint::not_performed()))`.
    /// See [`RetryHint`] for what the tool-call path then does.
    pub fn transient(message: impl fmt::Display, hint: RetryHint) -> Self {
        Self::Transient { message: message.to_string(), hint }
    }

    /// Whether the model may see the error and try again: [`ToolError::Soft`] or
    /// [`ToolError::Transient`].
    pub fn is_soft(&self) -> bool {
        matches!(self, Self::Soft(_) | Self::Transient { .. })
    }
}

/// Why a soft error happened, when the service failed rather than the arguments:
/// what the tool-call path needs to decide whether to send the same arguments again.
///
/// A tool returns it in [`ToolError::Transient`]. The same arguments are
/// sent again (after a backoff, or the wait the service asked for) only when that
/// cannot repeat a side effect: the tool's spec says it is `idempotent`, or the hint
/// says the call did not take place. Otherwise the error goes to the model, like any
/// soft error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryHint {
    /// How long the service asked to wait (its `Retry-After`), if it did.
    pub retry_after: Option<Duration>,
    /// Whether the service certainly did not act on the call (a 429, a refused
    /// connection), so that sending it again is safe even for a tool with side effects.
    pub not_performed: bool,
}

impl RetryHint {
    /// The service failed; whether it acted on the call is not known.
    pub fn unknown_outcome() -> Self {
        Self::default()
    }

    /// The service certainly did not act on the call.
    pub fn not_performed() -> Self {
        Self { not_performed: true, ..Self::default() }
    }

    /// Adds the wait the service asked for.
    #[must_use]
    pub fn retry_after(mut self, wait: Option<Duration>) -> Self {
        self.retry_after = wait;
        self
    }
}

/// What a tool is given besides its arguments.
///
/// It holds no configuration: a tool gets its settings (keys, base URLs, roots) when
/// it is constructed, so no tool can read another's secrets.
#[derive(Clone)]
#[non_exhaustive]
pub struct ToolRunContext {
    /// Who the workflow runs for.
    pub execution_context: ExecutionContext,
    /// The workflow the call belongs to.
    pub workflow_id: WorkflowId,
    /// The index of the step making the call.
    pub step: usize,
    /// Every clarification this step has raised, with the responses given so far.
    pub clarifications: Vec<Clarification>,
    /// The step's task and context as the agent sees it, for tools that ask an LLM.
    pub step_context: String,
    /// The step's LLM client, for tools that ask an LLM: what it spends is journaled,
    /// counted in the step's usage and held to the workflow's budget.
    pub llm: Option<Arc<dyn LlmClient>>,
    /// Where a long-running tool reports its progress, as events of the workflow.
    pub events: ToolEvents,
    /// The same for every try of one call (a call retried after a crash gets it
    /// again): send it on, as an `Idempotency-Key` header say, so the service acts once.
    pub idempotency_key: Option<String>,
    /// Cancelled when the workflow is cancelled or its run loses its lease: a long
    /// tool should stop and return an error.
    pub cancellation: CancellationToken,
    /// Where [`ToolRunContext::ask`] puts its questions; nowhere outside a run.
    asker: Asker,
}

impl fmt::Debug for ToolRunContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolRunContext")
            .field("workflow_id", &self.workflow_id)
            .field("step", &self.step)
            .field("idempotency_key", &self.idempotency_key)
            .field("execution_context", &self.execution_context)
            .field("clarifications", &self.clarifications)
            .finish_non_exhaustive()
    }
}

impl ToolRunContext {
    /// A context for `workflow_id` with nothing else set; the runner fills the rest.
    pub fn new(workflow_id: WorkflowId) -> Self {
        Self {
            execution_context: ExecutionContext::default(),
            workflow_id,
            step: 0,
            clarifications: Vec::new(),
            step_context: String::new(),
            llm: None,
            events: ToolEvents::default(),
            idempotency_key: None,
            cancellation: CancellationToken::new(),
            asker: Asker::default(),
        }
    }

    /// A context for step `step` of a workflow, with that step's clarifications.
    pub fn for_step(
        workflow_id: WorkflowId,
        step: usize,
        execution_context: ExecutionContext,
        clarifications: Vec<Clarification>,
    ) -> Self {
        Self { execution_context, step, clarifications, ..Self::new(workflow_id) }
    }

    /// Lets this context's [`ToolRunContext::ask`] reach a person.
    pub(crate) fn set_asker(&mut self, asker: Asker) {
        self.asker = asker;
    }

    /// Asks a person `question` now, while the call stays open, and waits up to `wait`
    /// for the answer.
    ///
    /// The question is announced at once as a
    /// [`ClarificationRaised`](crate::runner::EventKind::ClarificationRaised) event;
    /// whoever watches the workflow answers it with
    /// [`Runner::resolve_clarification`](crate::Runner::resolve_clarification), which
    /// checks the answer as for a stored question. An answer in time is returned,
    /// announced as `ClarificationResolved`, and stored with the step, resolved.
    /// Otherwise, or as soon as the workflow is cancelled, this returns `None`: return
    /// the question as [`ToolOutput::Clarifications`] and the workflow waits for the
    /// answer in NEED_CLARIFICATION like any other; the step then runs again and finds
    /// the answer in [`ToolRunContext::clarifications`].
    ///
    /// Keep `wait` short (seconds to minutes): the step waits with the tool. A context
    /// made outside a run (in a unit test, say) has nobody to ask and returns `None` at
    /// once, as does a zero `wait`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use portia::tool::{ToolOutput, ToolRunContext};
    /// # use portia::Clarification;
    /// # async fn run(ctx: &ToolRunContext) -> ToolOutput {
    /// if let Some(city) = ctx.clarified("city") {
    ///     return ToolOutput::value(city.clone()); // answered before the workflow resumed
    /// }
    /// let question = Clarification::input(ctx.workflow_id, "city", "Which city?");
    /// match ctx.ask(question.clone(), Duration::from_secs(60)).await {
    ///     Some(city) => ToolOutput::value(city),
    ///     None => ToolOutput::clarification(question),
    /// }
    /// # }
    /// ```
    pub async fn ask(&self, question: Clarification, wait: Duration) -> Option<Value> {
        self.asker.ask(question, wait, &self.cancellation).await
    }

    /// The response to this step's resolved clarification for `argument_name`, if any.
    pub fn clarified(&self, argument_name: &str) -> Option<&Value> {
        crate::clarification::latest_answer(&self.clarifications, argument_name)
    }
}

/// How a tool describes itself to planners, agents, the journal and approval gates.
///
/// One value carries everything but the behaviour, so a wrapper that forwards
/// [`Tool::spec`] cannot drop a flag. Build one with [`ToolSpec::new`] and the
/// chained setters:
///
/// ```
/// use portia::tool::ToolSpec;
///
/// let spec = ToolSpec::new("add_tool", "Add Tool", "Adds two numbers.").output_description("The sum.").read_only();
/// assert!(spec.idempotent && !spec.side_effects);
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct ToolSpec {
    /// A stable id such as `search_tool`, used in plans.
    pub id: String,
    /// A human-readable name such as `Search Tool`.
    pub name: String,
    /// What the tool does and when to use it; the planner and agents read this.
    pub description: String,
    /// The JSON schema of the tool's arguments (an object), shared: a spec is asked
    /// for at every plan and step, and its schema goes out with every call.
    pub args_schema: SharedValue,
    /// What the tool returns; may be empty.
    pub output_description: String,
    /// Whether calling twice with the same arguments (and the same idempotency key)
    /// has the effect of calling once, so a call may safely be repeated.
    pub idempotent: bool,
    /// Whether a call changes something outside the workflow (sends, writes, pays).
    pub side_effects: bool,
    /// Whether the tool's outputs are long enough to deserve an LLM summary.
    pub summarize: bool,
    /// When `Some(name)`, agents call the tool directly with `{name: step task}` and
    /// no LLM call chooses the arguments (the LLM tool takes `task`).
    pub task_argument: Option<String>,
}

impl ToolSpec {
    /// A spec taking no arguments, with no output description, no summary and no
    /// task argument. It is not idempotent and has side effects: nothing is known
    /// about a custom tool, so it is treated as unsafe to repeat until it says otherwise.
    pub fn new(id: impl Into<String>, name: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            description: description.into(),
            args_schema: no_arguments(),
            output_description: String::new(),
            idempotent: false,
            side_effects: true,
            summarize: false,
            task_argument: None,
        }
    }

    /// Sets the JSON schema of the arguments.
    #[must_use]
    pub fn args_schema(mut self, schema: impl Into<SharedValue>) -> Self {
        self.args_schema = schema.into();
        self
    }

    /// Sets what the tool returns.
    #[must_use]
    pub fn output_description(mut self, output_description: impl Into<String>) -> Self {
        self.output_description = output_description.into();
        self
    }

    /// Sets whether repeating a call has the effect of calling once.
    #[must_use]
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// Sets whether a call changes something outside the workflow.
    #[must_use]
    pub fn side_effects(mut self, side_effects: bool) -> Self {
        self.side_effects = side_effects;
        self
    }

    /// Sets whether outputs get an LLM summary.
    #[must_use]
    pub fn summarize(mut self, summarize: bool) -> Self {
        self.summarize = summarize;
        self
    }

    /// Makes agents call the tool directly with `{name: step task}`.
    #[must_use]
    pub fn task_argument(mut self, name: impl Into<String>) -> Self {
        self.task_argument = Some(name.into());
        self
    }

    /// Idempotent and without side effects: a tool that only reads.
    #[must_use]
    pub fn read_only(self) -> Self {
        self.idempotent(true).side_effects(false)
    }

    /// The tool as a function definition for the LLM.
    pub fn definition(&self) -> ToolDefinition {
        let mut description = self.description.clone();
        if !self.output_description.is_empty() {
            description.push_str(" Returns: ");
            description.push_str(&self.output_description);
        }
        ToolDefinition { name: self.id.clone(), description, parameters: self.args_schema.clone() }
    }

    /// The arguments to call the tool with straight away for `task`, when it has a
    /// [`ToolSpec::task_argument`]; `None`: a model chooses them.
    pub fn direct_args(&self, task: &str) -> Option<Value> {
        let name = self.task_argument.as_ref()?;
        Some(serde_json::json!({ name.as_str(): task }))
    }
}

/// The schema of a tool that takes no arguments, made once.
fn no_arguments() -> SharedValue {
    static NONE: std::sync::LazyLock<SharedValue> =
        std::sync::LazyLock::new(|| serde_json::json!({"type": "object", "properties": {}}).into());
    NONE.clone()
}

/// A capability a step can call.
///
/// ```
/// use portia::schemars::JsonSchema;
/// use portia::tool::{Tool, ToolError, ToolOutput, ToolRunContext, ToolSpec, TypedTool};
/// use portia::InMemoryToolRegistry;
/// use serde::Deserialize;
///
/// #[derive(Deserialize, JsonSchema)]
/// #[schemars(crate = "portia::schemars")]
/// struct AddArgs {
///     /// The first number.
///     a: f64,
///     /// The second number.
///     b: f64,
/// }
///
/// #[derive(Debug)]
/// struct AddTool;
///
/// #[portia::async_trait]
/// impl TypedTool for AddTool {
///     type Args = AddArgs;
///     fn spec(&self) -> ToolSpec {
///         // The argument schema comes from `AddArgs`; adding has no side effects.
///         ToolSpec::new("add_tool", "Add Tool", "Adds two numbers.").read_only()
///     }
///     async fn call(&self, _ctx: &ToolRunContext, args: AddArgs) -> Result<ToolOutput, ToolError> {
///         Ok(ToolOutput::value(args.a + args.b))
///     }
/// }
///
/// // Every `TypedTool` is a `Tool`, ready for a registry.
/// assert_eq!(Tool::spec(&AddTool).id, "add_tool");
/// let tools = InMemoryToolRegistry::new().with(AddTool)?;
/// # let _ = tools;
/// # Ok::<(), portia::Error>(())
/// ```
#[async_trait::async_trait]
pub trait Tool: Send + Sync + fmt::Debug {
    /// How the tool describes itself. Built anew on each call, so a caller that
    /// needs several fields calls it once and keeps the value.
    fn spec(&self) -> ToolSpec;
    /// Whether the tool can run now (for example, whether the user has signed in).
    async fn ready(&self, _ctx: &ToolRunContext) -> std::result::Result<bool, ToolError> {
        Ok(true)
    }
    /// Runs the tool with the model's arguments.
    async fn run(&self, ctx: &ToolRunContext, args: Value) -> std::result::Result<ToolOutput, ToolError>;
}

/// A tool with typed arguments; every `TypedTool` is a [`Tool`].
///
/// Arguments that do not fit `Args` are a [`ToolError::Soft`] carrying serde's
/// message, so the agent can show the model what to fix.
#[async_trait::async_trait]
pub trait TypedTool: Send + Sync + fmt::Debug {
    /// The argument struct.
    type Args: DeserializeOwned + JsonSchema + Send;
    /// See [`Tool::spec`]. Its `args_schema` is ignored: the schema of `Args` replaces it.
    fn spec(&self) -> ToolSpec;
    /// See [`Tool::ready`].
    async fn ready(&self, _ctx: &ToolRunContext) -> std::result::Result<bool, ToolError> {
        Ok(true)
    }
    /// Runs the tool with parsed arguments.
    async fn call(&self, ctx: &ToolRunContext, args: Self::Args) -> std::result::Result<ToolOutput, ToolError>;
}

#[async_trait::async_trait]
impl<T: TypedTool> Tool for T {
    fn spec(&self) -> ToolSpec {
        TypedTool::spec(self).args_schema(crate::llm::schema_value::<T::Args>())
    }
    async fn ready(&self, ctx: &ToolRunContext) -> std::result::Result<bool, ToolError> {
        TypedTool::ready(self, ctx).await
    }
    async fn run(&self, ctx: &ToolRunContext, args: Value) -> std::result::Result<ToolOutput, ToolError> {
        let args = serde_json::from_value(args).map_err(|e| {
            ToolError::soft(format!("the arguments do not fit the schema of {}: {e}", TypedTool::spec(self).id))
        })?;
        self.call(ctx, args).await
    }
}

/// A set of tools to plan and run with.
pub trait ToolRegistry: Send + Sync + fmt::Debug {
    /// Every tool, in registration order.
    fn get_tools(&self) -> Vec<Arc<dyn Tool>>;

    /// The tool with this id. A display name (such as `Search Tool`, as older plans
    /// have it) is accepted when no id matches.
    ///
    /// # Errors
    /// [`Error::ToolNotFound`].
    fn get_tool(&self, id: &str) -> Result<Arc<dyn Tool>> {
        let tools = self.get_tools();
        tools
            .iter()
            .find(|t| t.spec().id == id)
            .or_else(|| tools.iter().find(|t| t.spec().name.eq_ignore_ascii_case(id)))
            .cloned()
            .ok_or_else(|| Error::ToolNotFound(id.to_owned()))
    }

    /// The tools worth offering the planner for `query`: all of them unless a
    /// registry knows better.
    fn match_tools(&self, _query: &str) -> Vec<Arc<dyn Tool>> {
        self.get_tools()
    }
}

impl<R: ToolRegistry + ?Sized> ToolLookup for R {
    fn has_tool(&self, id: &str) -> bool {
        self.get_tool(id).is_ok()
    }
}

/// A shared registry, as [`RunnerBuilder::shared_tools`](crate::runner::RunnerBuilder::shared_tools)
/// takes it, validates plans too: `plan.validate(&registry)`.
impl<R: ToolRegistry + ?Sized> ToolLookup for Arc<R> {
    fn has_tool(&self, id: &str) -> bool {
        self.get_tool(id).is_ok()
    }
}

/// Tools held in memory. Registering an id twice is an error.
#[derive(Debug, Clone, Default)]
pub struct InMemoryToolRegistry {
    tools: Vec<Arc<dyn Tool>>,
    /// The id and display name of each tool, in the same order.
    names: Vec<(String, String)>,
}

impl InMemoryToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry holding `tools`.
    ///
    /// # Errors
    /// [`Error::DuplicateTool`] if two tools share an id.
    pub fn from_tools(tools: impl IntoIterator<Item = Arc<dyn Tool>>) -> Result<Self> {
        let mut registry = Self::new();
        for tool in tools {
            registry.register(tool)?;
        }
        Ok(registry)
    }

    /// Adds a tool.
    ///
    /// # Errors
    /// [`Error::DuplicateTool`] if its id is taken.
    pub fn register(&mut self, tool: Arc<dyn Tool>) -> Result<()> {
        let spec = tool.spec();
        if self.names.iter().any(|(id, _)| *id == spec.id) {
            return Err(Error::DuplicateTool(spec.id));
        }
        self.tools.push(tool);
        self.names.push((spec.id, spec.name));
        Ok(())
    }

    /// Adds a tool, builder style.
    ///
    /// # Errors
    /// [`Error::DuplicateTool`] if its id is taken.
    pub fn with(mut self, tool: impl Tool + 'static) -> Result<Self> {
        self.register(Arc::new(tool))?;
        Ok(self)
    }
}

impl ToolRegistry for InMemoryToolRegistry {
    fn get_tools(&self) -> Vec<Arc<dyn Tool>> {
        self.tools.clone()
    }

    /// As [`ToolRegistry::get_tool`], by the ids and names noted at registration
    /// rather than a spec (and its schema) per tool per lookup.
    fn get_tool(&self, id: &str) -> Result<Arc<dyn Tool>> {
        let at = (self.names.iter().position(|(tool_id, _)| tool_id == id))
            .or_else(|| self.names.iter().position(|(_, name)| name.eq_ignore_ascii_case(id)));
        at.map(|at| Arc::clone(&self.tools[at])).ok_or_else(|| Error::ToolNotFound(id.to_owned()))
    }
}

/// Several registries seen as one; the first registry holding an id wins.
#[derive(Debug, Clone, Default)]
pub struct AggregatedToolRegistry {
    registries: Vec<Arc<dyn ToolRegistry>>,
}

impl AggregatedToolRegistry {
    /// Combines `registries`, in priority order. Ids found in more than one are
    /// logged as a warning; see [`AggregatedToolRegistry::duplicate_ids`].
    pub fn new(registries: Vec<Arc<dyn ToolRegistry>>) -> Self {
        let registry = Self { registries };
        for id in registry.duplicate_ids() {
            tracing::warn!(tool = %id, "tool id registered in more than one registry; the first one wins");
        }
        registry
    }

    /// Adds a registry with lower priority than those already present.
    #[must_use]
    pub fn and(mut self, registry: impl ToolRegistry + 'static) -> Self {
        self.registries.push(Arc::new(registry));
        Self::new(self.registries)
    }

    /// Ids that more than one registry holds (only the first is used).
    pub fn duplicate_ids(&self) -> Vec<String> {
        let mut seen = Vec::new();
        let mut duplicates = Vec::new();
        for tool in self.registries.iter().flat_map(|r| r.get_tools()) {
            let id = tool.spec().id;
            if seen.contains(&id) {
                if !duplicates.contains(&id) {
                    duplicates.push(id);
                }
            } else {
                seen.push(id);
            }
        }
        duplicates
    }
}

impl ToolRegistry for AggregatedToolRegistry {
    fn get_tools(&self) -> Vec<Arc<dyn Tool>> {
        first_of_each_id(self.registries.iter().flat_map(|r| r.get_tools()))
    }

    fn match_tools(&self, query: &str) -> Vec<Arc<dyn Tool>> {
        first_of_each_id(self.registries.iter().flat_map(|r| r.match_tools(query)))
    }
}

/// The first tool of each id, in order. Each spec is built once, not once per comparison.
fn first_of_each_id(tools: impl Iterator<Item = Arc<dyn Tool>>) -> Vec<Arc<dyn Tool>> {
    let mut seen = Vec::new();
    let mut kept = Vec::new();
    for tool in tools {
        let id = tool.spec().id;
        if !seen.contains(&id) {
            seen.push(id);
            kept.push(tool);
        }
    }
    kept
}
