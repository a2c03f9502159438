//! `els-bridge doctor`: checks of an installation that upload nothing. Each check is one
//! [`Check`], `ok`, `warn` or `fail`, saying what it found and, unless ok, what to do:
//!
//! * [`configuration`]: what loading cannot say (secret files' modes, CA files, the
//!   interface path, institutions' credentials);
//! * [`broker`]: each node (reachable, TLS, version, authenticated), then on one of them
//!   publishing (alarms), the topology with its types and arguments, the delivery limit
//!   on that version, consumers and dead letters;
//! * [`platform`]: DNS, TCP, a signed request that cannot change anything, TLS and the
//!   server certificate, and the clock against the platform's `Date` header;
//! * [`tokens`]: the fleet's token per institution, and an ELS7001 call only when asked
//!   and only when the fleet itself would make it.
//!
//! No check prints a secret: secrets are read only to sign or connect.

mod amqp_probe;
pub mod broker;
pub mod configuration;
pub mod platform;
pub mod tokens;

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::Config;

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// As it should be.
    Ok,
    /// Works, but deserves a look (the fix says what to do).
    Warn,
    /// Will not work until fixed.
    Fail,
}

impl Status {
    /// `ok`, `warn` or `fail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check: what was checked, what was found, what to do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// What was checked: `configuration`, `broker rabbit-1:5672`, `platform`, `token H32128200338`.
    pub subject: String,
    /// Which check, e.g. `reachable`.
    pub check: String,
    /// What it found.
    pub status: Status,
    /// What was found, for people (times in Beijing time).
    pub detail: String,
    /// What to do, unless ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// The values found, for machines (times in RFC 3339 UTC).
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub values: Map<String, Value>,
}

impl Check {
    fn new(status: Status, subject: &str, check: &str, detail: String, fix: Option<String>) -> Check {
        Check { subject: subject.to_owned(), check: check.to_owned(), status, detail, fix, values: Map::new() }
    }

    /// An ok check.
    pub fn ok(subject: &str, check: &str, detail: impl Into<String>) -> Check {
        Check::new(Status::Ok, subject, check, detail.into(), None)
    }

    /// A warning, with what to do.
    pub fn warn(subject: &str, check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(Status::Warn, subject, check, detail.into(), Some(fix.into()))
    }

    /// A failure, with what to do.
    pub fn fail(subject: &str, check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(Status::Fail, subject, check, detail.into(), Some(fix.into()))
    }

    /// This check with a value for machines.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Check {
        self.values.insert(key.to_owned(), value.into());
        self
    }
}

/// What `doctor` may do beyond looking.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Call ELS7001 for an institution whose fleet token is missing or due for a refresh
    /// (what a worker would do next), sharing the new token with the fleet.
    pub fetch_token: bool,
}

/// A clock difference beyond this is a warning.
pub const CLOCK_WARN: Duration = Duration::from_secs(30);
/// A clock difference beyond this fails: the platform's 5-minute token rule is judged on
/// the wrong clock, and gateways refuse `_api_timestamp` not far beyond.
pub const CLOCK_FAIL: Duration = Duration::from_secs(300);

/// Runs every check of a loaded configuration, in the order above.
pub async fn run(config: &Config, options: Options) -> Vec<Check> {
    let mut checks = configuration::check(config);
    let broker = broker::check(config).await;
    checks.extend(broker.checks);
    checks.extend(platform::check(config).await);
    checks.extend(tokens::check(config, broker.connection.as_ref(), options).await);
    if let Some(connection) = broker.connection {
        crate::broker::close(&connection, "doctor done").await;
    }
    checks
}
