//! The step loop: starts every step whose inputs are ready (up to the configured
//! limit), applies each outcome to the workflow as it arrives, and saves after each.
//!
//! Agents run on owned [`StepContext`]s, so no `&mut Workflow` is held across a
//! step's await and independent steps run concurrently. A step that panics fails
//! like any other step instead of taking the workflow down with it.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::{Id, JoinSet};

use super::Runner;
use super::claims::Claim;
use super::recording::RecordedTool;
use crate::agent::{StepContext, StepInput, StepOutcome, StepResult, summarize_final_output};
use crate::config::ExecutionMode;
use crate::plan::Plan;
use crate::tool::Tool;
use crate::workflow::{Output, Workflow, WorkflowState};
use crate::{Error, Result};

/// What the running steps have led to so far.
#[derive(Default)]
struct Halt {
    /// The first step failure: `(step, message)`. No new step starts after it.
    failure: Option<(usize, String)>,
    /// Whether a step asked for clarifications. No new step starts after it either.
    clarifying: bool,
}

impl Halt {
    fn stops_new_steps(&self) -> bool {
        self.failure.is_some() || self.clarifying
    }
}

/// How a run ended before its conclusion: it went through, or it was cancelled.
enum Run {
    Finished(Halt),
    Cancelled,
}

impl Runner {
    pub(super) async fn execute(&self, mut workflow: Workflow) -> Result<Workflow> {
        let Some(claim) = self.inner.claims.claim(workflow.id) else {
            return Err(Error::AlreadyRunning(workflow.id));
        };
        self.refuse_stale_copy(&workflow).await?;
        match workflow.state() {
            state if state.is_terminal() => return Err(workflow.invalid_state("execute it")),
            WorkflowState::NeedClarification => {
                if workflow.outstanding_clarifications().next().is_some() {
                    return Ok(workflow);
                }
                workflow.transition_to(WorkflowState::ReadyToResume)?;
                if self.save_unless_cancelled(&claim, &workflow).await? {
                    return self.inner.storage.get_workflow(workflow.id).await;
                }
            }
            _ => {}
        }
        let plan = self.inner.storage.get_plan(workflow.plan_id).await?;
        if workflow.state() != WorkflowState::InProgress {
            workflow.transition_to(WorkflowState::InProgress)?;
        }
        if self.save_unless_cancelled(&claim, &workflow).await? {
            return self.inner.storage.get_workflow(workflow.id).await;
        }
        let cancelled = match self.run_steps(&plan, &mut workflow, &claim).await? {
            Run::Finished(halt) => self.conclude(&plan, &mut workflow, halt, &claim).await?,
            Run::Cancelled => true,
        };
        if cancelled {
            // The cancellation saved the workflow as it should end; return that.
            return self.inner.storage.get_workflow(workflow.id).await;
        }
        Ok(workflow)
    }

    /// A copy older than the stored workflow must not run: it would redo finished
    /// steps and drop answers. Older means the stored one has finished, or holds a
    /// step output or a clarification the copy lacks.
    async fn refuse_stale_copy(&self, workflow: &Workflow) -> Result<()> {
        let stored = match self.inner.storage.get_workflow(workflow.id).await {
            Ok(stored) => stored,
            Err(Error::WorkflowNotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if stored.state().is_terminal() {
            return Err(stored.invalid_state("execute it"));
        }
        let ours = &workflow.outputs;
        let missing_output = stored.outputs.step_outputs.iter().any(|(name, _)| !ours.step_outputs.contains(name));
        let missing_question =
            stored.outputs.clarifications.iter().any(|c| !ours.clarifications.iter().any(|o| o.id == c.id));
        if missing_output || missing_question {
            return Err(stored.invalid_state("execute an older copy of it (execute the stored one, by id)"));
        }
        Ok(())
    }

    /// Saves the run's copy unless the workflow was cancelled meanwhile; `true` if it was.
    async fn save_unless_cancelled(&self, claim: &Claim, workflow: &Workflow) -> Result<bool> {
        let cancelled = claim.cancelled.lock().await;
        if !*cancelled {
            self.inner.storage.save_workflow(workflow).await?;
        }
        Ok(*cancelled)
    }

    async fn run_steps(&self, plan: &Plan, workflow: &mut Workflow, claim: &Claim) -> Result<Run> {
        let limit = match self.inner.config.execution {
            ExecutionMode::Sequential => 1,
            _ => self.inner.config.max_parallel_steps.max(1),
        };
        let mut started = vec![false; plan.steps.len()];
        let mut running: JoinSet<(usize, StepResult)> = JoinSet::new();
        let mut step_of_task: HashMap<Id, usize> = HashMap::new();
        let mut halt = Halt::default();
        loop {
            if !halt.stops_new_steps() {
                for index in self.ready_steps(plan, workflow, &started) {
                    if running.len() >= limit {
                        break;
                    }
                    started[index] = true;
                    match self.step_context(plan, workflow, index) {
                        Ok(ctx) => {
                            let agent = Arc::clone(&self.inner.agent);
                            let task = running.spawn(async move { (index, agent.execute(&ctx).await) });
                            step_of_task.insert(task.id(), index);
                        }
                        Err(message) => {
                            halt.failure = Some((index, message));
                            break;
                        }
                    }
                }
            }
            let Some(joined) = running.join_next().await else { break };
            let (index, result) = match joined {
                Ok(done) => done,
                Err(e) => (step_of_task.get(&e.id()).copied().unwrap_or_default(), StepResult::new(task_failure(e))),
            };
            self.apply(plan, workflow, index, result, &mut halt);
            if self.save_unless_cancelled(claim, workflow).await? {
                running.abort_all();
                return Ok(Run::Cancelled);
            }
        }
        Ok(Run::Finished(halt))
    }

    /// Steps not started whose inputs are all available, in plan order. Run one at a
    /// time, only the lowest step not yet done is ready.
    fn ready_steps(&self, plan: &Plan, workflow: &Workflow, started: &[bool]) -> Vec<usize> {
        if self.inner.config.execution == ExecutionMode::Sequential {
            let lowest = (0..plan.steps.len()).find(|&i| !workflow.is_step_done(plan, i));
            return lowest.filter(|&i| !started[i]).into_iter().collect();
        }
        (0..plan.steps.len())
            .filter(|&i| !started[i] && !workflow.is_step_done(plan, i))
            .filter(|&i| {
                plan.steps[i]
                    .inputs
                    .iter()
                    .filter(|v| v.is_reference())
                    .all(|v| workflow.outputs.step_outputs.contains(&v.name))
            })
            .collect()
    }

    fn apply(&self, plan: &Plan, workflow: &mut Workflow, index: usize, result: StepResult, halt: &mut Halt) {
        workflow.add_usage(Some(&plan.steps[index].output), result.usage);
        match result.outcome {
            StepOutcome::Output(output) => workflow.record_step_output(plan, index, output),
            StepOutcome::Clarifications(list) => {
                tracing::info!(workflow = %workflow.id, step = index, count = list.len(), "step needs clarification");
                workflow.add_clarifications(index, list);
                halt.clarifying = true;
            }
            StepOutcome::Failed(message) => {
                tracing::warn!(workflow = %workflow.id, step = index, %message, "step failed");
                halt.failure.get_or_insert((index, message));
            }
        }
    }

    /// Moves the workflow to its end state and saves it; `true` if it was cancelled meanwhile.
    async fn conclude(&self, plan: &Plan, workflow: &mut Workflow, halt: Halt, claim: &Claim) -> Result<bool> {
        let pending: Vec<usize> = (0..plan.steps.len()).filter(|&i| !workflow.is_step_done(plan, i)).collect();
        if let Some((step, message)) = halt.failure {
            workflow.fail(Some(step), message)?;
        } else if halt.clarifying {
            workflow.transition_to(WorkflowState::NeedClarification)?;
        } else if let Some(&step) = pending.first() {
            // Only a plan that skipped validation can get here: an input nobody produces.
            workflow.fail(Some(step), format!("step {step} cannot run: one of its inputs is never produced"))?;
        } else {
            self.set_final_output(plan, workflow).await;
            workflow.transition_to(WorkflowState::Complete)?;
            tracing::info!(workflow = %workflow.id, plan = %plan.id, "workflow complete");
            tracing::debug!(workflow = %workflow.id, final_output = ?workflow.outputs.final_output, "final output");
        }
        self.save_unless_cancelled(claim, workflow).await
    }

    async fn set_final_output(&self, plan: &Plan, workflow: &mut Workflow) {
        let Some(last) = plan.steps.last() else { return };
        let Some(value) = workflow.outputs.step_outputs.get(&last.output).map(|o| o.value.clone()) else { return };
        let mut final_output = Output::new(value);
        if self.inner.config.summarize_final_output {
            let (summary, usage) = summarize_final_output(self.inner.llm.as_ref(), plan, workflow).await;
            workflow.add_usage(None, usage);
            final_output.summary = summary;
        }
        workflow.outputs.final_output = Some(final_output);
    }

    /// The owned context an agent runs step `index` with, or why the step cannot run.
    fn step_context(&self, plan: &Plan, workflow: &Workflow, index: usize) -> std::result::Result<StepContext, String> {
        let step = &plan.steps[index];
        let tool = match &step.tool_id {
            None => None,
            Some(id) => match self.inner.tools.get_tool(id) {
                Ok(inner) => {
                    Some(Arc::new(RecordedTool { inner, storage: Arc::clone(&self.inner.storage) }) as Arc<dyn Tool>)
                }
                Err(_) => return Err(format!("Tool {id} is not in the tool registry: register it, or plan again")),
            },
        };
        let outputs = &workflow.outputs.step_outputs;
        let mut inputs = Vec::with_capacity(step.inputs.len());
        for variable in &step.inputs {
            let value = match &variable.value {
                Some(constant) => constant.clone(),
                None => outputs
                    .get(&variable.name)
                    .map(|o| o.value.clone())
                    .ok_or_else(|| format!("step {index} reads {}, which has not been produced", variable.name))?,
            };
            inputs.push(StepInput { name: variable.name.clone(), description: variable.description.clone(), value });
        }
        let other_outputs = plan.steps[..index]
            .iter()
            .filter(|s| !step.inputs.iter().any(|v| v.name == s.output))
            .filter_map(|s| outputs.get(&s.output).map(|o| (s.output.clone(), o.value.clone())))
            .collect();
        Ok(StepContext {
            query: plan.plan_context.query.clone(),
            step_index: index,
            step: step.clone(),
            inputs,
            other_outputs,
            clarifications: workflow.clarifications_for_step(index).cloned().collect(),
            execution_context: workflow.execution_context.clone(),
            workflow_id: workflow.id,
            tool,
            llm: Arc::clone(&self.inner.llm),
            config: Arc::clone(&self.inner.config),
            today: self.today(),
        })
    }
}

/// A step task that panicked (or was aborted) fails its step with the reason.
fn task_failure(error: tokio::task::JoinError) -> StepOutcome {
    if !error.is_panic() {
        return StepOutcome::Failed(format!("the step was stopped: {error}"));
    }
    let panic = error.into_panic();
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned());
    StepOutcome::Failed(format!("the step panicked: {message}"))
}
