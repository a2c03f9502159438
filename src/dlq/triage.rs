//! Triage of dead letters (`dlq stats --by`): grouping by the platform's return code
//! (`x-els-return-code`), by the field named in the error (`x-els-error`), or by the
//! offending value, most frequent first, so that "why were 300 rows refused, and which
//! product codes are they?" has an answer.
//!
//! * **Fields and values named.** The error of an `invalid` dead letter names each broken
//!   rule as `data.<field>: <rule> (got <value>)`, joined with `; `; each is a cause (the
//!   `data.` prefix dropped). A letter naming several fields counts once under each.
//! * **Refusals name no field.** The platform answers a refused call with a code and its
//!   official message only, never the row or the field. For a `rejected` letter whose
//!   error names no field, the offending value is taken to be the record's product: its
//!   `prov_plaf_prod_code`, or its `drug_code` / `mcs_code` when that is `"0"` (an
//!   off-platform product), which is what "data not found" (15) is usually about.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::letter::{DeadLetter, Reason};
use super::stats::Tally;
use crate::beijing;
use crate::platform::outcome::meaning;

/// What `dlq stats --by` groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    /// The platform's returnCode (`x-els-return-code`).
    ReturnCode,
    /// The field named in the error (`x-els-error`).
    Field,
    /// The offending value, with its field and return code.
    Value,
}

impl By {
    /// The word used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            By::ReturnCode => "return-code",
            By::Field => "field",
            By::Value => "value",
        }
    }
}

/// One cause a dead letter names: a field and the value it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// The field the error names (without `data.`), if any.
    pub field: Option<String>,
    /// The field the value is of: the one named, or the product code of a refusal.
    pub value_field: Option<String>,
    /// The offending value, if known.
    pub value: Option<String>,
}

/// The causes a dead letter names (at least one, possibly without field or value).
pub fn causes(letter: &DeadLetter) -> Vec<Cause> {
    let named: Vec<Cause> = letter
        .error
        .as_deref()
        .unwrap_or_default()
        .split("; ")
        .filter_map(problem)
        .map(|(field, value)| Cause { field: Some(field.clone()), value_field: Some(field), value })
        .collect();
    if !named.is_empty() {
        return named;
    }
    let product = if letter.reason == Reason::Rejected { product(&letter.record()) } else { None };
    let (value_field, value) = product.map_or((None, None), |(field, value)| (Some(field.to_owned()), Some(value)));
    vec![Cause { field: None, value_field, value }]
}

/// A problem `field: rule (got value)` as (field, value), the field without `data.`.
fn problem(text: &str) -> Option<(String, Option<String>)> {
    let (field, rule) = text.split_once(": ")?;
    let is_name = !field.is_empty() && field.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
    if !is_name {
        return None;
    }
    let value = rule.rfind(" (got ").and_then(|at| rule[at + 6..].strip_suffix(')')).map(unquote);
    Some((field.strip_prefix("data.").unwrap_or(field).to_owned(), value))
}

/// A value quoted as JSON text, unquoted when it is a JSON string.
fn unquote(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::String(s)) => s,
        _ => text.to_owned(),
    }
}

/// The record's product code: `prov_plaf_prod_code`, or the national code when that is "0".
fn product(record: &Value) -> Option<(&'static str, String)> {
    let text = |field: &str| match record.get(field)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match text("prov_plaf_prod_code") {
        Some(code) if code != "0" => Some(("prov_plaf_prod_code", code)),
        provincial => ["drug_code", "mcs_code"]
            .into_iter()
            .find_map(|field| text(field).map(|code| (field, code)))
            .or(provincial.map(|code| ("prov_plaf_prod_code", code))),
    }
}

/// A group: what its letters share.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Group {
    return_code: Option<i64>,
    field: Option<String>,
    value: Option<String>,
}

/// Dead letters grouped one way.
#[derive(Debug, Clone, PartialEq)]
pub struct Triage {
    by: By,
    letters: u64,
    groups: BTreeMap<Group, Tally>,
}

impl Triage {
    /// Empty, grouping `by`.
    pub fn new(by: By) -> Self {
        Triage { by, letters: 0, groups: BTreeMap::new() }
    }

    /// Counts one dead letter (once in each group it falls in).
    pub fn add(&mut self, letter: &DeadLetter) {
        self.letters += 1;
        let mut groups: Vec<Group> = match self.by {
            By::ReturnCode => vec![Group { return_code: letter.return_code, field: None, value: None }],
            By::Field => causes(letter).into_iter().map(|c| Group { return_code: None, field: c.field, value: None }).collect(),
            By::Value => causes(letter)
                .into_iter()
                .map(|c| Group { return_code: letter.return_code, field: c.value_field, value: c.value })
                .collect(),
        };
        groups.sort();
        groups.dedup();
        for group in groups {
            self.groups.entry(group).or_default().add(letter.last_failed_at);
        }
    }

    /// What it groups by.
    pub fn by(&self) -> By {
        self.by
    }

    /// Dead letters counted.
    pub fn letters(&self) -> u64 {
        self.letters
    }

    /// The groups, most frequent first (then in their natural order).
    fn ranked(&self) -> Vec<(&Group, &Tally)> {
        let mut ranked: Vec<(&Group, &Tally)> = self.groups.iter().collect();
        ranked.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(b.0)));
        ranked
    }

    /// Everything as one JSON object: `by`, `letters`, and `groups` most frequent first,
    /// each with what it groups by, `count`, and its oldest and newest failure (RFC 3339, UTC).
    pub fn to_json(&self) -> Value {
        let groups: Vec<Value> = self
            .ranked()
            .into_iter()
            .map(|(group, tally)| {
                let (oldest, newest) = tally.json();
                let mut entry = match self.by {
                    By::ReturnCode => json!({"return_code": group.return_code, "meaning": group.return_code.map(meaning)}),
                    By::Field => json!({"field": group.field}),
                    By::Value => json!({"return_code": group.return_code, "field": group.field, "value": group.value}),
                };
                entry["count"] = json!(tally.count);
                entry["oldest_failed_at"] = oldest;
                entry["newest_failed_at"] = newest;
                entry
            })
            .collect();
        json!({"by": self.by.as_str(), "letters": self.letters, "groups": groups})
    }

    /// A table for people, most frequent first, failure times in Beijing time.
    pub fn table(&self) -> String {
        let dash = |text: Option<&str>| text.unwrap_or("-").to_owned();
        let time = |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or_else(|| "-".to_owned(), beijing::format);
        let mut head: Vec<String> = match self.by {
            By::ReturnCode => vec!["RETURN CODE".into(), "MEANING".into()],
            By::Field => vec!["FIELD".into()],
            By::Value => vec!["RETURN CODE".into(), "FIELD".into(), "VALUE".into()],
        };
        head.extend(["COUNT".into(), "OLDEST FAILURE".into(), "NEWEST FAILURE".into()]);
        let mut rows = vec![head];
        for (group, tally) in self.ranked() {
            let code = group.return_code.map(|c| c.to_string());
            let mut row = match self.by {
                By::ReturnCode => vec![dash(code.as_deref()), dash(group.return_code.map(meaning))],
                By::Field => vec![group.field.clone().unwrap_or_else(|| "- (none named)".into())],
                By::Value => vec![dash(code.as_deref()), dash(group.field.as_deref()), dash(group.value.as_deref())],
            };
            row.extend([tally.count.to_string(), time(tally.oldest), time(tally.newest)]);
            rows.push(row);
        }
        let mut out = columns(&rows);
        if self.by != By::ReturnCode {
            let _ = writeln!(out, "\n(a dead letter naming several fields counts under each)");
        }
        let _ = writeln!(out, "(failure times are x-els-last-failed-at in Beijing time)");
        out
    }
}

/// Rows as columns two spaces apart, padded to the widest cell; `COUNT` right-aligned.
fn columns(rows: &[Vec<String>]) -> String {
    let count_at = rows.first().and_then(|head| head.iter().position(|h| h == "COUNT"));
    let mut widths = vec![0usize; rows.first().map_or(0, Vec::len)];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (at, (cell, width)) in row.iter().zip(&widths).enumerate() {
            let pad = " ".repeat(width - cell.chars().count());
            if Some(at) == count_at { line.push_str(&format!("{pad}{cell}  ")) } else { line.push_str(&format!("{cell}{pad}  ")) }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::BasicProperties;
    use lapin::types::{AMQPValue, FieldTable, LongString};

    fn letter(reason: &str, code: Option<i64>, error: &str, data: Value) -> DeadLetter {
        let mut headers = FieldTable::default();
        headers.insert("x-els-reason".into(), AMQPValue::LongString(LongString::from(reason)));
        headers.insert("x-els-error".into(), AMQPValue::LongString(LongString::from(error)));
        headers.insert("x-els-last-failed-at".into(), AMQPValue::LongString(LongString::from("2026-11-25T02:00:00Z")));
        if let Some(code) = code {
            headers.insert("x-els-return-code".into(), AMQPValue::LongLongInt(code));
        }
        let body = json!({"infno": "ELS7002", "fixmedins_code": "H1", "data": data});
        DeadLetter::read(&BasicProperties::default().with_headers(headers), body.to_string().as_bytes(), None)
    }

    fn refused(code: i64, product: &str) -> DeadLetter {
        let error = format!("the platform refused record K: returnCode {code}: 数据不存在");
        letter("rejected", Some(code), &error, json!({"hosp_purc_mgt_detl": "K", "prov_plaf_prod_code": product, "drug_code": "N-1"}))
    }

    fn invalid() -> DeadLetter {
        let error = r#"data.stoin_cnt: must be a non-negative decimal with at most 12 digits, 4 of them after the point (got "-1"); data.er_flag: must be one of "0", "1" (got "2")"#;
        letter("invalid", None, error, json!({"stoin_cnt": "-1", "er_flag": "2"}))
    }

    fn mix() -> Vec<DeadLetter> {
        vec![refused(15, "P-1"), refused(15, "P-1"), refused(15, "0"), refused(13, "P-2"), invalid()]
    }

    fn count(by: By) -> Triage {
        let mut triage = Triage::new(by);
        for letter in mix() {
            triage.add(&letter);
        }
        triage
    }

    #[test]
    fn the_fields_and_values_of_an_invalid_letter_are_read_from_its_error() {
        let found = causes(&invalid());
        let pairs: Vec<(Option<&str>, Option<&str>)> = found.iter().map(|c| (c.field.as_deref(), c.value.as_deref())).collect();
        assert_eq!(pairs, vec![(Some("stoin_cnt"), Some("-1")), (Some("er_flag"), Some("2"))]);
        let off_platform = causes(&refused(15, "0"));
        assert_eq!(off_platform[0].field, None, "the platform names no field");
        assert_eq!((off_platform[0].value_field.as_deref(), off_platform[0].value.as_deref()), (Some("drug_code"), Some("N-1")));
        let exhausted = letter("exhausted", Some(6), "failing for 700s over 9 attempts; the last: returnCode 6: 服务不可用", json!({}));
        assert_eq!(causes(&exhausted), vec![Cause { field: None, value_field: None, value: None }]);
    }

    #[test]
    fn a_mix_is_grouped_by_return_code_most_frequent_first() {
        let json = count(By::ReturnCode).to_json();
        let groups: Vec<(Value, u64)> =
            json["groups"].as_array().unwrap().iter().map(|g| (g["return_code"].clone(), g["count"].as_u64().unwrap())).collect();
        assert_eq!(groups, vec![(json!(15), 3), (Value::Null, 1), (json!(13), 1)]);
        assert_eq!(json["groups"][0]["meaning"], "data not found");
        assert_eq!(json["letters"], 5);
        let table = count(By::ReturnCode).table();
        assert!(table.contains("15           data not found              3  2026-11-25 10:00:00"), "{table}");
    }

    #[test]
    fn a_mix_is_grouped_by_field_and_by_value() {
        let fields = count(By::Field).to_json();
        let named: Vec<(Value, u64)> =
            fields["groups"].as_array().unwrap().iter().map(|g| (g["field"].clone(), g["count"].as_u64().unwrap())).collect();
        assert_eq!(named, vec![(Value::Null, 4), (json!("er_flag"), 1), (json!("stoin_cnt"), 1)]);
        let values = count(By::Value).to_json();
        let found: Vec<(Value, Value, Value, u64)> = values["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| (g["return_code"].clone(), g["field"].clone(), g["value"].clone(), g["count"].as_u64().unwrap()))
            .collect();
        assert_eq!(found[0], (json!(15), json!("prov_plaf_prod_code"), json!("P-1"), 2));
        assert_eq!(found.len(), 5, "{found:?}");
        assert!(found.contains(&(json!(15), json!("drug_code"), json!("N-1"), 1)));
        assert!(found.contains(&(Value::Null, json!("er_flag"), json!("2"), 1)));
        assert!(count(By::Value).table().contains("(a dead letter naming several fields counts under each)"));
    }
}
