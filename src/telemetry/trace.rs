//! W3C trace context through the broker, and what a batch tells its upload spans.
//!
//! A publisher (the HIS's integration) may put `traceparent` and
//! `tracestate` in an event's AMQP headers. The worker reads them when it takes a batch to
//! the platform and ties the batch's `upload` spans to them:
//!
//! - when the events of a batch that carry a context all carry the **same** one (a single
//!   event, or a HIS that published a whole delivery note under one trace), that context is
//!   the **parent** of each `upload` span: the platform call shows up inside the HIS's trace;
//! - when they carry **several**, each `upload` span starts a trace of its own with a
//!   **link** to every distinct context (at most [`MAX_LINKS`]), as the OpenTelemetry
//!   messaging conventions do for batches: one call cannot have a hundred parents, and a
//!   trace viewer follows links both ways.
//!
//! Headers that are absent or malformed are ignored. The batch's context reaches
//! [`crate::upload`] through a task-local ([`BatchTrace::scope`]), so the uploader stays
//! independent of where its rows come from (`send` uploads file lines, without any).

use std::future::Future;

use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::contract::RetryState;

/// Links one upload span may carry (the SDK's default span limit).
pub const MAX_LINKS: usize = 128;

/// What the deliveries of one batch tell its upload spans.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchTrace {
    /// The upload attempt of the batch: 1 plus the most failed attempts any of its
    /// deliveries carries (`x-els-attempts`).
    pub attempt: u32,
    /// The distinct remote contexts of its events, in delivery order.
    pub contexts: Vec<SpanContext>,
}

tokio::task_local! {
    static BATCH: BatchTrace;
}

impl BatchTrace {
    /// Reads the retry state and trace context of every delivery of a batch.
    pub fn of<'a>(deliveries: impl IntoIterator<Item = &'a Delivery>) -> Self {
        let mut trace = BatchTrace { attempt: 1, contexts: Vec::new() };
        for delivery in deliveries {
            let headers = delivery.properties.headers().as_ref();
            trace.attempt = trace.attempt.max(RetryState::of(headers).attempts.saturating_add(1));
            if let Some(context) = headers.and_then(remote_context)
                && trace.contexts.len() < MAX_LINKS
                && !trace.contexts.iter().any(|c| c.trace_id() == context.trace_id() && c.span_id() == context.span_id())
            {
                trace.contexts.push(context);
            }
        }
        trace
    }

    /// Runs `future` (the batch's upload) with this context for its upload spans.
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        BATCH.scope(self, future).await
    }
}

/// The upload attempt of the batch being uploaded (1 outside a worker batch).
pub fn attempt() -> u32 {
    BATCH.try_with(|batch| batch.attempt).unwrap_or(1)
}

/// Ties a new upload span to the batch's remote contexts: parent when there is one, links
/// when there are several (see the module documentation). Call right after creating it.
pub fn adopt(span: &tracing::Span) {
    let _ = BATCH.try_with(|batch| match batch.contexts.as_slice() {
        [] => {}
        [only] => {
            let _ = span.set_parent(Context::new().with_remote_span_context(only.clone()));
        }
        several => {
            for context in several {
                span.add_link(context.clone());
            }
        }
    });
}

/// The W3C trace context in AMQP headers, if valid.
pub fn remote_context(headers: &FieldTable) -> Option<SpanContext> {
    let context = TraceContextPropagator::new().extract_with_context(&Context::new(), &Headers(headers));
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.clone())
}

/// AMQP headers as a propagator's carrier.
struct Headers<'a>(&'a FieldTable);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
            AMQPValue::ShortString(value) => Some(value.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(ShortString::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::LongString;
    use opentelemetry::propagation::Injector;

    /// AMQP headers a test writes a trace context into.
    struct HeadersMut<'a>(&'a mut FieldTable);

    impl Injector for HeadersMut<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(ShortString::from(key), AMQPValue::LongString(LongString::from(value)));
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (key, value) in pairs {
            table.insert(ShortString::from(*key), AMQPValue::LongString(LongString::from(*value)));
        }
        table
    }

    #[test]
    fn a_valid_traceparent_is_read_and_a_malformed_one_ignored() {
        let table = headers(&[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), ("tracestate", "his=1")]);
        let context = remote_context(&table).unwrap();
        assert_eq!(context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(context.is_remote() && context.is_sampled());
        assert_eq!(context.trace_state().header(), "his=1");
        assert!(remote_context(&headers(&[("traceparent", "00-zz-00f067aa0ba902b7-01")])).is_none());
        assert!(remote_context(&headers(&[("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01")])).is_none());
        assert!(remote_context(&FieldTable::default()).is_none());
    }

    #[test]
    fn injected_headers_are_read_back() {
        let context = SpanContext::new(
            opentelemetry::trace::TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            opentelemetry::trace::SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            opentelemetry::trace::TraceFlags::SAMPLED,
            true,
            Default::default(),
        );
        let mut table = FieldTable::default();
        TraceContextPropagator::new()
            .inject_context(&Context::new().with_remote_span_context(context.clone()), &mut HeadersMut(&mut table));
        assert_eq!(remote_context(&table).map(|c| (c.trace_id(), c.span_id())), Some((context.trace_id(), context.span_id())));
    }

    #[tokio::test]
    async fn attempt_is_one_outside_a_batch_and_the_batchs_inside() {
        assert_eq!(attempt(), 1);
        let trace = BatchTrace { attempt: 4, contexts: Vec::new() };
        assert_eq!(trace.scope(async { attempt() }).await, 4);
    }
}
