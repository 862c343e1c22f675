// One workflow: its state, open questions as forms, the answer (streamed in as it
// is written), the plan as a graph, and a timeline fed by its AG-UI event stream
// (each stored event comes as rawEvent; streamed text as TEXT_MESSAGE_*, streamed
// tool-call arguments as TOOL_CALL_*).
"use strict";

const id = decodeURIComponent(window.location.pathname.split("/").pop());
const base = "/v1/workflows/" + encodeURIComponent(id);
const actionStatus = document.getElementById("action-status");
const seen = new Set();
let current = null;
let plan = null;
/// The message being streamed into the answer, if one is.
let streaming = null;

async function load() {
  try {
    current = await api("GET", base);
  } catch (error) {
    say(actionStatus, error.message, true);
    return;
  }
  const state = current.state;
  document.getElementById("state").replaceChildren(stateBadge(state));
  document.getElementById("cost").textContent = money(current.usage && current.usage.cost_usd);
  document.getElementById("workflow-id").textContent = current.id;
  const failure = document.getElementById("failure");
  failure.hidden = !current.failure;
  failure.textContent = current.failure ? current.failure.kind + ": " + current.failure.message : "";
  document.getElementById("retry-of").hidden = !current.retry_of;
  if (current.retry_of) {
    const link = document.getElementById("retry-of-link");
    link.textContent = current.retry_of;
    link.href = "/workflows/" + encodeURIComponent(current.retry_of);
  }
  const final = current.outputs && current.outputs.final_output;
  const answer = document.getElementById("answer");
  if (final) {
    streaming = null;
    answer.textContent = final.summary || json(final.value);
    answer.className = "";
  } else if (!streaming && !answer.dataset.streamed) {
    answer.textContent = "No answer yet.";
    answer.className = "muted";
  }
  const finished = state === "COMPLETE" || state === "FAILED";
  document.getElementById("cancel").disabled = finished;
  // A sub-plan's run is retried with the workflow that runs it.
  document.getElementById("retry").disabled = state !== "FAILED" || Boolean(current.parent);
  document.getElementById("resume").disabled = !(state === "READY_TO_RESUME" || state === "NOT_STARTED" || state === "IN_PROGRESS");
  renderQuestions(current.outputs.clarifications.filter((c) => !c.resolved));
  renderPlan();
  await loadSetAside(finished);
}

/// Whether the workflow is set aside (its run met a stored row that cannot be
/// read), and why: then it can be put back for the workers. A finished one is not.
async function loadSetAside(finished) {
  let entry = null;
  if (!finished) {
    try {
      entry = (await api("GET", "/v1/set-aside")).find((e) => e.workflow_id === id) || null;
    } catch (error) {
      say(actionStatus, error.message, true);
    }
  }
  document.getElementById("set-aside").hidden = !entry;
  document.getElementById("set-aside-reason").textContent = entry ? entry.reason : "";
  document.getElementById("put-back").hidden = !entry;
}

/// Streamed text goes into the answer as it comes; the stored answer replaces it
/// when the workflow has one. A restarted attempt ends its message, and the next
/// one starts the text over.
function stream(event) {
  const answer = document.getElementById("answer");
  if (event.type === "TEXT_MESSAGE_START") {
    if (current && current.outputs && current.outputs.final_output) return;
    streaming = event.messageId;
    answer.textContent = "";
    answer.className = "streaming";
    answer.dataset.streamed = "true";
  } else if (event.type === "TEXT_MESSAGE_CONTENT" && event.messageId === streaming) {
    answer.append(event.delta);
  } else if (event.type === "TEXT_MESSAGE_END" && event.messageId === streaming) {
    streaming = null;
    answer.className = "";
  }
}

function renderQuestions(open) {
  document.getElementById("questions-section").hidden = open.length === 0;
  const holder = document.getElementById("questions");
  // A form being filled in is kept as it is.
  const shown = new Set([...holder.children].map((form) => form.dataset.clarification));
  const wanted = new Set(open.map((c) => c.id));
  for (const form of [...holder.children]) if (!wanted.has(form.dataset.clarification)) form.remove();
  for (const clarification of open) if (!shown.has(clarification.id)) holder.append(questionForm(clarification));
}

function questionForm(c) {
  const field = "answer-" + c.id;
  const form = el("form", { class: "card question", "data-clarification": c.id, "data-category": c.category });
  const send = async (response) => {
    try {
      await api("POST", base + "/clarifications/" + encodeURIComponent(c.id), { response, resume: true });
      say(actionStatus, "Answered.");
      await load();
    } catch (error) {
      say(actionStatus, error.message, true);
    }
  };
  const submit = (label, response, extra) =>
    el("button", { type: "button", class: extra, "data-action": label.toLowerCase(), onclick: () => send(response()) }, label);
  switch (c.category) {
    case "Input":
      form.append(el("label", { for: field }, c.user_guidance),
        el("input", { type: "text", id: field, name: field, required: true, autocomplete: "off" }),
        submit("Answer", () => document.getElementById(field).value));
      break;
    case "Multiple Choice": {
      const options = c.options.map((option, i) =>
        el("div", {}, el("input", { type: "radio", name: field, id: field + "-" + i, value: i }),
          el("label", { for: field + "-" + i, style: "display:inline;font-weight:400" }, " " + json(option))));
      form.append(el("fieldset", {}, el("legend", {}, c.user_guidance), options),
        submit("Answer", () => {
          const picked = form.querySelector("input[type=radio]:checked");
          return picked ? c.options[Number(picked.value)] : null;
        }));
      break;
    }
    case "Value Confirmation":
      form.append(el("label", { for: field }, c.user_guidance),
        el("textarea", { id: field, name: field }, json(c.response)),
        submit("Approve", () => parseOr(document.getElementById(field).value, true)),
        submit("Refuse", () => false, "danger"));
      break;
    case "Action":
      form.append(el("p", {}, c.user_guidance, " ", el("a", { href: c.action_url, target: "_blank", rel: "noopener" }, "Open")),
        submit("Done", () => "complete"));
      break;
    default:
      form.append(el("label", { for: field }, c.user_guidance + " (JSON)"),
        el("textarea", { id: field, name: field }),
        submit("Answer", () => parseOr(document.getElementById(field).value, null)));
  }
  return form;
}

function parseOr(text, fallback) {
  if (!text.trim()) return fallback;
  try { return JSON.parse(text); } catch (_) { return text; }
}

async function loadPlan() {
  try {
    plan = await api("GET", base + "/plan");
    document.getElementById("title").textContent = plan.plan_context.query;
    renderPlan();
  } catch (error) {
    say(actionStatus, error.message, true);
  }
}

function renderPlan() {
  if (!plan) return;
  document.getElementById("plan-graph").replaceChildren(planGraph(plan, current));
  document.getElementById("plan").replaceChildren(...plan.steps.map((step, i) => {
    const uses = [...readsOf(step)].join(", ");
    const when = step.condition ? "if " + step.condition + ", " : "";
    const loop = step.for_each ? "for each " + step.for_each + ", " : "";
    return el("li", {}, step.task, " ",
      el("span", { class: "muted" }, when + loop + stepKind(step) + " → " + step.output + (uses ? " (uses " + uses + ")" : "") +
        " · " + stepStatus(step, i, current)));
  }));
}

/// A timeline entry for a stored event, once per event.
function entry(raw) {
  switch (raw.event) {
    case "step_started":
      return ["state", "Step " + (raw.step + 1) + " started: " + raw.task + (raw.tool_id ? " (" + raw.tool_id + ")" : "")];
    case "step_finished":
      return ["state", "Step " + (raw.step + 1) + " " + outcomeText(raw.outcome)];
    case "loop_item_finished":
      return ["state", "Step " + (raw.step + 1) + ", item " + (raw.item + 1) + " " + outcomeText(raw.outcome)];
    case "tool_call_started":
      return ["tool", raw.tool_id + " called (attempt " + (raw.call.attempt + 1) + ")", el("pre", {}, json(raw.arguments))];
    case "tool_call_finished":
      return ["tool", raw.tool_id + " " + raw.status + " in " + raw.latency_ms + " ms" + (raw.replayed ? " (replayed from the journal)" : ""),
        el("pre", {}, json(raw.output))];
    case "tool_progress":
      return ["tool", raw.tool_id + ": " + (raw.message || "") + " " + raw.progress + (raw.total ? "/" + raw.total : "")];
    case "llm_call_finished":
      return ["llm", "LLM " + raw.model + ": " + raw.usage.prompt_tokens + " + " + raw.usage.completion_tokens + " tokens, " +
        money(raw.cost_usd) + ", " + raw.latency_ms + " ms"];
    case "llm_call_throttled":
      return ["llm", "Waited " + raw.waited_ms + " ms for " + raw.model + "'s rate limit"];
    case "clarification_raised":
      return ["question", "Asked: " + raw.clarification.user_guidance];
    case "clarification_resolved":
      return ["question", "Answered", el("pre", {}, json(raw.response))];
    case "state_changed":
      return ["state", raw.from + " → " + raw.to];
    default:
      return ["state", raw.event];
  }
}

/// How a step (or one loop item) ended, in a few words.
function outcomeText(outcome) {
  if (!outcome || outcome.output) return "finished";
  if (outcome.skipped !== undefined) return "skipped: " + outcome.skipped;
  if (outcome.failed) return "failed: " + outcome.failed.message;
  if (outcome.clarifications) return "is waiting for answers";
  return "finished";
}

const LIVE_ONLY = new Set(["llm_text_delta", "llm_tool_call_delta", "llm_stream_restarted"]);

/// Tool calls whose arguments are streaming in, by AG-UI id: each a timeline entry
/// whose arguments grow piece by piece until the stored call takes its place. A
/// restarted attempt's calls are void and go.
const streamedCalls = new Map();

function streamCall(event) {
  const shown = streamedCalls.get(event.toolCallId);
  if (event.type === "TOOL_CALL_START") {
    const args = el("pre", { class: "arguments", "aria-label": "Arguments of " + event.toolCallName + " so far" });
    const li = el("li", { class: "kind-tool streaming", "data-tool-call": event.toolCallId, "data-tool": event.toolCallName,
      "aria-busy": "true" },
      el("span", { class: "muted" }, new Date(event.timestamp).toLocaleTimeString() + " "),
      el("span", { class: "what" }, "→ " + event.toolCallName + " (its arguments are being written)"), args);
    streamedCalls.set(event.toolCallId, li);
    document.getElementById("timeline").append(li);
  } else if (event.type === "TOOL_CALL_ARGS" && shown) {
    shown.querySelector("pre.arguments").append(event.delta);
  } else if (event.type === "TOOL_CALL_END" && shown) {
    written(shown);
  } else if (event.type === "CUSTOM" && event.name === "portia.stream_restarted") {
    for (const voided of event.value.toolCallIds || []) {
      const li = streamedCalls.get(voided);
      if (li) li.remove();
      streamedCalls.delete(voided);
    }
  }
}

/// A streamed call's arguments are whole: it waits to be made.
function written(li) {
  li.classList.remove("streaming");
  li.removeAttribute("aria-busy");
  li.querySelector(".what").textContent = "→ " + li.dataset.tool + " (arguments written)";
  li.querySelector("pre.arguments").setAttribute("aria-label", "Arguments of " + li.dataset.tool);
}

/// Puts a stored event's timeline entry in the page. The stored call a streamed
/// one turns into takes its place; when the stream already showed the whole call
/// (the stored call then comes without AG-UI events of its own), its result puts
/// the call's entry in its place, as the history shows it.
function place(event, li) {
  const raw = event.rawEvent;
  const streamed = event.toolCallId && streamedCalls.get(event.toolCallId);
  if (streamed && raw.event === "tool_call_started") {
    streamed.replaceWith(li);
    streamedCalls.delete(event.toolCallId);
    return;
  }
  if (streamed && raw.event === "tool_call_finished") {
    const args = parseOr(streamed.querySelector("pre.arguments").textContent, {});
    streamed.replaceWith(timelineEntry({ event: "tool_call_started", tool_id: raw.tool_id, call: raw.call, arguments: args, at: raw.at }));
    streamedCalls.delete(event.toolCallId);
  }
  document.getElementById("timeline").append(li);
}

function timelineEntry(raw) {
  const [kind, text, detail] = entry(raw);
  const time = new Date(raw.at).toLocaleTimeString();
  return el("li", { class: "kind-" + kind, "data-event": raw.event }, el("span", { class: "muted" }, time + " "), text, detail);
}

function follow() {
  const events = new EventSource(base + "/events");
  events.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.type.startsWith("TEXT_MESSAGE_")) stream(event);
    const raw = event.rawEvent;
    // Streamed text is shown in the answer; streamed tool calls as entries of
    // their own, replaced by the stored call.
    if (raw && LIVE_ONLY.has(raw.event)) streamCall(event);
    else if (raw && event.type === "TOOL_CALL_END") streamCall(event);
    if (raw && !LIVE_ONLY.has(raw.event) && !seen.has(raw.seq)) {
      seen.add(raw.seq);
      place(event, timelineEntry(raw));
    }
    if (["STATE_SNAPSHOT", "RUN_FINISHED", "RUN_ERROR", "CUSTOM"].includes(event.type)) load();
  };
  // The server ends the stream once the workflow is finished; do not reconnect then.
  events.onerror = () => {
    if (current && (current.state === "COMPLETE" || current.state === "FAILED")) events.close();
  };
}

document.getElementById("cancel").addEventListener("click", async () => {
  try {
    await api("POST", base + "/cancel", { reason: "cancelled in the inspector" });
    await load();
  } catch (error) {
    say(actionStatus, error.message, true);
  }
});
document.getElementById("retry").addEventListener("click", async () => {
  try {
    const retry = await api("POST", base + "/retry");
    window.location.assign("/workflows/" + encodeURIComponent(retry.id));
  } catch (error) {
    say(actionStatus, error.message, true);
  }
});
document.getElementById("put-back").addEventListener("click", async () => {
  try {
    await api("POST", base + "/put-back");
    say(actionStatus, "Put back for the workers.");
    await load();
  } catch (error) {
    say(actionStatus, error.message, true);
  }
});
document.getElementById("resume").addEventListener("click", async () => {
  try {
    await api("POST", base + "/resume");
    say(actionStatus, "Resumed.");
  } catch (error) {
    say(actionStatus, error.message, true);
  }
});

load();
loadPlan();
follow();
