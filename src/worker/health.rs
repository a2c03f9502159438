//! The worker's HTTP endpoint: `/healthz` (the process is alive) and `/readyz` (connected
//! to the broker and consuming; held institutions are listed as not ready).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::holds::Holds;

/// What the endpoints report; shared with the sessions.
#[derive(Debug, Clone)]
pub struct Health {
    consuming: Arc<AtomicBool>,
    holds: Holds,
}

impl Health {
    /// Not yet consuming.
    pub fn new(holds: Holds) -> Self {
        Health { consuming: Arc::default(), holds }
    }

    /// Records whether a session is consuming.
    pub fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::Relaxed);
    }
}

/// Serves the endpoints on `listener` until `shutdown`.
pub async fn serve(listener: tokio::net::TcpListener, health: Health, shutdown: CancellationToken) -> std::io::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "serving /healthz and /readyz");
    let app = Router::new().route("/healthz", get(|| async { "ok\n" })).route("/readyz", get(readyz)).with_state(health);
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    let consuming = health.consuming.load(Ordering::Relaxed);
    let held: serde_json::Map<String, serde_json::Value> =
        health.holds.held().into_iter().map(|(code, reason)| (code, json!(reason))).collect();
    let status = if consuming { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "consuming": consuming, "held_institutions": held })))
}
