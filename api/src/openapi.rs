//! The OpenAPI 3 document of the agent and operator APIs, generated from the handlers'
//! annotations and served at `/api/openapi.json`.

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::*;
use crate::state::AppState;

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Flotilla", description = "Agent (VectorFlow protocol v1) and operator APIs."),
    paths(
        enroll::enroll, agent_config::config, heartbeat::heartbeat, agent_samples::submit,
        environments::create, environments::list, environments::rotate,
        pipelines::create, pipelines::list, pipelines::show, pipelines::update, pipelines::remove,
        pipelines::deploy, pipelines::undeploy, pipelines::rollback,
        fleet::list, fleet::show, fleet::labels, fleet::maintenance, fleet::action, fleet::revoke,
        samples::request, samples::show, settings::show, settings::update,
        tokens::create, tokens::list, tokens::revoke, health::healthz, health::readyz, page::me,
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
                crate::extract::SESSION_COOKIE,
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
