//! The platform simulator as a child process, for integration tests.
//!
//! [`TestSimulator::start`] (or [`TestSimulator::builder`] for options) writes a temporary
//! configuration with one or two institutions ([`test_institutions`]), spawns the real
//! binary `els-bridge simulate --listen 127.0.0.1:0 --config FILE`, reads the bound address
//! from the `listening on ADDR` line it prints first, and kills it when dropped. Its log
//! (standard error) goes to a file, shown by [`TestSimulator::logs`] and in the panic message
//! when it fails to start.
//!
//! Once started, [`TestSimulator::client_config_path`] is a configuration for the same
//! institutions whose `platform.url` points at the simulator, ready for `els-bridge send` or
//! a worker; [`TestSimulator::write_client_config`] adds sections of a test's own.
//!
//! The typed helpers speak the interface ([`TestSimulator::call`], [`TestSimulator::token`],
//! [`TestSimulator::upload`]) and the admin and inspection API (faults, records, calls,
//! tokens, counters) with the JSON types of `els_bridge::simulator::api`. To wait for
//! something, poll with [`eventually`] rather than sleeping.

#![allow(dead_code, reason = "each test binary uses a different part of the shared helpers")]

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chrono::Utc;
use els_bridge::config::Config;
use els_bridge::platform::sign::CsbHeaders;
use els_bridge::platform::{Envelope, MsgIds};
use els_bridge::simulator::api::{
    CallFilter, CallsPage, Counters, ErrorRate, FaultsView, Latency, Outage, RecordFilter, RecordsPage, Refusals, SettingsView, Timeouts,
    TokensView,
};
use els_bridge::spec::Infno;
use reqwest::{StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tempfile::TempDir;

/// The interface path of the platform.
pub const INTERFACE_PATH: &str = "/api/commonInterfaca";
/// How long the simulator may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Time limit of the harness's own HTTP calls.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// An institution of a test configuration, with its credentials in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestInstitution {
    /// `fixmedins_code`, 12 characters.
    pub code: String,
    /// `fixmedins_name`.
    pub name: String,
    /// ELS7001 `app_code`.
    pub app_code: String,
    /// ELS7001 `auth_code`.
    pub auth_code: String,
    /// CSB access key.
    pub access_key: String,
    /// CSB secret key.
    pub secret_key: String,
}

/// One or two test institutions (always the same ones).
pub fn test_institutions(count: usize) -> Vec<TestInstitution> {
    assert!((1..=2).contains(&count), "the harness knows two test institutions, asked for {count}");
    [("H32128200338", "靖江市人民医院"), ("H32010600021", "南京市第一医院")]
        .into_iter()
        .take(count)
        .enumerate()
        .map(|(i, (code, name))| TestInstitution {
            code: code.into(),
            name: name.into(),
            app_code: format!("app-{code}"),
            auth_code: format!("auth-{i}-secret"),
            access_key: format!("ak-{code}"),
            secret_key: format!("sk-{i}-c2VjcmV0LWtleQ=="),
        })
        .collect()
}

/// A complete configuration for `institutions` with `platform.url`, followed by `extra`
/// TOML: sections of a test's own (e.g. `[batch]`). `extra` comes right after the `url`
/// line, so bare keys at its start belong to `[platform]` (e.g. `timeout_ms = 1500`).
pub fn config_toml(institutions: &[TestInstitution], platform_url: &str, extra: &str) -> String {
    let mut text = format!("[platform]\nurl = {platform_url:?}\n\n{extra}\n");
    for i in institutions {
        text.push_str(&format!(
            r#"
[[institutions]]
fixmedins_code = {code:?}
fixmedins_name = {name:?}
app_code = {app:?}
auth_code = {auth:?}
csb_access_key = {ak:?}
csb_secret_key = {sk:?}
mdtrtarea_admvs = "321282"
insuplc_admdvs = "321282"
recer_sys_code = "ELS"
cainfo = "test-ca-info"
signtype = "SM3"
infver = "V1.0"
opter_type = "3"
opter = "els-bridge"
opter_name = "els-bridge"
fixmedins_soft_fcty = "els-bridge tests"
"#,
            code = i.code,
            name = i.name,
            app = i.app_code,
            auth = i.auth_code,
            ak = i.access_key,
            sk = i.secret_key,
        ));
    }
    text
}

/// Writes [`config_toml`] to `dir/file_name` and returns its path.
pub fn write_config(dir: &Path, file_name: &str, institutions: &[TestInstitution], platform_url: &str, extra: &str) -> PathBuf {
    let path = dir.join(file_name);
    std::fs::write(&path, config_toml(institutions, platform_url, extra)).expect("write the test configuration");
    path
}

/// Polls `probe` every 50 ms until it returns `Some`, and panics naming `what` after
/// `timeout`.
pub async fn eventually<T>(what: &str, timeout: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let failure = |()| format!("timed out after {timeout:?} waiting for {what}");
    until(timeout, Duration::from_millis(50), async || probe().await.ok_or(()), failure).await
}

/// Polls `probe` every `every` until it returns `Ok`; after `timeout` it panics with what
/// `failure` makes of the last `Err`, so that a failure can say what was still missing.
pub async fn until<T, S>(
    timeout: Duration,
    every: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, S>,
    failure: impl FnOnce(S) -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => panic!("{}", failure(last)),
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// An HTTP answer of the simulator.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body as JSON (`Value::Null` when it is not JSON).
    pub body: Value,
}

impl Answer {
    /// `output.data.returnCode`, read as a JSON string or number.
    pub fn return_code(&self) -> Option<u32> {
        match &self.body["output"]["data"]["returnCode"] {
            Value::String(s) => s.parse().ok(),
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            _ => None,
        }
    }

    /// `output.data`.
    pub fn data(&self) -> &Value {
        &self.body["output"]["data"]
    }
}

/// Options of a simulator to start.
#[derive(Debug, Clone)]
pub struct SimulatorBuilder {
    institutions: usize,
    args: Vec<String>,
}

impl SimulatorBuilder {
    /// Serve one or two institutions (default two).
    pub fn institutions(mut self, count: usize) -> Self {
        self.institutions = count;
        self
    }

    /// Adds a command-line option, e.g. `.arg("--token-validity-secs", 3)`.
    pub fn arg(mut self, flag: &str, value: impl ToString) -> Self {
        self.args.push(flag.to_owned());
        self.args.push(value.to_string());
        self
    }

    /// Spawns the simulator and waits for its address.
    pub fn start(self) -> TestSimulator {
        TestSimulator::spawn(self)
    }
}

/// A running simulator process, killed when dropped.
pub struct TestSimulator {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
    institutions: Vec<TestInstitution>,
    config: Config,
    client_config: PathBuf,
    http: reqwest::Client,
    msgids: MsgIds,
}

impl Drop for TestSimulator {
    fn drop(&mut self) {
        // Already gone after `terminate`; nothing to report either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestSimulator {
    /// A simulator with the default options and two institutions.
    pub fn start() -> TestSimulator {
        Self::builder().start()
    }

    /// Options for a simulator to start.
    pub fn builder() -> SimulatorBuilder {
        SimulatorBuilder { institutions: 2, args: Vec::new() }
    }

    fn spawn(options: SimulatorBuilder) -> TestSimulator {
        let dir = tempfile::tempdir().expect("temporary directory");
        let institutions = test_institutions(options.institutions);
        let config_path = write_config(dir.path(), "simulator.toml", &institutions, "http://127.0.0.1:1/unused", "");
        let log_path = dir.path().join("simulator.log");
        let log = File::create(&log_path).expect("create the simulator's log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_els-bridge"));
        command
            .args(["simulate", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config_path)
            .args(&options.args)
            .env_remove("ELS_BRIDGE_CONFIG")
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("ELS_BRIDGE__")) {
            command.env_remove(name);
        }
        let mut child = command.spawn().expect("spawn els-bridge simulate");
        let stdout = child.stdout.take().expect("piped standard output");
        let (sender, first_line) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let read = reader.read_line(&mut line).map(|_| line);
            let _ = sender.send(read);
            // Keep draining, so the simulator never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = match first_line.recv_timeout(START_TIMEOUT) {
            Ok(Ok(line)) if !line.is_empty() => line,
            outcome => {
                let _ = child.kill();
                let status = child.wait();
                panic!("the simulator did not print its address ({outcome:?}, {status:?}); its log:\n{}", read_log(&log_path));
            }
        };
        let addr: SocketAddr = line
            .trim_end()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the simulator: {line:?}"));
        let url = format!("http://{addr}{INTERFACE_PATH}");
        let client_config = write_config(dir.path(), "client.toml", &institutions, &url, "");
        let text = std::fs::read_to_string(&client_config).expect("read the client configuration");
        let config = Config::from_toml(&text, Vec::new()).expect("the test configuration is valid");
        let http = reqwest::Client::builder().timeout(HTTP_TIMEOUT).build().expect("HTTP client");
        TestSimulator { child, addr, dir, institutions, config, client_config, http, msgids: MsgIds::new(0) }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://ADDR/api/commonInterfaca`.
    pub fn interface_url(&self) -> String {
        format!("http://{}{INTERFACE_PATH}", self.addr)
    }

    /// The test institution at `index` (0 or 1).
    pub fn institution(&self, index: usize) -> &TestInstitution {
        &self.institutions[index]
    }

    /// The client configuration, loaded.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A configuration file whose `platform.url` is this simulator.
    pub fn client_config_path(&self) -> &Path {
        &self.client_config
    }

    /// Writes another client configuration with `extra` TOML sections and returns its path.
    pub fn write_client_config(&self, file_name: &str, extra: &str) -> PathBuf {
        write_config(self.dir.path(), file_name, &self.institutions, &self.interface_url(), extra)
    }

    /// The simulator's log so far.
    pub fn logs(&self) -> String {
        read_log(&self.dir.path().join("simulator.log"))
    }

    /// Sends SIGTERM and waits (at most 10 s) for the process to end.
    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the simulator") {
                return status;
            }
            assert!(Instant::now() < deadline, "the simulator did not stop on SIGTERM; its log:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // --- the interface -------------------------------------------------------------------

    /// CSB headers of institution `index`, signed now.
    pub fn headers(&self, index: usize) -> CsbHeaders {
        let i = &self.institutions[index];
        CsbHeaders::new(&i.access_key, &i.secret_key, Utc::now().timestamp_millis())
    }

    /// The envelope of a call of institution `index`, with any `infno` text.
    pub async fn envelope(&self, index: usize, infno: &str, input: Value) -> Value {
        let institution = &self.config.institutions[index];
        let msgid = self.msgids.next(&institution.fixmedins_code).await;
        let envelope = Envelope::new(institution, Infno::Els7002, msgid, Utc::now(), input);
        let mut envelope = serde_json::to_value(envelope).expect("an envelope is JSON");
        envelope["infno"] = json!(infno);
        envelope
    }

    /// POSTs `body` to `path` with `headers` (none when `None`).
    pub async fn post(&self, path: &str, headers: Option<&CsbHeaders>, body: impl Into<reqwest::Body>) -> Answer {
        let mut request = self.http.post(format!("{}{path}", self.base_url())).header("Content-Type", "application/json").body(body);
        for (name, value) in headers.map(CsbHeaders::pairs).into_iter().flatten() {
            request = request.header(name, value);
        }
        let response = request.send().await.expect("the simulator answers");
        answer(response).await
    }

    /// A signed call of institution `index` to the interface.
    pub async fn call(&self, index: usize, infno: &str, input: Value) -> Answer {
        let body = self.envelope(index, infno, input).await;
        self.post(INTERFACE_PATH, Some(&self.headers(index)), body.to_string()).await
    }

    /// ELS7001 with institution `index`'s codes.
    pub async fn fetch_token(&self, index: usize) -> Answer {
        let i = &self.institutions[index];
        self.call(index, "ELS7001", json!({"app_code": i.app_code, "auth_code": i.auth_code})).await
    }

    /// A new token of institution `index`; panics unless ELS7001 answers 1.
    pub async fn token(&self, index: usize) -> String {
        let answer = self.fetch_token(index).await;
        assert_eq!(answer.return_code(), Some(1), "ELS7001 failed: {}", answer.body);
        answer.data()["accessToken"].as_str().expect("accessToken").to_owned()
    }

    /// An upload of `rows` by institution `index` with `token`.
    pub async fn upload(&self, index: usize, infno: Infno, token: &str, rows: Vec<Value>) -> Answer {
        self.call(index, infno.as_str(), json!({"access_token": token, "data": rows})).await
    }

    // --- the admin and inspection API ----------------------------------------------------

    /// `PUT /admin/faults/latency`.
    pub async fn set_latency(&self, min_ms: u64, max_ms: u64) -> FaultsView {
        self.admin_put("/admin/faults/latency", &Latency::between(min_ms, max_ms)).await
    }

    /// `PUT /admin/faults/latency` with a body of any shape, e.g. with `per_concurrent_ms`.
    pub async fn set_latency_json(&self, body: &Value) -> FaultsView {
        self.admin_put("/admin/faults/latency", body).await
    }

    /// `PUT /admin/faults/errors`.
    pub async fn set_errors(&self, errors: ErrorRate) -> FaultsView {
        self.admin_put("/admin/faults/errors", &errors).await
    }

    /// `PUT /admin/faults/outage`.
    pub async fn start_outage(&self, secs: u64) -> FaultsView {
        self.admin_put("/admin/faults/outage", &Outage { secs }).await
    }

    /// `PUT /admin/faults/timeouts`.
    pub async fn set_timeouts(&self, timeouts: Timeouts) -> FaultsView {
        self.admin_put("/admin/faults/timeouts", &timeouts).await
    }

    /// `PUT /admin/faults/refusals`.
    pub async fn refuse_keys(&self, keys: &[&str], return_code: u32) -> FaultsView {
        let refusals = Refusals { keys: keys.iter().map(|k| k.to_string()).collect(), return_code };
        self.admin_put("/admin/faults/refusals", &refusals).await
    }

    /// `DELETE /admin/faults/<which>` (`latency`, `errors`, `outage`, `timeouts`,
    /// `refusals`), or every fault with `""`.
    pub async fn clear_fault(&self, which: &str) -> FaultsView {
        let path = if which.is_empty() { "/admin/faults".to_owned() } else { format!("/admin/faults/{which}") };
        let response = self.http.delete(format!("{}{path}", self.base_url())).send().await.expect("admin DELETE");
        typed(response).await
    }

    /// `GET /admin/faults`.
    pub async fn faults(&self) -> FaultsView {
        self.admin_get("/admin/faults", &[]).await
    }

    /// `POST /admin/reset`.
    pub async fn reset(&self) {
        let response = self.http.post(format!("{}/admin/reset", self.base_url())).send().await.expect("admin reset");
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }

    /// `GET /admin/records`.
    pub async fn records(&self, filter: &RecordFilter) -> RecordsPage {
        let query = [
            ("institution", filter.institution.clone()),
            ("infno", filter.infno.map(|n| n.as_str().to_owned())),
            ("key", filter.key.clone()),
            ("limit", filter.limit.map(|n| n.to_string())),
        ];
        self.admin_get("/admin/records", &query).await
    }

    /// `GET /admin/calls`.
    pub async fn calls(&self, filter: &CallFilter) -> CallsPage {
        let query = [
            ("institution", filter.institution.clone()),
            ("infno", filter.infno.clone()),
            ("since", filter.since.map(|n| n.to_string())),
            ("limit", filter.limit.map(|n| n.to_string())),
        ];
        self.admin_get("/admin/calls", &query).await
    }

    /// `GET /admin/tokens`.
    pub async fn tokens(&self) -> TokensView {
        self.admin_get("/admin/tokens", &[]).await
    }

    /// `GET /admin/counters`.
    pub async fn counters(&self) -> Counters {
        self.admin_get("/admin/counters", &[]).await
    }

    /// `GET /admin/settings`.
    pub async fn settings(&self) -> SettingsView {
        self.admin_get("/admin/settings", &[]).await
    }

    /// A raw admin request, for the error cases: (status, JSON body or null).
    pub async fn admin_raw(&self, method: reqwest::Method, path: &str, body: Option<&str>) -> Answer {
        let mut request = self.http.request(method, format!("{}{path}", self.base_url()));
        if let Some(body) = body {
            request = request.header("Content-Type", "application/json").body(body.to_owned());
        }
        answer(request.send().await.expect("admin request")).await
    }

    async fn admin_get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, Option<String>)]) -> T {
        let mut url = Url::parse(&format!("{}{path}", self.base_url())).expect("admin URL");
        for (name, value) in query {
            if let Some(value) = value {
                url.query_pairs_mut().append_pair(name, value);
            }
        }
        typed(self.http.get(url).send().await.expect("admin GET")).await
    }

    async fn admin_put<B: Serialize>(&self, path: &str, body: &B) -> FaultsView {
        let body = serde_json::to_string(body).expect("admin body");
        let response = self
            .http
            .put(format!("{}{path}", self.base_url()))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .expect("admin PUT");
        typed(response).await
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let bytes = response.bytes().await.expect("read the answer");
    Answer { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) }
}

async fn typed<T: DeserializeOwned>(response: reqwest::Response) -> T {
    let status = response.status();
    let text = response.text().await.expect("read the admin answer");
    assert!(status.is_success(), "admin API answered {status}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("unexpected admin answer ({e}): {text}"))
}

fn read_log(path: &Path) -> String {
    let mut text = String::new();
    let _ = File::open(path).and_then(|mut f| f.read_to_string(&mut text));
    text
}
