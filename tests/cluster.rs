//! The three-node RabbitMQ cluster of issue 15 and the helpers of `common::cluster` that
//! drive it: the work queue `els.events` (a quorum queue) elects a new leader and keeps its
//! messages when the node that leads it is killed with SIGKILL (and a stream led by that
//! node gets a new leader too), and the node rejoins when it is started again.
//!
//! These tests kill nodes of the cluster that `scripts/rabbitmq.sh start --cluster` starts,
//! so they are ignored by a plain `cargo test`: `scripts/test.sh` starts the cluster and runs
//! `cargo test --test cluster -- --ignored` with the environment that `Cluster::from_env`
//! reads. They take `common::broker::exclusive()` (one node failure at a time).

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::broker::{QueueCounts, TestVhost, exclusive};
use common::cluster::Cluster;
use common::records::{event, row};
use common::simulator::{TestSimulator, eventually, until};
use common::worker::{Amqp, WorkerProcess, test_retry, without_colours, worker_toml};
use els_bridge::broker::claim_msgid_slot;
use els_bridge::broker::msgid_slot::slot_queue_name;
use els_bridge::broker::presence::{self, Presence};
use els_bridge::simulator::api::{CallFilter, RecordFilter, RecordView, RecordsPage};
use els_bridge::spec::Infno;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};

/// How long a quorum queue may take to elect a new leader among the survivors (a few
/// seconds are usual; Ra's election timeout is about a second).
const ELECTION: Duration = Duration::from_secs(30);

/// The stream of the test.
const STREAM: &str = "cluster-test.stream";

/// Declares the durable stream `name` through `url`.
async fn declare_stream(url: &str, name: &str) {
    let connection = Connection::connect(url, ConnectionProperties::default()).await.expect("connect to the cluster");
    let channel = connection.create_channel().await.expect("channel");
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
    let options = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(name.into(), options, arguments).await.expect("declare a stream");
    let _ = connection.close(200, "declared".into()).await;
}

#[tokio::test]
#[ignore = "needs the three-node cluster: scripts/test.sh runs it with --ignored"]
#[allow(clippy::await_holding_lock, reason = "one runtime per test; the lock only serialises tests")]
async fn the_work_queue_survives_the_loss_of_its_leader_and_the_node_rejoins() {
    let _exclusive = exclusive();
    let cluster = Cluster::from_env();
    cluster.wait_until_all_running(Duration::from_secs(60));
    let vhost = cluster.vhost("cluster-leader-loss");

    // Declared and published through node 2: the queue's first leader is the node the client
    // is connected to, and the cluster's rabbitmqctl (vhost clean-up) drives node 1.
    let amqp = Amqp::connect(&cluster.url(2, &vhost)).await;
    amqp.declare(&test_retry()).await;
    let sent = event(Infno::Els7002, "H0001", Some(1), row(Infno::Els7002, "leader-loss-1", "2"));
    amqp.publish(std::slice::from_ref(&sent)).await;
    amqp.close().await;
    // A stream beside it, as els.tokens and els.ledger are: its leader is found the same way.
    declare_stream(&cluster.url(2, &vhost), STREAM).await;

    let leader = cluster.wait_for_leader(vhost.name(), "els.events", ELECTION, |_| true);
    let stream_leader = cluster.wait_for_leader(vhost.name(), STREAM, ELECTION, |_| true);
    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader(vhost.name(), "els.events", ELECTION, |n| n != leader);
    if stream_leader == leader {
        cluster.wait_for_leader(vhost.name(), STREAM, ELECTION, |n| n != leader);
    }

    let reader = Amqp::connect(&cluster.url(new_leader, &vhost)).await;
    let bodies: Vec<_> = reader.take_all("els.events").await.into_iter().map(|message| message.body).collect();
    reader.close().await;
    assert_eq!(bodies, [sent], "the message confirmed before node {leader} was killed, read through node {new_leader}");

    cluster.start(leader);
    cluster.wait_until_all_running(Duration::from_secs(60));
    let after = cluster.wait_for_leader(vhost.name(), "els.events", ELECTION, |_| true);
    eprintln!(
        "els.events: led by node {leader}, then node {new_leader} after the kill; node {leader} rejoined, leader now node {after} \
         (the stream was led by node {stream_leader})"
    );
}

/// A ledger claim's holder and a msgid slot are exclusive queues of a worker's connection
/// (`broker::presence`). When the node of that connection is killed, a probe through
/// another node must not take the queue for held: RabbitMQ 3.x deletes it, 4.x with Khepri
/// keeps its record and refuses the probe until the node is back (`NodeDown`). Taken for
/// held, it would keep the claim's keys waiting for the claim TTL (300 s by default); an
/// error would fail every claim in its way and every msgid slot search that reaches it.
/// Once the node is back, the queue is gone.
#[tokio::test]
#[ignore = "needs the three-node cluster: scripts/test.sh runs it with --ignored"]
#[allow(clippy::await_holding_lock, reason = "one runtime per test; the lock only serialises tests")]
async fn a_queue_on_a_killed_node_is_not_taken_for_held_through_the_others() {
    const HOLDER: &str = "els.ledger.holder.cluster-test";
    let _exclusive = exclusive();
    let cluster = Cluster::from_env();
    cluster.wait_until_all_running(Duration::from_secs(60));
    let vhost = cluster.vhost("cluster-holder-gone");
    let holder = Connection::connect(&cluster.url(3, &vhost), ConnectionProperties::default()).await.expect("connect to node 3");
    presence::declare_exclusive(&holder.create_channel().await.expect("channel"), HOLDER).await.expect("declare the holder");
    let asker = Connection::connect(&cluster.url(2, &vhost), ConnectionProperties::default()).await.expect("connect to node 2");
    let probe = presence::probe_channel(&asker).await.expect("probe channel");
    let seen = async || presence::queue_presence(&probe, HOLDER).await.expect("probe");
    assert_eq!(seen().await, Presence::Held, "the holder's queue, seen through node 2");

    cluster.kill(3);
    let killed = Instant::now();
    let mut answers = Vec::new();
    while killed.elapsed() < Duration::from_secs(3) {
        answers.push(seen().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    answers.dedup();
    eprintln!("node 3 killed: the holder seen through node 2 as {answers:?} (in turn)");
    assert!(!answers.contains(&Presence::Held), "taken for held after the kill: {answers:?}");
    drop(holder);

    cluster.start(3);
    cluster.wait_until_all_running(Duration::from_secs(120));
    eventually("the holder gone once node 3 is back", Duration::from_secs(30), async || (seen().await == Presence::Absent).then_some(()))
        .await;
    let _ = asker.close(200, "done".into()).await;
}

/// A worker that starts while another process's msgid slot is on a node that is down
/// takes a free slot and uploads. On RabbitMQ 4.x the slot's queue keeps its record until
/// the node is back and the probe of it is refused (`NodeDown`): the search skips it,
/// where it used to fail, so that no worker could start until the node came back. On 3.x
/// the queue goes with its connection and the slot is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the three-node cluster: scripts/test.sh runs it with --ignored"]
#[allow(clippy::await_holding_lock, reason = "one runtime per test; the lock only serialises tests")]
async fn a_worker_starts_while_a_msgid_slot_is_on_a_node_that_is_down() {
    let _exclusive = exclusive();
    let cluster = Cluster::from_env();
    cluster.wait_until_all_running(Duration::from_secs(60));
    let vhost = cluster.vhost("cluster-slot-down");
    let sim = TestSimulator::builder().institutions(1).start();
    let amqp = Amqp::connect(&cluster.url(2, &vhost)).await;
    amqp.declare(&test_retry()).await;
    let holder = Connection::connect(&cluster.url(3, &vhost), ConnectionProperties::default()).await.expect("connect to node 3");
    assert_eq!(claim_msgid_slot(&holder, "els").await.expect("claim a msgid slot on node 3"), 0);

    cluster.kill(3);
    let asker = Connection::connect(&cluster.url(2, &vhost), ConnectionProperties::default()).await.expect("connect to node 2");
    let probe = presence::probe_channel(&asker).await.expect("probe channel");
    let expected_slot = match presence::queue_presence(&probe, &slot_queue_name("els", 0)).await.expect("probe slot 0") {
        Presence::NodeDown => 1,
        Presence::Absent => 0,
        Presence::Held => panic!("slot 0 taken for held after its node was killed"),
    };
    let code = sim.institution(0).code.clone();
    amqp.publish(&[event(Infno::Els7002, &code, Some(1), row(Infno::Els7002, "SLOT-DOWN-1", "4"))]).await;
    let config = sim.write_client_config("worker.toml", &worker_toml(&cluster.url(1, &vhost), 100));
    let mut worker = WorkerProcess::start(&config, "cluster-slot-down");
    let stored = async || (sim.records(&RecordFilter::default()).await.total == 1).then_some(());
    eventually("the worker's upload while node 3 is down", Duration::from_secs(60), stored).await;
    assert!(!cluster.is_running(3), "node 3 came back before the upload");

    let logs = without_colours(&worker.logs());
    let connected = logs.lines().find(|l| l.contains("connected to the broker")).unwrap_or_else(|| panic!("no connected line:\n{logs}"));
    assert!(connected.contains(&format!("msgid_slot={expected_slot}")), "expected slot {expected_slot}: {connected}");
    assert!(worker.terminate(Duration::from_secs(30)).success(), "{}", worker.logs());
    amqp.close().await;
    let _ = asker.close(200, "done".into()).await;
    drop(holder);
    cluster.start(3);
    cluster.wait_until_all_running(Duration::from_secs(120));
}

/// Keys of the day the fleet tests publish; each comes in versions 1, 2 and 3 (the
/// quantity is the version), so the platform must end with every key at 3.
const KEYS: usize = 120;

/// The bodies published raw that the fleet must dead-letter, by `message_id`.
const INVALID: [(&str, &str); 3] = [
    ("invalid-not-json", "{not json"),
    ("invalid-no-record", r#"{"infno":"ELS7002","fixmedins_code":"H32128200338","version":1}"#),
    ("invalid-transaction", r#"{"infno":"ELS9999","fixmedins_code":"H32128200338","version":1,"data":{}}"#),
];

/// The day's events as JSON Lines: groups of 20 keys, each group in version 1, then 2,
/// then 3, half of them ELS7002 and half ELS7004.
fn day_of_movements(code: &str) -> String {
    let mut lines = String::new();
    for group in 0..KEYS / 20 {
        for version in 1..=3u64 {
            for k in group * 20..group * 20 + 20 {
                let infno = if k % 2 == 0 { Infno::Els7002 } else { Infno::Els7004 };
                let body = event(infno, code, Some(version), row(infno, &format!("FLEET-{k:03}"), &version.to_string()));
                lines.push_str(&format!("{body}\n"));
            }
        }
    }
    lines
}

/// The quantity of a stored ELS7002 or ELS7004 row.
fn quantity(record: &RecordView) -> &str {
    record.row["stoin_cnt"].as_str().unwrap_or_default()
}

/// A worker fleet of three replicas on the cluster, the simulator it reports to, and the
/// publisher of the day.
struct Fleet {
    sim: TestSimulator,
    vhost: TestVhost,
    config: std::path::PathBuf,
    workers: Vec<WorkerProcess>,
}

impl Fleet {
    /// The topology, the invalid events (published through node 2) and three workers given
    /// the URL of node 1 for credentials and vhost and all three nodes as `amqp.addresses`.
    async fn start(cluster: &Cluster, label: &str) -> Fleet {
        let vhost = cluster.vhost(label);
        let sim = TestSimulator::builder().institutions(1).start();
        let amqp = Amqp::connect(&cluster.url(2, &vhost)).await;
        amqp.declare(&test_retry()).await;
        for (id, body) in INVALID {
            amqp.publish_raw("ELS7002.H32128200338", body.as_bytes(), id).await;
        }
        amqp.close().await;
        let addresses: Vec<String> = cluster.addresses().iter().map(|a| format!("{a:?}")).collect();
        let toml = worker_toml(&cluster.url(1, &vhost), 500)
            .replace("prefetch = 500\n", &format!("prefetch = 500\naddresses = [{}]\n", addresses.join(", ")));
        let config = sim.write_client_config("fleet.toml", &toml);
        let workers = (1..=3).map(|n| WorkerProcess::start(&config, &format!("{label}-{n}"))).collect();
        Fleet { sim, vhost, config, workers }
    }

    /// `els-bridge publish` of the day at `rate` events a second, through the same addresses.
    fn publish(&self, dir: &Path, rate: u32) -> Child {
        let file = dir.join("day.jsonl");
        std::fs::write(&file, day_of_movements(&self.sim.institution(0).code)).unwrap();
        Command::new(env!("CARGO_BIN_EXE_els-bridge"))
            .args(["publish", "--rate", &rate.to_string(), "--config"])
            .arg(&self.config)
            .arg(&file)
            .env_remove("ELS_BRIDGE_CONFIG")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Waits until the platform holds `at_least` records.
    async fn stored(&self, at_least: usize, timeout: Duration) {
        eventually(&format!("{at_least} records at the platform"), timeout, async || {
            (self.sim.records(&RecordFilter::default()).await.total >= at_least).then_some(())
        })
        .await;
    }

    /// The end of the day: publish confirmed every line, every key is at the platform in
    /// version 3, the work queue is empty, the dead letters are exactly the invalid events,
    /// one token was issued, and every worker drains and stops cleanly.
    async fn assert_reported(mut self, cluster: &Cluster, mut publish: Child) {
        let status = wait_for_exit(&mut publish, Duration::from_secs(300));
        let mut out = String::new();
        publish.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let mut err = String::new();
        publish.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let lines = KEYS * 3;
        assert!(status.success(), "publish: {status:?}\n{out}\n{err}");
        assert!(out.contains(&format!("{lines} lines read: {lines} published, 0 invalid, 0 not published")), "{out}");

        let latest = self.every_key_at_version_3(Duration::from_secs(180)).await;
        assert_eq!(latest.records.len(), KEYS);
        self.vhost.wait_for_counts("els.events", QueueCounts::EMPTY, Duration::from_secs(60));

        let live = cluster.nodes().find(|n| cluster.is_running(*n)).expect("a running node");
        let reader = Amqp::connect(&cluster.url(live, &self.vhost)).await;
        let letters = reader.take_all("els.dead").await;
        reader.close().await;
        let mut named: Vec<String> =
            letters.iter().map(|l| l.properties.message_id().as_ref().map(|m| m.to_string()).unwrap_or_default()).collect();
        named.sort();
        let mut expected: Vec<String> = INVALID.iter().map(|(id, _)| (*id).to_owned()).collect();
        expected.sort();
        assert_eq!(named, expected, "dead letters: {:?}", letters.iter().map(|l| &l.headers).collect::<Vec<_>>());
        assert!(letters.iter().all(|l| l.headers.get("x-els-reason").map(String::as_str) == Some("invalid")));

        let tokens = self.sim.tokens().await;
        assert_eq!(tokens.institutions[0].issued, 1, "one token for the fleet: {tokens:?}");
        for worker in &mut self.workers {
            assert!(worker.terminate(Duration::from_secs(60)).success(), "{}", worker.logs());
        }
    }

    /// Waits until the platform holds every key in version 3. On timeout it fails with the
    /// keys that are missing or behind and the end of each worker's log, so that a failure
    /// says which keys were stuck and what the fleet did about them.
    async fn every_key_at_version_3(&self, timeout: Duration) -> RecordsPage {
        let all_at_3 = async || {
            let page = self.sim.records(&RecordFilter { limit: Some(10_000), ..Default::default() }).await;
            if page.total == KEYS && page.records.iter().all(|r| quantity(r) == "3") { Ok(page) } else { Err(page) }
        };
        let failure = |page: RecordsPage| {
            let behind: Vec<String> =
                page.records.iter().filter(|r| quantity(r) != "3").map(|r| format!("{}={}", r.key, quantity(r))).collect();
            format!(
                "timed out after {timeout:?} waiting for every key at version 3: {} of {KEYS} keys at the platform, behind: {behind:?}\n{}",
                page.total,
                self.log_tails()
            )
        };
        until(timeout, Duration::from_millis(200), all_at_3, failure).await
    }

    /// Each worker's warnings and errors and the last lines of its log.
    fn log_tails(&self) -> String {
        let mut tails = String::new();
        for (n, worker) in self.workers.iter().enumerate() {
            let logs = worker.logs();
            let lines: Vec<&str> = logs.lines().collect();
            let alarms = lines.iter().filter(|l| l.contains("WARN") || l.contains("ERROR"));
            let last = &lines[lines.len().saturating_sub(60)..];
            tails.push_str(&format!("--- worker {}: warnings and errors\n", n + 1));
            alarms.for_each(|l| tails.push_str(&format!("{l}\n")));
            tails.push_str(&format!("--- worker {}: last {} lines\n{}\n", n + 1, last.len(), last.join("\n")));
        }
        tails
    }

    /// The longest time between two accepted uploads from `since` on, and the time from
    /// `since` to the first.
    async fn longest_pause(&self, since: chrono::DateTime<chrono::Utc>) -> (Duration, Duration) {
        let calls = self.sim.calls(&CallFilter { limit: Some(100_000), ..Default::default() }).await.calls;
        let mut times: Vec<_> = calls
            .iter()
            .filter(|c| c.infno.as_deref() != Some("ELS7001") && c.return_code == Some(1) && c.time >= since)
            .map(|c| c.time)
            .collect();
        times.sort();
        let gap = |a: chrono::DateTime<chrono::Utc>, b: chrono::DateTime<chrono::Utc>| (b - a).to_std().unwrap_or_default();
        let first = times.first().map_or(Duration::MAX, |t| gap(since, *t));
        let longest = times.windows(2).map(|w| gap(w[0], w[1])).max().unwrap_or_default();
        (first, longest)
    }
}

/// Waits for `child` to exit, at most `timeout`.
fn wait_for_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the process did not exit within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue 15: three workers and `publish` on the cluster, each given the three nodes as
/// `amqp.addresses`, while the node that leads `els.events` is killed with SIGKILL in the
/// middle of the day and started again: uploads pause for seconds, every key ends at the
/// platform in its latest version (the corrections of a key are consumed by different
/// replicas, some of them twice after the kill), the dead letters are exactly the invalid
/// events, and the fleet fetched one token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the three-node cluster: scripts/test.sh runs it with --ignored"]
#[allow(clippy::await_holding_lock, reason = "one runtime per test; the lock only serialises tests")]
async fn a_fleet_reports_the_whole_day_when_the_work_queue_leader_is_killed() {
    let _exclusive = exclusive();
    let cluster = Cluster::from_env();
    cluster.wait_until_all_running(Duration::from_secs(60));
    let fleet = Fleet::start(&cluster, "cluster-fleet-kill").await;
    let dir = tempfile::tempdir().unwrap();
    let publish = fleet.publish(dir.path(), 30);
    fleet.stored(30, Duration::from_secs(60)).await;

    let leader = cluster.wait_for_leader(fleet.vhost.name(), "els.events", ELECTION, |_| true);
    let killed_at = chrono::Utc::now();
    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader(fleet.vhost.name(), "els.events", ELECTION, |n| n != leader);
    fleet.stored(60, Duration::from_secs(120)).await;
    cluster.start(leader);
    cluster.wait_until_all_running(Duration::from_secs(120));

    let (resumed, longest) = fleet.longest_pause(killed_at).await;
    eprintln!("els.events led by node {leader}, then {new_leader}; uploads resumed {resumed:?} after the kill, longest pause {longest:?}");
    assert!(resumed < Duration::from_secs(60), "uploads resumed {resumed:?} after the kill");
    assert!(longest < Duration::from_secs(60), "the longest pause between uploads was {longest:?}");
    fleet.assert_reported(&cluster, publish).await;
}

/// Issue 15: a rolling restart of the three nodes one after the other (each stopped
/// cleanly and started again, as an upgrade does) while the day is published; then a
/// worker is restarted, connecting to a cluster whose stream replicas (`els.tokens`,
/// `els.ledger`) have just rejoined. Every key ends in its latest version, the dead letters
/// are exactly the invalid events and the fleet fetched one token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the three-node cluster: scripts/test.sh runs it with --ignored"]
#[allow(clippy::await_holding_lock, reason = "one runtime per test; the lock only serialises tests")]
async fn a_fleet_reports_the_whole_day_through_a_rolling_restart() {
    let _exclusive = exclusive();
    let cluster = Cluster::from_env();
    cluster.wait_until_all_running(Duration::from_secs(60));
    let mut fleet = Fleet::start(&cluster, "cluster-fleet-rolling").await;
    let dir = tempfile::tempdir().unwrap();
    // 6 a second: a minute of publishing, about as long as the three restarts take.
    let publish = fleet.publish(dir.path(), 6);
    fleet.stored(20, Duration::from_secs(60)).await;

    for n in cluster.nodes() {
        let led: Vec<&str> = ["els.events", "els.tokens", "els.ledger"]
            .into_iter()
            .filter(|q| cluster.leader_of(fleet.vhost.name(), q) == Some(n))
            .collect();
        let stopped_at = chrono::Utc::now();
        cluster.stop(n);
        // The survivors carry on while node n is down: more of the day arrives.
        let before = fleet.sim.records(&RecordFilter::default()).await.total;
        fleet.stored((before + 10).min(KEYS), Duration::from_secs(120)).await;
        let (resumed, longest) = fleet.longest_pause(stopped_at).await;
        eprintln!("node {n} (leading {led:?}) stopped: uploads resumed {resumed:?} after the stop, longest pause since {longest:?}");
        cluster.start(n);
        cluster.wait_until_all_running(Duration::from_secs(120));
    }
    let mut restarted = fleet.workers.remove(0);
    assert!(restarted.terminate(Duration::from_secs(60)).success(), "{}", restarted.logs());
    fleet.workers.push(WorkerProcess::start(&fleet.config, "cluster-fleet-rolling-again"));
    fleet.assert_reported(&cluster, publish).await;
}
