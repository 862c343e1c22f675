//! Sub-plan steps: a stored plan runs as a child workflow of the step's workflow.
//!
//! The child's id follows from the parent's id, the step and the item, so a parent
//! resumed after a crash finds the child it started (and resumes it) instead of
//! starting another. The child is stored with a link to its parent. Its questions
//! surface on the parent, as the step's clarifications with the same ids: answered
//! there, they are passed on to the child when the parent resumes.

use serde_json::Value;

use super::Runner;
use crate::agent::{StepContext, StepOutcome, skip_unless_holds};
use crate::events::{EventKind, RunEvents};
use crate::ids::PlanId;
use crate::plan::{Condition, Plan, PlanProblem};
use crate::workflow::{Failure, FailureKind, ParentLink, Workflow, WorkflowState};
use crate::{Error, Result};

/// Runs a sub-plan step: its condition in words, then its child workflow.
pub(super) async fn run(runner: Runner, ctx: StepContext, plan_id: PlanId, events: RunEvents) -> StepOutcome {
    if let Some(text) = &ctx.step.condition
        && let Condition::Words(words) = Condition::parse(text)
        && let Some(outcome) = skip_unless_holds(&ctx, &words).await
    {
        return outcome;
    }
    match runner.run_child(&ctx, plan_id, &events).await {
        Ok(child) => outcome_of(&child),
        Err(e) => StepOutcome::failed(FailureKind::SubPlan, format!("the sub-plan {plan_id} could not run: {e}")),
    }
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
    async fn run_child(&self, ctx: &StepContext, plan_id: PlanId, events: &RunEvents) -> Result<Workflow> {
        let storage = &self.inner.storage;
        let link = ParentLink { workflow_id: ctx.workflow_id, step: ctx.step_index, item: ctx.loop_item };
        let child = match storage.get_workflow(link.child_id()).await {
            Ok(child) => child,
            Err(Error::WorkflowNotFound(_)) => {
                let plan = storage.get_plan(plan_id).await?;
                let mut child = Workflow::child(link, &plan, ctx.execution_context.clone());
                let given = ctx.args.as_ref().and_then(Value::as_object).cloned().unwrap_or_default();
                child.set_inputs(&plan, &given);
                storage.create_workflow(&child).await?;
                tracing::info!(workflow = %ctx.workflow_id, child = %child.id(), plan = %plan_id, "sub-plan started");
                let started =
                    EventKind::SubPlanStarted { step: link.step, item: link.item, child: child.id(), plan_id };
                events.emit(ctx.workflow_id, started);
                child
            }
            Err(e) => return Err(e),
        };
        for answer in ctx.clarifications.iter().filter(|c| c.resolved) {
            if let Some(question) = child.outstanding_clarifications().find(|c| c.id == answer.id) {
                self.resolve_clarification(question, answer.response.clone().unwrap_or_default()).await?;
            }
        }
        if child.state().is_terminal() {
            return Ok(child);
        }
        Box::pin(self.execute(child.id())).await
    }

    /// What only the store can tell of `plan`'s sub-plan steps: plans that are not
    /// stored, inputs a sub-plan needs and is not given, and cycles of sub-plans.
    pub(super) async fn sub_plan_problems(&self, plan: &Plan) -> Result<Vec<PlanProblem>> {
        let mut problems = Vec::new();
        for (step, s) in plan.steps.iter().enumerate() {
            let Some(child) = s.plan else { continue };
            match self.walk_sub_plans(plan, child).await? {
                Some(Walk::Unknown(id)) => problems.push(PlanProblem::UnknownPlan { step, plan_id: id.to_string() }),
                Some(Walk::Cycle(cycle)) => problems.push(PlanProblem::SubPlanCycle { step, cycle }),
                None => {}
            }
            if let Ok(child) = self.inner.storage.get_plan(child).await {
                let given = s.args.as_ref().and_then(Value::as_object);
                let given = |name: &str| {
                    given.is_some_and(|g| g.contains_key(name) || g.contains_key(name.trim_start_matches('$')))
                };
                for input in child.inputs.iter().filter(|i| i.value.is_none() && !given(&i.name)) {
                    let reason = format!("plan {} needs the input {}; give it in args", child.id, input.name);
                    problems.push(PlanProblem::InvalidArgs { step, reason });
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
            pending.extend(plan.steps.iter().filter_map(|s| s.plan).map(|child| (child, next.clone())));
        }
        Ok(None)
    }
}

/// What following a step's sub-plans found wrong.
enum Walk {
    Unknown(PlanId),
    Cycle(Vec<String>),
}
