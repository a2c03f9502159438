//! Logs, traces and metrics (contract §5).
//!
//! - **Logs**: `tracing`, human-readable on standard error, JSON lines with
//!   `ELS_BRIDGE_LOG_FORMAT=json`; level from `RUST_LOG` (default `info`). Standard output
//!   stays clean for command output.
//! - **Traces**: the `tracing` spans of this crate (at `info` and above, whatever `RUST_LOG`
//!   says) become OpenTelemetry spans, exported over OTLP/HTTP (protobuf) when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set. W3C trace
//!   context of events is read from their AMQP headers ([`trace`]).
//! - **Metrics**: OpenTelemetry instruments ([`metrics`]), read in Prometheus text format on
//!   the worker's `/metrics`, and also exported over OTLP/HTTP when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` is set.
//!
//! The resource is the SDK's: `OTEL_SERVICE_NAME` (default `els-bridge`) and
//! `OTEL_RESOURCE_ATTRIBUTES`. `OTEL_SDK_DISABLED=true` turns every OTLP export off;
//! `OTEL_TRACES_EXPORTER=none` / `OTEL_METRICS_EXPORTER=none` turn one signal off. The
//! other standard `OTEL_*` variables (headers, timeouts, compression, `OTEL_BSP_*`,
//! `OTEL_METRIC_EXPORT_INTERVAL`, `OTEL_TRACES_SAMPLER`) are read by the SDK itself.
//!
//! No secret ever reaches any of them: span fields and metric labels are institution codes,
//! transaction codes, counts, msgids and return codes only.

pub mod metrics;
pub mod trace;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The service name when neither `OTEL_SERVICE_NAME` nor `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES` gives one.
pub const DEFAULT_SERVICE_NAME: &str = "els-bridge";

/// How long the exit may wait for the last spans and metrics to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The installed providers; [`Telemetry::shutdown`] flushes them at exit.
#[must_use = "call shutdown() at exit, or the last spans are lost"]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: SdkMeterProvider,
}

impl Telemetry {
    /// Exports what is still buffered (spans of the last seconds, the last metric values)
    /// and stops the exporters. Call it outside the async runtime, after the command ended.
    pub fn shutdown(self) {
        if let Some(tracer) = self.tracer
            && let Err(error) = tracer.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        {
            eprintln!("warning: could not export the last spans: {error}");
        }
        // Without an OTLP reader the Prometheus reader alone has nothing to flush.
        if metrics::exports_otlp()
            && let Err(error) = self.meter.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        {
            eprintln!("warning: could not export the last metrics: {error}");
        }
    }
}

/// Installs the global log subscriber, the OpenTelemetry tracer (when OTLP is configured)
/// and the meter provider. Call once, before the async runtime starts.
pub fn init() -> Telemetry {
    let mut problems = Vec::new();
    let resource = resource();
    let tracer = if signal_enabled("OTEL_TRACES_EXPORTER") && endpoint_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        match opentelemetry_otlp::SpanExporter::builder().with_http().build() {
            Ok(exporter) => Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.clone()).build()),
            Err(error) => {
                problems.push(format!("traces are not exported: {error}"));
                None
            }
        }
    } else {
        None
    };
    let otlp_metrics = if signal_enabled("OTEL_METRICS_EXPORTER") && endpoint_set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
        match opentelemetry_otlp::MetricExporter::builder().with_http().build() {
            Ok(exporter) => Some(exporter),
            Err(error) => {
                problems.push(format!("metrics are not exported over OTLP: {error}"));
                None
            }
        }
    } else {
        None
    };
    let meter = metrics::install(resource, otlp_metrics);
    opentelemetry::global::set_meter_provider(meter.clone());
    if let Some(provider) = &tracer {
        opentelemetry::global::set_tracer_provider(provider.clone());
    }

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("ELS_BRIDGE_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let logs = if json {
        tracing_subscriber::fmt::layer().json().flatten_event(true).with_current_span(true).with_writer(std::io::stderr).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed()
    };
    // Spans of this crate only: the exporter's own HTTP client must not trace itself, and
    // RUST_LOG=warn must not switch tracing off.
    let spans = tracer.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("els-bridge"))
            .with_filter(Targets::new().with_target("els_bridge", Level::INFO))
    });
    tracing_subscriber::registry().with(logs.with_filter(filter).with_filter(without_secrets())).with(spans).init();
    for problem in problems {
        tracing::warn!("OpenTelemetry: {problem}");
    }
    if let Some(endpoint) = tracer.as_ref().and(shown_endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
        tracing::debug!(endpoint, "exporting spans over OTLP/HTTP");
    }
    Telemetry { tracer, meter }
}

/// What no log may show, whatever `RUST_LOG` asks for: lapin's and amq-protocol's `trace`
/// events print whole AMQP frames (the `Connection.StartOk` with the broker password, stream
/// bodies with access tokens), lapin's warning about a returned message prints the message
/// (this crate handles returns and says what was returned), and lapin's "Connection error"
/// at ERROR comes with every clean close (this crate logs a lost connection itself).
fn without_secrets() -> Targets {
    Targets::new()
        .with_default(Level::TRACE)
        .with_target("lapin", Level::DEBUG)
        .with_target("amq_protocol", Level::DEBUG)
        .with_target("amq_protocol_types", Level::DEBUG)
        .with_target("lapin::returned_messages", tracing::level_filters::LevelFilter::OFF)
        .with_target("lapin::channels", tracing::level_filters::LevelFilter::OFF)
}

/// The SDK's resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, telemetry SDK),
/// named `els-bridge` unless the environment names it, with this build's version.
pub fn resource() -> Resource {
    let detected = Resource::builder().build();
    let unnamed = match detected.get(&opentelemetry::Key::from_static_str("service.name")) {
        Some(Value::String(name)) => name.as_str().starts_with("unknown_service"),
        _ => true,
    };
    let mut builder = Resource::builder();
    if unnamed {
        builder = builder.with_service_name(DEFAULT_SERVICE_NAME);
    }
    if detected.get(&opentelemetry::Key::from_static_str("service.version")).is_none() {
        builder = builder.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    }
    builder.build()
}

/// Whether OTLP export of a signal is wanted: the SDK is not disabled and the signal's
/// `OTEL_*_EXPORTER` is not `none`.
fn signal_enabled(exporter_variable: &str) -> bool {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let none = std::env::var(exporter_variable).is_ok_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !disabled && !none
}

/// Whether the generic or the signal's OTLP endpoint variable is set (and not blank).
fn endpoint_set(signal_variable: &str) -> bool {
    [signal_variable, "OTEL_EXPORTER_OTLP_ENDPOINT"].iter().any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

/// The endpoint for a debug log line, without any user information.
fn shown_endpoint(signal_variable: &str) -> Option<String> {
    let value = [signal_variable, "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))?;
    Some(match value.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.rsplit_once('@').map_or(rest, |(_, host)| host)),
        None => value,
    })
}
