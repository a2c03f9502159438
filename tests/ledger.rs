//! Versions, the receipts ledger and the daily report, against a real broker, real worker
//! processes and the simulator.

mod common;

use common::run::{COMMAND_LIMIT, OutputWithin};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::broker::{QueueCounts, unique_vhost};
use common::records::{event, row};
use common::simulator::{TestSimulator, eventually};
use common::worker::{WorkerProcess, World, worker_config, worker_toml};
use els_bridge::simulator::api::{CallFilter, FaultKind, RecordFilter, RecordView, TimeoutMode, Timeouts};
use els_bridge::spec::Infno;
use rust_decimal::Decimal;
use serde_json::Value;

fn quantity(record: &RecordView) -> String {
    let field = match record.infno {
        Infno::Els7002 | Infno::Els7004 => "stoin_cnt",
        Infno::Els7003 | Infno::Els7005 => "stoout_cnt",
        _ => "retn_cnt",
    };
    record.row[field].as_str().unwrap_or_default().to_owned()
}

/// Waits until the simulator holds `count` records, then returns them by key.
async fn stored(sim: &TestSimulator, count: usize) -> BTreeMap<String, RecordView> {
    stored_within(sim, count, Duration::from_secs(120)).await
}

/// [`stored`], failing after `timeout`.
async fn stored_within(sim: &TestSimulator, count: usize, timeout: Duration) -> BTreeMap<String, RecordView> {
    eventually(&format!("{count} records at the simulator"), timeout, async || {
        let page = sim.records(&RecordFilter::default()).await;
        (page.total == count).then(|| page.records.into_iter().map(|r| (r.key.clone(), r)).collect())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_version_replayed_after_its_correction_is_superseded() {
    let World { sim, vhost, amqp } = World::new("ledger-replay", TestSimulator::builder().institutions(1).start()).await;
    let code = sim.institution(0).code.clone();
    let config = worker_config(&sim, &vhost, 100);
    let mut worker = WorkerProcess::start(&config, "worker");

    // Version 1 is refused for now and dead-lettered.
    sim.refuse_keys(&["IN-1"], 16).await;
    amqp.publish(&[event(Infno::Els7002, &code, Some(1), row(Infno::Els7002, "IN-1", "10"))]).await;
    let dead = eventually("the dead letter of version 1", Duration::from_secs(60), async || {
        let taken = amqp.take_all("els.dead").await;
        (!taken.is_empty()).then_some(taken)
    })
    .await;
    // The correction, version 2, is accepted.
    sim.clear_fault("refusals").await;
    amqp.publish(&[event(Infno::Els7002, &code, Some(2), row(Infno::Els7002, "IN-1", "12"))]).await;
    let records = stored(&sim, 1).await;
    assert_eq!(quantity(&records["IN-1"]), "12");

    // An operator replays the old dead letter: it must not overwrite the correction.
    amqp.publish_raw(&format!("ELS7002.{code}"), dead[0].body.to_string().as_bytes(), "replayed-v1").await;
    vhost.wait_for_counts("els.events", QueueCounts::new(0, 0), Duration::from_secs(30));
    let records = stored(&sim, 1).await;
    assert_eq!(quantity(&records["IN-1"]), "12", "the platform keeps the correction");
    assert_eq!(records["IN-1"].updates, 1, "version 1 was never sent");
    assert!(amqp.take_all("els.dead").await.is_empty(), "superseded is not an error");
    assert!(worker.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_versions_published_back_to_back_end_with_the_newer_one_across_three_workers() {
    let World { sim, vhost, amqp } = World::new("ledger-race", TestSimulator::builder().institutions(2).start()).await;
    let codes = [sim.institution(0).code.clone(), sim.institution(1).code.clone()];
    let config = worker_config(&sim, &vhost, 50);
    let workers: Vec<WorkerProcess> = (0..3).map(|i| WorkerProcess::start(&config, &format!("worker-{i}"))).collect();

    let mut expected = BTreeMap::new();
    for round in 0..4 {
        let mut events = Vec::new();
        for i in 0..60 {
            let infno = Infno::UPLOADS[i % 6];
            let code = &codes[i % 2];
            let key = format!("RACE-{round}-{i}");
            events.push(event(infno, code, Some(1), row(infno, &key, "1")));
            events.push(event(infno, code, Some(2), row(infno, &key, "2")));
            expected.insert(key, "2".to_owned());
        }
        amqp.publish(&events).await;
    }
    stored(&sim, expected.len()).await;
    // Every delivery settled: no upload is in flight any more. (Until then a key may
    // legitimately show version 1: uploaded first, with version 2 waiting for its claim.)
    vhost.wait_for_counts("els.events", QueueCounts::new(0, 0), Duration::from_secs(60));
    let records = stored(&sim, expected.len()).await;
    let held: BTreeMap<String, String> = records.iter().map(|(k, r)| (k.clone(), quantity(r))).collect();
    assert_eq!(held, expected, "every record ends with its newer version");
    assert!(amqp.take_all("els.dead").await.is_empty());
    drop(workers);
    amqp.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_still_refuses_stale_versions() {
    let World { sim, vhost, amqp } = World::new("ledger-restart", TestSimulator::builder().institutions(1).start()).await;
    let code = sim.institution(0).code.clone();
    let config = worker_config(&sim, &vhost, 100);
    let newer: Vec<Value> =
        (0..12).map(|i| event(Infno::UPLOADS[i % 6], &code, Some(5), row(Infno::UPLOADS[i % 6], &format!("K-{i}"), "5"))).collect();
    amqp.publish(&newer).await;
    let mut first = WorkerProcess::start(&config, "first");
    stored(&sim, 12).await;
    assert!(first.terminate(Duration::from_secs(30)).success());

    let mut second = WorkerProcess::start(&config, "second");
    let older: Vec<Value> =
        (0..12).map(|i| event(Infno::UPLOADS[i % 6], &code, Some(4), row(Infno::UPLOADS[i % 6], &format!("K-{i}"), "4"))).collect();
    amqp.publish(&older).await;
    vhost.wait_for_counts("els.events", QueueCounts::new(0, 0), Duration::from_secs(60));
    let records = stored(&sim, 12).await;
    assert!(records.values().all(|r| quantity(r) == "5" && r.updates == 1), "no stale version was sent");
    let uploads = sim.calls(&CallFilter::default()).await.calls.iter().filter(|c| c.infno.as_deref() != Some("ELS7001")).count();
    assert!(uploads <= 6, "the second worker made no upload: {uploads} calls");
    assert!(amqp.take_all("els.dead").await.is_empty());
    assert!(second.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_totals_equal_what_the_simulator_holds() {
    let World { sim, vhost, amqp } = World::new("ledger-report", TestSimulator::builder().institutions(2).start()).await;
    let codes = [sim.institution(0).code.clone(), sim.institution(1).code.clone()];
    let config = worker_config(&sim, &vhost, 100);
    let mut worker = WorkerProcess::start(&config, "worker");
    let mut events = Vec::new();
    for i in 0..120 {
        let infno = Infno::UPLOADS[i % 6];
        let mut data = row(infno, &format!("R-{i}"), &format!("{}.25", i % 7 + 1));
        data.insert("purc_pric".into(), Value::String(format!("{}.5", i % 5 + 1)));
        events.push(event(infno, &codes[i % 2], Some(1), data));
    }
    amqp.publish(&events).await;
    stored(&sim, 120).await;
    // Corrections of a fifth of the records.
    let corrections: Vec<Value> = (0..120)
        .step_by(5)
        .map(|i| event(Infno::UPLOADS[i % 6], &codes[i % 2], Some(2), row(Infno::UPLOADS[i % 6], &format!("R-{i}"), "100")))
        .collect();
    amqp.publish(&corrections).await;
    eventually("the corrections at the simulator", Duration::from_secs(60), async || {
        let page = sim.records(&RecordFilter::default()).await;
        (page.records.iter().filter(|r| quantity(r) == "100").count() == corrections.len()).then_some(())
    })
    .await;

    let output = Command::new(env!("CARGO_BIN_EXE_els-bridge"))
        .args(["report", "--from", "2026-11-25", "--csv", "--config"])
        .arg(&config)
        .output_within(COMMAND_LIMIT)
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let csv = String::from_utf8(output.stdout).unwrap();

    // What the simulator holds, per institution and transaction.
    let mut held: BTreeMap<(String, String), (u64, Decimal, Decimal)> = BTreeMap::new();
    for r in sim.records(&RecordFilter::default()).await.records {
        let qty: Decimal = quantity(&r).parse().unwrap();
        let price: Decimal = r.row["purc_pric"].as_str().unwrap().parse().unwrap();
        let entry = held.entry((r.institution.clone(), r.infno.to_string())).or_default();
        entry.0 += 1;
        entry.1 += qty;
        entry.2 += qty * price;
    }
    let mut reported = BTreeMap::new();
    let mut corrections_reported = 0;
    for line in csv.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        let keys: u64 = cells[4].parse().unwrap();
        corrections_reported += cells[5].parse::<u64>().unwrap();
        reported.insert((cells[0].to_owned(), cells[1].to_owned()), (keys, cells[6].parse().unwrap(), cells[7].parse().unwrap()));
    }
    let normalised: BTreeMap<_, _> = held.into_iter().map(|(k, (n, q, a))| (k, (n, q.normalize(), a.normalize()))).collect();
    assert_eq!(reported, normalised, "report:\n{csv}");
    assert_eq!(corrections_reported, corrections.len() as u64);
    assert!(worker.terminate(Duration::from_secs(30)).success());
    amqp.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_with_a_broker_records_its_uploads_in_the_ledger() {
    let sim = TestSimulator::builder().institutions(1).start();
    let vhost = unique_vhost("ledger-send");
    let config = sim.write_client_config("send.toml", &worker_toml(vhost.url(), 100));
    let file = config.with_file_name("backfill.jsonl");
    let rows: Vec<_> = (0..5).map(|i| row(Infno::Els7004, &format!("BF-{i}"), "2")).collect();
    std::fs::write(&file, common::records::jsonl(&rows)).unwrap();
    let send = Command::new(env!("CARGO_BIN_EXE_els-bridge"))
        .args(["send", "--infno", "ELS7004", "--config"])
        .arg(&config)
        .arg(&file)
        .output_within(COMMAND_LIMIT)
        .unwrap();
    assert!(send.status.success(), "{}", String::from_utf8_lossy(&send.stderr));
    stored(&sim, 5).await;

    let report = Command::new(env!("CARGO_BIN_EXE_els-bridge"))
        .args(["report", "--from", "2026-11-25", "--csv", "--config"])
        .arg(&config)
        .output_within(COMMAND_LIMIT)
        .unwrap();
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    let csv = String::from_utf8(report.stdout).unwrap();
    let code = &sim.institution(0).code;
    assert!(csv.contains(&format!("{code},ELS7004,consumable stock-in,5,5,0,10,123.4")), "{csv}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claims_of_a_killed_worker_do_not_hold_its_keys_back() {
    let World { sim, vhost, amqp } = World::new("ledger-dead-holder", TestSimulator::builder().institutions(1).start()).await;
    let code = sim.institution(0).code.clone();
    let config = worker_config(&sim, &vhost, 100);
    let mut first = WorkerProcess::start(&config, "first");
    // A first record, so that the token is fetched before calls start to hang.
    amqp.publish(&[event(Infno::Els7002, &code, Some(1), row(Infno::Els7002, "WARM-UP", "1"))]).await;
    stored(&sim, 1).await;

    // One record per lane; their calls hang, so the first worker holds six claims.
    sim.set_timeouts(Timeouts { next: 6, rate: 0.0, mode: TimeoutMode::Hang, hang_ms: 120_000, processed: false }).await;
    let events: Vec<Value> =
        Infno::UPLOADS.iter().map(|infno| event(*infno, &code, Some(1), row(*infno, &format!("HELD-{infno}"), "3"))).collect();
    amqp.publish(&events).await;
    eventually("six hanging calls", Duration::from_secs(60), async || {
        let calls = sim.calls(&CallFilter::default()).await.calls;
        (calls.iter().filter(|c| c.fault == Some(FaultKind::Hang)).count() == 6).then_some(())
    })
    .await;

    // The first worker dies with its claims in force; the second takes the same keys.
    first.kill();
    sim.clear_fault("timeouts").await;
    let mut second = WorkerProcess::start(&config, "second");
    // Well within the claims' 5-minute expiry: the second worker finds their holder gone.
    let records = stored_within(&sim, 7, Duration::from_secs(30)).await;
    let held: Vec<&RecordView> = records.values().filter(|r| r.key.starts_with("HELD-")).collect();
    assert_eq!(held.len(), 6);
    assert!(held.iter().all(|r| quantity(r) == "3"));
    assert!(second.terminate(Duration::from_secs(30)).success(), "{}", second.logs());
    vhost.wait_for_counts("els.events", QueueCounts::new(0, 0), Duration::from_secs(30));
    amqp.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_claim_in_the_ledger_is_ended_once_by_its_last_receipt_or_else_by_a_release() {
    let World { sim, vhost, amqp } = World::new("ledger-claim-ends", TestSimulator::builder().institutions(1).start()).await;
    let code = sim.institution(0).code.clone();
    let config = worker_config(&sim, &vhost, 100);
    let mut worker = WorkerProcess::start(&config, "worker");
    // One lane is accepted; the other lane's only record is refused, so its claim has no receipt.
    sim.refuse_keys(&["REFUSED-1"], 16).await;
    let mut events: Vec<Value> =
        (0..5).map(|i| event(Infno::Els7002, &code, Some(1), row(Infno::Els7002, &format!("ACC-{i}"), "2"))).collect();
    events.push(event(Infno::Els7003, &code, Some(1), row(Infno::Els7003, "REFUSED-1", "1")));
    amqp.publish(&events).await;
    stored(&sim, 5).await;
    vhost.wait_for_counts("els.events", QueueCounts::new(0, 0), Duration::from_secs(60));
    assert!(worker.terminate(Duration::from_secs(30)).success(), "{}", worker.logs());

    // The stream's entries are `{"id", "change"}`; entries without a change only sync readers.
    let entries: Vec<Value> =
        amqp.read_stream_to_end("els.ledger").await.into_iter().filter_map(|mut e| e.get_mut("change").map(Value::take)).collect();
    let claim_of = |entry: &Value, kind: &str| entry[kind]["claim"].as_str().map(str::to_owned);
    let claims: Vec<String> = entries.iter().filter_map(|e| e["claim"]["id"].as_str().map(str::to_owned)).collect();
    let (mut by_receipt, mut by_release) = (0, 0);
    for claim in &claims {
        let receipts: Vec<&Value> = entries.iter().filter(|e| claim_of(e, "receipt").as_ref() == Some(claim)).collect();
        let releases = entries.iter().filter(|e| claim_of(e, "release").as_ref() == Some(claim)).count();
        let ends: Vec<bool> = receipts.iter().map(|r| r["receipt"]["ends_claim"].as_bool().unwrap_or(false)).collect();
        if receipts.is_empty() {
            assert_eq!(releases, 1, "claim {claim} without a receipt is released once: {entries:#?}");
            by_release += 1;
        } else {
            let mut expected = vec![false; ends.len() - 1];
            expected.push(true);
            assert_eq!(ends, expected, "only the last receipt of claim {claim} ends it: {entries:#?}");
            assert_eq!(releases, 0, "claim {claim}, ended by its receipt, has no release entry: {entries:#?}");
            by_receipt += 1;
        }
    }
    assert!(by_receipt >= 1 && by_release >= 1, "an accepted and a refused batch: {entries:#?}");
    let receipted: usize = entries.iter().filter_map(|e| e["receipt"]["rows"].as_array()).map(Vec::len).sum();
    assert_eq!(receipted, 5, "every accepted row has one receipt row: {entries:#?}");
    amqp.close().await;
}
