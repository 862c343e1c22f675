//! Workflows: one run of a plan, with its state, outputs and clarifications.
//!
//! A [`Workflow`] is plain data that only the runner changes, saving it after every
//! change. Its state only moves along these edges ([`WorkflowState::can_transition_to`]);
//! any other move is refused:
//!
//! ```text
//! NOT_STARTED ──> IN_PROGRESS ──> COMPLETE
//!                   │    ^   └──> FAILED
//!                   v    │
//!     NEED_CLARIFICATION ──> READY_TO_RESUME
//! ```
//! Any state that is not COMPLETE or FAILED may also move to FAILED (a cancelled run).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::SharedValue;
use crate::clarification::Clarification;
use crate::error::LlmError;
use crate::execution_context::ExecutionContext;
use crate::ids::{ClarificationId, PlanId, WorkflowId};
use crate::plan::{Plan, Reference};
pub use crate::state::WorkflowState;
use crate::usage::Usage;
use crate::{Error, Result};

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StepOutcome {
    /// The step produced its output.
    Output(Output),
    /// The step needs answers from a human first.
    Clarifications(Vec<Clarification>),
    /// The step failed; the failure says how and why.
    Failed(Failure),
    /// The step did not run: its condition was false, or every output it reads was
    /// skipped. The text says why.
    Skipped(String),
}

impl StepOutcome {
    /// A failure of `kind`.
    pub fn failed(kind: FailureKind, message: impl Into<String>) -> Self {
        Self::Failed(Failure::new(kind, message))
    }

    /// The failure of an LLM call: the model's fault when its reply did not fit, the
    /// provider's otherwise.
    pub fn llm_failed(error: &LlmError) -> Self {
        let kind = match error {
            LlmError::Structured { .. } => FailureKind::Agent,
            _ => FailureKind::Llm,
        };
        Self::failed(kind, format!("LLM call failed: {error}"))
    }
}

/// The output of a step, or of the whole workflow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Output {
    /// The value, with its JSON type kept (a number stays a number). Shared: the
    /// events, the journal and later steps that carry it hold the same value.
    #[serde(default)]
    pub value: SharedValue,
    /// A short summary of the value, when one was made.
    #[serde(default)]
    pub summary: Option<String>,
    /// Why the step was skipped, when it was (its value is then `null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl Output {
    /// An output with no summary.
    pub fn new(value: impl Into<Value>) -> Self {
        Self::shared(SharedValue::new(value.into()))
    }

    /// An output with no summary, holding a value that is already shared (a
    /// tool's output, say) instead of a copy of it.
    pub fn shared(value: SharedValue) -> Self {
        Self { value, summary: None, skipped: None }
    }

    /// The output of a step that was skipped, for `reason`.
    pub fn skipped(reason: impl Into<String>) -> Self {
        Self { value: SharedValue::default(), summary: None, skipped: Some(reason.into()) }
    }

    /// Sets the summary.
    #[must_use]
    pub fn with_summary(mut self, summary: impl Into<String>) -> Self {
        self.summary = Some(summary.into());
        self
    }
}

/// Step outputs keyed by output name, kept in plan order (also in JSON).
///
/// Each output is shared, not copied, between clones: a workflow is cloned for
/// every save and every event that carries it, and a search result or a document
/// is the bulk of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepOutputs(Vec<(String, Arc<Output>)>);

impl StepOutputs {
    /// The output stored under `name`.
    pub fn get(&self, name: &str) -> Option<&Output> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, o)| &**o)
    }

    /// Whether an output is stored under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The outputs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Output)> {
        self.0.iter().map(|(n, o)| (n.as_str(), &**o))
    }

    /// How many outputs are stored.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no output is stored.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value a reference names: `$name`, or a path inside it such as
    /// `$report.items[0].title` or `$list[-1]`. `None` when the output is not
    /// stored or the path leads nowhere.
    ///
    /// ```
    /// use portia::serde_json::json;
    /// # use portia::workflow::StepOutputs;
    /// # fn outputs() -> StepOutputs { portia::serde_json::from_value(json!({"$r": {"value": {"items": [1, 2]}}})).unwrap() }
    /// let outputs = outputs();
    /// assert_eq!(outputs.resolve("$r.items[-1]"), Some(json!(2)));
    /// assert_eq!(outputs.resolve("$r.nope"), None);
    /// ```
    pub fn resolve(&self, reference: &str) -> Option<Value> {
        self.resolve_shared(reference).map(SharedValue::into_value)
    }

    /// [`resolve`](Self::resolve), sharing the output's value when the reference
    /// names a whole output instead of copying it.
    pub(crate) fn resolve_shared(&self, reference: &str) -> Option<SharedValue> {
        let reference = Reference::parse(reference)?;
        let value = &self.get(&reference.name)?.value;
        if reference.path.is_empty() { Some(value.clone()) } else { reference.select(value).map(SharedValue::new) }
    }

    /// Stores `output` under `name`, replacing an earlier one, at the position
    /// `rank` gives (outputs are kept sorted by rank; unknown names go last).
    fn insert_ranked(&mut self, name: String, output: Output, rank: impl Fn(&str) -> usize) {
        self.0.retain(|(n, _)| *n != name);
        let new_rank = rank(&name);
        let at = self.0.iter().position(|(n, _)| rank(n) > new_rank).unwrap_or(self.0.len());
        self.0.insert(at, (name, Arc::new(output)));
    }
}

impl Serialize for StepOutputs {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, output) in &self.0 {
            map.serialize_entry(name, &**output)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for StepOutputs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct OrderedVisitor;
        impl<'de> Visitor<'de> for OrderedVisitor {
            type Value = StepOutputs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from output name to output")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> std::result::Result<StepOutputs, A::Error> {
                let mut entries = Vec::new();
                while let Some((name, output)) = access.next_entry::<String, Output>()? {
                    entries.push((name, Arc::new(output)));
                }
                Ok(StepOutputs(entries))
            }
        }
        deserializer.deserialize_map(OrderedVisitor)
    }
}

/// What a workflow has produced so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct WorkflowOutputs {
    /// Every clarification raised, resolved or not.
    pub clarifications: Vec<Clarification>,
    /// Each finished step's output, keyed by the step's output name, in plan order.
    pub step_outputs: StepOutputs,
    /// The answer to the query: the last step's value, with a summary of the run.
    pub final_output: Option<Output>,
    /// The finished items of each `for_each` step still running, keyed by the
    /// step's output name, then by item index. Once every item is done, the step's
    /// output (their values, in item order) replaces them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub loop_items: BTreeMap<String, BTreeMap<usize, Output>>,
}

/// What kind of failure ended a workflow, so retry logic, UIs and budgets can tell
/// them apart without reading messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum FailureKind {
    /// A tool failed with an error no retry can fix.
    ToolError,
    /// A tool kept failing with errors a retry might fix, until the retries ran out.
    ToolRetriesExhausted,
    /// An LLM call failed (the provider was unreachable, refused, or timed out).
    Llm,
    /// The model did not do what the step needed (it answered in text, say).
    Agent,
    /// The step could not start: its tool is not registered, or an input is missing.
    InvalidStep,
    /// Someone cancelled the workflow.
    Cancelled,
    /// Runs of the workflow kept dying, and it was taken over too many times.
    AttemptsExhausted,
    /// A step panicked.
    Panic,
    /// The workflow spent what its [`Budget`](crate::config::Budget) allows.
    BudgetExceeded,
    /// A hook, or a person at an approval gate, refused a tool call.
    Denied,
    /// A hook failed.
    Hook,
    /// An exit step ended the workflow as FAILED, with its error.
    Exited,
    /// A step's output, or the final output, did not fit its output schema (after
    /// the model, when there was one, was shown the problems once).
    SchemaMismatch,
    /// A sub-plan step could not start or resume its child workflow.
    SubPlan,
    /// A ReAct step made as many tool calls as its limit allows without answering.
    ToolCallLimit,
    /// Anything else (and failures stored before kinds were recorded).
    #[default]
    Other,
}

/// Why a workflow (or one step) failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Failure {
    /// The step that failed, if a step did.
    pub step: Option<usize>,
    /// What kind of failure it was.
    #[serde(default)]
    pub kind: FailureKind,
    /// What went wrong.
    pub message: String,
}

impl Failure {
    /// A failure of `kind`, not yet tied to a step.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self { step: None, kind, message: message.into() }
    }

    /// This failure, tied to step `step`.
    #[must_use]
    pub fn at_step(mut self, step: usize) -> Self {
        self.step = Some(step);
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What a workflow spent: LLM usage in total and per step (keyed by output name),
/// its cost, and how long it has run.
///
/// The figures cover the workflow's child workflows (those its sub-plan and block
/// steps ran, and theirs): `total`, `cost_usd` and the step's entry in `steps`
/// include what each child spent, and [`children`](Self::children) tells it apart,
/// one record per child, so that a child counted again (after a resume, or a
/// question it asked) replaces its record instead of adding to it.
///
/// The calls that wrote the plan count in `total`, `cost_usd` and the budget only
/// when the plan was written for this workflow alone ([`Runner::execute_query`],
/// [`Runner::submit_query`], or a request's `count_planning` setter). A workflow
/// made from an existing plan carries them in `planning` as a reference, so many
/// workflows of one plan do not each count its planning.
///
/// [`Runner::execute_query`]: crate::Runner::execute_query
/// [`Runner::submit_query`]: crate::Runner::submit_query
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct WorkflowUsage {
    /// Every call this workflow paid for: its steps and summaries, its child
    /// workflows', and its planning when [`planning_counted`](Self::planning_counted).
    pub total: Usage,
    /// The calls that wrote the workflow's plan ([`Plan::usage`]; zero for a plan
    /// written by hand), counted in `total` only when
    /// [`planning_counted`](Self::planning_counted).
    pub planning: Usage,
    /// Whether `planning` is part of `total` and `cost_usd`: the plan was written
    /// for this workflow. (Workflows stored before this field counted it; it is
    /// written only when `false`, so a workflow that counts its planning is stored
    /// in the shape 0.3 wrote.)
    #[serde(default = "counted_before_the_field_existed", skip_serializing_if = "is_true")]
    pub planning_counted: bool,
    /// The calls each step made, keyed by the step's output name; a sub-plan or
    /// block step's include its child workflows'.
    pub steps: BTreeMap<String, Usage>,
    /// What the calls in `total` cost in US dollars, by the configured
    /// [`Prices`](crate::config::Prices); models without a price count nothing.
    pub cost_usd: f64,
    /// What each child workflow spent, its own children included, by the child's
    /// id: already part of `total`, `cost_usd` and `steps`. (Empty, and not
    /// written, for a workflow without children and in usage stored by 0.4.)
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub children: BTreeMap<WorkflowId, ChildUsage>,
    /// How long the workflow has been running, over all its runs, in milliseconds
    /// (time waiting for a human is not counted).
    pub running_ms: u64,
}

fn counted_before_the_field_existed() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

impl WorkflowUsage {
    /// Usage of a workflow whose plan was written for it: it starts with the
    /// planning calls and their cost.
    pub fn planned(planning: Usage, cost_usd: f64) -> Self {
        Self { total: planning, planning, planning_counted: true, cost_usd, ..Self::default() }
    }

    /// Usage of a workflow made from an existing plan: the planning calls are kept
    /// as a reference only, out of `total` and `cost_usd`.
    pub fn of_existing_plan(planning: Usage) -> Self {
        Self { planning, ..Self::default() }
    }

    /// Adds the usage and cost of a step (or, with `step_output` `None`, of the run itself).
    pub fn add(&mut self, step_output: Option<&str>, usage: Usage, cost_usd: f64) {
        self.total += usage;
        self.cost_usd += cost_usd;
        if let Some(name) = step_output {
            *self.steps.entry(name.to_owned()).or_default() += usage;
        }
    }

    /// Records what child workflow `child` has spent so far, replacing what was
    /// recorded of it before: a child is counted once however often it is recorded.
    pub fn record_child(&mut self, child: WorkflowId, spent: ChildUsage) {
        if let Some(old) = self.children.insert(child, spent.clone()) {
            self.total = self.total.saturating_sub(old.usage);
            self.cost_usd = (self.cost_usd - old.cost_usd).max(0.0);
            if let Some(step) = self.steps.get_mut(&old.step_output) {
                *step = step.saturating_sub(old.usage);
            }
        }
        self.add(Some(&spent.step_output), spent.usage, spent.cost_usd);
    }

    /// What the workflow's child workflows spent, together.
    pub fn children_total(&self) -> ChildUsage {
        let mut all = ChildUsage::default();
        for child in self.children.values() {
            all.usage += child.usage;
            all.cost_usd += child.cost_usd;
        }
        all
    }
}

/// What one child workflow spent, its own children included: one entry of
/// [`WorkflowUsage::children`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ChildUsage {
    /// The output name of the parent's step that ran the child.
    pub step_output: String,
    /// The child's calls ([`WorkflowUsage::total`] of the child).
    pub usage: Usage,
    /// Their cost in US dollars ([`WorkflowUsage::cost_usd`] of the child).
    pub cost_usd: f64,
}

impl ChildUsage {
    /// What a child workflow that ran for step `step_output` spent in all.
    pub fn of(step_output: impl Into<String>, child: &WorkflowUsage) -> Self {
        Self { step_output: step_output.into(), usage: child.total, cost_usd: child.cost_usd }
    }
}

/// One run of a plan.
///
/// Read it through its accessors; only the [`Runner`](crate::Runner) changes it,
/// always under its lease and as a compare-and-swap on [`Workflow::version`], so an
/// old copy can never overwrite newer state.
///
/// ```
/// use std::sync::Arc;
/// use portia::testing::ScriptedLlm;
/// use portia::{Config, PlanBuilder, Runner, WorkflowState};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> portia::Result<()> {
/// let config = Config::builder().summarize_final_output(false).build()?;
/// let runner = Runner::builder(config).llm(Arc::new(ScriptedLlm::new().text("Hello!"))).build()?;
/// let plan = PlanBuilder::new("Say hello").step("Say hello", None, "$hello").build();
///
/// let workflow = runner.create_workflow(&plan).await?;
/// assert_eq!(workflow.state(), WorkflowState::NotStarted);
/// let workflow = runner.execute_workflow(workflow).await?;
/// assert_eq!(workflow.state(), WorkflowState::Complete);
/// assert_eq!(workflow.outputs().step_outputs.get("$hello").unwrap().value, "Hello!");
/// assert_eq!(workflow.usage().total.llm_calls, 1);
/// // Plain data, in the seed document's JSON shape.
/// assert_eq!(portia::serde_json::to_value(&workflow).unwrap()["state"], "COMPLETE");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    id: WorkflowId,
    plan_id: PlanId,
    #[serde(default)]
    current_step_index: usize,
    #[serde(default = "not_started")]
    state: WorkflowState,
    #[serde(default)]
    execution_context: ExecutionContext,
    #[serde(default)]
    outputs: WorkflowOutputs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure: Option<Failure>,
    #[serde(default)]
    usage: WorkflowUsage,
    #[serde(default)]
    version: u64,
    /// The workflow and step that run this one as a sub-plan, when one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent: Option<ParentLink>,
    /// The FAILED workflow this one takes up again, when it is a retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_of: Option<WorkflowId>,
}

/// Where a child workflow (a sub-plan's run) was started from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ParentLink {
    /// The parent workflow.
    pub workflow_id: WorkflowId,
    /// The parent's sub-plan step.
    pub step: usize,
    /// The item, when that step is a `for_each` loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<usize>,
}

impl ParentLink {
    /// The link of a child started by `workflow_id`'s step `step` (for `item`, in a loop).
    pub fn new(workflow_id: WorkflowId, step: usize, item: Option<usize>) -> Self {
        Self { workflow_id, step, item }
    }

    /// The id of the child workflow this link starts: derived from the parent's id,
    /// the step and the item, so a resumed parent finds the child it started instead
    /// of starting a second one.
    ///
    /// A name-based UUID (version 5, named by the step and item under the parent's
    /// id): no two links share a child id, and no descendant, however deep, gets an
    /// ancestor's id.
    pub fn child_id(&self) -> WorkflowId {
        let name = match self.item {
            Some(item) => format!("child/{}/{item}", self.step),
            None => format!("child/{}", self.step),
        };
        WorkflowId::from_uuid(uuid::Uuid::new_v5(&self.workflow_id.uuid(), name.as_bytes()))
    }

    /// The id 0.4 gave this link's child. It was reversible, so a block nested in a
    /// block at the same step got its grandparent's id; kept only to find children
    /// that a parent stopped under 0.4 started, and checked by their parent link.
    pub(crate) fn child_id_before_0_5(&self) -> WorkflowId {
        let salt = ((self.step as u128 + 1) << 64) | (self.item.map_or(0, |i| i as u128 + 1));
        let mixed = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        WorkflowId::from_uuid(uuid::Uuid::from_u128(self.workflow_id.uuid().as_u128() ^ mixed))
    }
}

fn not_started() -> WorkflowState {
    WorkflowState::NotStarted
}

impl Workflow {
    /// A new workflow for `plan_id` in NOT_STARTED, at version 1.
    pub(crate) fn new(plan_id: PlanId, execution_context: ExecutionContext) -> Self {
        Self {
            id: WorkflowId::new(),
            plan_id,
            current_step_index: 0,
            state: WorkflowState::NotStarted,
            execution_context,
            outputs: WorkflowOutputs::default(),
            failure: None,
            usage: WorkflowUsage::default(),
            version: 1,
            parent: None,
            retry_of: None,
        }
    }

    /// A new workflow that takes this FAILED one up again: the same plan, context
    /// and inputs, with the outputs of the steps that finished (so that they do not
    /// run again, nor repeat what they did) and of the finished items of a loop
    /// cut short, and the answers given to questions of steps yet to run. What
    /// failed runs again; what it spent is this workflow's, not the retry's. Its id
    /// follows from this one's, so that a workflow is retried once however often
    /// it is asked (see [`Workflow::retry_id`]).
    pub(crate) fn retry(&self, plan: &Plan) -> Result<Self> {
        self.check_failed()?;
        if let Some(parent) = &self.parent {
            return Err(self.invalid_state(format!(
                "retry a sub-plan's run on its own (retry workflow {}, which runs it)",
                parent.workflow_id
            )));
        }
        let mut retry = Self::new(self.plan_id, self.execution_context.clone());
        retry.id = self.retry_id();
        Ok(self.retried(plan, retry))
    }

    /// The id of this workflow's retry, should it be retried: the same for every
    /// retry asked for, so that a second one finds the first (a second click, a
    /// script run twice) rather than run the failed steps again.
    pub fn retry_id(&self) -> WorkflowId {
        WorkflowId::from_uuid(uuid::Uuid::new_v5(&self.id.uuid(), b"retry"))
    }

    /// The retry of this FAILED run of a sub-plan, as [`Workflow::retry`] makes it,
    /// made the child `link` of its parent's retry.
    pub(crate) fn retry_as_child(&self, link: ParentLink, plan: &Plan) -> Result<Self> {
        self.check_failed()?;
        Ok(self.retried(plan, Self::child(link, plan, self.execution_context.clone())))
    }

    fn check_failed(&self) -> Result<()> {
        match self.state {
            WorkflowState::Failed => Ok(()),
            _ => Err(self.invalid_state("retry it (only a FAILED workflow is retried)")),
        }
    }

    /// `retry`, a new workflow, given what it keeps of this one.
    fn retried(&self, plan: &Plan, mut retry: Self) -> Self {
        retry.retry_of = Some(self.id);
        retry.usage = WorkflowUsage::of_existing_plan(self.usage.planning);
        retry.outputs.step_outputs = self.outputs.step_outputs.clone();
        retry.outputs.loop_items = self.outputs.loop_items.clone();
        retry.outputs.clarifications = (self.outputs.clarifications.iter())
            .filter(|c| c.resolved && !c.step.is_some_and(|step| self.is_step_done(plan, step)))
            .map(|c| Clarification { workflow_id: retry.id, ..c.clone() })
            .collect();
        retry.update_current_step(plan);
        retry
    }

    /// The FAILED workflow this one takes up again, when it is a retry (see
    /// [`Runner::retry_workflow`](crate::Runner::retry_workflow)).
    pub fn retry_of(&self) -> Option<WorkflowId> {
        self.retry_of
    }

    /// The child workflow `link` starts for the plan `plan`, with the plan's inputs
    /// given `inputs` (by name, `$` included).
    pub(crate) fn child(link: ParentLink, plan: &Plan, execution_context: ExecutionContext) -> Self {
        let mut workflow = Self::new(plan.id, execution_context);
        workflow.id = link.child_id();
        workflow.parent = Some(link);
        workflow
    }

    /// Gives the plan's inputs their values before the first step runs: `given` by
    /// name, else the input's own `value`. An input with neither stays unset.
    pub(crate) fn set_inputs(&mut self, plan: &Plan, given: &serde_json::Map<String, Value>) {
        for input in &plan.inputs {
            let bare = input.name.trim_start_matches('$');
            let value = given.get(&input.name).or_else(|| given.get(bare)).or(input.value.as_ref());
            if let Some(value) = value {
                self.outputs.step_outputs.insert_ranked(input.name.clone(), Output::new(value.clone()), |_| 0);
            }
        }
    }

    /// The workflow and step that run this one as a sub-plan, when one does.
    pub fn parent(&self) -> Option<&ParentLink> {
        self.parent.as_ref()
    }

    /// The workflow's id.
    pub fn id(&self) -> WorkflowId {
        self.id
    }

    /// The plan it runs.
    pub fn plan_id(&self) -> PlanId {
        self.plan_id
    }

    /// The lowest step not yet done (the last step once COMPLETE).
    pub fn current_step_index(&self) -> usize {
        self.current_step_index
    }

    /// Where the workflow is in its life.
    pub fn state(&self) -> WorkflowState {
        self.state
    }

    /// Who the workflow runs for.
    pub fn execution_context(&self) -> &ExecutionContext {
        &self.execution_context
    }

    /// Step outputs, clarifications and the final output.
    pub fn outputs(&self) -> &WorkflowOutputs {
        &self.outputs
    }

    /// Why the workflow failed, when it did.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// The LLM calls and tokens the workflow spent.
    pub fn usage(&self) -> &WorkflowUsage {
        &self.usage
    }

    /// Grows by one with every save; a save must name the version it replaces.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// A workflow read from an older store, which kept no versions, made storable.
    pub(crate) fn imported(mut self) -> Self {
        self.version = self.version.max(1);
        self
    }

    /// The next version, for a compare-and-swap save.
    pub(crate) fn bump_version(&mut self) {
        self.version += 1;
    }

    /// Replaces the usage (the runner keeps it from the usage journal).
    pub(crate) fn set_usage(&mut self, usage: WorkflowUsage) {
        self.usage = usage;
    }

    /// Moves to `next`.
    ///
    /// # Errors
    /// [`Error::InvalidWorkflowState`] if the move is not allowed (see the module docs);
    /// the state is then unchanged.
    pub(crate) fn transition_to(&mut self, next: WorkflowState) -> Result<()> {
        if !self.state.can_transition_to(next) {
            return Err(self.invalid_state(format!("move to {next}")));
        }
        tracing::info!(workflow = %self.id, plan = %self.plan_id, from = %self.state, to = %next, "workflow state changed");
        self.state = next;
        Ok(())
    }

    /// An [`Error::InvalidWorkflowState`] for attempting `action` now.
    pub fn invalid_state(&self, action: impl Into<String>) -> Error {
        Error::InvalidWorkflowState { workflow_id: self.id, state: self.state, action: action.into() }
    }

    /// Clarifications still waiting for a response.
    pub fn outstanding_clarifications(&self) -> impl Iterator<Item = &Clarification> {
        self.outputs.clarifications.iter().filter(|c| !c.resolved)
    }

    /// Every clarification raised by `step`, resolved or not.
    pub fn clarifications_for_step(&self, step: usize) -> impl Iterator<Item = &Clarification> {
        self.outputs.clarifications.iter().filter(move |c| c.step == Some(step))
    }

    /// Whether `plan`'s step `step` has produced its output.
    pub fn is_step_done(&self, plan: &Plan, step: usize) -> bool {
        plan.steps.get(step).is_some_and(|s| self.outputs.step_outputs.contains(&s.output))
    }

    /// Stores the output of `plan`'s step `step`, keeping plan order, and moves
    /// `current_step_index` to the lowest step not yet done.
    pub(crate) fn record_step_output(&mut self, plan: &Plan, step: usize, output: Output) {
        let Some(name) = plan.steps.get(step).map(|s| s.output.clone()) else { return };
        tracing::debug!(workflow = %self.id, step, output = %name, value = %output.value, "step output");
        let rank = |n: &str| plan.step_producing(n).unwrap_or(usize::MAX);
        self.outputs.step_outputs.insert_ranked(name, output, rank);
        self.update_current_step(plan);
    }

    /// Stores the output of item `item` of `plan`'s loop step `step`.
    pub(crate) fn record_loop_item(&mut self, plan: &Plan, step: usize, item: usize, output: Output) {
        let Some(name) = plan.steps.get(step).map(|s| s.output.clone()) else { return };
        tracing::debug!(workflow = %self.id, step, item, output = %name, value = %output.value, "loop item output");
        self.outputs.loop_items.entry(name).or_default().insert(item, output);
    }

    /// Records a loop step's output, the values of its `items` in order (`null` for
    /// a skipped one), in place of its items.
    pub(crate) fn finish_loop(&mut self, plan: &Plan, step: usize, items: usize) -> Output {
        let name = plan.steps.get(step).map(|s| s.output.clone()).unwrap_or_default();
        let mut done = self.outputs.loop_items.remove(&name).unwrap_or_default();
        let values = (0..items).map(|i| done.remove(&i).map(|o| o.value.into_value()).unwrap_or_default()).collect();
        let output = Output::new(Value::Array(values));
        self.record_step_output(plan, step, output.clone());
        output
    }

    /// Sets the answer to the query.
    pub(crate) fn set_final_output(&mut self, output: Output) {
        self.outputs.final_output = Some(output);
    }

    /// Adds clarifications raised by `step`, stamping each with the step index and
    /// this workflow's id; returns them as added.
    pub(crate) fn add_clarifications(
        &mut self,
        step: usize,
        clarifications: impl IntoIterator<Item = Clarification>,
    ) -> Vec<Clarification> {
        let added: Vec<Clarification> = clarifications
            .into_iter()
            .map(|mut clarification| {
                clarification.step = Some(step);
                clarification.workflow_id = self.id;
                clarification
            })
            .collect();
        self.outputs.clarifications.extend(added.iter().cloned());
        added
    }

    /// Resolves one clarification; once none is outstanding, a workflow in
    /// NEED_CLARIFICATION becomes READY_TO_RESUME.
    ///
    /// # Errors
    /// [`Error::ClarificationNotFound`], [`Error::InvalidClarificationResponse`], or
    /// [`Error::InvalidWorkflowState`] for a workflow that is COMPLETE or FAILED.
    pub(crate) fn resolve_clarification(&mut self, id: ClarificationId, response: Value) -> Result<()> {
        if self.state.is_terminal() {
            return Err(self.invalid_state("resolve a clarification"));
        }
        let workflow_id = self.id;
        let clarification = self
            .outputs
            .clarifications
            .iter_mut()
            .find(|c| c.id == id)
            .ok_or(Error::ClarificationNotFound { workflow_id, clarification_id: id })?;
        clarification.resolve(response)?;
        if self.state == WorkflowState::NeedClarification && self.outstanding_clarifications().next().is_none() {
            self.transition_to(WorkflowState::ReadyToResume)?;
        }
        Ok(())
    }

    /// Marks the workflow FAILED.
    ///
    /// # Errors
    /// [`Error::InvalidWorkflowState`] if it is already COMPLETE or FAILED.
    pub(crate) fn fail(&mut self, failure: Failure) -> Result<()> {
        self.transition_to(WorkflowState::Failed)?;
        let Failure { step, kind, message } = &failure;
        // `error`, not `message`: that is the event's own text in JSON logs.
        tracing::warn!(workflow = %self.id, plan = %self.plan_id, step = *step, ?kind, error = %message, "workflow failed");
        self.failure = Some(failure);
        Ok(())
    }

    fn update_current_step(&mut self, plan: &Plan) {
        let last = plan.steps.len().saturating_sub(1);
        self.current_step_index = (0..plan.steps.len()).find(|&i| !self.is_step_done(plan, i)).unwrap_or(last);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::plan::PlanBuilder;

    #[test]
    fn legal_transitions_are_exactly_the_documented_ones() {
        use WorkflowState::*;
        let legal = [
            (NotStarted, InProgress),
            (NotStarted, Failed),
            (InProgress, NeedClarification),
            (InProgress, Complete),
            (InProgress, Failed),
            (NeedClarification, ReadyToResume),
            (NeedClarification, Failed),
            (ReadyToResume, InProgress),
            (ReadyToResume, Failed),
        ];
        for from in WorkflowState::ALL {
            for to in WorkflowState::ALL {
                let mut wf = Workflow::new(PlanId::new(), ExecutionContext::default());
                wf.state = from;
                let result = wf.transition_to(to);
                if legal.contains(&(from, to)) {
                    assert!(result.is_ok(), "{from} -> {to} should be legal");
                    assert_eq!(wf.state, to);
                } else {
                    let err = result.expect_err(&format!("{from} -> {to} should be refused"));
                    assert!(matches!(err, Error::InvalidWorkflowState { state, .. } if state == from));
                    assert_eq!(wf.state, from, "a refused transition leaves the state alone");
                }
            }
        }
    }

    #[test]
    fn state_serializes_in_screaming_snake_case() {
        for state in WorkflowState::ALL {
            assert_eq!(serde_json::to_value(state).unwrap(), json!(state.as_str()));
        }
    }

    #[test]
    fn step_outputs_keep_plan_order_whatever_the_finishing_order() {
        let plan = PlanBuilder::new("q").step("a", None, "$a").step("b", None, "$b").step("c", None, "$c").build();
        let mut wf = Workflow::new(plan.id, ExecutionContext::default());
        wf.record_step_output(&plan, 2, Output::new(3));
        assert_eq!(wf.current_step_index, 0);
        wf.record_step_output(&plan, 0, Output::new(1));
        assert_eq!(wf.current_step_index, 1);
        wf.record_step_output(&plan, 1, Output::new("two"));
        let names: Vec<_> = wf.outputs.step_outputs.iter().map(|(n, _)| n.to_owned()).collect();
        assert_eq!(names, ["$a", "$b", "$c"]);
        assert_eq!(wf.current_step_index, 2);
        let text = serde_json::to_string(&wf.outputs.step_outputs).unwrap();
        assert_eq!(
            text,
            r#"{"$a":{"value":1,"summary":null},"$b":{"value":"two","summary":null},"$c":{"value":3,"summary":null}}"#
        );
        let back: StepOutputs = serde_json::from_str(&text).unwrap();
        assert_eq!(back, wf.outputs.step_outputs);
    }

    #[test]
    fn values_keep_their_json_type() {
        let output = Output::new(json!({"price": 219.39, "up": true}));
        let back: Output = serde_json::from_str(&serde_json::to_string(&output).unwrap()).unwrap();
        assert_eq!(back.value["price"], json!(219.39));
        assert_eq!(back.value["up"], json!(true));
    }

    #[test]
    fn a_retry_keeps_what_finished_and_the_answers_still_needed_under_its_own_id() {
        let plan = PlanBuilder::new("q").step("a", None, "$a").step("b", None, "$b").step("c", None, "$c").build();
        let mut wf = Workflow::new(plan.id, ExecutionContext::for_end_user("ann"));
        wf.record_step_output(&plan, 0, Output::new(1));
        wf.outputs.loop_items.entry("$b".into()).or_default().insert(0, Output::new("item 0"));
        let questions = [(0, "x"), (1, "y"), (1, "z")].map(|(step, name)| {
            let mut question = Clarification::input(wf.id, name, "?");
            question.step = Some(step);
            question
        });
        let answered = [questions[0].id, questions[1].id];
        wf.outputs.clarifications.extend(questions);
        for id in answered {
            wf.outputs.clarifications.iter_mut().find(|c| c.id == id).unwrap().resolved = true;
        }
        wf.state = WorkflowState::InProgress;
        let err = wf.retry(&plan).unwrap_err();
        assert!(matches!(err, Error::InvalidWorkflowState { state: WorkflowState::InProgress, .. }), "{err}");
        wf.fail(Failure::new(FailureKind::Llm, "down").at_step(1)).unwrap();

        let retry = wf.retry(&plan).unwrap();
        assert_eq!(
            (retry.state, retry.retry_of, retry.current_step_index),
            (WorkflowState::NotStarted, Some(wf.id), 1)
        );
        assert_eq!((retry.id, retry.version, retry.failure.as_ref()), (wf.retry_id(), 1, None));
        assert_eq!(wf.retry(&plan).unwrap().id, retry.id, "one retry id, however often asked");
        assert_eq!(retry.execution_context.end_user_id.as_deref(), Some("ann"));
        assert_eq!(
            (&retry.outputs.step_outputs, &retry.outputs.loop_items),
            (&wf.outputs.step_outputs, &wf.outputs.loop_items)
        );
        let kept: Vec<_> = retry.outputs.clarifications.iter().map(|c| (c.id, c.workflow_id)).collect();
        assert_eq!(kept, [(answered[1], retry.id)], "only the answer a step yet to run needs, moved to the retry");

        wf.parent = Some(ParentLink::new(WorkflowId::new(), 0, None));
        let err = wf.retry(&plan).unwrap_err();
        assert!(err.to_string().contains("sub-plan"), "{err}");
    }

    #[test]
    fn resolving_the_last_clarification_makes_it_ready_to_resume() {
        let mut wf = Workflow::new(PlanId::new(), ExecutionContext::default());
        wf.state = WorkflowState::NeedClarification;
        let a = Clarification::input(wf.id, "x", "x?");
        let b = Clarification::input(wf.id, "y", "y?");
        let (a_id, b_id) = (a.id, b.id);
        wf.add_clarifications(1, [a, b]);
        assert!(wf.clarifications_for_step(1).all(|c| c.step == Some(1)));
        wf.resolve_clarification(a_id, json!(1)).unwrap();
        assert_eq!(wf.state, WorkflowState::NeedClarification);
        wf.resolve_clarification(b_id, json!(2)).unwrap();
        assert_eq!(wf.state, WorkflowState::ReadyToResume);
        assert_eq!(wf.outstanding_clarifications().count(), 0);
    }

    #[test]
    fn resolving_an_unknown_clarification_names_both_ids() {
        let mut wf = Workflow::new(PlanId::new(), ExecutionContext::default());
        let missing = ClarificationId::new();
        let err = wf.resolve_clarification(missing, json!(1)).unwrap_err();
        assert!(err.to_string().contains(&missing.to_string()));
        assert!(err.to_string().contains(&wf.id.to_string()));
    }

    #[test]
    fn usage_stored_before_planning_counted_existed_counted_its_planning() {
        let old: WorkflowUsage =
            serde_json::from_value(json!({"planning": {"llm_calls": 1, "prompt_tokens": 5, "completion_tokens": 1}}))
                .unwrap();
        assert!(old.planning_counted);
        let shared = WorkflowUsage::of_existing_plan(Usage { llm_calls: 1, ..Usage::default() });
        let back: WorkflowUsage = serde_json::from_value(serde_json::to_value(&shared).unwrap()).unwrap();
        assert_eq!(back, shared);
        assert_eq!(back.total.llm_calls, 0);
    }

    #[test]
    fn usage_accumulates_per_step_and_in_total() {
        let mut usage = WorkflowUsage::default();
        let call = Usage::call(10, 2);
        usage.add(Some("$a"), call, 0.5);
        usage.add(Some("$a"), call, 0.25);
        usage.add(None, call, 0.0);
        let wf = Workflow { usage, ..Workflow::new(PlanId::new(), ExecutionContext::default()) };
        assert_eq!(wf.usage.total, Usage { llm_calls: 3, ..Usage::call(30, 6) });
        assert_eq!(wf.usage.steps["$a"].llm_calls, 2);
        assert_eq!(wf.usage.cost_usd, 0.75);
    }

    #[test]
    fn a_child_recorded_again_replaces_its_record() {
        let mut usage = WorkflowUsage::default();
        usage.add(Some("$own"), Usage::call(100, 10), 1.0);
        let child = WorkflowId::new();
        let record = |tokens| ChildUsage { step_output: "$block".into(), usage: Usage::call(tokens, 1), cost_usd: 0.5 };
        usage.record_child(child, record(20));
        usage.record_child(child, record(30));
        usage.record_child(WorkflowId::new(), record(40));
        assert_eq!(usage.total, Usage::call(100, 10) + Usage::call(30, 1) + Usage::call(40, 1));
        assert_eq!(usage.steps["$block"], Usage::call(30, 1) + Usage::call(40, 1));
        assert_eq!(usage.cost_usd, 2.0);
        assert_eq!(usage.children_total().usage, Usage::call(30, 1) + Usage::call(40, 1));
        let back: WorkflowUsage = serde_json::from_value(serde_json::to_value(&usage).unwrap()).unwrap();
        assert_eq!(back, usage);
    }

    #[test]
    fn usage_without_children_is_stored_in_the_shape_0_4_wrote() {
        let mut usage = WorkflowUsage::default();
        usage.add(None, Usage::call(10, 1), 0.0);
        let json = serde_json::to_value(&usage).unwrap();
        assert!(json.get("children").is_none(), "{json}");
        let old: WorkflowUsage = serde_json::from_value(json).unwrap();
        assert!(old.children.is_empty());
    }
}
