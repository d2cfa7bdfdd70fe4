//! Pipeline configs as Vector reads them: YAML whose top level is Vector's, checked before a
//! version is stored so a typo is reported with its line instead of crashing every agent.
//!
//! The checks are Vector's own startup checks on the config's shape (known top-level keys, at
//! least one source and one sink, a string `type` per component, inputs that name existing
//! sources or transforms, ids unique across kinds and free of `.`); what each component's
//! options mean is left to Vector.

use crate::error::ApiError;
use saphyr::{LoadableYamlNode, MarkedYaml, Marker, YamlData};
use serde_json::json;

/// Vector's top-level keys: its global options and its configuration sections.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "acknowledgements",
    "api",
    "buffer_utilization_ewma_alpha",
    "buffer_utilization_ewma_half_life_seconds",
    "data_dir",
    "enrichment_tables",
    "expire_metrics",
    "expire_metrics_per_metric_set",
    "expire_metrics_secs",
    "healthchecks",
    "latency_ewma_alpha",
    "log_schema",
    "metrics_storage_refresh_period",
    "provider",
    "proxy",
    "schema",
    "secret",
    "sinks",
    "sources",
    "telemetry",
    "tests",
    "timezone",
    "transforms",
    "wildcard_matching",
];

/// Where and why a config is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line of the offending key or value.
    pub line: usize,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong, for a person.
    pub reason: String,
}

impl ConfigError {
    fn at(mark: Marker, reason: impl Into<String>) -> Self {
        Self {
            line: mark.line().max(1),
            column: Some(mark.col() + 1),
            reason: reason.into(),
        }
    }
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        let mut details = json!({ "field": "configYaml", "line": e.line, "reason": e.reason });
        if let Some(column) = e.column {
            details["column"] = json!(column);
        }
        ApiError::Unprocessable {
            error: "Invalid pipeline config".into(),
            details: Some(details),
        }
    }
}

type Node<'a> = MarkedYaml<'a>;

/// The node under any tags (`!!map`, custom tags).
fn untagged<'a, 'n>(mut node: &'n Node<'a>) -> &'n Node<'a> {
    while let YamlData::Tagged(_, inner) = &node.data {
        node = inner;
    }
    node
}

fn start(node: &Node<'_>) -> Marker {
    node.span.start
}

/// Checks that `yaml` is one YAML document with Vector's top-level shape.
pub fn validate(yaml: &str) -> Result<(), ConfigError> {
    let docs = Node::load_from_str(yaml).map_err(|e| ConfigError::at(*e.marker(), e.info()))?;
    let root = match docs.as_slice() {
        [] => {
            return Err(ConfigError {
                line: 1,
                column: None,
                reason: "the config is empty: Vector needs at least one source and one sink".into(),
            })
        }
        [root] => untagged(root),
        [_, second, ..] => {
            return Err(ConfigError::at(
                start(second),
                "a pipeline config is one YAML document; remove the second one",
            ))
        }
    };
    let YamlData::Mapping(top) = &root.data else {
        return Err(ConfigError::at(
            start(root),
            "the top level must be a mapping of Vector's sections (sources, transforms, sinks, …)",
        ));
    };
    let mut sections = Sections::default();
    for (key, value) in top {
        let name = untagged(key).data.as_str().unwrap_or_default();
        if name == "wildcard_matching" {
            sections.relaxed_globs = untagged(value).data.as_str() == Some("relaxed");
        }
        if !TOP_LEVEL_KEYS.contains(&name) {
            return Err(ConfigError::at(
                start(key),
                format!(
                    "unknown top-level key `{}`: Vector accepts {}",
                    scalar_text(key),
                    TOP_LEVEL_KEYS.join(", ")
                ),
            ));
        }
        let slot = match name {
            "sources" => &mut sections.sources,
            "transforms" => &mut sections.transforms,
            "sinks" => &mut sections.sinks,
            "enrichment_tables" => &mut sections.enrichment_tables,
            "secret" => &mut sections.secret,
            _ => continue,
        };
        *slot = Some(components(name, key, value)?);
    }
    sections.check(root)
}

/// A component: its id, the id's position, and its mapping.
struct Component<'n, 'a> {
    id: String,
    key: &'n Node<'a>,
    body: &'n Node<'a>,
}

#[derive(Default)]
struct Sections<'n, 'a> {
    sources: Option<Vec<Component<'n, 'a>>>,
    transforms: Option<Vec<Component<'n, 'a>>>,
    sinks: Option<Vec<Component<'n, 'a>>>,
    enrichment_tables: Option<Vec<Component<'n, 'a>>>,
    secret: Option<Vec<Component<'n, 'a>>>,
    /// `wildcard_matching: relaxed`: a glob in `inputs` may match nothing.
    relaxed_globs: bool,
}

impl Sections<'_, '_> {
    fn check(&self, root: &Node<'_>) -> Result<(), ConfigError> {
        let sources = self.sources.as_deref().unwrap_or_default();
        let transforms = self.transforms.as_deref().unwrap_or_default();
        let sinks = self.sinks.as_deref().unwrap_or_default();
        if sources.is_empty() {
            return Err(ConfigError::at(
                start(root),
                "no sources: Vector needs at least one under `sources`",
            ));
        }
        if sinks.is_empty() {
            return Err(ConfigError::at(
                start(root),
                "no sinks: Vector needs at least one under `sinks`",
            ));
        }
        // Ids are shared by sources, transforms and sinks: inputs name them.
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for (kind, list) in [
            ("source", sources),
            ("transform", transforms),
            ("sink", sinks),
        ] {
            for c in list {
                if let Some((_, other)) = seen.iter().find(|(id, _)| *id == c.id) {
                    return Err(ConfigError::at(
                        start(c.key),
                        format!(
                            "component id `{}` is used by a {other} and a {kind}: ids must be unique",
                            c.id
                        ),
                    ));
                }
                seen.push((&c.id, kind));
            }
        }
        // What inputs may name: sources, transforms, and memory enrichment tables that act
        // as sources (`source_config.source_key`).
        let tables = self.enrichment_tables.as_deref().unwrap_or_default();
        let upstream: Vec<&str> = sources
            .iter()
            .chain(transforms)
            .map(|c| c.id.as_str())
            .chain(tables.iter().filter_map(|t| source_key(t.body)))
            .collect();
        for (kind, list) in [("transform", transforms), ("sink", sinks)] {
            for c in list {
                check_inputs(kind, c, &upstream, self.relaxed_globs)?;
            }
        }
        Ok(())
    }
}

/// The components of section `section` (`key: value` at the top level).
fn components<'n, 'a>(
    section: &str,
    key: &'n Node<'a>,
    value: &'n Node<'a>,
) -> Result<Vec<Component<'n, 'a>>, ConfigError> {
    let value = untagged(value);
    let YamlData::Mapping(entries) = &value.data else {
        return Err(ConfigError::at(
            start(key),
            format!("`{section}` must be a mapping of component ids to components"),
        ));
    };
    let mut out = Vec::with_capacity(entries.len());
    for (id_node, body) in entries {
        // Vector reads any scalar key as a string id (`1:` is the id "1").
        let id = match &untagged(id_node).data {
            YamlData::Value(_) => scalar_text(id_node),
            _ => {
                return Err(ConfigError::at(
                    start(id_node),
                    format!("a component id in `{section}` must be a scalar, not a collection"),
                ))
            }
        };
        if let Some(reason) = id_problem(&id) {
            return Err(ConfigError::at(
                start(id_node),
                format!("component id `{id}` in `{section}`: {reason}"),
            ));
        }
        let body = untagged(body);
        let YamlData::Mapping(fields) = &body.data else {
            return Err(ConfigError::at(
                start(id_node),
                format!("component `{id}` in `{section}` must be a mapping with a `type`"),
            ));
        };
        match fields
            .iter()
            .find(|(k, _)| untagged(k).data.as_str() == Some("type"))
        {
            None => {
                return Err(ConfigError::at(
                    start(id_node),
                    format!("component `{id}` in `{section}` has no `type`"),
                ))
            }
            Some((_, t)) if untagged(t).data.as_str().is_none_or(str::is_empty) => {
                return Err(ConfigError::at(
                    start(t),
                    format!("the `type` of component `{id}` must be a non-empty string"),
                ))
            }
            Some(_) => {}
        }
        out.push(Component {
            id,
            key: id_node,
            body,
        });
    }
    Ok(out)
}

/// Why `id` is not a usable component id, if it is not: Vector refuses only empty ids and
/// ids with a `.`, which names a component's output in `inputs`.
fn id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        return Some("ids may not be empty");
    }
    if id.contains('.') && !interpolated(id) {
        return Some("ids may not contain `.` (it names a component's output in `inputs`)");
    }
    None
}

/// The component part of an input (`x` of output `x.y`).
fn component(input: &str) -> &str {
    input.split_once('.').map_or(input, |(id, _)| id)
}

/// Whether Vector replaces part of `text` before parsing (`${VAR}`, `$VAR`, `SECRET[…]`), so
/// what it names is known only on the node.
fn interpolated(text: &str) -> bool {
    text.contains("SECRET[")
        || text.match_indices('$').any(|(i, _)| {
            text[i + 1..]
                .chars()
                .next()
                .is_some_and(|c| c == '{' || c == '_' || c.is_ascii_alphabetic())
        })
}

/// The `source_config.source_key` of a memory enrichment table, through which it is a source.
fn source_key<'n>(table: &'n Node<'_>) -> Option<&'n str> {
    let field = |node: &'n Node<'_>, name: &str| match &untagged(node).data {
        YamlData::Mapping(fields) => fields
            .iter()
            .find(|(k, _)| untagged(k).data.as_str() == Some(name))
            .map(|(_, v)| v),
        _ => None,
    };
    untagged(field(field(table, "source_config")?, "source_key")?)
        .data
        .as_str()
}

/// Checks the `inputs` of transform or sink `c`.
fn check_inputs(
    kind: &str,
    c: &Component<'_, '_>,
    upstream: &[&str],
    relaxed_globs: bool,
) -> Result<(), ConfigError> {
    let YamlData::Mapping(fields) = &c.body.data else {
        return Ok(());
    };
    let Some((key, value)) = fields
        .iter()
        .find(|(k, _)| untagged(k).data.as_str() == Some("inputs"))
    else {
        return Err(ConfigError::at(
            start(c.key),
            format!("{kind} `{}` has no `inputs`", c.id),
        ));
    };
    let items = match &untagged(value).data {
        YamlData::Sequence(items) if !items.is_empty() => items,
        YamlData::Value(saphyr::Scalar::String(s)) if interpolated(s) => return Ok(()),
        _ => {
            return Err(ConfigError::at(
                start(key),
                format!(
                    "the `inputs` of {kind} `{}` must be a non-empty list of component ids",
                    c.id
                ),
            ))
        }
    };
    for item in items {
        let Some(input) = untagged(item).data.as_str() else {
            return Err(ConfigError::at(
                start(item),
                format!(
                    "the inputs of {kind} `{}` must be strings, not `{}`",
                    c.id,
                    scalar_text(item)
                ),
            ));
        };
        if interpolated(input) {
            continue;
        }
        if input == c.id {
            return Err(ConfigError::at(
                start(item),
                format!("{kind} `{}` cannot take its own output as input", c.id),
            ));
        }
        // `x.y` names output `y` of component `x` (route names, `remap.dropped`, an
        // `opentelemetry` source's `logs`…); which outputs a component has is Vector's business.
        let found = if input.contains(['*', '?', '[']) {
            relaxed_globs
                || glob::Pattern::new(input).is_ok_and(|pattern| {
                    upstream.iter().any(|id| {
                        *id != c.id
                            && (pattern.matches(id)
                                || input.contains('.')
                                    && glob::Pattern::new(component(input))
                                        .is_ok_and(|p| p.matches(id)))
                    })
                })
        } else {
            upstream.contains(&component(input))
        };
        if !found {
            return Err(ConfigError::at(
                start(item),
                format!(
                    "input `{input}` of {kind} `{}` matches no source or transform",
                    c.id
                ),
            ));
        }
    }
    Ok(())
}

/// A scalar as written, for messages (`…` for a collection).
fn scalar_text(node: &Node<'_>) -> String {
    match &untagged(node).data {
        YamlData::Value(v) => match v {
            saphyr::Scalar::Null => "null".into(),
            saphyr::Scalar::Boolean(b) => b.to_string(),
            saphyr::Scalar::Integer(i) => i.to_string(),
            saphyr::Scalar::FloatingPoint(f) => f.to_string(),
            saphyr::Scalar::String(s) => s.to_string(),
        },
        _ => "…".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "\
sources:
  in:
    type: demo_logs
    format: json
transforms:
  parse:
    type: remap
    inputs: [in]
    source: . = parse_json!(.message)
  split:
    type: route
    inputs: [parse]
    route:
      errors: .level == \"error\"
sinks:
  out:
    type: blackhole
    inputs: [\"pars*\", split.errors]
";

    fn fails(yaml: &str) -> ConfigError {
        validate(yaml).expect_err(yaml)
    }

    #[test]
    fn a_vector_config_passes() {
        validate(VALID).unwrap();
        validate(&format!("data_dir: /tmp/x\napi:\n  enabled: true\n{VALID}")).unwrap();
    }

    #[test]
    fn syntax_errors_carry_their_line() {
        let e = fails("sources:\n  in:\n    type: [demo_logs\nsinks: {}\n");
        assert!(e.line >= 3, "{e:?}");
        let e = fails("sources:\n  in: {type: a}\n  in: {type: b}\n");
        assert_eq!(e.line, 3, "{e:?}");
        assert!(e.reason.contains("duplicated key"), "{e:?}");
    }

    #[test]
    fn shape_errors_carry_their_line() {
        assert_eq!(fails("").line, 1);
        assert_eq!(fails("# only a comment\n").line, 1);
        assert_eq!(fails("- a\n- b\n").line, 1);
        let e = fails(&format!("{VALID}sinkz: {{}}\n"));
        assert_eq!(e.line, 19);
        assert!(e.reason.contains("`sinkz`"), "{e:?}");
        let e = fails(
            "sources:\n  in:\n    format: json\nsinks:\n  out: {type: blackhole, inputs: [in]}\n",
        );
        assert_eq!((e.line, e.column), (2, Some(3)));
        assert!(e.reason.contains("no `type`"));
        let e = fails("sources:\n  in:\n    type: 7\n");
        assert_eq!(e.line, 3);
        let e = fails("sources:\n  in: {type: demo_logs}\n");
        assert!(e.reason.contains("no sinks"), "{e:?}");
        let e = fails("sources: {}\nsinks:\n  out: {type: blackhole, inputs: [in]}\n");
        assert!(e.reason.contains("no sources"), "{e:?}");
        let e = fails("sources:\n  in: {type: a}\nsinks:\n  out:\n    type: b\n");
        assert_eq!(e.line, 4);
        assert!(e.reason.contains("no `inputs`"));
        let e = fails("sources:\n  in: {type: a}\nsinks:\n  out:\n    type: b\n    inputs: []\n");
        assert_eq!(e.line, 6);
        let e = fails("sources:\n  in: {type: a}\nsinks:\n  out:\n    type: b\n    inputs:\n      - in\n      - nope\n");
        assert_eq!(e.line, 8);
        assert!(e.reason.contains("`nope`"));
        let e = fails("sources:\n  in: {type: a}\nsinks:\n  in: {type: b, inputs: [in]}\n");
        assert_eq!(e.line, 4);
        assert!(e.reason.contains("unique"));
        let e = fails("sources:\n  a.b: {type: a}\n");
        assert_eq!(e.line, 2);
        let e = fails("sources:\n  in: {type: a}\nsinks:\n  out: {type: b, inputs: [\"x*\"]}\n");
        assert_eq!(e.line, 4);
        let e = fails("sources:\n  in: {type: a}\nsinks:\n  out: {type: b, inputs: [nope.x]}\n");
        assert!(e.reason.contains("`nope.x`"), "{e:?}");
        let e =
            fails("sources:\n  in: {type: a}\nsinks:\n  out: {type: b, inputs: [in]}\n---\nx: 1\n");
        assert_eq!(e.line, 6);
    }

    #[test]
    fn what_vector_accepts_passes() {
        // Named outputs of sources, globs over ids and outputs, odd but legal ids,
        // interpolated names, memory tables as sources, relaxed wildcards, newer globals.
        for yaml in [
            "sources:\n  otel: {type: opentelemetry}\nsinks:\n  out: {type: blackhole, inputs: [otel.logs]}\n",
            "sources:\n  in1: {type: a}\n  in2: {type: a}\nsinks:\n  out: {type: b, inputs: [\"in?\", \"in[12]\"]}\n",
            "sources:\n  in: {type: a}\ntransforms:\n  r: {type: route, inputs: [in]}\nsinks:\n  out: {type: b, inputs: [\"r.*\"]}\n",
            "sources:\n  k8s:logs: {type: a}\n  app/in: {type: a}\n  1: {type: a}\nsinks:\n  out: {type: b, inputs: [\"k8s:logs\", app/in, \"1\"]}\n",
            "sources:\n  ${SRC}: {type: a}\nsinks:\n  out: {type: b, inputs: [\"${UPSTREAM}\"]}\n  all: {type: b, inputs: \"${INPUTS}\"}\n",
            "enrichment_tables:\n  mem:\n    type: memory\n    source_config: {source_key: memsrc}\nsources:\n  in: {type: a}\nsinks:\n  out: {type: b, inputs: [memsrc]}\n",
            "wildcard_matching: relaxed\nsources:\n  in: {type: a}\nsinks:\n  out: {type: b, inputs: [\"nothing*\"]}\n",
            "buffer_utilization_ewma_half_life_seconds: 5\nsources:\n  in: {type: a}\nsinks:\n  out: {type: b, inputs: [in]}\n",
        ] {
            validate(yaml).unwrap_or_else(|e| panic!("{e:?} refused\n{yaml}"));
        }
    }

    #[test]
    fn interpolation_is_found() {
        assert!(interpolated("${X}"));
        assert!(interpolated("$X"));
        assert!(interpolated("SECRET[backend.key]"));
        assert!(!interpolated("$"));
        assert!(!interpolated("$$"));
        assert!(!interpolated("a$1"));
    }
}
