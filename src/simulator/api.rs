//! The JSON of the admin and inspection API, shared by the simulator and its clients (tests
//! deserialize the very same types). `docs/simulator.md` describes each endpoint.
//!
//! Instants are RFC 3339 UTC; `expire_time` is the Beijing text the platform answers.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::Infno;

/// `PUT /admin/faults/latency`: every interface call waits this long before it is handled,
/// a uniformly drawn time between `min_ms` and `max_ms` (equal for a fixed latency), plus
/// `per_concurrent_ms` for each call in progress beyond `capacity` when it arrives (itself
/// included): a platform that slows under concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    /// The shortest added latency, in milliseconds.
    pub min_ms: u64,
    /// The longest added latency, in milliseconds.
    pub max_ms: u64,
    /// Added latency per call in progress beyond `capacity`, in milliseconds (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub per_concurrent_ms: u64,
    /// Calls in progress at once (over all institutions) served without `per_concurrent_ms`.
    #[serde(default = "default_capacity", skip_serializing_if = "is_default_capacity")]
    pub capacity: u64,
}

impl Latency {
    /// A latency between `min_ms` and `max_ms`, whatever the concurrency.
    pub fn between(min_ms: u64, max_ms: u64) -> Self {
        Latency { min_ms, max_ms, per_concurrent_ms: 0, capacity: default_capacity() }
    }

    /// What concurrency adds to a call arriving while `in_progress` calls are in progress,
    /// itself included.
    pub fn congestion_ms(&self, in_progress: u64) -> u64 {
        self.per_concurrent_ms.saturating_mul(in_progress.saturating_sub(self.capacity))
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn default_capacity() -> u64 {
    1
}

fn is_default_capacity(n: &u64) -> bool {
    *n == default_capacity()
}

/// What an injected error answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ErrorAnswer {
    /// A normal reply (HTTP 200) with this returnCode, e.g. 6 "service unavailable".
    ReturnCode(u32),
    /// This HTTP status (400–599) with a small JSON body, e.g. 503.
    HttpStatus(u16),
}

/// `PUT /admin/faults/errors`: a fraction of the calls is answered with an error instead of
/// being handled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRate {
    /// The fraction of calls affected, 0.0 to 1.0.
    pub rate: f64,
    /// The answer they get.
    pub answer: ErrorAnswer,
}

/// `PUT /admin/faults/outage`: every call is answered HTTP 503 for this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// How long the outage lasts from now, in seconds.
    pub secs: u64,
}

/// How a timed-out call ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutMode {
    /// No answer for `hang_ms` (longer than any client timeout), then HTTP 504.
    Hang,
    /// The connection is closed without an answer.
    Close,
}

/// `PUT /admin/faults/timeouts`: the next `next` calls, and then a fraction `rate` of the
/// calls, get no answer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// How many of the next calls time out (counts down; `GET /admin/faults` shows what is
    /// left).
    #[serde(default)]
    pub next: u32,
    /// The fraction of the calls after those that time out, 0.0 to 1.0.
    #[serde(default)]
    pub rate: f64,
    /// Hang or close.
    pub mode: TimeoutMode,
    /// How long a hanging call hangs, in milliseconds.
    #[serde(default = "default_hang_ms")]
    pub hang_ms: u64,
    /// Whether the call is carried out (records stored, token issued) before its answer is
    /// lost: the case where a client must resend data the platform already has.
    #[serde(default)]
    pub processed: bool,
}

fn default_hang_ms() -> u64 {
    600_000
}

/// `PUT /admin/faults/refusals`: any upload containing one of these record keys is refused
/// whole with `return_code`, like a business refusal of the platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refusals {
    /// Record keys (`hosp_purc_mgt_detl` / `hosp_retn_mgt_detl`), of any institution.
    pub keys: Vec<String>,
    /// The returnCode answered, e.g. 8 or 16.
    pub return_code: u32,
}

/// `GET /admin/faults`: the faults in force.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FaultsView {
    /// Added latency.
    pub latency: Option<Latency>,
    /// Injected errors.
    pub errors: Option<ErrorRate>,
    /// The end of the current outage, if one is in force.
    pub outage_until: Option<DateTime<Utc>>,
    /// Injected timeouts (`next` is what is left of the count).
    pub timeouts: Option<Timeouts>,
    /// Refused record keys and their returnCode.
    pub refusals: BTreeMap<String, u32>,
}

/// Which injected fault decided a call's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Answered HTTP 503 by an outage.
    Outage,
    /// Answered by the error rate.
    Error,
    /// Hung, then HTTP 504.
    Hang,
    /// Closed without an answer.
    Close,
    /// Refused because of a refused record key.
    Refusal,
}

/// Query of `GET /admin/records`; every filter is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordFilter {
    /// Only this institution's records (`fixmedins_code`).
    pub institution: Option<String>,
    /// Only this transaction's records.
    pub infno: Option<Infno>,
    /// Only the record with this key.
    pub key: Option<String>,
    /// At most this many records (the `total` still counts all matches).
    pub limit: Option<usize>,
}

/// One record as stored by the simulator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordView {
    /// The institution that uploaded it.
    pub institution: String,
    /// The transaction it was uploaded with.
    pub infno: Infno,
    /// Its key (`hosp_purc_mgt_detl` / `hosp_retn_mgt_detl`).
    pub key: String,
    /// The row as last received.
    pub row: Value,
    /// The msgid of the call that last wrote it.
    pub msgid: String,
    /// How many accepted uploads wrote this key (1 after the first).
    pub updates: u64,
    /// When it was first stored.
    pub first_stored: DateTime<Utc>,
    /// When it was last written.
    pub updated: DateTime<Utc>,
}

/// Answer of `GET /admin/records`, sorted by institution, infno and key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordsPage {
    /// How many records match the filter.
    pub total: usize,
    /// The matching records, at most `limit`.
    pub records: Vec<RecordView>,
}

/// Query of `GET /admin/calls`; every filter is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallFilter {
    /// Only calls of this institution.
    pub institution: Option<String>,
    /// Only calls with this `infno` text (also unknown ones, e.g. `ELS9999`).
    pub infno: Option<String>,
    /// Only calls with a sequence number above this.
    pub since: Option<u64>,
    /// At most this many calls, the oldest first.
    pub limit: Option<usize>,
}

/// One call to the interface, as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallView {
    /// Sequence number, from 1, in the order the calls were answered.
    pub seq: u64,
    /// When the call arrived.
    pub time: DateTime<Utc>,
    /// The request path.
    pub path: String,
    /// The institution of the access key, once the CSB signature was verified.
    pub institution: Option<String>,
    /// The envelope's `infno`, when the body had one.
    pub infno: Option<String>,
    /// The envelope's `msgid`, when the body had one.
    pub msgid: Option<String>,
    /// Rows in `input.data`.
    pub rows: usize,
    /// The record keys in `input.data`, in order.
    pub keys: Vec<String>,
    /// The returnCode answered, when the answer was a platform reply.
    pub return_code: Option<u32>,
    /// The HTTP status answered (none for a closed connection).
    pub http_status: Option<u16>,
    /// The fault that decided the answer, if any.
    pub fault: Option<FaultKind>,
    /// Latency added by the latency fault, in milliseconds.
    pub latency_ms: u64,
    /// Calls in progress when it arrived, itself included (over all institutions).
    #[serde(default)]
    pub concurrent: u64,
}

/// Answer of `GET /admin/calls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallsPage {
    /// The sequence number of the latest call (0 before the first).
    pub last_seq: u64,
    /// Calls dropped from the log because it is full (the oldest go first).
    pub dropped: u64,
    /// The matching calls still in the log, oldest first.
    pub calls: Vec<CallView>,
}

/// One institution's tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    /// The institution.
    pub institution: String,
    /// How many tokens ELS7001 issued to it.
    pub issued: u64,
    /// The current token, the only one accepted (none before the first).
    pub current_token: Option<String>,
    /// When the current token expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// The same as answered in `expireTime`: `yyyy-MM-dd HH:mm:ss`, Beijing time.
    pub expire_time: Option<String>,
}

/// Answer of `GET /admin/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokensView {
    /// Every configured institution, in configuration order.
    pub institutions: Vec<TokenView>,
}

/// Calls counted against one institution's daily limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyCalls {
    /// The institution.
    pub institution: String,
    /// The Beijing day counted.
    pub day: NaiveDate,
    /// Calls counted that day (the ones refused with 11 included).
    pub calls: u64,
}

/// Answer of `GET /admin/counters`: totals since start or the last reset.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counters {
    /// Calls to any interface path (admin calls excluded).
    pub calls: u64,
    /// Calls by the returnCode answered.
    pub by_return_code: BTreeMap<u32, u64>,
    /// Calls by the HTTP status answered.
    pub by_http_status: BTreeMap<u16, u64>,
    /// Calls decided by an injected fault, by kind.
    pub by_fault: BTreeMap<FaultKind, u64>,
    /// Rows received in upload calls.
    pub rows_received: u64,
    /// Rows accepted (returnCode 1).
    pub rows_accepted: u64,
    /// Records stored now.
    pub records_stored: usize,
    /// Accepted rows whose key was new.
    pub records_created: u64,
    /// Accepted rows whose key was already stored.
    pub records_updated: u64,
    /// Tokens issued by ELS7001.
    pub tokens_issued: u64,
    /// Calls counted against the daily limit, per institution (today's or the last day seen).
    pub daily_calls: Vec<DailyCalls>,
    /// The most calls in progress at once, over all institutions.
    #[serde(default)]
    pub max_concurrent_calls: u64,
    /// The most calls in progress at once per institution (by the call's access key).
    #[serde(default)]
    pub max_concurrent_calls_by_institution: BTreeMap<String, u64>,
}

/// Answer of `GET /admin/settings`: the command-line settings in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsView {
    /// Token validity, seconds.
    pub token_validity_secs: u64,
    /// A new token is refused (9) while more than this many seconds are left.
    pub token_refresh_window_secs: u64,
    /// Calls per institution per Beijing day.
    pub daily_call_limit: u64,
    /// Largest accepted difference between `_api_timestamp` and the clock, seconds.
    pub timestamp_tolerance_secs: u64,
    /// Rows per upload call.
    pub max_rows: usize,
    /// Calls kept in the call log.
    pub call_log_capacity: usize,
    /// How far the platform's clock is from the host's, seconds (positive: ahead).
    #[serde(default)]
    pub clock_offset_secs: i64,
    /// The configured institutions.
    pub institutions: Vec<String>,
}

/// The body of an admin error (HTTP 400 or 404).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminError {
    /// What was wrong.
    pub error: String,
}
