//! The tool-call journal: an intent is stored before a tool is called, and the
//! outcome after it returns, so a resumed run never repeats a finished call and
//! never silently repeats one whose outcome is unknown. LLM usage is journaled as
//! it is spent, so a workflow's usage stays exact across crashes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::SharedValue;
pub use crate::call::{ToolCallKey, ToolCallStatus};
use crate::clarification::Clarification;
use crate::ids::WorkflowId;
use crate::tool::{ToolError, ToolOutput};
use crate::usage::Usage;

/// One journaled tool call: its intent, and its outcome once known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ToolCallRecord {
    /// Which call this is.
    #[serde(flatten)]
    pub key: ToolCallKey,
    /// The tool called.
    pub tool_id: String,
    /// The end user the workflow runs for.
    pub end_user_id: Option<String>,
    /// The arguments chosen, stored before the call (shared with the
    /// [`ToolCallStarted`](crate::runner::EventKind::ToolCallStarted) event, not copied).
    pub input: SharedValue,
    /// Where the call stands.
    pub status: ToolCallStatus,
    /// The value, the clarifications, or the error message; null while STARTED.
    pub output: SharedValue,
    /// When the intent was stored.
    pub started_at: DateTime<Utc>,
    /// How long the tool took, in seconds, once it returned.
    pub latency_seconds: Option<f64>,
}

impl ToolCallRecord {
    /// The intent to call `tool_id` with `input`.
    pub fn intent(key: ToolCallKey, tool_id: &str, end_user_id: Option<String>, input: impl Into<SharedValue>) -> Self {
        Self {
            key,
            tool_id: tool_id.to_owned(),
            end_user_id,
            input: input.into(),
            status: ToolCallStatus::Started,
            output: SharedValue::default(),
            started_at: Utc::now(),
            latency_seconds: None,
        }
    }

    /// This call with `result` as its outcome.
    #[must_use]
    pub fn finished(mut self, result: &Result<ToolOutput, ToolError>, latency_seconds: f64) -> Self {
        let (status, output) = match result {
            Ok(ToolOutput::Value(value)) => (ToolCallStatus::Success, value.clone()),
            Ok(ToolOutput::Clarifications(list)) => {
                (ToolCallStatus::NeedClarification, serde_json::to_value(list).unwrap_or_default().into())
            }
            Err(ToolError::Soft(message) | ToolError::Transient { message, .. }) => {
                (ToolCallStatus::SoftError, Value::from(message.as_str()).into())
            }
            Err(ToolError::Hard(message)) => (ToolCallStatus::HardError, Value::from(message.as_str()).into()),
            Err(other) => (ToolCallStatus::HardError, Value::from(other.to_string()).into()),
        };
        self.status = status;
        self.output = output;
        self.latency_seconds = Some(latency_seconds);
        self
    }

    /// The recorded outcome as the tool returned it; `None` while HELD or STARTED.
    pub fn outcome(&self) -> Option<Result<ToolOutput, ToolError>> {
        let message = || self.output.as_str().map_or_else(|| self.output.to_string(), str::to_owned);
        Some(match self.status {
            ToolCallStatus::Held | ToolCallStatus::Started => return None,
            ToolCallStatus::Success => Ok(ToolOutput::Value(self.output.clone())),
            ToolCallStatus::NeedClarification => {
                let list = Vec::<Clarification>::deserialize(&*self.output).unwrap_or_default();
                Ok(ToolOutput::Clarifications(list))
            }
            ToolCallStatus::SoftError => Err(ToolError::Soft(message())),
            ToolCallStatus::HardError => Err(ToolError::Hard(message())),
        })
    }
}

/// LLM usage spent by a workflow, journaled as it is spent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UsageRecord {
    /// The workflow that spent it.
    pub workflow_id: WorkflowId,
    /// The output name of the step that spent it; `None` for the run itself (the final summary).
    pub step_output: Option<String>,
    /// What was spent.
    pub usage: Usage,
    /// What it cost, in US dollars.
    #[serde(default)]
    pub cost_usd: f64,
}

impl UsageRecord {
    /// `usage`, costing `cost_usd`, spent by `workflow_id` in the step that outputs
    /// `step_output` (`None` for the run itself).
    pub fn new(workflow_id: WorkflowId, step_output: Option<String>, usage: Usage, cost_usd: f64) -> Self {
        Self { workflow_id, step_output, usage, cost_usd }
    }
}
