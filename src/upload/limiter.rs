//! The calls in flight per institution, bounded by a [`Controller`]'s limit: a FIFO
//! semaphore whose permits follow the limit. Raising the limit adds a permit; lowering it
//! takes idle permits away at once and the others as their calls end, so the calls in
//! flight never exceed the configured cap, and exceed a lowered limit only until the calls
//! started before it end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::concurrency::{Change, Controller, Sample, Ticket};

/// One institution's limiter.
struct Limiter {
    institution: String,
    semaphore: Arc<Semaphore>,
    state: Mutex<State>,
}

struct State {
    controller: Controller,
    /// Permits to take away as they come back (the limit was lowered while they were out).
    debt: usize,
}

impl Limiter {
    fn new(institution: &str, controller: Controller) -> Self {
        let semaphore = Arc::new(Semaphore::new(controller.limit()));
        crate::telemetry::metrics::concurrency_limit(institution, controller.limit());
        Limiter { institution: institution.to_owned(), semaphore, state: Mutex::new(State { controller, debt: 0 }) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies a change of the limit to the permits, logs and shows it.
    fn apply(&self, state: &mut State, change: Change) {
        if change.new > change.old {
            let added = change.new - change.old;
            let repaid = added.min(state.debt);
            state.debt -= repaid;
            self.semaphore.add_permits(added - repaid);
        } else {
            state.debt += change.old - change.new;
            while state.debt > 0 {
                let Ok(idle) = self.semaphore.try_acquire() else { break };
                idle.forget();
                state.debt -= 1;
            }
        }
        crate::telemetry::metrics::concurrency_limit(&self.institution, change.new);
        tracing::info!(
            institution = %self.institution,
            old = change.old,
            new = change.new,
            why = %change.reason,
            "upload concurrency limit changed"
        );
    }
}

/// A slot for calls of one batch, freed when dropped: [`Slot::observe`] tells the controller
/// how each call went (a cancelled call tells nothing).
pub struct Slot {
    limiter: Arc<Limiter>,
    permit: Option<OwnedSemaphorePermit>,
    ticket: Ticket,
}

impl Slot {
    /// A call made in this slot ended as `sample` says.
    pub fn observe(&self, sample: Sample) {
        let mut state = self.limiter.state();
        if let Some(change) = state.controller.finished(self.ticket, sample) {
            self.limiter.apply(&mut state, change);
        }
    }

    /// The call ended as `sample` says, and the slot is free.
    #[cfg(test)]
    fn finished(self, sample: Sample) {
        self.observe(sample);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else { return };
        let mut state = self.limiter.state();
        if state.debt > 0 {
            permit.forget();
            state.debt -= 1;
        }
    }
}

/// The limiters of every institution, shared by every clone of an uploader.
#[derive(Clone)]
pub struct Limiters {
    cap: usize,
    adaptive: bool,
    by_institution: Arc<Mutex<HashMap<String, Arc<Limiter>>>>,
}

impl Limiters {
    /// At most `cap` calls in flight per institution (at least 1): adapting between 1 and
    /// `cap` to the round trip if `adaptive`, else always `cap`.
    pub fn new(cap: usize, adaptive: bool) -> Self {
        Limiters { cap: cap.max(1), adaptive, by_institution: Arc::default() }
    }

    fn of(&self, institution: &str) -> Arc<Limiter> {
        let mut all = self.by_institution.lock().unwrap_or_else(PoisonError::into_inner);
        let make = || {
            let controller = if self.adaptive { Controller::adaptive(self.cap) } else { Controller::fixed(self.cap) };
            Arc::new(Limiter::new(institution, controller))
        };
        Arc::clone(all.entry(institution.to_owned()).or_insert_with(make))
    }

    /// Waits for a slot of `institution` (first come, first served).
    pub async fn acquire(&self, institution: &str) -> Slot {
        let limiter = self.of(institution);
        let permit = match Arc::clone(&limiter.semaphore).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                limiter.state().controller.saturated();
                // The semaphore is never closed; without a permit there would be no limit.
                Arc::clone(&limiter.semaphore).acquire_owned().await.ok()
            }
        };
        let ticket = {
            let mut state = limiter.state();
            if limiter.semaphore.available_permits() == 0 {
                state.controller.saturated();
            }
            state.controller.ticket()
        };
        Slot { limiter, permit, ticket }
    }

    /// The current limit of `institution`.
    #[cfg(test)]
    fn limit(&self, institution: &str) -> usize {
        self.of(institution).state().controller.limit()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn answered(ms: u64) -> Sample {
        Sample::Answered(Duration::from_millis(ms))
    }

    #[tokio::test]
    async fn a_lowered_limit_takes_permits_back_as_calls_end() {
        let limiters = Limiters::new(4, true);
        for _ in 0..3 {
            // Grow: one saturated window per step.
            let n = limiters.limit("H1");
            let slots: Vec<Slot> = futures_util::future::join_all((0..n).map(|_| limiters.acquire("H1"))).await;
            slots.into_iter().for_each(|s| s.finished(answered(100)));
        }
        assert_eq!(limiters.limit("H1"), 4);
        let slots: Vec<Slot> = futures_util::future::join_all((0..4).map(|_| limiters.acquire("H1"))).await;
        let limiter = limiters.of("H1");
        assert_eq!(limiter.semaphore.available_permits(), 0);
        let mut slots = slots.into_iter();
        slots.next().expect("four").finished(Sample::Failed);
        assert_eq!(limiters.limit("H1"), 2);
        // Two of the three still out are taken away as they come back.
        slots.next().expect("four").finished(answered(100));
        assert_eq!(limiter.semaphore.available_permits(), 0);
        drop(slots);
        assert_eq!(limiter.semaphore.available_permits(), 2);
    }

    #[tokio::test]
    async fn a_fixed_limit_hands_out_the_cap() {
        let limiters = Limiters::new(3, false);
        let slots: Vec<Slot> = futures_util::future::join_all((0..3).map(|_| limiters.acquire("H1"))).await;
        let limiter = limiters.of("H1");
        assert_eq!(limiter.semaphore.available_permits(), 0);
        assert!(Arc::clone(&limiter.semaphore).try_acquire_owned().is_err());
        slots.into_iter().for_each(|s| s.finished(Sample::Failed));
        assert_eq!(limiter.semaphore.available_permits(), 3);
        assert_eq!(limiters.limit("H1"), 3);
    }

    #[tokio::test]
    async fn an_idle_permit_is_taken_away_at_once() {
        let limiters = Limiters::new(4, true);
        for _ in 0..2 {
            let n = limiters.limit("H1");
            let slots: Vec<Slot> = futures_util::future::join_all((0..n).map(|_| limiters.acquire("H1"))).await;
            slots.into_iter().for_each(|s| s.finished(answered(100)));
        }
        assert_eq!(limiters.limit("H1"), 3);
        limiters.acquire("H1").await.finished(Sample::Failed);
        assert_eq!(limiters.limit("H1"), 1);
        assert_eq!(limiters.of("H1").semaphore.available_permits(), 1);
    }
}
