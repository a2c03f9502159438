//! The benchmark driver of issue 7: how close els-bridge comes to the broker's own limit.
//!
//! Run through `bench/run.sh` (which builds in release and starts RabbitMQ), or directly:
//!
//! ```sh
//! cargo build --release --bin els-bridge --example bench
//! target/release/examples/bench --scenarios 1,2 --events 50000
//! ```
//!
//! Every scenario gets a fresh RabbitMQ virtual host (`rabbitmqctl add_vhost`, deleted at
//! the end) and a fresh simulator process; workers are real `els-bridge worker` processes
//! of the release binary. Figures come from the simulator's inspection API (counters and
//! the call log: the time, rows and keys of every call), from this driver's own clocks
//! (publish times), and from `/proc` (CPU time, peak RSS). Results are written as JSON and
//! Markdown to `--out`.
//!
//! Scenarios:
//! 1. the physical limit: publish N mixed events with confirms (msg/s); drain them with a
//!    minimal lapin consumer acking each message, same prefetch as the worker (msg/s);
//!    for reference the same drain acking `multiple` every 100, held in 12 lanes like the
//!    worker (a lane's 100 acks sent together), and a concurrent
//!    publish + minimal consume; and the simulator's own limit (8 clients uploading
//!    100-row calls back to back, records/s), which bounds scenario 2 from the other side;
//! 2. els-bridge draining the same pre-filled queue into the simulator (records accepted
//!    per second, ratio to 1), and with the worker running while N events are published as
//!    fast as the broker confirms (first publish → last record accepted);
//! 3. and 4. steady publish rates below saturation: upload calls vs ⌈records/100⌉ per lane,
//!    and latency from publish to acceptance (p50/p99);
//! 5. backlog drain: events queued before the worker starts, platform latency, in-flight
//!    cap C: records/s vs C × 100 / latency per institution, and the worker's peak RSS;
//! 6. scale-out when platform-bound: 1 vs 2 worker processes;
//! 7. back-fill with `els-bridge send` (a file of N rows, platform latency): rows/s vs
//!    C × 100 / latency, at cap 1 (one call at a time, as `send` did before issue 19), at
//!    cap C, and at cap C with `[amqp]` (claims and receipts in the ledger);
//! 8. adaptive concurrency: the backlog drain into a platform that slows under concurrency
//!    (latency grows with the calls in progress beyond its capacity), with fixed caps 1, 2,
//!    4, 8 and adaptive with cap 8, side by side: records/s and the most calls in flight
//!    per institution seen by the simulator;
//! 9. start-up on a full ledger: the ledger stream filled with D days × R receipted rows
//!    (a claim, a receipt of 100 rows and a release per call), then a worker started:
//!    seconds from its start to consuming the work queue, and its peak RSS;
//! 10. the drain ratio, interleaved: rounds of the minimal consumer with pipelined acks,
//!     the consumer holding deliveries in 12 lanes, and the worker's drain, one right after
//!     the other, so that each ratio compares runs seconds apart (the machine's load moves
//!     the minimal consumer by far more than a few per cent from one minute to the next);
//!     each round's ratios and CPU per record, and their medians.

#[path = "../tests/common/records.rs"]
mod records;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use els_bridge::broker::Topology;
use els_bridge::config::{AmqpSettings, Config, RetrySettings};
use els_bridge::platform::{MsgIds, Outcome, PlatformClient};
use els_bridge::simulator::api::{CallView, CallsPage, Counters, Latency};
use els_bridge::spec::{Infno, Record};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, PublisherConfirm};
use serde_json::{Value, json};

/// The two test institutions (the same as the integration tests').
const INSTITUTIONS: [(&str, &str); 2] = [("H32128200338", "靖江市人民医院"), ("H32010600021", "南京市第一医院")];
/// The work queue (contract §2 default).
const QUEUE: &str = "els.events";
const EXCHANGE: &str = "els.events";

#[derive(Parser, Debug, Clone)]
#[command(about = "Benchmarks of issue 7 against the local RabbitMQ and the simulator", args_override_self = true)]
struct Args {
    /// Scenarios to run (1–10), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,5,6,7,8,9,10", action = clap::ArgAction::Set, num_args = 1)]
    scenarios: Vec<u8>,
    /// Small sizes for a quick check (each size below can still be given).
    #[arg(long)]
    quick: bool,
    /// Events of scenarios 1 and 2 (default 200000; quick 20000).
    #[arg(long)]
    events: Option<u64>,
    /// Rounds of scenario 10, each of --events events (default 3; quick 1).
    #[arg(long)]
    ratio_rounds: Option<u32>,
    /// Events queued before the worker starts in scenario 5 (default 1000000; quick 40000).
    #[arg(long)]
    backlog: Option<u64>,
    /// Rows of the back-fill file of scenario 7 (default 100000; quick 10000).
    #[arg(long)]
    backfill: Option<u64>,
    /// Platform latency of scenario 7 (ms).
    #[arg(long, default_value_t = 200)]
    backfill_latency_ms: u64,
    /// Receipted rows in the ledger of scenario 9 (default 35 days × 30000 = 1050000; quick 100000).
    #[arg(long)]
    ledger_rows: Option<u64>,
    /// Events of each run of scenario 6 (default 200000; quick 30000).
    #[arg(long)]
    scale_events: Option<u64>,
    /// Steady runs of scenarios 3/4 as RATE:LATENCY_MS (events/s over all lanes : added
    /// platform latency).
    #[arg(long, value_delimiter = ',', default_value = "1200:0,120:0,120:200", action = clap::ArgAction::Set, num_args = 1)]
    steady: Vec<String>,
    /// Length of each steady run in seconds (default 60; quick 15).
    #[arg(long)]
    steady_secs: Option<u64>,
    /// amqp.prefetch of the workers, and the prefetch of the minimal consumer.
    #[arg(long, default_value_t = 1000)]
    prefetch: u16,
    /// batch.linger_ms of the workers.
    #[arg(long, default_value_t = 2000)]
    linger_ms: u64,
    /// batch.max_in_flight_per_institution (the cap C) of the workers.
    #[arg(long, default_value_t = 4)]
    cap: usize,
    /// Platform latency of scenario 5 (ms).
    #[arg(long, default_value_t = 200)]
    backlog_latency_ms: u64,
    /// Platform latency of scenario 6 (ms).
    #[arg(long, default_value_t = 500)]
    scale_latency_ms: u64,
    /// Events queued before each run of scenario 8 (default 200000; quick 20000).
    #[arg(long)]
    adaptive_events: Option<u64>,
    /// Scenario 8: calls in progress at once (over all institutions) the platform serves at
    /// its base latency (--backlog-latency-ms).
    #[arg(long, default_value_t = 6)]
    congestion_capacity: u64,
    /// Scenario 8: latency added per call in progress beyond --congestion-capacity (ms).
    #[arg(long, default_value_t = 200)]
    congestion_ms: u64,
    /// batch.adaptive_concurrency of the workers (unset: the worker's default).
    #[arg(long)]
    adaptive: Option<bool>,
    /// Publisher confirms outstanding at once.
    #[arg(long, default_value_t = 512)]
    confirm_window: usize,
    /// The els-bridge binary (release).
    #[arg(long, default_value = "target/release/els-bridge")]
    bin: PathBuf,
    /// Where results, configurations and logs go.
    #[arg(long, default_value = "bench/results/latest")]
    out: PathBuf,
    /// Broker base URL (without vhost).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672")]
    amqp: String,
    /// Profile the workers and the simulator with `perf record` (cpu-clock, DWARF call
    /// graphs) while they work; reports go to `--out` as `<process>.perf.txt`.
    #[arg(long)]
    perf: bool,
    /// Run each worker under valgrind's callgrind and report the instructions it executed
    /// per record (start-up and shutdown included): a count that does not depend on the
    /// machine's load, unlike the CPU figures. Such a worker runs some 40 times slower, so
    /// its rates and CPU figures mean nothing; keep --events to about 20000 (scenario 2).
    #[arg(long)]
    callgrind: bool,
    /// TOML appended to every worker's configuration, for experiments with sections the
    /// driver does not write itself, e.g. `[ledger]` (a newline is `\n` in the shell's $'...').
    #[arg(long, default_value = "")]
    worker_extra: String,
    /// RUST_LOG of the worker processes.
    #[arg(long, default_value = "info")]
    worker_log: String,
}

impl Args {
    fn events(&self) -> u64 {
        self.events.unwrap_or(if self.quick { 20_000 } else { 200_000 })
    }
    fn ratio_rounds(&self) -> u32 {
        self.ratio_rounds.unwrap_or(if self.quick { 1 } else { 3 }).max(1)
    }
    fn backlog(&self) -> u64 {
        self.backlog.unwrap_or(if self.quick { 40_000 } else { 1_000_000 })
    }
    fn backfill(&self) -> u64 {
        self.backfill.unwrap_or(if self.quick { 10_000 } else { 100_000 })
    }
    fn ledger_rows(&self) -> u64 {
        self.ledger_rows.unwrap_or(if self.quick { 100_000 } else { 35 * 30_000 })
    }
    fn scale_events(&self) -> u64 {
        self.scale_events.unwrap_or(if self.quick { 30_000 } else { 200_000 })
    }
    fn adaptive_events(&self) -> u64 {
        self.adaptive_events.unwrap_or(if self.quick { 20_000 } else { 200_000 })
    }
    fn steady_secs(&self) -> u64 {
        self.steady_secs.unwrap_or(if self.quick { 15 } else { 60 })
    }
}

// --- time, /proc -----------------------------------------------------------------------

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

fn us_of(time: &chrono::DateTime<chrono::Utc>) -> i64 {
    time.timestamp_micros()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// utime + stime of a process, in seconds (USER_HZ is 100 on Linux).
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(14) + ticks(15)) / 100.0
}

/// (busy, total) jiffies of the whole machine.
fn machine_ticks() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

/// The RabbitMQ node's Erlang VM.
fn broker_pid() -> Option<u32> {
    let mut best = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("beam.smp") && cmdline.contains("rabbit") && cmdline.contains("boot") && !cmdline.contains("rabbitmqctl") {
            best = Some(pid);
        }
    }
    best
}

/// Waits (at most a minute) until the broker has used less than 0.1 cores for a whole
/// second: after a large run it goes on deleting the old vhost's queues and compacting its
/// logs for a while, which would otherwise count against the next measurement (its CPU per
/// record varied between 29 and 50 µs in identical drains before this). Returns the wait.
async fn quiet_broker() -> Duration {
    let started = Instant::now();
    let Some(pid) = broker_pid() else { return Duration::ZERO };
    while started.elapsed() < Duration::from_secs(60) {
        let before = cpu_secs(pid);
        tokio::time::sleep(Duration::from_secs(1)).await;
        if cpu_secs(pid) - before < 0.1 {
            break;
        }
    }
    started.elapsed()
}

/// CPU used by the processes of a scenario and by the whole machine between two points.
struct CpuMeter {
    pids: Vec<(String, u32)>,
    start: Vec<f64>,
    machine: (f64, f64),
    at: Instant,
}

impl CpuMeter {
    fn start(pids: Vec<(String, u32)>) -> Self {
        let start = pids.iter().map(|(_, p)| cpu_secs(*p)).collect();
        CpuMeter { pids, start, machine: machine_ticks(), at: Instant::now() }
    }

    /// {name: cores used on average}, plus `machine` (busy share of all cores × cores).
    fn stop(&self) -> Value {
        let secs = self.at.elapsed().as_secs_f64().max(1e-3);
        let mut out = serde_json::Map::new();
        let mut ours = 0.0;
        for ((name, pid), start) in self.pids.iter().zip(&self.start) {
            let used = (cpu_secs(*pid) - start) / secs;
            ours += used;
            out.insert(name.clone(), json!(round2(used)));
        }
        let (busy, total) = machine_ticks();
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        let machine = (busy - self.machine.0) / (total - self.machine.1).max(1.0) * cores;
        out.insert("machine".into(), json!(round2(machine)));
        // What other processes (builds, tests of other people) took meanwhile; the broker
        // also serves their vhosts, so its share is not all ours.
        out.insert("others".into(), json!(round2((machine - ours).max(0.0))));
        Value::Object(out)
    }
}

/// `pids` plus this driver (publisher and minimal consumer).
fn with_self(pids: &[(String, u32)]) -> Vec<(String, u32)> {
    let mut all = pids.to_vec();
    all.push(("driver".into(), std::process::id()));
    all
}

/// The median of `values` (the mean of the middle two for an even count), rounded to 0.01.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() {
        0 => None,
        len if len % 2 == 1 => Some(round2(values[mid])),
        _ => Some(round2((values[mid - 1] + values[mid]) / 2.0)),
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The instructions per record of a run under `--callgrind`, as "; N worker instructions
/// per record (callgrind, ...)", or nothing.
fn instructions(run: &Value) -> String {
    run.get("worker_instructions_per_record")
        .map_or(String::new(), |n| format!("; {n} worker instructions per record (callgrind, start-up and shutdown included)"))
}

// --- RabbitMQ ----------------------------------------------------------------------------

fn rabbitmqctl(args: &[&str]) -> Result<String> {
    let output = Command::new("rabbitmqctl").arg("-q").args(args).stdin(Stdio::null()).output().context("run rabbitmqctl")?;
    if !output.status.success() {
        bail!("rabbitmqctl {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A fresh virtual host, deleted on drop.
struct Vhost {
    name: String,
    url: String,
}

impl Vhost {
    fn create(base: &str, label: &str) -> Result<Vhost> {
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
        let name = format!("els-bench-{label}-{}-{stamp}", std::process::id());
        rabbitmqctl(&["add_vhost", &name])?;
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"])?;
        Ok(Vhost { url: format!("{base}/{name}"), name })
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        if let Err(error) = rabbitmqctl(&["delete_vhost", &self.name]) {
            eprintln!("bench: {error}");
        }
    }
}

async fn connect(url: &str) -> Result<Connection> {
    Connection::connect(url, ConnectionProperties::default()).await.with_context(|| format!("connect to {url}"))
}

/// Declares the worker's topology (the work queue is the quorum queue `els.events`).
async fn declare(url: &str) -> Result<()> {
    let connection = connect(url).await?;
    Topology::new(&AmqpSettings::default(), &RetrySettings::default()).declare(&connection).await?;
    let _ = connection.close(200, "declared".into()).await;
    Ok(())
}

/// (ready messages, consumers) of the work queue.
async fn queue_state(channel: &Channel) -> Result<(u32, u32)> {
    let options = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
    let queue = channel.queue_declare(QUEUE.into(), options, FieldTable::default()).await?;
    Ok((queue.message_count(), queue.consumer_count()))
}

// --- events ------------------------------------------------------------------------------

/// Mixed events: event `i` goes to lane `i % 12` (2 institutions × 6 transactions), with
/// the record key `K<i>` and version 1; bodies are built from per-lane templates.
struct Events {
    lanes: Vec<(String, String, String)>,
}

impl Events {
    const KEY: &str = "@@KEY@@";

    fn new() -> Self {
        let mut lanes = Vec::new();
        for (code, _) in INSTITUTIONS {
            for infno in Infno::UPLOADS {
                let body = records::event(infno, code, Some(1), records::row(infno, Self::KEY, "7")).to_string();
                let (prefix, suffix) = body.split_once(Self::KEY).expect("the key placeholder");
                lanes.push((format!("{}.{code}", infno.as_str()), prefix.to_owned(), suffix.to_owned()));
            }
        }
        Events { lanes }
    }

    fn key(i: u64) -> String {
        format!("K{i:09}")
    }

    fn index(key: &str) -> Option<u64> {
        key.strip_prefix('K')?.parse().ok()
    }

    /// (routing key, body) of event `i`.
    fn get(&self, i: u64) -> (&str, Vec<u8>) {
        let (routing, prefix, suffix) = &self.lanes[(i % self.lanes.len() as u64) as usize];
        let mut body = Vec::with_capacity(prefix.len() + suffix.len() + 10);
        body.extend_from_slice(prefix.as_bytes());
        body.extend_from_slice(Self::key(i).as_bytes());
        body.extend_from_slice(suffix.as_bytes());
        (routing, body)
    }

    fn body_len(&self) -> usize {
        self.get(0).1.len()
    }
}

/// What a publish run did.
struct Published {
    count: u64,
    first_us: i64,
    last_confirm_us: i64,
    /// Publish time of every event (µs since the epoch), when asked for.
    times: Vec<i64>,
}

impl Published {
    fn rate(&self) -> f64 {
        self.count as f64 / ((self.last_confirm_us - self.first_us) as f64 / 1e6)
    }
}

/// Publishes events `first..first + count` to the events exchange with confirms (at most
/// `window` outstanding), at `rate` events/s or as fast as the broker confirms; keeps every
/// publish time when asked.
async fn publish(
    url: &str,
    events: &Events,
    first: u64,
    count: u64,
    rate: Option<f64>,
    window: usize,
    keep_times: bool,
) -> Result<Published> {
    let connection = connect(url).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut outstanding: VecDeque<PublisherConfirm> = VecDeque::with_capacity(window + 1);
    let mut times = Vec::with_capacity(if keep_times { count as usize } else { 0 });
    let started = Instant::now();
    let first_us = now_us();
    let progress_every = (count / 10).max(1);
    for n in 0..count {
        let i = first + n;
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(n as f64 / rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let (routing, body) = events.get(i);
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(format!("bench-{i}").into())
            .with_timestamp((now_us() / 1000) as u64);
        if keep_times {
            times.push(now_us());
        }
        let confirm = channel.basic_publish(EXCHANGE.into(), routing.into(), BasicPublishOptions::default(), &body, properties).await?;
        outstanding.push_back(confirm);
        while outstanding.len() >= window {
            let confirmation = outstanding.pop_front().expect("outstanding").await?;
            if !confirmation.is_ack() {
                bail!("the broker nacked a publish");
            }
        }
        if (n + 1) % progress_every == 0 {
            eprint!("\r  published {}/{count}   ", n + 1);
        }
    }
    for confirm in outstanding {
        if !confirm.await?.is_ack() {
            bail!("the broker nacked a publish");
        }
    }
    let last_confirm_us = now_us();
    eprintln!();
    let _ = connection.close(200, "published".into()).await;
    Ok(Published { count, first_us, last_confirm_us, times })
}

/// What a minimal consumer did.
struct Drained {
    first_us: i64,
    last_us: i64,
}

impl Drained {
    /// Messages per second of a drain of `n` messages, from the first delivery to the last.
    fn rate(&self, n: u64) -> f64 {
        n as f64 / ((self.last_us - self.first_us).max(1) as f64 / 1e6)
    }
}

/// How the minimal consumer acks.
#[derive(Debug, Clone, Copy)]
enum Acks {
    /// One ack per delivery, sent without waiting for the previous one (the broker's own
    /// consume-and-ack rate: the physical limit).
    EachPipelined,
    /// One ack per delivery, each awaited before the next delivery is taken (what a loop of
    /// `delivery.ack().await` gets: lapin hands every frame to its I/O thread).
    EachAwaited,
    /// `multiple` every n deliveries.
    Multiple(u64),
    /// Like the worker: deliveries held in `lanes` lanes (round robin), a lane's deliveries
    /// acked one by one, all at once, when it holds `rows`.
    HeldInLanes { lanes: usize, rows: usize },
}

/// A minimal consumer: prefetch, consume, ack as `acks` says, until `count` deliveries.
/// Acks one delivery, sent to lapin's I/O thread now, awaited later.
fn ack_one(delivery: &lapin::message::Delivery) -> impl Future<Output = Result<bool>> + use<> {
    let acker = delivery.acker.clone();
    async move { acker.ack(BasicAckOptions::default()).await.map_err(anyhow::Error::from) }
}

async fn drain_minimal(url: &str, prefetch: u16, count: u64, acks: Acks) -> Result<Drained> {
    let connection = connect(url).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer =
        channel.basic_consume(QUEUE.into(), "bench-minimal".into(), BasicConsumeOptions::default(), FieldTable::default()).await?;
    let mut pending = futures_util::stream::FuturesUnordered::new();
    let mut held: Vec<Vec<lapin::message::Delivery>> = Vec::new();
    let (mut first_us, mut seen) = (0, 0u64);
    while seen < count {
        let next = tokio::select! {
            Some(acked) = pending.next(), if !pending.is_empty() => {
                let _: bool = acked?;
                continue;
            }
            next = tokio::time::timeout(Duration::from_secs(60), consumer.next()) => next,
        };
        let delivery =
            next.map_err(|_| anyhow!("no delivery for 60 s after {seen} of {count}"))?.ok_or_else(|| anyhow!("the consumer ended"))??;
        if seen == 0 {
            first_us = now_us();
        }
        seen += 1;
        match acks {
            Acks::EachPipelined => pending.push(ack_one(&delivery)),
            Acks::EachAwaited => {
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Acks::Multiple(n) => {
                if seen.is_multiple_of(n) || seen == count {
                    delivery.ack(BasicAckOptions { multiple: true }).await?;
                }
            }
            Acks::HeldInLanes { lanes, rows } => {
                held.resize_with(lanes, Vec::new);
                let lane = (seen as usize) % lanes;
                held[lane].push(delivery);
                let full: Vec<usize> = if seen == count { (0..lanes).collect() } else { vec![lane] };
                for lane in full {
                    if held[lane].len() >= rows || seen == count {
                        for delivery in held[lane].drain(..) {
                            pending.push(ack_one(&delivery));
                        }
                    }
                }
            }
        }
    }
    while let Some(acked) = pending.next().await {
        acked?;
    }
    let last_us = now_us();
    let _ = connection.close(200, "drained".into()).await;
    Ok(Drained { first_us, last_us })
}

/// A fold that ignores its entries: the probe only times appends.
struct Ignore;

impl els_bridge::broker::log::Fold for Ignore {
    type Change = Value;
    type Read<'de> = Value;
    fn apply(&mut self, _change: Value) {}
}

/// Times appends to a stream log like the ledger's (publish with confirm, then wait until
/// the own consumer has read the entry back): `sequential` one after another, then
/// `parallel` appenders at once. Entries look like a 100-key claim. Returns JSON with
/// p50/p99 in ms.
async fn stream_append_round_trip(url: &str, sequential: usize, parallel: usize) -> Result<Value> {
    use els_bridge::broker::log::{LogSettings, StreamLog};
    let connection = connect(url).await?;
    let settings = LogSettings { name: "bench.probe".into(), max_age: "1D".into(), replay_from: chrono::Utc::now() };
    let log = Arc::new(StreamLog::open(&connection, &settings, Ignore).await?);
    let entry = json!({"claim": {"id": "0123456789abcdef0123456789abcdef", "institution": INSTITUTIONS[0].0, "infno": "ELS7002",
        "keys": (0..100).map(|i| json!([Events::key(i), 1])).collect::<Vec<_>>(), "at": "2026-11-25T00:00:00Z"}});
    let summary = |mut ms: Vec<f64>| {
        ms.sort_by(f64::total_cmp);
        json!({"appends": ms.len(), "p50": round2(percentile(&ms, 50.0)), "p99": round2(percentile(&ms, 99.0))})
    };
    let mut one_by_one = Vec::new();
    for _ in 0..sequential {
        let t = Instant::now();
        log.append(entry.clone()).await?;
        one_by_one.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..parallel {
        let (log, entry) = (Arc::clone(&log), entry.clone());
        tasks.spawn(async move {
            let mut ms = Vec::new();
            for _ in 0..sequential / parallel.max(1) {
                let t = Instant::now();
                log.append(entry.clone()).await?;
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(ms)
        });
    }
    let mut concurrent = Vec::new();
    while let Some(done) = tasks.join_next().await {
        concurrent.extend(done??);
    }
    drop(log);
    let _ = connection.close(200, "probed".into()).await;
    Ok(
        json!({ "one_at_a_time_ms": summary(one_by_one), format!("{parallel}_at_once_ms"): summary(concurrent), "entry_bytes": entry.to_string().len() }),
    )
}

// --- processes ---------------------------------------------------------------------------

/// A child process (simulator or worker), killed on drop.
struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, then SIGKILL after `grace`.
    fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("bench: {} did not stop within {grace:?}; killing it", self.name);
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn institutions_toml() -> String {
    let mut text = String::new();
    for (i, (code, name)) in INSTITUTIONS.iter().enumerate() {
        let _ = write!(
            text,
            r#"
[[institutions]]
fixmedins_code = "{code}"
fixmedins_name = "{name}"
app_code = "app-{code}"
auth_code = "auth-{i}-secret"
csb_access_key = "ak-{code}"
csb_secret_key = "sk-{i}-c2VjcmV0LWtleQ=="
mdtrtarea_admvs = "321282"
insuplc_admdvs = "321282"
recer_sys_code = "ELS"
cainfo = "bench-ca-info"
signtype = "SM3"
infver = "V1.0"
opter_type = "3"
opter = "els-bridge"
opter_name = "els-bridge"
fixmedins_soft_fcty = "els-bridge bench"
"#
        );
    }
    text
}

/// The simulator, with its admin API.
struct Sim {
    proc: Proc,
    base: String,
    http: reqwest::Client,
    config: Config,
    /// (capacity, ms per call beyond it) added to the latency (scenario 8).
    congestion: Option<(u64, u64)>,
}

impl Sim {
    fn start(args: &Args, dir: &Path, name: &str, expected_calls: u64) -> Result<Sim> {
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, format!("[platform]\nurl = \"http://127.0.0.1:1/unused\"\n{}", institutions_toml()))?;
        let log = dir.join(format!("{name}.log"));
        let mut child = Command::new(&args.bin)
            .args(["simulate", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config_path)
            .args(["--call-log-capacity", &(expected_calls + 2000).to_string()])
            .args(["--daily-call-limit", "100000000"])
            .env("RUST_LOG", "warn")
            .env_remove("ELS_BRIDGE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("start {} simulate", args.bin.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = sender.send(reader.read_line(&mut line).map(|_| line));
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let proc = Proc { name: name.into(), child: Some(child), log };
        let line = receiver.recv_timeout(Duration::from_secs(30)).context("the simulator did not print its address")??;
        let addr: SocketAddr =
            line.trim().strip_prefix("listening on ").and_then(|a| a.parse().ok()).ok_or_else(|| anyhow!("simulator said {line:?}"))?;
        let base = format!("http://{addr}");
        let client_toml = format!("[platform]\nurl = \"{base}/api/commonInterfaca\"\n{}", institutions_toml());
        let config = Config::from_toml(&client_toml, Vec::new())?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
        Ok(Sim { proc, base, http, config, congestion: None })
    }

    fn url(&self) -> String {
        format!("{}/api/commonInterfaca", self.base)
    }

    async fn counters(&self) -> Result<Counters> {
        Ok(self.http.get(format!("{}/admin/counters", self.base)).send().await?.error_for_status()?.json().await?)
    }

    async fn set_latency(&self, ms: u64) -> Result<()> {
        if ms == 0 {
            self.http.delete(format!("{}/admin/faults/latency", self.base)).send().await?.error_for_status()?;
        } else {
            let (capacity, per_concurrent_ms) = self.congestion.unwrap_or((1, 0));
            let body = serde_json::to_string(&Latency { capacity, per_concurrent_ms, ..Latency::between(ms, ms) })?;
            self.http
                .put(format!("{}/admin/faults/latency", self.base))
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await?
                .error_for_status()?;
        }
        Ok(())
    }

    async fn reset(&self) -> Result<()> {
        self.http.post(format!("{}/admin/reset", self.base)).send().await?.error_for_status()?;
        Ok(())
    }

    /// The whole call log, oldest first.
    async fn calls(&self) -> Result<(Vec<CallView>, u64)> {
        let mut calls = Vec::new();
        let mut since = 0;
        loop {
            let page: CallsPage = self
                .http
                .get(format!("{}/admin/calls?since={since}&limit=2000", self.base))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let Some(last) = page.calls.last().map(|c| c.seq) else { return Ok((calls, page.dropped)) };
            since = last;
            calls.extend(page.calls);
            if since >= page.last_seq {
                return Ok((calls, page.dropped));
            }
        }
    }

    /// The simulator's own limit: `clients` clients of the project's uploading 100-row
    /// calls back to back for `seconds`; records accepted per second.
    async fn capacity(&self, clients: u16, seconds: u64) -> Result<f64> {
        let institution = self.config.institutions[0].clone();
        let token = {
            let client = PlatformClient::new(&self.config.platform, Arc::new(MsgIds::new(19)))?;
            match client.fetch_token(&institution).await.outcome {
                Outcome::Accepted(data) => data.get("accessToken").and_then(Value::as_str).unwrap_or_default().to_owned(),
                other => bail!("ELS7001 answered {other}"),
            }
        };
        let started = Instant::now();
        let deadline = started + Duration::from_secs(seconds);
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..clients {
            // A msgid slot of its own per client (each numbers up to 500 calls a second).
            let client = PlatformClient::new(&self.config.platform, Arc::new(MsgIds::new(c)))?;
            let (institution, token) = (institution.clone(), token.clone());
            let records: Vec<Record> = (0..100)
                .map(|r| {
                    let row = Value::Object(records::row(Infno::Els7002, &format!("CAP-{c}-{r}"), "1"));
                    Record::parse_value(Infno::Els7002, &row).map_err(|e| anyhow!("{e:?}"))
                })
                .collect::<Result<_>>()?;
            tasks.spawn(async move {
                let mut accepted = 0u64;
                while Instant::now() < deadline {
                    let call = client.upload(&institution, Infno::Els7002, &token, records.iter()).await;
                    if !call.outcome.is_accepted() {
                        bail!("a capacity upload was answered {}", call.outcome);
                    }
                    accepted += 100;
                }
                Ok(accepted)
            });
        }
        let mut accepted = 0;
        while let Some(done) = tasks.join_next().await {
            accepted += done??;
        }
        let rate = accepted as f64 / started.elapsed().as_secs_f64();
        self.reset().await?;
        Ok(rate)
    }

    /// Median time of a 100-row upload (token fetched first), measured with the
    /// project's own client; the simulator is reset afterwards (records, token, faults).
    async fn round_trip_ms(&self, latency_ms: u64, samples: usize) -> Result<f64> {
        self.set_latency(latency_ms).await?;
        let client = PlatformClient::new(&self.config.platform, Arc::new(MsgIds::new(19)))?;
        let institution = &self.config.institutions[0];
        let token = match client.fetch_token(institution).await.outcome {
            Outcome::Accepted(data) => data.get("accessToken").and_then(Value::as_str).unwrap_or_default().to_owned(),
            other => bail!("ELS7001 answered {other}"),
        };
        let mut times = Vec::new();
        for s in 0..samples {
            let records: Vec<Record> = (0..100)
                .map(|r| {
                    let row = Value::Object(records::row(Infno::Els7002, &format!("RTT-{s}-{r}"), "1"));
                    Record::parse_value(Infno::Els7002, &row).map_err(|e| anyhow!("{e:?}"))
                })
                .collect::<Result<_>>()?;
            let t = Instant::now();
            let call = client.upload(institution, Infno::Els7002, &token, records.iter()).await;
            if !call.outcome.is_accepted() {
                bail!("a round-trip upload was answered {}", call.outcome);
            }
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        self.reset().await?;
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }
}

/// `perf record` attached to a process.
struct Profiler {
    child: Child,
    data: PathBuf,
    report: PathBuf,
}

impl Profiler {
    fn start(dir: &Path, name: &str, pid: u32) -> Result<Profiler> {
        let data = dir.join(format!("{name}.perf.data"));
        let child = Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-F", "299", "--call-graph", "dwarf,16384", "-o"])
            .arg(&data)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.perf.log")))?)
            .spawn()
            .context("start perf record (Debian: apt-get install linux-perf)")?;
        Ok(Profiler { child, data, report: dir.join(format!("{name}.perf.txt")) })
    }

    /// Stops recording and writes a summary by pipeline stage (bench/profile.py) or, without
    /// Python, perf's own reports.
    fn finish(mut self) -> Result<()> {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        self.child.wait()?;
        if let Ok(summary) = Command::new("python3").arg("bench/profile.py").arg(&self.data).output()
            && summary.status.success()
        {
            std::fs::write(&self.report, &summary.stdout)?;
            eprintln!("  profile: {}", self.report.display());
            return Ok(());
        }
        let flat = Command::new("perf")
            .args(["report", "--no-children", "--stdio", "-g", "none", "--percent-limit", "0.5", "--sort", "dso,symbol", "-i"])
            .arg(&self.data)
            .output()?;
        let children = Command::new("perf")
            .args(["report", "--children", "--stdio", "-g", "none", "--percent-limit", "2", "--sort", "symbol", "-i"])
            .arg(&self.data)
            .output()?;
        let mut text = String::from_utf8_lossy(&flat.stdout).into_owned();
        text.push_str("\n\n# ---- inclusive (children) ----\n");
        text.push_str(&String::from_utf8_lossy(&children.stdout));
        std::fs::write(&self.report, text)?;
        eprintln!("  profile: {}", self.report.display());
        Ok(())
    }
}

fn start_worker(args: &Args, dir: &Path, name: &str, amqp_url: &str, platform_url: &str) -> Result<Proc> {
    let config_path = dir.join(format!("{name}.toml"));
    // The bench's events are under 1 KiB: at most 16 KiB each lets a prefetch of 5 000 fit
    // the default byte budget (worker.max_held_bytes, 128 MiB).
    let toml = format!(
        "[platform]\nurl = \"{platform_url}\"\n\n[amqp]\nurl = \"{amqp_url}\"\nprefetch = {prefetch}\n\n\
         [batch]\nlinger_ms = {linger}\nmax_in_flight_per_institution = {cap}\n{adaptive}\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\n[worker]\ndrain_deadline_secs = 20\nmax_event_bytes = 16384\n\n{extra}\n{institutions}",
        prefetch = args.prefetch,
        linger = args.linger_ms,
        cap = args.cap,
        adaptive = args.adaptive.map_or(String::new(), |on| format!("adaptive_concurrency = {on}\n")),
        extra = args.worker_extra,
        institutions = institutions_toml(),
    );
    std::fs::write(&config_path, toml)?;
    let log = dir.join(format!("{name}.log"));
    let mut command = if args.callgrind {
        let mut valgrind = Command::new("valgrind");
        valgrind
            .args(["--tool=callgrind", "--dump-instr=no"])
            .arg(format!("--callgrind-out-file={}", callgrind_out(dir, name).display()))
            .arg(&args.bin);
        valgrind
    } else {
        Command::new(&args.bin)
    };
    let child = command
        .args(["worker", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", &args.worker_log)
        .env_remove("ELS_BRIDGE_CONFIG")
        // Metrics on /metrics only: no OTLP export unless the caller's environment has one.
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("start {} worker", args.bin.display()))?;
    Ok(Proc { name: name.into(), child: Some(child), log })
}

/// Where callgrind writes the counts of worker `name` (`--callgrind`).
fn callgrind_out(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.callgrind.out"))
}

/// The instructions a worker run under callgrind executed: its `summary:` line, written
/// when the worker exits.
fn callgrind_instructions(dir: &Path, name: &str) -> Result<u64> {
    let path = callgrind_out(dir, name);
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let summary = text.lines().find_map(|line| line.strip_prefix("summary:"));
    summary.and_then(|n| n.trim().parse().ok()).with_context(|| format!("no summary line in {}", path.display()))
}

/// Waits until `consumers` consumers are on the work queue.
async fn wait_consuming(amqp_url: &str, consumers: u32, workers: &mut [Proc]) -> Result<()> {
    let connection = connect(amqp_url).await?;
    let channel = connection.create_channel().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if queue_state(&channel).await?.1 >= consumers {
            break;
        }
        for worker in workers.iter_mut() {
            if let Some(Ok(Some(status))) = worker.child.as_mut().map(Child::try_wait) {
                bail!("{} exited ({status}); see {}", worker.name, worker.log.display());
            }
        }
        if Instant::now() > deadline {
            bail!("the workers did not start consuming within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = connection.close(200, "ready".into()).await;
    Ok(())
}

/// Progress seen while waiting for the simulator to hold every record.
struct Waited {
    /// Largest VmRSS seen per worker (KiB).
    rss_max_kib: Vec<u64>,
    /// (records accepted, VmRSS of the first worker in MiB), every 2 s.
    rss_series: Vec<(u64, f64)>,
}

/// Polls the simulator until `expected` distinct records were created; fails when nothing
/// moves for `stall`.
async fn wait_accepted(sim: &Sim, expected: u64, workers: &[Proc], stall: Duration) -> Result<Waited> {
    let mut last = (0, Instant::now());
    let mut rss_max_kib = vec![0; workers.len()];
    let mut rss_series = Vec::new();
    let mut tick = 0u64;
    loop {
        let counters = sim.counters().await?;
        for (max, worker) in rss_max_kib.iter_mut().zip(workers) {
            *max = (*max).max(status_kib(worker.pid(), "VmRSS:").unwrap_or(0));
        }
        if tick.is_multiple_of(8) || counters.records_created >= expected {
            let rss = workers.first().and_then(|w| status_kib(w.pid(), "VmRSS:")).unwrap_or(0);
            rss_series.push((counters.records_created, round2(rss as f64 / 1024.0)));
        }
        if counters.records_created >= expected {
            eprintln!("\r  accepted {}/{expected}      ", counters.records_created);
            let step = rss_series.len().div_ceil(40).max(1);
            let last = rss_series.last().copied();
            let mut rss_series: Vec<(u64, f64)> = rss_series.into_iter().step_by(step).collect();
            rss_series.extend(last);
            return Ok(Waited { rss_max_kib, rss_series });
        }
        if counters.records_created > last.0 {
            last = (counters.records_created, Instant::now());
        } else if last.1.elapsed() > stall {
            bail!("no progress for {stall:?}: {} of {expected} records; counters {counters:?}", counters.records_created);
        }
        tick += 1;
        if tick.is_multiple_of(8) {
            eprint!("\r  accepted {}/{expected}      ", counters.records_created);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// --- analysis ----------------------------------------------------------------------------

/// Figures from the simulator's call log.
struct CallStats {
    uploads: u64,
    token_calls: u64,
    other_answers: BTreeMap<String, u64>,
    rows_accepted: u64,
    first_us: i64,
    last_accept_us: i64,
    /// Per lane: (calls, rows, full calls, rows of its last call).
    lanes: BTreeMap<String, (u64, u64, u64, usize)>,
    /// Rows per call → calls.
    sizes: BTreeMap<usize, u64>,
    /// First acceptance time of each event index.
    accepted_us: HashMap<u64, i64>,
    dropped: u64,
}

impl CallStats {
    fn of(calls: &[CallView], dropped: u64) -> CallStats {
        let mut s = CallStats {
            uploads: 0,
            token_calls: 0,
            other_answers: BTreeMap::new(),
            rows_accepted: 0,
            first_us: i64::MAX,
            last_accept_us: 0,
            lanes: BTreeMap::new(),
            sizes: BTreeMap::new(),
            accepted_us: HashMap::new(),
            dropped,
        };
        for call in calls {
            if call.infno.as_deref() == Some("ELS7001") {
                s.token_calls += 1;
                continue;
            }
            if call.return_code != Some(1) || call.fault.is_some() {
                let what = format!("return_code {:?} http {:?} fault {:?}", call.return_code, call.http_status, call.fault);
                *s.other_answers.entry(what).or_default() += 1;
                continue;
            }
            let start = us_of(&call.time);
            let accepted = start + call.latency_ms as i64 * 1000;
            s.uploads += 1;
            s.rows_accepted += call.rows as u64;
            s.first_us = s.first_us.min(start);
            s.last_accept_us = s.last_accept_us.max(accepted);
            let lane = format!("{}/{}", call.institution.as_deref().unwrap_or("?"), call.infno.as_deref().unwrap_or("?"));
            let entry = s.lanes.entry(lane).or_default();
            entry.0 += 1;
            entry.1 += call.rows as u64;
            entry.2 += u64::from(call.rows == 100);
            entry.3 = call.rows;
            *s.sizes.entry(call.rows).or_default() += 1;
            for key in &call.keys {
                if let Some(i) = Events::index(key) {
                    s.accepted_us.entry(i).or_insert(accepted);
                }
            }
        }
        s
    }

    /// Records accepted per second from the first upload call to the last acceptance.
    fn rate(&self) -> f64 {
        self.rows_accepted as f64 / ((self.last_accept_us - self.first_us) as f64 / 1e6)
    }

    fn optimum(&self) -> u64 {
        self.lanes.values().map(|(_, rows, _, _)| rows.div_ceil(100)).sum()
    }

    fn full_calls(&self) -> u64 {
        self.lanes.values().map(|(_, _, full, _)| full).sum()
    }

    /// Calls that could have been full: all but each lane's last call when that one is
    /// partial (the lane's remainder).
    fn fillable_calls(&self) -> u64 {
        self.lanes.values().map(|(calls, _, _, last)| calls - u64::from(*last < 100)).sum()
    }

    fn fill_json(&self) -> Value {
        let histogram: BTreeMap<String, u64> = {
            // Buckets: 100, 90-99, 50-89, 10-49, 1-9.
            let mut h = BTreeMap::new();
            for (size, n) in &self.sizes {
                let bucket = match size {
                    100 => "100",
                    90..=99 => "90-99",
                    50..=89 => "50-89",
                    10..=49 => "10-49",
                    _ => "1-9",
                };
                *h.entry(bucket.to_owned()).or_default() += n;
            }
            h
        };
        json!({
            "upload_calls": self.uploads,
            "optimum_calls": self.optimum(),
            "calls_over_optimum": round2(self.uploads as f64 / self.optimum().max(1) as f64),
            "full_calls": self.full_calls(),
            "full_share": round2(100.0 * self.full_calls() as f64 / self.uploads.max(1) as f64),
            "full_share_without_lane_tails": round2(100.0 * self.full_calls() as f64 / self.fillable_calls().max(1) as f64),
            "mean_rows_per_call": round2(self.rows_accepted as f64 / self.uploads.max(1) as f64),
            "rows_per_call": histogram,
            "lanes": self.lanes.len(),
            "token_calls": self.token_calls,
            "other_answers": self.other_answers,
            "call_log_dropped": self.dropped,
        })
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

// --- scenarios ---------------------------------------------------------------------------

struct Bench {
    args: Args,
    /// The platform's congestion in the runs of scenario 8 (see [`Sim::congestion`]).
    congestion: Option<(u64, u64)>,
    events: Events,
    dir: PathBuf,
    results: serde_json::Map<String, Value>,
    summary: String,
}

impl Bench {
    fn note(&mut self, line: impl AsRef<str>) {
        eprintln!("{}", line.as_ref());
        self.summary.push_str(line.as_ref());
        self.summary.push('\n');
    }

    fn save(&self) -> Result<()> {
        std::fs::write(self.dir.join("results.json"), serde_json::to_string_pretty(&Value::Object(self.results.clone()))?)?;
        std::fs::write(self.dir.join("results.md"), &self.summary)?;
        Ok(())
    }

    fn machine(&mut self) {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_owned())
            .unwrap_or_default();
        let mem = status_kib_meminfo();
        let version = Command::new(&self.args.bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let rabbit = rabbitmqctl(&["version"]).unwrap_or_default().trim().to_owned();
        let machine = json!({
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "cpu": cpu,
            "memory_mib": mem / 1024,
            "els_bridge": version,
            "rabbitmq": rabbit,
            "loadavg_at_start": loadavg(),
            "event_bytes": self.events.body_len(),
            "args": format!("{:?}", self.args),
        });
        self.note(format!("# els-bridge benchmark\n\nmachine: {machine}\n"));
        self.results.insert("machine".into(), machine);
    }

    /// 1. The physical limit.
    async fn physical(&mut self) -> Result<()> {
        let n = self.args.events();
        let prefetch = self.args.prefetch;
        self.note(format!("## 1. physical limit: {n} events, quorum queue, prefetch {prefetch}"));
        let vhost = Vhost::create(&self.args.amqp, "physical")?;
        declare(&vhost.url).await?;
        let broker = broker_pid().map(|p| vec![("broker".to_owned(), p)]).unwrap_or_default();

        quiet_broker().await;
        let meter = CpuMeter::start(with_self(&broker));
        let load = loadavg();
        let published = publish(&vhost.url, &self.events, 0, n, None, self.args.confirm_window, false).await?;
        let publish_cpu = meter.stop();
        self.note(format!(
            "- publish with confirms (window {}): {:.0} msg/s (cpu {publish_cpu}, load {load})",
            self.args.confirm_window,
            published.rate()
        ));

        let mut rates = serde_json::Map::new();
        for (key, acks, what) in [
            ("consume_ack_each_msg_s", Acks::EachPipelined, "minimal consumer, ack each (acks pipelined)"),
            ("consume_ack_each_awaited_msg_s", Acks::EachAwaited, "minimal consumer, ack each, each ack awaited before the next delivery"),
            ("consume_ack_multiple_100_msg_s", Acks::Multiple(100), "reference: ack `multiple` every 100"),
            (
                "consume_held_in_lanes_msg_s",
                Acks::HeldInLanes { lanes: 12, rows: 100 },
                "reference: held like the worker (12 lanes), a lane's 100 acks sent together when it is full",
            ),
        ] {
            if !rates.is_empty() {
                publish(&vhost.url, &self.events, 0, n, None, self.args.confirm_window, false).await?;
            }
            quiet_broker().await;
            let meter = CpuMeter::start(with_self(&broker));
            let load = loadavg();
            let drained = drain_minimal(&vhost.url, prefetch, n, acks).await?;
            let rate = drained.rate(n);
            let cpu = meter.stop();
            self.note(format!("- {what}: {rate:.0} msg/s (cpu {cpu}, load {load})"));
            rates.insert(key.into(), json!(rate.round()));
            rates.insert(key.replace("_msg_s", "_cpu"), cpu);
        }

        quiet_broker().await;
        let meter = CpuMeter::start(with_self(&broker));
        let url = vhost.url.clone();
        let consumer = tokio::spawn(async move { drain_minimal(&url, prefetch, n, Acks::EachPipelined).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let concurrent_pub = publish(&vhost.url, &self.events, 0, n, None, self.args.confirm_window, false).await?;
        let concurrent = consumer.await??;
        let concurrent_rate = n as f64 / ((concurrent.last_us - concurrent_pub.first_us) as f64 / 1e6);
        let concurrent_cpu = meter.stop();
        self.note(format!(
            "- concurrent publish + minimal consume (acks pipelined): {concurrent_rate:.0} msg/s end to end (publish alone {:.0} msg/s; cpu {concurrent_cpu})",
            concurrent_pub.rate()
        ));
        let probe = stream_append_round_trip(&vhost.url, 400, 8).await?;
        self.note(format!("- ledger-like stream append (publish with confirm, read back by the own consumer): {probe}"));
        let sim = Sim::start(&self.args, &self.dir, "capacity-simulator", 20_000)?;
        let meter = CpuMeter::start(with_self(&[("simulator".to_owned(), sim.proc.pid())]));
        let seconds = if self.args.quick { 3 } else { 10 };
        let sim_capacity = sim.capacity(8, seconds).await?;
        let sim_cpu = meter.stop();
        self.note(format!(
            "- the simulator alone, 8 clients uploading 100-row calls back to back: {sim_capacity:.0} records/s (cpu {sim_cpu})\n"
        ));
        let mut out = json!({
            "stream_append": probe,
            "simulator_capacity_records_s": sim_capacity.round(), "simulator_capacity_cpu": sim_cpu,
            "events": n, "prefetch": prefetch,
            "publish_confirms_msg_s": published.rate().round(), "publish_cpu": publish_cpu,
            "concurrent_publish_consume_msg_s": concurrent_rate.round(), "concurrent_cpu": concurrent_cpu,
        });
        for (key, value) in rates {
            out[key] = value;
        }
        self.results.insert("1_physical".into(), out);
        self.save()
    }

    fn physical_rate(&self, key: &str) -> Option<f64> {
        self.results.get("1_physical")?.get(key)?.as_f64()
    }

    /// Runs workers against a simulator: `prefill` events queued before they start, then
    /// `live` (publishing `count` at `rate`, or as fast as confirmed) after they consume.
    async fn run_workers(
        &mut self,
        label: &str,
        workers: usize,
        latency_ms: u64,
        prefill: u64,
        live: Option<(u64, Option<f64>)>,
    ) -> Result<Value> {
        let vhost = Vhost::create(&self.args.amqp, label)?;
        declare(&vhost.url).await?;
        let total = prefill + live.map_or(0, |(n, _)| n);
        let mut sim = Sim::start(&self.args, &self.dir, &format!("{label}-simulator"), total / 50 + 100)?;
        sim.congestion = self.congestion;
        let rtt_ms = sim.round_trip_ms(latency_ms, 21).await?;
        sim.set_latency(latency_ms).await?;
        let mut out = json!({ "workers": workers, "latency_ms": latency_ms, "platform_round_trip_ms": round2(rtt_ms),
            "prefetch": self.args.prefetch, "linger_ms": self.args.linger_ms, "cap": self.args.cap });
        if prefill > 0 {
            let published = publish(&vhost.url, &self.events, 0, prefill, None, self.args.confirm_window, false).await?;
            out["prefill"] = json!(prefill);
            out["prefill_publish_msg_s"] = json!(published.rate().round());
        }
        out["broker_quiet_wait_s"] = json!(round2(quiet_broker().await.as_secs_f64()));
        let load_start = loadavg();
        let started_us = now_us();
        let mut procs = Vec::new();
        for w in 0..workers {
            procs.push(start_worker(&self.args, &self.dir, &format!("{label}-worker{w}"), &vhost.url, &sim.url())?);
        }
        let mut pids: Vec<(String, u32)> = procs.iter().map(|p| (p.name.clone(), p.pid())).collect();
        pids.push((format!("{label}-simulator"), sim.proc.pid()));
        if let Some(p) = broker_pid() {
            pids.push(("broker".into(), p));
        }
        let profilers: Vec<Profiler> = if self.args.perf {
            pids.iter()
                .filter(|(name, _)| name != "broker")
                .map(|(name, pid)| Profiler::start(&self.dir, name, *pid))
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let meter = CpuMeter::start(with_self(&pids));
        let mut published = None;
        if let Some((count, rate)) = live {
            wait_consuming(&vhost.url, workers as u32, &mut procs).await?;
            // The live events are numbered after the prefilled ones: publish `prefill..total`.
            let p = publish(&vhost.url, &self.events, prefill, count, rate, self.args.confirm_window, true).await?;
            out["live_events"] = json!(count);
            out["live_publish_msg_s"] = json!(p.rate().round());
            if let Some(rate) = rate {
                out["live_target_rate"] = json!(rate);
            }
            published = Some(p);
        }
        let waited = wait_accepted(&sim, total, &procs, Duration::from_secs(120)).await?;
        let cpu = meter.stop();
        for profiler in profilers {
            profiler.finish()?;
        }
        let load_end = loadavg();
        let hwm: Vec<u64> = procs.iter().map(|p| status_kib(p.pid(), "VmHWM:").unwrap_or(0)).collect();
        let (calls, dropped) = sim.calls().await?;
        let stats = CallStats::of(&calls, dropped);
        let counters = sim.counters().await?;
        for proc in &mut procs {
            proc.stop(Duration::from_secs(40));
        }
        // Another test on this machine may stop the broker (chaos tests): say so.
        let logs: Vec<String> = procs.iter().map(|p| std::fs::read_to_string(&p.log).unwrap_or_default()).collect();
        let reconnects: usize = logs.iter().map(|l| l.matches("broker connection lost").count()).sum();
        let outages: usize = logs
            .iter()
            .map(|l| {
                l.lines()
                    .filter(|x| {
                        x.contains("broker connection lost")
                            && (x.contains("refused") || x.contains("reset") || x.contains("CONNECTION_FORCED"))
                    })
                    .count()
            })
            .sum();
        if self.args.callgrind {
            let instructions: Vec<u64> = procs.iter().map(|p| callgrind_instructions(&self.dir, &p.name)).collect::<Result<_>>()?;
            out["worker_instructions"] = json!(instructions);
            out["worker_instructions_per_record"] = json!((instructions.iter().sum::<u64>() as f64 / total.max(1) as f64).round());
        }
        out["worker_reconnects"] = json!(reconnects);
        out["broker_outages"] = json!(outages);
        if outages > 0 {
            eprintln!(
                "  WARNING: the broker went away {outages} time(s) during this run (another test stopping it?): these figures are disturbed; run again"
            );
        }
        let dead = {
            let connection = connect(&vhost.url).await?;
            let channel = connection.create_channel().await?;
            let options = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
            let dead = channel.queue_declare("els.dead".into(), options, FieldTable::default()).await?.message_count();
            let _ = connection.close(200, "bye".into()).await;
            dead
        };
        out["records"] = json!(total);
        out["records_accepted_per_s"] = json!(stats.rate().round());
        out["wall_s_from_worker_start"] = json!(round2((stats.last_accept_us - started_us) as f64 / 1e6));
        out["records_per_s_from_worker_start"] = json!((total as f64 / ((stats.last_accept_us - started_us) as f64 / 1e6)).round());
        out["fill"] = stats.fill_json();
        if latency_ms > 0 {
            // With every permit busy, each institution completes `cap × workers` batches per
            // batch time: what a batch spends outside the platform call is the rest.
            let wall_ms = (stats.last_accept_us - stats.first_us) as f64 / 1000.0;
            let slots = (self.args.cap * workers * INSTITUTIONS.len()) as f64;
            let batch_ms = slots * wall_ms / stats.uploads.max(1) as f64;
            out["batch_time_ms_if_cap_saturated"] = json!(round2(batch_ms));
            out["outside_platform_call_ms"] = json!(round2(batch_ms - rtt_ms));
        }
        out["cpu_cores"] = cpu;
        out["worker_peak_rss_mib"] = json!(hwm.iter().map(|k| round2(*k as f64 / 1024.0)).collect::<Vec<_>>());
        out["worker_max_rss_seen_mib"] = json!(waited.rss_max_kib.iter().map(|k| round2(*k as f64 / 1024.0)).collect::<Vec<_>>());
        out["worker_rss_mib_by_records_accepted"] = json!(waited.rss_series);
        out["rows_accepted_total"] = json!(counters.rows_accepted);
        out["max_concurrent_calls"] = json!(counters.max_concurrent_calls);
        out["max_concurrent_calls_by_institution"] = json!(counters.max_concurrent_calls_by_institution);
        out["concurrency_limit_changes"] = json!(logs.iter().map(|l| l.matches("upload concurrency limit changed").count()).sum::<usize>());
        out["records_updated"] = json!(counters.records_updated);
        out["dead_letters"] = json!(dead);
        out["loadavg"] = json!(format!("{load_start} → {load_end}"));
        if let Some(p) = published {
            out["end_to_end_per_s"] = json!((p.count as f64 / ((stats.last_accept_us - p.first_us) as f64 / 1e6)).round());
            if !p.times.is_empty() {
                let mut latencies: Vec<f64> = p
                    .times
                    .iter()
                    .enumerate()
                    .filter_map(|(j, t)| stats.accepted_us.get(&(prefill + j as u64)).map(|a| (a - t) as f64 / 1000.0))
                    .collect();
                latencies.sort_by(f64::total_cmp);
                out["latency_ms"] = json!({
                    "samples": latencies.len(),
                    "p50": round2(percentile(&latencies, 50.0)),
                    "p90": round2(percentile(&latencies, 90.0)),
                    "p99": round2(percentile(&latencies, 99.0)),
                    "max": round2(latencies.last().copied().unwrap_or(f64::NAN)),
                    "target_p99": round2(self.args.linger_ms as f64 + 2.0 * rtt_ms),
                });
            }
        }
        drop(sim);
        drop(vhost);
        Ok(out)
    }

    /// 2. els-bridge draining the pre-filled queue, and with a live publisher.
    async fn bridge(&mut self) -> Result<()> {
        let n = self.args.events();
        self.note(format!("## 2. els-bridge into the simulator (no added latency): {n} events"));
        let drained = self.run_workers("drain", 1, 0, n, None).await?;
        let rate = drained["records_accepted_per_s"].as_f64().unwrap_or(0.0);
        // (1) as the issue measures it: a minimal consumer that acks each message (its
        // reference, ~12 k msg/s on these cores, is the awaited-ack figure); and the stricter
        // ceiling of the same consumer with its acks pipelined.
        let ratio = self.physical_rate("consume_ack_each_awaited_msg_s").map(|l| round2(rate / l));
        let pipelined_ratio = self.physical_rate("consume_ack_each_msg_s").map(|l| round2(rate / l));
        let show = |r: Option<f64>| r.map_or("n/a".into(), |r| r.to_string());
        self.note(format!(
            "- pre-filled queue: {rate:.0} records/s accepted (ratio to the minimal consumer acking each message: {}, target ≥ 0.80; to the same with pipelined acks: {}); from worker start {} records/s; fill {}; cpu {}; peak RSS {} MiB; load {}{}",
            show(ratio),
            show(pipelined_ratio),
            drained["records_per_s_from_worker_start"],
            drained["fill"],
            drained["cpu_cores"],
            drained["worker_peak_rss_mib"],
            drained["loadavg"],
            instructions(&drained),
        ));
        let mut drained = drained;
        drained["ratio_to_physical"] = json!(ratio);
        drained["ratio_to_physical_pipelined_acks"] = json!(pipelined_ratio);

        let live = self.run_workers("live", 1, 0, 0, Some((n, None))).await?;
        let end_to_end = live["end_to_end_per_s"].as_f64().unwrap_or(0.0);
        let concurrent = self.physical_rate("concurrent_publish_consume_msg_s");
        let live_ratio = concurrent.map(|l| round2(end_to_end / l));
        self.note(format!(
            "- publishing while the worker runs: {end_to_end:.0} records/s first publish → last accepted (publisher alone {} msg/s; ratio to concurrent minimal publish+consume: {}); fill {}; cpu {}; load {}{}\n",
            live["live_publish_msg_s"],
            live_ratio.map_or("n/a".into(), |r| r.to_string()),
            live["fill"],
            live["cpu_cores"],
            live["loadavg"],
            instructions(&live),
        ));
        let mut live = live;
        live["ratio_to_concurrent_physical"] = json!(live_ratio);
        self.results.insert("2_drain".into(), drained);
        self.results.insert("2_live".into(), live);
        self.save()
    }

    /// Scenario 10, the drain ratio, interleaved: each round drains `n` events with the minimal
    /// consumer (pipelined acks), then with the consumer holding them in 12 lanes, then
    /// with a worker into the simulator; the ratios of each round, and their medians.
    async fn ratio(&mut self) -> Result<()> {
        let (n, rounds, prefetch) = (self.args.events(), self.args.ratio_rounds(), self.args.prefetch);
        self.note(format!("## 10. drain ratio, interleaved: {rounds} round(s) of {n} events, prefetch {prefetch}"));
        let vhost = Vhost::create(&self.args.amqp, "ratio")?;
        declare(&vhost.url).await?;
        let mut table = Vec::new();
        for round in 1..=rounds {
            let pipelined = self.publish_and_drain(&vhost.url, n, Acks::EachPipelined).await?;
            let held = self.publish_and_drain(&vhost.url, n, Acks::HeldInLanes { lanes: 12, rows: 100 }).await?;
            let label = format!("ratio{round}");
            let drained = self.run_workers(&label, 1, 0, n, None).await?;
            let worker = drained["records_accepted_per_s"].as_f64().unwrap_or(0.0);
            let cores = drained["cpu_cores"][format!("{label}-worker0")].as_f64().unwrap_or(0.0);
            let row = json!({
                "pipelined_msg_s": pipelined.round(), "held_in_lanes_msg_s": held.round(), "worker_records_s": worker,
                "ratio_to_pipelined": round2(worker / pipelined), "ratio_to_held_in_lanes": round2(worker / held),
                "worker_us_per_record": round2(cores * 1e6 / worker.max(1.0)), "loadavg": drained["loadavg"],
            });
            self.note(format!("- round {round}: {row}"));
            table.push(row);
        }
        let median_of = |key: &str| median(table.iter().filter_map(|row| row[key].as_f64()).collect());
        let medians = json!({
            "ratio_to_pipelined": median_of("ratio_to_pipelined"),
            "ratio_to_held_in_lanes": median_of("ratio_to_held_in_lanes"),
            "worker_us_per_record": median_of("worker_us_per_record"),
        });
        self.note(format!(
            "- medians: {} of the pipelined consumer (issue 19: ≥ 0.50), {} of the consumer holding 12 lanes, {} µs of worker CPU per record (issue 19: ≤ 12)\n",
            medians["ratio_to_pipelined"], medians["ratio_to_held_in_lanes"], medians["worker_us_per_record"]
        ));
        self.results.insert("10_ratio".into(), json!({ "events": n, "prefetch": prefetch, "rounds": table, "medians": medians }));
        self.save()
    }

    /// Publishes `n` events to `url` with confirms, waits for the broker to settle, and
    /// drains them with the minimal consumer acking as `acks` says: its msg/s.
    async fn publish_and_drain(&self, url: &str, n: u64, acks: Acks) -> Result<f64> {
        publish(url, &self.events, 0, n, None, self.args.confirm_window, false).await?;
        quiet_broker().await;
        let drained = drain_minimal(url, self.args.prefetch, n, acks).await?;
        Ok(drained.rate(n))
    }

    /// 3. and 4. steady rates below saturation.
    async fn steady(&mut self) -> Result<()> {
        let secs = self.args.steady_secs();
        self.note(format!("## 3./4. steady publish rates ({secs} s each): batch fill and latency"));
        let mut runs = Vec::new();
        for spec in self.args.steady.clone() {
            let (rate, latency) = spec.split_once(':').ok_or_else(|| anyhow!("--steady wants RATE:LATENCY_MS, got {spec}"))?;
            let rate: f64 = rate.parse()?;
            let latency: u64 = latency.parse()?;
            let count = (rate * secs as f64).round() as u64;
            let out = self.run_workers(&format!("steady{}-{latency}", rate as u64), 1, latency, 0, Some((count, Some(rate)))).await?;
            let per_lane_per_linger = rate / 12.0 * self.args.linger_ms as f64 / 1000.0;
            self.note(format!(
                "- {rate} events/s ({per_lane_per_linger:.0} per lane per linger), platform latency {latency} ms (round trip {} ms): fill {}; latency {}; cpu {}; load {}",
                out["platform_round_trip_ms"], out["fill"], out["latency_ms"], out["cpu_cores"], out["loadavg"]
            ));
            let mut out = out;
            out["records_per_lane_per_linger"] = json!(round2(per_lane_per_linger));
            runs.push(out);
            self.results.insert("3_4_steady".into(), Value::Array(runs.clone()));
            self.save()?;
        }
        self.note("");
        Ok(())
    }

    /// 5. backlog drain under platform latency.
    async fn backlog(&mut self) -> Result<()> {
        let n = self.args.backlog();
        let latency = self.args.backlog_latency_ms;
        let allowed_per_institution = self.args.cap as f64 * 100.0 / (latency as f64 / 1000.0);
        self.note(format!(
            "## 5. backlog drain: {n} events queued, platform latency {latency} ms, cap {} → allowed {allowed_per_institution:.0} records/s per institution ({} institutions)",
            self.args.cap,
            INSTITUTIONS.len()
        ));
        let out = self.run_workers("backlog", 1, latency, n, None).await?;
        let rate = out["records_accepted_per_s"].as_f64().unwrap_or(0.0);
        let allowed = allowed_per_institution * INSTITUTIONS.len() as f64;
        self.note(format!(
            "- {rate:.0} records/s = {:.1} % of the allowed {allowed:.0} (target ≥ 95 %); from worker start {} records/s; peak RSS {} MiB (target ≤ 64); fill {}; cpu {}; load {}\n",
            100.0 * rate / allowed,
            out["records_per_s_from_worker_start"],
            out["worker_peak_rss_mib"],
            out["fill"],
            out["cpu_cores"],
            out["loadavg"],
        ));
        let mut out = out;
        out["allowed_per_s"] = json!(allowed);
        out["share_of_allowed"] = json!(round2(rate / allowed));
        self.results.insert("5_backlog".into(), out);
        self.save()
    }

    /// 6. scale-out when platform-bound.
    async fn scale(&mut self) -> Result<()> {
        let n = self.args.scale_events();
        let latency = self.args.scale_latency_ms;
        let allowed = self.args.cap as f64 * 100.0 / (latency as f64 / 1000.0) * INSTITUTIONS.len() as f64;
        self.note(format!(
            "## 6. scale-out: {n} events queued, platform latency {latency} ms, cap {} (one worker allowed {allowed:.0} records/s)",
            self.args.cap
        ));
        let one = self.run_workers("scale1", 1, latency, n, None).await?;
        let two = self.run_workers("scale2", 2, latency, n, None).await?;
        let r1 = one["records_accepted_per_s"].as_f64().unwrap_or(0.0);
        let r2 = two["records_accepted_per_s"].as_f64().unwrap_or(0.0);
        self.note(format!(
            "- 1 worker: {r1:.0} records/s (cpu {}); 2 workers: {r2:.0} records/s (cpu {}); ratio {:.2} (target ≥ 1.8); load {} / {}\n",
            one["cpu_cores"],
            two["cpu_cores"],
            r2 / r1,
            one["loadavg"],
            two["loadavg"]
        ));
        self.results.insert("6_scale".into(), json!({ "one": one, "two": two, "ratio": round2(r2 / r1), "allowed_one_worker": allowed }));
        self.save()
    }
}

impl Bench {
    /// 7. back-fill with `send`: one call at a time, the cap, the cap with a ledger.
    async fn backfill(&mut self) -> Result<()> {
        let n = self.args.backfill();
        let latency = self.args.backfill_latency_ms;
        let cap = self.args.cap;
        let allowed = |c: usize| c as f64 * 100.0 / (latency as f64 / 1000.0);
        self.note(format!(
            "## 7. back-fill with `send`: {n} rows, platform latency {latency} ms, cap {cap} → allowed {:.0} rows/s",
            allowed(cap)
        ));
        let dir = self.dir.join("backfill");
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("history.jsonl");
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&Value::Object(records::row(Infno::Els7002, &Events::key(i), "7")).to_string());
            text.push('\n');
        }
        std::fs::write(&file, text)?;
        let sim = Sim::start(&self.args, &dir, "backfill-simulator", n / 100 * 2 + 100)?;
        let vhost = Vhost::create(&self.args.amqp, "backfill")?;
        declare(&vhost.url).await?;
        let mut runs = serde_json::Map::new();
        for (label, c, amqp) in [("cap1", 1, None), ("cap", cap, None), ("cap_amqp", cap, Some(vhost.url.as_str()))] {
            sim.reset().await?;
            sim.set_latency(latency).await?;
            let secs = self.send_once(&sim, &dir, &file, label, c, amqp)?;
            let accepted = sim.counters().await?.records_stored as u64;
            if accepted != n {
                bail!("{label}: the platform holds {accepted} of the {n} rows");
            }
            let rate = n as f64 / secs;
            self.note(format!(
                "- cap {c}{}: {secs:.1} s, {rate:.0} rows/s = {:.1} % of cap {cap}'s allowed {:.0} (target ≥ 90 % at cap {cap}); load {}",
                if amqp.is_some() { " with [amqp]" } else { "" },
                100.0 * rate / allowed(cap),
                allowed(cap),
                loadavg()
            ));
            runs.insert(label.into(), json!({ "cap": c, "amqp": amqp.is_some(), "secs": round2(secs), "rows_per_s": round2(rate), "share_of_allowed": round2(rate / allowed(cap)) }));
        }
        self.note("");
        self.results.insert("7_backfill".into(), json!({ "rows": n, "latency_ms": latency, "allowed_per_s": allowed(cap), "runs": runs }));
        self.save()
    }

    /// Runs `send --fresh` of `file` at cap `cap` (with `[amqp]` at `amqp`); its wall time.
    fn send_once(&self, sim: &Sim, dir: &Path, file: &Path, label: &str, cap: usize, amqp: Option<&str>) -> Result<f64> {
        let mut toml = format!(
            "[platform]\nurl = \"{}\"\ntoken_file = {:?}\n\n[batch]\nmax_in_flight_per_institution = {cap}\n",
            sim.url(),
            dir.join(format!("{label}-tokens.json"))
        );
        if let Some(url) = amqp {
            let _ = write!(toml, "\n[amqp]\nurl = \"{url}\"\n");
        }
        toml.push_str(&institutions_toml());
        let config = dir.join(format!("send-{label}.toml"));
        std::fs::write(&config, toml)?;
        let started = Instant::now();
        let output = Command::new(&self.args.bin)
            .args(["send", "--fresh", "--infno", "ELS7002", "--institution", INSTITUTIONS[0].0, "--config"])
            .arg(&config)
            .arg(file)
            .env("RUST_LOG", "warn")
            .env_remove("ELS_BRIDGE_CONFIG")
            .stdin(Stdio::null())
            .output()
            .context("run els-bridge send")?;
        let secs = started.elapsed().as_secs_f64();
        std::fs::write(dir.join(format!("send-{label}.log")), [output.stdout.as_slice(), output.stderr.as_slice()].concat())?;
        if !output.status.success() {
            bail!("send ({label}) failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(secs)
    }
}

impl Bench {
    /// 9. start-up on a full ledger.
    async fn startup(&mut self) -> Result<()> {
        let rows = self.args.ledger_rows();
        self.note(format!("## 9. start-up on a full ledger: {rows} receipted rows (targets: consuming within 10 s, peak RSS ≤ 64 MiB)"));
        let vhost = Vhost::create(&self.args.amqp, "startup")?;
        declare(&vhost.url).await?;
        let (fill_secs, bytes) = fill_ledger(&vhost.url, rows, self.args.confirm_window).await?;
        self.note(format!(
            "- ledger filled in {fill_secs:.1} s: {} calls, {:.0} MiB of entries",
            rows.div_ceil(100),
            bytes as f64 / 1048576.0
        ));
        let dir = self.dir.join("startup");
        std::fs::create_dir_all(&dir)?;
        let mut runs = Vec::new();
        for run in 1..=2 {
            let started = Instant::now();
            let mut worker = start_worker(&self.args, &dir, &format!("worker{run}"), &vhost.url, "http://127.0.0.1:1/unused")?;
            wait_consuming(&vhost.url, 1, std::slice::from_mut(&mut worker)).await?;
            let secs = started.elapsed().as_secs_f64();
            let peak_mib = status_kib(worker.pid(), "VmHWM:").unwrap_or(0) as f64 / 1024.0;
            worker.stop(Duration::from_secs(30));
            self.note(format!("- start {run}: consuming after {secs:.1} s, peak RSS {peak_mib:.1} MiB; load {}", loadavg()));
            runs.push(json!({ "secs_to_consuming": round2(secs), "peak_rss_mib": round2(peak_mib) }));
        }
        self.note("");
        self.results.insert(
            "9_startup".into(),
            json!({ "ledger_rows": rows, "fill_secs": round2(fill_secs), "ledger_bytes": bytes, "runs": runs }),
        );
        self.save()
    }
}

/// Fills the ledger stream of the vhost at `url` with `rows` receipted rows, as workers
/// write them: per call of 100 rows a claim, a receipt and a release, keys of both
/// institutions and all six transactions, each with a version and a fingerprint. Returns
/// the time taken and the bytes written.
async fn fill_ledger(url: &str, rows: u64, window: usize) -> Result<(f64, u64)> {
    use els_bridge::ledger::{Claim, Entry, Fingerprint, Ledger, Receipt, ReceiptRow};
    let connection = connect(url).await?;
    // Opening the ledger declares its stream as a worker would.
    drop(Ledger::open(&connection, "els", &Default::default()).await?);
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let started = Instant::now();
    let (mut outstanding, mut bytes) = (VecDeque::<PublisherConfirm>::new(), 0u64);
    let lanes: Vec<(&str, Infno)> = INSTITUTIONS.iter().flat_map(|(code, _)| Infno::UPLOADS.map(|infno| (*code, infno))).collect();
    for call in 0..rows.div_ceil(100) {
        let (institution, infno) = lanes[(call % lanes.len() as u64) as usize];
        let first = call * 100;
        let keys: Vec<String> = (first..(first + 100).min(rows)).map(Events::key).collect();
        let claim = format!("{call:032x}");
        let rows = keys.iter().map(|key| ReceiptRow {
            key: key.clone(),
            version: Some(1),
            quantity: 7.into(),
            price: rust_decimal::Decimal::new(1234, 2),
            time: "2026-11-25 09:15:00".into(),
            fingerprint: Some(Fingerprint::of_message(Some(key), key.as_bytes())),
        });
        let at = chrono::Utc::now();
        let entries = [
            Entry::Claim(Claim {
                id: claim.clone(),
                institution: institution.into(),
                infno,
                keys: keys.iter().map(|k| (k.clone(), Some(1))).collect(),
                at,
                holder: None,
                replica: None,
            }),
            Entry::Receipt(Receipt {
                claim: claim.clone(),
                institution: institution.into(),
                infno,
                msgid: format!("M{call}"),
                return_code: 1,
                at,
                ends_claim: false,
                rows: rows.collect(),
            }),
            Entry::Release { claim },
        ];
        for entry in entries {
            let body = serde_json::to_vec(&json!({ "id": format!("fill-{call}-{bytes}"), "change": entry }))?;
            bytes += body.len() as u64;
            let properties = BasicProperties::default().with_delivery_mode(2);
            outstanding
                .push_back(channel.basic_publish("".into(), "els.ledger".into(), BasicPublishOptions::default(), &body, properties).await?);
            while outstanding.len() >= window {
                outstanding.pop_front().expect("outstanding").await?;
            }
        }
    }
    for confirm in outstanding {
        confirm.await?;
    }
    let _ = connection.close(200, "filled".into()).await;
    Ok((started.elapsed().as_secs_f64(), bytes))
}

fn status_kib_meminfo() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !args.bin.exists() {
        bail!("{} not found: build it with cargo build --release", args.bin.display());
    }
    std::fs::create_dir_all(&args.out)?;
    let mut bench = Bench {
        dir: args.out.clone(),
        events: Events::new(),
        args: args.clone(),
        congestion: None,
        results: serde_json::Map::new(),
        summary: String::new(),
    };
    bench.machine();
    bench.save()?;
    let run = async {
        run_all(&mut bench, &args).await?;
        bench.results.insert("loadavg_at_end".into(), json!(loadavg()));
        bench.save()
    };
    // On Ctrl-C or SIGTERM the scenario in progress is dropped: its processes are killed
    // and its vhost deleted.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = run => result?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = terminate.recv() => bail!("terminated"),
    }
    eprintln!("results in {}", args.out.display());
    Ok(())
}

async fn run_all(bench: &mut Bench, args: &Args) -> Result<()> {
    for scenario in &args.scenarios {
        let t = Instant::now();
        let outcome = match scenario {
            1 => bench.physical().await,
            2 => bench.bridge().await,
            3 | 4 => {
                if args.scenarios.contains(&3) && args.scenarios.contains(&4) && *scenario == 4 {
                    continue;
                }
                bench.steady().await
            }
            5 => bench.backlog().await,
            6 => bench.scale().await,
            7 => bench.backfill().await,
            8 => adaptive_concurrency(bench).await,
            9 => bench.startup().await,
            10 => bench.ratio().await,
            other => Err(anyhow!("no scenario {other}")),
        };
        if let Err(error) = outcome {
            bench.note(format!("scenario {scenario} FAILED: {error:#}\n"));
            bench.results.insert(format!("failed_{scenario}"), json!(format!("{error:#}")));
        }
        eprintln!("(scenario {scenario} took {:.0} s)", t.elapsed().as_secs_f64());
        bench.save()?;
    }
    Ok(())
}

// --- 8. adaptive concurrency (issue 19 item 4) -------------------------------------------

/// Scenario 8: the backlog drain into a platform that slows under concurrency, with fixed
/// caps 1, 2, 4, 8 and adaptive with cap 8, one after the other in one run.
async fn adaptive_concurrency(bench: &mut Bench) -> Result<()> {
    let n = bench.args.adaptive_events();
    let latency = bench.args.backlog_latency_ms;
    let (capacity, per_call) = (bench.args.congestion_capacity, bench.args.congestion_ms);
    bench.note(format!(
        "## 8. adaptive concurrency: {n} events queued, platform latency {latency} ms + {per_call} ms per call in progress beyond {capacity} (over {} institutions)",
        INSTITUTIONS.len()
    ));
    let saved = (bench.args.cap, bench.args.adaptive);
    bench.congestion = Some((capacity, per_call));
    let mut runs = serde_json::Map::new();
    let mut outcome = Ok(());
    for (cap, adaptive) in [(1, false), (2, false), (4, false), (8, false), (8, true)] {
        (bench.args.cap, bench.args.adaptive) = (cap, Some(adaptive));
        let label = if adaptive { format!("adaptive{cap}") } else { format!("fixed{cap}") };
        match bench.run_workers(&label, 1, latency, n, None).await {
            Ok(out) => {
                bench.note(adaptive_line(&label, cap, &out));
                runs.insert(label, out);
            }
            Err(error) => {
                outcome = Err(error.context(label));
                break;
            }
        }
    }
    (bench.args.cap, bench.args.adaptive) = saved;
    bench.congestion = None;
    let summary = adaptive_summary(&runs);
    bench.note(format!("{summary}\n"));
    bench.results.insert(
        "8_adaptive".into(),
        json!({ "congestion_capacity": capacity, "congestion_ms": per_call, "runs": runs, "summary": summary }),
    );
    bench.save()?;
    outcome
}

/// One run's line: records/s, the most calls in flight per institution, limit changes.
fn adaptive_line(label: &str, cap: usize, out: &Value) -> String {
    let most =
        out["max_concurrent_calls_by_institution"].as_object().map_or(0, |m| m.values().filter_map(Value::as_u64).max().unwrap_or(0));
    let within = if most <= cap as u64 { "within" } else { "OVER" };
    format!(
        "- {label}: {} records/s; most calls in flight per institution {most} ({within} the cap {cap}), over all {}; limit changes logged {}; cpu {}; load {}",
        out["records_accepted_per_s"], out["max_concurrent_calls"], out["concurrency_limit_changes"], out["cpu_cores"], out["loadavg"]
    )
}

/// Adaptive against the best fixed cap.
fn adaptive_summary(runs: &serde_json::Map<String, Value>) -> String {
    let rate = |label: &str| runs.get(label).and_then(|r| r["records_accepted_per_s"].as_f64());
    let best =
        ["fixed1", "fixed2", "fixed4", "fixed8"].into_iter().filter_map(|l| rate(l).map(|r| (l, r))).max_by(|a, b| a.1.total_cmp(&b.1));
    match (rate("adaptive8"), best) {
        (Some(adaptive), Some((label, fixed))) => format!(
            "- adaptive (cap 8) {adaptive:.0} records/s against the best fixed cap ({label}) {fixed:.0}: {:.2} (target ≥ 1.00)",
            adaptive / fixed
        ),
        _ => "- incomplete: no comparison".to_owned(),
    }
}
