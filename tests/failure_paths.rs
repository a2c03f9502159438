//! The failure paths of issue 13: what happens to a delivery when the broker, the headers
//! or the worker itself misbehave. Each test shows a promise of contract §3 ("nothing
//! lost, nothing stuck") on a path that the happy-path tests of `tests/worker.rs` never
//! walk. A real broker (a vhost per test) and the real simulator, as everywhere.

mod common;

use common::run::{COMMAND_LIMIT, OutputWithin};
use std::time::Duration;

use common::broker::QueueCounts;
use common::records::{event, row};
use common::simulator::{TestSimulator, eventually};
use common::worker::{Amqp, Message, WorkerProcess, World, test_retry, worker_config, worker_toml};
use els_bridge::simulator::api::RecordFilter;
use els_bridge::spec::Infno;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

fn routing_key(infno: Infno, code: &str) -> String {
    format!("{infno}.{code}")
}

/// Waits until the simulator holds exactly `count` records; panics naming `what` after `timeout`.
async fn wait_for_stored(sim: &TestSimulator, count: usize, what: &str, timeout: Duration) {
    eventually(what, timeout, async || (sim.records(&RecordFilter::default()).await.records.len() == count).then_some(())).await;
}

/// Waits until `count` replicas consume the work queue (as `rabbitmqctl list_consumers` shows).
async fn wait_for_consumers(vhost: &common::broker::TestVhost, count: usize) {
    eventually(&format!("{count} replicas consume"), Duration::from_secs(30), async || {
        let consumers = common::broker::rabbitmqctl(&["list_consumers", "-p", vhost.name(), "queue_name"]);
        (consumers.lines().filter(|l| l.trim() == "els.events").count() == count).then_some(())
    })
    .await;
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

/// `x-els-attempts` at its largest value on a message back from a delay queue: the next
/// attempt must not overflow (a panic in a
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
    // As if back from a delay queue just now: only then does the worker trust the count.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    headers.insert(ShortString::from("x-els-parked-until"), AMQPValue::LongString(now.as_str().into()));
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
    wait_for_stored(&sim, 1, "the first record is stored", Duration::from_secs(30)).await;

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
        tokio::time::timeout(Duration::from_secs(20), connections.recv())
            .await
            .unwrap_or_else(|_| panic!("connection attempt {n} did not come:\n{}", worker.logs()));
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

/// A setting that lives in a stream's arguments (`ledger.retention_days` is the ledger's
/// `x-max-age`) changed since the stream was created: the worker uses the stream as it is,
/// says so, and uploads, instead of failing every connection with PRECONDITION_FAILED (a
/// rolling update that never completes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_ledger_retention_does_not_stop_the_worker() {
    use lapin::options::QueueDeclareOptions;
    let World { sim, vhost, amqp } = World::with_institutions("retention-changed", 1).await;
    let code = sim.institution(0).code.clone();
    let connection = lapin::Connection::connect(vhost.url(), lapin::ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
    arguments.insert("x-max-age".into(), AMQPValue::LongString("7D".into()));
    arguments.insert("x-stream-max-segment-size-bytes".into(), AMQPValue::LongLongInt(1_000_000));
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare("els.ledger".into(), durable, arguments).await.expect("the ledger as another retention made it");
    let _ = connection.close(200, "declared".into()).await;

    let mut worker = WorkerProcess::start(&worker_config(&sim, &vhost, 100), "retention-changed");
    let body = event(Infno::Els7004, &code, Some(1), row(Infno::Els7004, "RETENTION-1", "1")).to_string();
    amqp.publish_raw(&routing_key(Infno::Els7004, &code), body.as_bytes(), "retention-1").await;
    wait_for_stored(&sim, 1, "the record is stored", Duration::from_secs(30)).await;
    assert!(worker.terminate(Duration::from_secs(30)).success());
    let logs = worker.logs();
    assert!(logs.contains("exists with another x-max-age"), "{logs}");
    assert!(!logs.contains("reconnecting"), "no connection was lost over it: {logs}");
    amqp.close().await;
}

/// The 21st process of a fleet finds every msgid slot held: it says so once, clearly, at
/// ERROR (not "connection lost" on every try), waits, and takes the first slot that frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_21st_process_says_once_that_the_fleet_is_full_and_waits_for_a_slot() {
    let World { sim, vhost, amqp } = World::with_institutions("slots-full", 1).await;
    let code = sim.institution(0).code.clone();
    let settings = els_bridge::config::AmqpSettings { url: secrecy::SecretString::from(vhost.url().to_owned()), ..Default::default() };
    let holder = els_bridge::broker::connect(&settings, "twenty processes").await.unwrap();
    for _ in 0..20 {
        els_bridge::broker::claim_msgid_slot(&holder, "els").await.unwrap();
    }
    let mut worker = WorkerProcess::start(&worker_config(&sim, &vhost, 100), "slots-full");
    eventually("the worker tried three times", Duration::from_secs(30), async || {
        (worker.logs().matches("still no free msgid slot").count() >= 3).then_some(())
    })
    .await;
    let logs = worker.logs();
    assert_eq!(logs.matches("msgid slots (els.msgid.slot.0 to els.msgid.slot.19) are held by other processes").count(), 1, "{logs}");
    assert!(!logs.contains("broker connection lost"), "{logs}");

    // One process of the fleet stops: the waiting one takes over.
    let _ = holder.close(200, "done".into()).await;
    let body = event(Infno::Els7005, &code, Some(1), row(Infno::Els7005, "SLOT-1", "1")).to_string();
    amqp.publish_raw(&routing_key(Infno::Els7005, &code), body.as_bytes(), "slot-1").await;
    wait_for_stored(&sim, 1, "the record is stored", Duration::from_secs(30)).await;
    assert!(worker.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}

/// Publishes one valid event of `key` whose headers claim a first failure at `first_failed_at`.
async fn publish_claiming_failure(amqp: &Amqp, code: &str, key: &str, first_failed_at: &str) {
    let mut headers = FieldTable::default();
    headers.insert(ShortString::from("x-els-attempts"), AMQPValue::LongLongInt(3));
    headers.insert(ShortString::from("x-els-first-failed-at"), AMQPValue::LongString(first_failed_at.into()));
    let properties = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
    let body = event(Infno::Els7006, code, Some(1), row(Infno::Els7006, key, "1")).to_string();
    amqp.publish_with(&routing_key(Infno::Els7006, code), body.as_bytes(), properties).await;
}

/// Retry headers a publisher wrote do not decide the retry budget: a first failure in 1970
/// is not "exhausted" at the first failure (the event is retried and stored once the
/// platform is back), and one in 2099 does not make the retries last for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_headers_from_outside_do_not_steer_the_retry_budget() {
    let World { sim, vhost, amqp } = World::with_institutions("forged-retry", 1).await;
    let code = sim.institution(0).code.clone();
    let budget = "max_elapsed_secs = 600\n";
    let short = "max_elapsed_secs = 3\n";

    // 1970, with a budget of 10 minutes and an outage of a few seconds: stored, not dead.
    sim.start_outage(3).await;
    publish_claiming_failure(&amqp, &code, "FORGED-1970", "1970-01-01T00:00:00.000Z").await;
    let config = worker_config(&sim, &vhost, 100);
    let mut worker = WorkerProcess::start(&config, "forged-1970");
    wait_for_stored(&sim, 1, "the 1970 event is stored", Duration::from_secs(60)).await;
    assert!(amqp.take_all("els.dead").await.is_empty(), "dead-lettered at the first failure");
    assert!(worker.terminate(Duration::from_secs(30)).success());

    // 2099, with a budget of 3 s and an outage that outlasts it: exhausted.
    sim.start_outage(600).await;
    let text = std::fs::read_to_string(&config).unwrap().replace(budget, short);
    std::fs::write(&config, text).unwrap();
    publish_claiming_failure(&amqp, &code, "FORGED-2099", "2099-01-01T00:00:00.000Z").await;
    let mut worker = WorkerProcess::start(&config, "forged-2099");
    let letters = dead_letters(&amqp, 1, Duration::from_secs(60)).await;
    assert_eq!(letters[0].headers.get("x-els-reason").map(String::as_str), Some("exhausted"), "{:?}", letters[0].headers);
    assert!(worker.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}

/// An event whose AMQP headers nearly fill a frame (the broker takes it as it is): the
/// worker's dead letter adds its own headers, and a copy that no longer fits a frame made
/// the broker close the whole connection (FRAME_ERROR), the event came back for ever and
/// nothing behind it was uploaded. The copy keeps what fits and says what was cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_with_headers_that_fill_a_frame_is_dead_lettered_and_the_rest_flows() {
    let World { sim, vhost, amqp } = World::with_institutions("huge-headers", 1).await;
    let code = sim.institution(0).code.clone();
    let mut headers = FieldTable::default();
    headers.insert(ShortString::from("x-junk"), AMQPValue::LongString("j".repeat(130_850).into()));
    headers.insert(ShortString::from("traceparent"), AMQPValue::LongString("00-huge-01".into()));
    let properties = BasicProperties::default().with_delivery_mode(2).with_message_id("huge".into()).with_headers(headers);
    amqp.publish_with(&routing_key(Infno::Els7002, &code), b"{not json", properties).await;
    let valid: Vec<serde_json::Value> =
        (0..20).map(|i| event(Infno::Els7002, &code, Some(1), row(Infno::Els7002, &format!("BEHIND-{i}"), "1"))).collect();
    amqp.publish(&valid).await;
    let mut worker = WorkerProcess::start(&worker_config(&sim, &vhost, 100), "huge-headers");

    wait_for_stored(&sim, 20, "the 20 events behind it are stored", Duration::from_secs(60)).await;
    let letters = dead_letters(&amqp, 1, Duration::from_secs(30)).await;
    let letter = &letters[0];
    assert_eq!(letter.headers.get("x-els-reason").map(String::as_str), Some("invalid"));
    assert!(!letter.headers.contains_key("x-junk"), "the header that did not fit is cut");
    assert_eq!(letter.headers.get("traceparent").map(String::as_str), Some("00-huge-01"), "what fits is kept");
    assert!(letter.headers.get("x-els-headers-cut").is_some_and(|h| h.contains("x-junk")), "{:?}", letter.headers);
    assert!(!worker.logs().contains("broker connection lost"), "{}", worker.logs());
    assert!(worker.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}

/// The ledger stream is deleted under a running worker (or loses its member on a cluster):
/// the session ends and the worker reconnects, declaring it again, instead of going on as
/// a zombie that parks every batch with an attempt counted (`/readyz` said ready all along).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ledger_stream_ends_the_session_and_counts_no_attempt() {
    let World { sim, vhost, amqp } = World::with_institutions("ledger-lost", 1).await;
    let code = sim.institution(0).code.clone();
    let mut worker = WorkerProcess::start(&worker_config(&sim, &vhost, 100), "ledger-lost");
    let first = event(Infno::Els7003, &code, Some(1), row(Infno::Els7003, "BEFORE", "1")).to_string();
    amqp.publish_raw(&routing_key(Infno::Els7003, &code), first.as_bytes(), "before").await;
    wait_for_stored(&sim, 1, "the first record is stored", Duration::from_secs(30)).await;

    amqp.delete_queue("els.ledger").await;
    let after: Vec<serde_json::Value> =
        (0..20).map(|i| event(Infno::Els7003, &code, Some(1), row(Infno::Els7003, &format!("AFTER-{i}"), "1"))).collect();
    amqp.publish(&after).await;
    wait_for_stored(&sim, 21, "the 20 later records are stored", Duration::from_secs(60)).await;
    assert!(amqp.take_all("els.dead").await.is_empty());
    assert!(vhost.queue_counts("els.ledger").is_some(), "the ledger was declared again");
    let logs = worker.logs();
    assert!(logs.contains("the ledger or token stream is no longer read"), "{logs}");
    assert!(!logs.contains("retrying later"), "no attempt was counted against a record: {logs}");
    assert!(worker.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}

/// The link to the broker stops carrying anything without closing, mid-load (through a
/// relay that goes silent): the worker notices within twice `amqp.heartbeat_secs` (10 s by
/// default), reconnects, and loses nothing. With the broker's 60 s heartbeat it took two
/// minutes and more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_link_to_the_broker_is_noticed_and_nothing_is_lost() {
    let World { sim, vhost, amqp } = World::with_institutions("silent-link", 1).await;
    let code = sim.institution(0).code.clone();
    let host_port = {
        let after = vhost.url().split_once('@').map(|(_, a)| a).unwrap();
        after.split('/').next().unwrap().to_owned()
    };
    let relay = common::relay::Relay::start(host_port).await;
    let config = worker_config(&sim, &vhost, 100);
    let text = std::fs::read_to_string(&config).unwrap().replace(vhost.url(), &relay.url(vhost.url()));
    std::fs::write(&config, text).unwrap();
    let mut worker = WorkerProcess::start(&config, "silent-link");

    let wave = |from: usize| -> Vec<serde_json::Value> {
        (from..from + 60).map(|i| event(Infno::Els7007, &code, Some(1), row(Infno::Els7007, &format!("LINK-{i}"), "1"))).collect()
    };
    amqp.publish(&wave(0)).await;
    wait_for_stored(&sim, 60, "the first wave is stored", Duration::from_secs(30)).await;
    let connections = relay.accepted();
    relay.freeze();
    amqp.publish(&wave(60)).await;
    wait_for_stored(&sim, 120, "the second wave is stored after a reconnect", Duration::from_secs(50)).await;
    assert!(relay.accepted() > connections, "the worker connected again");
    assert!(amqp.take_all("els.dead").await.is_empty());
    assert!(worker.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}

/// The platform issued a token but its answer was lost: until that token is within 5
/// minutes of expiry the platform answers 9 ("one is held") to every ELS7001 call. The
/// worker must not call ELS7001 with every batch attempt meanwhile (520 calls in 2 minutes
/// before: each counts against the daily call limit): it waits 30 s, then longer, and
/// uploads once a new token can be had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_token_answer_does_not_start_a_storm_of_token_calls() {
    use els_bridge::simulator::api::{CallFilter, TimeoutMode, Timeouts};
    // The lost token lives 40 s; a new one is issued in its last 30 s.
    let sim = TestSimulator::builder().institutions(1).arg("--token-validity-secs", 40).arg("--token-refresh-window-secs", 30).start();
    let World { sim, vhost, amqp } = World::new("token-storm", sim).await;
    let code = sim.institution(0).code.clone();
    sim.set_timeouts(Timeouts { next: 1, rate: 0.0, mode: TimeoutMode::Close, hang_ms: 0, processed: true }).await;
    let events: Vec<serde_json::Value> =
        (0..10).map(|i| event(Infno::Els7002, &code, Some(1), row(Infno::Els7002, &format!("STORM-{i}"), "1"))).collect();
    amqp.publish(&events).await;
    let config = worker_config(&sim, &vhost, 100);
    // A lead shorter than the 40 s tokens, so that a fresh token is used as it is.
    let text = std::fs::read_to_string(&config).unwrap().replace("[platform]\n", "[platform]\ntoken_refresh_lead_secs = 10\n");
    std::fs::write(&config, text).unwrap();
    let mut worker = WorkerProcess::start(&config, "token-storm");

    wait_for_stored(&sim, 10, "the records are stored once a new token can be had", Duration::from_secs(90)).await;
    let token_calls = sim.calls(&CallFilter { infno: Some("ELS7001".into()), ..Default::default() }).await.calls.len();
    // The lost one, a 9, another 9 or the new token after 30 s, maybe one more after 60 s.
    assert!(token_calls <= 5, "{token_calls} ELS7001 calls:\n{}", worker.logs());
    assert!(amqp.take_all("els.dead").await.is_empty());
    assert!(worker.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}

/// Replica A uploads version 2 of a key; replica B gets version 1 meanwhile. Version 1
/// was acked as "superseded" by A's *claim*, and then the platform refused version 2: the
/// key was nowhere. Now a newer version supersedes only once it is accepted: B waits for
/// A's upload, and since version 2 was refused, version 1 is uploaded (or, refused as
/// well, dead-lettered): every message ends at the platform or as a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_is_not_superseded_by_a_newer_one_that_is_then_refused() {
    let World { sim, vhost, amqp } = World::with_institutions("superseded-refused", 1).await;
    let code = sim.institution(0).code.clone();
    sim.set_latency(6_000, 6_000).await;
    sim.refuse_keys(&["RACED"], 13).await;
    let config = worker_config(&sim, &vhost, 50);
    let mut a = WorkerProcess::start(&config, "replica-a");
    let mut b = WorkerProcess::start(&config, "replica-b");
    // Both consume (rabbitmqctl shows two consumers on the work queue).
    wait_for_consumers(&vhost, 2).await;

    let v2 = event(Infno::Els7002, &code, Some(2), row(Infno::Els7002, "RACED", "2")).to_string();
    amqp.publish_raw(&routing_key(Infno::Els7002, &code), v2.as_bytes(), "v2").await;
    eventually("a replica holds version 2", Duration::from_secs(20), async || {
        vhost.queue_counts("els.events").filter(|c| c.unacked == 1 && c.ready == 0).map(|_| ())
    })
    .await;
    let v1 = event(Infno::Els7002, &code, Some(1), row(Infno::Els7002, "RACED", "1")).to_string();
    amqp.publish_raw(&routing_key(Infno::Els7002, &code), v1.as_bytes(), "v1").await;

    // Version 2 is refused and dead-lettered; then the refusal is lifted.
    let mut letters = dead_letters(&amqp, 1, Duration::from_secs(60)).await;
    sim.clear_fault("refusals").await;
    let version_of = |m: &Message| m.body["version"].as_u64();
    assert_eq!(version_of(&letters[0]), Some(2), "{:?}", letters[0].body);
    // Version 1 ends at the platform, or as a dead letter if it was refused too: never acked unseen.
    let outcome = eventually("version 1 is stored or dead-lettered", Duration::from_secs(60), async || {
        letters.extend(amqp.take_all("els.dead").await);
        if letters.iter().any(|m| version_of(m) == Some(1)) {
            return Some("dead-lettered");
        }
        let page = sim.records(&RecordFilter::default()).await;
        page.records.iter().any(|r| r.key == "RACED" && r.row["stoin_cnt"] == "1").then_some("stored")
    })
    .await;
    eprintln!("version 1 was {outcome}");
    assert!(a.terminate(Duration::from_secs(30)).success());
    assert!(b.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}

/// A long upload (a refused batch bisected, several slow calls) outlasts the claim TTL:
/// its holder renews its claim while it works, so another replica waits instead of
/// taking the claim for abandoned and uploading version 2 before this one's version 1 (a
/// stale overwrite). With `ledger.claim_ttl_secs` at 2 s and 4 s per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_outlasting_its_ttl_while_its_holder_works_keeps_its_keys() {
    let World { sim, vhost, amqp } = World::with_institutions("claim-renewed", 1).await;
    let code = sim.institution(0).code.clone();
    sim.set_latency(4_000, 4_000).await;
    sim.refuse_keys(&["REFUSED-R"], 13).await;
    let config = worker_config(&sim, &vhost, 50);
    let text = std::fs::read_to_string(&config).unwrap();
    let with_ttl =
        |prefetch: &str| text.replace("prefetch = 500\n", prefetch).replace("[worker]\n", "[ledger]\nclaim_ttl_secs = 2\n\n[worker]\n");
    let config_a = config.with_file_name("a.toml");
    std::fs::write(&config_a, with_ttl("prefetch = 2\n")).unwrap();
    std::fs::write(&config, with_ttl("prefetch = 500\n")).unwrap();

    // Replica A takes version 1 of K and a row the platform refuses, in one batch (its
    // prefetch is 2: version 2 can only go to B).
    let k1 = event(Infno::Els7002, &code, Some(1), row(Infno::Els7002, "K", "1"));
    let refused = event(Infno::Els7002, &code, Some(1), row(Infno::Els7002, "REFUSED-R", "1"));
    amqp.publish(&[k1, refused]).await;
    let mut a = WorkerProcess::start(&config_a, "replica-a");
    eventually("replica A holds both", Duration::from_secs(20), async || {
        vhost.queue_counts("els.events").filter(|c| c.unacked == 2 && c.ready == 0).map(|_| ())
    })
    .await;
    let mut b = WorkerProcess::start(&config, "replica-b");
    wait_for_consumers(&vhost, 2).await;
    let k2 = event(Infno::Els7002, &code, Some(2), row(Infno::Els7002, "K", "2")).to_string();
    amqp.publish_raw(&routing_key(Infno::Els7002, &code), k2.as_bytes(), "k2").await;

    let letters = dead_letters(&amqp, 1, Duration::from_secs(60)).await;
    assert_eq!(letters[0].body["data"]["hosp_purc_mgt_detl"], "REFUSED-R");
    vhost.wait_for_counts("els.events", QueueCounts::EMPTY, Duration::from_secs(60));
    let page = sim.records(&RecordFilter::default()).await;
    let k = page.records.iter().find(|r| r.key == "K").expect("K is at the platform");
    assert_eq!(k.row["stoin_cnt"], "2", "version 1 overwrote version 2:\n{}\n{}", a.logs(), b.logs());
    assert!(a.terminate(Duration::from_secs(30)).success());
    assert!(b.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}

/// A bisection that would outlast the broker's consumer timeout (here a policy of 8 s on
/// the work queue, where the broker allows one: RabbitMQ 3.12 and later; 30 minutes by
/// default): the broker took the deliveries back, closed the channel, and the bisection
/// started over, for ever. `batch.max_upload_secs` cuts the upload short before that: the
/// rows not settled yet are parked and retried, and every row ends at the platform or as a
/// dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bisection_stops_before_the_consumer_timeout_and_every_row_settles() {
    let World { sim, vhost, amqp } = World::with_institutions("long-bisection", 1).await;
    let code = sim.institution(0).code.clone();
    let policy = r#"{"consumer-timeout": 8000}"#;
    if let Err(error) =
        common::broker::try_rabbitmqctl(&["set_policy", "-p", vhost.name(), "short-consumer-timeout", "^els\\.events$", policy])
    {
        eprintln!("this broker has no consumer-timeout policy (before 3.12); the upload limit is tested alone: {error}");
    }
    sim.set_latency(1_500, 1_500).await;
    sim.refuse_keys(&["BISECT-5"], 13).await;
    let config = worker_config(&sim, &vhost, 500);
    let text = std::fs::read_to_string(&config).unwrap().replace("linger_ms = 500\n", "linger_ms = 500\nmax_upload_secs = 4\n");
    std::fs::write(&config, text).unwrap();
    let events: Vec<serde_json::Value> =
        (0..8).map(|i| event(Infno::Els7002, &code, Some(1), row(Infno::Els7002, &format!("BISECT-{i}"), "1"))).collect();
    amqp.publish(&events).await;
    let mut worker = WorkerProcess::start(&config, "long-bisection");

    let letters = dead_letters(&amqp, 1, Duration::from_secs(90)).await;
    assert_eq!(letters[0].body["data"]["hosp_purc_mgt_detl"], "BISECT-5");
    wait_for_stored(&sim, 7, "the 7 other rows are stored", Duration::from_secs(60)).await;
    vhost.wait_for_counts("els.events", QueueCounts::EMPTY, Duration::from_secs(30));
    assert!(worker.logs().contains("batch.max_upload_secs"), "the upload was cut short at least once");
    assert!(worker.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}

/// `send` with `[amqp]` loses its broker connection in the middle of a back-fill (the
/// broker closed it): it connects again, takes a msgid slot and the fleet's token on the
/// new connection, and uploads every row, instead of failing every later call until its
/// retry budget runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_connects_again_when_its_broker_connection_is_lost() {
    let sim = TestSimulator::builder().institutions(1).start();
    let vhost = common::broker::unique_vhost("send-reconnect");
    // Ten calls of a second each, four at a time, then five seconds each once 200 rows are
    // in: the connection is closed while most calls are still to come, however long
    // rabbitmqctl takes on a loaded machine.
    sim.set_latency(1_000, 1_000).await;
    let config = worker_config(&sim, &vhost, 100);
    let file = config.with_file_name("backfill.jsonl");
    let rows: Vec<_> = (0..1000).map(|i| row(Infno::Els7004, &format!("FILL-{i:04}"), "1")).collect();
    std::fs::write(&file, common::records::jsonl(&rows)).unwrap();
    let send = std::process::Command::new(env!("CARGO_BIN_EXE_els-bridge"))
        .args(["send", "--infno", "ELS7004", "--max-retry-secs", "20", "--config"])
        .arg(&config)
        .arg(&file)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually("send has uploaded some rows", Duration::from_secs(60), async || {
        (sim.records(&RecordFilter::default()).await.total >= 200).then_some(())
    })
    .await;
    sim.set_latency(5_000, 5_000).await;
    let connections = common::broker::rabbitmqctl(&["list_connections", "vhost", "pid"]);
    let mine: Vec<&str> =
        connections.lines().filter_map(|l| l.split_once('\t')).filter(|(v, _)| *v == vhost.name()).map(|(_, pid)| pid.trim()).collect();
    assert!(!mine.is_empty(), "send's connection is listed: {connections}");
    for pid in mine {
        common::broker::rabbitmqctl(&["close_connection", pid, "a test closes it"]);
    }
    let stored = sim.records(&RecordFilter::default()).await.total;
    assert!(stored < 1000, "all rows were uploaded before the connection was closed: nothing left to connect again for");

    let output = tokio::task::spawn_blocking(move || send.wait_with_output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(sim.records(&RecordFilter::default()).await.total, 1000, "{stdout}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("connecting again"), "{}", String::from_utf8_lossy(&output.stderr));
}

/// Acks held back behind an older delivery are lost with the connection, and the broker
/// delivers their messages again, although their records were accepted. Meanwhile the
/// record was corrected (here by a back-fill with `send`; another replica does the same):
/// the copy must not overwrite the correction. Unversioned events, so only the receipts'
/// fingerprints of the messages can tell the copy from a new event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_copy_of_an_accepted_record_does_not_overwrite_its_correction() {
    let World { sim, vhost, amqp } = World::with_institutions("redelivered-copy", 1).await;
    let code = sim.institution(0).code.clone();
    let config = worker_config(&sim, &vhost, 500);
    let text = std::fs::read_to_string(&config).unwrap();
    // Calls of two rows; the ELS7003 event lingers a minute, holding back the acks after it.
    let holding = config.with_file_name("holding.toml");
    std::fs::write(&holding, text.replace("linger_ms = 500\n", "linger_ms = 60000\nmax_records = 2\n")).unwrap();
    let waiting = event(Infno::Els7003, &code, None, row(Infno::Els7003, "WAITING", "1"));
    let first = event(Infno::Els7002, &code, None, row(Infno::Els7002, "CORRECTED", "1"));
    let filler = event(Infno::Els7002, &code, None, row(Infno::Els7002, "FILLER", "1"));
    amqp.publish(&[waiting, first, filler]).await;
    let mut holder = WorkerProcess::start(&holding, "holder");
    wait_for_stored(&sim, 2, "the ELS7002 call is stored", Duration::from_secs(30)).await;

    // The correction, uploaded with the fleet's ledger while the copy's ack is held back.
    let file = config.with_file_name("correction.jsonl");
    std::fs::write(&file, common::records::jsonl(&[row(Infno::Els7002, "CORRECTED", "5")])).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_els-bridge"))
        .args(["send", "--infno", "ELS7002", "--config"])
        .arg(&config)
        .arg(&file)
        .output_within(COMMAND_LIMIT)
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stored = |page: &els_bridge::simulator::api::RecordsPage| {
        page.records.iter().find(|r| r.key == "CORRECTED").and_then(|r| r.row["stoin_cnt"].as_str().map(str::to_owned))
    };
    assert_eq!(stored(&sim.records(&RecordFilter::default()).await).as_deref(), Some("5"));
    // The broker's counts of a quorum queue lag by a few seconds.
    eventually("the accepted deliveries' acks are held back behind the lingering one", Duration::from_secs(20), async || {
        (vhost.queue_counts("els.events") == Some(QueueCounts::new(0, 3))).then_some(())
    })
    .await;

    holder.kill();
    let mut worker = WorkerProcess::start(&config, "after");
    wait_for_stored(&sim, 3, "the lingering record is stored", Duration::from_secs(30)).await;
    vhost.wait_for_counts("els.events", QueueCounts::EMPTY, Duration::from_secs(30));
    let page = sim.records(&RecordFilter::default()).await;
    assert_eq!(stored(&page).as_deref(), Some("5"), "the copy overwrote the correction:\n{}", worker.logs());
    assert!(worker.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}

/// Counts the ledger's claims per `at`, read with the library's own stream reader (which
/// syncs on a marker of its own, so every entry confirmed before is counted).
#[derive(Default)]
struct Claims(Vec<chrono::DateTime<chrono::Utc>>);

impl els_bridge::broker::log::Fold for Claims {
    type Change = els_bridge::ledger::Entry;
    type Read<'de> = els_bridge::ledger::Entry;

    fn apply(&mut self, change: els_bridge::ledger::Entry) {
        if let els_bridge::ledger::Entry::Claim(claim) = change {
            self.0.push(claim.at);
        }
    }
}

async fn ledger_claims(vhost: &common::broker::TestVhost) -> Vec<chrono::DateTime<chrono::Utc>> {
    let connection = lapin::Connection::connect(vhost.url(), lapin::ConnectionProperties::default()).await.unwrap();
    let settings = els_bridge::ledger::log_settings("els", &els_bridge::config::LedgerSettings::default(), 1);
    let log = els_bridge::broker::log::StreamLog::open(&connection, &settings, Claims::default()).await.unwrap();
    let claims = log.read(|claims| claims.0.clone()).unwrap();
    connection.close(200, "counted".into()).await.unwrap();
    claims
}

/// A platform outage with a backlog: every batch used to claim its keys in the ledger (a
/// claim and a release) and call the platform at every attempt, so the ledger grew with
/// backlog × attempts (442 k entries after a long outage, a ledger no worker could open
/// in time) and the calls used up the daily limit. Now three failures in a row hold the
/// institution as failing: its batches are parked unsent (an attempt counted) while one
/// at a time probes. 20 s of outage, 30 batches waiting, a backoff from 0.1 s doubling to
/// 2 s (each wait at least half of that, so the growing waits add up to 1.55 s): the 30
/// batches claim at once when they are taken; from 2 s after those claims to the outage's
/// last second every batch retrying made some 400 claims, and the probes make at most one
/// a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_costs_a_claim_per_probe_not_per_batch_and_attempt() {
    let World { sim, vhost, amqp } = World::with_institutions("outage-claims", 1).await;
    let code = sim.institution(0).code.clone();
    let config = worker_config(&sim, &vhost, 100);
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text
        .replace("linger_ms = 100\n", "linger_ms = 100\nmax_records = 10\n")
        .replace("max_backoff_ms = 1000\n", "max_backoff_ms = 2000\n");
    std::fs::write(&config, text).unwrap();
    let outage = Duration::from_secs(20);
    sim.start_outage(outage.as_secs()).await;
    let outage_ends = chrono::Utc::now() + outage;
    let events: Vec<serde_json::Value> =
        (0..300).map(|i| event(Infno::Els7002, &code, None, row(Infno::Els7002, &format!("OUT-{i:03}"), "1"))).collect();
    amqp.publish(&events).await;
    let mut worker = WorkerProcess::start(&config, "outage-claims");
    let readyz = format!("http://127.0.0.1:{}/readyz", worker.http_port(Duration::from_secs(30)));
    let failing = eventually("/readyz lists the institution as failing", Duration::from_secs(15), async || {
        let body: serde_json::Value = reqwest::get(&readyz).await.ok()?.json().await.ok()?;
        body["failing_institutions"][&code].as_str().map(str::to_owned)
    })
    .await;
    assert!(failing.contains("HTTP 503"), "{failing}");

    wait_for_stored(&sim, 300, "every record is stored after the outage", Duration::from_secs(120)).await;
    // The batches dispatched at once claim before any call has failed (whenever the worker
    // got going); after that, only probes, one a second at most once the backoff has grown.
    let claims = ledger_claims(&vhost).await;
    let first = claims.iter().min().copied().expect("claims were made");
    let (from, to) = (first + chrono::Duration::seconds(2), outage_ends - chrono::Duration::seconds(1));
    assert!(
        to - from >= chrono::Duration::seconds(10),
        "the worker started {} s into the outage: too late to show anything",
        (first - (outage_ends - outage)).num_seconds()
    );
    let later = claims.iter().filter(|at| **at > from && **at < to).count();
    let allowed = usize::try_from((to - from).num_seconds()).unwrap_or(0) + 3;
    assert!(
        later <= allowed,
        "{later} claims in the {} s of the outage after the first 2 s of claims ({} in all):\n{}",
        (to - from).num_seconds(),
        claims.len(),
        worker.logs()
    );
    assert!(worker.logs().contains("one batch at a time probes"), "{}", worker.logs());
    vhost.wait_for_counts("els.events", QueueCounts::EMPTY, Duration::from_secs(30));
    assert!(worker.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}

/// A ledger that takes longer than half a minute to read at start-up (here 11 MB of claims
/// through a link of 300 KB/s: about 37 s): opening used to give up after 30 s in all, and
/// every reconnect started the read over, so the worker never started. Now it waits as
/// long as entries keep arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_that_takes_longer_than_half_a_minute_to_read_still_opens() {
    let World { sim, vhost, amqp } = World::with_institutions("long-ledger", 1).await;
    let code = sim.institution(0).code.clone();
    fill_ledger(&vhost, &code, 2_200).await;
    let host_port = vhost.url().split_once('@').and_then(|(_, after)| after.split('/').next()).unwrap().to_owned();
    let relay = common::relay::Relay::start(host_port).await;
    relay.throttle(300_000);
    let config = worker_config(&sim, &vhost, 100);
    let text = std::fs::read_to_string(&config).unwrap().replace(vhost.url(), &relay.url(vhost.url()));
    std::fs::write(&config, text).unwrap();
    let started = std::time::Instant::now();
    let mut worker = WorkerProcess::start(&config, "long-ledger");

    let after = event(Infno::Els7002, &code, None, row(Infno::Els7002, "AFTER-THE-READ", "1"));
    amqp.publish(&[after]).await;
    wait_for_stored(&sim, 1, "the event is stored once the ledger is read", Duration::from_secs(120)).await;
    assert!(started.elapsed() > Duration::from_secs(30), "the ledger was read in {:?}: the test shows nothing", started.elapsed());
    assert!(!worker.logs().contains("did not come back"), "{}", worker.logs());
    assert!(worker.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}

/// Appends `claims` claims of 100 keys each (about 5 KB apiece), each released, to the ledger.
async fn fill_ledger(vhost: &common::broker::TestVhost, code: &str, claims: usize) {
    use els_bridge::ledger::{Claim, Entry};
    let connection = lapin::Connection::connect(vhost.url(), lapin::ConnectionProperties::default()).await.unwrap();
    let settings = els_bridge::ledger::log_settings("els", &els_bridge::config::LedgerSettings::default(), 1);
    let log = els_bridge::broker::log::StreamLog::open(&connection, &settings, Claims::default()).await.unwrap();
    for chunk in 0..claims.div_ceil(100) {
        let entries = (chunk * 100..((chunk + 1) * 100).min(claims)).flat_map(|n| {
            let id = format!("fill-{n}");
            let keys = (0..100).map(|k| (format!("FILLED-BEFORE-{n:06}-{k:03}-0000000000000000"), Some(1))).collect();
            let claim = Claim {
                id: id.clone(),
                institution: code.to_owned(),
                infno: Infno::Els7002,
                keys,
                at: chrono::Utc::now(),
                holder: None,
                replica: None,
            };
            [Entry::Claim(claim), Entry::Release { claim: id }]
        });
        futures_util::future::try_join_all(entries.map(|entry| log.append_confirmed(entry))).await.unwrap();
    }
    connection.close(200, "filled".into()).await.unwrap();
}
