//! Moving dead letters back to the events exchange.
//!
//! Each dead letter is republished as a copy ([`republish`]): the same body and properties,
//! with the retry state and the dead-letter headers removed (so the worker starts a fresh
//! retry budget) and a replay count and time stamped. The [`Replayer`] publishes copies
//! with publisher confirms, a bounded window of them in flight, and removes a dead letter
//! from its queue only after the broker has confirmed its copy. Whatever happens in
//! between (a crash, SIGKILL, a lost connection) leaves the dead letter in its queue: at
//! worst a message is both replayed and still there, never neither.

use chrono::{DateTime, Utc};
use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

use super::DlqError;
use super::letter::DeadLetter;
use super::reader::{Reader, Taken, is_not_found};
use crate::broker::outbox::{Confirmed, Outbox, publish_mandatory};
use crate::broker::publisher::copy_properties;
use crate::contract::header;
use crate::contract::rfc3339;

/// Headers removed from a replayed copy: the dead-letter headers of contract §2, the
/// retry state, and what the broker adds when it dead-letters or redelivers.
pub const RESET_HEADERS: [&str; 17] = [
    header::REASON,
    header::ERROR,
    header::RETURN_CODE,
    header::ATTEMPTS,
    header::FIRST_FAILED_AT,
    header::LAST_FAILED_AT,
    header::PARKED_UNTIL,
    header::DELIVERY_COUNT,
    "x-acquired-count",
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-received-from",
];

/// Copies in flight (published, not yet confirmed) at most.
pub const WINDOW: usize = 256;

/// What to publish for one dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct Republish {
    /// `<infno>.<fixmedins_code>` from the body; the key the dead letter carries when the
    /// body does not name both.
    pub routing_key: String,
    /// The dead letter's properties, reset and stamped.
    pub properties: BasicProperties,
}

/// The copy of a dead letter to publish at `now`. Properties are kept except `expiration`
/// (a copy must not expire) and `user_id` (the broker only accepts the publishing user's
/// own); the message is persistent.
pub fn republish(letter: &DeadLetter, properties: &BasicProperties, carried_routing_key: &str, now: DateTime<Utc>) -> Republish {
    let mut headers = properties.headers().clone().unwrap_or_default();
    let mut kept = FieldTable::default();
    for (name, value) in headers.inner() {
        if !RESET_HEADERS.contains(&name.as_str()) && name.as_str() != header::REPLAYED && name.as_str() != header::REPLAYED_AT {
            kept.insert(name.clone(), value.clone());
        }
    }
    headers = kept;
    headers.insert(ShortString::from(header::REPLAYED), AMQPValue::LongLongInt(letter.replayed.saturating_add(1)));
    headers.insert(ShortString::from(header::REPLAYED_AT), AMQPValue::LongString(LongString::from(rfc3339(now))));

    let copy = copy_properties(properties, headers).with_delivery_mode(2);
    let routing_key = letter.routing_key().unwrap_or_else(|| carried_routing_key.to_owned());
    Republish { routing_key, properties: copy }
}

/// What happened to one dead letter given to the [`Replayer`].
#[derive(Debug)]
pub struct Outcome {
    /// Its `message_id`, if it has one.
    pub message_id: Option<String>,
    /// `Ok` when the copy is confirmed and the dead letter removed; else why not, in words.
    pub result: Result<(), String>,
}

/// Publishes copies with confirms and removes each dead letter once its copy is confirmed.
pub struct Replayer {
    channel: Channel,
    exchange: String,
    /// Each copy in flight: the dead letter it copies and its `message_id`.
    window: Outbox<(Taken, Option<String>)>,
}

impl Replayer {
    /// A replayer publishing to `exchange`, which must exist.
    pub async fn open(connection: &Connection, exchange: &str) -> Result<Replayer, DlqError> {
        let probe = connection.create_channel().await?;
        let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };
        match probe.exchange_declare(exchange.into(), ExchangeKind::Topic, passive, FieldTable::default()).await {
            Ok(()) => {}
            Err(error) if is_not_found(&error) => return Err(DlqError::NoExchange { exchange: exchange.to_owned() }),
            Err(error) => return Err(error.into()),
        }
        if probe.status().connected() {
            probe.close(200, "checked".into()).await?;
        }
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Replayer { channel, exchange: exchange.to_owned(), window: Outbox::new(WINDOW) })
    }

    /// Copies in flight.
    pub fn in_flight(&self) -> usize {
        self.window.len()
    }

    /// Publishes the copy of a taken dead letter; when the window is full, first settles
    /// the oldest copy in flight and returns what happened to it. An error means the
    /// channel or connection is gone: the dead letter stays in its queue.
    pub async fn send(
        &mut self,
        reader: &mut Reader<'_>,
        taken: Taken,
        copy: Republish,
        message_id: Option<String>,
    ) -> Result<Vec<Outcome>, DlqError> {
        let mut settled = Vec::new();
        if self.window.is_full() {
            settled.extend(self.settle_oldest(reader).await);
        }
        let confirm = publish_mandatory(&self.channel, &self.exchange, &copy.routing_key, &taken.delivery.data, copy.properties).await?;
        self.window.push((taken, message_id), Some(confirm));
        Ok(settled)
    }

    /// Waits for every copy in flight and removes the dead letters of the confirmed ones.
    pub async fn settle_all(&mut self, reader: &mut Reader<'_>) -> Vec<Outcome> {
        let mut settled = Vec::new();
        while !self.window.is_empty() {
            settled.extend(self.settle_oldest(reader).await);
        }
        settled
    }

    async fn settle_oldest(&mut self, reader: &mut Reader<'_>) -> Option<Outcome> {
        let ((taken, message_id), answer) = self.window.settle_oldest().await?;
        let result = match answer {
            Confirmed::Taken => match reader.remove(&taken).await {
                Ok(()) => Ok(()),
                Err(error) => Err(format!("replayed, but the dead letter could not be removed and stays in the queue ({error})")),
            },
            Confirmed::Unroutable => Err(format!(
                "no queue is bound to exchange {} for routing key {}: the copy was not taken; the dead letter stays",
                self.exchange, taken.delivery.routing_key
            )),
            Confirmed::Refused => Err("the broker refused the copy (negative confirm); the dead letter stays".to_owned()),
            Confirmed::Lost(error) => Err(format!("the copy was not confirmed ({error}); the dead letter stays")),
        };
        Some(Outcome { message_id, result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_resets_the_retry_state_and_stamps_the_replay() {
        let mut headers = FieldTable::default();
        for name in RESET_HEADERS {
            headers.insert(ShortString::from(name), AMQPValue::LongString(LongString::from("x")));
        }
        headers.insert("x-els-replayed".into(), AMQPValue::LongLongInt(2));
        headers.insert("traceparent".into(), AMQPValue::LongString(LongString::from("00-abc")));
        let properties = BasicProperties::default()
            .with_headers(headers)
            .with_message_id("m-7".into())
            .with_content_type("application/json".into())
            .with_expiration("100".into())
            .with_user_id("someone".into())
            .with_delivery_mode(1);
        let body = br#"{"infno":"ELS7003","fixmedins_code":"H32128200338","data":{}}"#;
        let letter = DeadLetter::read(&properties, body, None);
        let now = DateTime::parse_from_rfc3339("2026-11-25T01:02:03.004Z").unwrap().with_timezone(&Utc);
        let copy = republish(&letter, &properties, "els.dead", now);
        assert_eq!(copy.routing_key, "ELS7003.H32128200338");
        let headers = copy.properties.headers().clone().unwrap();
        let names: Vec<&str> = headers.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(headers.inner()["x-els-replayed"], AMQPValue::LongLongInt(3));
        assert_eq!(headers.inner()["x-els-replayed-at"], AMQPValue::LongString(LongString::from("2026-11-25T01:02:03.004Z")));
        assert!(headers.inner().contains_key("traceparent"));
        assert_eq!(copy.properties.message_id().as_ref().map(|s| s.as_str()), Some("m-7"));
        assert_eq!(copy.properties.content_type().as_ref().map(|s| s.as_str()), Some("application/json"));
        assert_eq!(*copy.properties.delivery_mode(), Some(2));
        assert!(copy.properties.expiration().is_none() && copy.properties.user_id().is_none());

        let unreadable = DeadLetter::read(&properties, b"{oops", None);
        assert_eq!(republish(&unreadable, &properties, "ELS7002.H32128200338", now).routing_key, "ELS7002.H32128200338");
    }
}
