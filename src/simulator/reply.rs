//! The platform's answers: its returnCodes with their official messages, and the reply body
//! `{infcode, inf_refmsgid, refmsg_time, respond_time, err_msg, output: {data: {...}}}`.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Map, Value, json};

use crate::beijing;

/// A returnCode of the provincial interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReturnCode(pub u32);

impl ReturnCode {
    /// 1: success.
    pub const SUCCESS: ReturnCode = ReturnCode(1);
    /// 2: wrong interface path.
    pub const WRONG_PATH: ReturnCode = ReturnCode(2);
    /// 3: not authorised.
    pub const UNAUTHORIZED: ReturnCode = ReturnCode(3);
    /// 4: wrong app_code or auth_code.
    pub const WRONG_CREDENTIALS: ReturnCode = ReturnCode(4);
    /// 5: the token is invalid.
    pub const TOKEN_INVALID: ReturnCode = ReturnCode(5);
    /// 9: the current token has too much time left to fetch another.
    pub const TOKEN_STILL_VALID: ReturnCode = ReturnCode(9);
    /// 11: the daily call limit is reached.
    pub const DAILY_LIMIT: ReturnCode = ReturnCode(11);
    /// 12: an empty parameter.
    pub const EMPTY: ReturnCode = ReturnCode(12);
    /// 13: a value outside its dictionary.
    pub const DICTIONARY: ReturnCode = ReturnCode(13);
    /// 14: a malformed parameter.
    pub const FORMAT: ReturnCode = ReturnCode(14);
    /// 28: too many rows.
    pub const TOO_MANY_ROWS: ReturnCode = ReturnCode(28);
    /// 30: no such interface.
    pub const NO_SUCH_INTERFACE: ReturnCode = ReturnCode(30);

    /// The official message of the code (table 20 of the interface text).
    pub fn message(self) -> &'static str {
        match self.0 {
            1 => "业务执行成功",
            2 => "访问接口错误，请访问公共接口/api/commonInterfaca",
            3 => "访问未授权，请得到授权后访问",
            4 => "机构名或授权码错误，请使用正确的机构名和授权码重试",
            5 => "令牌无效，请重新获取令牌",
            6 => "服务不可用",
            7 => "网络故障",
            8 => "业务执行失败",
            9 => "令牌有效期未超过5分钟，不能再次获取令牌",
            11 => "超过每日最大访问次数",
            12 => "参数不能为空",
            13 => "参数字典不正确",
            14 => "参数格式不正确",
            15 => "数据不存在",
            16 => "数据状态不符",
            17 => "数据重复提交",
            28 => "接口入参集合长度过长",
            30 => "该接口不存在",
            _ => "未知错误",
        }
    }
}

/// Numbers the platform's own message ids, `inf_refmsgid`: the receiver's area code (6),
/// Beijing `yyyyMMddHHmmss` (14) and a 10-digit sequence, as the interface text defines it.
#[derive(Debug, Default)]
pub struct RefMsgIds {
    next: AtomicU64,
}

/// The receiver's area code in `inf_refmsgid`: the Jiangsu provincial bureau.
const RECEIVER_AREA: &str = "320000";

impl RefMsgIds {
    /// The next id, stamped with `now`.
    pub fn next(&self, now: DateTime<Utc>) -> String {
        let sequence = self.next.fetch_add(1, Ordering::Relaxed) % 10_000_000_000;
        format!("{RECEIVER_AREA}{}{sequence:010}", beijing::at(now).format("%Y%m%d%H%M%S"))
    }
}

/// A platform reply before it is sent: the returnCode and any further `output.data` fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The returnCode.
    pub code: ReturnCode,
    /// Fields of `output.data` besides `returnCode` and `returnMsg` (ELS7001's token).
    pub data: Map<String, Value>,
}

impl Answer {
    /// An answer with nothing but `code`.
    pub fn code(code: ReturnCode) -> Self {
        Answer { code, data: Map::new() }
    }

    /// The HTTP 200 reply: `infcode` "0" only for returnCode 1, codes as JSON strings like
    /// the official sample, times as `yyyyMMddHHmmssSSS` (Beijing), `err_msg` repeating the
    /// message of a failure; `clock_offset` is the platform clock's (see
    /// [`Settings::clock_offset`](super::Settings::clock_offset)).
    pub fn into_response(self, inf_refmsgid: String, received: DateTime<Utc>, clock_offset: TimeDelta) -> Response {
        let success = self.code == ReturnCode::SUCCESS;
        let message = self.code.message();
        let mut data = Map::new();
        data.insert("returnCode".into(), Value::String(self.code.0.to_string()));
        data.insert("returnMsg".into(), Value::String(message.into()));
        data.extend(self.data);
        let body = json!({
            "infcode": if success { "0" } else { "-1" },
            "inf_refmsgid": inf_refmsgid,
            "refmsg_time": stamp(received),
            "respond_time": stamp(Utc::now() + clock_offset),
            "err_msg": if success { "" } else { message },
            "output": {"data": data},
        });
        (StatusCode::OK, Json(body)).into_response()
    }
}

/// `yyyyMMddHHmmssSSS` in Beijing time, the reply's time format.
fn stamp(instant: DateTime<Utc>) -> String {
    beijing::at(instant).format("%Y%m%d%H%M%S%3f").to_string()
}

/// A small JSON error answered with an HTTP status, as a gateway in front of the platform
/// would (outages, injected HTTP errors, hung calls).
pub fn http_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"code": status.as_u16().to_string(), "message": message}))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refmsgids_are_30_characters_and_count() {
        let ids = RefMsgIds::default();
        let now = DateTime::parse_from_rfc3339("2026-11-25T16:30:00Z").map(|t| t.with_timezone(&Utc)).unwrap_or_default();
        assert_eq!(ids.next(now), "320000202611260030000000000000");
        assert_eq!(ids.next(now), "320000202611260030000000000001");
    }

    #[test]
    fn every_code_of_the_table_has_its_message() {
        for code in [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 28, 30] {
            assert_ne!(ReturnCode(code).message(), "未知错误", "{code}");
        }
    }
}
