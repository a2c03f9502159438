//! What a `send` run shares with other processes, and the uploader that uses it: the
//! fleet's broker when `[amqp]` is configured (tokens, msgid slot, receipts ledger), else
//! files beside the token file (other `send` runs of this host).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::broker;
use crate::config::Config;
use crate::ledger::Ledger;
use crate::platform::{FileTokenStore, MsgIdSlot, MsgIds, PlatformClient, TokenStore, Tokens};
use crate::upload::Uploader;

/// The run's uploader and what it shares; opened again when a broker connection is lost.
pub(super) struct Link {
    /// Uploads with the shared token, at most `batch.max_in_flight_per_institution` calls
    /// in flight.
    pub(super) uploader: Uploader,
    /// The fleet's receipts ledger, with a broker: uploads are claimed and recorded.
    pub(super) ledger: Option<Ledger>,
    /// Holds the msgid slot: the local lock file, or the broker connection.
    holder: SlotHolder,
    /// With a broker: cancelled when the token or ledger stream is no longer read.
    streams_lost: CancellationToken,
}

enum SlotHolder {
    Local(MsgIdSlot),
    Broker(Box<lapin::Connection>),
}

impl Link {
    /// Connects to the broker of `[amqp]` (or claims a local slot without one) and builds
    /// the uploader on it.
    pub(super) async fn open(config: &Config) -> anyhow::Result<Link> {
        let (store, slot, ledger, holder, streams_lost) = match &config.amqp {
            Some(amqp) => {
                let connection = broker::connect(amqp, "els-bridge send").await.context("cannot connect to the broker of [amqp]")?;
                let store = broker::token_store::start(&connection, &amqp.name_prefix).await?;
                let lost = store.lost();
                let slot = broker::msgid_slot::claim_msgid_slot(&connection, &amqp.name_prefix).await?;
                let ledger = Ledger::open(&connection, &amqp.name_prefix, &config.ledger).await?;
                let streams_lost = broker::log::any_lost(vec![lost, ledger.lost()]);
                let store: Arc<dyn TokenStore> = store;
                (store, slot, Some(ledger), SlotHolder::Broker(Box::new(connection)), streams_lost)
            }
            None => {
                let token_file = config.platform.token_file.clone().unwrap_or_else(FileTokenStore::default_path);
                let state_dir = token_file.parent().unwrap_or(Path::new(".")).to_path_buf();
                let slot =
                    MsgIdSlot::claim_local(&state_dir).with_context(|| format!("cannot claim a msgid slot in {}", state_dir.display()))?;
                let store: Arc<dyn TokenStore> = Arc::new(FileTokenStore::new(token_file, &config.platform.url));
                (store, slot.slot, None, SlotHolder::Local(slot), CancellationToken::new())
            }
        };
        let client = PlatformClient::new(&config.platform, Arc::new(MsgIds::new(slot)))?;
        let tokens = Tokens::new(store, client.clone(), Duration::from_secs(config.platform.token_refresh_lead_secs));
        let uploader = Uploader::new(client, tokens).with_cap(config.batch.max_in_flight_per_institution);
        Ok(Link { uploader, ledger, holder, streams_lost })
    }

    /// Whether the broker connection, or a stream on it, was lost (never without a broker).
    pub(super) fn lost(&self) -> bool {
        match &self.holder {
            SlotHolder::Local(_) => false,
            SlotHolder::Broker(connection) => !connection.status().connected() || self.streams_lost.is_cancelled(),
        }
    }

    /// Releases the slot (and the broker connection). The connection is closed while the
    /// ledger's and the token store's channels are open: dropped first, they would close
    /// themselves in a race with it.
    pub(super) async fn close(self) {
        match self.holder {
            SlotHolder::Local(slot) => drop(slot),
            SlotHolder::Broker(connection) => broker::close(&connection, "done").await,
        }
    }
}
