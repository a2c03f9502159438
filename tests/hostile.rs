//! Hostile input and secrets (issue 14) against a real broker, the real simulator and real
//! worker processes: bodies built to break a parser or a memory budget among valid events,
//! and a worker logging at `trace` that must still show no secret.

mod common;

use std::time::Duration;

use common::broker::{QueueCounts, rabbitmqctl};
use common::records::{event, row};
use common::simulator::eventually;
use common::worker::{WorkerProcess, World, worker_config};
use els_bridge::simulator::api::{CallFilter, RecordFilter};
use els_bridge::spec::Infno;

/// Whether `log` shows `secret` as text or as the byte array lapin's frame tracing prints.
fn shows(log: &str, secret: &str) -> bool {
    let bytes: Vec<String> = secret.bytes().map(|b| b.to_string()).collect();
    log.contains(secret) || log.contains(&bytes.join(", ")) || log.contains(&bytes.join(","))
}

/// `RUST_LOG=trace` showed the broker password (lapin's trace of Connection.StartOk) and
/// every access token (the token stream's bodies as byte arrays). Whatever the level, the
/// log holds no broker password, token, auth code or CSB secret key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_logging_at_trace_shows_no_secret() {
    let World { sim, vhost, amqp } = World::with_institutions("trace-secrets", 1).await;
    let institution = sim.institution(0).clone();
    let (user, password) = (format!("els-trace-{}", std::process::id()), format!("Br0ker-S3cret-{}", std::process::id()));
    rabbitmqctl(&["add_user", &user, &password]);
    rabbitmqctl(&["set_permissions", "-p", vhost.name(), &user, ".*", ".*", ".*"]);
    let config = worker_config(&sim, &vhost, 100);
    let text = std::fs::read_to_string(&config).unwrap().replace("guest:guest@", &format!("{user}:{password}@"));
    std::fs::write(&config, text).unwrap();
    let mut worker = WorkerProcess::start_logging(&config, "trace-secrets", "trace");

    amqp.publish(&[event(Infno::Els7002, &institution.code, Some(1), row(Infno::Els7002, "TRACED", "1"))]).await;
    eventually("the record is stored", Duration::from_secs(30), async || {
        (sim.records(&RecordFilter::default()).await.total == 1).then_some(())
    })
    .await;
    assert!(worker.terminate(Duration::from_secs(30)).success());
    let _ = common::broker::try_rabbitmqctl(&["delete_user", &user]);
    let log = worker.logs();
    assert!(log.len() > 10_000 && log.contains("TRACE"), "the worker did log at trace:\n{log}");
    let token = sim.tokens().await.institutions[0].current_token.clone().expect("a token was issued");
    for (what, secret) in [
        ("broker password", &password),
        ("access token", &token),
        ("auth code", &institution.auth_code),
        ("CSB secret key", &institution.secret_key),
    ] {
        assert!(!shows(&log, secret), "the log shows the {what}");
    }
    assert!(!log.contains("Server returned us a message"), "lapin's returned-message warning prints whole messages");
    assert!(
        !log.contains("ERROR"),
        "a clean stop logs no ERROR line:\n{}",
        log.lines().filter(|l| l.contains("ERROR")).collect::<Vec<_>>().join("\n")
    );
    amqp.close().await;
}

/// Bodies published raw among valid events: not UTF-8, nesting 50 000 deep, a 10 000-digit
/// number, NaN, a field named twice, a NUL byte in a value, an 8 MB string, a million fields
/// (17 MB). The worker stays up and small, every hostile body is one `invalid` dead letter
/// with a reason, and every valid record reaches the platform.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_become_dead_letters_and_the_valid_events_flow() {
    let World { sim, vhost, amqp } = World::with_institutions("hostile-bodies", 1).await;
    let code = sim.institution(0).code.clone();
    let valid = |i: usize| event(Infno::Els7004, &code, Some(1), row(Infno::Els7004, &format!("OK-{i:02}"), "1")).to_string();
    let good = valid(99);
    let million_fields = {
        let mut body = String::from("{\"infno\":\"ELS7004\",\"data\":{");
        for n in 0..1_000_000 {
            body.push_str(&format!("\"f{n}\":1,"));
        }
        body.push_str("\"last\":1}}");
        body
    };
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("not UTF-8", b"\xff\xfe{\"infno\":\"ELS7004\"}".to_vec()),
        ("deep nesting", "[".repeat(50_000).into_bytes()),
        ("10 000 digits", good.replace("\"stoin_cnt\":\"1\"", &format!("\"stoin_cnt\":{}", "9".repeat(10_000))).into_bytes()),
        ("NaN", good.replace("\"stoin_cnt\":\"1\"", "\"stoin_cnt\":NaN").into_bytes()),
        ("a field twice", good.replacen("\"stoin_cnt\":\"1\"", "\"stoin_cnt\":\"-5\",\"stoin_cnt\":\"1\"", 1).into_bytes()),
        ("NUL in a value", good.replace("OK-99", "OK-\\u000099").into_bytes()),
        ("8 MB string", good.replace("OK-99", &"x".repeat(8 << 20)).into_bytes()),
        ("a million fields", million_fields.into_bytes()),
    ];
    let key = format!("{}.{code}", Infno::Els7004);
    for (i, (name, body)) in hostile.iter().enumerate() {
        amqp.publish_raw(&key, valid(i).as_bytes(), &format!("valid-{i}")).await;
        amqp.publish_raw(&key, body, name).await;
    }
    drop(hostile);
    let mut worker = WorkerProcess::start(&worker_config(&sim, &vhost, 100), "hostile-bodies");

    let mut letters = Vec::new();
    eventually("8 dead letters", Duration::from_secs(60), async || {
        letters.extend(amqp.take_all("els.dead").await);
        (letters.len() >= 8).then_some(())
    })
    .await;
    eventually("the 8 valid records are stored", Duration::from_secs(30), async || {
        (sim.records(&RecordFilter::default()).await.total == 8).then_some(())
    })
    .await;
    vhost.wait_for_counts("els.events", QueueCounts::EMPTY, Duration::from_secs(30));
    let mut named: Vec<String> =
        letters.iter().map(|l| l.properties.message_id().as_ref().map(|m| m.to_string()).unwrap_or_default()).collect();
    named.sort();
    let mut expected =
        vec!["10 000 digits", "8 MB string", "NUL in a value", "NaN", "a field twice", "a million fields", "deep nesting", "not UTF-8"];
    expected.sort();
    assert_eq!(named, expected);
    for letter in &letters {
        assert_eq!(letter.headers.get("x-els-reason").map(String::as_str), Some("invalid"), "{:?}", letter.headers);
        let error = letter.headers.get("x-els-error").cloned().unwrap_or_default();
        assert!(!error.is_empty() && error.len() < 2_000, "{error}");
    }
    let peak = worker.peak_rss();
    eprintln!("worker peak RSS: {} MiB", peak >> 20);
    assert!(peak < 200 << 20, "peak RSS {} MiB", peak >> 20);
    assert!(worker.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}

/// A byte budget beside the prefetch: with `worker.max_event_bytes = 1024` and
/// `worker.max_held_bytes = 10240`, the sized prefetch (1 250) is cut to 10, which the broker
/// shows for the worker's consumer; 30 events behind a linger of a minute go up in calls of
/// at most 10 rows (the worker never holds more), and all of them arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bytes_a_worker_holds_are_bounded_by_its_budget() {
    let World { sim, vhost, amqp } = World::with_institutions("held-bytes", 1).await;
    let code = sim.institution(0).code.clone();
    let toml = common::worker::worker_toml(vhost.url(), 60_000).replace("prefetch = 500\n", "")
        + "max_event_bytes = 1024\nmax_held_bytes = 10240\n";
    let mut worker = WorkerProcess::start(&sim.write_client_config("budget.toml", &toml), "held-bytes");
    let prefetch = eventually("the worker's consumer", Duration::from_secs(30), async || {
        let consumers = rabbitmqctl(&["list_consumers", "-p", vhost.name(), "queue_name", "prefetch_count"]);
        consumers.lines().find_map(|l| l.strip_prefix("els.events\t")).map(|p| p.trim().to_owned())
    })
    .await;
    assert_eq!(prefetch, "10", "10 KiB of 1 KiB events");

    let events: Vec<_> = (0..30).map(|i| event(Infno::Els7004, &code, Some(1), row(Infno::Els7004, &format!("B-{i:02}"), "1"))).collect();
    amqp.publish(&events).await;
    eventually("the 30 records are stored", Duration::from_secs(60), async || {
        (sim.records(&RecordFilter::default()).await.total == 30).then_some(())
    })
    .await;
    let uploads: Vec<usize> =
        sim.calls(&CallFilter::default()).await.calls.iter().filter(|c| c.infno.as_deref() == Some("ELS7004")).map(|c| c.rows).collect();
    assert!(uploads.iter().all(|rows| *rows <= 10), "rows per call: {uploads:?}");
    assert_eq!(uploads.iter().sum::<usize>(), 30, "rows per call: {uploads:?}");
    assert!(worker.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}
