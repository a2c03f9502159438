//! Settling deliveries: the one place that decides what an upload's outcome does to each
//! delivery, and the broker operations that carry it out.
//!
//! | outcome | what happens to the deliveries |
//! |---|---|
//! | accepted (1, 17) | acked |
//! | refused (8, 12–16), after bisection down to the row | dead-lettered `rejected` with returnCode and message |
//! | transient (6, 7, HTTP 5xx, timeouts, connection errors, non-JSON, unknown codes, 5 twice) | parked in a delay queue for the next backoff step, counting an attempt; after `retry.max_elapsed_secs` since the first failure, dead-lettered `exhausted` |
//! | configuration (2, 3, 4, 30, HTTP 401/403/404/405) | the institution is held: parked without counting an attempt until the next probe (backoff up to `retry.max_backoff_ms`) |
//! | transient, the third in a row for the institution | as transient, and the institution is held as failing: its next batches are parked with an attempt counted, unsent, while one at a time probes ([`super::holds`]) |
//! | daily limit (11) | the institution is held until Beijing midnight; parked until then |
//!
//! Deliveries to ack are not acked here: the settler reports them in a [`Settlement`] and
//! the session acks them, together where it can ([`super::acks`]). Parking and
//! dead-lettering publish a copy with a broker confirm first (a batch's copies under one
//! confirm window) and ack the original only then, here and at once; a copy the broker does
//! not take is tried again, then the original is handed back to the work queue (requeued:
//! at least once, never lost, and never held until the broker's consumer timeout).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::future::join_all;
use lapin::Acker;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::acks::Tag;
use super::holds::Holds;
use crate::broker::publisher::{copy_properties, fit_headers};
use crate::broker::{Publisher, Topology};
use crate::contract::{Reason, RetryState, header, rfc3339};
use crate::event;
use crate::platform::Outcome;
use crate::retry::Backoff;
use crate::upload::Settled;

use super::lanes::Carried;

/// How often a copy to a delay or the dead-letter queue is published before its original
/// is handed back to the work queue.
const COPY_TRIES: u32 = 3;
/// The pause after the first failed copy (then four times longer each time).
const COPY_RETRY_PAUSE: Duration = Duration::from_millis(250);

/// What settling did to each delivery, for the session's acks. A delivery in neither list
/// stays unacked until its channel closes (its copy could not be published).
#[derive(Debug, Default)]
pub struct Settlement {
    /// Deliveries the session is to ack (their records were accepted or superseded).
    pub to_ack: Vec<(Tag, Acker)>,
    /// Deliveries acked here already (a copy took their place in another queue).
    pub acked: Vec<Tag>,
}

impl Settlement {
    /// Adds what another settlement did.
    pub fn add(&mut self, other: Settlement) {
        self.to_ack.extend(other.to_ack);
        self.acked.extend(other.acked);
    }

    /// All of `deliveries`, for the session to ack.
    fn acking<'a>(deliveries: impl Iterator<Item = &'a Delivery>) -> Self {
        Settlement { to_ack: deliveries.map(|d| (d.delivery_tag, d.acker.clone())).collect(), acked: Vec::new() }
    }

    /// The deliveries that were settled here, of `moved` (each with what became of it).
    fn moved<'a>(moved: impl Iterator<Item = (&'a Delivery, Moved)>) -> Self {
        Settlement { to_ack: Vec::new(), acked: moved.filter(|(_, m)| m.settled()).map(|(d, _)| d.delivery_tag).collect() }
    }
}

/// What became of a delivery that was to be moved to another queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moved {
    /// Its copy was confirmed and the original acked.
    Copied,
    /// The copy failed; the original was handed back to the work queue.
    HandedBack,
    /// Its channel is gone: the broker redelivers it.
    Unsettled,
}

impl Moved {
    /// Whether the delivery no longer waits for an ack of this session.
    fn settled(self) -> bool {
        self != Moved::Unsettled
    }
}

/// Carries out settlements on the broker.
#[derive(Clone)]
pub struct Settler {
    publisher: Publisher,
    topology: Topology,
    backoff: Backoff,
    holds: Holds,
    /// The configured institution codes, for the labels of events that may be invalid.
    institutions: Arc<[String]>,
}

impl Settler {
    /// A settler publishing with `publisher` into `topology`.
    pub fn new(publisher: Publisher, topology: Topology, backoff: Backoff, holds: Holds, institutions: Arc<[String]>) -> Self {
        Settler { publisher, topology, backoff, holds, institutions }
    }

    /// Settles every delivery of an upload of `institution` by its outcome (the table in
    /// the module doc).
    pub async fn settle(&self, institution: &str, settled: Vec<Settled<Carried<Delivery>>>) -> Settlement {
        let mut settlement = Settlement::default();
        for group in settled {
            match group {
                Settled::Accepted { rows, msgid, .. } => {
                    self.holds.release(institution);
                    tracing::debug!(%institution, %msgid, rows = rows.len(), "accepted");
                    if let Some(first) = rows.first() {
                        let merged: usize = rows.iter().map(|row| row.source.deliveries.len().saturating_sub(1)).sum();
                        crate::telemetry::metrics::accepted(institution, first.record.infno(), rows.len(), merged);
                    }
                    settlement.add(Settlement::acking(rows.iter().flat_map(|row| row.source.deliveries.iter())));
                }
                Settled::Refused { row, code, message } => {
                    self.holds.release(institution);
                    let error = format!("the platform refused record {}: returnCode {code}: {message}", row.record.key());
                    let moved = join_all(row.source.deliveries.iter().map(|delivery| {
                        let attempts = RetryState::of(delivery.properties.headers().as_ref()).attempts.saturating_add(1);
                        self.dead_letter(delivery, Reason::Rejected, &error, Some(code), attempts)
                    }))
                    .await;
                    settlement.add(Settlement::moved(row.source.deliveries.iter().zip(moved)));
                }
                Settled::Unsettled { rows, outcome } => {
                    let deliveries: Vec<&Delivery> = rows.iter().flat_map(|row| row.source.deliveries.iter()).collect();
                    match &outcome {
                        Outcome::Misconfigured { .. } => {
                            let wait = self.holds.hold_misconfigured(institution, &outcome.to_string());
                            settlement.add(self.hold(&deliveries, wait).await);
                        }
                        Outcome::DailyLimit => {
                            let wait = self.holds.hold_until_midnight(institution);
                            settlement.add(self.hold(&deliveries, wait).await);
                        }
                        _ => {
                            if matches!(outcome, Outcome::Transient { .. }) {
                                self.holds.failed(institution, &outcome.to_string());
                            }
                            let moved =
                                join_all(deliveries.iter().map(|delivery| self.retry_later(delivery, &outcome, Duration::ZERO))).await;
                            settlement.add(Settlement::moved(deliveries.into_iter().zip(moved)));
                        }
                    }
                }
            }
        }
        settlement
    }

    /// Settles deliveries whose record is older than what was uploaded: to be acked,
    /// counted in the log, never an error.
    pub fn superseded(&self, institution: &str, rows: &[crate::upload::Row<Carried<Delivery>>]) -> Settlement {
        if let Some(first) = rows.first() {
            let deliveries = rows.iter().map(|row| row.source.deliveries.len()).sum();
            crate::telemetry::metrics::superseded(institution, first.record.infno(), deliveries);
        }
        for row in rows {
            tracing::info!(%institution, key = row.record.key(), version = ?row.source.version, "superseded: a newer version of this record was uploaded");
        }
        Settlement::acking(rows.iter().flat_map(|row| row.source.deliveries.iter()))
    }

    /// Dead-letters an invalid event (never sent).
    pub async fn invalid(&self, delivery: &Delivery, error: &str) -> Settlement {
        let acked = self.dead_letter(delivery, Reason::Invalid, error, None, 0).await;
        Settlement::moved(std::iter::once((delivery, acked)))
    }

    /// Parks deliveries of a held institution until its next probe, counting no attempt.
    pub async fn hold(&self, deliveries: &[&Delivery], wait: Duration) -> Settlement {
        let moved = join_all(deliveries.iter().map(|delivery| self.park(delivery, wait))).await;
        Settlement::moved(deliveries.iter().copied().zip(moved))
    }

    /// Parks deliveries of an institution held as failing for at least `wait`, counting an
    /// attempt that failed for `reason` (or dead-letters them past the retry budget): they
    /// were not sent, since the platform fails for their institution.
    pub async fn not_sent(&self, deliveries: &[&Delivery], wait: Duration, reason: &str) -> Settlement {
        let outcome = Outcome::Transient { code: None, message: format!("not sent: {reason}") };
        let moved = join_all(deliveries.iter().map(|delivery| self.retry_later(delivery, &outcome, wait))).await;
        Settlement::moved(deliveries.iter().copied().zip(moved))
    }

    /// Counts a failed attempt and parks the delivery for the next backoff step (at least
    /// `at_least`), or dead-letters it as `exhausted` past the retry budget.
    async fn retry_later(&self, delivery: &Delivery, outcome: &Outcome, at_least: Duration) -> Moved {
        let state = RetryState::of(delivery.properties.headers().as_ref());
        let now = Utc::now();
        let first = state.first_failed_at.unwrap_or(now);
        let attempts = state.attempts.saturating_add(1);
        let failing_for = (now - first).to_std().unwrap_or_default();
        if failing_for >= self.backoff.max_elapsed {
            let error = format!("failing for {}s over {attempts} attempts; the last: {outcome}", failing_for.as_secs());
            return self.dead_letter(delivery, Reason::Exhausted, &error, outcome.return_code(), attempts).await;
        }
        let wait = self.backoff.delay(attempts).max(at_least);
        let mut headers = own_headers(delivery);
        put(&mut headers, header::ATTEMPTS, AMQPValue::LongLongInt(attempts.into()));
        put(&mut headers, header::FIRST_FAILED_AT, text(&rfc3339(first)));
        put(&mut headers, header::LAST_FAILED_AT, text(&rfc3339(now)));
        put(&mut headers, header::ERROR, text(&excerpt_long(&outcome.to_string())));
        put(&mut headers, header::PARKED_UNTIL, text(&rfc3339(now + wait)));
        tracing::debug!(attempts, wait_ms = wait.as_millis() as u64, "retrying later: {outcome}");
        let moved = self.republish(delivery, &self.topology.delay_queue(wait), headers, Some(wait)).await;
        if moved == Moved::Copied {
            let labels = event::labels(&delivery.data, &self.institutions);
            crate::telemetry::metrics::parked_for_retry(labels.institution.as_deref());
        }
        moved
    }

    /// Moves a delivery to a delay queue for `wait`, headers unchanged.
    async fn park(&self, delivery: &Delivery, wait: Duration) -> Moved {
        let mut headers = own_headers(delivery);
        if RetryState::of(delivery.properties.headers().as_ref()) != RetryState::default() {
            // Keeps the retry state trusted when the copy comes back.
            put(&mut headers, header::PARKED_UNTIL, text(&rfc3339(Utc::now() + wait)));
        }
        self.republish(delivery, &self.topology.delay_queue(wait), headers, Some(wait)).await
    }

    /// Publishes a dead letter (contract §2) and acks the original once it is confirmed.
    async fn dead_letter(&self, delivery: &Delivery, reason: Reason, error: &str, return_code: Option<u32>, attempts: u32) -> Moved {
        let state = RetryState::of(delivery.properties.headers().as_ref());
        let now = Utc::now();
        let mut headers = own_headers(delivery);
        let error = excerpt_long(error);
        put(&mut headers, header::REASON, text(reason.as_str()));
        put(&mut headers, header::ERROR, text(&error));
        if let Some(code) = return_code {
            put(&mut headers, header::RETURN_CODE, AMQPValue::LongLongInt(code.into()));
        }
        put(&mut headers, header::ATTEMPTS, AMQPValue::LongLongInt(attempts.into()));
        put(&mut headers, header::FIRST_FAILED_AT, text(&rfc3339(state.first_failed_at.unwrap_or(now))));
        put(&mut headers, header::LAST_FAILED_AT, text(&rfc3339(now)));
        tracing::warn!(reason = reason.as_str(), message_id = ?delivery.properties.message_id(), "dead-lettering: {error}");
        let queue = self.topology.dead_letter_queue.clone();
        let moved = self.republish(delivery, &queue, headers, None).await;
        if moved == Moved::Copied {
            let labels = event::labels(&delivery.data, &self.institutions);
            crate::telemetry::metrics::dead_lettered(labels.institution.as_deref(), labels.infno, reason.as_str());
        }
        moved
    }

    /// Publishes the delivery's body and properties with `headers` to `queue` (optionally
    /// expiring after `expire`), then acks the original. A copy the broker does not confirm
    /// (refused, returned because the queue is missing, an unavailable quorum queue) is
    /// tried again [`COPY_TRIES`] times; then the original is handed back (requeued) rather
    /// than held unacked until the broker's consumer timeout.
    async fn republish(&self, delivery: &Delivery, queue: &str, headers: FieldTable, expire: Option<Duration>) -> Moved {
        let headers = fit_headers(headers, self.publisher.frame_max());
        let mut properties = copy_properties(&delivery.properties, headers);
        if let Some(wait) = expire {
            properties = properties.with_expiration(wait.as_millis().max(1).to_string().into());
        }
        let mut pause = COPY_RETRY_PAUSE;
        for attempt in 1..=COPY_TRIES {
            match self.publisher.publish("", queue, &delivery.data, properties.clone()).await {
                Ok(()) => {
                    ack(delivery).await;
                    return Moved::Copied;
                }
                Err(error) if attempt < COPY_TRIES => {
                    tracing::debug!(queue, attempt, "the broker did not take a copy ({error}); trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 4;
                }
                Err(error) => {
                    tracing::warn!(queue, "could not move a message to {queue} ({error}); handing it back to the work queue");
                }
            }
        }
        let requeue = BasicNackOptions { requeue: true, multiple: false };
        match delivery.acker.nack(requeue).await {
            Ok(_) => {
                crate::telemetry::metrics::deliveries_settled(1);
                Moved::HandedBack
            }
            Err(error) => {
                tracing::debug!("handing a message back failed, the broker will redeliver it: {error}");
                Moved::Unsettled
            }
        }
    }
}

/// Acks a delivery; if its channel is gone the broker redelivers it, which is safe.
async fn ack(delivery: &Delivery) {
    send_ack(&delivery.acker, BasicAckOptions::default(), 1).await;
}

/// Sends one ack settling `deliveries` deliveries; if the channel is gone the broker
/// redelivers them, which is safe.
pub async fn send_ack(acker: &Acker, options: BasicAckOptions, deliveries: usize) {
    crate::telemetry::metrics::deliveries_settled(deliveries);
    if let Err(error) = acker.ack(options).await {
        tracing::debug!("ack failed, the message will be redelivered: {error}");
    }
}

/// The delivery's headers (empty when it has none).
fn own_headers(delivery: &Delivery) -> FieldTable {
    delivery.properties.headers().clone().unwrap_or_default()
}

fn put(headers: &mut FieldTable, name: &str, value: AMQPValue) {
    headers.insert(ShortString::from(name), value);
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// The most characters of an error text in a header or a log line.
const ERROR_CHARS: usize = 1000;

/// Error texts in headers and log lines are kept to a readable size, saying how much was cut.
fn excerpt_long(text: &str) -> String {
    crate::spec::field::excerpt_counted(text, ERROR_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_error_texts_are_cut_and_say_by_how_much() {
        assert_eq!(excerpt_long("short"), "short");
        let cut = excerpt_long(&"x".repeat(1500));
        assert!(cut.ends_with("… (500 more characters)"), "{}", &cut[990..]);
        assert_eq!(cut.chars().filter(|c| *c == 'x').count(), ERROR_CHARS);
    }
}
