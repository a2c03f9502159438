//! The HTTP client of the provincial platform: signs, sends and classifies one request.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use reqwest::header::CONTENT_TYPE;
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::{Value, json};

use super::envelope::{Envelope, MsgIds};
use super::outcome::Outcome;
use super::sign::CsbHeaders;
use crate::config::{DecimalFormat, Institution, PlatformSettings};
use crate::spec::{Infno, Record};

/// Body bytes reserved per record of an upload: a record's JSON is 500–800 bytes.
const BODY_BYTES_PER_RECORD: usize = 1024;

/// Body bytes reserved at least (the envelope around the records, a token request).
const MIN_BODY_BYTES: usize = 1024;

/// Why the client cannot be built; a configuration problem.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA file for an https platform cannot be read or parsed.
    #[error("platform.ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
    /// reqwest refused the settings.
    #[error("cannot build the HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

/// One request made and what its answer means.
#[derive(Debug, Clone)]
pub struct Call {
    /// The msgid the request carried.
    pub msgid: String,
    /// The classified answer.
    pub outcome: Outcome,
}

/// The `input` of an upload transaction.
#[derive(Serialize)]
struct UploadInput<'a, R> {
    access_token: &'a str,
    data: Vec<R>,
}

/// The HTTP client settings of every request to the platform: its time limits and the
/// private CA of `platform.ca_file`, if any.
pub fn http_builder(settings: &PlatformSettings) -> Result<reqwest::ClientBuilder, ClientError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .timeout(Duration::from_millis(settings.timeout_ms))
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!("els-bridge/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &settings.ca_file {
        let ca_error = |reason: String| ClientError::CaFile { path: path.display().to_string(), reason };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        for certificate in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(e.to_string()))? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    Ok(builder)
}

/// Sends signed requests to the platform; cheap to clone and share.
#[derive(Debug, Clone)]
pub struct PlatformClient {
    http: reqwest::Client,
    url: String,
    decimals_as_numbers: bool,
    msgids: Arc<MsgIds>,
}

impl PlatformClient {
    /// A client for `settings`, numbering messages with `msgids`.
    pub fn new(settings: &PlatformSettings, msgids: Arc<MsgIds>) -> Result<Self, ClientError> {
        Ok(PlatformClient {
            http: http_builder(settings)?.build()?,
            url: settings.url.clone(),
            decimals_as_numbers: settings.decimal_format == DecimalFormat::Number,
            msgids,
        })
    }

    /// ELS7001: asks for a new access token.
    pub async fn fetch_token(&self, institution: &Institution) -> Call {
        let input = json!({
            "app_code": institution.app_code,
            "auth_code": institution.auth_code().expose_secret(),
        });
        self.call(institution, Infno::Els7001, input, 0).await
    }

    /// Uploads `records` (at most 100, all of `infno`) with `token`.
    pub async fn upload<'r>(
        &self,
        institution: &Institution,
        infno: Infno,
        token: &str,
        records: impl IntoIterator<Item = &'r Record>,
    ) -> Call {
        let records: Vec<&Record> = records.into_iter().collect();
        let body_bytes = records.len() * BODY_BYTES_PER_RECORD;
        if self.decimals_as_numbers {
            let data: Vec<Value> = records.into_iter().map(|r| r.to_json(true)).collect();
            self.call(institution, infno, UploadInput { access_token: token, data }, body_bytes).await
        } else {
            // Straight into the body: the same JSON as `Record::to_json(false)`, without
            // building it as a tree first.
            self.call(institution, infno, UploadInput { access_token: token, data: records }, body_bytes).await
        }
    }

    /// Sends one transaction and classifies the answer; never fails, every failure is an
    /// [`Outcome`]. The body is written into `body_bytes` reserved at once (beyond them
    /// it grows): growing a 100-record body from empty copies it a dozen times.
    async fn call<I: Serialize>(&self, institution: &Institution, infno: Infno, input: I, body_bytes: usize) -> Call {
        let msgid = self.msgids.next(&institution.fixmedins_code).await;
        let now = Utc::now();
        let envelope = Envelope::new(institution, infno, msgid.clone(), now, input);
        let mut body = Vec::with_capacity(body_bytes.max(MIN_BODY_BYTES));
        if let Err(error) = serde_json::to_writer(&mut body, &envelope) {
            // Not met with our own types; classified as reqwest's `json` did it.
            let outcome = Outcome::Transient { code: None, message: format!("cannot encode the request: {error}") };
            return Call { msgid, outcome };
        }
        let headers = CsbHeaders::new(&institution.csb_access_key, institution.csb_secret_key().expose_secret(), now.timestamp_millis());
        let mut request = self.http.post(&self.url).header(CONTENT_TYPE, "application/json").body(body);
        for (name, value) in headers.pairs() {
            request = request.header(name, value);
        }
        let outcome = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Ok(body) => Outcome::from_http(status, &body),
                    Err(error) => Outcome::from_transport(error),
                }
            }
            Err(error) => Outcome::from_transport(error),
        };
        Call { msgid, outcome }
    }
}
