//! [`PlanProblem`]: one thing wrong with a plan.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One thing wrong with a plan, as reported by [`Plan::validate`](crate::Plan::validate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PlanProblem {
    /// The plan has no steps, so running it could answer nothing.
    NoSteps,
    /// A step has an empty task.
    EmptyTask {
        /// The step's index.
        step: usize,
    },
    /// Two steps store their output under the same name.
    DuplicateOutput {
        /// The later step's index.
        step: usize,
        /// The repeated name.
        output: String,
    },
    /// A step reads `$name`, which no earlier step produces.
    UnknownInput {
        /// The step's index.
        step: usize,
        /// The input's name.
        input: String,
    },
    /// A step uses a tool the registry does not have.
    UnknownTool {
        /// The step's index.
        step: usize,
        /// The tool id.
        tool_id: String,
    },
    /// A step's output name is not `$` followed by an identifier.
    InvalidOutputName {
        /// The step's index.
        step: usize,
        /// The name given.
        output: String,
    },
    /// A constant input's value is the name of an earlier step's output: it would be
    /// sent as that text, and the step would not wait for the output.
    ConstantNamesOutput {
        /// The step's index.
        step: usize,
        /// The input's name.
        input: String,
        /// The output it names.
        output: String,
    },
    /// A step's arguments are not a JSON object, or the step has no tool to take them.
    InvalidArgs {
        /// The step's index.
        step: usize,
        /// What is wrong.
        reason: String,
    },
    /// A step's arguments refer to `$name`, which no earlier step outputs.
    UnknownArgReference {
        /// The step's index.
        step: usize,
        /// The reference.
        reference: String,
    },
    /// A step's condition refers to `$name`, which no earlier step outputs.
    UnknownConditionReference {
        /// The step's index.
        step: usize,
        /// The reference.
        reference: String,
    },
    /// A step's condition cannot be read: it is empty, or an expression that does
    /// not parse or is too long.
    InvalidCondition {
        /// The step's index.
        step: usize,
        /// What is wrong, and how to fix it.
        reason: String,
    },
    /// A step's task text or exit message refers to `$name`, an output of a later
    /// step: the step would run before it exists.
    ForwardReference {
        /// The step's index.
        step: usize,
        /// The reference.
        reference: String,
    },
    /// The plan's JSON cannot be read as a plan: it does not parse, or a field has
    /// the wrong type.
    NotAPlan {
        /// Why, as the JSON reader says.
        reason: String,
    },
    /// The plan's JSON has a key no field takes: a misspelt `condition` would
    /// silently drop a guard, so it is refused rather than ignored.
    UnknownKey {
        /// Where, as `steps.1.conditon`.
        key: String,
        /// The field it was most likely meant to be.
        suggestion: Option<String>,
    },
    /// An input the plan declares is misnamed or declared twice.
    InvalidPlanInput {
        /// The name given.
        name: String,
        /// What is wrong, and how to fix it.
        reason: String,
    },
    /// An output schema (a step's, or the plan's with `step` `None`) is not a
    /// JSON Schema values can be checked against.
    InvalidOutputSchema {
        /// The step's index; `None` for the plan's own `output_schema`.
        step: Option<usize>,
        /// What is wrong.
        reason: String,
    },
    /// A user step cannot be answered as written (a choice of no options, say).
    InvalidAskUser {
        /// The step's index.
        step: usize,
        /// What is wrong, and how to fix it.
        reason: String,
    },
    /// A step calls a function that is not registered on the runner.
    UnknownFunction {
        /// The step's index.
        step: usize,
        /// The function's name.
        function: String,
    },
    /// A step's `for_each` does not name a list an earlier step outputs.
    InvalidForEach {
        /// The step's index.
        step: usize,
        /// What `for_each` says.
        list: String,
        /// What is wrong.
        reason: String,
    },
    /// A step's `tools` or `max_tool_calls` cannot be used as written.
    InvalidToolList {
        /// The step's index.
        step: usize,
        /// What is wrong.
        reason: String,
    },
    /// A step sets more than one of the fields that each make a kind of step
    /// (`tool_id`, `tools`, `function`, `ask_user`, `exit`, `plan`, `steps`).
    MixedStepKinds {
        /// The step's index.
        step: usize,
        /// The fields it sets.
        kinds: Vec<String>,
    },
    /// A sub-plan step names a plan that is not stored.
    UnknownPlan {
        /// The step's index.
        step: usize,
        /// The plan id it names.
        plan_id: String,
    },
    /// A sub-plan step leads, through the plans it runs, back to a plan already
    /// running: it would never end.
    SubPlanCycle {
        /// The step's index.
        step: usize,
        /// The plan ids on the way round, starting and ending with the same one.
        cycle: Vec<String>,
    },
    /// A reference reaches into a field (or item) that the producing step's
    /// output schema does not have.
    UnknownField {
        /// The index of the step holding the reference.
        step: usize,
        /// The reference, such as `$ticket.urgency`.
        reference: String,
        /// Where the path leaves the schema, and what the schema has there.
        reason: String,
    },
    /// A problem with one of the steps of block step `step`; its own step index
    /// counts within the block. Shown as `step 2, block step 0 reads $x, ...`.
    InBlock {
        /// The block step's index.
        step: usize,
        /// The problem, its step counted within the block.
        inner: Box<PlanProblem>,
    },
}

impl PlanProblem {
    /// The problem `problem`, found at the step `path` leads to: each index but the
    /// last one a block step, the last one the step within the innermost block.
    pub(crate) fn in_blocks(path: &[usize], problem: PlanProblem) -> Self {
        path.iter().rev().fold(problem, |problem, &step| Self::InBlock { step, inner: Box::new(problem) })
    }
}

impl fmt::Display for PlanProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSteps => f.write_str("the plan has no steps"),
            Self::EmptyTask { step } => write!(f, "step {step} has an empty task"),
            Self::DuplicateOutput { step, output } => {
                write!(f, "step {step} reuses the output name {output}; each step needs its own")
            }
            Self::UnknownInput { step, input } => {
                write!(f, "step {step} reads {input}, which no earlier step outputs")
            }
            Self::UnknownTool { step, tool_id } => {
                write!(f, "step {step} uses tool {tool_id:?}, which is not in the tool registry")
            }
            Self::InvalidOutputName { step, output } => {
                write!(
                    f,
                    "step {step} outputs {output:?}; an output name is $ followed by letters, digits or _, such as $result"
                )
            }
            Self::ConstantNamesOutput { step, input, output } => write!(
                f,
                "step {step} gives input {input:?} the constant {output:?}, the name of an earlier output; \
                 declare it as a reference instead (name {output}, no value) so the step reads that output"
            ),
            Self::InvalidArgs { step, reason } => write!(f, "step {step} has invalid arguments: {reason}"),
            Self::InvalidToolList { step, reason } => write!(f, "step {step} has an invalid tool list: {reason}"),
            Self::MixedStepKinds { step, kinds } => write!(
                f,
                "step {step} sets {}; a step can be only one of these kinds, so make them separate steps",
                kinds.join(" and ")
            ),
            Self::UnknownPlan { step, plan_id } => {
                write!(f, "step {step} runs plan {plan_id}, which is not stored; save that plan first")
            }
            Self::SubPlanCycle { step, cycle } => {
                write!(f, "step {step} runs sub-plans in a cycle ({}), which would never end", cycle.join(" -> "))
            }
            Self::UnknownArgReference { step, reference } => {
                write!(f, "step {step}'s arguments refer to {reference}, which no earlier step outputs")
            }
            Self::UnknownConditionReference { step, reference } => {
                write!(f, "step {step}'s condition refers to {reference}, which no earlier step outputs")
            }
            Self::NotAPlan { reason } => write!(f, "the JSON is not a plan: {reason}"),
            Self::UnknownKey { key, suggestion: Some(field) } => {
                write!(f, "the plan has an unknown key `{key}` (did you mean `{field}`?)")
            }
            Self::UnknownKey { key, suggestion: None } => {
                write!(f, "the plan has an unknown key `{key}`; the plan format guide lists the fields")
            }
            Self::InvalidPlanInput { name, reason } => write!(f, "the plan's input {name:?} {reason}"),
            Self::InvalidOutputSchema { step: Some(step), reason } => {
                write!(f, "step {step}'s output_schema is not a valid JSON Schema: {reason}")
            }
            Self::InvalidOutputSchema { step: None, reason } => {
                write!(f, "the plan's output_schema is not a valid JSON Schema: {reason}")
            }
            Self::InvalidAskUser { step, reason } => {
                write!(f, "step {step} asks the user something unanswerable: {reason}")
            }
            Self::InvalidCondition { step, reason } => write!(f, "step {step}'s condition cannot be read: {reason}"),
            Self::ForwardReference { step, reference } => write!(
                f,
                "step {step}'s text refers to {reference}, which a later step outputs; \
                 move that step before it, or drop the reference"
            ),
            Self::UnknownFunction { step, function } => write!(
                f,
                "step {step} calls the function {function:?}, which is not registered on the runner \
                 (RunnerBuilder::function)"
            ),
            Self::InvalidForEach { step, list, reason } => {
                write!(f, "step {step} loops over {list:?}, which does not work: {reason}")
            }
            Self::InBlock { step, inner } => {
                let inner = inner.to_string();
                match inner.strip_prefix("step ") {
                    Some(rest) => write!(f, "step {step}, block step {rest}"),
                    None => write!(f, "step {step}'s block: {inner}"),
                }
            }
            Self::UnknownField { step, reference, reason } => write!(
                f,
                "step {step} refers to {reference}, but the output schema of the step producing it has no {reason}"
            ),
        }
    }
}
