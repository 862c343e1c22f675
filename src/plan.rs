//! Plans: the ordered steps an LLM (or your code) decides on before anything runs.
//!
//! A [`Plan`] is plain data. Each [`Step`] names a task, the tool that does it (or
//! none, for a step the LLM answers itself), the [`Variable`]s it reads and the
//! name of the output it produces. An input whose name is `$something` refers to
//! the output of an earlier step; an input with a value is a constant.
//!
//! A step may also carry its tool's arguments ([`Step::args`]), with `$name`
//! references to earlier outputs inside them: a step whose arguments are complete
//! calls its tool with no LLM call to choose them. See [`args`] for how references
//! are read.
//!
//! A reference may reach inside an output: `$quote.price`, `$report.items[0]`,
//! `$list[-1]` (from the end). When the producing step declares an
//! [`output_schema`](Step::output_schema), a reference to a field it does not have is
//! a [`PlanProblem::UnknownField`].
//!
//! A step may hold steps of its own ([`Step::steps`]): a block, run as an inline
//! sub-plan once (or once per item of its `for_each`), whose steps read earlier
//! outputs and `$item` by name. See [`PlanBuilder::block`].

pub mod args;
mod block;
mod condition;
mod reference;

use std::collections::HashSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub(crate) use condition::Condition;
pub(crate) use reference::Reference;

pub use crate::error::PlanProblem;
use crate::ids::PlanId;
use crate::usage::Usage;
use crate::{Error, Result};

/// A plan: the query it answers, the tools it may use, and its steps in order.
///
/// ```
/// use portia::testing::MockTool;
/// use portia::{InMemoryToolRegistry, Plan, PlanBuilder};
///
/// let plan = PlanBuilder::new("Weather where the meeting is")
///     .step("Find the meeting's city", Some("calendar_tool"), "$city")
///     .step("Get the weather there", Some("weather_tool"), "$weather")
///     .input("$city", "The meeting's city")
///     .build();
/// assert_eq!(plan.dependencies(1), ["$city"]);
///
/// // Checked against the tools it names before it runs.
/// let tools = InMemoryToolRegistry::new().with(MockTool::echo("calendar_tool"))?.with(MockTool::echo("weather_tool"))?;
/// plan.validate(&tools)?;
///
/// // Plain data, in the seed document's JSON shape.
/// let json = portia::serde_json::to_string(&plan).unwrap();
/// let back: Plan = portia::serde_json::from_str(&json).unwrap();
/// assert_eq!(back.steps.len(), 2);
/// # Ok::<(), portia::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Plan {
    /// The plan's id.
    #[serde(default)]
    pub id: PlanId,
    /// What the plan was made for.
    pub plan_context: PlanContext,
    /// The steps, in the order they are listed (and, when run one at a time, executed).
    pub steps: Vec<Step>,
    /// What it cost to write the plan (absent for a plan written by hand).
    #[serde(default, skip_serializing_if = "Usage::is_zero")]
    pub usage: Usage,
    /// The JSON Schema the final output must fit, when the plan has a typed result.
    /// A last step answered by the LLM writes its answer in this shape; any final
    /// output is checked against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    /// What the plan takes when another plan runs it as a sub-plan: each a `$name`
    /// its steps may read as if an earlier step had produced it. An input with a
    /// `value` has that value unless the calling step gives another.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Variable>,
}

/// What a plan was made for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PlanContext {
    /// The user's query.
    pub query: String,
    /// The ids of the tools the planner was offered.
    #[serde(default)]
    pub tool_ids: Vec<String>,
    /// The end user the plan was made for, if any. `portia serve` lets a token bound
    /// to an end user use only that user's plans, as its query may hold their data.
    /// Absent in plans stored before plans recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_user_id: Option<String>,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Step {
    /// What the step must do, in words.
    pub task: String,
    /// What the step reads: earlier outputs (`$name`) or constants.
    #[serde(default)]
    pub inputs: Vec<Variable>,
    /// The tool that carries the step out, or `None` when the LLM answers it directly.
    ///
    /// Older plans call this `tool_name`; both spellings are read.
    #[serde(default, alias = "tool_name")]
    pub tool_id: Option<String>,
    /// The name the step's output is stored under: `$` followed by an identifier.
    pub output: String,
    /// The tool's arguments, when the plan fixes them: a JSON object whose string
    /// values may hold `$name` references to earlier outputs. When they are complete
    /// and fit the tool's schema, the tool is called with them and no LLM call;
    /// otherwise the agent chooses the arguments, starting from these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    /// The JSON Schema the step's output must fit. A step the LLM answers then
    /// replies with JSON of this shape (structured output) instead of text; any
    /// step's output is checked against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    /// When the step runs: an expression over earlier outputs that the crate
    /// evaluates (`$ticket.urgent == true and $count > 2`), or plain words that one
    /// LLM call decides ("the ticket asks for a refund"). A step whose condition is
    /// false is recorded as skipped, with the reason, and so is a step that reads
    /// only skipped outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// A reference to a list (`$tickets`, `$report.items`): the step runs once per
    /// item, in parallel up to the runner's limit, with `$item` and `$index` (from 0)
    /// among the references it may use; its output is the list of the items'
    /// outputs, in item order. Its `condition` and `output_schema` apply to each item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    /// The name of a Rust function registered on the runner
    /// ([`RunnerBuilder::function`](crate::runner::RunnerBuilder::function)) that
    /// carries the step out instead of a tool: called with the step's `args` and
    /// journaled like a tool call, with no LLM call ever (`args` that do not fit the
    /// function's schema fail the step `InvalidStep`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// The model this step's LLM calls go to (`provider/model` accepted, such as
    /// `anthropic/claude-sonnet-4-5`), instead of the configured execution model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Makes this a user step: its task is a question for a person (it may hold
    /// `$name` references), asked as a clarification, and the answer is its output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ask_user: Option<AskUser>,
    /// Ends the workflow when the step runs (after its condition holds), instead of
    /// doing the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<Exit>,
    /// Makes this a ReAct step: the model calls any of these tools (by id), as often
    /// as it needs, until it answers; each call is journaled and hooked like any
    /// tool call. A ReAct step has no `tool_id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// How many tool calls a ReAct step may make before it fails with
    /// [`FailureKind::ToolCallLimit`](crate::FailureKind::ToolCallLimit); 25 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tool_calls: Option<u32>,
    /// Makes this a sub-plan step: the stored plan with this id runs as a child
    /// workflow, with the step's `args` as its [`inputs`](Plan::inputs) (`{"ticket":
    /// "$ticket"}`), and its final output is the step's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanId>,
    /// Makes this a block: an inline sub-plan of these steps, run as a child
    /// workflow (its plan is [`Plan::block_plan`]). The steps may read `$item` and
    /// `$index` of this step's loop and any output produced before this step; those
    /// become the child's inputs by themselves. The last step's output is this
    /// step's output (under `for_each`, one per item, in item order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
}

/// What a user step asks a person for. In JSON, `{"kind": "input"}`,
/// `{"kind": "choice", "options": [...]}` or `{"kind": "confirm"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AskUser {
    /// Any answer: text, or a JSON value.
    Input,
    /// One of these options.
    Choice {
        /// The options offered.
        options: Vec<Value>,
    },
    /// Yes or no: the output is `true` or `false`.
    Confirm,
}

/// How an exit step ends the workflow. In JSON, `{"complete": "message"}` or
/// `{"failed": "error"}`; the text may hold `$name` references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Exit {
    /// COMPLETE, with this message as the final output.
    Complete(String),
    /// FAILED, with this error ([`FailureKind::Exited`](crate::FailureKind::Exited)).
    Failed(String),
}

impl Exit {
    /// The message or error.
    pub fn message(&self) -> &str {
        match self {
            Self::Complete(text) | Self::Failed(text) => text,
        }
    }

    /// The same way out, with another message.
    #[must_use]
    pub fn with_message(&self, message: impl Into<String>) -> Self {
        match self {
            Self::Complete(_) => Self::Complete(message.into()),
            Self::Failed(_) => Self::Failed(message.into()),
        }
    }
}

impl Step {
    /// A step with no inputs and no arguments.
    pub fn new(task: impl Into<String>, tool_id: Option<&str>, output: impl Into<String>) -> Self {
        Self {
            task: task.into(),
            inputs: Vec::new(),
            tool_id: tool_id.map(str::to_owned),
            output: output.into(),
            args: None,
            output_schema: None,
            condition: None,
            for_each: None,
            function: None,
            model: None,
            ask_user: None,
            exit: None,
            tools: Vec::new(),
            max_tool_calls: None,
            plan: None,
            steps: Vec::new(),
        }
    }

    /// A sub-plan step: the stored plan `plan` runs as a child workflow with `args`
    /// as its inputs (see [`Step::plan`]).
    pub fn sub_plan(task: impl Into<String>, plan: PlanId, args: Value, output: impl Into<String>) -> Self {
        let mut step = Self::new(task, None, output);
        step.plan = Some(plan);
        step.args = Some(args);
        step
    }

    /// A ReAct step: the model calls any of `tools` until it answers (see [`Step::tools`]).
    pub fn react<I, S>(task: impl Into<String>, tools: I, output: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut step = Self::new(task, None, output);
        step.tools = tools.into_iter().map(Into::into).collect();
        step
    }

    /// The most tool calls this ReAct step may make (see [`Step::max_tool_calls`]).
    #[must_use]
    pub fn max_tool_calls(mut self, limit: u32) -> Self {
        self.max_tool_calls = Some(limit);
        self
    }

    /// Whether this is a ReAct step (it lists tools).
    pub fn is_react(&self) -> bool {
        !self.tools.is_empty()
    }

    /// This step, reading `input` too.
    #[must_use]
    pub fn input(mut self, input: Variable) -> Self {
        self.inputs.push(input);
        self
    }

    /// This step, calling its tool with these arguments (a JSON object whose string
    /// values may hold `$name` references to earlier outputs).
    #[must_use]
    pub fn args(mut self, args: Value) -> Self {
        self.args = Some(args);
        self
    }

    /// This step, run only when `condition` holds (see [`Step::condition`]).
    #[must_use]
    pub fn when(mut self, condition: impl Into<String>) -> Self {
        self.condition = Some(condition.into());
        self
    }

    /// This step, run once per item of the list `list` refers to (see [`Step::for_each`]).
    #[must_use]
    pub fn for_each(mut self, list: impl Into<String>) -> Self {
        self.for_each = Some(list.into());
        self
    }

    /// This step, producing output that fits `schema` (a JSON Schema).
    #[must_use]
    pub fn with_output_schema(mut self, schema: Value) -> Self {
        self.output_schema = Some(schema);
        self
    }
}

/// The JSON Schema of `T`, without the root's `$schema` and `title`, which a model
/// does not need.
pub(crate) fn schema_of<T: JsonSchema>() -> Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default();
    if let Some(root) = schema.as_object_mut() {
        root.remove("$schema");
        root.remove("title");
    }
    schema
}

impl PlanContext {
    /// The context of a plan for `query` that was offered the tools `tool_ids`.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(query: impl Into<String>, tool_ids: I) -> Self {
        Self { query: query.into(), tool_ids: tool_ids.into_iter().map(Into::into).collect(), end_user_id: None }
    }

    /// The same context, made for `end_user_id` (or for no one).
    #[must_use]
    pub fn for_end_user(mut self, end_user_id: Option<String>) -> Self {
        self.end_user_id = end_user_id;
        self
    }
}

/// An input of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Variable {
    /// `$name` for a reference to an earlier step's output, or any name for a constant.
    pub name: String,
    /// The constant's value; `null` for a reference.
    #[serde(default)]
    pub value: Option<Value>,
    /// What the input means.
    #[serde(default)]
    pub description: String,
}

impl Variable {
    /// A reference to the output of an earlier step.
    pub fn reference(name: impl Into<String>, description: impl Into<String>) -> Self {
        Self { name: name.into(), value: None, description: description.into() }
    }

    /// A constant input.
    pub fn constant(name: impl Into<String>, value: impl Into<Value>, description: impl Into<String>) -> Self {
        Self { name: name.into(), value: Some(value.into()), description: description.into() }
    }

    /// Whether this input refers to an earlier step's output.
    pub fn is_reference(&self) -> bool {
        self.value.is_none()
    }
}

/// What checking a plan needs to know of the tools: whether one is there. Every
/// [`ToolRegistry`](crate::ToolRegistry) is one, so a registry is what you pass to
/// [`Plan::validate`].
pub trait ToolLookup {
    /// Whether the tool with this id (or display name) is available.
    fn has_tool(&self, id: &str) -> bool;
}

impl Plan {
    /// A new plan with a fresh id.
    pub fn new(plan_context: PlanContext, steps: Vec<Step>) -> Self {
        Self {
            id: PlanId::new(),
            plan_context,
            steps,
            usage: Usage::default(),
            output_schema: None,
            inputs: Vec::new(),
        }
    }

    /// Starts writing a plan in code, without an LLM.
    pub fn builder(query: impl Into<String>) -> PlanBuilder {
        PlanBuilder::new(query)
    }

    /// The index of the step that produces `output`, if any.
    pub fn step_producing(&self, output: &str) -> Option<usize> {
        self.steps.iter().position(|step| step.output == output)
    }

    /// Reads a plan from its JSON, as `portia plan` prints it, refusing keys that
    /// no field takes rather than ignoring them (a misspelt `condition` would drop
    /// the guard), and a step's empty `steps` or `tools` list, which would read as
    /// no list. `serde_json::from_str` reads one leniently.
    ///
    /// ```
    /// use portia::Plan;
    ///
    /// let json = r#"{"plan_context": {"query": "q", "tool_ids": []},
    ///                "steps": [{"task": "a", "output": "$a", "conditon": "false"}]}"#;
    /// let err = Plan::from_json(json).unwrap_err();
    /// assert!(err.to_string().contains("`steps.0.conditon` (did you mean `condition`?)"));
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidPlan`] with [`PlanProblem::NotAPlan`], or a
    /// [`PlanProblem::UnknownKey`] for each key no field takes, and a
    /// [`PlanProblem::NoSteps`] (in its block) or [`PlanProblem::InvalidToolList`]
    /// for each empty list.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| not_a_plan(&e))?;
        Self::from_value(value)
    }

    /// [`Plan::from_json`] for JSON already parsed.
    ///
    /// # Errors
    /// As [`Plan::from_json`].
    pub fn from_value(value: Value) -> Result<Self> {
        let mut problems = Vec::new();
        empty_lists(&value, &mut Vec::new(), &mut problems);
        let mut unknown = Vec::new();
        let plan: Plan =
            serde_ignored::deserialize(value, |path| unknown.push(path.to_string())).map_err(|e| not_a_plan(&e))?;
        problems.extend(unknown.into_iter().map(unknown_key));
        if problems.is_empty() { Ok(plan) } else { Err(Error::InvalidPlan(problems)) }
    }

    /// Checks the plan against a tool registry and reports every problem at once.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use portia::testing::MockTool;
    /// use portia::{InMemoryToolRegistry, PlanBuilder, ToolRegistry};
    ///
    /// let plan = PlanBuilder::new("q").step("Search", Some("search_tool"), "$found").build();
    /// let tools = InMemoryToolRegistry::new().with(MockTool::echo("search_tool"))?;
    /// plan.validate(&tools)?;
    /// let shared: Arc<dyn ToolRegistry> = Arc::new(tools);
    /// plan.validate(&shared)?;
    /// assert!(plan.validate(&InMemoryToolRegistry::new()).is_err());
    /// # Ok::<(), portia::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidPlan`] listing each [`PlanProblem`].
    pub fn validate(&self, registry: &(impl ToolLookup + ?Sized)) -> Result<()> {
        let problems = self.problems(registry);
        if problems.is_empty() { Ok(()) } else { Err(Error::InvalidPlan(problems)) }
    }

    /// Every problem [`Plan::validate`] would report; empty when the plan is valid.
    pub fn problems(&self, registry: &(impl ToolLookup + ?Sized)) -> Vec<PlanProblem> {
        self.problems_within(registry, &Outer::default())
    }

    /// The problems of this plan's steps, which may also read what `outer` holds
    /// (for a block's plan, the outputs of its enclosing plans).
    fn problems_within(&self, registry: &(impl ToolLookup + ?Sized), outer: &Outer) -> Vec<PlanProblem> {
        let mut problems = Vec::new();
        if self.steps.is_empty() {
            problems.push(PlanProblem::NoSteps);
        }
        self.plan_level_problems(&mut problems);
        let produced = self.inputs.iter().map(|input| input.name.as_str()).collect();
        let mut scope = Scope { produced, outer };
        for (step, s) in self.steps.iter().enumerate() {
            if s.task.trim().is_empty() {
                problems.push(PlanProblem::EmptyTask { step });
            }
            self.input_problems(step, &scope, &mut problems);
            if let Some(tool_id) = &s.tool_id
                && !registry.has_tool(tool_id)
            {
                problems.push(PlanProblem::UnknownTool { step, tool_id: tool_id.clone() });
            }
            for tool_id in s.tools.iter().filter(|id| !registry.has_tool(id)) {
                problems.push(PlanProblem::UnknownTool { step, tool_id: tool_id.clone() });
            }
            if let Some(reason) = react_problem(s) {
                problems.push(PlanProblem::InvalidToolList { step, reason });
            }
            let kinds = kinds_of(s);
            if kinds.len() > 1 {
                problems.push(PlanProblem::MixedStepKinds { step, kinds });
            }
            self.args_problems(step, &scope, &mut problems);
            self.condition_problems(step, &scope, &mut problems);
            self.text_problems(step, &scope, &mut problems);
            self.for_each_problems(step, &scope, &mut problems);
            if s.is_block() {
                self.block_problems(registry, step, outer, &mut problems);
            }
            if !args::is_output_name(&s.output) {
                problems.push(PlanProblem::InvalidOutputName { step, output: s.output.clone() });
            }
            if let Some(reason) = s.output_schema.as_ref().and_then(crate::schema_check::schema_problem) {
                problems.push(PlanProblem::InvalidOutputSchema { step: Some(step), reason });
            }
            if let Some(reason) = s.ask_user.as_ref().and_then(ask_user_problem) {
                problems.push(PlanProblem::InvalidAskUser { step, reason });
            }
            if !scope.produced.insert(s.output.as_str()) {
                problems.push(PlanProblem::DuplicateOutput { step, output: s.output.clone() });
            }
        }
        problems
    }

    /// The problems of the plan's own inputs and output schema.
    fn plan_level_problems(&self, problems: &mut Vec<PlanProblem>) {
        let mut seen = HashSet::new();
        for input in &self.inputs {
            let name = input.name.clone();
            if !args::is_output_name(&input.name) {
                let reason = "is not a name: write $ followed by letters, digits or _, such as $ticket".to_owned();
                problems.push(PlanProblem::InvalidPlanInput { name, reason });
            } else if !seen.insert(input.name.as_str()) {
                problems.push(PlanProblem::InvalidPlanInput { name, reason: "is declared twice".to_owned() });
            }
        }
        if let Some(reason) = self.output_schema.as_ref().and_then(crate::schema_check::schema_problem) {
            problems.push(PlanProblem::InvalidOutputSchema { step: None, reason });
        }
    }

    /// The problems of block step `step`'s own steps, each naming the block step.
    fn block_problems(
        &self,
        registry: &(impl ToolLookup + ?Sized),
        step: usize,
        outer: &Outer,
        problems: &mut Vec<PlanProblem>,
    ) {
        let Some(block) = self.block_plan(step) else { return };
        let mut within = outer.clone();
        within.known.extend(self.inputs.iter().map(|i| i.name.clone()));
        for s in &self.steps {
            within.known.insert(s.output.clone());
            if let Some(schema) = self.output_schema_of(outer, &s.output) {
                within.schemas.insert(s.output.clone(), schema);
            }
        }
        let inner = block.problems_within(registry, &within);
        problems.extend(inner.into_iter().map(|problem| PlanProblem::InBlock { step, inner: Box::new(problem) }));
    }

    /// Whether `name` is an output of this plan's steps or of an enclosing plan's,
    /// wherever it is produced.
    fn names_output(&self, outer: &Outer, name: &str) -> bool {
        self.step_producing(name).is_some() || outer.known.contains(name)
    }

    fn input_problems(&self, step: usize, scope: &Scope<'_>, problems: &mut Vec<PlanProblem>) {
        for input in &self.steps[step].inputs {
            let reference = Reference::parse(&input.name);
            let in_loop = self.steps[step].for_each.is_some();
            match &input.value {
                None if in_loop && reference.as_ref().is_some_and(|r| is_loop_variable(&r.name)) => {}
                None if !reference.as_ref().is_some_and(|r| scope.produced.contains(r.name.as_str())) => {
                    problems.push(PlanProblem::UnknownInput { step, input: input.name.clone() });
                }
                None => self.field_problems(step, scope.outer, reference.as_ref(), problems),
                Some(Value::String(text)) if scope.produced.contains(text.trim()) => {
                    let output = text.trim().to_owned();
                    problems.push(PlanProblem::ConstantNamesOutput { step, input: input.name.clone(), output });
                }
                _ => {}
            }
        }
    }

    fn args_problems(&self, step: usize, scope: &Scope<'_>, problems: &mut Vec<PlanProblem>) {
        let s = &self.steps[step];
        let Some(args) = &s.args else { return };
        let reason = match (args.is_object(), s.tool_id.is_some() || s.function.is_some() || s.plan.is_some()) {
            _ if s.is_block() => Some("a block takes no args: its steps read earlier outputs by name".to_owned()),
            (false, _) => Some(format!("they must be a JSON object of the tool's arguments, not {args}")),
            (true, false) => Some("the step has no tool to take them; give it a tool_id or drop the args".to_owned()),
            (true, true) => None,
        };
        if let Some(reason) = reason {
            problems.push(PlanProblem::InvalidArgs { step, reason });
            return;
        }
        for (token, whole) in args::tokens_in(args) {
            let Some(reference) = Reference::parse(&token) else { continue };
            let names_output = self.names_output(scope.outer, &reference.name);
            let loop_variable = s.for_each.is_some() && is_loop_variable(&reference.name);
            if (names_output || whole) && !loop_variable && !scope.produced.contains(reference.name.as_str()) {
                problems.push(PlanProblem::UnknownArgReference { step, reference: token });
            } else if names_output {
                self.field_problems(step, scope.outer, Some(&reference), problems);
            }
        }
    }

    fn for_each_problems(&self, step: usize, scope: &Scope<'_>, problems: &mut Vec<PlanProblem>) {
        let Some(list) = &self.steps[step].for_each else { return };
        let invalid = |reason: String| PlanProblem::InvalidForEach { step, list: list.clone(), reason };
        if self.steps[step].exit.is_some() {
            let reason = "an exit ends the whole workflow, so it cannot run once per item; \
                          put the exit step in a looping block (for_each with steps) instead";
            return problems.push(invalid(reason.into()));
        }
        let Some(reference) = Reference::parse(list.trim()) else {
            return problems.push(invalid("it must be a reference to an earlier output, such as $tickets".into()));
        };
        if !scope.produced.contains(reference.name.as_str()) {
            return problems.push(invalid(format!("no earlier step outputs {}", reference.name)));
        }
        if let Some(schema) = self.output_schema_of(scope.outer, &reference.name) {
            if let Err(reason) = reference::schema_admits(&schema, &reference.path) {
                return problems.push(invalid(format!("the output has no {reason}")));
            }
            if let Some(kind) = reference::schema_type_at(&schema, &reference.path).filter(|k| k != "array") {
                problems.push(invalid(format!("it is a {kind}, not a list")));
            }
        }
    }

    /// The schema of what `output` holds: the producing step's output schema, or
    /// a list of it for a `for_each` step; for an enclosing plan's output, as
    /// `outer` knows it.
    fn output_schema_of(&self, outer: &Outer, output: &str) -> Option<Value> {
        let Some(index) = self.step_producing(output) else { return outer.schemas.get(output).cloned() };
        let step = &self.steps[index];
        let schema = step.output_schema.clone()?;
        Some(if step.for_each.is_some() { serde_json::json!({"type": "array", "items": schema}) } else { schema })
    }

    fn condition_problems(&self, step: usize, scope: &Scope<'_>, problems: &mut Vec<PlanProblem>) {
        let Some(condition) = &self.steps[step].condition else { return };
        if let Some(reason) = Condition::problem(condition) {
            return problems.push(PlanProblem::InvalidCondition { step, reason });
        }
        let expression = matches!(Condition::parse(condition), Condition::Expression { .. });
        for token in condition::references(condition) {
            let Some(reference) = Reference::parse(&token) else { continue };
            let names_output = self.names_output(scope.outer, &reference.name);
            let loop_variable = self.steps[step].for_each.is_some() && is_loop_variable(&reference.name);
            if (names_output || expression) && !loop_variable && !scope.produced.contains(reference.name.as_str()) {
                problems.push(PlanProblem::UnknownConditionReference { step, reference: token });
            } else if names_output {
                self.field_problems(step, scope.outer, Some(&reference), problems);
            }
        }
    }

    /// The references of a step's task text and exit message to outputs: one to a
    /// later step's output is a problem (the step cannot wait for it: no step after
    /// an exit starts before it), and one to an earlier output must name fields it
    /// has. Other `$` words, the step's own output among them, are prose.
    fn text_problems(&self, step: usize, scope: &Scope<'_>, problems: &mut Vec<PlanProblem>) {
        let s = &self.steps[step];
        let texts = [Some(s.task.as_str()), s.exit.as_ref().map(Exit::message)];
        for token in texts.into_iter().flatten().flat_map(condition::references) {
            let Some(reference) = Reference::parse(&token) else { continue };
            if scope.produced.contains(reference.name.as_str()) {
                self.field_problems(step, scope.outer, Some(&reference), problems);
            } else if self.step_producing(&reference.name).is_some_and(|producer| producer > step) {
                problems.push(PlanProblem::ForwardReference { step, reference: token });
            }
        }
    }

    /// A problem when `reference` reaches into a field that its producing step's
    /// output schema does not have.
    fn field_problems(
        &self,
        step: usize,
        outer: &Outer,
        reference: Option<&Reference>,
        problems: &mut Vec<PlanProblem>,
    ) {
        let Some(reference) = reference.filter(|r| !r.path.is_empty()) else { return };
        let schema = self.output_schema_of(outer, &reference.name);
        if let Some(Err(reason)) = schema.map(|schema| reference::schema_admits(&schema, &reference.path)) {
            problems.push(PlanProblem::UnknownField { step, reference: reference.to_string(), reason });
        }
    }

    /// The outputs step `index` needs before it can run: those it
    /// [reads](Plan::reads), and those its condition tests.
    pub fn dependencies(&self, index: usize) -> Vec<String> {
        self.with_tested(index, self.reads(index))
    }

    /// `reads` (step `index`'s [reads](Plan::reads)) with the outputs its condition
    /// tests: its [dependencies](Plan::dependencies), for a caller that has both.
    pub(crate) fn with_tested(&self, index: usize, reads: Vec<String>) -> Vec<String> {
        let Some(step) = self.steps.get(index) else { return reads };
        let tested = step.condition.iter().flat_map(|c| condition::references(c)).map(|t| output_name(&t));
        // A block's steps' conditions too: the block waits for what they test.
        let in_block = step.block_references().into_iter().filter(|name| !is_loop_variable(name));
        let tested = tested.chain(in_block);
        let mut needed = reads;
        for name in tested.filter(|name| self.step_producing(name).is_some()) {
            if !needed.contains(&name) {
                needed.push(name);
            }
        }
        needed
    }

    /// The outputs step `index` reads as data: its reference inputs, its list, and
    /// the outputs its arguments, task text, exit message or block refer to. A step
    /// all of whose reads were skipped is skipped; its condition may still test a
    /// skipped output (`$reply == null`).
    pub fn reads(&self, index: usize) -> Vec<String> {
        let Some(step) = self.steps.get(index) else { return Vec::new() };
        let mut needed: Vec<String> = Vec::new();
        let from_inputs = step.inputs.iter().filter(|v| v.is_reference()).map(|v| output_name(&v.name));
        let from_inputs = from_inputs.filter(|name| step.for_each.is_none() || !is_loop_variable(name));
        let from_inputs = from_inputs.chain(step.for_each.iter().map(|list| output_name(list.trim())));
        let from_args = step.args.iter().flat_map(args::tokens_in).map(|(token, _)| output_name(&token));
        // Only earlier outputs: a later one in the text is a plan problem, never a wait.
        let earlier = |name: &String| self.step_producing(name).is_some_and(|producer| producer < index);
        let from_task = condition::references(&step.task).into_iter().map(|t| output_name(&t)).filter(earlier);
        let from_exit = step.exit.iter().flat_map(|e| args::tokens_in(&Value::from(e.message())));
        let from_exit = from_exit.map(|(t, _)| output_name(&t)).filter(earlier);
        let from_block = step.block_reads().into_iter().filter(|name| !is_loop_variable(name));
        let referenced = from_args.chain(from_task).chain(from_exit).chain(from_block);
        for name in from_inputs.chain(referenced.filter(|name| self.step_producing(name).is_some())) {
            if !needed.contains(&name) {
                needed.push(name);
            }
        }
        needed
    }
}

/// What the enclosing plans of a block hold, as its steps are checked: every output
/// name they have (produced before the block or after), and the output schemas
/// they declare.
#[derive(Debug, Clone, Default)]
struct Outer {
    known: HashSet<String>,
    schemas: std::collections::HashMap<String, Value>,
}

/// What a step being checked can read: the outputs produced before it (and the
/// plan's inputs), and what the enclosing plans hold.
struct Scope<'a> {
    produced: HashSet<&'a str>,
    outer: &'a Outer,
}

/// What is wrong with a step's `max_tool_calls`, if anything.
fn react_problem(step: &Step) -> Option<String> {
    match (step.is_react(), step.max_tool_calls) {
        (false, Some(_)) => Some("max_tool_calls is set, but the step lists no tools".to_owned()),
        (true, Some(0)) => Some("max_tool_calls must be at least 1".to_owned()),
        _ => None,
    }
}

/// The problems of `"steps": []` and `"tools": []` among the steps of `plan` (a
/// plan's JSON, the block at `path` within it). Read as fields, an empty list is no
/// list: the step would silently become an LLM step instead of a block, or a step
/// that may call tools.
fn empty_lists(plan: &Value, path: &mut Vec<usize>, problems: &mut Vec<PlanProblem>) {
    let Some(steps) = plan.get("steps").and_then(Value::as_array) else { return };
    for (step, json) in steps.iter().enumerate() {
        let empty = |key: &str| json.get(key).and_then(Value::as_array).is_some_and(Vec::is_empty);
        if empty("steps") {
            path.push(step);
            problems.push(PlanProblem::in_blocks(path, PlanProblem::NoSteps));
            path.pop();
        }
        if empty("tools") {
            let reason = "it is empty: list the tools the step may call, or leave `tools` out".to_owned();
            problems.push(PlanProblem::in_blocks(path, PlanProblem::InvalidToolList { step, reason }));
        }
        path.push(step);
        empty_lists(json, path, problems);
        path.pop();
    }
}

fn not_a_plan(error: &serde_json::Error) -> Error {
    Error::InvalidPlan(vec![PlanProblem::NotAPlan { reason: error.to_string() }])
}

/// The problem of `key`, which no field of a plan takes, with the field of a plan,
/// a step, its context or an input it most likely meant.
fn unknown_key(key: String) -> PlanProblem {
    let last = key.rsplit('.').next().unwrap_or(&key);
    let fields = [
        crate::config::field_names::<Plan>(),
        crate::config::field_names::<Step>(),
        crate::config::field_names::<PlanContext>(),
        crate::config::field_names::<Variable>(),
    ];
    let suggestion = fields
        .iter()
        .flat_map(|names| names.iter())
        .map(|field| (strsim::jaro_winkler(last, field), *field))
        .filter(|(likeness, _)| *likeness > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, field)| field.to_owned());
    PlanProblem::UnknownKey { key, suggestion }
}

/// Why a user step's question cannot be answered, if it cannot.
fn ask_user_problem(ask: &AskUser) -> Option<String> {
    let AskUser::Choice { options } = ask else { return None };
    if options.is_empty() {
        return Some("a choice of no options refuses every answer; list the options".to_owned());
    }
    let repeated = options.iter().enumerate().find(|(i, option)| options[..*i].contains(option));
    repeated.map(|(_, option)| format!("the option {option} is listed twice"))
}

/// The fields a step sets that each make it a kind of step of its own.
fn kinds_of(step: &Step) -> Vec<String> {
    [
        ("tool_id", step.tool_id.is_some()),
        ("tools", step.is_react()),
        ("function", step.function.is_some()),
        ("ask_user", step.ask_user.is_some()),
        ("exit", step.exit.is_some()),
        ("plan", step.plan.is_some()),
        ("steps", step.is_block()),
    ]
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(field, _)| field.to_owned())
    .collect()
}

/// Whether `name` is one of the names a `for_each` step's item goes by.
pub(crate) fn is_loop_variable(name: &str) -> bool {
    name == ITEM || name == INDEX
}

/// The current item of a `for_each` step.
pub(crate) const ITEM: &str = "$item";
/// The current item's index, from 0.
pub(crate) const INDEX: &str = "$index";

/// The output a reference names: `$a` for `$a.items[0]`; the text itself when it is
/// no reference.
fn output_name(text: &str) -> String {
    Reference::parse(text).map_or_else(|| text.to_owned(), |r| r.name)
}

/// Writes a [`Plan`] in code, for workflows that must be deterministic.
///
/// Inputs attach to the most recently added step.
///
/// ```
/// use portia::PlanBuilder;
///
/// let plan = PlanBuilder::new("Which stock grew faster in 2024, Amazon or Google?")
///     .step("Find Amazon's 2024 stock growth", Some("search_tool"), "$amazon")
///     .step("Find Google's 2024 stock growth", Some("search_tool"), "$google")
///     .step("Say which grew faster", None, "$answer")
///     .input("$amazon", "Amazon's growth")
///     .input("$google", "Google's growth")
///     .build();
/// assert_eq!(plan.steps.len(), 3);
/// assert_eq!(plan.plan_context.tool_ids, ["search_tool"]);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct PlanBuilder {
    query: String,
    tool_ids: Option<Vec<String>>,
    steps: Vec<Step>,
    output_schema: Option<Value>,
    inputs: Vec<Variable>,
}

impl PlanBuilder {
    /// Starts a plan for `query`.
    pub fn new(query: impl Into<String>) -> Self {
        Self { query: query.into(), tool_ids: None, steps: Vec::new(), output_schema: None, inputs: Vec::new() }
    }

    /// Adds a step. `tool_id` is `None` for a step the LLM answers without a tool.
    pub fn step(mut self, task: impl Into<String>, tool_id: Option<&str>, output: impl Into<String>) -> Self {
        self.steps.push(Step::new(task, tool_id, output));
        self
    }

    /// Gives the last step fixed tool arguments (a JSON object; string values may
    /// hold `$name` references to earlier outputs). A step with complete arguments
    /// calls its tool without an LLM call, so a plan of such steps runs the same
    /// way every time.
    ///
    /// # Panics
    /// If no step has been added yet.
    pub fn args(mut self, args: impl Into<Value>) -> Self {
        self.steps.last_mut().expect("PlanBuilder: add a step before giving it arguments").args = Some(args.into());
        self
    }

    /// Gives the plan a typed result: the final output must be JSON of `T`'s shape
    /// (its JSON Schema, derived with `schemars`). Read it back typed with
    /// [`Runner::run_plan_as`](crate::Runner::run_plan_as).
    ///
    /// ```
    /// use portia::PlanBuilder;
    ///
    /// #[derive(portia::schemars::JsonSchema)]
    /// #[schemars(crate = "portia::schemars")]
    /// struct Verdict { faster: String, growth_pct: f64 }
    ///
    /// let plan = PlanBuilder::new("Which grew faster?").step("Compare", None, "$verdict").output::<Verdict>().build();
    /// assert_eq!(plan.output_schema.unwrap()["required"], portia::serde_json::json!(["faster", "growth_pct"]));
    /// ```
    pub fn output<T: JsonSchema>(self) -> Self {
        self.output_schema(schema_of::<T>())
    }

    /// Gives the plan a typed result of this JSON Schema (see [`PlanBuilder::output`]).
    pub fn output_schema(mut self, schema: Value) -> Self {
        self.output_schema = Some(schema);
        self
    }

    /// Makes the last step's output JSON of `T`'s shape: a step the LLM answers
    /// replies with it as structured output, and later steps can reach into its
    /// fields (`$name.field`).
    ///
    /// # Panics
    /// If no step has been added yet.
    pub fn step_output<T: JsonSchema>(self) -> Self {
        self.step_output_schema(schema_of::<T>())
    }

    /// Makes the last step's output fit this JSON Schema (see [`PlanBuilder::step_output`]).
    ///
    /// # Panics
    /// If no step has been added yet.
    pub fn step_output_schema(mut self, schema: Value) -> Self {
        self.steps.last_mut().expect("PlanBuilder: add a step before giving it an output schema").output_schema =
            Some(schema);
        self
    }

    /// Runs the last step only when `condition` holds: an expression over earlier
    /// outputs (`$ticket.urgent == true`) or plain words one LLM call decides.
    ///
    /// # Panics
    /// If no step has been added yet.
    pub fn condition(mut self, condition: impl Into<String>) -> Self {
        self.steps.last_mut().expect("PlanBuilder: add a step before giving it a condition").condition =
            Some(condition.into());
        self
    }

    /// Runs the last step once per item of the list `list` refers to, with `$item`
    /// and `$index` (see [`Step::for_each`]).
    ///
    /// # Panics
    /// If no step has been added yet.
    pub fn for_each(mut self, list: impl Into<String>) -> Self {
        self.steps.last_mut().expect("PlanBuilder: add a step before making it a loop").for_each = Some(list.into());
        self
    }

    /// Adds a function step: the function registered on the runner as `function`
    /// ([`RunnerBuilder::function`](crate::runner::RunnerBuilder::function)) is
    /// called with `args` (which may hold `$name` references), with no LLM call.
    pub fn function(
        mut self,
        task: impl Into<String>,
        function: impl Into<String>,
        args: impl Into<Value>,
        output: impl Into<String>,
    ) -> Self {
        let mut step = Step::new(task, None, output);
        step.function = Some(function.into());
        step.args = Some(args.into());
        self.steps.push(step);
        self
    }

    /// Adds a ReAct step: the model calls any of `tools` (ids), as often as it needs
    /// up to the step's limit, then answers; the answer is stored under `output`.
    pub fn react<I, S>(mut self, task: impl Into<String>, tools: I, output: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.steps.push(Step::react(task, tools, output));
        self
    }

    /// Adds a sub-plan step: the stored plan `plan` runs as a child workflow with
    /// `args` (an object whose values may hold `$name` references) as its inputs,
    /// and its final output is stored under `output`.
    pub fn sub_plan(
        mut self,
        task: impl Into<String>,
        plan: PlanId,
        args: impl Into<Value>,
        output: impl Into<String>,
    ) -> Self {
        self.steps.push(Step::sub_plan(task, plan, args.into(), output));
        self
    }

    /// Adds a block step: the steps `build` adds to the builder it is given run as
    /// an inline sub-plan, and the last one's output is stored under `output` (see
    /// [`Step::steps`]). Chain [`for_each`](PlanBuilder::for_each) or
    /// [`condition`](PlanBuilder::condition) after it to loop or guard the whole block.
    ///
    /// ```
    /// use portia::PlanBuilder;
    ///
    /// let plan = PlanBuilder::new("Triage the tickets")
    ///     .step("List the open tickets", Some("tickets_tool"), "$tickets")
    ///     .block("Triage one ticket", "$drafts", |block| {
    ///         block
    ///             .step("Classify $item", None, "$class")
    ///             .step("Draft a reply to $item", None, "$draft")
    ///             .condition("$class is urgent")
    ///     })
    ///     .for_each("$tickets")
    ///     .build();
    /// assert_eq!(plan.steps[1].steps.len(), 2);
    /// assert_eq!(plan.block_plan(1).unwrap().inputs[0].name, "$item");
    /// ```
    pub fn block(
        mut self,
        task: impl Into<String>,
        output: impl Into<String>,
        build: impl FnOnce(PlanBuilder) -> PlanBuilder,
    ) -> Self {
        let inner = build(PlanBuilder::new(self.query.clone()));
        self.steps.push(Step::block(task, inner.steps, output));
        self
    }

    /// Declares an input the plan takes when run as a sub-plan (`$name`), which its
    /// steps may read (see [`Plan::inputs`]).
    pub fn plan_input(mut self, name: impl Into<String>, description: impl Into<String>) -> Self {
        self.inputs.push(Variable::reference(name, description));
        self
    }

    /// Sets the most tool calls the last (ReAct) step may make; 25 when unset.
    ///
    /// # Panics
    /// If no step has been added yet.
    pub fn max_tool_calls(mut self, limit: u32) -> Self {
        self.steps.last_mut().expect("PlanBuilder: add a step before limiting its calls").max_tool_calls = Some(limit);
        self
    }

    /// Sends the last step's LLM calls to `model` (`provider/model` accepted).
    ///
    /// # Panics
    /// If no step has been added yet.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.steps.last_mut().expect("PlanBuilder: add a step before choosing its model").model = Some(model.into());
        self
    }

    /// Adds a user step: `question` is asked of a person, and the answer is stored
    /// under `output`.
    pub fn ask_user(mut self, question: impl Into<String>, ask: AskUser, output: impl Into<String>) -> Self {
        let mut step = Step::new(question, None, output);
        step.ask_user = Some(ask);
        self.steps.push(step);
        self
    }

    /// Adds a step that ends the workflow (when its `condition`, set next, holds):
    /// COMPLETE with the message, or FAILED with the error.
    pub fn exit(mut self, task: impl Into<String>, exit: Exit, output: impl Into<String>) -> Self {
        let mut step = Step::new(task, None, output);
        step.exit = Some(exit);
        self.steps.push(step);
        self
    }

    /// Makes the last step read the output of an earlier step.
    ///
    /// # Panics
    /// If no step has been added yet: that is a bug in the calling code, not bad input.
    pub fn input(self, name: impl Into<String>, description: impl Into<String>) -> Self {
        self.with_input(Variable::reference(name, description))
    }

    /// Gives the last step a constant input.
    ///
    /// # Panics
    /// If no step has been added yet.
    pub fn constant(self, name: impl Into<String>, value: impl Into<Value>, description: impl Into<String>) -> Self {
        self.with_input(Variable::constant(name, value, description))
    }

    /// Sets the plan's tool ids explicitly (by default, the tools its steps use).
    pub fn tool_ids<I: IntoIterator<Item = S>, S: Into<String>>(mut self, ids: I) -> Self {
        self.tool_ids = Some(ids.into_iter().map(Into::into).collect());
        self
    }

    /// Finishes the plan. Check it with [`Plan::validate`] before running it.
    pub fn build(self) -> Plan {
        let tool_ids = self.tool_ids.unwrap_or_else(|| {
            let mut ids: Vec<String> = Vec::new();
            for id in self.steps.iter().flat_map(Step::tool_ids) {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            ids
        });
        let mut plan = Plan::new(PlanContext::new(self.query, tool_ids), self.steps);
        plan.output_schema = self.output_schema;
        plan.inputs = self.inputs;
        plan
    }

    fn with_input(mut self, input: Variable) -> Self {
        self.steps.last_mut().expect("PlanBuilder: add a step before adding inputs").inputs.push(input);
        self
    }
}
