//! The crate's error type.
//!
//! Every fallible public function returns [`Result<T>`]. [`Error`] is an enum you
//! can match on; each variant's message says what was wrong and how to fix it.

use std::path::PathBuf;

mod llm;
#[cfg(feature = "mcp")]
mod mcp;
mod plan;

pub use llm::LlmError;
#[cfg(feature = "mcp")]
pub use mcp::McpError;
pub use plan::PlanProblem;

use crate::ids::{ClarificationId, IdParseError, PlanId, WorkflowId};
use crate::state::WorkflowState;

/// `error` and each of its causes, as `error: cause: cause`, on one line. A cause
/// already said (hyper repeats its cause in its own message) is not said again.
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text.replace('\n', " ")
}

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

    /// An MCP server could not be configured, started or reached (feature `mcp`).
    #[cfg(feature = "mcp")]
    #[error(transparent)]
    Mcp(#[from] McpError),

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

    /// The inputs given to a workflow do not fit its plan's [`inputs`](crate::Plan::inputs):
    /// one without a default was not given, or one given is not the plan's.
    #[error("{}", describe_inputs(*.plan_id, .missing, .unknown, .declared))]
    PlanInputs {
        /// The plan.
        plan_id: PlanId,
        /// The inputs it needs that were not given (without the `$`).
        missing: Vec<String>,
        /// The names given that are none of its inputs.
        unknown: Vec<String>,
        /// Every input it declares (without the `$`).
        declared: Vec<String>,
    },

    /// The planner could not produce a valid plan.
    #[error("planning failed: {message}{}", if .problems.is_empty() { String::new() } else { format!(": {}", join_problems(.problems)) })]
    Planning {
        /// What went wrong.
        message: String,
        /// The problems of the last plan the planner proposed, if it proposed one.
        problems: Vec<PlanProblem>,
    },

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

    /// Another run (in this process or another) holds the workflow's lease.
    #[error(
        "workflow {workflow_id} is being run by {owner} (its lease runs until {until}); wait for that run to end, or cancel it"
    )]
    AlreadyRunning {
        /// The workflow concerned.
        workflow_id: WorkflowId,
        /// Who holds the lease.
        owner: String,
        /// When the lease lapses unless its run renews it.
        until: chrono::DateTime<chrono::Utc>,
    },

    /// A run's lease on the workflow expired or was taken over; the write was refused.
    #[error(
        "the run of workflow {workflow_id} lost its lease (it expired or another run took the workflow over); nothing more was written"
    )]
    LeaseLost {
        /// The workflow concerned.
        workflow_id: WorkflowId,
    },

    /// A save named a version that is no longer the stored one.
    #[error(
        "workflow {workflow_id} changed meanwhile: the save expected stored version {expected}, found {found}; load it again"
    )]
    VersionConflict {
        /// The workflow concerned.
        workflow_id: WorkflowId,
        /// The version the save meant to replace.
        expected: u64,
        /// The version stored (0 when none is stored).
        found: u64,
    },

    /// No plan with this id is stored.
    #[error("plan {0} not found in storage")]
    PlanNotFound(PlanId),

    /// Another plan is stored under this plan's id. A plan's id names one plan: a
    /// changed plan needs an id of its own, or none (one is then made).
    #[error(
        "plan {0} is already stored with other content; a changed plan needs a new id (leave `id` out and one is made)"
    )]
    PlanIdTaken(PlanId),

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

    /// A workflow did not come to rest before the wait timed out.
    #[error(
        "workflow {workflow_id} was still {state} when the wait timed out; wait longer, or check that a worker is running"
    )]
    WaitTimedOut {
        /// The workflow waited for.
        workflow_id: WorkflowId,
        /// The state it was in.
        state: WorkflowState,
    },

    /// Waiting for a workflow to become ready took too long.
    #[error("workflow {0} was not ready before the wait timed out")]
    NotReady(WorkflowId),

    /// A call to an LLM failed.
    #[error(transparent)]
    Llm(#[from] LlmError),

    /// The query to plan is empty or only whitespace: there is nothing to plan, and
    /// no model is asked.
    #[error("the query is empty: say in words what the plan should achieve")]
    EmptyQuery,

    /// A workflow's final output could not be read as the type asked for: the
    /// workflow did not complete, or its output does not deserialize into it.
    #[error("workflow {workflow_id} has no typed output: {message}")]
    TypedOutput {
        /// The workflow concerned.
        workflow_id: WorkflowId,
        /// Why, and what to look at.
        message: String,
    },

    /// A file could not be written (a recording, say): its disk is full, or its
    /// directory cannot be made or written to. Not a setting to fix: the same path
    /// works once there is room.
    #[error("cannot {action} {}", .path.display())]
    Io {
        /// What was being done, as `write the recording`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// Reading or writing stored state failed.
    #[error("storage error{}: {message}", .path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Storage {
        /// The file concerned, for file-backed stores.
        path: Option<PathBuf>,
        /// What went wrong.
        message: String,
        /// The underlying error, if there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// A stored value cannot be read as this version of portia reads it: its row was
    /// edited by hand, cut short, or written by another version. (Rarely, a value
    /// cannot be encoded to be stored.) Unlike [`Error::Storage`], trying again does
    /// not help: the row must be fixed, restored from a backup, or deleted. A worker
    /// sets a workflow that meets this aside (see
    /// [`LeaseQueue::set_aside`](crate::storage::LeaseQueue::set_aside)) and goes on
    /// with the others.
    #[error("storage error{}: {message}", .path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Unreadable {
        /// The file concerned, for file-backed stores.
        path: Option<PathBuf>,
        /// Which value, and why.
        message: String,
        /// The parser's error, if there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// The database file this process opened was deleted or replaced under it: its
    /// writes would go to a file no other process sees. The process must open the
    /// store again (a worker stops, so that its supervisor restarts it).
    #[error(
        "storage error in {}: the database file was {what} while this process had it open, so its writes would \
         be lost; restart the process (or open the store again) to use the file now at this path",
        .path.display()
    )]
    StoreFileChanged {
        /// The database file.
        path: PathBuf,
        /// `deleted`, or `replaced by another file`.
        what: String,
    },

    /// The database was written by a newer version of this crate.
    #[error("the database{} has schema version {found}, newer than {supported}, the newest this version of portia knows; upgrade portia or use another database", .path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    SchemaTooNew {
        /// The database file, for SQLite.
        path: Option<PathBuf>,
        /// The schema version found.
        found: u32,
        /// The newest schema version this build supports.
        supported: u32,
    },
}

impl Error {
    pub(crate) fn invalid_config(setting: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidConfig { setting: setting.into(), message: message.into() }
    }

    /// A storage error caused by `source`, described by `message`. The cause is
    /// [`std::error::Error::source`], not repeated in the message.
    pub(crate) fn storage_source(
        path: Option<PathBuf>,
        message: impl std::fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Storage { path, message: message.to_string(), source: Some(Box::new(source)) }
    }

    /// A planning error without a proposed plan's problems.
    pub(crate) fn planning(message: impl Into<String>) -> Self {
        Self::Planning { message: message.into(), problems: Vec::new() }
    }
}

/// What is wrong with a workflow's inputs, and how to give them on each surface.
fn describe_inputs(plan_id: PlanId, missing: &[String], unknown: &[String], declared: &[String]) -> String {
    let mut parts = Vec::new();
    for name in missing {
        parts.push(format!(
            "plan {plan_id} needs the input `{name}`, which has no default: give it a value \
             (`--input {name}=VALUE` on the command line, `\"inputs\": {{\"{name}\": VALUE}}` over HTTP, \
             `.input(\"{name}\", VALUE)` in Rust)"
        ));
    }
    for name in unknown {
        let known = if declared.is_empty() {
            "it takes none".to_owned()
        } else {
            format!("its inputs: {}", declared.join(", "))
        };
        parts.push(format!("plan {plan_id} has no input `{name}` ({known})"));
    }
    parts.join("; ")
}

fn join_problems(problems: &[PlanProblem]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_storage_cause_is_the_source_and_is_not_repeated_in_the_message() {
        let cause = std::io::Error::other("disk full");
        let error = Error::storage_source(Some("portia.db".into()), "cannot save workflow", cause);
        assert_eq!(error.to_string(), "storage error in portia.db: cannot save workflow");
        assert_eq!(error.source().map(ToString::to_string).as_deref(), Some("disk full"));
    }
}
