//! One dead letter as an operator sees it: the headers of contract §2 (why, what the
//! platform said, how many attempts, when), the replay stamps, and what the body says
//! (transaction, institution, record key). Reading never fails: a header that is missing
//! or of an unexpected type is simply absent, a body that is not JSON is kept as text.

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;
use serde_json::{Value, json};

use crate::contract::{self, header, rfc3339};
use crate::spec::Infno;

/// Why a message is in the dead-letter queue (`x-els-reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// Malformed or against the spec's field rules; never sent.
    Invalid,
    /// The platform refused the record permanently.
    Rejected,
    /// Transient failures outlasted the retry budget.
    Exhausted,
    /// No `x-els-reason`, or one this version does not know.
    Other,
}

impl Reason {
    /// The reason named by a header value.
    pub fn of(text: Option<&str>) -> Reason {
        match text.and_then(contract::Reason::of) {
            Some(contract::Reason::Invalid) => Reason::Invalid,
            Some(contract::Reason::Rejected) => Reason::Rejected,
            Some(contract::Reason::Exhausted) => Reason::Exhausted,
            None => Reason::Other,
        }
    }

    /// The word shown and used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Invalid => "invalid",
            Reason::Rejected => "rejected",
            Reason::Exhausted => "exhausted",
            Reason::Other => "other",
        }
    }
}

/// The body of a dead letter.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A JSON value (normally an event object).
    Json(Value),
    /// Not JSON: the bytes as text (invalid UTF-8 replaced).
    Text(String),
}

/// A dead letter, read from a message's properties and body.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The `message_id` property.
    pub message_id: Option<String>,
    /// `x-els-reason`.
    pub reason: Reason,
    /// `x-els-error`.
    pub error: Option<String>,
    /// `x-els-return-code`.
    pub return_code: Option<i64>,
    /// `x-els-attempts`.
    pub attempts: Option<i64>,
    /// `x-els-first-failed-at`.
    pub first_failed_at: Option<DateTime<Utc>>,
    /// `x-els-last-failed-at`: the failure time that filters and statistics use.
    pub last_failed_at: Option<DateTime<Utc>>,
    /// `x-els-replayed` (0 when never replayed).
    pub replayed: i64,
    /// `x-els-replayed-at`.
    pub replayed_at: Option<DateTime<Utc>>,
    /// `x-delivery-count`: how often the broker delivered it before (reads included).
    pub delivery_count: Option<i64>,
    /// The body's `infno`, as written.
    pub infno: Option<String>,
    /// The body's `fixmedins_code`, or the only configured institution when it is omitted.
    pub institution: Option<String>,
    /// The record key (`hosp_purc_mgt_detl` or `hosp_retn_mgt_detl` of `data`).
    pub key: Option<String>,
    /// The body.
    pub body: Body,
}

impl DeadLetter {
    /// Reads a message. `only_institution` is the institution of a configuration with
    /// exactly one, which events may omit (contract §1).
    pub fn read(properties: &BasicProperties, body: &[u8], only_institution: Option<&str>) -> DeadLetter {
        let headers = properties.headers().as_ref();
        let body = match serde_json::from_slice::<Value>(body) {
            Ok(value) => Body::Json(value),
            Err(_) => Body::Text(String::from_utf8_lossy(body).into_owned()),
        };
        let (infno, institution, key) = match &body {
            Body::Json(Value::Object(event)) => {
                let infno = event.get("infno").and_then(Value::as_str).map(|s| s.trim().to_owned());
                let institution = match event.get("fixmedins_code") {
                    Some(Value::String(code)) => Some(code.trim().to_owned()),
                    None | Some(Value::Null) => only_institution.map(str::to_owned),
                    Some(_) => None,
                };
                let key = infno
                    .as_deref()
                    .and_then(|i| i.parse::<Infno>().ok())
                    .and_then(|i| event.get("data").and_then(|d| d.get(i.key_field())))
                    .and_then(|k| match k {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    });
                (infno, institution, key)
            }
            _ => (None, None, None),
        };
        DeadLetter {
            message_id: properties.message_id().as_ref().map(|id| id.to_string()),
            reason: Reason::of(text(headers, header::REASON).as_deref()),
            error: text(headers, header::ERROR),
            return_code: integer(headers, header::RETURN_CODE),
            attempts: integer(headers, header::ATTEMPTS),
            first_failed_at: time(headers, header::FIRST_FAILED_AT),
            last_failed_at: time(headers, header::LAST_FAILED_AT),
            replayed: integer(headers, header::REPLAYED).unwrap_or(0),
            replayed_at: time(headers, header::REPLAYED_AT),
            delivery_count: integer(headers, header::DELIVERY_COUNT),
            infno,
            institution,
            key,
            body,
        }
    }

    /// The contract's routing key `<infno>.<fixmedins_code>`, when the body names both.
    pub fn routing_key(&self) -> Option<String> {
        match (&self.infno, &self.institution) {
            (Some(infno), Some(code)) if !infno.is_empty() && !code.is_empty() => Some(format!("{infno}.{code}")),
            _ => None,
        }
    }

    /// The record (`data` of the event), or the whole body when it is not an event.
    pub fn record(&self) -> Value {
        match &self.body {
            Body::Json(Value::Object(event)) if event.contains_key("data") => event["data"].clone(),
            Body::Json(other) => other.clone(),
            Body::Text(text) => Value::String(text.clone()),
        }
    }

    /// Everything known about the dead letter, as one JSON object (for `--json`).
    pub fn to_json(&self) -> Value {
        json!({
            "message_id": self.message_id,
            "reason": self.reason.as_str(),
            "error": self.error,
            "return_code": self.return_code,
            "attempts": self.attempts,
            "first_failed_at": self.first_failed_at.map(rfc3339),
            "last_failed_at": self.last_failed_at.map(rfc3339),
            "replayed": self.replayed,
            "replayed_at": self.replayed_at.map(rfc3339),
            "delivery_count": self.delivery_count,
            "infno": self.infno,
            "institution": self.institution,
            "key": self.key,
            "record": self.record(),
        })
    }
}

fn value<'h>(headers: Option<&'h FieldTable>, name: &str) -> Option<&'h AMQPValue> {
    headers.and_then(|h| h.inner().get(name))
}

/// A header as text (string values only).
fn text(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match value(headers, name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// A header as an integer (any integer type, or text holding one).
pub(crate) fn integer(headers: Option<&FieldTable>, name: &str) -> Option<i64> {
    match value(headers, name)? {
        AMQPValue::ShortShortInt(n) => Some((*n).into()),
        AMQPValue::ShortShortUInt(n) => Some((*n).into()),
        AMQPValue::ShortInt(n) => Some((*n).into()),
        AMQPValue::ShortUInt(n) => Some((*n).into()),
        AMQPValue::LongInt(n) => Some((*n).into()),
        AMQPValue::LongUInt(n) => Some((*n).into()),
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongString(s) => s.to_string().trim().parse().ok(),
        _ => None,
    }
}

fn time(headers: Option<&FieldTable>, name: &str) -> Option<DateTime<Utc>> {
    let text = text(headers, name)?;
    DateTime::parse_from_rfc3339(text.trim()).ok().map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{LongString, ShortString};

    fn headers(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (name, value) in pairs {
            table.insert(ShortString::from(*name), value.clone());
        }
        table
    }

    fn s(text: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(text))
    }

    #[test]
    fn reads_the_contract_headers_and_the_event() {
        let table = headers(&[
            ("x-els-reason", s("rejected")),
            ("x-els-error", s("returnCode 13: no such drug")),
            ("x-els-return-code", AMQPValue::LongLongInt(13)),
            ("x-els-attempts", AMQPValue::LongInt(2)),
            ("x-els-first-failed-at", s("2026-11-25T01:00:00.000Z")),
            ("x-els-last-failed-at", s("2026-11-25T01:30:00.000Z")),
            ("x-delivery-count", AMQPValue::LongLongInt(3)),
        ]);
        let properties = BasicProperties::default().with_headers(table).with_message_id("m-1".into());
        let body = br#"{"infno":"ELS7006","fixmedins_code":"H32128200338","data":{"hosp_retn_mgt_detl":"R-1"}}"#;
        let letter = DeadLetter::read(&properties, body, None);
        assert_eq!(letter.reason, Reason::Rejected);
        assert_eq!(letter.return_code, Some(13));
        assert_eq!(letter.attempts, Some(2));
        assert_eq!(letter.delivery_count, Some(3));
        assert_eq!(letter.replayed, 0);
        assert_eq!(rfc3339(letter.last_failed_at.unwrap()), "2026-11-25T01:30:00.000Z");
        assert_eq!(letter.key.as_deref(), Some("R-1"));
        assert_eq!(letter.routing_key().as_deref(), Some("ELS7006.H32128200338"));
        assert_eq!(letter.message_id.as_deref(), Some("m-1"));
        assert_eq!(letter.record(), json!({"hosp_retn_mgt_detl": "R-1"}));
    }

    #[test]
    fn anything_else_is_read_without_failing() {
        let properties = BasicProperties::default().with_headers(headers(&[("x-els-reason", s("lost")), ("x-els-attempts", s("x"))]));
        let letter = DeadLetter::read(&properties, b"\xff{not json", Some("H32128200338"));
        assert_eq!(letter.reason, Reason::Other);
        assert_eq!(letter.attempts, None);
        assert_eq!(letter.institution, None);
        assert_eq!(letter.routing_key(), None);
        assert!(matches!(letter.body, Body::Text(_)));

        let omitted = DeadLetter::read(&BasicProperties::default(), br#"{"infno":"ELS7002","data":{}}"#, Some("H32128200338"));
        assert_eq!(omitted.reason, Reason::Other);
        assert_eq!(omitted.routing_key().as_deref(), Some("ELS7002.H32128200338"));
        assert_eq!(omitted.key, None);
    }
}
