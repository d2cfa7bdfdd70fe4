//! The `api` block of a pipeline's config: added on a free loopback port unless the config
//! has one, whose address is then used when it enables the API; and its own `data_dir`.

use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;

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
/// address is used when enabled), and `data_dir` as Vector's data directory unless it names
/// one: pipelines never share checkpoints or disk buffers. A config that is not a YAML mapping
/// is written unchanged, without an API: Vector reports what is wrong with it.
pub fn prepare(yaml: &str, data_dir: &Path) -> Prepared {
    let unchanged = |api| Prepared {
        yaml: yaml.to_owned(),
        api,
    };
    let Ok(serde_norway::Value::Mapping(map)) = serde_norway::from_str(yaml) else {
        return unchanged(None);
    };
    let (api, add_api) = match map.get("api") {
        Some(own) => (own_address(own), false),
        None => (free_loopback_port(), true),
    };
    let add_api = add_api && api.is_some();
    let dir = data_dir.to_string_lossy().into_owned();
    let add_dir = !map.contains_key("data_dir");
    if !add_api && !add_dir {
        return unchanged(api);
    }
    // Appended as text so the user's file (comments, order) stays as it was; a config in flow
    // style (`{sources: …}`) cannot take a block after it and is re-serialised instead.
    let mut text = yaml.to_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(ADDED_BLOCK);
    text.push('\n');
    if let (true, Some(addr)) = (add_api, api) {
        text.push_str(&format!("api:\n  enabled: true\n  address: \"{addr}\"\n"));
    }
    if add_dir {
        // A JSON string is a YAML double-quoted scalar: any path survives.
        text.push_str(&format!("data_dir: {}\n", json!(dir)));
    }
    let as_wanted = |text: &str| {
        own_address_of(text) == api && (!add_dir || data_dir_of(text).as_deref() == Some(&*dir))
    };
    if as_wanted(&text) {
        return Prepared { yaml: text, api };
    }
    let mut map = map;
    if let (true, Some(addr)) = (add_api, api) {
        map.insert(
            "api".into(),
            serde_norway::to_value(json!({"enabled": true, "address": addr.to_string()}))
                .expect("a JSON object converts"),
        );
    }
    if add_dir {
        map.insert("data_dir".into(), dir.clone().into());
    }
    match serde_norway::to_string(&map) {
        Ok(text) if as_wanted(&text) => Prepared { yaml: text, api },
        _ => unchanged(None),
    }
}

fn data_dir_of(yaml: &str) -> Option<String> {
    match serde_norway::from_str(yaml) {
        Ok(serde_norway::Value::Mapping(map)) => Some(map.get("data_dir")?.as_str()?.to_owned()),
        _ => None,
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

    const DIR: &str = "/var/lib/vf-agent/pipelines/p.data";

    #[test]
    fn an_api_block_on_its_own_loopback_port_is_appended() {
        let yaml = "# mine\nsources:\n  in:\n    type: demo_logs # keep\n";
        let a = prepare(yaml, Path::new(DIR));
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
        let p = prepare("sources: {in: {type: demo_logs}}", Path::new(DIR));
        assert_eq!(own_address_of(&p.yaml), p.api);
        assert!(p.api.is_some());
        let p = prepare(
            "{\"sources\": {\"in\": {\"type\": \"demo_logs\"}}}",
            Path::new(DIR),
        );
        assert_eq!(own_address_of(&p.yaml), p.api);
        assert!(p.api.is_some(), "{}", p.yaml);
        let doc: serde_norway::Value = serde_norway::from_str(&p.yaml).unwrap();
        assert_eq!(doc["sources"]["in"]["type"].as_str(), Some("demo_logs"));
    }

    #[test]
    fn a_config_with_its_own_api_block_is_kept() {
        let with_dir = |yaml: &str| format!("{yaml}{ADDED_BLOCK}\ndata_dir: \"{DIR}\"\n");
        let yaml = "api:\n  enabled: true\n  address: 0.0.0.0:9999\nsources: {}\n";
        assert_eq!(
            prepare(yaml, Path::new(DIR)),
            Prepared {
                yaml: with_dir(yaml),
                api: Some("127.0.0.1:9999".parse().unwrap())
            }
        );
        let yaml = "api:\n  enabled: true\n";
        assert_eq!(
            prepare(yaml, Path::new(DIR)).api,
            Some("127.0.0.1:8686".parse().unwrap())
        );
        let yaml = "api:\n  enabled: false\n  address: 127.0.0.1:1234\ndata_dir: /mine\n";
        assert_eq!(
            prepare(yaml, Path::new(DIR)),
            Prepared {
                yaml: yaml.into(),
                api: None
            }
        );
    }

    #[test]
    fn each_pipeline_gets_its_own_data_dir() {
        // Only `enabled` and `address` go in the api block: Vector 0.55 and later refuse a
        // config naming `playground` or `graphql`.
        let p = prepare("sources: {}\n", Path::new(DIR));
        assert_eq!(data_dir_of(&p.yaml).as_deref(), Some(DIR));
        let doc: serde_norway::Value = serde_norway::from_str(&p.yaml).unwrap();
        let keys: Vec<&str> = doc["api"]
            .as_mapping()
            .unwrap()
            .keys()
            .filter_map(|k| k.as_str())
            .collect();
        assert_eq!(keys, ["enabled", "address"]);
        let p = prepare("{\"sources\": {}}", Path::new("/odd: path/#x"));
        assert_eq!(data_dir_of(&p.yaml).as_deref(), Some("/odd: path/#x"));
        let p = prepare("data_dir: /mine\nsources: {}\n", Path::new(DIR));
        assert_eq!(data_dir_of(&p.yaml).as_deref(), Some("/mine"));
    }

    #[test]
    fn what_is_not_a_yaml_mapping_is_written_unchanged() {
        for text in ["", "- a\n- b\n", "sources: [\n", "just text"] {
            assert_eq!(
                prepare(text, Path::new(DIR)),
                Prepared {
                    yaml: text.into(),
                    api: None
                },
                "{text:?}"
            );
        }
    }
}
