// The front page: every workflow the caller may see, read again every second.
"use strict";

const body = document.querySelector("#workflows tbody");
const listStatus = document.getElementById("list-status");

function row(workflow) {
  const link = el("a", { href: "/workflows/" + workflow.id }, workflow.id.slice(0, 13) + "…");
  const waiting = workflow.open_clarifications ? " (" + workflow.open_clarifications + " open)" : "";
  return el("tr", { "data-id": workflow.id, "data-state": workflow.state },
    el("td", { "data-label": "Workflow" }, link),
    el("td", { "data-label": "Query" }, workflow.query),
    el("td", { "data-label": "State" }, stateBadge(workflow.state), waiting),
    el("td", { "data-label": "Cost" }, money(workflow.cost_usd)),
    el("td", { "data-label": "Age" }, age(workflow.started_at)));
}

async function refresh() {
  try {
    const page = await api("GET", "/v1/workflows?page_size=200");
    body.replaceChildren(...page.results.map(row));
    document.getElementById("count").textContent = page.count + " workflow(s)";
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

refresh();
setInterval(refresh, 1000);
