//! What happens to one batch, top to bottom: held institution → park; stale versions →
//! superseded; claim the keys in the ledger (and wait for earlier claims on them); upload
//! (token, split, bisect); record a receipt of what was accepted; release the claim;
//! settle every delivery.

use std::sync::Arc;

use chrono::Utc;
use lapin::message::Delivery;

use super::holds::Holds;
use super::lanes::Carried;
use super::settle::Settler;
use crate::config::Institution;
use crate::ledger::{Ledger, Receipt, ReceiptRow, Turn};
use crate::platform::Outcome;
use crate::spec::Infno;
use crate::upload::{Row, Settled, Uploader};

/// A row of a batch with its deliveries.
pub type BatchRow = Row<Carried<Delivery>>;

/// The shared pieces a batch needs.
#[derive(Clone)]
pub struct Pipeline {
    /// Uploads with the fleet's token.
    pub uploader: Uploader,
    /// Carries out settlements.
    pub settler: Settler,
    /// Institutions on hold.
    pub holds: Holds,
    /// The receipts ledger.
    pub ledger: Arc<Ledger>,
}

impl Pipeline {
    /// Takes one batch of one institution and transaction to the end.
    pub async fn run(&self, institution: &Institution, infno: Infno, rows: Vec<BatchRow>) {
        let code = &institution.fixmedins_code;
        if let Some(wait) = self.holds.wait(code) {
            let deliveries: Vec<&Delivery> = rows.iter().flat_map(|r| r.source.deliveries.iter()).collect();
            self.settler.hold(&deliveries, wait).await;
            return;
        }
        let ledger_failed = |error: &dyn std::fmt::Display| Outcome::Transient {
            code: None,
            message: format!("the receipts ledger is not available: {error}"),
        };

        let keys = rows.iter().map(|r| (r.record.key().to_owned(), r.source.version)).collect();
        let (claim, turns) = match self.ledger.claim(code, infno, keys).await {
            Ok(claimed) => claimed,
            Err(error) => return self.settler.retry(&rows, &ledger_failed(&error)).await,
        };
        let (go, superseded): (Vec<_>, Vec<_>) = rows.into_iter().zip(turns).partition(|(_, turn)| *turn == Turn::Go);
        let superseded: Vec<BatchRow> = superseded.into_iter().map(|(row, _)| row).collect();
        self.settler.superseded(code, &superseded).await;

        let mut calls = 0;
        let settled = self.uploader.upload(institution, go.into_iter().map(|(row, _)| row).collect(), &mut calls).await;
        let mut recorded = Vec::with_capacity(settled.len());
        for group in settled {
            let Settled::Accepted { rows, msgid, return_code } = group else {
                recorded.push(group);
                continue;
            };
            let receipt = Receipt {
                claim: claim.clone(),
                institution: code.clone(),
                infno,
                msgid: msgid.clone(),
                return_code,
                at: Utc::now(),
                rows: rows.iter().map(|r| ReceiptRow::of(&r.record, r.source.version)).collect(),
            };
            match self.ledger.receipt(receipt).await {
                Ok(()) => recorded.push(Settled::Accepted { rows, msgid, return_code }),
                // Unrecorded, they are sent again later: the same version again is harmless.
                Err(error) => recorded.push(Settled::Unsettled { rows, outcome: ledger_failed(&error) }),
            }
        }
        if let Err(error) = self.ledger.release(claim).await {
            tracing::warn!(institution = %code, "could not release a ledger claim (it expires by itself): {error}");
        }
        self.settler.settle(code, recorded).await;
    }
}
