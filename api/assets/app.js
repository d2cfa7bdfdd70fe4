// The operator console's entry point: hash routes to views, and the one live fleet-event
// stream the views listen to.
import { can } from "./lib.js";
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
const live = document.getElementById("live");
function connect() {
  const es = new EventSource("/api/v1/fleet/events");
  es.addEventListener("open", () => { live.textContent = "live"; live.className = "on"; });
  es.addEventListener("message", ev => {
    let event;
    try { event = JSON.parse(ev.data); } catch { return; }
    document.dispatchEvent(new CustomEvent("fleet-event", { detail: event }));
  });
  es.addEventListener("error", () => { live.textContent = "reconnecting…"; live.className = ""; });
}

window.addEventListener("hashchange", route);
route();
connect();
