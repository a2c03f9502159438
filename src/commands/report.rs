//! `els-bridge report`: what was reported to the platform, from the receipts ledger on the
//! broker: totals per day (the default), the history of one record (`--key`), the last
//! accepted version of every record (`--records`), and the reconciliation with the
//! warehouse system's own export (`--against FILE`). The folds are in [`crate::ledger`];
//! this module reads the ledger and the file and prints.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::{DateTime, NaiveDate, Utc};
use indicatif::ProgressBar;

use super::{EXIT_FAILED, EXIT_OK};
use crate::beijing;
use crate::broker::{self, log::Fold, log::StreamLog};
use crate::config::Config;
use crate::input::{Format, Lines};
use crate::ledger::{self, history, reconcile, records, report};
use crate::sheet_lang::Lang;
use crate::spec::{Infno, Record};

/// Options of `els-bridge report`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Without --key, --records or --against: totals per institution and transaction (rows reported, \
distinct keys, corrections, quantity and amount of each record's last accepted version, as the platform holds them).\n\
--key KEY: every claim and receipt of that record in the ledger (version, msgid, time, return code, the process \
that claimed it and how each claim ended); reads the whole retained ledger unless --from is given.\n\
--records: one line per record with its last accepted version, quantity, price, movement time, msgid and acceptance time.\n\
--against FILE --infno ELS700x: compares the warehouse system's export (JSON Lines of data objects, or CSV with the \
spec's column names, as `send` reads them) with what the platform accepted: records missing at the platform, records \
reported that the file does not have, records whose quantity, price or movement time differ, unreadable lines, and a \
summary line (on standard error with --csv).\n\
Days are Beijing calendar days of the movement time (stoin_time, stoout_time, retn_time); the ledger is read from the \
start of the first day, so a record whose last accepted version was uploaded before that counts as not reported.\n\
Times in tables and CSV are Beijing time. Needs [amqp]: the ledger is on the broker; reading it appends only an empty marker (to know where its end is).\n\
Exit status: 0; 1 when --against finds a difference or --key finds nothing; 2 on usage or configuration errors.")]
#[command(group(clap::ArgGroup::new("per_record").args(["records", "against"])))]
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
    /// Only this institution (with --against: the institution of the file, needed when several are configured).
    #[arg(long, value_name = "FIXMEDINS_CODE")]
    institution: Option<String>,
    /// CSV for spreadsheets instead of a table.
    #[arg(long)]
    csv: bool,
    /// Language of the CSV's column headers: en (README's names) or zh-CN (Chinese, for the finance office).
    #[arg(long, value_enum, default_value = "en", requires = "csv")]
    lang: Lang,
    /// Show every claim and receipt of this record key.
    #[arg(long, value_name = "KEY", conflicts_with_all = ["records", "against", "to", "csv"])]
    key: Option<String>,
    /// List every record with its last accepted version.
    #[arg(long, conflicts_with = "against")]
    records: bool,
    /// Compare the warehouse system's export FILE with what the platform accepted.
    #[arg(long, value_name = "FILE", requires = "infno")]
    against: Option<PathBuf>,
    /// The transaction of the records (with --against: of the file's rows; with --records: only it).
    #[arg(long, value_name = "ELS700x", requires = "per_record")]
    infno: Option<Infno>,
    /// Layout of the --against file; by default CSV for *.csv, JSON Lines otherwise.
    #[arg(long, value_enum, requires = "against")]
    format: Option<Format>,
}

/// The days of a report.
struct Days {
    from: NaiveDate,
    to: NaiveDate,
}

impl Days {
    fn of(args: &ReportArgs) -> anyhow::Result<Days> {
        let from = args.from.unwrap_or_else(|| beijing::day(Utc::now()));
        let to = args.to.unwrap_or(from);
        if to < from {
            bail!("--to {to} is before --from {from}");
        }
        Ok(Days { from, to })
    }

    fn describe(&self) -> String {
        if self.from == self.to { self.from.to_string() } else { format!("{} to {}", self.from, self.to) }
    }
}

/// The start of a Beijing day, as an instant.
fn start_of(day: NaiveDate) -> Option<DateTime<Utc>> {
    beijing::parse(&format!("{day} 00:00:00"))
}

/// Reads the ledger and prints what was asked for.
pub async fn run(args: ReportArgs) -> anyhow::Result<u8> {
    let config = Config::load(args.config.as_deref())?;
    if config.amqp.is_none() {
        bail!("report reads the receipts ledger on the broker: configure [amqp]");
    }
    let days = Days::of(&args)?;
    if let Some(key) = &args.key {
        return key_history(&config, &args, key).await;
    }
    if let Some(file) = &args.against {
        return against(&config, &args, &days, file).await;
    }
    if args.records {
        return record_list(&config, &args, &days).await;
    }
    let tally = report::Tally::new(days.from, days.to, args.institution.clone());
    let lines = read_ledger(&config, start_of(days.from), tally, report::Tally::lines).await?;
    let mut out = std::io::stdout().lock();
    if args.csv {
        out.write_all(args.lang.header_of(report::csv(&lines)?).as_bytes())?;
    } else {
        writeln!(out, "Reported to the platform for movements of {} (Beijing time)", days.describe())?;
        out.write_all(report::table(&lines).as_bytes())?;
    }
    Ok(EXIT_OK)
}

/// A fold that counts the entries it reads on a progress spinner (shown only on a terminal).
struct Counted<F> {
    fold: F,
    progress: ProgressBar,
}

impl<F: Fold> Fold for Counted<F> {
    type Change = F::Change;
    type Read<'de> = F::Read<'de>;

    fn apply(&mut self, change: F::Read<'_>) {
        self.progress.inc(1);
        self.fold.apply(change);
    }
}

/// Reads the ledger from `since` (default: all that is retained) to its end into `fold`,
/// and returns what `finish` makes of it.
async fn read_ledger<F: Fold<Change = ledger::Entry>, R>(
    config: &Config,
    since: Option<DateTime<Utc>>,
    fold: F,
    finish: impl FnOnce(&F) -> R,
) -> anyhow::Result<R> {
    let Some(amqp) = &config.amqp else { bail!("report reads the receipts ledger on the broker: configure [amqp]") };
    let connection = broker::connect(amqp, "els-bridge report").await.context("cannot connect to the broker of [amqp]")?;
    let mut settings = ledger::log_settings(&amqp.name_prefix, &config.ledger, config.ledger.retention_days);
    // Records are uploaded after they move: reading from the first day's start finds them all.
    if let Some(since) = since {
        settings.replay_from = since;
    }
    let progress = super::common::progress_spinner("ledger entries read");
    let log = StreamLog::open(&connection, &settings, Counted { fold, progress: progress.clone() }).await?;
    progress.finish_and_clear();
    let result = log.read(|counted| finish(&counted.fold))?;
    // Closed while the stream's channel is open (dropped first, it would race the close).
    broker::close(&connection, "done").await;
    drop(log);
    Ok(result)
}

async fn key_history(config: &Config, args: &ReportArgs, key: &str) -> anyhow::Result<u8> {
    let since = args.from.and_then(start_of);
    let steps = read_ledger(config, since, history::History::new(key, args.institution.clone()), history::History::steps).await?;
    let mut out = std::io::stdout().lock();
    let read = since.map_or_else(|| "the whole ledger".to_owned(), |t| format!("the ledger since {}", beijing::format(t)));
    if steps.is_empty() {
        writeln!(out, "No claim or receipt of record {key} in {read}.")?;
        return Ok(EXIT_FAILED);
    }
    let receipts = steps.iter().filter(|s| s.kind == history::Kind::Receipt).count();
    writeln!(out, "Record {key}: {} claims and {receipts} receipts in {read} (times in Beijing time)", steps.len() - receipts)?;
    out.write_all(history::table(&steps).as_bytes())?;
    Ok(EXIT_OK)
}

async fn record_list(config: &Config, args: &ReportArgs, days: &Days) -> anyhow::Result<u8> {
    let latest = records::Latest::new(args.institution.clone());
    let moved = read_ledger(config, start_of(days.from), latest, |latest| latest.moved(days.from, days.to, args.infno)).await?;
    let mut out = std::io::stdout().lock();
    if args.csv {
        out.write_all(args.lang.header_of(records::csv(&moved)?).as_bytes())?;
    } else {
        writeln!(out, "Records as the platform holds them, movements of {} (Beijing time)", days.describe())?;
        out.write_all(records::table(&moved).as_bytes())?;
    }
    Ok(EXIT_OK)
}

async fn against(config: &Config, args: &ReportArgs, days: &Days, file: &Path) -> anyhow::Result<u8> {
    let Some(infno) = args.infno.filter(|i| i.is_upload()) else { bail!("--against needs --infno of an upload, ELS7002 to ELS7007") };
    let institution = file_institution(config, args.institution.as_deref())?;
    let export = read_export(file, args.format.unwrap_or_else(|| Format::guess(file)), infno)?;
    let latest = records::Latest::new(Some(institution.clone()));
    let compare = |latest: &records::Latest| reconcile::reconcile(&export, latest, &institution, days.from, days.to);
    let result = read_ledger(config, start_of(days.from), latest, compare).await?;
    let mut out = std::io::stdout().lock();
    if args.csv {
        out.write_all(args.lang.header_of(reconcile::csv(&result.lines)?).as_bytes())?;
        eprintln!("{}", result.summary());
    } else {
        writeln!(
            out,
            "{} against the platform ({institution}, {infno} {}), movements of {} (Beijing time)",
            file.display(),
            infno.describe(),
            days.describe()
        )?;
        if result.differs() {
            out.write_all(reconcile::table(&result.lines).as_bytes())?;
        }
        writeln!(out, "{}", result.summary())?;
    }
    Ok(if result.differs() { EXIT_FAILED } else { EXIT_OK })
}

/// The institution an export belongs to: `--institution`, or the only one configured.
fn file_institution(config: &Config, code: Option<&str>) -> anyhow::Result<String> {
    let codes = || config.institutions.iter().map(|i| i.fixmedins_code.as_str()).collect::<Vec<_>>().join(", ");
    match (code, config.institutions.as_slice()) {
        (Some(code), []) => Ok(code.to_owned()),
        (Some(code), _) => match config.institution(code) {
            Some(institution) => Ok(institution.fixmedins_code.clone()),
            None => bail!("--institution {code} is not configured (configured: {})", codes()),
        },
        (None, [only]) => Ok(only.fixmedins_code.clone()),
        (None, _) => bail!("--against compares one institution's export: choose it with --institution"),
    }
}

/// Reads the export, every line a valid record or an unreadable one.
fn read_export(file: &Path, format: Format, infno: Infno) -> anyhow::Result<reconcile::Export> {
    let mut lines = Lines::open(file, format).with_context(|| format!("cannot read {}", file.display()))?;
    let mut export = reconcile::Export::new(infno);
    for line in lines.by_ref() {
        let line = line.with_context(|| format!("cannot read {}", file.display()))?;
        match line.content.map_err(|e| e.to_string()).and_then(|row| Record::parse(infno, &row).map_err(|e| format!("invalid: {e}"))) {
            Ok(record) => export.add(line.number, &record),
            Err(why) => export.unreadable(line.number, why),
        }
    }
    Ok(export)
}
