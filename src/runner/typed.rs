//! Typed results: a workflow with its final output read as a Rust type.

use serde::de::DeserializeOwned;

use crate::workflow::{Workflow, WorkflowState};
use crate::{Error, Result};

/// A workflow at rest, with its final output read as `T`: what
/// [`Runner::run_plan_as`](super::Runner::run_plan_as) and
/// [`Runner::execute_query_as`](super::Runner::execute_query_as) return.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TypedWorkflow<T> {
    /// The workflow, as it came to rest.
    pub workflow: Workflow,
    /// The final output as `T`: `Some` exactly when the workflow is COMPLETE.
    pub output: Option<T>,
}

impl<T: DeserializeOwned> TypedWorkflow<T> {
    /// Reads `workflow`'s final output as `T`: for a workflow run on after a pause
    /// (answered clarifications, say) with [`Runner::execute_workflow`](super::Runner::execute_workflow).
    ///
    /// # Errors
    /// [`Error::TypedOutput`] when the workflow is COMPLETE but its output does not
    /// deserialize into `T` (a plan schema looser than `T`, say).
    pub fn from_workflow(workflow: Workflow) -> Result<Self> {
        if workflow.state() != WorkflowState::Complete {
            return Ok(Self { workflow, output: None });
        }
        let value = workflow.outputs().final_output.as_ref().map(|o| o.value.clone()).unwrap_or_default();
        let output = T::deserialize(&*value).map_err(|e| Error::TypedOutput {
            workflow_id: workflow.id(),
            message: format!("its final output does not deserialize into {}: {e}", std::any::type_name::<T>()),
        })?;
        Ok(Self { workflow, output: Some(output) })
    }
}

impl<T> TypedWorkflow<T> {
    /// The typed output.
    ///
    /// # Errors
    /// [`Error::TypedOutput`] naming the workflow's state (and failure) when it did
    /// not complete.
    pub fn into_output(self) -> Result<T> {
        let Self { workflow, output } = self;
        output.ok_or_else(|| {
            let why = workflow.failure().map(|f| format!(": {f}")).unwrap_or_default();
            Error::TypedOutput { workflow_id: workflow.id(), message: format!("it is {}{why}", workflow.state()) }
        })
    }
}
