// A plain YAML editor: a monospace textarea with a line-number gutter that marks the line an
// error names. Tab inserts two spaces, or indents the selected lines; Shift+Tab outdents the
// selected lines (with nothing selected it still leaves the field).
import { el, put } from "./lib.js";

/** A unified diff with its lines classed as added, removed, hunk header or context. */
export function renderDiff(text) {
  const pre = el("pre", { class: "diff", id: "diff" });
  const lines = text.split("\n");
  // Only the first two lines are the file headers: a removed "-- x" line later reads "--- x".
  const headers = lines[0]?.startsWith("---") && lines[1]?.startsWith("+++") ? 2 : 0;
  for (const [i, line] of lines.entries()) {
    const kind = i < headers ? "meta"
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
    if (ev.key !== "Tab" || ev.ctrlKey || ev.altKey || ev.metaKey || readOnly) return;
    const { selectionStart: from, selectionEnd: to } = area;
    if (from === to && ev.shiftKey) return;
    ev.preventDefault();
    if (from === to) area.setRangeText("  ", from, to, "end");
    else shiftLines(from, to, ev.shiftKey ? -1 : 1);
    area.dispatchEvent(new Event("input", { bubbles: true }));
  });

  // Indents (1) or outdents (-1) by two spaces every line the selection touches, and keeps
  // those lines selected.
  function shiftLines(from, to, direction) {
    const text = area.value;
    const start = text.lastIndexOf("\n", from - 1) + 1;
    // A selection ending at the start of a line does not take that line in.
    const last = to > from && text[to - 1] === "\n" ? to - 1 : to;
    const endOfLine = text.indexOf("\n", last);
    const end = endOfLine < 0 ? text.length : endOfLine;
    const lines = text.slice(start, end).split("\n").map(line =>
      direction > 0 ? (line ? "  " + line : line) : line.replace(/^ {1,2}/, ""));
    area.setRangeText(lines.join("\n"), start, end, "select");
  }
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
