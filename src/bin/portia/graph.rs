//! A plan as a graph of its steps and their `$name` dependencies, in Mermaid or Graphviz.
//!
//! A step's shape says its kind: a parallelogram runs a sub-plan, a rounded box
//! ends the workflow, a double box is a ReAct step, and a block is a subgraph
//! (a cluster) holding its own steps, its loop marked `↻` in its title. A
//! condition is a decision node in front of its step, and a loop (`for_each`, or a
//! ReAct step's tool calls) an edge from the step back to itself.

use std::fmt::Write;

use portia::plan::Step;
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
    let tool = match (&step.tool_id, &step.function, &step.plan) {
        (Some(tool), _, _) => tool.clone(),
        (None, Some(function), _) => format!("fn {function}"),
        (None, None, Some(plan)) => format!("sub-plan {plan}"),
        (None, None, None) if step.is_block() => format!("block of {} steps", step.steps.len()),
        (None, None, None) if step.is_react() => format!("llm with {}", step.tools.join(", ")),
        (None, None, None) if step.ask_user.is_some() => "ask a person".to_owned(),
        (None, None, None) if step.exit.is_some() => "exit".to_owned(),
        (None, None, None) => "llm".to_owned(),
    };
    let mut lines = vec![format!("{}. {}", index + 1, step.task), format!("{tool} → {}", step.output)];
    let mark = if step.is_block() { "↻ " } else { "" };
    lines.extend(step.for_each.iter().map(|list| format!("{mark}for each item of {list}")));
    lines.extend(step.exit.iter().map(|exit| match exit {
        Exit::Complete(message) => format!("exit COMPLETE: {message}"),
        Exit::Failed(error) => format!("exit FAILED: {error}"),
        _ => "exit".to_owned(),
    }));
    lines
}

/// How a step is drawn: Mermaid's brackets around its label, and Graphviz's shape.
fn shape(step: &Step) -> (&'static str, &'static str, &'static str) {
    if step.plan.is_some() {
        ("[/", "/]", "parallelogram")
    } else if step.exit.is_some() {
        ("([", "])", "octagon")
    } else if step.is_react() {
        ("[[", "]]", "box3d")
    } else {
        ("[", "]", "box")
    }
}

/// The loop edge a step draws back to itself, if it loops: over its items, or
/// through its tool calls. A block marks its loop in its title instead.
fn loop_label(step: &Step) -> Option<String> {
    match (&step.for_each, step.is_react()) {
        _ if step.is_block() => None,
        (Some(list), _) => Some(format!("each item of {list}")),
        (None, true) => Some(format!("tool calls, at most {}", step.max_tool_calls.unwrap_or(25))),
        (None, false) => None,
    }
}

/// The node a dependency into step `id` enters: its condition's decision node, if it has one.
fn entry(step: &Step, id: &str) -> String {
    if step.condition.is_some() { format!("c{id}") } else { format!("s{id}") }
}

/// `flowchart TD` with a node per step, a subgraph per block, and an edge per dependency.
pub(crate) fn mermaid(plan: &Plan) -> String {
    let mut out = String::from("flowchart TD\n");
    mermaid_steps(plan, "", 1, &mut out);
    out
}

/// The Mermaid lines of `plan`'s steps, their ids prefixed with `prefix` (a block's
/// steps are `s1_0`, `s1_1`, ...), indented `depth` levels.
fn mermaid_steps(plan: &Plan, prefix: &str, depth: usize, out: &mut String) {
    let escape = |s: &str| s.replace('"', "#quot;");
    let indent = "    ".repeat(depth);
    for (index, step) in plan.steps.iter().enumerate() {
        let id = format!("{prefix}{index}");
        let lines: Vec<String> = label(plan, index).iter().map(|line| escape(line)).collect();
        if let Some(block) = plan.block_plan(index) {
            let _ = writeln!(out, "{indent}subgraph s{id}[\"{}\"]", lines.join("<br/>"));
            let _ = writeln!(out, "{indent}    direction TB");
            mermaid_steps(&block, &format!("{id}_"), depth + 1, out);
            let _ = writeln!(out, "{indent}end");
        } else {
            let (open, close, _) = shape(step);
            let _ = writeln!(out, "{indent}s{id}{open}\"{}\"{close}", lines.join("<br/>"));
        }
        if let Some(condition) = &step.condition {
            let _ = writeln!(out, "{indent}c{id}{{\"if {}\"}}", escape(condition));
            let _ = writeln!(out, "{indent}c{id} -->|yes| s{id}");
            let _ = writeln!(out, "{indent}c{id} -.->|no: skipped| s{id}");
        }
        if let Some(looping) = loop_label(step) {
            let _ = writeln!(out, "{indent}s{id} -.->|{}| s{id}", escape(&looping));
        }
    }
    for (from, to, name) in edges(plan) {
        let to_id = format!("{prefix}{to}");
        let _ = writeln!(out, "{indent}s{prefix}{from} -->|{}| {}", escape(&name), entry(&plan.steps[to], &to_id));
    }
}

/// A Graphviz `digraph` with a node per step, a cluster per block, and an edge per
/// dependency (an edge into or out of a block is drawn to the cluster's border).
pub(crate) fn dot(plan: &Plan) -> String {
    let mut out = String::from("digraph plan {\n    rankdir=TB;\n    compound=true;\n    node [shape=box];\n");
    dot_steps(plan, "", 1, &mut out);
    out.push_str("}\n");
    out
}

/// The Graphviz lines of `plan`'s steps (see [`mermaid_steps`]).
fn dot_steps(plan: &Plan, prefix: &str, depth: usize, out: &mut String) {
    let escape = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let indent = "    ".repeat(depth);
    for (index, step) in plan.steps.iter().enumerate() {
        let id = format!("{prefix}{index}");
        let lines: Vec<String> = label(plan, index).iter().map(|line| escape(line)).collect();
        if let Some(block) = plan.block_plan(index) {
            let _ = writeln!(out, "{indent}subgraph cluster_s{id} {{");
            let _ = writeln!(out, "{indent}    label=\"{}\"; style=rounded;", lines.join("\\n"));
            dot_steps(&block, &format!("{id}_"), depth + 1, out);
            let _ = writeln!(out, "{indent}}}");
        } else {
            let (_, _, shape) = shape(step);
            let _ = writeln!(out, "{indent}s{id} [label=\"{}\", shape={shape}];", lines.join("\\n"));
        }
        if let Some(condition) = &step.condition {
            let _ = writeln!(out, "{indent}c{id} [label=\"if {}\", shape=diamond];", escape(condition));
            let (node, cluster) = dot_anchor(plan, index, &id, true);
            let _ = writeln!(out, "{indent}c{id} -> {node} [label=\"yes\"{cluster}];");
        }
        if let Some(looping) = loop_label(step) {
            let _ = writeln!(out, "{indent}s{id} -> s{id} [label=\"{}\", style=dashed];", escape(&looping));
        }
    }
    for (from, to, name) in edges(plan) {
        let (tail, ltail) = dot_anchor(plan, from, &format!("{prefix}{from}"), false);
        let (head, lhead) = match &plan.steps[to].condition {
            Some(_) => (format!("c{prefix}{to}"), String::new()),
            None => dot_anchor(plan, to, &format!("{prefix}{to}"), true),
        };
        let cluster = [ltail.replace("lhead", "ltail"), lhead].concat();
        let _ = writeln!(out, "{indent}{tail} -> {head} [label=\"{}\"{cluster}];", escape(&name));
    }
}

/// The node an edge into (`first`) or out of step `index` (id `id`) attaches to,
/// with the attribute that clips it to the block's cluster when the step is a block.
fn dot_anchor(plan: &Plan, index: usize, id: &str, first: bool) -> (String, String) {
    let Some(block) = plan.block_plan(index) else { return (format!("s{id}"), String::new()) };
    let inner = if first { 0 } else { block.steps.len() - 1 };
    let (node, _) = dot_anchor(&block, inner, &format!("{id}_{inner}"), first);
    (node, format!(", lhead=cluster_s{id}"))
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
    fn branches_loops_react_steps_sub_plans_and_exits_are_drawn() {
        let child = PlanBuilder::new("c").step("x", None, "$x").build();
        let plan = PlanBuilder::new("q")
            .step("List", Some("tickets_tool"), "$tickets")
            .step("Draft", None, "$drafts")
            .for_each("$tickets")
            .condition("$item.urgent")
            .react("Research", ["search_tool", "calculator_tool"], "$facts")
            .sub_plan("Classify", child.id, json!({"t": "$tickets"}), "$class")
            .exit("Stop", Exit::Failed("no tickets".into()), "$stop")
            .build();
        let text = mermaid(&plan);
        assert!(text.contains("s1[\"2. Draft<br/>llm → $drafts<br/>for each item of $tickets\"]"), "{text}");
        assert!(text.contains("c1{\"if $item.urgent\"}") && text.contains("c1 -->|yes| s1"), "{text}");
        assert!(text.contains("s0 -->|$tickets| c1"), "the list feeds the branch: {text}");
        assert!(text.contains("s1 -.->|each item of $tickets| s1"), "{text}");
        assert!(text.contains("s2[[\"3. Research<br/>llm with search_tool, calculator_tool → $facts\"]]"), "{text}");
        assert!(text.contains("s2 -.->|tool calls, at most 25| s2"), "{text}");
        assert!(text.contains(&format!("s3[/\"4. Classify<br/>sub-plan {} → $class\"/]", child.id)), "{text}");
        assert!(text.contains("s4([\"5. Stop<br/>exit → $stop<br/>exit FAILED: no tickets\"])"), "{text}");
        let dot = dot(&plan);
        assert!(dot.contains("c1 [label=\"if $item.urgent\", shape=diamond];"), "{dot}");
        assert!(dot.contains("s0 -> c1 [label=\"$tickets\"];") && dot.contains("shape=parallelogram"), "{dot}");
        assert!(dot.contains("s2 -> s2 [label=\"tool calls, at most 25\", style=dashed];"), "{dot}");
    }

    #[test]
    fn a_block_is_a_subgraph_with_its_loop_marked_and_its_steps_inside() {
        let plan = PlanBuilder::new("q")
            .step("List", Some("tickets_tool"), "$tickets")
            .block("Triage one", "$drafts", |b| {
                b.step("Classify $item", None, "$class").step("Draft", None, "$draft").input("$class", "the class")
            })
            .for_each("$tickets")
            .step("Report", None, "$report")
            .input("$drafts", "the drafts")
            .build();
        let text = mermaid(&plan);
        assert!(
            text.contains(
                "    subgraph s1[\"2. Triage one<br/>block of 2 steps → $drafts<br/>↻ for each item of $tickets\"]\n"
            ),
            "{text}"
        );
        assert!(text.contains("        s1_0[\"1. Classify $item<br/>llm → $class\"]"), "{text}");
        assert!(text.contains("        s1_0 -->|$class| s1_1\n    end\n"), "the block's own edge, inside it: {text}");
        assert!(text.contains("    s0 -->|$tickets| s1\n") && text.contains("    s1 -->|$drafts| s2\n"), "{text}");
        let dot = dot(&plan);
        assert!(dot.contains("    subgraph cluster_s1 {\n        label=\"2. Triage one\\nblock of 2 steps"), "{dot}");
        assert!(dot.contains("        s1_0 -> s1_1 [label=\"$class\"];"), "{dot}");
        assert!(dot.contains("    s0 -> s1_0 [label=\"$tickets\", lhead=cluster_s1];"), "{dot}");
        assert!(dot.contains("    s1_1 -> s2 [label=\"$drafts\", ltail=cluster_s1];"), "{dot}");
    }

    #[test]
    fn dot_is_a_digraph_with_escaped_labels() {
        let text = dot(&plan());
        assert!(text.starts_with("digraph plan {") && text.ends_with("}\n"), "{text}");
        assert!(text.contains("s0 [label=\"1. Find the \\\"city\\\"\\nsearch_tool → $city\", shape=box];"), "{text}");
        assert!(text.contains("s0 -> s1 [label=\"$city\"];"), "{text}");
    }
}
