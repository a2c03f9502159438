//! `els-bridge doctor`: checks an installation without uploading anything (the checks are
//! [`crate::doctor`]'s); prints one line per check, or `--json`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use chrono::Utc;
use serde_json::json;

use super::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::beijing;
use crate::config::{Config, ConfigError};
use crate::doctor::{self, Check, Options, Status};

/// What `els-bridge doctor --help` adds below the options.
const AFTER_HELP: &str = "\
Checks, in this order (each line: ok, warn or fail, and what to do):

configuration  the file loads with every key valid (secret files read, institutions'
               envelope values complete), secret files not readable by other users, CA
               files hold PEM certificates none expired, platform.url ends in
               /api/commonInterfaca, app_code and csb_access_key set.
broker NODE    each node of amqp.addresses (or amqp.url's host): reachable (TCP), TLS
               (amqps://), version (RabbitMQ 3.10 to 4.3 supported), authenticated (the
               URL's user and password, never shown, and vhost).
broker         on the first node that let doctor in: publishing (an empty message no
               queue takes is confirmed: no memory or disk alarm blocks publishers),
               the exchange, work queue, dead-letter queue, delay queues and streams
               with the types and arguments the worker declares (looked up passively,
               nothing created), the delivery limit (a queue of an earlier release
               without x-delivery-limit drops messages on RabbitMQ 4 unless a policy
               sets one; AMQP cannot show policies), consumers on the work queue, dead
               letters waiting.
platform       DNS, TCP, then per institution one signed request with an empty body:
               the CSB gateway checks the signature (HTTP 403 when a key is wrong) and
               the platform answers it with a format error without acting on it (one
               call of the daily limit, no msgid, no token, nothing stored); the
               server certificate (https://: trusted with platform.ca_file, days left);
               the clock against the platform's Date header (warn beyond 30 s, fail
               beyond 300 s: the gateway checks _api_timestamp).
token CODE     the fleet's current token (the broker's token stream, or send's token
               file): minutes left. With --fetch-token, ELS7001 is called only when a
               worker would call it (no token, or inside token_refresh_lead_secs), under
               the fleet's refresh lock, and the new token is shared with the fleet: it
               never invalidates a token in use, nor asks while the platform would refuse.

Times are Beijing time on the terminal, RFC 3339 UTC in --json. Exit status: 0 when no
check failed (warnings allowed), 1 when one did, 2 when the configuration does not load
(then it is the only check).";

/// Options of `els-bridge doctor`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct DoctorArgs {
    /// Configuration file (else `ELS_BRIDGE_CONFIG`).
    #[arg(long, env = "ELS_BRIDGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// One JSON object: `ok`, `checked_at`, `summary` and every check with its values.
    #[arg(long)]
    pub json: bool,
    /// Also get each institution's token the way a worker does: ELS7001 only when the fleet
    /// has none or it is due for a refresh, shared with the fleet.
    #[arg(long)]
    pub fetch_token: bool,
}

/// Runs every check and prints them.
pub async fn run(args: DoctorArgs) -> anyhow::Result<u8> {
    let (checks, loaded) = match Config::load(args.config.as_deref()) {
        Ok(config) => (doctor::run(&config, Options { fetch_token: args.fetch_token }).await, true),
        Err(error @ (ConfigError::Missing | ConfigError::Read { .. })) => return Err(error.into()),
        Err(error) => (vec![Check::fail("configuration", "loads", error.to_string(), "fix the key named, then run doctor again")], false),
    };
    let text = if args.json { as_json(&checks) } else { as_text(&checks) };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).context("cannot write to standard output")?;
    Ok(match (loaded, checks.iter().any(|c| c.status == Status::Fail)) {
        (false, _) => EXIT_USAGE,
        (true, true) => EXIT_FAILED,
        (true, false) => EXIT_OK,
    })
}

/// How many checks of each status.
fn counts(checks: &[Check]) -> [usize; 3] {
    [Status::Ok, Status::Warn, Status::Fail].map(|status| checks.iter().filter(|c| c.status == status).count())
}

/// One line per check, `STATUS SUBJECT: CHECK: DETAIL → FIX`, then a summary.
fn as_text(checks: &[Check]) -> String {
    let mut text = format!("els-bridge doctor, {} (Beijing time)\n", beijing::format(Utc::now()));
    for check in checks {
        let fix = check.fix.as_ref().map(|fix| format!(" → {fix}")).unwrap_or_default();
        text.push_str(&format!("{:<4} {}: {}: {}{fix}\n", check.status.as_str(), check.subject, check.check, check.detail));
    }
    let [ok, warn, fail] = counts(checks);
    text.push_str(&format!("{ok} ok, {warn} warning(s), {fail} failed\n"));
    text
}

fn as_json(checks: &[Check]) -> String {
    let [ok, warn, fail] = counts(checks);
    let report = json!({
        "ok": fail == 0,
        "checked_at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "summary": {"ok": ok, "warn": warn, "fail": fail},
        "checks": checks,
    });
    format!("{report}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_check_is_one_line_with_what_to_do() {
        let checks = vec![
            Check::ok("broker rabbit-1:5672", "reachable", "TCP connection in 1 ms"),
            Check::fail("platform", "clock", "the platform's clock is 600 s ahead", "synchronise this host's clock"),
        ];
        let text = as_text(&checks);
        assert!(text.contains("\nok   broker rabbit-1:5672: reachable: TCP connection in 1 ms\n"), "{text}");
        assert!(text.contains("\nfail platform: clock: the platform's clock is 600 s ahead → synchronise this host's clock\n"), "{text}");
        assert!(text.ends_with("1 ok, 0 warning(s), 1 failed\n"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&as_json(&checks)).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["summary"]["fail"], 1);
        assert_eq!(json["checks"][1]["status"], "fail");
        assert!(json["checked_at"].as_str().unwrap().ends_with('Z'));
    }
}
