//! The broker topology (contract §2), declared idempotently at start-up:
//!
//! | name (defaults) | kind | purpose |
//! |---|---|---|
//! | `els.events` | topic exchange | where events are published |
//! | `els.events` | quorum queue bound with `#` | the work queue all workers consume |
//! | `els.dead` | quorum queue | dead letters |
//! | `els.delay.<ms>` | quorum queues, one per backoff step | messages waiting to be retried; when their time is up the broker moves them back to the work queue (dead-lettering at-least-once) |
//! | `els.delay.long` | quorum queue | waits longer than the longest step (daily call limit until Beijing midnight), each message with its own expiry |
//!
//! Token sharing and msgid slots add their own names (see their modules).
//!
//! # Delivery limit
//!
//! RabbitMQ 4.0 and later give every quorum queue a delivery limit of 20 unless a policy or
//! argument says otherwise: a message handed back more than 20 times (workers crashing on
//! it, every read by `dlq stats` / `dlq peek`) is dropped. The work and dead-letter queues
//! are therefore declared with `x-delivery-limit` = [`DELIVERY_LIMIT`], a count no message
//! reaches, on every version. Not `-1`: RabbitMQ 4 reads it as "unlimited", but 3.x drops a
//! message at its first redelivery with it (tried on 3.10.8). The argument does not block a
//! later change: a policy's `delivery-limit` still applies (the broker takes the lower of a
//! positive policy and the argument).
//!
//! A queue created by an earlier release has no such argument, and redeclaring it with one
//! is refused (PRECONDITION_FAILED). That mismatch is tolerated: the queue is used as it
//! is, and [`Declared::without_delivery_limit`] names it so that the worker can tell the
//! operator to set a policy.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::AMQPSoftError;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ErrorKind, ExchangeKind};

use super::BrokerError;
use crate::config::{AmqpSettings, RetrySettings};

/// The `x-delivery-limit` of the work and dead-letter queues: effectively none (see the
/// module documentation).
pub const DELIVERY_LIMIT: i64 = 1_000_000_000;

/// What [`Topology::declare`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Declared {
    /// Queues that exist without the `x-delivery-limit` argument (declared by an earlier
    /// release): on RabbitMQ 4.0 and later they drop a message delivered more than 20 times
    /// unless a policy sets `delivery-limit`.
    pub without_delivery_limit: Vec<String>,
}

/// The names of the worker's exchanges and queues, and the delay steps.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The topic exchange events are published to.
    pub exchange: String,
    /// The work queue.
    pub queue: String,
    /// The dead-letter queue.
    pub dead_letter_queue: String,
    /// Prefix of the other names.
    pub prefix: String,
    /// Delay steps in milliseconds, ascending: the backoff waits doubled from
    /// `initial_backoff_ms` up to `max_backoff_ms`.
    pub delay_steps_ms: Vec<u64>,
}

impl Topology {
    /// The topology of `amqp` with delay steps for `retry`.
    pub fn new(amqp: &AmqpSettings, retry: &RetrySettings) -> Self {
        let mut steps = Vec::new();
        let mut step = retry.initial_backoff_ms.max(1);
        while step < retry.max_backoff_ms {
            steps.push(step);
            step = step.saturating_mul(2);
        }
        steps.push(retry.max_backoff_ms.max(1));
        Topology {
            exchange: amqp.exchange.clone(),
            queue: amqp.queue.clone(),
            dead_letter_queue: amqp.dead_letter_queue.clone(),
            prefix: amqp.name_prefix.clone(),
            delay_steps_ms: steps,
        }
    }

    /// The queue to park a message in for `wait`: the smallest step that is long enough
    /// (the message's own expiry makes the exact wait), or the long-wait queue.
    pub fn delay_queue(&self, wait: Duration) -> String {
        let ms = wait.as_millis().min(u64::MAX as u128) as u64;
        match self.delay_steps_ms.iter().find(|step| **step >= ms) {
            Some(step) => self.step_queue(*step),
            None => self.long_delay_queue(),
        }
    }

    fn step_queue(&self, step_ms: u64) -> String {
        format!("{}.delay.{step_ms}", self.prefix)
    }

    fn long_delay_queue(&self) -> String {
        format!("{}.delay.long", self.prefix)
    }

    /// Declares everything, each step on a fresh channel of `connection` where a refusal can
    /// close it; safe to repeat, and fails with the broker's reason when an existing queue
    /// was declared with other arguments (except the tolerated delivery limit).
    pub async fn declare(&self, connection: &Connection) -> Result<Declared, BrokerError> {
        let channel = connection.create_channel().await?;
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel.exchange_declare(self.exchange.as_str().into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
        let mut declared = Declared::default();
        for queue in [&self.queue, &self.dead_letter_queue] {
            if !declare_with_delivery_limit(connection, queue).await? {
                declared.without_delivery_limit.push(queue.clone());
            }
        }
        channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for (name, arguments) in self.delay_queues() {
            declare_quorum(&channel, &name, arguments).await?;
        }
        let _ = channel.close(200, "declared".into()).await;
        Ok(declared)
    }

    /// The delay queues (every step, then the long-wait queue), each with the arguments it
    /// is declared with (`x-queue-type` aside, see [`quorum_arguments`]).
    pub fn delay_queues(&self) -> Vec<(String, FieldTable)> {
        let mut queues: Vec<(String, FieldTable)> = self
            .delay_steps_ms
            .iter()
            .map(|step| {
                let mut arguments = self.back_to_work();
                arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(*step as i64));
                (self.step_queue(*step), arguments)
            })
            .collect();
        queues.push((self.long_delay_queue(), self.back_to_work()));
        queues
    }

    /// Arguments that send expired messages back to the work queue, at least once.
    fn back_to_work(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
        arguments.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(self.queue.as_str().into()));
        arguments.insert("x-dead-letter-strategy".into(), AMQPValue::LongString("at-least-once".into()));
        arguments.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
        arguments
    }
}

/// Declares the quorum queue `name` with [`DELIVERY_LIMIT`]; `Ok(false)` when it already
/// exists without that argument (then it is declared as it is, on a channel of its own,
/// since the refusal closed the first).
async fn declare_with_delivery_limit(connection: &Connection, name: &str) -> Result<bool, BrokerError> {
    let channel = connection.create_channel().await?;
    match declare_quorum(&channel, name, delivery_limit_arguments()).await {
        Ok(()) => {
            let _ = channel.close(200, "declared".into()).await;
            Ok(true)
        }
        Err(BrokerError::Amqp(error)) if lacks_delivery_limit(&error) => {
            let channel = connection.create_channel().await?;
            declare_quorum(&channel, name, FieldTable::default()).await?;
            let _ = channel.close(200, "declared".into()).await;
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

/// Whether the broker refused a declare because the queue exists without `x-delivery-limit`.
pub fn lacks_delivery_limit(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(e)
        if e.get_id() == AMQPSoftError::PRECONDITIONFAILED.get_id()
            && e.get_message().as_str().contains("inequivalent arg 'x-delivery-limit'")
            && e.get_message().as_str().contains("current is none"))
}

/// The arguments of the work and dead-letter queues: [`DELIVERY_LIMIT`] (`x-queue-type`
/// aside, see [`quorum_arguments`]).
pub fn delivery_limit_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(DELIVERY_LIMIT));
    arguments
}

/// `arguments` with `x-queue-type` = `quorum`, as every queue of the topology is declared.
pub fn quorum_arguments(mut arguments: FieldTable) -> FieldTable {
    arguments.insert(ShortString::from("x-queue-type"), AMQPValue::LongString("quorum".into()));
    arguments
}

async fn declare_quorum(channel: &Channel, name: &str, arguments: FieldTable) -> Result<(), BrokerError> {
    let options = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(name.into(), options, quorum_arguments(arguments)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_steps_double_up_to_the_maximum() {
        let t = Topology::new(
            &AmqpSettings::default(),
            &RetrySettings { initial_backoff_ms: 500, max_backoff_ms: 60_000, max_elapsed_secs: 1 },
        );
        assert_eq!(t.delay_steps_ms, [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000]);
        assert_eq!(t.delay_queue(Duration::from_millis(300)), "els.delay.500");
        assert_eq!(t.delay_queue(Duration::from_millis(1500)), "els.delay.2000");
        assert_eq!(t.delay_queue(Duration::from_secs(60)), "els.delay.60000");
        assert_eq!(t.delay_queue(Duration::from_secs(3600)), "els.delay.long");
    }

    #[test]
    fn only_a_missing_delivery_limit_is_tolerated() {
        use lapin::protocol::{AMQPError, AMQPErrorKind};
        let refusal = |message: &str| -> lapin::Error {
            let error = AMQPError::new(AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED), message.into());
            ErrorKind::ProtocolError(error).into()
        };
        // The texts of RabbitMQ 3.10.8 and 4.3.6.
        let missing = "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'els.events' in vhost '/': \
                       received the value '1000000000' of type 'long' but current is none";
        assert!(lacks_delivery_limit(&refusal(missing)));
        let other = "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'els.events' in vhost '/': \
                     received the value '1000000000' of type 'long' but current is the value '5' of type 'long'";
        assert!(!lacks_delivery_limit(&refusal(other)), "a limit chosen by someone else is not overwritten silently");
        let queue_type = "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'els.events' in vhost '/'";
        assert!(!lacks_delivery_limit(&refusal(queue_type)));
    }
}
