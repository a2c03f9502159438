//! `els-bridge simulate`: runs the provincial platform simulator (contract §6) until SIGTERM
//! or SIGINT.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use chrono::TimeDelta;
use tokio::net::TcpListener;
use tracing::info;

use super::EXIT_OK;
use crate::config::Config;
use crate::simulator::{self, Settings, Simulator};

/// What `els-bridge simulate --help` adds below the options.
const AFTER_HELP: &str = "\
Serves POST /api/commonInterfaca for the institutions of the configuration file (their
app/auth codes and CSB keys) like the provincial platform, and an admin and inspection API
under /admin/ (faults, records, calls, tokens, counters; see docs/simulator.md). Prints
`listening on ADDR` on standard output once bound; logs go to standard error. Stops on
SIGTERM or SIGINT.";

/// Options of `els-bridge simulate`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct SimulateArgs {
    /// Address to listen on; port 0 picks a free port (see the `listening on` line).
    #[arg(long, default_value = "127.0.0.1:8097")]
    pub listen: SocketAddr,
    /// Configuration file whose institutions the simulator serves.
    #[arg(long, env = "ELS_BRIDGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// How long an ELS7001 token is valid, in seconds.
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u32).range(1..))]
    pub token_validity_secs: u32,
    /// ELS7001 answers 9 (no new token) while the current token has more than this many
    /// seconds left.
    #[arg(long, default_value_t = 300)]
    pub token_refresh_window_secs: u32,
    /// Calls per institution per Beijing day before 11; every call past the gateway counts.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub daily_call_limit: u64,
    /// Largest accepted difference between `_api_timestamp` and the clock, in seconds;
    /// beyond it the gateway answers HTTP 403.
    #[arg(long, default_value_t = 900)]
    pub timestamp_tolerance_secs: u32,
    /// Rows per upload call before 28.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_rows: u32,
    /// Calls kept in the call log of the inspection API (the oldest are dropped; about 6 KB
    /// per 100-row call).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub call_log_capacity: u32,
    /// Runs the platform's clock this many seconds ahead of the host's (negative: behind):
    /// what the gateway checks `_api_timestamp` against, the reply times and the `Date`
    /// header. For testing a host whose clock is off (`els-bridge doctor`).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-86_400..=86_400))]
    pub clock_offset_secs: i32,
}

impl SimulateArgs {
    fn settings(&self) -> Settings {
        Settings {
            token_validity: TimeDelta::seconds(self.token_validity_secs.into()),
            token_refresh_window: TimeDelta::seconds(self.token_refresh_window_secs.into()),
            daily_call_limit: self.daily_call_limit,
            timestamp_tolerance: TimeDelta::seconds(self.timestamp_tolerance_secs.into()),
            max_rows: self.max_rows as usize,
            call_log_capacity: self.call_log_capacity as usize,
            clock_offset: TimeDelta::seconds(self.clock_offset_secs.into()),
        }
    }
}

/// Runs the simulator until SIGTERM or SIGINT.
pub async fn run(args: SimulateArgs) -> anyhow::Result<u8> {
    let config = Config::load(args.config.as_deref())?;
    anyhow::ensure!(!config.institutions.is_empty(), "the configuration has no [[institutions]] to simulate");
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr().context("cannot read the bound address")?;
    let sim = Arc::new(Simulator::new(args.settings(), &config.institutions));
    let shutdown = super::common::termination().context("cannot install the signal handlers")?;

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {address}").and_then(|()| stdout.flush()).context("cannot write to standard output")?;
    drop(stdout);
    let codes: Vec<&str> = config.institutions.iter().map(|i| i.fixmedins_code.as_str()).collect();
    info!(%address, institutions = ?codes, "platform simulator listening");

    simulator::serve(listener, sim, shutdown).await.context("the simulator's server failed")?;
    info!("platform simulator stopped");
    Ok(EXIT_OK)
}
