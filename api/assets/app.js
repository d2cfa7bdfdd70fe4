// The operator console's entry point: hash routes to views, and the one live fleet-event
// stream the views listen to.
import { api, ApiError, can, cancelDialog } from "./lib.js";
import * as fleet from "./fleet.js";
import * as node from "./node.js";
import * as pipelines from "./pipelines.js";
import * as activity from "./activity.js";
import * as admin from "./admin.js";

// #/<name>/<id>?<query> → the view that draws it. Each view's `mount(main, {id, query})` draws
// into <main> and returns a function that stops what it started (streams, timers).
const routes = {
  fleet: fleet.mount,
  node: node.mount,
  pipelines: pipelines.mountList,
  pipeline: pipelines.mountEditor,
  activity: activity.mount,
  admin: admin.mount,
};

const main = document.getElementById("view");
let stop = null;

function route() {
  const [path, q] = location.hash.replace(/^#\/?/, "").split("?");
  const [name, id] = path.split("/");
  if (!routes[name]) { location.replace("#/fleet"); return; }
  // A confirmation left open belongs to the view being left: it confirms nothing.
  cancelDialog();
  if (stop) stop();
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.view === name || (a.dataset.view === "pipelines" && name === "pipeline")
        || (a.dataset.view === "fleet" && name === "node")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  main.replaceChildren();
  main.setAttribute("aria-busy", "true");
  main.dataset.view = name;
  stop = routes[name](main, { id: id ? decodeURIComponent(id) : null, query: new URLSearchParams(q || "") }) || null;
}

// Admin-only destinations are shown to admins only (the api refuses the rest regardless).
for (const a of document.querySelectorAll("nav a[data-role]")) a.hidden = !can(a.dataset.role);

// One stream of fleet events for the whole page; views subscribe while they are shown.
// EventSource retries by itself after a dropped connection, but not after an error answer
// (a 401 once the session has expired): then the session is probed (signed out: the page
// reloads to the sign-in form) and the stream reopened with backoff.
const live = document.getElementById("live");
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 30000;
let retryMs = RETRY_MIN_MS;
function connect() {
  const es = new EventSource("/api/v1/fleet/events");
  es.addEventListener("open", () => { retryMs = RETRY_MIN_MS; live.textContent = "live"; live.className = "on"; });
  es.addEventListener("message", ev => {
    let event;
    try { event = JSON.parse(ev.data); } catch { return; }
    document.dispatchEvent(new CustomEvent("fleet-event", { detail: event }));
  });
  es.addEventListener("error", () => {
    live.className = "";
    if (es.readyState !== EventSource.CLOSED) { live.textContent = "reconnecting…"; return; }
    es.close();
    live.textContent = "disconnected, retrying…";
    const wait = retryMs;
    retryMs = Math.min(RETRY_MAX_MS, retryMs * 2);
    setTimeout(async () => {
      // The request helper reloads a signed-out page (401); any other failure is left to the
      // new stream, which backs off again if the api is still away.
      try { await api("GET", "/api/v1/me"); }
      catch (e) { if (e instanceof ApiError && e.status === 401) return; }
      connect();
    }, wait);
  });
}

window.addEventListener("hashchange", route);
route();
connect();
