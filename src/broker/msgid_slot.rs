//! Fleet-wide msgid slots: every process that talks to the platform numbers its messages in
//! a slot of its own (see [`MsgIds`](crate::platform::MsgIds)), so that two replicas never
//! send the same `msgid` in the same second.
//!
//! Slot `n` is held by declaring the **exclusive** queue `<prefix>.msgid.slot.<n>` (e.g.
//! `els.msgid.slot.0`): the broker lets one connection own it and deletes it when that
//! connection closes or dies, so a slot is held exactly as long as the connection lives and
//! a crashed replica frees its slot by itself. A slot whose queue is on a node that is
//! down stays taken until that node is back (RabbitMQ 4.x keeps the record): it is skipped.
//!
//! To find a free slot without tripping over the others, each candidate is first probed
//! ([`super::presence`]): a queue that exists takes the probe (slot taken, also when this
//! very connection holds it, so two claims on one connection get distinct slots); a
//! returned probe means no such queue. Only then is the queue declared; should another connection win the race in between, the broker refuses
//! with RESOURCE_LOCKED (405), which closes that channel, and the search goes on with a
//! fresh channel.
//!
//! When the connection is lost the slot may go to another process: stop numbering with it,
//! and claim again (maybe a different slot) on the new connection before sending.

use lapin::protocol::AMQPSoftError;
use lapin::{Connection, ErrorKind};

use super::BrokerError;
use super::presence::{Presence, declare_exclusive, probe_channel, queue_presence};
use crate::platform::envelope::MSGID_SLOTS;

/// The queue that holds msgid slot `slot` for `prefix`.
pub fn slot_queue_name(prefix: &str, slot: u16) -> String {
    format!("{prefix}.msgid.slot.{slot}")
}

/// Claims a free msgid slot (below [`MSGID_SLOTS`]) for as long as `connection` lives.
/// Fails with [`BrokerError::NoMsgidSlot`] when every slot is held by a live connection:
/// at most [`MSGID_SLOTS`] processes of one fleet (vhost and prefix) talk to the platform
/// at a time (the msgid's 4-digit sequence is split between them, 500 a second each).
pub async fn claim_msgid_slot(connection: &Connection, prefix: &str) -> Result<u16, BrokerError> {
    let mut channel = probe_channel(connection).await?;
    for slot in 0..MSGID_SLOTS {
        let queue = slot_queue_name(prefix, slot);
        if queue_presence(&channel, &queue).await? != Presence::Absent {
            continue;
        }
        match declare_exclusive(&channel, &queue).await {
            Ok(_) => {
                // The queue belongs to the connection; the channel is no longer needed.
                let _ = channel.close(200, "OK".into()).await;
                tracing::debug!(slot, "claimed msgid slot");
                return Ok(slot);
            }
            // Another connection declared it since the probe; that channel is closed now.
            Err(error) if is_resource_locked(&error) => channel = probe_channel(connection).await?,
            Err(error) => return Err(error.into()),
        }
    }
    let _ = channel.close(200, "OK".into()).await;
    Err(BrokerError::NoMsgidSlot { slots: MSGID_SLOTS, first: slot_queue_name(prefix, 0), last: slot_queue_name(prefix, MSGID_SLOTS - 1) })
}

fn is_resource_locked(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(e) if e.get_id() == AMQPSoftError::RESOURCELOCKED.get_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_queues_are_named_by_prefix_and_number() {
        assert_eq!(slot_queue_name("els", 0), "els.msgid.slot.0");
        assert_eq!(slot_queue_name("els", MSGID_SLOTS - 1), "els.msgid.slot.19");
    }
}
