//! `els-bridge worker`: consumes the work queue, validates, batches, uploads and settles
//! (contract §§1–4). Several replicas run side by side and behave as one client of the
//! platform: they share one token per institution and distinct msgid slots through the
//! broker.
//!
//! The worker connects, declares the topology, and runs a [`session::Session`] until the
//! connection is lost, then reconnects with backoff; deliveries of a lost channel are never
//! acked late (the broker redelivers them). SIGTERM/SIGINT stops consuming, flushes open
//! batches and settles within `worker.drain_deadline_secs`.

pub mod acks;
pub mod health;
pub mod holds;
pub mod lanes;
pub mod pipeline;
pub mod session;
pub mod settle;

use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use lapin::Connection;
use tokio_util::sync::CancellationToken;

use crate::broker::topology::{DELIVERY_LIMIT, Declared};
use crate::broker::{self, BrokerError, Publisher, Topology};
use crate::config::{AmqpSettings, Config};
use crate::ledger::Ledger;
use crate::platform::{MsgIds, PlatformClient, Tokens};
use crate::retry::Backoff;
use crate::upload::Uploader;
use health::Health;
use holds::Holds;
use pipeline::Pipeline;
use session::{Session, SessionEnd};
use settle::Settler;

/// How long the HTTP endpoint may take to finish the requests under way after the drain.
const HTTP_SHUTDOWN: Duration = Duration::from_secs(5);
/// A session that ran this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(60);

/// Why the worker cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Nothing to report for.
    #[error("no institution is configured: add an [[institutions]] section")]
    NoInstitutions,
    /// The health endpoint cannot listen.
    #[error("cannot serve /healthz and /readyz on {address}: {source}")]
    Listen { address: std::net::SocketAddr, source: std::io::Error },
    /// The platform client cannot be built.
    #[error(transparent)]
    Client(#[from] crate::platform::client::ClientError),
}

/// Warns when the prefetch (set, or cut to `worker.max_held_bytes`) is below what the lanes
/// need to fill their calls.
fn warn_if_calls_cannot_fill(config: &Config) {
    let (prefetch, needed) = (config.worker_prefetch(), config.lanes_prefetch());
    if prefetch < needed {
        tracing::warn!(
            "the prefetch of {prefetch} (amqp.prefetch, or what fits in worker.max_held_bytes) is below the {needed} deliveries \
             that {} institution(s) need to fill their calls (institutions × (6 lanes + batch.max_in_flight_per_institution) × \
             batch.max_records): calls will carry fewer rows than they could; raise amqp.prefetch or leave it unset, \
             or lower worker.max_event_bytes or raise worker.max_held_bytes",
            config.institutions.len()
        );
    }
}

/// Runs the worker until `shutdown` is cancelled and the drain is over.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), WorkerError> {
    if config.institutions.is_empty() {
        return Err(WorkerError::NoInstitutions);
    }
    // Fail early on a bad platform configuration (CA file, ...).
    PlatformClient::new(&config.platform, Arc::new(MsgIds::new(0)))?;
    let amqp = config.amqp.clone().unwrap_or_default();
    warn_if_calls_cannot_fill(&config);
    let backoff = Backoff::new(&config.retry);
    let holds = Holds::new(backoff);
    let health = Health::new(holds.clone());
    let (held, consuming) = (health.clone(), health.clone());
    crate::telemetry::metrics::watch(
        move || held.held().into_iter().map(|(code, _)| code).collect(),
        move || consuming.is_consuming(),
        config.institutions.iter().map(|i| i.fixmedins_code.clone()).collect(),
    );
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|source| WorkerError::Listen { address: config.http.listen, source })?;
    // Served until the drain is over (liveness and metrics during it), not just until SIGTERM.
    let http_stop = CancellationToken::new();
    let http = tokio::spawn(health::serve(listener, health.clone(), http_stop.clone()));

    let mut failures = 0;
    let mut waiting_for_slot = false;
    loop {
        let started = Instant::now();
        match connect_and_run(&config, &amqp, &holds, &health, &shutdown).await {
            Ok(SessionEnd::Drained) => {
                tracing::info!("drained: every delivery taken is settled");
                break;
            }
            Ok(SessionEnd::DeadlinePassed { unsettled }) => {
                tracing::warn!(unsettled, "drain deadline passed; unsettled messages will be delivered again");
                break;
            }
            Err(error) => {
                if shutdown.is_cancelled() {
                    break;
                }
                failures = if started.elapsed() > STABLE_SESSION { 1 } else { failures + 1 };
                let wait = backoff.delay(failures);
                log_failure(&error, wait, &mut waiting_for_slot);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => break,
                }
            }
        }
    }
    shutdown.cancel();
    http_stop.cancel();
    // Graceful: requests under way get their answer. Bounded: a client that never finishes
    // its request (or never reads the answer) must not keep the process alive.
    if tokio::time::timeout(HTTP_SHUTDOWN, http).await.is_err() {
        tracing::warn!("an HTTP client did not finish its request within {}s of the drain; not waiting for it", HTTP_SHUTDOWN.as_secs());
    }
    Ok(())
}

/// Logs why a session ended in an error: each lost connection at ERROR; the lack of a free
/// msgid slot (the fleet is too large until another process stops) once while it lasts.
fn log_failure(error: &BrokerError, wait: Duration, waiting_for_slot: &mut bool) {
    if matches!(error, BrokerError::NoMsgidSlot { .. }) {
        if !*waiting_for_slot {
            tracing::error!("{error}");
        }
        *waiting_for_slot = true;
        tracing::debug!("still no free msgid slot; trying again in {:.1}s", wait.as_secs_f64());
    } else {
        *waiting_for_slot = false;
        tracing::error!("broker connection lost or unusable ({error}); reconnecting in {:.1}s", wait.as_secs_f64());
    }
}

/// Tells the operator, once per process, which queues RabbitMQ 4 may drop messages from.
fn warn_of_delivery_limit(declared: &Declared) {
    static WARNED: Once = Once::new();
    if declared.without_delivery_limit.is_empty() {
        return;
    }
    WARNED.call_once(|| {
        let queues = declared.without_delivery_limit.join(", ");
        let pattern: Vec<String> = declared.without_delivery_limit.iter().map(|q| q.replace('.', "\\.")).collect();
        tracing::warn!(
            queues = %queues,
            "{queues}: created by an earlier release without a delivery limit argument. On RabbitMQ 4.0 and later such a \
             quorum queue drops a message delivered more than 20 times (a crash loop, repeated dlq reads) unless a policy \
             sets delivery-limit; on 3.x there is no such limit. Unless a policy is in place, set one (right on 3.x too): \
             rabbitmqctl set_policy -p <vhost> --apply-to queues els-delivery-limit '^({})$' '{{\"delivery-limit\":{DELIVERY_LIMIT}}}' \
             (README: RabbitMQ versions)",
            pattern.join("|")
        );
    });
}

/// One connection: declare, share tokens and msgid slot, consume until lost or drained. A
/// shutdown while connecting or setting up ends it at once (nothing is taken yet).
async fn connect_and_run(
    config: &Config,
    amqp: &AmqpSettings,
    holds: &Holds,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<SessionEnd, BrokerError> {
    let connection = tokio::select! {
        connected = broker::connect(amqp, "els-bridge worker") => connected?,
        () = shutdown.cancelled() => return Ok(SessionEnd::Drained),
    };
    let on_consuming = |consuming: bool| health.set_consuming(consuming);
    let mut session = None;
    let result = async {
        let (pipeline, streams_lost) = tokio::select! {
            prepared = prepare(config, amqp, holds, &connection) => prepared?,
            () = shutdown.cancelled() => return Ok(SessionEnd::Drained),
        };
        let session = session.insert(Session { config, amqp, pipeline, on_consuming: &on_consuming, streams_lost });
        session.run(&connection, shutdown).await
    }
    .await;
    if connection.status().connected() {
        // Closed while the session still holds its channels: a channel dropped first closes
        // itself, and a Channel.CloseOk that arrives during the connection's close makes lapin
        // log a hard error (UNEXPECTED-FRAME). The broker requeues whatever is unacked.
        broker::close(&connection, "bye").await;
    }
    drop(session);
    result
}

/// Declares the topology and sets up what a session's batches need on `connection`: the
/// token store, a msgid slot, the publisher and the ledger; and a token cancelled when
/// the token or ledger stream is lost.
async fn prepare(
    config: &Config,
    amqp: &AmqpSettings,
    holds: &Holds,
    connection: &Connection,
) -> Result<(Pipeline, CancellationToken), BrokerError> {
    let topology = Topology::new(amqp, &config.retry);
    let declared = topology.declare(connection).await?;
    warn_of_delivery_limit(&declared);

    let store = broker::token_store::start(connection, &amqp.name_prefix).await?;
    let slot = broker::msgid_slot::claim_msgid_slot(connection, &amqp.name_prefix).await?;
    let client = PlatformClient::new(&config.platform, Arc::new(MsgIds::new(slot)))?;
    let publisher = Publisher::open(connection).await?;
    let codes: Arc<[String]> = config.institutions.iter().map(|i| i.fixmedins_code.clone()).collect();
    let settler = Settler::new(publisher, topology, Backoff::new(&config.retry), holds.clone(), codes);
    let ledger = Ledger::open(connection, &amqp.name_prefix, &config.ledger).await?;
    tracing::info!(msgid_slot = slot, indexed_keys = ledger.indexed_keys(), "connected to the broker; topology declared; ledger indexed");
    let streams_lost = broker::log::any_lost(vec![store.lost(), ledger.lost()]);
    let tokens = Tokens::new(store, client.clone(), Duration::from_secs(config.platform.token_refresh_lead_secs));
    let pipeline = Pipeline {
        uploader: Uploader::new(client, tokens)
            .with_concurrency(config.batch.max_in_flight_per_institution, config.batch.adaptive_concurrency)
            .with_time_limit(Duration::from_secs(config.batch.max_upload_secs)),
        settler,
        holds: holds.clone(),
        ledger: Arc::new(ledger),
    };
    Ok((pipeline, streams_lost))
}
