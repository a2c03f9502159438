//! The worker's telemetry against a real RabbitMQ (a vhost per test), the real simulator
//! and real worker processes: `/metrics` counts agree with what the platform received and
//! what was dead-lettered, and spans reach an OTLP/HTTP receiver with the trace context the
//! publisher put in the events' headers.
//!
//! `/readyz` during a broker outage is in `tests/telemetry_chaos.rs` (it stops the node).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::broker::unique_vhost;
use common::records::{event, row};
use common::simulator::{TestSimulator, eventually};
use common::worker::{Amqp, WorkerProcess, worker_toml};
use els_bridge::config::RetrySettings;
use els_bridge::simulator::api::{CallFilter, RecordFilter};
use els_bridge::spec::Infno;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};

fn test_retry() -> RetrySettings {
    RetrySettings { initial_backoff_ms: 100, max_backoff_ms: 1000, max_elapsed_secs: 600 }
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (no escapes inside label values are needed here).
fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let rest = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
                    let labels = rest
                        .split("\",")
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (key, value) = pair.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line}"));
                            (key.to_owned(), value.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
                None => (series.to_owned(), BTreeMap::new()),
            };
            Sample { name, labels, value: value.parse().unwrap_or_else(|_| panic!("bad value in {line}")) }
        })
        .collect()
}

/// The sum of the samples of `name` whose labels include every pair of `filter`.
fn total(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && filter.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

/// `GET /metrics` of the worker on `port`: the text, or `None` while it does not answer.
async fn scrape(port: u16) -> Option<String> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.ok()?;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    response.text().await.ok()
}

/// What the simulator holds and was called with, as the metrics should count it.
#[derive(Debug, PartialEq)]
struct PlatformView {
    /// Accepted writes per infno (a key written twice counts twice).
    uploaded: BTreeMap<String, u64>,
    /// Upload calls per returnCode.
    calls: BTreeMap<String, u64>,
    /// Rows over all upload calls.
    rows: u64,
    /// ELS7001 calls.
    token_calls: u64,
}

async fn platform_view(sim: &TestSimulator) -> PlatformView {
    let records = sim.records(&RecordFilter::default()).await.records;
    let mut uploaded = BTreeMap::new();
    for record in records {
        *uploaded.entry(record.infno.as_str().to_owned()).or_default() += record.updates;
    }
    let page = sim.calls(&CallFilter::default()).await;
    assert_eq!(page.dropped, 0, "the simulator's call log overflowed");
    let mut calls = BTreeMap::new();
    let mut rows = 0;
    let mut token_calls = 0;
    for call in &page.calls {
        if call.infno.as_deref() == Some("ELS7001") {
            token_calls += 1;
            continue;
        }
        let code = call.return_code.map_or("none".to_owned(), |c| c.to_string());
        *calls.entry(code).or_default() += 1;
        rows += call.rows as u64;
    }
    PlatformView { uploaded, calls, rows, token_calls }
}

/// The same numbers read from `/metrics`.
fn metrics_view(samples: &[Sample]) -> PlatformView {
    let mut uploaded = BTreeMap::new();
    let mut calls = BTreeMap::new();
    for sample in samples {
        if sample.name == "els_records_total" && sample.labels["outcome"] == "uploaded" && sample.value > 0.0 {
            *uploaded.entry(sample.labels["infno"].clone()).or_default() += sample.value as u64;
        }
        if sample.name == "els_upload_calls_total" {
            *calls.entry(sample.labels["return_code"].clone()).or_default() += sample.value as u64;
        }
    }
    PlatformView {
        uploaded,
        calls,
        rows: total(samples, "els_upload_batch_rows_sum", &[]) as u64,
        token_calls: total(samples, "els_token_refreshes_total", &[]) as u64,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_platform_received_and_what_was_dead_lettered() {
    let sim = TestSimulator::builder().institutions(2).start();
    let vhost = unique_vhost("telemetry-metrics");
    let amqp = Amqp::connect(vhost.url()).await;
    amqp.declare(&test_retry()).await;
    let codes = [sim.institution(0).code.clone(), sim.institution(1).code.clone()];

    // 15 events per institution and transaction, three keys of which the platform refuses.
    let mut events = Vec::new();
    for code in &codes {
        for infno in Infno::UPLOADS {
            for i in 0..15 {
                events.push(event(infno, code, Some(1), row(infno, &format!("{code}-{infno}-{i:03}"), "2")));
            }
        }
    }
    let refused = [format!("{}-ELS7002-003", codes[0]), format!("{}-ELS7005-011", codes[1]), format!("{}-ELS7007-000", codes[0])];
    sim.refuse_keys(&refused.iter().map(String::as_str).collect::<Vec<_>>(), 13).await;
    // A correction of a record in the same wave: either merged with the first version in
    // one call (counted superseded) or uploaded after it (counted uploaded twice).
    let corrected = format!("{}-ELS7004-007", codes[1]);
    events.push(event(Infno::Els7004, &codes[1], Some(2), row(Infno::Els7004, &corrected, "3")));
    amqp.publish(&events).await;

    // Invalid events: one names a configured institution and transaction, the others cannot
    // be told apart (label "unknown").
    let mut bad_price = row(Infno::Els7003, "BAD-1", "1");
    bad_price.insert("purc_pric".into(), json!("-3"));
    let invalid: Vec<Vec<u8>> = vec![
        event(Infno::Els7003, &codes[0], None, bad_price).to_string().into_bytes(),
        event(Infno::Els7002, "H99999999999", None, row(Infno::Els7002, "BAD-2", "1")).to_string().into_bytes(),
        b"{not json".to_vec(),
        json!({"infno": "ELS7001", "fixmedins_code": codes[1], "data": {}}).to_string().into_bytes(),
    ];
    for (i, body) in invalid.iter().enumerate() {
        amqp.publish_raw("ELS7002.x", body, &format!("invalid-{i}")).await;
    }

    let toml = worker_toml(vhost.url(), 300);
    let config = sim.write_client_config("worker.toml", &toml);
    let mut worker = WorkerProcess::start(&config, "worker");
    let port = worker.http_port(Duration::from_secs(30));

    // Everything valid and not refused is at the platform, everything else dead-lettered.
    let valid_keys = codes.len() * Infno::UPLOADS.len() * 15 - refused.len();
    eventually("the simulator to hold every valid record", Duration::from_secs(120), async || {
        let page = sim.records(&RecordFilter::default()).await;
        let corrected_done = page.records.iter().any(|r| r.key == corrected && r.row["stoin_cnt"] == "3");
        (page.total == valid_keys && corrected_done).then_some(())
    })
    .await;
    let mut dead = Vec::new();
    eventually("every dead letter", Duration::from_secs(60), async || {
        dead.extend(amqp.take_all("els.dead").await);
        (dead.len() >= invalid.len() + refused.len()).then_some(())
    })
    .await;
    let reasons: BTreeMap<String, usize> = dead.iter().fold(BTreeMap::new(), |mut map, m| {
        *map.entry(m.headers["x-els-reason"].clone()).or_default() += 1;
        map
    });
    assert_eq!(reasons, BTreeMap::from([("invalid".to_owned(), invalid.len()), ("rejected".to_owned(), refused.len())]));

    // The metrics catch up with what was settled (the counters move right after each ack).
    let platform = platform_view(&sim).await;
    let samples = eventually("/metrics to count every settled event", Duration::from_secs(30), async || {
        let samples = parse_metrics(&scrape(port).await?);
        let settled = total(&samples, "els_records_total", &[]) as usize;
        (settled == events.len() + invalid.len() && total(&samples, "els_deliveries_unsettled", &[]) == 0.0).then_some(samples)
    })
    .await;
    assert_eq!(metrics_view(&samples), platform, "metrics and the simulator disagree");

    // Per outcome: uploaded + superseded are the valid events not refused.
    let outcome = |name: &str| total(&samples, "els_records_total", &[("outcome", name)]) as usize;
    assert_eq!(outcome("uploaded") + outcome("superseded"), events.len() - refused.len());
    assert_eq!(outcome("rejected"), refused.len());
    assert_eq!(outcome("invalid"), invalid.len());
    assert_eq!(outcome("exhausted"), 0);
    for reason in ["invalid", "rejected", "exhausted"] {
        let expected = reasons.get(reason).copied().unwrap_or(0) as f64;
        assert_eq!(total(&samples, "els_dead_letters_total", &[("reason", reason)]), expected, "{reason}");
    }
    // Labels of dead letters: institution and infno when the event tells them.
    assert_eq!(total(&samples, "els_records_total", &[("institution", &codes[0]), ("infno", "ELS7003"), ("outcome", "invalid")]), 1.0);
    assert_eq!(total(&samples, "els_records_total", &[("institution", "unknown"), ("outcome", "invalid")]), 2.0);
    assert_eq!(total(&samples, "els_records_total", &[("infno", "unknown"), ("outcome", "invalid")]), 2.0);
    assert_eq!(total(&samples, "els_records_total", &[("institution", &codes[0]), ("infno", "ELS7007"), ("outcome", "rejected")]), 1.0);
    let refused_calls = platform.calls.get("13").copied().unwrap_or(0);
    assert!(refused_calls >= refused.len() as u64, "bisection ends in one refused call per refused row");
    assert_eq!(total(&samples, "els_upload_calls_total", &[("outcome", "refused")]) as u64, refused_calls);

    // Histograms and gauges.
    let calls = platform.calls.values().sum::<u64>() as f64;
    assert_eq!(total(&samples, "els_upload_batch_rows_count", &[]), calls);
    assert_eq!(total(&samples, "els_upload_duration_seconds_count", &[]), calls);
    assert_eq!(total(&samples, "els_upload_batch_rows_bucket", &[("le", "+Inf")]), calls);
    assert!(total(&samples, "els_upload_duration_seconds_sum", &[]) > 0.0);
    assert_eq!(total(&samples, "els_uploads_in_flight", &[]), 0.0);
    assert_eq!(total(&samples, "els_retries_total", &[]), 0.0);
    assert_eq!(total(&samples, "els_consuming", &[]), 1.0);
    for code in &codes {
        assert!(samples.iter().any(|s| s.name == "els_institution_held" && s.labels.get("institution") == Some(code) && s.value == 0.0));
        assert!(samples.iter().any(|s| s.name == "els_retries_total" && s.labels.get("institution") == Some(code)), "counters start at 0");
    }
    assert!(samples.iter().any(|s| s.name == "target_info" && s.labels.get("service_name").map(String::as_str) == Some("els-bridge")));

    // Nothing secret or unbounded in any label.
    let text = scrape(port).await.unwrap();
    for i in 0..2 {
        let institution = sim.institution(i);
        for secret in [&institution.auth_code, &institution.secret_key] {
            assert!(!text.contains(secret.as_str()), "a secret is in /metrics");
        }
    }
    let msgids: BTreeSet<String> = sim.calls(&CallFilter::default()).await.calls.into_iter().filter_map(|c| c.msgid).collect();
    assert!(msgids.iter().all(|msgid| !text.contains(msgid.as_str())), "a msgid is a label");
    assert!(!text.contains(&refused[0]), "a record key is a label");
    let allowed_labels = ["institution", "infno", "outcome", "return_code", "reason", "result", "le"];
    for sample in samples.iter().filter(|s| s.name.starts_with("els_")) {
        assert!(sample.labels.keys().all(|k| allowed_labels.contains(&k.as_str())), "{sample:?}");
        if let Some(code) = sample.labels.get("institution") {
            assert!(codes.contains(code) || code == "unknown", "{sample:?}");
        }
    }

    let logs = worker.logs();
    assert!(worker.terminate(Duration::from_secs(30)).success(), "{logs}");
    amqp.close().await;
}

/// What the OTLP receiver was sent.
#[derive(Default)]
struct Received {
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
}

/// An OTLP/HTTP (protobuf) receiver on a free loopback port.
async fn otlp_receiver() -> (String, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received::default()));
    async fn traces(State(received): State<Arc<Mutex<Received>>>, body: Bytes) -> Vec<u8> {
        let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export in protobuf");
        received.lock().unwrap().traces.push(request);
        Vec::new()
    }
    async fn metrics(State(received): State<Arc<Mutex<Received>>>, body: Bytes) -> Vec<u8> {
        let request = ExportMetricsServiceRequest::decode(body).expect("an OTLP metrics export in protobuf");
        received.lock().unwrap().metrics.push(request);
        Vec::new()
    }
    let app = axum::Router::new().route("/v1/traces", post(traces)).route("/v1/metrics", post(metrics)).with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}"), received)
}

/// `els-bridge worker` with extra environment variables; killed when dropped.
struct TracedWorker {
    child: Option<Child>,
    log: std::path::PathBuf,
}

impl TracedWorker {
    fn start(config: &Path, env: &[(&str, &str)]) -> TracedWorker {
        let log = config.with_file_name("traced-worker.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_els-bridge"));
        command
            .args(["worker", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .env_remove("ELS_BRIDGE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("OTEL_") || name.starts_with("ELS_BRIDGE__")) {
            command.env_remove(name);
        }
        command.envs(env.iter().copied());
        TracedWorker { child: Some(command.spawn().expect("start els-bridge worker")), log }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status (within 30 s).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the worker did not stop after SIGTERM:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TracedWorker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Publishes `event` with W3C trace context headers (`traceparent` may be `None`).
async fn publish_traced(url: &str, events: &[(Value, Option<&str>)]) {
    let connection = Connection::connect(url, ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    for (event, traceparent) in events {
        let mut headers = FieldTable::default();
        if let Some(traceparent) = traceparent {
            headers.insert(ShortString::from("traceparent"), AMQPValue::LongString(LongString::from(*traceparent)));
            headers.insert(ShortString::from("tracestate"), AMQPValue::LongString(LongString::from("his=ward-3")));
        }
        let properties = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
        let key = format!("{}.{}", event["infno"].as_str().unwrap(), event["fixmedins_code"].as_str().unwrap());
        let confirm = channel
            .basic_publish(
                "els.events".into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                event.to_string().as_bytes(),
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }
    let _ = connection.close(200, "done".into()).await;
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()
}

fn text_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn int_attribute(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attribute(attributes, key)? {
        any_value::Value::IntValue(n) => Some(*n),
        any_value::Value::StringValue(s) => s.parse().ok(),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_spans_reach_an_otlp_receiver_with_the_publishers_trace_context() {
    let sim = TestSimulator::builder().institutions(1).start();
    let vhost = unique_vhost("telemetry-otlp");
    let amqp = Amqp::connect(vhost.url()).await;
    amqp.declare(&test_retry()).await;
    let code = sim.institution(0).code.clone();
    let (endpoint, received) = otlp_receiver().await;

    // ELS7003: one event, one trace → the upload's parent. ELS7002: two events of two
    // traces in one batch → links. ELS7004: no trace context → a root span.
    let single = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let first = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let second = ("5c0a8f2b6d1e4f3a9b8c7d6e5f4a3b2c", "1a2b3c4d5e6f7081");
    let traceparent = |(trace, span): (&str, &str)| format!("00-{trace}-{span}-01");
    let (tp_single, tp_first, tp_second) = (traceparent(single), traceparent(first), traceparent(second));
    publish_traced(
        vhost.url(),
        &[
            (event(Infno::Els7003, &code, Some(1), row(Infno::Els7003, "TRACED-SINGLE", "1")), Some(tp_single.as_str())),
            (event(Infno::Els7002, &code, Some(1), row(Infno::Els7002, "TRACED-A", "1")), Some(tp_first.as_str())),
            (event(Infno::Els7002, &code, Some(1), row(Infno::Els7002, "TRACED-B", "1")), Some(tp_second.as_str())),
            (event(Infno::Els7004, &code, Some(1), row(Infno::Els7004, "UNTRACED", "1")), None),
        ],
    )
    .await;

    // A long linger puts both ELS7002 events in one batch; a long export delay means spans
    // leave the process only when it flushes them at exit.
    let config = sim.write_client_config("worker.toml", &worker_toml(vhost.url(), 1000));
    let mut worker = TracedWorker::start(
        &config,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "els-bridge-under-test"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test,service.namespace=hospital"),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "600000"),
        ],
    );
    eventually("the four records at the platform", Duration::from_secs(60), async || {
        (sim.records(&RecordFilter::default()).await.total == 4).then_some(())
    })
    .await;
    assert!(received.lock().unwrap().traces.is_empty(), "spans are batched, not sent one by one");
    let status = worker.terminate();
    assert!(status.success(), "{status:?}: {}", worker.logs());

    let (traces, metrics) = {
        let received = received.lock().unwrap();
        (received.traces.clone(), received.metrics.clone())
    };
    assert!(!traces.is_empty(), "no spans were flushed at exit: {}", worker.logs());
    let mut uploads: Vec<&Span> = Vec::new();
    for request in &traces {
        for resource_spans in &request.resource_spans {
            let resource = resource_spans.resource.as_ref().map(|r| r.attributes.clone()).unwrap_or_default();
            assert_eq!(text_attribute(&resource, "service.name").as_deref(), Some("els-bridge-under-test"));
            assert_eq!(text_attribute(&resource, "deployment.environment").as_deref(), Some("test"));
            assert_eq!(text_attribute(&resource, "service.namespace").as_deref(), Some("hospital"));
            for scope_spans in &resource_spans.scope_spans {
                uploads.extend(scope_spans.spans.iter().filter(|s| s.name == "upload"));
            }
        }
    }
    let by_infno = |infno: &str| -> &Span {
        let spans: Vec<&Span> =
            uploads.iter().copied().filter(|s| text_attribute(&s.attributes, "infno").as_deref() == Some(infno)).collect();
        assert_eq!(spans.len(), 1, "one upload span for {infno}: {spans:#?}");
        spans[0]
    };

    let traced = by_infno("ELS7003");
    assert_eq!(text_attribute(&traced.attributes, "institution").as_deref(), Some(code.as_str()));
    assert_eq!(int_attribute(&traced.attributes, "rows"), Some(1));
    assert_eq!(int_attribute(&traced.attributes, "attempt"), Some(1));
    assert_eq!(int_attribute(&traced.attributes, "return_code"), Some(1));
    let msgid = text_attribute(&traced.attributes, "msgid").expect("msgid");
    let calls = sim.calls(&CallFilter { infno: Some("ELS7003".into()), ..Default::default() }).await.calls;
    assert_eq!(calls.iter().filter_map(|c| c.msgid.clone()).collect::<Vec<_>>(), [msgid]);
    assert_eq!(hex(&traced.trace_id), single.0, "the event's trace continues into the upload");
    assert_eq!(hex(&traced.parent_span_id), single.1, "the publisher's span is the upload's parent");

    let batched = by_infno("ELS7002");
    assert_eq!(int_attribute(&batched.attributes, "rows"), Some(2));
    let links: BTreeSet<(String, String)> = batched.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect();
    let expected: BTreeSet<(String, String)> = [first, second].iter().map(|(t, s)| (t.to_string(), s.to_string())).collect();
    assert_eq!(links, expected, "a batch of several traces links to each");
    assert!(batched.parent_span_id.is_empty(), "a batch of several traces starts its own");
    assert_ne!(hex(&batched.trace_id), first.0);

    let untraced = by_infno("ELS7004");
    assert!(untraced.links.is_empty() && untraced.parent_span_id.is_empty());

    // Metrics went out over OTLP too, flushed at exit.
    let metric_names: BTreeSet<&str> = metrics
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| m.name.as_str())
        .collect();
    for name in ["els.records", "els.upload.calls", "els.upload.duration", "els.upload.batch.rows"] {
        assert!(metric_names.contains(name), "{name} missing from the OTLP metrics: {metric_names:?}");
    }
    amqp.close().await;
}
