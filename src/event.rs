//! Stock-movement events as warehouse systems publish them (contract §1): one record per
//! event, with its transaction, institution and optional version.

use serde_json::{Map, Value};

use crate::input::{self, LineError, parse_json_object};
use crate::spec::field::excerpt;
use crate::spec::{Infno, Record, RecordErrors};

mod typed;

/// A valid event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The institution the record belongs to.
    pub fixmedins_code: String,
    /// Grows with each change of the same record; the higher one is the truth.
    pub version: Option<u64>,
    /// The validated record (its infno is the event's).
    pub record: Record,
}

/// One problem of an invalid event: which field (`data.<name>` inside the record) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field, e.g. `infno` or `data.stoin_cnt`; empty for the whole message.
    pub field: String,
    /// The rule it broke, in words.
    pub reason: String,
}

/// Why an event is invalid: every problem found (its message names the first
/// [`PROBLEMS_SHOWN`](crate::spec::field::PROBLEMS_SHOWN) and counts the rest).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", crate::spec::field::first_problems(.0))]
pub struct InvalidEvent(pub Vec<Problem>);

impl std::fmt::Display for Problem {
    /// `field: reason`, or the reason alone for the whole message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() { f.write_str(&self.reason) } else { write!(f, "{}: {}", self.field, self.reason) }
    }
}

impl InvalidEvent {
    fn one(field: &str, reason: impl Into<String>) -> Self {
        InvalidEvent(vec![Problem { field: field.to_owned(), reason: reason.into() }])
    }
}

impl From<LineError> for InvalidEvent {
    fn from(error: LineError) -> Self {
        InvalidEvent::one("", error.to_string())
    }
}

impl RecordErrors {
    /// The errors as event problems, fields prefixed with `prefix` (e.g. `data.`).
    pub fn problems(&self, prefix: &str) -> Vec<Problem> {
        self.0
            .iter()
            .map(|e| Problem {
                field: format!("{prefix}{}", e.field),
                reason: match &e.value {
                    Some(v) => format!("{} (got {v})", e.rule),
                    None => e.rule.to_string(),
                },
            })
            .collect()
    }
}

/// The institutions an event may name.
#[derive(Debug, Clone, Copy)]
pub enum Institutions<'a> {
    /// Only these codes (from the configuration); with exactly one, the code may be omitted.
    Known(&'a [&'a str]),
    /// Any well-formed code (offline validation without a configuration).
    Any,
}

/// The default largest event body, in bytes (`worker.max_event_bytes`): the same as the
/// largest line of a record or event file.
pub const MAX_EVENT_BYTES: usize = input::MAX_LINE_BYTES;

/// Parses and validates one event body, reporting every problem found.
///
/// A valid event is read straight into its record, without a JSON tree; a body that reader
/// does not accept is parsed as a tree and checked by [`from_object`], which names every
/// problem (so the messages do not depend on which reader ran first).
pub fn parse(body: &[u8], institutions: Institutions) -> Result<Event, InvalidEvent> {
    match typed::parse(body, institutions) {
        Some(event) => Ok(event),
        None => from_object(&parse_json_object(body)?, institutions),
    }
}

/// [`parse`], refusing without parsing a body larger than `max_bytes`.
pub fn parse_at_most(body: &[u8], max_bytes: usize, institutions: Institutions) -> Result<Event, InvalidEvent> {
    if body.len() > max_bytes {
        return Err(LineError::TooLong { bytes: body.len() as u64, max: max_bytes }.into());
    }
    parse(body, institutions)
}

/// Validates an event already parsed as a JSON object.
pub fn from_object(object: &Map<String, Value>, institutions: Institutions) -> Result<Event, InvalidEvent> {
    let mut problems = Vec::new();
    let mut problem = |field: &str, reason: String| problems.push(Problem { field: field.to_owned(), reason });

    for name in object.keys() {
        if !["infno", "fixmedins_code", "version", "data"].contains(&name.as_str()) {
            problem(&excerpt(name), "is not a field of an event (expected infno, fixmedins_code, version, data)".into());
        }
    }
    let infno = match object.get("infno") {
        None | Some(Value::Null) => {
            problem("infno", "is required (ELS7002 to ELS7007)".into());
            None
        }
        Some(Value::String(s)) => match s.parse::<Infno>() {
            Ok(infno) if infno.is_upload() => Some(infno),
            Ok(_) => {
                problem("infno", "ELS7001 is not an upload transaction; expected ELS7002 to ELS7007".into());
                None
            }
            Err(e) => {
                problem("infno", e.to_string());
                None
            }
        },
        Some(other) => {
            problem("infno", format!("must be text like \"ELS7002\" (got {})", excerpt(&other.to_string())));
            None
        }
    };
    let fixmedins_code = match (object.get("fixmedins_code"), institutions) {
        (None | Some(Value::Null), Institutions::Known([only])) => Some((*only).to_owned()),
        (None | Some(Value::Null), Institutions::Known(_)) => {
            problem("fixmedins_code", "is required when more than one institution is configured".into());
            None
        }
        (None | Some(Value::Null), Institutions::Any) => Some(String::new()),
        (Some(Value::String(code)), Institutions::Known(known)) if known.contains(&code.as_str()) => Some(code.clone()),
        (Some(Value::String(code)), Institutions::Known(known)) => {
            problem("fixmedins_code", format!("{} is not a configured institution (configured: {})", excerpt(code), known.join(", ")));
            None
        }
        (Some(Value::String(code)), Institutions::Any) if code.chars().count() == 12 && code.chars().all(|c| c.is_ascii_alphanumeric()) => {
            Some(code.clone())
        }
        (Some(other), _) => {
            problem("fixmedins_code", format!("must be a 12-character institution code (got {})", excerpt(&other.to_string())));
            None
        }
    };
    let version = match object.get("version") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
        Some(other) => {
            problem("version", format!("must be an unsigned integer (got {})", excerpt(&other.to_string())));
            None
        }
    };
    let record = match (infno, object.get("data")) {
        (_, None | Some(Value::Null)) => {
            problem("data", "is required: the record, with the spec's field names".into());
            None
        }
        (None, Some(_)) => None,
        (Some(infno), Some(data)) => match Record::parse_value(infno, data) {
            Ok(record) => Some(record),
            Err(errors) => {
                problems.extend(errors.problems("data."));
                None
            }
        },
    };
    match (fixmedins_code, record) {
        (Some(fixmedins_code), Some(record)) if problems.is_empty() => Ok(Event { fixmedins_code, version, record }),
        _ => Err(InvalidEvent(problems)),
    }
}

/// What an event body says about where it belongs, as far as it can be told without
/// validating it (for metrics labels of events that may be invalid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    /// A configured institution it names, or the only one when it names none.
    pub institution: Option<String>,
    /// The upload transaction it names.
    pub infno: Option<Infno>,
}

/// The labels of an event body, for an institution among `known` (the same rule as
/// [`parse`]: with exactly one configured, an event may omit it).
pub fn labels(body: &[u8], known: &[String]) -> Labels {
    #[derive(serde::Deserialize)]
    struct Head {
        infno: Option<Value>,
        fixmedins_code: Option<Value>,
    }
    let head = serde_json::from_slice::<Head>(input::without_bom(body)).ok();
    let infno = head.as_ref().and_then(|h| h.infno.as_ref()?.as_str()?.parse::<Infno>().ok()).filter(|i| i.is_upload());
    let institution = match head.as_ref().map(|h| h.fixmedins_code.as_ref()) {
        Some(None | Some(Value::Null)) if known.len() == 1 => Some(known[0].clone()),
        Some(Some(Value::String(code))) => known.iter().find(|k| *k == code).cloned(),
        _ => None,
    };
    Labels { institution, infno }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn drug_in() -> Value {
        json!({
            "hosp_purc_mgt_detl": "IN-1", "drug_code": "0", "prov_plaf_prod_code": "0", "drug_genname": "阿莫西林",
            "dosform": "胶囊", "spec": "0.25g", "convrat": "24", "pacunt": "盒", "prodentp_name": "某药业",
            "delventp_name": "某医药", "delventp_code": "91320000000000000X", "purc_pric": "12.4", "stoin_cnt": 10,
            "stoin_time": "2026-11-25", "er_flag": "0", "prov_plaf_purc_ord_det_id": "0"
        })
    }

    #[test]
    fn a_valid_event_gives_its_record() {
        let body = json!({"infno": "ELS7002", "fixmedins_code": "H32128200338", "version": 5, "data": drug_in()});
        let event = parse(body.to_string().as_bytes(), Institutions::Known(&["H32128200338"])).unwrap();
        assert_eq!(event.version, Some(5));
        assert_eq!(event.record.key(), "IN-1");
    }

    #[test]
    fn the_only_institution_may_be_omitted() {
        let body = json!({"infno": "ELS7002", "data": drug_in()});
        let event = parse(body.to_string().as_bytes(), Institutions::Known(&["H32128200338"])).unwrap();
        assert_eq!(event.fixmedins_code, "H32128200338");
        let err = parse(body.to_string().as_bytes(), Institutions::Known(&["H32128200338", "H32128200339"])).unwrap_err();
        assert_eq!(err.0[0].field, "fixmedins_code");
    }

    #[test]
    fn every_problem_is_named() {
        let mut data = drug_in();
        data["stoin_cnt"] = json!("-1");
        let body = json!({"infno": "ELS7002", "fixmedins_code": "H00000000000", "version": "x", "data": data, "extra": 1});
        let err = parse(body.to_string().as_bytes(), Institutions::Known(&["H32128200338"])).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["extra", "fixmedins_code", "version", "data.stoin_cnt"]);
        assert!(err.to_string().contains("data.stoin_cnt: must be a non-negative decimal"), "{err}");
    }

    #[test]
    fn a_message_names_twenty_problems_and_counts_the_rest() {
        let mut data = drug_in();
        for n in 0..10_000 {
            data[format!("unknown_{n}")] = json!(1);
        }
        let body = json!({"infno": "ELS7002", "data": data});
        let err = parse(body.to_string().as_bytes(), Institutions::Any).unwrap_err();
        assert_eq!(err.0.len(), 10_000);
        let message = err.to_string();
        assert!(message.ends_with("; and 9980 more problems"), "{message}");
        assert!(message.len() < 3_000, "{} bytes", message.len());
    }

    #[test]
    fn labels_name_only_configured_institutions_and_upload_transactions() {
        let known = ["H32128200338".to_owned()];
        let named = labels(br#"{"infno":"ELS7003","fixmedins_code":"H32128200338","data":1}"#, &known);
        assert_eq!(named, Labels { institution: Some(known[0].clone()), infno: Some(Infno::Els7003) });
        assert_eq!(labels(br#"{"infno":"ELS7001"}"#, &known), Labels { institution: Some(known[0].clone()), infno: None }, "the only one");
        assert_eq!(labels(br#"{"fixmedins_code":"H00000000000"}"#, &known).institution, None);
        assert_eq!(labels(b"not json", &known), Labels { institution: None, infno: None });
    }

    #[test]
    fn malformed_bodies_are_invalid_not_panics() {
        for body in [&b"not json"[..], b"\xff\xfe", b"[]", b"{}", b"{\"infno\": \"ELS7009\", \"data\": {}}", b"{\"infno\": 7002}"] {
            assert!(parse(body, Institutions::Any).is_err());
        }
    }
}
