//! The worker's HTTP endpoint: `/healthz` (the process is alive), `/readyz` (connected
//! to the broker and consuming; held institutions are listed, but do not make the worker
//! unready: the others carry on) and `/metrics` (Prometheus text, see
//! [`crate::telemetry::metrics`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, header};
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

    /// Whether a session consumes the work queue now.
    pub fn is_consuming(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
    }

    /// The institutions held for their configuration or the daily limit, with the reason.
    pub fn held(&self) -> Vec<(String, String)> {
        self.holds.held()
    }

    /// The institutions held because the platform is failing for them, with the last failure.
    pub fn failing(&self) -> Vec<(String, String)> {
        self.holds.failing()
    }
}

/// Serves the endpoints on `listener` until `shutdown`.
pub async fn serve(listener: tokio::net::TcpListener, health: Health, shutdown: CancellationToken) -> std::io::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health);
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    let consuming = health.is_consuming();
    let listed = |held: Vec<(String, String)>| -> serde_json::Map<String, serde_json::Value> {
        held.into_iter().map(|(code, reason)| (code, json!(reason))).collect()
    };
    let status = if consuming { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body =
        json!({ "consuming": consuming, "held_institutions": listed(health.held()), "failing_institutions": listed(health.failing()) });
    (status, Json(body))
}

/// Prometheus text exposition of every metric.
async fn metrics() -> impl IntoResponse {
    // Collecting runs the gauges' callbacks, which take short locks: off the async threads.
    let text = tokio::task::spawn_blocking(crate::telemetry::metrics::render).await.unwrap_or_default();
    ([(header::CONTENT_TYPE, crate::telemetry::metrics::CONTENT_TYPE)], text)
}
