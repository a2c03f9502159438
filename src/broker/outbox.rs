//! Publishes waiting for their confirms, oldest first, at most a window of them: the one
//! place where `publish` (events from files) and `dlq replay` (copies of dead letters) wait
//! for the broker to take responsibility for what they sent. A publish counts only once
//! the broker confirmed it; what the caller does with a refusal or a lost connection (send
//! again, leave the dead letter where it is) stays with the caller.

use std::collections::VecDeque;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};

/// How the broker answered one publish.
#[derive(Debug)]
pub enum Confirmed {
    /// Taken: routed to a queue and persisted there.
    Taken,
    /// No queue is bound for its routing key (`mandatory`: returned).
    Unroutable,
    /// A negative confirm, or no confirm asked for: the broker did not take it.
    Refused,
    /// No answer: the channel or connection went away (or it was never published).
    Lost(lapin::Error),
}

impl Confirmed {
    /// The answer a confirm brought.
    pub fn of(answer: Result<Confirmation, lapin::Error>) -> Self {
        match answer {
            Ok(Confirmation::Ack(None)) => Confirmed::Taken,
            Ok(Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_))) => Confirmed::Unroutable,
            Ok(Confirmation::Nack(None) | Confirmation::NotRequested) => Confirmed::Refused,
            Err(error) => Confirmed::Lost(error),
        }
    }
}

/// Publishes `body` with `mandatory` set (an unroutable message comes back instead of
/// vanishing) on a confirm-mode channel; the confirm to wait for.
pub async fn publish_mandatory(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<PublisherConfirm, lapin::Error> {
    let options = BasicPublishOptions { mandatory: true, ..Default::default() };
    channel.basic_publish(exchange.into(), routing_key.into(), options, body, properties).await
}

/// One publish of the window: the caller's item and its confirm (`None` when it could not
/// be published, until it is published again).
struct Pending<T> {
    item: T,
    confirm: Option<PublisherConfirm>,
}

/// Publishes waiting for their confirms, in the order they were sent, at most `capacity`.
pub struct Outbox<T> {
    window: VecDeque<Pending<T>>,
    capacity: usize,
}

impl<T> Outbox<T> {
    /// An empty window of at most `capacity` publishes.
    pub fn new(capacity: usize) -> Self {
        Outbox { window: VecDeque::with_capacity(capacity), capacity: capacity.max(1) }
    }

    /// Publishes waiting.
    pub fn len(&self) -> usize {
        self.window.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.window.is_empty()
    }

    /// Whether the oldest must be settled before another is sent.
    pub fn is_full(&self) -> bool {
        self.window.len() >= self.capacity
    }

    /// Adds the newest: `confirm` is `None` when publishing it failed (it is sent again by
    /// [`Outbox::send_all_again`] after the connection is back).
    pub fn push(&mut self, item: T, confirm: Option<PublisherConfirm>) {
        self.window.push_back(Pending { item, confirm });
    }

    /// Puts an item taken by [`Outbox::settle_oldest`] back as the oldest, unpublished.
    pub fn put_back(&mut self, item: T) {
        self.window.push_front(Pending { item, confirm: None });
    }

    /// Waits for the oldest's confirm; the item and the broker's answer.
    pub async fn settle_oldest(&mut self) -> Option<(T, Confirmed)> {
        let Pending { item, confirm } = self.window.pop_front()?;
        let answer = match confirm {
            Some(confirm) => Confirmed::of(confirm.await),
            None => Confirmed::Lost(lapin::Error::from(std::io::Error::other("not published since the connection was lost"))),
        };
        Some((item, answer))
    }

    /// Publishes every item again, oldest first, on a new channel (the confirms of the old
    /// one will never come); the first failure stops it, and the items not sent again
    /// stay unpublished. The number sent again.
    pub async fn send_all_again(
        &mut self,
        mut send: impl AsyncFnMut(&T) -> Result<PublisherConfirm, lapin::Error>,
    ) -> Result<usize, lapin::Error> {
        for pending in &mut self.window {
            pending.confirm = None;
        }
        for pending in &mut self.window {
            pending.confirm = Some(send(&pending.item).await?);
        }
        Ok(self.window.len())
    }

    /// Takes every item out, unsettled (what was not confirmed, to report).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.window.drain(..).map(|pending| pending.item)
    }
}
