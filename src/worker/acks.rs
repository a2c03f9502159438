//! The session's acks, sent together where they can be. A `basic.ack` with `multiple` acks
//! every delivery of the channel up to the tag it names, so when the settled deliveries
//! run without a gap from the oldest one taken, one frame acks them all (fewer frames for
//! the worker to write and, above all, for the broker to handle).
//!
//! A delivery that is not settled is never covered: acks with `multiple` stop below the
//! oldest unsettled delivery (the low-water mark). Settled deliveries above it wait for it
//! to move, but only up to a limit, the prefetch's room beyond what the lanes need to fill
//! their calls: past it (and whenever the session asks, e.g. when it holds its whole
//! prefetch or is idle) they are acked one by one, so that waiting acks never starve the
//! lanes. A delivery left unacked on purpose (its copy could not be
//! published) stays unsettled until the channel closes, and no ack ever covers it.

use std::collections::{BTreeMap, BTreeSet};

/// A delivery's tag on its channel (from 1, increasing).
pub type Tag = u64;

/// One `basic.ack` to send.
#[derive(Debug, PartialEq, Eq)]
pub struct Ack<A> {
    /// The acker of the delivery the ack names.
    pub acker: A,
    /// Whether it also acks every delivery below it.
    pub multiple: bool,
    /// How many deliveries it settles.
    pub deliveries: usize,
}

/// The deliveries of one channel between being taken and being acked.
#[derive(Debug)]
pub struct AckWindow<A> {
    /// Taken and not settled yet.
    unsettled: BTreeSet<Tag>,
    /// Settled, to be acked, with their ackers.
    ready: BTreeMap<Tag, A>,
    /// How many ready deliveries may wait for the low-water mark.
    limit: usize,
}

impl<A> AckWindow<A> {
    /// A window in which at most `limit` settled deliveries wait to be acked together.
    pub fn new(limit: usize) -> Self {
        AckWindow { unsettled: BTreeSet::new(), ready: BTreeMap::new(), limit }
    }

    /// A delivery was taken.
    pub fn taken(&mut self, tag: Tag) {
        self.unsettled.insert(tag);
    }

    /// A delivery was acked elsewhere.
    pub fn acked(&mut self, tag: Tag) {
        self.unsettled.remove(&tag);
    }

    /// A delivery is settled and is to be acked (once: a tag not taken, or reported
    /// before, is ignored).
    pub fn ready(&mut self, tag: Tag, acker: A) {
        if self.unsettled.remove(&tag) {
            self.ready.insert(tag, acker);
        }
    }

    /// Deliveries taken and not acked yet: what the broker counts against the prefetch.
    pub fn outstanding(&self) -> usize {
        self.unsettled.len() + self.ready.len()
    }

    /// Whether settled deliveries are waiting to be acked.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The acks to send now: one (with `multiple` when it covers more than itself) for the
    /// ready deliveries below the oldest unsettled one, and each of the others on its own
    /// if more than the limit are waiting.
    pub fn due(&mut self) -> Vec<Ack<A>> {
        let above = match self.unsettled.first() {
            Some(low) => self.ready.split_off(low),
            None => BTreeMap::new(),
        };
        let mut below = std::mem::replace(&mut self.ready, above);
        let mut acks = Vec::new();
        let deliveries = below.len();
        if let Some((_, acker)) = below.pop_last() {
            acks.push(Ack { acker, multiple: deliveries > 1, deliveries });
        }
        if self.ready.len() > self.limit {
            acks.extend(self.each());
        }
        acks
    }

    /// Every ready delivery, each acked on its own.
    pub fn each(&mut self) -> Vec<Ack<A>> {
        std::mem::take(&mut self.ready).into_values().map(|acker| Ack { acker, multiple: false, deliveries: 1 }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window of tags 1..=n taken, acking with the tag itself as the acker.
    fn window(n: Tag, limit: usize) -> AckWindow<Tag> {
        let mut window = AckWindow::new(limit);
        for tag in 1..=n {
            window.taken(tag);
        }
        window
    }

    fn ack(tag: Tag, multiple: bool, deliveries: usize) -> Ack<Tag> {
        Ack { acker: tag, multiple, deliveries }
    }

    #[test]
    fn settled_deliveries_from_the_oldest_on_go_in_one_multiple_ack() {
        let mut window = window(10, 100);
        for tag in [3, 1, 2, 5] {
            window.ready(tag, tag);
        }
        assert_eq!(window.due(), vec![ack(3, true, 3)], "4 is unsettled: 5 waits");
        assert_eq!(window.outstanding(), 7);
        window.ready(4, 4);
        assert_eq!(window.due(), vec![ack(5, true, 2)]);
        assert_eq!(window.due(), vec![], "nothing is acked twice");
        assert_eq!(window.outstanding(), 5);
    }

    #[test]
    fn an_unsettled_delivery_is_never_covered() {
        let mut window = window(6, 100);
        window.acked(1);
        for tag in [2, 4, 5, 6] {
            window.ready(tag, tag);
        }
        assert_eq!(window.due(), vec![ack(2, false, 1)]);
        assert_eq!(window.each(), vec![ack(4, false, 1), ack(5, false, 1), ack(6, false, 1)], "3 stays unacked");
        assert_eq!(window.outstanding(), 1);
        window.ready(3, 3);
        assert_eq!(window.due(), vec![ack(3, false, 1)]);
        assert_eq!(window.outstanding(), 0);
    }

    #[test]
    fn past_the_limit_waiting_deliveries_are_acked_one_by_one() {
        let mut window = window(5, 2);
        for tag in [2, 3] {
            window.ready(tag, tag);
        }
        assert_eq!(window.due(), vec![], "two may wait for tag 1");
        window.ready(4, 4);
        assert_eq!(window.due(), vec![ack(2, false, 1), ack(3, false, 1), ack(4, false, 1)]);
    }

    #[test]
    fn a_tag_is_ready_only_once_and_only_if_taken() {
        let mut window = window(2, 100);
        window.ready(1, 1);
        window.ready(1, 1);
        window.ready(7, 7);
        assert_eq!(window.due(), vec![ack(1, false, 1)]);
        assert_eq!(window.outstanding(), 1);
    }
}
