// The audit trail: every operator change, newest first, with who made it; paged by cursor and
// filtered on the server by action, target and token (the filter lives in the route, so a
// pipeline's or node's "history" link is a filtered view).
import { api, describe, el, put, query, when } from "./lib.js";

const PAGE_SIZE = 50;
const TARGET_TYPES = ["pipeline", "node", "fleet", "environment", "token", "settings"];
const FILTERS = ["action", "targetType", "targetId", "tokenId"];

/** The activity view's route for a filter. */
export const historyOf = (targetType, targetId) => "#/activity" + query({ targetType, targetId });

/** Where an entry's target lives in the console, if it has a page. */
function target(e) {
  const label = e.targetType + (e.targetId ? " " + e.targetId : "");
  const page = e.targetType === "node" ? "#/node/" : e.targetType === "pipeline" ? "#/pipeline/" : null;
  if (!e.targetId) return label;
  return el("span", {}, page ? el("a", { href: page + e.targetId }, label) : label, " ",
    el("a", { href: historyOf(e.targetType, e.targetId), class: "muted", title: "Every change of this " + e.targetType }, "history"));
}

export function mount(main, { query: params }) {
  let stopped = false, cursor = null;
  const filter = Object.fromEntries(FILTERS.map(k => [k, params.get(k) || ""]));
  const tbody = el("tbody");
  const more = el("button", { type: "button", id: "activity-more", hidden: true, onclick: () => load() }, "Load older entries");
  const refilter = (key, value) => { location.hash = "#/activity" + query({ ...filter, [key]: value }); };
  const who = el("select", { id: "activity-token", "aria-label": "Who", onchange: ev => refilter("tokenId", ev.target.value) },
    el("option", { value: "" }, "Anyone"));
  api("GET", "/api/v1/tokens").then(({ tokens }) => put(who, el("option", { value: "" }, "Anyone"),
    ...tokens.map(t => el("option", { value: t.id, selected: t.id === filter.tokenId }, t.name)))).catch(() => {});
  main.append(el("h1", { class: "view-title" }, "Activity"),
    el("form", { class: "filters", id: "activity-filters", onsubmit: ev => ev.preventDefault() },
      el("label", {}, "Action", el("input", { id: "activity-action", value: filter.action, placeholder: "pipeline.deploy",
        onchange: ev => refilter("action", ev.target.value.trim()) })),
      el("label", {}, "Target", el("select", { id: "activity-target", onchange: ev => location.hash = "#/activity" + query({ ...filter, targetType: ev.target.value, targetId: "" }) },
        el("option", { value: "" }, "Any"), ...TARGET_TYPES.map(t => el("option", { value: t, selected: filter.targetType === t }, t)))),
      el("label", {}, "Who", who),
      filter.targetId ? el("span", { class: "muted" }, "history of " + filter.targetType + " " + filter.targetId + " ",
        el("a", { href: "#/activity" }, "show everything")) : null),
    el("section", { class: "panel table", "aria-label": "Audit trail" }, el("table", { id: "activity" },
      el("thead", {}, el("tr", {}, ...["When", "Who", "Action", "Target", "Detail"].map(h => el("th", { scope: "col" }, h)))), tbody)),
    el("div", { class: "pager" }, more));

  async function load() {
    more.disabled = true;
    try {
      const page = await api("GET", "/api/v1/audit" + query({ ...filter, limit: PAGE_SIZE, cursor }));
      if (stopped) return;
      tbody.append(...page.entries.map(e => el("tr", { "data-action": e.action },
        el("td", { title: e.at }, when(e.at)),
        el("td", { class: "who", title: "token " + e.tokenId }, e.tokenName),
        el("td", {}, el("code", { class: "action" }, e.action)),
        el("td", { class: "target" }, target(e)),
        el("td", { class: "detail" }, el("code", {}, JSON.stringify(e.detail))))));
      if (!tbody.childElementCount) tbody.append(el("tr", {}, el("td", { colspan: 5, class: "empty" }, "No changes recorded yet.")));
      cursor = page.nextCursor;
      more.hidden = !cursor;
    } catch (e) {
      put(tbody, el("tr", {}, el("td", { colspan: 5, class: "empty" },
        e.status === 403 ? "Only admins see the audit trail." : "Loading the audit trail failed: " + describe(e))));
    }
    more.disabled = false;
    main.setAttribute("aria-busy", "false");
  }
  load();
  return () => { stopped = true; };
}
