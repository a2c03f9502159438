//! Institutions on hold: while an institution's records cannot be uploaded, its batches are
//! parked instead of claimed and sent, and other institutions carry on.
//!
//! | hold | when | its batches |
//! |---|---|---|
//! | configuration | the platform answers with a configuration or authorisation problem (2, 3, 4, 30, HTTP 401/403/404/405) | parked without counting an attempt |
//! | daily limit | returnCode 11 | parked until Beijing midnight, no attempt counted |
//! | failing | [`FAILURES_TO_HOLD`] transient failures in a row (timeouts, HTTP 5xx, 6, 7, ...) with no call of the institution answered in between | parked with an attempt counted (the retry budget runs as if each had been tried), without a ledger claim or a call |
//!
//! A configuration or failing hold is **probed** with backoff: when its time is up, the next
//! batch goes out and the hold is pushed back by its current wait, so that one batch at a
//! time probes while the others keep waiting; an answer about the data (accepted, refused)
//! lifts the hold, another failure lengthens it. So an outage of the platform costs one
//! claim and one call per probe, not one per batch and attempt: the ledger does not grow
//! with the backlog, and the daily call limit is not spent on calls bound to fail. A
//! daily-limit hold ends at Beijing midnight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::retry::Backoff;

/// Transient failures in a row after which an institution is held as failing.
pub const FAILURES_TO_HOLD: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Misconfigured,
    DailyLimit,
    Failing,
}

#[derive(Debug, Clone)]
struct Hold {
    kind: Kind,
    reason: String,
    until: Instant,
    probes: u32,
}

/// What a held institution's batch is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// Park it for this long, counting no attempt.
    Parked(Duration),
    /// The platform is failing for the institution: park it for at least this long,
    /// counting an attempt that failed for `reason`.
    Failing { wait: Duration, reason: String },
}

#[derive(Debug, Default)]
struct State {
    holds: HashMap<String, Hold>,
    /// Transient failures in a row, per institution not held.
    failures: HashMap<String, u32>,
}

/// The holds of one worker process; cheap to clone.
#[derive(Debug, Clone)]
pub struct Holds {
    state: Arc<Mutex<State>>,
    backoff: Backoff,
}

impl Holds {
    /// No institution held; probes back off by `backoff`.
    pub fn new(backoff: Backoff) -> Self {
        Holds { state: Arc::default(), backoff }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the institution's next batch is to do, or `None` when it may be uploaded (not
    /// held, or it is the probe of a hold whose time is up).
    pub fn wait(&self, institution: &str) -> Option<Held> {
        let mut state = self.lock();
        let hold = state.holds.get_mut(institution)?;
        let now = Instant::now();
        let left = hold.until.saturating_duration_since(now);
        if left.is_zero() {
            if hold.kind != Kind::DailyLimit {
                // This batch probes; the batches after it wait for its answer.
                hold.until = now + self.backoff.delay(hold.probes.max(1));
            }
            return None;
        }
        Some(match hold.kind {
            Kind::Failing => Held::Failing { wait: left, reason: hold.reason.clone() },
            Kind::Misconfigured | Kind::DailyLimit => Held::Parked(left),
        })
    }

    /// Holds the institution after a configuration problem; returns the wait until the
    /// next probe.
    pub fn hold_misconfigured(&self, institution: &str, reason: &str) -> Duration {
        let mut state = self.lock();
        let probes = state.holds.get(institution).filter(|h| h.kind == Kind::Misconfigured).map_or(0, |h| h.probes) + 1;
        let wait = self.backoff.delay(probes);
        if probes == 1 {
            tracing::error!(%institution, "holding this institution's records: {reason}. Fix the configuration or ask the platform; probing again with backoff");
        }
        let hold = Hold { kind: Kind::Misconfigured, reason: reason.to_owned(), until: Instant::now() + wait, probes };
        state.holds.insert(institution.to_owned(), hold);
        wait
    }

    /// Holds the institution until Beijing midnight (daily call limit); returns the wait.
    pub fn hold_until_midnight(&self, institution: &str) -> Duration {
        let wait = crate::beijing::until_next_midnight_with_jitter();
        tracing::error!(%institution, hours = wait.as_secs() / 3600, "the daily call limit is reached: holding this institution's records until Beijing midnight");
        let reason = "daily call limit reached (returnCode 11); resumes after Beijing midnight".to_owned();
        let hold = Hold { kind: Kind::DailyLimit, reason, until: Instant::now() + wait, probes: 0 };
        self.lock().holds.insert(institution.to_owned(), hold);
        wait
    }

    /// Counts a transient failure of a call of the institution: the [`FAILURES_TO_HOLD`]th
    /// in a row holds it as failing, and one while it is held as failing (a probe, or a
    /// call sent before the hold) lengthens the hold. Other holds stay as they are.
    pub fn failed(&self, institution: &str, reason: &str) {
        let mut state = self.lock();
        let reason = format!("the platform is failing for this institution: {reason}");
        if let Some(hold) = state.holds.get_mut(institution) {
            if hold.kind == Kind::Failing {
                hold.probes = hold.probes.saturating_add(1);
                hold.until = Instant::now() + self.backoff.delay(hold.probes);
                hold.reason = reason;
            }
            return;
        }
        let failures = state.failures.entry(institution.to_owned()).or_default();
        *failures = failures.saturating_add(1);
        if *failures < FAILURES_TO_HOLD {
            return;
        }
        state.failures.remove(institution);
        tracing::warn!(%institution, "{reason}; {FAILURES_TO_HOLD} calls in a row failed: its records wait, and one batch at a time probes the platform with backoff");
        let hold = Hold { kind: Kind::Failing, reason, until: Instant::now() + self.backoff.delay(1), probes: 1 };
        state.holds.insert(institution.to_owned(), hold);
    }

    /// Lifts a hold after a call of the institution was answered about its data (a
    /// daily-limit hold only once midnight has passed).
    pub fn release(&self, institution: &str) {
        let mut state = self.lock();
        state.failures.remove(institution);
        let ended = state.holds.get(institution).is_some_and(|h| h.kind != Kind::DailyLimit || h.until <= Instant::now());
        if ended {
            state.holds.remove(institution);
            tracing::info!(%institution, "the platform accepts this institution's calls again: hold lifted");
        }
    }

    /// The institutions held for their configuration or the daily limit (someone must
    /// act, or wait for midnight), with the reason.
    pub fn held(&self) -> Vec<(String, String)> {
        self.listed(|hold, now| match hold.kind {
            Kind::Misconfigured => true,
            Kind::DailyLimit => hold.until > now,
            Kind::Failing => false,
        })
    }

    /// The institutions held because the platform is failing for them, with the last
    /// failure.
    pub fn failing(&self) -> Vec<(String, String)> {
        self.listed(|hold, _| hold.kind == Kind::Failing)
    }

    fn listed(&self, which: impl Fn(&Hold, Instant) -> bool) -> Vec<(String, String)> {
        let now = Instant::now();
        let mut listed: Vec<_> =
            self.lock().holds.iter().filter(|(_, hold)| which(hold, now)).map(|(code, hold)| (code.clone(), hold.reason.clone())).collect();
        listed.sort();
        listed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetrySettings;

    fn holds(backoff_ms: u64) -> Holds {
        Holds::new(Backoff::new(&RetrySettings { initial_backoff_ms: backoff_ms, max_backoff_ms: backoff_ms, max_elapsed_secs: 1 }))
    }

    #[test]
    fn a_hold_waits_then_lets_one_probe_through_and_success_lifts_it() {
        let holds = holds(40);
        assert_eq!(holds.wait("H1"), None);
        let wait = holds.hold_misconfigured("H1", "returnCode 4");
        assert!(wait <= Duration::from_millis(40));
        assert!(matches!(holds.wait("H1"), Some(Held::Parked(_))));
        assert_eq!(holds.wait("H2"), None, "other institutions carry on");
        assert_eq!(holds.held(), [("H1".to_owned(), "returnCode 4".to_owned())]);
        std::thread::sleep(wait);
        assert_eq!(holds.wait("H1"), None, "due for a probe");
        assert!(holds.wait("H1").is_some(), "the batches after the probe wait for its answer");
        holds.release("H1");
        assert!(holds.held().is_empty());
        assert_eq!(holds.wait("H1"), None);
    }

    #[test]
    fn transient_failures_in_a_row_hold_an_institution_as_failing_until_an_answer() {
        let holds = holds(40);
        holds.failed("H1", "HTTP 503");
        holds.release("H1");
        for _ in 1..FAILURES_TO_HOLD {
            holds.failed("H1", "HTTP 503");
        }
        assert_eq!(holds.wait("H1"), None, "an answer in between starts the count again");
        holds.failed("H1", "HTTP 503");
        let Some(Held::Failing { wait, reason }) = holds.wait("H1") else { panic!("held as failing") };
        assert!(wait <= Duration::from_millis(40));
        assert!(reason.contains("HTTP 503"), "{reason}");
        assert!(holds.held().is_empty(), "not a hold someone must act on");
        assert_eq!(holds.failing().len(), 1);
        std::thread::sleep(wait);
        assert_eq!(holds.wait("H1"), None, "one probe");
        assert!(matches!(holds.wait("H1"), Some(Held::Failing { .. })));
        holds.release("H1");
        assert_eq!(holds.wait("H1"), None);
        assert!(holds.failing().is_empty());
    }

    #[test]
    fn a_failure_leaves_a_configuration_hold_as_it_is() {
        let holds = holds(40);
        holds.hold_misconfigured("H1", "returnCode 4");
        for _ in 0..FAILURES_TO_HOLD {
            holds.failed("H1", "HTTP 503");
        }
        assert!(matches!(holds.wait("H1"), Some(Held::Parked(_))));
        assert_eq!(holds.held().len(), 1);
    }

    #[test]
    fn the_daily_limit_holds_until_beijing_midnight() {
        let holds = Holds::new(Backoff::new(&RetrySettings::default()));
        let wait = holds.hold_until_midnight("H1");
        assert!(wait <= Duration::from_secs(24 * 3600 + 60));
        assert!(holds.wait("H1").is_some());
        holds.release("H1");
        assert!(holds.wait("H1").is_some(), "calls accepted meanwhile were sent before the limit");
    }
}
