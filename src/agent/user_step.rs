//! User steps: the step's task is a question for a person, and the answer is its output.

use serde_json::json;

use super::{StepContext, StepOutcome};
use crate::clarification::Clarification;
use crate::plan::AskUser;
use crate::workflow::Output;

/// The answer to the step's question once a person gave it; until then, the question.
pub(crate) fn ask_user(ctx: &StepContext, ask: &AskUser) -> StepOutcome {
    let name = match ctx.loop_item {
        Some(item) => format!("{}[{item}]", ctx.step.output),
        None => ctx.step.output.clone(),
    };
    let answered = ctx.clarifications.iter().find(|c| c.resolved && c.argument_name() == Some(name.as_str()));
    if let Some(answer) = answered.and_then(|c| c.response.clone()) {
        return StepOutcome::Output(Output::new(answer));
    }
    let question = ctx.step.task.clone();
    let clarification = match ask {
        AskUser::Choice { options } => Clarification::multiple_choice(ctx.workflow_id, name, options.clone(), question),
        AskUser::Confirm => {
            Clarification::multiple_choice(ctx.workflow_id, name, vec![json!(true), json!(false)], question)
        }
        AskUser::Input => Clarification::input(ctx.workflow_id, name, question),
    };
    StepOutcome::Clarifications(vec![clarification])
}
