//! The three-node RabbitMQ 4.3 cluster of the cluster tests (`scripts/rabbitmq.sh start
//! --cluster`), for tests that kill and restart nodes.
//!
//! [`Cluster::from_env`] reads the nodes' AMQP URLs from `ELS_BRIDGE_TEST_CLUSTER_URLS`
//! (newline or comma separated, as `scripts/rabbitmq.sh url --cluster` prints them) and
//! learns each node's name from `rabbitmqctl cluster_status`, matching AMQP ports. The
//! `rabbitmqctl` first on `PATH` must be the cluster's (`scripts/rabbitmq.sh bin-dir
//! --cluster`, which drives node 1 and reaches the others with `-n`), and
//! `ELS_BRIDGE_TEST_AMQP_URL` one of the cluster's URLs: then the vhost helpers of
//! [`super::broker`] work on the cluster (vhosts, users and permissions are cluster-wide).
//! `scripts/test.sh` sets all three.
//!
//! Nodes are numbered 1, 2, 3 as in the script and in their names (`elsc1@localhost`...).
//! Every wait polls a condition against a deadline. Each `rabbitmqctl` call costs one to two
//! seconds; a node that is killed keeps its data, and [`Cluster::start`] brings it back on
//! that data, so it rejoins.

#![allow(dead_code, reason = "each test binary uses a different part of the shared helpers")]

use super::run::OutputWithin;
use std::net::{TcpStream, ToSocketAddrs};
use std::ops::RangeInclusive;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::broker::{TestVhost, try_rabbitmqctl, unique_vhost, url_host_port, url_with_vhost};

/// The script that runs the cluster's nodes.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq.sh");

/// The running cluster: each node's name and AMQP URL (vhost `/`), in node order.
#[derive(Debug, Clone)]
pub struct Cluster {
    names: Vec<String>,
    urls: Vec<String>,
}

impl Cluster {
    /// The cluster of `ELS_BRIDGE_TEST_CLUSTER_URLS` (see the module documentation); panics,
    /// saying how to start it, when the variable is missing or does not match the cluster
    /// that the `rabbitmqctl` on `PATH` reaches.
    pub fn from_env() -> Cluster {
        let hint = "start the cluster with `scripts/rabbitmq.sh start --cluster` and run with \
                    ELS_BRIDGE_TEST_CLUSTER_URLS=\"$(scripts/rabbitmq.sh url --cluster)\", \
                    PATH=\"$(scripts/rabbitmq.sh bin-dir --cluster):$PATH\" and \
                    ELS_BRIDGE_TEST_AMQP_URL set to one of those URLs (scripts/test.sh does)";
        let urls: Vec<String> = std::env::var("ELS_BRIDGE_TEST_CLUSTER_URLS")
            .unwrap_or_default()
            .split(['\n', ','])
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect();
        assert!(urls.len() >= 2, "ELS_BRIDGE_TEST_CLUSTER_URLS names {} node(s), a cluster needs more: {hint}", urls.len());
        let base = super::broker::amqp_url();
        assert!(urls.contains(&base), "ELS_BRIDGE_TEST_AMQP_URL ({base}) is not one of the cluster's URLs: {hint}");

        let status = try_rabbitmqctl(&["cluster_status", "--formatter", "json"]).unwrap_or_else(|error| panic!("{error}: {hint}"));
        let status: serde_json::Value =
            serde_json::from_str(status.trim()).unwrap_or_else(|e| panic!("`rabbitmqctl cluster_status` is not JSON ({e}): {status}"));
        let names = urls
            .iter()
            .map(|url| {
                let port = url_port(url);
                let listeners = status["listeners"].as_object().into_iter().flatten();
                let mut nodes = listeners.filter(|(_, listeners)| {
                    listeners.as_array().into_iter().flatten().any(|l| l["protocol"] == "amqp" && l["port"].as_u64() == Some(port.into()))
                });
                match nodes.next() {
                    Some((name, _)) => name.clone(),
                    None => panic!("no node of the cluster that `rabbitmqctl` reaches listens for AMQP on port {port} ({url}): {hint}"),
                }
            })
            .collect();
        Cluster { names, urls }
    }

    /// The node numbers, `1..=3` for three nodes.
    pub fn nodes(&self) -> RangeInclusive<usize> {
        1..=self.names.len()
    }

    /// Node `n`'s Erlang node name, e.g. `elsc1@localhost`.
    pub fn name(&self, n: usize) -> &str {
        &self.names[self.index(n)]
    }

    /// Node `n`'s AMQP URL with the path of `vhost` (credentials of `ELS_BRIDGE_TEST_CLUSTER_URLS`).
    pub fn url(&self, n: usize, vhost: &TestVhost) -> String {
        url_with_vhost(&self.urls[self.index(n)], vhost.name())
    }

    /// A fresh vhost on the cluster, deleted on drop: [`super::broker::unique_vhost`], here
    /// through the cluster's `rabbitmqctl` (node 1). Use [`Cluster::url`] to reach it on a
    /// given node; [`TestVhost::url`] is the node of `ELS_BRIDGE_TEST_AMQP_URL`.
    pub fn vhost(&self, label: &str) -> TestVhost {
        unique_vhost(label)
    }

    /// `rabbitmqctl -q -n NODE ARGS...` against node `n`: its standard output, or the failure.
    pub fn rabbitmqctl(&self, n: usize, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-n", self.name(n)];
        all.extend_from_slice(args);
        try_rabbitmqctl(&all)
    }

    /// The number of the node that leads the quorum queue or stream `queue` of `vhost`, as
    /// the first node that answers `rabbitmqctl list_queues name leader` reports it; `None`
    /// when no node answers, the queue is unknown, or it has no leader right now. A leader
    /// that was just killed may still be reported for a moment: see [`Cluster::wait_for_leader`].
    pub fn leader_of(&self, vhost: &str, queue: &str) -> Option<usize> {
        let answer =
            self.nodes().find_map(|n| self.rabbitmqctl(n, &["list_queues", "-p", vhost, "name", "leader", "--formatter", "json"]).ok())?;
        let rows: serde_json::Value = serde_json::from_str(answer.trim()).ok()?;
        let leader = rows.as_array()?.iter().find(|row| row["name"] == queue)?["leader"].as_str()?.to_owned();
        self.nodes().find(|&n| self.name(n) == leader)
    }

    /// Polls [`Cluster::leader_of`] until it names a node accepted by `accept` (e.g.
    /// `|n| n != killed`) and returns it; panics with the last answer after `timeout`.
    pub fn wait_for_leader(&self, vhost: &str, queue: &str, timeout: Duration, accept: impl Fn(usize) -> bool) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let leader = self.leader_of(vhost, queue);
            if let Some(n) = leader.filter(|&n| accept(n)) {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "queue {queue:?} of vhost {vhost:?}: no acceptable leader within {timeout:?}, last seen {leader:?}"
            );
            sleep(Duration::from_millis(500));
        }
    }

    /// Kills node `n`'s Erlang VM with SIGKILL (`scripts/rabbitmq.sh node-kill N`), as a
    /// crash would; returns once the process is gone. Its data stays for [`Cluster::start`].
    pub fn kill(&self, n: usize) {
        self.script(&["node-kill", &n.to_string()]);
    }

    /// Stops node `n` cleanly (`scripts/rabbitmq.sh node-stop N`), as a rolling upgrade
    /// does; its data stays for [`Cluster::start`].
    pub fn stop(&self, n: usize) {
        self.script(&["node-stop", &n.to_string()]);
    }

    /// The `host:port` of every node, for `amqp.addresses`.
    pub fn addresses(&self) -> Vec<String> {
        self.urls.iter().map(|url| url_host_port(url)).collect()
    }

    /// Starts node `n` again on its data (`scripts/rabbitmq.sh node-start N`); returns once it
    /// runs, is back in the cluster and answers AMQP (the script waits up to two minutes).
    pub fn start(&self, n: usize) {
        self.script(&["node-start", &n.to_string()]);
    }

    /// Whether node `n` runs RabbitMQ and sees every node of the cluster running.
    pub fn is_running(&self, n: usize) -> bool {
        let probe = "case rabbit:is_running() of true -> length(rabbit_nodes:list_running()); false -> 0 end.";
        self.rabbitmqctl(n, &["eval", probe]).is_ok_and(|seen| seen.trim() == self.names.len().to_string())
    }

    /// Waits until node `n` [runs in the whole cluster](Cluster::is_running) and accepts TCP
    /// connections on its AMQP port; panics after `timeout`.
    pub fn wait_until_running(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let address = url_host_port(&self.urls[self.index(n)]);
        let accepts =
            || address.to_socket_addrs().ok().into_iter().flatten().any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok());
        while !(self.is_running(n) && accepts()) {
            assert!(Instant::now() < deadline, "node {n} ({}) is not running in the cluster after {timeout:?}", self.name(n));
            sleep(Duration::from_millis(500));
        }
    }

    /// [`Cluster::wait_until_running`] for every node, within one `timeout` overall.
    pub fn wait_until_all_running(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for n in self.nodes() {
            self.wait_until_running(n, deadline.saturating_duration_since(Instant::now()));
        }
    }

    /// The position of node `n` in the lists; panics on a number that is not a node.
    fn index(&self, n: usize) -> usize {
        assert!((1..=self.names.len()).contains(&n), "there is no node {n}: the cluster has nodes 1 to {}", self.names.len());
        n - 1
    }

    fn script(&self, args: &[&str]) {
        let output = Command::new("bash")
            .arg(SCRIPT)
            .args(args)
            .output_within(super::run::COMMAND_LIMIT)
            .unwrap_or_else(|e| panic!("cannot run {SCRIPT}: {e}"));
        assert!(
            output.status.success(),
            "`scripts/rabbitmq.sh {}` failed ({}):\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The port of an AMQP URL (5672 when it names none).
fn url_port(url: &str) -> u16 {
    let host_port = url_host_port(url);
    let port = host_port.rsplit_once(':').map(|(_, port)| port).unwrap_or_default();
    port.parse().unwrap_or_else(|_| panic!("no port in the AMQP URL {url}"))
}
