//! Renders a step's context for the LLM: compact, each value once, nothing escaped.

use std::fmt::Write;

use super::StepContext;
use crate::text::prompt_value;

/// Earlier outputs that are not declared inputs are cut to this many characters.
const OTHER_OUTPUT_LIMIT: usize = 1000;

pub(super) fn render(ctx: &StepContext) -> String {
    let limit = ctx.max_output_chars;
    let mut out = format!("Task: {}\n", ctx.step.task);
    if !ctx.inputs.is_empty() {
        out.push_str("Inputs:\n");
        for input in &ctx.inputs {
            let _ = writeln!(out, "- {} ({}): {}", input.name, input.description, prompt_value(&input.value, limit));
        }
    }
    if !ctx.other_outputs.is_empty() {
        out.push_str("Earlier outputs:\n");
        for (name, value) in &ctx.other_outputs {
            let _ = writeln!(out, "- {name}: {}", prompt_value(value, OTHER_OUTPUT_LIMIT.min(limit)));
        }
    }
    let answers: Vec<_> = ctx.clarifications.iter().filter(|c| c.resolved).collect();
    if !answers.is_empty() {
        out.push_str("The user's answers (these override anything else):\n");
        for c in answers {
            let subject = c.argument_name().unwrap_or(&c.user_guidance);
            let response = c.response.as_ref().map(|r| prompt_value(r, limit)).unwrap_or_default();
            let _ = writeln!(out, "- {subject}: {response}");
        }
    }
    let ec = &ctx.execution_context;
    if ec.end_user_id.is_some() || !ec.additional_data.is_empty() {
        out.push_str("End user:");
        if let Some(id) = &ec.end_user_id {
            let _ = write!(out, " id {id}");
        }
        for (key, value) in &ec.additional_data {
            let _ = write!(out, "; {key}: {value}");
        }
        out.push('\n');
    }
    for line in ec.agent_system_context_extension.iter().flatten() {
        let _ = writeln!(out, "Note: {line}");
    }
    let _ = write!(out, "Today: {}", ctx.today);
    out
}
