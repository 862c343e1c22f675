//! The [`Runner`]: plans queries, creates workflows and drives them to an end.
//!
//! ```text
//! query ──generate_plan──> Plan ──create_workflow──> Workflow (NOT_STARTED)
//!       ──execute_workflow──> COMPLETE | FAILED | NEED_CLARIFICATION
//! NEED_CLARIFICATION ──resolve_clarification──> READY_TO_RESUME ──execute_workflow──> ...
//! ```
//! A `Runner` is cheap to clone and `Send + Sync`: one runner serves many
//! workflows at once.

mod calls;
mod control;
mod executor;
mod functions;
mod inputs;
mod metered;
mod plans;
mod requests;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod serve;
mod sub_plan;
mod typed;
mod watch;
mod worker;

pub use crate::events::{
    DEFAULT_CAPACITY as DEFAULT_EVENT_CAPACITY, EventKind, EventStream, Missed, StoredEvent, WorkflowEvent,
};
pub use crate::hooks::{ApprovalGate, HookError, Hooks, StepDecision, ToolCallDecision, ToolCallRequest};
pub use requests::{
    CreateWorkflow, ExecuteQuery, ExecuteQueryAs, GeneratePlan, RunPlan, RunPlanAs, SubmitPlan, SubmitQuery,
};
pub use typed::TypedWorkflow;
pub use watch::Watch;
pub use worker::{Worker, WorkerOptions, WorkerReport, shutdown_signal};

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use serde_json::Value;

use crate::agent::{Agent, OneShotAgent, VerifierAgent};
use crate::clarification::{Clarification, ClarificationKind};
use crate::config::{AgentKind, Config, StorageKind};
use crate::events::EventSink;
use crate::execution_context::ExecutionContext;
use crate::hooks::HookChain;
use crate::ids::{PlanId, WorkflowId};
use crate::live::LiveQuestions;
use crate::llm::{LlmClient, LlmClientExt, LlmSettings, Retry};
use crate::plan::Plan;
use crate::planner::{OneShotPlanner, Planner, PlanningRequest};
#[cfg(feature = "sqlite")]
use crate::storage::SqliteStorage;
use crate::storage::{InMemoryStorage, Storage, ToolCallRecord, WorkflowPage, WorkflowQuery};
#[cfg(feature = "postgres")]
use crate::storage::{PostgresSettings, PostgresStorage};
use crate::tool::{InMemoryToolRegistry, ToolRegistry};
use crate::workflow::{Failure, FailureKind, Workflow, WorkflowState, WorkflowUsage};
use crate::{Error, Result};
use calls::{Stop, StopSignal};

/// Plans queries and runs workflows. See the [module docs](self).
///
/// ```
/// use std::sync::Arc;
/// use portia::serde_json::json;
/// use portia::testing::{MockTool, ScriptedLlm};
/// use portia::{Config, InMemoryToolRegistry, PlanBuilder, Runner, WorkflowState};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> portia::Result<()> {
/// // `Runner::new(Config::from_env()?, tools)` talks to the configured provider;
/// // here a scripted model stands in, so the example runs offline.
/// let tools = InMemoryToolRegistry::new().with(MockTool::returning("weather_tool", json!("-3°C")))?;
/// let llm = Arc::new(ScriptedLlm::new().tool_call("weather_tool", json!({"city": "Oslo"})).text("Cold."));
/// let runner = Runner::builder(Config::default()).tools(tools).llm(llm).build()?;
///
/// let plan = PlanBuilder::new("Weather in Oslo?").step("Get the weather in Oslo", Some("weather_tool"), "$weather").build();
/// let workflow = runner.run_plan(&plan).await?; // creates the workflow, saves it, runs it
/// assert_eq!(workflow.state(), WorkflowState::Complete);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Arc<Config>,
    tools: Arc<dyn ToolRegistry>,
    storage: Arc<dyn Storage>,
    llm: Arc<dyn LlmClient>,
    /// The configuration's LLM settings: which model each request goes to.
    llm_settings: Arc<LlmSettings>,
    planner: Arc<dyn Planner>,
    agent: Arc<dyn Agent>,
    today: Option<String>,
    /// This runner's name on the leases it takes: unique per runner and process.
    owner: String,
    local_runs: control::LocalRuns,
    /// Plans read to run their workflows.
    plans: plans::KnownPlans,
    hooks: HookChain,
    events: EventSink,
    /// Questions running tools of this runner wait on (see [`Runner::resolve_clarification`]).
    live: LiveQuestions,
    /// The functions function steps call, by name.
    functions: HashMap<String, Arc<dyn crate::tool::Tool>>,
}

/// Where [`Runner::place_new_workflow`] puts a new workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Stored, NOT_STARTED, for the caller to run.
    Stored,
    /// Queued for the workers.
    Queued,
    /// Stored leased to this runner, and run at once.
    Started,
}

/// Options for planning a query, for [`GeneratePlan::options`] and the like.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct PlanOptions {
    tool_ids: Option<Vec<String>>,
    examples: Vec<Plan>,
    execution_context: ExecutionContext,
    output_schema: Option<Value>,
}

impl PlanOptions {
    /// Default options: every tool the registry matches, no examples, an empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Offers the planner only these tools.
    pub fn tools<I: IntoIterator<Item = S>, S: Into<String>>(mut self, ids: I) -> Self {
        self.tool_ids = Some(ids.into_iter().map(Into::into).collect());
        self
    }

    /// Example plans for the planner to imitate.
    pub fn examples(mut self, examples: Vec<Plan>) -> Self {
        self.examples = examples;
        self
    }

    /// Who the plan (and the workflow made from it) is for.
    pub fn execution_context(mut self, context: ExecutionContext) -> Self {
        self.execution_context = context;
        self
    }

    /// Asks for a plan whose final output fits this JSON Schema: the planner is
    /// told it, and the plan carries it as its [`Plan::output_schema`].
    pub fn output_schema(mut self, schema: Value) -> Self {
        self.output_schema = Some(schema);
        self
    }
}

/// How [`Runner::wait_for_ready`] polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadyPolicy {
    /// The first wait between polls.
    pub initial_interval: Duration,
    /// The longest wait between polls (the wait doubles up to it).
    pub max_interval: Duration,
    /// When to give up with [`Error::NotReady`].
    pub timeout: Duration,
}

impl Default for ReadyPolicy {
    fn default() -> Self {
        Self {
            initial_interval: Duration::from_secs(2),
            max_interval: Duration::from_secs(60),
            timeout: Duration::from_secs(30 * 60),
        }
    }
}

impl ReadyPolicy {
    /// Waits `interval` between the first polls.
    #[must_use]
    pub fn initial_interval(mut self, interval: Duration) -> Self {
        self.initial_interval = interval;
        self
    }

    /// Waits at most `interval` between polls.
    #[must_use]
    pub fn max_interval(mut self, interval: Duration) -> Self {
        self.max_interval = interval;
        self
    }

    /// Gives up after `timeout`.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl Runner {
    /// A runner with the storage, LLM provider, planner and agent that `config` names.
    ///
    /// # Errors
    /// [`Error::MissingApiKey`] naming the variable when the provider's key is not set,
    /// or [`Error::InvalidConfig`].
    pub fn new(config: Config, tools: impl ToolRegistry + 'static) -> Result<Self> {
        Self::builder(config).tools(tools).build()
    }

    /// Starts a runner whose parts can be replaced.
    pub fn builder(config: Config) -> RunnerBuilder {
        RunnerBuilder {
            config,
            tools: None,
            storage: None,
            llm: None,
            llm_as_is: false,
            planner: None,
            agent: None,
            today: None,
            hooks: HookChain::default(),
            event_capacity: crate::events::DEFAULT_CAPACITY,
            functions: HashMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The tool registry.
    pub fn tools(&self) -> &Arc<dyn ToolRegistry> {
        &self.inner.tools
    }

    /// The storage.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.storage
    }

    /// The name this runner gives the leases it takes (unique per runner and process).
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// Asks the planner for a plan for `query`, offering every matching tool, and
    /// saves it. Await it, or first narrow the tools, give examples or say who it is
    /// for with the [`GeneratePlan`] setters.
    ///
    /// # Errors
    /// [`Error::Planning`] if no valid plan was made (or, before any LLM call, if the
    /// query is blank), [`Error::Llm`] if the LLM failed, [`Error::ToolNotFound`] for
    /// an unknown tool id given to [`GeneratePlan::tools`].
    pub fn generate_plan(&self, query: impl Into<String>) -> GeneratePlan<'_> {
        GeneratePlan::new(self, query.into())
    }

    /// Checks and saves `plan`, and creates a NOT_STARTED workflow for it (for the
    /// end user [`CreateWorkflow::execution_context`] names, if any).
    ///
    /// # Errors
    /// [`Error::InvalidPlan`] listing every problem, or a storage error.
    pub fn create_workflow<'a>(&'a self, plan: &'a Plan) -> CreateWorkflow<'a> {
        CreateWorkflow::new(self, plan)
    }

    /// Plans `query` and saves the plan.
    async fn plan_query(&self, query: String, options: PlanOptions) -> Result<Plan> {
        let plan = self.make_plan(query, options).await?;
        self.inner.storage.save_plan(&plan).await?;
        Ok(plan)
    }

    /// Plans `query`, leaving the plan unsaved: whoever makes its workflow saves it.
    async fn make_plan(&self, query: String, options: PlanOptions) -> Result<Plan> {
        if query.trim().is_empty() {
            return Err(Error::EmptyQuery);
        }
        let PlanOptions { tool_ids, examples, execution_context, output_schema } = options;
        let tools = match tool_ids {
            Some(ids) => ids.iter().map(|id| self.inner.tools.get_tool(id)).collect::<Result<Vec<_>>>()?,
            None => self.inner.tools.match_tools(&query),
        };
        let end_user_id = execution_context.end_user_id.clone();
        let request = PlanningRequest {
            query,
            tools,
            examples,
            execution_context,
            today: self.today(),
            output_schema: output_schema.clone(),
        };
        let mut plan = self.inner.planner.plan(request).await?;
        // Recorded here, not left to each planner: whoever serves plans by id needs it.
        plan.plan_context.end_user_id = end_user_id;
        if plan.output_schema.is_none() {
            plan.output_schema = output_schema;
        }
        tracing::debug!(plan = %plan.id, json = %serde_json::to_string(&plan).unwrap_or_default(), "plan");
        Ok(plan)
    }

    /// Makes a workflow of `plan` and puts it where `placement` says. A workflow
    /// started at once is stored with this runner's lease already taken (one write,
    /// where the store can) and run with the plan in hand: a new workflow has nothing
    /// to read back. Returns the stored or queued workflow, or the one run. The run
    /// takes the plan: an owned one as it is, a borrowed one copied.
    async fn place_new_workflow(
        &self,
        plan: Cow<'_, Plan>,
        context: ExecutionContext,
        planning: Planning,
        inputs: &inputs::Inputs,
        placement: Placement,
    ) -> Result<Workflow> {
        let workflow = self.new_workflow(&plan, context, planning, inputs).await?;
        let storage = &self.inner.storage;
        let grant = match placement {
            Placement::Stored => storage.create_workflow(&workflow).await.map(|()| None)?,
            Placement::Queued => storage.submit_workflow(&workflow).await.map(|()| None)?,
            Placement::Started => {
                Some(storage.create_leased(&workflow, &self.inner.owner, self.inner.config.lease_ttl()).await?)
            }
        };
        let verb = if placement == Placement::Queued { "submitted" } else { "created" };
        tracing::info!(workflow = %workflow.id(), plan = %plan.id, "workflow {verb}");
        match grant {
            // Boxed: the run's state is large, and otherwise the whole request's
            // future (planning included) holds room for it from the start.
            Some(grant) => {
                Box::pin(self.run_granted_plan(grant, StopSignal::default(), Some(Arc::new(plan.into_owned())))).await
            }
            None => Ok(workflow),
        }
    }

    /// Checks and saves `plan`, and makes (without storing it) a workflow of it with
    /// `inputs` for the plan's inputs.
    async fn new_workflow(
        &self,
        plan: &Plan,
        context: ExecutionContext,
        planning: Planning,
        inputs: &inputs::Inputs,
    ) -> Result<Workflow> {
        let mut problems = plan.problems(self.inner.tools.as_ref());
        for (path, s) in plan.each_step() {
            if let Some(function) = s.function.as_ref().filter(|f| !self.inner.functions.contains_key(*f)) {
                let (step, blocks) = path.split_last().unwrap_or((&0, &[]));
                let unknown = crate::plan::PlanProblem::UnknownFunction { step: *step, function: function.clone() };
                problems.push(crate::plan::PlanProblem::in_blocks(blocks, unknown));
            }
        }
        problems.extend(self.sub_plan_problems(plan).await?);
        if !problems.is_empty() {
            return Err(Error::InvalidPlan(problems));
        }
        inputs::check(plan, inputs)?;
        self.inner.storage.save_plan(plan).await?;
        let mut workflow = Workflow::new(plan.id, context);
        workflow.set_inputs(plan, inputs);
        workflow.set_usage(match planning {
            Planning::Counted => WorkflowUsage::planned(plan.usage, self.planning_cost(plan.usage)),
            Planning::Referenced => WorkflowUsage::of_existing_plan(plan.usage),
        });
        Ok(workflow)
    }

    /// Runs a workflow until it is COMPLETE, FAILED or NEED_CLARIFICATION.
    ///
    /// The stored workflow with `workflow`'s id is run, whatever the copy passed in
    /// holds, so an old copy can never overwrite newer state. The run holds the
    /// workflow's lease throughout: no other runner, in this process or another,
    /// runs it meanwhile. A workflow that still has unresolved clarifications is
    /// returned unchanged. A step failure is not an `Err`: the workflow comes back
    /// FAILED with its [`failure`](Workflow::failure) set.
    ///
    /// # Errors
    /// [`Error::InvalidWorkflowState`] for a COMPLETE or FAILED workflow,
    /// [`Error::AlreadyRunning`] while another run holds its lease,
    /// [`Error::LeaseLost`] when this run lost its lease midway (another run has
    /// taken the workflow over), [`Error::PlanNotFound`], or a storage error.
    pub async fn execute_workflow(&self, workflow: Workflow) -> Result<Workflow> {
        self.execute(workflow.id()).await
    }

    /// Runs the stored workflow `id` as [`Runner::execute_workflow`] does.
    ///
    /// # Errors
    /// [`Error::WorkflowNotFound`], and as [`Runner::execute_workflow`].
    pub async fn execute_workflow_by_id(&self, id: WorkflowId) -> Result<Workflow> {
        self.execute(id).await
    }

    /// Creates a workflow for `plan` and runs it.
    ///
    /// # Errors
    /// As [`Runner::create_workflow`] and [`Runner::execute_workflow`].
    pub fn run_plan<'a>(&'a self, plan: &'a Plan) -> RunPlan<'a> {
        RunPlan::new(self, plan)
    }

    /// Creates a workflow for `plan` and runs it, reading its final output as `T`.
    /// A plan without an [`output_schema`](Plan::output_schema) is given `T`'s.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use portia::serde_json::json;
    /// use portia::testing::ScriptedLlm;
    /// use portia::{Config, PlanBuilder, Runner};
    ///
    /// #[derive(Debug, serde::Deserialize, portia::schemars::JsonSchema)]
    /// #[schemars(crate = "portia::schemars")]
    /// struct Verdict { faster: String }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> portia::Result<()> {
    /// // The last step writes the answer and its summary in one structured call.
    /// let llm = ScriptedLlm::new().json(json!({"answer": {"faster": "Amazon"}, "summary": "Amazon grew faster."}));
    /// let runner = Runner::builder(Config::default()).llm(Arc::new(llm)).build()?;
    /// let plan = PlanBuilder::new("Which grew faster?").step("Say which grew faster", None, "$verdict").build();
    /// let run = runner.run_plan_as::<Verdict>(&plan).await?;
    /// assert_eq!(run.into_output()?.faster, "Amazon");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Runner::run_plan`]. A workflow that does not complete is not an error:
    /// its [`TypedWorkflow::output`] is `None`.
    pub fn run_plan_as<'a, T>(&'a self, plan: &'a Plan) -> RunPlanAs<'a, T> {
        RunPlanAs::new(self, plan)
    }

    /// Plans `query` for a final output of type `T` (the planner is told its JSON
    /// Schema), runs the workflow and reads the output as `T`.
    ///
    /// # Errors
    /// As [`Runner::execute_query`].
    pub fn execute_query_as<T>(&self, query: impl Into<String>) -> ExecuteQueryAs<'_, T> {
        ExecuteQueryAs::new(self, query.into())
    }

    /// Queues a workflow of `plan` for the workers ([`Runner::worker`], in any process
    /// sharing the store); it resolves to the workflow's id at once.
    ///
    /// # Errors
    /// As [`Runner::create_workflow`].
    pub fn submit_plan<'a>(&'a self, plan: &'a Plan) -> SubmitPlan<'a> {
        SubmitPlan::new(self, plan)
    }

    /// Plans `query` here and queues its workflow for the workers; resolves to its id.
    ///
    /// # Errors
    /// As [`Runner::generate_plan`] and [`Runner::submit_plan`].
    pub fn submit_query(&self, query: impl Into<String>) -> SubmitQuery<'_> {
        SubmitQuery::new(self, query.into())
    }

    /// Waits until a workflow rests: COMPLETE, FAILED, or NEED_CLARIFICATION (a
    /// human must answer before it goes on). It reads the store, so the workflow may
    /// run anywhere: on a worker in another process, say.
    ///
    /// # Errors
    /// [`Error::WaitTimedOut`] after `timeout`, [`Error::WorkflowNotFound`], or a
    /// storage error.
    pub async fn wait_for_completion(&self, id: WorkflowId, timeout: Duration) -> Result<Workflow> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut interval = Duration::from_millis(20);
        loop {
            let workflow = self.inner.storage.get_workflow(id).await?;
            let state = workflow.state();
            if state.is_terminal() || state == WorkflowState::NeedClarification {
                return Ok(workflow);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::WaitTimedOut { workflow_id: id, state });
            }
            tokio::time::sleep(interval.min(deadline - now)).await;
            interval = (interval * 2).min(Duration::from_secs(1));
        }
    }

    /// Plans `query`, creates a workflow and runs it. The [`ExecuteQuery`] setters
    /// narrow the tools, give examples, or say who it runs for.
    ///
    /// # Errors
    /// As [`Runner::generate_plan`] and [`Runner::run_plan`].
    pub fn execute_query(&self, query: impl Into<String>) -> ExecuteQuery<'_> {
        ExecuteQuery::new(self, query.into())
    }

    /// Answers a clarification and saves the workflow; once none is outstanding the
    /// workflow is READY_TO_RESUME. Run it on with [`Runner::execute_workflow`].
    ///
    /// A question a running tool of this runner is waiting on
    /// ([`ToolRunContext::ask`](crate::tool::ToolRunContext::ask)) is answered live
    /// instead: the answer goes to the tool, which carries on with it, and the
    /// workflow is returned as stored, still IN_PROGRESS; the run stores the answered
    /// question with the step. The answer is checked as for a stored question.
    ///
    /// # Errors
    /// [`Error::WorkflowNotFound`], [`Error::ClarificationNotFound`],
    /// [`Error::InvalidClarificationResponse`] (a choice outside the options),
    /// [`Error::InvalidWorkflowState`] for a finished workflow, or
    /// [`Error::AlreadyRunning`] while a run of it is in progress and no tool waits on
    /// the question (a parallel branch may ask before the others end, or a tool's wait
    /// may have just ended; answer once the workflow is NEED_CLARIFICATION).
    pub async fn resolve_clarification(
        &self,
        clarification: &Clarification,
        response: impl Into<Value>,
    ) -> Result<Workflow> {
        let response = response.into();
        if self.inner.live.answer(clarification.id, &response)? {
            return self.inner.storage.get_workflow(clarification.workflow_id).await;
        }
        self.update_stored(clarification.workflow_id, |workflow| {
            workflow.resolve_clarification(clarification.id, response.clone())?;
            Ok(vec![EventKind::ClarificationResolved { clarification_id: clarification.id, response }])
        })
        .await
        .map_err(|e| match e {
            // The store refuses a finished workflow's lease in the words of running it.
            Error::InvalidWorkflowState { workflow_id, state, .. } if state.is_terminal() => {
                Error::InvalidWorkflowState { workflow_id, state, action: "answer its clarification".to_owned() }
            }
            other => other,
        })
    }

    /// Every event of every workflow this runner (or a clone) runs, from now on.
    pub fn subscribe(&self) -> EventStream {
        self.inner.events.subscribe(None)
    }

    /// Every workflow's events from now on, for a listener that wants to know what
    /// changed and not to see replies stream: it does not count as watching (see
    /// [`StreamMode`](crate::llm::StreamMode)).
    #[cfg(feature = "server")]
    pub(crate) fn subscribe_unwatching(&self) -> EventStream {
        self.inner.events.subscribe_unwatching()
    }

    /// The events of workflow `id` from now on; the stream ends once the workflow
    /// is at rest (finished, or waiting for a human).
    pub fn subscribe_to(&self, id: WorkflowId) -> EventStream {
        self.inner.events.subscribe(Some(id))
    }

    /// Runs `workflow` as [`Runner::execute_workflow`] does, in a task of its own,
    /// and returns its events as they happen (none missed: the stream is opened
    /// before the run starts) with the task's handle, which yields the workflow.
    pub fn execute_workflow_stream(
        &self,
        workflow: Workflow,
    ) -> (EventStream, tokio::task::JoinHandle<Result<Workflow>>) {
        let id = workflow.id();
        let events = self.subscribe_to(id);
        let runner = self.clone();
        (events, tokio::spawn(async move { runner.execute(id).await }))
    }

    /// Stops a workflow that is not finished: it becomes FAILED, of kind
    /// [`FailureKind::Cancelled`], with `reason`. Use it when a human rejects a value
    /// confirmation, for example.
    ///
    /// Its child workflows (those of its [sub-plan steps](crate::Step::sub_plan),
    /// and theirs) are cancelled with it, with the same reason, wherever they stand.
    ///
    /// The request is stored, so any process may make it. A run of the workflow in
    /// this process stops at once (running steps are aborted, and running tools see
    /// it through [`ToolRunContext::cancellation`](crate::tool::ToolRunContext)), and
    /// the FAILED workflow is returned. A run in another process stops when it next
    /// renews its lease (within a third of `PORTIA_LEASE_TTL_SECS`); the workflow is
    /// then returned as stored now, still running.
    ///
    /// # Errors
    /// [`Error::WorkflowNotFound`], or [`Error::InvalidWorkflowState`] for a workflow
    /// that is already COMPLETE or FAILED.
    pub async fn cancel_workflow(&self, id: WorkflowId, reason: &str) -> Result<Workflow> {
        let stored = self.inner.storage.get_workflow(id).await?;
        if stored.state().is_terminal() {
            return Err(stored.invalid_state("cancel it"));
        }
        self.cancel_stored(&stored, reason).await
    }

    /// Takes a FAILED workflow up again, once what failed it is put right (a
    /// provider back after an outage, a key set, a file restored): stores a new
    /// workflow, NOT_STARTED, for the caller to run with [`Runner::execute_workflow`].
    /// It has the failed one's plan, context and inputs, and keeps the outputs of
    /// the steps that finished, which do not run again (nor repeat their tool
    /// calls), and of the finished items of a loop that was cut short, and the
    /// answers given to questions of steps yet to run. The steps that did not
    /// finish run again; a sub-plan step whose child workflow FAILED takes that
    /// child up again the same way, as its new child. The new workflow names the
    /// failed one in [`Workflow::retry_of`]; the failed one stays as it was, and
    /// what it spent does not count against the retry's budget.
    ///
    /// A workflow is retried once: asked again, this returns the retry made the
    /// first time, as stored now (at [`Workflow::retry_id`]), whatever its state.
    /// Should the retry fail too, retry it.
    ///
    /// What the retry does not carry over: the failed workflow's journal, so a
    /// tool call the failed step made before it failed is made again (under the
    /// retry's own idempotency key), and an approval given for such a call is asked
    /// for again; and its spending, so a workflow that failed on its
    /// [`Budget`](crate::config::Budget) gets the whole budget again.
    ///
    /// # Errors
    /// [`Error::WorkflowNotFound`], [`Error::InvalidWorkflowState`] unless the
    /// workflow is FAILED, or for a sub-plan's run (retry the workflow that runs
    /// it), [`Error::PlanNotFound`], or a storage error.
    pub async fn retry_workflow(&self, id: WorkflowId) -> Result<Workflow> {
        self.place_retry(id, false).await
    }

    /// [`Runner::retry_workflow`], with the new workflow queued for the workers
    /// rather than left for the caller to run. A retry made before is returned as
    /// stored, and queued now if it was not: one made to run in its own process
    /// whose run died would otherwise wait for a resume (a worker takes it only
    /// while it is runnable and no live run holds its lease).
    ///
    /// # Errors
    /// As [`Runner::retry_workflow`].
    pub async fn submit_retry(&self, id: WorkflowId) -> Result<Workflow> {
        self.place_retry(id, true).await
    }

    /// Stores the retry of FAILED workflow `id`, at the back of the queue when `queued`.
    async fn place_retry(&self, id: WorkflowId, queued: bool) -> Result<Workflow> {
        let storage = &self.inner.storage;
        let failed = storage.get_workflow(id).await?;
        let plan = self.inner.plans.get(failed.plan_id(), storage.as_ref()).await?;
        let retry = failed.retry(&plan)?;
        let stored = if queued { storage.submit_workflow(&retry).await } else { storage.create_workflow(&retry).await };
        match stored {
            Ok(()) => {
                tracing::info!(workflow = %retry.id(), retry_of = %id, plan = %plan.id, "workflow created to retry a failed one");
                Ok(retry)
            }
            // Retried before: that retry stands, and goes to the workers if asked.
            Err(Error::VersionConflict { expected: 0, .. }) => {
                if queued && storage.queue(retry.id()).await? {
                    tracing::info!(workflow = %retry.id(), retry_of = %id, "a retry made to run in its own process is queued now");
                }
                storage.get_workflow(retry.id()).await
            }
            Err(e) => Err(e),
        }
    }

    /// Cancels `stored`, which was not finished when read, and its child workflows.
    async fn cancel_stored(&self, stored: &Workflow, reason: &str) -> Result<Workflow> {
        let id = stored.id();
        self.inner.storage.request_cancel(id, reason).await?;
        if let Some(run) = self.inner.local_runs.get(id) {
            // The run stops its children's runs with it; those at rest are ended here.
            run.signal.stop(Stop::Cancelled(reason.to_owned()));
            drop(run.running.lock().await);
            let ended = self.inner.storage.get_workflow(id).await?;
            self.cancel_children(&ended, reason).await?;
            return Ok(ended);
        }
        // Before the parent: a child's questions may be what the parent waits on.
        self.cancel_children(stored, reason).await?;
        let failure = Failure::new(FailureKind::Cancelled, reason);
        match self.update_stored(id, |workflow| workflow.fail(failure).map(|()| Vec::new())).await {
            Err(Error::AlreadyRunning { .. }) => self.inner.storage.get_workflow(id).await,
            other => other,
        }
    }

    /// Stops this process's run of workflow `id` the way a worker stops at shutdown:
    /// running steps are aborted (running tools see it through
    /// [`ToolRunContext::cancellation`](crate::tool::ToolRunContext)), the lease is
    /// released, and the workflow is left as stored, to be resumed by
    /// [`Runner::execute_workflow`] in any process without repeating a finished tool
    /// call. The interrupted `execute_workflow` returns that workflow.
    ///
    /// Returns at once: `true` when this process was running the workflow, and
    /// `false` otherwise (a run in another process is not touched; see
    /// [`Runner::cancel_workflow`]). Await the interrupted run to know it has ended.
    pub fn interrupt(&self, id: WorkflowId) -> bool {
        let Some(run) = self.inner.local_runs.get(id) else { return false };
        run.signal.stop(Stop::Shutdown);
        true
    }

    /// Changes a stored workflow outside a run: under a short lease of its own, as
    /// the next version, so it cannot race a run or another change.
    /// `change` returns the events it caused besides a change of state.
    async fn update_stored(
        &self,
        id: WorkflowId,
        change: impl FnOnce(&mut Workflow) -> Result<Vec<EventKind>>,
    ) -> Result<Workflow> {
        let storage = &self.inner.storage;
        let grant = storage.acquire_lease(id, &self.inner.owner, self.inner.config.lease_ttl()).await?;
        let mut workflow = grant.workflow;
        let from = workflow.state();
        let events = self.inner.events.for_run();
        let saved = match change(&mut workflow) {
            Ok(caused) => {
                let to = workflow.state();
                let staged: Vec<WorkflowEvent> = caused
                    .into_iter()
                    .chain((from != to).then_some(EventKind::StateChanged { from, to }))
                    .map(|kind| events.stage(id, kind))
                    .collect();
                workflow.bump_version();
                // One write saves and gives the lease up.
                storage.update_and_release(&workflow, &grant.lease, &events.take()).await.map(|()| staged)
            }
            Err(e) => Err(e),
        };
        match saved {
            Ok(staged) => {
                staged.into_iter().for_each(|event| events.announce(event));
                Ok(workflow)
            }
            // The change, or its write, failed: the lease is given up alone.
            Err(e) => {
                control::release(storage.as_ref(), &grant.lease).await;
                Err(e)
            }
        }
    }

    /// Every tool call a workflow journaled, with its arguments and outcome. A
    /// read-only tool's call is journaled once it is over, so one still running is
    /// not listed yet; [`EventKind::ToolCallStarted`] says when a call begins.
    ///
    /// # Errors
    /// A storage error.
    pub async fn tool_calls(&self, id: WorkflowId) -> Result<Vec<ToolCallRecord>> {
        self.inner.storage.tool_calls(id).await
    }

    /// Deletes a workflow, its journal and usage, the child workflows its sub-plan
    /// steps started (and theirs), and its plan when no other workflow uses it. A
    /// workflow that cannot be read is deleted all the same, without its children,
    /// which it no longer names.
    ///
    /// # Errors
    /// A storage error.
    pub async fn delete_workflow(&self, id: WorkflowId) -> Result<()> {
        match self.inner.storage.get_workflow(id).await {
            Ok(workflow) => self.delete_children(&workflow).await?,
            Err(Error::WorkflowNotFound(_) | Error::Unreadable { .. }) => {}
            Err(e) => return Err(e),
        }
        self.inner.storage.delete_workflow(id).await
    }

    /// Puts a workflow [set aside](crate::storage::LeaseQueue::set_aside) back
    /// without running it, once what its run needs reads again: its row, its plan
    /// and its journal, and those of the sub-plan and block workflows it started,
    /// are read first, and one that still cannot be read is refused and stays aside
    /// (a worker would only set it aside again). Whether it was set aside.
    ///
    /// # Errors
    /// [`Error::Unreadable`] naming the row that still cannot be read,
    /// [`Error::WorkflowNotFound`], or the store's.
    pub async fn put_back(&self, id: WorkflowId) -> Result<bool> {
        let workflow = self.inner.storage.get_workflow(id).await?;
        self.read_what_a_run_needs(&workflow).await?;
        self.inner.storage.put_back(id).await
    }

    /// Deletes everything kept for one end user; returns how many workflows went.
    ///
    /// # Errors
    /// A storage error.
    pub async fn delete_end_user(&self, end_user_id: &str) -> Result<usize> {
        self.inner.storage.delete_end_user(end_user_id).await
    }

    /// Deletes finished workflows last changed more than `age` ago; returns how many.
    ///
    /// # Errors
    /// A storage error.
    pub async fn prune_finished(&self, age: Duration) -> Result<usize> {
        let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
        let before = Utc::now().checked_sub_signed(age).unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        self.inner.storage.prune_finished(before).await
    }

    /// Loads a plan.
    ///
    /// # Errors
    /// [`Error::PlanNotFound`].
    pub async fn get_plan(&self, id: PlanId) -> Result<Plan> {
        self.inner.storage.get_plan(id).await
    }

    /// Loads a workflow.
    ///
    /// # Errors
    /// [`Error::WorkflowNotFound`].
    pub async fn get_workflow(&self, id: WorkflowId) -> Result<Workflow> {
        self.inner.storage.get_workflow(id).await
    }

    /// Lists stored workflows.
    ///
    /// # Errors
    /// A storage error.
    pub async fn list_workflows(&self, query: &WorkflowQuery) -> Result<WorkflowPage> {
        self.inner.storage.list_workflows(query).await
    }

    /// Waits until the Action clarifications of a workflow are done.
    ///
    /// Each poll re-reads the stored workflow (so a resolution made elsewhere ends
    /// the wait) and asks the `ready()` of each tool with an open Action
    /// clarification. When every such tool is ready, those clarifications are
    /// resolved with `"complete"` and the workflow is saved. Returns at once when the
    /// workflow is not waiting for clarifications, or only for non-Action ones.
    ///
    /// # Errors
    /// [`Error::NotReady`] after `policy.timeout`, [`Error::Tool`] when a `ready()`
    /// check fails hard, [`Error::InvalidWorkflowState`] for a finished workflow.
    pub async fn wait_for_ready(&self, id: WorkflowId, policy: ReadyPolicy) -> Result<Workflow> {
        let deadline = tokio::time::Instant::now() + policy.timeout;
        let mut interval = policy.initial_interval;
        loop {
            let workflow = self.inner.storage.get_workflow(id).await?;
            if workflow.state().is_terminal() {
                return Err(workflow.invalid_state("wait for it to become ready"));
            }
            let waiting: Vec<_> = workflow
                .outstanding_clarifications()
                .filter(|c| matches!(c.kind, ClarificationKind::Action { .. }))
                .cloned()
                .collect();
            if workflow.state() != WorkflowState::NeedClarification || waiting.is_empty() {
                return Ok(workflow);
            }
            if self.actions_ready(&workflow, &waiting).await? {
                // Resolved on the stored copy under a lease, so an answer saved meanwhile is kept.
                return self
                    .update_stored(id, |workflow| {
                        let mut resolved = Vec::new();
                        for clarification in &waiting {
                            if workflow.outstanding_clarifications().any(|c| c.id == clarification.id) {
                                let response = Value::from("complete");
                                workflow.resolve_clarification(clarification.id, response.clone())?;
                                let clarification_id = clarification.id;
                                resolved.push(EventKind::ClarificationResolved { clarification_id, response });
                            }
                        }
                        Ok(resolved)
                    })
                    .await;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::NotReady(id));
            }
            tokio::time::sleep(interval.min(deadline - now)).await;
            interval = (interval * 2).min(policy.max_interval);
        }
    }

    async fn actions_ready(&self, workflow: &Workflow, waiting: &[Clarification]) -> Result<bool> {
        let plan = self.inner.storage.get_plan(workflow.plan_id()).await?;
        for clarification in waiting {
            let Some(step) = clarification.step.and_then(|s| plan.steps.get(s)) else { continue };
            let Some(tool_id) = &step.tool_id else { continue };
            let tool = self.inner.tools.get_tool(tool_id)?;
            let step_index = clarification.step.unwrap_or_default();
            let ctx = crate::tool::ToolRunContext::for_step(
                workflow.id(),
                step_index,
                workflow.execution_context().clone(),
                workflow.clarifications_for_step(step_index).cloned().collect(),
            );
            let ready =
                tool.ready(&ctx).await.map_err(|e| Error::Tool { tool_id: tool_id.clone(), message: e.to_string() })?;
            if !ready {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// What writing a plan cost, on the configured planning model.
    fn planning_cost(&self, usage: crate::llm::Usage) -> f64 {
        self.inner.config.prices.cost(&self.planning_model(), &usage)
    }

    /// The model this runner plans with.
    fn planning_model(&self) -> String {
        self.inner.llm_settings.model_for(crate::llm::ModelRole::Planning).model
    }

    fn today(&self) -> String {
        use std::fmt::Write as _;
        self.inner.today.clone().unwrap_or_else(|| {
            // `YYYY-MM-DD` in one allocation: `to_string` grew its string twice.
            let mut date = String::with_capacity(10);
            let _ = write!(date, "{}", chrono::Utc::now().date_naive());
            date
        })
    }
}

/// Whether a new workflow pays for its plan's planning calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Planning {
    /// The plan was written for this workflow: its calls count in its usage and budget.
    Counted,
    /// The plan exists on its own (and may serve many workflows): its calls are a reference.
    Referenced,
}

/// Builds a [`Runner`], replacing any of its parts. Start with [`Runner::builder`].
#[derive(Debug)]
#[must_use]
pub struct RunnerBuilder {
    config: Config,
    tools: Option<Arc<dyn ToolRegistry>>,
    storage: Option<Arc<dyn Storage>>,
    llm: Option<Arc<dyn LlmClient>>,
    llm_as_is: bool,
    planner: Option<Arc<dyn Planner>>,
    agent: Option<Arc<dyn Agent>>,
    today: Option<String>,
    hooks: HookChain,
    event_capacity: usize,
    functions: HashMap<String, Arc<dyn crate::tool::Tool>>,
}

impl RunnerBuilder {
    /// Registers an async Rust function for function steps ([`Step::function`](crate::Step::function)),
    /// under `name`. Its argument type's JSON Schema (derived with `schemars`) checks
    /// the step's `args` before the call (`args` that do not fit fail the step
    /// `InvalidStep`: no model is asked for others); the call is journaled like a
    /// tool call, so a resumed run never repeats one that finished. An `Err` fails
    /// the step.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use portia::serde_json::json;
    /// use portia::testing::ScriptedLlm;
    /// use portia::{Config, PlanBuilder, Runner};
    ///
    /// #[derive(serde::Deserialize, portia::schemars::JsonSchema)]
    /// #[schemars(crate = "portia::schemars")]
    /// struct Order { id: u64 }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> portia::Result<()> {
    /// let config = Config::builder().summarize_final_output(false).build()?;
    /// let runner = Runner::builder(config)
    ///     .llm(Arc::new(ScriptedLlm::new()))
    ///     .function("order_total", "The total of an order", |order: Order| async move {
    ///         Ok::<_, String>(json!({"id": order.id, "total": 42.5}))
    ///     })
    ///     .build()?;
    /// let plan = PlanBuilder::new("Order total").function("Total order 7", "order_total", json!({"id": 7}), "$total").build();
    /// let workflow = runner.run_plan(&plan).await?;
    /// assert_eq!(workflow.outputs().step_outputs.resolve("$total.total"), Some(json!(42.5)));
    /// # Ok(()) }
    /// ```
    pub fn function<A, R, F, Fut>(mut self, name: impl Into<String>, description: &str, function: F) -> Self
    where
        A: serde::de::DeserializeOwned + schemars::JsonSchema + Send + 'static,
        R: serde::Serialize,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<R, String>> + Send + 'static,
    {
        let name = name.into();
        let tool = functions::function_tool(&name, description, function);
        self.functions.insert(name, tool);
        self
    }

    /// How many events a subscriber may fall behind before it misses some (default
    /// [`DEFAULT_EVENT_CAPACITY`]).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity;
        self
    }

    /// Adds a hook; hooks run in the order they were added. See [`Hooks`].
    pub fn hook(mut self, hook: impl Hooks + 'static) -> Self {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// The tools steps may use (default: none).
    pub fn tools(mut self, tools: impl ToolRegistry + 'static) -> Self {
        self.tools = Some(Arc::new(tools));
        self
    }

    /// The tools, already shared.
    pub fn shared_tools(mut self, tools: Arc<dyn ToolRegistry>) -> Self {
        self.tools = Some(tools);
        self
    }

    /// The storage (default: the one the config names).
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// The LLM client (default: the provider the config names, [`Config::llm_client`]).
    ///
    /// A client that does not retry by itself ([`LlmClient::retries`] is `false`, as
    /// for a client you write) is put inside a [`Retry`] layer with the configured
    /// [`llm_retry_policy`](Config::llm_retry_policy): a call failing with a
    /// retryable [`LlmError`](crate::llm::LlmError) is sent again, after the backoff
    /// or the `Retry-After` it gave, within the per-attempt timeout and the overall
    /// deadline. The built-in clients ([`Config::llm_client`],
    /// [`llm::client`](crate::llm::client)), anything already inside a [`Retry`]
    /// layer, and a [`Recorder`](crate::testing::Recorder) around either, say they
    /// retry and are used as they are, so no call is retried twice over. No
    /// [`Offline`](crate::llm::Offline) layer is added (see there why).
    ///
    /// Metering sits outside the retries: a budget is checked once per call, and a
    /// call is counted and journaled once, with the usage of the attempt that
    /// answered; failed attempts count nothing. To use a client exactly as given,
    /// with no layer added, see [`RunnerBuilder::llm_as_is`].
    pub fn llm(mut self, llm: Arc<dyn LlmClient>) -> Self {
        self.llm = Some(llm);
        self.llm_as_is = false;
        self
    }

    /// The LLM client, used exactly as given: unlike [`RunnerBuilder::llm`], no
    /// [`Retry`] layer is added, so failed calls fail the step unless the client
    /// retries by itself. Stack the layers you want with
    /// [`LlmClientExt::with`] first.
    pub fn llm_as_is(mut self, llm: Arc<dyn LlmClient>) -> Self {
        self.llm = Some(llm);
        self.llm_as_is = true;
        self
    }

    /// The planner (default: [`OneShotPlanner`]).
    pub fn planner(mut self, planner: Arc<dyn Planner>) -> Self {
        self.planner = Some(planner);
        self
    }

    /// The agent for every step (default: the one the config names).
    pub fn agent(mut self, agent: Arc<dyn Agent>) -> Self {
        self.agent = Some(agent);
        self
    }

    /// Fixes today's date (`YYYY-MM-DD`) in prompts, for reproducible runs and tests.
    pub fn today(mut self, date: impl Into<String>) -> Self {
        self.today = Some(date.into());
        self
    }

    /// Builds the runner.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`], or [`Error::MissingApiKey`] when no LLM client was
    /// given and the configured provider's key is not set.
    pub fn build(self) -> Result<Runner> {
        self.config.validate()?;
        let llm_settings = Arc::new(self.config.llm_settings());
        let llm = match self.llm {
            Some(llm) if self.llm_as_is || llm.retries() => llm,
            Some(llm) => llm
                .with(Retry::new(self.config.llm_retry_policy()).shared_models(Arc::clone(&llm_settings)))
                .with(crate::llm::RateLimits::new(self.config.llm_settings()))
                .with(crate::llm::Fallback::new(self.config.llm_fallback.iter().cloned())),
            None => self.config.llm_client()?,
        };
        let storage: Arc<dyn Storage> = match (self.storage, self.config.storage) {
            (Some(storage), _) => storage,
            #[cfg(feature = "sqlite")]
            (None, StorageKind::Sqlite) => Arc::new(SqliteStorage::open(self.config.storage_dir.join("portia.db"))?),
            #[cfg(not(feature = "sqlite"))]
            (None, StorageKind::Sqlite) => {
                return Err(Error::invalid_config(
                    "PORTIA_STORAGE",
                    "this build of portia has no SQLite store: enable the `sqlite` feature (on by default)",
                ));
            }
            #[cfg(feature = "postgres")]
            (None, StorageKind::Postgres) => {
                // Connects on first use: building stays synchronous.
                Arc::new(PostgresStorage::new(&PostgresSettings::from_config(&self.config)?)?)
            }
            #[cfg(not(feature = "postgres"))]
            (None, StorageKind::Postgres) => {
                return Err(Error::invalid_config(
                    "PORTIA_STORAGE",
                    "this build of portia has no Postgres store: enable the `postgres` feature",
                ));
            }
            (None, _) => Arc::new(InMemoryStorage::new()),
        };
        let planner = self.planner.unwrap_or_else(|| Arc::new(OneShotPlanner::new(Arc::clone(&llm), &self.config)));
        let agent: Arc<dyn Agent> = self.agent.unwrap_or_else(|| match self.config.agent {
            AgentKind::Verifier => Arc::new(VerifierAgent),
            _ => Arc::new(OneShotAgent),
        });
        let tools = self.tools.unwrap_or_else(|| Arc::new(InMemoryToolRegistry::new()));
        let inner = Inner {
            config: Arc::new(self.config),
            tools,
            storage,
            llm,
            llm_settings,
            planner,
            agent,
            today: self.today,
            owner: crate::storage::local_owner(&format!("runner-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])),
            local_runs: control::LocalRuns::default(),
            plans: plans::KnownPlans::default(),
            hooks: self.hooks,
            events: EventSink::new(self.event_capacity),
            live: LiveQuestions::default(),
            functions: self.functions,
        };
        Ok(Runner { inner: Arc::new(inner) })
    }
}
