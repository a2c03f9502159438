//! Publishing with publisher confirms: a publish succeeds only when the broker has taken
//! responsibility for the message (persisted to a queue).

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};

use super::BrokerError;

/// A channel in confirm mode; cheap to clone, publishes may run concurrently.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    /// Opens a confirm-mode channel on `connection`.
    pub async fn open(connection: &Connection) -> Result<Self, BrokerError> {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Publisher { channel })
    }

    /// Publishes `body` and waits for the broker's confirm. A message that no queue takes
    /// (`mandatory`, returned) or that the broker refuses is an error.
    pub async fn publish(&self, exchange: &str, routing_key: &str, body: &[u8], properties: BasicProperties) -> Result<(), BrokerError> {
        let options = BasicPublishOptions { mandatory: true, ..Default::default() };
        let confirmation = self
            .channel
            .basic_publish(exchange.into(), routing_key.into(), options, body, properties)
            .await?
            .await?;
        if !confirmation.is_ack() || confirmation.take_message().is_some() {
            return Err(BrokerError::Nacked);
        }
        Ok(())
    }
}

/// The properties of a copy of a message (a dead letter, a parked or a replayed message):
/// the original's, with `headers`, but without `expiration` (a copy must not expire with
/// the original's time to live; a parked copy gets its own) and without `user_id` (the
/// broker accepts only the publishing connection's own user there, and refuses the copy
/// with a channel error otherwise).
pub fn copy_properties(original: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut copy = BasicProperties::default().with_headers(headers);
    if let Some(value) = original.content_type() {
        copy = copy.with_content_type(value.clone());
    }
    if let Some(value) = original.content_encoding() {
        copy = copy.with_content_encoding(value.clone());
    }
    if let Some(value) = original.delivery_mode() {
        copy = copy.with_delivery_mode(*value);
    }
    if let Some(value) = original.priority() {
        copy = copy.with_priority(*value);
    }
    if let Some(value) = original.correlation_id() {
        copy = copy.with_correlation_id(value.clone());
    }
    if let Some(value) = original.reply_to() {
        copy = copy.with_reply_to(value.clone());
    }
    if let Some(value) = original.message_id() {
        copy = copy.with_message_id(value.clone());
    }
    if let Some(value) = original.timestamp() {
        copy = copy.with_timestamp(*value);
    }
    if let Some(value) = original.kind() {
        copy = copy.with_type(value.clone());
    }
    if let Some(value) = original.app_id() {
        copy = copy.with_app_id(value.clone());
    }
    if let Some(value) = original.cluster_id() {
        copy = copy.with_cluster_id(value.clone());
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_keeps_every_property_but_expiration_and_user_id() {
        let original = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("identity".into())
            .with_delivery_mode(2)
            .with_priority(3)
            .with_correlation_id("c".into())
            .with_reply_to("r".into())
            .with_message_id("m".into())
            .with_timestamp(7)
            .with_type("t".into())
            .with_app_id("a".into())
            .with_cluster_id("k".into())
            .with_expiration("20000".into())
            .with_user_id("someone-else".into());
        let copy = copy_properties(&original, FieldTable::default());
        let expected = original.clone().with_headers(FieldTable::default());
        assert!(copy.expiration().is_none() && copy.user_id().is_none());
        assert_eq!(format!("{copy:?}"), format!("{:?}", copy_properties(&expected, FieldTable::default())));
        assert_eq!(copy.message_id(), expected.message_id());
        assert_eq!(copy.cluster_id(), expected.cluster_id());
        assert_eq!(copy.kind(), expected.kind());
        assert_eq!(*copy.priority(), Some(3));
        assert_eq!(*copy.timestamp(), Some(7));
    }
}
