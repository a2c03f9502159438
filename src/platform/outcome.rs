//! The one place that decides what an answer of the platform means: every HTTP status,
//! transport error, body and returnCode ends up as one [`Outcome`].

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::super::spec::field::{excerpt, excerpt_of};

/// The answer body of the platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// 0 transport-level success, -1 failure.
    pub infcode: Value,
    /// The msgid of the request answered.
    #[serde(default)]
    pub inf_refmsgid: String,
    /// When the request was received (Beijing time).
    #[serde(default)]
    pub refmsg_time: String,
    /// When it was answered (Beijing time).
    #[serde(default)]
    pub respond_time: String,
    /// A transport-level error message.
    #[serde(default)]
    pub err_msg: String,
    /// `{"data": {"returnCode": ..., "returnMsg": ..., ...}}`.
    #[serde(default)]
    pub output: Value,
}

/// What a request's answer means for the request and its records.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// infcode 0 and returnCode 1: accepted; `output.data` is kept for ELS7001.
    Accepted(Map<String, Value>),
    /// 17: the same data was already submitted; as good as accepted.
    Duplicate,
    /// 5: the token is invalid or expired; get a new one and resend.
    TokenInvalid,
    /// 9: another caller holds a token with more than 5 minutes left (ELS7001 only).
    TokenStillValid,
    /// 28: more rows than the platform takes in one call; split.
    TooManyRows,
    /// 8, 12–16: the data itself is refused; a person has to look at it.
    Refused { code: u32, message: String },
    /// 11: the institution's calls for today are used up; wait for Beijing midnight.
    DailyLimit,
    /// 2, 3, 4, 30, HTTP 401/403/404/405: a configuration or authorisation problem; hold the
    /// institution's data and alert.
    Misconfigured { code: Option<u32>, message: String },
    /// 6, 7, HTTP 5xx, timeouts, connection errors, non-JSON answers and unknown codes:
    /// retry with backoff.
    Transient { code: Option<u32>, message: String },
}

/// What a returnCode means, in the words of the interface's code table (for people
/// sorting dead letters; "unknown code" for one the table does not have).
pub fn meaning(code: i64) -> &'static str {
    match code {
        1 => "success",
        2 => "wrong interface path",
        3 => "unauthorised",
        4 => "wrong app_code or auth_code",
        5 => "token invalid",
        6 => "service unavailable",
        7 => "network fault",
        8 => "business failure",
        9 => "token still valid",
        11 => "daily call limit reached",
        12 => "empty parameter",
        13 => "wrong dictionary value",
        14 => "wrong format",
        15 => "data not found",
        16 => "wrong data state",
        17 => "duplicate submission",
        28 => "input list too long",
        30 => "no such interface",
        _ => "unknown code",
    }
}

/// rustls reports a certificate it refuses (an unknown issuer, another host's name, an
/// expired one) as an I/O error of kind `InvalidData`, which hyper-rustls wraps in another
/// I/O error.
fn is_tls_refusal(cause: &(dyn std::error::Error + 'static)) -> bool {
    let mut io = cause.downcast_ref::<std::io::Error>();
    while let Some(error) = io {
        if error.kind() == std::io::ErrorKind::InvalidData {
            return true;
        }
        io = error.get_ref().and_then(|inner| inner.downcast_ref::<std::io::Error>());
    }
    false
}

/// The most characters of a transport error's cause kept in an outcome.
const TRANSPORT_CAUSE_CHARS: usize = 200;

/// The most characters of the platform's `returnMsg` kept in an outcome.
pub const PLATFORM_MESSAGE_CHARS: usize = 500;

impl Outcome {
    /// Classifies an HTTP answer.
    pub fn from_http(status: u16, body: &[u8]) -> Outcome {
        let shown = || excerpt(&String::from_utf8_lossy(body));
        match status {
            200..=299 => {}
            401 | 403 | 404 | 405 => {
                return Outcome::Misconfigured {
                    code: None,
                    message: format!("HTTP {status} from the platform gateway (check platform.url and the CSB keys): {}", shown()),
                };
            }
            _ => return Outcome::Transient { code: None, message: format!("HTTP {status}: {}", shown()) },
        }
        match serde_json::from_slice::<Reply>(body) {
            Ok(reply) => Outcome::from_reply(&reply),
            Err(_) => Outcome::Transient { code: None, message: format!("the platform's answer is not the expected JSON: {}", shown()) },
        }
    }

    /// Classifies a transport error (connection refused, reset, timeout, TLS), naming its
    /// innermost cause, the one that says why.
    pub fn from_transport(error: reqwest::Error) -> Outcome {
        // Without the URL: it could carry credentials in other deployments.
        let error = error.without_url();
        let mut innermost: &dyn std::error::Error = &error;
        let mut tls_refused = false;
        while let Some(cause) = innermost.source() {
            tls_refused |= is_tls_refusal(cause);
            innermost = cause;
        }
        let cause = excerpt_of(&innermost.to_string(), TRANSPORT_CAUSE_CHARS);
        let message = if tls_refused {
            format!(
                "the TLS handshake with the platform failed ({cause}): its certificate must name platform.url's host and be \
                 signed by platform.ca_file (PEM) or a system root"
            )
        } else if error.is_timeout() {
            format!("timed out: {cause}")
        } else if error.is_connect() {
            format!("could not connect: {cause}")
        } else {
            format!("transport error: {cause}")
        };
        Outcome::Transient { code: None, message }
    }

    /// Classifies a JSON answer by `infcode` and `output.data.returnCode`. The platform's
    /// message is kept up to [`PLATFORM_MESSAGE_CHARS`] characters, control characters
    /// escaped.
    pub fn from_reply(reply: &Reply) -> Outcome {
        let data = reply.output.get("data").and_then(Value::as_object).cloned().unwrap_or_default();
        let message = data.get("returnMsg").map(text).unwrap_or_default();
        let message = if message.is_empty() { reply.err_msg.clone() } else { message };
        // The platform's words reach logs, dead letters and reject files: never a control
        // character (a forged log line), never more than a paragraph.
        let message = excerpt_of(&message, PLATFORM_MESSAGE_CHARS);
        let infcode = number(&reply.infcode);
        let Some(code) = data.get("returnCode").and_then(number) else {
            return Outcome::Transient {
                code: None,
                message: format!("answer without returnCode (infcode {}): {}", excerpt(&text(&reply.infcode)), excerpt(&message)),
            };
        };
        let code32 = u32::try_from(code).ok();
        match (infcode, code) {
            (Some(0), 1) => Outcome::Accepted(data),
            (_, 1) => Outcome::Transient {
                code: Some(1),
                message: format!("returnCode 1 but infcode {}: {}", excerpt(&text(&reply.infcode)), excerpt(&message)),
            },
            (_, 17) => Outcome::Duplicate,
            (_, 5) => Outcome::TokenInvalid,
            (_, 9) => Outcome::TokenStillValid,
            (_, 28) => Outcome::TooManyRows,
            (_, 11) => Outcome::DailyLimit,
            (_, 8 | 12..=16) => Outcome::Refused { code: code as u32, message },
            (_, 2 | 3 | 4 | 30) => Outcome::Misconfigured { code: code32, message: explain_configuration(code, &message) },
            (_, 6 | 7) => Outcome::Transient { code: code32, message },
            _ => Outcome::Transient { code: code32, message: format!("unknown returnCode {code}: {}", excerpt(&message)) },
        }
    }

    /// The platform's returnCode, when the answer had one.
    pub fn return_code(&self) -> Option<u32> {
        match self {
            Outcome::Accepted(_) => Some(1),
            Outcome::Duplicate => Some(17),
            Outcome::TokenInvalid => Some(5),
            Outcome::TokenStillValid => Some(9),
            Outcome::TooManyRows => Some(28),
            Outcome::DailyLimit => Some(11),
            Outcome::Refused { code, .. } => Some(*code),
            Outcome::Misconfigured { code, .. } | Outcome::Transient { code, .. } => *code,
        }
    }

    /// A short stable name of the outcome's kind, e.g. for a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Accepted(_) => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::TokenInvalid => "token_invalid",
            Outcome::TokenStillValid => "token_still_valid",
            Outcome::TooManyRows => "too_many_rows",
            Outcome::Refused { .. } => "refused",
            Outcome::DailyLimit => "daily_limit",
            Outcome::Misconfigured { .. } => "misconfigured",
            Outcome::Transient { .. } => "transient",
        }
    }

    /// Whether the records of the request are at the platform (1 or 17).
    pub fn is_accepted(&self) -> bool {
        matches!(self, Outcome::Accepted(_) | Outcome::Duplicate)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Accepted(_) => f.write_str("accepted (returnCode 1)"),
            Outcome::Duplicate => f.write_str("already accepted (returnCode 17, duplicate submission)"),
            Outcome::TokenInvalid => f.write_str("returnCode 5: the access token is invalid or expired"),
            Outcome::TokenStillValid => {
                f.write_str("returnCode 9: a token with more than 5 minutes left exists; it may not be fetched again yet")
            }
            Outcome::TooManyRows => f.write_str("returnCode 28: more rows than the platform takes in one call"),
            Outcome::Refused { code, message } => write!(f, "returnCode {code}: {message}"),
            Outcome::DailyLimit => f.write_str("returnCode 11: the daily call limit is reached; calls resume after Beijing midnight"),
            Outcome::Misconfigured { code: Some(code), message } | Outcome::Transient { code: Some(code), message } => {
                write!(f, "returnCode {code}: {message}")
            }
            Outcome::Misconfigured { code: None, message } | Outcome::Transient { code: None, message } => f.write_str(message),
        }
    }
}

fn explain_configuration(code: i64, message: &str) -> String {
    let hint = match code {
        2 => "wrong interface path: platform.url must end in /api/commonInterfaca",
        3 => "not authorised: check the institution's registration with the platform",
        4 => "wrong app_code or auth_code: check the institution's credentials",
        30 => "no such interface: the platform does not know this transaction code",
        _ => "configuration problem",
    };
    if message.is_empty() { hint.to_owned() } else { format!("{hint} (platform says: {})", excerpt(message)) }
}

/// A JSON number or numeric string as an integer (the sample sends codes as strings).
fn number(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A JSON value as display text.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reply(infcode: Value, code: Value) -> Vec<u8> {
        json!({"infcode": infcode, "inf_refmsgid": "m", "output": {"data": {"returnCode": code, "returnMsg": "msg"}}})
            .to_string()
            .into_bytes()
    }

    fn class(o: &Outcome) -> &'static str {
        match o {
            Outcome::Accepted(_) | Outcome::Duplicate => "accepted",
            Outcome::TokenInvalid => "new-token",
            Outcome::TokenStillValid => "token-held",
            Outcome::TooManyRows => "split",
            Outcome::Refused { .. } => "refused",
            Outcome::DailyLimit => "until-midnight",
            Outcome::Misconfigured { .. } => "hold",
            Outcome::Transient { .. } => "retry",
        }
    }

    #[test]
    fn every_return_code_has_its_class_as_number_or_string() {
        let expected = [
            (1, "accepted"),
            (2, "hold"),
            (3, "hold"),
            (4, "hold"),
            (5, "new-token"),
            (6, "retry"),
            (7, "retry"),
            (8, "refused"),
            (9, "token-held"),
            (10, "retry"),
            (11, "until-midnight"),
            (12, "refused"),
            (13, "refused"),
            (14, "refused"),
            (15, "refused"),
            (16, "refused"),
            (17, "accepted"),
            (18, "retry"),
            (28, "split"),
            (30, "hold"),
            (99, "retry"),
            (-1, "retry"),
        ];
        for (code, want) in expected {
            for (infcode, code_value) in [(json!(0), json!(code)), (json!("0"), json!(code.to_string()))] {
                let outcome = Outcome::from_http(200, &reply(infcode, code_value));
                assert_eq!(class(&outcome), want, "returnCode {code}");
                if want != "retry" {
                    assert_eq!(outcome.return_code(), Some(code as u32));
                }
            }
        }
    }

    #[test]
    fn success_needs_infcode_0_and_returncode_1() {
        assert!(Outcome::from_http(200, &reply(json!(0), json!(1))).is_accepted());
        assert!(!Outcome::from_http(200, &reply(json!(-1), json!(1))).is_accepted());
        assert!(!Outcome::from_http(200, &reply(json!(null), json!(1))).is_accepted());
        assert!(Outcome::from_http(200, &reply(json!(-1), json!(17))).is_accepted());
    }

    #[test]
    fn http_and_body_failures_are_classified() {
        assert_eq!(class(&Outcome::from_http(503, b"busy")), "retry");
        assert_eq!(class(&Outcome::from_http(500, b"")), "retry");
        assert_eq!(class(&Outcome::from_http(429, b"")), "retry");
        assert_eq!(class(&Outcome::from_http(401, b"")), "hold");
        assert_eq!(class(&Outcome::from_http(403, b"")), "hold");
        assert_eq!(class(&Outcome::from_http(404, b"")), "hold");
        assert_eq!(class(&Outcome::from_http(200, b"<html>gateway</html>")), "retry");
        assert_eq!(class(&Outcome::from_http(200, b"{\"infcode\": 0}")), "retry");
        assert_eq!(class(&Outcome::from_http(200, &[0xff, 0xfe])), "retry");
        assert_eq!(class(&Outcome::from_http(200, b"{\"infcode\":0,\"output\":{\"data\":{\"returnCode\":\"x\"}}}")), "retry");
    }

    #[tokio::test]
    async fn transport_errors_are_transient() {
        let client = reqwest::Client::builder().connect_timeout(std::time::Duration::from_millis(200)).build().unwrap();
        // Port 9 (discard) on loopback is closed here: connection refused.
        let error = client.post("http://127.0.0.1:9/api/commonInterfaca").send().await.unwrap_err();
        let outcome = Outcome::from_transport(error);
        assert_eq!(class(&outcome), "retry");
        assert!(outcome.to_string().contains("could not connect: Connection refused"), "{outcome}");
    }

    #[test]
    fn refusals_keep_the_platforms_message() {
        let o = Outcome::from_http(200, &reply(json!("0"), json!("13")));
        assert_eq!(o.to_string(), "returnCode 13: msg");
        let o = Outcome::from_http(200, &reply(json!("-1"), json!("4")));
        assert!(o.to_string().contains("wrong app_code or auth_code"), "{o}");
    }

    #[test]
    fn the_platforms_words_carry_no_control_character_and_are_bounded() {
        let forged = json!({"infcode": "x\ny", "output": {"data": {"returnCode": "13", "returnMsg": format!("bad\nINFO forged\r\u{1b}[31m{}", "m".repeat(10_000))}}});
        let o = Outcome::from_http(200, forged.to_string().as_bytes());
        let text = o.to_string();
        assert!(!text.chars().any(char::is_control), "{text}");
        assert!(text.starts_with("returnCode 13: bad\\nINFO forged"), "{text}");
        assert!(text.chars().count() < PLATFORM_MESSAGE_CHARS + 40, "{} characters", text.chars().count());
        let infcode = json!({"infcode": "x\ny".repeat(1000), "output": {"data": {"returnCode": "1"}}});
        let o = Outcome::from_http(200, infcode.to_string().as_bytes());
        assert!(!o.to_string().chars().any(char::is_control) && o.to_string().len() < 200, "{o}");
    }
}
