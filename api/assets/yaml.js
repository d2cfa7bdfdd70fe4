// Just enough of a Vector config's shape for the console: the components it names. The
// server validates configs; this only offers component keys to sample and tap.

const SECTIONS = ["sources", "transforms", "sinks"];

/** The components of a Vector YAML config: `{kind, key, line}` for each key under sources, transforms and sinks. */
export function componentsOf(yaml) {
  const out = [];
  let section = null, indent = null;
  yaml.split("\n").forEach((text, i) => {
    const line = text.replace(/\s+#.*$/, "");
    if (!line.trim() || line.trim().startsWith("#")) return;
    const top = /^([A-Za-z_][\w-]*)\s*:/.exec(line);
    if (top) { section = SECTIONS.includes(top[1]) ? top[1] : null; indent = null; return; }
    if (!section) return;
    const child = /^(\s+)(["']?)([^"':\s][^"':]*)\2\s*:/.exec(line);
    if (!child) return;
    if (indent === null) indent = child[1].length;
    if (child[1].length === indent) out.push({ kind: section, key: child[3], line: i + 1 });
  });
  return out;
}
