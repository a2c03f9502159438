//! The platform simulator over real HTTP: the binary is spawned (`tests/common/simulator.rs`)
//! and spoken to as a client and through its admin and inspection API.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::records::row;
use common::simulator::{Answer, INTERFACE_PATH, TestSimulator, eventually};
use els_bridge::beijing;
use els_bridge::platform::sign::CsbHeaders;
use els_bridge::simulator::api::{CallFilter, ErrorAnswer, ErrorRate, FaultKind, RecordFilter, TimeoutMode, Timeouts};
use els_bridge::spec::Infno;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

fn good(infno: Infno, key: &str) -> Value {
    Value::Object(row(infno, key, "1"))
}

fn batch(infno: Infno, keys: &[&str]) -> Vec<Value> {
    keys.iter().map(|k| good(infno, k)).collect()
}

fn records_of(infno: Infno) -> RecordFilter {
    RecordFilter { infno: Some(infno), ..RecordFilter::default() }
}

fn assert_code(answer: &Answer, code: u32) {
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.return_code(), Some(code), "{}", answer.body);
}

#[tokio::test]
async fn starts_on_a_free_port_with_its_settings_and_stops_on_sigterm() {
    let sim = TestSimulator::builder().arg("--max-rows", 50).arg("--call-log-capacity", 7).start();
    let settings = sim.settings().await;
    assert_eq!((settings.token_validity_secs, settings.token_refresh_window_secs, settings.daily_call_limit), (1800, 300, 10_000));
    assert_eq!((settings.timestamp_tolerance_secs, settings.max_rows, settings.call_log_capacity), (900, 50, 7));
    assert_eq!(settings.institutions, ["H32128200338", "H32010600021"]);
    assert!(sim.logs().contains("platform simulator listening"), "{}", sim.logs());
    let status = sim.terminate();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn sigterm_cuts_a_hanging_call_short() {
    let sim = TestSimulator::start();
    sim.set_timeouts(Timeouts { next: 1, rate: 0.0, mode: TimeoutMode::Hang, hang_ms: 600_000, processed: false }).await;
    let url = sim.interface_url();
    let body = sim.envelope(0, "ELS7001", json!({})).await.to_string();
    let headers = sim.headers(0);
    let hanging = tokio::spawn(async move {
        let mut request = reqwest::Client::new().post(url).body(body);
        for (name, value) in headers.pairs() {
            request = request.header(name, value);
        }
        request.send().await.map(|r| r.status())
    });
    eventually("the hanging call in the log", WAIT, async || {
        let calls = sim.calls(&CallFilter::default()).await;
        calls.calls.iter().any(|c| c.fault == Some(FaultKind::Hang)).then_some(())
    })
    .await;
    let started = Instant::now();
    let status = sim.terminate();
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown waited for the hang");
    let answered = hanging.await.expect("the client task");
    assert!(answered.is_err() || answered.as_ref().is_ok_and(|s| *s == StatusCode::GATEWAY_TIMEOUT), "{answered:?}");
}

#[tokio::test]
async fn the_gateway_refuses_wrong_signatures_timestamps_and_keys_with_403() {
    let sim = TestSimulator::start();
    let i = sim.institution(0).clone();
    let other = sim.institution(1).clone();
    let now = Utc::now().timestamp_millis();
    let refused = [
        ("wrong secret", CsbHeaders::new(&i.access_key, "not-the-secret", now)),
        ("another institution's secret", CsbHeaders::new(&i.access_key, &other.secret_key, now)),
        ("seconds instead of milliseconds", CsbHeaders::new(&i.access_key, &i.secret_key, now / 1000)),
        ("a timestamp an hour old", CsbHeaders::new(&i.access_key, &i.secret_key, now - 3_600_000)),
        ("unknown access key", CsbHeaders::new("ak-nobody", &i.secret_key, now)),
    ];
    let input = json!({"app_code": i.app_code, "auth_code": i.auth_code});
    for (what, headers) in &refused {
        let body = sim.envelope(0, "ELS7001", input.clone()).await.to_string();
        let answer = sim.post(INTERFACE_PATH, Some(headers), body).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{what}: {}", answer.body);
        assert!(answer.body["message"].is_string(), "{what}: {}", answer.body);
        assert_eq!(answer.return_code(), None, "{what}: the platform never saw it");
    }
    let body = sim.envelope(0, "ELS7001", input.clone()).await.to_string();
    let unsigned = sim.post(INTERFACE_PATH, None, body).await;
    assert_eq!(unsigned.status, StatusCode::FORBIDDEN);

    assert_code(&sim.fetch_token(0).await, 1);
    let counters = sim.counters().await;
    assert_eq!(counters.by_http_status.get(&403), Some(&6));
    assert_eq!(counters.tokens_issued, 1);
    let calls = sim.calls(&CallFilter::default()).await;
    assert!(calls.calls.iter().filter(|c| c.http_status == Some(403)).all(|c| c.institution.is_none() && c.return_code.is_none()));
    assert_eq!(counters.daily_calls.iter().map(|d| d.calls).sum::<u64>(), 1, "refused calls do not count");
}

#[tokio::test]
async fn other_paths_answer_2_and_other_methods_405() {
    let sim = TestSimulator::start();
    for path in ["/api/commonInterface", "/", "/api/commonInterfaca/"] {
        let answer = sim.post(path, Some(&sim.headers(0)), "{}").await;
        assert_code(&answer, 2);
        assert_eq!(answer.body["infcode"], "-1");
    }
    let get = sim.admin_raw(Method::GET, INTERFACE_PATH, None).await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    let calls = sim.calls(&CallFilter::default()).await;
    assert_eq!(calls.calls.len(), 3);
    assert_eq!(calls.calls[0].path, "/api/commonInterface");
    assert!(calls.calls.iter().all(|c| c.return_code == Some(2)));
}

#[tokio::test]
async fn answers_have_the_official_shape() {
    let sim = TestSimulator::start();
    let before = Utc::now();
    let answer = sim.fetch_token(0).await;
    assert_code(&answer, 1);
    let body = &answer.body;
    assert_eq!(body["infcode"], "0");
    assert_eq!(body["err_msg"], "");
    let refmsgid = body["inf_refmsgid"].as_str().expect("inf_refmsgid");
    assert!(refmsgid.len() == 30 && refmsgid.starts_with("320000") && refmsgid.bytes().all(|b| b.is_ascii_digit()), "{refmsgid}");
    for time in ["refmsg_time", "respond_time"] {
        let text = body[time].as_str().expect(time);
        assert!(text.len() == 17 && text.bytes().all(|b| b.is_ascii_digit()), "{time}: {text}");
    }
    let data = answer.data();
    assert_eq!(data["returnCode"], "1", "codes are JSON strings like the official sample");
    assert_eq!(data["returnMsg"], "业务执行成功");
    let token = data["accessToken"].as_str().expect("accessToken");
    assert!(token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    let expires = beijing::parse(data["expireTime"].as_str().expect("expireTime")).expect("yyyy-MM-dd HH:mm:ss");
    let validity = (expires - before).num_seconds();
    assert!((1798..=1801).contains(&validity), "expires {validity} s after the call");

    let refused = sim.fetch_token(0).await;
    assert_eq!(refused.body["infcode"], "-1");
    assert_eq!(refused.body["err_msg"], refused.data()["returnMsg"]);
}

#[tokio::test]
async fn token_refused_while_valid_wrong_codes_and_cross_institution_use() {
    let sim = TestSimulator::start();
    let i = sim.institution(0).clone();
    assert_code(&sim.call(0, "ELS7001", json!({"app_code": i.app_code, "auth_code": "wrong"})).await, 4);
    assert_code(&sim.call(0, "ELS7001", json!({"app_code": "wrong", "auth_code": i.auth_code})).await, 4);
    assert_code(&sim.call(0, "ELS7001", json!({"auth_code": i.auth_code})).await, 12);
    assert_code(&sim.call(0, "ELS7001", json!({"app_code": i.app_code, "auth_code": ""})).await, 12);
    assert_code(&sim.call(0, "ELS7001", json!({"app_code": i.app_code, "auth_code": 7})).await, 14);
    let nested = json!({"data": [{"app_code": i.app_code, "auth_code": i.auth_code}]});
    assert_code(&sim.call(0, "ELS7001", nested).await, 12);
    assert_eq!(sim.tokens().await.institutions[0].issued, 0);

    let token = sim.token(0).await;
    assert_code(&sim.fetch_token(0).await, 9);
    let other = sim.token(1).await;
    assert_ne!(token, other);
    assert_code(&sim.upload(1, Infno::Els7002, &token, batch(Infno::Els7002, &["K1"])).await, 5);
    assert_code(&sim.upload(0, Infno::Els7002, "", batch(Infno::Els7002, &["K1"])).await, 5);
    assert_code(&sim.call(0, "ELS7002", json!({"data": batch(Infno::Els7002, &["K1"])})).await, 5);
    assert_code(&sim.upload(0, Infno::Els7002, &token, batch(Infno::Els7002, &["K1"])).await, 1);

    let tokens = sim.tokens().await;
    let first = &tokens.institutions[0];
    assert_eq!((first.issued, first.current_token.as_deref()), (1, Some(token.as_str())));
    assert!(first.expire_time.is_some() && first.expires_at.is_some());
    assert_eq!(tokens.institutions[1].issued, 1);
}

#[tokio::test]
async fn a_token_is_refetched_inside_the_window_and_the_old_one_dies() {
    let sim = TestSimulator::builder().arg("--token-validity-secs", 3).arg("--token-refresh-window-secs", 2).start();
    let old = sim.token(0).await;
    assert_code(&sim.fetch_token(0).await, 9);
    let new = eventually("ELS7001 to issue inside the refresh window", WAIT, async || {
        let answer = sim.fetch_token(0).await;
        match answer.return_code() {
            Some(1) => answer.data()["accessToken"].as_str().map(str::to_owned),
            Some(9) => None,
            other => panic!("unexpected returnCode {other:?}: {}", answer.body),
        }
    })
    .await;
    assert_ne!(old, new);
    assert_code(&sim.upload(0, Infno::Els7002, &old, batch(Infno::Els7002, &["K1"])).await, 5);
    assert_code(&sim.upload(0, Infno::Els7002, &new, batch(Infno::Els7002, &["K1"])).await, 1);
    assert_eq!(sim.tokens().await.institutions[0].issued, 2);
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let sim = TestSimulator::builder().arg("--token-validity-secs", 1).arg("--token-refresh-window-secs", 1).start();
    let token = sim.token(0).await;
    eventually("the token to expire", WAIT, async || {
        let answer = sim.upload(0, Infno::Els7003, &token, batch(Infno::Els7003, &["K1"])).await;
        (answer.return_code() == Some(5)).then_some(())
    })
    .await;
    let renewed = sim.token(0).await;
    assert_code(&sim.upload(0, Infno::Els7003, &renewed, batch(Infno::Els7003, &["K1"])).await, 1);
}

#[tokio::test]
async fn a_bad_row_refuses_the_whole_batch_with_its_code_and_stores_nothing() {
    let sim = TestSimulator::start();
    let token = sim.token(0).await;
    let cases: [(&str, Value, u32); 6] = [
        ("drug_genname", Value::Null, 12),
        ("drug_genname", json!("  "), 12),
        ("er_flag", json!("2"), 13),
        ("purc_pric", json!("12,5"), 14),
        ("stoin_time", json!("2026/11/25"), 14),
        ("mcs_code", json!("C1401"), 14),
    ];
    for (field, value, code) in cases {
        let mut bad = row(Infno::Els7002, "K-bad", "1");
        if value.is_null() {
            bad.remove(field);
        } else {
            bad.insert(field.into(), value.clone());
        }
        let rows = vec![good(Infno::Els7002, "K-1"), Value::Object(bad), good(Infno::Els7002, "K-3")];
        let answer = sim.upload(0, Infno::Els7002, &token, rows).await;
        assert_code(&answer, code);
        let message = answer.data()["returnMsg"].as_str().unwrap_or_default();
        assert!(!message.contains("K-") && !message.contains(field), "{field}={value}: the message names the row: {message}");
    }
    assert_code(&sim.upload(0, Infno::Els7002, &token, vec![json!("not an object")]).await, 14);
    assert_eq!(sim.records(&RecordFilter::default()).await.total, 0);
}

#[tokio::test]
async fn every_upload_transaction_stores_valid_rows() {
    let sim = TestSimulator::start();
    let token = sim.token(0).await;
    for infno in Infno::UPLOADS {
        assert_code(&sim.upload(0, infno, &token, batch(infno, &["K1", "K2"])).await, 1);
    }
    for infno in Infno::UPLOADS {
        let page = sim.records(&records_of(infno)).await;
        assert_eq!(page.total, 2, "{infno}");
        assert_eq!(page.records[0].row, good(infno, "K1"), "{infno}: stored as received");
    }
    // A drug row is not a consumable row: its consumable fields are missing.
    assert_code(&sim.upload(0, Infno::Els7004, &token, batch(Infno::Els7002, &["K9"])).await, 12);
}

#[tokio::test]
async fn row_count_rules_28_above_the_limit_12_when_empty() {
    let sim = TestSimulator::start();
    let token = sim.token(0).await;
    let keys: Vec<String> = (0..101).map(|n| format!("K{n:03}")).collect();
    let rows: Vec<Value> = keys.iter().map(|k| good(Infno::Els7005, k)).collect();
    assert_code(&sim.upload(0, Infno::Els7005, &token, rows.clone()).await, 28);
    assert_code(&sim.upload(0, Infno::Els7005, &token, rows[..100].to_vec()).await, 1);
    assert_code(&sim.upload(0, Infno::Els7005, &token, Vec::new()).await, 12);
    assert_code(&sim.call(0, "ELS7005", json!({"access_token": token})).await, 12);
    assert_code(&sim.call(0, "ELS7005", json!({"access_token": token, "data": {"k": 1}})).await, 14);
    assert_eq!(sim.records(&records_of(Infno::Els7005)).await.total, 100);

    let small = TestSimulator::builder().institutions(1).arg("--max-rows", 2).start();
    let token = small.token(0).await;
    assert_code(&small.upload(0, Infno::Els7002, &token, batch(Infno::Els7002, &["a", "b", "c"])).await, 28);
}

#[tokio::test]
async fn envelope_rules_have_their_codes() {
    let sim = TestSimulator::start();
    let i = sim.institution(0).clone();
    let input = json!({"app_code": i.app_code, "auth_code": i.auth_code});
    let send = async |envelope: Value| sim.post(INTERFACE_PATH, Some(&sim.headers(0)), envelope.to_string()).await;

    let malformed = sim.post(INTERFACE_PATH, Some(&sim.headers(0)), "{\"infno\": ").await;
    assert_code(&malformed, 14);
    let cases: [(&str, Value, u32); 9] = [
        ("dev_no", Value::Null, 14),
        ("sign_no", json!(null), 14),
        ("msgid", json!("H3212820033820261125"), 14),
        ("msgid", json!("H32010600021202611251200000001"), 14),
        ("fixmedins_code", json!(sim.institution(1).code), 3),
        ("infno", json!("ELS7009"), 30),
        ("cainfo", json!(""), 12),
        ("opter_type", json!("9"), 13),
        ("inf_time", json!("2026-11-25T12:00:00"), 14),
    ];
    for (field, value, code) in cases {
        let mut envelope = sim.envelope(0, "ELS7001", input.clone()).await;
        if field == "dev_no" {
            envelope.as_object_mut().map(|o| o.remove("dev_no"));
        } else {
            envelope[field] = value.clone();
        }
        assert_code(&send(envelope).await, code);
    }
    assert_eq!(sim.tokens().await.institutions[0].issued, 0, "no refused envelope got a token");
    assert_code(&send(sim.envelope(0, "ELS7001", input).await).await, 1);
}

#[tokio::test]
async fn a_key_uploaded_twice_keeps_the_second_row() {
    let sim = TestSimulator::start();
    let token = sim.token(0).await;
    let other = sim.token(1).await;
    assert_code(&sim.upload(0, Infno::Els7002, &token, vec![Value::Object(row(Infno::Els7002, "K1", "10"))]).await, 1);
    assert_code(&sim.upload(0, Infno::Els7002, &token, vec![Value::Object(row(Infno::Els7002, "K1", "8"))]).await, 1);
    assert_code(&sim.upload(0, Infno::Els7003, &token, batch(Infno::Els7003, &["K1"])).await, 1);
    assert_code(&sim.upload(1, Infno::Els7002, &other, batch(Infno::Els7002, &["K1"])).await, 1);

    let code = sim.institution(0).code.clone();
    let filter = RecordFilter { institution: Some(code.clone()), infno: Some(Infno::Els7002), key: Some("K1".into()), limit: None };
    let page = sim.records(&filter).await;
    assert_eq!(page.total, 1);
    let record = &page.records[0];
    assert_eq!((record.updates, &record.row["stoin_cnt"]), (2, &json!("8")));
    let uploads = sim.calls(&CallFilter { institution: Some(code), infno: Some("ELS7002".into()), ..CallFilter::default() }).await;
    assert_eq!(Some(&record.msgid), uploads.calls.last().and_then(|c| c.msgid.as_ref()));
    assert!(record.first_stored <= record.updated);
    assert_eq!(sim.records(&RecordFilter::default()).await.total, 3, "infno and institution are part of the key");
    let counters = sim.counters().await;
    assert_eq!((counters.records_stored, counters.records_created, counters.records_updated), (3, 3, 1));
}

#[tokio::test]
async fn the_daily_limit_answers_11_per_institution() {
    let sim = TestSimulator::builder().arg("--daily-call-limit", 3).start();
    let i = sim.institution(0).clone();
    let now = Utc::now().timestamp_millis();
    let wrong = CsbHeaders::new(&i.access_key, "wrong", now);
    let body = sim.envelope(0, "ELS7001", json!({})).await.to_string();
    assert_eq!(sim.post(INTERFACE_PATH, Some(&wrong), body).await.status, StatusCode::FORBIDDEN);

    let token = sim.token(0).await;
    assert_code(&sim.upload(0, Infno::Els7002, &token, batch(Infno::Els7002, &["K1"])).await, 1);
    assert_code(&sim.upload(0, Infno::Els7002, &token, vec![json!({})]).await, 12);
    assert_code(&sim.upload(0, Infno::Els7002, &token, batch(Infno::Els7002, &["K2"])).await, 11);
    assert_code(&sim.fetch_token(0).await, 11);
    assert_code(&sim.fetch_token(1).await, 1);
    assert_eq!(sim.records(&RecordFilter::default()).await.total, 1);
    let counters = sim.counters().await;
    let today = beijing::day(Utc::now());
    let daily: Vec<_> = counters.daily_calls.iter().map(|d| (d.institution.as_str(), d.calls, d.day)).collect();
    assert_eq!(daily, [("H32010600021", 1, today), ("H32128200338", 5, today)]);
}

#[tokio::test]
async fn latency_delays_every_call() {
    let sim = TestSimulator::start();
    let view = sim.set_latency(300, 300).await;
    assert_eq!(view.latency.map(|l| (l.min_ms, l.max_ms)), Some((300, 300)));
    let started = Instant::now();
    assert_code(&sim.fetch_token(0).await, 1);
    assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    assert_eq!(sim.calls(&CallFilter::default()).await.calls[0].latency_ms, 300);
    assert!(sim.clear_fault("latency").await.latency.is_none());
    sim.set_latency(0, 20).await;
    assert_code(&sim.fetch_token(1).await, 1);
    assert!(sim.calls(&CallFilter::default()).await.calls[1].latency_ms <= 20);
}

#[tokio::test]
async fn latency_grows_with_the_calls_in_progress_and_the_most_at_once_are_counted() {
    let sim = TestSimulator::start();
    // 2 s for the first call, 500 ms more for each call already in progress when one
    // arrives: three calls sent together all arrive within the first one's 2 s.
    let view = sim.set_latency_json(&json!({"min_ms": 2000, "max_ms": 2000, "per_concurrent_ms": 500})).await;
    let latency = view.latency.expect("latency set");
    assert_eq!((latency.per_concurrent_ms, latency.capacity), (500, 1));
    let answers = futures_util::future::join_all([sim.fetch_token(0), sim.fetch_token(0), sim.fetch_token(1)]).await;
    assert!(answers.iter().all(|a| a.status == StatusCode::OK), "{answers:?}");
    let calls = sim.calls(&CallFilter::default()).await.calls;
    let mut seen: Vec<(u64, u64)> = calls.iter().map(|c| (c.concurrent, c.latency_ms)).collect();
    seen.sort_unstable();
    assert_eq!(seen, [(1, 2000), (2, 2500), (3, 3000)]);
    let counters = sim.counters().await;
    assert_eq!(counters.max_concurrent_calls, 3);
    let by: Vec<(&str, u64)> = counters.max_concurrent_calls_by_institution.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(by, [("H32010600021", 1), ("H32128200338", 2)]);

    // A capacity: calls up to it are served at the base latency.
    sim.reset().await;
    assert_eq!(sim.counters().await.max_concurrent_calls, 0, "a reset forgets the peaks");
    sim.set_latency_json(&json!({"min_ms": 2000, "max_ms": 2000, "per_concurrent_ms": 500, "capacity": 2})).await;
    futures_util::future::join_all([sim.fetch_token(0), sim.fetch_token(0), sim.fetch_token(1)]).await;
    let mut latencies: Vec<u64> = sim.calls(&CallFilter::default()).await.calls.iter().map(|c| c.latency_ms).collect();
    latencies.sort_unstable();
    assert_eq!(latencies, [2000, 2000, 2500]);
}

#[tokio::test]
async fn error_rates_answer_a_return_code_or_an_http_status() {
    let sim = TestSimulator::start();
    sim.set_errors(ErrorRate { rate: 1.0, answer: ErrorAnswer::ReturnCode(6) }).await;
    assert_code(&sim.fetch_token(0).await, 6);
    sim.set_errors(ErrorRate { rate: 1.0, answer: ErrorAnswer::HttpStatus(503) }).await;
    assert_eq!(sim.fetch_token(0).await.status, StatusCode::SERVICE_UNAVAILABLE);
    sim.set_errors(ErrorRate { rate: 0.0, answer: ErrorAnswer::HttpStatus(500) }).await;
    assert_code(&sim.fetch_token(0).await, 1);
    assert!(sim.clear_fault("errors").await.errors.is_none());
    let counters = sim.counters().await;
    assert_eq!(counters.by_fault.get(&FaultKind::Error), Some(&2));
    assert_eq!(counters.tokens_issued, 1, "errored calls were not carried out");
    assert_eq!(counters.daily_calls.iter().map(|d| d.calls).sum::<u64>(), 1, "nor counted");

    let half = sim.set_errors(ErrorRate { rate: 0.5, answer: ErrorAnswer::ReturnCode(7) }).await;
    assert_eq!(half.errors.map(|e| e.rate), Some(0.5));
    let mut sevens = 0;
    for _ in 0..40 {
        if sim.fetch_token(1).await.return_code() == Some(7) {
            sevens += 1;
        }
    }
    assert!((5..=35).contains(&sevens), "{sevens} of 40 calls failed at rate 0.5");
}

#[tokio::test]
async fn an_outage_answers_503_until_it_ends() {
    let sim = TestSimulator::start();
    let view = sim.start_outage(60).await;
    assert!(view.outage_until.is_some_and(|until| until > Utc::now()));
    let answer = sim.fetch_token(0).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{}", answer.body);
    assert!(sim.clear_fault("outage").await.outage_until.is_none());
    assert_code(&sim.fetch_token(0).await, 1);

    sim.start_outage(1).await;
    assert_eq!(sim.fetch_token(1).await.status, StatusCode::SERVICE_UNAVAILABLE);
    eventually("the one-second outage to end by itself", WAIT, async || (sim.fetch_token(1).await.status == StatusCode::OK).then_some(()))
        .await;
    assert!(sim.faults().await.outage_until.is_none());
}

#[tokio::test]
async fn timeouts_hang_or_close_without_an_answer() {
    let sim = TestSimulator::start();
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(500)).build().expect("client");
    let send = async |client: &reqwest::Client| {
        let body = sim.envelope(0, "ELS7001", json!({})).await.to_string();
        let mut request = client.post(sim.interface_url()).body(body);
        for (name, value) in sim.headers(0).pairs() {
            request = request.header(name, value);
        }
        request.send().await
    };

    sim.set_timeouts(Timeouts { next: 1, rate: 0.0, mode: TimeoutMode::Hang, hang_ms: 60_000, processed: false }).await;
    let hung = send(&impatient).await.expect_err("a hanging call times out");
    assert!(hung.is_timeout(), "{hung:?}");
    assert_code(&sim.call(0, "ELS7001", json!({})).await, 12);

    let view = sim.set_timeouts(Timeouts { next: 2, rate: 0.0, mode: TimeoutMode::Close, hang_ms: 1, processed: false }).await;
    assert_eq!(view.timeouts.map(|t| t.next), Some(2));
    for _ in 0..2 {
        let closed = send(&impatient).await.expect_err("a closed call has no answer");
        assert!(!closed.is_timeout(), "closed, not timed out: {closed:?}");
    }
    assert_eq!(sim.faults().await.timeouts.map(|t| t.next), Some(0));
    assert_code(&sim.call(0, "ELS7001", json!({})).await, 12);

    sim.set_timeouts(Timeouts { next: 0, rate: 1.0, mode: TimeoutMode::Close, hang_ms: 1, processed: false }).await;
    assert!(send(&impatient).await.is_err());
    assert!(sim.clear_fault("timeouts").await.timeouts.is_none());

    let faults: Vec<_> = sim.calls(&CallFilter::default()).await.calls.iter().map(|c| (c.fault, c.http_status)).collect();
    assert_eq!(
        faults,
        [
            (Some(FaultKind::Hang), Some(504)),
            (None, Some(200)),
            (Some(FaultKind::Close), None),
            (Some(FaultKind::Close), None),
            (None, Some(200)),
            (Some(FaultKind::Close), None),
        ]
    );
}

#[tokio::test]
async fn a_processed_call_whose_answer_is_lost_is_stored_and_can_be_resent() {
    let sim = TestSimulator::start();
    let token = sim.token(0).await;
    sim.set_timeouts(Timeouts { next: 1, rate: 0.0, mode: TimeoutMode::Close, hang_ms: 1, processed: true }).await;
    let body = sim.envelope(0, "ELS7002", json!({"access_token": token, "data": batch(Infno::Els7002, &["K1"])})).await;
    let http = reqwest::Client::new();
    let mut request = http.post(sim.interface_url()).body(body.to_string());
    for (name, value) in sim.headers(0).pairs() {
        request = request.header(name, value);
    }
    assert!(request.send().await.is_err(), "the answer is lost");
    assert_eq!(sim.records(&RecordFilter::default()).await.records[0].updates, 1, "yet the rows are stored");
    assert_code(&sim.upload(0, Infno::Els7002, &token, batch(Infno::Els7002, &["K1"])).await, 1);
    assert_eq!(sim.records(&RecordFilter::default()).await.records[0].updates, 2);
    let lost = &sim.calls(&CallFilter { infno: Some("ELS7002".into()), ..CallFilter::default() }).await.calls[0];
    assert_eq!((lost.fault, lost.return_code, lost.http_status), (Some(FaultKind::Close), Some(1), None));
}

#[tokio::test]
async fn refused_keys_refuse_their_whole_batch() {
    let sim = TestSimulator::start();
    let token = sim.token(0).await;
    let view = sim.refuse_keys(&["K-refused"], 16).await;
    assert_eq!(view.refusals.get("K-refused"), Some(&16));
    let answer = sim.upload(0, Infno::Els7006, &token, batch(Infno::Els7006, &["K-ok", "K-refused"])).await;
    assert_code(&answer, 16);
    assert_eq!(sim.records(&RecordFilter::default()).await.total, 0);
    assert_code(&sim.upload(0, Infno::Els7006, &token, batch(Infno::Els7006, &["K-ok"])).await, 1);
    assert!(sim.clear_fault("refusals").await.refusals.is_empty());
    assert_code(&sim.upload(0, Infno::Els7006, &token, batch(Infno::Els7006, &["K-refused"])).await, 1);
    let calls = sim.calls(&CallFilter { infno: Some("ELS7006".into()), ..CallFilter::default() }).await;
    assert_eq!(calls.calls[0].fault, Some(FaultKind::Refusal));
    assert_eq!(calls.calls[0].keys, ["K-ok", "K-refused"]);
}

#[tokio::test]
async fn the_admin_api_refuses_bad_settings_and_unknown_paths() {
    let sim = TestSimulator::start();
    let bad = [
        ("/admin/faults/errors", r#"{"rate": 2.0, "answer": {"return_code": 6}}"#),
        ("/admin/faults/errors", r#"{"rate": 0.5, "answer": {"http_status": 302}}"#),
        ("/admin/faults/latency", r#"{"min_ms": 10, "max_ms": 1}"#),
        ("/admin/faults/latency", r#"{"min_ms": 10}"#),
        ("/admin/faults/refusals", r#"{"keys": [], "return_code": 8}"#),
        ("/admin/faults/timeouts", r#"{"next": 1, "mode": "explode"}"#),
        ("/admin/faults/outage", "not json"),
    ];
    for (path, body) in bad {
        let answer = sim.admin_raw(Method::PUT, path, Some(body)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path} {body}: {}", answer.body);
        assert!(answer.body["error"].is_string(), "{}", answer.body);
    }
    assert_eq!(sim.faults().await, Default::default(), "nothing was set");
    let missing = sim.admin_raw(Method::GET, "/admin/nothing", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body["error"], "no admin endpoint /admin/nothing");
    let bad_query = sim.admin_raw(Method::GET, "/admin/records?infno=ELS9999", None).await;
    assert_eq!(bad_query.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_call_log_shows_each_call_and_reset_forgets_everything() {
    let sim = TestSimulator::start();
    let token = sim.token(0).await;
    let envelope = sim.envelope(0, "ELS7004", json!({"access_token": token, "data": batch(Infno::Els7004, &["A", "B", "C"])})).await;
    let answer = sim.post(INTERFACE_PATH, Some(&sim.headers(0)), envelope.to_string()).await;
    assert_code(&answer, 1);
    assert_code(&sim.call(0, "ELS9999", json!({})).await, 30);

    let page = sim.calls(&CallFilter::default()).await;
    assert_eq!((page.last_seq, page.dropped, page.calls.len()), (3, 0, 3));
    let upload = &page.calls[1];
    assert_eq!(upload.seq, 2);
    assert_eq!(upload.institution.as_deref(), Some("H32128200338"));
    assert_eq!(upload.infno.as_deref(), Some("ELS7004"));
    assert_eq!(upload.msgid.as_ref(), envelope["msgid"].as_str().map(str::to_owned).as_ref());
    assert_eq!((upload.rows, upload.keys.clone()), (3, vec!["A".to_owned(), "B".into(), "C".into()]));
    assert_eq!((upload.return_code, upload.http_status, upload.fault), (Some(1), Some(200), None));
    assert_eq!(page.calls[2].infno.as_deref(), Some("ELS9999"));
    let later = sim.calls(&CallFilter { since: Some(2), ..CallFilter::default() }).await;
    assert_eq!(later.calls.iter().map(|c| c.seq).collect::<Vec<_>>(), [3]);
    let limited = sim.calls(&CallFilter { limit: Some(1), ..CallFilter::default() }).await;
    assert_eq!(limited.calls.len(), 1);
    assert!(sim.calls(&CallFilter { institution: Some("H32010600021".into()), ..CallFilter::default() }).await.calls.is_empty());

    let counters = sim.counters().await;
    assert_eq!((counters.calls, counters.rows_received, counters.rows_accepted), (3, 3, 3));
    assert_eq!(counters.by_return_code.get(&30), Some(&1));
    assert_eq!(counters.by_http_status.get(&200), Some(&3));
    let limited = sim.records(&RecordFilter { limit: Some(2), ..RecordFilter::default() }).await;
    assert_eq!((limited.total, limited.records.len()), (3, 2));

    sim.set_latency(1, 2).await;
    sim.reset().await;
    assert_eq!(sim.records(&RecordFilter::default()).await.total, 0);
    assert_eq!(sim.calls(&CallFilter::default()).await.last_seq, 0);
    assert_eq!(sim.counters().await, Default::default());
    assert_eq!(sim.faults().await, Default::default());
    assert!(sim.tokens().await.institutions.iter().all(|t| t.issued == 0 && t.current_token.is_none()));
    assert_code(&sim.upload(0, Infno::Els7004, &token, batch(Infno::Els7004, &["A"])).await, 5);
    sim.token(0).await;
}

#[tokio::test]
async fn the_call_log_is_bounded() {
    let sim = TestSimulator::builder().arg("--call-log-capacity", 3).start();
    for _ in 0..5 {
        assert_code(&sim.call(0, "ELS7001", json!({})).await, 12);
    }
    let page = sim.calls(&CallFilter::default()).await;
    assert_eq!((page.last_seq, page.dropped), (5, 2));
    assert_eq!(page.calls.iter().map(|c| c.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(sim.counters().await.calls, 5);
}
