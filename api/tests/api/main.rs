//! The api's integration tests, one binary: the real api in-process (`flotilla_testkit::api`) on a
//! fresh Postgres database and the local Redis.

mod admin_reach;
mod agent_api;
mod audit;
mod cancellation;
mod common;
mod current_agents;
mod fleet_paging;
mod notifications;
mod operator_api;
mod operator_security;
mod outages;
mod page;
mod page_headers;
mod pipeline_editing;
mod samples;
mod security;
mod telemetry;
