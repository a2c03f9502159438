//! The daily report from the ledger: per institution and transaction, what was reported
//! for movements of a day or range of days (Beijing time, by the record's movement time).
//!
//! * rows reported: accepted rows, re-uploads included;
//! * distinct keys: records;
//! * corrections: rows reported − distinct keys (uploads that changed a record again);
//! * total quantity and amount (price × quantity) of each record's last accepted row — what
//!   the platform holds, since it keeps the last row it received.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Serialize;

use super::Entry;
use crate::broker::log::Fold;
use crate::spec::Infno;

/// The report being folded from the ledger.
#[derive(Debug)]
pub struct Tally {
    from: NaiveDate,
    to: NaiveDate,
    institution: Option<String>,
    lanes: BTreeMap<(String, Infno), Lane>,
}

#[derive(Debug, Default)]
struct Lane {
    rows: u64,
    latest: HashMap<String, (Decimal, Decimal)>,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    /// The institution.
    pub institution: String,
    /// The transaction.
    pub infno: Infno,
    /// What it reports.
    pub movement: &'static str,
    /// Accepted rows.
    pub rows_reported: u64,
    /// Distinct records.
    pub distinct_keys: u64,
    /// Rows that changed a record again.
    pub corrections: u64,
    /// Sum of the records' quantities.
    pub total_quantity: Decimal,
    /// Sum of price × quantity.
    pub total_amount: Decimal,
}

impl Tally {
    /// A report of movements from `from` to `to` (inclusive), of one institution or all.
    pub fn new(from: NaiveDate, to: NaiveDate, institution: Option<String>) -> Self {
        Tally { from, to, institution, lanes: BTreeMap::new() }
    }

    /// The report's lines, by institution and transaction.
    pub fn lines(&self) -> Vec<Line> {
        self.lanes
            .iter()
            .map(|((institution, infno), lane)| {
                let keys = lane.latest.len() as u64;
                Line {
                    institution: institution.clone(),
                    infno: *infno,
                    movement: infno.describe(),
                    rows_reported: lane.rows,
                    distinct_keys: keys,
                    corrections: lane.rows - keys,
                    total_quantity: lane.latest.values().map(|(q, _)| *q).sum::<Decimal>().normalize(),
                    total_amount: lane.latest.values().map(|(q, p)| *q * *p).sum::<Decimal>().normalize(),
                }
            })
            .collect()
    }
}

impl Fold for Tally {
    type Change = Entry;
    type Read<'de> = Entry;

    fn apply(&mut self, change: Entry) {
        let Some(receipt) = change.receipt_of(self.institution.as_deref()) else { return };
        for row in receipt.rows {
            let day = row.time.get(..10).and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
            if !day.is_some_and(|day| (self.from..=self.to).contains(&day)) {
                continue;
            }
            let lane = self.lanes.entry((receipt.institution.clone(), receipt.infno)).or_default();
            lane.rows += 1;
            lane.latest.insert(row.key, (row.quantity, row.price));
        }
    }
}

/// The lines as a readable table with a total.
pub fn table(lines: &[Line]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14} {:<8} {:<30} {:>8} {:>8} {:>11} {:>16} {:>18}",
        "institution", "infno", "movement", "rows", "keys", "corrections", "quantity", "amount"
    );
    for l in lines {
        let _ = writeln!(
            out,
            "{:<14} {:<8} {:<30} {:>8} {:>8} {:>11} {:>16} {:>18}",
            l.institution, l.infno, l.movement, l.rows_reported, l.distinct_keys, l.corrections, l.total_quantity, l.total_amount
        );
    }
    let sum = |f: fn(&Line) -> u64| lines.iter().map(f).sum::<u64>();
    let _ = writeln!(
        out,
        "{:<14} {:<8} {:<30} {:>8} {:>8} {:>11} {:>16} {:>18}",
        "total",
        "",
        "",
        sum(|l| l.rows_reported),
        sum(|l| l.distinct_keys),
        sum(|l| l.corrections),
        lines.iter().map(|l| l.total_quantity).sum::<Decimal>().normalize(),
        lines.iter().map(|l| l.total_amount).sum::<Decimal>().normalize(),
    );
    out
}

/// The lines as CSV for spreadsheets (UTF-8, header line first).
pub fn csv(lines: &[Line]) -> Result<String, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for line in lines {
        writer.serialize(line)?;
    }
    let bytes = writer.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Receipt, ReceiptRow};
    use chrono::Utc;

    fn receipt(institution: &str, rows: &[(&str, &str, &str, &str)]) -> Entry {
        Entry::Receipt(Receipt {
            claim: "c".into(),
            institution: institution.into(),
            infno: Infno::Els7002,
            msgid: "m".into(),
            return_code: 1,
            at: Utc::now(),
            ends_claim: false,
            rows: rows
                .iter()
                .map(|(key, qty, price, time)| ReceiptRow {
                    key: key.to_string(),
                    version: None,
                    quantity: qty.parse().unwrap(),
                    price: price.parse().unwrap(),
                    time: time.to_string(),
                    fingerprint: None,
                })
                .collect(),
        })
    }

    #[test]
    fn the_last_row_of_a_key_counts_and_re_uploads_are_corrections() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
        let mut tally = Tally::new(day, day, None);
        tally.apply(receipt("H1", &[("a", "10", "2.5", "2026-11-25 08:00:00"), ("b", "1", "3", "2026-11-25 09:00:00")]));
        tally.apply(receipt("H1", &[("a", "12", "2.5", "2026-11-25 08:00:00"), ("old", "5", "1", "2026-11-24 23:59:59")]));
        tally.apply(receipt("H2", &[("c", "1", "1", "2026-11-25 00:00:00")]));
        let lines = tally.lines();
        assert_eq!(lines.len(), 2);
        let h1 = &lines[0];
        assert_eq!((h1.rows_reported, h1.distinct_keys, h1.corrections), (3, 2, 1));
        assert_eq!(h1.total_quantity.to_string(), "13");
        assert_eq!(h1.total_amount.to_string(), "33");
        let text = table(&lines);
        assert!(text.lines().last().unwrap().starts_with("total"), "{text}");
        let csv = csv(&lines).unwrap();
        assert!(
            csv.starts_with("institution,infno,movement,rows_reported,distinct_keys,corrections,total_quantity,total_amount\n"),
            "{csv}"
        );
        assert!(csv.contains("H1,ELS7002,drug stock-in,3,2,1,13,33"), "{csv}");
    }

    #[test]
    fn one_institution_can_be_reported_alone() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
        let mut tally = Tally::new(day, day, Some("H2".into()));
        tally.apply(receipt("H1", &[("a", "10", "2.5", "2026-11-25 08:00:00")]));
        tally.apply(receipt("H2", &[("c", "1", "1", "2026-11-25 00:00:00")]));
        assert_eq!(tally.lines().len(), 1);
    }
}
