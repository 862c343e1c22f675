//! The LLM a run's steps use: every call's usage is journaled as it is spent (so
//! `usage` stays exact across crashes) and counted in the run's tally; a stopped run
//! makes no new call.

use std::sync::{Arc, Mutex, PoisonError};

use crate::agent::{Stop, StopSignal, describe_stop};
use crate::llm::{LlmClient, LlmError, LlmRequest, LlmResponse, Usage};
use crate::storage::{Lease, Storage, UsageRecord};
use crate::workflow::WorkflowUsage;

/// The run's usage so far, shared by its metered clients.
#[derive(Debug, Clone)]
pub(super) struct Meter {
    storage: Arc<dyn Storage>,
    lease: Lease,
    signal: StopSignal,
    tally: Arc<Mutex<WorkflowUsage>>,
}

impl Meter {
    pub(super) fn new(storage: Arc<dyn Storage>, lease: Lease, signal: StopSignal, start: WorkflowUsage) -> Self {
        Self { storage, lease, signal, tally: Arc::new(Mutex::new(start)) }
    }

    /// A client that bills `step_output` (or, with `None`, the run itself).
    pub(super) fn client(&self, inner: Arc<dyn LlmClient>, step_output: Option<&str>) -> Arc<dyn LlmClient> {
        Arc::new(MeteredLlm { inner, meter: self.clone(), step_output: step_output.map(str::to_owned) })
    }

    /// Everything spent so far, planning included.
    pub(super) fn usage(&self) -> WorkflowUsage {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    async fn record(&self, step_output: Option<&str>, usage: Usage) {
        let record =
            UsageRecord { workflow_id: self.lease.workflow_id, step_output: step_output.map(str::to_owned), usage };
        self.tally.lock().unwrap_or_else(PoisonError::into_inner).add(step_output, usage);
        match self.storage.record_usage(&self.lease, &record).await {
            Ok(()) => {}
            Err(crate::Error::LeaseLost { .. }) => self.signal.stop(Stop::LeaseLost),
            Err(e) => tracing::warn!(workflow = %self.lease.workflow_id, error = %e, "could not journal LLM usage"),
        }
    }
}

#[derive(Debug)]
struct MeteredLlm {
    inner: Arc<dyn LlmClient>,
    meter: Meter,
    step_output: Option<String>,
}

#[async_trait::async_trait]
impl LlmClient for MeteredLlm {
    async fn chat(&self, request: LlmRequest) -> Result<LlmResponse, LlmError> {
        if let Some(stop) = self.meter.signal.reason() {
            return Err(LlmError::Other(describe_stop(&stop)));
        }
        let response = self.inner.chat(request).await?;
        self.meter.record(self.step_output.as_deref(), response.usage).await;
        Ok(response)
    }
}
