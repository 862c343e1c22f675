//! The [`Runner`]: plans queries, creates workflows and drives them to an end.
//!
//! ```text
//! query ──generate_plan──> Plan ──create_workflow──> Workflow (NOT_STARTED)
//!       ──execute_workflow──> COMPLETE | FAILED | NEED_CLARIFICATION
//! NEED_CLARIFICATION ──resolve_clarification──> READY_TO_RESUME ──execute_workflow──> ...
//! ```
//! A `Runner` is cheap to clone and `Send + Sync`: one runner serves many
//! workflows at once.

mod claims;
mod executor;
mod recording;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::agent::{Agent, OneShotAgent, VerifierAgent};
use crate::clarification::{Clarification, ClarificationKind};
use crate::config::{AgentKind, Config, StorageKind};
use crate::execution_context::ExecutionContext;
use crate::ids::{PlanId, WorkflowId};
use crate::llm::LlmClient;
use crate::plan::Plan;
use crate::planner::{OneShotPlanner, Planner, PlanningRequest};
use crate::storage::{DiskStorage, InMemoryStorage, Storage, WorkflowPage, WorkflowQuery};
use crate::tool::{InMemoryToolRegistry, ToolRegistry};
use crate::workflow::{Workflow, WorkflowState};
use crate::{Error, Result};

/// Plans queries and runs workflows. See the [module docs](self).
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
    planner: Arc<dyn Planner>,
    agent: Arc<dyn Agent>,
    today: Option<String>,
    claims: claims::Claims,
}

/// Options for [`Runner::generate_plan_with`] and [`Runner::execute_query_with`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct PlanOptions {
    tool_ids: Option<Vec<String>>,
    examples: Vec<Plan>,
    execution_context: ExecutionContext,
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
}

/// How [`Runner::wait_for_ready`] polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
        RunnerBuilder { config, tools: None, storage: None, llm: None, planner: None, agent: None, today: None }
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

    /// Asks the planner for a plan for `query`, offering every matching tool, and saves it.
    ///
    /// # Errors
    /// [`Error::Planning`] if no valid plan was made, [`Error::Llm`] if the LLM failed.
    pub async fn generate_plan(&self, query: &str) -> Result<Plan> {
        self.generate_plan_with(query, PlanOptions::new()).await
    }

    /// Like [`Runner::generate_plan`], with explicit tools, examples and context.
    ///
    /// # Errors
    /// As [`Runner::generate_plan`], and [`Error::ToolNotFound`] for an unknown tool id.
    pub async fn generate_plan_with(&self, query: &str, options: PlanOptions) -> Result<Plan> {
        let tools = match &options.tool_ids {
            Some(ids) => ids.iter().map(|id| self.inner.tools.get_tool(id)).collect::<Result<Vec<_>>>()?,
            None => self.inner.tools.match_tools(query),
        };
        let request = PlanningRequest {
            query: query.to_owned(),
            tools,
            examples: options.examples.clone(),
            execution_context: options.execution_context.clone(),
            today: self.today(),
        };
        let plan = self.inner.planner.plan(request).await?;
        tracing::debug!(plan = %plan.id, json = %serde_json::to_string(&plan).unwrap_or_default(), "plan");
        self.inner.storage.save_plan(&plan).await?;
        Ok(plan)
    }

    /// Checks and saves `plan`, and creates a NOT_STARTED workflow for it.
    ///
    /// # Errors
    /// [`Error::InvalidPlan`] listing every problem, or a storage error.
    pub async fn create_workflow(&self, plan: &Plan) -> Result<Workflow> {
        self.create_workflow_with(plan, ExecutionContext::default()).await
    }

    /// Like [`Runner::create_workflow`], for a given end user and context.
    ///
    /// # Errors
    /// As [`Runner::create_workflow`].
    pub async fn create_workflow_with(&self, plan: &Plan, context: ExecutionContext) -> Result<Workflow> {
        plan.validate(self.inner.tools.as_ref())?;
        self.inner.storage.save_plan(plan).await?;
        let mut workflow = Workflow::new(plan.id, context);
        workflow.usage.planning = plan.usage;
        workflow.usage.total = plan.usage;
        self.inner.storage.save_workflow(&workflow).await?;
        tracing::info!(workflow = %workflow.id, plan = %plan.id, "workflow created");
        Ok(workflow)
    }

    /// Runs a workflow until it is COMPLETE, FAILED or NEED_CLARIFICATION.
    ///
    /// A workflow that still has unresolved clarifications is returned unchanged.
    /// A step failure is not an `Err`: the workflow comes back FAILED with its
    /// [`failure`](Workflow::failure) set.
    ///
    /// # Errors
    /// [`Error::InvalidWorkflowState`] for a COMPLETE or FAILED workflow (also when
    /// only the stored copy has finished: a stale copy does not run again),
    /// [`Error::AlreadyRunning`] while this runner is executing it,
    /// [`Error::PlanNotFound`], or a storage error.
    pub async fn execute_workflow(&self, workflow: Workflow) -> Result<Workflow> {
        self.execute(workflow).await
    }

    /// Loads a workflow from storage and runs it as [`Runner::execute_workflow`] does.
    ///
    /// # Errors
    /// [`Error::WorkflowNotFound`], and as [`Runner::execute_workflow`].
    pub async fn execute_workflow_by_id(&self, id: WorkflowId) -> Result<Workflow> {
        let workflow = self.inner.storage.get_workflow(id).await?;
        self.execute(workflow).await
    }

    /// Creates a workflow for `plan` and runs it.
    ///
    /// # Errors
    /// As [`Runner::create_workflow`] and [`Runner::execute_workflow`].
    pub async fn run_plan(&self, plan: &Plan) -> Result<Workflow> {
        let workflow = self.create_workflow(plan).await?;
        self.execute(workflow).await
    }

    /// Plans `query`, creates a workflow and runs it.
    ///
    /// # Errors
    /// As [`Runner::generate_plan`] and [`Runner::run_plan`].
    pub async fn execute_query(&self, query: &str) -> Result<Workflow> {
        self.execute_query_with(query, PlanOptions::new()).await
    }

    /// Like [`Runner::execute_query`], with explicit tools, examples and context.
    ///
    /// # Errors
    /// As [`Runner::execute_query`].
    pub async fn execute_query_with(&self, query: &str, options: PlanOptions) -> Result<Workflow> {
        let context = options.execution_context.clone();
        let plan = self.generate_plan_with(query, options).await?;
        let workflow = self.create_workflow_with(&plan, context).await?;
        self.execute(workflow).await
    }

    /// Answers a clarification and saves the workflow; once none is outstanding the
    /// workflow is READY_TO_RESUME. Run it on with [`Runner::execute_workflow`].
    ///
    /// # Errors
    /// [`Error::WorkflowNotFound`], [`Error::ClarificationNotFound`],
    /// [`Error::InvalidClarificationResponse`] (a choice outside the options),
    /// [`Error::InvalidWorkflowState`] for a finished workflow, or
    /// [`Error::AlreadyRunning`] while a run of it is in progress (a parallel branch
    /// may ask before the others end; answer once the workflow is NEED_CLARIFICATION).
    pub async fn resolve_clarification(
        &self,
        clarification: &Clarification,
        response: impl Into<Value>,
    ) -> Result<Workflow> {
        // A run in progress would save over the answer.
        let id = clarification.workflow_id;
        let _claim = self.inner.claims.claim(id).ok_or(Error::AlreadyRunning(id))?;
        let mut workflow = self.inner.storage.get_workflow(id).await?;
        workflow.resolve_clarification(clarification.id, response.into())?;
        self.inner.storage.save_workflow(&workflow).await?;
        Ok(workflow)
    }

    /// Stops a workflow that is not finished: it becomes FAILED with `reason` and is
    /// saved. Use it when a human rejects a value confirmation, for example.
    ///
    /// A run of the workflow in progress on this runner (or a clone of it) stops
    /// when its current steps end, without saving anything more; steps still running
    /// then are aborted.
    ///
    /// # Errors
    /// [`Error::WorkflowNotFound`], or [`Error::InvalidWorkflowState`] for a workflow
    /// that is already COMPLETE or FAILED.
    pub async fn cancel_workflow(&self, id: WorkflowId, reason: &str) -> Result<Workflow> {
        // Either this call claims the workflow (a run starting meanwhile is refused), or
        // a run holds it and its flag is locked until FAILED is saved, so that the run
        // cannot save over it.
        let (_claim, flag) = match self.inner.claims.claim_or_running(id) {
            Ok(claim) => {
                let flag = std::sync::Arc::clone(&claim.cancelled);
                (Some(claim), flag)
            }
            Err(flag) => (None, flag),
        };
        let mut cancelled = flag.lock().await;
        let mut workflow = self.inner.storage.get_workflow(id).await?;
        workflow.fail(None, reason)?;
        self.inner.storage.save_workflow(&workflow).await?;
        *cancelled = true;
        Ok(workflow)
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
            let mut workflow = self.inner.storage.get_workflow(id).await?;
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
                // Re-read under the claim, so an answer saved meanwhile is kept.
                let _claim = self.inner.claims.claim(id).ok_or(Error::AlreadyRunning(id))?;
                workflow = self.inner.storage.get_workflow(id).await?;
                for clarification in &waiting {
                    let open = workflow.outstanding_clarifications().any(|c| c.id == clarification.id);
                    if open {
                        workflow.resolve_clarification(clarification.id, Value::from("complete"))?;
                    }
                }
                self.inner.storage.save_workflow(&workflow).await?;
                return Ok(workflow);
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
        let plan = self.inner.storage.get_plan(workflow.plan_id).await?;
        for clarification in waiting {
            let Some(step) = clarification.step.and_then(|s| plan.steps.get(s)) else { continue };
            let Some(tool_id) = &step.tool_id else { continue };
            let tool = self.inner.tools.get_tool(tool_id)?;
            let step_index = clarification.step.unwrap_or_default();
            let ctx = crate::tool::ToolRunContext::for_step(
                workflow.id,
                step_index,
                Arc::clone(&self.inner.config),
                workflow.execution_context.clone(),
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

    fn today(&self) -> String {
        self.inner.today.clone().unwrap_or_else(|| chrono::Utc::now().date_naive().to_string())
    }
}

/// Builds a [`Runner`], replacing any of its parts. Start with [`Runner::builder`].
#[derive(Debug)]
#[must_use]
pub struct RunnerBuilder {
    config: Config,
    tools: Option<Arc<dyn ToolRegistry>>,
    storage: Option<Arc<dyn Storage>>,
    llm: Option<Arc<dyn LlmClient>>,
    planner: Option<Arc<dyn Planner>>,
    agent: Option<Arc<dyn Agent>>,
    today: Option<String>,
}

impl RunnerBuilder {
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

    /// The LLM client (default: the provider the config names).
    pub fn llm(mut self, llm: Arc<dyn LlmClient>) -> Self {
        self.llm = Some(llm);
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
        let llm = match self.llm {
            Some(llm) => llm,
            None => crate::llm::client_from_config(&self.config)?,
        };
        let storage: Arc<dyn Storage> = match (self.storage, self.config.storage) {
            (Some(storage), _) => storage,
            (None, StorageKind::Disk) => Arc::new(DiskStorage::new(self.config.storage_dir.clone())),
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
            planner,
            agent,
            today: self.today,
            claims: claims::Claims::default(),
        };
        Ok(Runner { inner: Arc::new(inner) })
    }
}
