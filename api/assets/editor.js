// A plain YAML editor: a monospace textarea with a line-number gutter that marks the line an
// error names; Tab inserts two spaces (Shift+Tab still leaves the field).
import { el, put } from "./lib.js";

/** A unified diff with its lines classed as added, removed, hunk header or context. */
export function renderDiff(text) {
  const pre = el("pre", { class: "diff", id: "diff" });
  for (const line of text.split("\n")) {
    const kind = line.startsWith("+++") || line.startsWith("---") ? "meta"
      : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : line.startsWith("@@") ? "hunk" : "ctx";
    pre.append(el("span", { class: "line " + kind }, line + "\n"));
  }
  if (!text.trim()) pre.append(el("span", { class: "line ctx" }, "The two versions are identical.\n"));
  return pre;
}

/** The editor: `root` to place, `value()`, `set(text)`, `mark(line)` (null clears). */
export function yamlEditor(initial, { onInput = () => {}, readOnly = false } = {}) {
  const gutter = el("div", { class: "gutter", "aria-hidden": "true" });
  const area = el("textarea", { id: "yaml", class: "code", spellcheck: "false", autocomplete: "off", autocapitalize: "off",
    wrap: "off", rows: 18, "aria-label": "Pipeline config (Vector YAML)", readonly: readOnly });
  area.value = initial;
  let marked = null;

  function numbers() {
    const count = area.value.split("\n").length;
    if (gutter.childElementCount !== count) {
      put(gutter, ...Array.from({ length: count }, (_, i) =>
        el("div", { class: i + 1 === marked ? "n error-line" : "n", "data-line": i + 1 }, String(i + 1))));
    }
    gutter.scrollTop = area.scrollTop;
  }

  area.addEventListener("keydown", ev => {
    if (ev.key !== "Tab" || ev.shiftKey || ev.ctrlKey || ev.altKey || ev.metaKey || readOnly) return;
    ev.preventDefault();
    area.setRangeText("  ", area.selectionStart, area.selectionEnd, "end");
    area.dispatchEvent(new Event("input", { bubbles: true }));
  });
  area.addEventListener("input", () => { numbers(); onInput(area.value); });
  area.addEventListener("scroll", () => { gutter.scrollTop = area.scrollTop; });
  numbers();

  return {
    root: el("div", { class: "editor" }, gutter, area),
    value: () => area.value,
    set(text) { area.value = text; numbers(); },
    mark(line) {
      marked = line || null;
      for (const n of gutter.children) n.classList.toggle("error-line", Number(n.dataset.line) === marked);
    },
  };
}
