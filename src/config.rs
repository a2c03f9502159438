//! Configuration: a TOML file (`--config` or `ELS_BRIDGE_CONFIG`) whose every key can be
//! overridden by an environment variable `ELS_BRIDGE__SECTION__KEY`, with secrets given
//! inline, through the environment, or as files of their own (contract §4, §7).
//!
//! Institutions are a TOML array; their keys are overridden with
//! `ELS_BRIDGE__INSTITUTIONS__<index or fixmedins_code>__KEY`, e.g.
//! `ELS_BRIDGE__INSTITUTIONS__H32128200338__AUTH_CODE`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::broker::address::Address;
use crate::spec::Infno;

/// Prefix of the environment variables that override configuration keys.
const ENV_PREFIX: &str = "ELS_BRIDGE__";
const ENV_INSTITUTIONS: &str = "ELS_BRIDGE__INSTITUTIONS__";
/// The list-valued keys: their environment variable is a comma-separated list.
const ENV_LISTS: [(&str, &str); 1] = [("ELS_BRIDGE__AMQP__ADDRESSES", "amqp.addresses")];

/// Why the configuration cannot be used; the message says which key and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No configuration file was named.
    #[error("no configuration file: pass --config FILE or set ELS_BRIDGE_CONFIG")]
    Missing,
    /// The file cannot be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file or an override does not fit the schema.
    #[error("configuration: {0}")]
    Invalid(String),
    /// A secret file named by a `*_file` key cannot be read.
    #[error("institution {institution}: cannot read {key} from {path}: {source}")]
    SecretFile { institution: String, key: &'static str, path: PathBuf, source: std::io::Error },
}

/// The whole configuration of one els-bridge process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The broker; optional for `send`, `validate` and `simulate`.
    pub amqp: Option<AmqpSettings>,
    /// The provincial platform.
    #[serde(default)]
    pub platform: PlatformSettings,
    /// How records are grouped into upload calls.
    #[serde(default)]
    pub batch: BatchSettings,
    /// Backoff for transient failures.
    #[serde(default)]
    pub retry: RetrySettings,
    /// The health and metrics endpoint of the worker.
    #[serde(default)]
    pub http: HttpSettings,
    /// The worker's shutdown.
    #[serde(default)]
    pub worker: WorkerSettings,
    /// The receipts ledger.
    #[serde(default)]
    pub ledger: LedgerSettings,
    /// The institutions this process reports for.
    #[serde(default)]
    pub institutions: Vec<Institution>,
}

/// `[amqp]`: the RabbitMQ broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// `amqp://` or `amqps://` URL; may hold the password, so it is kept secret.
    #[serde(default = "default_amqp_url")]
    pub url: SecretString,
    /// The broker's nodes as `host[:port]`, for a cluster without a balancer in front: each
    /// replaces `url`'s host and port (an address without a port takes `url`'s), and a
    /// connection goes to the first that answers (see [`crate::broker::connect()`]). Empty:
    /// `url`'s host. From the environment, one comma-separated list.
    #[serde(default)]
    pub addresses: Vec<Address>,
    /// Whether each process tries `addresses` in an order of its own (the default: a fleet
    /// spreads over the nodes), or every connection tries them as listed (a preferred
    /// node first, e.g. the one in the same data centre).
    #[serde(default = "default_shuffle_addresses")]
    pub shuffle_addresses: bool,
    /// Unacknowledged deliveries a worker may hold; unset, sized from the configuration
    /// ([`Config::worker_prefetch`]).
    #[serde(default)]
    pub prefetch: Option<u16>,
    /// A private CA for `amqps://`.
    pub ca_file: Option<PathBuf>,
    /// The topic exchange events are published to.
    #[serde(default = "default_events")]
    pub exchange: String,
    /// The work queue all workers consume, bound to the exchange with `#`.
    #[serde(default = "default_events")]
    pub queue: String,
    /// The dead-letter queue.
    #[serde(default = "default_dead")]
    pub dead_letter_queue: String,
    /// Prefix of the project's other queues and exchanges (delays, tokens, msgid slots).
    #[serde(default = "default_name_prefix")]
    pub name_prefix: String,
    /// How long opening a connection (TCP, TLS and the AMQP handshake) may take before it
    /// counts as failed: an address that accepts TCP and never speaks AMQP (a balancer
    /// without backends, a wrong port) would otherwise hold a command forever.
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// The AMQP heartbeat interval asked for (the broker may ask for less): a link that
    /// stops carrying anything without closing (a dead NAT entry, a pulled cable) is
    /// noticed after twice this long, and the connection is opened again. A `heartbeat=`
    /// in the URL wins.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u16,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        AmqpSettings {
            url: default_amqp_url(),
            addresses: Vec::new(),
            shuffle_addresses: default_shuffle_addresses(),
            prefetch: None,
            ca_file: None,
            exchange: default_events(),
            queue: default_events(),
            dead_letter_queue: default_dead(),
            name_prefix: default_name_prefix(),
            connect_timeout_secs: default_connect_timeout_secs(),
            heartbeat_secs: default_heartbeat_secs(),
        }
    }
}

impl AmqpSettings {
    /// Refuses a URL that does not parse and an address given twice (each address was
    /// checked as it was read).
    fn check(&self) -> Result<(), ConfigError> {
        if let Err(error) = crate::broker::connect::parse_url(self.url.expose_secret()) {
            return Err(ConfigError::Invalid(error.to_string()));
        }
        for (index, address) in self.addresses.iter().enumerate() {
            if self.addresses[..index].contains(address) {
                return Err(ConfigError::Invalid(format!("amqp.addresses names {address} twice")));
            }
        }
        if self.prefetch == Some(0) {
            // To AMQP a prefetch of 0 means no limit at all: nothing would bound the memory.
            return Err(ConfigError::Invalid(
                "amqp.prefetch = 0 would let the broker send without limit; set at least 1, or leave it out to have it sized".to_owned(),
            ));
        }
        Ok(())
    }
}

fn default_shuffle_addresses() -> bool {
    true
}

fn default_claim_ttl_secs() -> u64 {
    300
}

fn default_connect_timeout_secs() -> u64 {
    30
}

fn default_heartbeat_secs() -> u16 {
    10
}

fn default_events() -> String {
    "els.events".into()
}
fn default_dead() -> String {
    "els.dead".into()
}
fn default_name_prefix() -> String {
    "els".into()
}

fn default_amqp_url() -> SecretString {
    SecretString::from("amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// How decimals are written in upload rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecimalFormat {
    /// JSON strings, as the official sample does.
    #[default]
    String,
    /// JSON numbers.
    Number,
}

/// `[platform]`: the provincial gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlatformSettings {
    /// The interface URL, ending in `/api/commonInterfaca`.
    pub url: String,
    /// Time limit of one request, connection included.
    pub timeout_ms: u64,
    /// Time limit for establishing the connection.
    pub connect_timeout_ms: u64,
    /// A private CA for an `https://` platform.
    pub ca_file: Option<PathBuf>,
    /// Decimals as strings (default) or numbers.
    pub decimal_format: DecimalFormat,
    /// Fetch a new token when less than this many seconds of the current one are left.
    pub token_refresh_lead_secs: u64,
    /// Where `send` keeps tokens between runs when no broker is configured.
    pub token_file: Option<PathBuf>,
}

impl Default for PlatformSettings {
    fn default() -> Self {
        PlatformSettings {
            url: "http://127.0.0.1:8097/api/commonInterfaca".into(),
            timeout_ms: 10_000,
            connect_timeout_ms: 3_000,
            ca_file: None,
            decimal_format: DecimalFormat::String,
            token_refresh_lead_secs: 240,
            token_file: None,
        }
    }
}

/// `[batch]`: grouping of records into upload calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSettings {
    /// Records per call, at most 100 (the platform's limit).
    pub max_records: usize,
    /// Flush a partly filled batch after this long.
    pub linger_ms: u64,
    /// Upload calls in flight at once per institution: the cap, whatever the platform.
    pub max_in_flight_per_institution: usize,
    /// Let the worker's calls in flight per institution adapt between 1 and the cap to the
    /// platform's round trip (AIMD: one more while it stays flat, back off when it rises or
    /// calls time out or fail transiently); `false` keeps the cap fixed.
    #[serde(default = "default_adaptive_concurrency")]
    pub adaptive_concurrency: bool,
    /// Longest time one batch may spend uploading, its bisection of a refused call included
    /// (up to 199 calls for 100 rows); past it, the rows not yet settled are retried later.
    /// Keep it below the broker's consumer timeout (30 minutes by default), after which the
    /// broker takes the deliveries back and the bisection would start over.
    #[serde(default = "default_max_upload_secs")]
    pub max_upload_secs: u64,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_records: 100,
            linger_ms: 2000,
            max_in_flight_per_institution: 4,
            adaptive_concurrency: default_adaptive_concurrency(),
            max_upload_secs: default_max_upload_secs(),
        }
    }
}

fn default_adaptive_concurrency() -> bool {
    true
}

fn default_max_upload_secs() -> u64 {
    1200
}

/// `[retry]`: exponential backoff with jitter for transient failures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// The first wait.
    pub initial_backoff_ms: u64,
    /// The longest wait.
    pub max_backoff_ms: u64,
    /// Give up (dead-letter as `exhausted`) when the first failure is older than this.
    pub max_elapsed_secs: u64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings { initial_backoff_ms: 500, max_backoff_ms: 60_000, max_elapsed_secs: 86_400 }
    }
}

/// `[http]`: the worker's health and metrics endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address of `/healthz`, `/readyz`, `/metrics`.
    pub listen: SocketAddr,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings { listen: SocketAddr::from(([0, 0, 0, 0], 9464)) }
    }
}

/// `[worker]`: how a worker runs and stops.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// On SIGTERM, how long to flush open batches and settle before closing; what is not
    /// settled by then stays unacked and is delivered again.
    pub drain_deadline_secs: u64,
    /// The largest event body taken (bytes); a larger one is dead-lettered `invalid`
    /// without being parsed. A valid event is far smaller (every field at its longest, in
    /// escaped UTF-8, is under 16 KiB), so this bounds what one parse may take.
    pub max_event_bytes: usize,
    /// The most event bytes a worker may hold: it asks the broker for no more unacked
    /// deliveries than this over `max_event_bytes` (RabbitMQ's prefetch counts messages,
    /// not bytes), so that a backlog of large events cannot take it past its memory limit.
    #[serde(default = "default_max_held_bytes")]
    pub max_held_bytes: usize,
    /// Threads of the worker's async runtime, 1 to 64. One spends less CPU per record
    /// than two (the tasks of a batch hand each other work without waking another thread;
    /// lapin reads and writes the broker's socket on a thread of its own); more threads
    /// give one worker more than about a core, which more replicas do as well.
    #[serde(default = "default_threads")]
    pub threads: usize,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            drain_deadline_secs: 30,
            max_event_bytes: crate::event::MAX_EVENT_BYTES,
            max_held_bytes: default_max_held_bytes(),
            threads: default_threads(),
        }
    }
}

fn default_max_held_bytes() -> usize {
    128 << 20
}

fn default_threads() -> usize {
    1
}

/// `[ledger]`: the receipts ledger on the broker (a stream of every accepted upload).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerSettings {
    /// Days the broker keeps receipts (the stream's `x-max-age`); `report` can look back
    /// this far.
    pub retention_days: u32,
    /// A ledger claim neither released nor renewed for this long is treated as abandoned
    /// (its holder's process hangs with its connection alive). Workers renew their claims
    /// every third of it while an upload lasts, so a long bisection keeps its keys.
    #[serde(default = "default_claim_ttl_secs")]
    pub claim_ttl_secs: u64,
    /// Days of receipts each worker indexes at start-up to refuse stale versions.
    pub index_days: u32,
    /// Most keys a worker's index holds; the oldest are forgotten beyond this.
    pub max_index_keys: usize,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        LedgerSettings { retention_days: 400, index_days: 35, max_index_keys: 250_000, claim_ttl_secs: default_claim_ttl_secs() }
    }
}

/// `[[institutions]]`: one hospital, with its envelope values and credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Institution {
    /// The 12-character institution code (定点医药机构编号).
    pub fixmedins_code: String,
    /// The institution's name.
    pub fixmedins_name: String,
    /// The app code issued with the credentials (ELS7001).
    pub app_code: String,
    /// The auth code (ELS7001); secret.
    pub auth_code: Option<SecretString>,
    /// A file holding the auth code instead.
    pub auth_code_file: Option<PathBuf>,
    /// The CSB gateway access key.
    pub csb_access_key: String,
    /// The CSB gateway secret key; secret.
    pub csb_secret_key: Option<SecretString>,
    /// A file holding the CSB secret key instead.
    pub csb_secret_key_file: Option<PathBuf>,
    /// Envelope `mdtrtarea_admvs`.
    #[serde(default)]
    pub mdtrtarea_admvs: String,
    /// Envelope `insuplc_admdvs`.
    #[serde(default)]
    pub insuplc_admdvs: String,
    /// Envelope `recer_sys_code`.
    #[serde(default)]
    pub recer_sys_code: String,
    /// Envelope `dev_no`.
    #[serde(default)]
    pub dev_no: String,
    /// Envelope `dev_safe_info`.
    #[serde(default)]
    pub dev_safe_info: String,
    /// Envelope `cainfo`.
    #[serde(default)]
    pub cainfo: String,
    /// Envelope `signtype`.
    #[serde(default)]
    pub signtype: String,
    /// Envelope `infver`.
    #[serde(default)]
    pub infver: String,
    /// Envelope `opter_type`.
    #[serde(default)]
    pub opter_type: String,
    /// Envelope `opter`.
    #[serde(default)]
    pub opter: String,
    /// Envelope `opter_name`.
    #[serde(default)]
    pub opter_name: String,
    /// Envelope `sign_no`.
    #[serde(default)]
    pub sign_no: String,
    /// Envelope `fixmedins_soft_fcty`.
    #[serde(default)]
    pub fixmedins_soft_fcty: String,
}

/// Envelope values of an institution as the interface text (table 2) constrains them:
/// (key, max characters, required).
const ENVELOPE_VALUES: &[(&str, usize, bool)] = &[
    ("fixmedins_name", 20, true),
    ("mdtrtarea_admvs", 6, true),
    ("insuplc_admdvs", 6, false),
    ("recer_sys_code", 10, true),
    ("dev_no", 100, false),
    ("dev_safe_info", 2000, false),
    ("cainfo", 1024, true),
    ("signtype", 10, false),
    ("infver", 6, true),
    ("opter_type", 3, true),
    ("opter", 30, true),
    ("opter_name", 50, true),
    ("sign_no", 30, false),
    ("fixmedins_soft_fcty", 200, true),
];

impl Institution {
    fn envelope_value(&self, key: &str) -> &str {
        match key {
            "fixmedins_name" => &self.fixmedins_name,
            "mdtrtarea_admvs" => &self.mdtrtarea_admvs,
            "insuplc_admdvs" => &self.insuplc_admdvs,
            "recer_sys_code" => &self.recer_sys_code,
            "dev_no" => &self.dev_no,
            "dev_safe_info" => &self.dev_safe_info,
            "cainfo" => &self.cainfo,
            "signtype" => &self.signtype,
            "infver" => &self.infver,
            "opter_type" => &self.opter_type,
            "opter" => &self.opter,
            "opter_name" => &self.opter_name,
            "sign_no" => &self.sign_no,
            _ => &self.fixmedins_soft_fcty,
        }
    }

    /// Checks the envelope values, so that a platform refusal of the envelope (which the
    /// platform answers like a refusal of the data) cannot happen at run time.
    fn check_envelope(&self) -> Result<(), ConfigError> {
        let code = &self.fixmedins_code;
        for &(key, max, required) in ENVELOPE_VALUES {
            let value = self.envelope_value(key);
            if required && value.trim().is_empty() {
                return Err(ConfigError::Invalid(format!("institution {code}: {key} is required by the platform's envelope")));
            }
            if value.chars().count() > max {
                return Err(ConfigError::Invalid(format!("institution {code}: {key} must be at most {max} characters")));
            }
        }
        if !["1", "2", "3"].contains(&self.opter_type.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "institution {code}: opter_type must be \"1\" (operator), \"2\" (self-service terminal) or \"3\" (mobile terminal)"
            )));
        }
        Ok(())
    }

    /// The auth code, from the file when `auth_code_file` is set.
    pub fn auth_code(&self) -> &SecretString {
        self.auth_code.as_ref().expect("resolved by Config::load")
    }

    /// The CSB secret key, from the file when `csb_secret_key_file` is set.
    pub fn csb_secret_key(&self) -> &SecretString {
        self.csb_secret_key.as_ref().expect("resolved by Config::load")
    }

    /// Reads `*_file` secrets and checks that every secret is there exactly once.
    fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        let code = self.fixmedins_code.clone();
        for (key, inline, file) in [
            ("auth_code", &mut self.auth_code, &self.auth_code_file),
            ("csb_secret_key", &mut self.csb_secret_key, &self.csb_secret_key_file),
        ] {
            match (inline.is_some(), file) {
                (true, Some(_)) => {
                    return Err(ConfigError::Invalid(format!("institution {code}: set either {key} or {key}_file, not both")));
                }
                (false, None) => {
                    return Err(ConfigError::Invalid(format!(
                        "institution {code}: {key} is missing; set {key}, {key}_file or ELS_BRIDGE__INSTITUTIONS__{code}__{}",
                        key.to_uppercase()
                    )));
                }
                (false, Some(path)) => {
                    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
                        institution: code.clone(),
                        key,
                        path: path.clone(),
                        source,
                    })?;
                    *inline = Some(SecretString::from(text.trim_end_matches(['\r', '\n']).to_owned()));
                }
                (true, None) => {}
            }
        }
        Ok(())
    }
}

/// The configuration key of a list-valued environment variable (see [`ENV_LISTS`]).
fn list_key(name: &str) -> Option<&'static str> {
    ENV_LISTS.iter().find(|(variable, _)| variable.eq_ignore_ascii_case(name)).map(|(_, key)| *key)
}

/// The entries of a comma-separated list; a blank value is the empty list (as if unset).
fn split_list(value: &str) -> Vec<String> {
    if value.trim().is_empty() {
        return Vec::new();
    }
    value.split(',').map(str::to_owned).collect()
}

/// Refuses TOML that does not parse, saying where and what, but never quoting the line:
/// the parser's own message shows it, and it may be a secret (`auth_code = "AUTH…` with its
/// closing quote missing).
fn check_syntax(text: &str) -> Result<(), ConfigError> {
    let Err(error) = text.parse::<toml::Table>() else { return Ok(()) };
    let at = error.span().map_or(0, |span| span.start).min(text.len());
    let before = text.get(..at).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
    let what = error.message().lines().next().unwrap_or("invalid TOML").trim_end_matches('.');
    Err(ConfigError::Invalid(format!(
        "TOML syntax error at line {line}, column {column}: {what} (the line is not shown: it may hold a secret)"
    )))
}

impl Config {
    /// Loads the file at `path` (or the one named by `ELS_BRIDGE_CONFIG`), applies the
    /// environment's overrides, reads secret files and checks the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env_path = std::env::var_os("ELS_BRIDGE_CONFIG").map(PathBuf::from);
        let path = path.map(Path::to_path_buf).or(env_path).ok_or(ConfigError::Missing)?;
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        Config::from_toml(&text, std::env::vars())
    }

    /// Builds the configuration from TOML text and `ELS_BRIDGE__*` overrides in `env`.
    pub fn from_toml(text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        check_syntax(text)?;
        let invalid = |e: config::ConfigError| ConfigError::Invalid(e.to_string());
        let file = config::File::from_str(text, config::FileFormat::Toml);
        let (institution_env, section_env): (Vec<_>, Vec<_>) =
            env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).partition(|(k, _)| k.starts_with(ENV_INSTITUTIONS));
        let (list_env, section_env): (Vec<_>, Vec<_>) = section_env.into_iter().partition(|(k, _)| list_key(k).is_some());
        let section_env: HashMap<String, String> = section_env.into_iter().collect();
        let sections = config::Environment::with_prefix("ELS_BRIDGE").prefix_separator("__").separator("__").source(Some(section_env));

        // Institutions may be named by code in overrides: learn the codes from the file.
        let codes: Vec<String> = config::Config::builder()
            .add_source(file.clone())
            .build()
            .and_then(|c| c.get::<Vec<HashMap<String, config::Value>>>("institutions"))
            .unwrap_or_default()
            .iter()
            .map(|i| i.get("fixmedins_code").map(ToString::to_string).unwrap_or_default())
            .collect();

        let mut builder = config::Config::builder().add_source(file).add_source(sections);
        for (name, value) in list_env {
            builder = builder.set_override(list_key(&name).unwrap_or_default(), split_list(&value)).map_err(invalid)?;
        }
        for (name, value) in institution_env {
            let rest = &name[ENV_INSTITUTIONS.len()..];
            let Some((which, key)) = rest.split_once("__") else {
                return Err(ConfigError::Invalid(format!("{name}: expected {ENV_INSTITUTIONS}<index or code>__KEY")));
            };
            let index = match which.parse::<usize>() {
                Ok(i) if i < codes.len() => i,
                _ => codes
                    .iter()
                    .position(|c| c.eq_ignore_ascii_case(which))
                    .ok_or_else(|| ConfigError::Invalid(format!("{name}: no institution {which:?} in the configuration file")))?,
            };
            builder = builder.set_override(format!("institutions[{index}].{}", key.to_lowercase()), value).map_err(invalid)?;
        }
        let mut config: Config = builder.build().and_then(|c| c.try_deserialize()).map_err(invalid)?;
        config.check()?;
        for institution in &mut config.institutions {
            institution.resolve_secrets()?;
        }
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError::Invalid(msg));
        if !(1..=100).contains(&self.batch.max_records) {
            return fail(format!("batch.max_records is {}; it must be 1 to 100 (the platform's limit)", self.batch.max_records));
        }
        for (key, value, min, max) in self.durations() {
            if !(min..=max).contains(&value) {
                return fail(format!("{key} is {value}; it must be {min} to {max}"));
            }
        }
        if self.ledger.retention_days == 0 || self.ledger.index_days == 0 || self.ledger.index_days > self.ledger.retention_days {
            return fail("ledger: retention_days and index_days must be at least 1, index_days at most retention_days".into());
        }
        if self.batch.max_in_flight_per_institution == 0 {
            return fail("batch.max_in_flight_per_institution must be at least 1".into());
        }
        if self.retry.initial_backoff_ms == 0 || self.retry.max_backoff_ms < self.retry.initial_backoff_ms {
            return fail("retry: initial_backoff_ms must be at least 1 and at most max_backoff_ms".into());
        }
        if !self.platform.url.starts_with("http://") && !self.platform.url.starts_with("https://") {
            return fail(format!("platform.url {:?} must start with http:// or https://", self.platform.url));
        }
        let mut seen = Vec::new();
        for institution in &self.institutions {
            let code = &institution.fixmedins_code;
            if code.chars().count() != 12 || !code.chars().all(|c| c.is_ascii_alphanumeric()) {
                return fail(format!("institution {code:?}: fixmedins_code must be 12 letters or digits"));
            }
            institution.check_envelope()?;
            if seen.contains(&code) {
                return fail(format!("institution {code} is configured twice"));
            }
            seen.push(code);
        }
        if let Some(amqp) = &self.amqp {
            amqp.check()?;
        }
        let max_event = self.worker.max_event_bytes;
        if !(1024..=16 << 20).contains(&max_event) {
            return fail(format!("worker.max_event_bytes = {max_event} is out of range: from 1024 to 16777216 bytes"));
        }
        if !(1..=64).contains(&self.worker.threads) {
            return fail(format!("worker.threads is {}; it must be 1 to 64", self.worker.threads));
        }
        self.check_held_bytes()
    }

    /// The byte budget holds at least one event, and an explicit prefetch fits in it.
    fn check_held_bytes(&self) -> Result<(), ConfigError> {
        let WorkerSettings { max_event_bytes, max_held_bytes, .. } = self.worker;
        if max_held_bytes < max_event_bytes {
            return Err(ConfigError::Invalid(format!(
                "worker.max_held_bytes = {max_held_bytes} is below worker.max_event_bytes = {max_event_bytes}: a worker could not hold one event"
            )));
        }
        match self.amqp.as_ref().and_then(|a| a.prefetch) {
            Some(prefetch) if usize::from(prefetch) > self.held_deliveries() => Err(ConfigError::Invalid(format!(
                "amqp.prefetch = {prefetch} deliveries of up to worker.max_event_bytes = {max_event_bytes} bytes could hold {} MiB, \
                 more than worker.max_held_bytes = {max_held_bytes} ({} MiB): lower amqp.prefetch (at most {}) or worker.max_event_bytes, \
                 or raise worker.max_held_bytes if the worker's memory limit allows",
                (usize::from(prefetch) * max_event_bytes) >> 20,
                max_held_bytes >> 20,
                self.held_deliveries()
            ))),
            _ => Ok(()),
        }
    }

    /// The most deliveries of `worker.max_event_bytes` that fit in `worker.max_held_bytes`.
    fn held_deliveries(&self) -> usize {
        self.worker.max_held_bytes / self.worker.max_event_bytes.max(1)
    }

    /// The settings that become durations, each with the range it may take: a value beyond
    /// would overflow a clock (e.g. a drain deadline of 2⁶⁴ − 1 s panicked at SIGTERM).
    fn durations(&self) -> Vec<(&'static str, u64, u64, u64)> {
        let day = 86_400;
        let mut ranges = vec![
            ("worker.drain_deadline_secs", self.worker.drain_deadline_secs, 0, day),
            ("batch.linger_ms", self.batch.linger_ms, 0, 3_600_000),
            ("batch.max_upload_secs", self.batch.max_upload_secs, 1, day),
            ("retry.max_backoff_ms", self.retry.max_backoff_ms, 1, day * 1000),
            ("retry.max_elapsed_secs", self.retry.max_elapsed_secs, 0, 366 * day),
            ("platform.timeout_ms", self.platform.timeout_ms, 1, 600_000),
            ("platform.connect_timeout_ms", self.platform.connect_timeout_ms, 1, 600_000),
            ("platform.token_refresh_lead_secs", self.platform.token_refresh_lead_secs, 0, day),
            ("ledger.claim_ttl_secs", self.ledger.claim_ttl_secs, 1, day),
            // The index is sized for it at start (32 bytes and more a key).
            ("ledger.max_index_keys", u64::try_from(self.ledger.max_index_keys).unwrap_or(u64::MAX), 1, 10_000_000),
        ];
        if let Some(amqp) = &self.amqp {
            ranges.push(("amqp.connect_timeout_secs", amqp.connect_timeout_secs, 1, 3600));
            ranges.push(("amqp.heartbeat_secs", u64::from(amqp.heartbeat_secs), 1, 600));
        }
        ranges
    }

    /// The institution with this code.
    pub fn institution(&self, code: &str) -> Option<&Institution> {
        self.institutions.iter().find(|i| i.fixmedins_code == code)
    }

    /// The prefetch that lets every lane fill its calls: a full batch waiting in each of
    /// the six lanes of every institution, plus the batches in flight,
    /// institutions × (6 + `batch.max_in_flight_per_institution`) × `batch.max_records`
    /// (1 000 for one institution with the defaults), within 100..=65 535.
    pub fn lanes_prefetch(&self) -> u16 {
        let lanes = Infno::UPLOADS.len() + self.batch.max_in_flight_per_institution;
        let wanted = self.institutions.len().max(1).saturating_mul(lanes).saturating_mul(self.batch.max_records);
        u16::try_from(wanted.max(100)).unwrap_or(u16::MAX)
    }

    /// The worker's prefetch: `amqp.prefetch` if set, else [`Config::lanes_prefetch`] and a
    /// quarter more (1 250 for one institution with the defaults), as far as
    /// `worker.max_held_bytes` allows: the room beyond the lanes' need is where settled
    /// deliveries wait to be acked together.
    pub fn worker_prefetch(&self) -> u16 {
        self.amqp.as_ref().and_then(|a| a.prefetch).unwrap_or_else(|| {
            let lanes = usize::from(self.lanes_prefetch());
            let sized = (lanes + lanes / 4).min(self.held_deliveries()).max(1);
            u16::try_from(sized).unwrap_or(u16::MAX)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
        [platform]
        url = "http://127.0.0.1:1/api/commonInterfaca"
        [[institutions]]
        fixmedins_code = "H32128200338"
        fixmedins_name = "靖江市人民医院"
        app_code = "app"
        auth_code = "auth"
        csb_access_key = "ak"
        csb_secret_key = "sk"
        mdtrtarea_admvs = "321282"
        recer_sys_code = "ELS"
        cainfo = "ca"
        infver = "V1.0"
        opter_type = "3"
        opter = "els-bridge"
        opter_name = "els-bridge"
        fixmedins_soft_fcty = "els-bridge"
    "#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_fill_what_the_file_leaves_out() {
        let c = Config::from_toml(TOML, env(&[])).unwrap();
        assert_eq!(c.batch.max_records, 100);
        assert!(c.batch.adaptive_concurrency, "adaptive concurrency is on unless pinned");
        let pinned = Config::from_toml(TOML, env(&[("ELS_BRIDGE__BATCH__ADAPTIVE_CONCURRENCY", "false")])).unwrap();
        assert!(!pinned.batch.adaptive_concurrency);
        assert_eq!(c.retry.max_elapsed_secs, 86_400);
        assert_eq!(c.platform.token_refresh_lead_secs, 240);
        assert!(c.amqp.is_none());
        assert_eq!(c.institutions[0].dev_no, "");
        assert_eq!(c.worker.threads, 1);
    }

    #[test]
    fn worker_threads_are_1_to_64() {
        let threads = |value: &str| Config::from_toml(TOML, env(&[("ELS_BRIDGE__WORKER__THREADS", value)]));
        assert_eq!(threads("4").unwrap().worker.threads, 4);
        assert_eq!(threads("64").unwrap().worker.threads, 64);
        for refused in ["0", "65"] {
            let error = threads(refused).err().unwrap_or_else(|| panic!("worker.threads = {refused} accepted")).to_string();
            assert!(error.contains(&format!("worker.threads is {refused}; it must be 1 to 64")), "{error}");
        }
    }

    #[test]
    fn settings_that_become_durations_are_range_checked() {
        let huge = u64::MAX.to_string();
        for key in [
            "WORKER__DRAIN_DEADLINE_SECS",
            "BATCH__LINGER_MS",
            "RETRY__MAX_ELAPSED_SECS",
            "PLATFORM__TIMEOUT_MS",
            "AMQP__CONNECT_TIMEOUT_SECS",
        ] {
            let error =
                Config::from_toml(TOML, env(&[(&format!("ELS_BRIDGE__{key}"), &huge)])).err().unwrap_or_else(|| panic!("{key} accepted"));
            let name = key.to_lowercase().replacen("__", ".", 1);
            assert!(error.to_string().contains(&format!("{name} is {huge}; it must be")), "{key}: {error}");
        }
        let error = Config::from_toml(TOML, env(&[("ELS_BRIDGE__AMQP__HEARTBEAT_SECS", "0")])).expect_err("no heartbeat");
        assert!(error.to_string().contains("amqp.heartbeat_secs is 0; it must be 1 to 600"), "{error}");
        assert!(Config::from_toml(TOML, env(&[("ELS_BRIDGE__WORKER__DRAIN_DEADLINE_SECS", "86400")])).is_ok());
    }

    #[test]
    fn the_prefetch_is_sized_for_the_lanes_unless_set() {
        let c = Config::from_toml(TOML, env(&[])).unwrap();
        assert_eq!(c.lanes_prefetch(), 1000, "one institution: (6 lanes + 4 in flight) × 100");
        assert_eq!(c.worker_prefetch(), 1250, "and a quarter for acks waiting to go together");
        let c = Config::from_toml(TOML, env(&[("ELS_BRIDGE__BATCH__MAX_IN_FLIGHT_PER_INSTITUTION", "2")])).unwrap();
        assert_eq!((c.lanes_prefetch(), c.worker_prefetch()), (800, 1000));
        let c = Config::from_toml(TOML, env(&[("ELS_BRIDGE__AMQP__PREFETCH", "50")])).unwrap();
        assert_eq!((c.worker_prefetch(), c.lanes_prefetch()), (50, 1000));
    }

    #[test]
    fn the_prefetch_fits_in_the_byte_budget() {
        let budget = |vars: &[(&str, &str)]| Config::from_toml(TOML, env(vars));
        let c = budget(&[("ELS_BRIDGE__WORKER__MAX_HELD_BYTES", "33554432")]).unwrap();
        assert_eq!(c.worker_prefetch(), 512, "32 MiB of 64 KiB events, below the 1 250 sized for the lanes");
        let c = budget(&[("ELS_BRIDGE__WORKER__MAX_HELD_BYTES", "33554432"), ("ELS_BRIDGE__WORKER__MAX_EVENT_BYTES", "16384")]).unwrap();
        assert_eq!(c.worker_prefetch(), 1250, "smaller events: the lanes' size fits");
        let error = budget(&[("ELS_BRIDGE__AMQP__PREFETCH", "2049")]).expect_err("128 MiB hold 2 048 events of 64 KiB");
        assert!(
            error.to_string().contains("amqp.prefetch = 2049 deliveries of up to worker.max_event_bytes = 65536 bytes could hold 128 MiB"),
            "{error}"
        );
        assert!(error.to_string().contains("lower amqp.prefetch (at most 2048)"), "{error}");
        assert_eq!(budget(&[("ELS_BRIDGE__AMQP__PREFETCH", "2048")]).unwrap().worker_prefetch(), 2048);
        let error = budget(&[("ELS_BRIDGE__WORKER__MAX_HELD_BYTES", "1000")]).expect_err("less than one event");
        assert!(error.to_string().contains("a worker could not hold one event"), "{error}");
    }

    #[test]
    fn environment_overrides_sections_and_institutions_as_text() {
        let c = Config::from_toml(
            TOML,
            env(&[
                ("ELS_BRIDGE__BATCH__LINGER_MS", "50"),
                ("ELS_BRIDGE__AMQP__URL", "amqp://u:p@h:5672/%2f"),
                ("ELS_BRIDGE__INSTITUTIONS__H32128200338__AUTH_CODE", "000123"),
                ("ELS_BRIDGE__INSTITUTIONS__0__MDTRTAREA_ADMVS", "320000"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.batch.linger_ms, 50);
        assert_eq!(c.amqp.unwrap().url.expose_secret(), "amqp://u:p@h:5672/%2f");
        assert_eq!(c.institutions[0].auth_code().expose_secret(), "000123");
        assert_eq!(c.institutions[0].mdtrtarea_admvs, "320000");
    }

    fn addresses(c: &Config) -> Vec<String> {
        c.amqp.as_ref().map(|a| a.addresses.iter().map(ToString::to_string).collect()).unwrap_or_default()
    }

    #[test]
    fn addresses_come_from_the_file_or_a_comma_separated_variable() {
        let file = format!("[amqp]\nurl = \"amqps://els:pw@rabbit/els\"\naddresses = [\"rabbit-1:5671\", \"rabbit-2\"]\n{TOML}");
        let c = Config::from_toml(&file, env(&[])).unwrap();
        assert_eq!(addresses(&c), ["rabbit-1:5671", "rabbit-2"]);
        let c = Config::from_toml(&file, env(&[("ELS_BRIDGE__AMQP__ADDRESSES", "10.0.0.1:5672, 10.0.0.2,[fd00::3]:5672")])).unwrap();
        assert_eq!(addresses(&c), ["10.0.0.1:5672", "10.0.0.2", "[fd00::3]:5672"]);
        let c = Config::from_toml(TOML, env(&[("ELS_BRIDGE__AMQP__ADDRESSES", "rabbit-1")])).unwrap();
        assert_eq!(addresses(&c), ["rabbit-1"], "an [amqp] section of the environment alone");
        let c = Config::from_toml(&file, env(&[("ELS_BRIDGE__AMQP__ADDRESSES", " ")])).unwrap();
        assert!(addresses(&c).is_empty(), "a blank variable: the url's host");
        let c = Config::from_toml(TOML, env(&[("ELS_BRIDGE__AMQP__URL", "amqp://u:p@h/%2f")])).unwrap();
        assert!(addresses(&c).is_empty());
    }

    #[test]
    fn bad_addresses_are_refused_at_load_without_quoting_a_secret() {
        let cases = [
            ("rabbit-1,,rabbit-2", "an empty entry"),
            ("rabbit-1:99999", "\"rabbit-1:99999\": the port must be a number from 1 to 65535"),
            ("rabbit 1", "\"rabbit 1\": expected host[:port]"),
            ("fd00::1", "IPv6 address in brackets"),
            ("rabbit-1:5672,rabbit-1:5672", "amqp.addresses names rabbit-1:5672 twice"),
            ("amqp://els:hunter2@rabbit-1", "looks like a URL or holds credentials (not shown)"),
        ];
        for (value, expected) in cases {
            let error = Config::from_toml(TOML, env(&[("ELS_BRIDGE__AMQP__ADDRESSES", value)])).expect_err(value).to_string();
            assert!(error.contains(expected), "{value}: {error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
        let file = format!("[amqp]\naddresses = [\"rabbit-1\", \"\"]\n{TOML}");
        let error = Config::from_toml(&file, env(&[])).expect_err("empty entry in the file").to_string();
        assert!(error.contains("amqp.addresses has an empty entry"), "{error}");
    }

    #[test]
    fn the_index_size_is_bounded() {
        for value in ["0", "10000001"] {
            let error = Config::from_toml(TOML, env(&[("ELS_BRIDGE__LEDGER__MAX_INDEX_KEYS", value)])).expect_err(value).to_string();
            assert!(error.contains("ledger.max_index_keys"), "{value}: {error}");
        }
        assert!(Config::from_toml(TOML, env(&[("ELS_BRIDGE__LEDGER__MAX_INDEX_KEYS", "10000000")])).is_ok());
    }

    #[test]
    fn a_prefetch_of_zero_is_refused() {
        let error = Config::from_toml(TOML, env(&[("ELS_BRIDGE__AMQP__PREFETCH", "0")])).expect_err("unlimited").to_string();
        assert!(error.contains("amqp.prefetch = 0 would let the broker send without limit"), "{error}");
        let c = Config::from_toml(TOML, env(&[("ELS_BRIDGE__AMQP__PREFETCH", "1")])).unwrap();
        assert_eq!(c.worker_prefetch(), 1);
    }

    #[test]
    fn the_url_is_checked_at_load_and_never_quoted() {
        let error =
            Config::from_toml(TOML, env(&[("ELS_BRIDGE__AMQP__URL", "rabbit:hunter2@nowhere")])).expect_err("no scheme").to_string();
        assert!(error.contains("amqp.url is not a valid AMQP URL") && !error.contains("hunter2"), "{error}");
        let hostless = env(&[("ELS_BRIDGE__AMQP__URL", "amqp://els:pw@/els"), ("ELS_BRIDGE__AMQP__ADDRESSES", "rabbit-1,rabbit-2")]);
        assert_eq!(addresses(&Config::from_toml(TOML, hostless).unwrap()), ["rabbit-1", "rabbit-2"], "a url without a host");
        let error = Config::from_toml(TOML, env(&[("ELS_BRIDGE__AMQP__URL", "amqp://els:pw@rabbit:x/els")])).expect_err("a bad port");
        assert!(!error.to_string().contains("pw@"), "{error}");
    }

    #[test]
    fn secrets_can_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sk");
        std::fs::write(&path, "from-file\n").unwrap();
        let toml = TOML.replace(r#"csb_secret_key = "sk""#, &format!("csb_secret_key_file = {:?}", path));
        let c = Config::from_toml(&toml, env(&[])).unwrap();
        assert_eq!(c.institutions[0].csb_secret_key().expose_secret(), "from-file");

        let both = TOML.replace(r#"csb_secret_key = "sk""#, "csb_secret_key = \"a\"\ncsb_secret_key_file = \"/x\"");
        assert!(Config::from_toml(&both, env(&[])).unwrap_err().to_string().contains("not both"));
    }

    #[test]
    fn mistakes_are_reported_with_the_key() {
        let typo = TOML.replace("[platform]", "[platform]\ntimeout = 5");
        assert!(Config::from_toml(&typo, env(&[])).unwrap_err().to_string().contains("timeout"));
        for broken in [r#"auth_code = "AUTHSECRET-12345"#, "auth_code = 0012345"] {
            let toml = TOML.replace(r#"auth_code = "auth""#, broken);
            let error = Config::from_toml(&toml, env(&[])).unwrap_err().to_string();
            assert!(!error.contains("AUTHSECRET") && !error.contains("0012345"), "{error}");
            assert!(error.contains("TOML syntax error at line"), "{error}");
        }
        let err = Config::from_toml(TOML, env(&[("ELS_BRIDGE__INSTITUTIONS__NOPE__AUTH_CODE", "x")])).unwrap_err();
        assert!(err.to_string().contains("NOPE"), "{err}");
        let short = TOML.replace("H32128200338", "H321");
        assert!(Config::from_toml(&short, env(&[])).unwrap_err().to_string().contains("12 letters"));
        let no_cainfo = TOML.replace(r#"cainfo = "ca""#, "");
        assert!(Config::from_toml(&no_cainfo, env(&[])).unwrap_err().to_string().contains("cainfo is required"));
        let bad_type = TOML.replace(r#"opter_type = "3""#, r#"opter_type = "9""#);
        assert!(Config::from_toml(&bad_type, env(&[])).unwrap_err().to_string().contains("opter_type must be"));
        let no_secret = TOML.replace(r#"auth_code = "auth""#, "");
        assert!(Config::from_toml(&no_secret, env(&[])).unwrap_err().to_string().contains("auth_code is missing"));
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let c = Config::from_toml(TOML, env(&[("ELS_BRIDGE__AMQP__URL", "amqp://u:hunter2@h/")])).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2") && !debug.contains("\"sk\"") && !debug.contains("\"auth\""), "{debug}");
    }
}
