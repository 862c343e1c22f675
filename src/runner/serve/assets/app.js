// Shared by the inspector's pages: calls to the JSON API (same origin, with the
// sign-in cookie when the server has tokens) and safe DOM building (text only,
// never HTML made from data).
"use strict";

async function api(method, path, body) {
  const options = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    throw new Error(data && data.error ? data.error.message : response.status + " " + response.statusText);
  }
  return data;
}

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function json(value) {
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

function stateBadge(state) {
  return el("span", { class: "state state-" + state }, state);
}

function money(usd) {
  return "$" + (usd || 0).toFixed(4);
}

function age(iso) {
  if (!iso) return "not started";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return Math.round(seconds) + "s ago";
  if (seconds < 3600) return Math.round(seconds / 60) + "m ago";
  if (seconds < 86400) return Math.round(seconds / 3600) + "h ago";
  return Math.round(seconds / 86400) + "d ago";
}

function say(region, message, isError) {
  region.textContent = message;
  region.className = isError ? "error" : "muted";
}
