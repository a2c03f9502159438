//! Per-record evidence from the receipts ledger (`report --key`, `report --records`) and the
//! reconciliation with a warehouse export (`report --against`), against a real broker, a
//! real worker process and the simulator.

mod common;

use common::run::{COMMAND_LIMIT, OutputWithin};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::broker::QueueCounts;
use common::records::{event, row};
use common::simulator::{TestSimulator, eventually};
use common::worker::{WorkerProcess, World, worker_config};
use els_bridge::simulator::api::{RecordFilter, RecordView};
use els_bridge::spec::Infno;
use serde_json::{Map, Value};

/// Runs `els-bridge report ARGS --config CONFIG`.
fn report(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_els-bridge"))
        .arg("report")
        .args(args)
        .arg("--config")
        .arg(config)
        .output_within(COMMAND_LIMIT)
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Waits until the simulator holds records of `keys` with `quantity` each, returns them by key.
async fn held(sim: &TestSimulator, expected: &[(&str, &str)]) -> BTreeMap<String, RecordView> {
    eventually("the records at the simulator", Duration::from_secs(60), async || {
        let records: BTreeMap<String, RecordView> =
            sim.records(&RecordFilter::default()).await.records.into_iter().map(|r| (r.key.clone(), r)).collect();
        let all = expected.iter().all(|(key, qty)| records.get(*key).is_some_and(|r| r.row["stoin_cnt"] == *qty));
        (all && records.len() == expected.len()).then_some(records)
    })
    .await
}

/// CSV text as rows of column → value.
fn csv_rows(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    reader.deserialize().map(|row| row.expect("the output parses as CSV")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_key_shows_both_uploads_of_a_corrected_record_and_records_lists_the_last_versions() {
    let World { sim, vhost, amqp } = World::new("evidence-key", TestSimulator::builder().institutions(1).start()).await;
    let code = sim.institution(0).code.clone();
    let config = worker_config(&sim, &vhost, 100);
    let mut worker = WorkerProcess::start(&config, "worker");
    amqp.publish(&[
        event(Infno::Els7002, &code, Some(1), row(Infno::Els7002, "IN-1", "10")),
        event(Infno::Els7002, &code, Some(1), row(Infno::Els7002, "IN-2", "3")),
    ])
    .await;
    held(&sim, &[("IN-1", "10"), ("IN-2", "3")]).await;
    amqp.publish(&[event(Infno::Els7002, &code, Some(2), row(Infno::Els7002, "IN-1", "12"))]).await;
    let records = held(&sim, &[("IN-1", "12"), ("IN-2", "3")]).await;
    vhost.wait_for_counts("els.events", QueueCounts::new(0, 0), Duration::from_secs(30));

    let output = report(&config, &["--key", "IN-1"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = stdout(&output);
    assert!(text.starts_with("Record IN-1: 2 claims and 2 receipts in the whole ledger"), "{text}");
    let steps: Vec<&str> = text.lines().skip(2).collect();
    assert_eq!(steps.len(), 4, "{text}");
    let receipts: Vec<&&str> = steps.iter().filter(|l| l.contains(" receipt ")).collect();
    assert!(receipts[1].contains(&records["IN-1"].msgid), "the last receipt is the call the platform holds:\n{text}");
    assert!(receipts[0].contains(&format!("{code}  ELS7002              1")), "{text}");
    assert!(receipts[1].contains(&format!("{code}  ELS7002              2")), "{text}");
    assert!(steps.iter().filter(|l| l.contains(" claim ")).all(|l| l.contains(" pid ") && l.contains(": accepted")), "{text}");
    let missing = report(&config, &["--key", "NO-SUCH-KEY"]);
    assert_eq!(missing.status.code(), Some(1), "{}", stdout(&missing));

    let output = report(&config, &["--records", "--from", "2026-11-25", "--csv"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rows = csv_rows(&stdout(&output));
    let listed: Vec<(&str, &str, &str, &str)> =
        rows.iter().map(|r| (r["key"].as_str(), r["version"].as_str(), r["quantity"].as_str(), r["uploads"].as_str())).collect();
    assert_eq!(listed, vec![("IN-1", "2", "12", "2"), ("IN-2", "1", "3", "1")]);
    for r in &rows {
        assert_eq!(r["msgid"], records[&r["key"]].msgid);
        assert_eq!((r["price"].as_str(), r["movement_time"].as_str()), ("12.34", "2026-11-25 09:30:00"));
    }
    // --lang zh-CN: the same sheet under Chinese column headers, for the finance office.
    let chinese = report(&config, &["--records", "--from", "2026-11-25", "--csv", "--lang", "zh-CN"]);
    assert!(chinese.status.success(), "{}", String::from_utf8_lossy(&chinese.stderr));
    let (header, body) = stdout(&chinese).split_once('\n').map(|(h, b)| (h.to_owned(), b.to_owned())).expect("a header line");
    assert_eq!(header, "机构编码,交易号,记录键,版本,数量,单价,出入库时间,报文ID,平台接受时间（北京时间）,上传次数");
    assert_eq!(Some(body.as_str()), stdout(&output).split_once('\n').map(|(_, b)| b), "only the header differs");
    let table = report(&config, &["--records", "--from", "2026-11-25"]);
    assert!(stdout(&table).contains("2 records"), "{}", stdout(&table));
    assert!(worker.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}

/// Writes rows as a CSV export with the spec's column names.
fn write_csv(path: &Path, rows: &[Map<String, Value>]) {
    let columns: Vec<String> = rows[0].keys().cloned().collect();
    let mut writer = csv::Writer::from_path(path).unwrap();
    writer.write_record(&columns).unwrap();
    for row in rows {
        writer.write_record(columns.iter().map(|c| row[c].as_str().unwrap_or_default())).unwrap();
    }
    writer.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_against_finds_a_missing_an_extra_and_a_changed_record_and_none_in_an_exact_export() {
    let World { sim, vhost, amqp } = World::new("evidence-against", TestSimulator::builder().institutions(1).start()).await;
    let code = sim.institution(0).code.clone();
    let config = worker_config(&sim, &vhost, 100);
    let mut worker = WorkerProcess::start(&config, "worker");
    let reported: Vec<Map<String, Value>> = [("A", "1"), ("B", "2"), ("C", "3")].iter().map(|(k, q)| row(Infno::Els7002, k, q)).collect();
    amqp.publish(&reported.iter().map(|r| event(Infno::Els7002, &code, Some(1), r.clone())).collect::<Vec<_>>()).await;
    held(&sim, &[("A", "1"), ("B", "2"), ("C", "3")]).await;
    vhost.wait_for_counts("els.events", QueueCounts::new(0, 0), Duration::from_secs(30));

    let exact = config.with_file_name("exact.jsonl");
    std::fs::write(&exact, common::records::jsonl(&reported)).unwrap();
    let args = ["--infno", "ELS7002", "--from", "2026-11-25", "--against"];
    let output = report(&config, &[&args[..], &[exact.to_str().unwrap()]].concat());
    assert_eq!(output.status.code(), Some(0), "{}{}", stdout(&output), String::from_utf8_lossy(&output.stderr));
    assert!(stdout(&output).contains("summary: 3 records in the file, 3 reported; 3 equal, 0 missing"), "{}", stdout(&output));

    // The warehouse system has A as reported, B with another quantity, D never reported, and no C.
    let mut changed = row(Infno::Els7002, "B", "5");
    changed.insert("purc_pric".into(), Value::String("12.34".into()));
    let export = [reported[0].clone(), changed, row(Infno::Els7002, "D", "4")];
    let file = config.with_file_name("export.csv");
    write_csv(&file, &export);
    let output = report(&config, &[&args[..], &[file.to_str().unwrap(), "--csv"]].concat());
    assert_eq!(output.status.code(), Some(1), "{}{}", stdout(&output), String::from_utf8_lossy(&output.stderr));
    let found: Vec<(String, String, String, String)> = csv_rows(&stdout(&output))
        .into_iter()
        .map(|r| (r["difference"].clone(), r["key"].clone(), r["in_file"].clone(), r["at_platform"].clone()))
        .collect();
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!((found[0].0.as_str(), found[0].1.as_str()), ("missing_at_platform", "D"));
    assert_eq!((found[1].0.as_str(), found[1].1.as_str()), ("not_in_file", "C"));
    assert_eq!(found[2], ("quantity".into(), "B".into(), "5".into(), "2".into()), "the price 12.34 equals 12.3400");
    let summary = String::from_utf8_lossy(&output.stderr);
    assert!(summary.contains("1 equal, 1 missing at the platform, 1 not in the file, 1 differ"), "{summary}");
    let unknown = report(&config, &[&args[..], &[file.to_str().unwrap(), "--institution", "H99999999999"]].concat());
    assert_eq!(unknown.status.code(), Some(2), "an institution that is not configured is a usage error: {}", stdout(&unknown));
    assert!(worker.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}
