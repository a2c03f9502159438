//! Operating the dead-letter queue (contract §2, `els.dead`): reading it without disturbing
//! it, filtering, counting, and moving dead letters back to the events exchange.
//!
//! - [`letter`]: one dead letter as an operator sees it (its `x-els-*` headers and what
//!   its body says).
//! - [`filter`]: which dead letters a command acts on (reason, infno, institution, failure
//!   time).
//! - [`reader`]: a non-destructive scan of the quorum queue: every message present at the
//!   start is delivered to a consumer and held unacknowledged; closing the channels puts
//!   the ones not taken back in their original order.
//! - [`stats`]: counts by reason, infno and institution with oldest and newest failure.
//! - [`triage`]: grouping by return code, field named in the error, or offending value,
//!   most frequent first.
//! - [`sheet`]: a dead letter as a spreadsheet row (`dlq peek --csv`).
//! - [`replay`]: the republished copy (retry state reset, replay stamped) and the
//!   confirm-before-ack pipeline that moves dead letters back.
//!
//! # Reading a quorum queue without disturbing it
//!
//! AMQP has no "browse". The [`reader::Reader`] consumes with manual acknowledgements,
//! acknowledges nothing it does not remove, and at the end closes its channels, oldest
//! first (never cancelling a consumer that deliveries are on their way to). The broker
//! returns unacknowledged messages of a closed channel
//! to the head of a quorum queue in delivery order, so the queue afterwards holds the same
//! messages in the same order with the same properties and headers. What the broker does
//! change is its own delivery counter: every read adds one to `x-delivery-count` (on
//! RabbitMQ 4.x also to `x-acquired-count`). RabbitMQ 4.0 and later drop a message from a
//! quorum queue once it was returned more often than its `delivery-limit`, 20 unless a
//! policy or argument says otherwise. The worker declares the dead-letter queue with a
//! limit no message reaches ([`DELIVERY_LIMIT`](crate::broker::topology::DELIVERY_LIMIT));
//! a queue created by an earlier release lacks it and needs a policy there (README,
//! RabbitMQ versions), and the reader warns when a message it reads has been read often.
//!
//! A killed reader loses nothing: the broker returns every unacknowledged message when the
//! connection drops.

pub mod filter;
pub mod letter;
pub mod reader;
pub mod replay;
pub mod sheet;
pub mod stats;
pub mod triage;

pub use filter::Filter;
pub use letter::{DeadLetter, Reason};
pub use reader::Reader;
pub use replay::Replayer;
pub use stats::Stats;

/// Why a dead-letter operation could not go on.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// The queue does not exist on the broker.
    #[error(
        "the dead-letter queue {queue} does not exist on this broker (has a worker declared the topology? is amqp.url the right virtual host?)"
    )]
    NoQueue {
        /// The queue's name.
        queue: String,
    },
    /// The exchange to replay to does not exist.
    #[error("the exchange {exchange} does not exist on this broker (has a worker declared the topology?)")]
    NoExchange {
        /// The exchange's name.
        exchange: String,
    },
    /// The broker stopped delivering or acknowledging (connection lost, queue deleted).
    #[error("the broker ended the reading of {queue} (connection lost or queue deleted); what was not moved stays in it")]
    Ended {
        /// The queue's name.
        queue: String,
    },
    /// The broker connection or a channel failed while reading or moving.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
}
