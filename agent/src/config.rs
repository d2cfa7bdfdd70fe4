//! Agent configuration: `--flags`, then `VF_*` environment variables, then defaults.
//!
//! The variables are those of existing VectorFlow agents, so this agent is a drop-in
//! replacement: `VF_URL`, `VF_TOKEN`, `VF_DATA_DIR`, `VF_VECTOR_BIN`, `VF_POLL_INTERVAL`,
//! `VF_LOG_LEVEL`, `VF_NODE_LABELS` (plus `VF_LABELS`, `VF_HOSTNAME`, `VF_LOG_FORMAT`,
//! `VF_DEPLOYMENT_MODE`, `VF_ALLOW_HTTP_UPDATES`). Each has a flag of the same name
//! (`--poll-interval`). clap reads both into [`Flags`]; [`Config::from_flags`] checks the
//! values, with errors that name the variable and the flag. An empty value counts as unset
//! (except for the hostname, where it is an error).

use clap::Parser;
use flotilla_shared::protocol::Labels;
use flotilla_shared::secret::Secret;
use reqwest::Url;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// What went wrong reading the configuration; the message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required setting is missing.
    #[error("{0} is required")]
    Missing(&'static str),
    /// A setting has a value that does not parse.
    #[error("{name} is invalid ({value:?}): {why}")]
    Invalid {
        /// Variable and flag.
        name: &'static str,
        /// The offending value (never a token).
        value: String,
        /// Why.
        why: String,
    },
    /// An unknown or malformed command-line argument, or `--help` / `--version`:
    /// [`clap::Error::exit`] prints it and exits with the right status.
    #[error("{0}")]
    Usage(#[from] clap::Error),
}

/// The agent's command line. Every setting is a flag that falls back to its `VF_*` variable;
/// values are checked by [`Config::from_flags`], so an error names both.
#[derive(Parser)]
#[command(
    name = "flotilla-agent",
    version = crate::VERSION,
    about = "Flotilla agent: enrolls, polls the api, holds the push channel and runs Vector.",
    // As with most tools, a repeated flag's last value wins.
    args_override_self = true
)]
pub struct Flags {
    /// Flotilla api base URL (required), e.g. https://flotilla.example.com
    #[arg(long, env = "VF_URL", value_name = "URL")]
    url: Option<String>,
    /// Enrollment token; needed only until the node is enrolled
    #[arg(long, env = "VF_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// State and pipeline configs
    #[arg(long, env = "VF_DATA_DIR", value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: String,
    /// The vector binary (looked up on PATH unless it is a path)
    #[arg(long, env = "VF_VECTOR_BIN", value_name = "PATH", default_value = DEFAULT_VECTOR_BIN)]
    vector_bin: String,
    /// Poll interval until the server sets one, e.g. 500ms, 15s, 2m (100ms to 24h)
    #[arg(long, env = "VF_POLL_INTERVAL", value_name = "DUR", default_value = DEFAULT_POLL_INTERVAL)]
    poll_interval: String,
    /// trace, debug, info, warn or error (RUST_LOG overrides)
    #[arg(long, env = "VF_LOG_LEVEL", value_name = "LEVEL", default_value = DEFAULT_LOG_LEVEL)]
    log_level: String,
    /// text or json (one JSON object per line)
    #[arg(long, env = "VF_LOG_FORMAT", value_name = "FORMAT", default_value = DEFAULT_LOG_FORMAT)]
    log_format: String,
    /// The hostname to enroll with (default: this machine's hostname)
    #[arg(long, env = "VF_HOSTNAME", value_name = "NAME")]
    hostname: Option<String>,
    /// Labels sent at enrollment and in heartbeats
    #[arg(long, env = "VF_LABELS", value_name = "K=V,K=V")]
    labels: Option<String>,
    /// VectorFlow's name for --labels, used when --labels is not set
    #[arg(long, env = "VF_NODE_LABELS", value_name = "K=V,K=V")]
    node_labels: Option<String>,
    /// STANDALONE or DOCKER, as reported (default: DOCKER when /.dockerenv exists)
    #[arg(long, env = "VF_DEPLOYMENT_MODE", value_name = "MODE")]
    deployment_mode: Option<String>,
    /// true: self-updates may download over plain http (false: https only)
    #[arg(
        long,
        env = "VF_ALLOW_HTTP_UPDATES",
        value_name = "BOOL",
        default_value = "false"
    )]
    allow_http_updates: String,
}

const DEFAULT_DATA_DIR: &str = "/var/lib/vf-agent";
const DEFAULT_VECTOR_BIN: &str = "vector";
const DEFAULT_POLL_INTERVAL: &str = "15s";
const DEFAULT_LOG_LEVEL: &str = "info";
const DEFAULT_LOG_FORMAT: &str = "text";

/// Timeouts, debounces and backoffs. Defaults are production values; tests shorten them.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Delay between a state change and the heartbeat that reports it (batches changes).
    pub heartbeat_debounce: Duration,
    /// The push socket is dead when no frame (ping included) arrived for this long.
    pub read_deadline: Duration,
    /// First push reconnect backoff ceiling.
    pub push_backoff_base: Duration,
    /// Largest push reconnect backoff ceiling.
    pub push_backoff_max: Duration,
    /// A connection that stayed up this long resets the push backoff.
    pub push_stable_after: Duration,
    /// Upper bound of the random delay before reconnecting to a draining gateway.
    pub drain_reconnect_max: Duration,
    /// WebSocket connect + handshake timeout; also the SSE wait for response headers.
    pub connect_timeout: Duration,
    /// HTTP request timeout (enroll, config, heartbeat, samples).
    pub http_timeout: Duration,
    /// First delay before restarting a crashed pipeline.
    pub crash_backoff_base: Duration,
    /// Largest delay before restarting a crashed pipeline.
    pub crash_backoff_max: Duration,
    /// How long a stopped pipeline gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// Time limit of one `vector tap`.
    pub tap_timeout: Duration,
    /// Delay before re-posting sample results that failed to post.
    pub sample_retry: Duration,
    /// Self-update: connect timeout of the download.
    pub download_connect_timeout: Duration,
    /// Self-update: total time limit of the download.
    pub download_timeout: Duration,
    /// The SSE push stream is dead when no bytes (`: keepalive` included) arrived for this
    /// long; generous, as servers send a keepalive only every 30 s.
    pub sse_read_deadline: Duration,
    /// How often captured pipeline log lines are shipped.
    pub log_flush: Duration,
    /// How often a live tap posts its captured events.
    pub live_tap_flush: Duration,
    /// How long a live tap runs at most.
    pub live_tap_max: Duration,
    /// Time limit of one query of a pipeline's Vector API (counters) before a heartbeat.
    pub vector_api_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        let s = Duration::from_secs;
        Self {
            heartbeat_debounce: s(1),
            read_deadline: s(45),
            push_backoff_base: s(1),
            push_backoff_max: s(30),
            push_stable_after: s(30),
            drain_reconnect_max: s(2),
            connect_timeout: s(10),
            http_timeout: s(15),
            crash_backoff_base: s(1),
            crash_backoff_max: s(60),
            stop_grace: s(10),
            tap_timeout: s(15),
            sample_retry: s(5),
            download_connect_timeout: s(10),
            download_timeout: s(300),
            sse_read_deadline: s(90),
            log_flush: s(2),
            live_tap_flush: s(1),
            live_tap_max: s(300),
            vector_api_timeout: s(2),
        }
    }
}

/// The format of the agent's own log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (coloured only on a terminal).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Longest hostname accepted (the DNS limit).
pub const MAX_HOSTNAME: usize = 253;

/// How to re-execute this binary after a self-update.
#[derive(Clone)]
pub struct ReExec {
    /// The binary to replace and run (resolved at start, before any replacement).
    pub exe: PathBuf,
    /// Arguments to run it with (without `argv[0]`).
    pub args: Vec<OsString>,
}

impl std::fmt::Debug for ReExec {
    // The arguments may carry `--token`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReExec")
            .field("exe", &self.exe)
            .field("args", &format_args!("[{} arguments]", self.args.len()))
            .finish()
    }
}

/// The agent's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Api base URL, e.g. `https://flotilla.example.com`.
    pub url: Url,
    /// Enrollment token (only needed before enrollment).
    pub enrollment_token: Option<Secret>,
    /// State directory: `node-token`, `pipelines/`.
    pub data_dir: PathBuf,
    /// The `vector` binary.
    pub vector_bin: PathBuf,
    /// Poll interval until the server sends one.
    pub poll_interval: Duration,
    /// Log level for the agent's own logs.
    pub log_level: String,
    /// Format of the agent's own logs.
    pub log_format: LogFormat,
    /// The hostname the node enrolls with.
    pub hostname: String,
    /// Labels sent at enrollment and in heartbeats.
    pub labels: Labels,
    /// `STANDALONE` or `DOCKER` as reported; detected when `None`.
    pub deployment_mode: Option<String>,
    /// Self-updates may download over plain http (for tests and closed labs); https only
    /// otherwise.
    pub allow_http_updates: bool,
    /// Set by the binary; `None` when embedded (self-update is then refused).
    pub reexec: Option<ReExec>,
    /// Timeouts and backoffs.
    pub tuning: Tuning,
}

impl Config {
    /// A configuration with defaults for everything but the api URL and data dir.
    pub fn new(url: Url, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            url,
            enrollment_token: None,
            data_dir: data_dir.into(),
            vector_bin: PathBuf::from("vector"),
            poll_interval: Duration::from_secs(15),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            hostname: crate::enroll::hostname(),
            labels: Labels::new(),
            deployment_mode: None,
            allow_http_updates: false,
            reexec: None,
            tuning: Tuning::default(),
        }
    }

    /// Where the node token lives.
    pub fn token_path(&self) -> PathBuf {
        self.data_dir.join("node-token")
    }

    /// Where pipeline configs are written.
    pub fn pipelines_dir(&self) -> PathBuf {
        self.data_dir.join("pipelines")
    }

    /// Reads the process's own arguments and environment.
    pub fn from_process() -> Result<Config, ConfigError> {
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        let mut config = Self::from_flags(Flags::try_parse()?)?;
        if let Ok(exe) = std::env::current_exe() {
            config.reexec = Some(ReExec { exe, args });
        }
        Ok(config)
    }

    /// Checks the flags (and the variables they fell back to) into a configuration.
    pub fn from_flags(flags: Flags) -> Result<Config, ConfigError> {
        // Unset, empty and blank are the same (a compose file's `VF_TOKEN=` means "none").
        let set = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
        let or_default =
            |value: String, default: &str| set(Some(value)).unwrap_or_else(|| default.to_owned());

        let url_text = set(flags.url).ok_or(ConfigError::Missing(
            "VF_URL (or --url), the Flotilla api base URL,",
        ))?;
        let url = parse_url(&url_text)?;
        let mut config = Config::new(url, or_default(flags.data_dir, DEFAULT_DATA_DIR));
        config.enrollment_token = set(flags.token).map(|t| Secret::new(t.trim()));
        config.vector_bin = PathBuf::from(or_default(flags.vector_bin, DEFAULT_VECTOR_BIN));
        let interval = or_default(flags.poll_interval, DEFAULT_POLL_INTERVAL);
        config.poll_interval = parse_duration(&interval).map_err(|why| ConfigError::Invalid {
            name: "VF_POLL_INTERVAL (--poll-interval)",
            value: interval.clone(),
            why,
        })?;
        let level = or_default(flags.log_level, DEFAULT_LOG_LEVEL)
            .trim()
            .to_ascii_lowercase();
        if !["trace", "debug", "info", "warn", "error"].contains(&level.as_str()) {
            return Err(ConfigError::Invalid {
                name: "VF_LOG_LEVEL (--log-level)",
                value: level,
                why: "expected trace, debug, info, warn or error".into(),
            });
        }
        config.log_level = level;
        let format = or_default(flags.log_format, DEFAULT_LOG_FORMAT);
        config.log_format = match format.trim().to_ascii_lowercase().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => {
                return Err(ConfigError::Invalid {
                    name: "VF_LOG_FORMAT (--log-format)",
                    value: format,
                    why: "expected text or json".into(),
                })
            }
        };
        // Unlike the other settings, an empty hostname is an error, not "use the default":
        // a script that meant to set one should not enroll under the machine's name.
        if let Some(name) = flags.hostname {
            config.hostname = parse_hostname(&name)?;
        }
        // VF_NODE_LABELS is what current VectorFlow agents read.
        if let Some(labels) = set(flags.labels).or_else(|| set(flags.node_labels)) {
            config.labels = parse_labels(&labels).map_err(|why| ConfigError::Invalid {
                name: "VF_LABELS (--labels)",
                value: labels.clone(),
                why,
            })?;
        }
        if let Some(mode) = set(flags.deployment_mode) {
            let mode = mode.trim().to_ascii_uppercase();
            if !["STANDALONE", "DOCKER"].contains(&mode.as_str()) {
                return Err(ConfigError::Invalid {
                    name: "VF_DEPLOYMENT_MODE (--deployment-mode)",
                    value: mode,
                    why: "expected STANDALONE or DOCKER".into(),
                });
            }
            config.deployment_mode = Some(mode);
        }
        let allow = or_default(flags.allow_http_updates, "false");
        config.allow_http_updates = match allow.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => {
                return Err(ConfigError::Invalid {
                    name: "VF_ALLOW_HTTP_UPDATES (--allow-http-updates)",
                    value: allow,
                    why: "expected true or false".into(),
                })
            }
        };
        Ok(config)
    }
}

fn parse_url(text: &str) -> Result<Url, ConfigError> {
    let invalid = |why: String| ConfigError::Invalid {
        name: "VF_URL (--url)",
        value: text.to_owned(),
        why,
    };
    let url = Url::parse(text.trim()).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid(
            "expected an http:// or https:// URL with a host".into(),
        ));
    }
    Ok(url)
}

/// A hostname as given (trimmed): 1 to [`MAX_HOSTNAME`] characters, no control characters
/// or spaces.
fn parse_hostname(text: &str) -> Result<String, ConfigError> {
    let invalid = |why: &str| ConfigError::Invalid {
        name: "VF_HOSTNAME (--hostname)",
        value: text.to_owned(),
        why: why.to_owned(),
    };
    let name = text.trim();
    if name.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if name.chars().count() > MAX_HOSTNAME {
        return Err(invalid("must be at most 253 characters"));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid("must not contain spaces or control characters"));
    }
    Ok(name.to_owned())
}

/// Parses a duration as humantime reads it (`500ms`, `1.5s`, `2m`, `1h30m`) or a bare number
/// of seconds; at least 100 ms and at most 24 h.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bare_seconds = !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.');
    let parsed = if bare_seconds {
        humantime::parse_duration(&format!("{t}s"))
    } else {
        humantime::parse_duration(t)
    };
    let duration = parsed.map_err(|e| format!("{e}; expected e.g. 15s or 500ms"))?;
    if !(Duration::from_millis(100)..=Duration::from_secs(86_400)).contains(&duration) {
        return Err("must be between 100ms and 24h".into());
    }
    Ok(duration)
}

fn parse_labels(text: &str) -> Result<Labels, String> {
    let mut labels = Labels::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value"))?;
        if k.trim().is_empty() {
            return Err(format!("{pair:?} has an empty key"));
        }
        labels.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    /// Parses flags alone: the variables of the environment the tests run in are ignored.
    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let command = Flags::command().mut_args(|a| a.env(None));
        let matches = command
            .try_get_matches_from(std::iter::once("flotilla-agent").chain(args.iter().copied()))?;
        Config::from_flags(Flags::from_arg_matches(&matches)?)
    }

    fn config(args: &[&str]) -> Config {
        parse(args).unwrap()
    }

    fn error(args: &[&str]) -> String {
        parse(args).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let c = config(&["--url", "http://api:8080"]);
        assert_eq!(c.url.as_str(), "http://api:8080/");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/vf-agent"));
        assert_eq!(c.vector_bin, PathBuf::from("vector"));
        assert_eq!(c.poll_interval, Duration::from_secs(15));
        assert!(c.enrollment_token.is_none());
        assert_eq!(c.hostname, crate::enroll::hostname());
        assert_eq!(c.log_level, "info");
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.labels.is_empty());
        assert!(c.deployment_mode.is_none());
        assert!(
            !c.allow_http_updates,
            "self-updates are https-only by default"
        );
    }

    #[test]
    fn every_setting() {
        let c = config(&[
            "--url=https://x.example",
            "--token",
            "vf_enroll_abc",
            "--data-dir=/tmp/a",
            "--vector-bin",
            "/opt/vector",
            "--poll-interval",
            "250ms",
            "--log-level=DEBUG",
            "--labels",
            "region=eu, tier=edge",
            "--deployment-mode",
            "standalone",
            "--allow-http-updates",
            "TRUE",
            "--hostname",
            " edge-07.example ",
            "--log-format",
            "JSON",
        ]);
        assert_eq!(c.hostname, "edge-07.example");
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(c.allow_http_updates);
        assert_eq!(c.deployment_mode.as_deref(), Some("STANDALONE"));
        assert_eq!(c.enrollment_token.unwrap().expose(), "vf_enroll_abc");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/a"));
        assert_eq!(c.vector_bin, PathBuf::from("/opt/vector"));
        assert_eq!(c.poll_interval, Duration::from_millis(250));
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.labels.get("tier").map(String::as_str), Some("edge"));
    }

    #[test]
    fn each_flag_falls_back_to_its_variable() {
        let command = Flags::command();
        let pairs: Vec<(&str, &str)> = command
            .get_arguments()
            .filter_map(|a| Some((a.get_long()?, a.get_env()?.to_str()?)))
            .collect();
        assert_eq!(
            pairs,
            [
                ("url", "VF_URL"),
                ("token", "VF_TOKEN"),
                ("data-dir", "VF_DATA_DIR"),
                ("vector-bin", "VF_VECTOR_BIN"),
                ("poll-interval", "VF_POLL_INTERVAL"),
                ("log-level", "VF_LOG_LEVEL"),
                ("log-format", "VF_LOG_FORMAT"),
                ("hostname", "VF_HOSTNAME"),
                ("labels", "VF_LABELS"),
                ("node-labels", "VF_NODE_LABELS"),
                ("deployment-mode", "VF_DEPLOYMENT_MODE"),
                ("allow-http-updates", "VF_ALLOW_HTTP_UPDATES"),
            ]
        );
        let hidden: Vec<&str> = command
            .get_arguments()
            .filter(|a| a.is_hide_env_values_set())
            .filter_map(|a| a.get_long())
            .collect();
        assert_eq!(hidden, ["token"], "--help never shows the token's value");
    }

    #[test]
    fn empty_values_are_unset_and_the_last_flag_wins() {
        let c = config(&[
            "--url=http://first",
            "--url",
            "http://last",
            "--token",
            "  ",
            "--data-dir=",
            "--poll-interval=",
            "--labels=",
            "--node-labels",
            "team=edge",
        ]);
        assert_eq!(c.url.host_str(), Some("last"));
        assert!(c.enrollment_token.is_none());
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/vf-agent"));
        assert_eq!(c.poll_interval, Duration::from_secs(15));
        assert_eq!(
            c.labels.get("team").map(String::as_str),
            Some("edge"),
            "VectorFlow's VF_NODE_LABELS when VF_LABELS is unset"
        );
        let c = config(&["--url=http://x", "--labels=a=1", "--node-labels=b=2"]);
        assert_eq!(c.labels.keys().collect::<Vec<_>>(), ["a"]);
        assert!(error(&["--url="]).contains("VF_URL"));
    }

    #[test]
    fn clear_errors_name_the_setting() {
        let url = "--url=http://x";
        let e = error(&[]);
        assert!(e.contains("VF_URL"), "{e}");
        let e = error(&["--url", "not a url"]);
        assert!(e.contains("VF_URL"), "{e}");
        let e = error(&["--url", "ftp://x"]);
        assert!(e.contains("http"), "{e}");
        let e = error(&[url, "--deployment-mode", "vm"]);
        assert!(e.contains("VF_DEPLOYMENT_MODE"), "{e}");
        let e = error(&[url, "--poll-interval", "soon"]);
        assert!(e.contains("VF_POLL_INTERVAL"), "{e}");
        let e = error(&[url, "--log-level", "loud"]);
        assert!(e.contains("VF_LOG_LEVEL"), "{e}");
        let e = error(&[url, "--bogus"]);
        assert!(e.contains("unexpected argument '--bogus'"), "{e}");
        let e = error(&["--url"]);
        assert!(e.contains("a value is required for '--url <URL>'"), "{e}");
        let e = error(&[url, "--labels", "novalue"]);
        assert!(e.contains("VF_LABELS"), "{e}");
        let e = error(&[url, "--allow-http-updates", "maybe"]);
        assert!(e.contains("VF_ALLOW_HTTP_UPDATES"), "{e}");
        let e = error(&[url, "--log-format", "xml"]);
        assert!(
            e.contains("VF_LOG_FORMAT") && e.contains("text or json"),
            "{e}"
        );
        for (bad, why) in [
            ("", "empty"),
            ("  ", "empty"),
            (&*"h".repeat(MAX_HOSTNAME + 1), "253"),
            ("two words", "spaces"),
            ("tab\there", "control"),
        ] {
            let e = error(&[url, "--hostname", bad]);
            assert!(e.contains("VF_HOSTNAME") && e.contains(why), "{bad:?}: {e}");
        }
        let longest = "h".repeat(MAX_HOSTNAME);
        assert_eq!(config(&[url, "--hostname", &longest]).hostname, longest);
    }

    #[test]
    fn help_lists_every_flag_and_variable_and_version_prints() {
        let help = Flags::command().render_long_help().to_string();
        for arg in Flags::command().get_arguments() {
            if let Some(long) = arg.get_long() {
                assert!(help.contains(&format!("--{long}")), "--{long}: {help}");
            }
            if let Some(var) = arg.get_env() {
                assert!(help.contains(var.to_str().unwrap()), "{var:?}: {help}");
            }
        }
        assert!(help.contains("[default: 15s]"), "{help}");
        let kind = |flag: &str| match parse(&[flag]) {
            Err(ConfigError::Usage(e)) => e.kind(),
            other => panic!("{flag}: {:?}", other.map(|_| ())),
        };
        assert_eq!(kind("--help"), clap::error::ErrorKind::DisplayHelp);
        assert_eq!(kind("-h"), clap::error::ErrorKind::DisplayHelp);
        assert_eq!(kind("-V"), clap::error::ErrorKind::DisplayVersion);
        assert_eq!(kind("--version"), clap::error::ErrorKind::DisplayVersion);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration(" 2m ").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        for bad in ["", "s", "5d", "10ms", "-1s", "1e9", "soon", "."] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn token_never_in_debug_output() {
        let mut c = config(&["--url=http://x", "--token", "vf_enroll_supersecret"]);
        c.reexec = Some(ReExec {
            exe: "/usr/local/bin/flotilla-agent".into(),
            args: vec!["--token".into(), "vf_enroll_supersecret".into()],
        });
        assert!(!format!("{c:?}").contains("supersecret"));
    }
}
