//! The operator console in a browser, as a person uses it: open a view, type, click, answer the
//! confirmation dialog, read the toasts. Every wait is bounded, and a failure toast the page
//! shows meanwhile fails the wait with the page's own words.

use crate::webdriver::Session;
use flotilla_testkit::eventually;
use serde_json::json;
use std::time::Duration;

/// How long one step of the page may take (a live update, a server answer, a navigation).
pub use flotilla_testkit::STEP;

/// The console of one browser session.
pub struct Console<'a> {
    /// The browser session.
    pub client: &'a Session,
    /// The console's origin, e.g. `http://127.0.0.1:8000`.
    pub base: String,
}

impl<'a> Console<'a> {
    /// A console at `base` in `client`.
    pub fn new(client: &'a Session, base: &str) -> Self {
        Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// Goes to a view (`#/pipelines`, `#/node/<id>`…) and waits until it has drawn.
    pub async fn open(&self, hash: &str) {
        // Marked busy first, so the wait below sees the new view draw, not the old one.
        self.client
            .execute(
                "document.getElementById('view').setAttribute('aria-busy', 'true');
                 if (location.hash === arguments[0]) dispatchEvent(new HashChangeEvent('hashchange'));
                 else location.hash = arguments[0];",
                json!([hash]),
            )
            .await
            .expect("navigation");
        self.wait_for(r#"main[aria-busy="false"]"#).await;
    }

    /// The text of the first element matching `css`, if there is one.
    pub async fn text(&self, css: &str) -> Option<String> {
        let v = self
            .client
            .execute(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null",
                json!([css]),
            )
            .await
            .ok()?;
        v.as_str().map(str::to_owned)
    }

    /// The texts of every element matching `css`.
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let v = self
            .client
            .execute(
                "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)",
                json!([css]),
            )
            .await
            .unwrap_or_default();
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Panics with the page's failure toasts, if it shows any.
    pub async fn no_failures(&self) {
        let failures = self.texts("#toasts .toast.error").await;
        assert!(failures.is_empty(), "the page reported: {failures:?}");
    }

    /// Waits until an element matches `css`.
    pub async fn wait_for(&self, css: &str) {
        eventually(css, STEP, || async {
            self.no_failures().await;
            (!self.client.find_all(css).await.ok()?.is_empty()).then_some(())
        })
        .await
    }

    /// Waits until the first element matching `css` contains `needle`; returns its text.
    pub async fn wait_text(&self, css: &str, needle: &str) -> String {
        eventually(&format!("{css} shows {needle:?}"), STEP, || async {
            self.no_failures().await;
            self.text(css).await.filter(|t| t.contains(needle))
        })
        .await
    }

    /// Clicks the first element matching `css` once it is there.
    pub async fn click(&self, css: &str) {
        eventually(&format!("click {css}"), STEP, || async {
            self.no_failures().await;
            self.client.find(css).await.ok()?.click().await.ok()
        })
        .await
    }

    /// Empties the field matching `css` and types `text` into it, key by key.
    pub async fn type_into(&self, css: &str, text: &str) {
        let field = self.client.find(css).await.expect(css);
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("typing");
    }

    /// Waits for the confirmation dialog, checks it says `needle`, and confirms.
    pub async fn confirm(&self, needle: &str) -> String {
        self.wait_for("dialog#confirm[open]").await;
        let title = self.text("#confirm-title").await.unwrap_or_default();
        let text = self.text("#confirm-text").await.unwrap_or_default();
        let said = format!("{title} — {text}");
        assert!(said.contains(needle), "the confirmation says {said:?}");
        self.click("#confirm-ok").await;
        said
    }

    /// Whether the confirmation dialog is open.
    pub async fn dialog_open(&self) -> bool {
        self.client
            .execute("return document.getElementById('confirm').open", json!([]))
            .await
            .ok()
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    }

    /// Waits for the confirmation dialog, cancels it and waits until it has closed.
    pub async fn cancel(&self) {
        self.wait_for("dialog#confirm[open]").await;
        self.click("#confirm-cancel").await;
        eventually("the dialog closed", STEP, || async {
            (!self.dialog_open().await).then_some(())
        })
        .await
    }

    /// Waits for a success toast containing `needle`; returns its text. A timeout names the
    /// toasts that were shown instead.
    pub async fn toast(&self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            self.no_failures().await;
            let shown = self.texts("#toasts .toast").await;
            if let Some(t) = shown.iter().find(|t| t.contains(needle)) {
                return t.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no toast saying {needle:?} within {STEP:?}; shown: {shown:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
