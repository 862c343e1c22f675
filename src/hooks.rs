//! Hooks: code of yours that runs at each moment of a run, and can stand between
//! the model and a tool.
//!
//! Implement [`Hooks`] (every method is a no-op by default) and add it with
//! [`RunnerBuilder::hook`](crate::runner::RunnerBuilder::hook); several hooks run in
//! the order they were added. Before a tool call, a hook decides: go ahead, go ahead
//! with other arguments, ask a human first, or refuse. [`ApprovalGate`] is a ready-made
//! hook that asks a human before the tools you name, or before every tool with side
//! effects.
//!
//! A hook that returns an error fails its step (or its workflow) with
//! [`FailureKind::Hook`](crate::workflow::FailureKind); one that panics fails its step
//! as a panic. Neither ever hangs the run.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::agent::StepContext;
use crate::call::ToolCallKey;
use crate::clarification::{Clarification, ClarificationKind};
use crate::execution_context::ExecutionContext;
use crate::storage::ToolCallRecord;
use crate::tool::{ToolError, ToolOutput, ToolSpec};
use crate::workflow::StepOutcome;
use crate::workflow::{Output, Workflow};

/// A hook failed; the message says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HookError(pub String);

impl HookError {
    /// A hook error with this message.
    pub fn new(message: impl fmt::Display) -> Self {
        Self(message.to_string())
    }
}

/// Whether a step runs.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StepDecision {
    /// Run it.
    Run,
    /// Do not run it; this is its output.
    Skip(Output),
}

/// What happens to a tool call.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ToolCallDecision {
    /// Make it as it is.
    Proceed,
    /// Make it with these arguments instead.
    ProceedWith(Value),
    /// Ask a human first; the step waits for the answer, then the hook decides again.
    Ask(Box<Clarification>),
    /// Do not make it: the step fails as denied, with this reason.
    Deny(String),
}

/// A tool call about to be made.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ToolCallRequest<'a> {
    /// The tool.
    pub spec: &'a ToolSpec,
    /// The arguments it would be called with.
    pub arguments: &'a Value,
    /// Which call this is (the same key when the call is decided again after a question).
    pub call: ToolCallKey,
    /// Every clarification of the step, with the answers given so far.
    pub clarifications: &'a [Clarification],
    /// Who the workflow runs for.
    pub execution_context: &'a ExecutionContext,
    /// The call of an earlier attempt of the step that this one makes anew: each
    /// question a tool asks ends an attempt of its step, and after the answer the
    /// step makes that call again. Set when this call has the same tool and
    /// arguments as the call whose tool asked, and is the first call of the
    /// attempt that does; `None` otherwise.
    pub remakes: Option<&'a ToolCallRecord>,
}

/// Code that runs at each moment of a run. Every method does nothing by default.
#[async_trait::async_trait]
pub trait Hooks: Send + Sync + fmt::Debug {
    /// Before a run of `workflow` starts (its first, or a resumption).
    async fn before_workflow(&self, _workflow: &Workflow) -> Result<(), HookError> {
        Ok(())
    }
    /// After a run of `workflow` ends: COMPLETE, FAILED, or waiting for a human.
    /// The workflow is saved and its lease given up by then, so the hook may resume
    /// it or answer its questions; another run of it may also start meanwhile.
    async fn after_workflow(&self, _workflow: &Workflow) -> Result<(), HookError> {
        Ok(())
    }
    /// Before a step runs: run it, or skip it with an output. A sub-plan or block
    /// step is a step too: its hooks run around its whole child workflow, whose own
    /// steps are hooked in turn. Not asked for a step its condition skips, nor for
    /// an exit or user step.
    async fn before_step(&self, _step: &StepContext) -> Result<StepDecision, HookError> {
        Ok(StepDecision::Run)
    }
    /// After a step ends.
    async fn after_step(&self, _step: &StepContext, _outcome: &StepOutcome) -> Result<(), HookError> {
        Ok(())
    }
    /// Before a tool call is made: decide what happens to it. Not asked for a call
    /// whose outcome is replayed from the journal, since that call is not made again.
    async fn before_tool_call(&self, _call: &ToolCallRequest<'_>) -> Result<ToolCallDecision, HookError> {
        Ok(ToolCallDecision::Proceed)
    }
    /// After a tool call returns.
    async fn after_tool_call(
        &self,
        _call: &ToolCallRequest<'_>,
        _result: &Result<ToolOutput, ToolError>,
    ) -> Result<(), HookError> {
        Ok(())
    }
}

/// The hooks of a runner, run in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct HookChain(Vec<Arc<dyn Hooks>>);

impl HookChain {
    pub(crate) fn push(&mut self, hook: Arc<dyn Hooks>) {
        self.0.push(hook);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) async fn before_workflow(&self, workflow: &Workflow) -> Result<(), HookError> {
        for hook in &self.0 {
            hook.before_workflow(workflow).await?;
        }
        Ok(())
    }

    pub(crate) async fn after_workflow(&self, workflow: &Workflow) -> Result<(), HookError> {
        for hook in &self.0 {
            hook.after_workflow(workflow).await?;
        }
        Ok(())
    }

    /// The first hook that skips the step decides.
    pub(crate) async fn before_step(&self, step: &StepContext) -> Result<StepDecision, HookError> {
        for hook in &self.0 {
            if let skip @ StepDecision::Skip(_) = hook.before_step(step).await? {
                return Ok(skip);
            }
        }
        Ok(StepDecision::Run)
    }

    pub(crate) async fn after_step(&self, step: &StepContext, outcome: &StepOutcome) -> Result<(), HookError> {
        for hook in &self.0 {
            hook.after_step(step, outcome).await?;
        }
        Ok(())
    }

    /// Each hook sees the arguments the hooks before it chose; the first that asks
    /// or denies decides. Returns the arguments to call with, or the other decision.
    pub(crate) async fn before_tool_call(&self, request: &ToolCallRequest<'_>) -> Result<ToolCallDecision, HookError> {
        let mut arguments = request.arguments.clone();
        for hook in &self.0 {
            let current = ToolCallRequest { arguments: &arguments, ..*request };
            match hook.before_tool_call(&current).await? {
                ToolCallDecision::Proceed => {}
                ToolCallDecision::ProceedWith(replaced) => arguments = replaced,
                other => return Ok(other),
            }
        }
        Ok(if &arguments == request.arguments {
            ToolCallDecision::Proceed
        } else {
            ToolCallDecision::ProceedWith(arguments)
        })
    }

    pub(crate) async fn after_tool_call(
        &self,
        request: &ToolCallRequest<'_>,
        result: &Result<ToolOutput, ToolError>,
    ) -> Result<(), HookError> {
        for hook in &self.0 {
            hook.after_tool_call(request, result).await?;
        }
        Ok(())
    }
}

/// Asks a human to approve a tool call before it is made: for the tools named, or
/// for every tool whose spec says it has side effects.
///
/// The question is a Value Confirmation clarification holding the arguments. Answer
/// it with the arguments (as shown, or edited), or `true`, to approve: the call is
/// then made with them, with no new model call. Answer `false`, or `{"denied": "why"}`, to
/// refuse: the step fails as denied. Like any clarification, the question and its
/// answer survive a restart. A call approved and made, whose tool then asked a
/// question of its own, is not asked about again when the step makes it anew with
/// the same arguments after the answer (once: see [`ToolCallRequest::remakes`]);
/// with other arguments it is.
#[derive(Debug, Clone, Default)]
pub struct ApprovalGate {
    tools: Option<Vec<String>>,
}

impl ApprovalGate {
    /// A gate before every tool with side effects ([`ToolSpec::side_effects`]).
    pub fn for_side_effects() -> Self {
        Self { tools: None }
    }

    /// A gate before the tools with these ids only.
    pub fn for_tools<I: IntoIterator<Item = S>, S: Into<String>>(ids: I) -> Self {
        Self { tools: Some(ids.into_iter().map(Into::into).collect()) }
    }

    fn guards(&self, spec: &ToolSpec) -> bool {
        match &self.tools {
            Some(ids) => ids.contains(&spec.id),
            None => spec.side_effects,
        }
    }
}

#[async_trait::async_trait]
impl Hooks for ApprovalGate {
    async fn before_tool_call(&self, call: &ToolCallRequest<'_>) -> Result<ToolCallDecision, HookError> {
        if !self.guards(call.spec) {
            return Ok(ToolCallDecision::Proceed);
        }
        if approved_before(call) {
            return Ok(ToolCallDecision::Proceed);
        }
        let answer = call.clarifications.iter().rev().find(|c| c.tool_call == Some(call.call) && is_approval(c));
        Ok(match answer {
            Some(c) if c.resolved => verdict(c.response.clone().unwrap_or(Value::Null)),
            _ => {
                let guidance = format!(
                    "Approve the call of {} with these arguments? Answer with the arguments (as they are, or \
                     edited) to approve, or false to refuse.",
                    call.spec.id
                );
                let argument = format!("{} arguments", call.spec.id);
                ToolCallDecision::Ask(Box::new(Clarification::value_confirmation(
                    call.call.workflow_id,
                    argument,
                    call.arguments.clone(),
                    guidance,
                )))
            }
        })
    }
}

/// Whether an approval question a hook asked of `clarification`'s call.
fn is_approval(clarification: &Clarification) -> bool {
    matches!(clarification.kind, ClarificationKind::ValueConfirmation { .. })
}

/// Whether this call makes anew one a person approved (see
/// [`ToolCallRequest::remakes`]).
fn approved_before(call: &ToolCallRequest<'_>) -> bool {
    let Some(made) = call.remakes else { return false };
    call.clarifications
        .iter()
        .any(|c| c.tool_call == Some(made.key) && is_approval(c) && c.resolved && approves(c.response.as_ref()))
}

/// Whether an answer to an approval question approved the call: yes, or the
/// arguments (edited or not), but not a refusal nor no answer.
fn approves(answer: Option<&Value>) -> bool {
    match answer {
        Some(Value::Bool(yes)) => *yes,
        Some(Value::Object(map)) => !map.contains_key("denied"),
        _ => false,
    }
}

/// What a person's answer to an approval question decides.
fn verdict(response: Value) -> ToolCallDecision {
    match response {
        Value::Bool(true) => ToolCallDecision::Proceed,
        Value::Bool(false) => ToolCallDecision::Deny("a person refused the call".to_owned()),
        Value::Object(map) if map.contains_key("denied") => {
            let reason = map.get("denied").and_then(Value::as_str).unwrap_or("a person refused the call");
            ToolCallDecision::Deny(reason.to_owned())
        }
        approved => ToolCallDecision::ProceedWith(approved),
    }
}
