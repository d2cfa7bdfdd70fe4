//! A minimal W3C WebDriver client over HTTP, and chromedriver with headless Chromium: what the
//! browser test and the page benchmark need.

use anyhow::Context;
use base64::Engine;
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session driven through chromedriver.
pub struct Session {
    http: reqwest::Client,
    base: String,
}

/// An element of the current page.
pub struct Element<'a> {
    session: &'a Session,
    id: String,
}

impl Session {
    /// Opens a session on the WebDriver at `webdriver` with `capabilities`.
    pub async fn new(webdriver: &str, capabilities: Value) -> anyhow::Result<Self> {
        let http = reqwest::Client::new();
        let created: Value = http
            .post(format!("{webdriver}/session"))
            .json(&json!({ "capabilities": { "alwaysMatch": capabilities } }))
            .send()
            .await?
            .json()
            .await?;
        let id = created["value"]["sessionId"]
            .as_str()
            .with_context(|| format!("no session: {created}"))?;
        Ok(Self {
            http,
            base: format!("{webdriver}/session/{id}"),
        })
    }

    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        // WebDriver wants a JSON body on every POST, even an empty one.
        if let Some(b) = body {
            req = req.json(&b);
        }
        let reply: Value = req.send().await?.json().await?;
        if reply["value"]["error"].is_string() {
            anyhow::bail!("webdriver {path}: {}", reply["value"]);
        }
        Ok(reply["value"].clone())
    }

    /// Navigates to `url`.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .map(drop)
    }

    /// The current URL.
    pub async fn url(&self) -> anyhow::Result<String> {
        Ok(self
            .command(reqwest::Method::GET, "/url", None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Elements matching a CSS selector (possibly none).
    pub async fn find_all(&self, css: &str) -> anyhow::Result<Vec<Element<'_>>> {
        let found = self
            .command(
                reqwest::Method::POST,
                "/elements",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await?;
        Ok(found
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str())
                    .map(|id| Element {
                        session: self,
                        id: id.to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The first element matching a CSS selector.
    pub async fn find(&self, css: &str) -> anyhow::Result<Element<'_>> {
        self.find_all(css)
            .await?
            .into_iter()
            .next()
            .with_context(|| format!("no element matches {css}"))
    }

    /// The visible text of the first element matching `css`.
    pub async fn text_of(&self, css: &str) -> anyhow::Result<String> {
        self.find(css).await?.text().await
    }

    /// A PNG screenshot of the viewport.
    pub async fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        let data = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await?;
        Ok(base64::engine::general_purpose::STANDARD.decode(data.as_str().unwrap_or_default())?)
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns what
    /// it returns.
    pub async fn execute(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Accepts the open `confirm()` or `alert()`.
    pub async fn accept_alert(&self) -> anyhow::Result<()> {
        self.command(reqwest::Method::POST, "/alert/accept", Some(json!({})))
            .await
            .map(drop)
    }

    /// The text of the open `alert()` or `confirm()`, if one is open.
    pub async fn alert_text(&self) -> Option<String> {
        let text = self
            .command(reqwest::Method::GET, "/alert/text", None)
            .await
            .ok()?;
        text.as_str().map(str::to_owned)
    }

    /// The browser console's messages since the last call (Chromium's log, which needs the
    /// `goog:loggingPrefs` capability `{"browser": "ALL"}`): `{level, message, source}` each.
    pub async fn browser_log(&self) -> anyhow::Result<Vec<Value>> {
        let log = self
            .command(
                reqwest::Method::POST,
                "/se/log",
                Some(json!({ "type": "browser" })),
            )
            .await?;
        Ok(log.as_array().cloned().unwrap_or_default())
    }

    /// Ends the session (closes the browser).
    pub async fn close(self) -> anyhow::Result<()> {
        self.command(reqwest::Method::DELETE, "", None)
            .await
            .map(drop)
    }
}

impl Element<'_> {
    /// Types `text` into it.
    pub async fn send_keys(&self, text: &str) -> anyhow::Result<()> {
        let path = format!("/element/{}/value", self.id);
        self.session
            .command(reqwest::Method::POST, &path, Some(json!({ "text": text })))
            .await
            .map(drop)
    }

    /// Empties it (an input or textarea).
    pub async fn clear(&self) -> anyhow::Result<()> {
        let path = format!("/element/{}/clear", self.id);
        self.session
            .command(reqwest::Method::POST, &path, Some(json!({})))
            .await
            .map(drop)
    }

    /// Clicks it.
    pub async fn click(&self) -> anyhow::Result<()> {
        let path = format!("/element/{}/click", self.id);
        self.session
            .command(reqwest::Method::POST, &path, Some(json!({})))
            .await
            .map(drop)
    }

    /// Its rendered text.
    pub async fn text(&self) -> anyhow::Result<String> {
        let path = format!("/element/{}/text", self.id);
        Ok(self
            .session
            .command(reqwest::Method::GET, &path, None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// An attribute's value.
    pub async fn attr(&self, name: &str) -> anyhow::Result<Option<String>> {
        let path = format!("/element/{}/attribute/{name}", self.id);
        Ok(self
            .session
            .command(reqwest::Method::GET, &path, None)
            .await?
            .as_str()
            .map(str::to_owned))
    }
}

/// A chromedriver process on a free loopback port, killed on drop.
pub struct Chromedriver {
    child: std::process::Child,
    /// Its WebDriver URL.
    pub url: String,
}

impl Chromedriver {
    /// Starts `chromedriver` (Debian's `chromium-driver`) and waits until it listens.
    pub async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("chromedriver is installed (apt-get install chromium chromium-driver)")?;
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not listen within 10 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(driver)
    }

    /// Its process id (Chromium runs as its descendants).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Capabilities for headless Chromium on a machine with no network beyond loopback: no
/// background traffic, no sandbox (runs as root in CI), the browser log kept.
pub fn headless_chromium() -> Value {
    json!({"goog:chromeOptions": {
        "binary": "/usr/bin/chromium",
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,720"],
    }, "goog:loggingPrefs": {"browser": "ALL"}, "unhandledPromptBehavior": "ignore"})
}
