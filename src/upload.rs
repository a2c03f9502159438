//! Uploading one batch: get the shared token, send, resend once with a new token on code 5,
//! split on 28, and **bisect** a refused batch until only the refused rows are left, so that
//! every other row still reaches the platform. The platform never says which row it
//! refused, so halving is the only way to find out.
//!
//! What to do about failures that are not about the data (retry later, hold the
//! institution) is the caller's decision: those rows come back [`Settled::Unsettled`].

pub mod claimed;
pub mod concurrency;
mod limiter;

use std::time::{Duration, Instant};

use tracing::Instrument;

use self::concurrency::Sample;
use self::limiter::Limiters;

use crate::config::Institution;
use crate::platform::{Call, Outcome, PlatformClient, Tokens};
use crate::spec::Record;

/// A record on its way to the platform, with whatever identifies where it came from
/// (a file line for `send`, a broker delivery for the worker).
#[derive(Debug, Clone)]
pub struct Row<T> {
    /// The validated record.
    pub record: Record,
    /// Its origin.
    pub source: T,
}

/// What became of the rows of a batch.
#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "a handful per batch, short-lived; boxing the row buys nothing")]
pub enum Settled<T> {
    /// At the platform with the call's msgid and returnCode (1, or 17 for a duplicate).
    Accepted { rows: Vec<Row<T>>, msgid: String, return_code: u32 },
    /// Refused by the platform on its own: a person must look at it.
    Refused { row: Row<T>, code: u32, message: String },
    /// Not settled: the platform failed for a reason that is not about these rows
    /// (transient, configuration, daily limit); the caller retries or holds them.
    Unsettled { rows: Vec<Row<T>>, outcome: Outcome },
}

/// Uploads batches of one institution and transaction with the shared token.
#[derive(Clone)]
pub struct Uploader {
    client: PlatformClient,
    tokens: Tokens,
    cap: Option<Limiters>,
    /// Longest time one batch may take, bisection included (`batch.max_upload_secs`).
    time_limit: Option<Duration>,
}

impl Uploader {
    /// An uploader sending with `client` and tokens from `tokens`, without a cap on calls
    /// in flight.
    pub fn new(client: PlatformClient, tokens: Tokens) -> Self {
        Uploader { client, tokens, cap: None, time_limit: None }
    }

    /// The same, giving up on a batch after `limit`: the rows not settled by then come back
    /// unsettled (transient), to be retried later.
    pub fn with_time_limit(self, limit: Duration) -> Self {
        Uploader { time_limit: Some(limit), ..self }
    }

    /// The same, with exactly `per_institution` calls in flight per institution at most,
    /// over all clones (`batch.max_in_flight_per_institution`).
    pub fn with_cap(self, per_institution: usize) -> Self {
        self.with_concurrency(per_institution, false)
    }

    /// The same, with at most `cap` calls in flight per institution over all clones; if
    /// `adaptive`, the limit moves between 1 and `cap` with the platform's round trip
    /// (`batch.adaptive_concurrency`, see [`concurrency`]). Only the calls count (token,
    /// request, resend on code 5): a batch holds a slot while it talks to the platform, not
    /// while it waits for the ledger or settles.
    pub fn with_concurrency(self, cap: usize, adaptive: bool) -> Self {
        Uploader { cap: Some(Limiters::new(cap, adaptive)), ..self }
    }

    /// Uploads `rows` (one institution, one infno, at most 100), splitting and bisecting as
    /// needed. Returns every row exactly once, in settled groups; calls made are counted
    /// in `calls`.
    pub async fn upload<T>(&self, institution: &Institution, rows: Vec<Row<T>>, calls: &mut u64) -> Vec<Settled<T>> {
        let mut settled = Vec::new();
        let started = Instant::now();
        // Depth-first, first half first, so rows reach the platform in their order.
        let mut work = vec![rows];
        while let Some(batch) = work.pop() {
            if batch.is_empty() {
                continue;
            }
            if let Some(limit) = self.time_limit.filter(|limit| started.elapsed() > *limit) {
                let mut rows = batch;
                rows.extend(work.drain(..).rev().flatten());
                let message = format!(
                    "the upload took longer than {} s (batch.max_upload_secs); {} row(s) not settled yet are retried later",
                    limit.as_secs(),
                    rows.len()
                );
                settled.push(Settled::Unsettled { rows, outcome: Outcome::Transient { code: None, message } });
                break;
            }
            let Call { msgid, outcome } = self.attempt(institution, &batch, calls).await;
            match outcome {
                outcome if outcome.is_accepted() => {
                    let return_code = outcome.return_code().unwrap_or(1);
                    settled.push(Settled::Accepted { rows: batch, msgid, return_code });
                }
                Outcome::Refused { code, message } if batch.len() == 1 => {
                    let row = batch.into_iter().next().expect("one row");
                    tracing::warn!(key = row.record.key(), code, %message, "the platform refused a record");
                    settled.push(Settled::Refused { row, code, message });
                }
                Outcome::Refused { .. } | Outcome::TooManyRows if batch.len() > 1 => {
                    let mut first = batch;
                    let second = first.split_off(first.len() / 2);
                    work.push(second);
                    work.push(first);
                }
                outcome => {
                    // Not about the data: the rest would fail alike; leave it all to the caller.
                    let mut rows = batch;
                    rows.extend(work.drain(..).rev().flatten());
                    settled.push(Settled::Unsettled { rows, outcome });
                }
            }
        }
        settled
    }

    /// One call with the current token; on code 5, one more with a new token.
    async fn attempt<T>(&self, institution: &Institution, batch: &[Row<T>], calls: &mut u64) -> Call {
        let infno = batch[0].record.infno();
        let span = tracing::info_span!(
            "upload",
            institution = %institution.fixmedins_code,
            %infno,
            rows = batch.len(),
            attempt = crate::telemetry::trace::attempt(),
            msgid = tracing::field::Empty,
            return_code = tracing::field::Empty,
        );
        crate::telemetry::trace::adopt(&span);
        async {
            // One slot for both tries (the resend on code 5 included).
            let slot = match &self.cap {
                Some(cap) => Some(cap.acquire(&institution.fixmedins_code).await),
                None => None,
            };
            let mut call = None;
            for _ in 0..2 {
                let token = match self.tokens.get(institution).await {
                    Ok(token) => token,
                    Err(error) => return Call { msgid: String::new(), outcome: error.as_outcome() },
                };
                *calls += 1;
                let metric = crate::telemetry::metrics::upload_started(&institution.fixmedins_code, infno);
                let sent = Instant::now();
                let this = self.client.upload(institution, infno, &token.value, batch.iter().map(|r| &r.record)).await;
                metric.answered(batch.len(), this.outcome.kind(), this.outcome.return_code());
                if let Some(slot) = &slot {
                    slot.observe(sample(&this.outcome, sent.elapsed()));
                }
                tracing::Span::current().record("msgid", this.msgid.as_str());
                if let Some(code) = this.outcome.return_code() {
                    tracing::Span::current().record("return_code", code);
                }
                tracing::debug!(outcome = %this.outcome, "upload answered");
                if this.outcome != Outcome::TokenInvalid {
                    return this;
                }
                if let Err(error) = self.tokens.invalidate(institution, &token).await {
                    return Call { msgid: this.msgid, outcome: Outcome::Transient { code: None, message: error.to_string() } };
                }
                call = Some(this);
            }
            call.expect("two attempts made")
        }
        .instrument(span)
        .await
    }
}

/// What an upload's outcome tells the concurrency controller: timeouts and transient
/// failures are the platform's back-pressure, any other answer a round trip.
fn sample(outcome: &Outcome, round_trip: Duration) -> Sample {
    match outcome {
        Outcome::Transient { .. } => Sample::Failed,
        _ => Sample::Answered(round_trip),
    }
}
