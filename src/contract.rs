//! Contract §2 on the wire: the headers a dead letter carries and the reasons it names,
//! the retry state the worker keeps in the copies it parks, the stamps `dlq replay` adds,
//! and how times are written in them. The worker writes these, `dlq` reads them; neither
//! owns them.

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::types::{AMQPValue, FieldTable};

/// Why a message is dead-lettered (`x-els-reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Malformed or fails the spec's field rules; never sent.
    Invalid,
    /// The platform refused this record permanently.
    Rejected,
    /// Transient failures outlasted the retry budget.
    Exhausted,
}

impl Reason {
    /// Every reason, in the order of contract §2.
    pub const ALL: [Reason; 3] = [Reason::Invalid, Reason::Rejected, Reason::Exhausted];

    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Invalid => "invalid",
            Reason::Rejected => "rejected",
            Reason::Exhausted => "exhausted",
        }
    }

    /// The reason a header value names, if it is one of them.
    pub fn of(text: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|reason| reason.as_str() == text)
    }
}

/// Header names of contract §2, of the retry state carried through delay queues, and of
/// the stamps `dlq replay` adds.
pub mod header {
    /// Dead-letter reason.
    pub const REASON: &str = "x-els-reason";
    /// Human-readable explanation.
    pub const ERROR: &str = "x-els-error";
    /// The platform's returnCode.
    pub const RETURN_CODE: &str = "x-els-return-code";
    /// Upload attempts made.
    pub const ATTEMPTS: &str = "x-els-attempts";
    /// First failure (RFC 3339).
    pub const FIRST_FAILED_AT: &str = "x-els-first-failed-at";
    /// Last failure (RFC 3339).
    pub const LAST_FAILED_AT: &str = "x-els-last-failed-at";
    /// When a parked copy is due back from its delay queue (RFC 3339), written by the
    /// worker: only a delivery that carries a recent one has its retry state trusted.
    pub const PARKED_UNTIL: &str = "x-els-parked-until";
    /// How many times the message was replayed from the dead-letter queue.
    pub const REPLAYED: &str = "x-els-replayed";
    /// When it was last replayed (RFC 3339).
    pub const REPLAYED_AT: &str = "x-els-replayed-at";
    /// The broker's count of earlier deliveries of the message (quorum queues).
    pub const DELIVERY_COUNT: &str = "x-delivery-count";
}

/// How long after its `x-els-parked-until` a parked message may come back and still have
/// its retry state trusted (it may wait behind a backlog in the work queue).
const PARKED_LATE: chrono::TimeDelta = chrono::TimeDelta::hours(1);
/// How early it may come back (the clocks of the replica that parked it and of the one
/// that receives it may differ).
const PARKED_EARLY: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// The retry state a message carries in its headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryState {
    /// Upload attempts that failed so far.
    pub attempts: u32,
    /// When the first of them failed.
    pub first_failed_at: Option<DateTime<Utc>>,
}

impl RetryState {
    /// The retry state the worker wrote into a message it parked, read from its headers.
    pub fn of(headers: Option<&FieldTable>) -> Self {
        Self::of_at(headers, Utc::now())
    }

    /// [`RetryState::of`] at `now`. Headers decide the retry budget only on a message that
    /// comes back from a delay queue about when the worker said it would
    /// ([`header::PARKED_UNTIL`]); an event published with such headers, or a dead letter
    /// re-published by hand, starts with a fresh budget. A first failure in the future
    /// counts as now. Absent or malformed headers mean no state.
    pub fn of_at(headers: Option<&FieldTable>, now: DateTime<Utc>) -> Self {
        let Some(headers) = headers else { return RetryState::default() };
        let map = headers.inner();
        let time = |name: &str| match map.get(name) {
            Some(AMQPValue::LongString(s)) => DateTime::parse_from_rfc3339(&s.to_string()).ok().map(|t| t.with_timezone(&Utc)),
            _ => None,
        };
        let parked_recently = time(header::PARKED_UNTIL).is_some_and(|due| due - PARKED_EARLY <= now && now <= due + PARKED_LATE);
        if !parked_recently {
            return RetryState::default();
        }
        let attempts = match map.get(header::ATTEMPTS) {
            Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
            Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
            Some(AMQPValue::LongUInt(n)) => *n,
            _ => 0,
        };
        let first_failed_at = time(header::FIRST_FAILED_AT).map(|first| first.min(now));
        RetryState { attempts, first_failed_at }
    }
}

/// An instant as RFC 3339 in UTC with milliseconds, as every time header is written.
pub fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{LongString, ShortString};

    fn time(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn put(headers: &mut FieldTable, name: &str, value: AMQPValue) {
        headers.insert(ShortString::from(name), value);
    }

    fn text(value: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(value))
    }

    #[test]
    fn retry_state_reads_its_headers() {
        let mut headers = FieldTable::default();
        put(&mut headers, header::ATTEMPTS, AMQPValue::LongLongInt(3));
        put(&mut headers, header::FIRST_FAILED_AT, text("2026-11-25T01:02:03.004Z"));
        put(&mut headers, header::PARKED_UNTIL, text("2026-11-25T02:00:00.000Z"));
        let state = RetryState::of_at(Some(&headers), time("2026-11-25T02:00:01Z"));
        assert_eq!(state.attempts, 3);
        assert_eq!(state.first_failed_at.unwrap().to_rfc3339_opts(SecondsFormat::Millis, true), "2026-11-25T01:02:03.004Z");
        assert_eq!(RetryState::of(None), RetryState::default());
    }

    #[test]
    fn only_a_message_back_from_its_delay_queue_carries_a_retry_budget() {
        let now = time("2026-11-25T02:00:00Z");
        let mut forged = FieldTable::default();
        put(&mut forged, header::ATTEMPTS, AMQPValue::LongLongInt(3));
        put(&mut forged, header::FIRST_FAILED_AT, text("1970-01-01T00:00:00.000Z"));
        assert_eq!(RetryState::of_at(Some(&forged), now), RetryState::default(), "a publisher's headers start afresh");

        let mut stale = forged.clone();
        put(&mut stale, header::PARKED_UNTIL, text("2026-11-24T02:00:00.000Z"));
        assert_eq!(RetryState::of_at(Some(&stale), now), RetryState::default(), "a dead letter re-published a day later");
        let mut early = forged.clone();
        put(&mut early, header::PARKED_UNTIL, text("2026-11-25T03:00:00.000Z"));
        assert_eq!(RetryState::of_at(Some(&early), now), RetryState::default(), "not parked by this fleet's clock");

        let mut future = FieldTable::default();
        put(&mut future, header::ATTEMPTS, AMQPValue::LongLongInt(1));
        put(&mut future, header::FIRST_FAILED_AT, text("2099-01-01T00:00:00.000Z"));
        put(&mut future, header::PARKED_UNTIL, text("2026-11-25T01:59:59.000Z"));
        assert_eq!(RetryState::of_at(Some(&future), now).first_failed_at, Some(now), "a first failure in the future counts as now");

        let mut huge = future.clone();
        put(&mut huge, header::ATTEMPTS, AMQPValue::LongLongInt(i64::MAX));
        assert_eq!(RetryState::of_at(Some(&huge), now).attempts, u32::MAX);
    }

    #[test]
    fn reasons_read_back_from_their_header_values() {
        for reason in Reason::ALL {
            assert_eq!(Reason::of(reason.as_str()), Some(reason));
        }
        assert_eq!(Reason::of("lost"), None);
    }
}
