//! Batching: valid records wait in one lane per (institution, infno) until a lane has a
//! full call's worth (`batch.max_records`) or its oldest record has waited `linger_ms`.
//!
//! Two events with the same record key in a lane become one entry: the higher `version`
//! wins (without versions, the later delivery), and the deliveries of both are settled
//! with that entry. A key that is in an upload in flight is not put in another call until
//! that upload is settled, so two versions of a record never race each other within one
//! worker.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use indexmap::IndexMap;

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
}

/// What a batch row carries besides its record: its version and every delivery to settle
/// with it.
#[derive(Debug)]
pub struct Carried<T> {
    /// The version of the record sent, if the events had one.
    pub version: Option<u64>,
    /// The deliveries of every version seen of the key.
    pub deliveries: Vec<T>,
}

/// A call's worth of records taken from a lane.
#[derive(Debug)]
pub struct Batch<T> {
    /// The lane it came from.
    pub lane: LaneKey,
    /// At most `max_records` rows, distinct keys.
    pub rows: Vec<Row<Carried<T>>>,
}

#[derive(Debug)]
struct Lane<T> {
    waiting: IndexMap<String, (Pending<T>, Instant)>,
    in_flight: HashSet<String>,
}

impl<T> Default for Lane<T> {
    fn default() -> Self {
        Lane { waiting: IndexMap::new(), in_flight: HashSet::new() }
    }
}

impl<T> Lane<T> {
    /// Keys that may go into a call now, oldest first.
    fn ready(&self) -> impl Iterator<Item = (&String, &Instant)> {
        self.waiting.iter().filter(|(key, _)| !self.in_flight.contains(*key)).map(|(key, (_, since))| (key, since))
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

    /// Adds a record; returns a batch when the lane now has a full call's worth.
    pub fn add(&mut self, lane: LaneKey, record: Record, version: Option<u64>, source: T) -> Option<Batch<T>> {
        let entry = self.lanes.entry(lane.clone()).or_default();
        let key = record.key().to_owned();
        match entry.waiting.get_mut(&key) {
            Some((pending, _)) => {
                let newer = match (version, pending.version) {
                    (Some(new), Some(old)) => new >= old,
                    (None, Some(_)) => false,
                    _ => true,
                };
                if newer {
                    pending.record = record;
                    pending.version = version;
                }
                pending.sources.push(source);
            }
            None => {
                entry.waiting.insert(key, (Pending { record, version, sources: vec![source] }, Instant::now()));
            }
        }
        (entry.ready().count() >= self.max_records).then(|| self.take(&lane)).flatten()
    }

    /// Batches of lanes whose oldest ready record has waited `linger` (all lanes with ready
    /// records when `everything`, e.g. when draining at shutdown).
    pub fn due(&mut self, now: Instant, everything: bool) -> Vec<Batch<T>> {
        let due: Vec<LaneKey> = self
            .lanes
            .iter()
            .filter(|(_, lane)| lane.ready().any(|(_, since)| everything || now.duration_since(*since) >= self.linger))
            .map(|(key, _)| key.clone())
            .collect();
        due.iter().filter_map(|lane| self.take(lane)).collect()
    }

    /// When the earliest waiting record of any lane is due, if any is waiting.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.lanes.values().filter_map(|lane| lane.ready().map(|(_, since)| *since + self.linger).min()).min()
    }

    /// The keys of an upload are settled: they may go into calls again.
    pub fn settled(&mut self, lane: &LaneKey, keys: impl IntoIterator<Item = String>) {
        if let Some(entry) = self.lanes.get_mut(lane) {
            for key in keys {
                entry.in_flight.remove(&key);
            }
            if entry.waiting.is_empty() && entry.in_flight.is_empty() {
                self.lanes.remove(lane);
            }
        }
    }

    /// Whether no record waits and none is in flight.
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Records waiting (not in flight).
    pub fn waiting(&self) -> usize {
        self.lanes.values().map(|l| l.waiting.len()).sum()
    }

    fn take(&mut self, lane: &LaneKey) -> Option<Batch<T>> {
        let entry = self.lanes.get_mut(lane)?;
        let keys: Vec<String> = entry.ready().take(self.max_records).map(|(key, _)| key.clone()).collect();
        if keys.is_empty() {
            return None;
        }
        let mut rows = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some((pending, _)) = entry.waiting.shift_remove(&key) {
                entry.in_flight.insert(key);
                let source = Carried { version: pending.version, deliveries: pending.sources };
                rows.push(Row { record: pending.record, source });
            }
        }
        Some(Batch { lane: lane.clone(), rows })
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
        assert_eq!(batch.rows[1].record.quantity().to_string(), "2", "without versions the later delivery wins");
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
    fn a_key_in_flight_waits_for_its_upload_to_settle() {
        let mut lanes = Lanes::new(100, Duration::ZERO);
        lanes.add(lane(), record("a", "1"), Some(1), 1);
        let first = lanes.due(Instant::now(), true).pop().unwrap();
        lanes.add(lane(), record("a", "2"), Some(2), 2);
        lanes.add(lane(), record("b", "1"), None, 3);
        let second = lanes.due(Instant::now(), true).pop().unwrap();
        assert_eq!(second.rows.iter().map(|r| r.record.key()).collect::<Vec<_>>(), ["b"]);
        assert!(lanes.due(Instant::now(), true).is_empty(), "a is still in flight");
        lanes.settled(&first.lane, ["a".to_owned()]);
        let third = lanes.due(Instant::now(), true).pop().unwrap();
        assert_eq!(third.rows[0].record.quantity().to_string(), "2");
        lanes.settled(&lane(), ["a".to_owned(), "b".to_owned()]);
        assert!(lanes.is_empty());
    }
}
