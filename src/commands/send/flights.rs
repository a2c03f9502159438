//! The calls of a `send` run in flight: up to `batch.max_in_flight_per_institution` batches
//! at once, each retried with backoff until it is settled, and no batch started while an
//! earlier one holding one of its keys is still unsettled, so that a later row of a key
//! never overtakes an earlier one.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

use super::Origin;
use super::link::Link;
use crate::config::{Config, Institution};
use crate::platform::Outcome;
use crate::retry::Backoff;
use crate::spec::Infno;
use crate::upload::{Row, Settled, claimed};

/// A batch of one input file on its way to the platform, with its retry state.
pub(super) struct Flight {
    /// The input file's position among the run's files.
    pub(super) file: usize,
    /// The rows not settled yet.
    pub(super) rows: Vec<Row<Origin>>,
    attempt: u32,
    first_failure: Option<Instant>,
}

impl Flight {
    /// A batch of `file` not tried yet.
    pub(super) fn new(file: usize, rows: Vec<Row<Origin>>) -> Flight {
        Flight { file, rows, attempt: 0, first_failure: None }
    }
}

/// What one attempt of a flight came back with.
pub(super) struct Landing {
    /// The flight, its rows taken out into `settled` and `superseded`.
    pub(super) flight: Flight,
    /// Rows not sent: the ledger holds a newer version of their key.
    pub(super) superseded: Vec<Row<Origin>>,
    /// What became of the rows sent.
    pub(super) settled: Vec<Settled<Origin>>,
    /// Platform calls made.
    pub(super) calls: u64,
}

/// What to do with the unsettled rows of a landing.
pub(super) enum Verdict {
    /// Try them again after this delay.
    Retry(Duration),
    /// Stop the run for this reason: nothing more is uploaded.
    Stop(String),
}

type InFlight<'c> = FuturesUnordered<Pin<Box<dyn Future<Output = Landing> + Send + 'c>>>;

/// The flights of one run, and the keys they hold.
pub(super) struct Flights<'c> {
    config: &'c Config,
    institution: &'c Institution,
    infno: Infno,
    link: Arc<Link>,
    /// Links replaced after a lost connection, closed at the end.
    retired: Vec<Arc<Link>>,
    backoff: Backoff,
    cap: usize,
    cancel: CancellationToken,
    in_flight: InFlight<'c>,
    /// Rows in unsettled flights, per record key.
    keys: HashMap<String, usize>,
}

impl<'c> Flights<'c> {
    /// No flight yet, uploading through `link`.
    pub(super) fn new(config: &'c Config, institution: &'c Institution, infno: Infno, link: Link, backoff: Backoff) -> Self {
        let cancel = CancellationToken::new();
        let cap = config.batch.max_in_flight_per_institution.max(1);
        let (link, in_flight, keys) = (Arc::new(link), FuturesUnordered::new(), HashMap::new());
        Flights { config, institution, infno, link, retired: Vec::new(), backoff, cap, cancel, in_flight, keys }
    }

    /// Cancelled on SIGINT or SIGTERM: waiting retries give up, calls under way finish.
    pub(super) fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Whether `rows` may start now: fewer flights than the cap, none holding their keys.
    pub(super) fn may_start(&self, rows: &[Row<Origin>]) -> bool {
        self.in_flight.len() < self.cap && !rows.iter().any(|r| self.keys.contains_key(r.record.key()))
    }

    /// Whether nothing is in flight.
    pub(super) fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Starts `flight` (the caller has waited for [`Flights::may_start`]).
    pub(super) async fn start(&mut self, flight: Flight) {
        for row in &flight.rows {
            *self.keys.entry(row.record.key().to_owned()).or_default() += 1;
        }
        self.launch(flight, Duration::ZERO).await;
    }

    /// The next flight to come back, if any is in flight.
    pub(super) async fn next_landing(&mut self) -> Option<Landing> {
        self.in_flight.next().await
    }

    /// Forgets the keys of rows that are settled for good.
    pub(super) fn settled<'r>(&mut self, rows: impl IntoIterator<Item = &'r Row<Origin>>) {
        for row in rows {
            if let Some(count) = self.keys.get_mut(row.record.key()) {
                *count -= 1;
                if *count == 0 {
                    self.keys.remove(row.record.key());
                }
            }
        }
    }

    /// What to do with `rows` of `flight`, unsettled by `outcome`: retry with backoff, or
    /// stop the run (configuration, daily limit, the retry budget spent, interrupted).
    pub(super) fn verdict(&self, flight: &mut Flight, outcome: &Outcome) -> Verdict {
        if matches!(outcome, Outcome::Misconfigured { .. } | Outcome::DailyLimit) {
            tracing::error!(institution = %self.institution.fixmedins_code, "stopping: {outcome}");
            return Verdict::Stop(outcome.to_string());
        }
        if self.cancel.is_cancelled() {
            return Verdict::Stop("interrupted before upload".into());
        }
        let since = *flight.first_failure.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.backoff.max_elapsed {
            return Verdict::Stop(format!("transient failures for {}s, the last: {outcome}", since.elapsed().as_secs()));
        }
        flight.attempt += 1;
        let wait = self.backoff.delay(flight.attempt);
        tracing::warn!(rows = flight.rows.len(), "upload failed, retrying in {:.1}s: {outcome}", wait.as_secs_f64());
        Verdict::Retry(wait)
    }

    /// Tries `flight` again after `wait`.
    pub(super) async fn retry(&mut self, flight: Flight, wait: Duration) {
        self.launch(flight, wait).await;
    }

    /// Sends `flight` after `wait` through the current link, connecting again first when
    /// it was lost; if that fails, the flight comes back unsettled (transient).
    async fn launch(&mut self, mut flight: Flight, wait: Duration) {
        let rows = std::mem::take(&mut flight.rows);
        let (institution, infno, cancel) = (self.institution, self.infno, self.cancel.clone());
        let future: Pin<Box<dyn Future<Output = Landing> + Send + 'c>> = match self.current_link().await {
            Err(message) => {
                let settled = vec![Settled::Unsettled { rows, outcome: Outcome::Transient { code: None, message } }];
                Box::pin(async move { Landing { flight, superseded: Vec::new(), settled, calls: 0 } })
            }
            Ok(link) => Box::pin(async move {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = cancel.cancelled() => {
                        let outcome = Outcome::Transient { code: None, message: "interrupted".into() };
                        return Landing { flight, superseded: Vec::new(), settled: vec![Settled::Unsettled { rows, outcome }], calls: 0 };
                    }
                }
                attempt(&link, institution, infno, flight, rows).await
            }),
        };
        self.in_flight.push(future);
    }

    /// The link to send through: the current one, or a new one when it was lost.
    async fn current_link(&mut self) -> Result<Arc<Link>, String> {
        if self.link.lost() {
            tracing::warn!("the broker connection was lost; connecting again");
            let link = Link::open(self.config).await.map_err(|e| format!("the broker of [amqp] cannot be used: {e:#}"))?;
            self.retired.push(std::mem::replace(&mut self.link, Arc::new(link)));
        }
        Ok(Arc::clone(&self.link))
    }

    /// Closes every link, once nothing is in flight.
    pub(super) async fn close(self) {
        drop(self.in_flight);
        for link in self.retired.into_iter().chain([self.link]) {
            if let Ok(link) = Arc::try_unwrap(link) {
                link.close().await;
            }
        }
    }
}

/// One attempt of `rows`: claimed in the ledger with a broker, else straight to the platform.
async fn attempt(link: &Link, institution: &Institution, infno: Infno, flight: Flight, rows: Vec<Row<Origin>>) -> Landing {
    let mut calls = 0;
    let (superseded, settled) = match &link.ledger {
        Some(ledger) => {
            let claimed = claimed::upload(ledger, &link.uploader, institution, infno, rows, &mut calls).await;
            (claimed.superseded, claimed.settled)
        }
        None => (Vec::new(), link.uploader.upload(institution, rows, &mut calls).await),
    };
    Landing { flight, superseded, settled, calls }
}
