//! The Alibaba CSB gateway signature that every request carries in its headers.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

/// `_api_name` of the provincial gateway (sic).
pub const API_NAME: &str = "hssServives";
/// `_api_version` of the provincial gateway.
pub const API_VERSION: &str = "1.0.0";

/// The CSB headers of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsbHeaders {
    /// `_api_timestamp`: milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// `_api_access_key`.
    pub access_key: String,
    /// `_api_signature`.
    pub signature: String,
}

impl CsbHeaders {
    /// Signs a request made at `timestamp_ms` with the institution's keys.
    pub fn new(access_key: &str, secret_key: &str, timestamp_ms: i64) -> Self {
        CsbHeaders {
            timestamp_ms,
            access_key: access_key.to_owned(),
            signature: signature(secret_key, access_key, API_NAME, timestamp_ms, API_VERSION),
        }
    }

    /// The headers as (name, value) pairs, `Content-Type` aside.
    pub fn pairs(&self) -> [(&'static str, String); 5] {
        [
            ("_api_timestamp", self.timestamp_ms.to_string()),
            ("_api_name", API_NAME.to_owned()),
            ("_api_version", API_VERSION.to_owned()),
            ("_api_access_key", self.access_key.clone()),
            ("_api_signature", self.signature.clone()),
        ]
    }
}

/// The string the gateway signs: the four `_api_*` parameters in alphabetical order.
pub fn string_to_sign(access_key: &str, api_name: &str, timestamp: i64, version: &str) -> String {
    format!("_api_access_key={access_key}&_api_name={api_name}&_api_timestamp={timestamp}&_api_version={version}")
}

/// Base64(HMAC-SHA1(secret key as its literal UTF-8 bytes, string to sign)).
pub fn signature(secret_key: &str, access_key: &str, api_name: &str, timestamp: i64, version: &str) -> String {
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(secret_key.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(string_to_sign(access_key, api_name, timestamp, version).as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Checks a signature in constant time, as the gateway (and the simulator) does.
pub fn verify(secret_key: &str, access_key: &str, api_name: &str, timestamp: i64, version: &str, given: &str) -> bool {
    let Ok(given) = STANDARD.decode(given) else { return false };
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(secret_key.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(string_to_sign(access_key, api_name, timestamp, version).as_bytes());
    mac.verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer_vectors_of_the_spec_digest() {
        assert_eq!(signature("sk456", "ak123", API_NAME, 1592225468715, API_VERSION), "kAu3bv2QCPP3NrQrwskGctNYahk=");
        assert_eq!(
            signature("dGVzdC1zZWNyZXQta2V5LTAwMQ==", "0123456789abcdef0123456789abcdef", API_NAME, 1623325847266, API_VERSION),
            "iox70UU1WpnzaTUNz6isfQp/hV4=",
            "the secret key is used as literal text, not Base64-decoded"
        );
        assert_eq!(signature("sk456", "ak123", API_NAME, 1592225468, API_VERSION), "N1HmrJ0sWUgHggI1cmpO0swmSrE=");
    }

    #[test]
    fn headers_carry_milliseconds_and_verify() {
        let h = CsbHeaders::new("ak123", "sk456", 1592225468715);
        assert_eq!(h.signature, "kAu3bv2QCPP3NrQrwskGctNYahk=");
        assert_eq!(h.pairs()[0], ("_api_timestamp", "1592225468715".to_owned()));
        assert!(verify("sk456", "ak123", API_NAME, 1592225468715, API_VERSION, &h.signature));
        assert!(!verify("sk457", "ak123", API_NAME, 1592225468715, API_VERSION, &h.signature));
        assert!(!verify("sk456", "ak123", API_NAME, 1592225468715, API_VERSION, "not base64!"));
    }
}
