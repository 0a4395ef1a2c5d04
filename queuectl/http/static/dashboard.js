// The queuectl dashboard: everything through the same HTTP API, live from /events.
// Text from the queue (commands, ids, output) is only ever set as textContent: never HTML.
"use strict";

const STATES = ["pending", "waiting", "processing", "completed", "failed", "dead", "cancelled"];
const FINISHED = ["completed", "dead", "cancelled"];
const NOT_STARTED = ["pending", "waiting", "failed"];
const $ = (id) => document.getElementById(id);
let refreshTimer = null;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function cell(child) {
  const td = document.createElement("td");
  td.append(child);
  return td;
}

function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : "";
}

function say(text, ok) {
  const box = $("message");
  box.textContent = text;
  box.className = ok ? "ok" : "";
  box.hidden = !text;
}

async function api(method, path, body) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error((data && data.detail) || `${method} ${path}: ${response.status}`);
  }
  return data;
}

function route() {
  const match = location.hash.match(/^#job\/(.+)$/);
  return match ? decodeURIComponent(match[1]) : null;
}

async function showCounts() {
  const status = await api("GET", "/status");
  const box = $("counts");
  box.replaceChildren();
  const selected = $("state-filter").value;
  for (const state of STATES) {
    const card = el("button", null, "count" + (state === selected ? " selected" : ""));
    card.type = "button";
    card.id = `count-${state}`;
    card.append(el("b", status[state] ?? 0), el("span", state));
    card.addEventListener("click", () => {
      $("state-filter").value = selected === state ? "" : state;
      location.hash = "";
      refresh();
    });
    box.append(card);
  }
  const queues = $("queue-filter");
  const known = new Set([...queues.options].map((o) => o.value));
  for (const name of Object.keys(status.queues || {})) {
    if (!known.has(name)) queues.append(el("option", name));
  }
  const w = status.workers;
  $("workers-state").textContent = `${w.running} running, ${w.busy} busy`;
  $("workers-state").dataset.desired = w.desired;
  if (document.activeElement !== $("workers-input")) $("workers-input").value = w.desired;
}

async function showList() {
  const state = $("state-filter").value;
  const queue = $("queue-filter").value;
  const query = new URLSearchParams({ limit: "1" });
  if (state) query.set("state", state);
  if (queue) query.set("queue", queue);
  // The newest 200: ask for the total first, then the last page.
  const first = await api("GET", `/jobs?${query}`);
  query.set("limit", "200");
  query.set("offset", String(Math.max(0, first.total - 200)));
  const page = await api("GET", `/jobs?${query}`);
  const body = $("job-list");
  body.replaceChildren();
  for (const job of page.jobs.reverse()) {
    const row = el("tr", null, "job");
    row.dataset.id = job.id;
    row.append(
      el("td", job.id),
      cell(el("span", job.state, `state state-${job.state}`)),
      el("td", job.queue, "wide"),
      el("td", job.attempts),
      el("td", job.command, "cmd wide"),
      el("td", when(job.updated_at)),
    );
    row.addEventListener("click", () => { location.hash = `#job/${encodeURIComponent(job.id)}`; });
    body.append(row);
  }
  $("list-total").textContent = `${page.total} job${page.total === 1 ? "" : "s"}`;
}

async function showJob(id) {
  const job = await api("GET", `/jobs/${encodeURIComponent(id)}`);
  $("job-id").textContent = job.id;
  $("job-state").textContent = job.state;
  $("job-state").className = `badge state-${job.state}`;
  $("retry").hidden = !FINISHED.includes(job.state);
  $("cancel").hidden = !NOT_STARTED.includes(job.state);
  $("kill").hidden = job.state !== "processing";
  const fields = $("job-fields");
  fields.replaceChildren();
  for (const [name, value] of [
    ["command", job.command], ["queue", job.queue], ["priority", job.priority],
    ["directory", job.cwd], ["attempts", job.attempts],
    ["max retries", job.max_retries], ["timeout", `${job.timeout} s`],
    ["created", when(job.created_at)], ["last error", job.last_error],
  ]) {
    fields.append(el("dt", name), el("dd", value ?? ""));
  }
  const rows = $("attempts");
  rows.replaceChildren();
  for (const a of job.history) {
    const took = a.finished_at ? `${(a.finished_at - a.started_at).toFixed(3)} s` : "running";
    const row = el("tr");
    row.append(el("td", a.attempt), el("td", a.outcome), el("td", a.exit_code),
      el("td", when(a.started_at)), el("td", took), el("td", a.error, "wide"));
    rows.append(row);
  }
  try {
    $("job-log").textContent = (await api("GET", `/jobs/${encodeURIComponent(id)}/log`)).log;
  } catch (err) {
    $("job-log").textContent = err.message;
  }
}

async function refresh() {
  clearTimeout(refreshTimer);
  refreshTimer = null;
  const id = route();
  $("list-view").hidden = id !== null;
  $("job-view").hidden = id === null;
  try {
    await showCounts();
    await (id === null ? showList() : showJob(id));
  } catch (err) {
    say(err.message);
  }
}

// Many events arrive together (a batch finishing): one refresh for a burst.
function soon() {
  if (refreshTimer === null) refreshTimer = setTimeout(refresh, 150);
}

function follow() {
  const live = $("live");
  const source = new EventSource("/events");
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.type === "upstream") {
      live.textContent = event.connected ? "live" : "daemon unreachable";
      live.className = `live ${event.connected ? "on" : "off"}`;
    }
    soon();
  };
  source.onerror = () => {
    live.textContent = "reconnecting…";
    live.className = "live off";
  };
}

document.addEventListener("DOMContentLoaded", () => {
  for (const state of STATES) $("state-filter").append(el("option", state));
  $("workers-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const view = await api("PUT", "/workers", { count: Number($("workers-input").value) });
      say(`workers: ${view.desired} desired`, true);
      $("workers-input").blur();
      refresh();
    } catch (err) { say(err.message); }
  });
  const action = (button, verb, done) => $(button).addEventListener("click", async () => {
    try {
      await api("POST", `/jobs/${encodeURIComponent(route())}/${verb}`);
      say(`job ${route()} ${done}`, true);
      refresh();
    } catch (err) { say(err.message); }
  });
  action("retry", "retry", "will run again");
  action("cancel", "cancel", "is cancelled");
  action("kill", "kill", "is being stopped");
  $("state-filter").addEventListener("change", refresh);
  $("queue-filter").addEventListener("change", refresh);
  window.addEventListener("hashchange", () => { say(""); refresh(); });
  follow();
  refresh();
});
