//! `/readyz` follows the broker: unready (503) while the RabbitMQ application is stopped,
//! ready again once the worker has reconnected and consumes; `/healthz` and `/metrics` keep
//! answering throughout.
//!
//! This stops the whole broker node, so it takes `common::broker::exclusive()` and lives in
//! a test binary of its own.

mod common;

use std::time::Duration;

use common::broker::{broker_outage, exclusive, unique_vhost};
use common::records::{event, row};
use common::simulator::{TestSimulator, eventually};
use common::worker::{Amqp, WorkerProcess, worker_toml};
use els_bridge::config::RetrySettings;
use els_bridge::simulator::api::RecordFilter;
use els_bridge::spec::Infno;

fn test_retry() -> RetrySettings {
    RetrySettings { initial_backoff_ms: 100, max_backoff_ms: 1000, max_elapsed_secs: 600 }
}

/// The status of `GET path` on the worker's port, or 0 while nothing answers.
async fn status(port: u16, path: &str) -> u16 {
    match reqwest::get(format!("http://127.0.0.1:{port}{path}")).await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

/// The value of the unlabelled gauge `name` on `/metrics`.
async fn gauge(port: u16, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.ok()?.text().await.ok()?;
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn wait_for_records(sim: &TestSimulator, count: usize) {
    eventually(&format!("{count} records at the platform"), Duration::from_secs(60), async || {
        (sim.records(&RecordFilter::default()).await.total == count).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock, reason = "serialises the chaos tests of this binary; each has its own runtime")]
async fn readyz_is_unready_while_the_broker_is_down_and_ready_again_after_reconnecting() {
    let _alone = exclusive();
    let sim = TestSimulator::builder().institutions(1).start();
    let vhost = unique_vhost("telemetry-readyz");
    let code = sim.institution(0).code.clone();
    let amqp = Amqp::connect(vhost.url()).await;
    amqp.declare(&test_retry()).await;
    let toml = worker_toml(vhost.url(), 100);
    let config = sim.write_client_config("worker.toml", &toml);
    let mut worker = WorkerProcess::start(&config, "worker");
    let port = worker.http_port(Duration::from_secs(30));

    eventually("the worker to be ready", Duration::from_secs(60), async || (status(port, "/readyz").await == 200).then_some(())).await;
    amqp.publish(&[event(Infno::Els7002, &code, Some(1), row(Infno::Els7002, "BEFORE", "1"))]).await;
    wait_for_records(&sim, 1).await;
    assert_eq!(gauge(port, "els_consuming").await, Some(1.0));
    amqp.close().await;

    let outage = broker_outage();
    eventually("/readyz to turn 503 while the broker is down", Duration::from_secs(30), async || {
        (status(port, "/readyz").await == 503).then_some(())
    })
    .await;
    assert_eq!(status(port, "/healthz").await, 200, "the process is alive");
    assert_eq!(gauge(port, "els_consuming").await, Some(0.0));
    assert_eq!(status(port, "/readyz").await, 503, "still unready while the broker is down");
    outage.end();

    eventually("/readyz to turn 200 after the reconnect", Duration::from_secs(90), async || {
        (status(port, "/readyz").await == 200).then_some(())
    })
    .await;
    assert_eq!(gauge(port, "els_consuming").await, Some(1.0));
    // Ready means consuming: a new event goes through.
    let amqp = Amqp::connect(vhost.url()).await;
    amqp.publish(&[event(Infno::Els7003, &code, Some(1), row(Infno::Els7003, "AFTER", "1"))]).await;
    wait_for_records(&sim, 2).await;

    let logs = worker.logs();
    assert!(worker.terminate(Duration::from_secs(30)).success(), "{logs}");
    amqp.close().await;
}
