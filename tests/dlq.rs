//! `els-bridge dlq stats / peek / replay` against a real broker (a vhost per test), and
//! with a real worker and the simulator: reading leaves the dead-letter queue exactly as it
//! was (count, order, headers), filters select exactly what they say, replay brings
//! exhausted records to the platform, and a replay killed with SIGKILL loses nothing.
//! Assertions read the queues and the simulator, never logs.

mod common;

use common::run::{COMMAND_LIMIT, OutputWithin};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use common::broker::{QueueCounts, rabbitmqctl, unique_vhost};
use common::records::{event, row};
use common::simulator::{TestSimulator, eventually};
use common::worker::{Amqp, WorkerProcess, worker_toml};
use els_bridge::config::RetrySettings;
use els_bridge::simulator::api::RecordFilter;
use els_bridge::spec::Infno;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;

const H1: &str = "H32128200338";
const H2: &str = "H32010600021";

fn test_retry() -> RetrySettings {
    RetrySettings { initial_backoff_ms: 100, max_backoff_ms: 1000, max_elapsed_secs: 600 }
}

/// Runs `els-bridge ARGS... --config CONFIG` and returns its output.
fn els(args: &[&str], config: &Path) -> Output {
    command(args, config).output_within(COMMAND_LIMIT).expect("run els-bridge")
}

fn command(args: &[&str], config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_els-bridge"));
    command.args(args).arg("--config").arg(config).env_remove("ELS_BRIDGE_CONFIG").env("RUST_LOG", "warn").stdin(Stdio::null());
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("ELS_BRIDGE__")) {
        command.env_remove(name);
    }
    command
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn show(output: &Output) -> String {
    format!("status {:?}\nstdout:\n{}\nstderr:\n{}", output.status, stdout(output), String::from_utf8_lossy(&output.stderr))
}

/// A configuration with only `[amqp]` (no institutions: none is filled in for events).
fn amqp_config(dir: &Path, url: &str) -> PathBuf {
    let path = dir.join("dlq.toml");
    std::fs::write(&path, format!("[amqp]\nurl = {url:?}\n")).unwrap();
    path
}

/// A message as it sits in a queue.
#[derive(Debug, Clone, PartialEq)]
struct Raw {
    routing_key: String,
    body: Vec<u8>,
    properties: BasicProperties,
}

impl Raw {
    fn id(&self) -> String {
        self.properties.message_id().as_ref().map(|s| s.to_string()).unwrap_or_default()
    }

    fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.properties.headers().as_ref().and_then(|h| h.inner().get(name))
    }

    fn text(&self, name: &str) -> Option<String> {
        match self.header(name)? {
            AMQPValue::LongString(s) => Some(s.to_string()),
            AMQPValue::LongLongInt(n) => Some(n.to_string()),
            other => Some(format!("{other:?}")),
        }
    }

    /// The headers without the broker's delivery counters (`x-acquired-count`: RabbitMQ 4).
    fn own_headers(&self) -> BTreeMap<String, AMQPValue> {
        let mut headers: BTreeMap<String, AMQPValue> = self
            .properties
            .headers()
            .as_ref()
            .map(|h| h.inner().iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
            .unwrap_or_default();
        headers.remove("x-delivery-count");
        headers.remove("x-acquired-count");
        headers
    }
}

/// A confirm-mode connection of the test itself.
struct Client {
    connection: Connection,
    channel: Channel,
}

impl Client {
    async fn connect(url: &str) -> Client {
        let connection = Connection::connect(url, ConnectionProperties::default()).await.expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm mode");
        Client { connection, channel }
    }

    /// Publishes to a queue through the default exchange, all confirms awaited at the end.
    async fn put(&self, queue: &str, messages: &[(Vec<u8>, BasicProperties)]) {
        let mut confirms = Vec::new();
        for (body, properties) in messages {
            let confirm = self
                .channel
                .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body, properties.clone())
                .await
                .expect("publish");
            confirms.push(confirm);
        }
        for confirm in confirms {
            assert!(confirm.await.expect("confirm").is_ack());
        }
    }

    /// Takes (and removes) every message of `queue`, in order.
    async fn take_all(&self, queue: &str) -> Vec<Raw> {
        let mut taken = Vec::new();
        while let Some(message) = self.channel.basic_get(queue.into(), BasicGetOptions::default()).await.expect("basic.get") {
            let delivery = message.delivery;
            delivery.ack(BasicAckOptions::default()).await.expect("ack");
            taken.push(Raw { routing_key: delivery.routing_key.to_string(), body: delivery.data, properties: delivery.properties });
        }
        taken
    }

    async fn close(self) {
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

/// What a synthetic dead letter is made of.
#[derive(Debug, Clone)]
struct Letter {
    id: String,
    reason: Option<&'static str>,
    infno: Infno,
    code: &'static str,
    failed_at: DateTime<Utc>,
    body: Option<Vec<u8>>,
}

impl Letter {
    fn message(&self) -> (Vec<u8>, BasicProperties) {
        let mut headers = FieldTable::default();
        let mut put = |name: &str, value: AMQPValue| {
            headers.insert(ShortString::from(name), value);
        };
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        let time = self.failed_at.to_rfc3339_opts(SecondsFormat::Millis, true);
        if let Some(reason) = self.reason {
            put("x-els-reason", text(reason));
            put("x-els-error", text(&format!("why {} failed", self.id)));
            if reason == "rejected" {
                put("x-els-return-code", AMQPValue::LongLongInt(13));
            }
            put("x-els-attempts", AMQPValue::LongLongInt(if reason == "invalid" { 0 } else { 4 }));
            put(
                "x-els-first-failed-at",
                text(&(self.failed_at - chrono::Duration::seconds(30)).to_rfc3339_opts(SecondsFormat::Millis, true)),
            );
            put("x-els-last-failed-at", text(&time));
        }
        put("traceparent", text(&format!("00-{}-01", self.id)));
        let body = self.body.clone().unwrap_or_else(|| {
            event(self.infno, self.code, Some(1), row(self.infno, &format!("KEY-{}", self.id), "1")).to_string().into_bytes()
        });
        let properties = BasicProperties::default()
            .with_headers(headers)
            .with_message_id(self.id.as_str().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        (body, properties)
    }
}

fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 0, 0, 0).single().unwrap()
}

/// `count` dead letters: reasons, transactions, institutions and failure times in a
/// fixed pattern, plus a body that is not JSON and a message without any reason.
fn letters(count: usize) -> Vec<Letter> {
    let reasons = ["exhausted", "rejected", "exhausted", "invalid"];
    let mut letters: Vec<Letter> = (0..count)
        .map(|i| Letter {
            id: format!("dl-{i:05}"),
            reason: Some(reasons[i % 4]),
            infno: Infno::UPLOADS[i % 6],
            code: if i % 5 == 0 { H2 } else { H1 },
            failed_at: base_time() + chrono::Duration::minutes(i as i64),
            body: None,
        })
        .collect();
    if let Some(last) = letters.last_mut() {
        last.body = Some(b"{not json".to_vec());
        last.reason = Some("invalid");
    }
    if let Some(first) = letters.first_mut() {
        first.reason = None;
    }
    letters
}

async fn fill_dead_letter_queue(client: &Client, letters: &[Letter]) {
    let messages: Vec<_> = letters.iter().map(Letter::message).collect();
    client.put("els.dead", &messages).await;
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_peek_and_dry_run_leave_every_message_in_place_in_order_with_its_headers() {
    let vhost = unique_vhost("dlq-read");
    let dir = tempfile::tempdir().unwrap();
    let config = amqp_config(dir.path(), vhost.url());
    Amqp::connect(vhost.url()).await.declare(&test_retry()).await;
    let client = Client::connect(vhost.url()).await;
    // More than two channels' worth (2000 each): the reader uses several consumers.
    let letters = letters(4500);
    fill_dead_letter_queue(&client, &letters).await;
    let before: Vec<(Vec<u8>, BasicProperties)> = letters.iter().map(Letter::message).collect();

    let output = els(&["dlq", "stats", "--json"], &config);
    assert!(output.status.success(), "{}", show(&output));
    let stats: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let count = |f: &dyn Fn(&Letter) -> bool| letters.iter().filter(|l| f(l)).count() as u64;
    assert_eq!(stats["total"], letters.len() as u64);
    assert_eq!(stats["scanned"], letters.len() as u64);
    let reason_of = |l: &Letter| l.reason.unwrap_or("other");
    for reason in ["exhausted", "rejected", "invalid", "other"] {
        assert_eq!(stats["by_reason"][reason], count(&|l| reason_of(l) == reason), "{reason}: {stats}");
    }
    assert_eq!(stats["by_institution"][H2], count(&|l| l.code == H2 && l.body.is_none()));
    assert_eq!(stats["by_institution"]["-"], 1, "the body that is not JSON names no institution");
    assert_eq!(stats["by_infno"]["ELS7003"], count(&|l| l.infno == Infno::Els7003 && l.body.is_none()));
    let group_total: u64 = stats["groups"].as_array().unwrap().iter().map(|g| g["count"].as_u64().unwrap()).sum();
    assert_eq!(group_total, letters.len() as u64);
    let with_time: Vec<&Letter> = letters.iter().filter(|l| l.reason.is_some()).collect();
    let rfc = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    assert_eq!(stats["oldest_failed_at"], rfc(with_time.first().unwrap().failed_at));
    assert_eq!(stats["newest_failed_at"], rfc(with_time.last().unwrap().failed_at));

    let table = els(&["dlq", "stats"], &config);
    assert!(table.status.success(), "{}", show(&table));
    assert!(stdout(&table).contains(&format!("els.dead: {} dead letters counted", letters.len())), "{}", show(&table));

    // Peek shows the head of the queue with its headers and record.
    let output = els(&["dlq", "peek", "-n", "3", "--json"], &config);
    assert!(output.status.success(), "{}", show(&output));
    let shown = json_lines(&stdout(&output));
    assert_eq!(shown.iter().map(|m| m["message_id"].as_str().unwrap()).collect::<Vec<_>>(), ["dl-00000", "dl-00001", "dl-00002"]);
    let second = &shown[1];
    assert_eq!(second["reason"], "rejected");
    assert_eq!(second["error"], "why dl-00001 failed");
    assert_eq!(second["return_code"], 13);
    assert_eq!(second["attempts"], 4);
    assert_eq!(second["last_failed_at"], rfc(letters[1].failed_at));
    assert_eq!(second["first_failed_at"], rfc(letters[1].failed_at - chrono::Duration::seconds(30)));
    assert_eq!(second["infno"], "ELS7003");
    assert_eq!(second["institution"], H1);
    assert_eq!(second["key"], "KEY-dl-00001");
    assert_eq!(second["record"]["hosp_purc_mgt_detl"], "KEY-dl-00001");
    assert!(second["delivery_count"].as_i64().unwrap() >= 1, "{second}");
    let text = els(&["dlq", "peek", "-n", "1", "--reason", "rejected"], &config);
    assert!(stdout(&text).contains("return code:  13") && stdout(&text).contains("dl-00001"), "{}", show(&text));

    // A filtered peek far into the queue (past the first channel) and a dry run.
    let output = els(&["dlq", "peek", "-n", "10000", "--json", "--reason", "rejected", "--institution", H2], &config);
    let ids: Vec<String> = json_lines(&stdout(&output)).iter().map(|m| m["message_id"].as_str().unwrap().to_owned()).collect();
    let expected: Vec<String> =
        letters.iter().filter(|l| l.reason == Some("rejected") && l.code == H2 && l.body.is_none()).map(|l| l.id.clone()).collect();
    assert_eq!(ids, expected);
    let output = els(&["dlq", "replay", "--dry-run"], &config);
    assert!(output.status.success(), "{}", show(&output));
    let would = stdout(&output).lines().filter(|l| l.starts_with("would move: ")).count() as u64;
    assert_eq!(would, count(&|l| matches!(l.reason, Some("rejected" | "exhausted")) && l.body.is_none()));
    assert!(stdout(&output).contains("nothing was changed"), "{}", show(&output));

    // Nothing moved, nothing lost, same order, same body, same properties and headers; the
    // broker counted each read in x-delivery-count.
    assert!(client.take_all("els.events").await.is_empty(), "a dry run published nothing");
    let after = client.take_all("els.dead").await;
    assert_eq!(after.len(), before.len());
    for (raw, (body, properties)) in after.iter().zip(&before) {
        assert_eq!(&raw.body, body, "{}", raw.id());
        assert_eq!(raw.properties.message_id(), properties.message_id());
        assert_eq!(raw.properties.content_type(), properties.content_type());
        assert_eq!(raw.properties.delivery_mode(), properties.delivery_mode());
        let published: BTreeMap<String, AMQPValue> =
            properties.headers().as_ref().unwrap().inner().iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        assert_eq!(raw.own_headers(), published, "{}", raw.id());
        let reads = raw.text("x-delivery-count").and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        assert!(reads >= 3, "{}: read by stats twice and the dry run, x-delivery-count {reads}", raw.id());
    }
    client.close().await;
}

/// RabbitMQ 4 drops a quorum-queue message returned more than 20 times unless its queue
/// says otherwise: the dead-letter queue the worker declares must keep every dead letter
/// through more reads than that (on 3.10 there is no such limit; the test runs on both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_read_25_times_are_all_still_there() {
    const READS: usize = 25;
    let vhost = unique_vhost("dlq-25-reads");
    let dir = tempfile::tempdir().unwrap();
    let config = amqp_config(dir.path(), vhost.url());
    Amqp::connect(vhost.url()).await.declare(&test_retry()).await;
    let client = Client::connect(vhost.url()).await;
    let letters = letters(40);
    fill_dead_letter_queue(&client, &letters).await;

    for read in 1..=READS {
        // Both read every message, peek too (it holds what it does not show).
        let command: &[&str] = if read % 2 == 0 { &["dlq", "stats", "--json"] } else { &["dlq", "peek", "-n", "5"] };
        let output = els(command, &config);
        assert!(output.status.success(), "read {read}: {}", show(&output));
    }

    let after = client.take_all("els.dead").await;
    assert_eq!(after.iter().map(Raw::id).collect::<Vec<_>>(), letters.iter().map(|l| l.id.clone()).collect::<Vec<_>>());
    for raw in &after {
        let reads = raw.text("x-delivery-count").and_then(|n| n.parse::<usize>().ok()).unwrap_or(0);
        assert!(reads >= READS, "{}: the broker counted {reads} reads of {READS}", raw.id());
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_moves_exactly_what_the_filters_select_and_keeps_the_rest_in_order() {
    let vhost = unique_vhost("dlq-filters");
    let dir = tempfile::tempdir().unwrap();
    let config = amqp_config(dir.path(), vhost.url());
    Amqp::connect(vhost.url()).await.declare(&test_retry()).await;
    let client = Client::connect(vhost.url()).await;
    let letters = letters(60);
    fill_dead_letter_queue(&client, &letters).await;
    let by_id: BTreeMap<String, &Letter> = letters.iter().map(|l| (l.id.clone(), l)).collect();
    let mut remaining: Vec<&Letter> = letters.iter().collect();

    let check_moved = async |remaining: &mut Vec<&Letter>, selected: &dyn Fn(&Letter) -> bool, moved: Vec<Raw>| {
        let expected: Vec<String> = remaining.iter().filter(|l| selected(l)).map(|l| l.id.clone()).collect();
        assert!(!expected.is_empty(), "the test selects something");
        let ids: Vec<String> = moved.iter().map(Raw::id).collect();
        assert_eq!(ids, expected, "exactly the selected dead letters, in queue order");
        remaining.retain(|l| !selected(l));
    };

    // Time window (Beijing wall clock) and transaction; since included, until excluded.
    let since = base_time() + chrono::Duration::minutes(10);
    let until = base_time() + chrono::Duration::minutes(40);
    let since_beijing = (since + chrono::Duration::hours(8)).format("%Y-%m-%d %H:%M:%S").to_string();
    let until_rfc = until.to_rfc3339();
    let in_window = |l: &Letter| l.failed_at >= since && l.failed_at < until && l.reason.is_some();
    let output = els(
        &["dlq", "replay", "--reason", "exhausted,rejected", "--infno", "ELS7004", "--since", &since_beijing, "--until", &until_rfc],
        &config,
    );
    assert!(output.status.success(), "{}", show(&output));
    let selected = |l: &Letter| in_window(l) && l.infno == Infno::Els7004 && matches!(l.reason, Some("exhausted" | "rejected"));
    let moved = client.take_all("els.events").await;
    check_moved(&mut remaining, &selected, moved.clone()).await;
    // The copies: body and properties kept, retry state reset, replay stamped, routed by the body.
    for raw in &moved {
        let letter = by_id[&raw.id()];
        assert_eq!(raw.body, letter.message().0);
        assert_eq!(raw.routing_key, format!("{}.{}", letter.infno, letter.code));
        assert_eq!(raw.properties.content_type().as_ref().map(|s| s.as_str()), Some("application/json"));
        assert_eq!(*raw.properties.delivery_mode(), Some(2));
        for gone in [
            "x-els-reason",
            "x-els-error",
            "x-els-return-code",
            "x-els-attempts",
            "x-els-first-failed-at",
            "x-els-last-failed-at",
            "x-death",
        ] {
            assert!(raw.header(gone).is_none(), "{gone} is reset in {:?}", raw.properties.headers());
        }
        // The work queue's own counter starts again (the broker adds it on delivery).
        assert!(matches!(raw.text("x-delivery-count").as_deref(), None | Some("0")), "{:?}", raw.properties.headers());
        assert_eq!(raw.text("x-els-replayed").as_deref(), Some("1"));
        let stamped = DateTime::parse_from_rfc3339(&raw.text("x-els-replayed-at").unwrap()).unwrap();
        assert!((Utc::now() - stamped.with_timezone(&Utc)).num_seconds().abs() < 120);
        assert_eq!(raw.text("traceparent"), Some(format!("00-{}-01", raw.id())), "other headers are kept");
    }

    // --dry-run with an institution lists exactly the selection and moves nothing.
    let output = els(&["dlq", "replay", "--dry-run", "--institution", H2], &config);
    assert!(output.status.success(), "{}", show(&output));
    let listed: Vec<String> = stdout(&output)
        .lines()
        .filter_map(|l| l.strip_prefix("would move: "))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = remaining
        .iter()
        .filter(|l| l.code == H2 && matches!(l.reason, Some("exhausted" | "rejected")) && l.body.is_none())
        .map(|l| l.id.clone())
        .collect();
    assert_eq!(listed, expected);
    assert!(client.take_all("els.events").await.is_empty());

    // --limit: the first N of the selection.
    let output = els(&["dlq", "replay", "--reason", "rejected", "--institution", H2, "--limit", "2"], &config);
    assert!(output.status.success(), "{}", show(&output));
    let first_two: BTreeSet<String> = remaining
        .iter()
        .filter(|l| l.reason == Some("rejected") && l.code == H2 && l.body.is_none())
        .take(2)
        .map(|l| l.id.clone())
        .collect();
    check_moved(&mut remaining, &|l: &Letter| first_two.contains(&l.id), client.take_all("els.events").await).await;

    // The default: rejected and exhausted, never invalid or unknown ones.
    let output = els(&["dlq", "replay"], &config);
    assert!(output.status.success(), "{}", show(&output));
    check_moved(&mut remaining, &|l: &Letter| matches!(l.reason, Some("exhausted" | "rejected")), client.take_all("els.events").await)
        .await;
    assert!(remaining.iter().all(|l| matches!(l.reason, None | Some("invalid"))));

    // Invalid ones only when asked for; the one whose body is not JSON keeps the key it carries.
    let output = els(&["dlq", "replay", "--reason", "invalid"], &config);
    assert!(output.status.success(), "{}", show(&output));
    let moved = client.take_all("els.events").await;
    let not_json = moved.iter().find(|m| m.body == b"{not json").expect("the message that is not JSON was replayed");
    assert_eq!(not_json.routing_key, "els.dead", "no infno in the body: the routing key the dead letter carries");
    check_moved(&mut remaining, &|l: &Letter| l.reason == Some("invalid"), moved).await;

    // What no command selected is still there, in its order, with its headers.
    let left = client.take_all("els.dead").await;
    assert_eq!(left.iter().map(Raw::id).collect::<Vec<_>>(), remaining.iter().map(|l| l.id.clone()).collect::<Vec<_>>());
    assert_eq!(remaining.len(), 1, "only the message without a reason");
    assert_eq!(left[0].own_headers().len(), 1, "{:?}", left[0].properties.headers());
    client.close().await;
}

/// A simulator, a vhost and a worker whose retry budget is 3 s, with `count` events that
/// went through a platform outage and are now dead letters `exhausted`; the outage is over.
struct Exhausted {
    sim: TestSimulator,
    vhost: common::broker::TestVhost,
    config: PathBuf,
    worker: WorkerProcess,
    keys: BTreeSet<String>,
}

async fn exhausted_dead_letters(label: &str, count: usize) -> Exhausted {
    let sim = TestSimulator::builder().institutions(1).start();
    let vhost = unique_vhost(label);
    let retry = RetrySettings { initial_backoff_ms: 100, max_backoff_ms: 1000, max_elapsed_secs: 3 };
    Amqp::connect(vhost.url()).await.declare(&retry).await;
    let toml = worker_toml(vhost.url(), 200).replace("max_elapsed_secs = 600", "max_elapsed_secs = 3");
    assert!(toml.contains("max_elapsed_secs = 3"));
    let config = sim.write_client_config("worker.toml", &toml);
    let code = sim.institution(0).code.clone();

    // An outage longer than the retry budget.
    sim.start_outage(3600).await;
    let mut keys = BTreeSet::new();
    let mut file = String::new();
    for i in 0..count {
        let infno = Infno::UPLOADS[i % 6];
        let key = format!("{label}-{i:04}");
        keys.insert(key.clone());
        file.push_str(&format!("{}\n", event(infno, &code, Some(1), row(infno, &key, "5"))));
    }
    let events = config.with_file_name("events.jsonl");
    std::fs::write(&events, file).unwrap();
    let published = els(&["publish", events.to_str().unwrap()], &config);
    assert!(published.status.success(), "{}", show(&published));
    assert!(stdout(&published).contains(&format!("{count} lines read: {count} published")), "{}", show(&published));

    let worker = WorkerProcess::start(&config, "worker");
    vhost.wait_for_counts("els.dead", QueueCounts::new(count as u64, 0), Duration::from_secs(120));
    assert_eq!(sim.records(&RecordFilter::default()).await.total, 0);
    sim.clear_fault("outage").await;
    Exhausted { sim, vhost, config, worker, keys }
}

async fn wait_until_stored(sim: &TestSimulator, keys: &BTreeSet<String>) {
    eventually("every record at the platform", Duration::from_secs(120), async || {
        let page = sim.records(&RecordFilter::default()).await;
        let stored: BTreeSet<String> = page.records.iter().map(|r| r.key.clone()).collect();
        (&stored == keys).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_longer_than_the_retry_budget_replay_brings_every_exhausted_record_to_the_platform() {
    let Exhausted { sim, vhost, config, mut worker, keys } = exhausted_dead_letters("dlq-outage", 60).await;

    let output = els(&["dlq", "stats", "--json"], &config);
    assert!(output.status.success(), "{}", show(&output));
    let stats: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(stats["total"], 60, "{stats}");
    assert_eq!(stats["by_reason"], serde_json::json!({"exhausted": 60}));
    assert_eq!(stats["by_institution"], serde_json::json!({"H32128200338": 60}));
    for infno in Infno::UPLOADS {
        assert_eq!(stats["by_infno"][infno.as_str()], 10);
    }
    let output = els(&["dlq", "peek", "-n", "1", "--json"], &config);
    let peeked = &json_lines(&stdout(&output))[0];
    assert_eq!(peeked["reason"], "exhausted");
    assert!(peeked["attempts"].as_i64().unwrap() >= 1, "{peeked}");
    assert!(!peeked["error"].as_str().unwrap().is_empty());
    assert!(peeked["message_id"].as_str().unwrap().starts_with("events.jsonl:"), "{peeked}");

    let output = els(&["dlq", "replay"], &config);
    assert!(output.status.success(), "{}", show(&output));
    assert!(stdout(&output).contains("60 matched: 60 moved to els.events, 0 not moved"), "{}", show(&output));
    wait_until_stored(&sim, &keys).await;
    vhost.wait_for_counts("els.dead", QueueCounts::EMPTY, Duration::from_secs(30));
    vhost.wait_for_counts("els.events", QueueCounts::EMPTY, Duration::from_secs(30));
    assert!(worker.terminate(Duration::from_secs(30)).success(), "{}", worker.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_halfway_and_run_again_loses_nothing() {
    let Exhausted { sim, vhost, config, mut worker, keys } = exhausted_dead_letters("dlq-kill", 60).await;

    // 10 a second: the kill lands while most are still in the dead-letter queue.
    let mut replay = command(&["dlq", "replay", "--rate", "10"], &config).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    eventually("some replayed records at the platform", Duration::from_secs(60), async || {
        (sim.records(&RecordFilter::default()).await.total >= 10).then_some(())
    })
    .await;
    assert!(replay.try_wait().unwrap().is_none(), "the replay was still running when killed");
    replay.kill().unwrap();
    replay.wait().unwrap();
    assert!(sim.records(&RecordFilter::default()).await.total < keys.len(), "killed halfway");

    // Its consumer is gone once the broker noticed; what it held is back in els.dead.
    eventually("the killed replay's consumer gone", Duration::from_secs(30), async || {
        let consumers = rabbitmqctl(&["list_consumers", "-p", vhost.name(), "queue_name"]);
        (!consumers.lines().any(|l| l.trim() == "els.dead")).then_some(())
    })
    .await;
    let output = els(&["dlq", "replay"], &config);
    assert!(output.status.success(), "{}", show(&output));
    wait_until_stored(&sim, &keys).await;
    vhost.wait_for_counts("els.dead", QueueCounts::EMPTY, Duration::from_secs(30));
    vhost.wait_for_counts("els.events", QueueCounts::EMPTY, Duration::from_secs(30));
    assert!(worker.terminate(Duration::from_secs(30)).success(), "{}", worker.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_by_groups_a_mix_of_refusals_and_peek_csv_parses() {
    let common::worker::World { sim, vhost, amqp } =
        common::worker::World::new("dlq-triage", TestSimulator::builder().institutions(1).start()).await;
    let code = sim.institution(0).code.clone();
    let config = sim.write_client_config("worker.toml", &worker_toml(vhost.url(), 100));
    let mut worker = WorkerProcess::start(&config, "worker");
    sim.refuse_keys(&["R15-A", "R15-B", "R15-C"], 15).await;
    sim.refuse_keys(&["R13-A"], 13).await;
    let product = |key: &str, product: &str| {
        let mut data = row(Infno::Els7002, key, "2");
        data.insert("prov_plaf_prod_code".into(), Value::String(product.into()));
        event(Infno::Els7002, &code, Some(1), data)
    };
    let mut invalid = row(Infno::Els7002, "BAD-1", "-1");
    invalid.insert("er_flag".into(), Value::String("9".into()));
    amqp.publish(&[
        product("R15-A", "P-GONE"),
        product("R15-B", "P-GONE"),
        product("R15-C", "P-OTHER"),
        product("R13-A", "P-13"),
        product("OK-1", "P-OK"),
        event(Infno::Els7002, &code, Some(1), invalid),
    ])
    .await;
    vhost.wait_for_counts("els.dead", QueueCounts::new(5, 0), Duration::from_secs(120));
    vhost.wait_for_counts("els.events", QueueCounts::EMPTY, Duration::from_secs(60));

    let groups = |by: &str| -> Vec<Value> {
        let output = els(&["dlq", "stats", "--by", by, "--json"], &config);
        assert!(output.status.success(), "{}", show(&output));
        let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
        assert_eq!(json["letters"], 5, "{json}");
        json["groups"].as_array().unwrap().clone()
    };
    let codes: Vec<(Value, Value)> = groups("return-code").iter().map(|g| (g["return_code"].clone(), g["count"].clone())).collect();
    assert_eq!(codes, vec![(15.into(), 3.into()), (Value::Null, 1.into()), (13.into(), 1.into())]);
    let fields: Vec<(Value, Value)> = groups("field").iter().map(|g| (g["field"].clone(), g["count"].clone())).collect();
    assert_eq!(fields, vec![(Value::Null, 4.into()), ("er_flag".into(), 1.into()), ("stoin_cnt".into(), 1.into())]);
    let values: Vec<(Value, Value, Value)> =
        groups("value").iter().map(|g| (g["field"].clone(), g["value"].clone(), g["count"].clone())).collect();
    assert_eq!(values[0], ("prov_plaf_prod_code".into(), "P-GONE".into(), 2.into()), "{values:?}");
    assert!(values.contains(&("prov_plaf_prod_code".into(), "P-13".into(), 1.into())), "{values:?}");
    assert!(values.contains(&("er_flag".into(), "9".into(), 1.into())), "{values:?}");
    let table = els(&["dlq", "stats", "--by", "return-code"], &config);
    assert!(stdout(&table).contains("data not found"), "{}", show(&table));

    let output = els(&["dlq", "peek", "--csv"], &config);
    assert!(output.status.success(), "{}", show(&output));
    let mut reader = csv::Reader::from_reader(output.stdout.as_slice());
    let rows: Vec<BTreeMap<String, String>> = reader.deserialize().map(|r| r.expect("CSV")).collect();
    assert_eq!(rows.len(), 5);
    let gone: Vec<&BTreeMap<String, String>> = rows.iter().filter(|r| r["prov_plaf_prod_code"] == "P-GONE").collect();
    assert_eq!(gone.len(), 2);
    assert!(gone.iter().all(|r| r["return_code"] == "15" && r["meaning"] == "data not found" && r["reason"] == "rejected"));
    assert!(String::from_utf8_lossy(&output.stderr).contains("5 shown of 5 matching"), "{}", show(&output));
    // --lang zh-CN: the purchasing office's sheet under Chinese column headers, same rows.
    let chinese = els(&["dlq", "peek", "--csv", "--lang", "zh-CN"], &config);
    assert!(chinese.status.success(), "{}", show(&chinese));
    let mut reader = csv::Reader::from_reader(chinese.stdout.as_slice());
    let header: Vec<String> = reader.headers().expect("a header").iter().map(str::to_owned).collect();
    assert_eq!(header[..4], ["消息ID", "死信原因", "返回码", "返回码含义"], "{header:?}");
    assert_eq!(reader.records().count(), 5);
    vhost.wait_for_counts("els.dead", QueueCounts::new(5, 0), Duration::from_secs(10));
    assert!(worker.terminate(Duration::from_secs(30)).success(), "{}", worker.logs());
    amqp.close().await;
}
