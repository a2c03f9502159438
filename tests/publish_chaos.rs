//! `els-bridge publish` while the broker's application is stopped and started: every valid
//! line is still confirmed at least once. This stops the whole broker node, so it takes
//! `common::broker::exclusive()` and lives in a test binary of its own.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::broker::{broker_outage, exclusive, unique_vhost};
use common::records::{event, row};
use common::simulator::{test_institutions, write_config};
use common::worker::Amqp;
use els_bridge::config::RetrySettings;
use els_bridge::spec::Infno;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn a_broker_restart_in_the_middle_of_a_file_loses_no_line() {
    let _alone = exclusive();
    let vhost = unique_vhost("publish-chaos");
    let amqp = Amqp::connect(vhost.url()).await;
    amqp.declare(&RetrySettings { initial_backoff_ms: 100, max_backoff_ms: 1000, max_elapsed_secs: 600 }).await;
    amqp.close().await;
    let dir = tempfile::tempdir().unwrap();
    let institutions = test_institutions(1);
    let config =
        write_config(dir.path(), "publish.toml", &institutions, "http://127.0.0.1:1/unused", &format!("[amqp]\nurl = {:?}\n", vhost.url()));
    let count = 2000;
    let lines: String = (0..count)
        .map(|i| {
            let infno = Infno::UPLOADS[i % 6];
            format!("{}\n", event(infno, &institutions[0].code, Some(1), row(infno, &format!("CHAOS-{i:05}"), "1")))
        })
        .collect();
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, lines).unwrap();

    // 100 a second: about twenty seconds of publishing, with the restart early in it (the
    // broker's counts of a quorum queue, which say that publishing began, lag by seconds
    // on a loaded machine: at 200 a second CI once saw the file done before they moved).
    let mut publish = Command::new(env!("CARGO_BIN_EXE_els-bridge"))
        .args(["publish", "--rate", "100", "--config"])
        .arg(&config)
        .arg(&file)
        .env_remove("ELS_BRIDGE_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while vhost.queue_counts("els.events").is_none_or(|c| c.ready == 0) {
        assert!(Instant::now() < deadline, "nothing arrived in the work queue");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(publish.try_wait().unwrap().is_none(), "the restart must land while publish is running");
    broker_outage().end();

    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = publish.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "publish did not finish after the restart");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stdout = String::new();
    publish.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    let mut stderr = String::new();
    publish.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "status {status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains(&format!("{count} lines read: {count} published, 0 invalid, 0 not published")), "{stdout}");
    assert!(stdout.contains("reconnects"), "the connection was lost and recovered: {stdout}");

    // Every line at least once in the work queue.
    let connection = Connection::connect(vhost.url(), ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut total = 0;
    let mut keys = BTreeSet::new();
    let mut ids = BTreeSet::new();
    while let Some(message) = channel.basic_get("els.events".into(), BasicGetOptions::default()).await.unwrap() {
        let delivery = message.delivery;
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        total += 1;
        let body: Value = serde_json::from_slice(&delivery.data).unwrap();
        let infno: Infno = body["infno"].as_str().unwrap().parse().unwrap();
        keys.insert(body["data"][infno.key_field()].as_str().unwrap().to_owned());
        ids.insert(delivery.properties.message_id().as_ref().unwrap().to_string());
    }
    assert!(total >= count, "{total} messages for {count} lines");
    assert_eq!(keys.len(), count, "every record is there");
    assert_eq!(ids.len(), count, "a line published twice keeps its message_id");
    let _ = connection.close(200, "done".into()).await;
}
