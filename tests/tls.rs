//! TLS to the broker (`amqps://`, `amqp.ca_file`) and to the platform (`https://`,
//! `platform.ca_file`), each signed by a private certificate authority as a hospital's
//! broker and the provincial gateway's test environment often are: the worker reports
//! through both, `doctor` passes their TLS checks, and without the authority's file both
//! are refused and `doctor` names the `tls` check and the key to fix. The real broker and
//! the real simulator, each behind a relay that ends TLS (`common::tls`).

mod common;

use common::run::{COMMAND_LIMIT, OutputWithin};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::broker::{QueueCounts, TestVhost, amqp_address, unique_vhost};
use common::records::{event, row};
use common::simulator::{TestSimulator, eventually};
use common::tls::{TestCa, TlsRelay};
use common::worker::{Amqp, WorkerProcess, test_retry, worker_toml};
use els_bridge::simulator::api::RecordFilter;
use els_bridge::spec::Infno;
use serde_json::Value;

/// The simulator and the broker, each behind a relay that ends TLS with a certificate of
/// the test's own authority.
struct Secured {
    sim: TestSimulator,
    vhost: TestVhost,
    ca: TestCa,
    broker: TlsRelay,
    platform: TlsRelay,
    _dir: tempfile::TempDir,
}

impl Secured {
    async fn start(label: &str) -> Secured {
        let sim = TestSimulator::builder().institutions(1).start();
        let vhost = unique_vhost(label);
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = TestCa::new(dir.path());
        let broker = TlsRelay::start(amqp_address(), &ca).await;
        let platform = TlsRelay::start(sim.addr().to_string(), &ca).await;
        Secured { sim, vhost, ca, broker, platform, _dir: dir }
    }

    /// Declares the topology (plain AMQP) and publishes one ELS7002 record of `key`; the
    /// connection stays open for the test's checks.
    async fn publish_one(&self, key: &str) -> Amqp {
        let amqp = Amqp::connect(self.vhost.url()).await;
        amqp.declare(&test_retry()).await;
        let code = self.sim.institution(0).code.clone();
        amqp.publish(&[event(Infno::Els7002, &code, Some(1), row(Infno::Els7002, key, "5"))]).await;
        amqp
    }

    /// A worker's configuration with `amqps://` and `https://` URLs through the relays;
    /// `amqp.ca_file` and `platform.ca_file` name the authority where `trusted` says so.
    fn config(&self, name: &str, trusted: Trusted) -> PathBuf {
        let amqp = worker_toml(&self.broker.amqps_url(self.vhost.url()), 100);
        let path = self.sim.write_client_config(name, &amqp);
        let mut text = std::fs::read_to_string(&path).expect("read the configuration");
        let plain = self.sim.interface_url();
        text = text.replace(&format!("url = {plain:?}"), &format!("url = {:?}", self.platform.https_url(&plain)));
        let ca_file = format!("ca_file = {:?}\n", self.ca.ca_file());
        for (section, trusted) in [("[platform]\n", trusted.platform), ("[amqp]\n", trusted.broker)] {
            if trusted {
                text = text.replacen(section, &format!("{section}{ca_file}"), 1);
            }
        }
        std::fs::write(&path, text).expect("write the configuration");
        path
    }
}

/// Which of the two is given the authority's file.
#[derive(Clone, Copy)]
struct Trusted {
    broker: bool,
    platform: bool,
}

/// `els-bridge doctor --json --config CONFIG`: its exit code and its checks.
async fn doctor(config: &Path) -> (i32, Vec<Value>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_els-bridge"));
    command.args(["doctor", "--json", "--config"]).arg(config).env_remove("ELS_BRIDGE_CONFIG").env("RUST_LOG", "warn");
    let output =
        tokio::task::spawn_blocking(move || command.output_within(COMMAND_LIMIT)).await.expect("join").expect("run els-bridge doctor");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let text = format!("{stdout}\nstandard error:\n{}", String::from_utf8_lossy(&output.stderr));
    let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("doctor's output is not JSON ({e}):\n{text}"));
    (output.status.code().unwrap_or(-1), json["checks"].as_array().cloned().unwrap_or_default(), text)
}

/// The status of `subject`'s check `check`, and its whole entry.
fn check<'a>(checks: &'a [Value], subject: &str, check: &str, text: &str) -> (&'a str, &'a Value) {
    let found = checks.iter().find(|c| c["subject"] == subject && c["check"] == check);
    let found = found.unwrap_or_else(|| panic!("no check {subject:?} {check:?} in\n{text}"));
    (found["status"].as_str().unwrap_or_default(), found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reports_over_tls_to_a_broker_and_a_platform_of_a_private_authority() {
    let secured = Secured::start("tls-trusted").await;
    let amqp = secured.publish_one("TLS-1").await;

    let config = secured.config("worker.toml", Trusted { broker: true, platform: true });
    let mut worker = WorkerProcess::start(&config, "worker");
    let stored = async || (secured.sim.records(&RecordFilter::default()).await.total == 1).then_some(());
    eventually("the upload through both TLS relays", Duration::from_secs(60), stored).await;
    assert!(worker.terminate(Duration::from_secs(30)).success(), "{}", worker.logs());
    assert_eq!(amqp.take_all("els.dead").await.len(), 0);
    amqp.close().await;

    let (code_of_doctor, checks, text) = doctor(&config).await;
    let node = format!("broker {}", secured.broker.authority());
    for (subject, name) in [(node.as_str(), "tls"), (node.as_str(), "authenticated"), ("platform", "tls"), ("platform", "clock")] {
        assert_eq!(check(&checks, subject, name, &text).0, "ok", "{subject} {name}:\n{text}");
    }
    let (_, platform_tls) = check(&checks, "platform", "tls", &text);
    let detail = platform_tls["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("by CN=els-bridge test CA") && detail.contains("days)"), "the certificate read: {detail}");
    assert_eq!(code_of_doctor, 0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_authority_both_are_refused_and_doctor_names_the_key_to_fix() {
    let secured = Secured::start("tls-untrusted").await;
    let config = secured.config("untrusted.toml", Trusted { broker: false, platform: false });
    let (code, checks, text) = doctor(&config).await;
    assert_ne!(code, 0, "{text}");
    let node = format!("broker {}", secured.broker.authority());
    let (status, broker_tls) = check(&checks, &node, "tls", &text);
    assert_eq!(status, "fail", "{text}");
    assert!(broker_tls["fix"].as_str().unwrap_or_default().contains("amqp.ca_file"), "{broker_tls}");
    let (status, platform_tls) = check(&checks, "platform", "tls", &text);
    assert_eq!(status, "fail", "{text}");
    assert!(platform_tls["fix"].as_str().unwrap_or_default().contains("platform.ca_file"), "{platform_tls}");

    let worker = WorkerProcess::start(&config, "untrusted");
    let refused = async || worker.logs().lines().find(|l| l.contains("TLS handshake with the broker failed")).map(str::to_owned);
    let line = eventually("the worker naming the broker's certificate", Duration::from_secs(30), refused).await;
    assert!(line.contains("UnknownIssuer") && line.contains("(or set amqp.ca_file)"), "{line}");
    drop(worker);

    let amqp = secured.publish_one("TLS-2").await;
    let config = secured.config("platform-untrusted.toml", Trusted { broker: true, platform: false });
    let mut worker = WorkerProcess::start(&config, "platform-untrusted");
    let failing = async || worker.logs().lines().find(|l| l.contains("the platform is failing for this institution")).map(str::to_owned);
    let line = eventually("the worker naming the platform's certificate", Duration::from_secs(30), failing).await;
    assert!(line.contains("TLS handshake with the platform failed (invalid peer certificate: UnknownIssuer)"), "{line}");
    assert!(line.contains("platform.ca_file"), "{line}");
    assert!(worker.terminate(Duration::from_secs(30)).success(), "{}", worker.logs());
    assert_eq!(secured.sim.records(&RecordFilter::default()).await.total, 0);
    secured.vhost.wait_for_counts("els.events", QueueCounts::new(1, 0), Duration::from_secs(10));
    amqp.close().await;
}
