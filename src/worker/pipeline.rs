//! What happens to one batch, top to bottom: held institution → park (counting an attempt
//! when the platform is failing for it); claim the keys in the
//! ledger (waiting for earlier claims on them; older versions are superseded); upload
//! (token, split, bisect); record a receipt of what was accepted; release the claim;
//! settle every delivery (reporting which the session is to ack).

use std::sync::Arc;

use lapin::message::Delivery;

use super::holds::{Held, Holds};
use super::lanes::Carried;
use super::settle::{Settlement, Settler};
use crate::config::Institution;
use crate::ledger::{Fingerprint, Ledger, Provenance};
use crate::spec::Infno;
use crate::upload::{Row, Uploader, claimed};

/// A row of a batch with its deliveries.
pub type BatchRow = Row<Carried<Delivery>>;

impl Provenance for Carried<Delivery> {
    fn version(&self) -> Option<u64> {
        self.version
    }

    fn fingerprint(&self) -> Option<Fingerprint> {
        *self.fingerprint.get_or_init(|| {
            let delivery = self.sender()?;
            Some(Fingerprint::of_message(delivery.properties.message_id().as_ref().map(|id| id.as_str()), &delivery.data))
        })
    }

    fn may_be_a_copy(&self) -> bool {
        self.sender().is_some_and(|delivery| delivery.redelivered || delivery.properties.message_id().is_some())
    }
}

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
    pub async fn run(&self, institution: &Institution, infno: Infno, rows: Vec<BatchRow>) -> Settlement {
        let code = &institution.fixmedins_code;
        if let Some(held) = self.holds.wait(code) {
            let deliveries: Vec<&Delivery> = rows.iter().flat_map(|r| r.source.deliveries.iter()).collect();
            return match held {
                Held::Parked(wait) => self.settler.hold(&deliveries, wait).await,
                Held::Failing { wait, reason } => self.settler.not_sent(&deliveries, wait, &reason).await,
            };
        }
        let mut calls = 0;
        let trace = crate::telemetry::trace::BatchTrace::of(rows.iter().flat_map(|r| r.source.deliveries.iter()));
        let claimed = trace.scope(claimed::upload(&self.ledger, &self.uploader, institution, infno, rows, &mut calls)).await;
        // More than one call is a split or a bisection: worth seeing when following a batch.
        tracing::debug!(institution = %code, %infno, calls, superseded = claimed.superseded.len(), "batch uploaded");
        let mut settlement = self.settler.superseded(code, &claimed.superseded);
        settlement.add(self.settler.settle(code, claimed.settled).await);
        settlement
    }
}
