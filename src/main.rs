//! The `els-bridge` command line: one binary for every job.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use els_bridge::commands;

/// Reports hospital stock movements (drugs and consumables: stock-in, stock-out, returns)
/// to the Jiangsu provincial procurement platform, transactions ELS7001–ELS7007.
#[derive(Debug, Parser)]
#[command(name = "els-bridge", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume stock-movement events from RabbitMQ and upload them (the main job).
    Worker(commands::worker::WorkerArgs),
    /// Upload record files directly to the platform, without a broker (back-filling).
    Send(commands::send::SendArgs),
    /// Check event or record files against the spec, offline.
    Validate(commands::validate::ValidateArgs),
    /// What was reported, from the receipts ledger: totals per day, one record's history (--key), every record (--records), a reconciliation with the warehouse export (--against).
    Report(commands::report::ReportArgs),
    /// Publish event files to the events exchange, with publisher confirms.
    Publish(commands::publish::PublishArgs),
    /// Count, show and replay dead letters.
    Dlq(commands::dlq::DlqArgs),
    /// Run the provincial platform simulator.
    Simulate(commands::simulate::SimulateArgs),
    /// Check an installation (configuration, broker, platform, TLS, clock, tokens) without uploading.
    Doctor(commands::doctor::DoctorArgs),
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(commands::completions::CompletionsArgs),
    /// Write the manual pages into a folder.
    Man(commands::man::ManArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = els_bridge::telemetry::init();
    let result = run(cli.command);
    // The last spans and metrics go out before the process ends (after the drain).
    telemetry.shutdown();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(commands::EXIT_USAGE)
        }
    }
}

/// Runs `command` to its end on an async runtime. The worker's configuration is read
/// first, since it says how many threads the worker's runtime has (`worker.threads`);
/// every other command has one per CPU core.
fn run(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Worker(args) => {
            let config = commands::worker::load(&args)?;
            block_on(Some(config.worker.threads), commands::worker::run(config))
        }
        Command::Send(args) => block_on(None, commands::send::run(args)),
        Command::Validate(args) => block_on(None, commands::validate::run(args)),
        Command::Report(args) => block_on(None, commands::report::run(args)),
        Command::Publish(args) => block_on(None, commands::publish::run(args)),
        Command::Dlq(args) => block_on(None, commands::dlq::run(args)),
        Command::Simulate(args) => block_on(None, commands::simulate::run(args)),
        Command::Doctor(args) => block_on(None, commands::doctor::run(args)),
        Command::Completions(args) => commands::completions::run(args, Cli::command()),
        Command::Man(args) => commands::man::run(args, Cli::command()),
    }
}

/// Runs `job` on a new multi-threaded runtime of `threads` threads (tokio's default, one
/// per CPU core, when `None`), and drops the runtime before returning.
fn block_on(threads: Option<usize>, job: impl Future<Output = anyhow::Result<u8>>) -> anyhow::Result<u8> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = threads {
        builder.worker_threads(threads);
    }
    let runtime = builder.build().map_err(|error| anyhow::anyhow!("cannot start the async runtime: {error}"))?;
    runtime.block_on(job)
}
