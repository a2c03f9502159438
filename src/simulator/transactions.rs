//! The transactions behind a checked envelope: ELS7001 issues tokens, ELS7002–ELS7007 store
//! records.

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use super::api::FaultKind;
use super::reply::{Answer, ReturnCode};
use super::request::Request;
use super::state::Simulator;
use crate::beijing;
use crate::config::Institution;
use crate::spec::{Infno, Record};

/// Longest `app_code` / `auth_code` of ELS7001.
const CREDENTIAL_MAX_CHARS: usize = 50;

/// A transaction's answer, and the injected fault that decided it, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    /// The answer.
    pub answer: Answer,
    /// [`FaultKind::Refusal`] when a refused key decided it.
    pub fault: Option<FaultKind>,
}

impl From<Answer> for Handled {
    fn from(answer: Answer) -> Self {
        Handled { answer, fault: None }
    }
}

impl From<ReturnCode> for Handled {
    fn from(code: ReturnCode) -> Self {
        Answer::code(code).into()
    }
}

/// Carries out a checked request of `institution`.
pub fn handle(sim: &Simulator, institution: &Institution, request: Request, now: DateTime<Utc>) -> Handled {
    match request.infno {
        Infno::Els7001 => get_token(sim, institution, &request.input, now).into(),
        infno => upload(sim, institution, infno, &request.msgid, request.input, now),
    }
}

/// ELS7001: `input = {app_code, auth_code}` (a single row, as the interface text shows).
fn get_token(sim: &Simulator, institution: &Institution, input: &Map<String, Value>, now: DateTime<Utc>) -> Answer {
    let credential = |name: &str| match input.get(name) {
        None | Some(Value::Null) => Err(ReturnCode::EMPTY),
        Some(Value::String(s)) if s.trim().is_empty() => Err(ReturnCode::EMPTY),
        Some(Value::String(s)) if s.chars().count() <= CREDENTIAL_MAX_CHARS => Ok(s.as_str()),
        Some(_) => Err(ReturnCode::FORMAT),
    };
    let (app_code, auth_code) = match (credential("app_code"), credential("auth_code")) {
        (Ok(app), Ok(auth)) => (app, auth),
        (Err(code), _) | (_, Err(code)) => return Answer::code(code),
    };
    if app_code != institution.app_code || auth_code != institution.auth_code().expose_secret() {
        return Answer::code(ReturnCode::WRONG_CREDENTIALS);
    }
    match sim.tokens.issue(&institution.fixmedins_code, now) {
        Ok(token) => {
            let mut data = Map::new();
            data.insert("expireTime".into(), Value::String(beijing::format(token.expires_at)));
            data.insert("accessToken".into(), Value::String(token.value));
            Answer { code: ReturnCode::SUCCESS, data }
        }
        Err(_) => Answer::code(ReturnCode::TOKEN_STILL_VALID),
    }
}

/// ELS7002–ELS7007: `input = {access_token, data: [rows]}`, all rows stored or none.
fn upload(
    sim: &Simulator,
    institution: &Institution,
    infno: Infno,
    msgid: &str,
    mut input: Map<String, Value>,
    now: DateTime<Utc>,
) -> Handled {
    let code = &institution.fixmedins_code;
    let token = input.get("access_token").and_then(Value::as_str).unwrap_or_default();
    if !sim.tokens.accepts(code, token, now) {
        return ReturnCode::TOKEN_INVALID.into();
    }
    let rows = match input.remove("data") {
        Some(Value::Array(rows)) => rows,
        None | Some(Value::Null) => return ReturnCode::EMPTY.into(),
        Some(_) => return ReturnCode::FORMAT.into(),
    };
    if rows.len() > sim.settings.max_rows {
        return ReturnCode::TOO_MANY_ROWS.into();
    }
    if rows.is_empty() {
        return ReturnCode::EMPTY.into();
    }
    let mut accepted = Vec::with_capacity(rows.len());
    for row in rows {
        match Record::parse_value(infno, &row) {
            Ok(record) => accepted.push((record.key().to_owned(), row)),
            // The whole batch is refused, without saying which row was wrong.
            Err(errors) => return ReturnCode(errors.return_code()).into(),
        }
    }
    if let Some(refused) = sim.faults.refusal(accepted.iter().map(|(key, _)| key.as_str())) {
        return Handled { answer: Answer::code(ReturnCode(refused)), fault: Some(FaultKind::Refusal) };
    }
    sim.records.upsert(code, infno, msgid, accepted, now);
    ReturnCode::SUCCESS.into()
}
