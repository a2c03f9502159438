//! Calls in progress, over all institutions and per institution, with the most seen at once
//! (since start or the last reset): what the latency fault's `per_concurrent_ms` depends on,
//! and what shows a client's concurrency from outside.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::lock;

#[derive(Debug, Default)]
struct Inner {
    total: u64,
    by_institution: HashMap<String, u64>,
    max_total: u64,
    max_by_institution: BTreeMap<String, u64>,
}

/// The calls in progress.
#[derive(Debug, Default)]
pub struct Load {
    inner: Mutex<Inner>,
}

/// One call in progress; it ends when dropped (answered, or the client went away).
#[derive(Debug)]
pub struct InProgress<'a> {
    load: &'a Load,
    institution: Option<String>,
    /// Calls in progress when it began, itself included.
    pub concurrent: u64,
}

impl Load {
    /// A call of `institution` (if its access key names one) begins.
    pub fn enter(&self, institution: Option<&str>) -> InProgress<'_> {
        let mut inner = lock(&self.inner);
        inner.total += 1;
        let concurrent = inner.total;
        inner.max_total = inner.max_total.max(concurrent);
        if let Some(code) = institution {
            let now = inner.by_institution.entry(code.to_owned()).or_default();
            *now += 1;
            let now = *now;
            let max = inner.max_by_institution.entry(code.to_owned()).or_default();
            *max = (*max).max(now);
        }
        InProgress { load: self, institution: institution.map(str::to_owned), concurrent }
    }

    /// The most calls in progress at once, in total and per institution.
    pub fn peaks(&self) -> (u64, BTreeMap<String, u64>) {
        let inner = lock(&self.inner);
        (inner.max_total, inner.max_by_institution.clone())
    }

    /// Forgets the peaks (the calls in progress still count).
    pub fn clear_peaks(&self) {
        let mut inner = lock(&self.inner);
        inner.max_total = inner.total;
        inner.max_by_institution = inner.by_institution.iter().filter(|(_, n)| **n > 0).map(|(k, n)| (k.clone(), *n)).collect();
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        let mut inner = lock(&self.load.inner);
        inner.total = inner.total.saturating_sub(1);
        if let Some(now) = self.institution.as_ref().and_then(|code| inner.by_institution.get_mut(code)) {
            *now = now.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_count_calls_at_once_in_total_and_per_institution() {
        let load = Load::default();
        let a = load.enter(Some("H1"));
        let b = load.enter(Some("H1"));
        let c = load.enter(Some("H2"));
        assert_eq!((a.concurrent, b.concurrent, c.concurrent), (1, 2, 3));
        drop(a);
        drop(b);
        let d = load.enter(None);
        assert_eq!(d.concurrent, 2);
        let (total, by) = load.peaks();
        assert_eq!(total, 3);
        assert_eq!(by, BTreeMap::from([("H1".to_owned(), 2), ("H2".to_owned(), 1)]));
        load.clear_peaks();
        assert_eq!(load.peaks(), (2, BTreeMap::from([("H2".to_owned(), 1)])));
    }
}
