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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(commands::EXIT_USAGE);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Worker(args) => commands::worker::run(args).await,
            Command::Send(args) => commands::send::run(args).await,
            Command::Validate(args) => commands::validate::run(args).await,
            Command::Report(args) => commands::report::run(args).await,
            Command::Publish(args) => commands::publish::run(args).await,
            Command::Dlq(args) => commands::dlq::run(args).await,
            Command::Simulate(args) => commands::simulate::run(args).await,
            Command::Doctor(args) => commands::doctor::run(args).await,
            Command::Completions(args) => commands::completions::run(args, Cli::command()),
            Command::Man(args) => commands::man::run(args, Cli::command()),
        }
    });
    drop(runtime);
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
