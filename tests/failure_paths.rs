//! The failure paths of issue 13: what happens to a delivery when the broker, the headers
//! or the worker itself misbehave. Each test shows a promise of contract §3 ("nothing
//! lost, nothing stuck") on a path that the happy-path tests of `tests/worker.rs` never
//! walk. A real broker (a vhost per test) and the real simulator, as everywhere.

mod common;

use std::time::Duration;

use common::broker::QueueCounts;
use common::records::{event, row};
use common::simulator::{TestSimulator, eventually};
use common::worker::{Amqp, Message, World, WorkerProcess, test_retry, worker_config, worker_toml};
use els_bridge::simulator::api::RecordFilter;
use els_bridge::spec::Infno;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

fn routing_key(infno: Infno, code: &str) -> String {
    format!("{infno}.{code}")
}

/// Takes dead letters until `count` have been read (or panics after `timeout`).
async fn dead_letters(amqp: &Amqp, count: usize, timeout: Duration) -> Vec<Message> {
    let mut taken = Vec::new();
    eventually(&format!("{count} dead letter(s)"), timeout, async || {
        taken.extend(amqp.take_all("els.dead").await);
        (taken.len() >= count).then_some(())
    })
    .await;
    taken
}

/// A dead letter keeps the original's properties, but not its `expiration` (it would
/// vanish from the dead-letter queue with the original's time to live) nor its `user_id`
/// (the broker refuses a copy whose `user_id` is not the worker's own user).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_does_not_expire_with_the_original_and_carries_no_user_id() {
    let World { sim, vhost, amqp } = World::with_institutions("dead-letter-properties", 1).await;
    let code = sim.institution(0).code.clone();
    let mut invalid = row(Infno::Els7002, "EXPIRING-1", "1");
    invalid.insert("purc_pric".into(), "-3".into());
    let body = event(Infno::Els7002, &code, None, invalid).to_string();
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id("expiring-1".into())
        .with_expiration("600000".into())
        .with_user_id("guest".into());
    amqp.publish_with(&routing_key(Infno::Els7002, &code), body.as_bytes(), properties).await;
    let mut worker = WorkerProcess::start(&worker_config(&sim, &vhost, 100), "dead-letter-properties");

    let letters = dead_letters(&amqp, 1, Duration::from_secs(30)).await;
    let letter = &letters[0].properties;
    assert_eq!(letter.message_id().as_ref().map(|m| m.as_str()), Some("expiring-1"));
    assert_eq!(letter.content_type().as_ref().map(|m| m.as_str()), Some("application/json"));
    assert!(letter.expiration().is_none(), "the dead letter expires: {letter:?}");
    assert!(letter.user_id().is_none(), "the dead letter names a user: {letter:?}");
    assert!(worker.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}

/// `x-els-attempts` at its largest value: the next attempt must not overflow (a panic in a
/// debug build, which left the batch's keys in flight for the rest of the session; a wrap
/// to 0 in a release build). The refused record ends as a dead letter with the count kept
/// at its largest, and the worker goes on with the records after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_count_at_its_largest_does_not_overflow() {
    let World { sim, vhost, amqp } = World::with_institutions("attempts-overflow", 1).await;
    let code = sim.institution(0).code.clone();
    sim.refuse_keys(&["REFUSED-MAX"], 13).await;
    let mut headers = FieldTable::default();
    headers.insert(ShortString::from("x-els-attempts"), AMQPValue::LongLongInt(i64::from(u32::MAX)));
    let properties = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
    let body = event(Infno::Els7002, &code, Some(1), row(Infno::Els7002, "REFUSED-MAX", "1")).to_string();
    amqp.publish_with(&routing_key(Infno::Els7002, &code), body.as_bytes(), properties).await;
    let mut worker = WorkerProcess::start(&worker_config(&sim, &vhost, 100), "attempts-overflow");

    let letters = dead_letters(&amqp, 1, Duration::from_secs(30)).await;
    assert_eq!(letters[0].headers.get("x-els-reason").map(String::as_str), Some("rejected"), "{:?}", letters[0].headers);
    assert_eq!(letters[0].headers.get("x-els-attempts").map(String::as_str), Some("4294967295"));
    // The same key again, accepted now: its lane was not left blocked.
    sim.clear_fault("refusals").await;
    let again = event(Infno::Els7002, &code, Some(2), row(Infno::Els7002, "REFUSED-MAX", "2")).to_string();
    amqp.publish_raw(&routing_key(Infno::Els7002, &code), again.as_bytes(), "again").await;
    eventually("the key's next version is stored", Duration::from_secs(30), async || {
        let page = sim.records(&RecordFilter::default()).await;
        page.records.iter().any(|r| r.key == "REFUSED-MAX" && r.row["stoin_cnt"] == "2").then_some(())
    })
    .await;
    assert!(worker.terminate(Duration::from_secs(30)).success(), "{}", worker.logs());
    amqp.close().await;
}

/// A dead letter the broker does not take (here: the dead-letter queue was deleted, so the
/// copy is returned as unroutable) must not leave its original unacked until the broker's
/// consumer timeout (30 minutes): it is handed back and ends as a dead letter once the
/// queue is there again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_the_broker_refuses_is_handed_back_not_held() {
    let World { sim, vhost, amqp } = World::with_institutions("dead-letter-refused", 1).await;
    let code = sim.institution(0).code.clone();
    let mut worker = WorkerProcess::start(&worker_config(&sim, &vhost, 100), "dead-letter-refused");
    // Once a record is stored, the worker has declared its topology and consumes.
    let first = event(Infno::Els7003, &code, None, row(Infno::Els7003, "FIRST", "1")).to_string();
    amqp.publish_raw(&routing_key(Infno::Els7003, &code), first.as_bytes(), "first").await;
    eventually("the first record is stored", Duration::from_secs(30), async || {
        (sim.records(&RecordFilter::default()).await.records.len() == 1).then_some(())
    })
    .await;

    amqp.delete_queue("els.dead").await;
    amqp.publish_raw(&routing_key(Infno::Els7003, &code), b"{not json", "unparsable").await;
    eventually("the worker failed to dead-letter the event", Duration::from_secs(30), async || {
        worker.logs().contains("could not move a message").then_some(())
    })
    .await;

    amqp.declare(&test_retry()).await;
    let letters = dead_letters(&amqp, 1, Duration::from_secs(60)).await;
    assert_eq!(letters[0].headers.get("x-els-reason").map(String::as_str), Some("invalid"));
    vhost.wait_for_counts("els.events", QueueCounts::EMPTY, Duration::from_secs(30));
    assert!(worker.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}

/// A broker address that accepts TCP and never speaks AMQP (a balancer without backends,
/// a wrong port): connecting gives up after `amqp.connect_timeout_secs` and tries again,
/// and SIGTERM ends the worker at once, also in the middle of connecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_never_answers_neither_hangs_the_worker_nor_its_shutdown() {
    let sim = TestSimulator::builder().institutions(1).start();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("amqp://guest:guest@{}/%2f", silent.local_addr().unwrap());
    let (accepted, mut connections) = tokio::sync::mpsc::channel(16);
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket); // never read, never written, never closed
            if accepted.send(()).await.is_err() {
                break;
            }
        }
    });
    // SIGTERM while the worker waits for the handshake (the default timeout is 30 s).
    let config = sim.write_client_config("worker.toml", &worker_toml(&url, 100));
    let mut waiting = WorkerProcess::start(&config, "silent-broker");
    tokio::time::timeout(Duration::from_secs(20), connections.recv()).await.expect("the worker connects");
    let stopped = std::time::Instant::now();
    assert!(waiting.terminate(Duration::from_secs(10)).success(), "{}", waiting.logs());
    assert!(stopped.elapsed() < Duration::from_secs(10));

    // With a timeout of a second: given up, and tried again (a second connection arrives).
    let toml = worker_toml(&url, 100).replace("prefetch = 500\n", "prefetch = 500\nconnect_timeout_secs = 1\n");
    let config = sim.write_client_config("worker.toml", &toml);
    let mut worker = WorkerProcess::start(&config, "silent-broker-timeout");
    for n in 1..=2 {
        tokio::time::timeout(Duration::from_secs(20), connections.recv()).await.unwrap_or_else(|_| {
            panic!("connection attempt {n} did not come:\n{}", worker.logs())
        });
    }
    assert!(worker.logs().contains("did not complete the connection within 1 s"), "{}", worker.logs());
    assert!(worker.terminate(Duration::from_secs(10)).success(), "{}", worker.logs());
    holder.abort();
}

/// After the drain, the HTTP endpoint waits for requests under way, but not for ever: a
/// client that sent half a request must not keep the worker alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_http_request_does_not_keep_the_worker_alive() {
    use tokio::io::AsyncWriteExt;
    let World { sim, vhost, amqp } = World::with_institutions("half-request", 1).await;
    let mut worker = WorkerProcess::start(&worker_config(&sim, &vhost, 100), "half-request");
    let port = worker.http_port(Duration::from_secs(30));
    eventually("the worker is consuming", Duration::from_secs(30), async || {
        let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.ok()?;
        ready.status().is_success().then_some(())
    })
    .await;
    let mut client = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    client.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap(); // no blank line: never finished
    assert!(worker.terminate(Duration::from_secs(20)).success(), "{}", worker.logs());
    drop(client);
    amqp.close().await;
}
