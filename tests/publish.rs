//! `els-bridge publish` against a real broker (a vhost per test): invalid lines are reported
//! by line number and skipped (or, with --strict, nothing is published), valid lines are
//! published as they are with the contract's routing key and properties, and --rate paces.
//! Assertions read the queues, never logs.

mod common;

use common::run::{COMMAND_LIMIT, OutputWithin};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::broker::unique_vhost;
use common::records::{event, row};
use common::simulator::{test_institutions, write_config};
use common::worker::Amqp;
use els_bridge::config::RetrySettings;
use els_bridge::spec::Infno;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::json;

fn test_retry() -> RetrySettings {
    RetrySettings { initial_backoff_ms: 100, max_backoff_ms: 1000, max_elapsed_secs: 600 }
}

/// A configuration with `[amqp]` and one institution.
fn config(dir: &Path, url: &str) -> PathBuf {
    write_config(dir, "publish.toml", &test_institutions(1), "http://127.0.0.1:1/unused", &format!("[amqp]\nurl = {url:?}\n"))
}

fn publish(args: &[&str], config: &Path) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_els-bridge"));
    command
        .arg("publish")
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("ELS_BRIDGE_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("ELS_BRIDGE__")) {
        command.env_remove(name);
    }
    command.output_within(COMMAND_LIMIT).expect("run els-bridge publish")
}

fn show(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A message taken from a queue.
struct Taken {
    routing_key: String,
    body: Vec<u8>,
    properties: BasicProperties,
}

/// Takes every message of `queue`.
async fn take_all(url: &str, queue: &str) -> Vec<Taken> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await.expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let mut taken = Vec::new();
    while let Some(message) = channel.basic_get(queue.into(), BasicGetOptions::default()).await.expect("basic.get") {
        let delivery = message.delivery;
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
        taken.push(Taken { routing_key: delivery.routing_key.to_string(), body: delivery.data, properties: delivery.properties });
    }
    let _ = connection.close(200, "done".into()).await;
    taken
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_lines_are_reported_by_number_and_valid_ones_published_as_they_are() {
    let vhost = unique_vhost("publish-lines");
    Amqp::connect(vhost.url()).await.declare(&test_retry()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), vhost.url());
    let code = test_institutions(1)[0].code.clone();

    let first = event(Infno::Els7002, &code, Some(7), row(Infno::Els7002, "IN-1", "3")).to_string();
    let second = event(Infno::Els7005, &code, None, row(Infno::Els7005, "OUT-1", "2")).to_string();
    let mut omitted = event(Infno::Els7006, &code, None, row(Infno::Els7006, "RET-1", "1"));
    omitted.as_object_mut().unwrap().remove("fixmedins_code");
    let omitted = omitted.to_string();
    let mut bad_row = row(Infno::Els7003, "OUT-2", "1");
    bad_row.insert("stoout_cnt".into(), json!("-4"));
    let lines = [
        format!("\u{feff}{first}"),                                                                // 1: valid, with a BOM
        String::new(),                                                                             // 2: blank
        "{\"infno\": \"ELS7002\", ".to_owned(),                                                    // 3: not JSON
        format!("  {second}  \r"),                                                                 // 4: valid, CRLF
        event(Infno::Els7004, "H99999999999", None, row(Infno::Els7004, "IN-9", "1")).to_string(), // 5: unknown institution
        omitted.clone(),                                                                           // 6: valid, institution omitted
        event(Infno::Els7003, &code, None, bad_row).to_string(),                                   // 7: a field rule broken
    ];
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();

    let output = publish(&[file.to_str().unwrap()], &config);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = file.display();
    assert!(stdout.contains(&format!("{path}:3: not valid JSON")), "{}", show(&output));
    assert!(stdout.contains(&format!("{path}:5: fixmedins_code: ")), "{}", show(&output));
    assert!(stdout.contains(&format!("{path}:7: data.stoout_cnt: ")), "{}", show(&output));
    for valid in [1, 2, 4, 6] {
        assert!(!stdout.contains(&format!("{path}:{valid}:")), "line {valid} is not reported: {}", show(&output));
    }
    assert!(stdout.contains("6 lines read: 3 published, 3 invalid, 0 not published"), "{}", show(&output));

    let taken = take_all(vhost.url(), "els.events").await;
    assert_eq!(taken.len(), 3);
    let expected = [
        (1, first.clone(), format!("ELS7002.{code}")),
        (4, format!("  {second}  "), format!("ELS7005.{code}")),
        (6, omitted.clone(), format!("ELS7006.{code}")),
    ];
    for (message, (line, body, key)) in taken.iter().zip(&expected) {
        assert_eq!(String::from_utf8_lossy(&message.body), *body, "the line's bytes, without line ending or BOM");
        assert_eq!(&message.routing_key, key);
        assert_eq!(*message.properties.delivery_mode(), Some(2));
        assert_eq!(message.properties.content_type().as_ref().map(|s| s.as_str()), Some("application/json"));
        let id = message.properties.message_id().as_ref().map(|s| s.to_string()).unwrap_or_default();
        let prefix = format!("events.jsonl:{line}:");
        assert!(id.starts_with(&prefix) && id.len() == prefix.len() + 16, "message_id {id}");
    }

    // The same file again: the same message ids, so a duplicate is recognisable.
    let again = publish(&[file.to_str().unwrap()], &config);
    assert_eq!(again.status.code(), Some(1));
    let ids = |taken: &[Taken]| taken.iter().map(|t| t.properties.message_id().clone()).collect::<Vec<_>>();
    assert_eq!(ids(&take_all(vhost.url(), "els.events").await), ids(&taken));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_publishes_nothing_when_any_line_is_invalid() {
    let vhost = unique_vhost("publish-strict");
    let amqp = Amqp::connect(vhost.url()).await;
    amqp.declare(&test_retry()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), vhost.url());
    let code = test_institutions(1)[0].code.clone();
    let good: String =
        (0..5).map(|i| format!("{}\n", event(Infno::Els7002, &code, None, row(Infno::Els7002, &format!("IN-{i}"), "1")))).collect();
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, format!("{good}[1, 2]\n")).unwrap();

    let output = publish(&["--strict", file.to_str().unwrap()], &config);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&format!("{}:6: expected a JSON object", file.display())), "{}", show(&output));
    assert!(stdout.contains("nothing was published (--strict)"), "{}", show(&output));

    // A marker published after the run is the only message in the work queue.
    amqp.publish_raw("ELS7002.marker", b"{}", "marker").await;
    let taken = take_all(vhost.url(), "els.events").await;
    assert_eq!(taken.iter().map(|t| t.routing_key.as_str()).collect::<Vec<_>>(), ["ELS7002.marker"]);

    // Without the invalid line, --strict publishes everything.
    std::fs::write(&file, &good).unwrap();
    let output = publish(&["--strict", file.to_str().unwrap()], &config);
    assert!(output.status.success(), "{}", show(&output));
    assert_eq!(take_all(vhost.url(), "els.events").await.len(), 5);
    amqp.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_paces_the_events() {
    let vhost = unique_vhost("publish-rate");
    Amqp::connect(vhost.url()).await.declare(&test_retry()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), vhost.url());
    let code = test_institutions(1)[0].code.clone();
    let lines: String =
        (0..21).map(|i| format!("{}\n", event(Infno::Els7004, &code, None, row(Infno::Els7004, &format!("IN-{i}"), "1")))).collect();
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, lines).unwrap();
    let started = Instant::now();
    let output = publish(&["--rate", "10", file.to_str().unwrap()], &config);
    let took = started.elapsed();
    assert!(output.status.success(), "{}", show(&output));
    assert!(took >= Duration::from_secs(2), "21 events at 10 a second take at least 2 s, took {took:?}");
    assert_eq!(take_all(vhost.url(), "els.events").await.len(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_without_the_exchange_is_a_clear_error() {
    let vhost = unique_vhost("publish-no-topology");
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), vhost.url());
    let code = test_institutions(1)[0].code.clone();
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, format!("{}\n", event(Infno::Els7002, &code, None, row(Infno::Els7002, "IN-1", "1")))).unwrap();
    let output = publish(&[file.to_str().unwrap()], &config);
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("the exchange els.events does not exist"), "{}", show(&output));
}
