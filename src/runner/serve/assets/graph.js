// The plan as a graph: one node per step in run order, coloured by how far the
// workflow got, with its condition on the edge into it, a loop mark on a
// `for_each` step, a block's own steps boxed inside it, and dashed arcs from each
// step to the later steps that read its output. Built with DOM calls only (no
// HTML from data), as an SVG that scales to the page; the step list beside it
// says the same in text.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const NODE = { x: 12, width: 470, height: 58, gap: 40, row: 26 };

function svg(tag, attributes, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function clip(text, length) {
  return text.length > length ? text.slice(0, length - 1) + "…" : text;
}

/// What kind of step this is, in a few words.
function stepKind(step) {
  if (step.exit) return step.exit.failed !== undefined ? "exit, FAILED" : "exit, COMPLETE";
  if (step.ask_user) return "asks you";
  if (step.function) return "function " + step.function;
  if (step.plan) return "sub-plan " + step.plan;
  if (step.steps && step.steps.length) return "block of " + step.steps.length + " steps";
  if (step.tools && step.tools.length) return "ReAct over " + step.tools.join(", ");
  if (step.tool_id) return "tool " + step.tool_id;
  return "LLM" + (step.model ? " (" + step.model + ")" : "");
}

/// done, skipped, running, waiting, failed or pending: how far `workflow` got with step `i`.
function stepStatus(step, i, workflow) {
  const output = workflow && workflow.outputs && workflow.outputs.step_outputs[step.output];
  if (output) return output.skipped ? "skipped" : "done";
  if (!workflow || workflow.current_step_index !== i) return "pending";
  switch (workflow.state) {
    case "IN_PROGRESS": return "running";
    case "NEED_CLARIFICATION": return "waiting";
    case "FAILED": return "failed";
    default: return "pending";
  }
}

/// The outputs (`$name`) that `step` reads: its inputs, and references in its
/// condition, loop, arguments and task.
function readsOf(step) {
  const names = new Set((step.inputs || []).map((input) => input.name));
  // A block's steps count too: what they read from outside, the block reads.
  const text = [step.condition, step.for_each, step.task, step.args && JSON.stringify(step.args),
    step.steps && JSON.stringify(step.steps)].filter(Boolean).join(" ");
  for (const match of text.matchAll(/\$[A-Za-z_][A-Za-z0-9_]*/g)) names.add(match[0]);
  return names;
}

/// A block's own steps, one a line, for its node's tooltip.
function blockSteps(step) {
  return (step.steps || []).map((inner, j) => "\n  " + (j + 1) + ". " + inner.task + " → " + inner.output).join("");
}

/// How tall a step's node is: a block's grows a row per step of its own.
function nodeHeight(step) {
  return NODE.height + (step.steps || []).length * NODE.row;
}

/// A block's own steps as boxes inside its node, which starts at `y`.
function blockRows(step, y) {
  return (step.steps || []).map((inner, j) => {
    const rowTop = y + NODE.height - 6 + j * NODE.row;
    const text = (j + 1) + ". " + inner.task + " · " + stepKind(inner) + " → " + inner.output + (inner.condition ? " · if " + inner.condition : "");
    return svg("g", { class: "block-step" },
      svg("rect", { x: NODE.x + 16, y: rowTop, width: NODE.width - 32, height: NODE.row - 4, rx: 4 }),
      svg("text", { x: NODE.x + 24, y: rowTop + 16, class: "kind" }, clip(text, 70)));
  });
}

function loopNote(step, workflow) {
  const items = workflow && workflow.outputs && workflow.outputs.loop_items && workflow.outputs.loop_items[step.output];
  const done = items ? Object.keys(items).length : 0;
  return "↻ for each " + step.for_each + (done ? " (" + done + " done)" : "");
}

function planGraph(plan, workflow) {
  const steps = plan.steps;
  const tops = [];
  steps.reduce((y, step) => { tops.push(y); return y + nodeHeight(step) + NODE.gap; }, 8);
  const top = (i) => tops[i];
  const producer = new Map(steps.map((step, i) => [step.output, i]));
  const arcs = [];
  steps.forEach((step, i) => {
    for (const name of readsOf(step)) {
      const from = producer.get(name);
      if (from !== undefined && from < i - 1) arcs.push({ from, to: i, name });
    }
  });
  const height = (steps.length ? top(steps.length - 1) + nodeHeight(steps[steps.length - 1]) : 8) + 16;
  const width = NODE.x + NODE.width + 30 + arcs.length * 14;
  const label = "The plan as a graph: " + steps.length + " step(s)";
  const graph = svg("svg", { viewBox: "0 0 " + width + " " + height, role: "img", "aria-label": label, class: "plan-graph" },
    svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
      svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow-head" }))));
  steps.forEach((step, i) => {
    const y = top(i);
    if (i > 0) {
      const middle = NODE.x + NODE.width / 2;
      graph.append(svg("line", { x1: middle, y1: y - NODE.gap, x2: middle, y2: y - 2, class: "edge", "marker-end": "url(#arrow)" }));
      if (step.condition) {
        graph.append(svg("text", { x: middle + 10, y: y - NODE.gap / 2 + 4, class: "condition" }, "if " + clip(step.condition, 60),
          svg("title", {}, "Runs only if: " + step.condition)));
      }
    }
    const status = stepStatus(step, i, workflow);
    const skipped = status === "skipped" && workflow.outputs.step_outputs[step.output].skipped;
    const node = svg("g", { class: "step step-" + status, "data-step": i, "data-status": status },
      svg("title", {}, (i + 1) + ". " + step.task + " (" + status + (skipped ? ": " + skipped : "") + ")" + blockSteps(step)),
      svg("rect", { x: NODE.x, y, width: NODE.width, height: nodeHeight(step), rx: step.exit ? 22 : 6 }),
      svg("text", { x: NODE.x + 12, y: y + 22, class: "task" }, clip((i + 1) + ". " + step.task, 62)),
      svg("text", { x: NODE.x + 12, y: y + 44, class: "kind" }, stepKind(step) + " → " + step.output + " · " + status));
    if (step.for_each) {
      node.append(svg("text", { x: NODE.x + NODE.width - 10, y: y + 44, class: "loop", "text-anchor": "end" }, loopNote(step, workflow)));
    }
    node.append(...blockRows(step, y));
    graph.append(node);
  });
  arcs.forEach((arc, n) => {
    const x = NODE.x + NODE.width;
    const reach = 18 + n * 14;
    const y1 = top(arc.from) + NODE.height / 2;
    const y2 = top(arc.to) + NODE.height / 2;
    graph.append(svg("path", { d: `M ${x} ${y1} C ${x + reach} ${y1}, ${x + reach} ${y2}, ${x + 2} ${y2}`, class: "data-edge", "marker-end": "url(#arrow)" },
      svg("title", {}, "Step " + (arc.to + 1) + " reads " + arc.name)));
  });
  return graph;
}
