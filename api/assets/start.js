// Getting an agent running: the commands that start one with an enrollment token, and the
// panel an empty fleet shows a newcomer.
import { api, can, confirmDialog, copyable, el, put, run } from "./lib.js";

/** The shell and docker commands that start an agent enrolling with `token`. */
export function agentCommands(token) {
  const origin = location.origin;
  return el("div", { class: "commands" },
    el("p", {}, "On the host (with Vector installed), run the agent:"),
    copyable("VF_URL=" + origin + " VF_TOKEN=" + token + " flotilla-agent", "the agent command"),
    el("p", {}, "Or in Docker, with Vector in the same image (built from this repository: docker build --target agent-vector -t flotilla-agent-vector .):"),
    copyable("docker run -d --name flotilla-agent --network host -e VF_URL=" + origin + " -e VF_TOKEN=" + token
      + " -v flotilla-agent:/var/lib/vf-agent flotilla-agent-vector", "the docker command"));
}

/** A token shown once, with the commands that use it; it stays until "Done, hide it". */
export function shownOnce(title, token) {
  return secret({ id: "enrollment-secret" },
    el("h3", {}, title),
    el("p", {}, "This token is shown once. Copy it now: the api keeps only its hash."),
    copyable(token, "the enrollment token"),
    agentCommands(token));
}

/**
 * A panel holding a secret shown once. Redraws around it leave it be; only its "Done, hide
 * it" button takes it away, so it cannot vanish while being copied.
 */
export function secret(attrs, ...children) {
  const box = el("div", { ...attrs, class: "secret" }, ...children,
    el("button", { type: "button", class: "done", onclick: () => box.remove() }, "Done, hide it"));
  return box;
}

/**
 * The empty fleet's guide: how to get an enrollment token and start an agent. Admins get the
 * token right here (creating an environment first if there is none); others are told whom to ask.
 */
export function gettingStarted(environments, envId) {
  const env = environments.find(e => e.id === envId) || environments[0];
  const out = el("div", { class: "result" }, agentCommands("<enrollment token>"));
  const steps = el("ol", {},
    el("li", {}, "Get an enrollment token for an environment. ",
      can("admin") ? "It is shown once; getting a new one stops the previous one from enrolling more agents."
                   : "Ask an admin: they get one under Admin → Environments."),
    el("li", {}, "Start the agent on each host with that token; it enrolls and appears here within seconds."));
  const actions = el("div", { class: "row" });
  if (can("admin") && env) {
    actions.append(el("button", { type: "button", class: "primary", id: "get-token", onclick: async () => {
      const ok = await confirmDialog({ title: "New enrollment token for " + env.name,
        text: "The previous enrollment token of " + env.name + " stops working at once (enrolled agents are not affected).",
        ok: "Get token" });
      if (!ok) return;
      const r = await run("Enrollment token", () => api("POST", "/api/v1/environments/" + env.id + "/enrollment-token"),
        () => "New enrollment token for " + env.name);
      if (r) put(out, shownOnce("Enrollment token for " + env.name, r.enrollmentToken));
    } }, "Get an enrollment token for " + env.name));
  } else if (can("admin")) {
    const name = el("input", { id: "first-env-name", placeholder: "production", "aria-label": "Environment name", required: true });
    actions.append(el("form", { class: "row", onsubmit: async ev => {
      ev.preventDefault();
      const r = await run("Create environment", () => api("POST", "/api/v1/environments", { name: name.value.trim() }),
        e => "Environment " + e.name + " created");
      if (r) put(out, shownOnce("Enrollment token for " + r.name, r.enrollmentToken));
    } }, name, el("button", { type: "submit", class: "primary" }, "Create an environment")));
  }
  return el("section", { class: "panel getting-started", id: "getting-started", "aria-label": "Getting started" },
    el("h2", {}, "No agents yet"), steps, actions, out);
}
