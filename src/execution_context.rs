//! Who a workflow runs for, and extra instructions for the planner and agents.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Context passed explicitly to planning and execution, and stored on each workflow.
///
/// There is no global or task-local context: give one to
/// [`GeneratePlan::execution_context`](crate::runner::GeneratePlan::execution_context) or set it on the
/// workflow, and a resumed workflow keeps using the one it was stored with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ExecutionContext {
    /// The end user the workflow acts for, if any.
    pub end_user_id: Option<String>,
    /// Free key/value metadata about the end user or the request.
    pub additional_data: BTreeMap<String, String>,
    /// Lines appended to the planner's system context.
    pub planner_system_context_extension: Option<Vec<String>>,
    /// Lines appended to every execution agent's system context.
    pub agent_system_context_extension: Option<Vec<String>>,
}

impl ExecutionContext {
    /// A context for the given end user.
    #[must_use]
    pub fn for_end_user(end_user_id: impl Into<String>) -> Self {
        Self { end_user_id: Some(end_user_id.into()), ..Self::default() }
    }

    /// Adds one `key: value` pair of metadata.
    #[must_use]
    pub fn with_data(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.additional_data.insert(key.into(), value.into());
        self
    }

    /// Adds a line to the planner's system context.
    #[must_use]
    pub fn with_planner_instruction(mut self, line: impl Into<String>) -> Self {
        self.planner_system_context_extension.get_or_insert_with(Vec::new).push(line.into());
        self
    }

    /// Adds a line to every agent's system context.
    #[must_use]
    pub fn with_agent_instruction(mut self, line: impl Into<String>) -> Self {
        self.agent_system_context_extension.get_or_insert_with(Vec::new).push(line.into());
        self
    }
}
