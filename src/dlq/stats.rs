//! Counting dead letters by reason, transaction and institution, with the oldest and
//! newest failure (`x-els-last-failed-at`) of each group, as a table for people and as
//! JSON for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::letter::{DeadLetter, Reason};
use crate::beijing;
use crate::contract::rfc3339;

/// Shown for a transaction or institution the body does not name.
const UNKNOWN: &str = "-";

/// How many dead letters of a group, with the oldest and newest failure.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Tally {
    pub(super) count: u64,
    pub(super) oldest: Option<DateTime<Utc>>,
    pub(super) newest: Option<DateTime<Utc>>,
}

impl Tally {
    pub(super) fn add(&mut self, failed: Option<DateTime<Utc>>) {
        self.count += 1;
        if let Some(failed) = failed {
            self.oldest = Some(self.oldest.map_or(failed, |t| t.min(failed)));
            self.newest = Some(self.newest.map_or(failed, |t| t.max(failed)));
        }
    }

    pub(super) fn json(&self) -> (Value, Value) {
        (json!(self.oldest.map(rfc3339)), json!(self.newest.map(rfc3339)))
    }
}

/// Counts of dead letters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    all: Tally,
    groups: BTreeMap<(Reason, String, String), Tally>,
    by_reason: BTreeMap<Reason, u64>,
    by_infno: BTreeMap<String, u64>,
    by_institution: BTreeMap<String, u64>,
}

impl Stats {
    /// Counts one dead letter.
    pub fn add(&mut self, letter: &DeadLetter) {
        let infno = letter.infno.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| UNKNOWN.into());
        let institution = letter.institution.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| UNKNOWN.into());
        self.all.add(letter.last_failed_at);
        self.groups.entry((letter.reason, infno.clone(), institution.clone())).or_default().add(letter.last_failed_at);
        *self.by_reason.entry(letter.reason).or_default() += 1;
        *self.by_infno.entry(infno).or_default() += 1;
        *self.by_institution.entry(institution).or_default() += 1;
    }

    /// Dead letters counted.
    pub fn total(&self) -> u64 {
        self.all.count
    }

    /// Everything as one JSON object: `total`, `oldest_failed_at`, `newest_failed_at`
    /// (RFC 3339, UTC), `by_reason`, `by_infno`, `by_institution` and `groups` (one per
    /// reason, infno and institution, with `count` and the group's oldest and newest).
    pub fn to_json(&self) -> Value {
        let counts = |map: &BTreeMap<String, u64>| map.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<Map<_, _>>();
        let by_reason: Map<String, Value> = self.by_reason.iter().map(|(k, v)| (k.as_str().to_owned(), json!(v))).collect();
        let groups: Vec<Value> = self
            .groups
            .iter()
            .map(|((reason, infno, institution), tally)| {
                let (oldest, newest) = tally.json();
                json!({
                    "reason": reason.as_str(), "infno": infno, "institution": institution, "count": tally.count,
                    "oldest_failed_at": oldest, "newest_failed_at": newest,
                })
            })
            .collect();
        let (oldest, newest) = self.all.json();
        json!({
            "total": self.all.count,
            "oldest_failed_at": oldest,
            "newest_failed_at": newest,
            "by_reason": by_reason,
            "by_infno": counts(&self.by_infno),
            "by_institution": counts(&self.by_institution),
            "groups": groups,
        })
    }

    /// A table for people: one row per reason, infno and institution, then a total row,
    /// times in Beijing time.
    pub fn table(&self) -> String {
        let time = |t: Option<DateTime<Utc>>| t.map_or_else(|| UNKNOWN.to_owned(), beijing::format);
        let mut rows: Vec<[String; 6]> =
            vec![["REASON".into(), "INFNO".into(), "INSTITUTION".into(), "COUNT".into(), "OLDEST FAILURE".into(), "NEWEST FAILURE".into()]];
        for ((reason, infno, institution), tally) in &self.groups {
            rows.push([
                reason.as_str().into(),
                infno.clone(),
                institution.clone(),
                tally.count.to_string(),
                time(tally.oldest),
                time(tally.newest),
            ]);
        }
        rows.push(["total".into(), String::new(), String::new(), self.all.count.to_string(), time(self.all.oldest), time(self.all.newest)]);
        let mut widths = [0usize; 6];
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &rows {
            let line = format!(
                "{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {:<w4$}  {}",
                row[0],
                row[1],
                row[2],
                row[3],
                row[4],
                row[5],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3],
                w4 = widths[4],
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
        let by_reason: Vec<String> = self.by_reason.iter().map(|(r, n)| format!("{} {n}", r.as_str())).collect();
        let by_infno: Vec<String> = self.by_infno.iter().map(|(i, n)| format!("{i} {n}")).collect();
        let by_institution: Vec<String> = self.by_institution.iter().map(|(i, n)| format!("{i} {n}")).collect();
        let _ = writeln!(out, "\nby reason:      {}", or_none(&by_reason));
        let _ = writeln!(out, "by infno:       {}", or_none(&by_infno));
        let _ = writeln!(out, "by institution: {}", or_none(&by_institution));
        let _ = writeln!(out, "(failure times are x-els-last-failed-at in Beijing time)");
        out
    }
}

fn or_none(parts: &[String]) -> String {
    if parts.is_empty() { "none".to_owned() } else { parts.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::BasicProperties;
    use lapin::types::{AMQPValue, FieldTable, LongString};

    fn letter(reason: &str, infno: &str, failed: &str) -> DeadLetter {
        let mut headers = FieldTable::default();
        headers.insert("x-els-reason".into(), AMQPValue::LongString(LongString::from(reason)));
        headers.insert("x-els-last-failed-at".into(), AMQPValue::LongString(LongString::from(failed)));
        let body = format!(r#"{{"infno":"{infno}","fixmedins_code":"H32128200338","data":{{}}}}"#);
        DeadLetter::read(&BasicProperties::default().with_headers(headers), body.as_bytes(), None)
    }

    #[test]
    fn groups_count_with_oldest_and_newest() {
        let mut stats = Stats::default();
        stats.add(&letter("exhausted", "ELS7002", "2026-11-25T02:00:00Z"));
        stats.add(&letter("exhausted", "ELS7002", "2026-11-25T01:00:00Z"));
        stats.add(&letter("rejected", "ELS7004", "2026-11-25T03:00:00Z"));
        stats.add(&DeadLetter::read(&BasicProperties::default(), b"junk", None));
        let json = stats.to_json();
        assert_eq!(json["total"], 4);
        assert_eq!(json["oldest_failed_at"], "2026-11-25T01:00:00.000Z");
        assert_eq!(json["newest_failed_at"], "2026-11-25T03:00:00.000Z");
        assert_eq!(json["by_reason"], json!({"exhausted": 2, "rejected": 1, "other": 1}));
        assert_eq!(json["by_infno"], json!({"ELS7002": 2, "ELS7004": 1, "-": 1}));
        let groups = json["groups"].as_array().unwrap();
        let exhausted = groups.iter().find(|g| g["reason"] == "exhausted").unwrap();
        assert_eq!(exhausted["count"], 2);
        assert_eq!(exhausted["oldest_failed_at"], "2026-11-25T01:00:00.000Z");
        assert_eq!(groups.len(), 3);
        let table = stats.table();
        assert!(table.contains("exhausted  ELS7002  H32128200338      2  2026-11-25 09:00:00  2026-11-25 10:00:00"), "{table}");
        assert!(table.contains("by reason:      rejected 1, exhausted 2, other 1"), "{table}");
    }
}
