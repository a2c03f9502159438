//! Everything the simulator holds, in memory only: the gateway's keys, tokens, records, the
//! call log, daily counts and faults, each behind its own short-held lock.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Settings;
use super::api::{Counters, SettingsView};
use super::calls::CallLog;
use super::faults::Faults;
use super::gateway::Gateway;
use super::limits::DailyLimits;
use super::load::Load;
use super::records::Records;
use super::reply::RefMsgIds;
use super::tokens::Tokens;
use crate::config::Institution;

/// The state of one simulated platform, shared by every request.
#[derive(Debug)]
pub struct Simulator {
    /// The command-line settings.
    pub settings: Settings,
    /// The CSB gateway with the institutions' keys.
    pub gateway: Gateway,
    /// ELS7001 tokens.
    pub tokens: Tokens,
    /// Stored records.
    pub records: Records,
    /// The bounded call log and call totals.
    pub calls: CallLog,
    /// Daily call counts.
    pub limits: DailyLimits,
    /// Injected faults.
    pub faults: Faults,
    /// Calls in progress and the most at once.
    pub load: Load,
    /// The platform's own message ids.
    pub refmsgids: RefMsgIds,
    /// Cancelled at shutdown, ending hung calls and latency early.
    pub shutdown: CancellationToken,
    institutions: Vec<String>,
}

impl Simulator {
    /// A platform for `institutions` with `settings`, holding nothing yet.
    pub fn new(settings: Settings, institutions: &[Institution]) -> Self {
        let codes: Vec<String> = institutions.iter().map(|i| i.fixmedins_code.clone()).collect();
        Simulator {
            gateway: Gateway::new(institutions, settings.timestamp_tolerance),
            tokens: Tokens::new(codes.clone(), settings.token_validity, settings.token_refresh_window),
            records: Records::default(),
            calls: CallLog::new(settings.call_log_capacity),
            limits: DailyLimits::new(settings.daily_call_limit),
            faults: Faults::default(),
            load: Load::default(),
            refmsgids: RefMsgIds::default(),
            shutdown: CancellationToken::new(),
            institutions: codes,
            settings,
        }
    }

    /// Forgets every record, token, logged call, count, fault and peak of concurrency.
    pub fn reset(&self) {
        self.faults.clear();
        self.tokens.clear();
        self.records.clear();
        self.calls.clear();
        self.limits.clear();
        self.load.clear_peaks();
    }

    /// The platform's clock: this host's, shifted by [`Settings::clock_offset`].
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + self.settings.clock_offset
    }

    /// Waits `duration`, or less if the simulator shuts down meanwhile.
    pub async fn pause(&self, duration: Duration) {
        if !duration.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(duration) => {}
                () = self.shutdown.cancelled() => {}
            }
        }
    }

    /// Every total: calls, records, tokens and daily counts.
    pub fn counters(&self) -> Counters {
        let records = self.records.totals();
        let (max_concurrent_calls, max_concurrent_calls_by_institution) = self.load.peaks();
        Counters {
            max_concurrent_calls,
            max_concurrent_calls_by_institution,
            records_stored: records.stored,
            records_created: records.created,
            records_updated: records.updated,
            tokens_issued: self.tokens.issued(),
            daily_calls: self.limits.view(),
            ..self.calls.counters()
        }
    }

    /// The settings in force.
    pub fn settings_view(&self) -> SettingsView {
        let s = &self.settings;
        SettingsView {
            token_validity_secs: secs(s.token_validity),
            token_refresh_window_secs: secs(s.token_refresh_window),
            daily_call_limit: s.daily_call_limit,
            timestamp_tolerance_secs: secs(s.timestamp_tolerance),
            max_rows: s.max_rows,
            call_log_capacity: s.call_log_capacity,
            clock_offset_secs: s.clock_offset.num_seconds(),
            institutions: self.institutions.clone(),
        }
    }
}

fn secs(delta: chrono::TimeDelta) -> u64 {
    u64::try_from(delta.num_seconds()).unwrap_or_default()
}
