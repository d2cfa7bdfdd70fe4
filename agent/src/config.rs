//! Agent configuration: `--flags`, then `VF_*` environment variables, then defaults.
//!
//! The variables are those of existing VectorFlow agents, so this agent is a drop-in
//! replacement: `VF_URL`, `VF_TOKEN`, `VF_DATA_DIR`, `VF_VECTOR_BIN`, `VF_POLL_INTERVAL`,
//! `VF_LOG_LEVEL` (plus `VF_LABELS`, `VF_HOSTNAME`, `VF_LOG_FORMAT`). Each has a flag of the
//! same name (`--poll-interval`).

use flotilla_shared::protocol::Labels;
use flotilla_shared::secret::Secret;
use reqwest::Url;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// What went wrong reading the configuration; the message names the setting.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
    /// An unknown or malformed command-line argument.
    #[error("{0}\n\n{USAGE}")]
    Usage(String),
}

/// Result of parsing the command line.
#[derive(Debug)]
pub enum Invocation {
    /// Run the agent.
    Run(Box<Config>),
    /// Print help and exit.
    Help,
    /// Print the version and exit.
    Version,
}

/// Usage text for `--help`.
pub const USAGE: &str = "\
usage: flotilla-agent [options]

options (each also read from the environment variable shown):
  --url URL              VF_URL            Flotilla api base URL (required), e.g. https://flotilla.example.com
  --token TOKEN          VF_TOKEN          enrollment token; needed only until the node is enrolled
  --data-dir DIR         VF_DATA_DIR       state and pipeline configs (default /var/lib/vf-agent)
  --vector-bin PATH      VF_VECTOR_BIN     the vector binary (default: vector on PATH)
  --poll-interval DUR    VF_POLL_INTERVAL  poll interval until the server sets one (default 15s; e.g. 500ms, 15s, 2m)
  --log-level LEVEL      VF_LOG_LEVEL      trace, debug, info, warn or error (default info)
  --log-format FORMAT    VF_LOG_FORMAT     text or json (one JSON object per line) (default text)
  --hostname NAME        VF_HOSTNAME       the hostname to enroll with (default: this machine's hostname)
  --labels K=V,K=V       VF_LABELS         labels sent at enrollment and in heartbeats (VF_NODE_LABELS too)
  --deployment-mode M    VF_DEPLOYMENT_MODE  STANDALONE or DOCKER, as reported (default: DOCKER when /.dockerenv exists)
  --allow-http-updates B VF_ALLOW_HTTP_UPDATES  true: self-updates may download over plain http (default false: https only)
  -h, --help                               show this help
  -V, --version                            show the version";

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
    pub fn from_process() -> Result<Invocation, ConfigError> {
        let mut args = std::env::args_os();
        let _argv0 = args.next();
        let args: Vec<OsString> = args.collect();
        let mut inv = Self::parse(args.clone(), |k| std::env::var(k).ok())?;
        if let Invocation::Run(config) = &mut inv {
            if let Ok(exe) = std::env::current_exe() {
                config.reexec = Some(ReExec { exe, args });
            }
        }
        Ok(inv)
    }

    /// Parses arguments (without `argv[0]`) over an environment lookup.
    pub fn parse(
        args: impl IntoIterator<Item = OsString>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Invocation, ConfigError> {
        let mut flags: Vec<(&'static str, String)> = vec![];
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let arg = arg
                .into_string()
                .map_err(|a| ConfigError::Usage(format!("argument is not UTF-8: {a:?}")))?;
            match arg.as_str() {
                "-h" | "--help" => return Ok(Invocation::Help),
                "-V" | "--version" => return Ok(Invocation::Version),
                _ => {}
            }
            let Some(body) = arg.strip_prefix("--") else {
                return Err(ConfigError::Usage(format!("unexpected argument {arg:?}")));
            };
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (body, None),
            };
            let Some(&(_, var)) = FLAGS.iter().find(|(flag, _)| *flag == name) else {
                return Err(ConfigError::Usage(format!("unknown option --{name}")));
            };
            let value = match inline {
                Some(v) => v,
                None => args
                    .next()
                    .and_then(|v| v.into_string().ok())
                    .ok_or_else(|| ConfigError::Usage(format!("--{name} needs a value")))?,
            };
            flags.push((var, value));
        }
        let lookup = |var: &str| {
            flags
                .iter()
                .rev()
                .find(|(v, _)| *v == var)
                .map(|(_, value)| value.clone())
                .or_else(|| env(var))
        };
        let get = |var: &str| lookup(var).filter(|v| !v.trim().is_empty());

        let url_text = get("VF_URL").ok_or(ConfigError::Missing(
            "VF_URL (or --url), the Flotilla api base URL,",
        ))?;
        let url = parse_url(&url_text)?;
        let mut config = Config::new(
            url,
            get("VF_DATA_DIR").unwrap_or_else(|| "/var/lib/vf-agent".into()),
        );
        config.enrollment_token = get("VF_TOKEN").map(|t| Secret::new(t.trim()));
        if let Some(bin) = get("VF_VECTOR_BIN") {
            config.vector_bin = PathBuf::from(bin);
        }
        if let Some(interval) = get("VF_POLL_INTERVAL") {
            config.poll_interval =
                parse_duration(&interval).map_err(|why| ConfigError::Invalid {
                    name: "VF_POLL_INTERVAL (--poll-interval)",
                    value: interval.clone(),
                    why,
                })?;
        }
        if let Some(level) = get("VF_LOG_LEVEL") {
            let level = level.trim().to_ascii_lowercase();
            if !["trace", "debug", "info", "warn", "error"].contains(&level.as_str()) {
                return Err(ConfigError::Invalid {
                    name: "VF_LOG_LEVEL (--log-level)",
                    value: level,
                    why: "expected trace, debug, info, warn or error".into(),
                });
            }
            config.log_level = level;
        }
        if let Some(format) = get("VF_LOG_FORMAT") {
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
        }
        // Unlike the other settings, an empty hostname is an error, not "use the default":
        // a script that meant to set one should not enroll under the machine's name.
        if let Some(name) = lookup("VF_HOSTNAME") {
            config.hostname = parse_hostname(&name)?;
        }
        // VF_NODE_LABELS is what current VectorFlow agents read.
        if let Some(labels) = get("VF_LABELS").or_else(|| get("VF_NODE_LABELS")) {
            config.labels = parse_labels(&labels).map_err(|why| ConfigError::Invalid {
                name: "VF_LABELS (--labels)",
                value: labels.clone(),
                why,
            })?;
        }
        if let Some(mode) = get("VF_DEPLOYMENT_MODE") {
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
        if let Some(allow) = get("VF_ALLOW_HTTP_UPDATES") {
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
        }
        Ok(Invocation::Run(Box::new(config)))
    }
}

/// Flag name → environment variable.
const FLAGS: &[(&str, &str)] = &[
    ("url", "VF_URL"),
    ("token", "VF_TOKEN"),
    ("data-dir", "VF_DATA_DIR"),
    ("vector-bin", "VF_VECTOR_BIN"),
    ("poll-interval", "VF_POLL_INTERVAL"),
    ("log-level", "VF_LOG_LEVEL"),
    ("log-format", "VF_LOG_FORMAT"),
    ("hostname", "VF_HOSTNAME"),
    ("labels", "VF_LABELS"),
    ("deployment-mode", "VF_DEPLOYMENT_MODE"),
    ("allow-http-updates", "VF_ALLOW_HTTP_UPDATES"),
];

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

/// Parses `500ms`, `15s`, `2m`, `1h` or a bare number of seconds; at least 100 ms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| "expected a number with a unit, e.g. 15s or 500ms".to_owned())?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown unit {other:?} (use ms, s, m or h)")),
    };
    if !secs.is_finite() || !(0.1..=86_400.0).contains(&secs) {
        return Err("must be between 100ms and 24h".into());
    }
    Ok(Duration::from_secs_f64(secs))
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
    use std::collections::HashMap;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Invocation, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse(args.iter().map(OsString::from), move |k| {
            env.get(k).cloned()
        })
    }

    fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
        match parse(args, env).unwrap() {
            Invocation::Run(c) => *c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_and_environment() {
        let c = config(&[], &[("VF_URL", "http://api:8080")]);
        assert_eq!(c.url.as_str(), "http://api:8080/");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/vf-agent"));
        assert_eq!(c.vector_bin, PathBuf::from("vector"));
        assert_eq!(c.poll_interval, Duration::from_secs(15));
        assert!(c.enrollment_token.is_none());
        assert_eq!(c.hostname, crate::enroll::hostname());
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(
            !c.allow_http_updates,
            "self-updates are https-only by default"
        );
        let c = config(
            &[],
            &[
                ("VF_URL", "https://x.example"),
                ("VF_TOKEN", "vf_enroll_abc"),
                ("VF_DATA_DIR", "/tmp/a"),
                ("VF_VECTOR_BIN", "/opt/vector"),
                ("VF_POLL_INTERVAL", "250ms"),
                ("VF_LOG_LEVEL", "DEBUG"),
                ("VF_LABELS", "region=eu, tier=edge"),
                ("VF_DEPLOYMENT_MODE", "standalone"),
                ("VF_ALLOW_HTTP_UPDATES", "TRUE"),
                ("VF_HOSTNAME", " edge-07.example "),
                ("VF_LOG_FORMAT", "JSON"),
            ],
        );
        assert_eq!(c.hostname, "edge-07.example");
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(c.allow_http_updates);
        assert_eq!(c.deployment_mode.as_deref(), Some("STANDALONE"));
        assert_eq!(c.enrollment_token.unwrap().expose(), "vf_enroll_abc");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/a"));
        assert_eq!(c.poll_interval, Duration::from_millis(250));
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.labels.get("tier").map(String::as_str), Some("edge"));
    }

    #[test]
    fn flags_override_environment() {
        let c = config(
            &[
                "--url",
                "http://flag",
                "--poll-interval=2m",
                "--data-dir",
                "/d",
                "--vector-bin=/v",
                "--hostname",
                "flag-host",
                "--log-format=json",
            ],
            &[
                ("VF_URL", "http://env"),
                ("VF_POLL_INTERVAL", "1s"),
                ("VF_HOSTNAME", "env-host"),
                ("VF_LOG_FORMAT", "text"),
            ],
        );
        assert_eq!(c.hostname, "flag-host");
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.url.host_str(), Some("flag"));
        assert_eq!(c.poll_interval, Duration::from_secs(120));
        assert_eq!(c.data_dir, PathBuf::from("/d"));
        assert_eq!(c.vector_bin, PathBuf::from("/v"));
    }

    #[test]
    fn clear_errors_name_the_setting() {
        let e = parse(&[], &[]).unwrap_err().to_string();
        assert!(e.contains("VF_URL"), "{e}");
        let e = parse(&[], &[("VF_URL", "not a url")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("VF_URL"), "{e}");
        let e = parse(&[], &[("VF_URL", "ftp://x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("http"), "{e}");
        let e = parse(&[], &[("VF_URL", "http://x"), ("VF_DEPLOYMENT_MODE", "vm")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("VF_DEPLOYMENT_MODE"), "{e}");
        let e = parse(&[], &[("VF_URL", "http://x"), ("VF_POLL_INTERVAL", "soon")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("VF_POLL_INTERVAL"), "{e}");
        let e = parse(&["--log-level", "loud"], &[("VF_URL", "http://x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("VF_LOG_LEVEL"), "{e}");
        let e = parse(&["--bogus"], &[("VF_URL", "http://x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown option --bogus"), "{e}");
        let e = parse(&["--url"], &[]).unwrap_err().to_string();
        assert!(e.contains("--url needs a value"), "{e}");
        let e = parse(&[], &[("VF_URL", "http://x"), ("VF_LABELS", "novalue")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("VF_LABELS"), "{e}");
        let e = parse(
            &["--allow-http-updates", "maybe"],
            &[("VF_URL", "http://x")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("VF_ALLOW_HTTP_UPDATES"), "{e}");
        let e = parse(&["--log-format", "xml"], &[("VF_URL", "http://x")])
            .unwrap_err()
            .to_string();
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
            let e = parse(&["--hostname", bad], &[("VF_URL", "http://x")])
                .unwrap_err()
                .to_string();
            assert!(e.contains("VF_HOSTNAME") && e.contains(why), "{bad:?}: {e}");
            let e = parse(&[], &[("VF_URL", "http://x"), ("VF_HOSTNAME", bad)])
                .unwrap_err()
                .to_string();
            assert!(e.contains("VF_HOSTNAME"), "{bad:?}: {e}");
        }
        let longest = "h".repeat(MAX_HOSTNAME);
        assert_eq!(
            config(&["--hostname", &longest], &[("VF_URL", "http://x")]).hostname,
            longest
        );
    }

    #[test]
    fn help_and_version() {
        assert!(matches!(parse(&["--help"], &[]).unwrap(), Invocation::Help));
        assert!(matches!(parse(&["-V"], &[]).unwrap(), Invocation::Version));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "s", "5d", "10ms", "-1s", "1e9"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn token_never_in_debug_output() {
        let mut c = config(
            &["--token", "vf_enroll_supersecret"],
            &[("VF_URL", "http://x")],
        );
        c.reexec = Some(ReExec {
            exe: "/usr/local/bin/flotilla-agent".into(),
            args: vec!["--token".into(), "vf_enroll_supersecret".into()],
        });
        assert!(!format!("{c:?}").contains("supersecret"));
    }
}
