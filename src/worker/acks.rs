//! The session's acks, sent together where they can be. A `basic.ack` with `multiple` acks
//! every delivery of the channel up to the tag it names, so when the settled deliveries
//! run without a gap from the oldest one taken, one frame acks them all (fewer frames for
//! the worker to write and, above all, for the broker to handle).
//!
//! A delivery that is not settled is never covered: acks with `multiple` stop below the
//! oldest unsettled delivery (the low-water mark). Settled deliveries above it wait for it
//! to move while the window has room: the broker keeps sending, so nobody waits for them.
//! Once the window is full (the prefetch reached: the broker sends nothing more until
//! something is acked) they wait at most [`FULL_WINDOW_HOLD`] for the mark to move; then
//! they are acked one by one, and so is every one after them for as long as the mark stays
//! where it is (a batch stuck at the platform, or a lane waiting for its linger, does not
//! hold the other lanes up again). The session also acks them one by one whenever nothing
//! in flight would move the mark. A delivery left unacked on purpose (its copy could not be
//! published) stays unsettled until the channel closes, and no ack ever covers it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A delivery's tag on its channel (from 1, increasing).
pub type Tag = u64;

/// How long settled deliveries in a full window wait for the low-water mark to move before
/// they are acked one by one: a few upload round trips at the platform's best (in the
/// zero-latency benchmark the oldest batch settles within it, and one frame then acks a
/// window's worth), a pause too short to matter when the mark is stuck.
pub const FULL_WINDOW_HOLD: Duration = Duration::from_millis(50);

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
    /// The prefetch: with this many outstanding, the broker sends nothing more.
    capacity: usize,
    /// The low-water mark a full window waited for, and until when. Kept while the mark
    /// stays where it is, so that a mark that did not move in time is not waited for again.
    hold: Option<(Tag, Instant)>,
}

impl<A> AckWindow<A> {
    /// A window for a channel with a prefetch of `capacity` deliveries.
    pub fn new(capacity: usize) -> Self {
        AckWindow { unsettled: BTreeSet::new(), ready: BTreeMap::new(), capacity, hold: None }
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

    /// Whether the broker sends nothing more until something is acked.
    pub fn is_full(&self) -> bool {
        self.outstanding() >= self.capacity
    }

    /// Whether settled deliveries are waiting to be acked.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The acks to send at `now`: one (with `multiple` when it covers more than itself) for
    /// the ready deliveries below the oldest unsettled one, and each of the others on its
    /// own if the window is full and the mark did not move within [`FULL_WINDOW_HOLD`].
    pub fn due(&mut self, now: Instant) -> Vec<Ack<A>> {
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
        if self.hold_is_over(now) {
            acks.extend(self.each());
        }
        acks
    }

    /// When the wait of a full window for its mark ends, if it is waiting: the session
    /// asks for [`AckWindow::due`] again then.
    pub fn hold_ends(&self) -> Option<Instant> {
        let mark = self.unsettled.first()?;
        match self.hold {
            Some((held, until)) if held == *mark && self.is_full() && self.has_ready() => Some(until),
            _ => None,
        }
    }

    /// Whether the ready deliveries above the mark are to go one by one now; starts the
    /// hold when a full window first waits for this mark.
    fn hold_is_over(&mut self, now: Instant) -> bool {
        let Some(&mark) = self.unsettled.first() else { return false };
        if !self.is_full() || !self.has_ready() {
            return false;
        }
        let until = match self.hold {
            Some((held, until)) if held == mark => until,
            _ => {
                let until = now + FULL_WINDOW_HOLD;
                self.hold = Some((mark, until));
                until
            }
        };
        now >= until
    }

    /// Every ready delivery, each acked on its own.
    pub fn each(&mut self) -> Vec<Ack<A>> {
        std::mem::take(&mut self.ready).into_values().map(|acker| Ack { acker, multiple: false, deliveries: 1 }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window of `capacity` with tags 1..=n taken, acking with the tag itself as the acker.
    fn window(n: Tag, capacity: usize) -> AckWindow<Tag> {
        let mut window = AckWindow::new(capacity);
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
        let now = Instant::now();
        let mut window = window(10, 100);
        for tag in [3, 1, 2, 5] {
            window.ready(tag, tag);
        }
        assert_eq!(window.due(now), vec![ack(3, true, 3)], "4 is unsettled: 5 waits");
        assert_eq!(window.outstanding(), 7);
        window.ready(4, 4);
        assert_eq!(window.due(now), vec![ack(5, true, 2)]);
        assert_eq!(window.due(now), vec![], "nothing is acked twice");
        assert_eq!(window.outstanding(), 5);
    }

    #[test]
    fn an_unsettled_delivery_is_never_covered() {
        let now = Instant::now();
        let mut window = window(6, 100);
        window.acked(1);
        for tag in [2, 4, 5, 6] {
            window.ready(tag, tag);
        }
        assert_eq!(window.due(now), vec![ack(2, false, 1)]);
        assert_eq!(window.each(), vec![ack(4, false, 1), ack(5, false, 1), ack(6, false, 1)], "3 stays unacked");
        assert_eq!(window.outstanding(), 1);
        window.ready(3, 3);
        assert_eq!(window.due(now), vec![ack(3, false, 1)]);
        assert_eq!(window.outstanding(), 0);
    }

    #[test]
    fn with_room_in_the_window_settled_deliveries_wait_for_the_mark() {
        let now = Instant::now();
        let mut window = window(5, 6);
        for tag in 2..=5 {
            window.ready(tag, tag);
        }
        let much_later = now + 100 * FULL_WINDOW_HOLD;
        assert_eq!(window.due(much_later), vec![], "the broker can still send: nobody waits for them");
        assert_eq!(window.hold_ends(), None);
        window.ready(1, 1);
        assert_eq!(window.due(much_later), vec![ack(5, true, 5)], "one frame for all five");
    }

    #[test]
    fn a_full_window_waits_for_its_mark_a_little_then_acks_one_by_one() {
        let now = Instant::now();
        let mut window = window(5, 5);
        for tag in [2, 3] {
            window.ready(tag, tag);
        }
        assert_eq!(window.due(now), vec![], "full: the wait for tag 1 begins");
        assert_eq!(window.hold_ends(), Some(now + FULL_WINDOW_HOLD));
        assert_eq!(window.due(now + FULL_WINDOW_HOLD / 2), vec![], "still within the hold");
        assert_eq!(window.due(now + FULL_WINDOW_HOLD), vec![ack(2, false, 1), ack(3, false, 1)]);
        assert_eq!(window.hold_ends(), None, "nothing waits any more");

        // The mark has not moved: what settles above it next goes at once, with no second wait.
        window.taken(6);
        window.taken(7);
        window.ready(4, 4);
        assert_eq!(window.due(now + FULL_WINDOW_HOLD), vec![ack(4, false, 1)]);
    }

    #[test]
    fn a_mark_that_moved_is_waited_for_afresh() {
        let now = Instant::now();
        let mut window = window(4, 4);
        window.ready(2, 2);
        assert_eq!(window.due(now), vec![]);
        window.ready(1, 1);
        let later = now + 2 * FULL_WINDOW_HOLD;
        assert_eq!(window.due(later), vec![ack(2, true, 2)], "the mark moved to 3 in time");
        window.taken(5);
        window.taken(6);
        window.ready(4, 4);
        assert_eq!(window.due(later), vec![], "full again, waiting for tag 3 now");
        assert_eq!(window.hold_ends(), Some(later + FULL_WINDOW_HOLD));
    }

    #[test]
    fn a_tag_is_ready_only_once_and_only_if_taken() {
        let mut window = window(2, 100);
        window.ready(1, 1);
        window.ready(1, 1);
        window.ready(7, 7);
        assert_eq!(window.due(Instant::now()), vec![ack(1, false, 1)]);
        assert_eq!(window.outstanding(), 1);
    }
}
