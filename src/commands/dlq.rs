//! `els-bridge dlq stats | peek | replay`: the dead-letter queue (`amqp.dead_letter_queue`,
//! `els.dead` by default) for operators: count, look, move back.
//!
//! Reading never disturbs the queue (see [`crate::dlq`]): what a command does not move
//! goes back in its original order with its headers. `replay` republishes each matching
//! dead letter to the events exchange and removes it only after the broker confirmed the
//! copy, so an interruption at any moment (SIGKILL included) loses nothing.

use std::io::Write;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use indicatif::ProgressBar;
use lapin::Connection;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::common::{self, Pace, load_config, parse_rate};
use super::{EXIT_FAILED, EXIT_OK};
use crate::beijing;
use crate::broker;
use crate::config::{AmqpSettings, Config};
use crate::contract::rfc3339;
use crate::dlq::filter::parse_time;
use crate::dlq::reader::Taken;
use crate::dlq::replay::{Outcome, republish};
use crate::dlq::sheet::Sheet;
use crate::dlq::triage::{By, Triage};
use crate::dlq::{DeadLetter, Filter, Reader, Reason, Replayer, Stats};
use crate::sheet_lang::Lang;
use crate::spec::Infno;

/// A message read this often is close to the default `delivery-limit` of RabbitMQ 4 (20),
/// past which the broker drops it from a queue that has no higher limit: warn.
const MANY_READS: i64 = 15;

/// Options of `els-bridge dlq`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Reading never removes or reorders anything; only `replay` (without --dry-run) moves messages.\n\
Each read adds one to the broker's x-delivery-count of every message read. RabbitMQ 4.0 and later drop a message from \
a quorum queue after delivery-limit returns (20 by default): the worker declares the dead-letter queue with a limit no \
message reaches; one created by a release before that needs a policy (README, RabbitMQ versions).")]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DlqCommand {
    /// Count dead letters by reason, infno and institution, with oldest and newest failure;
    /// or, with --by, by return code, field or offending value, most frequent first.
    #[command(
        after_help = "--by return-code: by the platform's returnCode (x-els-return-code) with its meaning; invalid letters were never sent and have none.
--by field: by the field named in the error (x-els-error); the platform's refusals name none.
--by value: by return code, field and offending value: the value quoted in the error of an invalid letter, and for a refusal (which never says which field was wrong) the record's product code: prov_plaf_prod_code, or drug_code / mcs_code when that is \"0\". A letter naming several fields counts under each."
    )]
    Stats(StatsArgs),
    /// Show dead letters: their headers (reason, error, return code, attempts, times) and
    /// record; --csv for a spreadsheet.
    #[command(
        after_help = "--csv writes one row per dead letter with the product (codes, name, specification, manufacturer, distributor), quantity, price, movement time, reason, return code and its meaning, error and failure times in Beijing time: every matching dead letter unless --count is given."
    )]
    Peek(PeekArgs),
    /// Move dead letters back to the events exchange (default: rejected and exhausted ones).
    #[command(after_help = "Each copy is confirmed by the broker before its dead letter is removed; interrupted at any \
moment, a message is at worst both replayed and still in the dead-letter queue. Copies lose x-els-reason, x-els-error, \
x-els-return-code, x-els-attempts, x-els-first-failed-at, x-els-last-failed-at, x-els-parked-until, x-death, x-delivery-count \
and x-acquired-count (a fresh \
retry budget) and get x-els-replayed (count) and x-els-replayed-at.\n\
Exit status: 0 when every selected dead letter was moved (or, with --dry-run, listed), 1 otherwise, 2 on usage errors.")]
    Replay(ReplayArgs),
}

/// Where the broker is.
#[derive(Debug, clap::Args)]
struct Connect {
    /// The configuration file ([amqp], and institutions for events that omit theirs).
    #[arg(long, env = "ELS_BRIDGE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Which dead letters.
#[derive(Debug, clap::Args)]
struct Filters {
    /// Only this reason (repeat or separate with commas for several).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "REASON")]
    reason: Vec<Reason>,
    /// Only this transaction.
    #[arg(long, value_name = "ELS700x")]
    infno: Option<Infno>,
    /// Only this institution.
    #[arg(long, value_name = "FIXMEDINS_CODE")]
    institution: Option<String>,
    /// Only those whose last failure is at or after this time (RFC 3339, or "yyyy-MM-dd HH:mm:ss" in Beijing time).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// Only those whose last failure is before this time (RFC 3339, or "yyyy-MM-dd HH:mm:ss" in Beijing time).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    until: Option<DateTime<Utc>>,
}

impl Filters {
    fn filter(&self, default_reasons: &[Reason]) -> Filter {
        Filter {
            reasons: if self.reason.is_empty() { default_reasons.to_vec() } else { self.reason.clone() },
            infno: self.infno,
            institution: self.institution.clone(),
            since: self.since,
            until: self.until,
        }
    }
}

/// Options of `dlq stats`.
#[derive(Debug, clap::Args)]
struct StatsArgs {
    #[command(flatten)]
    connect: Connect,
    #[command(flatten)]
    filters: Filters,
    /// Group by the platform's return code, the field named in the error, or the offending value.
    #[arg(long, value_enum, value_name = "GROUPING")]
    by: Option<By>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Options of `dlq peek`.
#[derive(Debug, clap::Args)]
struct PeekArgs {
    #[command(flatten)]
    connect: Connect,
    #[command(flatten)]
    filters: Filters,
    /// Show at most this many (from the head of the queue; default 10, with --csv all).
    #[arg(short = 'n', long = "count", value_name = "N")]
    count: Option<u64>,
    /// Print one JSON object a line instead of text.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV for a spreadsheet (the summary goes to standard error).
    #[arg(long)]
    csv: bool,
    /// Language of the CSV's column headers: en (README's names) or zh-CN (Chinese, for the purchasing office).
    #[arg(long, value_enum, default_value = "en", requires = "csv")]
    lang: Lang,
}

/// How `dlq peek` prints what it shows.
enum Shown<'a> {
    Text(std::io::StdoutLock<'a>),
    Json(std::io::StdoutLock<'a>),
    Csv(Box<Sheet<std::io::StdoutLock<'a>>>),
}

impl Shown<'_> {
    fn of(args: &PeekArgs) -> Self {
        let out = std::io::stdout().lock();
        if args.csv {
            Shown::Csv(Box::new(Sheet::in_lang(out, args.lang)))
        } else if args.json {
            Shown::Json(out)
        } else {
            Shown::Text(out)
        }
    }

    fn show(&mut self, number: u64, letter: &DeadLetter) -> anyhow::Result<()> {
        match self {
            Shown::Text(out) => write!(out, "{}", describe(number, letter))?,
            Shown::Json(out) => writeln!(out, "{}", letter.to_json())?,
            Shown::Csv(sheet) => sheet.add(letter)?,
        }
        Ok(())
    }

    /// Ends the output with `footer`: on standard error for machine formats.
    fn finish(self, footer: &str) -> anyhow::Result<()> {
        match self {
            Shown::Text(mut out) => writeln!(out, "{footer}")?,
            Shown::Json(_) => eprintln!("{footer}"),
            Shown::Csv(sheet) => {
                sheet.finish()?;
                eprintln!("{footer}");
            }
        }
        Ok(())
    }
}

/// Options of `dlq replay`.
#[derive(Debug, clap::Args)]
struct ReplayArgs {
    #[command(flatten)]
    connect: Connect,
    #[command(flatten)]
    filters: Filters,
    /// Move at most this many.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Print what would move and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Move at most this many per second.
    #[arg(long, value_name = "N", value_parser = parse_rate)]
    rate: Option<f64>,
}

/// Runs the subcommand.
pub async fn run(args: DlqArgs) -> anyhow::Result<u8> {
    match args.command {
        DlqCommand::Stats(args) => stats(args).await,
        DlqCommand::Peek(args) => peek(args).await,
        DlqCommand::Replay(args) => replay(args).await,
    }
}

/// The broker of the configuration, connected.
struct Session {
    amqp: AmqpSettings,
    connection: Connection,
    /// The institution of a configuration with exactly one (events may omit it).
    only_institution: Option<String>,
}

impl Session {
    async fn open(connect: &Connect, name: &str) -> anyhow::Result<Session> {
        let config: Config = load_config(connect.config.as_deref())?;
        let amqp = config.amqp.clone().unwrap_or_default();
        let connection = broker::connect(&amqp, name).await.map_err(|e| anyhow::anyhow!("cannot connect to the broker: {e}"))?;
        let only_institution = match config.institutions.as_slice() {
            [only] => Some(only.fixmedins_code.clone()),
            _ => None,
        };
        Ok(Session { amqp, connection, only_institution })
    }

    fn read(&self, taken: &Taken) -> DeadLetter {
        DeadLetter::read(&taken.delivery.properties, &taken.delivery.data, self.only_institution.as_deref())
    }

    async fn close(self) {
        // lapin can fail to complete a close; the broker cleans up either way.
        broker::close(&self.connection, "done").await;
    }
}

/// Warns (once) on standard error about things an operator should know while reading.
#[derive(Default)]
struct Warnings {
    many_reads: bool,
}

impl Warnings {
    fn opened(&self, reader: &Reader<'_>, queue: &str) {
        if reader.other_consumers() > 0 {
            eprintln!(
                "warning: {} other consumer(s) on {queue} (another dlq command, or one just stopped): the messages they hold are not seen",
                reader.other_consumers()
            );
        }
    }

    fn read(&mut self, letter: &DeadLetter) {
        if !self.many_reads && letter.delivery_count.is_some_and(|n| n >= MANY_READS) {
            self.many_reads = true;
            eprintln!(
                "warning: some dead letters were delivered {}+ times (x-delivery-count); RabbitMQ 4.0 and later drop a \
                 quorum-queue message past its delivery-limit (20 unless set): if the worker warned that this queue has no \
                 delivery limit argument, give it the policy shown in README (RabbitMQ versions) before reading it again",
                MANY_READS
            );
        }
    }
}

async fn stats(args: StatsArgs) -> anyhow::Result<u8> {
    let session = Session::open(&args.connect, "els-bridge dlq stats").await?;
    let filter = args.filters.filter(&[]);
    let queue = session.amqp.dead_letter_queue.clone();
    let mut reader = Reader::open(&session.connection, &queue).await?;
    let mut warnings = Warnings::default();
    warnings.opened(&reader, &queue);
    let mut stats = Stats::default();
    let mut triage = args.by.map(Triage::new);
    let progress = common::progress_bar(reader.present(), false, "read");
    while let Some(taken) = reader.next().await? {
        progress.set_position(reader.scanned());
        let letter = session.read(&taken);
        warnings.read(&letter);
        if filter.matches(&letter) {
            stats.add(&letter);
            if let Some(triage) = triage.as_mut() {
                triage.add(&letter);
            }
        }
    }
    progress.finish_and_clear();
    let (present, scanned) = (reader.present(), reader.scanned());
    finish(reader, &queue).await;
    session.close().await;
    if let Some(triage) = triage {
        print_triage(&triage, args.json, &queue, scanned, present, &filter);
    } else if args.json {
        let mut json = stats.to_json();
        json["queue"] = json!(queue);
        json["scanned"] = json!(scanned);
        json["filter"] = json!(filter.describe());
        println!("{json}");
    } else {
        println!("{queue}: {} dead letters counted of {scanned} read ({present} present; filter: {})\n", stats.total(), filter.describe());
        print!("{}", stats.table());
    }
    Ok(EXIT_OK)
}

/// Prints the groups of `dlq stats --by`.
fn print_triage(triage: &Triage, json: bool, queue: &str, scanned: u64, present: u64, filter: &Filter) {
    if json {
        let mut json = triage.to_json();
        json["queue"] = json!(queue);
        json["scanned"] = json!(scanned);
        json["filter"] = json!(filter.describe());
        println!("{json}");
    } else {
        println!(
            "{queue}: {} dead letters counted of {scanned} read ({present} present; filter: {}), by {}\n",
            triage.letters(),
            filter.describe(),
            triage.by().as_str()
        );
        print!("{}", triage.table());
    }
}

async fn peek(args: PeekArgs) -> anyhow::Result<u8> {
    let session = Session::open(&args.connect, "els-bridge dlq peek").await?;
    let filter = args.filters.filter(&[]);
    let queue = session.amqp.dead_letter_queue.clone();
    let mut reader = Reader::open(&session.connection, &queue).await?;
    let mut warnings = Warnings::default();
    warnings.opened(&reader, &queue);
    let limit = args.count.unwrap_or(if args.csv { u64::MAX } else { 10 });
    let mut output = Shown::of(&args);
    let (mut shown, mut matching) = (0, 0);
    let progress = common::progress_bar(reader.present(), false, "read");
    // Read to the end even when enough are shown: giving back only part of what was read
    // could change the queue's order (see dlq::reader).
    while let Some(taken) = reader.next().await? {
        progress.set_position(reader.scanned());
        let letter = session.read(&taken);
        warnings.read(&letter);
        if !filter.matches(&letter) {
            continue;
        }
        matching += 1;
        if shown < limit {
            shown += 1;
            progress.suspend(|| output.show(shown, &letter))?;
        }
    }
    progress.finish_and_clear();
    let (present, scanned) = (reader.present(), reader.scanned());
    finish(reader, &queue).await;
    session.close().await;
    let footer = format!(
        "{shown} shown of {matching} matching; {scanned} of {present} dead letters in {queue} read (filter: {})",
        filter.describe()
    );
    output.finish(&footer)?;
    Ok(EXIT_OK)
}

/// Ends a scan; should closing fail, the broker puts the messages back when the
/// connection closes, so a warning is enough.
async fn finish(reader: Reader<'_>, queue: &str) {
    if let Err(error) = reader.finish().await {
        eprintln!("warning: {error}; the broker puts what was read back into {queue} when the connection closes");
    }
}

/// A dead letter for people.
fn describe(number: u64, letter: &DeadLetter) -> String {
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let time = |t: Option<DateTime<Utc>>| t.map_or_else(|| "-".to_owned(), |t| format!("{} (Beijing)  {}", beijing::format(t), rfc3339(t)));
    let replayed = match letter.replayed {
        0 => "never".to_owned(),
        n => format!("{n} time(s), last {}", time(letter.replayed_at)),
    };
    format!(
        "#{number} {}  {}  {} {}  key {}\n  error:        {}\n  return code:  {}\n  attempts:     {}\n  first failed: {}\n  last failed:  {}\n  replayed:     {replayed}\n  reads:        {} (x-delivery-count)\n  record:       {}\n\n",
        or_dash(letter.message_id.clone()),
        letter.reason.as_str(),
        or_dash(letter.infno.clone()),
        or_dash(letter.institution.clone()),
        or_dash(letter.key.clone()),
        or_dash(letter.error.clone()),
        or_dash(letter.return_code.map(|c| c.to_string())),
        or_dash(letter.attempts.map(|c| c.to_string())),
        time(letter.first_failed_at),
        time(letter.last_failed_at),
        letter.delivery_count.unwrap_or(0),
        letter.record(),
    )
}

/// Counts of a replay.
#[derive(Debug, Default)]
struct Tally {
    matched: u64,
    over_limit: u64,
    kept: u64,
    moved: u64,
    not_moved: u64,
}

impl Tally {
    /// Whether `letter` is to be moved: it matches and the limit is not reached. Over the
    /// limit it is read on and held: giving back only part of what was read could change
    /// the queue's order (see dlq::reader).
    fn wanted(&mut self, filter: &Filter, limit: Option<u64>, letter: &DeadLetter) -> bool {
        if !filter.matches(letter) {
            self.kept += 1;
            return false;
        }
        if limit.is_some_and(|limit| self.matched >= limit) {
            self.over_limit += 1;
            return false;
        }
        self.matched += 1;
        true
    }

    fn count(&mut self, outcomes: Vec<Outcome>, progress: &ProgressBar) {
        for outcome in outcomes {
            match outcome.result {
                Ok(()) => self.moved += 1,
                Err(why) => {
                    self.not_moved += 1;
                    let id = outcome.message_id.unwrap_or_else(|| "(no message_id)".to_owned());
                    progress.suspend(|| println!("not moved: {id}: {why}"));
                }
            }
        }
        progress.set_message(format!("moved {}", self.moved));
    }
}

async fn replay(args: ReplayArgs) -> anyhow::Result<u8> {
    let session = Session::open(&args.connect, "els-bridge dlq replay").await?;
    let filter = args.filters.filter(&Filter::REPLAY_DEFAULT);
    let queue = session.amqp.dead_letter_queue.clone();
    let exchange = session.amqp.exchange.clone();
    let mut reader = Reader::open(&session.connection, &queue).await?;
    let mut replayer = if args.dry_run { None } else { Some(Replayer::open(&session.connection, &exchange).await?) };
    let mut warnings = Warnings::default();
    warnings.opened(&reader, &queue);

    let cancel = CancellationToken::new();
    common::cancel_on_signal(cancel.clone())?;
    let progress = common::progress_bar(reader.present(), false, "read");
    let mut pace = Pace::new(args.rate);
    let mut tally = Tally::default();
    let mut stopped: Option<String> = None;
    loop {
        if cancel.is_cancelled() {
            stopped = Some("interrupted".into());
            break;
        }
        if let Some(replayer) = replayer.as_mut()
            && reader.is_full()
            && replayer.in_flight() > 0
        {
            // Settle before the reader moves on to a new channel (see dlq::reader).
            tally.count(replayer.settle_all(&mut reader).await, &progress);
        }
        let taken = match reader.next().await {
            Ok(Some(taken)) => taken,
            Ok(None) => break,
            Err(error) => {
                stopped = Some(error.to_string());
                break;
            }
        };
        progress.set_position(reader.scanned());
        let letter = session.read(&taken);
        warnings.read(&letter);
        if !tally.wanted(&filter, args.limit, &letter) {
            continue;
        }
        let copy = republish(&letter, &taken.delivery.properties, taken.delivery.routing_key.as_str(), Utc::now());
        let Some(replayer) = replayer.as_mut() else {
            progress.suspend(|| println!("{}", would_move(&letter, &exchange, &copy.routing_key)));
            continue;
        };
        tokio::select! {
            () = pace.wait() => {}
            () = cancel.cancelled() => {
                stopped = Some("interrupted".into());
                break;
            }
        }
        match replayer.send(&mut reader, taken, copy, letter.message_id.clone()).await {
            Ok(outcomes) => tally.count(outcomes, &progress),
            Err(error) => {
                tally.not_moved += 1;
                stopped = Some(error.to_string());
                break;
            }
        }
    }
    if let Some(replayer) = replayer.as_mut() {
        tally.count(replayer.settle_all(&mut reader).await, &progress);
    }
    let (present, scanned) = (reader.present(), reader.scanned());
    finish(reader, &queue).await;
    session.close().await;
    progress.finish_and_clear();

    println!("{scanned} of {present} dead letters in {queue} read (filter: {})", filter.describe());
    Ok(replay_summary(&args, &tally, stopped.as_deref(), &queue, &exchange))
}

/// The line `dlq replay --dry-run` prints for a dead letter it would move.
fn would_move(letter: &DeadLetter, exchange: &str, routing_key: &str) -> String {
    format!(
        "would move: {}  {}  {} {}  key {}  last failed {}  → {exchange} {routing_key}",
        letter.message_id.as_deref().unwrap_or("(no message_id)"),
        letter.reason.as_str(),
        letter.infno.as_deref().unwrap_or("-"),
        letter.institution.as_deref().unwrap_or("-"),
        letter.key.as_deref().unwrap_or("-"),
        letter.last_failed_at.map_or_else(|| "-".to_owned(), rfc3339),
    )
}

/// Prints what a replay did (or would do) and returns its exit status: 0 only when every
/// match was moved and nothing stopped the run early.
fn replay_summary(args: &ReplayArgs, tally: &Tally, stopped: Option<&str>, queue: &str, exchange: &str) -> u8 {
    if args.dry_run {
        println!("dry run: {} would be moved to {exchange}; nothing was changed", tally.matched);
    } else {
        println!(
            "{} matched: {} moved to {exchange}, {} not moved; {} others left in {queue}",
            tally.matched, tally.moved, tally.not_moved, tally.kept
        );
    }
    if tally.over_limit > 0 {
        println!("--limit {}: {} more match and were left in {queue}", args.limit.unwrap_or_default(), tally.over_limit);
    }
    if let Some(why) = stopped {
        println!("stopped early: {why}; what was not moved stays in {queue}");
    }
    let complete = stopped.is_none() && (args.dry_run || tally.moved == tally.matched);
    if complete { EXIT_OK } else { EXIT_FAILED }
}
