//! A strict simulator of the Jiangsu provincial procurement platform (contract §6), for tests
//! and benchmarks: `POST /api/commonInterfaca` behind a CSB signature check, ELS7001 tokens,
//! the spec's field rules answered with its returnCodes, upsert by record key, a row limit
//! and a daily call limit, plus faults injected at run time and an inspection API under
//! `/admin/` (see `docs/simulator.md`).
//!
//! Everything is held in memory: records for the life of the process (until a reset), the
//! call log bounded to its capacity.

mod admin;
pub mod api;
mod calls;
mod faults;
mod gateway;
mod interface;
mod limits;
mod load;
mod records;
mod reply;
mod request;
mod state;
mod tokens;
mod transactions;

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use axum::Router;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::DATE;
use axum::response::Response;
use axum::routing::post;
use chrono::TimeDelta;
use tokio::net::TcpListener;

pub use state::Simulator;

/// How the simulated platform behaves; the defaults are the real platform's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// How long an ELS7001 token is valid.
    pub token_validity: TimeDelta,
    /// A new token is refused (9) while the current one has more than this left.
    pub token_refresh_window: TimeDelta,
    /// Calls per institution per Beijing day before 11.
    pub daily_call_limit: u64,
    /// Largest accepted difference between `_api_timestamp` and the clock.
    pub timestamp_tolerance: TimeDelta,
    /// Rows per upload call before 28.
    pub max_rows: usize,
    /// Calls kept in the call log.
    pub call_log_capacity: usize,
    /// How far the platform's clock is from this host's (positive: ahead): what it checks
    /// `_api_timestamp` against, stamps its replies with and sends as the `Date` header.
    pub clock_offset: TimeDelta,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            token_validity: TimeDelta::minutes(30),
            token_refresh_window: TimeDelta::minutes(5),
            daily_call_limit: 10_000,
            timestamp_tolerance: TimeDelta::minutes(15),
            max_rows: 100,
            call_log_capacity: 10_000,
            clock_offset: TimeDelta::zero(),
        }
    }
}

/// The simulator's routes: the interface, `/admin/`, and returnCode 2 for any other path.
pub fn router(sim: Arc<Simulator>) -> Router {
    Router::new()
        .route(interface::PATH, post(interface::interface))
        .nest("/admin", admin::routes())
        .fallback(interface::wrong_path)
        .layer(axum::middleware::map_response_with_state(Arc::clone(&sim), date_header))
        .with_state(sim)
}

/// Sets the `Date` header from the platform's clock (see [`Settings::clock_offset`]);
/// hyper adds one from the host's clock only when there is none.
async fn date_header(State(sim): State<Arc<Simulator>>, mut response: Response) -> Response {
    let date = sim.now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    if let Ok(value) = HeaderValue::from_str(&date) {
        response.headers_mut().insert(DATE, value);
    }
    response
}

/// Serves `sim` on `listener` until `shutdown` completes; then hung calls are cut short and
/// calls in progress finish.
pub async fn serve(listener: TcpListener, sim: Arc<Simulator>, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let cancel = sim.shutdown.clone();
    axum::serve(listener, router(sim))
        .with_graceful_shutdown(async move {
            shutdown.await;
            cancel.cancel();
        })
        .await
}

/// Locks a mutex; a panic elsewhere while holding it leaves data that is still usable here.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read-locks an `RwLock`, like [`lock`].
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks an `RwLock`, like [`lock`].
fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}
