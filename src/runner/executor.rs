//! One run of a workflow under its lease: the step loop, and the saves after every
//! change, each a compare-and-swap fenced on the lease.
//!
//! Agents run on owned [`StepContext`]s, so no `&mut Workflow` is held across a
//! step's await and independent steps run concurrently. A step that panics fails
//! like any other step instead of taking the workflow down with it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;
use tokio::task::{Id, JoinSet};
use tracing::Instrument;

use super::Runner;
use super::calls::{CallServices, Stop, StopSignal, ToolCalls};
use super::control::{RegisteredRun, Tenure};
use super::metered::{Meter, ParentMeter};
use super::sub_plan::ChildPlan;
use crate::agent::{Agent, StepContext, StepInput, StepOutcome, ask_user, skip_unless_holds, summarize_final_output};
use crate::clarification::Clarification;
use crate::config::ExecutionMode;
use crate::error::LlmError;
use crate::events::{EventKind, RunEvents};
use crate::hooks::{HookChain, HookError, StepDecision};
use crate::ids::WorkflowId;
use crate::live::StepQuestions;
use crate::llm::{LlmClient, LlmClientExt, LlmRequest, LlmResponse};
use crate::plan::args::{missed_path, resolve as resolve_args};
use crate::plan::{Condition, Exit, INDEX, ITEM, Plan, Reference};
use crate::schema_check::check_value;
use crate::storage::{LeaseGrant, ToolCallRecord};
use crate::workflow::{Failure, FailureKind, Output, Workflow, WorkflowState, WorkflowUsage};
use crate::{Error, Result, SharedValue};

/// A run in progress: the workflow, and what it runs with.
struct Run {
    workflow: Workflow,
    /// The state last saved, so that a save announces a change of state.
    saved_state: WorkflowState,
    events: RunEvents,
    /// Shared with the plan cache and the caller: a run only reads it.
    plan: Arc<Plan>,
    /// The run's lease and the heartbeat keeping it, which the last save gives up.
    tenure: Arc<Tenure>,
    signal: StopSignal,
    meter: Meter,
    /// Calls journaled by earlier, interrupted runs.
    journal: Vec<ToolCallRecord>,
}

/// What the running steps have led to so far.
#[derive(Default)]
struct Halt {
    /// The first step failure. No new step starts after it.
    failure: Option<Failure>,
    /// Whether a step asked for clarifications. No new step starts after it either.
    clarifying: bool,
    /// The exit step that ran, with its message resolved. No new step starts after it.
    exit: Option<(usize, Exit)>,
}

/// What a run starts with besides its lease.
#[derive(Debug)]
pub(super) struct Start {
    /// The workflow's plan, when the caller has it (else it is read).
    pub(super) plan: Option<Arc<Plan>>,
    /// The meter of the parent a child run is metered under.
    pub(super) parent: Option<ParentMeter>,
}

impl Halt {
    fn stops_new_steps(&self) -> bool {
        self.failure.is_some() || self.clarifying || self.exit.is_some()
    }
}

impl Runner {
    /// Runs the stored workflow `id` under a lease, from wherever it stands.
    pub(super) async fn execute(&self, id: WorkflowId) -> Result<Workflow> {
        let grant = self.inner.storage.acquire_lease(id, &self.inner.owner, self.inner.config.lease_ttl()).await?;
        self.run_granted(grant, StopSignal::default()).await
    }

    /// Runs a workflow whose lease was granted, renewing the lease meanwhile and
    /// releasing it at the end, however the run ends. `signal` stops it early.
    pub(super) async fn run_granted(&self, grant: LeaseGrant, signal: StopSignal) -> Result<Workflow> {
        self.run_granted_plan(grant, signal, None).await
    }

    /// [`Runner::run_granted`], given the workflow's plan if it is at hand.
    pub(super) async fn run_granted_plan(
        &self,
        grant: LeaseGrant,
        signal: StopSignal,
        plan: Option<Arc<Plan>>,
    ) -> Result<Workflow> {
        let registered = self.inner.local_runs.register(grant.workflow.id(), signal.clone(), &self.inner.storage);
        self.run_registered(grant, signal, registered, Start { plan, parent: None }).await
    }

    /// Runs a workflow as [`Runner::run_granted`] does, once registered as a run of
    /// this process (which it stays until the run ends), with what `start` knows.
    pub(super) async fn run_registered(
        &self,
        grant: LeaseGrant,
        signal: StopSignal,
        _registered: RegisteredRun,
        start: Start,
    ) -> Result<Workflow> {
        let ttl = self.inner.config.lease_ttl();
        let tenure = Tenure::new(self.inner.storage.clone(), grant.lease.clone());
        let span = workflow_span(&grant.workflow);
        // Boxed, as are the ends of a run below: a future holds room for every
        // future it awaits, and the parts of a run are large (see performance.md).
        let run = Box::pin(self.run_leased(grant, signal.clone(), start, Arc::clone(&tenure)).instrument(span));
        let result = tenure.hold(ttl, signal, run).await;
        match &result {
            Err(unreadable @ Error::Unreadable { .. }) => tenure.set_aside(unreadable).await,
            _ => tenure.end().await,
        }
        result
    }

    async fn run_leased(
        &self,
        grant: LeaseGrant,
        signal: StopSignal,
        start: Start,
        tenure: Arc<Tenure>,
    ) -> Result<Workflow> {
        let LeaseGrant { lease, workflow, reclaimed, attempts, cancel_requested } = grant;
        let id = workflow.id();
        let plan = match start.plan {
            Some(plan) => plan,
            None => self.inner.plans.get(workflow.plan_id(), self.inner.storage.as_ref()).await?,
        };
        // Steps run, and so journal, only once a workflow is saved IN_PROGRESS.
        let journaled = workflow.state() != WorkflowState::NotStarted;
        let journal = if journaled { self.inner.storage.tool_calls(id).await? } else { Vec::new() };
        let usage = self.journaled_usage(&workflow, journaled).await?;
        let events = self.inner.events.for_run();
        let meter = Meter::new(self, lease.clone(), signal.clone(), events.clone(), usage, start.parent);
        let saved_state = workflow.state();
        let mut run = Run { workflow, saved_state, events, plan, tenure, signal, meter, journal };
        if let Some(reason) = cancel_requested {
            return Box::pin(self.end_failed(run, Failure::new(FailureKind::Cancelled, reason))).await;
        }
        let limit = self.inner.config.max_run_attempts;
        if reclaimed && attempts > limit {
            let message = format!(
                "the workflow was taken over {attempts} times after its runs stopped without finishing; \
                 the limit is {limit} (PORTIA_MAX_RUN_ATTEMPTS)"
            );
            return Box::pin(self.end_failed(run, Failure::new(FailureKind::AttemptsExhausted, message))).await;
        }
        if reclaimed {
            tracing::warn!(workflow = %id, attempts, "taking over a workflow whose run stopped without finishing");
        }
        if run.workflow.state() == WorkflowState::NeedClarification {
            if run.workflow.outstanding_clarifications().next().is_some() {
                return Ok(run.workflow);
            }
            run.workflow.transition_to(WorkflowState::ReadyToResume)?;
        }
        if let Err(e) = self.workflow_hook(&run.workflow, true).await {
            let failure = Failure::new(FailureKind::Hook, format!("a hook failed: {e}"));
            return Box::pin(self.end_failed(run, failure)).await;
        }
        if run.workflow.state() != WorkflowState::InProgress {
            run.workflow.transition_to(WorkflowState::InProgress)?;
        }
        self.save(&mut run).await?;
        let halt = self.run_steps(&mut run).await?;
        let ended = match run.signal.reason() {
            Some(stop) => Box::pin(self.end_stopped(run, stop)).await?,
            None => Box::pin(self.conclude(run, halt)).await?,
        };
        // The workflow is at rest and saved: a failing hook can only be reported.
        if let Err(e) = self.workflow_hook(&ended, false).await {
            tracing::warn!(workflow = %id, error = %e, "the after-workflow hook failed");
        }
        Ok(ended)
    }

    /// Runs the before- or after-workflow hooks in a task of their own, so that a
    /// panicking hook is an error like any other instead of unwinding the run.
    async fn workflow_hook(&self, workflow: &Workflow, before: bool) -> std::result::Result<(), HookError> {
        if self.inner.hooks.is_empty() {
            return Ok(());
        }
        let (hooks, workflow) = (self.inner.hooks.clone(), workflow.clone());
        let task = tokio::spawn(async move {
            if before { hooks.before_workflow(&workflow).await } else { hooks.after_workflow(&workflow).await }
        });
        task.await.unwrap_or_else(|e| Err(HookError::new(format!("it panicked: {e}"))))
    }

    /// The workflow's usage as journaled: planning (counted or as a reference, as
    /// when it was made), then every call recorded, including those of a run that
    /// died before it could save them, then its children's records as last saved
    /// (a child's own journal is its to read: the parent records the child anew
    /// when it takes the child's outcome).
    async fn journaled_usage(&self, workflow: &Workflow, journaled: bool) -> Result<WorkflowUsage> {
        let stored = workflow.usage();
        let mut usage = if stored.planning_counted {
            WorkflowUsage::planned(stored.planning, self.planning_cost(stored.planning))
        } else {
            WorkflowUsage::of_existing_plan(stored.planning)
        };
        usage.running_ms = stored.running_ms;
        let records = if journaled { self.inner.storage.usage_records(workflow.id()).await? } else { Vec::new() };
        for record in records {
            usage.add(record.step_output.as_deref(), record.usage, record.cost_usd);
        }
        for (child, spent) in &stored.children {
            usage.record_child(*child, spent.clone());
        }
        Ok(usage)
    }

    /// Saves the run's workflow as the next version, under the lease.
    async fn save(&self, run: &mut Run) -> Result<()> {
        self.save_version(run, false).await
    }

    /// Saves the run's workflow at rest, as its last version of this run, and gives
    /// the lease up in the same write.
    async fn save_last(&self, run: &mut Run) -> Result<()> {
        self.save_version(run, true).await
    }

    async fn save_version(&self, run: &mut Run, last: bool) -> Result<()> {
        run.workflow.set_usage(run.meter.usage());
        run.workflow.bump_version();
        let (from, to) = (run.saved_state, run.workflow.state());
        let change = (from != to).then(|| run.events.stage(run.workflow.id(), EventKind::StateChanged { from, to }));
        let events = run.events.take();
        if last {
            run.tenure.save_and_release(&run.workflow, &events).await?;
        } else {
            self.inner.storage.update_workflow(&run.workflow, run.tenure.lease(), &events).await?;
        }
        run.saved_state = to;
        if let Some(change) = change {
            run.events.announce(change);
        }
        Ok(())
    }

    async fn end_failed(&self, mut run: Run, failure: Failure) -> Result<Workflow> {
        run.workflow.fail(failure)?;
        self.save_last(&mut run).await?;
        Ok(run.workflow)
    }

    async fn end_stopped(&self, run: Run, stop: Stop) -> Result<Workflow> {
        match stop {
            Stop::Cancelled(reason) => self.end_failed(run, Failure::new(FailureKind::Cancelled, reason)).await,
            Stop::LeaseLost => Err(Error::LeaseLost { workflow_id: run.workflow.id() }),
            // Left as last saved, for another worker to take on once the lease is released.
            Stop::Shutdown => Ok(run.workflow),
            Stop::Budget(reason) => self.end_failed(run, Failure::new(FailureKind::BudgetExceeded, reason)).await,
        }
    }

    async fn run_steps(&self, run: &mut Run) -> Result<Halt> {
        let limit = match self.inner.config.execution {
            ExecutionMode::Sequential => 1,
            _ => self.inner.config.max_parallel_steps.max(1),
        };
        let steps = run.plan.steps.len();
        let reads: Vec<Vec<String>> = (0..steps).map(|i| run.plan.reads(i)).collect();
        let needs = reads.iter().enumerate().map(|(i, read)| run.plan.with_tested(i, read.clone())).collect();
        let mut schedule = Schedule { started: vec![false; steps], needs, reads, ..Schedule::default() };
        let mut halt = Halt { exit: exit_taken(&run.plan, &run.workflow), ..Halt::default() };
        loop {
            // A skip, or a loop's last item, may make other steps ready at once.
            while !halt.stops_new_steps() && run.signal.reason().is_none() {
                if !self.start_ready(run, &mut schedule, &mut halt, limit).await? {
                    break;
                }
            }
            let joined = tokio::select! {
                biased;
                joined = schedule.running.join_next_with_id() => joined,
                () = run.signal.token().cancelled() => {
                    schedule.running.abort_all();
                    return Ok(halt);
                }
            };
            let Some(joined) = joined else { break };
            let (task, outcome) = match joined {
                Ok(done) => done,
                Err(e) => (e.id(), task_failure(e)),
            };
            let (unit, questions) = schedule.tasks.remove(&task).unwrap_or_default();
            self.apply(run, unit, outcome, questions.take(), &mut halt);
            self.save(run).await?;
        }
        Ok(halt)
    }

    /// Starts what is ready, up to `limit` tasks; `true` when something finished
    /// without a task (a skip, a loop's end), so that another pass may find more.
    async fn start_ready(&self, run: &mut Run, schedule: &mut Schedule, halt: &mut Halt, limit: usize) -> Result<bool> {
        let mut progressed = false;
        for index in self.ready_steps(run, schedule) {
            if schedule.running.len() >= limit || halt.stops_new_steps() || run.signal.reason().is_some() {
                break;
            }
            if run.plan.steps[index].for_each.is_some() {
                progressed |= self.start_loop(run, index, schedule, halt, limit).await?;
            } else {
                schedule.started[index] = true;
                progressed |= self.start_unit(run, Unit { step: index, item: None }, None, schedule, halt).await?;
            }
        }
        Ok(progressed)
    }

    /// Starts the unfinished items of loop step `index` (none that a earlier run
    /// finished), or records the step's output once every item is done.
    async fn start_loop(
        &self,
        run: &mut Run,
        index: usize,
        schedule: &mut Schedule,
        halt: &mut Halt,
        limit: usize,
    ) -> Result<bool> {
        let whole = Unit { step: index, item: None };
        if let Ok(Some(reason)) = self.skip_reason(run, whole, None, &schedule.reads[index]) {
            schedule.started[index] = true;
            self.apply(run, whole, StepOutcome::Skipped(reason), Vec::new(), halt);
            self.save(run).await?;
            return Ok(true);
        }
        let items = match loop_list(&run.plan, &run.workflow, index) {
            Ok(items) => items,
            Err(failure) => {
                schedule.started[index] = true;
                halt.failure = Some(failure.at_step(index));
                return Ok(false);
            }
        };
        let done = run.workflow.outputs().loop_items.get(&run.plan.steps[index].output);
        let pending: Vec<usize> = (0..items.len()).filter(|i| !done.is_some_and(|d| d.contains_key(i))).collect();
        if pending.is_empty() {
            schedule.started[index] = true;
            let output = run.workflow.finish_loop(&run.plan, index, items.len());
            run.events
                .emit(run.workflow.id(), EventKind::StepFinished { step: index, outcome: StepOutcome::Output(output) });
            self.save(run).await?;
            return Ok(true);
        }
        if !schedule.started_items.iter().any(|(step, _)| *step == index) {
            let step = &run.plan.steps[index];
            let started =
                EventKind::StepStarted { step: index, task: step.task.clone(), tool_id: step.tool_id.clone() };
            run.events.emit(run.workflow.id(), started);
        }
        let mut progressed = false;
        for item in pending {
            if schedule.running.len() >= limit || halt.stops_new_steps() {
                break;
            }
            if schedule.started_items.insert((index, item)) {
                let unit = Unit { step: index, item: Some(item) };
                progressed |= self.start_unit(run, unit, Some(&items[item]), schedule, halt).await?;
            }
        }
        Ok(progressed)
    }

    /// Starts one unit (a step, or one item of a loop step, whose value is `item`):
    /// skipped at once, or run in a task. `true` when it was skipped.
    async fn start_unit(
        &self,
        run: &mut Run,
        unit: Unit,
        item: Option<&Value>,
        schedule: &mut Schedule,
        halt: &mut Halt,
    ) -> Result<bool> {
        match self.skip_reason(run, unit, item, &schedule.reads[unit.step]) {
            Ok(None) => {}
            Ok(Some(reason)) => {
                self.apply(run, unit, StepOutcome::Skipped(reason), Vec::new(), halt);
                self.save(run).await?;
                return Ok(true);
            }
            Err(failure) => {
                halt.failure = Some(failure.at_step(unit.step));
                return Ok(false);
            }
        }
        // The budget is asked only before work that may spend it: a run whose last
        // call spent it exactly, with only skips or a loop's end left, ends as its
        // work did. A spent budget stops the run through its signal.
        let step = &run.plan.steps[unit.step];
        let spends = step.exit.is_none() && step.ask_user.is_none();
        if spends && run.meter.check_budget() {
            return Ok(false);
        }
        match self.step_context(run, unit, item) {
            Ok((ctx, questions)) => {
                let task = self.start_step(run, unit, ctx, &mut schedule.running);
                schedule.tasks.insert(task, (unit, questions));
            }
            Err(failure) => halt.failure = Some(failure.at_step(unit.step)),
        }
        Ok(false)
    }

    /// Why a unit is skipped without running, if it is: every output the step reads
    /// was skipped, or its condition (an expression) is false; a loop's condition is
    /// asked of each item. A condition in words is decided when the step runs.
    /// `needed` is what the step [reads](Plan::reads). A condition that cannot be
    /// evaluated because an output it tests was skipped skips the step too.
    fn skip_reason(
        &self,
        run: &Run,
        unit: Unit,
        item: Option<&Value>,
        needed: &[String],
    ) -> std::result::Result<Option<String>, Failure> {
        let outputs = &run.workflow.outputs().step_outputs;
        let step = &run.plan.steps[unit.step];
        if unit.item.is_none() {
            if !needed.is_empty() && needed.iter().all(|name| outputs.get(name).is_some_and(|o| o.skipped.is_some())) {
                return Ok(Some(format!("every output it reads was skipped ({})", needed.join(", "))));
            }
            if step.for_each.is_some() {
                return Ok(None);
            }
        }
        let Some(text) = &step.condition else { return Ok(None) };
        let current = unit.item.zip(item);
        match Condition::parse(text).evaluate(|r| loop_value(current, r).or_else(|| outputs.resolve(r))) {
            None | Some(Ok(true)) => Ok(None),
            Some(Ok(false)) => Ok(Some(format!("its condition is false: {text}"))),
            Some(Err(e)) => {
                let tested = Condition::tested_outputs(text);
                let skipped = |name: &String| outputs.get(name).is_some_and(|o| o.skipped.is_some());
                if !tested.is_empty() && tested.iter().all(skipped) {
                    return Ok(Some(format!("its condition tests only what was skipped ({})", tested.join(", "))));
                }
                let message = format!("the condition `{text}` cannot be evaluated: {e}");
                Err(Failure::new(FailureKind::InvalidStep, message))
            }
        }
    }

    /// Announces a unit (a loop's items are announced once, as their step) and runs
    /// it in a task of `running`; returns the task's id.
    fn start_step(&self, run: &Run, unit: Unit, ctx: StepContext, running: &mut JoinSet<StepOutcome>) -> Id {
        let (index, step) = (unit.step, &run.plan.steps[unit.step]);
        if unit.item.is_none() {
            let started =
                EventKind::StepStarted { step: index, task: step.task.clone(), tool_id: step.tool_id.clone() };
            run.events.emit(run.workflow.id(), started);
        }
        let span = step_span(index, step);
        let child = match (step.plan, run.plan.block_plan(index)) {
            (Some(id), _) => Some(ChildPlan::Stored(id)),
            (None, block) => block.map(|plan| ChildPlan::Block(Arc::new(plan))),
        };
        let work = match child {
            Some(plan) => {
                let (runner, events, signal) = (self.clone(), run.events.clone(), run.signal.child());
                Work::Child { runner, plan, events, signal, meter: run.meter.for_child(&step.output) }
            }
            None => Work::Agent(Arc::clone(&self.inner.agent)),
        };
        running.spawn(run_step(work, self.inner.hooks.clone(), ctx).instrument(span)).id()
    }

    /// Steps not started whose inputs are all available, in plan order. Run one at a
    /// time, only the lowest step not yet done is ready.
    fn ready_steps(&self, run: &Run, schedule: &Schedule) -> Vec<usize> {
        let (plan, workflow, started) = (&run.plan, &run.workflow, &schedule.started);
        if self.inner.config.execution == ExecutionMode::Sequential {
            let lowest = (0..plan.steps.len()).find(|&i| !workflow.is_step_done(plan, i));
            return lowest.filter(|&i| !started[i]).into_iter().collect();
        }
        // An exit ends the workflow when it runs, so no step after it starts before
        // it is decided: a later step's side effects would outlive the exit.
        let undecided_exit =
            (0..plan.steps.len()).find(|&i| plan.steps[i].exit.is_some() && !workflow.is_step_done(plan, i));
        (0..undecided_exit.map_or(plan.steps.len(), |exit| exit + 1))
            .filter(|&i| !started[i] && !workflow.is_step_done(plan, i))
            .filter(|&i| schedule.needs[i].iter().all(|name| workflow.outputs().step_outputs.contains(name)))
            .collect()
    }

    /// Records how step `index` ended in the workflow, with the questions its tools
    /// asked live (`asked_live`), in the save that follows.
    fn apply(&self, run: &mut Run, unit: Unit, outcome: StepOutcome, asked_live: Vec<Clarification>, halt: &mut Halt) {
        let (index, workflow) = (unit.step, &mut run.workflow);
        let finished = match unit.item {
            None => EventKind::StepFinished { step: index, outcome: outcome.clone() },
            Some(item) => EventKind::LoopItemFinished { step: index, item, outcome: outcome.clone() },
        };
        run.events.emit(workflow.id(), finished);
        // Answered while the call was open: kept as a record, and so that a call made
        // again (after a crash, say) finds the answer. Asking and answering were
        // announced. A question the step returns as well is kept as returned.
        let returned = match &outcome {
            StepOutcome::Clarifications(list) => list.iter().map(|c| c.id).collect(),
            _ => Vec::new(),
        };
        workflow
            .add_clarifications(index, asked_live.iter().filter(|c| c.resolved && !returned.contains(&c.id)).cloned());
        match outcome {
            StepOutcome::Output(output) if unit.item.is_some() => {
                workflow.record_loop_item(&run.plan, index, unit.item.unwrap_or_default(), output);
            }
            StepOutcome::Output(output) => {
                if let Some(exit) = &run.plan.steps[index].exit {
                    halt.exit = Some((index, exit.with_message(crate::text::render_value(&output.value))));
                }
                workflow.record_step_output(&run.plan, index, output);
            }
            StepOutcome::Skipped(reason) => {
                tracing::info!(workflow = %workflow.id(), step = index, item = ?unit.item, %reason, "skipped");
                match unit.item {
                    Some(item) => workflow.record_loop_item(&run.plan, index, item, Output::skipped(reason)),
                    None => workflow.record_step_output(&run.plan, index, Output::skipped(reason)),
                }
            }
            StepOutcome::Clarifications(list) => {
                tracing::info!(workflow = %workflow.id(), step = index, count = list.len(), "step needs clarification");
                let raised = workflow.add_clarifications(index, list);
                // A question first asked live was announced then.
                for clarification in raised.into_iter().filter(|c| !asked_live.iter().any(|l| l.id == c.id)) {
                    run.events
                        .emit(workflow.id(), EventKind::ClarificationRaised { clarification: Box::new(clarification) });
                }
                halt.clarifying = true;
            }
            StepOutcome::Failed(failure) => {
                tracing::warn!(workflow = %workflow.id(), step = index, error = %failure.message, "step failed");
                halt.failure.get_or_insert(failure.at_step(index));
            }
        }
    }

    /// Moves the workflow to its end state and saves it.
    async fn conclude(&self, mut run: Run, halt: Halt) -> Result<Workflow> {
        let (plan, workflow) = (&run.plan, &mut run.workflow);
        let pending = (0..plan.steps.len()).find(|&i| !workflow.is_step_done(plan, i));
        if let Some(failure) = halt.failure {
            workflow.fail(failure)?;
        } else if let Some((step, exit)) = halt.exit {
            match exit {
                Exit::Complete(message) => {
                    let fits = match &plan.output_schema {
                        Some(schema) => fitted(schema, &message),
                        None => Ok(Value::from(message.as_str())),
                    };
                    match fits {
                        Ok(value) => {
                            workflow.set_final_output(Output::new(value).with_summary(message));
                            workflow.transition_to(WorkflowState::Complete)?;
                        }
                        Err(problems) => {
                            let message =
                                format!("the exit's message does not fit the plan's output schema: {problems}");
                            workflow.fail(Failure::new(FailureKind::SchemaMismatch, message).at_step(step))?;
                        }
                    }
                }
                Exit::Failed(error) => workflow.fail(Failure::new(FailureKind::Exited, error).at_step(step))?,
            }
        } else if halt.clarifying {
            workflow.transition_to(WorkflowState::NeedClarification)?;
        } else if let Some(step) = pending {
            // Only a plan that skipped validation can get here: an input nobody produces.
            let message = format!("step {step} cannot run: one of its inputs is never produced");
            workflow.fail(Failure::new(FailureKind::InvalidStep, message).at_step(step))?;
        } else if let Err(failure) = self.set_final_output(&mut run).await {
            run.workflow.fail(failure)?;
        } else {
            run.workflow.transition_to(WorkflowState::Complete)?;
            tracing::info!(workflow = %run.workflow.id(), plan = %run.plan.id, "workflow complete");
        }
        self.save_last(&mut run).await?;
        Ok(run.workflow)
    }

    /// Sets the final output: the last step's value, checked against the plan's
    /// output schema, with a summary (the last step's own when it wrote one).
    async fn set_final_output(&self, run: &mut Run) -> std::result::Result<(), Failure> {
        let Some(last) = run.plan.steps.last() else { return Ok(()) };
        let Some(output) = run.workflow.outputs().step_outputs.get(&last.output) else { return Ok(()) };
        if output.skipped.is_some() {
            run.workflow.set_final_output(output.clone());
            return Ok(());
        }
        if let Some(schema) = &run.plan.output_schema
            && let Err(problems) = check_value(schema, &output.value)
        {
            let message = format!("the final output does not fit the plan's output schema: {problems}");
            return Err(Failure::new(FailureKind::SchemaMismatch, message).at_step(run.plan.steps.len() - 1));
        }
        let mut final_output = Output::shared(output.value.clone());
        // A child's final output is its parent's step output, which takes no summary.
        let summarize = self.inner.config.summarize_final_output && run.workflow.parent().is_none();
        let written = output.summary.clone().filter(|_| last.tool_id.is_none());
        if let Some(summary) = written.filter(|_| summarize) {
            final_output.summary = Some(summary);
        } else if summarize {
            let llm = Arc::clone(&self.inner.llm).with(run.meter.billing(None));
            let limit = self.inner.config.max_output_chars;
            final_output.summary = summarize_final_output(llm.as_ref(), &run.plan, &run.workflow, limit).await;
        }
        tracing::debug!(workflow = %run.workflow.id(), final_output = ?final_output, "final output");
        run.workflow.set_final_output(final_output);
        Ok(())
    }

    /// The owned context an agent runs a unit with (for a loop item, `item` is its
    /// value), or why it cannot run.
    fn step_context(
        &self,
        run: &Run,
        unit: Unit,
        item: Option<&Value>,
    ) -> std::result::Result<(StepContext, StepQuestions), Failure> {
        let (plan, workflow, index) = (&run.plan, &run.workflow, unit.step);
        let step = &plan.steps[index];
        let current = unit.item.zip(item);
        let outputs = &workflow.outputs().step_outputs;
        let lookup_shared = |reference: &str| match loop_value(current, reference) {
            Some(value) => Some(SharedValue::new(value)),
            None => outputs.resolve_shared(reference),
        };
        let lookup = |reference: &str| lookup_shared(reference).map(SharedValue::into_value);
        let tool = match &step.tool_id {
            None if step.function.is_some() => {
                let name = step.function.as_deref().unwrap_or_default();
                Some(self.inner.functions.get(name).cloned().ok_or_else(|| {
                    let message =
                        format!("The function {name} is not registered on the runner: register it, or plan again");
                    Failure::new(FailureKind::InvalidStep, message)
                })?)
            }
            None => None,
            Some(id) => Some(self.registered_tool(id)?),
        };
        let tools = step.tools.iter().map(|id| self.registered_tool(id)).collect::<std::result::Result<_, _>>()?;
        let mut inputs = Vec::with_capacity(step.inputs.len());
        for variable in &step.inputs {
            let value = match &variable.value {
                Some(constant) => SharedValue::new(constant.clone()),
                None => lookup_shared(&variable.name).ok_or_else(|| {
                    let message = format!("step {index} reads {}, which has not been produced", variable.name);
                    Failure::new(FailureKind::InvalidStep, message)
                })?,
            };
            inputs.push(StepInput { name: variable.name.clone(), description: variable.description.clone(), value });
        }
        if let Some((i, value)) = current
            && !inputs.iter().any(|input| input.name == ITEM)
        {
            let list = step.for_each.as_deref().unwrap_or_default();
            let description = format!("item {i} (from 0) of {list}");
            inputs.push(StepInput { name: ITEM.to_owned(), description, value: SharedValue::new(value.clone()) });
        }
        let read =
            |output: &str| step.inputs.iter().any(|v| Reference::parse(&v.name).is_some_and(|r| r.name == output));
        let other_outputs = plan.steps[..index]
            .iter()
            .filter(|s| !read(&s.output))
            .filter_map(|s| outputs.get(&s.output).map(|o| (s.output.clone(), o.value.clone())))
            .collect();
        let clarifications: Vec<_> = workflow.clarifications_for_step(index).cloned().collect();
        // Plan-time arguments with their `$name` references replaced by the outputs;
        // for a block, what its steps read from outside, by name.
        let args = if step.is_block() {
            let given = plan.block_inputs(index).into_iter().filter_map(|name| lookup(&name).map(|v| (name, v)));
            Some(Value::Object(given.collect()))
        } else {
            if let Some(missed) = step.args.as_ref().and_then(|args| missed_path(args, &lookup_shared)) {
                let message = format!("step {index}'s arguments read an output that lacks what they name: {missed}");
                return Err(Failure::new(FailureKind::InvalidStep, message));
            }
            step.args.as_ref().map(|args| resolve_args(args, &lookup))
        };
        let runs_child = step.plan.is_some() || step.is_block();
        let is_final_answer = index + 1 == plan.steps.len() && tool.is_none() && !runs_child && step.for_each.is_none();
        let mut step = step.clone();
        if is_final_answer && step.output_schema.is_none() {
            step.output_schema.clone_from(&plan.output_schema);
        }
        if let Some(exit) = step.exit.take() {
            let message = resolve_args(&Value::from(exit.message()), &|reference| outputs.resolve(reference));
            step.exit = Some(exit.with_message(crate::text::render_value(&message)));
        }
        // `$name` references in the task read as their values ("Summarise $ticket.body").
        if step.task.contains('$') {
            step.task = crate::text::render_value(&resolve_args(&Value::from(step.task.as_str()), &lookup));
        }
        let calls = self.step_calls(run, unit, &clarifications);
        let questions = calls.questions();
        let ctx = StepContext {
            args,
            query: plan.plan_context.query.clone(),
            step_index: index,
            loop_item: unit.item,
            // A child's final output is its parent's step output, which takes no summary.
            writes_final_answer: is_final_answer
                && self.inner.config.summarize_final_output
                && workflow.parent().is_none(),
            step,
            inputs,
            other_outputs,
            calls: Arc::new(calls),
            clarifications,
            execution_context: workflow.execution_context().clone(),
            workflow_id: workflow.id(),
            tool,
            tools,
            llm: step_llm(
                Arc::clone(&self.inner.llm).with(run.meter.billing(Some(&plan.steps[index].output))),
                &plan.steps[index],
            ),
            max_output_chars: self.inner.config.max_output_chars,
            today: self.today(),
        };
        Ok((ctx, questions))
    }

    /// The tool registered as `id`, or the failure of a step that names one that is not.
    fn registered_tool(&self, id: &str) -> std::result::Result<Arc<dyn crate::tool::Tool>, Failure> {
        self.inner.tools.get_tool(id).map_err(|_| {
            let message = format!("Tool {id} is not in the tool registry: register it, or plan again");
            Failure::new(FailureKind::InvalidStep, message)
        })
    }

    /// The journaled call path of one step. Each resume of a step after a question
    /// it asked is a new attempt; a question about an interrupted call is not, so
    /// the answer applies to that very call.
    fn step_calls(&self, run: &Run, unit: Unit, clarifications: &[Clarification]) -> ToolCalls {
        let step = unit.step;
        let asked = clarifications.iter().filter(|c| c.tool_call.is_none());
        let asked = u32::try_from(asked.count()).unwrap_or(u32::MAX);
        // A loop's items journal their calls apart: item i's attempts are numbered
        // from i × LOOP_ATTEMPT_STRIDE.
        let item = unit.item.map_or(0, |i| u32::try_from(i).unwrap_or(u32::MAX));
        let attempt = item.saturating_mul(LOOP_ATTEMPT_STRIDE).saturating_add(asked);
        let this_step = || run.journal.iter().filter(|r| r.key.step == step);
        let journaled = this_step().filter(|r| r.key.attempt == attempt).cloned().collect();
        let first = item.saturating_mul(LOOP_ATTEMPT_STRIDE);
        let mut earlier: Vec<ToolCallRecord> =
            this_step().filter(|r| (first..attempt).contains(&r.key.attempt)).cloned().collect();
        earlier.sort_by_key(|r| (r.key.attempt, r.key.seq));
        let services = CallServices {
            journal: self.inner.storage.clone(),
            lease: run.tenure.lease().clone(),
            signal: run.signal.clone(),
            hooks: self.inner.hooks.clone(),
            events: run.events.clone(),
            retry: self.inner.config.tool_retry_policy(),
            live: self.inner.live.clone(),
        };
        ToolCalls::new(services, (step, attempt), journaled, earlier)
    }
}

/// The span of one run of a workflow, named as OpenTelemetry's GenAI conventions
/// name an agent's invocation. At WARN level, so that it is on wherever warnings
/// are logged (the command line's default): a retry's warning then names its
/// workflow.
fn workflow_span(workflow: &Workflow) -> tracing::Span {
    tracing::warn_span!(
        "workflow",
        otel.name = "invoke_agent portia",
        gen_ai.operation.name = "invoke_agent",
        gen_ai.agent.name = "portia",
        portia.workflow.id = %workflow.id(),
        portia.plan.id = %workflow.plan_id(),
    )
}

/// The span of one step, at WARN level as the run's is: a step runs in a task of
/// its own, and a disabled span there would hide the run's from its warnings.
fn step_span(index: usize, step: &crate::plan::Step) -> tracing::Span {
    tracing::warn_span!(
        "step",
        otel.name = format!("step {index}"),
        portia.step.index = index,
        portia.step.output = %step.output,
        gen_ai.tool.name = step.tool_id.as_deref(),
    )
}

/// What carries a step out once its condition holds and its hooks let it run.
enum Work {
    /// The agent: tool, function, ReAct and LLM steps.
    Agent(Arc<dyn Agent>),
    /// A child workflow: sub-plan and block steps.
    Child { runner: Runner, plan: ChildPlan, events: RunEvents, signal: StopSignal, meter: ParentMeter },
}

impl Work {
    async fn execute(&self, ctx: &StepContext) -> StepOutcome {
        match self {
            Self::Agent(agent) => agent.execute(ctx).await,
            // Boxed: a child's run is large, and an agent's step (the common one) needs none of that room.
            Self::Child { runner, plan, events, signal, meter } => {
                Box::pin(super::sub_plan::run(runner, ctx, plan, events, signal.clone(), meter)).await
            }
        }
    }
}

/// Runs one step between its hooks. A hook's error fails the step.
async fn run_step(work: Work, hooks: HookChain, ctx: StepContext) -> StepOutcome {
    if let Some(text) = &ctx.step.condition
        && let Condition::Words(words) = Condition::parse(text)
        && let Some(outcome) = Box::pin(skip_unless_holds(&ctx, &words)).await
    {
        return outcome;
    }
    if let Some(exit) = &ctx.step.exit {
        // A failed exit's error is no output: only a `complete` message is checked.
        let (Exit::Complete(message), Some(schema)) = (exit, &ctx.step.output_schema) else {
            return StepOutcome::Output(Output::new(exit.message()));
        };
        return match fitted(schema, message) {
            Ok(value) => StepOutcome::Output(Output::new(value)),
            Err(problems) => StepOutcome::failed(
                FailureKind::SchemaMismatch,
                format!("the exit's message does not fit the step's output schema: {problems}"),
            ),
        };
    }
    if let Some(ask) = &ctx.step.ask_user {
        return ask_user(&ctx, ask);
    }
    let hook_failed = |e: HookError| StepOutcome::failed(FailureKind::Hook, format!("a hook failed: {e}"));
    let outcome = match hooks.before_step(&ctx).await {
        Ok(StepDecision::Run) => work.execute(&ctx).await,
        Ok(StepDecision::Skip(output)) => StepOutcome::Output(output),
        Err(e) => return hook_failed(e),
    };
    match hooks.after_step(&ctx, &outcome).await {
        Ok(()) => checked_against_schema(&ctx, outcome),
        Err(e) => hook_failed(e),
    }
}

/// The value of an exit's message that fits `schema`: the text, or the JSON it
/// holds (an exit may write `{"total": $n}`); else why neither fits.
fn fitted(schema: &Value, text: &str) -> std::result::Result<Value, String> {
    let as_text = Value::from(text);
    let Err(problems) = check_value(schema, &as_text) else { return Ok(as_text) };
    match crate::text::json_in(text) {
        Some(parsed) => check_value(schema, &parsed).map(|()| parsed),
        None => Err(problems),
    }
}

/// The outcome, or a failure when its output does not fit the step's output schema
/// (whichever agent or hook produced it).
fn checked_against_schema(ctx: &StepContext, outcome: StepOutcome) -> StepOutcome {
    let (StepOutcome::Output(output), Some(schema)) = (&outcome, &ctx.step.output_schema) else { return outcome };
    match check_value(schema, &output.value) {
        Ok(()) => outcome,
        Err(problems) => StepOutcome::failed(
            FailureKind::SchemaMismatch,
            format!("the step's output does not fit its output schema: {problems}"),
        ),
    }
}

/// The LLM a step calls: `llm`, with the step's own model when it names one.
fn step_llm(llm: Arc<dyn LlmClient>, step: &crate::plan::Step) -> Arc<dyn LlmClient> {
    match step.model.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
        Some(model) => Arc::new(StepModel { inner: llm, model: model.to_owned() }),
        None => llm,
    }
}

/// Sends every request that names no model of its own to the step's model.
#[derive(Debug)]
struct StepModel {
    inner: Arc<dyn LlmClient>,
    model: String,
}

#[async_trait::async_trait]
impl LlmClient for StepModel {
    async fn chat(&self, mut request: LlmRequest) -> std::result::Result<LlmResponse, LlmError> {
        if request.model.is_none() {
            request.model = Some(self.model.clone());
        }
        self.inner.chat(request).await
    }

    async fn chat_ref(&self, request: &LlmRequest) -> std::result::Result<LlmResponse, LlmError> {
        match request.model {
            Some(_) => self.inner.chat_ref(request).await,
            None => self.chat(request.clone()).await,
        }
    }

    fn retries(&self) -> bool {
        self.inner.retries()
    }
}

/// One thing the step loop runs: a step, or one item of a `for_each` step.
#[derive(Debug, Clone, Copy, Default)]
struct Unit {
    step: usize,
    item: Option<usize>,
}

/// What the step loop keeps between passes.
#[derive(Default)]
struct Schedule {
    /// Whether each step was started (a loop step: once its output is recorded).
    started: Vec<bool>,
    /// Each step's [dependencies](Plan::dependencies), worked out once per run
    /// rather than for every step at every pass.
    needs: Vec<Vec<String>>,
    /// Each step's [reads](Plan::reads): all skipped, the step is skipped too.
    reads: Vec<Vec<String>>,
    /// The loop items started, as `(step, item)`.
    started_items: HashSet<(usize, usize)>,
    running: JoinSet<StepOutcome>,
    /// Each task's unit, and what its tools ask a person meanwhile (kept outside
    /// the task, so a unit that panics loses none of it).
    tasks: HashMap<Id, (Unit, StepQuestions)>,
}

/// Tool-call attempts per loop item in the journal's numbering.
const LOOP_ATTEMPT_STRIDE: u32 = 1 << 16;

/// The value of `$item` or `$index` (or a path inside the item) for the current
/// loop item, `(index, value)`; `None` for any other reference.
fn loop_value(current: Option<(usize, &Value)>, reference: &str) -> Option<Value> {
    let (index, value) = current?;
    let reference = Reference::parse(reference)?;
    match reference.name.as_str() {
        ITEM => reference.select(value),
        INDEX => reference.path.is_empty().then(|| Value::from(index)),
        _ => None,
    }
}

/// The items loop step `index` runs over.
pub(super) fn loop_list(plan: &Plan, workflow: &Workflow, index: usize) -> std::result::Result<Vec<Value>, Failure> {
    let list = plan.steps[index].for_each.as_deref().unwrap_or_default().trim();
    let list_value = match workflow.outputs().step_outputs.resolve(list) {
        // A text output that holds JSON is read as that JSON, as a path into it is.
        Some(Value::String(text)) => crate::text::json_in(&text).filter(Value::is_array).or(Some(Value::String(text))),
        other => other,
    };
    match list_value {
        Some(Value::Array(items)) => Ok(items),
        Some(Value::Null) => Ok(Vec::new()),
        Some(other) => {
            let kind = match other {
                Value::Object(_) => "an object",
                Value::String(_) => "a string",
                _ => "a single value",
            };
            let message = format!("step {index} loops over {list}, which is {kind}, not a list");
            Err(Failure::new(FailureKind::InvalidStep, message))
        }
        None => {
            Err(Failure::new(FailureKind::InvalidStep, format!("step {index} loops over {list}, which has no value")))
        }
    }
}

/// The exit step a stored workflow has already run, if any (a resumed run ends
/// there too).
fn exit_taken(plan: &Plan, workflow: &Workflow) -> Option<(usize, Exit)> {
    plan.steps.iter().enumerate().find_map(|(index, step)| {
        let output = workflow.outputs().step_outputs.get(&step.output).filter(|o| o.skipped.is_none())?;
        Some((index, step.exit.as_ref()?.with_message(crate::text::render_value(&output.value))))
    })
}

/// A step task that panicked (or was aborted) fails its step with the reason.
fn task_failure(error: tokio::task::JoinError) -> StepOutcome {
    let failure = if error.is_panic() {
        let panic = error.into_panic();
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        Failure::new(FailureKind::Panic, format!("the step panicked: {message}"))
    } else {
        Failure::new(FailureKind::Other, format!("the step was stopped: {error}"))
    };
    StepOutcome::Failed(failure)
}
