//! What the platform holds, record by record (`els-bridge report --records`, and the
//! platform's side of [`super::reconcile`]): for each (institution, transaction, key) the
//! row of the last receipt in the ledger — the platform keeps the last row it received,
//! and the ledger orders every accepted call of the fleet — with its version, quantity,
//! price, movement time, the call's msgid and when it was accepted.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use super::Entry;
use crate::beijing;
use crate::broker::log::Fold;
use crate::spec::Infno;

/// A record as the platform holds it, by the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Accepted {
    /// The institution.
    pub institution: String,
    /// The transaction.
    pub infno: Infno,
    /// The record key.
    pub key: String,
    /// The version of the last accepted row, if its event had one.
    pub version: Option<u64>,
    /// Its quantity.
    pub quantity: Decimal,
    /// Its unit price.
    pub price: Decimal,
    /// Its movement time (Beijing wall clock, `yyyy-MM-dd HH:mm:ss`).
    pub time: String,
    /// The call that carried it.
    pub msgid: String,
    /// When the platform accepted it.
    pub accepted_at: DateTime<Utc>,
    /// How many accepted rows the record had in the part of the ledger read (1 + corrections).
    pub uploads: u64,
}

impl Accepted {
    /// The Beijing calendar day of the movement time, when it is one.
    pub fn day(&self) -> Option<NaiveDate> {
        movement_day(&self.time)
    }
}

/// The Beijing calendar day of a movement time `yyyy-MM-dd HH:mm:ss`.
pub fn movement_day(time: &str) -> Option<NaiveDate> {
    time.get(..10).and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
}

/// The last accepted row of every key, being folded from the ledger.
#[derive(Debug, Default)]
pub struct Latest {
    institution: Option<String>,
    records: BTreeMap<(String, Infno, String), Accepted>,
}

impl Latest {
    /// The records of one institution, or of all.
    pub fn new(institution: Option<String>) -> Self {
        Latest { institution, records: BTreeMap::new() }
    }

    /// The record of `key`, whatever its movement day.
    pub fn get(&self, institution: &str, infno: Infno, key: &str) -> Option<&Accepted> {
        self.records.get(&(institution.to_owned(), infno, key.to_owned()))
    }

    /// The records whose last accepted movement time falls on a day from `from` to `to`
    /// (inclusive), of `infno` or all, ordered by institution, transaction and key.
    pub fn moved(&self, from: NaiveDate, to: NaiveDate, infno: Option<Infno>) -> Vec<Accepted> {
        self.records
            .values()
            .filter(|r| infno.is_none_or(|only| r.infno == only))
            .filter(|r| r.day().is_some_and(|day| (from..=to).contains(&day)))
            .cloned()
            .collect()
    }
}

impl Fold for Latest {
    type Change = Entry;
    type Read<'de> = Entry;

    fn apply(&mut self, change: Entry) {
        let Some(receipt) = change.receipt_of(self.institution.as_deref()) else { return };
        for row in receipt.rows {
            let id = (receipt.institution.clone(), receipt.infno, row.key.clone());
            let uploads = self.records.get(&id).map_or(0, |r| r.uploads) + 1;
            let accepted = Accepted {
                institution: receipt.institution.clone(),
                infno: receipt.infno,
                key: row.key,
                version: row.version,
                quantity: row.quantity.normalize(),
                price: row.price.normalize(),
                time: row.time,
                msgid: receipt.msgid.clone(),
                accepted_at: receipt.at,
                uploads,
            };
            self.records.insert(id, accepted);
        }
    }
}

/// One CSV line of a record: the acceptance time in Beijing time, like the tables.
#[derive(Serialize)]
struct CsvLine<'a> {
    institution: &'a str,
    infno: Infno,
    key: &'a str,
    version: Option<u64>,
    quantity: Decimal,
    price: Decimal,
    movement_time: &'a str,
    msgid: &'a str,
    accepted_at_beijing: String,
    uploads: u64,
}

/// The records as CSV for spreadsheets (UTF-8, header line first).
pub fn csv(records: &[Accepted]) -> Result<String, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for r in records {
        writer.serialize(CsvLine {
            institution: &r.institution,
            infno: r.infno,
            key: &r.key,
            version: r.version,
            quantity: r.quantity,
            price: r.price,
            movement_time: &r.time,
            msgid: &r.msgid,
            accepted_at_beijing: beijing::format(r.accepted_at),
            uploads: r.uploads,
        })?;
    }
    let bytes = writer.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The records as a readable table, times in Beijing time, with a count.
pub fn table(records: &[Accepted]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:<8} {:<24} {:>13} {:>12} {:>10} {:<19}  {:<30} {:<19} {:>7}",
        "institution", "infno", "key", "version", "quantity", "price", "movement time", "msgid", "accepted (Beijing)", "uploads"
    );
    for r in records {
        let _ = writeln!(
            out,
            "{:<14} {:<8} {:<24} {:>13} {:>12} {:>10} {:<19}  {:<30} {:<19} {:>7}",
            r.institution,
            r.infno,
            r.key,
            r.version.map_or_else(|| "-".to_owned(), |v| v.to_string()),
            r.quantity,
            r.price,
            r.time,
            r.msgid,
            beijing::format(r.accepted_at),
            r.uploads,
        );
    }
    let _ = writeln!(out, "{} records", records.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Receipt, ReceiptRow};

    fn receipt(institution: &str, msgid: &str, rows: &[(&str, u64, &str, &str)]) -> Entry {
        Entry::Receipt(Receipt {
            claim: "c".into(),
            institution: institution.into(),
            infno: Infno::Els7002,
            msgid: msgid.into(),
            return_code: 1,
            at: "2026-11-25T02:00:00Z".parse().unwrap(),
            ends_claim: false,
            rows: rows
                .iter()
                .map(|(key, version, quantity, time)| ReceiptRow {
                    key: key.to_string(),
                    version: Some(*version),
                    quantity: quantity.parse().unwrap(),
                    price: "12.3400".parse().unwrap(),
                    time: time.to_string(),
                    fingerprint: None,
                })
                .collect(),
        })
    }

    #[test]
    fn the_last_accepted_row_of_each_key_is_what_the_platform_holds() {
        let mut latest = Latest::new(None);
        latest.apply(receipt("H1", "m1", &[("a", 1, "10", "2026-11-25 08:00:00"), ("b", 1, "1", "2026-11-25 09:00:00")]));
        latest.apply(receipt("H1", "m2", &[("a", 2, "12", "2026-11-25 08:00:00"), ("b", 2, "1", "2026-11-26 09:00:00")]));
        latest.apply(receipt("H2", "m3", &[("a", 1, "5", "2026-11-25 10:00:00")]));
        let day = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
        let moved = latest.moved(day, day, None);
        let keys: Vec<(&str, &str, &str, u64)> =
            moved.iter().map(|r| (r.institution.as_str(), r.key.as_str(), r.msgid.as_str(), r.uploads)).collect();
        assert_eq!(keys, vec![("H1", "a", "m2", 2), ("H2", "a", "m3", 1)], "b moved to the 26th with its correction");
        assert_eq!(latest.get("H1", Infno::Els7002, "b").map(|r| r.time.as_str()), Some("2026-11-26 09:00:00"));
        assert!(latest.moved(day, day, Some(Infno::Els7003)).is_empty());

        let csv = csv(&moved).unwrap();
        assert!(csv.starts_with("institution,infno,key,version,quantity,price,movement_time,msgid,accepted_at_beijing,uploads\n"), "{csv}");
        assert!(csv.contains("H1,ELS7002,a,2,12,12.34,2026-11-25 08:00:00,m2,2026-11-25 10:00:00,2\n"), "{csv}");
        let text = table(&moved);
        assert!(text.ends_with("2 records\n"), "{text}");
    }

    #[test]
    fn one_institution_can_be_listed_alone() {
        let mut latest = Latest::new(Some("H2".into()));
        latest.apply(receipt("H1", "m1", &[("a", 1, "10", "2026-11-25 08:00:00")]));
        latest.apply(receipt("H2", "m3", &[("a", 1, "5", "2026-11-25 10:00:00")]));
        let day = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
        assert_eq!(latest.moved(day, day, None).len(), 1);
    }
}
