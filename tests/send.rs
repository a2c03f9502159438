//! `els-bridge send` against the real simulator over HTTP; assertions read the simulator's
//! inspection API, the command's summary, exit status and rejects file.

mod common;

use common::run::{COMMAND_LIMIT, OutputWithin};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::records::{jsonl, row};
use common::simulator::{TestSimulator, eventually, test_institutions, write_config};
use els_bridge::simulator::api::{CallFilter, CallView, RecordFilter};
use els_bridge::spec::Infno;
use serde_json::{Map, Value, json};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// The client configuration of `sim`, with its own token file in `dir`.
fn client_config(sim: &TestSimulator, dir: &Path) -> PathBuf {
    let extra = format!(
        "token_file = {:?}\n\n[retry]\ninitial_backoff_ms = 100\nmax_backoff_ms = 1000\nmax_elapsed_secs = 120\n",
        dir.join("state/tokens.json")
    );
    sim.write_client_config("send.toml", &extra)
}

fn send(config: &Path, args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_els-bridge"))
        .arg("send")
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("ELS_BRIDGE_CONFIG")
        .output_within(COMMAND_LIMIT)
        .expect("run els-bridge send");
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    run
}

fn summary_count(stdout: &str, label: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(label).map(|rest| rest.split_whitespace().next().unwrap_or("").parse().unwrap_or(u64::MAX)))
        .unwrap_or_else(|| panic!("no {label:?} in the summary:\n{stdout}"))
}

fn rows(infno: Infno, prefix: &str, count: usize) -> Vec<Map<String, Value>> {
    (0..count).map(|i| row(infno, &format!("{prefix}-{i:04}"), &format!("{}", i + 1))).collect()
}

fn csv(rows: &[Map<String, Value>]) -> String {
    let header: Vec<&str> = rows[0].keys().map(String::as_str).collect();
    let mut text = String::from("\u{feff}");
    text.push_str(&header.join(","));
    text.push('\n');
    for row in rows {
        let cells: Vec<String> = header.iter().map(|h| format!("\"{}\"", row[*h].as_str().unwrap_or_default())).collect();
        text.push_str(&cells.join(","));
        text.push('\n');
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transaction_is_uploaded_one_as_csv() {
    let sim = TestSimulator::builder().institutions(1).start();
    let dir = tempfile::tempdir().unwrap();
    let config = client_config(&sim, dir.path());
    for infno in Infno::UPLOADS {
        let rows = rows(infno, infno.as_str(), 7);
        let path = if infno == Infno::Els7005 {
            let path = dir.path().join("out.csv");
            std::fs::write(&path, csv(&rows)).unwrap();
            path
        } else {
            let path = dir.path().join(format!("{infno}.jsonl"));
            std::fs::write(&path, jsonl(&rows)).unwrap();
            path
        };
        let run = send(&config, &["--infno", infno.as_str(), path.to_str().unwrap()]);
        assert_eq!(run.code, 0, "{infno}: {}{}", run.stdout, run.stderr);
        assert_eq!(summary_count(&run.stdout, "uploaded"), 7);
        let stored = sim.records(&RecordFilter { infno: Some(infno), ..Default::default() }).await;
        assert_eq!(stored.total, 7, "{infno}");
        let first = stored.records.iter().find(|r| r.key == format!("{infno}-0000")).unwrap();
        for (field, value) in &rows[0] {
            // Decimals are sent normalised: "12.3400" as "12.34".
            let sent = if field == "purc_pric" { &json!("12.34") } else { value };
            assert_eq!(&first.row[field], sent, "{infno} {field} arrives as sent");
        }
    }
    let tokens = sim.tokens().await;
    assert_eq!(tokens.institutions[0].issued, 1, "one token for all six runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decimals_go_out_as_text_by_default_and_as_numbers_when_configured() {
    let sim = TestSimulator::builder().institutions(1).start();
    // One token file for both runs: the platform gives a second token only near expiry.
    let dir = tempfile::tempdir().unwrap();
    for (format, price, quantity) in [("string", json!("12.34"), json!("3")), ("number", json!(12.34), json!(3))] {
        let config = client_config(&sim, dir.path());
        let text = std::fs::read_to_string(&config).unwrap().replace("token_file =", &format!("decimal_format = {format:?}\ntoken_file ="));
        std::fs::write(&config, text).unwrap();
        let key = format!("DEC-{format}");
        let path = dir.path().join("rows.jsonl");
        std::fs::write(&path, jsonl(&[row(Infno::Els7002, &key, "3")])).unwrap();

        let run = send(&config, &["--infno", "ELS7002", path.to_str().unwrap()]);
        assert_eq!(run.code, 0, "{format}: {}{}", run.stdout, run.stderr);
        let stored = sim.records(&RecordFilter::default()).await;
        let stored = stored.records.iter().find(|r| r.key == key).unwrap_or_else(|| panic!("{key} not stored"));
        assert_eq!(stored.row["purc_pric"], price, "{format}");
        assert_eq!(stored.row["stoin_cnt"], quantity, "{format}");
        assert_eq!(stored.row["drug_genname"], json!("阿莫西林胶囊"), "{format}: text fields are text either way");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_rows_are_found_by_bisection_and_only_they_fail() {
    let sim = TestSimulator::builder().institutions(1).start();
    let dir = tempfile::tempdir().unwrap();
    let config = client_config(&sim, dir.path());
    let rows = rows(Infno::Els7002, "IN", 250);
    let path = dir.path().join("day.jsonl");
    std::fs::write(&path, jsonl(&rows)).unwrap();
    sim.refuse_keys(&["IN-0042", "IN-0199"], 16).await;

    let run = send(&config, &["--infno", "ELS7002", path.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert_eq!(summary_count(&run.stdout, "rows read"), 250);
    assert_eq!(summary_count(&run.stdout, "uploaded"), 248);
    assert_eq!(summary_count(&run.stdout, "refused"), 2);
    let stored = sim.records(&RecordFilter::default()).await;
    assert_eq!(stored.total, 248);
    assert!(!stored.records.iter().any(|r| r.key == "IN-0042" || r.key == "IN-0199"));

    let rejects = std::fs::read_to_string(dir.path().join("day.jsonl.rejects.jsonl")).unwrap();
    let mut rejects: Vec<Value> = rejects.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // In the order the calls were settled, which in parallel need not be the lines' order.
    rejects.sort_by_key(|r| r["line"].as_u64());
    assert_eq!(rejects.len(), 2);
    assert_eq!(rejects[0]["line"], 43);
    assert_eq!(rejects[0]["data"]["hosp_purc_mgt_detl"], "IN-0042");
    assert_eq!(rejects[0]["return_code"], 16);
    assert!(rejects[0]["reason"].as_str().unwrap().contains("returnCode 16"), "{}", rejects[0]);
    assert_eq!(rejects[1]["data"]["hosp_purc_mgt_detl"], "IN-0199");

    let calls = sim.calls(&CallFilter { infno: Some("ELS7002".into()), ..Default::default() }).await.calls;
    assert!(calls.iter().all(|c| c.rows <= 100));
    assert_eq!(summary_count(&run.stdout, "upload calls"), calls.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_outage_delays_but_loses_nothing() {
    let sim = TestSimulator::builder().institutions(1).start();
    let dir = tempfile::tempdir().unwrap();
    let config = client_config(&sim, dir.path());
    let path = dir.path().join("returns.jsonl");
    std::fs::write(&path, jsonl(&rows(Infno::Els7007, "RET", 230))).unwrap();
    sim.start_outage(3).await;

    let run = send(&config, &["--infno", "ELS7007", path.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(sim.records(&RecordFilter::default()).await.total, 230);
    let calls = sim.calls(&CallFilter::default()).await.calls;
    assert!(calls.iter().any(|c| c.http_status == Some(503)), "the outage was met");
    assert!(!dir.path().join("returns.jsonl.rejects.jsonl").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_reuses_the_first_runs_token() {
    let sim = TestSimulator::builder().institutions(1).start();
    let dir = tempfile::tempdir().unwrap();
    let config = client_config(&sim, dir.path());
    for (i, infno) in [Infno::Els7003, Infno::Els7004].into_iter().enumerate() {
        let path = dir.path().join(format!("run{i}.jsonl"));
        std::fs::write(&path, jsonl(&rows(infno, &format!("R{i}"), 3))).unwrap();
        let run = send(&config, &["--infno", infno.as_str(), path.to_str().unwrap()]);
        assert_eq!(run.code, 0, "run {i}: {}{}", run.stdout, run.stderr);
    }
    let calls = sim.calls(&CallFilter { infno: Some("ELS7001".into()), ..Default::default() }).await.calls;
    assert_eq!(calls.len(), 1, "the second run fetched no token: {calls:?}");
    assert!(calls.iter().all(|c| c.return_code == Some(1)));
    let token_file = dir.path().join("state/tokens.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(token_file).unwrap().permissions().mode() & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_malformed_rows_are_reported_and_never_sent() {
    let sim = TestSimulator::builder().institutions(1).start();
    let dir = tempfile::tempdir().unwrap();
    let config = client_config(&sim, dir.path());
    let mut good = rows(Infno::Els7006, "G", 3);
    let mut bad = good[1].clone();
    bad.insert("retn_cnt".into(), json!("a lot"));
    bad.insert("hosp_retn_mgt_detl".into(), json!("BAD"));
    good.push(bad);
    let mut bytes = jsonl(&good).into_bytes();
    bytes.extend(b"{\"truncated\": \n");
    bytes.extend(b"\xff\xfe\xfd\n");
    bytes.extend(b"{\"hosp_retn_mgt_detl\": \"");
    bytes.extend(std::iter::repeat_n(b'y', 10 << 20));
    bytes.extend(b"\"}\n");
    let path = dir.path().join("mixed.jsonl");
    std::fs::write(&path, bytes).unwrap();

    let run = send(&config, &["--infno", "ELS7006", path.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert_eq!(summary_count(&run.stdout, "uploaded"), 3);
    assert_eq!(summary_count(&run.stdout, "invalid"), 4);
    assert_eq!(sim.records(&RecordFilter::default()).await.total, 3);
    let rejects = std::fs::read_to_string(dir.path().join("mixed.jsonl.rejects.jsonl")).unwrap();
    let rejects: Vec<Value> = rejects.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rejects.iter().map(|r| r["line"].as_u64().unwrap()).collect::<Vec<_>>(), [4, 5, 6, 7]);
    assert!(rejects[0]["reason"].as_str().unwrap().contains("retn_cnt: must be a non-negative decimal"), "{}", rejects[0]);
    assert!(rejects[1]["reason"].as_str().unwrap().starts_with("not valid JSON"));
    assert!(rejects[2]["reason"].as_str().unwrap().contains("not UTF-8"));
    assert!(rejects[3]["reason"].as_str().unwrap().len() < 2000, "a 10 MB value is quoted as an excerpt");
}

/// The most calls that were at the platform at once: each call from its arrival until the
/// added latency had passed (it was answered later still).
fn most_at_once(calls: &[CallView]) -> usize {
    let spans: Vec<(i64, i64)> =
        calls.iter().map(|c| (c.time.timestamp_micros(), c.time.timestamp_micros() + c.latency_ms as i64 * 1000)).collect();
    spans.iter().map(|(start, _)| spans.iter().filter(|(s, e)| s <= start && start < e).count()).max().unwrap_or(0)
}

/// The upload call (ELS7002..7) whose rows hold `key` with `quantity`.
fn call_with<'c>(calls: &'c [CallView], key: &str) -> Vec<&'c CallView> {
    calls.iter().filter(|c| c.infno.as_deref() != Some("ELS7001") && c.keys.iter().any(|k| k == key)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_in_parallel_up_to_the_cap_and_a_later_row_of_a_key_never_overtakes() {
    let sim = TestSimulator::builder().institutions(1).start();
    let dir = tempfile::tempdir().unwrap();
    let config = client_config(&sim, dir.path());
    let text = std::fs::read_to_string(&config).unwrap().replace("[retry]", "[batch]\nmax_in_flight_per_institution = 3\n\n[retry]");
    std::fs::write(&config, text).unwrap();
    // 1 200 rows, 12 calls; key K is corrected in the 3rd and again in the 9th call.
    let mut all = rows(Infno::Els7002, "IN", 1200);
    for (line, quantity) in [(0, "1"), (249, "2"), (899, "3")] {
        all[line] = row(Infno::Els7002, "K", quantity);
    }
    let path = dir.path().join("year.jsonl");
    std::fs::write(&path, jsonl(&all)).unwrap();
    sim.set_latency(300, 300).await;

    let run = send(&config, &["--infno", "ELS7002", path.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(summary_count(&run.stdout, "uploaded"), 1200, "{}", run.stdout);
    assert_eq!(sim.records(&RecordFilter::default()).await.total, 1198, "K three times");
    assert_eq!(summary_count(&run.stdout, "upload calls"), 12);
    let calls: Vec<CallView> =
        sim.calls(&CallFilter::default()).await.calls.into_iter().filter(|c| c.infno.as_deref() == Some("ELS7002")).collect();
    assert_eq!(calls.len(), 12);
    let at_once = most_at_once(&calls);
    assert!((2..=3).contains(&at_once), "calls in parallel, never more than the cap of 3: {at_once} at once");
    let k = call_with(&calls, "K");
    assert_eq!(k.len(), 3, "{k:?}");
    for pair in k.windows(2) {
        let answered = pair[0].time + chrono::Duration::milliseconds(pair[0].latency_ms as i64);
        assert!(pair[1].time >= answered, "the call with K's correction started only after the one before it was answered: {pair:?}");
    }
    let stored = sim.records(&RecordFilter { key: Some("K".into()), ..Default::default() }).await;
    assert_eq!(stored.records[0].row["stoin_cnt"], json!("3"), "the last row of K wins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_fill_cut_short_sends_only_what_is_left_when_run_again() {
    let sim = TestSimulator::builder().institutions(1).start();
    let dir = tempfile::tempdir().unwrap();
    let config = client_config(&sim, dir.path());
    let mut all = rows(Infno::Els7003, "OUT", 1000);
    all[500] = row(Infno::Els7003, "OUT-0001", "99");
    let path = dir.path().join("history.jsonl");
    std::fs::write(&path, jsonl(&all)).unwrap();
    sim.refuse_keys(&["OUT-0007"], 16).await;
    let progress = dir.path().join("history.jsonl.progress.jsonl");

    // The platform goes down after a few calls were accepted; the run is interrupted while
    // it retries.
    sim.set_latency(100, 100).await;
    let first = Command::new(env!("CARGO_BIN_EXE_els-bridge"))
        .args(["send", "--infno", "ELS7003", "--config"])
        .arg(&config)
        .arg(&path)
        .env_remove("ELS_BRIDGE_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually("three accepted calls in the progress file", Duration::from_secs(60), async || {
        let text = std::fs::read_to_string(&progress).unwrap_or_default();
        (text.matches("\"accepted\"").count() >= 3).then_some(())
    })
    .await;
    sim.start_outage(3600).await;
    eventually("a call to fail in the outage", Duration::from_secs(60), async || {
        sim.calls(&CallFilter::default()).await.calls.iter().any(|c| c.http_status == Some(503)).then_some(())
    })
    .await;
    Command::new("kill").args(["-TERM", &first.id().to_string()]).status().unwrap();
    let first = first.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert_eq!(first.status.code(), Some(1), "{stdout}{}", String::from_utf8_lossy(&first.stderr));
    assert!(stdout.contains("stopped early: interrupted"), "{stdout}");
    let accepted_first = summary_count(&stdout, "uploaded");
    assert!((200..999).contains(&accepted_first), "{stdout}");
    let keys_first: Vec<String> =
        sim.records(&RecordFilter { limit: Some(10_000), ..Default::default() }).await.records.into_iter().map(|r| r.key).collect();
    let calls_first = sim.calls(&CallFilter::default()).await.last_seq;

    sim.clear_fault("outage").await;
    let again = send(&config, &["--infno", "ELS7003", path.to_str().unwrap()]);
    assert_eq!(again.code, 1, "OUT-0007 is refused again: {}{}", again.stdout, again.stderr);
    assert_eq!(summary_count(&again.stdout, "accepted before"), accepted_first, "{}", again.stdout);
    assert_eq!(summary_count(&again.stdout, "uploaded") + accepted_first, 999, "{}", again.stdout);
    let calls_again = sim.calls(&CallFilter { since: Some(calls_first), limit: Some(10_000), ..Default::default() }).await.calls;
    for key in &keys_first {
        assert!(call_with(&calls_again, key).is_empty() || key == "OUT-0001", "{key}, accepted by the first run, was sent again");
    }
    assert_eq!(sim.records(&RecordFilter::default()).await.total, 998, "1 000 rows, OUT-0001 twice, OUT-0007 refused");
    let stored = sim.records(&RecordFilter { key: Some("OUT-0001".into()), ..Default::default() }).await;
    assert_eq!(stored.records[0].row["stoout_cnt"], json!("99"), "the later row of OUT-0001 won");
    let rejects = std::fs::read_to_string(dir.path().join("history.jsonl.rejects.jsonl")).unwrap();
    assert_eq!(rejects.lines().count(), 1, "only the refused row: {rejects}");
    assert!(rejects.contains("returnCode 16"), "{rejects}");

    let third = send(&config, &["--infno", "ELS7003", path.to_str().unwrap()]);
    assert_eq!(summary_count(&third.stdout, "upload calls"), 0, "nothing left to send: {}", third.stdout);
    assert_eq!(summary_count(&third.stdout, "refused"), 1, "the refusal is reported again from the progress file");
}

#[test]
fn configuration_and_usage_errors_exit_with_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.jsonl");
    std::fs::write(&file, "").unwrap();
    let missing = send(Path::new("/nonexistent/els.toml"), &["--infno", "ELS7002", file.to_str().unwrap()]);
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains("cannot read configuration file /nonexistent/els.toml"), "{}", missing.stderr);

    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[platform]\nurl = \"ftp://x\"\n").unwrap();
    let bad = send(&config, &["--infno", "ELS7002", file.to_str().unwrap()]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("platform.url"), "{}", bad.stderr);

    let good = write_config(dir.path(), "good.toml", &test_institutions(1), "http://127.0.0.1:1/unused", "");
    let twice = send(&good, &["--infno", "ELS7002", file.to_str().unwrap(), dir.path().join("./x.jsonl").to_str().unwrap()]);
    assert_eq!(twice.code, 2);
    assert!(twice.stderr.contains("x.jsonl is given twice"), "{}", twice.stderr);
}
