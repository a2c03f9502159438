//! Whether a connection is alive, as the broker sees it: a connection declares an
//! **exclusive** queue, which the broker deletes when that connection closes or dies (a
//! killed process, a lost network, a restarted node). Anyone can then ask whether the queue
//! still exists without an error that would close the asking channel: a mandatory,
//! immediately expiring message to the default exchange comes back when no queue takes it.
//!
//! A queue whose node is down is a third case. RabbitMQ 3.x deletes the exclusive queues
//! of a node that goes down; 4.x with its Khepri metadata store (the default since 4.2)
//! keeps their records until that node starts again, and refuses (negative confirm) a
//! message routed to one. Its owner's connection went down with the node: for a caller
//! it is no longer held, yet it cannot be declared again until the node is back.
//!
//! Msgid slots ([`super::msgid_slot`]) and the holders of ledger claims
//! ([`crate::ledger`]) are such queues.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use super::BrokerError;

/// Opens a channel in confirm mode for [`queue_exists`] probes.
pub async fn probe_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

/// Declares `queue` as an exclusive queue of `channel`'s connection: it lives exactly as
/// long as the connection. Fails with RESOURCE_LOCKED (405, closing `channel`) when another
/// connection holds it.
pub async fn declare_exclusive(channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("classic".into()));
    let exclusive = QueueDeclareOptions { exclusive: true, ..Default::default() };
    channel.queue_declare(queue.into(), exclusive, arguments).await.map(|_| ())
}

/// What the broker says of a queue name (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The queue exists and took the probe: its owner's connection is alive.
    Held,
    /// No such queue.
    Absent,
    /// The queue's record exists but its node is down (the probe was refused): the owner's
    /// connection is gone, and the name stays taken until the node starts again.
    NodeDown,
}

/// What the broker says of a queue named `queue`. The probe expires at once in a queue
/// that takes it. `channel` must be in confirm mode ([`probe_channel`]).
pub async fn queue_presence(channel: &Channel, queue: &str) -> Result<Presence, BrokerError> {
    let options = BasicPublishOptions { mandatory: true, ..Default::default() };
    let properties = BasicProperties::default().with_expiration("0".into());
    let confirmation = channel.basic_publish(ShortString::from(""), queue.into(), options, b"", properties).await?.await?;
    Ok(match (confirmation.is_ack(), confirmation.take_message().is_none()) {
        (false, _) => Presence::NodeDown,
        (true, true) => Presence::Held,
        (true, false) => Presence::Absent,
    })
}
