//! `els-bridge report`: what was reported to the platform for a day or range of days, from
//! the receipts ledger on the broker (per institution and transaction: rows reported,
//! distinct keys, corrections, total quantity and amount).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use chrono::NaiveDate;

use super::EXIT_OK;
use crate::beijing;
use crate::broker::{self, log::StreamLog};
use crate::config::Config;
use crate::ledger::{self, report};

/// Options of `els-bridge report`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Days are Beijing calendar days of the movement time (stoin_time, stoout_time, retn_time).\n\
Quantities and amounts are those of each record's last accepted version, as the platform holds them;\n\
corrections count the uploads that changed a record again. Needs [amqp]: the ledger is on the broker.")]
pub struct ReportArgs {
    /// The configuration file.
    #[arg(long, env = "ELS_BRIDGE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// First day, yyyy-MM-dd (default: today in Beijing).
    #[arg(long, value_name = "DAY")]
    from: Option<NaiveDate>,
    /// Last day, yyyy-MM-dd (default: the first day).
    #[arg(long, value_name = "DAY")]
    to: Option<NaiveDate>,
    /// Only this institution.
    #[arg(long, value_name = "FIXMEDINS_CODE")]
    institution: Option<String>,
    /// CSV for spreadsheets instead of a table.
    #[arg(long)]
    csv: bool,
}

/// Reads the ledger and prints the report.
pub async fn run(args: ReportArgs) -> anyhow::Result<u8> {
    let config = Config::load(args.config.as_deref())?;
    let Some(amqp) = &config.amqp else { bail!("report reads the receipts ledger on the broker: configure [amqp]") };
    let from = args.from.unwrap_or_else(|| beijing::day(chrono::Utc::now()));
    let to = args.to.unwrap_or(from);
    if to < from {
        bail!("--to {to} is before --from {from}");
    }
    let connection = broker::connect(amqp, "els-bridge report").await.context("cannot connect to the broker of [amqp]")?;
    let mut settings = ledger::log_settings(&amqp.name_prefix, &config.ledger, 0);
    // Records are uploaded after they move: reading from the first day's start finds them all.
    settings.replay_from = beijing::parse(&format!("{from} 00:00:00")).unwrap_or(settings.replay_from);
    let log = StreamLog::open(&connection, &settings, report::Tally::new(from, to, args.institution.clone())).await?;
    let lines = log.read(report::Tally::lines)?;

    let mut out = std::io::stdout().lock();
    if args.csv {
        out.write_all(report::csv(&lines)?.as_bytes())?;
    } else {
        let range = if from == to { from.to_string() } else { format!("{from} to {to}") };
        writeln!(out, "Reported to the platform for movements of {range} (Beijing time)")?;
        out.write_all(report::table(&lines).as_bytes())?;
    }
    Ok(EXIT_OK)
}
