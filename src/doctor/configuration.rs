//! What loading the configuration does not say: it has already checked every key, the
//! institutions' envelope values and that each secret is there once (a configuration that
//! does not load is one failed check, see `commands::doctor`). Here: the modes of secret
//! files, the CA files' certificates, the interface path, the institutions' credentials.

use std::path::Path;

use chrono::{DateTime, Utc};

use super::Check;
use crate::beijing;
use crate::config::{Config, Institution};

const SUBJECT: &str = "configuration";

/// Every configuration check.
pub fn check(config: &Config) -> Vec<Check> {
    let mut checks = vec![loaded(config), interface_path(&config.platform.url)];
    for institution in &config.institutions {
        checks.push(credentials(institution));
        for (key, path) in [("auth_code_file", &institution.auth_code_file), ("csb_secret_key_file", &institution.csb_secret_key_file)] {
            if let Some(path) = path {
                checks.push(secret_file(&institution.fixmedins_code, key, path));
            }
        }
    }
    if let Some(path) = config.amqp.as_ref().and_then(|a| a.ca_file.as_ref()) {
        checks.push(ca_file("amqp.ca_file", path));
    }
    if let Some(path) = &config.platform.ca_file {
        checks.push(ca_file("platform.ca_file", path));
    }
    checks
}

fn loaded(config: &Config) -> Check {
    let codes: Vec<&str> = config.institutions.iter().map(|i| i.fixmedins_code.as_str()).collect();
    if codes.is_empty() {
        return Check::fail(
            SUBJECT,
            "institutions",
            "no [[institutions]]: the worker and send refuse to start",
            "add the hospital's [[institutions]] entry",
        );
    }
    let broker = match &config.amqp {
        Some(amqp) if !amqp.addresses.is_empty() => format!("a broker of {} node(s)", amqp.addresses.len()),
        Some(_) => "a broker".to_owned(),
        None => "no broker".to_owned(),
    };
    Check::ok(SUBJECT, "loads", format!("every key valid; {} institution(s) ({}), {broker}", codes.len(), codes.join(", ")))
        .with("institutions", codes)
}

fn interface_path(url: &str) -> Check {
    if url.trim_end_matches('/').ends_with("/api/commonInterfaca") {
        return Check::ok(SUBJECT, "platform.url", url);
    }
    Check::warn(
        SUBJECT,
        "platform.url",
        format!("{url} does not end in /api/commonInterfaca, the platform's one interface path"),
        "the platform answers other paths with returnCode 2: set platform.url to http(s)://GATEWAY/api/commonInterfaca",
    )
}

fn credentials(institution: &Institution) -> Check {
    let code = &institution.fixmedins_code;
    let empty: Vec<&str> = [("app_code", &institution.app_code), ("csb_access_key", &institution.csb_access_key)]
        .into_iter()
        .filter(|(_, v)| v.trim().is_empty())
        .map(|(k, _)| k)
        .collect();
    if !empty.is_empty() {
        return Check::fail(
            SUBJECT,
            &format!("institution {code}"),
            format!("{} empty", empty.join(" and ")),
            "set them as issued by the platform for this hospital",
        );
    }
    Check::ok(SUBJECT, &format!("institution {code}"), format!("{}: envelope values and credentials present", institution.fixmedins_name))
}

/// A secret file (read at load): readable, and by nobody else.
fn secret_file(code: &str, key: &str, path: &Path) -> Check {
    use std::os::unix::fs::PermissionsExt;
    let check = format!("institution {code} {key}");
    match std::fs::metadata(path) {
        Ok(meta) if meta.permissions().mode() & 0o004 != 0 => Check::warn(
            SUBJECT,
            &check,
            format!("{}: readable by every user of this host (mode {:o})", path.display(), meta.permissions().mode() & 0o777),
            format!("chmod 600 {} (or mount the Secret with defaultMode 0400)", path.display()),
        ),
        Ok(_) => Check::ok(SUBJECT, &check, format!("{}: read, not readable by other users", path.display())),
        Err(error) => Check::fail(SUBJECT, &check, format!("{}: {error}", path.display()), "make the file readable by this user"),
    }
}

/// A CA file: PEM certificates, none expired.
fn ca_file(key: &str, path: &Path) -> Check {
    let fix = format!("{key} must be the PEM file of the CA that signed the server's certificate");
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) => return Check::fail(SUBJECT, key, format!("{}: {error}", path.display()), fix),
    };
    let mut expiries: Vec<DateTime<Utc>> = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(&bytes) {
        let parsed = pem.ok().and_then(|pem| pem.parse_x509().ok().map(|c| c.validity().not_after.timestamp()));
        match parsed.and_then(|secs| DateTime::from_timestamp(secs, 0)) {
            Some(expires) => expiries.push(expires),
            None => return Check::fail(SUBJECT, key, format!("{}: a PEM block is not an X.509 certificate", path.display()), fix),
        }
    }
    let Some(first) = expiries.iter().min().copied() else {
        return Check::fail(SUBJECT, key, format!("{}: no PEM certificate in it", path.display()), fix);
    };
    let detail = format!("{}: {} certificate(s), the first to expire on {}", path.display(), expiries.len(), beijing::format(first));
    let check = if first < Utc::now() {
        Check::fail(SUBJECT, key, format!("{detail}: expired"), "get the CA's current certificate")
    } else {
        Check::ok(SUBJECT, key, detail)
    };
    check.with("expires_at", first.to_rfc3339())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_interface_path_is_a_warning() {
        assert_eq!(interface_path("https://gw/api/commonInterfaca").status, super::super::Status::Ok);
        let check = interface_path("https://gw/api/upload");
        assert_eq!(check.status, super::super::Status::Warn);
        assert!(check.fix.unwrap_or_default().contains("returnCode 2"));
    }

    #[test]
    fn a_ca_file_without_certificates_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let check = ca_file("platform.ca_file", &path);
        assert_eq!(check.status, super::super::Status::Fail);
        assert!(check.detail.contains("no PEM certificate"), "{check:?}");
    }
}
