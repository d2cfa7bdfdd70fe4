//! What the api's responses tell browsers: the pages' content security policy allows no inline
//! script or style, the script and styles they load are served with their types, and every
//! response, JSON included, forbids content sniffing.

use crate::common;

use flotilla_testkit::api::{ApiHandle, ADMIN_TOKEN};
use reqwest::StatusCode;

async fn get(api: &ApiHandle, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(api.url(path));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    flotilla_testkit::within(path, req.send()).await.unwrap()
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("{} has {name}", resp.url()))
        .to_str()
        .unwrap()
}

/// The `/assets/…` paths a page's HTML refers to.
fn assets_of(html: &str) -> Vec<String> {
    html.split("\"/assets/")
        .skip(1)
        .map(|rest| format!("/assets/{}", &rest[..rest.find('"').unwrap()]))
        .collect()
}

/// Asserts the HTML holds nothing a strict policy would block: no inline `<script>` or
/// `<style>`, no `style` attribute, no `on…=` event handler attribute.
fn assert_nothing_inline(html: &str) {
    let lower = html.to_ascii_lowercase();
    assert!(!lower.contains("<style"), "an inline <style>");
    for script in lower.split("<script").skip(1) {
        let tag = &script[..script.find('>').unwrap()];
        assert!(tag.contains(" src="), "an inline <script>: <script{tag}>");
        assert!(
            script[tag.len() + 1..].starts_with("</script>"),
            "a script with a src and a body"
        );
    }
    assert!(!lower.contains(" style="), "a style attribute");
    for (i, _) in lower.match_indices(" on") {
        let name: String = lower[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        assert!(
            !lower[i + 1 + name.len()..].starts_with('='),
            "an event handler attribute {name}="
        );
    }
}

#[tokio::test]
async fn the_pages_policy_allows_no_inline_script_or_style_signed_in_or_out() {
    let (_db, api) = common::start().await;
    // The page handler takes the operator from a bearer token as from the session cookie.
    for (who, token, marker) in [
        ("signed out", None, r#"action="/session""#),
        ("signed in", Some(ADMIN_TOKEN), r#"data-role="admin""#),
    ] {
        let page = get(&api, "/", token).await;
        assert_eq!(page.status(), StatusCode::OK, "{who}");
        let csp = header(&page, "content-security-policy").to_owned();
        assert!(!csp.contains("unsafe-inline"), "{who}: {csp}");
        let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'self'",
        ] {
            assert!(
                directives.contains(&directive),
                "{who}: {directive} in {csp}"
            );
        }
        assert_eq!(header(&page, "x-content-type-options"), "nosniff", "{who}");
        let html = page.text().await.unwrap();
        assert!(html.contains(marker), "{who}: {html}");
        assert_nothing_inline(&html);
        let assets = assets_of(&html);
        assert!(!assets.is_empty(), "{who}: the page loads its styles");
        for path in assets {
            let asset = get(&api, &path, None).await;
            assert_eq!(asset.status(), StatusCode::OK, "{who}: {path}");
        }
    }
}

/// Every file in `api/assets/`, read from the source tree: name and contents.
fn asset_files() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn assets_are_served_with_their_types_and_revalidated() {
    let (_db, api) = common::start().await;
    let files = asset_files();
    assert!(
        files.len() > 3,
        "the console's modules and styles: {files:?}"
    );
    for (name, body) in files {
        let path = format!("/assets/{name}");
        let content_type = if name.ends_with(".js") {
            "text/javascript; charset=utf-8"
        } else {
            "text/css; charset=utf-8"
        };
        // Public: the sign-in page needs its styles before anyone signs in.
        let resp = get(&api, &path, None).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path} is served");
        assert_eq!(header(&resp, "content-type"), content_type, "{path}");
        assert_eq!(header(&resp, "cache-control"), "no-cache", "{path}");
        assert_eq!(header(&resp, "x-content-type-options"), "nosniff", "{path}");
        assert_eq!(resp.text().await.unwrap(), body, "{path}");
    }
    for missing in ["/assets/nothing.js", "/assets/..%2Fsrc%2Fmain.rs"] {
        let resp = get(&api, missing, None).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{missing}");
    }
}

#[tokio::test]
async fn the_console_scripts_send_every_write_as_same_origin_json() {
    let (_db, api) = common::start().await;
    let scripts: Vec<(String, String)> = asset_files()
        .into_iter()
        .filter(|(name, _)| name.ends_with(".js"))
        .collect();
    // One fetch, in the one request helper every action goes through.
    let fetches: Vec<&str> = scripts
        .iter()
        .filter(|(_, body)| body.contains("fetch("))
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(fetches, ["lib.js"], "only the request helper fetches");
    let lib = get(&api, "/assets/lib.js", None)
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(lib.matches("fetch(").count(), 1, "a single fetch call");
    let helper = &lib[lib.find("export async function api(").expect("the helper")..];
    let helper = &helper[..helper.find("\n}\n").unwrap()];
    for part in [
        r#"credentials: "same-origin""#,
        r#"write ? { "Content-Type": "application/json" }"#,
        "write ? JSON.stringify(body ?? {})",
    ] {
        assert!(helper.contains(part), "{part} in {helper}");
    }
    for (name, body) in &scripts {
        // Nothing the strict policy would block, and no markup built from strings.
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            ".style.",
            "setAttribute(\"style\"",
            "eval(",
            "window.confirm",
            "alert(",
        ] {
            assert!(!body.contains(banned), "{name} uses {banned}");
        }
        assert!(!body.contains("{{"), "{name} is not templated");
    }
    // The role reaches the scripts through a data attribute, not templated script text.
    assert!(lib.contains("document.body.dataset.role"));
    // The push badge's tooltip names the transport.
    let fleet = &scripts.iter().find(|(n, _)| n == "fleet.js").unwrap().1;
    assert!(fleet.contains(r#"n.pushTransport === "sse" ? "Server-Sent Events" : "WebSocket""#));
}

#[tokio::test]
async fn json_answers_forbid_content_sniffing() {
    let (_db, api) = common::start().await;
    for (path, token, status) in [
        ("/healthz", None, StatusCode::OK),
        ("/api/v1/environments", Some(ADMIN_TOKEN), StatusCode::OK),
        ("/api/v1/no-such-route", None, StatusCode::NOT_FOUND),
        ("/api/v1/me", None, StatusCode::UNAUTHORIZED),
        (
            "/api/v1/fleet",
            Some("vf_op_wrong"),
            StatusCode::UNAUTHORIZED,
        ),
    ] {
        let resp = get(&api, path, token).await;
        assert_eq!(resp.status(), status, "{path}");
        assert_eq!(header(&resp, "x-content-type-options"), "nosniff", "{path}");
    }
    // The uniform error for a malformed body carries it too.
    let resp = reqwest::Client::new()
        .post(api.url("/api/v1/environments"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(header(&resp, "x-content-type-options"), "nosniff");
}
