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

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use super::BrokerError;
use crate::config::{AmqpSettings, RetrySettings};

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

    /// Declares everything; safe to repeat, and fails with the broker's reason when an
    /// existing queue was declared with other arguments.
    pub async fn declare(&self, channel: &Channel) -> Result<(), BrokerError> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel.exchange_declare(self.exchange.as_str().into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
        declare_quorum(channel, &self.queue, FieldTable::default()).await?;
        channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        declare_quorum(channel, &self.dead_letter_queue, FieldTable::default()).await?;
        for step in &self.delay_steps_ms {
            let mut arguments = self.back_to_work();
            arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(*step as i64));
            declare_quorum(channel, &self.step_queue(*step), arguments).await?;
        }
        declare_quorum(channel, &self.long_delay_queue(), self.back_to_work()).await?;
        Ok(())
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

async fn declare_quorum(channel: &Channel, name: &str, mut arguments: FieldTable) -> Result<(), BrokerError> {
    arguments.insert(ShortString::from("x-queue-type"), AMQPValue::LongString("quorum".into()));
    let options = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(name.into(), options, arguments).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_steps_double_up_to_the_maximum() {
        let t = Topology::new(&AmqpSettings::default(), &RetrySettings { initial_backoff_ms: 500, max_backoff_ms: 60_000, max_elapsed_secs: 1 });
        assert_eq!(t.delay_steps_ms, [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000]);
        assert_eq!(t.delay_queue(Duration::from_millis(300)), "els.delay.500");
        assert_eq!(t.delay_queue(Duration::from_millis(1500)), "els.delay.2000");
        assert_eq!(t.delay_queue(Duration::from_secs(60)), "els.delay.60000");
        assert_eq!(t.delay_queue(Duration::from_secs(3600)), "els.delay.long");
    }
}
