//! Which dead letters a command acts on: by reason, transaction, institution and failure
//! time (`x-els-last-failed-at`). Every condition given must hold; none given selects all.

use chrono::{DateTime, Utc};

use super::letter::{DeadLetter, Reason};
use crate::beijing;
use crate::spec::Infno;

/// The conditions a dead letter must meet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// One of these reasons (any when empty).
    pub reasons: Vec<Reason>,
    /// This transaction.
    pub infno: Option<Infno>,
    /// This institution (`fixmedins_code`).
    pub institution: Option<String>,
    /// Last failure at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Last failure before this instant.
    pub until: Option<DateTime<Utc>>,
}

impl Filter {
    /// The reasons `replay` moves when none is asked for: `invalid` dead letters would
    /// only fail again, and those of unknown origin are left to a person.
    pub const REPLAY_DEFAULT: [Reason; 2] = [Reason::Rejected, Reason::Exhausted];

    /// Whether `letter` meets every condition. A letter without the field a condition
    /// asks about (no failure time, a body without infno) does not meet it.
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        if !self.reasons.is_empty() && !self.reasons.contains(&letter.reason) {
            return false;
        }
        if let Some(infno) = self.infno
            && letter.infno.as_deref().and_then(|i| i.parse::<Infno>().ok()) != Some(infno)
        {
            return false;
        }
        if let Some(code) = &self.institution
            && !letter.institution.as_deref().is_some_and(|c| c.eq_ignore_ascii_case(code))
        {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(failed) = letter.last_failed_at else { return false };
            if self.since.is_some_and(|since| failed < since) || self.until.is_some_and(|until| failed >= until) {
                return false;
            }
        }
        true
    }

    /// The conditions in words, for summaries (`all` when there are none).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.reasons.is_empty() {
            parts.push(format!("reason {}", self.reasons.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" or ")));
        }
        if let Some(infno) = self.infno {
            parts.push(format!("infno {infno}"));
        }
        if let Some(code) = &self.institution {
            parts.push(format!("institution {code}"));
        }
        if let Some(since) = self.since {
            parts.push(format!("failed since {} (Beijing)", beijing::format(since)));
        }
        if let Some(until) = self.until {
            parts.push(format!("failed before {} (Beijing)", beijing::format(until)));
        }
        if parts.is_empty() { "all".to_owned() } else { parts.join(", ") }
    }
}

/// Reads a time given on the command line: RFC 3339 (`2026-11-25T09:30:00+08:00`) or
/// the platform's `yyyy-MM-dd HH:mm:ss` in Beijing time.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    beijing::parse(text)
        .ok_or_else(|| format!("{text:?} is not a time: use RFC 3339 (2026-11-25T09:30:00+08:00) or Beijing time \"2026-11-25 09:30:00\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::BasicProperties;
    use lapin::types::{AMQPValue, FieldTable, LongString};

    fn letter(reason: &str, infno: &str, code: &str, failed: Option<&str>) -> DeadLetter {
        let mut headers = FieldTable::default();
        headers.insert("x-els-reason".into(), AMQPValue::LongString(LongString::from(reason)));
        if let Some(failed) = failed {
            headers.insert("x-els-last-failed-at".into(), AMQPValue::LongString(LongString::from(failed)));
        }
        let body = format!(r#"{{"infno":"{infno}","fixmedins_code":"{code}","data":{{}}}}"#);
        DeadLetter::read(&BasicProperties::default().with_headers(headers), body.as_bytes(), None)
    }

    #[test]
    fn every_condition_must_hold() {
        let a = letter("exhausted", "ELS7002", "H32128200338", Some("2026-11-25T02:00:00Z"));
        let b = letter("rejected", "ELS7004", "H32010600021", Some("2026-11-25T04:00:00Z"));
        let c = letter("invalid", "ELS7002", "H32128200338", None);
        assert!([&a, &b, &c].iter().all(|l| Filter::default().matches(l)));

        let replay = Filter { reasons: Filter::REPLAY_DEFAULT.to_vec(), ..Default::default() };
        assert!(replay.matches(&a) && replay.matches(&b) && !replay.matches(&c));

        let infno = Filter { infno: Some(Infno::Els7002), ..Default::default() };
        assert!(infno.matches(&a) && !infno.matches(&b) && infno.matches(&c));

        let code = Filter { institution: Some("h32010600021".into()), ..Default::default() };
        assert!(!code.matches(&a) && code.matches(&b));

        // 10:00 Beijing is 02:00 UTC: `since` includes it, `until` excludes it.
        let since = Filter { since: Some(parse_time("2026-11-25 10:00:00").unwrap()), ..Default::default() };
        assert!(since.matches(&a) && since.matches(&b) && !since.matches(&c));
        let until = Filter { until: Some(parse_time("2026-11-25T03:00:00Z").unwrap()), ..Default::default() };
        assert!(until.matches(&a) && !until.matches(&b) && !until.matches(&c));
        let until_a = Filter { until: Some(parse_time("2026-11-25T10:00:00+08:00").unwrap()), ..Default::default() };
        assert!(!until_a.matches(&a));
    }

    #[test]
    fn times_are_rfc3339_or_beijing() {
        assert_eq!(parse_time("2026-11-25 08:00:00").unwrap(), parse_time("2026-11-25T00:00:00Z").unwrap());
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
        assert!(parse_time("2026-11-25").is_err());
    }
}
