//! Institutions on hold: while the platform answers with a configuration or authorisation
//! problem (2, 3, 4, 30, HTTP 401/403/404), or after the daily call limit (11), an
//! institution's records are parked instead of uploaded, and other institutions carry on.
//!
//! A configuration hold is probed again with backoff: when its time is up, the next call
//! goes out; success lifts the hold, another failure lengthens it. A daily-limit hold ends
//! at Beijing midnight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::retry::Backoff;

use super::settle::until_beijing_midnight;

#[derive(Debug, Clone)]
struct Hold {
    reason: String,
    until: Instant,
    probes: u32,
    /// A daily-limit hold ends at midnight only: a call accepted meanwhile was sent before
    /// the limit was met.
    until_midnight: bool,
}

/// The holds of one worker process; cheap to clone.
#[derive(Debug, Clone)]
pub struct Holds {
    holds: Arc<Mutex<HashMap<String, Hold>>>,
    backoff: Backoff,
}

impl Holds {
    /// No institution held; probes back off by `backoff`.
    pub fn new(backoff: Backoff) -> Self {
        Holds { holds: Arc::default(), backoff }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Hold>> {
        self.holds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long the institution's records must still wait, or `None` when they may be
    /// uploaded (not held, or due for a probe).
    pub fn wait(&self, institution: &str) -> Option<Duration> {
        let holds = self.lock();
        let hold = holds.get(institution)?;
        let left = hold.until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Holds the institution after a configuration problem; returns the wait until the
    /// next probe.
    pub fn hold_misconfigured(&self, institution: &str, reason: &str) -> Duration {
        let mut holds = self.lock();
        let probes = holds.get(institution).map_or(0, |h| h.probes) + 1;
        let wait = self.backoff.delay(probes);
        if probes == 1 {
            tracing::error!(%institution, "holding this institution's records: {reason}. Fix the configuration or ask the platform; probing again with backoff");
        }
        holds.insert(institution.to_owned(), Hold { reason: reason.to_owned(), until: Instant::now() + wait, probes, until_midnight: false });
        wait
    }

    /// Holds the institution until Beijing midnight (daily call limit); returns the wait.
    pub fn hold_until_midnight(&self, institution: &str) -> Duration {
        let wait = until_beijing_midnight();
        tracing::error!(%institution, hours = wait.as_secs() / 3600, "the daily call limit is reached: holding this institution's records until Beijing midnight");
        let reason = "daily call limit reached (returnCode 11); resumes after Beijing midnight".to_owned();
        self.lock().insert(institution.to_owned(), Hold { reason, until: Instant::now() + wait, probes: 0, until_midnight: true });
        wait
    }

    /// Lifts a hold after a call of the institution was answered about its data (a
    /// daily-limit hold only once midnight has passed).
    pub fn release(&self, institution: &str) {
        let mut holds = self.lock();
        let ended = holds.get(institution).is_some_and(|h| !h.until_midnight || h.until <= Instant::now());
        if ended {
            holds.remove(institution);
            tracing::info!(%institution, "the platform accepts this institution's calls again: hold lifted");
        }
    }

    /// The institutions held, with the reason.
    pub fn held(&self) -> Vec<(String, String)> {
        let now = Instant::now();
        let mut held: Vec<_> = self
            .lock()
            .iter()
            .filter(|(_, hold)| !(hold.until_midnight && hold.until <= now))
            .map(|(code, hold)| (code.clone(), hold.reason.clone()))
            .collect();
        held.sort();
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetrySettings;

    #[test]
    fn a_hold_waits_then_lets_a_probe_through_and_success_lifts_it() {
        let holds = Holds::new(Backoff::new(&RetrySettings { initial_backoff_ms: 40, max_backoff_ms: 40, max_elapsed_secs: 1 }));
        assert_eq!(holds.wait("H1"), None);
        let wait = holds.hold_misconfigured("H1", "returnCode 4");
        assert!(wait <= Duration::from_millis(40));
        assert!(holds.wait("H1").is_some());
        assert_eq!(holds.wait("H2"), None, "other institutions carry on");
        assert_eq!(holds.held(), [("H1".to_owned(), "returnCode 4".to_owned())]);
        std::thread::sleep(wait);
        assert_eq!(holds.wait("H1"), None, "due for a probe");
        holds.release("H1");
        assert!(holds.held().is_empty());
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
