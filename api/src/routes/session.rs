//! Operator sessions for the fleet page: sign-in with an operator token (the browser keeps
//! only a random session id in an HttpOnly cookie), sign-out, who-am-I, and the live fleet
//! event stream the page listens to.

use crate::auth::{session, Operator};
use crate::error::{ApiError, Result};
use crate::extract::ClientIp;
use crate::fleet_events::RESYNC;
use crate::routes::page::sign_in_page;
use crate::same_origin;
use crate::state::AppState;
use axum::extract::rejection::FormRejection;
use axum::extract::{Request, State};
use axum::http::header::{LOCATION, RETRY_AFTER, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
#[allow(unused_imports)]
use flotilla_shared::protocol::ErrorBody;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;
use std::time::Duration;

/// Session routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/session", post(sign_in))
        .route("/session/logout", post(sign_out))
        .route("/api/v1/me", get(me))
        .route("/api/v1/fleet/events", get(events))
}

/// The sign-in form.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct SignIn {
    /// An operator token.
    token: String,
}

fn see_other_home() -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut()
        .insert(LOCATION, HeaderValue::from_static("/"));
    r
}

/// Signs in with an operator token from the sign-in form: the token is checked like a bearer
/// token (failure budget, bcrypt cap) and a server-side session is opened. Only a form posted
/// from this origin is accepted, so no other site can sign a browser into its own session.
#[utoipa::path(
    post,
    path = "/session",
    tag = "session",
    request_body(content = SignIn, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "signed in: the session cookie is set; see `/`"),
        (status = 400, description = "no token in the form (the sign-in page)", content_type = "text/html", body = String),
        (status = 401, description = "the token was not accepted (the sign-in page)", content_type = "text/html", body = String),
        (status = 403, description = "not posted from this origin (the sign-in page)", content_type = "text/html", body = String),
        (status = 429, description = "this address is over its failure budget (the sign-in page)", content_type = "text/html", body = String),
        (status = 503, description = "bcrypt busy or database unavailable", body = ErrorBody),
    )
)]
pub async fn sign_in(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    form: std::result::Result<Form<SignIn>, FormRejection>,
) -> Response {
    if !same_origin::is_same_origin(&headers) {
        return sign_in_page(
            StatusCode::FORBIDDEN,
            "Sign in from this page: the request came from another site.",
        );
    }
    let Ok(Form(form)) = form else {
        return sign_in_page(StatusCode::BAD_REQUEST, "Enter an operator token.");
    };
    let guesses = &state.limits.operator_guesses;
    let token = form.token.trim();
    let token_id = match state.operator_auth.authenticate(token, ip, guesses).await {
        Ok((token_id, _)) => token_id,
        Err(ApiError::Unauthorized(_)) => {
            return sign_in_page(StatusCode::UNAUTHORIZED, "That token was not accepted.")
        }
        Err(ApiError::RateLimited(secs)) => {
            let mut r = sign_in_page(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many failed sign-ins from your address; try again within a minute.",
            );
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
            return r;
        }
        Err(e) => return e.into_response(),
    };
    let ttl = Duration::from_secs(state.settings.api.session_ttl_secs);
    match session::open(&state.pool, token_id, ttl).await {
        Ok(id) => {
            let mut r = see_other_home();
            r.headers_mut()
                .insert(SET_COOKIE, session::set_cookie(&id, ttl, &headers));
            r
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Ends the session on the server (its live streams end within a second) and clears the
/// cookie.
#[utoipa::path(
    post,
    path = "/session/logout",
    tag = "session",
    responses(
        (status = 303, description = "signed out: the session ended and the cookie is cleared; see `/`"),
        (status = 403, description = "not posted from this origin", body = ErrorBody),
        (status = 503, description = "database unavailable", body = ErrorBody),
    )
)]
pub async fn sign_out(State(state): State<AppState>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    if !same_origin::is_same_origin(&parts.headers) {
        return ApiError::CrossSite("sign out from this page").into_response();
    }
    if let Some(key) = session::from_cookie(&parts.headers) {
        match session::end(&state.pool, key).await {
            Ok(true) => state.fleet_events.credentials_revoked(&state.redis).await,
            Ok(false) => {}
            Err(e) => return ApiError::from(e).into_response(),
        }
    }
    let mut r = see_other_home();
    r.headers_mut()
        .insert(SET_COOKIE, session::clear_cookie(&parts.headers));
    r
}

#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "operator",
    responses((status = 200, body = Object), (status = 401, description = "not signed in", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody), (status = 503, description = "database unavailable", body = ErrorBody)),
    security(("operator_token" = []), ("session_cookie" = []))
)]
pub async fn me(op: Operator) -> axum::Json<serde_json::Value> {
    axum::Json(json!({ "tokenId": op.token_id, "role": op.role }))
}

/// The fleet page's live events, while the viewer's token or session stands.
async fn events(
    State(state): State<AppState>,
    op: Operator,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let rx = state.fleet_events.subscribe();
    let shutdown = state.shutdown.clone();
    let lapsed = Box::pin(crate::revocation::lapsed(state.clone(), op));
    let stream = futures_util::stream::unfold(
        (rx, shutdown, lapsed, true),
        |(mut rx, shutdown, mut lapsed, first)| async move {
            // A fresh stream starts by telling the page to load everything.
            let payload = if first {
                RESYNC.to_owned()
            } else {
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = &mut lapsed => return None,
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
                (rx, shutdown, lapsed, false),
            ))
        },
    );
    Ok(Sse::new(stream).keep_alive(crate::live::keep_alive(&state)))
}
