//! The platform: the interface URL's host resolved, a TCP connection, and per institution
//! one signed request whose body is an empty JSON object. The CSB gateway checks the
//! signature before anything else (HTTP 401/403 when it is wrong); the platform behind it
//! answers an empty envelope with a format error (returnCode 14 in the simulator) without
//! acting on it: no token is issued, nothing is stored, no msgid is used. It counts as one
//! call of the daily limit. The answer also shows the server certificate of an
//! `https://` platform (days until it expires) and the platform's clock (its `Date`
//! header), which matters because the gateway checks `_api_timestamp` against it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::{StatusCode, Url};
use secrecy::ExposeSecret;
use serde_json::Value;

use super::{CLOCK_FAIL, CLOCK_WARN, Check};
use crate::beijing;
use crate::config::{Config, Institution, PlatformSettings};
use crate::platform::client::http_builder;
use crate::platform::sign::CsbHeaders;

const SUBJECT: &str = "platform";
/// A server certificate expiring sooner than this is a warning.
const CERTIFICATE_WARN_DAYS: i64 = 30;
/// The interface path every call goes to.
const INTERFACE_PATH: &str = "/api/commonInterfaca";

/// Every platform check.
pub async fn check(config: &Config) -> Vec<Check> {
    let settings = &config.platform;
    let url = match Url::parse(&settings.url) {
        Ok(url) => url,
        Err(error) => return vec![Check::fail(SUBJECT, "url", format!("platform.url does not parse: {error}"), "fix platform.url")],
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return vec![Check::fail(SUBJECT, "url", "platform.url names no host", "fix platform.url")];
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut checks = Vec::new();
    let address = match resolve(host, port).await {
        Ok((check, address)) => {
            checks.push(check);
            address
        }
        Err(check) => return vec![check],
    };
    let timeout = Duration::from_millis(settings.connect_timeout_ms);
    checks.push(tcp(address, timeout).await);
    if checks.last().is_some_and(|c| c.status == super::Status::Fail) {
        return checks;
    }
    checks.extend(signed_requests(config, &url).await);
    checks
}

/// The host's addresses (an IP address as it is).
async fn resolve(host: &str, port: u16) -> Result<(Check, SocketAddr), Check> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok((Check::ok(SUBJECT, "dns", format!("{ip} is an IP address: nothing to resolve")), SocketAddr::new(ip, port)));
    }
    let fix =
        "check the host of platform.url and this host's DNS (the gateway is on the medical-insurance network: its resolver, or /etc/hosts)";
    match tokio::net::lookup_host((host, port)).await {
        Ok(addresses) => {
            let addresses: Vec<SocketAddr> = addresses.collect();
            let shown: Vec<String> = addresses.iter().map(|a| a.ip().to_string()).collect();
            match addresses.first() {
                Some(first) => Ok((Check::ok(SUBJECT, "dns", format!("{host} resolves to {}", shown.join(", "))), *first)),
                None => Err(Check::fail(SUBJECT, "dns", format!("{host} resolves to no address"), fix)),
            }
        }
        Err(error) => Err(Check::fail(SUBJECT, "dns", format!("cannot resolve {host}: {error}"), fix)),
    }
}

async fn tcp(address: SocketAddr, timeout: Duration) -> Check {
    let started = Instant::now();
    let fix = "is platform.url's host and port right, and does the firewall let this host through to the gateway?";
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => Check::ok(SUBJECT, "tcp", format!("connected to {address} in {} ms", started.elapsed().as_millis())),
        Ok(Err(error)) => Check::fail(SUBJECT, "tcp", format!("cannot connect to {address}: {error}"), fix),
        Err(_) => Check::fail(
            SUBJECT,
            "tcp",
            format!("no connection to {address} within {} ms (platform.connect_timeout_ms)", timeout.as_millis()),
            fix,
        ),
    }
}

/// One signed request per institution; the certificate and the clock from the first answer.
async fn signed_requests(config: &Config, url: &Url) -> Vec<Check> {
    let client = match http_builder(&config.platform).and_then(|b| Ok(b.tls_info(true).build()?)) {
        Ok(client) => client,
        Err(error) => return vec![Check::fail(SUBJECT, "tls", error.to_string(), "fix platform.ca_file")],
    };
    let mut checks = Vec::new();
    let mut first = true;
    for institution in &config.institutions {
        let started = Instant::now();
        match probe(&client, &config.platform, institution).await {
            Ok(answer) => {
                if first {
                    checks.extend(certificate(url, &answer));
                    checks.push(clock(&answer, started));
                    first = false;
                }
                checks.push(interface(institution, url, &answer));
            }
            Err(error) => {
                checks.push(transport(institution, url, &error));
            }
        }
    }
    checks
}

/// An answer to the signed probe.
struct Answer {
    status: StatusCode,
    /// When the answer came, by this host's clock.
    at: DateTime<Utc>,
    date: Option<DateTime<Utc>>,
    certificate: Option<Vec<u8>>,
    body: Value,
}

async fn probe(client: &reqwest::Client, settings: &PlatformSettings, institution: &Institution) -> Result<Answer, reqwest::Error> {
    let headers = CsbHeaders::new(&institution.csb_access_key, institution.csb_secret_key().expose_secret(), Utc::now().timestamp_millis());
    let mut request = client.post(&settings.url).header("Content-Type", "application/json").body("{}");
    for (name, value) in headers.pairs() {
        request = request.header(name, value);
    }
    let response = request.send().await?;
    let at = Utc::now();
    let status = response.status();
    let date = response
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|text| DateTime::parse_from_rfc2822(text).ok())
        .map(|d| d.with_timezone(&Utc));
    let certificate = response.extensions().get::<reqwest::tls::TlsInfo>().and_then(|info| info.peer_certificate()).map(<[u8]>::to_vec);
    let body = response.bytes().await.map(|bytes| serde_json::from_slice(&bytes).unwrap_or(Value::Null))?;
    Ok(Answer { status, at, date, certificate, body })
}

/// `output.data.returnCode`, a JSON string or number.
fn return_code(body: &Value) -> Option<u64> {
    match &body["output"]["data"]["returnCode"] {
        Value::String(text) => text.parse().ok(),
        Value::Number(number) => number.as_u64(),
        _ => None,
    }
}

/// A short excerpt of a gateway's error body (`code`, `message`), never a secret.
fn gateway_says(body: &Value) -> String {
    let text: Vec<String> =
        ["code", "message"].iter().filter_map(|key| body[key].as_str()).map(|s| s.chars().take(200).collect()).collect();
    if text.is_empty() { String::new() } else { format!(": {}", text.join(": ")) }
}

/// What the answer says about the path and the institution's CSB keys.
fn interface(institution: &Institution, url: &Url, answer: &Answer) -> Check {
    let code = &institution.fixmedins_code;
    let check = format!("signed request {code}");
    let path_fix = format!("platform.url must end in {INTERFACE_PATH} (it is {url})");
    match (answer.status, return_code(&answer.body)) {
        (StatusCode::OK, Some(2)) => Check::fail(SUBJECT, &check, "returnCode 2: wrong interface path", path_fix),
        (StatusCode::OK, Some(returned)) => Check::ok(
            SUBJECT,
            &check,
            format!("the gateway accepted the CSB signature; the platform answered an empty request with returnCode {returned}, as expected (nothing uploaded)"),
        )
        .with("return_code", returned),
        (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, _) => Check::fail(
            SUBJECT,
            &check,
            format!("the CSB gateway refused the signature (HTTP {}{})", answer.status.as_u16(), gateway_says(&answer.body)),
            format!("check csb_access_key and csb_secret_key of institution {code} (as issued for this hospital), and this host's clock (see the clock check)"),
        ),
        (StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED, _) => {
            Check::fail(SUBJECT, &check, format!("HTTP {}: nothing answers at this path", answer.status.as_u16()), path_fix)
        }
        (status, _) if status.is_server_error() => Check::fail(
            SUBJECT,
            &check,
            format!("the platform answered HTTP {}{}", status.as_u16(), gateway_says(&answer.body)),
            "the platform or its gateway is down or overloaded: try again later; the worker retries on its own",
        ),
        (status, _) => Check::warn(
            SUBJECT,
            &check,
            format!("unexpected answer: HTTP {} without a platform reply", status.as_u16()),
            format!("is platform.url the gateway of the provincial platform? ({url})"),
        ),
    }
    .with("http_status", answer.status.as_u16())
}

/// No answer at all: TLS, a timeout, a closed connection.
fn transport(institution: &Institution, url: &Url, error: &reqwest::Error) -> Check {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    if url.scheme() == "https" && (text.contains("certificate") || text.contains("tls") || text.contains("TLS")) {
        return Check::fail(
            SUBJECT,
            "tls",
            format!("TLS handshake failed: {text}"),
            "the certificate must name platform.url's host and be signed by platform.ca_file (PEM) or a system root",
        );
    }
    let check = format!("signed request {}", institution.fixmedins_code);
    Check::fail(SUBJECT, &check, format!("no answer: {text}"), "is platform.url right, and is the platform up? (platform.timeout_ms)")
}

/// The server certificate of an `https://` platform.
fn certificate(url: &Url, answer: &Answer) -> Option<Check> {
    if url.scheme() != "https" {
        return None;
    }
    let Some(der) = &answer.certificate else {
        return Some(Check::warn(SUBJECT, "tls", "the connection did not show its certificate", "cannot tell when it expires"));
    };
    let certificate = match x509_parser::parse_x509_certificate(der) {
        Ok((_, certificate)) => certificate,
        Err(error) => {
            return Some(Check::warn(
                SUBJECT,
                "tls",
                format!("cannot read the server certificate: {error}"),
                "cannot tell when it expires",
            ));
        }
    };
    let expires = DateTime::from_timestamp(certificate.validity().not_after.timestamp(), 0).unwrap_or_default();
    let days = (expires - Utc::now()).num_days();
    let detail = format!(
        "trusted; issued to {} by {}, expires {} ({days} days)",
        certificate.subject(),
        certificate.issuer(),
        beijing::format(expires)
    );
    let check = if days < CERTIFICATE_WARN_DAYS {
        Check::warn(
            SUBJECT,
            "tls",
            detail,
            "the platform's certificate expires soon: tell the platform's operator (or renew it, if it is yours)",
        )
    } else {
        Check::ok(SUBJECT, "tls", detail)
    };
    Some(check.with("certificate_expires_at", expires.to_rfc3339()).with("certificate_days_left", days))
}

/// The platform's clock (`Date` header) against this host's, at the middle of the call.
fn clock(answer: &Answer, started: Instant) -> Check {
    let Some(date) = answer.date else {
        return Check::warn(
            SUBJECT,
            "clock",
            "the answer has no Date header: cannot compare clocks",
            "make sure this host's clock is synchronised (NTP)",
        );
    };
    let middle = answer.at - chrono::Duration::from_std(started.elapsed() / 2).unwrap_or_default();
    // The header has whole seconds: half a second either way is no difference.
    let offset = (date - middle).num_milliseconds() as f64 / 1000.0;
    let rounded = offset.round() as i64;
    let direction = if rounded >= 0 { "ahead of" } else { "behind" };
    let detail = format!("the platform's clock is {} s {direction} this host's (platform: {})", rounded.abs(), beijing::format(date));
    let fix = "synchronise this host's clock (NTP: `timedatectl`, `chronyc tracking`): the gateway refuses an _api_timestamp \
               too far from its own clock, and the 5-minute rule of ELS7001 tokens is judged on the platform's";
    let magnitude = Duration::from_secs_f64(offset.abs());
    let check = if magnitude > CLOCK_FAIL {
        Check::fail(SUBJECT, "clock", detail, fix)
    } else if magnitude > CLOCK_WARN {
        Check::warn(SUBJECT, "clock", detail, fix)
    } else {
        Check::ok(SUBJECT, "clock", detail)
    };
    check.with("offset_secs", rounded).with("platform_time", date.to_rfc3339())
}
