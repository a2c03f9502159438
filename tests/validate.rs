//! `els-bridge validate` on files with good and bad lines, as an operator runs it.

mod common;

use common::run::{COMMAND_LIMIT, OutputWithin};
use std::process::Command;
use std::time::Duration;

use common::records::{event, jsonl, row};
use els_bridge::spec::Infno;
use serde_json::json;

fn validate(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_els-bridge"))
        .arg("validate")
        .args(args)
        .env_remove("ELS_BRIDGE_CONFIG")
        .output_within(COMMAND_LIMIT)
        .expect("run els-bridge");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn valid_record_files_of_every_transaction_pass() {
    let dir = tempfile::tempdir().unwrap();
    for infno in Infno::UPLOADS {
        let path = dir.path().join(format!("{infno}.jsonl"));
        let rows: Vec<_> = (0..3).map(|i| row(infno, &format!("K{i}"), "1")).collect();
        std::fs::write(&path, jsonl(&rows)).unwrap();
        let (code, out, err) = validate(&["--infno", infno.as_str(), path.to_str().unwrap()]);
        assert_eq!(code, 0, "{infno}: {out}{err}");
        assert!(out.contains("3 lines checked: 3 valid, 0 invalid"), "{out}");
    }
}

#[test]
fn each_bad_line_is_reported_with_file_line_field_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.jsonl");
    let mut bad_qty = row(Infno::Els7002, "K2", "1");
    bad_qty.insert("stoin_cnt".into(), json!("-5"));
    let mut bad_flag = row(Infno::Els7002, "K3", "1");
    bad_flag.insert("er_flag".into(), json!("Y"));
    bad_flag.remove("drug_code");
    let mut content = jsonl([&row(Infno::Els7002, "K1", "1"), &bad_qty, &bad_flag]);
    content.push_str("{not json\n");
    content.push_str("[1,2]\n");
    let mut bytes = content.into_bytes();
    bytes.extend(b"\xff\xfe\n");
    bytes.extend(b"{\"drug_code\": \"");
    bytes.extend(std::iter::repeat_n(b'x', 10 << 20));
    bytes.extend(b"\"}\n");
    std::fs::write(&path, bytes).unwrap();

    let (code, out, err) = validate(&["--infno", "ELS7002", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let p = path.to_str().unwrap();
    assert!(out.contains(&format!("{p}:2: stoin_cnt: must be a non-negative decimal")), "{out}");
    assert!(out.contains(&format!("{p}:3: drug_code: is required")), "{out}");
    assert!(out.contains(&format!("{p}:3: er_flag: must be one of \"0\", \"1\" (got \"Y\")")), "{out}");
    assert!(out.contains(&format!("{p}:4: not valid JSON")), "{out}");
    assert!(out.contains(&format!("{p}:5: expected a JSON object")), "{out}");
    assert!(out.contains(&format!("{p}:6: not UTF-8")), "{out}");
    assert!(out.contains(&format!("{p}:7: too large: 10485777 bytes")), "a 10 MB line is not even parsed: {out}");
    assert!(out.contains("7 lines checked: 1 valid, 6 invalid"), "{out}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn events_are_checked_with_their_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let good = event(Infno::Els7005, "H32128200338", Some(3), row(Infno::Els7005, "OUT-1", "2"));
    let mut wrong_kind = event(Infno::Els7005, "H32128200338", None, row(Infno::Els7005, "OUT-2", "2"));
    wrong_kind["data"]["drug_code"] = json!("X");
    let unknown_infno = json!({"infno": "ELS7099", "fixmedins_code": "H32128200338", "data": {}});
    let lines = [good, wrong_kind, unknown_infno].map(|v| v.to_string()).join("\n");
    std::fs::write(&path, lines).unwrap();

    let (code, out, _) = validate(&[path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(":2: data.drug_code: is a field of drug rows, not of this transaction"), "{out}");
    assert!(out.contains(":3: infno: unknown transaction code \"ELS7099\""), "{out}");
    assert!(out.contains("3 lines checked: 1 valid, 2 invalid"), "{out}");
}

#[test]
fn csv_record_files_are_checked_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.csv");
    let good = row(Infno::Els7004, "C1", "3");
    let header: Vec<&String> = good.keys().collect();
    let values: Vec<String> = good.values().map(|v| v.as_str().unwrap().to_owned()).collect();
    let mut text = String::from("\u{feff}");
    text.push_str(&header.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","));
    text.push('\n');
    text.push_str(&values.join(","));
    text.push('\n');
    text.push_str(&values.iter().map(|v| if v == "3" { "three".to_owned() } else { v.clone() }).collect::<Vec<_>>().join(","));
    text.push('\n');
    std::fs::write(&path, text).unwrap();

    let (code, out, _) = validate(&["--infno", "ELS7004", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(":3: stoin_cnt: must be a non-negative decimal"), "{out}");
    assert!(out.contains("2 lines checked: 1 valid, 1 invalid"), "{out}");
}

#[test]
fn usage_errors_exit_with_2() {
    let (code, _, err) = validate(&["--infno", "ELS7002", "/nonexistent/file.jsonl"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read /nonexistent/file.jsonl"), "{err}");
    let (code, _, _) = validate(&["--infno", "ELS7009", "x"]);
    assert_eq!(code, 2);
}

/// Issue 14: values the validator used to change silently are refused with the rule they
/// break, judged on their exact text (JSON number tokens included), and a field named twice
/// is refused instead of the last one winning.
#[test]
fn values_are_judged_on_their_exact_text_and_nothing_ambiguous_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.jsonl");
    let good = serde_json::Value::Object(row(Infno::Els7002, "K1", "1")).to_string();
    let replaced = |field: &str, raw: &str| {
        let mut value: serde_json::Value = serde_json::from_str(&good).unwrap();
        value[field] = serde_json::Value::String("PLACEHOLDER".into());
        value.to_string().replace("\"PLACEHOLDER\"", raw)
    };
    let lines = [
        replaced("stoin_cnt", "\"0.00000000000000000000000000001\""),
        replaced("stoin_cnt", "1.00000000000000001"),
        replaced("purc_pric", "12.3400000000000001"),
        replaced("stoin_cnt", &format!("0.{}1", "0".repeat(9_999))),
        replaced("stoin_cnt", "1e2"),
        replaced("stoin_time", "\"2016-12-31 23:59:60\""),
        replaced("stoin_time", "\"0000-01-01 00:00:00\""),
        good.replacen('{', "{\"stoin_cnt\":\"-5\",", 1),
        replaced("stoin_cnt", "12.3400"),
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    let (code, out, err) = validate(&["--infno", "ELS7002", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let p = path.display();
    for line in 1..=5 {
        assert!(
            out.contains(&format!("{p}:{line}: stoin_cnt: must be a non-negative decimal"))
                || out.contains(&format!("{p}:{line}: purc_pric: must be a non-negative decimal")),
            "line {line}:\n{out}"
        );
    }
    assert!(out.contains(&format!("{p}:6: stoin_time: must be a time")), "{out}");
    assert!(out.contains(&format!("{p}:7: stoin_time: must be a time")), "{out}");
    assert!(out.contains(&format!("{p}:8: the field stoin_cnt appears more than once")), "{out}");
    assert!(out.contains("9 lines checked: 1 valid, 8 invalid"), "{out}");
}

/// Issue 14: input echoed in a report never carries a control character (a field name with
/// a newline forged a whole line), one line names at most 20 problems, a line larger than
/// any record is refused without being read into memory, a CSV file's header is checked even
/// when no row follows, and a byte-order mark is ignored on any line.
#[test]
fn hostile_lines_cannot_forge_output_or_flood_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.jsonl");
    let mut forged = row(Infno::Els7002, "K1", "1");
    forged.insert("x\n/etc/passwd:1: all good".into(), json!(1));
    let mut many = row(Infno::Els7002, "K2", "1");
    for n in 0..3_000 {
        many.insert(format!("unknown_{n}"), json!(1));
    }
    let huge = format!("{{\"a\":\"{}\"}}", "x".repeat(200_000));
    let with_bom = format!("\u{feff}{}", serde_json::Value::Object(row(Infno::Els7002, "K3", "1")));
    std::fs::write(&path, format!("{}\n{}\n{huge}\n{with_bom}\n", jsonl(&[forged]).trim_end(), jsonl(&[many]).trim_end())).unwrap();
    let (code, out, _) = validate(&["--infno", "ELS7002", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(!out.lines().any(|l| l.starts_with("/etc/passwd")), "{out}");
    assert!(out.contains("x\\n/etc/passwd:1: all good"), "{out}");
    assert_eq!(out.lines().filter(|l| l.contains(":2:")).count(), 21, "20 problems and a count");
    assert!(out.contains(":2: and 2980 more problems"), "{out}");
    assert!(out.contains(":3: too large: 200008 bytes, at most 65536"), "{out}");
    assert!(out.contains("4 lines checked: 1 valid, 3 invalid"), "{out}");

    let garbage = dir.path().join("garbage.csv");
    std::fs::write(&garbage, "this is not a header\n").unwrap();
    let (code, out, _) = validate(&["--infno", "ELS7002", garbage.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(":1: column this is not a header: is not a field of this transaction"), "{out}");
}

/// Issue 14: `validate` buffers its report. 20 000 empty objects make 320 001 lines of
/// report (16 missing fields each, and the total); written line by line that was as many
/// `write` calls (a CSV of 200 000 empty rows took 15-19 s through a pipe). The kernel counts a process's write calls
/// (`/proc/PID/io`, `syscw`), readable until the finished process is reaped.
#[test]
fn the_report_is_written_in_few_system_calls() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty-rows.jsonl");
    std::fs::write(&path, "{}\n".repeat(20_000)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_els-bridge"))
        .args(["validate", "--infno", "ELS7002", path.to_str().unwrap()])
        .env_remove("ELS_BRIDGE_CONFIG")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run els-bridge");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    // stdout closed: the process is exiting. It stays a zombie, with its counters, until
    // `wait` below; the poll ends as soon as it is one (or fails when it never becomes one).
    let stat = format!("/proc/{}/stat", child.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_to_string(&stat).unwrap().split(") ").nth(1).unwrap().starts_with('Z') {
        assert!(std::time::Instant::now() < deadline, "validate did not exit");
        std::thread::yield_now();
    }
    let io = std::fs::read_to_string(format!("/proc/{}/io", child.id())).unwrap();
    let writes: usize = io.lines().find_map(|l| l.strip_prefix("syscw: ")).unwrap().parse().unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(1));
    assert!(out.contains("20000 lines checked: 0 valid, 20000 invalid"), "{}", &out[out.len().saturating_sub(200)..]);
    let lines = out.lines().count();
    assert!(writes * 20 < lines, "{writes} write calls for {lines} lines of report");
}

/// The suite's time limit on the commands it runs (tests/common/run.rs) kills a command
/// that hangs and fails the test with what the command wrote.
#[test]
#[should_panic(expected = "was still running after 300ms and was killed; it wrote:\nbefore the hang")]
fn a_command_that_hangs_is_killed_and_fails_its_test() {
    let _ = Command::new("sh").args(["-c", "echo before the hang; exec sleep 30"]).output_within(Duration::from_millis(300));
}
