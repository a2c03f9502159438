//! The admin and inspection API under `/admin/`: faults set and cleared at run time, a full
//! reset, and read-only views of records, calls, tokens, counters and settings. The JSON
//! shapes are the types of [`super::api`]; `docs/simulator.md` lists the endpoints.
//!
//! It has no authentication: the simulator is a test tool, to be bound to loopback.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{OriginalUri, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::Utc;
use tracing::info;

use super::api::{
    AdminError, CallFilter, CallsPage, Counters, ErrorRate, FaultsView, Latency, Outage, RecordFilter, RecordsPage, Refusals, SettingsView,
    Timeouts, TokensView,
};
use super::faults::{Faults, InvalidFault};
use super::state::Simulator;

/// Why an admin request is refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminFailure {
    /// The fault setting is out of range.
    #[error(transparent)]
    Fault(#[from] InvalidFault),
    /// The JSON body does not fit the endpoint.
    #[error(transparent)]
    Body(#[from] JsonRejection),
    /// The query string does not fit the endpoint.
    #[error(transparent)]
    Query(#[from] QueryRejection),
    /// No such endpoint or method.
    #[error("no admin endpoint {0}")]
    NotFound(String),
}

impl IntoResponse for AdminFailure {
    fn into_response(self) -> Response {
        let status = match self {
            AdminFailure::NotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, Json(AdminError { error: self.to_string() })).into_response()
    }
}

type Shared = State<Arc<Simulator>>;
type FaultsAnswer = Result<Json<FaultsView>, AdminFailure>;

/// The routes, to be nested under `/admin`.
pub fn routes() -> Router<Arc<Simulator>> {
    Router::new()
        .route("/faults", get(faults).delete(clear_faults))
        .route("/faults/latency", put(set_latency).delete(clear_latency))
        .route("/faults/errors", put(set_errors).delete(clear_errors))
        .route("/faults/outage", put(set_outage).delete(clear_outage))
        .route("/faults/timeouts", put(set_timeouts).delete(clear_timeouts))
        .route("/faults/refusals", put(add_refusals).delete(clear_refusals))
        .route("/reset", post(reset))
        .route("/records", get(records))
        .route("/calls", get(calls))
        .route("/tokens", get(tokens))
        .route("/counters", get(counters))
        .route("/settings", get(settings))
        .fallback(not_found)
}

/// Applies a fault setting and answers the faults now in force.
fn apply<T: std::fmt::Debug>(
    sim: &Simulator,
    body: Result<Json<T>, JsonRejection>,
    set: impl FnOnce(&Faults, T) -> Result<(), InvalidFault>,
) -> FaultsAnswer {
    let Json(setting) = body?;
    let shown = format!("{setting:?}");
    set(&sim.faults, setting)?;
    info!(setting = shown, "fault set");
    Ok(Json(sim.faults.view(Utc::now())))
}

/// Clears one fault and answers the faults now in force.
fn cleared(sim: &Simulator, clear: impl FnOnce(&Faults), what: &str) -> Json<FaultsView> {
    clear(&sim.faults);
    info!(fault = what, "fault cleared");
    Json(sim.faults.view(Utc::now()))
}

async fn faults(State(sim): Shared) -> Json<FaultsView> {
    Json(sim.faults.view(Utc::now()))
}

async fn clear_faults(State(sim): Shared) -> Json<FaultsView> {
    cleared(&sim, Faults::clear, "all")
}

async fn set_latency(State(sim): Shared, body: Result<Json<Latency>, JsonRejection>) -> FaultsAnswer {
    apply(&sim, body, Faults::set_latency)
}

async fn clear_latency(State(sim): Shared) -> Json<FaultsView> {
    cleared(&sim, Faults::clear_latency, "latency")
}

async fn set_errors(State(sim): Shared, body: Result<Json<ErrorRate>, JsonRejection>) -> FaultsAnswer {
    apply(&sim, body, Faults::set_errors)
}

async fn clear_errors(State(sim): Shared) -> Json<FaultsView> {
    cleared(&sim, Faults::clear_errors, "errors")
}

async fn set_outage(State(sim): Shared, body: Result<Json<Outage>, JsonRejection>) -> FaultsAnswer {
    apply(&sim, body, |faults, outage| faults.set_outage(outage, Utc::now()))
}

async fn clear_outage(State(sim): Shared) -> Json<FaultsView> {
    cleared(&sim, Faults::clear_outage, "outage")
}

async fn set_timeouts(State(sim): Shared, body: Result<Json<Timeouts>, JsonRejection>) -> FaultsAnswer {
    apply(&sim, body, Faults::set_timeouts)
}

async fn clear_timeouts(State(sim): Shared) -> Json<FaultsView> {
    cleared(&sim, Faults::clear_timeouts, "timeouts")
}

async fn add_refusals(State(sim): Shared, body: Result<Json<Refusals>, JsonRejection>) -> FaultsAnswer {
    apply(&sim, body, Faults::add_refusals)
}

async fn clear_refusals(State(sim): Shared) -> Json<FaultsView> {
    cleared(&sim, Faults::clear_refusals, "refusals")
}

async fn reset(State(sim): Shared) -> StatusCode {
    sim.reset();
    info!("simulator reset: records, tokens, calls, counts and faults forgotten");
    StatusCode::NO_CONTENT
}

async fn records(State(sim): Shared, query: Result<Query<RecordFilter>, QueryRejection>) -> Result<Json<RecordsPage>, AdminFailure> {
    let Query(filter) = query?;
    Ok(Json(sim.records.query(&filter)))
}

async fn calls(State(sim): Shared, query: Result<Query<CallFilter>, QueryRejection>) -> Result<Json<CallsPage>, AdminFailure> {
    let Query(filter) = query?;
    Ok(Json(sim.calls.page(&filter)))
}

async fn tokens(State(sim): Shared) -> Json<TokensView> {
    Json(sim.tokens.view())
}

async fn counters(State(sim): Shared) -> Json<Counters> {
    Json(sim.counters())
}

async fn settings(State(sim): Shared) -> Json<SettingsView> {
    Json(sim.settings_view())
}

async fn not_found(OriginalUri(uri): OriginalUri) -> AdminFailure {
    AdminFailure::NotFound(uri.path().to_owned())
}
