//! Whether a connection is alive, as the broker sees it: a connection declares an
//! **exclusive** queue, which the broker deletes when that connection closes or dies (a
//! killed process, a lost network, a restarted node). Anyone can then ask whether the queue
//! still exists without an error that would close the asking channel: a mandatory,
//! immediately expiring message to the default exchange comes back when no queue takes it.
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

/// Whether a queue named `queue` exists (in any connection's hands). The probe expires at
/// once in a queue that takes it. `channel` must be in confirm mode ([`probe_channel`]).
pub async fn queue_exists(channel: &Channel, queue: &str) -> Result<bool, BrokerError> {
    let options = BasicPublishOptions { mandatory: true, ..Default::default() };
    let properties = BasicProperties::default().with_expiration("0".into());
    let confirmation = channel.basic_publish(ShortString::from(""), queue.into(), options, b"", properties).await?.await?;
    if !confirmation.is_ack() {
        return Err(BrokerError::Nacked);
    }
    Ok(confirmation.take_message().is_none())
}
