//! The `api` block of a pipeline's config: added on a free loopback port unless the config
//! has one, whose address is then used when it enables the API.

use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};

/// The comment that opens the `api` block the agent adds to a pipeline's config.
pub const ADDED_BLOCK: &str = "# flotilla-agent: this pipeline's own Vector API (counters, taps)";

/// A pipeline config as written for Vector, and where its API listens (if anywhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The config to write.
    pub yaml: String,
    /// The API's address, to query.
    pub api: Option<SocketAddr>,
}

/// Gives `yaml` an API on a free loopback port, unless it configures one itself (then its
/// address is used when enabled). A config that is not a YAML mapping is written unchanged,
/// without an API: Vector reports what is wrong with it.
pub fn prepare(yaml: &str) -> Prepared {
    let unchanged = |api| Prepared {
        yaml: yaml.to_owned(),
        api,
    };
    let Ok(serde_norway::Value::Mapping(map)) = serde_norway::from_str(yaml) else {
        return unchanged(None);
    };
    if let Some(api) = map.get("api") {
        return unchanged(own_address(api));
    }
    let Some(addr) = free_loopback_port() else {
        return unchanged(None);
    };
    // Appended as text so the user's file (comments, order) stays as it was; a config in flow
    // style (`{sources: …}`) cannot take a block after it and is re-serialised instead.
    let mut text = yaml.to_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "{ADDED_BLOCK}\napi:\n  enabled: true\n  address: \"{addr}\"\n"
    ));
    if own_address_of(&text) == Some(addr) {
        return Prepared {
            yaml: text,
            api: Some(addr),
        };
    }
    let mut map = map;
    map.insert(
        "api".into(),
        serde_norway::to_value(json!({"enabled": true, "address": addr.to_string()}))
            .expect("a JSON object converts"),
    );
    match serde_norway::to_string(&map) {
        Ok(text) if own_address_of(&text) == Some(addr) => Prepared {
            yaml: text,
            api: Some(addr),
        },
        _ => unchanged(None),
    }
}

/// Whether `written` is `deployed` as [`prepare`] writes it (the config itself, plus the block
/// it may append).
pub fn is_prepared_from(written: &str, deployed: &str) -> bool {
    written.strip_prefix(deployed).is_some_and(|rest| {
        let rest = rest.strip_prefix('\n').unwrap_or(rest);
        rest.is_empty() || rest.starts_with(ADDED_BLOCK)
    })
}

fn own_address_of(yaml: &str) -> Option<SocketAddr> {
    match serde_norway::from_str(yaml) {
        Ok(serde_norway::Value::Mapping(map)) => own_address(map.get("api")?),
        _ => None,
    }
}

/// The address an `api` block makes Vector listen on, when it enables the API; a wildcard
/// address is reached on loopback.
fn own_address(api: &serde_norway::Value) -> Option<SocketAddr> {
    if api.get("enabled").and_then(serde_norway::Value::as_bool) != Some(true) {
        return None;
    }
    let address = match api.get("address") {
        None => "127.0.0.1:8686",
        Some(a) => a.as_str()?,
    };
    let mut addr: SocketAddr = address.trim().parse().ok()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    Some(addr)
}

/// A loopback port free right now (the OS picks it; Vector binds it a moment later, and a
/// Vector that loses that race exits and is restarted on a new one).
fn free_loopback_port() -> Option<SocketAddr> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_block_on_its_own_loopback_port_is_appended() {
        let yaml = "# mine\nsources:\n  in:\n    type: demo_logs # keep\n";
        let a = prepare(yaml);
        let addr_a = a.api.unwrap();
        assert!(addr_a.ip().is_loopback());
        assert_ne!(addr_a.port(), 8686);
        assert!(
            a.yaml.starts_with(yaml),
            "the user's text is kept: {}",
            a.yaml
        );
        assert!(is_prepared_from(&a.yaml, yaml));
        assert!(!is_prepared_from(&a.yaml, "sources: {}\n"));
        assert_eq!(own_address_of(&a.yaml), Some(addr_a));
        // No trailing newline, and flow style: still one valid document with the block.
        let p = prepare("sources: {in: {type: demo_logs}}");
        assert_eq!(own_address_of(&p.yaml), p.api);
        assert!(p.api.is_some());
        let p = prepare("{\"sources\": {\"in\": {\"type\": \"demo_logs\"}}}");
        assert_eq!(own_address_of(&p.yaml), p.api);
        assert!(p.api.is_some(), "{}", p.yaml);
        let doc: serde_norway::Value = serde_norway::from_str(&p.yaml).unwrap();
        assert_eq!(doc["sources"]["in"]["type"].as_str(), Some("demo_logs"));
    }

    #[test]
    fn a_config_with_its_own_api_block_is_kept() {
        let yaml = "api:\n  enabled: true\n  address: 0.0.0.0:9999\nsources: {}\n";
        assert_eq!(
            prepare(yaml),
            Prepared {
                yaml: yaml.into(),
                api: Some("127.0.0.1:9999".parse().unwrap())
            }
        );
        let yaml = "api:\n  enabled: true\n";
        assert_eq!(prepare(yaml).api, Some("127.0.0.1:8686".parse().unwrap()));
        let yaml = "api:\n  enabled: false\n  address: 127.0.0.1:1234\n";
        assert_eq!(
            prepare(yaml),
            Prepared {
                yaml: yaml.into(),
                api: None
            }
        );
    }

    #[test]
    fn what_is_not_a_yaml_mapping_is_written_unchanged() {
        for text in ["", "- a\n- b\n", "sources: [\n", "just text"] {
            assert_eq!(
                prepare(text),
                Prepared {
                    yaml: text.into(),
                    api: None
                },
                "{text:?}"
            );
        }
    }
}
