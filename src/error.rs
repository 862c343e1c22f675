//! The crate's error type.
//!
//! Every fallible public function returns [`Result<T>`]. [`Error`] is an enum you
//! can match on; each variant's message says what was wrong and how to fix it.

use std::path::PathBuf;

use crate::ids::{ClarificationId, IdParseError, PlanId, WorkflowId};
use crate::llm::LlmError;
use crate::plan::PlanProblem;
use crate::workflow::WorkflowState;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `portia`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is missing or invalid.
    #[error("invalid configuration `{setting}`: {message}")]
    InvalidConfig {
        /// The setting (or environment variable) at fault.
        setting: String,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// An API key the chosen provider or tool needs is not set.
    #[error("missing API key for {service}: set the environment variable {env_var}")]
    MissingApiKey {
        /// What needs the key (`OpenAI`, `Tavily`, ...).
        service: String,
        /// The environment variable that provides it.
        env_var: String,
    },

    /// A string is not a valid id.
    #[error(transparent)]
    InvalidId(#[from] IdParseError),

    /// A plan failed [`Plan::validate`](crate::Plan::validate).
    #[error("the plan is invalid: {}", join_problems(.0))]
    InvalidPlan(Vec<PlanProblem>),

    /// The planner could not produce a valid plan.
    #[error("planning failed: {0}")]
    Planning(String),

    /// An operation is not allowed in the workflow's current state.
    #[error("workflow {workflow_id}: cannot {action} while it is {state}")]
    InvalidWorkflowState {
        /// The workflow concerned.
        workflow_id: WorkflowId,
        /// The state it is in.
        state: WorkflowState,
        /// What was attempted (for example "move to COMPLETE" or "execute it").
        action: String,
    },

    /// The workflow is already being executed by this runner (or a clone of it).
    #[error("workflow {0} is already running on this runner; wait for that run to end")]
    AlreadyRunning(WorkflowId),

    /// No plan with this id is stored.
    #[error("plan {0} not found in storage")]
    PlanNotFound(PlanId),

    /// No workflow with this id is stored.
    #[error("workflow {0} not found in storage")]
    WorkflowNotFound(WorkflowId),

    /// No clarification with this id belongs to the workflow.
    #[error("clarification {clarification_id} does not belong to workflow {workflow_id}")]
    ClarificationNotFound {
        /// The workflow searched.
        workflow_id: WorkflowId,
        /// The clarification asked for.
        clarification_id: ClarificationId,
    },

    /// A response does not answer the clarification (for example a choice outside the options).
    #[error("invalid response to clarification {clarification_id}: {message}")]
    InvalidClarificationResponse {
        /// The clarification being resolved.
        clarification_id: ClarificationId,
        /// Why the response was refused.
        message: String,
    },

    /// No tool with this id is registered.
    #[error("tool {0:?} not found in the tool registry")]
    ToolNotFound(String),

    /// A tool id is registered twice.
    #[error("tool {0:?} is already registered")]
    DuplicateTool(String),

    /// A tool's `ready` check failed while waiting for an action.
    #[error("tool {tool_id} failed: {message}")]
    Tool {
        /// The tool concerned.
        tool_id: String,
        /// What it reported.
        message: String,
    },

    /// Waiting for a workflow to become ready took too long.
    #[error("workflow {0} was not ready before the wait timed out")]
    NotReady(WorkflowId),

    /// A call to an LLM failed.
    #[error(transparent)]
    Llm(#[from] LlmError),

    /// Reading or writing stored state failed.
    #[error("storage error{}: {message}", .path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Storage {
        /// The file concerned, for disk storage.
        path: Option<PathBuf>,
        /// What went wrong.
        message: String,
    },
}

impl Error {
    pub(crate) fn invalid_config(setting: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidConfig { setting: setting.into(), message: message.into() }
    }

    pub(crate) fn storage(path: Option<PathBuf>, message: impl std::fmt::Display) -> Self {
        Self::Storage { path, message: message.to_string() }
    }
}

fn join_problems(problems: &[PlanProblem]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}
