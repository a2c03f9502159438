//! The CSB gateway in front of the platform: it checks the `_api_*` headers and the
//! signature, and answers HTTP 403 itself when they are wrong, before the platform sees the
//! call.

use std::collections::HashMap;

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::config::Institution;
use crate::platform::sign::{self, API_NAME, API_VERSION};

/// Why the gateway refuses a call (HTTP 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// A required `_api_*` header is absent or not text.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// `_api_name` or `_api_version` names no API of this gateway.
    #[error("no API {name} version {version} here (expected {API_NAME} {API_VERSION})")]
    UnknownApi { name: String, version: String },
    /// `_api_timestamp` is not epoch milliseconds close to the gateway's clock.
    #[error("_api_timestamp must be epoch milliseconds within {tolerance_secs} s of the gateway clock")]
    Timestamp { tolerance_secs: i64 },
    /// No institution has this access key.
    #[error("unknown _api_access_key")]
    UnknownAccessKey,
    /// The signature does not match the access key's secret.
    #[error("signature mismatch")]
    Signature,
}

impl GatewayError {
    fn code(&self) -> &'static str {
        match self {
            GatewayError::MissingHeader(_) => "MISSING_HEADER",
            GatewayError::UnknownApi { .. } => "UNKNOWN_API",
            GatewayError::Timestamp { .. } => "TIMESTAMP_EXPIRED",
            GatewayError::UnknownAccessKey => "UNKNOWN_ACCESS_KEY",
            GatewayError::Signature => "SIGNATURE_MISMATCH",
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        (StatusCode::FORBIDDEN, Json(json!({"code": self.code(), "message": self.to_string()}))).into_response()
    }
}

/// The institutions of the configuration, found by their CSB access key.
#[derive(Debug)]
pub struct Gateway {
    by_access_key: HashMap<String, Institution>,
    tolerance: TimeDelta,
}

impl Gateway {
    /// A gateway for `institutions` accepting `_api_timestamp` within `tolerance` of the clock.
    pub fn new(institutions: &[Institution], tolerance: TimeDelta) -> Self {
        let by_access_key = institutions.iter().map(|i| (i.csb_access_key.clone(), i.clone())).collect();
        Gateway { by_access_key, tolerance }
    }

    /// The institution whose access key the call gives, before any check (to count its
    /// calls in progress).
    pub fn claimed(&self, headers: &HeaderMap) -> Option<&str> {
        let access_key = headers.get("_api_access_key")?.to_str().ok()?;
        self.by_access_key.get(access_key).map(|i| i.fixmedins_code.as_str())
    }

    /// The institution that signed the call, or why the call is refused.
    pub fn check(&self, headers: &HeaderMap, now: DateTime<Utc>) -> Result<&Institution, GatewayError> {
        let header = |name: &'static str| headers.get(name).and_then(|v| v.to_str().ok()).ok_or(GatewayError::MissingHeader(name));
        let timestamp = header("_api_timestamp")?;
        let name = header("_api_name")?;
        let version = header("_api_version")?;
        let access_key = header("_api_access_key")?;
        let signature = header("_api_signature")?;
        if name != API_NAME || version != API_VERSION {
            return Err(GatewayError::UnknownApi { name: name.to_owned(), version: version.to_owned() });
        }
        let tolerance_secs = self.tolerance.num_seconds();
        let millis = timestamp.parse::<i64>().map_err(|_| GatewayError::Timestamp { tolerance_secs })?;
        let sent = DateTime::from_timestamp_millis(millis).ok_or(GatewayError::Timestamp { tolerance_secs })?;
        if (now - sent).abs() > self.tolerance {
            return Err(GatewayError::Timestamp { tolerance_secs });
        }
        let institution = self.by_access_key.get(access_key).ok_or(GatewayError::UnknownAccessKey)?;
        let secret = institution.csb_secret_key().expose_secret();
        if !sign::verify(secret, access_key, name, millis, version, signature) {
            return Err(GatewayError::Signature);
        }
        Ok(institution)
    }
}
