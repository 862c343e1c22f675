//! The inputs a top-level workflow is given: checked against its plan's declared
//! [`inputs`](crate::Plan::inputs) before the workflow is stored.

use serde_json::{Map, Value};

use crate::plan::Plan;
use crate::{Error, Result};

/// The values given for a workflow's inputs, by name (with or without the `$`).
pub(super) type Inputs = Map<String, Value>;

/// Refuses `given` when an input without a default is missing from it, or when it
/// names an input the plan does not declare.
pub(super) fn check(plan: &Plan, given: &Inputs) -> Result<()> {
    let bare = |name: &str| name.trim_start_matches('$').to_owned();
    let declared: Vec<String> = plan.inputs.iter().map(|input| bare(&input.name)).collect();
    let missing = plan
        .inputs
        .iter()
        .filter(|input| input.value.is_none())
        .map(|input| bare(&input.name))
        .filter(|name| !given.keys().any(|key| bare(key) == *name))
        .collect::<Vec<_>>();
    let unknown = given.keys().filter(|key| !declared.contains(&bare(key))).cloned().collect::<Vec<_>>();
    if missing.is_empty() && unknown.is_empty() {
        return Ok(());
    }
    Err(Error::PlanInputs { plan_id: plan.id, missing, unknown, declared })
}
