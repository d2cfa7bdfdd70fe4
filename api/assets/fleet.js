// The fleet view: summary bar, filters, sorting, cursor paging, row selection and bulk
// actions. Live events patch only the rows on screen: their node ids are queued and re-read
// with one `?ids=` request at most once a second; nothing refetches the fleet on an event.
import { ago, api, can, confirmDialog, describe, el, num, plural, put, query, run, toast } from "./lib.js";
import { gettingStarted } from "./start.js";

const PAGE_SIZE = 50;
const STATUSES = ["HEALTHY", "UNREACHABLE"];
const PIPELINE_STATUSES = ["RUNNING", "STARTING", "PENDING", "STOPPED", "CRASHED", "CRASH_LOOP"];
/** The least time between two re-reads of queued rows, and between two summary reads. */
const ROW_REFRESH_MS = 1000;
const SUMMARY_REFRESH_MS = 3000;
/** Pages of 1,000 read at most to count a bulk action's nodes before confirming. */
const COUNT_PAGES = 10;

// Kept across visits to the view, so coming back from a node shows the same page.
const state = {
  filters: { environmentId: localStorage.getItem("flotilla.env") || "", host: "", status: "", connected: "",
             transport: "", label: "", pipelineId: "", pipelineStatus: "", crashed: "" },
  sort: "host",
  cursors: [""],
  selected: new Set(),
};

/** The filter as the list's query keys (only those set). */
const activeFilter = () => Object.fromEntries(Object.entries(state.filters).filter(([, v]) => v !== ""));
const filtering = () => Object.keys(activeFilter()).some(k => k !== "environmentId");

/** A pipeline pill: a link to its node's detail. A stale one (the node is unreachable) reads "last known". */
export function pipelinePill(node, p, names) {
  const stale = p.lastKnown || node.status === "UNREACHABLE";
  const name = names[p.pipelineId] || p.pipelineId.slice(0, 8);
  return el("a", { class: "pill " + p.status + (stale ? " last-known" : ""), href: "#/node/" + node.id + "?pipeline=" + p.pipelineId,
    title: stale ? "Last known status: the node is not reporting" : "Status, counters and live log",
    "data-pipeline-id": p.pipelineId },
    name + " v" + p.version + " · " + (stale ? "last known " : "") + p.status.toLowerCase());
}

/** The push-channel badge of a connected node. */
export function wsBadge(n) {
  const says = (n.pushTransport === "sse" ? "Server-Sent Events" : "WebSocket") + " connected — real-time push enabled";
  return el("span", { class: "ws-badge", title: says, "aria-label": says }, "WS");
}

export function mount(main, { query: params }) {
  // `#/fleet?limit=n` pages by n (1 to 1,000) instead of PAGE_SIZE.
  const pageSize = Math.min(1000, Math.max(1, Number(params.get("limit")) || PAGE_SIZE));
  let nodes = [], names = {}, environments = [], nextCursor = null, stopped = false;
  const rows = new Map();
  const queued = new Set();
  let flushTimer = null, lastFlush = 0, summaryTimer = null, lastSummary = 0, summarySeq = 0;
  // The host and label fields' typing delays, dropped when the view is left.
  const typing = new Set();

  const summary = el("div", { class: "summary", id: "summary", "aria-live": "polite" });
  const tbody = el("tbody");
  const pager = el("div", { class: "pager" });
  const bulkBar = el("div", { class: "bulk", id: "bulk" });
  const start = el("div");
  const head = el("tr", {},
    can("admin") ? el("th", { scope: "col", class: "select" }, el("input", { type: "checkbox", id: "select-page", "aria-label": "Select every node on this page",
      onchange: ev => { for (const n of nodes) ev.target.checked ? state.selected.add(n.id) : state.selected.delete(n.id); renderRows(); renderBulk(); } })) : null,
    ...["Host", "Status", "Last seen", "Agent", "Vector", "Pipelines"].map(h => el("th", { scope: "col" }, h)),
    can("admin") ? el("th", { scope: "col" }, "Actions") : null);
  const table = el("section", { class: "panel table", "aria-label": "Nodes" }, el("table", { id: "nodes" }, el("thead", {}, head), tbody));

  main.append(el("h1", { class: "view-title" }, "Fleet"), summary, filterBar(), bulkBar, start, table, pager);
  main.setAttribute("aria-busy", "true");

  function filterBar() {
    const f = state.filters;
    const current = key => (key === "sort" ? state.sort : f[key]);
    const select = (key, label, options) => el("label", {}, label, el("select", { name: key, onchange: ev => setFilter(key, ev.target.value) },
      ...options.map(([v, text]) => el("option", { value: v, selected: current(key) === v }, text))));
    const text = (key, label, placeholder, id) => {
      let timer = null;
      return el("label", {}, label, el("input", { name: key, id, value: f[key], placeholder, autocomplete: "off",
        oninput: ev => {
          clearTimeout(timer);
          typing.delete(timer);
          timer = setTimeout(() => { typing.delete(timer); setFilter(key, ev.target.value.trim()); }, 300);
          typing.add(timer);
        } }));
    };
    const envSelect = el("select", { name: "environmentId", id: "fleet-env", onchange: ev => { localStorage.setItem("flotilla.env", ev.target.value); setFilter("environmentId", ev.target.value); } },
      el("option", { value: "" }, "All environments"));
    const pipelineSelect = el("select", { name: "pipelineId", onchange: ev => setFilter("pipelineId", ev.target.value) }, el("option", { value: "" }, "Any pipeline"));
    filterBar.fill = (envs, pipes) => {
      put(envSelect, el("option", { value: "" }, "All environments"),
        ...envs.map(e => el("option", { value: e.id, selected: f.environmentId === e.id }, e.name)));
      put(pipelineSelect, el("option", { value: "" }, "Any pipeline"),
        ...pipes.map(p => el("option", { value: p.id, selected: f.pipelineId === p.id }, p.name)));
    };
    return el("form", { class: "filters", id: "filters", onsubmit: ev => ev.preventDefault() },
      el("label", {}, "Environment", envSelect),
      text("host", "Host", "starts with…", "filter-host"),
      select("status", "Status", [["", "Any status"], ...STATUSES.map(s => [s, s])]),
      select("connected", "Push", [["", "Any"], ["true", "Connected"], ["false", "Not connected"]]),
      select("transport", "Transport", [["", "Any"], ["websocket", "WebSocket"], ["sse", "Server-Sent Events"]]),
      text("label", "Label", "key=value", "filter-label"),
      el("label", {}, "Pipeline", pipelineSelect),
      select("pipelineStatus", "Pipeline status", [["", "Any"], ...PIPELINE_STATUSES.map(s => [s, s])]),
      el("label", { class: "check" }, el("input", { type: "checkbox", name: "crashed", id: "filter-crashed", checked: f.crashed === "true",
        onchange: ev => setFilter("crashed", ev.target.checked ? "true" : "") }), "Crashed pipelines"),
      select("sort", "Sort", [["host", "Host"], ["lastSeen", "Last seen"]]));
  }

  function setFilter(key, value) {
    if (key === "sort") state.sort = value; else state.filters[key] = value;
    state.cursors = [""];
    state.selected.clear();
    loadPage();
    refreshSummary(true);
  }

  function row(n) {
    const status = n.maintenanceMode ? "MAINTENANCE" : n.status;
    const statusCell = el("td", {}, el("span", { class: "pill " + status }, status), n.wsConnected ? wsBadge(n) : null);
    const pipes = el("div", { class: "pipes" }, ...n.pipelines.map(p => pipelinePill(n, p, names)));
    if (!n.pipelines.length) pipes.append(el("span", { class: "muted" }, "—"));
    const cells = [
      el("th", { scope: "row" }, el("a", { href: "#/node/" + n.id }, n.host)),
      statusCell,
      el("td", { title: n.lastSeen || "" }, ago(n.lastSeen)),
      el("td", {}, n.agentVersion || el("span", { class: "muted" }, "—")),
      el("td", {}, n.vectorVersion || el("span", { class: "muted" }, "—")),
      el("td", {}, pipes),
    ];
    if (can("admin")) {
      cells.unshift(el("td", { class: "select" }, el("input", { type: "checkbox", "aria-label": "Select " + n.host, checked: state.selected.has(n.id),
        onchange: ev => { ev.target.checked ? state.selected.add(n.id) : state.selected.delete(n.id); renderBulk(); } })));
      cells.push(el("td", { class: "actions" }, ...nodeActions(n, () => queue(n.id), () => patch(n.id, null))));
    }
    return el("tr", { "data-node-id": n.id, "data-ws": String(n.wsConnected) }, ...cells);
  }

  function renderRows() {
    rows.clear();
    put(tbody, ...nodes.map(n => { const r = row(n); rows.set(n.id, r); return r; }));
    if (!nodes.length) {
      tbody.append(el("tr", {}, el("td", { colspan: can("admin") ? 8 : 6, class: "empty" },
        filtering() ? "No node matches these filters." : "No nodes enrolled.")));
    }
    const all = document.getElementById("select-page");
    if (all) all.checked = nodes.length > 0 && nodes.every(n => state.selected.has(n.id));
  }

  /** Replaces one node's row in place (or drops it when `n` is null). */
  function patch(id, n) {
    const i = nodes.findIndex(x => x.id === id);
    if (i < 0) return;
    const old = rows.get(id);
    if (!n) { nodes.splice(i, 1); old?.remove(); rows.delete(id); state.selected.delete(id); renderBulk(); return; }
    nodes[i] = n;
    const fresh = row(n);
    rows.set(id, fresh);
    old?.replaceWith(fresh);
  }

  // The pager is disabled while a page loads: a second click would move by the same cursor twice.
  function renderPager() {
    const page = state.cursors.length;
    put(pager, 
      el("button", { type: "button", id: "page-prev", disabled: page === 1 || inFlight, onclick: () => { state.cursors.pop(); loadPage(); } }, "← Previous"),
      el("span", { class: "muted" }, "Page " + page + " · " + plural(nodes.length, "node") + " shown"),
      el("button", { type: "button", id: "page-next", disabled: !nextCursor || inFlight, onclick: () => { state.cursors.push(nextCursor); loadPage(); } }, "Next →"));
  }

  // The bulk bar is built once, so a row tick or a page load never resets a half-filled
  // self-update form; renderBulk only brings its scope up to date.
  const bulkAction = el("select", { id: "bulk-action", "aria-label": "Bulk action" },
    el("option", { value: "maintenance_on" }, "Start maintenance"),
    el("option", { value: "maintenance_off" }, "End maintenance"),
    el("option", { value: "restart" }, "Restart"),
    el("option", { value: "self_update" }, "Self-update"));
  const updateFields = el("span", { class: "update-fields", hidden: true },
    el("input", { id: "bulk-version", placeholder: "target version", "aria-label": "Target version" }),
    el("input", { id: "bulk-url", placeholder: "https://… download URL", "aria-label": "Download URL" }),
    el("input", { id: "bulk-checksum", placeholder: "sha256:…", "aria-label": "Checksum" }),
    el("input", { id: "bulk-signature", placeholder: "signature (optional)", "aria-label": "Signature" }));
  bulkAction.addEventListener("change", () => { updateFields.hidden = bulkAction.value !== "self_update"; });
  const selectionOption = el("option", { value: "selection" });
  const filterOption = el("option", { value: "filter" }, "every node matching the filter");
  const bulkScope = el("select", { id: "bulk-scope", "aria-label": "Apply to", onchange: () => renderBulk() }, selectionOption, filterOption);
  const bulkApply = el("button", { type: "button", id: "bulk-apply", onclick: () => bulk(bulkAction.value, bulkScope.value) }, "Apply…");
  const clearSelection = el("button", { type: "button", class: "link", onclick: () => { state.selected.clear(); renderRows(); renderBulk(); } }, "Clear selection");
  let bulkBusy = false;
  if (can("admin")) put(bulkBar, el("span", {}, "Bulk action"), bulkAction, updateFields, el("span", {}, "on"), bulkScope, bulkApply, clearSelection);

  function renderBulk() {
    if (!can("admin")) return;
    const hadSelection = !selectionOption.disabled;
    selectionOption.textContent = "the " + plural(state.selected.size, "selected node");
    selectionOption.disabled = !state.selected.size;
    // The api refuses a bulk action on an empty filter (every node of every environment).
    filterOption.disabled = !Object.keys(activeFilter()).length;
    filterOption.textContent = filterOption.disabled ? "every node matching the filter (set a filter first)" : "every node matching the filter";
    if (state.selected.size && !hadSelection) bulkScope.value = "selection";
    if (bulkScope.selectedOptions[0]?.disabled) {
      bulkScope.value = !selectionOption.disabled ? "selection" : !filterOption.disabled ? "filter" : "";
    }
    bulkApply.disabled = bulkBusy || !bulkScope.value;
    clearSelection.hidden = !state.selected.size;
  }

  // How many nodes the filter matches: the page itself when it is the only one, else counted
  // by paging through the matching ids (up to COUNT_PAGES pages of 1,000).
  async function countMatching() {
    if (state.cursors.length === 1 && !nextCursor) return { count: nodes.length, exact: true };
    let count = 0, cursor = "";
    for (let page = 0; page < COUNT_PAGES; page++) {
      const r = await api("GET", "/api/v1/fleet" + query({ ...activeFilter(), limit: 1000, cursor }));
      count += r.nodes.length;
      if (!r.nextCursor) return { count, exact: true };
      cursor = r.nextCursor;
    }
    return { count, exact: false };
  }

  // Apply is disabled from the click until the action is done (counting, confirming, sending):
  // a double click must not open a second confirmation.
  async function bulk(kind, scope) {
    if (bulkBusy) return;
    bulkBusy = true;
    renderBulk();
    try { await bulkOnce(kind, scope); } finally { bulkBusy = false; if (!stopped) renderBulk(); }
  }

  async function bulkOnce(kind, scope) {
    const labels = { maintenance_on: "Start maintenance", maintenance_off: "End maintenance", restart: "Restart", self_update: "Self-update" };
    const action = kind === "maintenance_on" || kind === "maintenance_off"
      ? { type: "maintenance", enabled: kind === "maintenance_on" }
      : kind === "restart" ? { type: "restart" }
      : { type: "self_update", targetVersion: val("bulk-version"), downloadUrl: val("bulk-url"), checksum: val("bulk-checksum"),
          signature: val("bulk-signature") || undefined };
    let counted, target;
    if (scope === "selection") { counted = { count: state.selected.size, exact: true }; target = { nodeIds: [...state.selected] }; }
    else {
      try { counted = await countMatching(); } catch (e) { toast("Counting the nodes failed: " + describe(e), "error"); return; }
      if (stopped) return;
      target = { filter: bulkFilter() };
    }
    if (!counted.count) { toast("No node to act on", "error"); return; }
    const many = (counted.exact ? "" : "more than ") + plural(counted.count, "node");
    const what = scope === "selection" ? "the selected nodes" : "every node matching the filter" + filterText();
    const ok = await confirmDialog({ title: labels[kind] + " on " + many,
      text: labels[kind] + " on " + many + " (" + what + ")?", ok: labels[kind], danger: kind !== "maintenance_off" });
    if (!ok || stopped) return;
    const r = await run(labels[kind], () => api("POST", "/api/v1/fleet/actions", { ...target, action }),
      r => labels[kind] + ": " + plural(r.affected, "node") + " affected" + skippedText(r.skipped));
    if (r && !stopped) { state.selected.clear(); loadPage(); refreshSummary(true); }
  }

  // The filter for a bulk action: the list's keys, with booleans as booleans.
  function bulkFilter() {
    const f = activeFilter();
    for (const k of ["connected", "crashed"]) if (k in f) f[k] = f[k] === "true";
    return f;
  }

  function filterText() {
    const f = activeFilter();
    const env = environments.find(e => e.id === f.environmentId);
    const parts = Object.entries(f).map(([k, v]) => k === "environmentId" ? "environment " + (env ? env.name : v)
      : k === "pipelineId" ? "pipeline " + (names[v] || v) : k + " " + v);
    return parts.length ? ": " + parts.join(", ") : "";
  }

  function renderSummary(s) {
    const items = [["nodes", s.total]];
    for (const [k, v] of Object.entries(s.byStatus || {})) items.push([k.toLowerCase(), v]);
    items.push(["push connected", s.connected]);
    if (s.maintenance !== undefined) items.push(["maintenance", s.maintenance]);
    items.push(["crashed pipelines", s.crashedPipelines]);
    put(summary, ...items.map(([k, v]) => el("div", { class: "stat" + (k === "crashed pipelines" && v ? " bad" : "") },
      el("strong", {}, num(v)), el("span", {}, k))));
  }

  async function refreshSummary(now = false) {
    if (stopped) return;
    const wait = now ? 0 : Math.max(0, lastSummary + SUMMARY_REFRESH_MS - Date.now());
    if (summaryTimer && !now) return;
    clearTimeout(summaryTimer);
    summaryTimer = setTimeout(async () => {
      summaryTimer = null;
      lastSummary = Date.now();
      // Answers may arrive out of order (a filter changed meanwhile): only the newest is shown.
      const mine = ++summarySeq;
      try {
        const s = await api("GET", "/api/v1/fleet/summary" + query({ environmentId: state.filters.environmentId }));
        if (!stopped && mine === summarySeq) { renderSummary(s); showStart(s.total === 0); }
      } catch (e) {
        if (!stopped && mine === summarySeq) put(summary, el("span", { class: "muted" }, "Summary unavailable: " + describe(e)));
      }
    }, wait);
  }

  function showStart(empty) {
    const show = empty && !filtering();
    table.hidden = show;
    // A token shown once stays until the operator hides it, whatever the fleet does meanwhile.
    if (start.querySelector(".secret")) return;
    // Redrawn only when what it offers changes, so a half-typed environment name survives events.
    const key = show ? "for " + state.filters.environmentId + " of " + environments.map(x => x.id).join(",") : "";
    if (start.dataset.key === key) return;
    start.dataset.key = key;
    put(start, show ? gettingStarted(environments, state.filters.environmentId) : null);
  }

  // One load at a time: asked again meanwhile, it loads once more when done (a busy api is
  // never sent a request per event). `shownEmpty`: the last load found no node at all.
  let loading = 0, inFlight = false, again = false, shownEmpty = false;
  async function loadPage() {
    // The answer in flight is stale now: dropped, and the page loaded again after it.
    if (inFlight) { ++loading; again = true; return; }
    inFlight = true;
    renderPager();
    const mine = ++loading;
    const cursor = state.cursors[state.cursors.length - 1];
    try {
      const page = await api("GET", "/api/v1/fleet" + query({ ...activeFilter(), sort: state.sort, limit: pageSize, cursor }));
      if (!stopped && mine === loading) {
        nodes = page.nodes;
        nextCursor = page.nextCursor || null;
        renderRows();
        renderPager();
        renderBulk();
        shownEmpty = !nodes.length && state.cursors.length === 1 && !filtering();
        if (shownEmpty) showStart(true);
        else if (nodes.length) showStart(false);
      }
    } catch (e) {
      if (!stopped) toast("Loading the fleet failed: " + describe(e), "error");
    }
    inFlight = false;
    if (stopped) return;
    if (again) { again = false; loadPage(); return; }
    renderPager();
    main.setAttribute("aria-busy", "false");
  }

  // Re-reads the queued rows with one request, at most once a second.
  function queue(id) {
    queued.add(id);
    if (flushTimer) return;
    flushTimer = setTimeout(flush, Math.max(0, lastFlush + ROW_REFRESH_MS - Date.now()));
  }

  async function flush() {
    flushTimer = null;
    lastFlush = Date.now();
    const ids = [...queued].filter(id => rows.has(id));
    queued.clear();
    if (!ids.length) return;
    try {
      const page = await api("GET", "/api/v1/fleet" + query({ ids: ids.join(","), limit: ids.length }));
      if (stopped) return;
      const wanted = new Set(ids);
      for (const n of page.nodes) if (wanted.has(n.id)) patch(n.id, n);
    } catch (e) {
      console.error("re-reading rows failed", e);
    }
  }

  function onEvent(ev) {
    const e = ev.detail;
    if (e.kind === "resync") { loadPage(); refreshSummary(true); return; }
    if (!e.nodeId) return;
    refreshSummary();
    if (e.kind === "revoked") { patch(e.nodeId, null); return; }
    const n = nodes.find(x => x.id === e.nodeId);
    if (!n) {
      // The first agent of an empty fleet shows up without a reload.
      if (shownEmpty) loadPage();
      return;
    }
    if ("connected" in e) {
      // Presence is shown at once; the re-read below fills in the transport.
      patch(n.id, { ...n, wsConnected: e.connected, gatewayId: e.connected ? e.gatewayId : null });
    }
    queue(n.id);
  }

  document.addEventListener("fleet-event", onEvent);
  const ticker = setInterval(() => { if (!document.hidden) renderRows(); }, 15000);
  Promise.all([api("GET", "/api/v1/environments"), api("GET", "/api/v1/pipelines")]).then(([e, p]) => {
    if (stopped) return;
    environments = e.environments;
    names = Object.fromEntries(p.pipelines.map(x => [x.id, x.name]));
    // A remembered environment that no longer exists would filter every node out.
    if (state.filters.environmentId && !environments.some(x => x.id === state.filters.environmentId)) {
      localStorage.removeItem("flotilla.env");
      state.filters.environmentId = "";
      state.cursors = [""];
      loadPage();
      refreshSummary(true);
    }
    filterBar.fill(environments, p.pipelines);
    renderRows();
  }).catch(e => toast("Loading environments failed: " + describe(e), "error"));
  loadPage();
  refreshSummary(true);

  return () => {
    stopped = true;
    document.removeEventListener("fleet-event", onEvent);
    clearTimeout(flushTimer);
    clearTimeout(summaryTimer);
    clearInterval(ticker);
    for (const t of typing) clearTimeout(t);
  };
}

const val = id => document.getElementById(id).value.trim();

/** ", 2 skipped (docker: 2)" from a bulk answer's reasons, or nothing. */
function skippedText(skipped) {
  const reasons = Object.entries(skipped || {}).filter(([, n]) => n > 0);
  const total = reasons.reduce((sum, [, n]) => sum + n, 0);
  return total ? ", " + total + " skipped (" + reasons.map(([why, n]) => why.replace(/_/g, " ") + ": " + n).join(", ") + ")" : "";
}

/** A node's admin buttons: maintenance, restart, revoke, each confirmed; `changed` runs after a change. */
export function nodeActions(n, changed, revoked = changed) {
  const base = "/api/v1/fleet/" + n.id;
  return [
    el("button", { type: "button", class: "maintenance", onclick: async () => {
      const on = !n.maintenanceMode;
      const ok = await confirmDialog({ title: (on ? "Maintenance for " : "End maintenance of ") + n.host,
        text: on ? n.host + " stops all its pipelines until maintenance ends." : n.host + " gets its pipelines back.",
        ok: on ? "Start maintenance" : "End maintenance" });
      if (ok && await run("Maintenance", () => api("POST", base + "/maintenance", { enabled: on }),
        () => (on ? "Maintenance on for " : "Maintenance off for ") + n.host)) changed();
    } }, n.maintenanceMode ? "End maintenance" : "Maintenance"),
    el("button", { type: "button", class: "restart", onclick: async () => {
      const ok = await confirmDialog({ title: "Restart " + n.host, text: "Restart every pipeline on " + n.host + "?", ok: "Restart" });
      if (ok && await run("Restart", () => api("POST", base + "/actions", { type: "restart" }), () => "Restart sent to " + n.host)) changed();
    } }, "Restart"),
    el("button", { type: "button", class: "danger revoke", onclick: async () => {
      const ok = await confirmDialog({ title: "Revoke " + n.host,
        text: "Revoke " + n.host + "? Its token stops working immediately and it must enroll again.", ok: "Revoke", danger: true });
      if (ok && await run("Revoke", () => api("DELETE", base), () => "Revoked " + n.host)) revoked();
    } }, "Revoke"),
  ];
}
