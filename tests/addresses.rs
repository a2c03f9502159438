//! `amqp.addresses` against the real broker (a vhost per test): a command given several node
//! addresses whose first ones are dead (a closed port, a port that accepts TCP and never
//! speaks AMQP) connects to the live one and does its work; a worker whose node goes away
//! carries on through another address; with every address dead the command fails with one
//! error naming each. The URL's host is never used (it does not resolve), and its password
//! shows in no output.

mod common;

use common::run::{COMMAND_LIMIT, OutputWithin};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::broker::{TestVhost, amqp_address, rabbitmqctl, unique_vhost};
use common::records::{event, row};
use common::relay::Relay;
use common::simulator::{TestSimulator, eventually, test_institutions, write_config};
use common::worker::{Amqp, WorkerProcess, World, test_retry, worker_toml};
use els_bridge::simulator::api::RecordFilter;
use els_bridge::spec::Infno;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A broker user of its own with a password that no output may contain; deleted on drop.
struct TestUser {
    name: String,
    password: String,
}

impl TestUser {
    fn new(vhost: &TestVhost) -> TestUser {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let user = TestUser {
            name: format!("els-test-addresses-{}-{n}", std::process::id()),
            password: format!("Pw-{:x}-never-shown", std::process::id() * 7919 + n),
        };
        rabbitmqctl(&["add_user", &user.name, &user.password]);
        rabbitmqctl(&["set_permissions", "-p", vhost.name(), &user.name, ".*", ".*", ".*"]);
        user
    }

    /// A URL with this user's credentials and `vhost`, on a host that does not resolve:
    /// the addresses replace it.
    fn url(&self, vhost: &TestVhost) -> String {
        format!("amqp://{}:{}@broker.invalid:1/{}", self.name, self.password, vhost.name())
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = common::broker::try_rabbitmqctl(&["delete_user", &self.name]);
    }
}

/// Addresses that do not answer: a closed port, and one that accepts TCP and never speaks
/// (held open by the returned task until it is aborted).
async fn dead_addresses() -> (String, String, JoinHandle<()>) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_address = silent.local_addr().unwrap().to_string();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket); // never read, never written, never closed
        }
    });
    (closed, silent_address, holder)
}

/// The `[amqp]` keys after `url`: the addresses in the order listed, and a short timeout.
fn amqp_keys(addresses: &[&str], shuffle: bool) -> String {
    format!("addresses = {addresses:?}\nshuffle_addresses = {shuffle}\nconnect_timeout_secs = 1\nheartbeat_secs = 1\n")
}

fn publish_config(dir: &Path, url: &str, keys: &str) -> PathBuf {
    let amqp = format!("[amqp]\nurl = {url:?}\n{keys}");
    write_config(dir, "publish.toml", &test_institutions(1), "http://127.0.0.1:1/unused", &amqp)
}

/// Runs `els-bridge publish FILE --config CONFIG` with info logs.
fn publish(file: &Path, config: &Path) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_els-bridge"));
    command.arg("publish").arg(file).arg("--config").arg(config).env_remove("ELS_BRIDGE_CONFIG").env("RUST_LOG", "info");
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("ELS_BRIDGE__")) {
        command.env_remove(name);
    }
    command.stdin(Stdio::null()).output_within(COMMAND_LIMIT).expect("run els-bridge publish")
}

fn show(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Two events of the first test institution, as a JSON Lines file in `dir`.
fn events_file(dir: &Path) -> PathBuf {
    let code = test_institutions(1)[0].code.clone();
    let lines = [
        event(Infno::Els7002, &code, Some(1), row(Infno::Els7002, "IN-ADDR-1", "3")).to_string(),
        event(Infno::Els7002, &code, Some(1), row(Infno::Els7002, "IN-ADDR-2", "5")).to_string(),
    ];
    let file = dir.join("events.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_skips_dead_addresses_and_publishes_through_the_live_node() {
    let vhost = unique_vhost("addresses-publish");
    let amqp = Amqp::connect(vhost.url()).await;
    amqp.declare(&test_retry()).await;
    let user = TestUser::new(&vhost);
    let (closed, silent, holder) = dead_addresses().await;
    let live = amqp_address();
    let dir = tempfile::tempdir().unwrap();
    let config = publish_config(dir.path(), &user.url(&vhost), &amqp_keys(&[&closed, &silent, &live], false));

    let output = publish(&events_file(dir.path()), &config);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("connected to the broker at {live}; before it, no answer from {closed}: ")), "{}", show(&output));
    assert!(stderr.contains(&format!("{silent}: the broker did not complete the connection within 1 s")), "{}", show(&output));
    assert!(!show(&output).contains(&user.password), "{}", show(&output));
    assert_eq!(amqp.take_all("els.events").await.len(), 2, "both events published");

    // Shuffled (the default), any order reaches the live node.
    let shuffled = publish_config(dir.path(), &user.url(&vhost), &amqp_keys(&[&closed, &live, &silent], true));
    let output = publish(&events_file(dir.path()), &shuffled);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains(&format!("connected to the broker at {live}")), "{}", show(&output));
    assert_eq!(amqp.take_all("els.events").await.len(), 2);
    holder.abort();
    amqp.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_address_dead_the_error_names_each_and_never_the_password() {
    let (closed, silent, holder) = dead_addresses().await;
    let dir = tempfile::tempdir().unwrap();
    let url = "amqp://els:Secret-Pa55-never-shown@broker.invalid/els";
    let events = events_file(dir.path());

    let one_url = publish_config(dir.path(), &format!("amqp://els:Secret-Pa55-never-shown@{closed}/els"), "connect_timeout_secs = 1\n");
    let single = publish(&events, &one_url);
    let config = publish_config(dir.path(), url, &amqp_keys(&[&closed, &silent], true));
    let output = publish(&events, &config);
    assert_eq!(
        output.status.code(),
        single.status.code(),
        "the exit status of any other broker failure:\n{}\n{}",
        show(&output),
        show(&single)
    );
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot connect to the broker: none of the broker addresses of amqp.addresses answered: "),
        "{}",
        show(&output)
    );
    assert!(stderr.contains(&format!("{closed}: broker: ")) && stderr.contains("refused"), "{}", show(&output));
    assert!(stderr.contains(&format!("{silent}: the broker did not complete the connection within 1 s")), "{}", show(&output));
    for output in [&output, &single] {
        assert!(!show(output).contains("Secret-Pa55"), "{}", show(output));
    }
    holder.abort();
}

/// A worker given two addresses of the node (two relays to it) uploads through the one it
/// picked; when that one goes away (its connection silent, its port closed), the worker
/// notices by the heartbeat, reconnects with its backoff through the other, and carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_node_goes_away_carries_on_through_another_address() {
    let World { sim, vhost, amqp } = World::new("addresses-worker", TestSimulator::builder().institutions(1).start()).await;
    let code = sim.institution(0).code.clone();
    let user = TestUser::new(&vhost);
    let relays = [Relay::start(amqp_address()).await, Relay::start(amqp_address()).await];
    let [a, b] = [relays[0].address().to_string(), relays[1].address().to_string()];
    let toml = worker_toml(&user.url(&vhost), 100).replace("prefetch = 500\n", &format!("prefetch = 500\n{}", amqp_keys(&[&a, &b], true)));
    let mut worker = WorkerProcess::start(&sim.write_client_config("worker.toml", &toml), "addresses-worker");
    let stored = |count: usize| {
        let sim = &sim;
        async move {
            eventually(&format!("{count} record(s) at the platform"), Duration::from_secs(60), async || {
                (sim.records(&RecordFilter::default()).await.records.len() == count).then_some(())
            })
            .await
        }
    };
    amqp.publish(&[event(Infno::Els7002, &code, Some(1), row(Infno::Els7002, "IN-FAILOVER-1", "1"))]).await;
    stored(1).await;

    let [first, second] = relays;
    let (used, other, other_address) = if first.accepted() > 0 { (first, second, b) } else { (second, first, a) };
    assert_eq!(other.accepted(), 0, "one connection, to the first address that answered");
    used.freeze();
    drop(used); // its port now refuses connections
    amqp.publish(&[event(Infno::Els7002, &code, Some(1), row(Infno::Els7002, "IN-FAILOVER-2", "1"))]).await;
    stored(2).await;
    assert!(other.accepted() > 0, "{}", worker.logs());
    assert!(worker.logs().contains(&format!("connected to the broker at {other_address}")), "{}", worker.logs());
    assert!(!worker.logs().contains(&user.password), "{}", worker.logs());
    assert!(worker.terminate(Duration::from_secs(30)).success(), "{}", worker.logs());
    amqp.close().await;
}
