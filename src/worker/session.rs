//! One connection's worth of work: consume the work queue, validate each event at the edge,
//! batch valid records per lane, upload batches concurrently (a cap per institution), and
//! settle every delivery. Ends when the connection is lost (the caller reconnects; every
//! unsettled delivery is redelivered by the broker) or, after a shutdown request, when
//! everything taken is settled or the drain deadline has passed.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Acker, Channel, Connection, Consumer};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::acks::{Ack, AckWindow, Tag};
use super::lanes::{Batch, LaneKey, Lanes};
use super::pipeline::Pipeline;
use super::settle::{Settlement, send_ack};
use crate::broker::{self, BrokerError};
use crate::config::{AmqpSettings, Config};
use crate::event::{self, Institutions};
use crate::spec::field::Text;

/// How late a sleep may end: tokio's timers fire on a 1 ms tick after their deadline (on
/// the benchmark machine 0.5–1.9 ms late, 1.07 ms on average).
const TIMER_LATENESS: Duration = Duration::from_millis(2);
/// How long the broker may take to confirm the last acks of a session (on a loaded node,
/// after a drain of thousands of deliveries, seconds).
const ACK_BARRIER_TIMEOUT: Duration = Duration::from_secs(15);

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// Shutdown was requested and everything taken is settled.
    Drained,
    /// Shutdown was requested; the drain deadline passed with `unsettled` deliveries left
    /// (they stay unacked and are delivered again).
    DeadlinePassed { unsettled: usize },
}

/// What a session needs from its worker.
pub struct Session<'a> {
    /// The configuration.
    pub config: &'a Config,
    /// The broker settings (`[amqp]` or its defaults).
    pub amqp: &'a AmqpSettings,
    /// What happens to each batch.
    pub pipeline: Pipeline,
    /// Set when the session consumes, cleared when it stops.
    pub on_consuming: &'a (dyn Fn(bool) + Sync),
    /// Cancelled when the ledger or token stream is no longer read: nothing can be
    /// uploaded safely any more, so the session ends (and the worker reconnects).
    pub streams_lost: CancellationToken,
}

/// What a task reports back when its deliveries are settled.
struct Done {
    /// What became of its deliveries.
    settlement: Settlement,
    /// For a batch: its lane and keys, which may go into calls again.
    keys: Option<(LaneKey, Vec<Text>)>,
}

impl Session<'_> {
    /// Consumes until the connection is lost (an error) or `shutdown` is cancelled and the
    /// drain is over.
    /// The session's own channels stay open until the caller closes the connection; the
    /// consume channel is closed here once its last acks are confirmed.
    pub async fn run(&self, connection: &Connection, shutdown: &CancellationToken) -> Result<SessionEnd, BrokerError> {
        let prefetch = self.config.worker_prefetch();
        let channel = connection.create_channel().await?;
        channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let queue = self.amqp.queue.as_str();
        let mut consumer = channel.basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default()).await?;
        (self.on_consuming)(true);
        let max_event_bytes = self.config.worker.max_event_bytes;
        tracing::info!(queue, prefetch, max_event_bytes, "consuming");

        let mut flow = Flow::new(self, prefetch);
        let result = flow.consume(&channel, &mut consumer, shutdown).await;
        (self.on_consuming)(false);
        if result.is_err() {
            // The channel is gone: whatever is in flight can no longer be acked.
            flow.tasks.abort_all();
        } else {
            // One ack (multiple) for what has no unsettled delivery below it, each of the rest.
            send_acks(flow.acks.due(Instant::now())).await;
            send_acks(flow.acks.each()).await;
        }
        flush_acks(&channel, prefetch).await;
        // Closed before it is dropped: see `broker::close_channel`.
        broker::close_channel(&channel, "session over").await;
        crate::telemetry::metrics::session_ended();
        result
    }

    /// How long before a lane's linger ends its batch is started, so that the call goes
    /// out when the linger ends: the timer fires up to [`TIMER_LATENESS`] late, and the
    /// ledger claim comes before the call. At most a tenth of the linger.
    fn lead(&self) -> Duration {
        let linger = Duration::from_millis(self.config.batch.linger_ms);
        (TIMER_LATENESS + self.pipeline.ledger.claim_round_trip()).min(linger / 10)
    }
}

/// The state of one session's consuming: the lanes, the tasks in flight, the ack window,
/// and whether a drain has begun. Each step of the loop is one method.
struct Flow<'s, 'a> {
    session: &'s Session<'a>,
    codes: Vec<&'s str>,
    lanes: Lanes<Delivery>,
    tasks: JoinSet<Done>,
    /// Deliveries taken and not acked yet. At the prefetch the broker sends no more until
    /// some are acked, so a lane waiting for its linger would only waste time.
    acks: AckWindow<Acker>,
    drain_deadline: Option<Instant>,
    /// After the consumer is cancelled, deliveries the broker sent before the cancel still
    /// arrive; the consumer ends after them.
    consumer_open: bool,
}

impl<'s, 'a> Flow<'s, 'a> {
    fn new(session: &'s Session<'a>, prefetch: u16) -> Self {
        let config = session.config;
        Flow {
            session,
            codes: config.institutions.iter().map(|i| i.fixmedins_code.as_str()).collect(),
            lanes: Lanes::new(config.batch.max_records, Duration::from_millis(config.batch.linger_ms)),
            tasks: JoinSet::new(),
            acks: AckWindow::new(usize::from(prefetch)),
            drain_deadline: None,
            consumer_open: true,
        }
    }

    /// The loop: one event at a time (a delivery, a lane's linger ending, a task done, the
    /// shutdown request, the drain deadline, a stream lost) until the session ends.
    async fn consume(
        &mut self,
        channel: &Channel,
        consumer: &mut Consumer,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, BrokerError> {
        loop {
            if let Some(end) = self.unblock().await {
                return Ok(end);
            }
            let draining = self.drain_deadline.is_some();
            let lead = self.session.lead();
            let hold_ends = self.acks.hold_ends();
            tokio::select! {
                () = shutdown.cancelled(), if !draining => self.begin_drain(channel, consumer.tag()).await,
                () = self.session.streams_lost.cancelled() => return Err(BrokerError::StreamLost),
                () = tokio::time::sleep_until(self.drain_deadline.unwrap_or_else(Instant::now).into()), if draining => {
                    return Ok(SessionEnd::DeadlinePassed { unsettled: self.lanes.waiting() + self.tasks.len() });
                }
                delivery = consumer.next(), if self.consumer_open => match delivery {
                    Some(Ok(delivery)) => self.take(delivery),
                    Some(Err(error)) => return Err(error.into()),
                    None if draining => self.consumer_open = false,
                    None => return Err(BrokerError::ConsumerEnded),
                },
                () = tokio::time::sleep_until(self.next_flush(lead).into()) => {
                    for batch in self.lanes.due(Instant::now() + lead, false) {
                        self.dispatch(batch);
                    }
                }
                // The next turn's `unblock` acks what waited for the mark in vain.
                () = tokio::time::sleep_until(hold_ends.unwrap_or_else(Instant::now).into()), if hold_ends.is_some() => {}
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    // Tasks catch their own panics (settle_or_hand_back); only an abort ends
                    // one without a `Done`.
                    if let Ok(done) = done {
                        self.finished(done).await;
                    }
                }
            }
        }
    }

    /// What nothing else will move along: acks that no task in flight will bring or that
    /// a full window has waited for long enough, and batches that must not wait for their
    /// linger (all of them while draining, the fullest when the prefetch is full). Returns
    /// the end of a drain that is over.
    async fn unblock(&mut self) -> Option<SessionEnd> {
        let idle = self.tasks.is_empty();
        let full = self.acks.is_full();
        if self.acks.has_ready() && idle && (self.lanes.is_empty() || full) {
            // Nothing in flight will move the low-water mark (only deliveries left
            // unacked, or lanes waiting for their linger, hold it): ack what is settled.
            send_acks(self.acks.each()).await;
        } else if self.acks.has_ready() && full {
            // The broker sends nothing more: the settled wait a little for the mark.
            send_acks(self.acks.due(Instant::now())).await;
        }
        if self.drain_deadline.is_some() {
            for batch in self.lanes.due(Instant::now(), true) {
                self.dispatch(batch);
            }
            return (!self.consumer_open && self.lanes.is_empty() && self.tasks.is_empty()).then_some(SessionEnd::Drained);
        }
        if idle && self.acks.is_full() {
            // Nothing more comes until something is settled, and nothing in flight will
            // settle: rather than wait for the linger, send the fullest lane. (With batches
            // in flight, their settling brings more deliveries; waiting for those keeps
            // calls full.)
            if let Some(batch) = self.lanes.fullest() {
                self.dispatch(batch);
            }
        }
        None
    }

    /// When the next lane's linger ends, less the lead (an hour away when no lane waits).
    fn next_flush(&self, lead: Duration) -> Instant {
        self.lanes
            .next_deadline()
            .map_or_else(|| Instant::now() + Duration::from_secs(3600), |deadline| deadline.checked_sub(lead).unwrap_or(deadline))
    }

    /// The shutdown request: no new deliveries; what was taken is flushed and settled until
    /// the drain deadline.
    async fn begin_drain(&mut self, channel: &Channel, consumer_tag: ShortString) {
        tracing::info!(
            waiting = self.lanes.waiting(),
            in_flight = self.tasks.len(),
            "shutting down: no new deliveries; flushing and settling"
        );
        (self.session.on_consuming)(false);
        if let Err(error) = channel.basic_cancel(consumer_tag, BasicCancelOptions::default()).await {
            tracing::warn!("cancelling the consumer failed: {error}");
        }
        self.drain_deadline = Some(Instant::now() + Duration::from_secs(self.session.config.worker.drain_deadline_secs));
    }

    /// A delivery arrived: validated at the edge, it joins its lane (a full lane's batch
    /// goes at once) or, invalid, is dead-lettered.
    fn take(&mut self, delivery: Delivery) {
        crate::telemetry::metrics::delivery_taken();
        self.acks.taken(delivery.delivery_tag);
        let limit = self.session.config.worker.max_event_bytes;
        match event::parse_at_most(&delivery.data, limit, Institutions::Known(&self.codes)) {
            Ok(event) => {
                let lane = LaneKey { fixmedins_code: event.fixmedins_code, infno: event.record.infno() };
                if let Some(batch) = self.lanes.add(lane, event.record, event.version, delivery) {
                    self.dispatch(batch);
                }
            }
            Err(invalid) => {
                let settler = self.session.pipeline.settler.clone();
                let handed = vec![(delivery.delivery_tag, delivery.acker.clone())];
                self.tasks.spawn(async move {
                    let settlement = settle_or_hand_back(settler.invalid(&delivery, &invalid.to_string()), handed).await;
                    Done { settlement, keys: None }
                });
            }
        }
    }

    /// Takes a batch to the end in a task of its own (the uploader caps the platform calls
    /// in flight per institution).
    fn dispatch(&mut self, batch: Batch<Delivery>) {
        let Some(institution) = self.session.config.institution(&batch.lane.fixmedins_code).cloned() else { return };
        let pipeline = self.session.pipeline.clone();
        self.tasks.spawn(async move {
            let keys: Vec<Text> = batch.rows.iter().map(|r| Text::from(r.record.key())).collect();
            let handed = batch.rows.iter().flat_map(|r| r.source.deliveries.iter()).map(|d| (d.delivery_tag, d.acker.clone())).collect();
            let settlement = settle_or_hand_back(pipeline.run(&institution, batch.lane.infno, batch.rows), handed).await;
            Done { settlement, keys: Some((batch.lane, keys)) }
        });
    }

    /// A task is done: its deliveries join the ack window (acked together where they can
    /// be), and its keys may go into calls again.
    async fn finished(&mut self, done: Done) {
        for tag in done.settlement.acked {
            self.acks.acked(tag);
        }
        for (tag, acker) in done.settlement.to_ack {
            self.acks.ready(tag, acker);
        }
        send_acks(self.acks.due(Instant::now())).await;
        if let Some((lane, keys)) = done.keys {
            self.lanes.settled(&lane, keys);
        }
    }
}

/// Runs a task's settling; should it panic (a bug), hands its deliveries back to the broker
/// (requeued, delivered again) and reports them settled, so that neither their keys nor the
/// ack window wait for them for the rest of the session.
async fn settle_or_hand_back(settling: impl Future<Output = Settlement>, deliveries: Vec<(Tag, Acker)>) -> Settlement {
    settled_or_handed_back(settling, deliveries, async |deliveries: &[(Tag, Acker)]| {
        let requeue = BasicNackOptions { requeue: true, multiple: false };
        join_all(deliveries.iter().map(|(_, acker)| acker.nack(requeue))).await;
    })
    .await
}

/// [`settle_or_hand_back`] with the handing back given (`hand_back`), for any acker.
async fn settled_or_handed_back<A>(
    settling: impl Future<Output = Settlement>,
    deliveries: Vec<(Tag, A)>,
    hand_back: impl AsyncFnOnce(&[(Tag, A)]),
) -> Settlement {
    match AssertUnwindSafe(settling).catch_unwind().await {
        Ok(settlement) => settlement,
        Err(panic) => {
            let what = panic.downcast_ref::<&str>().map(|s| (*s).to_owned()).or_else(|| panic.downcast_ref::<String>().cloned());
            tracing::error!(
                deliveries = deliveries.len(),
                "bug: settling a batch panicked ({}); its deliveries are handed back to the broker and come again",
                what.as_deref().unwrap_or("no message")
            );
            hand_back(&deliveries).await;
            crate::telemetry::metrics::deliveries_settled(deliveries.len());
            Settlement { acked: deliveries.into_iter().map(|(tag, _)| tag).collect(), ..Settlement::default() }
        }
    }
}

/// Sends acks back to back.
async fn send_acks(acks: Vec<Ack<Acker>>) {
    join_all(acks.iter().map(|ack| send_ack(&ack.acker, BasicAckOptions { multiple: ack.multiple }, ack.deliveries))).await;
}

/// Waits until the broker has taken every ack sent on the consume channel: acks have no
/// answer, so a `basic.qos` round trip (answered in order after them) is the barrier that
/// keeps the connection's close from overtaking them. The channel itself closes with the
/// connection (closing it separately races lapin's own close of dropped channels). What is
/// not confirmed is said: those deliveries come again (to this worker or another).
async fn flush_acks(channel: &Channel, prefetch: u16) {
    if !channel.status().connected() {
        tracing::warn!("the consume channel closed before the last acks were confirmed; deliveries not acked come again");
        return;
    }
    let barrier = channel.basic_qos(prefetch, BasicQosOptions::default());
    match tokio::time::timeout(ACK_BARRIER_TIMEOUT, barrier).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!("could not confirm that the last acks reached the broker ({error}); deliveries not acked come again")
        }
        Err(_) => tracing::warn!(
            "the broker did not confirm the last acks within {} s; deliveries not acked come again",
            ACK_BARRIER_TIMEOUT.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn a_batch_whose_settling_panics_is_handed_back_and_reported_settled() {
        let handed = Mutex::new(Vec::new());
        let panicking = async { panic!("a bug") };
        let settlement = settled_or_handed_back(panicking, vec![(3, "a"), (7, "b")], async |deliveries: &[(Tag, &str)]| {
            handed.lock().unwrap().extend(deliveries.iter().map(|(_, acker)| *acker));
        })
        .await;
        assert_eq!(settlement.acked, [3, 7], "the ack window no longer waits for them");
        assert!(settlement.to_ack.is_empty());
        assert_eq!(*handed.lock().unwrap(), ["a", "b"], "each delivery is handed back to the broker once");

        let fine = async { Settlement { acked: vec![1], ..Settlement::default() } };
        let settlement = settled_or_handed_back(fine, vec![(1, "c")], async |_: &[(Tag, &str)]| panic!("not handed back")).await;
        assert_eq!(settlement.acked, [1]);
    }
}
