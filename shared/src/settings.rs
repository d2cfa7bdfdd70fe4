//! Typed settings read with the `config` crate.
//!
//! Layers, later ones winning: built-in defaults, the optional file named by
//! `FLOTILLA_CONFIG` (TOML), then environment variables `FLOTILLA__SECTION__KEY`.
//! [`Settings::load_with`] takes dotted keys (`section.key`) through the environment's layer,
//! for tests and tools that set a few values in code.

use crate::secret::Secret;
use serde::Deserialize;
use std::net::SocketAddr;

/// All settings of all services; each service reads the sections it needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Postgres connection.
    pub database: DatabaseSettings,
    /// Redis connection.
    pub redis: RedisSettings,
    /// The api service.
    pub api: ApiSettings,
    /// The gateway service.
    pub gateway: GatewaySettings,
    /// Token hashing and caching.
    pub auth: AuthSettings,
    /// Logging.
    pub log: LogSettings,
}

/// Postgres connection settings.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// `postgres://` URL; `sslmode` and credentials go in the URL.
    pub url: Secret,
    /// Pool size.
    pub max_connections: u32,
    /// How long to wait for a pooled connection before answering 503.
    pub acquire_timeout_ms: u64,
    /// A pooled connection idle for longer than this is pinged before it is handed out; one
    /// used more recently is trusted, which saves a round trip per query under load.
    pub ping_idle_ms: u64,
}

/// Redis connection settings.
#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` URL (TLS), credentials included.
    pub url: Secret,
    /// Seed URLs of a Redis Cluster, comma-separated; when set, the services run in cluster
    /// mode (sharded pub/sub for node channels) and `url` is not used.
    #[serde(default)]
    pub cluster_nodes: Option<Secret>,
    /// Timeout of a single command, so a hung Redis never hangs a request.
    pub command_timeout_ms: u64,
}

impl RedisSettings {
    /// The cluster's seed URLs (empty when not in cluster mode); blanks around commas are
    /// ignored.
    pub fn cluster_seeds(&self) -> Vec<String> {
        self.cluster_nodes
            .as_ref()
            .map(|s| {
                s.expose()
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Settings of the api service.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    /// Listen address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The `websocketUrl` handed to agents (the gateways' public URL).
    pub public_ws_url: String,
    /// The `pushUrl` handed to agents: the public URL of the gateways' SSE stream,
    /// `GET /api/agent/push`, normally on the same origin as the api (agents use it only then).
    pub public_push_url: String,
    /// An operator token with the admin role, stored hashed at start.
    pub bootstrap_admin_token: Option<Secret>,
    /// An environment created at start if missing (for demos and first runs).
    pub bootstrap_environment: Option<String>,
    /// The enrollment token of `bootstrap_environment` (a `vf_enroll_` token), set at start.
    pub bootstrap_enrollment_token: Option<Secret>,
    /// A Vector config file that `flotilla-api ensure-environment` creates and deploys as a
    /// pipeline of `bootstrap_environment` (named after the file) unless one of that name exists.
    pub bootstrap_pipeline_file: Option<std::path::PathBuf>,
    /// Poll interval handed to agents until an operator changes it.
    pub default_poll_interval_ms: u32,
    /// Heartbeats missed before a node is marked UNREACHABLE.
    pub unhealthy_threshold: u32,
    /// How often the node-health sweep runs.
    pub health_sweep_interval_ms: u64,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Lifetime of a sample request.
    pub sample_request_ttl_secs: u64,
    /// Grace period for in-flight requests on shutdown.
    pub shutdown_grace_ms: u64,
    /// Enrollment attempts allowed per source address per minute.
    pub enroll_per_minute: u32,
    /// Failed authentications allowed per source address per minute before checks from it
    /// that need bcrypt are refused with 429.
    pub auth_failures_per_minute: u32,
    /// Take the client address from `X-Forwarded-For` (set only behind a trusted balancer).
    pub trust_forwarded_for: bool,
    /// A connection whose request head has not arrived within this time is closed (slow or
    /// idle clients).
    pub header_read_timeout_ms: u64,
    /// A request not answered within this time (a slow body included) gets 408.
    pub request_timeout_ms: u64,
    /// Lifetime of a fleet-page session (server-side; sign-out ends it sooner).
    pub session_ttl_secs: u64,
    /// How often an operator's live stream (fleet events, logs, taps) re-checks that its
    /// credential still stands, besides the instant revocation notice; also its keepalive.
    pub live_recheck_ms: u64,
    /// Hosts a self-update download URL may name although they are loopback, link-local or
    /// private: comma-separated host names, IP addresses or CIDR blocks (empty: none); the api
    /// parses it at start and refuses to start on an entry that is none of these.
    pub self_update_allowed_hosts: String,
}

/// Settings of the gateway service.
#[derive(Debug, Clone, Deserialize)]
pub struct GatewaySettings {
    /// Listen address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Gateway id; generated at start when empty.
    pub id: Option<String>,
    /// Interval between pings.
    pub ping_interval_ms: u64,
    /// A socket with no pong for this long is dropped.
    pub pong_timeout_ms: u64,
    /// Interval between unsolicited pongs (for legacy agents' read deadline).
    pub unsolicited_pong_interval_ms: u64,
    /// Interval between `: keepalive` comments on an SSE stream.
    pub sse_keepalive_ms: u64,
    /// TTL of the gateway's liveness key in Redis.
    pub liveness_ttl_ms: u64,
    /// How often the liveness key is refreshed and the subscription probed.
    pub heartbeat_interval_ms: u64,
    /// Largest incoming WebSocket message; larger ones close the socket with 1009.
    pub max_message_bytes: usize,
    /// Frames queued for one socket before it counts as too slow.
    pub outbound_queue: usize,
    /// Handshakes authenticated at once; excess ones wait for a slot.
    pub max_pending_handshakes: usize,
    /// How long a handshake waits for a slot before it gets 503 with `Retry-After`, so a
    /// reconnect burst queues briefly instead of bouncing.
    pub handshake_queue_ms: u64,
    /// Connects of one node allowed within `reconnect_window_secs`.
    pub reconnect_limit: u32,
    /// Window of the reconnect limit.
    pub reconnect_window_secs: u64,
    /// Sockets closed per batch while draining.
    pub drain_batch: usize,
    /// Pause between drain batches.
    pub drain_pause_ms: u64,
    /// Time allowed for a drain before the process exits anyway.
    pub shutdown_grace_ms: u64,
    /// Failed authentications allowed per source address per minute before checks from it
    /// that need bcrypt (a node token still hashed with bcrypt) are refused with 429.
    pub auth_failures_per_minute: u32,
    /// Take the client address from `X-Forwarded-For` (set only behind a trusted balancer).
    pub trust_forwarded_for: bool,
    /// A connection whose handshake request has not arrived within this time is closed.
    pub header_read_timeout_ms: u64,
    /// Sockets opened or closed since the last trim after which the heartbeat hands freed
    /// heap pages back to the operating system; 0 never trims.
    pub trim_after_churn: u64,
}

/// Token hashing and checking.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// bcrypt cost for new hashes of operator and enrollment tokens (4 to 31).
    pub bcrypt_cost: u32,
    /// Lifetime of a verified operator token in the api's cache (node tokens need no cache).
    pub cache_ttl_secs: u64,
    /// bcrypt verifications running at once.
    pub max_concurrent_bcrypt: usize,
    /// How long a request waits for a bcrypt slot before it is answered 503.
    pub bcrypt_queue_timeout_ms: u64,
}

/// Logging settings.
#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` env-filter directive, e.g. `info,flotilla_api=debug`.
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A setting that could not be read or is out of range.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The sources could not be merged or deserialised; the message names the setting.
    #[error("invalid settings: {0}")]
    Load(#[from] config::ConfigError),
    /// A key given to [`Settings::load_with`] names no setting.
    #[error("unknown setting `{0}`")]
    Unknown(String),
    /// A value is outside its allowed range.
    #[error("invalid setting `{name}`: {reason}")]
    Invalid {
        /// Dotted setting name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

const DEFAULTS: &[(&str, &str)] = &[
    (
        "database.url",
        "postgres://postgres@127.0.0.1:5432/flotilla",
    ),
    ("database.max_connections", "20"),
    ("database.acquire_timeout_ms", "3000"),
    ("database.ping_idle_ms", "250"),
    ("redis.url", "redis://127.0.0.1:6379"),
    ("redis.command_timeout_ms", "2000"),
    ("api.listen", "127.0.0.1:8080"),
    ("api.public_ws_url", "ws://127.0.0.1:8081/api/agent/ws"),
    (
        "api.public_push_url",
        "http://127.0.0.1:8081/api/agent/push",
    ),
    ("api.default_poll_interval_ms", "15000"),
    ("api.unhealthy_threshold", "3"),
    ("api.health_sweep_interval_ms", "5000"),
    ("api.max_body_bytes", "4194304"),
    ("api.sample_request_ttl_secs", "120"),
    ("api.shutdown_grace_ms", "10000"),
    ("api.enroll_per_minute", "60"),
    ("api.auth_failures_per_minute", "100"),
    ("api.trust_forwarded_for", "false"),
    ("api.header_read_timeout_ms", "30000"),
    ("api.request_timeout_ms", "30000"),
    ("api.session_ttl_secs", "43200"),
    ("api.live_recheck_ms", "15000"),
    ("api.self_update_allowed_hosts", ""),
    ("gateway.listen", "127.0.0.1:8081"),
    ("gateway.ping_interval_ms", "30000"),
    ("gateway.pong_timeout_ms", "40000"),
    ("gateway.unsolicited_pong_interval_ms", "20000"),
    ("gateway.sse_keepalive_ms", "30000"),
    ("gateway.liveness_ttl_ms", "10000"),
    ("gateway.heartbeat_interval_ms", "3000"),
    ("gateway.max_message_bytes", "65536"),
    ("gateway.outbound_queue", "16"),
    ("gateway.max_pending_handshakes", "256"),
    ("gateway.handshake_queue_ms", "1000"),
    ("gateway.auth_failures_per_minute", "100"),
    ("gateway.trust_forwarded_for", "false"),
    ("gateway.header_read_timeout_ms", "10000"),
    ("gateway.trim_after_churn", "1000"),
    ("gateway.reconnect_limit", "10"),
    ("gateway.reconnect_window_secs", "60"),
    ("gateway.drain_batch", "500"),
    ("gateway.drain_pause_ms", "100"),
    ("gateway.shutdown_grace_ms", "30000"),
    ("auth.bcrypt_cost", "12"),
    ("auth.cache_ttl_secs", "1800"),
    ("auth.max_concurrent_bcrypt", "2"),
    ("auth.bcrypt_queue_timeout_ms", "5000"),
    ("log.format", "text"),
    ("log.level", "info"),
];

impl Settings {
    /// Reads defaults, then `FLOTILLA_CONFIG` if set, then the process environment.
    pub fn load() -> Result<Self, SettingsError> {
        let file = std::env::var("FLOTILLA_CONFIG").ok();
        Self::load_from(file.as_deref(), std::env::vars())
    }

    /// Like [`Settings::load`] with an explicit file and environment (for tests).
    pub fn load_from(
        file: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, SettingsError> {
        let settings = Self::sources(file, env)?.try_deserialize()?;
        Self::finish(settings)
    }

    /// The defaults with `overrides` applied, each as its environment variable is
    /// (`("gateway.pong_timeout_ms", "200")` as `FLOTILLA__GATEWAY__PONG_TIMEOUT_MS=200`); no
    /// file, no process environment. Of two overrides of one key the later wins. A key that
    /// names no setting is an error, unlike an unknown variable in the environment.
    pub fn load_with(overrides: &[(&str, &str)]) -> Result<Self, SettingsError> {
        let env = overrides
            .iter()
            .map(|(key, value)| (env_name(key), (*value).to_owned()));
        let mut unknown = None;
        let settings = serde_ignored::deserialize(Self::sources(None, env)?, |path| {
            unknown.get_or_insert_with(|| path.to_string());
        })?;
        match unknown {
            Some(key) => Err(SettingsError::Unknown(key)),
            None => Self::finish(settings),
        }
    }

    /// The merged layers: defaults, `file`, then the `FLOTILLA__` variables of `env`.
    fn sources(
        file: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<config::Config, SettingsError> {
        let mut builder = config::Config::builder();
        for (key, value) in DEFAULTS {
            builder = builder.set_default(*key, *value)?;
        }
        if let Some(path) = file {
            builder = builder.add_source(config::File::with_name(path).required(true));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("FLOTILLA__"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("FLOTILLA")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        Ok(builder.build()?)
    }

    /// Normalises what the layers gave and checks ranges.
    fn finish(mut settings: Settings) -> Result<Self, SettingsError> {
        // An empty variable (compose's `${FLOTILLA_ADMIN_TOKEN:-}`) means none.
        if settings
            .api
            .bootstrap_admin_token
            .as_ref()
            .is_some_and(|t| t.expose().is_empty())
        {
            settings.api.bootstrap_admin_token = None;
        }
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |name, reason: &str| {
            Err(SettingsError::Invalid {
                name,
                reason: reason.to_owned(),
            })
        };
        if !(4..=31).contains(&self.auth.bcrypt_cost) {
            return invalid("auth.bcrypt_cost", "must be between 4 and 31");
        }
        if !(1000..=3_600_000).contains(&self.api.default_poll_interval_ms) {
            return invalid(
                "api.default_poll_interval_ms",
                "must be between 1000 and 3600000",
            );
        }
        if self.api.unhealthy_threshold == 0 {
            return invalid("api.unhealthy_threshold", "must be at least 1");
        }
        let url = self.redis.url.expose();
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return invalid("redis.url", "must start with redis:// or rediss://");
        }
        if self.redis.cluster_nodes.is_some()
            && self
                .redis
                .cluster_seeds()
                .iter()
                .any(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
        {
            return invalid(
                "redis.cluster_nodes",
                "must be a comma-separated list of redis:// or rediss:// URLs",
            );
        }
        let db = self.database.url.expose();
        if !(db.starts_with("postgres://") || db.starts_with("postgresql://")) {
            return invalid("database.url", "must start with postgres://");
        }
        if let Some(t) = &self.api.bootstrap_admin_token {
            if !crate::auth::tokens::strong_enough_for_bootstrap(t.expose()) {
                return invalid(
                    "api.bootstrap_admin_token",
                    "is too easy to guess: use a vf_op_ token or at least 40 random characters \
                     (make one with `openssl rand -hex 32`), or leave it unset to have one \
                     generated and printed at first start",
                );
            }
        }
        if let Some(t) = &self.api.bootstrap_enrollment_token {
            if crate::auth::tokens::parse(crate::auth::tokens::ENROLL_PREFIX, t.expose()).is_none()
            {
                return invalid(
                    "api.bootstrap_enrollment_token",
                    "must be vf_enroll_<16 hex>_<48 hex>",
                );
            }
        }
        let ws = &self.api.public_ws_url;
        if !(ws.starts_with("ws://") || ws.starts_with("wss://")) {
            return invalid("api.public_ws_url", "must start with ws:// or wss://");
        }
        let push = &self.api.public_push_url;
        if !(push.starts_with("http://") || push.starts_with("https://")) {
            return invalid("api.public_push_url", "must start with http:// or https://");
        }
        if self.gateway.sse_keepalive_ms == 0 {
            return invalid("gateway.sse_keepalive_ms", "must be at least 1");
        }
        if self.gateway.pong_timeout_ms <= self.gateway.ping_interval_ms {
            return invalid(
                "gateway.pong_timeout_ms",
                "must be longer than gateway.ping_interval_ms",
            );
        }
        if self.api.session_ttl_secs == 0 {
            return invalid("api.session_ttl_secs", "must be at least 1");
        }
        if self.api.live_recheck_ms == 0 {
            return invalid("api.live_recheck_ms", "must be at least 1");
        }
        if self.auth.max_concurrent_bcrypt == 0 {
            return invalid("auth.max_concurrent_bcrypt", "must be at least 1");
        }
        if self.gateway.outbound_queue == 0 {
            return invalid("gateway.outbound_queue", "must be at least 1");
        }
        Ok(())
    }
}

/// The environment variable of a dotted setting key: `gateway.pong_timeout_ms` →
/// `FLOTILLA__GATEWAY__PONG_TIMEOUT_MS`.
fn env_name(key: &str) -> String {
    format!("FLOTILLA__{}", key.replace('.', "__").to_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const STRONG: &str = "9f2c4e7a1b3d5f608e2a4c6b8d0f1e3a5c7b9d1f3e5a7c9b0d2f4e6a8c1b3d5f";

    #[test]
    fn a_weak_bootstrap_token_is_refused_and_an_empty_one_is_none() {
        let err = Settings::load_from(
            None,
            env(&[("FLOTILLA__API__BOOTSTRAP_ADMIN_TOKEN", "flotilla-admin")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("api.bootstrap_admin_token"), "{err}");
        assert!(err.contains("openssl rand -hex 32"), "{err}");
        let s = Settings::load_from(None, env(&[("FLOTILLA__API__BOOTSTRAP_ADMIN_TOKEN", "")]))
            .unwrap();
        assert!(s.api.bootstrap_admin_token.is_none());
    }

    #[test]
    fn defaults_load() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.auth.bcrypt_cost, 12);
        assert_eq!(s.api.default_poll_interval_ms, 15000);
        assert_eq!(s.api.unhealthy_threshold, 3);
        assert!(s.api.bootstrap_admin_token.is_none());
    }

    #[test]
    fn cluster_nodes_are_a_comma_separated_list_of_redis_urls() {
        let s = Settings::load_from(
            None,
            env(&[(
                "FLOTILLA__REDIS__CLUSTER_NODES",
                "redis://127.0.0.1:7000, redis://127.0.0.1:7001,",
            )]),
        )
        .unwrap();
        assert_eq!(
            s.redis.cluster_seeds(),
            ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
        );
        let blank = Settings::load_from(None, env(&[("FLOTILLA__REDIS__CLUSTER_NODES", "")]));
        assert!(blank.unwrap().redis.cluster_seeds().is_empty());
        let err = Settings::load_from(
            None,
            env(&[("FLOTILLA__REDIS__CLUSTER_NODES", "127.0.0.1:7000")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("redis.cluster_nodes"), "{err}");
    }

    #[test]
    fn design_md_variables_apply() {
        let s = Settings::load_from(
            None,
            env(&[
                ("FLOTILLA__DATABASE__URL", "postgres://x@h/db"),
                ("FLOTILLA__REDIS__URL", "rediss://h:6380"),
                ("FLOTILLA__API__LISTEN", "127.0.0.1:0"),
                ("FLOTILLA__API__PUBLIC_WS_URL", "wss://lb/api/agent/ws"),
                ("FLOTILLA__API__BOOTSTRAP_ADMIN_TOKEN", STRONG),
                ("FLOTILLA__GATEWAY__LISTEN", "0.0.0.0:9000"),
                ("FLOTILLA__GATEWAY__ID", "gw-7"),
                ("FLOTILLA__AUTH__BCRYPT_COST", "4"),
            ]),
        )
        .unwrap();
        assert_eq!(s.database.url.expose(), "postgres://x@h/db");
        assert_eq!(s.redis.url.expose(), "rediss://h:6380");
        assert_eq!(s.api.listen.port(), 0);
        assert_eq!(s.api.public_ws_url, "wss://lb/api/agent/ws");
        assert_eq!(s.api.bootstrap_admin_token.unwrap().expose(), STRONG);
        assert_eq!(s.gateway.listen.port(), 9000);
        assert_eq!(s.gateway.id.as_deref(), Some("gw-7"));
        assert_eq!(s.auth.bcrypt_cost, 4);
    }

    #[test]
    fn bad_setting_is_named() {
        let err = Settings::load_from(None, env(&[("FLOTILLA__AUTH__BCRYPT_COST", "99")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.bcrypt_cost"), "{err}");
        let err = Settings::load_from(None, env(&[("FLOTILLA__GATEWAY__OUTBOUND_QUEUE", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("gateway.outbound_queue"), "{err}");
        let err = Settings::load_from(None, env(&[("FLOTILLA__API__LISTEN", "nope")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen"), "{err}");
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let s = Settings::load_from(
            None,
            env(&[("FLOTILLA__DATABASE__URL", "postgres://u:hunter2@h/db")]),
        )
        .unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn overrides_apply_as_their_variables_do() {
        let s = Settings::load_with(&[
            ("gateway.pong_timeout_ms", "200"),
            ("gateway.ping_interval_ms", "100"),
            ("gateway.id", "gw-7"),
            ("auth.bcrypt_cost", "5"),
            ("auth.bcrypt_cost", "4"),
        ])
        .unwrap();
        let by_env = Settings::load_from(
            None,
            env(&[
                ("FLOTILLA__GATEWAY__PONG_TIMEOUT_MS", "200"),
                ("FLOTILLA__GATEWAY__PING_INTERVAL_MS", "100"),
                ("FLOTILLA__GATEWAY__ID", "gw-7"),
                ("FLOTILLA__AUTH__BCRYPT_COST", "4"),
            ]),
        )
        .unwrap();
        assert_eq!(format!("{s:?}"), format!("{by_env:?}"));
        assert_eq!(s.gateway.pong_timeout_ms, 200);
        assert_eq!(s.gateway.id.as_deref(), Some("gw-7"));
        assert_eq!(s.auth.bcrypt_cost, 4, "the later override wins");
    }

    #[test]
    fn an_unknown_override_or_a_bad_value_is_an_error() {
        let err = Settings::load_with(&[("gateway.pong_timeout", "200")]).unwrap_err();
        assert!(
            matches!(&err, SettingsError::Unknown(key) if key == "gateway.pong_timeout"),
            "{err}"
        );
        let err = Settings::load_with(&[("gatway.pong_timeout_ms", "200")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("gatway"), "{err}");
        let err = Settings::load_with(&[("gateway.pong_timeout_ms", "soon")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("pong_timeout_ms"), "{err}");
        let err = Settings::load_with(&[("auth.bcrypt_cost", "99")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.bcrypt_cost"), "{err}");
    }
}
