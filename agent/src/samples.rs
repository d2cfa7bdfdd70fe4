//! Sample requests: `vector tap` per component, with an event limit and a time limit.

use crate::vector_api::TapUrl;
use flotilla_shared::protocol::{SampleRequestConfig, SampleResult, SchemaField};
use serde_json::Value;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::ChildStdout;
use tokio::task::JoinHandle;

/// Taps every component of a request concurrently; one result per component, errors included.
/// `api` is the pipeline's Vector API (see [`crate::vector_api`]); without one every
/// component's result is an error saying so.
pub async fn tap_all(
    vector_bin: &Path,
    api: Option<TapUrl>,
    request: &SampleRequestConfig,
    timeout: Duration,
) -> Vec<SampleResult> {
    let taps = request
        .component_keys
        .iter()
        .map(|key| tap(vector_bin, api, request, key, timeout));
    futures_util::future::join_all(taps).await
}

/// Runs `vector tap --outputs-of <key> --limit <n> --format json` and collects its events.
pub async fn tap(
    vector_bin: &Path,
    api: Option<TapUrl>,
    request: &SampleRequestConfig,
    key: &str,
    timeout: Duration,
) -> SampleResult {
    let (events, error) = match run_tap(vector_bin, api, key, request.limit.max(1), timeout).await {
        Ok(events) => (Some(events), None),
        Err(e) => (None, Some(e)),
    };
    SampleResult {
        request_id: request.request_id.clone(),
        component_key: key.to_owned(),
        schema: events.as_ref().map(|e| infer_schema(e)),
        events,
        error,
    }
}

/// A running `vector tap --outputs-of <key> --format json`: its stdout lines (one event each)
/// and its stderr, kept for error messages. Live taps use it too.
pub struct TapProcess {
    child: tokio::process::Child,
    /// The event lines.
    pub lines: Lines<BufReader<ChildStdout>>,
    stderr: JoinHandle<String>,
}

impl TapProcess {
    /// Starts `vector tap` on the outputs of `key` of the Vector whose API is at `api`, with
    /// `--limit` when given.
    pub fn spawn(
        vector_bin: &Path,
        api: Option<TapUrl>,
        key: &str,
        limit: Option<u32>,
    ) -> Result<Self, String> {
        // Without the pipeline's own API, `vector tap` would try Vector's default port, which
        // may be another pipeline's Vector.
        let api = api.ok_or(
            "this pipeline's Vector has no API to tap (is it running, with `api` left enabled?)",
        )?;
        let mut cmd = tokio::process::Command::new(vector_bin);
        cmd.args(["tap", "--outputs-of", key, "--url", &api.to_string()]);
        if let Some(limit) = limit {
            cmd.args(["--limit", &limit.to_string()]);
        }
        let mut child = cmd
            .args(["--format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {} tap: {e}", vector_bin.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let stderr = tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut buf).await;
            String::from_utf8_lossy(&buf).into_owned()
        });
        Ok(Self {
            child,
            lines: BufReader::new(stdout).lines(),
            stderr,
        })
    }

    /// Kills it (if still running); returns its exit status and the end of its stderr.
    pub async fn finish(mut self) -> (Option<ExitStatus>, String) {
        let _ = self.child.start_kill();
        let status = self.child.wait().await.ok();
        let stderr = tokio::time::timeout(Duration::from_secs(1), self.stderr)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let tail: Vec<char> = stderr.trim().chars().rev().take(500).collect();
        (status, tail.into_iter().rev().collect())
    }
}

async fn run_tap(
    vector_bin: &Path,
    api: Option<TapUrl>,
    key: &str,
    limit: u32,
    timeout: Duration,
) -> Result<Vec<Value>, String> {
    let mut tap = TapProcess::spawn(vector_bin, api, key, Some(limit))?;
    let mut events = Vec::new();
    let read = tokio::time::timeout(timeout, async {
        while events.len() < limit as usize {
            match tap.lines.next_line().await {
                Ok(Some(line)) => {
                    if let Ok(v) = serde_json::from_str::<Value>(line.trim()) {
                        events.push(v);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
    })
    .await;
    let timed_out = read.is_err();
    let (status, stderr) = tap.finish().await;
    if !events.is_empty() {
        return Ok(events);
    }
    if timed_out {
        return Err(format!(
            "vector tap captured no events within {}s",
            timeout.as_secs_f32()
        ));
    }
    match status {
        Some(s) if !s.success() => Err(format!("vector tap failed ({s}): {stderr}")),
        _ => Ok(events),
    }
}

/// Field paths, types and sample values of the first event.
pub fn infer_schema(events: &[Value]) -> Vec<SchemaField> {
    let mut fields = Vec::new();
    if let Some(first) = events.first() {
        walk("", first, &mut fields);
    }
    fields
}

fn walk(prefix: &str, value: &Value, out: &mut Vec<SchemaField>) {
    if let Value::Object(map) = value {
        for (k, v) in map {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            walk(&path, v, out);
        }
        return;
    }
    if prefix.is_empty() {
        return;
    }
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    out.push(SchemaField {
        path: prefix.to_owned(),
        kind: kind.into(),
        sample: value.clone(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schema_of_nested_events() {
        let schema = infer_schema(&[
            json!({"message":"hi","host":{"name":"a","port":1},"tags":["x"],"ok":true}),
        ]);
        let paths: Vec<(&str, &str)> = schema
            .iter()
            .map(|f| (f.path.as_str(), f.kind.as_str()))
            .collect();
        assert!(paths.contains(&("message", "string")));
        assert!(paths.contains(&("host.name", "string")));
        assert!(paths.contains(&("host.port", "number")));
        assert!(paths.contains(&("tags", "array")));
        assert!(paths.contains(&("ok", "boolean")));
        assert!(infer_schema(&[]).is_empty());
    }

    #[tokio::test]
    async fn a_missing_binary_is_a_per_component_error() {
        let request = SampleRequestConfig {
            request_id: "clxreq".into(),
            pipeline_id: "clxpipe".into(),
            component_keys: vec!["a".into(), "b".into()],
            limit: 3,
        };
        let api = TapUrl::new("127.0.0.1:9".parse().unwrap(), None);
        let results = tap_all(
            Path::new("/nonexistent/vector"),
            Some(api),
            &request,
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(results.len(), 2);
        assert!(results
            .iter()
            .all(|r| r.error.as_deref().is_some_and(|e| e.contains("cannot run"))));
    }

    #[tokio::test]
    async fn without_the_pipelines_own_api_nothing_is_tapped() {
        let request = SampleRequestConfig {
            request_id: "clxreq".into(),
            pipeline_id: "clxpipe".into(),
            component_keys: vec!["a".into()],
            limit: 3,
        };
        // Not even a binary that exists is started: the default port may be another Vector's.
        let results = tap_all(
            Path::new("/bin/true"),
            None,
            &request,
            Duration::from_secs(1),
        )
        .await;
        assert!(results[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("no API to tap")));
    }
}
