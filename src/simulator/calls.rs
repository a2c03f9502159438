//! The call log: the last calls to the interface, bounded (the oldest are dropped first), and
//! call totals that are never dropped.
//!
//! A logged call holds its record keys, so a full log of 100-row calls takes about 6 KB a
//! call; the capacity (`--call-log-capacity`) bounds the memory.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use super::api::{CallFilter, CallView, CallsPage, Counters, FaultKind};
use super::lock;

#[derive(Debug, Default)]
struct Inner {
    entries: VecDeque<CallView>,
    last_seq: u64,
    dropped: u64,
    by_return_code: BTreeMap<u32, u64>,
    by_http_status: BTreeMap<u16, u64>,
    by_fault: BTreeMap<FaultKind, u64>,
    rows_received: u64,
    rows_accepted: u64,
}

/// The bounded call log with its totals.
#[derive(Debug)]
pub struct CallLog {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl CallLog {
    /// A log keeping the last `capacity` calls (at least one).
    pub fn new(capacity: usize) -> Self {
        CallLog { capacity: capacity.max(1), inner: Mutex::new(Inner::default()) }
    }

    /// Logs a call, numbering it (its `seq` is replaced), and counts it.
    pub fn record(&self, mut call: CallView) {
        let mut inner = lock(&self.inner);
        inner.last_seq += 1;
        call.seq = inner.last_seq;
        if let Some(code) = call.return_code {
            *inner.by_return_code.entry(code).or_default() += 1;
        }
        if let Some(status) = call.http_status {
            *inner.by_http_status.entry(status).or_default() += 1;
        }
        if let Some(fault) = call.fault {
            *inner.by_fault.entry(fault).or_default() += 1;
        }
        let is_upload = call.infno.as_deref().is_some_and(|n| n != "ELS7001");
        if is_upload {
            inner.rows_received += call.rows as u64;
            // Calls answered 1 by the error fault were not carried out.
            if call.return_code == Some(1) && call.fault != Some(FaultKind::Error) {
                inner.rows_accepted += call.rows as u64;
            }
        }
        if inner.entries.len() == self.capacity {
            inner.entries.pop_front();
            inner.dropped += 1;
        }
        inner.entries.push_back(call);
    }

    /// The logged calls matching `filter`, oldest first.
    pub fn page(&self, filter: &CallFilter) -> CallsPage {
        let inner = lock(&self.inner);
        let since = filter.since.unwrap_or(0);
        // Sequence numbers are contiguous: skip straight to the first one after `since`.
        let first_seq = inner.entries.front().map_or(0, |c| c.seq);
        let skip = usize::try_from(since.saturating_add(1).saturating_sub(first_seq)).unwrap_or(usize::MAX);
        let calls = inner
            .entries
            .iter()
            .skip(skip)
            .filter(|c| filter.institution.is_none() || c.institution == filter.institution)
            .filter(|c| filter.infno.is_none() || c.infno == filter.infno)
            .take(filter.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect();
        CallsPage { last_seq: inner.last_seq, dropped: inner.dropped, calls }
    }

    /// The call totals; the fields counted elsewhere (records, tokens, daily calls) are left
    /// at their defaults.
    pub fn counters(&self) -> Counters {
        let inner = lock(&self.inner);
        Counters {
            calls: inner.last_seq,
            by_return_code: inner.by_return_code.clone(),
            by_http_status: inner.by_http_status.clone(),
            by_fault: inner.by_fault.clone(),
            rows_received: inner.rows_received,
            rows_accepted: inner.rows_accepted,
            ..Counters::default()
        }
    }

    /// Forgets every call and total; numbering starts again at 1.
    pub fn clear(&self) {
        *lock(&self.inner) = Inner::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn call(institution: &str, code: u32) -> CallView {
        CallView {
            seq: 0,
            time: Utc::now(),
            path: "/api/commonInterfaca".into(),
            institution: Some(institution.into()),
            infno: Some("ELS7002".into()),
            msgid: None,
            rows: 2,
            keys: vec!["a".into(), "b".into()],
            return_code: Some(code),
            http_status: Some(200),
            fault: None,
            latency_ms: 0,
            concurrent: 0,
        }
    }

    #[test]
    fn the_log_keeps_the_last_calls_and_counts_them_all() {
        let log = CallLog::new(3);
        for code in [1, 14, 1, 1, 5] {
            log.record(call("H1", code));
        }
        let page = log.page(&CallFilter::default());
        assert_eq!((page.last_seq, page.dropped), (5, 2));
        assert_eq!(page.calls.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        let since = log.page(&CallFilter { since: Some(3), ..Default::default() });
        assert_eq!(since.calls.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![4, 5]);
        let counters = log.counters();
        assert_eq!(counters.calls, 5);
        assert_eq!(counters.by_return_code[&1], 3);
        assert_eq!((counters.rows_received, counters.rows_accepted), (10, 6));
        log.record(call("H2", 1));
        let only = log.page(&CallFilter { institution: Some("H2".into()), ..Default::default() });
        assert_eq!(only.calls.len(), 1);
    }
}
