//! A non-destructive scan of a quorum queue.
//!
//! AMQP has no way to browse a queue, so the reader consumes with manual acknowledgements
//! and holds every message it does not remove. At the end ([`Reader::finish`]) it closes
//! its channels, oldest first: the broker puts the messages held by the consumer of a
//! closed channel back at the head of a quorum queue, sorted in delivery order, so the
//! queue keeps its order, properties and headers (tests/dlq.rs proves it). Only the
//! broker's own counter changes: `x-delivery-count` goes up by one per read.
//!
//! The head of a quorum queue is in fact two queues: messages given back ("returns") are
//! delivered before the rest, and more returns are appended behind earlier ones. So a
//! reader that gave back only a prefix of earlier returns would rotate them; the reader
//! therefore always reads to the end of what was present (a caller that wants fewer,
//! like `dlq peek -n`, still reads on and holds the rest), and then everything present
//! goes back as one run, in order, ahead of what arrived meanwhile. A scan cut short (an
//! interrupt, a lost connection, SIGKILL) loses nothing but may leave the order changed.
//!
//! Removals are acknowledgements, which have no answer and which the broker applies
//! asynchronously; a quorum-queue channel that is closed while it still holds some back
//! (more than 32 unapplied) drops them, and those messages come back although they were
//! moved. The reader therefore makes a `basic.qos` round trip (answered after every
//! earlier acknowledgement of the channel) and waits half a second (`SETTLE`) after its
//! last removal before closing; should the broker be slower than that, a message is at
//! worst both moved and still present.
//!
//! What the reader must not do is cancel a consumer while deliveries to it are under way:
//! a channel hands deliveries for a cancelled consumer back one by one, and a quorum queue
//! without a delivery limit appends such returns at its tail (measured on RabbitMQ 3.10).
//! Neither may a consumer that still has credit exist while another channel closes, or it
//! would take the returned messages and put them back later, out of order.
//!
//! A consumer can hold at most its prefetch of unacknowledged messages, so the reader opens
//! a new channel with a new consumer each time the current one holds its prefetch, which is
//! [`PER_CHANNEL`] or, for the last one, exactly the number of messages left to read. A
//! consumer that holds its prefetch gets nothing more, so the channels see disjoint,
//! consecutive runs of the queue, and when only reading, no consumer has credit left at the
//! end. A caller that removes messages ([`Reader::remove`]) gives credit back; it must
//! settle its removals in flight before asking for the next message when
//! [`Reader::is_full`] says so (otherwise the old consumer would get credit again and the
//! runs would interleave), and at the end the last consumer, which may have credit, is
//! first left to receive what is under way and then cancelled.
//!
//! The scan covers the messages that were ready when it started (the count of a passive
//! `queue.declare`); messages arriving later are left alone. Messages that other consumers
//! hold unacknowledged are not seen; [`Reader::other_consumers`] tells whether there are any.
//! If nothing arrives for [`IDLE`] (someone else took the rest) the scan ends early.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};

use super::DlqError;

/// Unacknowledged messages one consumer holds at most (a channel each); the client buffers
/// at most this many deliveries at a time.
pub const PER_CHANNEL: u16 = 2000;

/// The scan ends when nothing arrives for this long although messages should be left.
pub const IDLE: Duration = Duration::from_secs(5);

/// A message taken by the reader: held unacknowledged until [`Reader::remove`], or until
/// [`Reader::finish`] puts it back.
#[derive(Debug)]
pub struct Taken {
    /// The delivery: body, properties, headers.
    pub delivery: Delivery,
    /// The channel (index into the reader's slots) it came on.
    slot: usize,
}

struct Slot {
    channel: Channel,
    consumer: Consumer,
    prefetch: u16,
    delivered: u64,
    settled: u64,
}

impl Slot {
    fn held(&self) -> u64 {
        self.delivered - self.settled
    }

    fn is_full(&self) -> bool {
        self.held() >= u64::from(self.prefetch)
    }
}

/// How long the last consumer must receive nothing before it is cancelled at the end.
const QUIET: Duration = Duration::from_millis(300);

/// How long to wait after the last removal before closing the channels.
const SETTLE: Duration = Duration::from_millis(500);

/// How long opening a scan waits for other consumers of the queue to go away.
pub const OTHERS_SETTLE: Duration = Duration::from_secs(5);
/// How often it looks again meanwhile.
const OTHERS_POLL: Duration = Duration::from_millis(100);

/// Reads a queue from head to tail without disturbing what it does not remove.
pub struct Reader<'c> {
    connection: &'c Connection,
    queue: String,
    present: u64,
    other_consumers: u32,
    slots: Vec<Slot>,
    scanned: u64,
}

impl<'c> Reader<'c> {
    /// Prepares a scan of `queue`: checks that it exists and counts its ready messages.
    /// Consumers found on it are waited for, up to [`OTHERS_SETTLE`]: a `dlq` command that
    /// has just ended still holds its messages until the broker has processed its closed
    /// connection, and a scan started then would not see them.
    pub async fn open(connection: &'c Connection, queue: &str) -> Result<Reader<'c>, DlqError> {
        let probe = connection.create_channel().await?;
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let settle_until = std::time::Instant::now() + OTHERS_SETTLE;
        let declared = loop {
            let declared = match probe.queue_declare(queue.into(), passive, FieldTable::default()).await {
                Ok(declared) => declared,
                Err(error) if is_not_found(&error) => return Err(DlqError::NoQueue { queue: queue.to_owned() }),
                Err(error) => return Err(error.into()),
            };
            if declared.consumer_count() == 0 || std::time::Instant::now() >= settle_until {
                break declared;
            }
            tokio::time::sleep(OTHERS_POLL).await;
        };
        if probe.status().connected() {
            probe.close(200, "counted".into()).await?;
        }
        Ok(Reader {
            connection,
            queue: queue.to_owned(),
            present: u64::from(declared.message_count()),
            other_consumers: declared.consumer_count(),
            slots: Vec::new(),
            scanned: 0,
        })
    }

    /// Messages ready in the queue when the scan started: the most it reads.
    pub fn present(&self) -> u64 {
        self.present
    }

    /// Consumers of the queue other than this reader when it started (another `dlq`
    /// command, or one that was just stopped and whose messages are not back yet).
    pub fn other_consumers(&self) -> u32 {
        self.other_consumers
    }

    /// Messages read so far.
    pub fn scanned(&self) -> u64 {
        self.scanned
    }

    /// Whether the current consumer holds its whole prefetch: removals in flight must be
    /// settled before [`Reader::next`] (see the module documentation).
    pub fn is_full(&self) -> bool {
        self.slots.last().is_some_and(Slot::is_full)
    }

    /// The next message, or `None` when every message present at the start was read (or
    /// nothing more arrives within [`IDLE`]).
    pub async fn next(&mut self) -> Result<Option<Taken>, DlqError> {
        if self.scanned >= self.present {
            return Ok(None);
        }
        if self.slots.is_empty() || self.is_full() {
            self.open_slot().await?;
        }
        let index = self.slots.len() - 1;
        let slot = &mut self.slots[index];
        match tokio::time::timeout(IDLE, slot.consumer.next()).await {
            Err(_) => {
                tracing::info!(
                    queue = %self.queue,
                    read = self.scanned,
                    expected = self.present,
                    "nothing more arrived; the rest was taken by another consumer"
                );
                Ok(None)
            }
            Ok(Some(Ok(delivery))) => {
                slot.delivered += 1;
                self.scanned += 1;
                Ok(Some(Taken { delivery, slot: index }))
            }
            Ok(Some(Err(error))) => Err(error.into()),
            Ok(None) => Err(DlqError::Ended { queue: self.queue.clone() }),
        }
    }

    /// Removes a taken message from the queue (acknowledges it).
    pub async fn remove(&mut self, taken: &Taken) -> Result<(), DlqError> {
        let acked = taken.delivery.ack(BasicAckOptions::default()).await?;
        if !acked {
            return Err(DlqError::Ended { queue: self.queue.clone() });
        }
        if let Some(slot) = self.slots.get_mut(taken.slot) {
            slot.settled += 1;
        }
        Ok(())
    }

    /// Ends the scan: closes the channels oldest first, so that the broker puts every
    /// message not removed back at the head of the queue in its original order. Should
    /// this fail, the broker puts them back when the connection closes.
    pub async fn finish(mut self) -> Result<(), DlqError> {
        let removed = self.slots.iter().any(|slot| slot.settled > 0);
        if removed {
            // Acknowledgements have no answer: a basic.qos round trip, answered after every
            // earlier frame of its channel, makes sure the broker has them all. It applies
            // them asynchronously, though, and a channel that closes while it still holds
            // some back (a quorum queue client holds back settlements while more than 32
            // are unapplied) drops them: those messages would come back although they were
            // moved. Give it time to pass them on.
            for slot in self.slots.iter().filter(|slot| slot.settled > 0 && slot.channel.status().connected()) {
                slot.channel.basic_qos(slot.prefetch, BasicQosOptions::default()).await?;
            }
            tokio::time::sleep(SETTLE).await;
        }
        if self.slots.len() > 1
            && removed
            && let Some(last) = self.slots.last_mut()
            && !last.is_full()
            && last.channel.status().connected()
        {
            // The last consumer may have credit: let what is under way arrive (it is held,
            // not read), then stop it so that it takes none of the returned messages.
            while let Ok(Some(Ok(_held))) = tokio::time::timeout(QUIET, last.consumer.next()).await {}
            last.channel.basic_cancel(last.consumer.tag(), BasicCancelOptions::default()).await?;
        }
        for slot in &self.slots {
            if slot.channel.status().connected() {
                slot.channel.close(200, "scan done".into()).await?;
            }
        }
        Ok(())
    }

    async fn open_slot(&mut self) -> Result<(), DlqError> {
        let left = self.present.saturating_sub(self.scanned).max(1);
        let prefetch = u16::try_from(left).unwrap_or(PER_CHANNEL).min(PER_CHANNEL);
        let channel = self.connection.create_channel().await?;
        channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let tag = format!("els-bridge-dlq-{}-{}", std::process::id(), self.slots.len());
        let consumer =
            channel.basic_consume(self.queue.as_str().into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default()).await?;
        self.slots.push(Slot { channel, consumer, prefetch, delivered: 0, settled: 0 });
        Ok(())
    }
}

/// Whether the broker answered 404 NOT_FOUND.
pub(crate) fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404)
}
