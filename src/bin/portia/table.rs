//! Plain-text tables for people: workflows, one workflow's steps, the tools.

use std::fmt::Write;

use portia::storage::SetAside;
use portia::tool::ToolRegistry;
use portia::{Plan, Workflow};
use serde_json::{Value, json};

const VALUE_WIDTH: usize = 60;

/// Cuts `text` to `width` characters on one line, with `…` when cut.
fn clip(text: &str, width: usize) -> String {
    let line = text.replace('\n', " ");
    if line.chars().count() <= width {
        return line;
    }
    let mut cut: String = line.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Rows padded into columns, two spaces apart.
fn columns(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

/// One row per workflow: id, state, current step, query; then why each one set
/// aside is, and the rows that do not parse.
pub(crate) fn workflows(rows: &[(&Workflow, String)], aside: &[SetAside], unreadable: &[String]) -> String {
    let mut table = vec![vec!["ID".to_owned(), "STATE".to_owned(), "STEP".to_owned(), "QUERY".to_owned()]];
    let mut reasons = Vec::new();
    for (workflow, query) in rows {
        let id = workflow.id().to_string();
        let mut state = workflow.state().to_string();
        if let Some(entry) = aside.iter().find(|entry| entry.workflow_id == id) {
            state.push_str(", set aside");
            reasons.push(format!("SET ASIDE   {id}: {}\n", clip(&entry.reason, 2 * VALUE_WIDTH)));
        }
        table.push(vec![id, state, (workflow.current_step_index() + 1).to_string(), clip(query, VALUE_WIDTH)]);
    }
    let mut out = columns(&table);
    out.extend(reasons);
    // A row that does not parse is listed too, with why, so that it can be shown or
    // deleted; set aside by a claim, no worker takes it.
    for row in unreadable {
        let mark = if is_set_aside(row, aside) { " (set aside)" } else { "" };
        out.push_str(&format!("UNREADABLE  {}{mark}\n", clip(row, 2 * VALUE_WIDTH)));
    }
    out
}

/// Whether the unreadable row described by `row` (its id, then why) is set aside.
pub(crate) fn is_set_aside(row: &str, aside: &[SetAside]) -> bool {
    aside.iter().any(|entry| row.contains(&entry.workflow_id))
}

/// A workflow: its state, then a row per step, its clarifications and its answer.
pub(crate) fn workflow(plan: &Plan, workflow: &Workflow) -> String {
    let mut out = format!("workflow {}  {}\nquery    {}\n\n", workflow.id(), workflow.state(), plan.plan_context.query);
    let mut table = vec![vec!["#".into(), "OUTPUT".into(), "TOOL".into(), "STATUS".into(), "VALUE".into()]];
    for (index, step) in plan.steps.iter().enumerate() {
        let output = workflow.outputs().step_outputs.get(&step.output);
        let status = if output.is_some() {
            "done"
        } else if workflow.clarifications_for_step(index).any(|c| !c.resolved) {
            "waiting"
        } else if workflow.failure().is_some_and(|f| f.step == Some(index)) {
            "failed"
        } else {
            "pending"
        };
        let value = output.map(|o| text(&o.value)).unwrap_or_default();
        table.push(vec![
            (index + 1).to_string(),
            step.output.clone(),
            step.tool_id.clone().unwrap_or_else(|| "llm".into()),
            status.into(),
            clip(&value, VALUE_WIDTH),
        ]);
    }
    out.push_str(&columns(&table));
    let clarifications = &workflow.outputs().clarifications;
    if !clarifications.is_empty() {
        out.push_str("\nclarifications\n");
        for c in clarifications {
            let answer =
                c.response.as_ref().filter(|_| c.resolved).map_or("open".to_owned(), |r| format!("answered {r}"));
            let _ = writeln!(out, "  {} {} ({answer})", c.id, clip(&c.user_guidance, VALUE_WIDTH));
        }
    }
    if let Some(failure) = workflow.failure() {
        let _ = writeln!(out, "\nfailure  {}", failure.message);
    }
    if let Some(answer) = &workflow.outputs().final_output {
        let _ = writeln!(out, "\nanswer   {}", text(&answer.value));
    }
    let _ = writeln!(out, "usage    {}", usage_line(workflow.usage()));
    out
}

/// `3 LLM calls, 900 prompt (800 cached) + 50 completion tokens, $0.0004`: cached
/// prompt tokens are shown only when the provider reported some.
fn usage_line(usage: &portia::workflow::WorkflowUsage) -> String {
    let total = usage.total;
    let mut cached = Vec::new();
    if total.cache_read_tokens > 0 {
        cached.push(format!("{} cached", total.cache_read_tokens));
    }
    if total.cache_write_tokens > 0 {
        cached.push(format!("{} written to cache", total.cache_write_tokens));
    }
    let cached = if cached.is_empty() { String::new() } else { format!(" ({})", cached.join(", ")) };
    let children = match usage.children.len() {
        0 => String::new(),
        count => {
            let spent = usage.children_total();
            let s = if count == 1 { "" } else { "s" };
            format!(" (of which {} calls, ${:.4} by {count} child workflow{s})", spent.usage.llm_calls, spent.cost_usd)
        }
    };
    format!(
        "{} LLM calls, {} prompt{cached} + {} completion tokens, ${:.4}{children}",
        total.llm_calls, total.prompt_tokens, total.completion_tokens, usage.cost_usd
    )
}

fn text(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_owned)
}

/// Flags of a tool in words.
fn flags(spec: &portia::ToolSpec, available: bool) -> Vec<&'static str> {
    let mut flags = Vec::new();
    flags.push(if spec.side_effects { "side effects" } else { "read-only" });
    if spec.idempotent && spec.side_effects {
        flags.push("idempotent");
    }
    if !available {
        flags.push("needs a key");
    }
    flags
}

/// The key variable a tool needs, for the tools that need one.
fn key_var(id: &str) -> Option<&'static str> {
    match id {
        "search_tool" => Some("TAVILY_API_KEY"),
        "weather_tool" => Some("OPENWEATHERMAP_API_KEY"),
        _ => None,
    }
}

/// Each tool: id, flags, description, and its arguments from the schema.
pub(crate) fn tools(registry: &dyn ToolRegistry, available: &[String]) -> String {
    let mut out = String::new();
    for tool in registry.get_tools() {
        let spec = tool.spec();
        let ok = available.contains(&spec.id);
        let _ = writeln!(out, "{}  [{}]", spec.id, flags(&spec, ok).join(", "));
        let _ = writeln!(out, "    {}", spec.description);
        if let (false, Some(var)) = (ok, key_var(&spec.id)) {
            let _ = writeln!(out, "    set {var} to use it");
        }
        let required: Vec<&str> =
            spec.args_schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        for (name, schema) in spec.args_schema["properties"].as_object().into_iter().flatten() {
            let kind = schema["type"].as_str().unwrap_or("any");
            let need = if required.contains(&name.as_str()) { "required" } else { "optional" };
            let about = schema["description"].as_str().unwrap_or("");
            let _ = writeln!(out, "    - {name} ({kind}, {need}): {about}");
        }
    }
    out
}

/// Each tool's spec as JSON, with whether it can be used with the settings.
pub(crate) fn tools_json(registry: &dyn ToolRegistry, available: &[String]) -> Value {
    let specs: Vec<Value> = registry
        .get_tools()
        .iter()
        .map(|tool| {
            let spec = tool.spec();
            let mut value = serde_json::to_value(&spec).unwrap_or_default();
            value["available"] = json!(available.contains(&spec.id));
            if let Some(var) = key_var(&spec.id) {
                value["key_var"] = json!(var);
            }
            value
        })
        .collect();
    Value::Array(specs)
}

#[cfg(test)]
mod tests {
    use portia::WorkflowId;
    use portia::llm::Usage;
    use portia::workflow::{ChildUsage, WorkflowUsage};

    use super::usage_line;

    #[test]
    fn the_usage_line_shows_cached_tokens_only_when_there_are_some() {
        let plain = WorkflowUsage::planned(Usage::call(900, 50), 0.00052);
        assert_eq!(usage_line(&plain), "1 LLM calls, 900 prompt + 50 completion tokens, $0.0005");
        let cached = WorkflowUsage::planned(Usage::call(900, 50).with_cache(800, 64), 0.0002);
        assert_eq!(
            usage_line(&cached),
            "1 LLM calls, 900 prompt (800 cached, 64 written to cache) + 50 completion tokens, $0.0002"
        );
    }

    #[test]
    fn the_usage_line_tells_what_child_workflows_spent() {
        let mut parent = WorkflowUsage::planned(Usage::call(900, 50), 0.001);
        let child = WorkflowUsage::planned(Usage::call(100, 10), 0.0002);
        parent.record_child(WorkflowId::new(), ChildUsage::of("$replies", &child));
        parent.record_child(WorkflowId::new(), ChildUsage::of("$replies", &child));
        assert_eq!(
            usage_line(&parent),
            "3 LLM calls, 1100 prompt + 70 completion tokens, $0.0014 (of which 2 calls, $0.0004 by 2 child workflows)"
        );
    }
}
