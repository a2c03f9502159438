//! Batching: valid records wait in one lane per (institution, infno) until a lane has a
//! full call's worth (`batch.max_records`) or its oldest record has waited `linger_ms`.
//!
//! Two events with the same record key in a lane become one entry: the higher `version`
//! wins (without versions, the later delivery), and the deliveries of both are settled
//! with that entry. A key that is in an upload in flight is not put in another call until
//! that upload is settled, so two versions of a record never race each other within one
//! worker.
//!
//! The bookkeeping is O(1) per delivery: a lane keeps its ready keys in the order they
//! became ready, apart from the keys waiting behind an upload in flight (which join the
//! ready ones when that upload is settled), and it tracks the arrival of its oldest ready
//! record, so finding the next deadline looks at each lane once and taking a batch drains
//! the front of the ready keys in one go. Keys are hashed with foldhash, seeded per
//! process, several times faster than the standard SipHash on these short keys.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use indexmap::IndexMap;

use crate::ledger::Fingerprint;
use crate::spec::field::Text;
use crate::spec::{Infno, Record};
use crate::upload::Row;

/// Which lane a record goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LaneKey {
    /// The institution.
    pub fixmedins_code: String,
    /// The transaction.
    pub infno: Infno,
}

/// One record waiting for upload, with every delivery that carried a version of it.
#[derive(Debug)]
pub struct Pending<T> {
    /// The record to send (the newest version seen).
    pub record: Record,
    /// Its version, if the events carried one.
    pub version: Option<u64>,
    /// The deliveries to settle with it.
    pub sources: Vec<T>,
    /// Which of them carried the record to send.
    sent_by: usize,
}

impl<T> Pending<T> {
    /// A first delivery of a key.
    fn new(record: Record, version: Option<u64>, source: T) -> Self {
        Pending { record, version, sources: vec![source], sent_by: 0 }
    }

    /// Folds another delivery of the same key in: its record replaces the one held unless
    /// it has a lower version (or none where the held one has one); its delivery rides
    /// along either way.
    fn merge(&mut self, record: Record, version: Option<u64>, source: T) {
        let newer = match (version, self.version) {
            (Some(new), Some(old)) => new >= old,
            (None, Some(_)) => false,
            _ => true,
        };
        if newer {
            self.record = record;
            self.version = version;
            self.sent_by = self.sources.len();
        }
        self.sources.push(source);
    }
}

/// What a batch row carries besides its record: its version and every delivery to settle
/// with it.
#[derive(Debug)]
pub struct Carried<T> {
    /// The version of the record sent, if the events had one.
    pub version: Option<u64>,
    /// The deliveries of every version seen of the key.
    pub deliveries: Vec<T>,
    /// Which of them carried the record sent.
    pub sent_by: usize,
    /// The sender's fingerprint once computed: the ledger's claim and receipt both need it.
    pub fingerprint: OnceLock<Option<Fingerprint>>,
}

impl<T> Carried<T> {
    /// The delivery that carried the record sent.
    pub fn sender(&self) -> Option<&T> {
        self.deliveries.get(self.sent_by)
    }
}

/// A call's worth of records taken from a lane.
#[derive(Debug)]
pub struct Batch<T> {
    /// The lane it came from.
    pub lane: LaneKey,
    /// At most `max_records` rows, distinct keys.
    pub rows: Vec<Row<Carried<T>>>,
}

/// The records of one lane. A key is in at most one of `ready` and `in_flight`, and a key
/// in `blocked` is always in `in_flight`.
#[derive(Debug)]
struct Lane<T> {
    /// Keys that may go into a call now, with when each arrived, in the order they became
    /// ready.
    ready: IndexMap<Text, (Pending<T>, Instant), foldhash::fast::RandomState>,
    /// New versions of keys in flight, with when each arrived; each becomes ready when its
    /// key is settled.
    blocked: HashMap<Text, (Pending<T>, Instant)>,
    /// Keys in an upload that is not settled yet.
    in_flight: HashSet<Text>,
    /// When the oldest record in `ready` arrived (`None` when nothing is ready). Not
    /// always the front one: a key that was blocked joins at the back with its own
    /// arrival.
    oldest: Option<Instant>,
}

impl<T> Default for Lane<T> {
    fn default() -> Self {
        Lane { ready: IndexMap::default(), blocked: HashMap::new(), in_flight: HashSet::new(), oldest: None }
    }
}

impl<T> Lane<T> {
    /// Adds a delivery of `key`, merging it into the version of the key already waiting.
    fn add(&mut self, key: Text, record: Record, version: Option<u64>, source: T) {
        if let Some((pending, _)) = self.ready.get_mut(&key) {
            pending.merge(record, version, source);
        } else if self.in_flight.contains(&key) {
            match self.blocked.get_mut(&key) {
                Some((pending, _)) => pending.merge(record, version, source),
                None => {
                    self.blocked.insert(key, (Pending::new(record, version, source), Instant::now()));
                }
            }
        } else {
            let now = Instant::now();
            self.ready.insert(key, (Pending::new(record, version, source), now));
            self.oldest.get_or_insert(now);
        }
    }

    /// Takes up to `max` ready keys from the front and puts them in flight.
    fn take(&mut self, max: usize) -> Vec<Row<Carried<T>>> {
        let n = self.ready.len().min(max);
        let mut rows = Vec::with_capacity(n);
        for (key, (pending, _)) in self.ready.drain(..n) {
            self.in_flight.insert(key);
            let source =
                Carried { version: pending.version, deliveries: pending.sources, sent_by: pending.sent_by, fingerprint: OnceLock::new() };
            rows.push(Row { record: pending.record, source });
        }
        if !rows.is_empty() {
            self.oldest = self.ready.values().map(|(_, since)| *since).min();
        }
        rows
    }

    /// `key`'s upload is settled: its blocked version, if any, becomes ready.
    fn settle(&mut self, key: Text) {
        if !self.in_flight.remove(&key) {
            return;
        }
        if let Some((pending, since)) = self.blocked.remove(&key) {
            self.oldest = Some(self.oldest.map_or(since, |oldest| oldest.min(since)));
            self.ready.insert(key, (pending, since));
        }
    }

    /// Whether the oldest ready record has waited `linger` (or, when `everything`, any
    /// record is ready).
    fn is_due(&self, now: Instant, linger: Duration, everything: bool) -> bool {
        self.oldest.is_some_and(|since| everything || now.duration_since(since) >= linger)
    }

    /// Records waiting, ready or blocked.
    fn waiting(&self) -> usize {
        self.ready.len() + self.blocked.len()
    }

    /// Whether nothing waits and nothing is in flight.
    fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.blocked.is_empty() && self.in_flight.is_empty()
    }
}

/// All lanes of one worker session.
#[derive(Debug)]
pub struct Lanes<T> {
    lanes: HashMap<LaneKey, Lane<T>>,
    max_records: usize,
    linger: Duration,
}

impl<T> Lanes<T> {
    /// Empty lanes flushing at `max_records` or after `linger`.
    pub fn new(max_records: usize, linger: Duration) -> Self {
        Lanes { lanes: HashMap::new(), max_records, linger }
    }

    /// Adds a record; returns a batch when the lane now has a full call's worth of ready
    /// keys (keys waiting behind an upload in flight do not count).
    pub fn add(&mut self, lane: LaneKey, record: Record, version: Option<u64>, source: T) -> Option<Batch<T>> {
        let entry = match self.lanes.get_mut(&lane) {
            Some(entry) => entry,
            None => self.lanes.entry(lane.clone()).or_default(),
        };
        entry.add(Text::from(record.key()), record, version, source);
        if entry.ready.len() < self.max_records {
            return None;
        }
        let rows = entry.take(self.max_records);
        (!rows.is_empty()).then_some(Batch { lane, rows })
    }

    /// Batches of lanes whose oldest ready record has waited `linger` (all lanes with ready
    /// records when `everything`, e.g. when draining at shutdown), one per lane.
    pub fn due(&mut self, now: Instant, everything: bool) -> Vec<Batch<T>> {
        let (max_records, linger) = (self.max_records, self.linger);
        self.lanes
            .iter_mut()
            .filter(|(_, entry)| entry.is_due(now, linger, everything))
            .filter_map(|(lane, entry)| {
                let rows = entry.take(max_records);
                (!rows.is_empty()).then(|| Batch { lane: lane.clone(), rows })
            })
            .collect()
    }

    /// The batch of the lane with the most ready records, if any: for when waiting for
    /// the linger would gain nothing (the worker holds its whole prefetch, so no more
    /// records come until some are settled).
    pub fn fullest(&mut self) -> Option<Batch<T>> {
        let max_records = self.max_records;
        let (lane, entry) = self.lanes.iter_mut().max_by_key(|(_, entry)| entry.ready.len())?;
        if entry.ready.is_empty() {
            return None;
        }
        let rows = entry.take(max_records);
        Some(Batch { lane: lane.clone(), rows })
    }

    /// When the earliest ready record of any lane is due, if any is ready.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.lanes.values().filter_map(|entry| entry.oldest).min().map(|oldest| oldest + self.linger)
    }

    /// The keys of an upload are settled: they may go into calls again, and new versions
    /// of them that arrived meanwhile become ready.
    pub fn settled(&mut self, lane: &LaneKey, keys: impl IntoIterator<Item = Text>) {
        if let Some(entry) = self.lanes.get_mut(lane) {
            for key in keys {
                entry.settle(key);
            }
            if entry.is_empty() {
                self.lanes.remove(lane);
            }
        }
    }

    /// Whether no record waits and none is in flight.
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Records waiting (not in flight), including new versions of keys in flight.
    pub fn waiting(&self) -> usize {
        self.lanes.values().map(Lane::waiting).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Record;
    use serde_json::json;

    fn record(key: &str, qty: &str) -> Record {
        let row = json!({
            "hosp_retn_mgt_detl": key, "drug_code": "0", "prov_plaf_prod_code": "0", "drug_genname": "g",
            "dosform": "d", "spec": "s", "convrat": "1", "pacunt": "p", "prodentp_name": "m",
            "delventp_name": "n", "delventp_code": "c", "purc_pric": "1", "retn_cnt": qty,
            "retn_time": "2026-11-25", "prov_plaf_retn_det_id": "0"
        });
        Record::parse_value(Infno::Els7006, &row).unwrap()
    }

    fn lane() -> LaneKey {
        LaneKey { fixmedins_code: "H32128200338".into(), infno: Infno::Els7006 }
    }

    #[test]
    fn a_full_lane_gives_a_batch_at_once() {
        let mut lanes = Lanes::new(3, Duration::from_secs(60));
        assert!(lanes.add(lane(), record("a", "1"), None, 1).is_none());
        assert!(lanes.add(lane(), record("b", "1"), None, 2).is_none());
        let batch = lanes.add(lane(), record("c", "1"), None, 3).unwrap();
        assert_eq!(batch.rows.iter().map(|r| r.record.key()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(lanes.waiting(), 0);
    }

    #[test]
    fn the_higher_version_wins_and_both_deliveries_ride_along() {
        let mut lanes = Lanes::new(10, Duration::ZERO);
        lanes.add(lane(), record("a", "5"), Some(2), "v2");
        lanes.add(lane(), record("a", "1"), Some(1), "v1 late");
        lanes.add(lane(), record("b", "1"), None, "b first");
        lanes.add(lane(), record("b", "2"), None, "b later");
        let batch = lanes.due(Instant::now(), false).pop().unwrap();
        assert_eq!(batch.rows.len(), 2);
        assert_eq!(batch.rows[0].record.quantity().to_string(), "5");
        assert_eq!(batch.rows[0].source.deliveries, ["v2", "v1 late"]);
        assert_eq!(batch.rows[0].source.version, Some(2));
        assert_eq!(batch.rows[0].source.sender(), Some(&"v2"));
        assert_eq!(batch.rows[1].record.quantity().to_string(), "2", "without versions the later delivery wins");
        assert_eq!(batch.rows[1].source.sender(), Some(&"b later"));
    }

    #[test]
    fn lanes_linger_before_flushing_a_partial_batch() {
        let mut lanes = Lanes::new(100, Duration::from_secs(2));
        lanes.add(lane(), record("a", "1"), None, 1);
        let now = Instant::now();
        assert!(lanes.due(now, false).is_empty());
        assert!(lanes.next_deadline().unwrap() <= now + Duration::from_secs(2));
        assert_eq!(lanes.due(now + Duration::from_secs(2), false).len(), 1);
    }

    #[test]
    fn the_fullest_lane_can_be_taken_before_its_linger() {
        let mut lanes = Lanes::new(100, Duration::from_secs(60));
        let other = LaneKey { fixmedins_code: "H32128200338".into(), infno: Infno::Els7002 };
        lanes.add(lane(), record("a", "1"), None, 1);
        lanes.add(other.clone(), record("x", "1"), None, 2);
        lanes.add(other.clone(), record("y", "1"), None, 3);
        let batch = lanes.fullest().unwrap();
        assert_eq!((batch.lane, batch.rows.len()), (other, 2));
        assert_eq!(lanes.fullest().unwrap().lane, lane());
        assert!(lanes.fullest().is_none(), "nothing else is ready");
    }

    #[test]
    fn a_key_in_flight_waits_for_its_upload_to_settle() {
        let mut lanes = Lanes::new(100, Duration::ZERO);
        lanes.add(lane(), record("a", "1"), Some(1), 1);
        let first = lanes.due(Instant::now(), true).pop().unwrap();
        lanes.add(lane(), record("a", "2"), Some(2), 2);
        lanes.add(lane(), record("b", "1"), None, 3);
        let second = lanes.due(Instant::now(), true).pop().unwrap();
        assert_eq!(second.rows.iter().map(|r| r.record.key()).collect::<Vec<_>>(), ["b"]);
        assert!(lanes.due(Instant::now(), true).is_empty(), "a is still in flight");
        lanes.settled(&first.lane, ["a".into()]);
        let third = lanes.due(Instant::now(), true).pop().unwrap();
        assert_eq!(third.rows[0].record.quantity().to_string(), "2");
        lanes.settled(&lane(), ["a".into(), "b".into()]);
        assert!(lanes.is_empty());
    }

    #[test]
    fn a_blocked_key_becomes_ready_when_settled_and_fills_the_lane() {
        let mut lanes = Lanes::new(3, Duration::from_secs(60));
        lanes.add(lane(), record("a", "1"), Some(1), 1);
        let first = lanes.due(Instant::now(), true).pop().unwrap();
        assert!(lanes.add(lane(), record("a", "2"), Some(2), 2).is_none());
        assert!(lanes.add(lane(), record("b", "1"), None, 3).is_none());
        assert!(lanes.add(lane(), record("c", "1"), None, 4).is_none(), "a is blocked: only b and c are ready");
        assert_eq!(lanes.waiting(), 3);
        lanes.settled(&first.lane, ["a".into()]);
        let batch = lanes.add(lane(), record("d", "1"), None, 5).unwrap();
        let mut keys: Vec<&str> = batch.rows.iter().map(|r| r.record.key()).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["a", "b", "c"]);
        let a = batch.rows.iter().find(|r| r.record.key() == "a").unwrap();
        assert_eq!(a.record.quantity().to_string(), "2");
        assert_eq!(a.source.deliveries, [2], "the first delivery went with the first upload");
        assert_eq!(lanes.waiting(), 1);
    }

    #[test]
    fn the_deadline_follows_an_older_blocked_record_into_ready() {
        let linger = Duration::from_secs(10);
        let mut lanes = Lanes::new(2, linger);
        lanes.add(lane(), record("a", "1"), None, 1);
        let first = lanes.add(lane(), record("x", "1"), None, 2).unwrap();
        assert_eq!(lanes.next_deadline(), None, "nothing is ready");
        lanes.add(lane(), record("a", "2"), None, 3);
        lanes.add(lane(), record("x", "2"), None, 4);
        let blocked_by = Instant::now();
        std::thread::sleep(Duration::from_millis(5));
        lanes.add(lane(), record("b", "1"), None, 5);
        let only_b = lanes.next_deadline().unwrap();
        assert!(only_b > blocked_by + linger);
        lanes.settled(&first.lane, ["a".into(), "x".into()]);
        let with_a_and_x = lanes.next_deadline().unwrap();
        assert!(with_a_and_x <= blocked_by + linger, "a and x arrived before b");
        // Three ready, two per call: what is left after one call still has an old record.
        let batch = lanes.due(with_a_and_x, false).pop().unwrap();
        assert_eq!(batch.rows.len(), 2);
        assert_eq!(lanes.waiting(), 1);
        assert!(lanes.next_deadline().unwrap() <= blocked_by + linger);
        assert_eq!(lanes.due(blocked_by + linger, false).pop().unwrap().rows.len(), 1);
        assert_eq!(lanes.next_deadline(), None);
    }
}
