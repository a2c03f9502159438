//! Publishing with publisher confirms: a publish succeeds only when the broker has taken
//! responsibility for the message (persisted to a queue).

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
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
