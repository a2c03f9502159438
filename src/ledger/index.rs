//! The worker's index of the ledger: the newest uploaded version of each key, the
//! fingerprint of the message accepted last, and the claims in force, in log order.
//!
//! **Memory.** A key is held as a 64-bit hash of (institution, infno, key) with its newest
//! version and the fingerprint of the message that carried it, plus the fingerprints of
//! messages whose key was accepted again after them (few: most keys are never corrected).
//! 40 to 80 bytes per key (hash map and eviction queue, which double their capacity as
//! they grow; measured 18 MiB at the default 250 000 keys, 73 MiB at 1 000 000). Keys of rows with neither a version nor a fingerprint (back-filled with `send`)
//! are not added, only noted on a key already held. Beyond `max_index_keys` keys, and as
//! many overtaken fingerprints, those first seen longest ago are forgotten, oldest first:
//! a stale replay of such a key, or a copy of such a message, is no longer refused
//! (racing uploads are still serialised by claims). The default of 250 000 keys covers
//! ~7 000 keys a day over the default 35-day window; a fleet reporting more institutions
//! per worker should raise it. Claims are few (one per batch in flight) and dropped when
//! released or expired.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use serde::Deserialize;

use super::{CLAIM_TTL, Fingerprint, Turn};
use crate::spec::Infno;

/// A ledger [`Entry`](super::Entry) as the index reads it back: only what the index
/// keeps, a row's key borrowed from the entry's bytes. A receipt's msgid and return code,
/// its rows' quantity, price and time, and a claim's time and replica are skipped unread:
/// every worker reads every entry of the fleet, and the whole index window at start-up.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Indexed<'a> {
    /// A batch's claim on its keys.
    Claim(#[serde(borrow)] IndexedClaim<'a>),
    /// Rows the platform accepted.
    Receipt(#[serde(borrow)] IndexedReceipt<'a>),
    /// A claim's upload is over.
    Release {
        /// The claim's id.
        claim: String,
    },
    /// A claim's upload is still under way.
    Renew {
        /// The claim's id.
        claim: String,
    },
}

/// What the index keeps of a [`Claim`](super::Claim).
#[derive(Debug, Deserialize)]
pub struct IndexedClaim<'a> {
    id: String,
    institution: String,
    infno: Infno,
    #[serde(borrow)]
    keys: Vec<(EntryStr<'a>, Option<u64>)>,
    #[serde(default)]
    holder: Option<String>,
}

/// What the index keeps of a [`Receipt`](super::Receipt).
#[derive(Debug, Deserialize)]
pub struct IndexedReceipt<'a> {
    claim: String,
    institution: String,
    infno: Infno,
    at: DateTime<Utc>,
    #[serde(borrow)]
    rows: Vec<IndexedRow<'a>>,
    #[serde(default)]
    ends_claim: bool,
}

/// What the index keeps of a [`ReceiptRow`](super::ReceiptRow).
#[derive(Debug, Deserialize)]
struct IndexedRow<'a> {
    #[serde(borrow)]
    key: EntryStr<'a>,
    version: Option<u64>,
    #[serde(default)]
    fingerprint: Option<Fingerprint>,
}

/// A string of the entry, borrowed unless it has escapes (serde borrows a `Cow` only as
/// a field of its own, not inside a tuple or a vector).
#[derive(Debug, Deserialize)]
struct EntryStr<'a>(#[serde(borrow)] Cow<'a, str>);

/// A claim in force.
#[derive(Debug, Clone)]
struct ActiveClaim {
    seq: u64,
    /// When this process read the claim or its latest renewal: expiry is measured on this
    /// process's own monotonic clock, never against the claimer's wall clock.
    seen: Instant,
    holder: Option<String>,
    keys: Vec<(u64, Option<u64>)>,
}

/// A claim that must wait: earlier claims on some of its keys are in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The holders of those earlier claims (claims written without one are left out).
    pub holders: Vec<String>,
}

/// What was accepted last for a key.
#[derive(Debug, Clone, Copy)]
struct Newest {
    /// The highest version accepted, if any row of the key had one.
    version: Option<u64>,
    /// The message whose row was accepted last (none for a row not from a message).
    fingerprint: Option<Fingerprint>,
}

/// The newest uploaded versions and the claims in force; see the module documentation.
#[derive(Debug)]
pub struct Index {
    uploaded: HashMap<u64, Newest>,
    first_seen: VecDeque<u64>,
    /// Fingerprints of messages whose row was accepted and then followed by another
    /// accepted row of the same key (few: most keys are never corrected), oldest first in
    /// `overtaken_order`.
    overtaken: HashSet<Fingerprint>,
    overtaken_order: VecDeque<Fingerprint>,
    max_keys: usize,
    claims: HashMap<String, ActiveClaim>,
    /// Per key, the claims in force on it: (sequence, claim id), in log order; the id
    /// shared by all keys of its claim.
    claimed: HashMap<u64, Vec<(u64, Arc<str>)>>,
    seq: u64,
    /// A claim neither released nor renewed for this long is treated as abandoned.
    claim_ttl: Duration,
}

/// The 64-bit id of a key: two keys with one id would share a newest version, so this is
/// foldhash's higher-quality variant (the maps keyed by ids use the fast one).
fn key_id(institution: &str, infno: Infno, key: &str) -> u64 {
    foldhash::quality::FixedState::with_seed(0).hash_one((institution, infno, key))
}

impl Index {
    /// An empty index holding at most `max_keys` keys, sized for them at once: a table
    /// that grows doubles, and holds its old and new halves together while it does (at
    /// 250 000 keys 8 and 16 MiB), so the peak would exceed the full size by half.
    pub fn new(max_keys: usize) -> Self {
        let max_keys = max_keys.max(1);
        Index {
            uploaded: HashMap::with_capacity(max_keys + 1),
            first_seen: VecDeque::with_capacity(max_keys + 1),
            overtaken: HashSet::new(),
            overtaken_order: VecDeque::new(),
            max_keys,
            claims: HashMap::new(),
            claimed: HashMap::new(),
            seq: 0,
            claim_ttl: CLAIM_TTL,
        }
    }

    /// The same index, treating claims neither released nor renewed for `ttl` as abandoned.
    pub fn with_claim_ttl(self, ttl: Duration) -> Self {
        Index { claim_ttl: ttl, ..self }
    }

    /// Keys indexed.
    pub fn len(&self) -> usize {
        self.uploaded.len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.uploaded.is_empty()
    }

    /// Whether `version` is lower than the newest uploaded version of the key (the tests'
    /// question; the worker asks [`Index::turns`]).
    #[cfg(test)]
    pub fn is_stale(&self, institution: &str, infno: Infno, key: &str, version: Option<u64>) -> bool {
        self.stale(key_id(institution, infno, key), version)
    }

    fn stale(&self, id: u64, version: Option<u64>) -> bool {
        matches!((version, self.uploaded.get(&id).and_then(|n| n.version)), (Some(mine), Some(uploaded)) if mine < uploaded)
    }

    /// Whether `copy` is the fingerprint of a message whose row of the key was accepted
    /// before, and another row of the key was accepted after it: sending the copy again
    /// would overwrite that later row.
    fn overtaken(&self, id: u64, copy: Fingerprint) -> bool {
        self.overtaken.contains(&copy) && self.uploaded.get(&id).is_some_and(|newest| newest.fingerprint != Some(copy))
    }

    /// The turn of each key of the claim `id`, or what blocks it while an earlier claim on
    /// one of its keys is still in force. `copies` has, for each key in claim order, the
    /// fingerprint of its message if that message may be a copy of one seen before (the
    /// broker redelivered it, or its publisher named it with a `message_id`): a copy of a
    /// message accepted before whose key was accepted again since is superseded, like an
    /// older version. Claims of holders that `gone` says are gone (their connection died)
    /// or neither released nor renewed for the claim TTL hold nothing up.
    pub fn turns(&self, id: &str, copies: &[Option<Fingerprint>], gone: impl Fn(&str) -> bool) -> Result<Vec<Turn>, Blocked> {
        let Some(mine) = self.claims.get(id) else {
            // Our own claim is gone only when it expired after waiting that long: go.
            return Ok(vec![Turn::Go; copies.len()]);
        };
        let mut holders: Vec<String> = Vec::new();
        let mut blocked = false;
        let mut turns = Vec::with_capacity(mine.keys.len());
        for (at, (key, version)) in mine.keys.iter().enumerate() {
            let copy = copies.get(at).copied().flatten();
            if self.stale(*key, *version) || copy.is_some_and(|copy| self.overtaken(*key, copy)) {
                turns.push(Turn::Superseded);
                continue;
            }
            for (seq, other) in self.claimed.get(key).into_iter().flatten() {
                if *seq >= mine.seq {
                    break;
                }
                let Some(earlier) = self.claims.get(&**other) else { continue };
                if earlier.seen.elapsed() > self.claim_ttl || earlier.holder.as_deref().is_some_and(&gone) {
                    continue;
                }
                // Whatever its version: a newer one supersedes this row only once it is
                // accepted (its receipt makes this row stale). Refused, it leaves the key
                // to this row.
                if let Some(holder) = earlier.holder.as_ref().filter(|h| !holders.contains(h)) {
                    holders.push(holder.clone());
                }
                blocked = true;
            }
            turns.push(Turn::Go);
        }
        if blocked { Err(Blocked { holders }) } else { Ok(turns) }
    }

    /// Applies one ledger entry.
    pub fn apply(&mut self, entry: Indexed<'_>) {
        self.seq += 1;
        match entry {
            Indexed::Claim(IndexedClaim { id, institution, infno, keys, holder }) => {
                self.drop_expired_claims();
                let keys: Vec<(u64, Option<u64>)> = keys.iter().map(|(k, v)| (key_id(&institution, infno, &k.0), *v)).collect();
                let shared: Arc<str> = Arc::from(id.as_str());
                for (key, _) in &keys {
                    self.claimed.entry(*key).or_default().push((self.seq, shared.clone()));
                }
                self.claims.insert(id, ActiveClaim { seq: self.seq, seen: Instant::now(), holder, keys });
            }
            Indexed::Receipt(receipt) => {
                // Every replica follows the fleet's receipts, the history included: the
                // gauge shows the fleet's last acceptance, also right after a restart.
                crate::telemetry::metrics::last_accepted(&receipt.institution, receipt.infno, receipt.at.into());
                for row in &receipt.rows {
                    self.accepted_row(key_id(&receipt.institution, receipt.infno, &row.key.0), row);
                }
                if receipt.ends_claim {
                    self.release(&receipt.claim);
                }
            }
            Indexed::Release { claim } => self.release(&claim),
            Indexed::Renew { claim } => {
                if let Some(active) = self.claims.get_mut(&claim) {
                    active.seen = Instant::now();
                }
            }
        }
    }

    fn accepted_row(&mut self, id: u64, row: &IndexedRow) {
        match self.uploaded.get_mut(&id) {
            Some(newest) => {
                let older = matches!((row.version, newest.version), (Some(this), Some(newest)) if this < newest);
                let replaced = if older { None } else { std::mem::replace(&mut newest.fingerprint, row.fingerprint) };
                newest.version = newest.version.max(row.version);
                if let Some(replaced) = replaced.filter(|replaced| Some(*replaced) != row.fingerprint) {
                    self.remember_overtaken(replaced);
                }
            }
            None if row.version.is_some() || row.fingerprint.is_some() => {
                self.uploaded.insert(id, Newest { version: row.version, fingerprint: row.fingerprint });
                self.first_seen.push_back(id);
                while self.uploaded.len() > self.max_keys {
                    match self.first_seen.pop_front() {
                        Some(oldest) => self.uploaded.remove(&oldest),
                        None => break,
                    };
                }
            }
            None => {}
        }
    }

    fn remember_overtaken(&mut self, fingerprint: Fingerprint) {
        if self.overtaken.insert(fingerprint) {
            self.overtaken_order.push_back(fingerprint);
            while self.overtaken.len() > self.max_keys {
                match self.overtaken_order.pop_front() {
                    Some(oldest) => self.overtaken.remove(&oldest),
                    None => break,
                };
            }
        }
    }

    fn release(&mut self, id: &str) {
        let Some(claim) = self.claims.remove(id) else { return };
        for (key, _) in claim.keys {
            if let Some(list) = self.claimed.get_mut(&key) {
                list.retain(|(_, other)| &**other != id);
                if list.is_empty() {
                    self.claimed.remove(&key);
                }
            }
        }
    }

    fn drop_expired_claims(&mut self) {
        let expired: Vec<String> =
            self.claims.iter().filter(|(_, c)| c.seen.elapsed() > self.claim_ttl).map(|(id, _)| id.clone()).collect();
        for id in expired {
            self.release(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Claim, Entry, Receipt, ReceiptRow};
    use chrono::Utc;
    use rust_decimal::Decimal;

    fn claim(id: &str, keys: &[(&str, Option<u64>)]) -> Entry {
        claim_of(Some("w1"), id, keys)
    }

    fn claim_of(holder: Option<&str>, id: &str, keys: &[(&str, Option<u64>)]) -> Entry {
        Entry::Claim(Claim {
            id: id.into(),
            institution: "H1".into(),
            infno: Infno::Els7002,
            keys: keys.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            at: Utc::now(),
            holder: holder.map(str::to_owned),
            replica: None,
        })
    }

    /// Applies `entry` as the worker does: written as the ledger stream holds it, read
    /// back as the index reads it.
    fn apply(index: &mut Index, entry: Entry) {
        let text = serde_json::to_string(&entry).unwrap();
        index.apply(serde_json::from_str(&text).unwrap());
    }

    fn no_one_gone(_: &str) -> bool {
        false
    }

    fn receipt(key: &str, version: Option<u64>) -> Entry {
        receipt_of(key, version, None)
    }

    fn receipt_of(key: &str, version: Option<u64>, fingerprint: Option<Fingerprint>) -> Entry {
        Entry::Receipt(Receipt {
            claim: "c".into(),
            institution: "H1".into(),
            infno: Infno::Els7002,
            msgid: "m".into(),
            return_code: 1,
            at: Utc::now(),
            ends_claim: false,
            rows: vec![ReceiptRow {
                key: key.into(),
                version,
                quantity: Decimal::ONE,
                price: Decimal::ONE,
                time: String::new(),
                fingerprint,
            }],
        })
    }

    #[test]
    fn keys_with_escapes_and_entries_of_older_releases_are_read() {
        let mut index = Index::new(10);
        apply(&mut index, receipt("K\"1\\é\n", Some(5)));
        assert!(index.is_stale("H1", Infno::Els7002, "K\"1\\é\n", Some(4)));
        // Written before fingerprints and holders were: a receipt row without one, and a
        // claim without holder whose key is spelled with an escape.
        let receipt = r#"{"receipt":{"claim":"c1","institution":"H1","infno":"ELS7002","msgid":"m","return_code":1,"at":"2026-11-25T01:00:01Z","rows":[{"key":"IN-1","version":3,"quantity":"10","price":"12.34","time":"2026-11-25 09:30:00"}]}}"#;
        index.apply(serde_json::from_str(receipt).unwrap());
        assert!(index.is_stale("H1", Infno::Els7002, "IN-1", Some(2)));
        let claim_then =
            r#"{"claim":{"id":"c2","institution":"H1","infno":"ELS7002","keys":[["IN-\u0031",4]],"at":"2026-11-25T01:00:00Z"}}"#;
        index.apply(serde_json::from_str(claim_then).unwrap());
        apply(&mut index, claim("c3", &[("IN-1", Some(5))]));
        assert_eq!(index.turns("c3", &[None], no_one_gone), Err(Blocked { holders: vec![] }));
    }

    #[test]
    fn an_older_version_than_the_uploaded_one_is_stale() {
        let mut index = Index::new(10);
        apply(&mut index, receipt("k", Some(5)));
        assert!(index.is_stale("H1", Infno::Els7002, "k", Some(4)));
        assert!(!index.is_stale("H1", Infno::Els7002, "k", Some(5)), "the same version may be sent again");
        assert!(!index.is_stale("H1", Infno::Els7002, "k", None));
        assert!(!index.is_stale("H1", Infno::Els7003, "k", Some(1)), "keys are per transaction");
        apply(&mut index, receipt("k", Some(3)));
        assert!(index.is_stale("H1", Infno::Els7002, "k", Some(4)), "the newest stays");
    }

    #[test]
    fn a_later_claim_waits_for_an_earlier_one_and_yields_only_to_an_accepted_higher_one() {
        let mut index = Index::new(10);
        apply(&mut index, claim("a", &[("k", Some(1)), ("j", None)]));
        apply(&mut index, claim("b", &[("k", Some(2))]));
        apply(&mut index, claim("c", &[("x", Some(1))]));
        assert_eq!(index.turns("a", &[None; 2], no_one_gone), Ok(vec![Turn::Go, Turn::Go]));
        assert_eq!(index.turns("b", &[None; 1], no_one_gone), Err(Blocked { holders: vec!["w1".into()] }), "b waits for a");
        assert_eq!(index.turns("c", &[None; 1], no_one_gone), Ok(vec![Turn::Go]), "other keys are not held up");
        apply(&mut index, receipt("k", Some(1)));
        apply(&mut index, Entry::Release { claim: "a".into() });
        assert_eq!(index.turns("b", &[None; 1], no_one_gone), Ok(vec![Turn::Go]));

        apply(&mut index, claim("d", &[("k", Some(9))]));
        apply(&mut index, claim("e", &[("k", Some(3))]));
        apply(&mut index, Entry::Release { claim: "b".into() });
        assert_eq!(
            index.turns("e", &[None; 1], no_one_gone),
            Err(Blocked { holders: vec!["w1".into()] }),
            "a newer version claimed first: wait for it"
        );
        apply(&mut index, receipt("k", Some(9)));
        apply(&mut index, Entry::Release { claim: "d".into() });
        assert_eq!(index.turns("e", &[None; 1], no_one_gone), Ok(vec![Turn::Superseded]), "the newer version was accepted");

        // A newer version that is refused (released without a receipt) leaves the key to the older one.
        apply(&mut index, claim("f", &[("r", Some(2))]));
        apply(&mut index, claim("g", &[("r", Some(1))]));
        assert!(index.turns("g", &[None; 1], no_one_gone).is_err());
        apply(&mut index, Entry::Release { claim: "f".into() });
        assert_eq!(index.turns("g", &[None; 1], no_one_gone), Ok(vec![Turn::Go]), "uploaded: nothing newer was accepted");
    }

    #[test]
    fn a_receipt_that_ends_its_claim_frees_the_keys_and_one_that_does_not_keeps_them() {
        let mut index = Index::new(10);
        let ending = |claim: &str, ends_claim: bool| match receipt("k", Some(1)) {
            Entry::Receipt(receipt) => Entry::Receipt(Receipt { claim: claim.into(), ends_claim, ..receipt }),
            other => other,
        };
        apply(&mut index, claim("a", &[("k", Some(1))]));
        apply(&mut index, claim("b", &[("k", Some(2))]));
        apply(&mut index, ending("a", false));
        assert!(index.turns("b", &[None], no_one_gone).is_err(), "a's claim is still in force: a release follows");
        apply(&mut index, ending("a", true));
        assert_eq!(index.turns("b", &[None], no_one_gone), Ok(vec![Turn::Go]), "the receipt ended a's claim");
    }

    #[test]
    fn a_copy_of_an_accepted_message_is_superseded_once_its_key_was_accepted_again() {
        let mut index = Index::new(10);
        let first = Fingerprint::of_message(Some("m1"), b"first");
        let later = Fingerprint::of_message(Some("m2"), b"later");
        apply(&mut index, receipt_of("k", None, Some(first)));
        apply(&mut index, claim("a", &[("k", None)]));
        assert_eq!(index.turns("a", &[Some(first)], no_one_gone), Ok(vec![Turn::Go]), "nothing newer: sending it again is harmless");
        apply(&mut index, Entry::Release { claim: "a".into() });

        apply(&mut index, receipt_of("k", None, Some(later)));
        apply(&mut index, claim("b", &[("k", None)]));
        assert_eq!(index.turns("b", &[Some(first)], no_one_gone), Ok(vec![Turn::Superseded]), "a copy of the first message");
        assert_eq!(index.turns("b", &[Some(later)], no_one_gone), Ok(vec![Turn::Go]), "a copy of the newest");
        assert_eq!(index.turns("b", &[None], no_one_gone), Ok(vec![Turn::Go]), "a new event: the later delivery wins");
        apply(&mut index, Entry::Release { claim: "b".into() });

        // A back-filled row (no message) accepted after it makes the copy stale as well.
        apply(&mut index, receipt_of("k", None, None));
        apply(&mut index, claim("c", &[("k", None)]));
        assert_eq!(index.turns("c", &[Some(later)], no_one_gone), Ok(vec![Turn::Superseded]));
        apply(&mut index, Entry::Release { claim: "c".into() });

        // A lower version accepted late does not become the key's newest.
        let v5 = Fingerprint::of_message(None, b"v5");
        apply(&mut index, receipt_of("v", Some(5), Some(v5)));
        apply(&mut index, receipt_of("v", Some(4), Some(Fingerprint::of_message(None, b"v4"))));
        apply(&mut index, claim("d", &[("v", Some(5))]));
        assert_eq!(index.turns("d", &[Some(v5)], no_one_gone), Ok(vec![Turn::Go]));
    }

    #[test]
    fn rows_without_version_or_fingerprint_add_no_key_and_overtaken_fingerprints_are_bounded() {
        let mut index = Index::new(2);
        apply(&mut index, receipt_of("backfilled", None, None));
        assert!(index.is_empty());
        let prints: Vec<Fingerprint> = (0..4u8).map(|i| Fingerprint::of_message(None, &[i])).collect();
        for print in &prints {
            apply(&mut index, receipt_of("corrected", None, Some(*print)));
        }
        assert_eq!(index.len(), 1);
        assert_eq!(index.overtaken.len(), 2, "{:?}", index.overtaken);
        assert!(!index.overtaken.contains(&prints[0]), "the oldest was forgotten");
        assert!(!index.overtaken.contains(&prints[3]), "the newest is not overtaken");
    }

    #[test]
    fn a_claim_renewed_in_time_stays_in_force_and_one_left_alone_expires() {
        let mut index = Index::new(10).with_claim_ttl(Duration::from_millis(60));
        apply(&mut index, claim("a", &[("k", Some(1))]));
        apply(&mut index, claim("b", &[("k", Some(2))]));
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(30));
            apply(&mut index, Entry::Renew { claim: "a".into() });
            assert!(index.turns("b", &[None; 1], no_one_gone).is_err(), "a renewed claim holds its keys");
        }
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(index.turns("b", &[None; 1], no_one_gone), Ok(vec![Turn::Go]), "not renewed: abandoned");
    }

    #[test]
    fn claims_of_a_holder_that_is_gone_hold_nothing_up() {
        let mut index = Index::new(10);
        apply(&mut index, claim_of(Some("dead"), "a", &[("k", Some(1))]));
        apply(&mut index, claim_of(Some("alive"), "b", &[("j", Some(1))]));
        apply(&mut index, claim_of(None, "c", &[("l", Some(1))]));
        apply(&mut index, claim_of(Some("w2"), "d", &[("k", Some(2)), ("j", Some(2)), ("l", Some(2))]));
        let gone = |holder: &str| holder == "dead";
        assert_eq!(
            index.turns("d", &[None; 3], no_one_gone),
            Err(Blocked { holders: vec!["dead".into(), "alive".into()] }),
            "every holder in the way is named once; a claim without a holder cannot be probed"
        );
        assert_eq!(index.turns("d", &[None; 3], gone), Err(Blocked { holders: vec!["alive".into()] }));
        apply(&mut index, Entry::Release { claim: "b".into() });
        apply(&mut index, Entry::Release { claim: "c".into() });
        assert_eq!(index.turns("d", &[None; 3], gone), Ok(vec![Turn::Go; 3]), "the dead holder's claim is skipped");
        assert!(index.turns("d", &[None; 3], no_one_gone).is_err(), "until known to be gone it holds k");
    }

    #[test]
    fn the_index_forgets_the_oldest_keys_beyond_its_size() {
        let mut index = Index::new(2);
        apply(&mut index, receipt("a", Some(5)));
        apply(&mut index, receipt("b", Some(5)));
        apply(&mut index, receipt("a", Some(6)));
        apply(&mut index, receipt("c", Some(5)));
        assert_eq!(index.len(), 2);
        assert!(!index.is_stale("H1", Infno::Els7002, "a", Some(1)), "a was forgotten");
        assert!(index.is_stale("H1", Infno::Els7002, "b", Some(1)));
        assert!(index.is_stale("H1", Infno::Els7002, "c", Some(1)));
    }
}
