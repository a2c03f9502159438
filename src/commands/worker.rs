//! `els-bridge worker`: consume `els.events`, validate, batch, upload, ack / retry /
//! dead-letter; serves `/healthz` and `/readyz`.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use super::EXIT_OK;
use crate::config::Config;

/// Options of `els-bridge worker`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Runs until SIGTERM or SIGINT, then stops consuming, flushes open batches and settles \
within worker.drain_deadline_secs; messages not settled by then are delivered again.")]
pub struct WorkerArgs {
    /// The configuration file.
    #[arg(long, env = "ELS_BRIDGE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Reads the worker's configuration (before its runtime starts: `worker.threads` sizes it).
pub fn load(args: &WorkerArgs) -> anyhow::Result<Config> {
    Ok(Config::load(args.config.as_deref())?)
}

/// Runs the worker until a termination signal.
pub async fn run(config: Config) -> anyhow::Result<u8> {
    tracing::info!(runtime_threads = tokio::runtime::Handle::current().metrics().num_workers(), "worker starting");
    let shutdown = CancellationToken::new();
    super::common::cancel_on_signal(shutdown.clone())?;
    crate::worker::run(config, shutdown).await?;
    Ok(EXIT_OK)
}
