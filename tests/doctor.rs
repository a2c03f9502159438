//! `els-bridge doctor` against the real broker (a vhost per test) and the real simulator:
//! a healthy installation passes without anything uploaded, and each fault is named by the
//! check it breaks: a wrong CSB secret key, a wrong broker password, a wrong platform URL,
//! a queue of an earlier release without the delivery limit, a platform clock off by
//! minutes, a broker node that cannot be reached. Also: the metric of the last accepted
//! upload after an upload.

mod common;

use common::run::{COMMAND_LIMIT, OutputWithin};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::broker::unique_vhost;
use common::records::{event, row};
use common::simulator::{TestSimulator, config_toml, eventually};
use common::worker::{Amqp, WorkerProcess, test_retry, worker_toml};
use els_bridge::simulator::api::{CallFilter, RecordFilter};
use els_bridge::spec::Infno;
use serde_json::Value;

/// What one run of doctor printed and its exit status.
struct Report {
    code: i32,
    json: Value,
    text: String,
}

impl Report {
    /// The check `check` of `subject`; panics naming the report when there is none.
    fn check(&self, subject: &str, check: &str) -> &Value {
        self.json["checks"]
            .as_array()
            .and_then(|checks| checks.iter().find(|c| c["subject"] == subject && c["check"] == check))
            .unwrap_or_else(|| panic!("no check {subject:?} {check:?} in\n{}", self.text))
    }

    fn status(&self, subject: &str, check: &str) -> &str {
        self.check(subject, check)["status"].as_str().unwrap_or_default()
    }

    /// Every failed check as `subject: check`.
    fn failed(&self) -> Vec<String> {
        let checks = self.json["checks"].as_array().cloned().unwrap_or_default();
        checks.iter().filter(|c| c["status"] == "fail").map(|c| format!("{}: {}", c["subject"], c["check"])).collect()
    }
}

/// Runs `els-bridge doctor --json --config CONFIG ARGS...`.
async fn doctor(config: &Path, args: &[&str]) -> Report {
    let mut command = Command::new(env!("CARGO_BIN_EXE_els-bridge"));
    command.args(["doctor", "--json", "--config"]).arg(config).args(args).env_remove("ELS_BRIDGE_CONFIG").env("RUST_LOG", "warn");
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("ELS_BRIDGE__")) {
        command.env_remove(name);
    }
    let output =
        tokio::task::spawn_blocking(move || command.output_within(COMMAND_LIMIT)).await.expect("join").expect("run els-bridge doctor");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let text = format!("{stdout}\nstandard error:\n{}", String::from_utf8_lossy(&output.stderr));
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("doctor's output is not JSON ({e}):\n{text}"));
    Report { code: output.status.code().unwrap_or(-1), json, text }
}

/// A configuration of the simulator's institution(s) with `extra` sections, in its folder.
fn config(sim: &TestSimulator, name: &str, extra: &str) -> std::path::PathBuf {
    sim.write_client_config(name, extra)
}

/// The extra sections of a configuration without a broker: tokens in a file of the test.
fn without_broker(dir: &Path) -> String {
    format!("token_file = {:?}\n", dir.join("tokens.json"))
}

#[tokio::test]
async fn a_healthy_installation_passes_and_nothing_is_uploaded() {
    let sim = TestSimulator::builder().institutions(1).start();
    let vhost = unique_vhost("doctor-healthy");
    let code = sim.institution(0).code.clone();
    let config = config(&sim, "worker.toml", &worker_toml(vhost.url(), 100));
    let worker = WorkerProcess::start(&config, "worker");
    let amqp = Amqp::connect(vhost.url()).await;
    eventually("the worker's topology", Duration::from_secs(30), async || vhost.queue_counts("els.events").map(|_| ())).await;
    amqp.publish(&[event(Infno::Els7002, &code, Some(1), row(Infno::Els7002, "DOCTOR-1", "2"))]).await;
    eventually("the upload", Duration::from_secs(60), async || (sim.records(&RecordFilter::default()).await.total == 1).then_some(()))
        .await;
    let uploads_before = sim.calls(&CallFilter { infno: Some("ELS7002".into()), ..Default::default() }).await.last_seq;
    let tokens_before = sim.counters().await.tokens_issued;

    let report = doctor(&config, &["--fetch-token"]).await;
    assert_eq!(report.code, 0, "{}\nworker:\n{}", report.text, worker.logs());
    assert!(report.failed().is_empty(), "{}", report.text);
    let node = format!("broker {}", common::broker::amqp_address());
    for (subject, check) in [
        (node.as_str(), "reachable"),
        (node.as_str(), "version"),
        (node.as_str(), "authenticated"),
        ("broker", "publishing"),
        ("broker", "exchange els.events"),
        ("broker", "queue els.events"),
        ("broker", "consumers els.events"),
        ("broker", "dead letters els.dead"),
        ("broker", "delay queues"),
        ("broker", "stream els.tokens"),
        ("broker", "stream els.ledger"),
        ("platform", &format!("signed request {code}")),
        ("platform", "clock"),
        (&format!("token {code}"), "current"),
        (&format!("token {code}"), "fetch"),
    ] {
        assert_eq!(report.status(subject, check), "ok", "{subject} {check}:\n{}", report.text);
    }
    assert!(report.check(&format!("token {code}"), "current")["values"]["seconds_left"].as_u64().unwrap_or_default() > 25 * 60);
    assert!(report.check("broker", "consumers els.events")["values"]["consumers"].as_u64() >= Some(1));
    // Nothing uploaded, no token fetched: the fleet's token was good.
    let calls = sim.calls(&CallFilter::default()).await;
    let uploads = calls.calls.iter().filter(|c| c.infno.as_deref().is_some_and(|n| n != "ELS7001") && c.seq > uploads_before).count();
    assert_eq!(uploads, 0, "doctor made an upload call: {:?}", calls.calls);
    assert_eq!(sim.counters().await.tokens_issued, tokens_before, "doctor fetched a token although the fleet had one");
    assert_eq!(sim.records(&RecordFilter::default()).await.total, 1);
    for secret in [&sim.institution(0).secret_key, &sim.institution(0).auth_code] {
        assert!(!report.text.contains(secret.as_str()), "a secret in doctor's output:\n{}", report.text);
    }
}

#[tokio::test]
async fn a_wrong_csb_secret_and_a_wrong_broker_password_are_named() {
    let sim = TestSimulator::builder().institutions(1).start();
    let vhost = unique_vhost("doctor-secrets");
    let mut wrong = sim.institution(0).clone();
    wrong.secret_key = "not-the-secret-key".into();
    let url = vhost.url().replacen(":guest@", ":not-the-password@", 1);
    assert_ne!(url, vhost.url(), "the test broker's URL has the guest password");
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("wrong.toml");
    std::fs::write(&path, config_toml(&[wrong.clone()], &sim.interface_url(), &worker_toml(&url, 100))).expect("write");

    let report = doctor(&path, &[]).await;
    assert_eq!(report.code, 1, "{}", report.text);
    let node = format!("broker {}", common::broker::amqp_address());
    assert_eq!(report.status(&node, "reachable"), "ok", "{}", report.text);
    let refused = report.check(&node, "authenticated");
    assert_eq!(refused["status"], "fail", "{}", report.text);
    assert!(refused["fix"].as_str().unwrap_or_default().contains("password of amqp.url"), "{}", report.text);
    let signed = report.check("platform", &format!("signed request {}", wrong.code));
    assert_eq!(signed["status"], "fail", "{}", report.text);
    assert!(signed["detail"].as_str().unwrap_or_default().contains("SIGNATURE_MISMATCH"), "{}", report.text);
    assert!(signed["fix"].as_str().unwrap_or_default().contains("csb_secret_key"), "{}", report.text);
    for secret in ["not-the-password", "not-the-secret-key", &sim.institution(0).auth_code] {
        assert!(!report.text.contains(secret), "a secret in doctor's output:\n{}", report.text);
    }
}

#[tokio::test]
async fn a_wrong_platform_url_is_named() {
    let sim = TestSimulator::builder().institutions(1).start();
    let dir = tempfile::tempdir().expect("temporary directory");
    let institutions = [sim.institution(0).clone()];
    let wrong_path = dir.path().join("path.toml");
    std::fs::write(&wrong_path, config_toml(&institutions, &format!("{}/api/upload", sim.base_url()), &without_broker(dir.path())))
        .expect("write");
    let report = doctor(&wrong_path, &[]).await;
    assert_eq!(report.code, 1, "{}", report.text);
    assert_eq!(report.status("configuration", "platform.url"), "warn", "{}", report.text);
    let signed = report.check("platform", &format!("signed request {}", institutions[0].code));
    assert!(signed["detail"].as_str().unwrap_or_default().contains("returnCode 2"), "{}", report.text);
    assert!(signed["fix"].as_str().unwrap_or_default().contains("/api/commonInterfaca"), "{}", report.text);

    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address");
    let wrong_port = dir.path().join("port.toml");
    let url = format!("http://{closed}/api/commonInterfaca");
    std::fs::write(&wrong_port, config_toml(&institutions, &url, &without_broker(dir.path()))).expect("write");
    let report = doctor(&wrong_port, &[]).await;
    assert_eq!(report.code, 1, "{}", report.text);
    assert_eq!(report.status("platform", "tcp"), "fail", "{}", report.text);
    assert!(report.check("platform", "tcp")["detail"].as_str().unwrap_or_default().contains(&closed.to_string()), "{}", report.text);
}

#[tokio::test]
async fn a_platform_clock_off_by_minutes_is_named() {
    let sim = TestSimulator::builder().institutions(1).arg("--clock-offset-secs", 600).start();
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = config(&sim, "clock.toml", &without_broker(dir.path()));
    let report = doctor(&path, &[]).await;
    assert_eq!(report.code, 1, "{}", report.text);
    let clock = report.check("platform", "clock");
    assert_eq!(clock["status"], "fail", "{}", report.text);
    let offset = clock["values"]["offset_secs"].as_i64().unwrap_or_default();
    assert!((598..=602).contains(&offset), "offset {offset}:\n{}", report.text);
    assert!(clock["detail"].as_str().unwrap_or_default().contains("ahead of this host's"), "{}", report.text);
    // Within the gateway's tolerance (15 min): the signature itself is accepted.
    assert_eq!(report.status("platform", &format!("signed request {}", sim.institution(0).code)), "ok", "{}", report.text);
    assert_eq!(report.failed(), ["\"platform\": \"clock\""], "{}", report.text);
}

#[tokio::test]
async fn a_queue_of_an_earlier_release_without_a_delivery_limit_is_named() {
    let sim = TestSimulator::builder().institutions(1).start();
    let vhost = unique_vhost("doctor-delivery-limit");
    let amqp = Amqp::connect(vhost.url()).await;
    amqp.declare_as_an_earlier_release(&["els.events"]).await;
    amqp.declare(&test_retry()).await;
    let path = config(&sim, "worker.toml", &worker_toml(vhost.url(), 100));
    let report = doctor(&path, &[]).await;
    let node = format!("broker {}", common::broker::amqp_address());
    let version = report.check(&node, "version")["values"]["version"].as_str().unwrap_or_default().to_owned();
    println!("doctor ran against RabbitMQ {version}");
    let limit = report.check("broker", "delivery limit els.events");
    assert_eq!(limit["values"]["x_delivery_limit"], false, "{}", report.text);
    if version.starts_with("3.") {
        assert_eq!(limit["status"], "ok", "3.x has no default limit:\n{}", report.text);
    } else {
        assert_eq!(limit["status"], "warn", "{}", report.text);
        assert!(limit["detail"].as_str().unwrap_or_default().contains("more than 20 times"), "{}", report.text);
        assert!(limit["fix"].as_str().unwrap_or_default().contains("rabbitmqctl set_policy"), "{}", report.text);
    }
    assert_eq!(report.status("broker", "queue els.events"), "ok", "{}", report.text);
    assert!(
        report.json["checks"].as_array().is_some_and(|c| !c.iter().any(|c| c["check"] == "delivery limit els.dead")),
        "{}",
        report.text
    );
}

#[tokio::test]
async fn a_broker_node_that_cannot_be_reached_is_named() {
    let sim = TestSimulator::builder().institutions(1).start();
    let vhost = unique_vhost("doctor-unreachable");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address");
    let nodes = format!("prefetch = 500\nshuffle_addresses = false\naddresses = [\"{closed}\", \"{}\"]\n", common::broker::amqp_address());
    let path = config(&sim, "nodes.toml", &worker_toml(vhost.url(), 100).replacen("prefetch = 500\n", &nodes, 1));
    let report = doctor(&path, &[]).await;
    assert_eq!(report.code, 1, "{}", report.text);
    let unreachable = report.check(&format!("broker {closed}"), "reachable");
    assert_eq!(unreachable["status"], "fail", "{}", report.text);
    assert!(unreachable["fix"].as_str().unwrap_or_default().contains("is RabbitMQ running"), "{}", report.text);
    let node = format!("broker {}", common::broker::amqp_address());
    assert_eq!(report.status(&node, "authenticated"), "ok", "the other node is checked too:\n{}", report.text);
}

#[tokio::test]
async fn the_last_accepted_upload_shows_in_the_metrics() {
    let sim = TestSimulator::builder().institutions(1).start();
    let vhost = unique_vhost("doctor-last-accepted");
    let code = sim.institution(0).code.clone();
    let config = config(&sim, "worker.toml", &worker_toml(vhost.url(), 100));
    let mut worker = WorkerProcess::start(&config, "worker");
    let port = worker.http_port(Duration::from_secs(30));
    let before = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs_f64();
    let amqp = Amqp::connect(vhost.url()).await;
    eventually("the worker's topology", Duration::from_secs(30), async || vhost.queue_counts("els.events").map(|_| ())).await;
    amqp.publish(&[event(Infno::Els7005, &code, Some(1), row(Infno::Els7005, "SILENCE-1", "1"))]).await;
    let value =
        eventually("the gauge of the last accepted upload", Duration::from_secs(60), async || last_accepted(port, &code).await).await;
    let after = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs_f64();
    assert!((before..=after).contains(&value), "{before} <= {value} <= {after}\n{}", worker.logs());
    assert_eq!(sim.records(&RecordFilter::default()).await.total, 1);

    // A replica started later shows it too, from the receipts ledger, before any upload.
    assert!(worker.terminate(Duration::from_secs(30)).success(), "{}", worker.logs());
    let later = WorkerProcess::start(&config, "later");
    let port = later.http_port(Duration::from_secs(30));
    let seen = eventually("the gauge on a restarted replica", Duration::from_secs(30), async || last_accepted(port, &code).await).await;
    assert!((before..=after).contains(&seen), "{before} <= {seen} <= {after}\n{}", later.logs());
}

/// `els_last_accepted_upload_timestamp_seconds` of `code`'s ELS7005 on the worker at `port`.
async fn last_accepted(port: u16, code: &str) -> Option<f64> {
    let series = format!("els_last_accepted_upload_timestamp_seconds{{infno=\"ELS7005\",institution=\"{code}\"}} ");
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.ok()?.text().await.ok()?;
    text.lines().find_map(|line| line.strip_prefix(series.as_str())?.trim().parse::<f64>().ok())
}

#[tokio::test]
async fn a_configuration_that_does_not_load_is_the_one_failed_check() {
    let sim = TestSimulator::builder().institutions(1).start();
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("no-such-secret");
    let text = config_toml(&[sim.institution(0).clone()], &sim.interface_url(), &without_broker(dir.path()));
    let secret = format!("csb_secret_key = {:?}", sim.institution(0).secret_key);
    assert!(text.contains(&secret));
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, text.replace(&secret, &format!("csb_secret_key_file = {missing:?}"))).expect("write");
    let report = doctor(&path, &[]).await;
    assert_eq!(report.code, 2, "{}", report.text);
    assert_eq!(report.failed(), ["\"configuration\": \"loads\""], "{}", report.text);
    let detail = report.check("configuration", "loads")["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains("csb_secret_key") && detail.contains("no-such-secret"), "{}", report.text);
}

#[tokio::test]
async fn fetch_token_proves_the_credentials_when_there_is_no_token_and_names_a_wrong_auth_code() {
    let sim = TestSimulator::builder().institutions(1).start();
    let dir = tempfile::tempdir().expect("temporary directory");
    let right = sim.institution(0).clone();
    let mut wrong = right.clone();
    wrong.auth_code = "not-the-auth-code".into();
    let path = dir.path().join("wrong-auth.toml");
    std::fs::write(&path, config_toml(&[wrong], &sim.interface_url(), &without_broker(dir.path()))).expect("write");
    let report = doctor(&path, &["--fetch-token"]).await;
    assert_eq!(report.code, 1, "{}", report.text);
    let fetch = report.check(&format!("token {}", right.code), "fetch");
    assert_eq!(fetch["status"], "fail", "{}", report.text);
    assert!(fetch["fix"].as_str().unwrap_or_default().contains("auth_code"), "{}", report.text);
    assert!(!report.text.contains("not-the-auth-code"), "{}", report.text);

    let path = dir.path().join("right.toml");
    std::fs::write(&path, config_toml(std::slice::from_ref(&right), &sim.interface_url(), &without_broker(dir.path()))).expect("write");
    let report = doctor(&path, &["--fetch-token"]).await;
    assert_eq!(report.code, 0, "{}", report.text);
    assert!(report.check(&format!("token {}", right.code), "fetch")["detail"].as_str().unwrap_or_default().contains("issued a new token"));
    assert_eq!(sim.counters().await.tokens_issued, 1);
    // Run again: the token just fetched is used, no second call.
    let report = doctor(&path, &["--fetch-token"]).await;
    assert!(
        report.check(&format!("token {}", right.code), "fetch")["detail"].as_str().unwrap_or_default().contains("no ELS7001 call"),
        "{}",
        report.text
    );
    assert_eq!(sim.counters().await.tokens_issued, 1);
}
