//! The publisher examples of `examples/publishers/` run as the processes a HIS vendor would
//! run, against a real broker (a vhost per test): they publish a small day of drug
//! movements with corrections (one arriving before the version it corrects), a real worker
//! uploads it to the simulator, and the assertions read the simulator's records (every key
//! at its latest version, times in Beijing time) and the messages as the broker routed them.
//!
//! The Python example needs pika: Debian's `python3-pika` (scripts/test.sh installs it),
//! run with `/usr/bin/python3`, or `ELS_BRIDGE_TEST_PYTHON` naming an interpreter that has it.
//! The Java example is compiled here with `javac -cp /usr/share/java/amqp-client.jar`
//! (Debian's `default-jdk-headless` and `librabbitmq-client-java`, which scripts/test.sh
//! installs) and run with that jar and slf4j's. The C# example is written for NuGet's
//! RabbitMQ.Client 6.8.1, which no Debian package has (Debian 12's `libmono-rabbitmq4.0-cil`
//! is client 1.x, AMQP 0-8/0-9 only, without publisher confirms): it is compiled with
//! Mono's `mcs` (Debian's `mono-mcs`, which scripts/test.sh installs) against
//! `tests/publishers/RabbitMQ.Client-6.8.1-api.cs`, the signatures of the client API it
//! calls, and only its `--print` is run, compared byte for byte with the other two. None is
//! skipped when missing: the test fails and says what to install.

mod common;

use common::run::{COMMAND_LIMIT, OutputWithin, finish_within};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::broker::{QueueCounts, amqp_address};
use common::relay::Relay;
use common::simulator::TestSimulator;
use common::worker::{WorkerProcess, World, worker_config};
use els_bridge::simulator::api::RecordFilter;
use els_bridge::spec::Infno;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;

/// The two institutions of the test simulator.
const A: &str = "H32128200338";
const B: &str = "H32010600021";

/// The columns of the export the examples read: the typed row's fields.
const COLUMNS: &str = "direction,fixmedins_code,line_id,row_version,drug_code,prov_plaf_prod_code,drug_genname,dosform,spec,\
convrat,pacunt,prodentp_name,delventp_name,delventp_code,purc_pric,quantity,moved_at,er_flag,prodentp_code,stroom_name,\
prov_plaf_prod_id,prov_plaf_purc_ord_det_id";

/// (institution, infno, key) → (quantity, movement time in Beijing time, version) the
/// platform must end up with.
type Expected = BTreeMap<(String, Infno, String), (String, String, u64)>;

/// One movement of the day: (direction, institution, key, version, quantity, price, moved_at).
type Movement = (&'static str, &'static str, String, u64, &'static str, &'static str, &'static str);

/// A small day in the order the warehouse system wrote it, with `extra` more stock-ins of
/// institution A, and what the platform must hold afterwards.
fn day(extra: usize) -> (String, Expected) {
    let mut movements: Vec<Movement> = vec![
        ("in", A, "IN-1".into(), 1, "10", "12.34", "2026-11-25T01:30:00Z"),
        ("in", A, "IN-2".into(), 1, "5", "12.34", "2026-11-25T09:15:00+08:00"),
        ("in", A, "IN-3".into(), 1, "2", "3.5", "2026-11-24T23:59:59Z"),
        ("in", A, "IN-2".into(), 2, "6", "12.34", "2026-11-25T09:15:00+08:00"),
        // A correction published before the version it corrects: the higher version wins.
        ("out", A, "OUT-1".into(), 3, "4", "12.34", "2026-11-25T06:00:00Z"),
        ("out", A, "OUT-1".into(), 2, "3", "12.34", "2026-11-25T06:00:00Z"),
        ("out", A, "OUT-2".into(), 1, "1.5", "12.34", "2026-11-25T06:30:00Z"),
        ("in", A, "IN-2".into(), 3, "7", "12.34", "2026-11-25T09:15:00+08:00"),
        ("in", B, "IN-1".into(), 1, "20", "8", "2026-11-25T00:00:00Z"),
        ("out", B, "OUT-1".into(), 1, "8", "8", "2026-11-25T02:00:00Z"),
        ("out", B, "OUT-1".into(), 2, "9", "8", "2026-11-25T02:00:00Z"),
        ("in", A, "IN-4".into(), 1, "12.3400", "12.3400", "2026-11-25T08:00:00+08:00"),
    ];
    for i in 0..extra {
        movements.push(("in", A, format!("IN-X{i:03}"), 1, "1", "2", "2026-11-25T03:00:00Z"));
    }
    let mut csv = format!("{COLUMNS}\n");
    let mut expected = Expected::new();
    for movement in &movements {
        csv.push_str(&row(movement));
        let (direction, code, key, version, quantity, _, moved_at) = movement;
        let infno = if *direction == "in" { Infno::Els7002 } else { Infno::Els7003 };
        let entry = expected.entry((code.to_string(), infno, key.clone())).or_insert_with(|| (String::new(), String::new(), 0));
        if *version > entry.2 {
            *entry = (normalised(quantity), beijing(moved_at), *version);
        }
    }
    (csv, expected)
}

/// One line of the export.
fn row((direction, code, key, version, quantity, price, moved_at): &Movement) -> String {
    let order_line = if *direction == "in" { "0" } else { "" };
    format!(
        "{direction},{code},{key},{version},XJ01CAA040A001010101445,0,阿莫西林胶囊,胶囊剂,0.25g*24粒,24,盒,江苏某某药业有限公司,\
         国药控股江苏有限公司,91320000134567891B,{price},{quantity},{moved_at},0,91320000134567890A,药库,,{order_line}\n"
    )
}

/// A decimal as the worker sends it (`12.3400` → `12.34`).
fn normalised(decimal: &str) -> String {
    if decimal.contains('.') { decimal.trim_end_matches('0').trim_end_matches('.').to_owned() } else { decimal.to_owned() }
}

/// An RFC 3339 time of the day as the spec writes it in Beijing time.
fn beijing(rfc3339: &str) -> String {
    let time = chrono::DateTime::parse_from_rfc3339(rfc3339).expect("a test time");
    let beijing = chrono::FixedOffset::east_opt(8 * 3600).expect("UTC+8");
    time.with_timezone(&beijing).format("%Y-%m-%d %H:%M:%S").to_string()
}

/// The publisher examples.
#[derive(Debug, Clone, Copy)]
enum Example {
    /// `examples/publishers/python/els_publisher.py`, with pika.
    Python,
    /// `examples/publishers/java/ElsPublisher.java`, with the RabbitMQ Java client.
    Java,
    /// `examples/publishers/csharp/ElsPublisher.cs`, compiled against the API of
    /// RabbitMQ.Client 6.8.1 without its implementation: `--print` only.
    CSharp,
}

/// Where Debian 12's `librabbitmq-client-java` and `libslf4j-java` put their jars.
const JAVA_CLASSPATH: &[&str] = &["/usr/share/java/amqp-client.jar", "/usr/share/java/slf4j-api.jar", "/usr/share/java/slf4j-nop.jar"];

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/publishers")
}

/// The Python interpreter that has pika.
fn python() -> String {
    let python = std::env::var("ELS_BRIDGE_TEST_PYTHON")
        .ok()
        .filter(|p| !p.trim().is_empty())
        .unwrap_or_else(|| if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3".into() } else { "python3".into() });
    let check = Command::new(&python).args(["-c", "import pika"]).output_within(COMMAND_LIMIT).expect("run python3");
    assert!(
        check.status.success(),
        "{python} cannot import pika: install Debian's python3-pika (scripts/test.sh does) or set ELS_BRIDGE_TEST_PYTHON\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    python
}

/// The Java example compiled once per test binary with `javac -cp amqp-client.jar`, as
/// its header says; the folder of its classes.
fn java_classes() -> &'static Path {
    static CLASSES: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    CLASSES
        .get_or_init(|| {
            for jar in JAVA_CLASSPATH {
                assert!(Path::new(jar).exists(), "{jar} is missing: install Debian's librabbitmq-client-java (scripts/test.sh does)");
            }
            let out = tempfile::tempdir().expect("temp dir");
            let javac = Command::new("javac")
                .args(["-Xlint:all", "-Werror", "-cp", JAVA_CLASSPATH[0], "-d"])
                .arg(out.path())
                .arg(examples_dir().join("java/ElsPublisher.java"))
                .output_within(COMMAND_LIMIT)
                .expect("run javac: install Debian's default-jdk-headless (scripts/test.sh does)");
            assert!(javac.status.success(), "javac failed:\n{}", String::from_utf8_lossy(&javac.stderr));
            out
        })
        .path()
}

/// The C# example compiled once per test binary with Mono's `mcs`, warnings as errors,
/// against the client API of `tests/publishers/RabbitMQ.Client-6.8.1-api.cs`; its program.
fn csharp_program() -> &'static Path {
    static PROGRAM: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    &PROGRAM
        .get_or_init(|| {
            let out = tempfile::tempdir().expect("temp dir");
            let program = out.path().join("ElsPublisher.exe");
            let api = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/publishers/RabbitMQ.Client-6.8.1-api.cs");
            let mcs = Command::new("mcs")
                .args(["-warnaserror+", "-warn:4"])
                .arg(format!("-out:{}", program.display()))
                .arg(examples_dir().join("csharp/ElsPublisher.cs"))
                .arg(api)
                .output_within(COMMAND_LIMIT)
                .expect("run mcs: install Debian's mono-mcs (scripts/test.sh does)");
            assert!(mcs.status.success(), "mcs failed:\n{}{}", String::from_utf8_lossy(&mcs.stdout), String::from_utf8_lossy(&mcs.stderr));
            (out, program)
        })
        .1
}

/// The command that runs `example`, before its options.
fn command(example: Example) -> Command {
    match example {
        Example::Python => {
            let mut command = Command::new(python());
            command.arg(examples_dir().join("python/els_publisher.py"));
            command
        }
        Example::Java => {
            let mut classpath = vec![java_classes().display().to_string()];
            classpath.extend(JAVA_CLASSPATH.iter().map(|j| j.to_string()));
            let mut command = Command::new("java");
            command.arg("-cp").arg(classpath.join(":")).arg("ElsPublisher");
            command
        }
        Example::CSharp => {
            let mut command = Command::new("mono");
            command.arg(csharp_program());
            command
        }
    }
}

/// Starts `example` on `rows` against `url`, with `extra` options.
fn start(example: Example, rows: &Path, url: &str, extra: &[&str]) -> Child {
    command(example)
        .arg("--url")
        .arg(url)
        .args(extra)
        .arg(rows)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start the {example:?} publisher: {e}"))
}

/// The publisher's output once it exits, or once it is killed after `timeout`.
fn wait(child: Child, timeout: Duration) -> Output {
    finish_within(child, timeout).expect("wait for the publisher").output
}

fn show(output: &Output) -> String {
    format!("status {:?}\nstderr:\n{}", output.status, String::from_utf8_lossy(&output.stderr))
}

/// Waits until the simulator holds exactly `expected`: every key, its quantity and time.
async fn wait_until_stored(sim: &TestSimulator, expected: &Expected, timeout: Duration) {
    let fields = |infno: Infno| if infno == Infno::Els7002 { ("stoin_cnt", "stoin_time") } else { ("stoout_cnt", "stoout_time") };
    let want: BTreeMap<_, _> = expected.iter().map(|(k, (q, t, _))| (k.clone(), (q.clone(), t.clone()))).collect();
    let deadline = Instant::now() + timeout;
    loop {
        let page = sim.records(&RecordFilter::default()).await;
        let held: BTreeMap<_, _> = page
            .records
            .iter()
            .map(|r| {
                let (q, t) = fields(r.infno);
                let text = |f: &str| r.row[f].as_str().unwrap_or_default().to_owned();
                ((r.institution.clone(), r.infno, r.key.clone()), (text(q), text(t)))
            })
            .collect();
        if held == want {
            return;
        }
        if Instant::now() > deadline {
            let differ: Vec<_> = want.iter().filter(|(k, v)| held.get(*k) != Some(*v)).map(|(k, v)| (k, v, held.get(k))).collect();
            panic!(
                "the simulator does not hold the day at its latest versions after {timeout:?}: {} held; differ (expected, held): {differ:?}",
                held.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A message as the broker routed it.
struct Routed {
    routing_key: String,
    body: Value,
    properties: lapin::BasicProperties,
}

/// A queue of the test's own bound to `els.events` with `#`, to see what the publisher sent.
async fn spy(url: &str) -> (Connection, lapin::Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default()).await.expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let options = QueueDeclareOptions { exclusive: true, ..Default::default() };
    channel.queue_declare("spy".into(), options, FieldTable::default()).await.expect("declare the spy queue");
    channel
        .queue_bind("spy".into(), "els.events".into(), "#".into(), QueueBindOptions::default(), FieldTable::default())
        .await
        .expect("bind the spy queue");
    (connection, channel)
}

async fn take_spied(channel: &lapin::Channel) -> Vec<Routed> {
    let mut taken = Vec::new();
    while let Some(message) = channel.basic_get("spy".into(), BasicGetOptions::default()).await.expect("basic.get") {
        let delivery = message.delivery;
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
        let body = serde_json::from_slice(&delivery.data).expect("a JSON body");
        taken.push(Routed { routing_key: delivery.routing_key.to_string(), body, properties: delivery.properties });
    }
    taken
}

/// What every example must send: contract §1's routing key and properties, a message_id
/// per version, the row's version, Beijing times.
fn assert_contract(messages: &[Routed], expected_count: usize) {
    assert_eq!(messages.len(), expected_count, "one message per row");
    let mut ids = std::collections::BTreeSet::new();
    for m in messages {
        let infno = m.body["infno"].as_str().expect("infno");
        let code = m.body["fixmedins_code"].as_str().expect("fixmedins_code");
        assert_eq!(m.routing_key, format!("{infno}.{code}"));
        assert_eq!(m.properties.delivery_mode(), &Some(2), "persistent");
        assert_eq!(m.properties.content_type().as_ref().map(|c| c.as_str()), Some("application/json"));
        let version = m.body["version"].as_u64().expect("an integer version");
        let key = m.body["data"]["hosp_purc_mgt_detl"].as_str().expect("key");
        let id = m.properties.message_id().as_ref().map(|i| i.to_string()).expect("message_id");
        assert_eq!(id, format!("{infno}.{code}.{key}.v{version}"));
        assert!(ids.insert(id), "one message_id per version");
        let time = m.body["data"][if infno == "ELS7002" { "stoin_time" } else { "stoout_time" }].as_str().expect("a time");
        assert!(chrono::NaiveDateTime::parse_from_str(time, "%Y-%m-%d %H:%M:%S").is_ok(), "{time}");
    }
}

/// `example` publishes a day with corrections; the worker uploads every record at its
/// latest version, and every message carries what contract §1 asks.
async fn a_day_reaches_the_platform_at_its_latest_versions(example: Example, label: &str) {
    let World { sim, vhost, amqp } = World::new(label, TestSimulator::builder().institutions(2).start()).await;
    let (csv, expected) = day(0);
    let dir = tempfile::tempdir().expect("temp dir");
    let rows = dir.path().join("movements.csv");
    std::fs::write(&rows, &csv).expect("write the day");

    let (spy_connection, spy_channel) = spy(vhost.url()).await;
    let output = wait(start(example, &rows, vhost.url(), &[]), Duration::from_secs(60));
    assert!(output.status.success(), "{}", show(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("rows 12, confirmed 12"), "{}", show(&output));
    let spied = take_spied(&spy_channel).await;
    assert_contract(&spied, 12);
    let _ = spy_connection.close(200, "done".into()).await;

    let config = worker_config(&sim, &vhost, 300);
    let mut worker = WorkerProcess::start(&config, "worker");
    wait_until_stored(&sim, &expected, Duration::from_secs(120)).await;
    vhost.wait_for_counts("els.events", QueueCounts::new(0, 0), Duration::from_secs(30));
    assert_eq!(vhost.queue_counts("els.dead").map(|c| c.total()), Some(0), "no dead letter: {}", worker.logs());
    assert!(worker.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}

/// `example` publishes 72 rows at 10 a second through a relay that goes silent midway (a
/// dead NAT entry): what it publishes then never reaches the broker and is never confirmed,
/// its outbox fills (16), the heartbeat (1 s) gives the link up, and it reconnects and
/// publishes the outbox again: the platform gets the whole day.
async fn a_lost_connection_loses_nothing(example: Example, label: &str) {
    let World { sim, vhost, amqp } = World::new(label, TestSimulator::builder().institutions(2).start()).await;
    let (csv, expected) = day(60);
    let dir = tempfile::tempdir().expect("temp dir");
    let rows = dir.path().join("movements.csv");
    std::fs::write(&rows, &csv).expect("write the day");

    let relay = Relay::start(amqp_address()).await;
    let url = relay.url(vhost.url());
    let mut child = start(example, &rows, &url, &["--rate", "10", "--max-unconfirmed", "16", "--heartbeat-secs", "1"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while amqp.ready("els.events").await < 10 {
        assert!(Instant::now() < deadline, "the publisher published nothing within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.freeze();
    // Else the freeze came too late to test anything (72 rows take 7 s at 10 a second).
    assert!(child.try_wait().expect("the publisher's status").is_none(), "the publisher ended before the relay froze");
    let output = tokio::task::spawn_blocking(move || wait(child, Duration::from_secs(90))).await.expect("wait for the publisher");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{}", show(&output));
    assert!(stderr.contains("rows 72, confirmed 72"), "{stderr}");
    assert!(!stderr.contains("reconnects 0"), "the publisher must have reconnected: {stderr}");
    assert!(!stderr.contains("published again 0,"), "the outbox must have been published again: {stderr}");

    let config = worker_config(&sim, &vhost, 300);
    let mut worker = WorkerProcess::start(&config, "worker");
    wait_until_stored(&sim, &expected, Duration::from_secs(120)).await;
    vhost.wait_for_counts("els.events", QueueCounts::new(0, 0), Duration::from_secs(30));
    assert_eq!(vhost.queue_counts("els.dead").map(|c| c.total()), Some(0), "no dead letter: {}", worker.logs());
    assert!(worker.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_publishes_a_day_that_the_worker_uploads_at_its_latest_versions() {
    a_day_reaches_the_platform_at_its_latest_versions(Example::Python, "pub-python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_publishes_again_what_was_unconfirmed_when_its_connection_is_lost() {
    a_lost_connection_loses_nothing(Example::Python, "pub-python-lost").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_java_example_publishes_a_day_that_the_worker_uploads_at_its_latest_versions() {
    a_day_reaches_the_platform_at_its_latest_versions(Example::Java, "pub-java").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_java_example_publishes_again_what_was_unconfirmed_when_its_connection_is_lost() {
    a_lost_connection_loses_nothing(Example::Java, "pub-java-lost").await;
}

/// The three examples turn one export into the same events, byte for byte (the C# one has
/// no client to publish with here, see the header), and refuse the same bad row: the day,
/// plus times with fractions, other offsets and the turn of the Beijing day, an exponent,
/// the smallest and the largest decimals.
#[test]
fn the_examples_write_the_same_events_byte_for_byte() {
    let (mut csv, _) = day(2);
    let edges: [Movement; 4] = [
        ("in", A, "EDGE-1".into(), 1, "1E+2", "0.0001", "2026-11-25T06:30:00.250-05:00"),
        ("in", B, "EDGE-2".into(), 4, "0", "99999999.9999", "2026-11-25T16:00:00Z"),
        ("out", B, "EDGE-3".into(), 2, "0.5000", "1.10", "2026-11-25T15:59:59.999999Z"),
        ("out", A, "EDGE-4".into(), 1, "100", "7", "2026-11-26T00:00:00+08:00"),
    ];
    for edge in &edges {
        csv.push_str(&row(edge));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let rows = dir.path().join("movements.csv");
    std::fs::write(&rows, &csv).expect("write the day");
    let print = |example: Example, rows: &Path| {
        command(example)
            .arg("--print")
            .arg(rows)
            .output_within(COMMAND_LIMIT)
            .unwrap_or_else(|e| panic!("run the {example:?} example: {e}"))
    };

    let java = print(Example::Java, &rows);
    assert!(java.status.success(), "{}", show(&java));
    let events = String::from_utf8(java.stdout.clone()).expect("UTF-8 events");
    assert_eq!(events.lines().count(), 12 + 2 + edges.len(), "one event per row:\n{events}");
    assert!(events.contains(r#""stoin_cnt":"100","stoin_time":"2026-11-25 19:30:00""#), "{events}");
    assert!(events.contains(r#""stoout_cnt":"0.5","stoout_time":"2026-11-25 23:59:59""#), "{events}");
    for example in [Example::Python, Example::CSharp] {
        let output = print(example, &rows);
        assert!(output.status.success(), "{example:?}: {}", show(&output));
        let theirs = String::from_utf8_lossy(&output.stdout);
        for (n, (a, b)) in events.lines().zip(theirs.lines()).enumerate() {
            assert_eq!(b, a, "{example:?}, event {}: differs from the Java example's", n + 1);
        }
        assert_eq!(output.stdout, java.stdout, "{example:?}: not byte for byte the Java example's events");
    }

    // A time without its zone: which one the database meant would be a guess.
    let naive = csv.replacen("2026-11-25T01:30:00Z", "2026-11-25T01:30:00", 1);
    std::fs::write(&rows, naive).expect("write the day");
    for example in [Example::Python, Example::Java, Example::CSharp] {
        let output = print(example, &rows);
        assert_eq!(output.status.code(), Some(1), "{example:?} must refuse a time without its zone: {}", show(&output));
        assert!(output.stdout.is_empty(), "{example:?} printed events of a refused export");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("2026-11-25T01:30:00"),
            "{example:?} must name the time: {}",
            show(&output)
        );
    }
}
