//! The RabbitMQ node of the integration tests (started by `scripts/test.sh`).
//!
//! # Isolation: one virtual host per test
//!
//! [`unique_vhost`] creates a fresh virtual host (`els-test-<label>-<pid>-<n>-<time>`) with
//! `rabbitmqctl add_vhost`, grants the user of [`amqp_url`] full rights on it with
//! `rabbitmqctl set_permissions`, and returns a [`TestVhost`] whose [`TestVhost::url`] is
//! [`amqp_url`] with the vhost as path. Every exchange and queue a test declares, with the
//! production names (`els.events`, `els.dead`, ...), lives in its own vhost, so tests run
//! in parallel without seeing each other. Dropping the [`TestVhost`] (also when the test
//! panics) deletes the vhost and everything in it with `rabbitmqctl delete_vhost`;
//! `scripts/test.sh` removes `els-test-*` vhosts that a killed run left behind.
//!
//! This calls `rabbitmqctl`, so the tests must run on the machine of the node, as root (the
//! Debian wrapper switches to the `rabbitmq` user) or as a user that can read the Erlang
//! cookie. That is how `scripts/test.sh` and CI run them. Each `rabbitmqctl` call costs
//! about half a second.
//!
//! There is no skipping: when the broker or `rabbitmqctl` is missing, these helpers panic
//! with a message that says to run `scripts/test.sh`.
//!
//! # Counting messages
//!
//! [`queue_counts`] / [`TestVhost::queue_counts`] read `rabbitmqctl list_queues`. For classic
//! queues the numbers are current; for quorum queues (`els.events`, `els.dead`) they are
//! refreshed by the queue's periodic tick and trail by up to about 5 seconds (measured:
//! 0 ready right after 5 confirmed publishes, 5 after 5 s). Never assert a single reading:
//! use [`wait_for_counts`] with a timeout of 15 s or more.
//!
//! # Chaos
//!
//! [`stop_app`] / [`start_app`] (or the guard [`broker_outage`]) stop and restart the
//! RabbitMQ application of the whole node: every test running at that moment loses its
//! connections. Put chaos tests in a `tests/*.rs` file of their own (cargo runs test binaries
//! one after another) and take [`exclusive`] in each of them (the tests of one binary run
//! on parallel threads).
//!
//! Only `std` and `serde_json`.

#![allow(dead_code)]

use super::run::OutputWithin;
use std::collections::BTreeMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The broker URL when `ELS_BRIDGE_TEST_AMQP_URL` is not set.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Prefix of the vhosts created by [`unique_vhost`].
pub const VHOST_PREFIX: &str = "els-test-";

/// `ELS_BRIDGE_TEST_AMQP_URL`, or [`DEFAULT_AMQP_URL`]. The default vhost `/`; tests that
/// declare anything should use [`unique_vhost`] instead.
pub fn amqp_url() -> String {
    match std::env::var("ELS_BRIDGE_TEST_AMQP_URL") {
        Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
        _ => DEFAULT_AMQP_URL.to_owned(),
    }
}

/// `host:port` of [`amqp_url`]: the test node's AMQP listener.
pub fn amqp_address() -> String {
    url_host_port(&amqp_url())
}

/// Runs `rabbitmqctl -q ARGS...` and returns its standard output; panics (naming the command
/// and its error output) when it cannot be run or fails.
pub fn rabbitmqctl(args: &[&str]) -> String {
    try_rabbitmqctl(args).unwrap_or_else(|error| panic!("{error}"))
}

/// Like [`rabbitmqctl`], but returns the failure as a message.
pub fn try_rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let output = Command::new("rabbitmqctl").arg("-q").args(args).output_within(super::run::COMMAND_LIMIT).map_err(|e| {
        format!(
            "cannot run `rabbitmqctl {}`: {e}. The integration tests need the local RabbitMQ \
             node: run them with scripts/test.sh (it installs and starts the broker), as root",
            args.join(" ")
        )
    })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`rabbitmqctl {}` failed ({}): {}{}. Is the broker running? Start it with \
             scripts/rabbitmq.sh, or run the tests with scripts/test.sh",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim(),
        ))
    }
}

/// A virtual host of one test; deleted (with all its queues and exchanges) on drop.
#[derive(Debug)]
pub struct TestVhost {
    name: String,
    url: String,
}

impl TestVhost {
    /// The vhost's name, e.g. for [`queue_counts`] or `rabbitmqctl -p`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The AMQP URL of this vhost (the credentials and host of [`amqp_url`]).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The message counts of a queue of this vhost; `None` if there is no such queue.
    pub fn queue_counts(&self, queue: &str) -> Option<QueueCounts> {
        queue_counts(&self.name, queue)
    }

    /// The message counts of every queue of this vhost, by queue name.
    pub fn queues(&self) -> BTreeMap<String, QueueCounts> {
        list_queue_counts(&self.name)
    }

    /// Polls [`TestVhost::queue_counts`] until it equals `expected`; see [`wait_for_counts`].
    pub fn wait_for_counts(&self, queue: &str, expected: QueueCounts, timeout: Duration) {
        wait_for_counts(&self.name, queue, expected, timeout)
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        // Never panic here: a panic while a failed test unwinds would abort the process.
        if let Err(error) = try_rabbitmqctl(&["delete_vhost", &self.name]) {
            eprintln!("warning: could not delete test vhost {}: {error}", self.name);
        }
    }
}

/// Creates a fresh vhost for one test (see the module documentation). `label` (e.g. the
/// test's name) only makes the vhost recognisable in `rabbitmqctl list_vhosts`.
pub fn unique_vhost(label: &str) -> TestVhost {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let label: String = label.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).take(40).collect();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let name =
        format!("{VHOST_PREFIX}{label}-{}-{}-{:x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), nanos % 0x1_0000_0000,);
    let base = amqp_url();
    let user = url_user(&base);
    rabbitmqctl(&["add_vhost", &name]);
    // From here on the vhost exists: let Drop delete it should set_permissions fail.
    let vhost = TestVhost { url: url_with_vhost(&base, &name), name };
    rabbitmqctl(&["set_permissions", "-p", &vhost.name, &user, ".*", ".*", ".*"]);
    vhost
}

/// The messages of one queue, as `rabbitmqctl list_queues` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// `messages_ready`: waiting to be delivered.
    pub ready: u64,
    /// `messages_unacknowledged`: delivered to a consumer, not yet acked.
    pub unacked: u64,
}

impl QueueCounts {
    pub const EMPTY: QueueCounts = QueueCounts { ready: 0, unacked: 0 };

    pub fn new(ready: u64, unacked: u64) -> Self {
        QueueCounts { ready, unacked }
    }

    /// Ready plus unacknowledged (RabbitMQ's `messages`).
    pub fn total(&self) -> u64 {
        self.ready + self.unacked
    }
}

/// The message counts of every queue of `vhost`, by queue name (empty for an unknown vhost).
pub fn list_queue_counts(vhost: &str) -> BTreeMap<String, QueueCounts> {
    let args = ["list_queues", "-p", vhost, "name", "messages_ready", "messages_unacknowledged", "--formatter", "json"];
    let output = rabbitmqctl(&args);
    parse_queue_counts(&output).unwrap_or_else(|error| panic!("cannot read `rabbitmqctl {}`: {error}\n{output}", args.join(" ")))
}

/// The message counts of `queue` in `vhost`; `None` if there is no such queue.
pub fn queue_counts(vhost: &str, queue: &str) -> Option<QueueCounts> {
    list_queue_counts(vhost).remove(queue)
}

/// Polls [`queue_counts`] until it equals `expected`; panics with the last counts seen when
/// `timeout` passes. The counters of quorum queues trail the queue by up to about 5 s.
pub fn wait_for_counts(vhost: &str, queue: &str, expected: QueueCounts, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = queue_counts(vhost, queue);
        if seen == Some(expected) {
            return;
        }
        if Instant::now() >= deadline {
            panic!("queue {queue:?} of vhost {vhost:?}: expected {expected:?} within {timeout:?}, last seen {seen:?}");
        }
        sleep(Duration::from_millis(200));
    }
}

fn parse_queue_counts(json: &str) -> Result<BTreeMap<String, QueueCounts>, String> {
    let value: serde_json::Value = serde_json::from_str(json.trim()).map_err(|e| e.to_string())?;
    let rows = value.as_array().ok_or("not a JSON array")?;
    let count = |row: &serde_json::Value, key: &str| -> Result<u64, String> {
        match &row[key] {
            serde_json::Value::Number(n) => n.as_u64().ok_or_else(|| format!("{key} = {n}")),
            // A queue without a reachable leader reports '' instead of a number.
            other => Err(format!("{key} is not a count: {other}")),
        }
    };
    rows.iter()
        .map(|row| {
            let name = row["name"].as_str().ok_or("a queue without a name")?.to_owned();
            let counts = QueueCounts { ready: count(row, "messages_ready")?, unacked: count(row, "messages_unacknowledged")? };
            Ok((name, counts))
        })
        .collect()
}

/// Stops the RabbitMQ application of the node (`rabbitmqctl stop_app`): connections drop,
/// the port closes, the Erlang node and its data stay. See "Chaos" in the module docs.
pub fn stop_app() {
    rabbitmqctl(&["stop_app"]);
}

/// Starts the application again (`rabbitmqctl start_app`), waits until it has booted
/// (`await_startup`) and the AMQP port of [`amqp_url`] accepts connections.
pub fn start_app() {
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup", "--timeout", "120"]);
    wait_for_amqp_port(Duration::from_secs(30));
}

/// [`stop_app`] now and [`start_app`] when the guard is dropped, also when the test panics,
/// so that a failed chaos test does not leave the broker down for the tests after it.
pub fn broker_outage() -> BrokerOutage {
    stop_app();
    BrokerOutage { restarted: false }
}

#[derive(Debug)]
pub struct BrokerOutage {
    restarted: bool,
}

impl BrokerOutage {
    /// Ends the outage now (same as dropping the guard, but panics on failure).
    pub fn end(mut self) {
        self.restarted = true;
        start_app();
    }
}

impl Drop for BrokerOutage {
    fn drop(&mut self) {
        if !self.restarted {
            let started = try_rabbitmqctl(&["start_app"]).and_then(|_| try_rabbitmqctl(&["await_startup", "--timeout", "120"]));
            if let Err(error) = started {
                eprintln!("warning: could not restart the broker after an outage: {error}");
            }
        }
    }
}

/// Serialises the tests of one binary that take it (chaos tests). Survives a poisoned lock.
/// Holding it across `.await` in a `#[tokio::test]` is fine (every such test has its own
/// runtime on its own thread): `#[allow(clippy::await_holding_lock)]` there.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits until a TCP connection to the host and port of [`amqp_url`] succeeds.
pub fn wait_for_amqp_port(timeout: Duration) {
    let url = amqp_url();
    let address = url_host_port(&url);
    let deadline = Instant::now() + timeout;
    loop {
        let connected =
            address.to_socket_addrs().ok().into_iter().flatten().any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok());
        if connected {
            return;
        }
        if Instant::now() >= deadline {
            panic!("nothing accepts connections on {address} after {timeout:?}: is the broker running? (scripts/test.sh)");
        }
        sleep(Duration::from_millis(200));
    }
}

/// `scheme://user:pass@host:port` of an AMQP URL, without path and query.
fn url_authority(url: &str) -> (&str, &str, &str) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    (scheme, &rest[..end], &rest[end..])
}

/// The URL with its path replaced by `vhost` (a name that needs no percent-encoding).
pub(crate) fn url_with_vhost(url: &str, vhost: &str) -> String {
    let (scheme, authority, path_and_query) = url_authority(url);
    let query = path_and_query.find('?').map(|i| &path_and_query[i..]).unwrap_or("");
    format!("{scheme}://{authority}/{vhost}{query}")
}

/// The (percent-decoded) user name of the URL; `guest` when it has none, as in lapin.
fn url_user(url: &str) -> String {
    let (_, authority, _) = url_authority(url);
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => percent_decode(userinfo.split(':').next().unwrap_or("guest")),
        None => "guest".to_owned(),
    }
}

/// `host:port` of the URL (port 5672 or, for amqps, 5671 when none is given).
pub(crate) fn url_host_port(url: &str) -> String {
    let (scheme, authority, _) = url_authority(url);
    let host_port = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    let has_port = match host_port.rfind(']') {
        Some(bracket) => host_port[bracket..].contains(':'),
        None => host_port.contains(':'),
    };
    if has_port {
        host_port.to_owned()
    } else {
        let port = if scheme == "amqps" { 5671 } else { 5672 };
        format!("{host_port}:{port}")
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        if let (b'%', Some(hex)) = (bytes[i], hex) {
            let hex = std::str::from_utf8(hex).expect("ASCII hex digits");
            out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
