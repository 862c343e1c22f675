//! The names of a tool call and of where it stands: the vocabulary the journal,
//! events, hooks and clarifications share.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::WorkflowId;

/// Names one tool call: the workflow, the step, the step's attempt (a step resumed
/// after a clarification is a new attempt) and the call's place in that attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ToolCallKey {
    /// The workflow making the call.
    pub workflow_id: WorkflowId,
    /// The step making it.
    pub step: usize,
    /// The step's attempt, from 0.
    pub attempt: u32,
    /// The call's sequence number within the attempt, from 0.
    pub seq: u32,
}

impl ToolCallKey {
    /// Call `seq` of attempt `attempt` of step `step` of `workflow_id`.
    pub fn new(workflow_id: WorkflowId, step: usize, attempt: u32, seq: u32) -> Self {
        Self { workflow_id, step, attempt, seq }
    }
}

impl fmt::Display for ToolCallKey {
    /// The idempotency key tools see: the same for every try of one call.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:step-{}:attempt-{}:call-{}", self.workflow_id, self.step, self.attempt, self.seq)
    }
}

/// Where a journaled tool call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum ToolCallStatus {
    /// The call waits for a decision (a hook's, or a person's at an approval gate);
    /// it has not been made.
    Held,
    /// The intent is stored and the tool may have been called; no outcome is known.
    Started,
    /// The tool returned a value (or a person confirmed the call took effect).
    Success,
    /// The tool asked for clarifications.
    NeedClarification,
    /// The tool failed in a way the model may fix with other arguments.
    SoftError,
    /// The tool failed for good.
    HardError,
}

impl ToolCallStatus {
    /// The name used in JSON and in the databases, such as `SOFT_ERROR`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "HELD",
            Self::Started => "STARTED",
            Self::Success => "SUCCESS",
            Self::NeedClarification => "NEED_CLARIFICATION",
            Self::SoftError => "SOFT_ERROR",
            Self::HardError => "HARD_ERROR",
        }
    }

    /// Parses [`ToolCallStatus::as_str`]'s names.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Held, Self::Started, Self::Success, Self::NeedClarification, Self::SoftError, Self::HardError]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}
