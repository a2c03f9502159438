//! The worker's metrics: OpenTelemetry instruments, read in Prometheus text format on
//! `/metrics` and exported over OTLP when configured (see [`super`]).
//!
//! One set of instruments feeds both: the OpenTelemetry SDK aggregates, an
//! `opentelemetry-prometheus` reader turns the aggregates into a `prometheus::Registry` for
//! `/metrics`, and a periodic OTLP reader (only when an endpoint is set) sends the same
//! numbers to a collector. Names follow OpenTelemetry (`els.upload.duration`, unit `s`) and
//! come out in Prometheus as the conventional `els_upload_duration_seconds`; counters get
//! `_total`.
//!
//! | Prometheus name | type | labels | meaning |
//! |---|---|---|---|
//! | `els_records_total` | counter | `institution`, `infno`, `outcome` | events settled for good, one count each: `uploaded` (its record is at the platform), `superseded` (a newer version of its record was uploaded instead), `invalid`, `rejected`, `exhausted` (dead-lettered with that reason) |
//! | `els_upload_calls_total` | counter | `institution`, `infno`, `outcome`, `return_code` | upload calls made (ELS7002–7007); `outcome` is the classified answer (`accepted`, `duplicate`, `refused`, `transient`, ...), `return_code` the platform's code, `none` without one (HTTP error, timeout), `other` for a code the spec does not define |
//! | `els_upload_batch_rows` | histogram | `institution`, `infno` | rows per upload call |
//! | `els_upload_duration_seconds` | histogram | `institution`, `infno` | time from sending an upload call to its classified answer |
//! | `els_uploads_in_flight` | gauge | `institution` | upload calls waiting for their answer |
//! | `els_upload_concurrency_limit` | gauge | `institution` | upload calls allowed in flight now: between 1 and `batch.max_in_flight_per_institution` with `batch.adaptive_concurrency`, else that cap |
//! | `els_token_refreshes_total` | counter | `institution`, `result` | ELS7001 calls: `issued` (a new token), `not_issued` (the platform says a valid one exists), `failed` |
//! | `els_retries_total` | counter | `institution` | messages parked in a delay queue after a transient failure (each counts once per retry) |
//! | `els_dead_letters_total` | counter | `reason` | messages moved to the dead-letter queue: `invalid`, `rejected`, `exhausted` |
//! | `els_institution_held` | gauge | `institution` | 1 while the institution's records are held (configuration problem or daily call limit), else 0 |
//! | `els_deliveries_unsettled` | gauge | – | deliveries taken from the broker and not yet acked (waiting in a batch, uploading, or being moved) |
//! | `els_consuming` | gauge | – | 1 while the worker consumes the work queue (what `/readyz` reports) |
//! | `els_last_accepted_upload_timestamp_seconds` | gauge | `institution`, `infno` | when the platform last accepted an upload call of this institution and transaction (Unix time): this replica's calls, and the fleet's receipts in the ledger (its history at start-up included) |
//! | `target_info` | gauge | resource attributes | the OpenTelemetry resource (`service_name`, ...) |
//!
//! Label values are bounded by the configuration: institution codes come from it (events
//! naming another code count as `unknown`), transaction codes from the spec. No msgid, key,
//! token or secret is ever a label.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{LazyLock, Mutex, OnceLock, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, MeterProvider as _, ObservableGauge, UpDownCounter};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;

use crate::spec::Infno;

/// `outcome` of `els_records_total` for settlements that are not dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordOutcome {
    /// The record of the event is at the platform.
    Uploaded,
    /// A newer version of its record was uploaded instead.
    Superseded,
}

impl RecordOutcome {
    fn as_str(self) -> &'static str {
        match self {
            RecordOutcome::Uploaded => "uploaded",
            RecordOutcome::Superseded => "superseded",
        }
    }
}

/// Every `outcome` of `els_records_total`.
pub const RECORD_OUTCOMES: [&str; 5] = ["uploaded", "superseded", "invalid", "rejected", "exhausted"];

/// Every `reason` of `els_dead_letters_total`.
pub const DEAD_LETTER_REASONS: [&str; 3] = ["invalid", "rejected", "exhausted"];

/// The label value of an institution or transaction that cannot be told.
pub const UNKNOWN: &str = "unknown";

struct Installed {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    otlp: bool,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

fn build(resource: Resource, otlp: Option<opentelemetry_otlp::MetricExporter>) -> Installed {
    let registry = prometheus::Registry::new();
    let mut builder = SdkMeterProvider::builder().with_resource(resource);
    match opentelemetry_prometheus::exporter().with_registry(registry.clone()).scope_info_enabled(false).build() {
        Ok(reader) => builder = builder.with_reader(reader),
        Err(error) => tracing::warn!("metrics are not served on /metrics: {error}"),
    }
    let exports = otlp.is_some();
    if let Some(exporter) = otlp {
        builder = builder.with_periodic_exporter(exporter);
    }
    Installed { provider: builder.build(), registry, otlp: exports }
}

/// Builds the meter provider (Prometheus reader, plus OTLP when given). The first call
/// wins; instruments used before it get a Prometheus-only provider.
pub(super) fn install(resource: Resource, otlp: Option<opentelemetry_otlp::MetricExporter>) -> SdkMeterProvider {
    let mut offered = Some((resource, otlp));
    let installed = INSTALLED.get_or_init(|| {
        let (resource, otlp) = offered.take().expect("offered once");
        build(resource, otlp)
    });
    if offered.is_some() {
        tracing::warn!("the meter provider was already installed; OTLP metrics settings are ignored");
    }
    installed.provider.clone()
}

/// Whether metrics go out over OTLP too.
pub(super) fn exports_otlp() -> bool {
    INSTALLED.get().is_some_and(|installed| installed.otlp)
}

fn installed() -> &'static Installed {
    INSTALLED.get_or_init(|| build(super::resource(), None))
}

/// The metrics in Prometheus text exposition format (what `/metrics` serves).
pub fn render() -> String {
    let families = installed().registry.gather();
    prometheus::TextEncoder::new().encode_to_string(&families).unwrap_or_else(|error| {
        tracing::warn!("cannot encode the metrics: {error}");
        String::new()
    })
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the observable gauges read: the institutions held now, whether the worker
/// consumes, and the worker's institutions.
struct Watched {
    held: Box<dyn Fn() -> Vec<String> + Send + Sync>,
    consuming: Box<dyn Fn() -> bool + Send + Sync>,
    institutions: Vec<String>,
}

static WATCHED: RwLock<Option<Watched>> = RwLock::new(None);

/// Deliveries taken and not yet acked by the current broker session.
static UNSETTLED: AtomicI64 = AtomicI64::new(0);

struct Instruments {
    records: Counter<u64>,
    upload_calls: Counter<u64>,
    batch_rows: Histogram<u64>,
    upload_duration: Histogram<f64>,
    uploads_in_flight: UpDownCounter<i64>,
    concurrency_limit: Gauge<u64>,
    token_refreshes: Counter<u64>,
    retries: Counter<u64>,
    dead_letters: Counter<u64>,
    last_accepted: Gauge<f64>,
    _held: ObservableGauge<u64>,
    _unsettled: ObservableGauge<u64>,
    _consuming: ObservableGauge<u64>,
}

static INSTRUMENTS: LazyLock<Instruments> = LazyLock::new(|| Instruments::new(&installed().provider.meter("els-bridge")));

impl Instruments {
    fn new(meter: &Meter) -> Self {
        Instruments {
            records: meter
                .u64_counter("els.records")
                .with_unit("{record}")
                .with_description("Events settled for good, by outcome: uploaded, superseded, invalid, rejected, exhausted")
                .build(),
            upload_calls: meter
                .u64_counter("els.upload.calls")
                .with_unit("{call}")
                .with_description("Upload calls to the platform, by classified outcome and returnCode")
                .build(),
            batch_rows: meter
                .u64_histogram("els.upload.batch.rows")
                .with_unit("{row}")
                .with_description("Rows per upload call")
                .with_boundaries(vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 75.0, 100.0])
                .build(),
            upload_duration: meter
                .f64_histogram("els.upload.duration")
                .with_unit("s")
                .with_description("Time from sending an upload call to its classified answer")
                .with_boundaries(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
                .build(),
            uploads_in_flight: meter
                .i64_up_down_counter("els.uploads.in_flight")
                .with_unit("{call}")
                .with_description("Upload calls waiting for their answer")
                .build(),
            concurrency_limit: meter
                .u64_gauge("els.upload.concurrency.limit")
                .with_unit("{call}")
                .with_description("Upload calls allowed in flight now (adaptive between 1 and the configured cap)")
                .build(),
            token_refreshes: meter
                .u64_counter("els.token.refreshes")
                .with_unit("{call}")
                .with_description("Access token requests (ELS7001), by result: issued, not_issued, failed")
                .build(),
            retries: meter
                .u64_counter("els.retries")
                .with_unit("{message}")
                .with_description("Messages parked in a delay queue after a transient failure")
                .build(),
            dead_letters: meter
                .u64_counter("els.dead_letters")
                .with_unit("{message}")
                .with_description("Messages moved to the dead-letter queue, by reason")
                .build(),
            last_accepted: meter
                .f64_gauge("els.last_accepted_upload.timestamp")
                .with_unit("s")
                .with_description("When the platform last accepted an upload call of the institution and transaction (Unix time)")
                .build(),
            _held: meter
                .u64_observable_gauge("els.institution.held")
                .with_description("1 while the institution's records are held (configuration problem or daily call limit)")
                .with_callback(|observer| {
                    if let Some(watched) = WATCHED.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
                        let held = (watched.held)();
                        for code in &watched.institutions {
                            let value = u64::from(held.contains(code));
                            observer.observe(value, &[KeyValue::new("institution", code.clone())]);
                        }
                    }
                })
                .build(),
            _unsettled: meter
                .u64_observable_gauge("els.deliveries.unsettled")
                .with_unit("{message}")
                .with_description("Deliveries taken from the broker and not yet acked")
                .with_callback(|observer| observer.observe(UNSETTLED.load(Ordering::Relaxed).max(0).unsigned_abs(), &[]))
                .build(),
            _consuming: meter
                .u64_observable_gauge("els.consuming")
                .with_description("1 while the worker consumes the work queue")
                .with_callback(|observer| {
                    if let Some(watched) = WATCHED.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
                        observer.observe(u64::from((watched.consuming)()), &[]);
                    }
                })
                .build(),
        }
    }
}

fn institution(code: &str) -> KeyValue {
    KeyValue::new("institution", code.to_owned())
}

fn infno(infno: Infno) -> KeyValue {
    KeyValue::new("infno", infno.as_str())
}

/// Starts the worker's gauges (`held` says which institutions are held now, `consuming`
/// whether the worker consumes) and sets every counter of its institutions to 0, so that
/// series exist (and rates work) before the first event.
pub fn watch(
    held: impl Fn() -> Vec<String> + Send + Sync + 'static,
    consuming: impl Fn() -> bool + Send + Sync + 'static,
    institutions: Vec<String>,
) {
    let metrics = &*INSTRUMENTS;
    for code in &institutions {
        for transaction in Infno::UPLOADS {
            for outcome in RECORD_OUTCOMES {
                metrics.records.add(0, &[institution(code), infno(transaction), KeyValue::new("outcome", outcome)]);
            }
        }
        metrics.retries.add(0, &[institution(code)]);
        metrics.uploads_in_flight.add(0, &[institution(code)]);
    }
    for reason in DEAD_LETTER_REASONS {
        metrics.dead_letters.add(0, &[KeyValue::new("reason", reason)]);
    }
    *WATCHED.write().unwrap_or_else(|e| e.into_inner()) =
        Some(Watched { held: Box::new(held), consuming: Box::new(consuming), institutions });
}

/// Records of the institution's `transaction` accepted by the platform: `uploaded` events
/// whose record was sent, `superseded` ones merged into them (older versions of the same
/// keys).
pub fn accepted(code: &str, transaction: Infno, uploaded: usize, superseded: usize) {
    add_records(code, transaction, RecordOutcome::Uploaded, uploaded);
    add_records(code, transaction, RecordOutcome::Superseded, superseded);
    last_accepted(code, transaction, SystemTime::now());
}

/// The latest acceptance recorded per (institution, transaction): the gauge only moves
/// forward, whatever order its sources report in.
static LAST_ACCEPTED: Mutex<BTreeMap<(String, Infno), f64>> = Mutex::new(BTreeMap::new());

/// The platform accepted an upload call of the institution's `transaction` at `at`
/// (`els_last_accepted_upload_timestamp_seconds`; an earlier time than the one shown is
/// ignored).
pub fn last_accepted(code: &str, transaction: Infno, at: SystemTime) {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64());
    let mut latest = LAST_ACCEPTED.lock().unwrap_or_else(|e| e.into_inner());
    let shown = latest.entry((code.to_owned(), transaction)).or_insert(f64::MIN);
    if secs > *shown {
        *shown = secs;
        INSTRUMENTS.last_accepted.record(secs, &[institution(code), infno(transaction)]);
    }
}

/// `count` events of the institution's `transaction` settled as superseded.
pub fn superseded(code: &str, transaction: Infno, count: usize) {
    add_records(code, transaction, RecordOutcome::Superseded, count);
}

fn add_records(code: &str, transaction: Infno, outcome: RecordOutcome, count: usize) {
    if count > 0 {
        let labels = [institution(code), infno(transaction), KeyValue::new("outcome", outcome.as_str())];
        INSTRUMENTS.records.add(count as u64, &labels);
    }
}

/// A message is in the dead-letter queue (`reason`: invalid, rejected, exhausted); its
/// event names the institution `code` and `transaction` if they can be told.
pub fn dead_lettered(code: Option<&str>, transaction: Option<Infno>, reason: &'static str) {
    INSTRUMENTS.dead_letters.add(1, &[KeyValue::new("reason", reason)]);
    let labels = [
        KeyValue::new("institution", code.unwrap_or(UNKNOWN).to_owned()),
        KeyValue::new("infno", transaction.map_or(UNKNOWN, Infno::as_str)),
        KeyValue::new("outcome", reason),
    ];
    INSTRUMENTS.records.add(1, &labels);
}

/// A message of the institution `code` (if its event names one that can be told) is parked
/// in a delay queue after a transient failure.
pub fn parked_for_retry(code: Option<&str>) {
    INSTRUMENTS.retries.add(1, &[KeyValue::new("institution", code.unwrap_or(UNKNOWN).to_owned())]);
}

/// What an ELS7001 call came to (the `result` of `els_token_refreshes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAnswer {
    /// A new token was issued.
    Issued,
    /// The platform says a valid token exists (another holder has it).
    NotIssued,
    /// The call failed.
    Failed,
}

/// An ELS7001 call of the institution was answered.
pub fn token_requested(code: &str, answer: TokenAnswer) {
    let result = match answer {
        TokenAnswer::Issued => "issued",
        TokenAnswer::NotIssued => "not_issued",
        TokenAnswer::Failed => "failed",
    };
    INSTRUMENTS.token_refreshes.add(1, &[institution(code), KeyValue::new("result", result)]);
}

/// One upload call in flight; [`UploadCall::answered`] records it, dropping it unanswered
/// (the task was cancelled) only ends the in-flight count.
#[must_use = "record the answer with answered()"]
pub struct UploadCall {
    labels: [KeyValue; 2],
    started: Instant,
}

/// An upload call of the institution's `transaction` is sent now.
pub fn upload_started(code: &str, transaction: Infno) -> UploadCall {
    let labels = [institution(code), infno(transaction)];
    INSTRUMENTS.uploads_in_flight.add(1, &labels[..1]);
    UploadCall { labels, started: Instant::now() }
}

impl UploadCall {
    /// The call with `rows` rows was answered: `kind` is the classified answer
    /// (`accepted`, `duplicate`, ...), `return_code` the platform's code if it gave one.
    pub fn answered(self, rows: usize, kind: &'static str, return_code: Option<u32>) {
        let metrics = &*INSTRUMENTS;
        metrics.upload_duration.record(self.started.elapsed().as_secs_f64(), &self.labels);
        metrics.batch_rows.record(rows as u64, &self.labels);
        let mut labels = self.labels.to_vec();
        labels.push(KeyValue::new("outcome", kind));
        labels.push(KeyValue::new("return_code", return_code_label(return_code)));
        metrics.upload_calls.add(1, &labels);
    }
}

impl Drop for UploadCall {
    fn drop(&mut self) {
        INSTRUMENTS.uploads_in_flight.add(-1, &self.labels[..1]);
    }
}

/// The institution's upload calls allowed in flight are now `limit`.
pub fn concurrency_limit(code: &str, limit: usize) {
    INSTRUMENTS.concurrency_limit.record(u64::try_from(limit).unwrap_or(u64::MAX), &[institution(code)]);
}

/// A delivery was taken from the work queue.
pub fn delivery_taken() {
    UNSETTLED.fetch_add(1, Ordering::Relaxed);
}

/// Deliveries were acked (or their channel is gone).
pub fn deliveries_settled(count: usize) {
    let count = i64::try_from(count).unwrap_or(i64::MAX);
    let _ = UNSETTLED.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some((n.saturating_sub(count)).max(0)));
}

/// The broker session ended: whatever it held unacked goes back to the queue.
pub fn session_ended() {
    UNSETTLED.store(0, Ordering::Relaxed);
}

/// The returnCode as a label value, bounded to the codes the spec defines.
fn return_code_label(code: Option<u32>) -> String {
    match code {
        None => "none".to_owned(),
        Some(code @ (1..=9 | 11..=17 | 28 | 30)) => code.to_string(),
        Some(_) => "other".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_codes_outside_the_spec_share_one_label() {
        assert_eq!(return_code_label(Some(1)), "1");
        assert_eq!(return_code_label(Some(30)), "30");
        assert_eq!(return_code_label(Some(10)), "other");
        assert_eq!(return_code_label(Some(4242)), "other");
        assert_eq!(return_code_label(None), "none");
    }

    #[test]
    fn counters_come_out_with_conventional_prometheus_names() {
        let call = upload_started("H00000000001", Infno::Els7002);
        call.answered(7, "duplicate", Some(17));
        INSTRUMENTS.dead_letters.add(1, &[KeyValue::new("reason", "invalid")]);
        let text = render();
        assert!(text.contains("# TYPE els_upload_calls_total counter"), "{text}");
        assert!(
            text.contains(r#"els_upload_calls_total{infno="ELS7002",institution="H00000000001",outcome="duplicate",return_code="17"} 1"#),
            "{text}"
        );
        assert!(text.contains("# TYPE els_upload_duration_seconds histogram"), "{text}");
        assert!(text.contains(r#"els_upload_batch_rows_sum{infno="ELS7002",institution="H00000000001"} 7"#), "{text}");
        assert!(text.contains(r#"els_uploads_in_flight{institution="H00000000001"} 0"#), "{text}");
        concurrency_limit("H00000000001", 3);
        let text = render();
        assert!(text.contains("# TYPE els_upload_concurrency_limit gauge"), "{text}");
        assert!(text.contains(r#"els_upload_concurrency_limit{institution="H00000000001"} 3"#), "{text}");
        assert!(text.contains(r#"els_dead_letters_total{reason="invalid"}"#), "{text}");
        assert!(!text.contains("otel_scope"), "{text}");
    }

    #[test]
    fn the_last_accepted_upload_is_a_timestamp_that_only_moves_forward() {
        let at = UNIX_EPOCH + std::time::Duration::from_secs(1_790_000_000);
        last_accepted("H00000000002", Infno::Els7003, at);
        last_accepted("H00000000002", Infno::Els7003, at - std::time::Duration::from_secs(60));
        let text = render();
        assert!(text.contains("# TYPE els_last_accepted_upload_timestamp_seconds gauge"), "{text}");
        assert!(
            text.contains(r#"els_last_accepted_upload_timestamp_seconds{infno="ELS7003",institution="H00000000002"} 1790000000"#),
            "{text}"
        );
    }
}
