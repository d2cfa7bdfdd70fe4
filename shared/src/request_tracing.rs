//! Request ids and one span per HTTP request, layered onto each service's router.
//!
//! A request keeps the `x-request-id` its client sent, or gets a random one; the response
//! carries it back. The span names the method, the route template (never the raw path, which
//! may hold ids) and the request id; headers, the Authorization header included, stay out.

use axum::extract::MatchedPath;
use axum::http::{HeaderName, Method, Request};
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

/// The request id header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The route label of a request no route matched.
pub const UNMATCHED: &str = "unmatched";

/// The route template a request matched, or [`UNMATCHED`].
pub fn route<B>(request: &Request<B>) -> &str {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
}

/// The method as a bounded label: the standard ones by name, anything else as `other`.
pub fn method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Adds request ids and the request span to every route of `router`, fallback included.
/// Call it after the routes are added (layers only wrap routes already there).
pub fn layer<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    // Later layers are outer: the id is set first, then the span made, then the id copied to
    // the response.
    router
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(span::<axum::body::Body>)
                // The handlers log a failure's cause; a second, causeless line would be noise.
                .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

fn span<B>(request: &Request<B>) -> tracing::Span {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        method = method(request.method()),
        route = route(request),
        request_id = id,
    )
}
