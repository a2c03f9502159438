//! A replicated log on a RabbitMQ stream: every process tails the stream and folds its
//! entries, in the one order the stream gives them, into state of its own — so all
//! processes agree, and a process started later rebuilds the state by replaying the log.
//! The token store and the receipts ledger are such logs.
//!
//! Each entry is one JSON message `{"id": nonce, "change": ...}`; a marker without a change
//! is used to sync.
//!
//! * **Read your writes.** [`StreamLog::append`] returns only when this process's own
//!   consumer has applied the entry (found by its id): the change then sits in its place in
//!   the log rather than being patched in locally ahead of older entries still in flight.
//!   [`StreamLog::append_confirmed`] only waits for the broker's confirm, for entries the
//!   process does not need to read back.
//! * **Sync.** [`StreamLog::sync`] publishes a marker and waits until it comes back: the
//!   stream is one ordered log, so every entry confirmed before it has been applied.
//!   [`StreamLog::open`] syncs before returning, so the state is complete from the start.
//! * **Failure.** When the connection or a channel dies, the consumer ends; from then on
//!   every call fails at once (no hanging) and [`StreamLog::check`] says so. The owner
//!   reconnects and opens the log again: nothing is lost, the log is on the broker.
//!
//! The consumer reads with a prefetch of [`STREAM_PREFETCH`] and acknowledges in batches
//! (for a stream an ack only gives credit). Unreadable entries are skipped with a warning
//! that does not show them (they may hold secrets).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::protocol::AMQPSoftError;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer, ErrorKind};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{BrokerError, Publisher};

/// Unacknowledged entries a log's consumer may hold.
pub const STREAM_PREFETCH: u16 = 100;
/// How long the own consumer may read nothing at all while an appended entry is awaited.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Segment size of the streams: retention drops whole segments, so keep them small.
const SEGMENT_BYTES: i64 = 1_000_000;
/// A stream another connection has just declared may refuse consumers for a moment, with
/// PRECONDITION_FAILED "… does not have a replica on the local node", until the broker has
/// started it: opening the log is tried this many times, this far apart, before that is an
/// error (two workers starting together in a fresh vhost meet it).
const STREAM_START_ATTEMPTS: u32 = 50;
const STREAM_START_PAUSE: Duration = Duration::from_millis(100);

/// State built by folding a log's entries in order.
pub trait Fold: Send + 'static {
    /// One entry's change, as it is appended.
    type Change: Serialize + Send;
    /// One entry's change as this fold reads it back: the change itself, or only the part
    /// the fold keeps, borrowed from the entry's bytes (what a fold does not name is
    /// skipped unread).
    type Read<'de>: Deserialize<'de>;
    /// Applies one change (in log order).
    fn apply(&mut self, change: Self::Read<'_>);
}

/// How a log's stream is declared and where a process starts reading it.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// The stream's name.
    pub name: String,
    /// The stream's `x-max-age`, e.g. `2D` or `400D`: older entries are dropped.
    pub max_age: String,
    /// Replay entries from this time on (a timestamp offset).
    pub replay_from: DateTime<Utc>,
}

/// Why the log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Publishing or declaring failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The consumer ended; the connection must be reopened.
    #[error("the stream {stream} is no longer read ({why}); the connection must be reopened")]
    Ended { stream: String, why: String },
    /// An entry did not come back in time.
    #[error("an entry published to the stream {stream} did not come back, and nothing was read from it for {}s", SYNC_TIMEOUT.as_secs())]
    TimedOut { stream: String },
}

#[derive(Serialize, Deserialize)]
struct Entry<C> {
    id: String,
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    change: Option<C>,
}

struct Inner<F> {
    fold: F,
    /// Entries this process appended and waits to see applied, by id.
    awaited: HashMap<String, oneshot::Sender<()>>,
    /// Why the consumer ended; the log is unusable from then on.
    ended: Option<String>,
    /// Entries read so far (progress while a long log is replayed).
    applied: u64,
}

/// A log on a stream, folded into `F`; see the module documentation.
pub struct StreamLog<F> {
    stream: String,
    publisher: Publisher,
    inner: Arc<Mutex<Inner<F>>>,
    reader: JoinHandle<()>,
    /// Cancelled when the consumer ends.
    ended: CancellationToken,
}

impl<F> Drop for StreamLog<F> {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl<F: Fold> StreamLog<F> {
    /// Declares the stream, replays it from `settings.replay_from` into `fold`, and returns
    /// once the replay has caught up with the end of the log.
    pub async fn open(connection: &Connection, settings: &LogSettings, fold: F) -> Result<Self, LogError> {
        let mut attempt = 1;
        let (channel, consumer) = loop {
            match consume(connection, settings).await {
                Ok(opened) => break opened,
                Err(error) if attempt < STREAM_START_ATTEMPTS && is_starting(&error) => {
                    tracing::debug!(stream = %settings.name, attempt, "the stream is still starting: {error}");
                    attempt += 1;
                    tokio::time::sleep(STREAM_START_PAUSE).await;
                }
                Err(error) => return Err(BrokerError::from(error).into()),
            }
        };
        let inner = Arc::new(Mutex::new(Inner { fold, awaited: HashMap::new(), ended: None, applied: 0 }));
        let ended = CancellationToken::new();
        let reader = tokio::spawn(read(channel, consumer, Arc::clone(&inner), settings.name.clone(), ended.clone()));
        let log = StreamLog { stream: settings.name.clone(), publisher: Publisher::open(connection).await?, inner, reader, ended };
        log.sync().await?;
        Ok(log)
    }

    fn lock(&self) -> MutexGuard<'_, Inner<F>> {
        lock(&self.inner)
    }

    /// `Ok` while the log is read; once it fails it stays failed.
    pub fn check(&self) -> Result<(), LogError> {
        match &self.lock().ended {
            Some(why) => Err(self.ended(why.clone())),
            None => Ok(()),
        }
    }

    /// Cancelled once the log is no longer read (the stream was deleted, a channel or the
    /// connection was lost): its owner must reconnect, since nothing works from then on.
    pub fn lost(&self) -> CancellationToken {
        self.ended.clone()
    }

    fn ended(&self, why: String) -> LogError {
        LogError::Ended { stream: self.stream.clone(), why }
    }

    /// Reads the folded state.
    pub fn read<R>(&self, read: impl FnOnce(&F) -> R) -> Result<R, LogError> {
        let inner = self.lock();
        match &inner.ended {
            Some(why) => Err(self.ended(why.clone())),
            None => Ok(read(&inner.fold)),
        }
    }

    /// Appends `change` and returns once it is applied here.
    pub async fn append(&self, change: F::Change) -> Result<(), LogError> {
        let (id, body) = self.encode(Some(change))?;
        self.publish_and_wait(id, &body).await
    }

    /// Appends `change` and returns once the broker has confirmed it (it is durable),
    /// without waiting to read it back: for entries that no later step of this process
    /// needs applied first. Whatever this process appends or syncs later is applied after
    /// it, in log order.
    pub async fn append_confirmed(&self, change: F::Change) -> Result<(), LogError> {
        self.check()?;
        let (id, body) = self.encode(Some(change))?;
        self.publisher.publish("", &self.stream, &body, entry_properties(&id)).await?;
        Ok(())
    }

    /// Returns once every entry appended before this call is applied here.
    pub async fn sync(&self) -> Result<(), LogError> {
        let (id, body) = self.encode(None)?;
        self.publish_and_wait(id, &body).await
    }

    /// A new entry (a marker without `change`): its id and its body.
    fn encode(&self, change: Option<F::Change>) -> Result<(String, Vec<u8>), LogError> {
        let id = nonce();
        let body = serde_json::to_vec(&Entry { id: id.clone(), change }).map_err(|e| self.ended(e.to_string()))?;
        Ok((id, body))
    }

    async fn publish_and_wait(&self, id: String, body: &[u8]) -> Result<(), LogError> {
        let seen = {
            let mut inner = self.lock();
            if let Some(why) = &inner.ended {
                return Err(self.ended(why.clone()));
            }
            let (sender, receiver) = oneshot::channel();
            inner.awaited.insert(id.clone(), sender);
            receiver
        };
        let outcome = async {
            self.publisher.publish("", &self.stream, body, entry_properties(&id)).await?;
            tokio::pin!(seen);
            // A long log takes long to replay: give up only when nothing at all was read
            // for SYNC_TIMEOUT, not after SYNC_TIMEOUT in all.
            let mut read_before = self.lock().applied;
            loop {
                match tokio::time::timeout(SYNC_TIMEOUT, &mut seen).await {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(_)) => return Err(self.ended(self.lock().ended.clone().unwrap_or_else(|| "unknown".into()))),
                    Err(_) => {
                        let read_now = self.lock().applied;
                        if read_now == read_before {
                            return Err(LogError::TimedOut { stream: self.stream.clone() });
                        }
                        tracing::debug!(stream = %self.stream, entries = read_now, "still reading the stream");
                        read_before = read_now;
                    }
                }
            }
        }
        .await;
        if outcome.is_err() {
            self.lock().awaited.remove(&id);
        }
        outcome
    }
}

/// The properties of an entry: persistent JSON with its id.
fn entry_properties(id: &str) -> BasicProperties {
    BasicProperties::default().with_content_type("application/json".into()).with_delivery_mode(2).with_message_id(id.into())
}

/// The arguments a log's stream is declared with, for a retention of `max_age` (e.g. `2D`).
pub fn stream_arguments(max_age: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
    arguments.insert("x-max-age".into(), AMQPValue::LongString(max_age.into()));
    arguments.insert("x-stream-max-segment-size-bytes".into(), AMQPValue::LongLongInt(SEGMENT_BYTES));
    arguments
}

/// Declares the stream on a channel of its own and consumes it from `replay_from`.
async fn consume(connection: &Connection, settings: &LogSettings) -> Result<(Channel, Consumer), lapin::Error> {
    let mut channel = connection.create_channel().await?;
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    if let Err(error) = channel.queue_declare(settings.name.as_str().into(), durable, stream_arguments(&settings.max_age)).await {
        let Some(argument) = other_argument(&error) else { return Err(error) };
        // Created with another retention (a setting changed since): use it as it is. The
        // refusal closed the channel.
        tracing::warn!(
            stream = %settings.name,
            "the stream {} exists with another {argument} than the configuration asks for ({}): it keeps its own. \
             A stream's arguments cannot change; to apply the new setting, set a policy on the stream \
             (README, RabbitMQ versions: retention of the streams)",
            settings.name,
            error_message(&error)
        );
        channel = connection.create_channel().await?;
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        channel.queue_declare(settings.name.as_str().into(), passive, FieldTable::default()).await?;
    }
    channel.basic_qos(STREAM_PREFETCH, BasicQosOptions::default()).await?;
    let mut offset = FieldTable::default();
    offset.insert("x-stream-offset".into(), AMQPValue::Timestamp(settings.replay_from.timestamp().max(0) as u64));
    let consumer = channel
        .basic_consume(settings.name.as_str().into(), format!("els-bridge-{}", nonce()).into(), BasicConsumeOptions::default(), offset)
        .await?;
    Ok((channel, consumer))
}

/// The argument (`x-max-age`, the segment size) with which an existing stream was declared
/// otherwise, when that is why the broker refused a declare.
fn other_argument(error: &lapin::Error) -> Option<&'static str> {
    let ErrorKind::ProtocolError(e) = error.kind() else { return None };
    if e.get_id() != AMQPSoftError::PRECONDITIONFAILED.get_id() {
        return None;
    }
    let message = e.get_message().as_str();
    ["x-max-age", "x-stream-max-segment-size-bytes"]
        .into_iter()
        .find(|argument| message.contains(&format!("inequivalent arg '{argument}'")))
}

/// The broker's text of a refusal.
fn error_message(error: &lapin::Error) -> String {
    match error.kind() {
        ErrorKind::ProtocolError(e) => e.get_message().to_string(),
        _ => error.to_string(),
    }
}

/// Whether the broker refused a stream because it is still starting it: "does not have a
/// replica on the local node" (PRECONDITION_FAILED), or, on a cluster, a consumer attached a
/// moment after the stream was declared elsewhere, `stream_not_found` in whatever error
/// carries it (when that error closed the connection too, the next attempt fails otherwise
/// and the caller reconnects, as before).
fn is_starting(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(e)
        if (e.get_id() == AMQPSoftError::PRECONDITIONFAILED.get_id() && e.get_message().as_str().contains("replica"))
            || e.get_message().as_str().contains("stream_not_found"))
}

/// Applies the stream to `inner` until the consumer ends, then marks the log as ended.
async fn read<F: Fold>(_channel: Channel, mut consumer: Consumer, inner: Arc<Mutex<Inner<F>>>, stream: String, ended: CancellationToken) {
    let mut unacked = 0;
    let why = loop {
        match consumer.next().await {
            Some(Ok(delivery)) => {
                match serde_json::from_slice::<Entry<F::Read<'_>>>(&delivery.data) {
                    Ok(entry) => apply(&mut lock(&inner), entry),
                    Err(_) => tracing::warn!(%stream, bytes = delivery.data.len(), "ignoring an unreadable entry"),
                }
                unacked += 1;
                if unacked >= STREAM_PREFETCH / 2 {
                    unacked = 0;
                    if let Err(error) = delivery.ack(BasicAckOptions { multiple: true }).await {
                        break format!("acknowledging failed: {error}");
                    }
                }
            }
            Some(Err(error)) => break error.to_string(),
            None => break "the broker cancelled the consumer".to_owned(),
        }
    };
    tracing::warn!(%stream, reason = %why, "stopped reading the stream");
    let mut inner = lock(&inner);
    inner.ended = Some(why);
    // Dropping the senders wakes every waiter with an error.
    inner.awaited.clear();
    ended.cancel();
}

fn apply<F: Fold>(inner: &mut Inner<F>, entry: Entry<F::Read<'_>>) {
    inner.applied += 1;
    if let Some(change) = entry.change {
        inner.fold.apply(change);
    }
    if let Some(sender) = inner.awaited.remove(&entry.id) {
        let _ = sender.send(());
    }
}

fn lock<F>(inner: &Mutex<Inner<F>>) -> MutexGuard<'_, Inner<F>> {
    inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A token cancelled as soon as one of `lost` is: the logs a process cannot work without
/// (tokens and ledger), watched as one.
pub fn any_lost(lost: Vec<CancellationToken>) -> CancellationToken {
    let any = CancellationToken::new();
    let cancel = any.clone();
    tokio::spawn(async move {
        let waits: Vec<_> = lost.iter().map(|token| Box::pin(token.cancelled())).collect();
        if !waits.is_empty() {
            futures_util::future::select_all(waits).await;
        }
        cancel.cancel();
    });
    any
}

/// 128 random bits in hex.
pub fn nonce() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Sum(i64);
    impl Fold for Sum {
        type Change = i64;
        type Read<'de> = i64;
        fn apply(&mut self, change: i64) {
            self.0 += change;
        }
    }

    #[test]
    fn entries_are_folded_in_order_and_wake_their_writer() {
        let mut inner = Inner { fold: Sum::default(), awaited: HashMap::new(), ended: None, applied: 0 };
        let (sender, mut receiver) = oneshot::channel();
        inner.awaited.insert("b".into(), sender);
        apply(&mut inner, serde_json::from_str(r#"{"id":"a","change":2}"#).unwrap());
        assert!(receiver.try_recv().is_err());
        apply(&mut inner, serde_json::from_str(r#"{"id":"b"}"#).unwrap());
        assert!(receiver.try_recv().is_ok());
        assert_eq!(inner.fold.0, 2);
        assert_eq!(serde_json::to_string(&Entry::<i64> { id: "m".into(), change: None }).unwrap(), r#"{"id":"m"}"#);
    }

    #[test]
    fn only_a_stream_still_starting_is_tried_again() {
        use lapin::protocol::{AMQPError, AMQPErrorKind};
        let refusal = |kind: AMQPSoftError, message: &str| -> lapin::Error {
            ErrorKind::ProtocolError(AMQPError::new(AMQPErrorKind::Soft(kind), message.into())).into()
        };
        let starting = "PRECONDITION_FAILED - stream queue 'els.ledger' in vhost 'v' does not have a replica on the local node";
        assert!(is_starting(&refusal(AMQPSoftError::PRECONDITIONFAILED, starting)));
        let other_arguments = "PRECONDITION_FAILED - inequivalent arg 'x-max-age' for queue 'els.ledger' in vhost 'v'";
        assert!(!is_starting(&refusal(AMQPSoftError::PRECONDITIONFAILED, other_arguments)), "a real misconfiguration fails at once");
        assert_eq!(other_argument(&refusal(AMQPSoftError::PRECONDITIONFAILED, other_arguments)), Some("x-max-age"));
        assert_eq!(other_argument(&refusal(AMQPSoftError::PRECONDITIONFAILED, starting)), None);
        let queue_type = "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'els.ledger' in vhost 'v'";
        assert_eq!(other_argument(&refusal(AMQPSoftError::PRECONDITIONFAILED, queue_type)), None, "not a stream: an error");
        assert!(!is_starting(&refusal(AMQPSoftError::ACCESSREFUSED, "ACCESS_REFUSED - no replica needed")));
        let not_found = "INTERNAL_ERROR - Cannot consume a message from queue 'els.tokens' in vhost 'v': stream_not_found";
        let crashed: lapin::Error =
            ErrorKind::ProtocolError(AMQPError::new(AMQPErrorKind::Hard(lapin::protocol::AMQPHardError::INTERNALERROR), not_found.into()))
                .into();
        assert!(is_starting(&crashed), "a stream a cluster has not started on this node yet");
        assert!(!is_starting(&refusal(AMQPSoftError::NOTFOUND, "NOT_FOUND - no queue 'els.tokens' in vhost 'v'")));
    }
}
