//! The daily call limit: calls per institution per Beijing day.
//!
//! Every call that passes the gateway counts, whatever its answer (refused ones and those
//! answered 11 included), as the real platform most likely counts them; calls answered by
//! an injected fault never reached the platform and do not count.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, NaiveDate, Utc};

use super::api::DailyCalls;
use super::lock;
use crate::beijing;

/// The limit and each institution's count for its current day.
#[derive(Debug)]
pub struct DailyLimits {
    limit: u64,
    counts: Mutex<HashMap<String, (NaiveDate, u64)>>,
}

impl DailyLimits {
    /// At most `limit` calls per institution per Beijing day.
    pub fn new(limit: u64) -> Self {
        DailyLimits { limit, counts: Mutex::new(HashMap::new()) }
    }

    /// Counts a call of `institution` at `now`; false when it is above the day's limit.
    pub fn count(&self, institution: &str, now: DateTime<Utc>) -> bool {
        let today = beijing::day(now);
        let mut counts = lock(&self.counts);
        let (day, calls) = counts.entry(institution.to_owned()).or_insert((today, 0));
        if *day != today {
            *day = today;
            *calls = 0;
        }
        *calls += 1;
        *calls <= self.limit
    }

    /// Each institution's count for the last day it called, sorted by institution.
    pub fn view(&self) -> Vec<DailyCalls> {
        let counts = lock(&self.counts);
        let mut view: Vec<DailyCalls> = counts
            .iter()
            .map(|(institution, (day, calls))| DailyCalls { institution: institution.clone(), day: *day, calls: *calls })
            .collect();
        view.sort_by(|a, b| a.institution.cmp(&b.institution));
        view
    }

    /// Forgets every count.
    pub fn clear(&self) {
        lock(&self.counts).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_resets_at_beijing_midnight() {
        let limits = DailyLimits::new(2);
        let before = DateTime::parse_from_rfc3339("2026-11-25T15:59:58Z").map(|t| t.with_timezone(&Utc)).unwrap_or_default();
        let after = DateTime::parse_from_rfc3339("2026-11-25T16:00:00Z").map(|t| t.with_timezone(&Utc)).unwrap_or_default();
        assert!(limits.count("H1", before));
        assert!(limits.count("H1", before));
        assert!(!limits.count("H1", before));
        assert!(limits.count("H2", before), "each institution has its own count");
        assert!(limits.count("H1", after));
        assert_eq!(limits.view()[0].calls, 1);
        assert_eq!(limits.view()[0].day.to_string(), "2026-11-26");
    }
}
