//! [`WorkflowState`]: where a workflow is in its life.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a workflow is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum WorkflowState {
    /// Created, not yet executed.
    NotStarted,
    /// Steps are running.
    InProgress,
    /// Waiting for a human to resolve clarifications.
    NeedClarification,
    /// Every clarification is resolved; execute it again to go on.
    ReadyToResume,
    /// Every step ran; the final output is set.
    Complete,
    /// A step failed or the run was cancelled; see [`Workflow::failure`](crate::Workflow::failure).
    Failed,
}

impl WorkflowState {
    /// Every state, in lifecycle order.
    pub const ALL: [Self; 6] = [
        Self::NotStarted,
        Self::InProgress,
        Self::NeedClarification,
        Self::ReadyToResume,
        Self::Complete,
        Self::Failed,
    ];

    /// Whether the workflow can never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Complete | Self::Failed)
    }

    /// Whether a worker may run a workflow in this state: it is not finished and
    /// not waiting for a human.
    pub fn is_runnable(self) -> bool {
        matches!(self, Self::NotStarted | Self::InProgress | Self::ReadyToResume)
    }

    /// Whether moving from `self` to `next` is allowed.
    pub fn can_transition_to(self, next: Self) -> bool {
        use WorkflowState::*;
        match (self, next) {
            (Complete | Failed, _) => false,
            (_, Failed) => true,
            (NotStarted | ReadyToResume, InProgress) => true,
            (InProgress, NeedClarification | Complete) => true,
            (NeedClarification, ReadyToResume) => true,
            _ => false,
        }
    }

    /// The name used in JSON, such as `NEED_CLARIFICATION`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "NOT_STARTED",
            Self::InProgress => "IN_PROGRESS",
            Self::NeedClarification => "NEED_CLARIFICATION",
            Self::ReadyToResume => "READY_TO_RESUME",
            Self::Complete => "COMPLETE",
            Self::Failed => "FAILED",
        }
    }
}

impl fmt::Display for WorkflowState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
