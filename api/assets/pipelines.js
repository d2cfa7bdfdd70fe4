// Pipelines: the list per environment, and one pipeline's page — the YAML editor validated on
// the server as you type, versions with a diff between any two, a live preview of the nodes
// its selector matches, and deploy, undeploy, rollback and delete, each confirmed.
import { api, ApiError, can, confirmDialog, debounce, describe, el, formatLabels, panel, parseLabels, pill, plural, put, run, toast, when } from "./lib.js";
import { renderDiff, yamlEditor } from "./editor.js";
import { historyOf } from "./activity.js";

const VALIDATE_DELAY_MS = 400;
const PREVIEW_DELAY_MS = 300;
const LOG_LEVELS = ["", "trace", "debug", "info", "warn", "error"];
const STARTER = "sources:\n  in:\n    type: demo_logs\n    format: syslog\nsinks:\n  out:\n    type: console\n    inputs: [in]\n    encoding:\n      codec: json\n";

/** The environment the operator picked last (shared with the fleet view), or the first. */
function pickEnv(environments) {
  const saved = localStorage.getItem("flotilla.env");
  return environments.find(e => e.id === saved) || environments[0];
}

function envPicker(environments, current, onChange) {
  return el("label", {}, "Environment", el("select", { id: "pipelines-env", onchange: ev => { localStorage.setItem("flotilla.env", ev.target.value); onChange(ev.target.value); } },
    ...environments.map(e => el("option", { value: e.id, selected: e.id === current }, e.name))));
}

export function mountList(main) {
  let stopped = false, showing = 0;
  const body = el("div");
  main.append(el("div", { class: "row" }, el("h1", { class: "view-title" }, "Pipelines"), el("span", { class: "spacer" }),
    can("editor") ? el("a", { class: "button primary", href: "#/pipeline/new", id: "new-pipeline" }, "New pipeline") : null), body);

  // Environments picked in quick succession: only the newest one's answer is shown.
  async function show(envId) {
    const mine = ++showing;
    try {
      const { pipelines } = await api("GET", "/api/v1/pipelines?environmentId=" + envId);
      if (stopped || mine !== showing) return;
      const rows = pipelines.map(p => el("tr", { "data-pipeline-id": p.id },
        el("th", { scope: "row" }, el("a", { href: "#/pipeline/" + p.id }, p.name)),
        el("td", {}, p.deployedVersion ? pill("DEPLOYED") : pill("NOT_DEPLOYED"), p.deployedVersion ? " v" + p.deployedVersion : ""),
        el("td", {}, "v" + p.latestVersion),
        el("td", {}, el("code", {}, formatLabels(p.nodeSelector) || "every node"), p.selectorLabels === "operator" ? " (operator labels)" : ""),
        el("td", {}, when(p.updatedAt))));
      put(table.querySelector("tbody"), ...rows);
      if (!rows.length) table.querySelector("tbody").append(el("tr", {}, el("td", { colspan: 5, class: "empty" }, "No pipelines in this environment yet.")));
    } catch (e) {
      if (stopped || mine !== showing) return;
      toast("Loading pipelines failed: " + describe(e), "error");
    }
    main.setAttribute("aria-busy", "false");
  }
  const table = el("section", { class: "panel table", "aria-label": "Pipelines" }, el("table", { id: "pipelines" },
    el("thead", {}, el("tr", {}, ...["Name", "Deployed", "Latest", "Node selector", "Updated"].map(h => el("th", { scope: "col" }, h)))), el("tbody")));

  api("GET", "/api/v1/environments").then(({ environments }) => {
    if (stopped) return;
    if (!environments.length) { body.append(el("p", { class: "empty" }, "No environments yet." + (can("admin") ? " Create one under Admin." : ""))); main.setAttribute("aria-busy", "false"); return; }
    const env = pickEnv(environments);
    body.append(el("div", { class: "filters" }, envPicker(environments, env.id, show)), table);
    show(env.id);
  }).catch(e => toast("Loading environments failed: " + describe(e), "error"));
  return () => { stopped = true; };
}

export function mountEditor(main, { id }) {
  const creating = id === "new";
  let pipeline = null, environments = [], stopped = false, validating = 0, saving = false, loaded = false;
  const editable = can("editor");
  // Creating is for editors; a viewer who follows a link here is sent to the list.
  if (creating && !editable) {
    location.replace("#/pipelines");
    return () => {};
  }

  const validation = el("p", { id: "validation", class: "validation", "aria-live": "polite" });
  const validateSoon = debounce(validate, VALIDATE_DELAY_MS);
  const editor = yamlEditor(creating ? STARTER : "", { readOnly: !editable, onInput: validateSoon });
  const name = el("input", { id: "pipeline-name", required: true, placeholder: "nginx-logs", autocomplete: "off" });
  const envSelect = el("select", { id: "pipeline-env", onchange: () => previewSoon() });
  const selector = el("input", { id: "selector", placeholder: "key=value, key=value (empty: every node)", autocomplete: "off", readonly: !editable, oninput: () => previewSoon() });
  const selectorLabels = el("select", { id: "selector-labels", disabled: !editable, onchange: () => previewSoon() },
    el("option", { value: "any" }, "reported or operator labels"), el("option", { value: "operator" }, "operator labels only"));
  const logLevel = el("select", { id: "log-level", disabled: !editable }, ...LOG_LEVELS.map(l => el("option", { value: l }, l || "default")));
  const preview = el("div", { id: "selector-preview", class: "preview", "aria-live": "polite" });
  const heading = el("h1", { class: "view-title" }, creating ? "New pipeline" : "Pipeline");
  const deployState = el("div", { class: "deploy-state" });
  const versions = el("div");
  const diffOut = el("div");
  const save = el("button", { type: "submit", class: "primary", id: "save", hidden: !editable }, creating ? "Create pipeline" : "Save as new version");

  const form = el("form", { class: "pipeline-form", onsubmit: ev => { ev.preventDefault(); submit(); } },
    creating ? el("div", { class: "row" }, el("label", {}, "Name", name), el("label", {}, "Environment", envSelect)) : null,
    // Save sits above everything that changes height as you type (preview, editor, messages).
    el("div", { class: "row" }, el("label", { class: "grow" }, "Node selector", selector), el("label", {}, "Matches", selectorLabels),
      el("label", {}, "Log level", logLevel), save),
    preview,
    el("label", { class: "editor-label", for: "yaml" }, "Config (Vector YAML)"), editor.root, validation);
  main.append(el("p", {}, el("a", { href: "#/pipelines" }, "← Pipelines")), el("div", { class: "row" }, heading, deployState), form);
  if (!creating) main.append(panel("Versions", versions), diffOut);

  const envId = () => (creating ? envSelect.value : pipeline?.environmentId);

  function selectorValue() {
    try { return { ok: true, value: parseLabels(selector.value) }; } catch (e) { return { ok: false, error: e.message }; }
  }

  // Validation answers may arrive out of order; only the newest one is shown. Validating is
  // an editor's right: a viewer's read-only editor is not checked.
  async function validate() {
    if (!editable || stopped) return;
    const mine = ++validating;
    const text = editor.value();
    validation.className = "validation pending";
    validation.textContent = "Checking…";
    try {
      await api("POST", "/api/v1/pipelines/validate", { configYaml: text });
      if (mine !== validating || stopped) return;
      validation.className = "validation ok";
      validation.textContent = "Valid Vector config";
      editor.mark(null);
    } catch (e) {
      if (mine !== validating || stopped) return;
      showInvalid(e);
    }
  }

  function showInvalid(e) {
    const d = e instanceof ApiError && e.details && typeof e.details === "object" ? e.details : {};
    if (e instanceof ApiError && (e.status === 404 || e.status === 405)) {
      validation.className = "validation pending";
      validation.textContent = "This server does not validate configs before saving.";
      return;
    }
    validation.className = "validation bad";
    const where = d.line ? "Line " + d.line + (d.column ? ", column " + d.column : "") + ": " : "";
    validation.textContent = where + (d.reason || (e instanceof ApiError ? e.describe() : e.message));
    validation.dataset.line = d.line || "";
    editor.mark(d.line || null);
  }

  const previewSoon = debounce(() => showPreview(preview, selector.value, selectorLabels.value), PREVIEW_DELAY_MS);

  // The nodes a selector matches now: count and first rows.
  async function showPreview(box, selectorText, labelsFrom) {
    const mine = String(Number(box.dataset.seq || 0) + 1);
    box.dataset.seq = mine;
    let nodeSelector;
    try { nodeSelector = parseLabels(selectorText); } catch (e) { box.textContent = "Selector: " + e.message; return null; }
    const env = envId();
    if (!env) return null;
    box.textContent = "Matching nodes…";
    try {
      const r = await api("POST", "/api/v1/environments/" + env + "/selector-preview", { nodeSelector, selectorLabels: labelsFrom });
      if (box.dataset.seq !== mine || stopped) return r;
      // Nodes in maintenance match but run nothing until it ends; they are counted apart.
      const resting = r.inMaintenance || 0;
      put(box, el("p", { class: "count" }, "Matches " + plural(r.count, "node")
        + (resting ? " (and " + resting + " in maintenance, which get it when maintenance ends)" : "")
        + (Object.keys(nodeSelector).length ? "" : " (no selector: every node of the environment)")),
        r.nodes.length ? el("table", { class: "compact" }, el("tbody", {}, ...r.nodes.map(n => el("tr", {},
          el("td", {}, el("a", { href: "#/node/" + n.id }, n.host)), el("td", {}, pill(n.maintenance ? "MAINTENANCE" : n.status)),
          el("td", {}, el("code", {}, formatLabels(n.labels))))))) : null,
        r.count + resting > r.nodes.length ? el("p", { class: "muted" }, "… and " + (r.count + resting - r.nodes.length) + " more") : null);
      return r;
    } catch (e) {
      box.textContent = "Preview failed: " + describe(e);
      return null;
    }
  }

  // One save at a time: a double click must not make two versions.
  async function submit() {
    if (saving) return;
    const sel = selectorValue();
    if (!sel.ok) { toast("Node selector: " + sel.error, "error"); return; }
    const body = { configYaml: editor.value(), nodeSelector: sel.value, selectorLabels: selectorLabels.value, logLevel: logLevel.value || undefined };
    saving = true;
    save.disabled = true;
    try {
      if (creating) {
        const p = await api("POST", "/api/v1/pipelines", { ...body, environmentId: envSelect.value, name: name.value.trim() });
        toast("Pipeline " + p.name + " created (v1, not deployed)");
        location.hash = "#/pipeline/" + p.id;
      } else {
        const p = await then(api("PUT", "/api/v1/pipelines/" + id, body));
        toast("Saved " + p.name + " v" + p.latestVersion);
      }
    } catch (e) {
      if (e instanceof ApiError && e.status === 422 && e.details && (e.details.line || e.details.field === "configYaml")) showInvalid(e);
      toast((creating ? "Creating" : "Saving") + " failed: " + describe(e), "error");
    } finally {
      saving = false;
      save.disabled = false;
    }
  }

  function renderPipeline() {
    const p = pipeline;
    heading.textContent = p.name;
    put(deployState, p.deployedVersion ? pill("DEPLOYED") : pill("NOT_DEPLOYED"),
      el("span", { id: "deployed-version" }, p.deployedVersion ? " v" + p.deployedVersion + " deployed" : " not deployed"),
      el("span", { class: "muted" }, " · latest v" + p.latestVersion),
      editable ? el("span", { class: "actions" },
        el("button", { type: "button", class: "primary", id: "deploy", onclick: deploy }, "Deploy…"),
        el("button", { type: "button", id: "undeploy", disabled: !p.deployedVersion, onclick: undeploy }, "Undeploy"),
        el("button", { type: "button", id: "rollback", disabled: !olderThanDeployed(p).length, onclick: rollback }, "Roll back…"),
        el("button", { type: "button", class: "danger", id: "delete", onclick: remove }, "Delete")) : null,
      can("admin") ? el("a", { href: historyOf("pipeline", p.id), id: "pipeline-history" }, "History") : null);
    const rows = [...p.versions].sort((a, b) => b.version - a.version).map(v => el("tr", { "data-version": v.version },
      el("th", { scope: "row" }, "v" + v.version), el("td", {}, v.version === p.deployedVersion ? pill("DEPLOYED") : ""),
      el("td", {}, when(v.createdAt)), el("td", {}, el("code", {}, v.checksum.slice(0, 12))),
      el("td", {}, el("code", {}, formatLabels(v.nodeSelector) || "every node")),
      el("td", {}, el("button", { type: "button", class: "link", onclick: () => { editor.set(v.configYaml); validate(); toast("v" + v.version + " loaded into the editor"); } }, "Open in editor"))));
    const options = sel => [...p.versions].sort((a, b) => a.version - b.version).map(v => el("option", { value: v.version, selected: v.version === sel }, "v" + v.version));
    const from = el("select", { id: "diff-from", "aria-label": "From version" }, ...options(Math.max(1, p.latestVersion - 1)));
    const to = el("select", { id: "diff-to", "aria-label": "To version" }, ...options(p.latestVersion));
    put(versions, el("table", { id: "versions" }, el("thead", {}, el("tr", {}, ...["Version", "", "Created", "Checksum", "Selector", ""].map(h => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...rows)),
      el("form", { class: "row diff-form", onsubmit: async ev => {
        ev.preventDefault();
        try {
          const d = await api("GET", "/api/v1/pipelines/" + id + "/diff?from=" + from.value + "&to=" + to.value);
          put(diffOut, panel("Diff v" + d.from + " → v" + d.to, renderDiff(d.diff)));
        } catch (e) { toast("Diff failed: " + describe(e), "error"); }
      } }, el("span", {}, "Diff"), from, el("span", {}, "→"), to, el("button", { type: "submit", id: "show-diff" }, "Show diff")));
  }

  // A change's answer, once the page shows its outcome: its result is reported only then, so
  // nothing is clicked on a page that still shows the state before it.
  async function then(change) {
    const result = await change;
    await load(false);
    return result;
  }

  const versionSelect = (idName, list, selected) => el("select", { id: idName }, ...list.map(v => el("option", { value: v.version, selected: v.version === selected }, "v" + v.version)));

  async function deploy() {
    const p = pipeline;
    const choose = versionSelect("deploy-version", [...p.versions].reverse(), p.latestVersion);
    const box = el("div", { id: "deploy-preview", class: "preview" });
    const update = () => {
      const v = p.versions.find(x => x.version === Number(choose.value));
      showPreview(box, formatLabels(v.nodeSelector), v.selectorLabels);
    };
    choose.addEventListener("change", update);
    update();
    const ok = await confirmDialog({ title: "Deploy " + p.name, ok: "Deploy",
      text: "The chosen version replaces what runs on the nodes its selector matches (shown below, as of now).",
      body: el("div", {}, el("label", {}, "Version ", choose), box) });
    if (!ok) return;
    const version = Number(choose.value);
    await run("Deploy", () => then(api("POST", "/api/v1/pipelines/" + id + "/deploy", { version })),
      r => "Deployed " + p.name + " v" + r.deployedVersion + " (" + plural(r.notifiedNodes, "node") + " notified)");
  }

  async function undeploy() {
    const p = pipeline;
    const ok = await confirmDialog({ title: "Undeploy " + p.name, text: "Every node stops running " + p.name + ". Its versions are kept.", ok: "Undeploy", danger: true });
    if (ok) await run("Undeploy", () => then(api("POST", "/api/v1/pipelines/" + id + "/undeploy")), () => p.name + " undeployed");
  }

  async function rollback() {
    const p = pipeline;
    const older = olderThanDeployed(p);
    const choose = versionSelect("rollback-version", older, older[0]?.version);
    const ok = await confirmDialog({ title: "Roll back " + p.name, ok: "Roll back", danger: true,
      text: "Deploy an earlier version of " + p.name + " in place of " + (p.deployedVersion ? "v" + p.deployedVersion : "nothing") + ".",
      body: el("label", {}, "Version ", choose) });
    if (!ok) return;
    const version = Number(choose.value);
    await run("Rollback", () => then(api("POST", "/api/v1/pipelines/" + id + "/rollback", { version })),
      r => "Rolled " + p.name + " back to v" + (r.deployedVersion ?? version));
  }

  async function remove() {
    const p = pipeline;
    const ok = await confirmDialog({ title: "Delete " + p.name, ok: "Delete", danger: true,
      text: "Delete " + p.name + " and all its versions? Nodes running it stop it." });
    if (ok && await run("Delete", () => api("DELETE", "/api/v1/pipelines/" + id), () => p.name + " deleted")) location.hash = "#/pipelines";
  }

  // A failed first load replaces the page; a failed reload after a change only says so,
  // leaving the page (and the editor's text) as it was.
  async function load(fillEditor) {
    let fresh;
    try {
      fresh = await api("GET", "/api/v1/pipelines/" + id);
    } catch (e) {
      if (stopped) return;
      if (loaded) { toast("Reloading the pipeline failed: " + describe(e), "error"); return; }
      put(main, el("p", { class: "empty" }, e.status === 404 ? "No such pipeline." : "Loading the pipeline failed: " + describe(e)),
        el("p", {}, el("a", { href: "#/pipelines" }, "← Pipelines")));
      main.setAttribute("aria-busy", "false");
      return;
    }
    if (stopped) return;
    pipeline = fresh;
    loaded = true;
    if (fillEditor) {
      const latest = pipeline.versions.find(v => v.version === pipeline.latestVersion);
      editor.set(latest.configYaml);
      selector.value = formatLabels(latest.nodeSelector);
      selectorLabels.value = latest.selectorLabels;
      logLevel.value = latest.logLevel || "";
      validate();
      previewSoon();
    }
    renderPipeline();
    main.setAttribute("aria-busy", "false");
  }

  api("GET", "/api/v1/environments").then(({ environments: envs }) => {
    if (stopped) return;
    environments = envs;
    if (creating) {
      const env = pickEnv(environments);
      put(envSelect, ...environments.map(e => el("option", { value: e.id, selected: e.id === env?.id }, e.name)));
      if (!environments.length) toast("Create an environment first (Admin)", "error");
      main.setAttribute("aria-busy", "false");
      validate();
      previewSoon();
    }
  }).catch(e => toast("Loading environments failed: " + describe(e), "error"));
  if (!creating) load(true);
  return () => { stopped = true; validateSoon.cancel(); previewSoon.cancel(); };
}

/** The versions a rollback may go to: those below the deployed one, highest first. */
function olderThanDeployed(p) {
  if (!p.deployedVersion) return [];
  return p.versions.filter(v => v.version < p.deployedVersion).sort((a, b) => b.version - a.version);
}
