//! `POST /api/commonInterfaca`, the platform's one entry point, and the answer to every
//! other path (returnCode 2).
//!
//! A call goes through: injected faults (latency, outage, timeout, error) → the CSB gateway
//! (HTTP 403) → the daily limit (11) → the envelope (14, 3, 30, 12, 13) → the transaction.
//! Every call is logged.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Bytes, HttpBody};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use tracing::debug;

use super::api::{CallView, ErrorAnswer, FaultKind, TimeoutMode};
use super::faults::Injected;
use super::reply::{Answer, ReturnCode, http_error};
use super::request::Body;
use super::state::Simulator;
use super::transactions;
use crate::spec::Infno;

/// The interface path.
pub const PATH: &str = "/api/commonInterfaca";

/// Handles a call to the interface.
pub async fn interface(State(sim): State<Arc<Simulator>>, headers: HeaderMap, bytes: Bytes) -> Response {
    let received = sim.now();
    let in_progress = sim.load.enter(sim.gateway.claimed(&headers));
    let concurrent = in_progress.concurrent;
    let plan = sim.faults.plan(received, concurrent);
    sim.pause(plan.delay).await;
    let body = Body::parse(&bytes);
    let mut call = new_call(PATH, received, body.as_ref().ok());
    call.latency_ms = u64::try_from(plan.delay.as_millis()).unwrap_or(u64::MAX);
    call.concurrent = concurrent;
    let response = match plan.injected {
        None => platform(&sim, &headers, body, received, &mut call),
        Some(Injected::Outage) => {
            call.fault = Some(FaultKind::Outage);
            http_error(StatusCode::SERVICE_UNAVAILABLE, "the platform is down (simulated outage)")
        }
        Some(Injected::Error(answer)) => injected_error(&sim, answer, received, &mut call),
        Some(Injected::Timeout { mode, hang, processed }) => {
            if processed {
                // Carried out; only the answer is lost.
                platform(&sim, &headers, body, received, &mut call);
            }
            return lose_answer(&sim, call, mode, hang).await;
        }
    };
    call.http_status = Some(response.status().as_u16());
    log(&sim, call);
    response
}

/// The answer of the error fault, instead of carrying the call out.
fn injected_error(sim: &Simulator, answer: ErrorAnswer, received: DateTime<Utc>, call: &mut CallView) -> Response {
    call.fault = Some(FaultKind::Error);
    match answer {
        ErrorAnswer::HttpStatus(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            http_error(status, "simulated error")
        }
        ErrorAnswer::ReturnCode(code) => {
            call.return_code = Some(code);
            Answer::code(ReturnCode(code)).into_response(sim.refmsgids.next(received), received, sim.settings.clock_offset)
        }
    }
}

/// Logs a timed-out call, then hangs (and answers 504) or closes the connection.
async fn lose_answer(sim: &Simulator, mut call: CallView, mode: TimeoutMode, hang: Duration) -> Response {
    let (fault, status) = match mode {
        TimeoutMode::Hang => (FaultKind::Hang, Some(StatusCode::GATEWAY_TIMEOUT.as_u16())),
        TimeoutMode::Close => (FaultKind::Close, None),
    };
    call.fault = Some(fault);
    call.http_status = status;
    log(sim, call);
    match mode {
        TimeoutMode::Hang => {
            sim.pause(hang).await;
            http_error(StatusCode::GATEWAY_TIMEOUT, "no answer from the platform (simulated timeout)")
        }
        TimeoutMode::Close => Response::new(axum::body::Body::new(Severed)),
    }
}

/// Answers any other path with returnCode 2, as the platform does.
pub async fn wrong_path(State(sim): State<Arc<Simulator>>, uri: Uri) -> Response {
    let received = sim.now();
    let mut call = new_call(uri.path(), received, None);
    call.return_code = Some(ReturnCode::WRONG_PATH.0);
    call.http_status = Some(StatusCode::OK.as_u16());
    log(&sim, call);
    Answer::code(ReturnCode::WRONG_PATH).into_response(sim.refmsgids.next(received), received, sim.settings.clock_offset)
}

/// The platform proper, behind the gateway: synchronous, with short-held locks only.
fn platform(
    sim: &Simulator,
    headers: &HeaderMap,
    body: Result<Body, ReturnCode>,
    received: DateTime<Utc>,
    call: &mut CallView,
) -> Response {
    let institution = match sim.gateway.check(headers, received) {
        Ok(institution) => institution,
        Err(refused) => {
            debug!(error = %refused, "gateway refused a call");
            return refused.into_response();
        }
    };
    call.institution = Some(institution.fixmedins_code.clone());
    let handled = if !sim.limits.count(&institution.fixmedins_code, received) {
        ReturnCode::DAILY_LIMIT.into()
    } else {
        match body.and_then(|body| body.check(&institution.fixmedins_code)) {
            Ok(request) => transactions::handle(sim, institution, request, received),
            Err(code) => code.into(),
        }
    };
    call.return_code = Some(handled.answer.code.0);
    call.fault = handled.fault;
    handled.answer.into_response(sim.refmsgids.next(received), received, sim.settings.clock_offset)
}

/// A call log entry for a call arriving at `received`, with what its body says.
fn new_call(path: &str, received: DateTime<Utc>, body: Option<&Body>) -> CallView {
    let infno = body.and_then(|b| b.text("infno"));
    let rows = body.and_then(Body::rows);
    let key_field = infno.and_then(|n| n.parse::<Infno>().ok()).filter(|n| n.is_upload()).map(Infno::key_field);
    let keys = match (rows, key_field) {
        (Some(rows), Some(field)) => rows.iter().filter_map(|r| r.get(field)?.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    };
    CallView {
        seq: 0,
        time: received,
        path: path.to_owned(),
        institution: None,
        infno: infno.map(str::to_owned),
        msgid: body.and_then(|b| b.text("msgid")).map(str::to_owned),
        rows: rows.map_or(0, Vec::len),
        keys,
        return_code: None,
        http_status: None,
        fault: None,
        latency_ms: 0,
        concurrent: 0,
    }
}

fn log(sim: &Simulator, call: CallView) {
    debug!(
        institution = call.institution.as_deref().unwrap_or("-"),
        infno = call.infno.as_deref().unwrap_or("-"),
        rows = call.rows,
        return_code = ?call.return_code,
        http_status = ?call.http_status,
        fault = ?call.fault,
        "call"
    );
    sim.calls.record(call);
}

/// A response body that fails at once: the server closes the connection before sending a
/// single byte, the response head included.
struct Severed;

impl HttpBody for Severed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(Some(Err(std::io::Error::other("connection closed by a simulated timeout"))))
    }
}
