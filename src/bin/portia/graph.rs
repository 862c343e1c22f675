//! A plan as a graph of its steps and their `$name` dependencies, in Mermaid or Graphviz.

use std::fmt::Write;

use portia::{Exit, Plan};

/// Each dependency edge: (from step, to step, the `$name` it carries).
fn edges(plan: &Plan) -> Vec<(usize, usize, String)> {
    let mut edges = Vec::new();
    for (to, _) in plan.steps.iter().enumerate() {
        for name in plan.dependencies(to) {
            if let Some(from) = plan.step_producing(&name) {
                edges.push((from, to, name));
            }
        }
    }
    edges
}

/// A step's label lines: its number and task, its tool and output, then any loop,
/// condition and exit.
fn label(plan: &Plan, index: usize) -> Vec<String> {
    let step = &plan.steps[index];
    let tool = match (&step.tool_id, &step.function) {
        (Some(tool), _) => tool.clone(),
        (None, Some(function)) => format!("fn {function}"),
        (None, None) => "llm".to_owned(),
    };
    let mut lines = vec![format!("{}. {}", index + 1, step.task), format!("{tool} → {}", step.output)];
    lines.extend(step.for_each.iter().map(|list| format!("for each item of {list}")));
    lines.extend(step.condition.iter().map(|condition| format!("if {condition}")));
    lines.extend(step.exit.iter().map(|exit| match exit {
        Exit::Complete(message) => format!("exit COMPLETE: {message}"),
        Exit::Failed(error) => format!("exit FAILED: {error}"),
        _ => "exit".to_owned(),
    }));
    lines
}

/// `flowchart TD` with a node per step and an edge per dependency.
pub(crate) fn mermaid(plan: &Plan) -> String {
    let escape = |s: &str| s.replace('"', "#quot;");
    let mut out = String::from("flowchart TD\n");
    for index in 0..plan.steps.len() {
        let lines: Vec<String> = label(plan, index).iter().map(|line| escape(line)).collect();
        let _ = writeln!(out, "    s{index}[\"{}\"]", lines.join("<br/>"));
    }
    for (from, to, name) in edges(plan) {
        let _ = writeln!(out, "    s{from} -->|{}| s{to}", escape(&name));
    }
    out
}

/// A Graphviz `digraph` with a box per step and an edge per dependency.
pub(crate) fn dot(plan: &Plan) -> String {
    let escape = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = String::from("digraph plan {\n    rankdir=TB;\n    node [shape=box];\n");
    for index in 0..plan.steps.len() {
        let lines: Vec<String> = label(plan, index).iter().map(|line| escape(line)).collect();
        let _ = writeln!(out, "    s{index} [label=\"{}\"];", lines.join("\\n"));
    }
    for (from, to, name) in edges(plan) {
        let _ = writeln!(out, "    s{from} -> s{to} [label=\"{}\"];", escape(&name));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use portia::PlanBuilder;
    use serde_json::json;

    fn plan() -> Plan {
        PlanBuilder::new("q")
            .step("Find the \"city\"", Some("search_tool"), "$city")
            .step("Weather there", Some("weather_tool"), "$weather")
            .args(json!({"city": "$city"}))
            .step("Say it", None, "$answer")
            .input("$weather", "the weather")
            .build()
    }

    #[test]
    fn mermaid_has_a_node_per_step_and_an_edge_per_dependency() {
        let text = mermaid(&plan());
        assert!(text.starts_with("flowchart TD\n"), "{text}");
        assert!(text.contains("s0[\"1. Find the #quot;city#quot;<br/>search_tool → $city\"]"), "{text}");
        assert!(text.contains("s0 -->|$city| s1"), "plan-time args are dependencies: {text}");
        assert!(text.contains("s1 -->|$weather| s2"), "{text}");
    }

    #[test]
    fn loops_conditions_and_exits_are_drawn_on_their_steps() {
        let plan = PlanBuilder::new("q")
            .step("List", Some("tickets_tool"), "$tickets")
            .step("Draft", None, "$drafts")
            .for_each("$tickets")
            .condition("$item.urgent")
            .exit("Stop", Exit::Failed("no tickets".into()), "$stop")
            .build();
        let text = mermaid(&plan);
        assert!(text.contains("llm → $drafts<br/>for each item of $tickets<br/>if $item.urgent\"]"), "{text}");
        assert!(text.contains("exit FAILED: no tickets"), "{text}");
        assert!(dot(&plan).contains("for each item of $tickets\\nif $item.urgent"), "{}", dot(&plan));
    }

    #[test]
    fn dot_is_a_digraph_with_escaped_labels() {
        let text = dot(&plan());
        assert!(text.starts_with("digraph plan {") && text.ends_with("}\n"), "{text}");
        assert!(text.contains("s0 [label=\"1. Find the \\\"city\\\"\\nsearch_tool → $city\"];"), "{text}");
        assert!(text.contains("s0 -> s1 [label=\"$city\"];"), "{text}");
    }
}
