//! Wraps each tool a step runs so that every call is recorded in storage.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::storage::{Storage, ToolCallRecord, ToolCallStatus};
use crate::tool::{Tool, ToolError, ToolOutput, ToolRunContext, ToolSpec};

#[derive(Debug)]
pub(super) struct RecordedTool {
    pub(super) inner: Arc<dyn Tool>,
    pub(super) storage: Arc<dyn Storage>,
}

#[async_trait::async_trait]
impl Tool for RecordedTool {
    fn spec(&self) -> ToolSpec {
        self.inner.spec()
    }
    async fn ready(&self, ctx: &ToolRunContext) -> Result<bool, ToolError> {
        self.inner.ready(ctx).await
    }

    async fn run(&self, ctx: &ToolRunContext, args: Value) -> Result<ToolOutput, ToolError> {
        let started = Instant::now();
        let result = self.inner.run(ctx, args.clone()).await;
        let (status, output) = match &result {
            Ok(ToolOutput::Value(value)) => (ToolCallStatus::Success, value.clone()),
            Ok(ToolOutput::Clarifications(list)) => {
                (ToolCallStatus::NeedClarification, serde_json::to_value(list).unwrap_or_default())
            }
            Err(e) => (ToolCallStatus::Failed, Value::String(e.to_string())),
        };
        let record = ToolCallRecord {
            workflow_id: ctx.workflow_id,
            step: ctx.step,
            tool_id: self.inner.spec().id,
            end_user_id: ctx.execution_context.end_user_id.clone(),
            input: args,
            output,
            status,
            latency_seconds: started.elapsed().as_secs_f64(),
        };
        tracing::debug!(tool = %record.tool_id, workflow = %record.workflow_id, status = ?status, "tool called");
        // The tool has already acted: failing to record it must not make it run again.
        if let Err(e) = self.storage.save_tool_call(&record).await {
            tracing::warn!(error = %e, tool = %record.tool_id, "could not save the tool-call record");
        }
        result
    }
}
