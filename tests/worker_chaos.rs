//! The worker under faults: platform outages and timeouts, a worker killed with SIGKILL,
//! the broker's application stopped and started — in the end every record is stored and
//! nothing is dead-lettered. Also the fleet's shared token under short token validity.
//!
//! These tests stop the whole broker node, so they take `common::broker::exclusive()` and
//! live in a test binary of their own.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::broker::{QueueCounts, broker_outage, exclusive, unique_vhost};
use common::records::{event, row};
use common::simulator::TestSimulator;
use common::worker::{Amqp, WorkerProcess, test_retry, worker_config, worker_toml};
use els_bridge::simulator::api::{CallFilter, ErrorAnswer, ErrorRate, RecordFilter, TimeoutMode, Timeouts};
use els_bridge::spec::Infno;
use serde_json::Value;

/// `count` events spread over the six transactions of `code`, keys prefixed by `tag`.
fn events(code: &str, tag: &str, count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| {
            let infno = Infno::UPLOADS[i % 6];
            event(infno, code, Some(1), row(infno, &format!("{tag}-{i:05}"), "2"))
        })
        .collect()
}

/// Waits until the simulator holds `count` records; on timeout, fails with the workers' logs.
async fn wait_for_records(sim: &TestSimulator, count: usize, timeout: Duration, workers: &[&WorkerProcess]) {
    let deadline = Instant::now() + timeout;
    loop {
        let total = sim.records(&RecordFilter::default()).await.total;
        if total == count {
            return;
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = workers.iter().map(|w| w.logs()).collect();
            panic!("the simulator holds {total} records, expected {count}; the workers logged:\n{}", logs.join("\n----\n"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock, reason = "serialises the chaos tests of this binary; each has its own runtime")]
async fn outages_timeouts_a_killed_worker_and_a_broker_restart_lose_nothing() {
    let _alone = exclusive();
    let sim = TestSimulator::builder().institutions(1).start();
    let vhost = unique_vhost("chaos");
    let code = sim.institution(0).code.clone();
    let amqp = Amqp::connect(vhost.url()).await;
    amqp.declare(&test_retry()).await;
    let extra = format!("{}\n", worker_toml(vhost.url(), 200)).replace("[batch]", "[batch]\nmax_in_flight_per_institution = 2");
    let config = sim.write_client_config("worker.toml", &extra.replace("[platform]", ""));
    // Short platform timeout so that hanging calls fail fast.
    let text = std::fs::read_to_string(&config).unwrap().replace("[platform]\n", "[platform]\ntimeout_ms = 1500\n");
    std::fs::write(&config, text).unwrap();
    let mut first = WorkerProcess::start(&config, "worker-1");
    let second = WorkerProcess::start(&config, "worker-2");

    // A 503 outage while the first events arrive.
    sim.start_outage(3).await;
    amqp.publish(&events(&code, "A", 400)).await;
    // Then calls that hang past the client's timeout, and some 6 "service unavailable".
    sim.set_timeouts(Timeouts { next: 4, rate: 0.0, mode: TimeoutMode::Hang, hang_ms: 5_000, processed: false }).await;
    sim.set_errors(ErrorRate { rate: 0.2, answer: ErrorAnswer::ReturnCode(6) }).await;
    amqp.publish(&events(&code, "B", 400)).await;

    // A worker killed while it holds deliveries, and started again.
    first.kill();
    amqp.publish(&events(&code, "C", 300)).await;
    let first_again = WorkerProcess::start(&config, "worker-1b");

    // The broker application stopped and started under the workers' feet.
    let outage = broker_outage();
    outage.end();
    sim.clear_fault("errors").await;
    let amqp = Amqp::connect(vhost.url()).await;
    amqp.publish(&events(&code, "D", 300)).await;

    wait_for_records(&sim, 1400, Duration::from_secs(240), &[&first_again, &second]).await;
    vhost.wait_for_counts("els.events", QueueCounts::new(0, 0), Duration::from_secs(60));
    assert_eq!(amqp.take_all("els.dead").await.len(), 0, "nothing is dead-lettered");
    let calls = sim.calls(&CallFilter::default()).await;
    assert!(calls.calls.iter().all(|c| c.rows <= 100));
    drop(second);
    amqp.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock, reason = "serialises the chaos tests of this binary; each has its own runtime")]
async fn the_fleet_shares_one_token_per_institution_through_short_token_lifetimes() {
    let _alone = exclusive();
    let sim = TestSimulator::builder().institutions(2).arg("--token-validity-secs", 25).arg("--token-refresh-window-secs", 8).start();
    let vhost = unique_vhost("tokens");
    let codes = [sim.institution(0).code.clone(), sim.institution(1).code.clone()];
    let amqp = Amqp::connect(vhost.url()).await;
    amqp.declare(&test_retry()).await;
    let config = worker_config(&sim, &vhost, 200);
    let text = std::fs::read_to_string(&config).unwrap().replace("[platform]\n", "[platform]\ntoken_refresh_lead_secs = 6\n");
    std::fs::write(&config, text).unwrap();
    let workers: Vec<WorkerProcess> = (0..3).map(|i| WorkerProcess::start(&config, &format!("worker-{i}"))).collect();

    // A steady trickle for 70 s: uploads keep needing a token through several lifetimes.
    let started = Instant::now();
    let mut published = 0;
    let mut late_worker = None;
    while started.elapsed() < Duration::from_secs(70) {
        for code in &codes {
            amqp.publish(&events(code, &format!("T{published}"), 6)).await;
            published += 6;
        }
        if late_worker.is_none() && started.elapsed() > Duration::from_secs(40) {
            late_worker = Some(WorkerProcess::start(&config, "worker-late"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let everyone: Vec<&WorkerProcess> = workers.iter().chain(late_worker.as_ref()).collect();
    wait_for_records(&sim, published, Duration::from_secs(120), &everyone).await;
    vhost.wait_for_counts("els.events", QueueCounts::new(0, 0), Duration::from_secs(60));
    assert_eq!(amqp.take_all("els.dead").await.len(), 0);

    // At most about one token per validity period per institution (plus the first).
    let tokens = sim.tokens().await;
    let elapsed = started.elapsed().as_secs();
    for t in &tokens.institutions {
        let allowed = elapsed / (25 - 8) + 2;
        assert!(t.issued >= 2 && t.issued <= allowed, "{}: {} tokens in {elapsed}s (allowed {allowed})", t.institution, t.issued);
    }
    // No bursts of ELS7001 calls or of code-5 answers.
    let calls = sim.calls(&CallFilter::default()).await.calls;
    let mut token_calls: BTreeMap<String, usize> = BTreeMap::new();
    let mut invalid_token: BTreeMap<String, usize> = BTreeMap::new();
    for call in &calls {
        let who = call.institution.clone().unwrap_or_default();
        if call.infno.as_deref() == Some("ELS7001") {
            *token_calls.entry(who.clone()).or_default() += 1;
        }
        if call.return_code == Some(5) {
            *invalid_token.entry(who).or_default() += 1;
        }
    }
    for t in &tokens.institutions {
        let fetches = token_calls.get(&t.institution).copied().unwrap_or(0) as u64;
        assert!(fetches <= t.issued + 3, "{}: {fetches} ELS7001 calls for {} tokens", t.institution, t.issued);
        let fives = invalid_token.get(&t.institution).copied().unwrap_or(0) as u64;
        assert!(fives <= t.issued, "{}: {fives} code-5 answers for {} tokens", t.institution, t.issued);
    }
    drop(workers);
    drop(late_worker);
    amqp.close().await;
}
