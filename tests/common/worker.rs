//! Worker processes and a small AMQP client for the worker's integration tests: publish
//! events with confirms, read the dead-letter queue, start and stop real `els-bridge
//! worker` processes.

#![allow(dead_code, reason = "each test binary uses a different part of the shared helpers")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use els_bridge::broker::Topology;
use els_bridge::config::{AmqpSettings, RetrySettings};

use super::broker::{TestVhost, unique_vhost};
use super::simulator::TestSimulator;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;

/// A running `els-bridge worker`, killed when dropped.
pub struct WorkerProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl WorkerProcess {
    /// Starts `els-bridge worker --config CONFIG`, logging to a file beside the config.
    pub fn start(config: &Path, name: &str) -> WorkerProcess {
        Self::start_logging(config, name, "info,els_bridge=debug")
    }

    /// [`WorkerProcess::start`] with `RUST_LOG` set to `levels`.
    pub fn start_logging(config: &Path, name: &str, levels: &str) -> WorkerProcess {
        let log = config.with_file_name(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("create the worker log");
        let child = Command::new(env!("CARGO_BIN_EXE_els-bridge"))
            .args(["worker", "--config"])
            .arg(config)
            .env("RUST_LOG", levels)
            .env_remove("ELS_BRIDGE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start els-bridge worker");
        WorkerProcess { child: Some(child), log }
    }

    /// What the worker logged so far (for failure messages only).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The port of the worker's HTTP endpoint, as it logs it once it listens (so a test can
    /// let it bind port 0 rather than guess a free port). Panics after `timeout`.
    pub fn http_port(&self, timeout: Duration) -> u16 {
        let deadline = Instant::now() + timeout;
        loop {
            let logs = without_colours(&self.logs());
            let port = logs
                .lines()
                .filter(|l| l.contains("serving /healthz"))
                .find_map(|l| l.split("address=").nth(1)?.split_whitespace().next()?.rsplit(':').next()?.parse().ok());
            if let Some(port) = port {
                return port;
            }
            assert!(Instant::now() < deadline, "the worker did not report its HTTP address within {timeout:?}:\n{logs}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the exit (within `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("worker still running");
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill -TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the worker") {
                self.assert_closed_cleanly();
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the worker did not stop within {timeout:?} after SIGTERM:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// After SIGTERM, lapin logged no hard error: the connection was closed while the
    /// session's channels were open, not raced by their own closes (once seen as
    /// `UNEXPECTED-FRAME: unexpected channel close-ok`).
    fn assert_closed_cleanly(&self) {
        let logs = without_colours(&self.logs());
        let stop = logs.rfind("SIGTERM received").map_or("", |at| &logs[at..]);
        assert!(!stop.contains("UNEXPECTED-FRAME"), "lapin failed the close after SIGTERM:\n{stop}");
    }

    /// The most memory the worker has held so far (`VmHWM`, its peak resident set), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let pid = self.child.as_ref().expect("worker still running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read the worker's /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc status");
        kib * 1024
    }

    /// Kills the worker with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `text` without the terminal colour sequences (`ESC [ ... m`) of the log format.
pub fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The retry settings of [`worker_toml`]: fast backoff, a long budget.
pub fn test_retry() -> RetrySettings {
    RetrySettings { initial_backoff_ms: 100, max_backoff_ms: 1000, max_elapsed_secs: 600 }
}

/// A worker test's world: the simulator, a vhost of its own with the worker's topology
/// declared, and a client to publish and read queues.
pub struct World {
    /// The platform simulator.
    pub sim: TestSimulator,
    /// The test's vhost (deleted on drop).
    pub vhost: TestVhost,
    /// A client on the vhost.
    pub amqp: Amqp,
}

impl World {
    /// A world around `sim`, its vhost named after `label`.
    pub async fn new(label: &str, sim: TestSimulator) -> World {
        let vhost = unique_vhost(label);
        let amqp = Amqp::connect(vhost.url()).await;
        amqp.declare(&test_retry()).await;
        World { sim, vhost, amqp }
    }

    /// A world with a simulator serving `institutions` (1 or 2).
    pub async fn with_institutions(label: &str, institutions: usize) -> World {
        World::new(label, TestSimulator::builder().institutions(institutions).start()).await
    }
}

/// Writes the configuration of a fast test worker (see [`worker_toml`]) for `sim` and
/// `vhost`, and returns its path.
pub fn worker_config(sim: &TestSimulator, vhost: &TestVhost, linger_ms: u64) -> PathBuf {
    sim.write_client_config("worker.toml", &worker_toml(vhost.url(), linger_ms))
}

/// The `[amqp]`, `[batch]`, `[retry]` and `[http]` sections of a fast test worker.
pub fn worker_toml(amqp_url: &str, linger_ms: u64) -> String {
    format!(
        "[amqp]\nurl = {amqp_url:?}\nprefetch = 500\n\n[batch]\nlinger_ms = {linger_ms}\n\n\
         [retry]\ninitial_backoff_ms = 100\nmax_backoff_ms = 1000\nmax_elapsed_secs = 600\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\n[worker]\ndrain_deadline_secs = 20\n"
    )
}

/// A test's connection to its vhost.
pub struct Amqp {
    connection: Connection,
    channel: Channel,
}

/// A message read from a queue.
#[derive(Debug, Clone)]
pub struct Message {
    /// The body, parsed as JSON.
    pub body: Value,
    /// Headers with string or integer values, as text.
    pub headers: BTreeMap<String, String>,
    /// The properties.
    pub properties: BasicProperties,
}

impl Amqp {
    /// Connects to `url` with a confirm-mode channel.
    pub async fn connect(url: &str) -> Amqp {
        let connection = Connection::connect(url, ConnectionProperties::default()).await.expect("connect to the test vhost");
        let channel = connection.create_channel().await.expect("channel");
        channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm mode");
        Amqp { connection, channel }
    }

    /// Declares the worker's default topology (as a worker would at start-up).
    pub async fn declare(&self, retry: &RetrySettings) {
        Topology::new(&AmqpSettings::default(), retry).declare(&self.connection).await.expect("declare the topology");
    }

    /// Declares `queues` as releases before the delivery limit did: quorum queues without
    /// arguments (the work queue is bound by [`Amqp::declare`] afterwards).
    pub async fn declare_as_an_earlier_release(&self, queues: &[&str]) {
        for queue in queues {
            let mut arguments = FieldTable::default();
            arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
            let options = QueueDeclareOptions { durable: true, ..Default::default() };
            self.channel.queue_declare((*queue).into(), options, arguments).await.expect("declare a queue as before");
        }
    }

    /// Publishes events to `els.events` (routing key `<infno>.<code>`), confirmed one by one.
    pub async fn publish(&self, events: &[Value]) {
        for (i, event) in events.iter().enumerate() {
            let key = format!("{}.{}", event["infno"].as_str().unwrap_or("x"), event["fixmedins_code"].as_str().unwrap_or("x"));
            self.publish_raw(&key, event.to_string().as_bytes(), &format!("test-{i}")).await;
        }
    }

    /// Publishes one body as is (for malformed events).
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8], message_id: &str) {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(message_id.into());
        self.publish_with(routing_key, body, properties).await;
    }

    /// Publishes one body with `properties` to `els.events`, confirmed.
    pub async fn publish_with(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish("els.events".into(), routing_key.into(), BasicPublishOptions::default(), body, properties)
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "the broker refused a test event");
    }

    /// How many messages `queue` holds ready, as the broker answers a passive declare: at
    /// once, where `rabbitmqctl` takes seconds to start on a busy machine.
    pub async fn ready(&self, queue: &str) -> u32 {
        let options = QueueDeclareOptions { passive: true, ..Default::default() };
        self.channel.queue_declare(queue.into(), options, FieldTable::default()).await.expect("passive declare").message_count()
    }

    /// Deletes a queue (and everything in it).
    pub async fn delete_queue(&self, queue: &str) {
        self.channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await.expect("delete a queue");
    }

    /// Takes every message of `queue` (acking them).
    pub async fn take_all(&self, queue: &str) -> Vec<Message> {
        let mut messages = Vec::new();
        while let Some(message) = self.channel.basic_get(queue.into(), BasicGetOptions::default()).await.expect("basic.get") {
            let delivery = message.delivery;
            delivery.ack(BasicAckOptions::default()).await.expect("ack");
            let body = serde_json::from_slice(&delivery.data)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&delivery.data).into_owned()));
            messages.push(Message { body, headers: headers(delivery.properties.headers()), properties: delivery.properties });
        }
        messages
    }

    /// Every entry of the stream `queue`, parsed as JSON, from the first: an end marker is
    /// appended first (confirmed) and read up to, so that nothing written before is missed.
    /// Whoever reads the stream afterwards sees the marker: call it once its writers stopped.
    pub async fn read_stream_to_end(&self, queue: &str) -> Vec<Value> {
        const END: &[u8] = b"{\"test\":\"end of stream\"}";
        let properties = BasicProperties::default().with_delivery_mode(2);
        let confirm = self.channel.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), END, properties);
        assert!(confirm.await.expect("publish").await.expect("confirm").is_ack(), "the broker refused the end marker");
        let channel = self.connection.create_channel().await.expect("channel");
        channel.basic_qos(100, BasicQosOptions::default()).await.expect("basic.qos");
        let mut offset = FieldTable::default();
        offset.insert("x-stream-offset".into(), AMQPValue::LongString("first".into()));
        let mut consumer =
            channel.basic_consume(queue.into(), "read-stream".into(), BasicConsumeOptions::default(), offset).await.expect("consume");
        let mut entries = Vec::new();
        let reading = async {
            while let Some(delivery) = consumer.next().await {
                let delivery = delivery.expect("a stream delivery");
                delivery.ack(BasicAckOptions::default()).await.expect("ack");
                if delivery.data == END {
                    return;
                }
                entries.push(serde_json::from_slice(&delivery.data).expect("a JSON entry"));
            }
            panic!("the stream consumer ended before the end marker");
        };
        tokio::time::timeout(Duration::from_secs(30), reading).await.expect("the stream read to its end within 30 s");
        let _ = channel.close(200, "read".into()).await;
        entries
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

fn headers(table: &Option<FieldTable>) -> BTreeMap<String, String> {
    let Some(table) = table else { return BTreeMap::new() };
    table
        .inner()
        .iter()
        .filter_map(|(name, value)| {
            let text = match value {
                AMQPValue::LongString(s) => s.to_string(),
                AMQPValue::ShortString(s) => s.to_string(),
                AMQPValue::LongLongInt(n) => n.to_string(),
                AMQPValue::LongInt(n) => n.to_string(),
                _ => return None,
            };
            Some((name.to_string(), text))
        })
        .collect()
}
