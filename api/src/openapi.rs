//! The OpenAPI 3 document of the agent and operator APIs, generated from the handlers'
//! annotations and served at `/api/openapi.json`.

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::*;
use crate::state::AppState;
use flotilla_shared::protocol::ErrorBody;

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Flotilla", description = "Agent (VectorFlow protocol v1) and operator APIs."),
    paths(
        enroll::enroll, agent_config::config, heartbeat::heartbeat, agent_samples::submit,
        environments::create, environments::list, environments::rotate,
        pipelines::create, pipelines::list, pipelines::show, pipelines::update, pipelines::remove,
        pipelines::deploy, pipelines::undeploy, pipelines::rollback, pipelines::validate,
        pipeline_versions::list, pipeline_versions::show, pipeline_versions::diff,
        environments::selector_preview,
        fleet::list::list, fleet::list::summary, fleet::bulk::bulk, fleet::node::show,
        fleet::node::labels, fleet::node::maintenance, fleet::node::action, fleet::node::revoke,
        samples::request, samples::show, settings::show, settings::update,
        tokens::create, tokens::list, tokens::revoke, health::healthz, health::readyz, metrics::metrics, session::me,
        session::sign_in, session::sign_out,
        logs::ship, logs::follow, taps::start, taps::stop, taps::events, taps::agent_events,
        audit::list,
    ),
    modifiers(&Security)
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer =
            || SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        components.add_security_scheme("node_token", bearer());
        components.add_security_scheme("operator_token", bearer());
        components.add_security_scheme(
            "session_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                crate::auth::session::COOKIE,
            ))),
        );
    }
}

/// `GET /api/openapi.json`.
pub fn router() -> Router<AppState> {
    Router::new().route(
        "/api/openapi.json",
        get(|| async { Json(ApiDoc::openapi()) }),
    )
}

/// Errors every operator route can answer.
#[derive(utoipa::IntoResponses)]
pub enum OperatorErrors {
    /// missing or invalid token
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// role too low
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// rate limited
    #[response(status = 429)]
    RateLimited(ErrorBody),
    /// database unavailable
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Errors every agent route behind a node token can answer.
#[derive(utoipa::IntoResponses)]
pub enum NodeErrors {
    /// missing or invalid node token
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// rate limited
    #[response(status = 429)]
    RateLimited(ErrorBody),
    /// database unavailable or busy
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Errors of a route that reads a JSON body.
#[derive(utoipa::IntoResponses)]
pub enum BodyErrors {
    /// malformed body
    #[response(status = 400)]
    Malformed(ErrorBody),
    /// body too large
    #[response(status = 413)]
    TooLarge(ErrorBody),
}

/// 404.
#[derive(utoipa::IntoResponses)]
pub enum NotFound {
    /// not found
    #[response(status = 404)]
    NotFound(ErrorBody),
}

/// 422.
#[derive(utoipa::IntoResponses)]
pub enum Invalid {
    /// invalid value
    #[response(status = 422)]
    Invalid(ErrorBody),
}

/// 409.
#[derive(utoipa::IntoResponses)]
pub enum Conflict {
    /// conflict
    #[response(status = 409)]
    Conflict(ErrorBody),
}
