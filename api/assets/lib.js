// Shared pieces of the operator console: element building, the one request helper, toasts,
// the confirmation dialog and small formatters. The page's CSP allows no inline script or
// style, so handlers are attached with addEventListener and looks come from classes.

/** The signed-in operator's role, put in `<body data-role>` by the server. */
export const role = document.body.dataset.role;
const RANK = { viewer: 0, editor: 1, admin: 2 };
/** Whether the operator's role is at least `needed` (viewer < editor < admin). */
export const can = needed => RANK[role] >= RANK[needed];

/** Replaces `parent`'s children with the given ones, leaving out null, undefined and false. */
export function put(parent, ...children) {
  parent.replaceChildren(...children.flat().filter(c => c !== null && c !== undefined && c !== false));
}

/** Builds an element: `class`, `on<event>` handlers, other attributes, then children. */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "value") e.value = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) e.append(c);
  return e;
}

/** An api error: the status, the api's `error` and its `details`. */
export class ApiError extends Error {
  constructor(status, body) {
    super(body.error || "HTTP " + status);
    this.status = status;
    this.details = body.details;
  }
  /** The error with its details, as one line for a toast. */
  describe() {
    const d = this.details;
    if (!d || typeof d !== "object") return this.message;
    const parts = [];
    if (d.field || d.path) parts.push(d.field || d.path);
    if (d.line) parts.push("line " + d.line);
    if (d.column) parts.push("column " + d.column);
    const where = parts.length ? " (" + parts.join(", ") + ")" : "";
    return this.message + where + (d.reason ? ": " + d.reason : "");
  }
}

/** An error as a toast says it. */
export const describe = e => (e instanceof ApiError ? e.describe() : e.message);

// Every write carries a JSON body ({} when it has nothing to say) and says so in its
// Content-Type: the api refuses cookie-authenticated writes without it (a cross-site form
// cannot send one).
export async function api(method, path, body) {
  const write = method !== "GET" && method !== "HEAD";
  const r = await fetch(path, { method, credentials: "same-origin",
    headers: write ? { "Content-Type": "application/json" } : {},
    body: write ? JSON.stringify(body ?? {}) : undefined });
  if (r.status === 401) { location.reload(); throw new ApiError(401, { error: "signed out" }); }
  if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => ({})));
  return r.status === 204 ? null : r.json();
}

/** A query string from the non-empty entries of `params` ("" when none). */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const s = q.toString();
  return s ? "?" + s : "";
}

/** Successes shown at once; an older one makes way for a newer. */
const MAX_TOASTS = 4;

/** Shows a short-lived message; failures stay until dismissed. */
export function toast(message, kind = "ok") {
  const box = document.getElementById("toasts");
  const shown = box.querySelectorAll(".toast.ok");
  if (kind !== "error" && shown.length >= MAX_TOASTS) shown[0].remove();
  const t = el("div", { class: "toast " + kind, role: kind === "error" ? "alert" : "status" },
    el("span", {}, message),
    el("button", { type: "button", class: "close", "aria-label": "Dismiss", onclick: () => t.remove() }, "×"));
  box.append(t);
  if (kind !== "error") setTimeout(() => t.remove(), 6000);
  return t;
}

/**
 * Runs an action and reports its result: `done` (the result → message) as a toast, or the
 * api's error and details. Returns the result (true for an empty answer), or undefined when
 * it failed.
 */
export async function run(label, action, done = () => label + " done") {
  try {
    const result = await action();
    toast(done(result));
    return result ?? true;
  } catch (e) {
    toast(label + " failed: " + describe(e), "error");
    return undefined;
  }
}

/**
 * Asks for confirmation in the page's <dialog>: `text` says what happens (how many nodes,
 * what it undoes), `body` may add live content. Resolves true only on the confirm button.
 * While one is open a second is refused (resolves false): one Confirm must never run two
 * actions.
 */
export function confirmDialog({ title, text, ok = "Confirm", danger = false, body = null }) {
  const dialog = document.getElementById("confirm");
  if (dialog.open) return Promise.resolve(false);
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-body").replaceChildren(...(body ? [body] : []));
  const button = document.getElementById("confirm-ok");
  button.textContent = ok;
  button.className = danger ? "danger" : "primary";
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise(resolve => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

/** Closes an open confirmation as cancelled (a view that is left confirms nothing). */
export function cancelDialog() {
  const dialog = document.getElementById("confirm");
  if (dialog.open) dialog.close("");
}

/** "12s ago", "3m ago", … or "never". */
export function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.round(s / 60) + "m ago";
  if (s < 86400) return Math.round(s / 3600) + "h ago";
  return Math.round(s / 86400) + "d ago";
}

/** A timestamp as the operator's locale shows it, or "—". */
export const when = iso => (iso ? new Date(iso).toLocaleString() : "—");

/** A count with thousands separators; "—" for none. */
export const num = n => (n === null || n === undefined ? "—" : Number(n).toLocaleString());

/** `n thing` or `n things`. */
export const plural = (n, thing) => n.toLocaleString() + " " + thing + (n === 1 ? "" : "s");

/** Calls `fn` once `ms` have passed without another call; `.cancel()` drops a pending call. */
export function debounce(fn, ms) {
  let timer = null;
  const call = (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
  call.cancel = () => clearTimeout(timer);
  return call;
}

/** `{a: "1"}` as "a=1, b=2"; "" for none. */
export const formatLabels = labels => Object.entries(labels || {}).map(([k, v]) => k + "=" + v).join(", ");

/** "a=1, b=2" (commas or new lines) as `{a: "1", b: "2"}`; throws on an entry without "=". */
export const parseLabels = text => labelEntries(text.split(/[,\n]/));

/** One `key=value` per line as an object (values may hold commas); throws on a line without "=". */
export const parseLabelLines = text => labelEntries(text.split("\n"));

function labelEntries(parts) {
  const out = {};
  for (const part of parts.map(s => s.trim()).filter(Boolean)) {
    const i = part.indexOf("=");
    if (i < 1) throw new Error("\"" + part + "\" is not key=value");
    out[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  return out;
}

/** A status pill. */
export const pill = (status, extra = "") => el("span", { class: ("pill " + status + " " + extra).trim() }, status);

/** A read-only command with a copy button (clipboard, or selecting the text where the page is not a secure context). */
export function copyable(text, label) {
  const code = el("code", {}, text);
  const copy = el("button", { type: "button", class: "copy", "aria-label": "Copy " + label, onclick: async () => {
    try { await navigator.clipboard.writeText(text); toast("Copied " + label); }
    catch {
      const range = document.createRange();
      range.selectNodeContents(code);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      toast(document.execCommand("copy") ? "Copied " + label : "Selected " + label + ": press Ctrl+C to copy");
    }
  } }, "Copy");
  return el("div", { class: "command" }, el("pre", {}, code), copy);
}

/** A section with a heading. */
export const panel = (title, ...children) => el("section", { class: "panel", "aria-label": title }, el("h2", {}, title), ...children);

/** A definition list from [term, value] pairs (values may be nodes). */
export const facts = pairs => el("dl", { class: "facts" }, pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "—")]));
