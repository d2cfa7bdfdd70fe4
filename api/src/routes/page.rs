//! The fleet page: sign-in with an operator token (kept in an HttpOnly cookie, never in the
//! URL), the page itself, who-am-I, and the live event stream it listens to.

use crate::error::{ApiError, Result};
use crate::extract::{Operator, SESSION_COOKIE};
use crate::fleet_events::RESYNC;
use crate::state::AppState;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
#[allow(unused_imports)]
use flotilla_shared::protocol::ErrorBody;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;
use std::time::Duration;

/// Page routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/session", post(sign_in))
        .route("/session/logout", post(sign_out))
        .route("/api/v1/me", get(me))
        .route("/api/v1/fleet/events", get(events))
}

const FLEET_PAGE: &str = include_str!("fleet.html");
const SIGN_IN_PAGE: &str = include_str!("sign_in.html");
/// Scripts and styles are inline in our own pages; nothing else may load.
const CSP: &str =
    "default-src 'self'; script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline'; \
                   img-src 'self' data:; frame-ancestors 'none'; form-action 'self'";

fn page(status: StatusCode, html: String) -> Response {
    let mut r = (status, Html(html)).into_response();
    r.headers_mut()
        .insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn sign_in_page(status: StatusCode, message: &str) -> Response {
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

#[derive(Deserialize)]
struct SignIn {
    token: String,
}

fn cookie(value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    ))
    .expect("cookie is ASCII")
}

fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<SignIn>,
) -> Response {
    let token = form.token.trim();
    match state.operator_auth.authenticate(token).await {
        Ok(_) => {
            let value = hex::encode(token.as_bytes());
            let mut r = StatusCode::SEE_OTHER.into_response();
            r.headers_mut()
                .insert(LOCATION, HeaderValue::from_static("/"));
            r.headers_mut()
                .insert(SET_COOKIE, cookie(&value, 12 * 3600, is_https(&headers)));
            r
        }
        Err(ApiError::Unauthorized(_)) => {
            sign_in_page(StatusCode::UNAUTHORIZED, "That token was not accepted.")
        }
        Err(e) => e.into_response(),
    }
}

async fn sign_out(headers: HeaderMap) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut()
        .insert(LOCATION, HeaderValue::from_static("/"));
    r.headers_mut()
        .insert(SET_COOKIE, cookie("", 0, is_https(&headers)));
    r
}

#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "operator",
    responses((status = 200, body = Object), (status = 401, description = "not signed in", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody), (status = 503, description = "database unavailable", body = ErrorBody)),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn me(op: Operator) -> axum::Json<serde_json::Value> {
    axum::Json(json!({ "tokenId": op.token_id, "role": op.role }))
}

async fn events(
    State(state): State<AppState>,
    _op: Operator,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let rx = state.fleet_events.subscribe();
    let shutdown = state.shutdown.clone();
    let stream = futures_util::stream::unfold(
        (rx, shutdown, true),
        |(mut rx, shutdown, first)| async move {
            // A fresh stream starts by telling the page to load everything.
            let payload = if first {
                RESYNC.to_owned()
            } else {
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    r = rx.recv() => match r {
                        Ok(p) => p.to_string(),
                        // Missed events: the page reloads the whole fleet.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => RESYNC.to_owned(),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    },
                }
            };
            Some((
                Ok(Event::default().data(payload).retry(Duration::from_secs(1))),
                (rx, shutdown, false),
            ))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
