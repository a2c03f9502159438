//! Reconciliation of the warehouse system's own export with what the platform holds by the
//! ledger (`els-bridge report --against FILE`), for one institution and transaction and a
//! range of movement days (Beijing time).
//!
//! A record is looked at when its movement day is in the range in the file or at the
//! platform. Then it is *missing at the platform* (in the file, no accepted row), *not in
//! the file* (reported, absent from the file), or it *differs* in quantity, price or
//! movement time (compared as values: `12.3400` equals `12.34`); otherwise it is equal.
//! Within the file the later row of a key wins, as it would at the platform; lines that are
//! not valid records are listed as *unreadable*, since they can never have been reported.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Serialize;

use super::records::{Accepted, Latest, movement_day};
use crate::spec::{Infno, Record};

/// A row of the export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    /// Its line in the file.
    pub line: u64,
    /// The quantity.
    pub quantity: Decimal,
    /// The unit price.
    pub price: Decimal,
    /// The movement time, `yyyy-MM-dd HH:mm:ss`.
    pub time: String,
}

/// The warehouse system's export, read row by row.
#[derive(Debug)]
pub struct Export {
    infno: Infno,
    rows: BTreeMap<String, FileRow>,
    unreadable: Vec<(u64, String)>,
    repeated: u64,
}

impl Export {
    /// An empty export of `infno` records.
    pub fn new(infno: Infno) -> Self {
        Export { infno, rows: BTreeMap::new(), unreadable: Vec::new(), repeated: 0 }
    }

    /// Adds the valid record on `line`; a later row of the same key replaces an earlier one.
    pub fn add(&mut self, line: u64, record: &Record) {
        let row =
            FileRow { line, quantity: record.quantity().normalize(), price: record.price().normalize(), time: record.time().to_string() };
        if self.rows.insert(record.key().to_owned(), row).is_some() {
            self.repeated += 1;
        }
    }

    /// Notes a line that is not a valid record, with why.
    pub fn unreadable(&mut self, line: u64, why: String) {
        self.unreadable.push((line, why));
    }
}

/// What differs about one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Difference {
    /// In the file, never accepted by the platform.
    MissingAtPlatform,
    /// Accepted by the platform, not in the file.
    NotInFile,
    /// The quantities differ.
    Quantity,
    /// The unit prices differ.
    Price,
    /// The movement times differ.
    Time,
    /// A line of the file that is not a valid record.
    Unreadable,
}

impl Difference {
    fn as_str(self) -> &'static str {
        match self {
            Difference::MissingAtPlatform => "missing at the platform",
            Difference::NotInFile => "not in the file",
            Difference::Quantity => "quantity differs",
            Difference::Price => "price differs",
            Difference::Time => "time differs",
            Difference::Unreadable => "unreadable line",
        }
    }
}

/// One line of the reconciliation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    /// What differs.
    pub difference: Difference,
    /// The record key (empty for an unreadable line).
    pub key: String,
    /// The file's value (the whole row for a missing record; why, for an unreadable line).
    pub in_file: String,
    /// The platform's value (the whole row for a record not in the file).
    pub at_platform: String,
    /// The line in the file.
    pub file_line: Option<u64>,
    /// The call that carried the platform's row.
    pub msgid: Option<String>,
}

/// The outcome of a reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciliation {
    /// Every difference, by kind (missing, not in the file, quantity, price, time,
    /// unreadable), then by key.
    pub lines: Vec<Line>,
    /// Records of the range in the file.
    pub in_file: u64,
    /// Records of the range at the platform.
    pub reported: u64,
    /// Records equal on both sides.
    pub equal: u64,
    /// Rows of the file replaced by a later row of the same key.
    pub repeated: u64,
}

impl Reconciliation {
    /// Whether anything differs (the exit status is 1 then).
    pub fn differs(&self) -> bool {
        !self.lines.is_empty()
    }

    fn count(&self, difference: Difference) -> usize {
        self.lines.iter().filter(|l| l.difference == difference).count()
    }

    /// The summary line.
    pub fn summary(&self) -> String {
        let changed: BTreeSet<&str> = self
            .lines
            .iter()
            .filter(|l| matches!(l.difference, Difference::Quantity | Difference::Price | Difference::Time))
            .map(|l| l.key.as_str())
            .collect();
        format!(
            "summary: {} records in the file, {} reported; {} equal, {} missing at the platform, {} not in the file, \
             {} differ (quantity {}, price {}, time {}); {} unreadable lines, {} rows repeated a key (the later counts)",
            self.in_file,
            self.reported,
            self.equal,
            self.count(Difference::MissingAtPlatform),
            self.count(Difference::NotInFile),
            changed.len(),
            self.count(Difference::Quantity),
            self.count(Difference::Price),
            self.count(Difference::Time),
            self.count(Difference::Unreadable),
            self.repeated,
        )
    }
}

fn whole(quantity: Decimal, price: Decimal, time: &str) -> String {
    format!("quantity {quantity}, price {price}, time {time}")
}

/// Compares `export` with the platform's records of `institution` in `latest`, for
/// movements from `from` to `to` (inclusive).
pub fn reconcile(export: &Export, latest: &Latest, institution: &str, from: NaiveDate, to: NaiveDate) -> Reconciliation {
    let in_range = |time: &str| movement_day(time).is_some_and(|day| (from..=to).contains(&day));
    let reported: BTreeMap<String, Accepted> = latest
        .moved(from, to, Some(export.infno))
        .into_iter()
        .filter(|r| r.institution == institution)
        .map(|r| (r.key.clone(), r))
        .collect();
    let in_file: BTreeSet<&String> = export.rows.iter().filter(|(_, row)| in_range(&row.time)).map(|(key, _)| key).collect();
    let keys: BTreeSet<&String> = in_file.iter().copied().chain(reported.keys()).collect();
    let mut lines = Vec::new();
    let mut equal = 0;
    for key in keys {
        let platform = reported.get(key).or_else(|| latest.get(institution, export.infno, key));
        match (export.rows.get(key), platform) {
            (Some(row), None) => lines.push(Line {
                difference: Difference::MissingAtPlatform,
                key: key.clone(),
                in_file: whole(row.quantity, row.price, &row.time),
                at_platform: String::new(),
                file_line: Some(row.line),
                msgid: None,
            }),
            (None, Some(p)) => lines.push(Line {
                difference: Difference::NotInFile,
                key: key.clone(),
                in_file: String::new(),
                at_platform: whole(p.quantity, p.price, &p.time),
                file_line: None,
                msgid: Some(p.msgid.clone()),
            }),
            (Some(row), Some(p)) => {
                let before = lines.len();
                lines.extend(changes(key, row, p));
                equal += u64::from(lines.len() == before);
            }
            (None, None) => {}
        }
    }
    lines.sort_by_key(|l| l.difference);
    lines.extend(export.unreadable.iter().map(|(line, why)| Line {
        difference: Difference::Unreadable,
        key: String::new(),
        in_file: why.clone(),
        at_platform: String::new(),
        file_line: Some(*line),
        msgid: None,
    }));
    Reconciliation { lines, in_file: in_file.len() as u64, reported: reported.len() as u64, equal, repeated: export.repeated }
}

/// The fields of a record that differ between the file and the platform.
fn changes(key: &str, row: &FileRow, platform: &Accepted) -> Vec<Line> {
    let fields = [
        (Difference::Quantity, row.quantity.to_string(), platform.quantity.to_string()),
        (Difference::Price, row.price.to_string(), platform.price.to_string()),
        (Difference::Time, row.time.clone(), platform.time.clone()),
    ];
    fields
        .into_iter()
        .filter(|(_, file, platform)| file != platform)
        .map(|(difference, in_file, at_platform)| Line {
            difference,
            key: key.to_owned(),
            in_file,
            at_platform,
            file_line: Some(row.line),
            msgid: Some(platform.msgid.clone()),
        })
        .collect()
}

/// The differences as a readable table (the summary line is printed apart).
pub fn table(lines: &[Line]) -> String {
    let dash = |text: &str| if text.is_empty() { "-".to_owned() } else { text.to_owned() };
    let mut out = String::new();
    let _ = writeln!(out, "{:<24} {:<24} {:>6}  {:<50} {:<50} msgid", "difference", "key", "line", "in the file", "at the platform");
    for l in lines {
        let _ = writeln!(
            out,
            "{:<24} {:<24} {:>6}  {:<50} {:<50} {}",
            l.difference.as_str(),
            dash(&l.key),
            l.file_line.map_or_else(|| "-".to_owned(), |n| n.to_string()),
            dash(&l.in_file),
            dash(&l.at_platform),
            l.msgid.as_deref().unwrap_or("-"),
        );
    }
    out
}

/// The differences as CSV for spreadsheets (UTF-8, header line first).
pub fn csv(lines: &[Line]) -> Result<String, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for line in lines {
        writer.serialize(line)?;
    }
    if lines.is_empty() {
        writer.write_record(["difference", "key", "in_file", "at_platform", "file_line", "msgid"])?;
    }
    let bytes = writer.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::log::Fold;
    use crate::ledger::{Entry, Receipt, ReceiptRow};
    use serde_json::{Map, Value, json};

    fn record(key: &str, quantity: &str, time: &str) -> Record {
        let mut row: Map<String, Value> = serde_json::from_value(json!({
            "hosp_purc_mgt_detl": key, "drug_code": "X", "prov_plaf_prod_code": "0", "drug_genname": "g", "dosform": "d",
            "spec": "s", "convrat": "1", "pacunt": "p", "prodentp_name": "m", "delventp_name": "d",
            "delventp_code": "91320000134567891B", "purc_pric": "12.3400", "stoin_time": time, "er_flag": "0",
            "prov_plaf_purc_ord_det_id": "0",
        }))
        .unwrap();
        row.insert("stoin_cnt".into(), json!(quantity));
        Record::parse(Infno::Els7002, &row).unwrap()
    }

    fn accepted(rows: &[(&str, &str, &str)]) -> Latest {
        let mut latest = Latest::new(None);
        latest.apply(Entry::Receipt(Receipt {
            claim: "c".into(),
            institution: "H1".into(),
            infno: Infno::Els7002,
            msgid: "m1".into(),
            return_code: 1,
            at: chrono::Utc::now(),
            ends_claim: false,
            rows: rows
                .iter()
                .map(|(key, quantity, time)| ReceiptRow {
                    key: key.to_string(),
                    version: None,
                    quantity: quantity.parse().unwrap(),
                    price: "12.34".parse().unwrap(),
                    time: time.to_string(),
                    fingerprint: None,
                })
                .collect(),
        }));
        latest
    }

    const DAY: &str = "2026-11-25 09:30:00";

    #[test]
    fn finds_missing_extra_and_changed_records_and_nothing_in_an_exact_export() {
        let latest = accepted(&[("same", "1", DAY), ("changed", "10", DAY), ("extra", "2", DAY), ("moved", "3", "2026-11-24 23:00:00")]);
        let mut export = Export::new(Infno::Els7002);
        export.add(2, &record("same", "1.000", DAY));
        export.add(3, &record("changed", "12", DAY));
        export.add(4, &record("missing", "5", DAY));
        export.add(5, &record("moved", "3", DAY));
        export.unreadable(6, "stoin_cnt: is required".into());
        export.add(7, &record("outside", "1", "2026-11-26 08:00:00"));
        let day = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
        let result = reconcile(&export, &latest, "H1", day, day);
        let found: Vec<(Difference, &str)> = result.lines.iter().map(|l| (l.difference, l.key.as_str())).collect();
        assert_eq!(
            found,
            vec![
                (Difference::MissingAtPlatform, "missing"),
                (Difference::NotInFile, "extra"),
                (Difference::Quantity, "changed"),
                (Difference::Time, "moved"),
                (Difference::Unreadable, ""),
            ]
        );
        assert_eq!((result.in_file, result.reported, result.equal), (4, 3, 1));
        assert!(result.differs());
        let quantity = &result.lines[2];
        assert_eq!((quantity.in_file.as_str(), quantity.at_platform.as_str(), quantity.file_line), ("12", "10", Some(3)));
        assert!(result.summary().contains("1 equal, 1 missing at the platform, 1 not in the file, 2 differ (quantity 1, price 0, time 1)"));
        let text = csv(&result.lines).unwrap();
        assert!(text.starts_with("difference,key,in_file,at_platform,file_line,msgid\n"), "{text}");
        assert!(text.contains("quantity,changed,12,10,3,m1\n"), "{text}");
        assert!(table(&result.lines).contains("missing at the platform"));

        let mut exact = Export::new(Infno::Els7002);
        for (line, key) in ["same", "changed", "extra"].into_iter().enumerate() {
            let quantity = latest.get("H1", Infno::Els7002, key).unwrap().quantity.to_string();
            exact.add(line as u64 + 2, &record(key, &quantity, DAY));
        }
        let result = reconcile(&exact, &latest, "H1", day, day);
        assert!(!result.differs(), "{:?}", result.lines);
        assert_eq!(result.equal, 3);
        assert_eq!(csv(&result.lines).unwrap(), "difference,key,in_file,at_platform,file_line,msgid\n");
    }

    #[test]
    fn the_later_row_of_a_key_in_the_file_counts() {
        let latest = accepted(&[("k", "2", DAY)]);
        let mut export = Export::new(Infno::Els7002);
        export.add(2, &record("k", "1", DAY));
        export.add(3, &record("k", "2", DAY));
        let day = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
        let result = reconcile(&export, &latest, "H1", day, day);
        assert!(!result.differs());
        assert_eq!(result.repeated, 1);
    }
}
