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
//! | `els.token.<fixmedins_code>.refresh-lock` | classic queue, durable, `x-single-active-consumer`, `x-expires` 1 h | the refresh lock of one institution |
//!
//! The lock queue is durable: RabbitMQ 4 denies non-durable, non-exclusive queues once
//! `transient_nonexcl_queues` is denied (announced as the default of later releases). It is
//! deleted by the broker an hour after its last consumer left. Not a quorum queue: on
//! RabbitMQ 3.10 a consumer attaching to a quorum queue that another connection has just
//! declared can find its Raft member not started yet, and the broker then closes the whole
//! connection with INTERNAL_ERROR (seen with three replicas asking for their first token at
//! once); a lock queue is declared on demand, exactly when that race is likely.
//!
//! Releases before it used a non-durable classic queue `<prefix>.token.<code>.lock`; the
//! new name lets an upgraded fleet run on a broker that still holds those (redeclaring them
//! as durable would be refused). They expire an hour after the last old replica is gone. While old and new replicas run side by side
//! during a rolling upgrade, each kind holds its own lock, so one refresh of each kind may
//! overlap: the platform issues one token and answers the other with 9, which
//! [`Tokens`](crate::platform::Tokens) treats as "held elsewhere" (no burst of calls).
//!
//! # The token log
//!
//! The stream is a [replicated log](super::log): every change is one entry,
//! `{"id": nonce, "change": C}`, published with a publisher confirm, where `C` is
//!
//! * a new token: `{"institution": code, "token": value, "expires_at": RFC 3339}`;
//! * a discard: `{"institution": code, "discarded": value}`: forget the token if it is
//!   still the current one (the platform declared it invalid).
//!
//! Each store replays the stream from *now − 2 days* and folds it, in log order, into a map
//! institution → current token: a token replaces whatever came before it, a discard
//! removes the token only if it is the one named. The stream gives every replica the same
//! order, so all maps agree, and one consumer gives both the last value at start-up (the
//! history is replayed) and the instant broadcast of a new token to every running replica.
//! Replaying is cheap: measured here, 50 000 entries of history (far more than two days of
//! refreshes) took 1 s.
//!
//! [`TokenStore::replace`] and [`TokenStore::discard`] return only when the store's own
//! consumer has applied their entry (read your writes), and [`TokenStore::lock_refresh`]
//! syncs the log after acquiring the lock, so the holder sees the token that the previous
//! holder published before it let go, and [`Tokens`](crate::platform::Tokens) does not
//! fetch again. [`start`] returns with the history applied (a replica started later
//! answers [`TokenStore::current`] with the existing token at once). `current()` answers
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
//! 1. The requester declares `<prefix>.token.<code>.refresh-lock` (idempotent), consumes from it
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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::log::{Fold, LogSettings, StreamLog, nonce};
use super::{BrokerError, Publisher};
use crate::platform::token::{RefreshLock, StoreError, Token, TokenStore};

/// How far back a starting store replays the log; also the stream's `x-max-age`.
pub const HISTORY: Duration = Duration::from_secs(2 * 24 * 3600);
/// `x-max-age` of the stream, the same as [`HISTORY`].
pub const MAX_AGE: &str = "2D";
/// Unacknowledged lock messages per lock consumer (surplus probes are acknowledged).
const LOCK_PREFETCH: u16 = 100;
/// A lock queue without consumers is deleted by the broker after this long.
const LOCK_QUEUE_EXPIRES_MS: i64 = 3_600_000;
/// How long a released lock waits for deliveries that were in flight when it left.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The name of the token stream for `prefix`.
pub fn stream_name(prefix: &str) -> String {
    format!("{prefix}.tokens")
}

/// The name of the refresh-lock queue of `institution` for `prefix`.
pub fn lock_queue_name(prefix: &str, institution: &str) -> String {
    format!("{prefix}.token.{institution}.refresh-lock")
}

/// Tokens shared through a RabbitMQ stream, with a refresh lock per institution; see the
/// module documentation. Made by [`start`].
pub struct AmqpTokenStore {
    prefix: String,
    log: StreamLog<CurrentTokens>,
    /// Confirm-mode channel for the lock probes.
    publisher: Publisher,
    /// The channel of the lock consumers.
    lock_channel: Channel,
    local_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for AmqpTokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpTokenStore").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// Institution → current token, folded from the log.
#[derive(Default)]
struct CurrentTokens(HashMap<String, Token>);

/// One change of the log. No `Debug`: it holds token values.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Change {
    Token { institution: String, token: String, expires_at: DateTime<Utc> },
    Discard { institution: String, discarded: String },
}

impl Fold for CurrentTokens {
    type Change = Change;
    type Read<'de> = Change;

    fn apply(&mut self, change: Change) {
        match change {
            Change::Token { institution, token, expires_at } => {
                self.0.insert(institution, Token { value: token, expires_at });
            }
            Change::Discard { institution, discarded } => {
                if self.0.get(&institution).is_some_and(|current| current.value == discarded) {
                    self.0.remove(&institution);
                }
            }
        }
    }
}

fn store_error(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::caused("the token stream", error)
}

/// Starts a store on `connection`: declares the stream `<prefix>.tokens`, replays it from
/// two days back, and returns once that history is applied (so [`TokenStore::current`]
/// answers with the existing tokens at once). The store lives as long as the returned
/// value (and its connection).
pub async fn start(connection: &Connection, prefix: &str) -> Result<Arc<AmqpTokenStore>, BrokerError> {
    let from = Utc::now() - chrono::Duration::from_std(HISTORY).unwrap_or_else(|_| chrono::Duration::days(2));
    let settings = LogSettings { name: stream_name(prefix), max_age: MAX_AGE.into(), replay_from: from };
    let log = StreamLog::open(connection, &settings, CurrentTokens::default()).await?;
    let publisher = Publisher::open(connection).await?;
    let lock_channel = connection.create_channel().await?;
    lock_channel.basic_qos(LOCK_PREFETCH, BasicQosOptions::default()).await?;
    let store = AmqpTokenStore { prefix: prefix.to_owned(), log, publisher, lock_channel, local_locks: Mutex::new(HashMap::new()) };
    tracing::debug!(stream = %settings.name, institutions = store.log.read(|t| t.0.len()).unwrap_or(0), "token store ready");
    Ok(Arc::new(store))
}

impl AmqpTokenStore {
    /// `Ok` while the store works: its stream is read and its channels are open. Once it
    /// fails it stays failed (the owner reconnects and starts a new store); every operation
    /// checks it first.
    pub fn check(&self) -> Result<(), StoreError> {
        self.log.check().map_err(store_error)?;
        if !self.lock_channel.status().connected() {
            return Err(StoreError::new(format!(
                "a channel of the token store ({}) was closed; the connection must be reopened",
                stream_name(&self.prefix)
            )));
        }
        Ok(())
    }

    /// Cancelled once the token stream is no longer read (see [`StreamLog::lost`]).
    pub fn lost(&self) -> tokio_util::sync::CancellationToken {
        self.log.lost()
    }

    fn local_lock(&self, institution: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.local_locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(locks.entry(institution.to_owned()).or_default())
    }

    /// Takes the baton of the institution's lock queue; see the module documentation.
    async fn acquire(&self, institution: &str) -> Result<oneshot::Sender<()>, StoreError> {
        let queue = lock_queue_name(&self.prefix, institution);
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), AMQPValue::LongString("classic".into()));
        arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(LOCK_QUEUE_EXPIRES_MS));
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        self.lock_channel.queue_declare(queue.as_str().into(), durable, arguments).await.map_err(store_error)?;
        let tag = format!("els-bridge-lock-{}", nonce());
        let consumer = self
            .lock_channel
            .basic_consume(queue.as_str().into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .map_err(store_error)?;
        let (acquired, on_acquired) = oneshot::channel();
        let (release, on_release) = oneshot::channel();
        tokio::spawn(hold(self.lock_channel.clone(), consumer, acquired, on_release));
        // From here on, returning early drops `release`, which makes `hold` leave cleanly.
        let probe = BasicProperties::default().with_delivery_mode(1);
        self.publisher.publish("", &queue, b"", probe).await.map_err(store_error)?;
        match on_acquired.await {
            Ok(()) => Ok(release),
            Err(_) => Err(StoreError::new(format!("the consumer of the lock queue {queue} ended (connection or channel lost)"))),
        }
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
        self.log.read(|tokens| tokens.0.get(institution).filter(|token| token.expires_at > Utc::now()).cloned()).map_err(store_error)
    }

    async fn replace(&self, institution: &str, token: &Token) -> Result<(), StoreError> {
        let change = Change::Token { institution: institution.to_owned(), token: token.value.clone(), expires_at: token.expires_at };
        self.log.append(change).await.map_err(store_error)
    }

    async fn discard(&self, institution: &str, token: &Token) -> Result<(), StoreError> {
        let change = Change::Discard { institution: institution.to_owned(), discarded: token.value.clone() };
        self.log.append(change).await.map_err(store_error)
    }

    async fn lock_refresh(&self, institution: &str) -> Result<Box<dyn RefreshLock>, StoreError> {
        let local = self.local_lock(institution).lock_owned().await;
        self.check()?;
        let release = self.acquire(institution).await?;
        let guard = AmqpRefreshLock { _release: release, _local: local };
        tracing::debug!(%institution, "holding the token refresh lock");
        // Everything published before this point (the previous holder's token) is applied.
        self.log.sync().await.map_err(store_error)?;
        Ok(Box::new(guard))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_after(changes: &[&str]) -> CurrentTokens {
        let mut tokens = CurrentTokens::default();
        for change in changes {
            tokens.apply(serde_json::from_str(change).unwrap());
        }
        tokens
    }

    #[test]
    fn later_tokens_win_and_only_the_current_one_is_discarded() {
        let t1 = r#"{"institution":"H1","token":"one","expires_at":"2030-01-01T00:00:00Z"}"#;
        let t2 = r#"{"institution":"H1","token":"two","expires_at":"2030-01-01T00:30:00Z"}"#;
        let other = r#"{"institution":"H2","token":"three","expires_at":"2030-01-01T00:00:00Z"}"#;
        let discard1 = r#"{"institution":"H1","discarded":"one"}"#;
        let discard2 = r#"{"institution":"H1","discarded":"two"}"#;
        let state = state_after(&[t1, other, t2, discard1]);
        assert_eq!(state.0["H1"].value, "two");
        assert_eq!(state.0["H2"].value, "three");
        let state = state_after(&[t1, t2, discard2]);
        assert!(!state.0.contains_key("H1"));
    }

    #[test]
    fn messages_have_the_documented_shape() {
        let expires_at = DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        let change = Change::Token { institution: "H1".into(), token: "v".into(), expires_at };
        assert_eq!(
            serde_json::to_value(&change).unwrap(),
            serde_json::json!({"institution": "H1", "token": "v", "expires_at": "2030-01-01T00:00:00Z"})
        );
        assert_eq!(lock_queue_name("els", "H1"), "els.token.H1.refresh-lock");
        assert_eq!(stream_name("els"), "els.tokens");
    }
}
