// Administration: environments and their enrollment tokens (shown once, with the agent
// command), operator tokens (shown once; revocable) and the agents' poll interval.
import { api, can, confirmDialog, copyable, describe, el, panel, put, run, toast, when } from "./lib.js";
import { secret, shownOnce } from "./start.js";

const ROLES = ["viewer", "editor", "admin"];

export function mount(main) {
  let stopped = false;
  main.append(el("h1", { class: "view-title" }, "Admin"));
  if (!can("admin")) {
    main.append(el("p", { class: "empty" }, "Administration is for admins."));
    main.setAttribute("aria-busy", "false");
    return () => {};
  }
  const envBody = el("tbody");
  const envSecret = el("div", { id: "env-secret" });
  const tokenBody = el("tbody");
  const tokenSecret = el("div", { id: "token-secret" });
  const poll = el("input", { id: "poll-interval", type: "number", min: 1000, max: 3600000, step: 100, required: true });

  const envName = el("input", { id: "env-name", placeholder: "production", required: true, autocomplete: "off" });
  const tokenName = el("input", { id: "token-name", placeholder: "ci-deployer", required: true, autocomplete: "off" });
  const tokenRole = el("select", { id: "token-role" }, ...ROLES.map(r => el("option", { value: r }, r)));

  main.append(
    panel("Environments",
      el("table", { id: "environments" }, el("thead", {}, el("tr", {}, ...["Name", "Nodes", "Enrollment token", "Created", ""].map(h => el("th", { scope: "col" }, h)))), envBody),
      el("form", { class: "row", id: "env-create", onsubmit: async ev => {
        ev.preventDefault();
        const r = await run("Create environment", () => api("POST", "/api/v1/environments", { name: envName.value.trim() }), e => "Environment " + e.name + " created");
        if (r) { envName.value = ""; put(envSecret, shownOnce("Enrollment token for " + r.name, r.enrollmentToken)); loadEnvironments(); }
      } }, el("label", {}, "New environment", envName), el("button", { type: "submit", class: "primary" }, "Create")),
      envSecret),
    panel("Operator tokens",
      el("table", { id: "tokens" }, el("thead", {}, el("tr", {}, ...["Name", "Role", "Created", "State", ""].map(h => el("th", { scope: "col" }, h)))), tokenBody),
      el("form", { class: "row", id: "token-create", onsubmit: async ev => {
        ev.preventDefault();
        const r = await run("Create token", () => api("POST", "/api/v1/tokens", { name: tokenName.value.trim(), role: tokenRole.value }), t => "Token " + t.name + " (" + t.role + ") created");
        if (r) {
          tokenName.value = "";
          put(tokenSecret, secret({}, el("h3", {}, "Token " + r.name),
            el("p", {}, "Shown once: the api keeps only its hash. Use it as a bearer token or to sign in here."), copyable(r.token, "the operator token")));
          loadTokens();
        }
      } }, el("label", {}, "Name", tokenName), el("label", {}, "Role", tokenRole), el("button", { type: "submit", class: "primary" }, "Create token")),
      tokenSecret),
    panel("Agents",
      el("form", { class: "row", id: "settings", onsubmit: async ev => {
        ev.preventDefault();
        const ms = Number(poll.value);
        await run("Poll interval", () => api("PUT", "/api/v1/settings", { pollIntervalMs: ms }), r => "Poll interval set to " + ms + " ms (" + r.notifiedNodes + " agents told)");
      } }, el("label", {}, "Poll interval (ms)", poll), el("button", { type: "submit", class: "primary" }, "Save"),
        el("span", { class: "muted" }, "How often agents poll when nothing is pushed; 1,000 to 3,600,000."))));

  async function loadEnvironments() {
    try {
      const { environments } = await api("GET", "/api/v1/environments");
      if (stopped) return;
      put(envBody, ...environments.map(e => el("tr", { "data-environment-id": e.id },
        el("th", { scope: "row" }, e.name), el("td", {}, String(e.nodeCount)),
        el("td", {}, el("code", {}, e.enrollmentTokenHint || "—")), el("td", {}, when(e.createdAt)),
        el("td", {}, el("button", { type: "button", class: "rotate", onclick: async () => {
          const ok = await confirmDialog({ title: "New enrollment token for " + e.name, ok: "Rotate", danger: true,
            text: "The current enrollment token of " + e.name + " stops working at once; enrolled agents keep working." });
          if (!ok) return;
          const r = await run("Rotate", () => api("POST", "/api/v1/environments/" + e.id + "/enrollment-token"), () => "New enrollment token for " + e.name);
          if (r) { put(envSecret, shownOnce("Enrollment token for " + e.name, r.enrollmentToken)); loadEnvironments(); }
        } }, "New enrollment token")))));
      if (!environments.length) envBody.append(el("tr", {}, el("td", { colspan: 5, class: "empty" }, "No environments yet.")));
    } catch (e) { toast("Loading environments failed: " + describe(e), "error"); }
  }

  async function loadTokens() {
    try {
      const { tokens } = await api("GET", "/api/v1/tokens");
      if (stopped) return;
      put(tokenBody, ...tokens.map(t => el("tr", { "data-token-id": t.id },
        el("th", { scope: "row" }, t.name), el("td", {}, t.role), el("td", {}, when(t.createdAt)),
        el("td", {}, t.revoked ? "revoked" : t.bootstrap ? "bootstrap" : "active"),
        el("td", {}, t.revoked ? "" : el("button", { type: "button", class: "danger", onclick: async () => {
          const ok = await confirmDialog({ title: "Revoke " + t.name, ok: "Revoke", danger: true,
            text: "Revoke the token " + t.name + "? Requests and sessions using it fail at once." });
          if (ok && await run("Revoke", () => api("DELETE", "/api/v1/tokens/" + t.id), () => "Token " + t.name + " revoked")) loadTokens();
        } }, "Revoke")))));
    } catch (e) { toast("Loading tokens failed: " + describe(e), "error"); }
  }

  async function loadSettings() {
    try { poll.value = (await api("GET", "/api/v1/settings")).pollIntervalMs; } catch (e) { toast("Loading settings failed: " + describe(e), "error"); }
  }

  Promise.all([loadEnvironments(), loadTokens(), loadSettings()]).then(() => { if (!stopped) main.setAttribute("aria-busy", "false"); });
  return () => { stopped = true; };
}
