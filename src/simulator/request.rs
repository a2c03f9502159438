//! The request envelope as the platform checks it, restated from the interface text (table
//! 2) independently of the client's [`Envelope`](crate::platform::Envelope).
//!
//! Every field must be present as a JSON string (unused ones `""`) and `input` an object,
//! else 14; `fixmedins_code` must be the access key's institution, else 3; an unknown
//! `infno` is 30; then, in field order, a required field left empty is 12, a value too long
//! or malformed 14 and an `opter_type` outside 1–3 is 13. Fields not in the table are
//! ignored.

use chrono::NaiveDateTime;
use serde_json::{Map, Value};

use super::reply::ReturnCode;
use crate::spec::Infno;
use crate::spec::field::PlatformTime;

/// How a field is checked beyond its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Text,
    MsgId,
    Time,
    OperatorType,
}

/// (field, max characters, required, shape), in the order of the interface text.
const FIELDS: &[(&str, usize, bool, Shape)] = &[
    ("msgid", 30, true, Shape::MsgId),
    ("mdtrtarea_admvs", 6, true, Shape::Text),
    ("insuplc_admdvs", 6, false, Shape::Text),
    ("recer_sys_code", 10, true, Shape::Text),
    ("dev_no", 100, false, Shape::Text),
    ("dev_safe_info", 2000, false, Shape::Text),
    ("cainfo", 1024, true, Shape::Text),
    ("signtype", 10, false, Shape::Text),
    ("infver", 6, true, Shape::Text),
    ("opter_type", 3, true, Shape::OperatorType),
    ("opter", 30, true, Shape::Text),
    ("opter_name", 50, true, Shape::Text),
    ("inf_time", 19, true, Shape::Time),
    ("fixmedins_code", 12, true, Shape::Text),
    ("fixmedins_name", 20, true, Shape::Text),
    ("sign_no", 30, false, Shape::Text),
    ("fixmedins_soft_fcty", 200, true, Shape::Text),
];

/// The dictionary of `opter_type`: 1 operator, 2 self-service terminal, 3 mobile terminal.
const OPERATOR_TYPES: &[&str] = &["1", "2", "3"];

/// A request body that is a JSON object, before its envelope is checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    fields: Map<String, Value>,
}

/// A request whose envelope passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The transaction.
    pub infno: Infno,
    /// The sender's message id.
    pub msgid: String,
    /// The `input` object.
    pub input: Map<String, Value>,
}

impl Body {
    /// Reads the body; anything but a JSON object is 14.
    pub fn parse(bytes: &[u8]) -> Result<Body, ReturnCode> {
        match serde_json::from_slice(bytes) {
            Ok(Value::Object(fields)) => Ok(Body { fields }),
            _ => Err(ReturnCode::FORMAT),
        }
    }

    /// A string field of the envelope, for the call log.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }

    /// `input.data` when it is an array.
    pub fn rows(&self) -> Option<&Vec<Value>> {
        self.fields.get("input")?.get("data")?.as_array()
    }

    /// Checks the envelope of a call signed by the institution `fixmedins_code`.
    pub fn check(mut self, fixmedins_code: &str) -> Result<Request, ReturnCode> {
        let all_text = std::iter::once("infno").chain(FIELDS.iter().map(|f| f.0)).all(|name| self.text(name).is_some());
        if !all_text || !self.fields.get("input").is_some_and(Value::is_object) {
            return Err(ReturnCode::FORMAT);
        }
        if self.text("fixmedins_code") != Some(fixmedins_code) {
            return Err(ReturnCode::UNAUTHORIZED);
        }
        let infno = self
            .text("infno")
            .and_then(|text| text.parse::<Infno>().ok().filter(|infno| infno.as_str() == text))
            .ok_or(ReturnCode::NO_SUCH_INTERFACE)?;
        for &(name, max, required, shape) in FIELDS {
            let value = self.text(name).unwrap_or_default();
            check_field(value, max, required, shape, fixmedins_code)?;
        }
        let msgid = self.text("msgid").unwrap_or_default().to_owned();
        let input = match self.fields.remove("input") {
            Some(Value::Object(input)) => input,
            _ => return Err(ReturnCode::FORMAT),
        };
        Ok(Request { infno, msgid, input })
    }
}

fn check_field(value: &str, max: usize, required: bool, shape: Shape, fixmedins_code: &str) -> Result<(), ReturnCode> {
    if value.trim().is_empty() {
        return if required { Err(ReturnCode::EMPTY) } else { Ok(()) };
    }
    if value.chars().count() > max {
        return Err(ReturnCode::FORMAT);
    }
    let ok = match shape {
        Shape::Text => true,
        Shape::MsgId => is_msgid(value, fixmedins_code),
        Shape::Time => value.len() == 19 && PlatformTime::parse(value).is_some(),
        Shape::OperatorType => return if OPERATOR_TYPES.contains(&value) { Ok(()) } else { Err(ReturnCode::DICTIONARY) },
    };
    if ok { Ok(()) } else { Err(ReturnCode::FORMAT) }
}

/// `fixmedins_code` (12) + `yyyyMMddHHmmss` (14) + 4 digits.
fn is_msgid(msgid: &str, fixmedins_code: &str) -> bool {
    let Some(rest) = msgid.strip_prefix(fixmedins_code) else { return false };
    rest.len() == 18 && rest.bytes().all(|b| b.is_ascii_digit()) && NaiveDateTime::parse_from_str(&rest[..14], "%Y%m%d%H%M%S").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CODE: &str = "H32128200338";

    fn envelope() -> Value {
        json!({
            "infno": "ELS7002", "msgid": "H32128200338202207081220021453", "mdtrtarea_admvs": "321282",
            "insuplc_admdvs": "", "recer_sys_code": "ELS", "dev_no": "", "dev_safe_info": "", "cainfo": "ca",
            "signtype": "SM3", "infver": "V1.0", "opter_type": "3", "opter": "mpc", "opter_name": "mpc",
            "inf_time": "2022-07-08 12:20:02", "fixmedins_code": CODE, "fixmedins_name": "靖江市人民医院",
            "sign_no": "", "fixmedins_soft_fcty": "vendor", "input": {"data": []}
        })
    }

    fn check(body: &Value) -> Result<Request, ReturnCode> {
        Body::parse(body.to_string().as_bytes())?.check(CODE)
    }

    fn with(field: &str, value: Value) -> Result<Request, ReturnCode> {
        let mut body = envelope();
        body[field] = value;
        check(&body)
    }

    #[test]
    fn the_official_sample_envelope_passes() {
        let request = check(&envelope()).expect("valid envelope");
        assert_eq!((request.infno, request.msgid.len()), (Infno::Els7002, 30));
    }

    #[test]
    fn each_envelope_rule_has_its_code() {
        assert_eq!(Body::parse(b"{not json"), Err(ReturnCode::FORMAT));
        assert_eq!(Body::parse(b"[1]"), Err(ReturnCode::FORMAT));
        let mut absent = envelope();
        absent.as_object_mut().map(|o| o.remove("dev_no"));
        assert_eq!(check(&absent), Err(ReturnCode::FORMAT));
        assert_eq!(with("dev_no", Value::Null), Err(ReturnCode::FORMAT));
        assert_eq!(with("input", json!("text")), Err(ReturnCode::FORMAT));
        assert_eq!(with("fixmedins_code", json!("H32128200339")), Err(ReturnCode::UNAUTHORIZED));
        assert_eq!(with("infno", json!("ELS7008")), Err(ReturnCode::NO_SUCH_INTERFACE));
        assert_eq!(with("infno", json!("els7002")), Err(ReturnCode::NO_SUCH_INTERFACE));
        assert_eq!(with("cainfo", json!("")), Err(ReturnCode::EMPTY));
        assert_eq!(with("mdtrtarea_admvs", json!("3212820")), Err(ReturnCode::FORMAT));
        assert_eq!(with("opter_type", json!("4")), Err(ReturnCode::DICTIONARY));
        assert_eq!(with("inf_time", json!("2022-07-08")), Err(ReturnCode::FORMAT));
        assert_eq!(with("msgid", json!("H3212820033820220708122002145")), Err(ReturnCode::FORMAT));
        assert_eq!(with("msgid", json!("H32128200339202207081220021453")), Err(ReturnCode::FORMAT));
        assert_eq!(with("msgid", json!("H32128200338202213081220021453")), Err(ReturnCode::FORMAT));
        assert!(with("signtype", json!("")).is_ok(), "an optional field may be empty");
    }
}
