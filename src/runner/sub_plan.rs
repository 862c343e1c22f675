//! Sub-plan and block steps: a stored plan, or the plan a block derives, runs as a
//! child workflow of the step's workflow.
//!
//! The child's id follows from the parent's id, the step and the item, so a parent
//! resumed after a crash finds the child it started (and resumes it) instead of
//! starting another. The child is stored with a link to its parent. Its questions
//! surface on the parent, as the step's clarifications with the same ids: answered
//! there, they are passed on to the child when the parent resumes.
//!
//! What the child spends counts in its parent's usage and against the budget (see
//! the metered module); when the step takes the child's outcome, the parent records
//! the child's usage as stored, replacing any earlier record of it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use super::Runner;
use super::calls::StopSignal;
use super::executor::Start;
use super::metered::ParentMeter;
use crate::agent::{StepContext, StepOutcome};
use crate::events::{EventKind, RunEvents};
use crate::ids::PlanId;
use crate::plan::{Plan, PlanProblem};
use crate::storage::LeaseGrant;
use crate::workflow::{Failure, FailureKind, ParentLink, Workflow, WorkflowState};
use crate::{Error, Result};

/// The plan a sub-plan or block step runs.
#[derive(Debug, Clone)]
pub(super) enum ChildPlan {
    /// A stored plan, by id.
    Stored(PlanId),
    /// A block's plan, stored when its first child starts.
    Block(Arc<Plan>),
}

impl ChildPlan {
    fn id(&self) -> PlanId {
        match self {
            Self::Stored(id) => *id,
            Self::Block(plan) => plan.id,
        }
    }
}

/// Runs a sub-plan or block step's child workflow (its condition and hooks were
/// seen to by the caller). `signal` is the child's: a stop of the parent's run
/// reaches it. `meter` is the parent's, where the child's spending is recorded.
pub(super) async fn run(
    runner: &Runner,
    ctx: &StepContext,
    plan: &ChildPlan,
    events: &RunEvents,
    signal: StopSignal,
    meter: &ParentMeter,
) -> StepOutcome {
    let failed = |e: &dyn std::fmt::Display| {
        StepOutcome::failed(FailureKind::SubPlan, format!("the sub-plan {} could not run: {e}", plan.id()))
    };
    let taken = |child: &Workflow| {
        meter.record(child);
        outcome_of(child)
    };
    match runner.run_child(ctx, plan, events, signal, meter).await {
        Ok(Child::Ended(child)) => taken(&child),
        Ok(Child::Running(task)) => match task.await {
            Ok(Ok(child)) => taken(&child),
            Ok(Err(e)) => failed(&e),
            Err(e) => failed(&e),
        },
        Err(e) => failed(&e),
    }
}

/// A step's child workflow: finished already, or running in a task of its own.
enum Child {
    Ended(Box<Workflow>),
    Running(tokio::task::JoinHandle<Result<Workflow>>),
}

/// The step's outcome from where its child workflow stands.
fn outcome_of(child: &Workflow) -> StepOutcome {
    let id = child.id();
    match child.state() {
        WorkflowState::Complete => StepOutcome::Output(child.outputs().final_output.clone().unwrap_or_default()),
        WorkflowState::Failed => {
            let failure = child.failure().cloned().unwrap_or_else(|| Failure::new(FailureKind::Other, "no reason"));
            let message = format!("its child workflow {id} failed: {}", failure.message);
            StepOutcome::Failed(Failure::new(failure.kind, message))
        }
        WorkflowState::NeedClarification => {
            StepOutcome::Clarifications(child.outstanding_clarifications().cloned().collect())
        }
        other => StepOutcome::failed(
            FailureKind::SubPlan,
            format!("its child workflow {id} stopped {other}; it resumes when this workflow does"),
        ),
    }
}

impl Runner {
    /// Finds or starts the step's child workflow, passes it the answers given on the
    /// parent, and runs it to its end or its next question.
    ///
    /// The child runs in a task of its own, stopped by `signal`: when the parent's
    /// run stops (a cancel, a shutdown) and drops this step, the child still ends
    /// as a run does, saved and with its lease released, instead of being dropped
    /// midway.
    async fn run_child(
        &self,
        ctx: &StepContext,
        child_plan: &ChildPlan,
        events: &RunEvents,
        signal: StopSignal,
        meter: &ParentMeter,
    ) -> Result<Child> {
        let storage = &self.inner.storage;
        let link = ParentLink { workflow_id: ctx.workflow_id, step: ctx.step_index, item: ctx.loop_item };
        let ttl = self.inner.config.lease_ttl();
        let (grant, plan) = match self.find_child(&link).await {
            Ok(child) => {
                for answer in ctx.clarifications.iter().filter(|c| c.resolved) {
                    if let Some(question) = child.outstanding_clarifications().find(|c| c.id == answer.id) {
                        self.resolve_clarification(question, answer.response.clone().unwrap_or_default()).await?;
                    }
                }
                if child.state().is_terminal() {
                    return Ok(Child::Ended(Box::new(child)));
                }
                (storage.acquire_lease(child.id(), &self.inner.owner, ttl).await?, None)
            }
            Err(Error::WorkflowNotFound(_)) => {
                let (grant, plan) = self.start_child(ctx, link, child_plan).await?;
                let (child, plan_id) = (grant.workflow.id(), plan.id);
                tracing::info!(workflow = %ctx.workflow_id, %child, plan = %plan_id, "sub-plan started");
                events.emit(
                    ctx.workflow_id,
                    EventKind::SubPlanStarted { step: link.step, item: link.item, child, plan_id },
                );
                (grant, Some(plan))
            }
            Err(e) => return Err(e),
        };
        // Registered before the task starts, so a cancel made from now on finds the run.
        let registered = self.inner.local_runs.register(grant.workflow.id(), signal.clone(), storage);
        let start = Start { plan, parent: Some(meter.clone()) };
        let runner = self.clone();
        let run: Pin<Box<dyn Future<Output = Result<Workflow>> + Send>> =
            Box::pin(async move { runner.run_registered(grant, signal, registered, start).await });
        Ok(Child::Running(tokio::spawn(run)))
    }

    /// Stores the step's new child workflow, leased to this runner, with its plan.
    async fn start_child(
        &self,
        ctx: &StepContext,
        link: ParentLink,
        child_plan: &ChildPlan,
    ) -> Result<(LeaseGrant, Arc<Plan>)> {
        let storage = &self.inner.storage;
        let plan = match child_plan {
            ChildPlan::Stored(id) => self.inner.plans.get(*id, storage.as_ref()).await?,
            ChildPlan::Block(plan) => {
                // Stored at most once (saving a plan again keeps the first);
                // a resumed parent finds the child, and the child its plan.
                storage.save_plan(plan).await?;
                Arc::clone(plan)
            }
        };
        let child = match self.failed_child_retried(&link).await? {
            Some(failed) => failed.retry_as_child(link, &plan)?,
            None => {
                let mut child = Workflow::child(link, &plan, ctx.execution_context.clone());
                let given = ctx.args.as_ref().and_then(Value::as_object).cloned().unwrap_or_default();
                child.set_inputs(&plan, &given);
                child
            }
        };
        let grant = storage.create_leased(&child, &self.inner.owner, self.inner.config.lease_ttl()).await?;
        Ok((grant, plan))
    }

    /// When the parent of `link` is the retry of a FAILED workflow, the child that
    /// one's same step started, if it FAILED too: the new child takes it up again
    /// rather than start the sub-plan afresh.
    async fn failed_child_retried(&self, link: &ParentLink) -> Result<Option<Workflow>> {
        let parent = self.inner.storage.get_workflow(link.workflow_id).await?;
        let Some(failed_parent) = parent.retry_of() else { return Ok(None) };
        match self.find_child(&ParentLink { workflow_id: failed_parent, ..*link }).await {
            Ok(child) if child.state() == WorkflowState::Failed => Ok(Some(child)),
            Ok(_) | Err(Error::WorkflowNotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The child workflow `link` started: at its id, or at the id 0.4 gave it when
    /// the workflow there names `link` as its parent link (a parent stopped under
    /// 0.4 and resumed now goes on with the child it started).
    async fn find_child(&self, link: &ParentLink) -> Result<Workflow> {
        let storage = &self.inner.storage;
        match storage.get_workflow(link.child_id()).await {
            Err(Error::WorkflowNotFound(id)) => match storage.get_workflow(link.child_id_before_0_5()).await {
                Ok(child) if child.parent() == Some(link) => Ok(child),
                Ok(_) | Err(Error::WorkflowNotFound(_)) => Err(Error::WorkflowNotFound(id)),
                Err(e) => Err(e),
            },
            found => found,
        }
    }

    /// The links of every child `parent` may have started (see [`child_links`]);
    /// none when its plan is gone or cannot be read, as it then names no step.
    async fn links_of(&self, parent: &Workflow) -> Result<Vec<ParentLink>> {
        match self.inner.plans.get(parent.plan_id(), self.inner.storage.as_ref()).await {
            Ok(plan) => Ok(child_links(&plan, parent)),
            Err(Error::PlanNotFound(_) | Error::Unreadable { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Reads what a run of `workflow` needs (its plan and journal) and, through the
    /// child workflows it started, theirs: the first row that cannot be read fails it.
    pub(super) async fn read_what_a_run_needs(&self, workflow: &Workflow) -> Result<()> {
        self.inner.storage.get_plan(workflow.plan_id()).await?;
        self.inner.storage.tool_calls(workflow.id()).await?;
        for link in self.links_of(workflow).await? {
            match self.find_child(&link).await {
                Ok(child) => Box::pin(self.read_what_a_run_needs(&child)).await?,
                Err(Error::WorkflowNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Cancels the child workflows `parent` started (and theirs) that have not
    /// finished, as [`Runner::cancel_workflow`] does.
    pub(super) async fn cancel_children(&self, parent: &Workflow, reason: &str) -> Result<()> {
        for link in self.links_of(parent).await? {
            match self.find_child(&link).await {
                Ok(child) if !child.state().is_terminal() => {
                    match Box::pin(self.cancel_stored(&child, reason)).await {
                        // It ended meanwhile.
                        Ok(_) | Err(Error::InvalidWorkflowState { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(_) | Err(Error::WorkflowNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Deletes the child workflows `parent` started (and theirs): left behind, a
    /// child would be found again by a workflow stored later under `parent`'s id
    /// (a retry deleted and made again), and taken for its own.
    pub(super) async fn delete_children(&self, parent: &Workflow) -> Result<()> {
        for link in self.links_of(parent).await? {
            match self.find_child(&link).await {
                Ok(child) => Box::pin(self.delete_workflow(child.id())).await?,
                Err(Error::WorkflowNotFound(_)) => {}
                // It names no children that can be found: it goes alone.
                Err(Error::Unreadable { .. }) => self.inner.storage.delete_workflow(link.child_id()).await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// What only the store can tell of `plan`'s sub-plan steps (those inside blocks
    /// too): plans that are not stored, inputs a sub-plan needs and is not given,
    /// and cycles of sub-plans.
    pub(super) async fn sub_plan_problems(&self, plan: &Plan) -> Result<Vec<PlanProblem>> {
        let mut problems = Vec::new();
        for (path, s) in plan.each_step() {
            let Some(child) = s.plan else { continue };
            let (&step, blocks) = path.split_last().unwrap_or((&0, &[]));
            let mut push = |problem| problems.push(PlanProblem::in_blocks(blocks, problem));
            match self.walk_sub_plans(plan, child).await? {
                Some(Walk::Unknown(id)) => push(PlanProblem::UnknownPlan { step, plan_id: id.to_string() }),
                Some(Walk::Cycle(cycle)) => push(PlanProblem::SubPlanCycle { step, cycle }),
                None => {}
            }
            if let Ok(child) = self.inner.storage.get_plan(child).await {
                let given = s.args.as_ref().and_then(Value::as_object);
                let given = |name: &str| {
                    given.is_some_and(|g| g.contains_key(name) || g.contains_key(name.trim_start_matches('$')))
                };
                for input in child.inputs.iter().filter(|i| i.value.is_none() && !given(&i.name)) {
                    let reason = format!("plan {} needs the input {}; give it in args", child.id, input.name);
                    push(PlanProblem::InvalidArgs { step, reason });
                }
                let declared = |name: &str| {
                    child.inputs.iter().any(|i| i.name.trim_start_matches('$') == name.trim_start_matches('$'))
                };
                for name in s.args.iter().filter_map(Value::as_object).flat_map(|args| args.keys()) {
                    if !declared(name) {
                        let names: Vec<&str> = child.inputs.iter().map(|i| i.name.as_str()).collect();
                        let takes = if names.is_empty() {
                            "it takes none".to_owned()
                        } else {
                            format!("it takes {}", names.join(", "))
                        };
                        let reason = format!("plan {} has no input {name}; {takes}", child.id);
                        push(PlanProblem::InvalidArgs { step, reason });
                    }
                }
            }
        }
        Ok(problems)
    }

    /// Follows the sub-plans from `start` (run by `root`): the first plan that is not
    /// stored, or the first cycle.
    async fn walk_sub_plans(&self, root: &Plan, start: PlanId) -> Result<Option<Walk>> {
        let mut pending = vec![(start, vec![root.id])];
        while let Some((id, path)) = pending.pop() {
            if let Some(from) = path.iter().position(|p| *p == id) {
                let cycle = path[from..].iter().chain([&id]).map(ToString::to_string).collect();
                return Ok(Some(Walk::Cycle(cycle)));
            }
            let plan = match self.inner.storage.get_plan(id).await {
                Ok(plan) => plan,
                Err(Error::PlanNotFound(_)) => return Ok(Some(Walk::Unknown(id))),
                Err(e) => return Err(e),
            };
            let mut next = path;
            next.push(id);
            let children = plan.each_step().into_iter().filter_map(|(_, s)| s.plan);
            pending.extend(children.map(|child| (child, next.clone())));
        }
        Ok(None)
    }
}

/// The links of every child `workflow` may have started: one per sub-plan or
/// block step, or one per item of such a step's loop. A link whose child was never
/// started names a workflow that is not stored.
fn child_links(plan: &Plan, workflow: &Workflow) -> Vec<ParentLink> {
    let mut links = Vec::new();
    for (index, step) in plan.steps.iter().enumerate().filter(|(_, s)| s.plan.is_some() || s.is_block()) {
        match &step.for_each {
            None => links.push(ParentLink::new(workflow.id(), index, None)),
            Some(_) => {
                let count = super::executor::loop_list(plan, workflow, index).map_or(0, |items| items.len());
                links.extend((0..count).map(|item| ParentLink::new(workflow.id(), index, Some(item))));
            }
        }
    }
    links
}

/// What following a step's sub-plans found wrong.
enum Walk {
    Unknown(PlanId),
    Cycle(Vec<String>),
}
