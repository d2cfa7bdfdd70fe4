// The audit trail: every operator change, newest first, with who made it; paged by cursor.
import { api, describe, el, put, query, when } from "./lib.js";

const PAGE_SIZE = 50;

/** Where an entry's target lives in the console, if it has a page. */
function target(e) {
  const label = e.targetType + (e.targetId ? " " + e.targetId : "");
  if (e.targetType === "node" && e.targetId) return el("a", { href: "#/node/" + e.targetId }, label);
  if (e.targetType === "pipeline" && e.targetId) return el("a", { href: "#/pipeline/" + e.targetId }, label);
  return label;
}

export function mount(main) {
  let stopped = false, cursor = null;
  const tbody = el("tbody");
  const more = el("button", { type: "button", id: "activity-more", hidden: true, onclick: () => load() }, "Load older entries");
  main.append(el("h1", { class: "view-title" }, "Activity"),
    el("section", { class: "panel table", "aria-label": "Audit trail" }, el("table", { id: "activity" },
      el("thead", {}, el("tr", {}, ...["When", "Who", "Action", "Target", "Detail"].map(h => el("th", { scope: "col" }, h)))), tbody)),
    el("div", { class: "pager" }, more));

  async function load() {
    more.disabled = true;
    try {
      const page = await api("GET", "/api/v1/audit" + query({ limit: PAGE_SIZE, cursor }));
      if (stopped) return;
      tbody.append(...page.entries.map(e => el("tr", { "data-action": e.action },
        el("td", { title: e.at }, when(e.at)),
        el("td", { class: "who", title: "token " + e.tokenId }, e.tokenName),
        el("td", {}, el("code", { class: "action" }, e.action)),
        el("td", {}, target(e)),
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
