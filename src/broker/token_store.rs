//! The fleet-wide [`TokenStore`] on RabbitMQ: every worker replica (and every `send` run
//! that has a broker) shares one access token per institution, the token survives restarts
//! of every replica, and at most one process fetches a new one at a time.
//!
//! The platform refuses a new token while the current one has more than 5 minutes left
//! (returnCode 9) and a new token invalidates the old one, so a replica must never fetch a
//! token of its own. [`Tokens`](crate::platform::Tokens) decides *when* to refresh; this
//! store provides the shared state and the refresh lock.
//!
//! # Names (with the default prefix `els`)
//!
//! | name | kind | purpose |
//! |---|---|---|
//! | `els.tokens` | stream (durable, `x-max-age` 2 days, 1 MB segments) | the log of every token change |
//! | `els.token.<fixmedins_code>.lock` | classic queue, non-durable, `x-single-active-consumer`, `x-expires` 1 h | the refresh lock of one institution |
//!
//! # The token log
//!
//! Every change is one JSON message on the stream, published with a publisher confirm:
//!
//! * a new token: `{"institution": code, "token": value, "expires_at": RFC 3339, "id": nonce}`;
//! * a discard: `{"institution": code, "discarded": value, "id": nonce}`: forget the token
//!   if it is still the current one (the platform declared it invalid);
//! * a marker: `{"sync": nonce}` (see below).
//!
//! Each store consumes the stream from *now − 2 days* (`x-stream-offset` as a timestamp;
//! prefetch 100, acknowledged in batches of 50, which for a stream only gives credit) and
//! applies the messages in log order to an in-memory map institution → current token: a
//! token replaces whatever came before it, a discard removes the token only if it is the one
//! named. The stream gives every replica the same order, so all maps agree, and one consumer
//! gives both the last value at start-up (the history is replayed) and the instant broadcast
//! of a new token to every running replica. Replaying is cheap: measured here, 50 000
//! messages of history (far more than two days of refreshes and markers) took 1 s.
//!
//! **Read your writes.** [`TokenStore::replace`] and [`TokenStore::discard`] return only
//! when the store's own consumer has applied their message (found by its `id`), rather than
//! patching the map locally: a local patch could be overwritten for a moment by an older
//! message still in flight, and waiting puts the change in its place in the log.
//!
//! **Sync.** To know that the map holds everything published so far, a store publishes a
//! marker with a random nonce and waits until its consumer has seen it: the stream is one
//! ordered log, so every message confirmed before the marker has been applied by then.
//! [`start`] syncs before returning (a replica started later answers [`TokenStore::current`]
//! with the existing token at once), and [`TokenStore::lock_refresh`] syncs after acquiring
//! the lock, so the holder sees the token that the previous holder published before it let
//! go, and [`Tokens`](crate::platform::Tokens) does not fetch again. `current()` answers
//! from the map without a round trip; between syncs it lags the log by the delivery time
//! (milliseconds), which the refresh rule tolerates because it re-reads under the lock.
//!
//! # The refresh lock
//!
//! The obvious lock, an exclusive queue declared per attempt and polled while another
//! connection holds it, does not fit: a declare refused with RESOURCE_LOCKED (405) closes
//! its channel, and [`start`] only borrows the connection, so the store cannot open fresh
//! channels later; and an exclusive queue is owned by the *connection*, so two tasks of the
//! same replica would both "hold" it. Instead the lock is a baton passed through a queue
//! with a **single active consumer**:
//!
//! 1. The requester declares `<prefix>.token.<code>.lock` (idempotent), consumes from it
//!    (manual ack) and publishes an empty probe message into it (confirmed).
//! 2. RabbitMQ delivers only to the one active consumer. So the first delivery a consumer
//!    gets proves that it is the active one: the lock is acquired. It keeps that delivery
//!    unacknowledged (the baton) and acknowledges any further one (surplus probes of
//!    waiters), so the queue holds about one message.
//! 3. Releasing (dropping the guard) cancels the consumer, then requeues the baton: the
//!    broker makes the next consumer active and delivers the baton to it. No polling; the
//!    hand-over takes a few milliseconds.
//! 4. If the holder's connection dies, the broker requeues the unacknowledged baton and
//!    activates the next consumer: a crashed replica never blocks the fleet (after the
//!    broker notices the dead connection: at once on a closed socket, within the heartbeat
//!    timeout on a silent network failure).
//!
//! Within one store, a local mutex per institution lets one task at a time take part, so
//! the broker sees at most one consumer per replica and institution. The lock works on one
//! channel of the store's connection; a waiter whose future is dropped leaves cleanly (its
//! consumer is cancelled and anything it received is requeued).
//!
//! # Failures
//!
//! If the connection (or a channel of the store) dies, the stream consumer ends: from then
//! on [`TokenStore::current`], `replace`, `discard` and `lock_refresh` return a
//! [`StoreError`] at once instead of hanging, a waiting `lock_refresh` fails, and
//! [`AmqpTokenStore::check`] says so (for a readiness probe). The store does not reconnect;
//! its owner opens a new connection and calls [`start`] again (the history is replayed,
//! nothing is lost: the log is on the broker).
//!
//! # Remaining races (what the lock cannot prevent)
//!
//! * A holder that got a new token from the platform but died (or lost its connection)
//!   before the broker confirmed its publish: the token is lost, the old one is already
//!   invalid, and the platform answers 9 to everyone until the lost token is within 5 minutes
//!   of expiry ([`TokenError::HeldElsewhere`](crate::platform::token::TokenError)); with
//!   30-minute tokens, up to about 25 minutes without uploads. Nothing on our side can
//!   recover a token that only the dead process saw.
//! * A holder whose connection the broker declared dead while its ELS7001 call was still
//!   under way (a network partition longer than the heartbeat timeout): the next replica
//!   takes the lock and may call ELS7001 as well. The platform issues only one of the two
//!   (the other gets 9), and the first holder's publish fails on its dead connection, so at
//!   worst this ends like the case above; there is never a burst of fetches.
//! * The log is per vhost and prefix, not per platform URL: use one vhost (or prefix) per
//!   platform.
//!
//! # Secrets
//!
//! The token value is in the stream (anyone who may read the vhost can read it: give only
//! the bridge's user access) and in memory as [`Token`], whose `Debug` is redacted. It is
//! never logged and never part of an error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::BrokerError;
use crate::platform::token::{RefreshLock, StoreError, Token, TokenStore};

/// How far back a starting store replays the log; also the stream's `x-max-age`.
pub const HISTORY: Duration = Duration::from_secs(2 * 24 * 3600);
/// `x-max-age` of the stream, the same as [`HISTORY`].
const MAX_AGE: &str = "2D";
/// Segment size of the stream: retention drops whole segments, so keep them small.
const SEGMENT_BYTES: i64 = 1_000_000;
/// Unacknowledged stream messages a store's consumer may hold.
const STREAM_PREFETCH: u16 = 100;
/// Unacknowledged lock messages per lock consumer (surplus probes are acknowledged).
const LOCK_PREFETCH: u16 = 100;
/// A lock queue without consumers is deleted by the broker after this long.
const LOCK_QUEUE_EXPIRES_MS: i64 = 3_600_000;
/// How long a publish may take to come back through the store's own consumer.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a released lock waits for deliveries that were in flight when it left.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The name of the token stream for `prefix`.
pub fn stream_name(prefix: &str) -> String {
    format!("{prefix}.tokens")
}

/// The name of the refresh-lock queue of `institution` for `prefix`.
pub fn lock_queue_name(prefix: &str, institution: &str) -> String {
    format!("{prefix}.token.{institution}.lock")
}

/// Tokens shared through a RabbitMQ stream, with a refresh lock per institution; see the
/// module documentation. Made by [`start`].
pub struct AmqpTokenStore {
    prefix: String,
    stream: String,
    /// Confirm-mode channel for the stream and the lock probes.
    publisher: Channel,
    /// The channel of the lock consumers.
    lock_channel: Channel,
    state: Arc<Mutex<State>>,
    local_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    reader: JoinHandle<()>,
}

impl std::fmt::Debug for AmqpTokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpTokenStore").field("stream", &self.stream).finish_non_exhaustive()
    }
}

/// What the stream consumer has built so far.
#[derive(Default)]
struct State {
    /// Institution → current token, in log order.
    tokens: HashMap<String, Token>,
    /// Messages this store published and waits to see applied, by id.
    awaited: HashMap<String, oneshot::Sender<()>>,
    /// Why the consumer ended; the store is unusable from then on.
    ended: Option<String>,
}

/// One message of the log. No `Debug`: it holds token values.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Change {
    Token {
        institution: String,
        token: String,
        expires_at: DateTime<Utc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    Discard {
        institution: String,
        discarded: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    Sync {
        sync: String,
    },
}

/// Why waiting for the log failed (before it becomes a [`StoreError`] or [`BrokerError`]).
enum Failure {
    Broker(BrokerError),
    Ended(String),
    TimedOut,
}

impl Failure {
    fn describe(&self, stream: &str) -> String {
        match self {
            Failure::Broker(e) => e.to_string(),
            Failure::Ended(why) => format!("the token stream {stream} is no longer consumed ({why}); the connection must be reopened"),
            Failure::TimedOut => {
                format!("a message published to the token stream {stream} did not come back within {}s", SYNC_TIMEOUT.as_secs())
            }
        }
    }
}

impl From<BrokerError> for Failure {
    fn from(error: BrokerError) -> Self {
        Failure::Broker(error)
    }
}

impl From<lapin::Error> for Failure {
    fn from(error: lapin::Error) -> Self {
        Failure::Broker(error.into())
    }
}

/// Starts a store on `connection`: declares the stream `<prefix>.tokens`, starts consuming
/// it from two days back, and returns once that history is applied (so [`TokenStore::current`]
/// answers with the existing tokens at once). The store uses three channels of the
/// connection and lives as long as the returned value (and its connection).
pub async fn start(connection: &Connection, prefix: &str) -> Result<Arc<AmqpTokenStore>, BrokerError> {
    let stream = stream_name(prefix);
    let reader_channel = connection.create_channel().await?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
    arguments.insert("x-max-age".into(), AMQPValue::LongString(MAX_AGE.into()));
    arguments.insert("x-stream-max-segment-size-bytes".into(), AMQPValue::LongLongInt(SEGMENT_BYTES));
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    reader_channel.queue_declare(stream.as_str().into(), durable, arguments).await?;
    reader_channel.basic_qos(STREAM_PREFETCH, BasicQosOptions::default()).await?;

    let from = Utc::now() - chrono::Duration::from_std(HISTORY).unwrap_or_else(|_| chrono::Duration::days(2));
    let mut offset = FieldTable::default();
    offset.insert("x-stream-offset".into(), AMQPValue::Timestamp(from.timestamp().max(0) as u64));
    let tag = format!("els-bridge-tokens-{}", nonce());
    let consumer =
        reader_channel.basic_consume(stream.as_str().into(), tag.into(), BasicConsumeOptions::default(), offset).await?;
    let state = Arc::new(Mutex::new(State::default()));
    let reader = tokio::spawn(read_log(reader_channel, consumer, Arc::clone(&state)));

    let publisher = connection.create_channel().await?;
    publisher.confirm_select(ConfirmSelectOptions::default()).await?;
    let lock_channel = connection.create_channel().await?;
    lock_channel.basic_qos(LOCK_PREFETCH, BasicQosOptions::default()).await?;

    let store = Arc::new(AmqpTokenStore {
        prefix: prefix.to_owned(),
        stream,
        publisher,
        lock_channel,
        state,
        local_locks: Mutex::new(HashMap::new()),
        reader,
    });
    if let Err(failure) = store.sync().await {
        return Err(match failure {
            Failure::Broker(error) => error,
            other => BrokerError::Amqp(std::io::Error::other(other.describe(&store.stream)).into()),
        });
    }
    tracing::debug!(stream = %store.stream, institutions = store.lock_state().tokens.len(), "token store ready");
    Ok(store)
}

/// Applies the log to `state` until the consumer ends, then marks the store as ended.
async fn read_log(_channel: Channel, mut consumer: Consumer, state: Arc<Mutex<State>>) {
    let mut unacked = 0;
    let why = loop {
        match consumer.next().await {
            Some(Ok(delivery)) => {
                match serde_json::from_slice::<Change>(&delivery.data) {
                    Ok(change) => apply(&mut lock(&state), change),
                    // The message itself is not shown: it may hold a token.
                    Err(_) => tracing::warn!(bytes = delivery.data.len(), "ignoring an unreadable message in the token stream"),
                }
                // Acknowledging only gives the stream credit: batch it, well within the prefetch.
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
    tracing::warn!(reason = %why, "the token store stopped reading the token stream");
    let mut state = lock(&state);
    state.ended = Some(why);
    // Dropping the senders wakes every waiter with an error.
    state.awaited.clear();
}

fn apply(state: &mut State, change: Change) {
    let id = match change {
        Change::Token { institution, token, expires_at, id } => {
            state.tokens.insert(institution, Token { value: token, expires_at });
            id
        }
        Change::Discard { institution, discarded, id } => {
            if state.tokens.get(&institution).is_some_and(|current| current.value == discarded) {
                state.tokens.remove(&institution);
            }
            id
        }
        Change::Sync { sync } => Some(sync),
    };
    if let Some(sender) = id.and_then(|id| state.awaited.remove(&id)) {
        let _ = sender.send(());
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// 128 random bits in hex.
fn nonce() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl AmqpTokenStore {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// `Ok` while the store works: its stream consumer runs and its channels are open.
    /// Once it fails it stays failed (the owner reconnects and starts a new store), so a
    /// worker may use this for its readiness.
    pub fn check(&self) -> Result<(), StoreError> {
        if let Some(why) = &self.lock_state().ended {
            return Err(StoreError(Failure::Ended(why.clone()).describe(&self.stream)));
        }
        if !self.publisher.status().connected() || !self.lock_channel.status().connected() {
            return Err(StoreError(format!(
                "a channel of the token store ({}) was closed; the connection must be reopened",
                self.stream
            )));
        }
        Ok(())
    }

    fn store_error(&self, failure: Failure) -> StoreError {
        StoreError(failure.describe(&self.stream))
    }

    /// Returns once every message published to the log before this call is applied.
    async fn sync(&self) -> Result<(), Failure> {
        let id = nonce();
        let body = serde_json::to_vec(&Change::Sync { sync: id.clone() }).expect("a marker is JSON");
        self.publish_and_wait(id, &body).await
    }

    /// Publishes `body` (whose id is `id`) to the log and waits until it is applied here.
    async fn publish_and_wait(&self, id: String, body: &[u8]) -> Result<(), Failure> {
        let seen = {
            let mut state = self.lock_state();
            if let Some(why) = &state.ended {
                return Err(Failure::Ended(why.clone()));
            }
            let (sender, receiver) = oneshot::channel();
            state.awaited.insert(id.clone(), sender);
            receiver
        };
        let outcome = async {
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_message_id(id.as_str().into());
            self.publish(&self.stream, body, properties).await?;
            match tokio::time::timeout(SYNC_TIMEOUT, seen).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(Failure::Ended(self.lock_state().ended.clone().unwrap_or_else(|| "unknown".into()))),
                Err(_) => Err(Failure::TimedOut),
            }
        }
        .await;
        if outcome.is_err() {
            self.lock_state().awaited.remove(&id);
        }
        outcome
    }

    /// Publishes to the default exchange with `routing_key` and waits for the confirm.
    async fn publish(&self, routing_key: &str, body: &[u8], properties: BasicProperties) -> Result<(), BrokerError> {
        let options = BasicPublishOptions { mandatory: true, ..Default::default() };
        let confirmation = self
            .publisher
            .basic_publish(ShortString::from(""), routing_key.into(), options, body, properties)
            .await?
            .await?;
        if !confirmation.is_ack() || confirmation.take_message().is_some() {
            return Err(BrokerError::Nacked);
        }
        Ok(())
    }

    fn local_lock(&self, institution: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.local_locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(locks.entry(institution.to_owned()).or_default())
    }

    /// Takes the baton of the institution's lock queue; see the module documentation.
    async fn acquire(&self, institution: &str) -> Result<oneshot::Sender<()>, Failure> {
        let queue = lock_queue_name(&self.prefix, institution);
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), AMQPValue::LongString("classic".into()));
        arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(LOCK_QUEUE_EXPIRES_MS));
        self.lock_channel.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), arguments).await?;
        let tag = format!("els-bridge-lock-{}", nonce());
        let consumer = self
            .lock_channel
            .basic_consume(queue.as_str().into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        let (acquired, on_acquired) = oneshot::channel();
        let (release, on_release) = oneshot::channel();
        tokio::spawn(hold(self.lock_channel.clone(), consumer, acquired, on_release));
        // From here on, returning early drops `release`, which makes `hold` leave cleanly.
        let probe = BasicProperties::default().with_delivery_mode(1);
        self.publish(&queue, b"", probe).await?;
        match on_acquired.await {
            Ok(()) => Ok(release),
            Err(_) => Err(Failure::Ended(format!("the consumer of the lock queue {queue} ended (connection or channel lost)"))),
        }
    }
}

impl Drop for AmqpTokenStore {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Holds a lock consumer: the first delivery is the baton (the lock is acquired), later ones
/// are surplus probes and acknowledged. When `release` fires (or its sender is dropped),
/// leaves the queue and gives the baton back for the next waiter.
async fn hold(channel: Channel, mut consumer: Consumer, acquired: oneshot::Sender<()>, mut release: oneshot::Receiver<()>) {
    let mut acquired = Some(acquired);
    let mut baton: Option<Delivery> = None;
    loop {
        tokio::select! {
            biased;
            _ = &mut release => break,
            next = consumer.next() => match next {
                Some(Ok(delivery)) if baton.is_none() => {
                    baton = Some(delivery);
                    if let Some(acquired) = acquired.take() {
                        // If the requester is gone, `release` fires next.
                        let _ = acquired.send(());
                    }
                }
                Some(Ok(surplus)) => {
                    let _ = surplus.ack(BasicAckOptions::default()).await;
                }
                // The channel or connection is gone: the broker has requeued the baton.
                Some(Err(_)) | None => return,
            },
        }
    }
    // Leave first, so that the baton goes to the next consumer and not back to this one.
    if channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await.is_err() {
        return;
    }
    let requeue = BasicNackOptions { requeue: true, multiple: false };
    if let Some(baton) = baton {
        let _ = baton.nack(requeue).await;
    }
    // Deliveries already on the way when the cancel took effect belong to the others.
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout(DRAIN_TIMEOUT, consumer.next()).await {
        let _ = delivery.nack(requeue).await;
    }
}

/// The held refresh lock; dropping it releases the lock at once (the hand-over to the
/// next waiter runs in the background).
struct AmqpRefreshLock {
    _release: oneshot::Sender<()>,
    _local: tokio::sync::OwnedMutexGuard<()>,
}

impl RefreshLock for AmqpRefreshLock {}

#[async_trait]
impl TokenStore for AmqpTokenStore {
    async fn current(&self, institution: &str) -> Result<Option<Token>, StoreError> {
        self.check()?;
        let state = self.lock_state();
        Ok(state.tokens.get(institution).filter(|token| token.expires_at > Utc::now()).cloned())
    }

    async fn replace(&self, institution: &str, token: &Token) -> Result<(), StoreError> {
        let id = nonce();
        let change = Change::Token {
            institution: institution.to_owned(),
            token: token.value.clone(),
            expires_at: token.expires_at,
            id: Some(id.clone()),
        };
        let body = serde_json::to_vec(&change).expect("a token change is JSON");
        self.publish_and_wait(id, &body).await.map_err(|failure| self.store_error(failure))
    }

    async fn discard(&self, institution: &str, token: &Token) -> Result<(), StoreError> {
        let id = nonce();
        let change =
            Change::Discard { institution: institution.to_owned(), discarded: token.value.clone(), id: Some(id.clone()) };
        let body = serde_json::to_vec(&change).expect("a discard is JSON");
        self.publish_and_wait(id, &body).await.map_err(|failure| self.store_error(failure))
    }

    async fn lock_refresh(&self, institution: &str) -> Result<Box<dyn RefreshLock>, StoreError> {
        let local = self.local_lock(institution).lock_owned().await;
        self.check()?;
        let release = self.acquire(institution).await.map_err(|failure| self.store_error(failure))?;
        let guard = AmqpRefreshLock { _release: release, _local: local };
        tracing::debug!(%institution, "holding the token refresh lock");
        // Everything published before this point (the previous holder's token) is applied.
        self.sync().await.map_err(|failure| self.store_error(failure))?;
        Ok(Box::new(guard))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_after(changes: &[&str]) -> State {
        let mut state = State::default();
        for change in changes {
            apply(&mut state, serde_json::from_str(change).unwrap());
        }
        state
    }

    #[test]
    fn later_tokens_win_and_only_the_current_one_is_discarded() {
        let t1 = r#"{"institution":"H1","token":"one","expires_at":"2030-01-01T00:00:00Z"}"#;
        let t2 = r#"{"institution":"H1","token":"two","expires_at":"2030-01-01T00:30:00Z","id":"x"}"#;
        let other = r#"{"institution":"H2","token":"three","expires_at":"2030-01-01T00:00:00Z"}"#;
        let discard1 = r#"{"institution":"H1","discarded":"one"}"#;
        let discard2 = r#"{"institution":"H1","discarded":"two","id":"y"}"#;
        let state = state_after(&[t1, other, t2, discard1]);
        assert_eq!(state.tokens["H1"].value, "two");
        assert_eq!(state.tokens["H2"].value, "three");
        let state = state_after(&[t1, t2, discard2]);
        assert!(!state.tokens.contains_key("H1"));
        let state = state_after(&[t1, r#"{"sync":"abc"}"#]);
        assert_eq!(state.tokens["H1"].value, "one");
    }

    #[test]
    fn applying_wakes_the_publisher_waiting_for_its_id() {
        let mut state = State::default();
        let (sender, mut receiver) = oneshot::channel();
        state.awaited.insert("n1".into(), sender);
        apply(&mut state, serde_json::from_str(r#"{"sync":"n0"}"#).unwrap());
        assert!(receiver.try_recv().is_err());
        apply(&mut state, serde_json::from_str(r#"{"institution":"H1","discarded":"x","id":"n1"}"#).unwrap());
        assert!(receiver.try_recv().is_ok());
        assert!(state.awaited.is_empty());
    }

    #[test]
    fn messages_have_the_documented_shape() {
        let expires_at = DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        let change = Change::Token { institution: "H1".into(), token: "v".into(), expires_at, id: None };
        assert_eq!(
            serde_json::to_value(&change).unwrap(),
            serde_json::json!({"institution": "H1", "token": "v", "expires_at": "2030-01-01T00:00:00Z"})
        );
        assert_eq!(lock_queue_name("els", "H1"), "els.token.H1.lock");
        assert_eq!(stream_name("els"), "els.tokens");
    }
}
