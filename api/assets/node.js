// One node in detail: what it reports about itself, its labels (admins edit them), actions,
// host metrics, and per pipeline its status, counters, live log, a restart button and a
// sample / live tap viewer that targets this node.
import { ago, api, ApiError, can, confirmDialog, describe, el, facts, num, panel, parseLabelLines, pill, plural, put, run, toast, when } from "./lib.js";
import { nodeActions, wsBadge } from "./fleet.js";
import { componentsOf } from "./yaml.js";
import { historyOf } from "./activity.js";

const REFRESH_MS = 1000;
const SAMPLE_POLL_MS = 500;
/** Live log lines kept per pipeline; older ones make way. */
const LOG_LINES = 500;

export function mount(main, { id, query }) {
  let node = null, names = {}, stopped = false, refreshTimer = null, lastRefresh = 0, loaded = false, failing = false;
  const cleanups = [];
  const sections = new Map();
  const head = el("div", { class: "node-head" });
  const about = el("div", { class: "grid" });
  const pipelines = el("div", { class: "pipelines", id: "node-pipelines" });
  // The labels panel lives across refreshes: an admin's open edit is never redrawn away.
  const labels = el("div", { class: "labels-box" });
  let labelsForm = null;
  main.append(el("p", {}, el("a", { href: "#/fleet" }, "← Fleet")), head, about,
    el("h2", { class: "section-title" }, "Pipelines"), pipelines);

  function render() {
    const n = node;
    const status = n.maintenanceMode ? "MAINTENANCE" : n.status;
    put(head, el("h1", { class: "view-title", id: "node-host" }, n.host), pill(status), n.wsConnected ? wsBadge(n) : null,
      can("admin") ? el("span", { class: "actions" }, ...nodeActions(n, refresh, () => { location.hash = "#/fleet"; }), selfUpdateButton(n)) : null,
      can("admin") ? el("a", { href: historyOf("node", n.id), id: "node-history" }, "History") : null);
    const pending = n.pendingAction ? n.pendingAction.type + (n.pendingAction.targetVersion ? " → " + n.pendingAction.targetVersion : "")
      + (n.pendingAction.pipelineId ? " (" + (names[n.pendingAction.pipelineId] || n.pendingAction.pipelineId) + ")" : "") : "none";
    put(about, 
      panel("Node", facts([
        ["Status", status], ["Last seen", ago(n.lastSeen)], ["OS", n.os], ["Agent", n.agentVersion], ["Vector", n.vectorVersion],
        ["Deployment", n.deploymentMode], ["Running as", n.runningAs],
        ["Gateway", n.wsConnected ? n.gatewayId : "not connected"],
        ["Transport", n.wsConnected ? (n.pushTransport === "sse" ? "Server-Sent Events" : "WebSocket") : "polling only"],
        ["Connected since", n.wsConnected ? when(n.connectedSince) : "—"], ["Enrolled", when(n.enrolledAt)],
        ["Pending action", pending], ["Last update error", n.lastUpdateError ? el("span", { class: "bad" }, n.lastUpdateError) : "none"],
      ])),
      labels,
      panel("Host metrics", metricFacts(n.hostMetrics, "No host metrics reported.")),
      panel("Agent health", metricFacts(n.agentHealth, "No agent health reported.")));
    if (!labelsForm || labelsForm.hidden) put(labels, labelsPanel(n));
    const seen = new Set();
    for (const p of n.pipelines) {
      seen.add(p.pipelineId);
      let s = sections.get(p.pipelineId);
      if (!s) { s = pipelineSection(p.pipelineId); sections.set(p.pipelineId, s); pipelines.append(s.root); }
      s.update(p);
    }
    for (const [pid, s] of sections) if (!seen.has(pid)) { s.root.remove(); s.stop(); sections.delete(pid); }
    if (!n.pipelines.length && !pipelines.querySelector(".empty")) pipelines.append(el("p", { class: "empty" }, "No pipelines on this node."));
    else if (n.pipelines.length) pipelines.querySelector(".empty")?.remove();
    main.setAttribute("aria-busy", "false");
  }

  // The labels in effect, and where each comes from. Admins edit the operator's labels only:
  // the agent's own stay its own (a pipeline matching "operator labels only" relies on that).
  function labelsPanel(n) {
    const operator = n.operatorLabels || {}, reported = n.reportedLabels || {};
    const list = (idName, entries, none) => entries.length
      ? el("ul", { class: "labels", id: idName }, ...entries.map(([k, v]) => el("li", {}, el("code", {}, k + "=" + v))))
      : el("p", { class: "muted", id: idName }, none);
    const parts = [list("node-labels", Object.entries(n.labels || {}), "No labels."),
      el("h3", {}, "Set by an operator"), list("node-operator-labels", Object.entries(operator), "None."),
      el("h3", {}, "Reported by the agent"), list("node-reported-labels", Object.entries(reported), "None.")];
    labelsForm = null;
    if (!can("admin")) return panel("Labels", ...parts);
    const edit = el("textarea", { id: "labels-edit", rows: 3, "aria-label": "Operator labels, one key=value per line", spellcheck: "false" },
      Object.entries(operator).map(([k, v]) => k + "=" + v).join("\n"));
    const form = el("form", { class: "labels-form", hidden: true, onsubmit: async ev => {
      ev.preventDefault();
      let next;
      try { next = parseLabelLines(edit.value); } catch (e) { toast("Labels: " + e.message, "error"); return; }
      const r = await run("Saving labels", () => api("PUT", "/api/v1/fleet/" + n.id + "/labels", { labels: next }), () => "Labels of " + n.host + " saved");
      if (r && !stopped) { form.hidden = true; await load(); }
    } }, el("p", { class: "muted" }, "The operator's labels, one key=value per line. They take precedence over the agent's for the same key; the agent's own are not changed."),
      edit, el("div", { class: "row" }, el("button", { type: "submit", class: "primary" }, "Save labels"),
      el("button", { type: "button", onclick: () => { form.hidden = true; if (node) render(); } }, "Cancel")));
    labelsForm = form;
    return panel("Labels", ...parts, form, el("button", { type: "button", id: "labels-open", onclick: () => { form.hidden = false; edit.focus(); } }, "Edit labels"));
  }

  function selfUpdateButton(n) {
    return el("button", { type: "button", onclick: async () => {
      const field = (idName, label, placeholder) => el("label", {}, label, el("input", { id: idName, placeholder }));
      const body = el("div", { class: "form" }, field("su-version", "Target version", "0.2.0"),
        field("su-url", "Download URL", "https://…"), field("su-checksum", "Checksum", "sha256:<hex>"),
        field("su-signature", "Signature (optional)", "base64 ed25519"));
      const ok = await confirmDialog({ title: "Self-update " + n.host, text: "The agent downloads, verifies and runs the new binary.", ok: "Update", body });
      if (!ok) return;
      const v = idName => document.getElementById(idName).value.trim();
      await run("Self-update", () => api("POST", "/api/v1/fleet/" + n.id + "/actions", { type: "self_update", targetVersion: v("su-version"),
        downloadUrl: v("su-url"), checksum: v("su-checksum"), signature: v("su-signature") || undefined }), () => "Self-update sent to " + n.host);
      refresh();
    } }, "Self-update…");
  }

  function pipelineSection(pid) {
    const title = el("h3", {});
    const status = el("span");
    const info = el("div");
    const log = el("pre", { class: "log", "aria-live": "off" }, "Waiting for log lines…");
    const logState = el("span", { class: "muted log-state" });
    const viewer = sampleViewer(pid);
    const root = el("section", { class: "panel pipeline", "data-pipeline-id": pid, "aria-label": "Pipeline" },
      el("div", { class: "row" }, title, status,
        can("admin") ? el("button", { type: "button", class: "restart-pipeline", onclick: async () => {
          const name = names[pid] || pid;
          const ok = await confirmDialog({ title: "Restart " + name, text: "Restart " + name + " on " + node.host + "?", ok: "Restart" });
          if (ok) await run("Pipeline restart", () => api("POST", "/api/v1/fleet/" + id + "/actions", { type: "restart", pipelineId: pid }),
            () => "Restart of " + name + " sent to " + node.host);
        } }, "Restart this pipeline") : null),
      info, viewer.controls, el("h4", {}, "Live log ", logState), log, viewer.root);
    let kept = [];
    return {
      root,
      log(lines) {
        kept.push(...lines);
        if (kept.length > LOG_LINES) kept = kept.slice(-LOG_LINES);
        log.textContent = kept.join("\n");
        log.scrollTop = log.scrollHeight;
      },
      // A (re)opened stream sends the kept lines again: they replace what is shown.
      restart() { kept = []; logState.textContent = ""; },
      streamState(text) { logState.textContent = text; },
      update(p) {
        const stale = p.lastKnown || node.status === "UNREACHABLE";
        title.textContent = (names[pid] || pid) + " v" + p.version;
        put(status, pill(p.status, stale ? "last-known" : ""), stale ? el("span", { class: "muted" }, " last known") : null);
        const counters = Object.entries(p.metrics || {}).filter(([, v]) => typeof v === "number").map(([k, v]) => [k, num(v)]);
        put(info, facts([["Status", p.status], ["Uptime", p.uptimeSeconds == null ? "—" : p.uptimeSeconds + " s"],
          ["Config checksum", p.configChecksum ? p.configChecksum.slice(0, 16) + "…" : "—"], ["Reported", ago(p.updatedAt)], ...counters]));
      },
      stop: viewer.stop,
    };
  }

  // Samples go to every node running the pipeline; this viewer shows what this node sent.
  // A live tap runs on this node only.
  function sampleViewer(pid) {
    const component = el("input", { class: "component", list: "components-" + pid, placeholder: "component key", "aria-label": "Component" });
    const options = el("datalist", { id: "components-" + pid });
    const out = el("pre", { class: "sample-events", "aria-live": "polite" });
    let tap = null, poll = null, starting = false;
    const tapButton = el("button", { type: "button", class: "tap", onclick: () => (tap ? stopTap() : startTap()) }, "Start live tap");
    api("GET", "/api/v1/pipelines/" + pid).then(p => {
      const version = p.versions.find(v => v.version === (p.deployedVersion ?? p.latestVersion)) || p.versions[p.versions.length - 1];
      const keys = version ? componentsOf(version.configYaml).filter(c => c.kind !== "sinks").map(c => c.key) : [];
      put(options, ...keys.map(k => el("option", { value: k })));
      if (!component.value && keys.length) component.value = keys[0];
    }).catch(() => {});
    const show = (text, events) => { out.textContent = text + (events.length ? "\n" + events.map(e => JSON.stringify(e)).join("\n") : ""); };

    async function sample() {
      const key = component.value.trim();
      if (!key) { toast("Name a component to sample", "error"); return; }
      clearTimeout(poll);
      const r = await run("Sample", () => api("POST", "/api/v1/pipelines/" + pid + "/samples", { componentKeys: [key], limit: 5 }),
        r => "Sample requested from " + plural(r.notifiedNodes, "node"));
      if (!r) return;
      show("Waiting for " + key + "…", []);
      const check = async () => {
        if (stopped) return;
        let s;
        try { s = await api("GET", "/api/v1/samples/" + r.requestId); } catch (e) { show("Sample failed: " + describe(e), []); return; }
        const mine = s.samples.filter(x => x.nodeId === id);
        const events = mine.flatMap(x => x.events || []);
        const errors = mine.filter(x => x.error).map(x => x.componentKey + ": " + x.error);
        if (s.status === "PENDING" && !mine.length) { poll = setTimeout(check, SAMPLE_POLL_MS); return; }
        show(errors.length ? "Error: " + errors.join("; ") : plural(events.length, "event") + " from " + key + " on " + node.host
          + (s.status === "PENDING" ? " (more nodes may answer)" : ""), events);
      };
      check();
    }

    // One tap at a time: the button is off while one starts, and a view left meanwhile
    // ends the tap it started.
    async function startTap() {
      if (starting || tap) return;
      const key = component.value.trim();
      if (!key) { toast("Name a component to tap", "error"); return; }
      starting = true;
      tapButton.disabled = true;
      let r;
      try {
        r = await run("Live tap", () => api("POST", "/api/v1/taps", { nodeId: id, pipelineId: pid, componentId: key }),
          () => "Live tap of " + key + " started on " + node.host);
      } finally { starting = false; tapButton.disabled = false; }
      if (!r) return;
      if (stopped) { api("DELETE", "/api/v1/taps/" + r.requestId).catch(() => {}); return; }
      const events = [];
      show("Tapping " + key + "…", events);
      const es = new EventSource("/api/v1/taps/" + r.requestId + "/events");
      tap = { es, requestId: r.requestId };
      tapButton.textContent = "Stop live tap";
      const parse = data => { try { return JSON.parse(data); } catch { return null; } };
      es.addEventListener("events", ev => {
        const batch = parse(ev.data);
        if (!batch || !Array.isArray(batch.events)) return;
        events.push(...batch.events);
        events.splice(0, Math.max(0, events.length - 200));
        show("Live tap of " + key + ": " + plural(events.length, "event"), events);
      });
      es.addEventListener("stopped", ev => { show("Tap stopped: " + (parse(ev.data)?.reason ?? "unknown reason"), events); endTap(); });
      es.addEventListener("error", () => {
        if (tap?.es !== es) return;
        if (es.readyState === EventSource.CLOSED) { show("Tap stream closed", events); endTap(); }
        else show("Live tap of " + key + ": reconnecting…", events);
      });
    }
    function endTap() { if (tap) tap.es.close(); tap = null; tapButton.textContent = "Start live tap"; }
    // Ended on the server first: closing the stream first would end it as its last viewer
    // left, and the DELETE would find nothing. One that has already ended is as good as stopped.
    async function stopTap() {
      if (!tap) return;
      const requestId = tap.requestId;
      tapButton.disabled = true;
      try {
        await run("Stopping the tap", async () => {
          try { await api("DELETE", "/api/v1/taps/" + requestId); }
          catch (e) { if (!(e instanceof ApiError && e.status === 404)) throw e; }
        }, () => "Live tap stopped");
      } finally { tapButton.disabled = false; }
      endTap();
    }
    // The controls sit above the live log, whose growth would otherwise move them.
    const controls = can("editor") ? el("div", { class: "row sampler-controls" }, component, options,
      el("button", { type: "button", class: "sample", onclick: sample }, "Take a sample"), tapButton) : null;
    const root = el("div", { class: "sampler" }, el("h4", {}, "Events"),
      can("editor") ? null : el("p", { class: "muted" }, "Editors can sample and tap this pipeline's events."), out);
    return { root, controls, stop() { clearTimeout(poll); if (tap) { tap.es.close(); api("DELETE", "/api/v1/taps/" + tap.requestId).catch(() => {}); } } };
  }

  // The first load that fails replaces the page; a failed refresh only says so (once until
  // one succeeds) and keeps what is shown. A node that is gone is said so either way.
  async function load() {
    let fresh;
    try {
      // The kept log lines come over the log stream; each refresh leaves them out.
      fresh = await api("GET", "/api/v1/fleet/" + id + "?recentLogs=false");
    } catch (e) {
      if (stopped) return false;
      if (!loaded || (e instanceof ApiError && e.status === 404)) {
        put(main, el("p", { class: "empty" }, e.status === 404 ? "This node is gone (revoked or never enrolled)." : "Loading the node failed: " + describe(e)),
          el("p", {}, el("a", { href: "#/fleet" }, "← Fleet")));
        main.setAttribute("aria-busy", "false");
        stop();
      } else if (!failing) {
        failing = true;
        toast("Refreshing the node failed: " + describe(e), "error");
      }
      return false;
    }
    if (stopped) return false;
    node = fresh;
    loaded = true;
    failing = false;
    render();
    return true;
  }

  // Re-reads the node at most once a second while events about it arrive.
  function refresh() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(() => { refreshTimer = null; lastRefresh = Date.now(); load(); },
      Math.max(0, lastRefresh + REFRESH_MS - Date.now()));
  }

  function onEvent(ev) {
    const e = ev.detail;
    if (e.kind === "resync" || e.nodeId === id) refresh();
  }

  (async () => {
    try {
      const all = await api("GET", "/api/v1/pipelines");
      names = Object.fromEntries(all.pipelines.map(p => [p.id, p.name]));
    } catch { /* names fall back to ids */ }
    if (!(await load()) || stopped) return;
    // One stream carries every pipeline's lines: the kept ones first, then new ones.
    const logs = new EventSource("/api/v1/fleet/" + id + "/logs");
    logs.addEventListener("open", () => { for (const s of sections.values()) s.restart(); });
    logs.addEventListener("lines", ev => {
      let batch;
      try { batch = JSON.parse(ev.data); } catch { return; }
      if (Array.isArray(batch.lines)) sections.get(batch.pipelineId)?.log(batch.lines);
    });
    logs.addEventListener("error", () => {
      const state = logs.readyState === EventSource.CLOSED ? "(stream closed: reload the page to follow it again)" : "(reconnecting…)";
      for (const s of sections.values()) s.streamState(state);
    });
    cleanups.push(() => logs.close());
    const wanted = query.get("pipeline");
    if (wanted && sections.has(wanted)) {
      const s = sections.get(wanted).root;
      s.classList.add("focus");
      s.scrollIntoView({ block: "start" });
    }
  })();
  document.addEventListener("fleet-event", onEvent);

  function stop() {
    if (stopped) return;
    stopped = true;
    clearTimeout(refreshTimer);
    document.removeEventListener("fleet-event", onEvent);
    for (const s of sections.values()) s.stop();
    for (const c of cleanups) c();
  }
  return stop;
}

/** A reported metrics object as facts (one level of nesting flattened). */
function metricFacts(m, none) {
  if (!m || typeof m !== "object" || !Object.keys(m).length) return el("p", { class: "muted" }, none);
  const pairs = [];
  for (const [k, v] of Object.entries(m)) {
    if (v && typeof v === "object" && !Array.isArray(v)) for (const [k2, v2] of Object.entries(v)) pairs.push([k + "." + k2, show(v2)]);
    else pairs.push([k, show(v)]);
  }
  return facts(pairs);
}

const show = v => (typeof v === "number" ? num(v) : typeof v === "string" ? v : JSON.stringify(v));
