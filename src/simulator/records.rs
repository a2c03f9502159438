//! The records the platform holds: one per (institution, infno, key), overwritten by every
//! accepted upload of the same key.
//!
//! Stored by design for the life of the process (until a reset): each record keeps its row
//! as compact JSON text, about 0.5–1 KB.

use std::collections::HashMap;
use std::sync::RwLock;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::api::{RecordFilter, RecordView, RecordsPage};
use super::{read, write};
use crate::spec::Infno;

#[derive(Debug)]
struct Stored {
    /// The row as received, as JSON text.
    row: Box<str>,
    msgid: Box<str>,
    updates: u64,
    first_stored: DateTime<Utc>,
    updated: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Records by (institution, infno), then by key.
    partitions: HashMap<(String, Infno), HashMap<String, Stored>>,
    len: usize,
    created: u64,
    updated: u64,
}

/// The record store.
#[derive(Debug, Default)]
pub struct Records {
    inner: RwLock<Inner>,
}

/// Totals of the store since start or the last reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordTotals {
    /// Records held now.
    pub stored: usize,
    /// Rows stored under a new key.
    pub created: u64,
    /// Rows that overwrote a stored key.
    pub updated: u64,
}

impl Records {
    /// Stores the accepted `rows` (key, row) of one call, in order.
    pub fn upsert(&self, institution: &str, infno: Infno, msgid: &str, rows: Vec<(String, Value)>, now: DateTime<Utc>) {
        // Serialise outside the lock.
        let rows: Vec<(String, Box<str>)> = rows.into_iter().map(|(key, row)| (key, row.to_string().into())).collect();
        let msgid: Box<str> = msgid.into();
        let mut inner = write(&self.inner);
        let Inner { partitions, len, created, updated } = &mut *inner;
        let partition = partitions.entry((institution.to_owned(), infno)).or_default();
        for (key, row) in rows {
            match partition.get_mut(&key) {
                Some(stored) => {
                    stored.row = row;
                    stored.msgid = msgid.clone();
                    stored.updates += 1;
                    stored.updated = now;
                    *updated += 1;
                }
                None => {
                    let stored = Stored { row, msgid: msgid.clone(), updates: 1, first_stored: now, updated: now };
                    partition.insert(key, stored);
                    *len += 1;
                    *created += 1;
                }
            }
        }
    }

    /// The records matching `filter`, sorted by institution, infno and key.
    pub fn query(&self, filter: &RecordFilter) -> RecordsPage {
        let inner = read(&self.inner);
        let mut matches: Vec<(&(String, Infno), &String, &Stored)> = inner
            .partitions
            .iter()
            .filter(|((institution, infno), _)| {
                filter.institution.as_ref().is_none_or(|i| i == institution) && filter.infno.is_none_or(|n| n == *infno)
            })
            .flat_map(|(partition, records)| records.iter().map(move |(key, stored)| (partition, key, stored)))
            .filter(|(_, key, _)| filter.key.as_ref().is_none_or(|k| k == *key))
            .collect();
        matches.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let total = matches.len();
        let records = matches
            .into_iter()
            .take(filter.limit.unwrap_or(usize::MAX))
            .map(|((institution, infno), key, stored)| RecordView {
                institution: institution.clone(),
                infno: *infno,
                key: key.clone(),
                row: serde_json::from_str(&stored.row).unwrap_or(Value::Null),
                msgid: stored.msgid.to_string(),
                updates: stored.updates,
                first_stored: stored.first_stored,
                updated: stored.updated,
            })
            .collect();
        RecordsPage { total, records }
    }

    /// Totals of the store.
    pub fn totals(&self) -> RecordTotals {
        let inner = read(&self.inner);
        RecordTotals { stored: inner.len, created: inner.created, updated: inner.updated }
    }

    /// Forgets every record and total.
    pub fn clear(&self) {
        *write(&self.inner) = Inner::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_last_upload_of_a_key_wins_and_is_counted() {
        let records = Records::default();
        let now = Utc::now();
        records.upsert("H1", Infno::Els7002, "m1", vec![("k".into(), json!({"n": 1})), ("j".into(), json!({"n": 0}))], now);
        records.upsert("H1", Infno::Els7002, "m2", vec![("k".into(), json!({"n": 2}))], now);
        records.upsert("H1", Infno::Els7003, "m3", vec![("k".into(), json!({"n": 3}))], now);
        let page = records.query(&RecordFilter { infno: Some(Infno::Els7002), key: Some("k".into()), ..Default::default() });
        assert_eq!(page.total, 1);
        assert_eq!((page.records[0].row.clone(), page.records[0].msgid.as_str(), page.records[0].updates), (json!({"n": 2}), "m2", 2));
        assert_eq!(records.totals(), RecordTotals { stored: 3, created: 3, updated: 1 });
        let all = records.query(&RecordFilter { limit: Some(2), ..Default::default() });
        assert_eq!((all.total, all.records.len()), (3, 2));
        assert_eq!((all.records[0].key.as_str(), all.records[1].key.as_str()), ("j", "k"));
    }
}
