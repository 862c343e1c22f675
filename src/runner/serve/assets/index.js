// The front page: every workflow the caller may see, read once and then kept
// current from the server's stream of workflow changes (GET /v1/events). Only
// while that stream is down is the list read again, every ten seconds. Those set
// aside are marked, from GET /v1/set-aside, read every ten seconds too.
"use strict";

const FALLBACK_POLL_MS = 10000;
const ASIDE_POLL_MS = 10000;
const table = document.getElementById("workflows");
const body = table.querySelector("tbody");
const listStatus = document.getElementById("list-status");
let count = 0;
// Why each workflow set aside was (GET /v1/set-aside), by id. Setting one aside
// changes no workflow, so the stream does not announce it: it is read at first,
// every ten seconds while the page is shown, and when a workflow marked changes.
let aside = new Map();

function row(workflow) {
  const link = el("a", { href: "/workflows/" + workflow.id }, workflow.id.slice(0, 13) + "…");
  const waiting = workflow.open_clarifications ? " (" + workflow.open_clarifications + " open)" : "";
  return markAside(el("tr", { "data-id": workflow.id, "data-state": workflow.state },
    el("td", { "data-label": "Workflow" }, link),
    el("td", { "data-label": "Query" }, workflow.query),
    el("td", { "data-label": "State" }, stateBadge(workflow.state), waiting),
    el("td", { "data-label": "Cost" }, money(workflow.cost_usd)),
    el("td", { "data-label": "Age" }, age(workflow.started_at))));
}

// Shows whether the row's workflow is set aside, with why on hover and on its page.
function markAside(tr) {
  const reason = aside.get(tr.dataset.id);
  const state = tr.querySelector("td[data-label='State']");
  state.querySelector(".aside")?.remove();
  if (reason === undefined) {
    delete tr.dataset.aside;
  } else {
    tr.dataset.aside = reason;
    state.append(" ", el("span", { class: "aside error", title: reason }, "set aside"));
  }
  return tr;
}

async function readAside() {
  try {
    const entries = await api("GET", "/v1/set-aside");
    aside = new Map(entries.map((entry) => [entry.workflow_id, entry.reason]));
    [...body.rows].forEach(markAside);
  } catch {
    // The list's own status says when the server cannot be read.
  }
}

async function refresh() {
  try {
    const page = await api("GET", "/v1/workflows?page_size=200");
    body.replaceChildren(...page.results.map(row));
    count = page.count;
    showCount();
    say(listStatus, "");
  } catch (error) {
    say(listStatus, "Could not read the workflows: " + error.message, true);
  }
}

document.getElementById("query-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = document.getElementById("query-status");
  const query = document.getElementById("query").value.trim();
  if (!query) return;
  say(status, "Planning…");
  try {
    const workflow = await api("POST", "/v1/workflows", { query });
    window.location.href = "/workflows/" + workflow.id;
  } catch (error) {
    say(status, error.message, true);
  }
});

function showCount() {
  document.getElementById("count").textContent = count + " workflow(s)";
}

// Rows are in id order, as the list gives them.
function upsert(workflow) {
  // A put back or a resume changes the workflow: its mark may be gone.
  if (aside.has(workflow.id)) readAside();
  const fresh = row(workflow);
  const rows = [...body.rows];
  const same = rows.find((r) => r.dataset.id === workflow.id);
  if (same) {
    same.replaceWith(fresh);
    return;
  }
  const after = rows.find((r) => r.dataset.id > workflow.id);
  body.insertBefore(fresh, after || null);
  count += 1;
  showCount();
}

function remove(id) {
  const gone = [...body.rows].find((r) => r.dataset.id === id);
  if (gone) {
    gone.remove();
    count -= 1;
    showCount();
  }
}

let fallback = null;

function follow() {
  const changes = new EventSource("/v1/events");
  // Sent once the stream listens: the list read now misses nothing that follows.
  changes.addEventListener("ready", () => {
    table.dataset.live = "stream";
    clearInterval(fallback);
    fallback = null;
    refresh();
  });
  changes.addEventListener("workflow", (message) => upsert(JSON.parse(message.data)));
  changes.addEventListener("workflow_deleted", (message) => remove(JSON.parse(message.data).id));
  // The browser reconnects by itself (and `ready` comes again); until then, poll.
  changes.onerror = () => {
    table.dataset.live = "poll";
    if (fallback === null) {
      refresh();
      fallback = setInterval(refresh, FALLBACK_POLL_MS);
    }
  };
}

follow();
readAside();
setInterval(() => document.hidden || readAside(), ASIDE_POLL_MS);
