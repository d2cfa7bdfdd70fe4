//! The operator console and its sign-in page, served with a strict content security policy, and
//! the scripts (ES modules) and styles they load from `/assets/` (the policy allows no inline
//! script or style).

use crate::auth::Operator;
use crate::state::AppState;
use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// Page and asset routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{name}", get(asset))
}

const FLEET_PAGE: &str = include_str!("fleet.html");
const SIGN_IN_PAGE: &str = include_str!("sign_in.html");
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file under `/assets/`, embedded at build time: name, body, content type. The console's
/// script is split into ES modules by view; `app.js` imports the rest.
pub const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", include_str!("../../assets/app.js"), JAVASCRIPT),
    ("lib.js", include_str!("../../assets/lib.js"), JAVASCRIPT),
    (
        "fleet.js",
        include_str!("../../assets/fleet.js"),
        JAVASCRIPT,
    ),
    ("node.js", include_str!("../../assets/node.js"), JAVASCRIPT),
    (
        "pipelines.js",
        include_str!("../../assets/pipelines.js"),
        JAVASCRIPT,
    ),
    (
        "editor.js",
        include_str!("../../assets/editor.js"),
        JAVASCRIPT,
    ),
    ("yaml.js", include_str!("../../assets/yaml.js"), JAVASCRIPT),
    (
        "activity.js",
        include_str!("../../assets/activity.js"),
        JAVASCRIPT,
    ),
    (
        "admin.js",
        include_str!("../../assets/admin.js"),
        JAVASCRIPT,
    ),
    (
        "start.js",
        include_str!("../../assets/start.js"),
        JAVASCRIPT,
    ),
    ("fleet.css", include_str!("../../assets/fleet.css"), CSS),
    ("sign-in.css", include_str!("../../assets/sign-in.css"), CSS),
];

/// Scripts and styles come only from our own `/assets/`; nothing inline runs or applies, and
/// nothing else may load, frame the page or receive its forms.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                       img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'; \
                       form-action 'self'";

fn page(status: StatusCode, html: String) -> Response {
    let mut r = (status, Html(html)).into_response();
    r.headers_mut()
        .insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// An embedded asset, public (the sign-in page needs its styles). Its URL carries no version,
/// so browsers revalidate it on every use.
async fn asset(Path(name): Path<String>) -> Response {
    let Some(&(_, body, content_type)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return crate::error::ApiError::NotFound("asset").into_response();
    };
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// The sign-in page with a message (empty for none).
pub fn sign_in_page(status: StatusCode, message: &str) -> Response {
    page(status, SIGN_IN_PAGE.replace("{{message}}", message))
}

async fn index(operator: Option<Operator>) -> Response {
    match operator {
        Some(op) => page(
            StatusCode::OK,
            FLEET_PAGE.replace("{{role}}", op.role.as_str()),
        ),
        None => sign_in_page(StatusCode::OK, ""),
    }
}
