//! Injected faults, set at run time through the admin API: latency, error rates, outages,
//! timeouts and refused record keys. [`Faults::plan`] decides, per call, what happens to it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;

use super::api::{ErrorAnswer, ErrorRate, FaultsView, Latency, Outage, Refusals, TimeoutMode, Timeouts};
use super::lock;

/// A fault setting the admin API refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidFault {
    /// A rate outside 0.0–1.0.
    #[error("rate must be between 0.0 and 1.0")]
    Rate,
    /// `min_ms` above `max_ms`.
    #[error("latency: min_ms must not exceed max_ms")]
    LatencyRange,
    /// An HTTP status that is not an error status.
    #[error("http_status must be 400 to 599")]
    HttpStatus,
    /// An outage too long to represent.
    #[error("outage: secs is too large")]
    OutageLength,
    /// A refusal with no keys.
    #[error("refusals: keys must not be empty")]
    NoKeys,
}

/// A fault that decides a call's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Injected {
    /// HTTP 503: the platform is down.
    Outage,
    /// An error answer instead of handling the call.
    Error(ErrorAnswer),
    /// No answer.
    Timeout {
        /// Hang or close.
        mode: TimeoutMode,
        /// How long to hang.
        hang: Duration,
        /// Whether the call is carried out before the answer is lost.
        processed: bool,
    },
}

/// What happens to one call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// Latency to add before anything else.
    pub delay: Duration,
    /// The fault deciding the answer, if any.
    pub injected: Option<Injected>,
}

#[derive(Debug, Default)]
struct State {
    latency: Option<Latency>,
    errors: Option<ErrorRate>,
    outage_until: Option<DateTime<Utc>>,
    timeouts: Option<Timeouts>,
    refusals: HashMap<String, u32>,
}

/// The faults in force.
#[derive(Debug, Default)]
pub struct Faults {
    state: Mutex<State>,
}

fn check_rate(rate: f64) -> Result<(), InvalidFault> {
    if (0.0..=1.0).contains(&rate) { Ok(()) } else { Err(InvalidFault::Rate) }
}

/// True with probability `rate`.
fn roll(rate: f64) -> bool {
    rate > 0.0 && rand::rng().random::<f64>() < rate
}

impl Faults {
    /// Decides the fate of a call arriving at `now` while `in_progress` calls are in
    /// progress (itself included): its latency, then an outage, a timeout (the counted ones
    /// first) or an injected error, in that order of precedence.
    pub fn plan(&self, now: DateTime<Utc>, in_progress: u64) -> Plan {
        let mut state = lock(&self.state);
        let delay = state.latency.map_or(Duration::ZERO, |l| {
            let drawn = if l.min_ms == l.max_ms { l.min_ms } else { rand::rng().random_range(l.min_ms..=l.max_ms) };
            Duration::from_millis(drawn.saturating_add(l.congestion_ms(in_progress)))
        });
        if state.outage_until.is_some_and(|until| now >= until) {
            state.outage_until = None;
        }
        let injected = if state.outage_until.is_some() {
            Some(Injected::Outage)
        } else if let Some(timeouts) = state.timeouts.as_mut().filter(|t| t.next > 0 || roll(t.rate)) {
            timeouts.next = timeouts.next.saturating_sub(1);
            Some(Injected::Timeout { mode: timeouts.mode, hang: Duration::from_millis(timeouts.hang_ms), processed: timeouts.processed })
        } else {
            state.errors.filter(|e| roll(e.rate)).map(|e| Injected::Error(e.answer))
        };
        Plan { delay, injected }
    }

    /// The returnCode of the first refused key among `keys`, if any.
    pub fn refusal<'k>(&self, mut keys: impl Iterator<Item = &'k str>) -> Option<u32> {
        let state = lock(&self.state);
        if state.refusals.is_empty() {
            return None;
        }
        keys.find_map(|k| state.refusals.get(k).copied())
    }

    /// Sets the added latency.
    pub fn set_latency(&self, latency: Latency) -> Result<(), InvalidFault> {
        if latency.min_ms > latency.max_ms {
            return Err(InvalidFault::LatencyRange);
        }
        lock(&self.state).latency = Some(latency);
        Ok(())
    }

    /// Sets the error rate.
    pub fn set_errors(&self, errors: ErrorRate) -> Result<(), InvalidFault> {
        check_rate(errors.rate)?;
        if matches!(errors.answer, ErrorAnswer::HttpStatus(status) if !(400..=599).contains(&status)) {
            return Err(InvalidFault::HttpStatus);
        }
        lock(&self.state).errors = Some(errors);
        Ok(())
    }

    /// Starts an outage of `outage.secs` from `now`.
    pub fn set_outage(&self, outage: Outage, now: DateTime<Utc>) -> Result<(), InvalidFault> {
        let length = i64::try_from(outage.secs).ok().and_then(TimeDelta::try_seconds).ok_or(InvalidFault::OutageLength)?;
        let until = now.checked_add_signed(length).ok_or(InvalidFault::OutageLength)?;
        lock(&self.state).outage_until = Some(until);
        Ok(())
    }

    /// Sets the timeouts.
    pub fn set_timeouts(&self, timeouts: Timeouts) -> Result<(), InvalidFault> {
        check_rate(timeouts.rate)?;
        lock(&self.state).timeouts = Some(timeouts);
        Ok(())
    }

    /// Adds refused keys (a key refused before gets the new code).
    pub fn add_refusals(&self, refusals: Refusals) -> Result<(), InvalidFault> {
        if refusals.keys.is_empty() {
            return Err(InvalidFault::NoKeys);
        }
        let mut state = lock(&self.state);
        state.refusals.extend(refusals.keys.into_iter().map(|k| (k, refusals.return_code)));
        Ok(())
    }

    /// Ends the added latency.
    pub fn clear_latency(&self) {
        lock(&self.state).latency = None;
    }

    /// Ends the error rate.
    pub fn clear_errors(&self) {
        lock(&self.state).errors = None;
    }

    /// Ends the outage.
    pub fn clear_outage(&self) {
        lock(&self.state).outage_until = None;
    }

    /// Ends the timeouts.
    pub fn clear_timeouts(&self) {
        lock(&self.state).timeouts = None;
    }

    /// Forgets every refused key.
    pub fn clear_refusals(&self) {
        lock(&self.state).refusals.clear();
    }

    /// Ends every fault.
    pub fn clear(&self) {
        *lock(&self.state) = State::default();
    }

    /// The faults in force at `now`.
    pub fn view(&self, now: DateTime<Utc>) -> FaultsView {
        let state = lock(&self.state);
        FaultsView {
            latency: state.latency,
            errors: state.errors,
            outage_until: state.outage_until.filter(|until| now < *until),
            timeouts: state.timeouts,
            refusals: state.refusals.iter().map(|(k, c)| (k.clone(), *c)).collect::<BTreeMap<_, _>>(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_timeouts_come_first_then_errors_by_rate() {
        let faults = Faults::default();
        let now = Utc::now();
        assert_eq!(faults.plan(now, 1), Plan { delay: Duration::ZERO, injected: None });
        faults.set_timeouts(Timeouts { next: 2, rate: 0.0, mode: TimeoutMode::Close, hang_ms: 1, processed: false }).expect("valid");
        faults.set_errors(ErrorRate { rate: 1.0, answer: ErrorAnswer::ReturnCode(6) }).expect("valid");
        let timeout = Some(Injected::Timeout { mode: TimeoutMode::Close, hang: Duration::from_millis(1), processed: false });
        assert_eq!(faults.plan(now, 1).injected, timeout);
        assert_eq!(faults.plan(now, 1).injected, timeout);
        assert_eq!(faults.plan(now, 1).injected, Some(Injected::Error(ErrorAnswer::ReturnCode(6))));
        assert_eq!(faults.view(now).timeouts.map(|t| t.next), Some(0));
    }

    #[test]
    fn latency_grows_with_the_calls_in_progress_beyond_the_capacity() {
        let faults = Faults::default();
        let now = Utc::now();
        faults.set_latency(Latency { per_concurrent_ms: 50, capacity: 2, ..Latency::between(100, 100) }).expect("valid");
        let delays: Vec<Duration> = (1..=4).map(|n| faults.plan(now, n).delay).collect();
        assert_eq!(delays, [100, 100, 150, 200].map(Duration::from_millis));
        faults.set_latency(Latency { per_concurrent_ms: 10, ..Latency::between(0, 0) }).expect("valid");
        assert_eq!(faults.plan(now, 3).delay, Duration::from_millis(20), "by default every other call in progress counts");
    }

    #[test]
    fn an_outage_ends_by_itself_and_wins_over_the_rest() {
        let faults = Faults::default();
        let now = Utc::now();
        faults.set_errors(ErrorRate { rate: 1.0, answer: ErrorAnswer::HttpStatus(500) }).expect("valid");
        faults.set_outage(Outage { secs: 10 }, now).expect("valid");
        assert_eq!(faults.plan(now, 1).injected, Some(Injected::Outage));
        let later = now + TimeDelta::seconds(10);
        assert_eq!(faults.plan(later, 1).injected, Some(Injected::Error(ErrorAnswer::HttpStatus(500))));
        assert_eq!(faults.view(later).outage_until, None);
    }

    #[test]
    fn invalid_settings_are_refused() {
        let faults = Faults::default();
        assert_eq!(faults.set_latency(Latency::between(5, 1)), Err(InvalidFault::LatencyRange));
        assert_eq!(faults.set_errors(ErrorRate { rate: 1.5, answer: ErrorAnswer::ReturnCode(6) }), Err(InvalidFault::Rate));
        assert_eq!(faults.set_errors(ErrorRate { rate: 0.5, answer: ErrorAnswer::HttpStatus(200) }), Err(InvalidFault::HttpStatus));
        assert_eq!(faults.set_outage(Outage { secs: u64::MAX }, Utc::now()), Err(InvalidFault::OutageLength));
        assert_eq!(faults.add_refusals(Refusals { keys: vec![], return_code: 8 }), Err(InvalidFault::NoKeys));
    }

    #[test]
    fn refused_keys_are_found_among_a_batchs_keys() {
        let faults = Faults::default();
        faults.add_refusals(Refusals { keys: vec!["bad".into()], return_code: 16 }).expect("valid");
        assert_eq!(faults.refusal(["ok", "bad"].into_iter()), Some(16));
        assert_eq!(faults.refusal(["ok"].into_iter()), None);
    }
}
