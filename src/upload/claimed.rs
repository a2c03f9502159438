//! The claimed upload, the one path a batch takes to the platform when a ledger is kept:
//! claim the keys in the ledger (waiting for earlier claims on them; older versions and
//! overtaken copies are superseded), upload the rest (renewing the claim while it lasts),
//! record a receipt of every accepted call before anything is acked, and end the claim
//! (with the last receipt, or a release when no call was accepted).

use chrono::Utc;

use super::{Row, Settled, Uploader};
use crate::broker::log::LogError;
use crate::config::Institution;
use crate::ledger::{Fingerprint, Ledger, Provenance, Receipt, ReceiptRow, Turn};
use crate::platform::Outcome;
use crate::spec::Infno;

/// The result of a claimed upload.
#[derive(Debug)]
pub struct Claimed<T> {
    /// Rows not sent: a newer version was uploaded or claimed first.
    pub superseded: Vec<Row<T>>,
    /// What became of the rows sent; accepted ones are recorded in the ledger.
    pub settled: Vec<Settled<T>>,
}

/// Uploads `rows` of one institution and transaction under a claim in `ledger`: waits for
/// earlier claims on their keys, leaves out superseded rows, records a receipt of every
/// accepted call before returning, and releases the claim. If the ledger fails, the rows
/// come back unsettled as a transient failure (sent again later, which is harmless for
/// the same version).
pub async fn upload<T: Provenance>(
    ledger: &Ledger,
    uploader: &Uploader,
    institution: &Institution,
    infno: Infno,
    rows: Vec<Row<T>>,
    calls: &mut u64,
) -> Claimed<T> {
    let code = &institution.fixmedins_code;
    let keys = rows.iter().map(|r| (r.record.key().to_owned(), r.source.version())).collect();
    // Hashed here only for what may be a copy (most rows are not); the receipt hashes the rest.
    let copies: Vec<Option<Fingerprint>> =
        rows.iter().map(|r| if r.source.may_be_a_copy() { r.source.fingerprint() } else { None }).collect();
    let (claim, turns) = match ledger.claim(code, infno, keys, &copies).await {
        Ok(claimed) => claimed,
        Err(error) => return Claimed { superseded: Vec::new(), settled: vec![Settled::Unsettled { rows, outcome: unavailable(error) }] },
    };
    let (go, superseded): (Vec<_>, Vec<_>) = rows.into_iter().zip(turns).partition(|(_, turn)| *turn == Turn::Go);
    let superseded = superseded.into_iter().map(|(row, _)| row).collect();
    let sent = renewing(ledger, &claim, uploader.upload(institution, go.into_iter().map(|(row, _)| row).collect(), calls)).await;
    let mut settled = Vec::with_capacity(sent.len());
    // The last receipt ends the claim: one entry less than a receipt and a release.
    let last_accepted = sent.iter().rposition(|group| matches!(group, Settled::Accepted { .. }));
    for (index, group) in sent.into_iter().enumerate() {
        settled.push(receipted(ledger, &claim, code, infno, group, Some(index) == last_accepted).await);
    }
    // Still accepted once its receipt was written: the claim is over.
    let ended = last_accepted.and_then(|index| settled.get(index)).is_some_and(|group| matches!(group, Settled::Accepted { .. }));
    if !ended && let Err(error) = ledger.release(claim).await {
        tracing::warn!(institution = %code, "could not release a ledger claim (it expires by itself): {error}");
    }
    Claimed { superseded, settled }
}

/// An accepted group once its receipt is recorded (unsettled if it cannot be); any other
/// group as it is. With `ends_claim` the receipt also ends the claim.
async fn receipted<T: Provenance>(
    ledger: &Ledger,
    claim: &str,
    code: &str,
    infno: Infno,
    group: Settled<T>,
    ends_claim: bool,
) -> Settled<T> {
    let Settled::Accepted { rows, msgid, return_code } = group else { return group };
    let receipt = Receipt {
        claim: claim.to_owned(),
        institution: code.to_owned(),
        infno,
        msgid: msgid.clone(),
        return_code,
        at: Utc::now(),
        rows: rows.iter().map(|r| ReceiptRow::of(&r.record, &r.source)).collect(),
        ends_claim,
    };
    match ledger.receipt(receipt).await {
        Ok(()) => Settled::Accepted { rows, msgid, return_code },
        Err(error) => Settled::Unsettled { rows, outcome: unavailable(error) },
    }
}

/// Runs `upload`, renewing `claim` every third of the claim TTL while it lasts, so that no
/// other replica takes a long upload (a bisection of many calls) for abandoned.
async fn renewing<R>(ledger: &Ledger, claim: &str, upload: impl Future<Output = R>) -> R {
    let every = ledger.claim_ttl() / 3;
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(upload);
    loop {
        tokio::select! {
            done = &mut upload => return done,
            _ = renew.tick() => {
                if let Err(error) = ledger.renew(claim).await {
                    tracing::warn!("could not renew a ledger claim (another replica may take its keys once it expires): {error}");
                }
            }
        }
    }
}

/// The transient failure of rows whose claim or receipt the ledger could not take.
fn unavailable(error: LogError) -> Outcome {
    Outcome::Transient { code: None, message: format!("the receipts ledger is not available: {error}") }
}
