//! Logging: human-readable on a terminal, JSON lines with `ELS_BRIDGE_LOG_FORMAT=json`,
//! level from `RUST_LOG` (default `info`). Logs go to standard error, so that command
//! output on standard output stays clean.

use tracing_subscriber::EnvFilter;

/// Installs the global log subscriber.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let json = std::env::var("ELS_BRIDGE_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    if json {
        builder.json().flatten_event(true).with_current_span(true).init();
    } else {
        builder.init();
    }
}
