//! The receipts ledger: a durable account of every accepted upload, kept on the broker as a
//! stream `<prefix>.ledger` (a [replicated log](crate::broker::log), `x-max-age`
//! `ledger.retention_days`, default 400 days), so the fleet needs no other store. It serves
//! two purposes:
//!
//! * **No stale overwrite** (contract §3). The platform keeps the last row it received for a
//!   key, so an older version must never be sent after a newer one. Every worker folds the
//!   last `ledger.index_days` of the ledger into an [`Index`] of the newest uploaded version
//!   per key, and before an upload, **claims** its keys in the ledger:
//!   1. rows whose version is lower than the index's are *superseded* (not sent), and so
//!      are **copies** of a message accepted before when its key was accepted again since
//!      (a copy is a delivery the broker redelivered, e.g. after acks held back behind an
//!      older delivery were lost with the connection, or one whose publisher named it with
//!      a `message_id`; each receipt row carries its message's [`Fingerprint`]), so that a
//!      copy never overwrites a correction even without versions;
//!   2. the worker appends a `claim` entry with the batch's keys and versions; the stream
//!      orders all claims of the fleet;
//!   3. for each key, an earlier claim of a *higher* version makes this row superseded (the
//!      newer one is on its way); an earlier claim of a lower, equal or unknown version
//!      makes this batch wait until that claim is released (its upload finished), its
//!      holder is gone, or it has expired (after [`CLAIM_TTL`]). Each claim names its
//!      **holder**: an exclusive queue `<prefix>.ledger.holder.<nonce>` of the claiming
//!      connection, which the broker deletes when that connection closes or dies (killed
//!      process, lost network, restarted node; see [`crate::broker::presence`]). A batch
//!      that has waited [`PROBE_AFTER`] asks the broker whether the holders in its way still
//!      exist; the claims of a holder that is gone, or whose node is down, hold nothing up
//!      any more;
//!   4. after the upload, the worker appends a `receipt` for the accepted rows *before*
//!      acking them, then a `release` of the claim.
//!
//!   While an upload lasts (a bisection may take many calls), its claim is **renewed**
//!   every third of the claim TTL; expiry is measured on each reader's own clock from
//!   when it read the claim or its latest renewal, so the replicas' clocks do not matter.
//!
//!   So two versions of a key are never uploaded at the same time by two replicas, and the
//!   later claim sees the earlier one's receipt. What remains possible: a holder stuck
//!   (not uploading, not renewing) with its connection alive blocks its keys for the
//!   claim TTL; an upload
//!   whose answer was lost to a timeout may, in theory, be applied by the platform after
//!   a later one (the platform
//!   gives no way to know); events without `version` are ordered by claim order, i.e.
//!   roughly by delivery, which is all "the later delivery wins" can promise (a new event
//!   without `message_id` that repeats, byte for byte, a message accepted before is
//!   taken for new only if the broker delivers it for the first time); keys and
//!   fingerprints older than the index window (or evicted past `max_index_keys`) are not
//!   protected against a replay of a stale version (the claim order still serialises
//!   racing uploads).
//! * **The hospital's evidence** (`els-bridge report`): receipts carry each row's
//!   quantity, price and movement time, and claims the process that made them, so the
//!   ledger answers for the daily totals ([`report`]), the history of one record
//!   ([`history`]), what the platform holds record by record ([`records`]) and the
//!   comparison with the warehouse system's own export ([`reconcile`]).
//!
//! Entries (`change` of a log entry):
//! `{"claim": {"id", "institution", "infno", "keys": [[key, version|null], ...], "at", "holder", "replica"}}`,
//! `{"receipt": {"claim", "institution", "infno", "msgid", "return_code", "at", "rows": [{"key", "version", "quantity", "price", "time", "fingerprint"}]}}`,
//! `{"release": {"claim"}}`, `{"renew": {"claim"}}` (releases before this one skip a renew
//! entry as unreadable, with a warning: harmless during a rolling upgrade).

pub mod fingerprint;
pub mod history;
pub mod index;
pub mod reconcile;
pub mod records;
pub mod report;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lapin::{Channel, Connection};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::broker::BrokerError;
use crate::broker::log::{Fold, LogError, LogSettings, StreamLog, nonce};
use crate::broker::presence;
use crate::config::LedgerSettings;
use crate::spec::{Infno, Record};

pub use fingerprint::Fingerprint;
pub use index::Index;

/// The default of `ledger.claim_ttl_secs`: a claim neither released nor renewed within
/// this long is treated as abandoned, even if its holder's connection is alive (or the
/// claim names no holder). Measured on each reader's own clock from when it read the
/// claim or its latest renewal.
pub const CLAIM_TTL: Duration = Duration::from_secs(300);
/// How long a batch waits on earlier claims before (and between) asking the broker whether
/// their holders still exist; an upload normally ends well within it.
pub const PROBE_AFTER: Duration = Duration::from_secs(1);
/// How often a waiting batch looks at the index again.
const WAIT_POLL: Duration = Duration::from_millis(20);

/// The name of the ledger stream for `prefix`.
pub fn stream_name(prefix: &str) -> String {
    format!("{prefix}.ledger")
}

/// The stream settings of the ledger, replaying from `days` back.
pub fn log_settings(prefix: &str, settings: &LedgerSettings, days: u32) -> LogSettings {
    LogSettings {
        name: stream_name(prefix),
        max_age: format!("{}D", settings.retention_days),
        replay_from: Utc::now() - chrono::Duration::days(days.into()),
    }
}

/// One entry of the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entry {
    /// A batch's keys are about to be uploaded.
    Claim(Claim),
    /// Rows the platform accepted (returnCode 1 or 17).
    Receipt(Receipt),
    /// The claim's upload is over, and no receipt ended the claim.
    Release { claim: String },
    /// The claim's upload is still under way (a long bisection): its holder keeps it in
    /// force. Written every third of the claim TTL while the upload lasts.
    Renew { claim: String },
}

impl Entry {
    /// The receipt this entry is, if it is one and of `institution` (of any with `None`):
    /// what the folds of `report` read.
    pub fn receipt_of(self, institution: Option<&str>) -> Option<Receipt> {
        match self {
            Entry::Receipt(receipt) if institution.is_none_or(|only| only == receipt.institution) => Some(receipt),
            _ => None,
        }
    }
}

/// A batch's claim on its keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    /// Unique id of the claim.
    pub id: String,
    /// The institution.
    pub institution: String,
    /// The transaction.
    pub infno: Infno,
    /// Each key with its version, if the event had one.
    pub keys: Vec<(String, Option<u64>)>,
    /// When it was claimed.
    pub at: DateTime<Utc>,
    /// The claiming connection's holder queue (absent in claims of older releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// Which process claimed: its host name (a pod's name) and process id, for
    /// `report --key` (absent in claims of older releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

/// What the platform accepted in one call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// The claim of the batch.
    pub claim: String,
    /// The institution.
    pub institution: String,
    /// The transaction.
    pub infno: Infno,
    /// The call's msgid.
    pub msgid: String,
    /// The platform's returnCode (1, or 17 for a duplicate).
    pub return_code: u32,
    /// When the answer came.
    pub at: DateTime<Utc>,
    /// The rows accepted.
    pub rows: Vec<ReceiptRow>,
    /// Whether this receipt also ends its claim (written for the batch's last call, when it
    /// is accepted): no `release` entry follows. Absent in receipts of older releases,
    /// which read it as false (and so keep such a claim until it expires).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ends_claim: bool,
}

/// One accepted row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptRow {
    /// The record key.
    pub key: String,
    /// The event's version, if it had one.
    pub version: Option<u64>,
    /// The quantity.
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    /// The unit price.
    #[serde(with = "rust_decimal::serde::str")]
    pub price: Decimal,
    /// The movement time (Beijing wall clock, `yyyy-MM-dd HH:mm:ss`).
    pub time: String,
    /// The fingerprint of the message that carried the row (absent for rows not from a
    /// message, and in receipts of older releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Fingerprint>,
}

impl ReceiptRow {
    /// The receipt row of an uploaded record from `source`.
    pub fn of(record: &Record, source: &impl Provenance) -> Self {
        ReceiptRow {
            key: record.key().to_owned(),
            version: source.version(),
            quantity: record.quantity(),
            price: record.price(),
            time: record.time().to_string(),
            fingerprint: source.fingerprint(),
        }
    }
}

/// What a claim found for one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Upload it.
    Go,
    /// A newer version was uploaded or claimed first: do not send it.
    Superseded,
}

/// What the ledger is told of where a row comes from.
pub trait Provenance {
    /// The version of the record, if its event had one.
    fn version(&self) -> Option<u64>;

    /// The fingerprint of the message whose record is sent, if it came from one.
    fn fingerprint(&self) -> Option<Fingerprint> {
        None
    }

    /// Whether that message may be a copy of one seen before (the broker redelivered it,
    /// or its publisher named it with a `message_id`): only then does an earlier receipt
    /// of its fingerprint make it a copy rather than a new event.
    fn may_be_a_copy(&self) -> bool {
        false
    }
}

/// This process as a claim names it: `<host name> pid <id>`; the host name is a pod's
/// name under Kubernetes (`HOSTNAME`), else the kernel's.
fn replica_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown host".to_owned());
    format!("{host} pid {}", std::process::id())
}

/// A new holder queue's name for `prefix`.
fn holder_queue_name(prefix: &str) -> String {
    format!("{prefix}.ledger.holder.{}", nonce())
}

/// The worker's handle on the ledger.
pub struct Ledger {
    log: StreamLog<Index>,
    /// This connection's holder queue, named in its claims.
    holder: String,
    /// This process, named in its claims.
    replica: String,
    /// A confirm-mode channel probing the holders of other claims.
    probe: Channel,
    /// Holders found gone, with when: their claims hold nothing up. Pruned after
    /// [`CLAIM_TTL`], when their claims have expired anyway.
    gone: Mutex<HashMap<String, Instant>>,
    /// How long appending a claim took of late: the time a batch spends in the ledger
    /// before its call, when no earlier claim is in its way.
    claim_round_trip: RoundTrip,
    /// `ledger.claim_ttl_secs`: claims are renewed every third of it while they last.
    claim_ttl: Duration,
}

impl Ledger {
    /// Opens the ledger on `connection`, indexes its last `index_days`, and declares this
    /// connection's holder queue.
    pub async fn open(connection: &Connection, prefix: &str, settings: &LedgerSettings) -> Result<Self, LogError> {
        let log_settings = log_settings(prefix, settings, settings.index_days);
        let claim_ttl = Duration::from_secs(settings.claim_ttl_secs.max(1));
        let index = Index::new(settings.max_index_keys).with_claim_ttl(claim_ttl);
        let log = StreamLog::open(connection, &log_settings, index).await?;
        let probe = presence::probe_channel(connection).await?;
        let holder = holder_queue_name(prefix);
        presence::declare_exclusive(&probe, &holder).await.map_err(BrokerError::from)?;
        Ok(Ledger {
            log,
            holder,
            replica: replica_name(),
            probe,
            gone: Mutex::new(HashMap::new()),
            claim_round_trip: RoundTrip::default(),
            claim_ttl,
        })
    }

    /// Cancelled once the ledger stream is no longer read (see [`StreamLog::lost`]).
    pub fn lost(&self) -> tokio_util::sync::CancellationToken {
        self.log.lost()
    }

    fn gone(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.gone.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks the broker whether `holders` still exist and remembers those that do not.
    async fn probe(&self, holders: &[String]) -> Result<(), LogError> {
        for holder in holders {
            let presence = presence::queue_presence(&self.probe, holder).await?;
            if presence != presence::Presence::Held {
                let why = if presence == presence::Presence::Absent { "its connection closed" } else { "its node is down" };
                tracing::info!(%holder, "an earlier claim's holder is gone ({why}); its keys are free");
                let mut gone = self.gone();
                gone.retain(|_, since| since.elapsed() < self.claim_ttl);
                gone.insert(holder.clone(), Instant::now());
            }
        }
        Ok(())
    }

    /// Claims the keys, waits for earlier claims on them to end, and returns each row's
    /// turn, in order; `copies` as in [`Index::turns`]. The claim must be released with
    /// [`Ledger::release`].
    pub async fn claim(
        &self,
        institution: &str,
        infno: Infno,
        keys: Vec<(String, Option<u64>)>,
        copies: &[Option<Fingerprint>],
    ) -> Result<(String, Vec<Turn>), LogError> {
        let id = nonce();
        let holder = Some(self.holder.clone());
        let replica = Some(self.replica.clone());
        let claim = Claim { id: id.clone(), institution: institution.to_owned(), infno, keys, at: Utc::now(), holder, replica };
        let appending = Instant::now();
        self.log.append(Entry::Claim(claim)).await?;
        self.claim_round_trip.add(appending.elapsed());
        let mut next_probe = Instant::now() + PROBE_AFTER;
        loop {
            let turns = self.log.read(|index| {
                let gone = self.gone();
                index.turns(&id, copies, |holder| gone.contains_key(holder))
            })?;
            match turns {
                Ok(turns) => return Ok((id, turns)),
                Err(blocked) if Instant::now() >= next_probe => {
                    self.probe(&blocked.holders).await?;
                    next_probe = Instant::now() + PROBE_AFTER;
                }
                Err(_) => tokio::time::sleep(WAIT_POLL).await,
            }
        }
    }

    /// Records what the platform accepted, before the deliveries are acked. Confirmed by
    /// the broker, not read back: any later claim on these keys is applied after it.
    pub async fn receipt(&self, receipt: Receipt) -> Result<(), LogError> {
        self.log.append_confirmed(Entry::Receipt(receipt)).await
    }

    /// Ends a claim that no receipt ended (confirmed by the broker, not read back).
    pub async fn release(&self, claim: String) -> Result<(), LogError> {
        self.log.append_confirmed(Entry::Release { claim }).await
    }

    /// Renews a claim whose upload is still under way (confirmed by the broker, not read
    /// back), so that no other replica takes it for abandoned.
    pub async fn renew(&self, claim: &str) -> Result<(), LogError> {
        self.log.append_confirmed(Entry::Renew { claim: claim.to_owned() }).await
    }

    /// `ledger.claim_ttl_secs`: a claim must be renewed well within it.
    pub fn claim_ttl(&self) -> Duration {
        self.claim_ttl
    }

    /// How long appending a claim has taken of late (a moving average; zero before the
    /// first claim).
    pub fn claim_round_trip(&self) -> Duration {
        self.claim_round_trip.get()
    }

    /// How many keys the index holds (for metrics and tests).
    pub fn indexed_keys(&self) -> usize {
        self.log.read(Index::len).unwrap_or(0)
    }
}

/// A moving average of a duration (each new sample weighs 1/8), shared between tasks.
#[derive(Debug, Default)]
struct RoundTrip {
    micros: AtomicU64,
}

impl RoundTrip {
    fn add(&self, sample: Duration) {
        let sample = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX);
        // Concurrent updates may lose a sample; an average does not mind.
        let old = self.micros.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { old - old / 8 + sample / 8 };
        self.micros.store(new, Ordering::Relaxed);
    }

    fn get(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::Relaxed))
    }
}

impl Fold for Index {
    type Change = Entry;
    type Read<'de> = index::Indexed<'de>;

    fn apply(&mut self, change: index::Indexed<'_>) {
        Index::apply(self, change);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_written_by_older_releases_still_read() {
        // A claim before holders and replicas were named, a receipt row without fingerprint.
        let claim =
            r#"{"claim":{"id":"c1","institution":"H1","infno":"ELS7002","keys":[["IN-1",3],["IN-2",null]],"at":"2026-11-25T01:00:00Z"}}"#;
        let Ok(Entry::Claim(claim)) = serde_json::from_str::<Entry>(claim) else { panic!("an old claim must read") };
        assert_eq!((claim.holder, claim.replica), (None, None));
        assert_eq!(claim.keys, vec![("IN-1".to_owned(), Some(3)), ("IN-2".to_owned(), None)]);
        let receipt = r#"{"receipt":{"claim":"c1","institution":"H1","infno":"ELS7002","msgid":"m","return_code":1,"at":"2026-11-25T01:00:01Z","rows":[{"key":"IN-1","version":3,"quantity":"10","price":"12.34","time":"2026-11-25 09:30:00"}]}}"#;
        let Ok(Entry::Receipt(receipt)) = serde_json::from_str::<Entry>(receipt) else { panic!("an old receipt must read") };
        assert_eq!(receipt.rows[0].fingerprint, None);
        assert_eq!(receipt.rows[0].quantity, Decimal::TEN);
    }

    #[test]
    fn a_claim_names_its_replica_and_reads_back() {
        let claim = Claim {
            id: "c".into(),
            institution: "H1".into(),
            infno: Infno::Els7003,
            keys: vec![("K".into(), Some(1))],
            at: Utc::now(),
            holder: Some("els.ledger.holder.x".into()),
            replica: Some(replica_name()),
        };
        let text = serde_json::to_string(&Entry::Claim(claim.clone())).unwrap();
        assert!(text.contains(&format!("pid {}", std::process::id())), "{text}");
        assert_eq!(serde_json::from_str::<Entry>(&text).unwrap(), Entry::Claim(claim));
    }

    #[test]
    fn the_round_trip_starts_at_the_first_sample_and_moves_by_an_eighth() {
        let round_trip = RoundTrip::default();
        assert_eq!(round_trip.get(), Duration::ZERO);
        round_trip.add(Duration::from_micros(800));
        assert_eq!(round_trip.get(), Duration::from_micros(800));
        round_trip.add(Duration::from_micros(1600));
        assert_eq!(round_trip.get(), Duration::from_micros(900));
    }
}
