//! Adaptive concurrency of one institution's upload calls: AIMD on the round trip, after
//! Vector's adaptive request concurrency.
//!
//! The [`Controller`] keeps a limit between 1 and the configured cap
//! (`batch.max_in_flight_per_institution`). It is fed one [`Sample`] per finished call and
//! judges them in *windows* of as many calls as the limit was when the window began (about
//! one round trip when every slot is busy):
//!
//! - a window whose mean round trip stays within [`RISE_RATIO`] (and at least
//!   [`RISE_FLOOR`]) of the moving baseline, and in which every slot was busy at some point,
//!   raises the limit by one (additive increase);
//! - a window whose mean round trip is above that threshold lowers it to
//!   [`LATENCY_DECREASE`] of itself (multiplicative decrease, at least by one);
//! - a timeout or transient failure halves it at once ([`FAILURE_DECREASE`]), at most once per
//!   window, so that a burst of calls failing together counts as one signal;
//! - after backing off, it holds for [`PROBE_HOLD`] flat windows before it probes upwards
//!   again: each probe past the platform's capacity slows every call, so probing less often
//!   than every round trip pays (measured in BENCHMARKS.md, issue 19);
//! - the limit at which the round trip last rose is its *ceiling*: growing to the ceiling
//!   or beyond takes [`CEILING_HOLD`] flat windows at the limit below. Near the platform's
//!   capacity it probes seldom, and far below it grows as fast as before. On a platform
//!   shared with other institutions (or other hospitals), whose probes slow every caller,
//!   that keeps the sum of the limits at the capacity most of the time instead of above it.
//!
//! Only calls started under the current limit judge it: the round trips of calls started
//! before a change ([`Ticket`]) are ignored, so that an overshoot is not punished twice.
//!
//! The baseline is the lowest mean round trip of a window: it follows a faster platform at
//! once, and a slower one only at limit 1, where nothing is left to back off and the round
//! trip is the platform's own (a platform slower for everyone is learned as the new
//! baseline there). It never creeps upwards on windows within the threshold: windows
//! mixing fast and congested calls would otherwise ratchet it up until congestion looks
//! flat (seen in bench scenario 8).
//!
//! It does no I/O and reads no clock: round trips come in as durations, which keeps it
//! deterministic under test. The limit starts at 1, so the baseline is learned before load
//! is added.

use std::fmt;
use std::time::Duration;

/// A window whose mean round trip is above the baseline by more than this share is rising.
pub const RISE_RATIO: f64 = 0.25;
/// ... and by at least this much, so that jitter of millisecond round trips is no signal.
pub const RISE_FLOOR: Duration = Duration::from_millis(5);
/// The limit after a rising window, as a share of the limit before.
pub const LATENCY_DECREASE: f64 = 0.9;
/// The limit after a timeout or transient failure, as a share of the limit before.
pub const FAILURE_DECREASE: f64 = 0.5;
/// Flat windows after a back-off before the limit grows again.
pub const PROBE_HOLD: u32 = 4;
/// Flat windows before the limit grows to the ceiling (the last limit that rose) or beyond.
pub const CEILING_HOLD: u32 = 16;

/// Which limit a call started under, given back with its [`Sample`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// How one call ended, as far as the controller cares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    /// The platform answered (whatever it answered) after this round trip.
    Answered(Duration),
    /// A timeout or transient failure (HTTP 5xx, returnCode 6/7, connection error): back off.
    Failed,
}

/// Why the limit changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
    /// The round trip stayed flat while every slot was busy: one more.
    Flat,
    /// The round trip of the last window (`rtt`) rose above the `baseline`.
    Rising {
        /// The window's mean round trip.
        rtt: Duration,
        /// The baseline it was compared with.
        baseline: Duration,
    },
    /// A call timed out or failed transiently.
    Failure,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Flat => f.write_str("round trip flat with every slot busy"),
            Reason::Rising { rtt, baseline } => {
                write!(f, "round trip rising: {} ms against a baseline of {} ms", rtt.as_millis(), baseline.as_millis())
            }
            Reason::Failure => f.write_str("timeout or transient failure"),
        }
    }
}

/// A change of the limit, to be logged and shown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Change {
    /// The limit before.
    pub old: usize,
    /// The limit now.
    pub new: usize,
    /// Why.
    pub reason: Reason,
}

/// The samples of the current window.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    /// Samples the window takes before it is judged (the limit when it began).
    size: usize,
    /// Samples taken so far, failures included.
    taken: usize,
    /// Answered samples and the sum of their round trips (seconds).
    answered: u32,
    rtt_sum: f64,
    /// Whether every slot was busy at some point.
    saturated: bool,
    /// Whether a failure already lowered the limit in this window.
    failed: bool,
}

impl Window {
    fn new(size: usize) -> Self {
        Window { size: size.max(1), ..Window::default() }
    }

    fn mean(&self) -> Option<f64> {
        (self.answered > 0).then(|| self.rtt_sum / f64::from(self.answered))
    }
}

/// The limit on one institution's calls in flight; see the module documentation.
#[derive(Debug, Clone)]
pub struct Controller {
    cap: usize,
    limit: usize,
    adaptive: bool,
    /// The baseline round trip, in seconds, once learned.
    baseline: Option<f64>,
    window: Window,
    /// Counts the changes of the limit (see [`Ticket`]).
    generation: u64,
    /// Flat windows still to pass before the limit may grow.
    hold: u32,
    /// The last limit at which the round trip rose, if any.
    ceiling: Option<usize>,
    /// Whether the limit already held [`CEILING_HOLD`] windows before its next step.
    ceiling_held: bool,
}

impl Controller {
    /// A limit between 1 and `cap` (at least 1) that adapts to the round trip, starting at 1.
    pub fn adaptive(cap: usize) -> Self {
        Controller::new(cap.max(1), 1, true)
    }

    /// A limit fixed at `cap` (at least 1): samples change nothing.
    pub fn fixed(cap: usize) -> Self {
        let cap = cap.max(1);
        Controller::new(cap, cap, false)
    }

    fn new(cap: usize, limit: usize, adaptive: bool) -> Self {
        let window = Window::new(limit);
        Controller { cap, limit, adaptive, baseline: None, window, generation: 0, hold: 0, ceiling: None, ceiling_held: false }
    }

    /// Calls allowed in flight now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The configured cap, the most the limit ever is.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// The baseline round trip learned so far.
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline.map(micros)
    }

    /// Every slot is busy (a call took the last one, or had to wait): the limit, not the
    /// work at hand, bounds the calls in flight, so a flat round trip is reason to grow.
    pub fn saturated(&mut self) {
        self.window.saturated = true;
    }

    /// The ticket of a call starting now.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.generation)
    }

    /// A call started with `ticket` finished; returns the change of the limit it brought, if
    /// any. An answer to a call started under an earlier limit is ignored.
    pub fn finished(&mut self, ticket: Ticket, sample: Sample) -> Option<Change> {
        if !self.adaptive || (ticket.0 < self.generation && matches!(sample, Sample::Answered(_))) {
            return None;
        }
        self.window.taken += 1;
        let change = match sample {
            Sample::Answered(rtt) => {
                self.window.answered += 1;
                self.window.rtt_sum += rtt.as_secs_f64();
                None
            }
            Sample::Failed if !self.window.failed => {
                self.window.failed = true;
                self.set(scaled(self.limit, FAILURE_DECREASE), Reason::Failure)
            }
            Sample::Failed => None,
        };
        if self.window.taken < self.window.size {
            return change;
        }
        let judged = if self.window.failed { None } else { self.judge() };
        self.window = Window::new(self.limit);
        change.or(judged)
    }

    /// Judges a full window without failures.
    fn judge(&mut self) -> Option<Change> {
        let mean = self.window.mean()?;
        let baseline = *self.baseline.get_or_insert(mean);
        if is_rising(mean, baseline) {
            if self.limit == 1 {
                // Nothing left to back off: the platform is slower for everyone, and the
                // ceiling was judged against the old baseline.
                self.baseline = Some(mean);
                self.ceiling = None;
                return None;
            }
            let reason = Reason::Rising { rtt: micros(mean), baseline: micros(baseline) };
            self.ceiling = Some(self.limit);
            return self.set(scaled(self.limit, LATENCY_DECREASE), reason);
        }
        self.baseline = Some(mean.min(baseline));
        if self.hold > 0 {
            self.hold -= 1;
            return None;
        }
        if !self.window.saturated || self.limit == self.cap {
            return None;
        }
        if self.ceiling.is_some_and(|ceiling| self.limit + 1 >= ceiling) && !self.ceiling_held {
            self.ceiling_held = true;
            self.hold = CEILING_HOLD - 1;
            return None;
        }
        self.set(self.limit + 1, Reason::Flat)
    }

    fn set(&mut self, new: usize, reason: Reason) -> Option<Change> {
        let new = new.clamp(1, self.cap);
        let old = std::mem::replace(&mut self.limit, new);
        if new < old {
            self.hold = PROBE_HOLD;
        }
        if old == new {
            return None;
        }
        self.generation += 1;
        self.ceiling_held = false;
        Some(Change { old, new, reason })
    }
}

/// Whether a window's mean round trip is above the baseline by the threshold (seconds).
fn is_rising(mean: f64, baseline: f64) -> bool {
    mean - baseline > (baseline * RISE_RATIO).max(RISE_FLOOR.as_secs_f64())
}

/// Seconds as a duration rounded to the microsecond (the sums of round trips are not exact).
fn micros(secs: f64) -> Duration {
    // Round trips are seconds to minutes: far inside u64 microseconds.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Duration::from_micros((secs.max(0.0) * 1e6).round() as u64)
}

/// `limit` scaled down by `factor`, by at least one, at least 1.
fn scaled(limit: usize, factor: f64) -> usize {
    // Limits are small (the cap is a handful of calls): the float round trip is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let scaled = (limit as f64 * factor).floor() as usize;
    scaled.min(limit.saturating_sub(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds one saturated window of answers at `rtt` and returns the change it brought.
    fn window(c: &mut Controller, rtt: Duration) -> Option<Change> {
        let size = c.limit();
        c.saturated();
        let ticket = c.ticket();
        (0..size).map(|_| c.finished(ticket, Sample::Answered(rtt))).fold(None, |seen, change| seen.or(change))
    }

    /// One call's sample, started now.
    fn one(c: &mut Controller, sample: Sample) -> Option<Change> {
        let ticket = c.ticket();
        c.finished(ticket, sample)
    }

    #[test]
    fn it_starts_at_one_and_grows_by_one_per_flat_window_up_to_the_cap() {
        let mut c = Controller::adaptive(4);
        assert_eq!(c.limit(), 1);
        let mut limits = vec![];
        for _ in 0..6 {
            window(&mut c, ms(200));
            limits.push(c.limit());
        }
        assert_eq!(limits, [2, 3, 4, 4, 4, 4]);
        assert_eq!(c.baseline(), Some(ms(200)));
    }

    #[test]
    fn a_window_grows_only_after_as_many_calls_as_the_limit() {
        let mut c = Controller::adaptive(8);
        window(&mut c, ms(100));
        window(&mut c, ms(100));
        assert_eq!(c.limit(), 3);
        c.saturated();
        assert_eq!(one(&mut c, Sample::Answered(ms(100))), None);
        assert_eq!(one(&mut c, Sample::Answered(ms(100))), None);
        assert_eq!(one(&mut c, Sample::Answered(ms(100))), Some(Change { old: 3, new: 4, reason: Reason::Flat }));
    }

    #[test]
    fn without_every_slot_busy_a_flat_round_trip_does_not_grow_the_limit() {
        let mut c = Controller::adaptive(8);
        for _ in 0..5 {
            assert_eq!(one(&mut c, Sample::Answered(ms(200))), None);
        }
        assert_eq!(c.limit(), 1);
    }

    #[test]
    fn a_rising_round_trip_backs_off_multiplicatively() {
        let mut c = Controller::adaptive(20);
        while c.limit() < 20 {
            window(&mut c, ms(200));
        }
        let change = window(&mut c, ms(400));
        assert_eq!(change, Some(Change { old: 20, new: 18, reason: Reason::Rising { rtt: ms(400), baseline: ms(200) } }));
        assert_eq!(window(&mut c, ms(400)).map(|c| c.new), Some(16));
        assert_eq!(c.baseline(), Some(ms(200)), "a rising window leaves the baseline alone");
    }

    #[test]
    fn a_small_limit_backs_off_by_at_least_one() {
        let mut c = Controller::adaptive(8);
        window(&mut c, ms(200));
        window(&mut c, ms(200));
        assert_eq!(c.limit(), 3);
        assert_eq!(window(&mut c, ms(300)).map(|c| c.new), Some(2));
        assert_eq!(window(&mut c, ms(300)).map(|c| c.new), Some(1));
    }

    #[test]
    fn a_rise_within_the_threshold_is_flat() {
        let mut c = Controller::adaptive(8);
        window(&mut c, ms(200));
        assert_eq!(window(&mut c, ms(240)).map(|c| c.reason), Some(Reason::Flat));
        // Millisecond round trips: jitter below the floor is no signal.
        let mut fast = Controller::adaptive(8);
        window(&mut fast, ms(1));
        assert_eq!(window(&mut fast, ms(4)).map(|c| c.reason), Some(Reason::Flat));
    }

    #[test]
    fn a_failure_halves_the_limit_once_per_window() {
        let mut c = Controller::adaptive(8);
        while c.limit() < 8 {
            window(&mut c, ms(200));
        }
        assert_eq!(one(&mut c, Sample::Failed), Some(Change { old: 8, new: 4, reason: Reason::Failure }));
        // The other calls that were in flight fail alike: the same signal.
        for _ in 0..7 {
            assert_eq!(one(&mut c, Sample::Failed), None);
        }
        assert_eq!(c.limit(), 4);
        // The next window is new: a failure counts again.
        assert_eq!(one(&mut c, Sample::Failed).map(|c| c.new), Some(2));
        assert_eq!(one(&mut c, Sample::Failed), None);
        for _ in 0..2 {
            one(&mut c, Sample::Failed);
        }
        assert_eq!(one(&mut c, Sample::Failed).map(|c| c.new), Some(1));
    }

    #[test]
    fn a_window_with_a_failure_is_not_judged_by_its_round_trips() {
        let mut c = Controller::adaptive(8);
        window(&mut c, ms(200));
        window(&mut c, ms(200));
        window(&mut c, ms(200));
        assert_eq!(c.limit(), 4);
        c.saturated();
        assert_eq!(one(&mut c, Sample::Failed).map(|c| c.new), Some(2));
        for _ in 0..3 {
            assert_eq!(one(&mut c, Sample::Answered(ms(200))), None);
        }
        assert_eq!(c.limit(), 2);
    }

    #[test]
    fn at_limit_one_a_slower_platform_becomes_the_baseline() {
        let mut c = Controller::adaptive(4);
        window(&mut c, ms(100));
        assert_eq!(window(&mut c, ms(500)).map(|c| c.new), Some(1));
        assert_eq!(window(&mut c, ms(500)), None);
        assert_eq!(c.baseline(), Some(ms(500)));
        for _ in 0..PROBE_HOLD {
            assert_eq!(window(&mut c, ms(500)), None, "holding after the back-off");
        }
        assert_eq!(window(&mut c, ms(500)).map(|c| c.new), Some(2), "flat again at the new baseline");
    }

    #[test]
    fn the_baseline_follows_a_faster_platform_at_once_and_never_creeps_upwards() {
        let mut c = Controller::adaptive(8);
        window(&mut c, ms(200));
        window(&mut c, ms(100));
        assert_eq!(c.baseline(), Some(ms(100)));
        for _ in 0..5 {
            window(&mut c, ms(120));
        }
        assert_eq!(c.baseline(), Some(ms(100)));
        assert_eq!(c.limit(), 8, "within the threshold: flat");
    }

    #[test]
    fn it_settles_between_the_platforms_capacity_and_one_more() {
        // A platform serving 3 calls at once at 200 ms, each call beyond adding 200 ms.
        let mut c = Controller::adaptive(8);
        let mut seen = vec![];
        for _ in 0..40 {
            let n = c.limit() as u64;
            window(&mut c, ms(200 + 200 * n.saturating_sub(3)));
            seen.push(c.limit());
        }
        assert!(seen[10..].iter().all(|l| (3..=4).contains(l)), "{seen:?}");
    }

    #[test]
    fn two_institutions_sharing_a_congested_platform_stay_at_its_capacity_most_of_the_time() {
        // Bench scenario 8: 6 calls at once at 200 ms, each call beyond adding 200 ms to all.
        let mut institutions = [Controller::adaptive(8), Controller::adaptive(8)];
        let mut sums = vec![];
        for _ in 0..400 {
            let sum = institutions.iter().map(Controller::limit).sum::<usize>() as u64;
            for c in &mut institutions {
                window(c, ms(200 + 200 * sum.saturating_sub(6)));
            }
            sums.push(sum);
        }
        let steady = &sums[50..];
        let share = |f: fn(u64) -> bool| steady.iter().filter(|s| f(**s)).count() as f64 / steady.len() as f64;
        assert!(share(|s| s > 6) < 0.10, "above the capacity {:.2} of the windows: {sums:?}", share(|s| s > 6));
        assert!(share(|s| s >= 5) > 0.80, "at most one below the capacity {:.2}: {sums:?}", share(|s| s >= 5));
    }

    #[test]
    fn after_backing_off_it_holds_before_probing_again() {
        let mut c = Controller::adaptive(8);
        while c.limit() < 5 {
            window(&mut c, ms(200));
        }
        assert_eq!(window(&mut c, ms(400)).map(|c| c.new), Some(4));
        // The hold after the back-off, then the longer one before the ceiling (5).
        let held: Vec<Option<Change>> = (0..PROBE_HOLD + CEILING_HOLD).map(|_| window(&mut c, ms(200))).collect();
        assert!(held.iter().all(Option::is_none), "{held:?}");
        assert_eq!(window(&mut c, ms(200)).map(|c| c.new), Some(5), "probing the ceiling");
        // Flat at the ceiling: beyond it, the same longer hold before each step.
        let held: Vec<Option<Change>> = (0..CEILING_HOLD).map(|_| window(&mut c, ms(200))).collect();
        assert!(held.iter().all(Option::is_none), "{held:?}");
        assert_eq!(window(&mut c, ms(200)).map(|c| c.new), Some(6));
    }

    #[test]
    fn far_below_the_ceiling_it_grows_one_step_per_window() {
        let mut c = Controller::adaptive(30);
        while c.limit() < 30 {
            window(&mut c, ms(200));
        }
        assert_eq!(window(&mut c, ms(400)).map(|c| c.new), Some(27));
        assert_eq!(one(&mut c, Sample::Failed).map(|c| c.new), Some(13), "a failure leaves the ceiling at 30");
        let mut held = 0;
        while window(&mut c, ms(200)).is_none() {
            held += 1;
            assert!(held <= PROBE_HOLD + 2, "the hold after a back-off (and the rest of the failed window)");
        }
        assert_eq!(c.limit(), 14);
        let steps: Vec<usize> = (0..15).map(|_| window(&mut c, ms(200)).map_or(0, |c| c.new)).collect();
        assert_eq!(steps, (15..=29).collect::<Vec<_>>(), "up to the step below the ceiling, one per window");
        assert_eq!(window(&mut c, ms(200)), None, "then it holds");
    }

    #[test]
    fn calls_started_before_a_change_do_not_judge_the_new_limit() {
        let mut c = Controller::adaptive(8);
        window(&mut c, ms(200));
        window(&mut c, ms(200));
        assert_eq!(c.limit(), 3);
        let before = c.ticket();
        window(&mut c, ms(200));
        assert_eq!(c.limit(), 4);
        // Slow answers of calls started at limit 3 would otherwise be a rising window.
        for _ in 0..8 {
            assert_eq!(c.finished(before, Sample::Answered(ms(900))), None);
        }
        assert_eq!(c.limit(), 4);
        // A failure counts whenever the call started.
        assert_eq!(c.finished(before, Sample::Failed).map(|c| c.new), Some(2));
    }

    #[test]
    fn a_fixed_limit_is_the_cap_whatever_happens() {
        let mut c = Controller::fixed(4);
        assert_eq!(c.limit(), 4);
        assert_eq!(one(&mut c, Sample::Failed), None);
        assert_eq!(window(&mut c, ms(5000)), None);
        assert_eq!(c.limit(), 4);
        assert_eq!(Controller::fixed(0).limit(), 1);
        assert_eq!(Controller::adaptive(0).cap(), 1);
    }

    #[test]
    fn reasons_read_well_in_a_log_line() {
        let rising = Reason::Rising { rtt: ms(412), baseline: ms(201) };
        assert_eq!(rising.to_string(), "round trip rising: 412 ms against a baseline of 201 ms");
        assert_eq!(Reason::Failure.to_string(), "timeout or transient failure");
    }
}
