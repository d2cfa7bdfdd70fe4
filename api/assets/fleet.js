// The fleet page's script, served at /assets/fleet.js. The page's CSP allows no inline script
// or style: handlers are attached with addEventListener (never `on…=` attributes), and styles
// come from classes in /assets/fleet.css (never a `style` attribute). The server puts what the
// script needs to know in data attributes (`<body data-role>`).
"use strict";
const isAdmin = document.body.dataset.role === "admin";
const main = document.getElementById("fleet");
const live = document.getElementById("live");
let environments = [], nodes = [];

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.round(s / 60) + "m ago";
  if (s < 86400) return Math.round(s / 3600) + "h ago";
  return Math.round(s / 86400) + "d ago";
}

// Every write carries a JSON body ({} when it has nothing to say) and says so in its
// Content-Type: the api refuses cookie-authenticated writes without it (a cross-site form
// cannot send one).
async function api(method, path, body) {
  const write = method !== "GET" && method !== "HEAD";
  const r = await fetch(path, { method, credentials: "same-origin",
    headers: write ? { "Content-Type": "application/json" } : {},
    body: write ? JSON.stringify(body ?? {}) : undefined });
  if (r.status === 401) { location.reload(); throw new Error("signed out"); }
  if (!r.ok) { const e = await r.json().catch(() => ({})); throw new Error(e.error || r.statusText); }
  return r.status === 204 ? null : r.json();
}

async function act(node, label, method, path, body, confirmText) {
  if (confirmText && !confirm(confirmText)) return;
  try { await api(method, path, body); document.getElementById("status").textContent = label + " sent to " + node.host; }
  catch (e) { alert(label + " failed: " + e.message); }
  await load();
}

function row(n) {
  const status = n.maintenanceMode ? "MAINTENANCE" : n.status;
  const statusCell = el("td", {}, el("span", { class: "pill " + status }, status));
  if (n.wsConnected) {
    const over = n.pushTransport === "sse" ? "Server-Sent Events" : "WebSocket";
    const says = over + " connected — real-time push enabled";
    statusCell.append(el("span", { class: "ws-badge", title: says, "aria-label": says }, "WS"));
  }
  const pipes = el("div", { class: "pipes" });
  for (const p of n.pipelines) pipes.append(el("button", { type: "button", class: "pill " + p.status, title: "Details and recent logs",
    "data-pipeline-id": p.pipelineId, onclick: () => showPipeline(n, p.pipelineId) },
    (pipelineNames[p.pipelineId] || p.pipelineId.slice(0, 8)) + " v" + p.version + " · " + p.status.toLowerCase()));
  if (!n.pipelines.length) pipes.append(el("span", { class: "muted" }, "—"));
  const cells = [
    el("th", { scope: "row" }, n.host),
    statusCell,
    el("td", { title: n.lastSeen || "" }, ago(n.lastSeen)),
    el("td", {}, n.agentVersion || el("span", { class: "muted" }, "—")),
    el("td", {}, n.vectorVersion || el("span", { class: "muted" }, "—")),
    el("td", {}, pipes),
  ];
  if (isAdmin) {
    const base = "/api/v1/fleet/" + n.id;
    cells.push(el("td", { class: "actions" },
      el("button", { type: "button", onclick: () => act(n, "Maintenance", "POST", base + "/maintenance", { enabled: !n.maintenanceMode }) },
         n.maintenanceMode ? "End maintenance" : "Maintenance"),
      el("button", { type: "button", onclick: () => act(n, "Restart", "POST", base + "/actions", { type: "restart" }) }, "Restart"),
      el("button", { type: "button", class: "danger", onclick: () => act(n, "Revoke", "DELETE", base, null,
         "Revoke " + n.host + "? Its token stops working immediately and it must enroll again.") }, "Revoke")));
  }
  return el("tr", { "data-node-id": n.id, "data-ws": String(n.wsConnected) }, ...cells);
}

// What the node last reported about one pipeline (the listing leaves logs out).
async function showPipeline(n, pipelineId) {
  let p;
  try { p = (await api("GET", "/api/v1/fleet/" + n.id)).pipelines.find(x => x.pipelineId === pipelineId); }
  catch (e) { alert("Could not load the pipeline: " + e.message); return; }
  if (!p) { await load(); return; }
  const dialog = document.getElementById("pipeline");
  document.getElementById("pipeline-title").textContent = (pipelineNames[pipelineId] || pipelineId) + " on " + n.host;
  const facts = [["status", p.status], ["version", "v" + p.version], ["config checksum", p.configChecksum || "—"],
                 ["uptime", p.uptimeSeconds == null ? "—" : p.uptimeSeconds + " s"], ["reported", p.updatedAt || "—"]];
  document.getElementById("pipeline-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));
  const pre = document.getElementById("pipeline-logs");
  const logs = p.recentLogs || [];
  pre.textContent = logs.length ? logs.join("\n") : "No recent log lines reported.";
  const restart = document.getElementById("pipeline-restart");
  restart.hidden = !isAdmin;
  restart.onclick = () => act(n, "Pipeline restart", "POST", "/api/v1/fleet/" + n.id + "/actions",
    { type: "restart", pipelineId }, "Restart this pipeline on " + n.host + "?");
  // New lines follow live while the dialog is open (the stream repeats the kept lines first).
  const follow = new EventSource("/api/v1/fleet/" + n.id + "/logs?pipelineId=" + encodeURIComponent(pipelineId));
  let first = true;
  follow.addEventListener("lines", ev => {
    const batch = JSON.parse(ev.data).lines;
    if (first) { pre.textContent = ""; first = false; }
    pre.textContent += (pre.textContent ? "\n" : "") + batch.join("\n");
    pre.scrollTop = pre.scrollHeight;
  });
  dialog.addEventListener("close", () => follow.close(), { once: true });
  dialog.showModal();
}

// ", 2 crashed pipelines" (CRASHED and CRASH_LOOP alike), or nothing.
function crashCount(nodes) {
  const n = nodes.reduce((sum, node) => sum + (node.crashedPipelines || 0), 0);
  return n ? " · " + n + " crashed pipeline" + (n === 1 ? "" : "s") : "";
}

let pipelineNames = {};
function render() {
  main.replaceChildren();
  if (!environments.length) main.append(el("p", { class: "empty" }, "No environments yet."));
  for (const env of environments) {
    const mine = nodes.filter(n => n.environmentId === env.id);
    const head = el("tr", {}, ...["Host", "Status", "Last seen", "Agent", "Vector", "Pipelines"].map(h => el("th", { scope: "col" }, h)));
    if (isAdmin) head.append(el("th", { scope: "col" }, "Actions"));
    const body = el("tbody", {}, ...mine.map(row));
    if (!mine.length) body.append(el("tr", {}, el("td", { colspan: isAdmin ? 7 : 6, class: "empty" }, "No nodes enrolled.")));
    main.append(el("section", { "aria-label": env.name },
      el("table", {}, el("caption", {}, env.name, el("span", { class: "count" }, mine.length + " node" + (mine.length === 1 ? "" : "s")
           + crashCount(mine))),
         el("thead", {}, head), body)));
  }
  main.setAttribute("aria-busy", "false");
}

let loading = null, again = false;
async function load() {
  if (loading) { again = true; return loading; }
  loading = (async () => {
    try {
      const [e, f, p] = await Promise.all([api("GET", "/api/v1/environments"), api("GET", "/api/v1/fleet"), api("GET", "/api/v1/pipelines")]);
      environments = e.environments; nodes = f.nodes;
      pipelineNames = Object.fromEntries(p.pipelines.map(x => [x.id, x.name]));
      render();
    } catch (err) { console.error(err); }
  })();
  await loading; loading = null;
  if (again) { again = false; await load(); }
}

function connect() {
  const es = new EventSource("/api/v1/fleet/events");
  es.onopen = () => { live.textContent = "live"; live.className = "on"; load(); };
  es.onmessage = () => load();
  es.onerror = () => { live.textContent = "reconnecting…"; live.className = ""; };
}

load();
connect();
setInterval(() => { if (!document.hidden) load(); }, 15000);
