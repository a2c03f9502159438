//! The evidence of one record (`els-bridge report --key`): every claim and receipt of its
//! key in the ledger, in log order, with the version, the call (msgid), the time, the
//! platform's return code and the process that claimed it; and for each claim how it
//! ended (accepted, released without a receipt, or still open).

use std::collections::HashMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use super::{Claim, Entry, Receipt};
use crate::beijing;
use crate::broker::log::Fold;
use crate::spec::Infno;

/// What a step of the history is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A process claimed the key before uploading it.
    Claim,
    /// The platform accepted a row of the key.
    Receipt,
}

/// How a claim ended, as far as the ledger knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// A receipt of the key under this claim follows.
    Accepted,
    /// Released without a receipt of the key: refused, failed, or superseded by a newer version.
    NotAccepted,
    /// Neither released nor receipted (in force, or its process died; it expires).
    Open,
}

impl Ending {
    fn as_str(self) -> &'static str {
        match self {
            Ending::Accepted => "accepted",
            Ending::NotAccepted => "released without receipt (refused, failed or superseded)",
            Ending::Open => "open (in progress, or its process stopped)",
        }
    }
}

/// One claim or receipt of the key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// Claim or receipt.
    pub kind: Kind,
    /// When it was written (the claimer's or receiver's clock).
    pub at: DateTime<Utc>,
    /// The institution.
    pub institution: String,
    /// The transaction.
    pub infno: Infno,
    /// The event's version, if it had one.
    pub version: Option<u64>,
    /// The claim (of a receipt: the claim it was uploaded under).
    pub claim: String,
    /// The call's msgid (receipts only).
    pub msgid: Option<String>,
    /// The platform's returnCode (receipts only: 1, or 17 for a duplicate).
    pub return_code: Option<u32>,
    /// The process that claimed (`<host> pid <id>`; absent in claims of older releases).
    pub replica: Option<String>,
    /// How the claim ended (claims only).
    pub ending: Option<Ending>,
    /// The quantity accepted (receipts only).
    pub quantity: Option<Decimal>,
    /// The unit price accepted (receipts only).
    pub price: Option<Decimal>,
    /// The movement time accepted (receipts only; Beijing wall clock).
    pub time: Option<String>,
}

/// The history of one key being folded from the ledger.
#[derive(Debug)]
pub struct History {
    key: String,
    institution: Option<String>,
    steps: Vec<Step>,
    /// Claims of the key: where their step is, and whether they were released.
    claims: HashMap<String, (usize, bool)>,
}

impl History {
    /// The history of `key`, of one institution or all.
    pub fn new(key: &str, institution: Option<String>) -> Self {
        History { key: key.to_owned(), institution, steps: Vec::new(), claims: HashMap::new() }
    }

    /// The steps in log order, each claim with how it ended.
    pub fn steps(&self) -> Vec<Step> {
        let mut steps = self.steps.clone();
        for (at, released) in self.claims.values() {
            let accepted = self.steps.iter().any(|s| s.kind == Kind::Receipt && s.claim == steps[*at].claim);
            steps[*at].ending = Some(match (accepted, released) {
                (true, _) => Ending::Accepted,
                (false, true) => Ending::NotAccepted,
                (false, false) => Ending::Open,
            });
        }
        steps
    }

    fn wanted(&self, institution: &str) -> bool {
        self.institution.as_ref().is_none_or(|only| only == institution)
    }

    fn claimed(&mut self, claim: Claim) {
        let Some((_, version)) = claim.keys.iter().find(|(key, _)| *key == self.key) else { return };
        let step = Step {
            kind: Kind::Claim,
            at: claim.at,
            institution: claim.institution,
            infno: claim.infno,
            version: *version,
            claim: claim.id.clone(),
            msgid: None,
            return_code: None,
            replica: claim.replica,
            ending: None,
            quantity: None,
            price: None,
            time: None,
        };
        self.claims.insert(claim.id, (self.steps.len(), false));
        self.steps.push(step);
    }

    fn released(&mut self, claim: &str) {
        if let Some((_, released)) = self.claims.get_mut(claim) {
            *released = true;
        }
    }

    fn receipted(&mut self, receipt: Receipt) {
        if receipt.ends_claim {
            self.released(&receipt.claim);
        }
        let replica = self.claims.get(&receipt.claim).and_then(|(at, _)| self.steps[*at].replica.clone());
        for row in receipt.rows.into_iter().filter(|row| row.key == self.key) {
            self.steps.push(Step {
                kind: Kind::Receipt,
                at: receipt.at,
                institution: receipt.institution.clone(),
                infno: receipt.infno,
                version: row.version,
                claim: receipt.claim.clone(),
                msgid: Some(receipt.msgid.clone()),
                return_code: Some(receipt.return_code),
                replica: replica.clone(),
                ending: None,
                quantity: Some(row.quantity),
                price: Some(row.price),
                time: Some(row.time),
            });
        }
    }
}

impl Fold for History {
    type Change = Entry;
    type Read<'de> = Entry;

    fn apply(&mut self, change: Entry) {
        match change {
            Entry::Claim(claim) if self.wanted(&claim.institution) => self.claimed(claim),
            Entry::Receipt(receipt) if self.wanted(&receipt.institution) => self.receipted(receipt),
            Entry::Release { claim } => self.released(&claim),
            _ => {}
        }
    }
}

/// The steps as a readable table, times in Beijing time.
pub fn table(steps: &[Step]) -> String {
    let dash = || "-".to_owned();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<19}  {:<7}  {:<12}  {:<7}  {:>13}  {:<30}  {:>4}  {:>10}  {:>10}  {:<19}  replica / outcome",
        "time (Beijing)", "step", "institution", "infno", "version", "msgid", "code", "quantity", "price", "movement time"
    );
    for s in steps {
        let who = s.replica.clone().unwrap_or_else(|| "(not named)".to_owned());
        let last = match s.ending {
            Some(ending) => format!("{who}: {}", ending.as_str()),
            None => who,
        };
        let _ = writeln!(
            out,
            "{:<19}  {:<7}  {:<12}  {:<7}  {:>13}  {:<30}  {:>4}  {:>10}  {:>10}  {:<19}  {last}",
            beijing::format(s.at),
            match s.kind {
                Kind::Claim => "claim",
                Kind::Receipt => "receipt",
            },
            s.institution,
            s.infno,
            s.version.map_or_else(dash, |v| v.to_string()),
            s.msgid.clone().unwrap_or_else(dash),
            s.return_code.map_or_else(dash, |c| c.to_string()),
            s.quantity.map_or_else(dash, |q| q.normalize().to_string()),
            s.price.map_or_else(dash, |p| p.normalize().to_string()),
            s.time.clone().unwrap_or_else(dash),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::ReceiptRow;

    fn claim(id: &str, keys: &[(&str, Option<u64>)]) -> Entry {
        Entry::Claim(Claim {
            id: id.into(),
            institution: "H1".into(),
            infno: Infno::Els7002,
            keys: keys.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            at: Utc::now(),
            holder: None,
            replica: Some(format!("worker-{id} pid 7")),
        })
    }

    fn receipt(claim: &str, key: &str, version: u64, quantity: &str) -> Entry {
        Entry::Receipt(Receipt {
            claim: claim.into(),
            institution: "H1".into(),
            infno: Infno::Els7002,
            msgid: format!("msg-{claim}"),
            return_code: 1,
            at: Utc::now(),
            ends_claim: false,
            rows: vec![ReceiptRow {
                key: key.into(),
                version: Some(version),
                quantity: quantity.parse().unwrap(),
                price: "12.3400".parse().unwrap(),
                time: "2026-11-25 09:30:00".into(),
                fingerprint: None,
            }],
        })
    }

    #[test]
    fn a_corrected_record_shows_each_claim_and_receipt_with_how_it_ended() {
        let mut history = History::new("IN-1", None);
        history.apply(claim("a", &[("IN-1", Some(1)), ("IN-2", Some(1))]));
        // Claim a's last receipt ends it (no release follows): IN-1 was not accepted in it.
        let Entry::Receipt(last) = receipt("a", "IN-2", 1, "3") else { unreachable!() };
        history.apply(Entry::Receipt(Receipt { ends_claim: true, ..last }));
        history.apply(claim("b", &[("IN-1", Some(2))]));
        history.apply(receipt("b", "IN-1", 2, "12"));
        history.apply(Entry::Release { claim: "b".into() });
        history.apply(claim("c", &[("IN-1", Some(3))]));
        history.apply(claim("other", &[("IN-9", Some(1))]));
        let steps = history.steps();
        let summary: Vec<(Kind, Option<u64>, Option<Ending>)> = steps.iter().map(|s| (s.kind, s.version, s.ending)).collect();
        assert_eq!(
            summary,
            vec![
                (Kind::Claim, Some(1), Some(Ending::NotAccepted)),
                (Kind::Claim, Some(2), Some(Ending::Accepted)),
                (Kind::Receipt, Some(2), None),
                (Kind::Claim, Some(3), Some(Ending::Open)),
            ]
        );
        assert_eq!(steps[2].msgid.as_deref(), Some("msg-b"));
        assert_eq!(steps[2].replica.as_deref(), Some("worker-b pid 7"), "a receipt names its claim's replica");
        let text = table(&steps);
        assert!(text.contains("receipt  H1            ELS7002              2  msg-b"), "{text}");
        assert!(text.contains("12.34  2026-11-25 09:30:00  worker-b pid 7"), "{text}");
        assert!(text.contains("worker-a pid 7: released without receipt"), "{text}");
    }

    #[test]
    fn another_institution_s_record_of_the_same_key_is_left_out_when_one_is_asked_for() {
        let mut history = History::new("IN-2", Some("H2".into()));
        history.apply(claim("a", &[("IN-2", Some(1))]));
        history.apply(receipt("a", "IN-2", 1, "3"));
        assert!(history.steps().is_empty());
    }
}
