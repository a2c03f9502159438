//! `els-bridge send --infno ELS700x FILE...`: uploads record files directly, without a
//! broker (back-filling history).
//!
//! Rows are validated, grouped in file order into calls of at most `batch.max_records`,
//! uploaded up to `batch.max_in_flight_per_institution` calls at once (a call holding a key
//! of an unsettled earlier call waits for it, so a correction later in a file always lands
//! after the row it corrects: `flights.rs`), retried with backoff on transient failures, and
//! bisected when the platform refuses a call, so that only the refused rows fail. Failed
//! rows go to `FILE.rejects.jsonl` next to each input, one JSON object a line:
//! `{"line": N, "reason": "...", "return_code": 13, "data": {...}}`; what was accepted or
//! refused goes to `FILE.progress.jsonl`, so that a run started again sends only what is
//! left (`progress.rs`).
//!
//! The access token is shared with every other sender of the institution: through the
//! broker when `[amqp]` is configured (the worker fleet's token, and every accepted call
//! is claimed and recorded in the receipts ledger like the worker's), else through a local
//! file (other `send` runs of this host).

mod flights;
mod link;
mod progress;
mod rejects;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use indicatif::ProgressBar;
use serde_json::{Map, Value};

use super::common;
use super::{EXIT_FAILED, EXIT_OK};
use crate::config::{Config, Institution};
use crate::input::{Format, Lines};
use crate::ledger::Provenance;
use crate::retry::Backoff;
use crate::spec::{Infno, Record};
use crate::upload::{Row, Settled};
use flights::{Flight, Flights, Landing, Verdict};
use link::Link;
use progress::{Input, Progress};
use rejects::Rejects;

/// Options of `els-bridge send`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Failed rows are written with their reasons to FILE.rejects.jsonl next to each input.\n\
What the platform accepted or refused is recorded in FILE.progress.jsonl: run the same command again after an \
interruption and only what is left is sent (--fresh sends everything again).\n\
Exit status: 0 when every row was uploaded, 1 when any row failed, 2 on usage or configuration errors.")]
pub struct SendArgs {
    /// The transaction of the records in the files.
    #[arg(long, value_name = "ELS700x")]
    infno: Infno,
    /// Record files: JSON Lines of `data` objects, or CSV with the spec's column names.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// The configuration file.
    #[arg(long, env = "ELS_BRIDGE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The institution the records belong to (needed when several are configured).
    #[arg(long, value_name = "FIXMEDINS_CODE")]
    institution: Option<String>,
    /// File layout; by default CSV for *.csv, JSON Lines otherwise.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Give up retrying transient failures after this many seconds (default: retry.max_elapsed_secs).
    #[arg(long, value_name = "SECS")]
    max_retry_secs: Option<u64>,
    /// Send every row again, ignoring (and replacing) what FILE.progress.jsonl says an
    /// earlier run settled.
    #[arg(long)]
    fresh: bool,
}

/// Counts for the summary.
#[derive(Debug, Default)]
struct Tally {
    read: u64,
    uploaded: u64,
    earlier: u64,
    superseded: u64,
    invalid: u64,
    refused: u64,
    not_uploaded: u64,
    calls: u64,
}

impl Tally {
    fn failed(&self) -> u64 {
        self.invalid + self.refused + self.not_uploaded
    }
}

/// Where a row came from and what it was, for the rejects file.
#[derive(Debug)]
pub(super) struct Origin {
    line: u64,
    data: Map<String, Value>,
}

/// File rows carry no version: the later row of a key wins.
impl Provenance for Origin {
    fn version(&self) -> Option<u64> {
        None
    }
}

/// What the run writes beside one input file.
struct Beside {
    rejects: Rejects,
    progress: Progress,
}

/// One `send` run: the flights and what has happened so far.
struct Sender<'c> {
    institution: &'c Institution,
    infno: Infno,
    flights: Flights<'c>,
    batch_size: usize,
    beside: Vec<Beside>,
    tally: Tally,
    /// Once set, nothing more is uploaded and remaining rows are reported with this reason.
    stopped: Option<String>,
}

/// Uploads the files and prints the summary.
pub async fn run(args: SendArgs) -> anyhow::Result<u8> {
    if !args.infno.is_upload() {
        bail!("--infno ELS7001 has no records: use ELS7002 to ELS7007");
    }
    let config = Config::load(args.config.as_deref())?;
    let institution = pick_institution(&config, args.institution.as_deref())?;
    let mut beside = Vec::with_capacity(args.files.len());
    let mut seen = std::collections::HashSet::new();
    for path in &args.files {
        let real = std::fs::canonicalize(path).with_context(|| format!("cannot read {}", path.display()))?;
        if !seen.insert(real) {
            bail!("{} is given twice: each file is sent once (its progress and rejects files are its own)", path.display());
        }
        let input = Input { path, infno: args.infno, institution: &institution.fixmedins_code };
        let progress = Progress::open(&input, args.fresh)?;
        if progress.resumed() {
            tracing::info!("{}: continuing an earlier run; what it settled is not sent again (--fresh sends it)", path.display());
        }
        beside.push(Beside { rejects: Rejects::next_to(path), progress });
    }

    let link = Link::open(&config).await?;
    let mut backoff = Backoff::new(&config.retry);
    if let Some(secs) = args.max_retry_secs {
        backoff.max_elapsed = std::time::Duration::from_secs(secs);
    }
    let flights = Flights::new(&config, institution, args.infno, link, backoff);
    common::cancel_on_signal(flights.cancel_token())?;

    let batch_size = config.batch.max_records;
    let mut sender = Sender { institution, infno: args.infno, flights, batch_size, beside, tally: Tally::default(), stopped: None };
    let total: u64 = args.files.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    let progress = common::progress_bar(total, true, "");
    for (file, path) in args.files.iter().enumerate() {
        let format = args.format.unwrap_or_else(|| Format::guess(path));
        sender.send_file(file, path, format, &progress).await?;
    }
    sender.land_all().await?;
    progress.finish_and_clear();
    let mut written = Vec::new();
    for beside in std::mem::take(&mut sender.beside) {
        written.extend(beside.rejects.finish()?);
    }
    sender.print_summary(&written)?;
    let failed = sender.tally.failed();
    sender.flights.close().await;
    Ok(if failed == 0 { EXIT_OK } else { EXIT_FAILED })
}

fn pick_institution<'c>(config: &'c Config, code: Option<&str>) -> anyhow::Result<&'c Institution> {
    let codes = || config.institutions.iter().map(|i| i.fixmedins_code.as_str()).collect::<Vec<_>>().join(", ");
    match (code, config.institutions.as_slice()) {
        (_, []) => bail!("no institution is configured: add an [[institutions]] section"),
        (None, [only]) => Ok(only),
        (None, _) => bail!("several institutions are configured ({}): choose one with --institution", codes()),
        (Some(code), _) => {
            config.institution(code).with_context(|| format!("--institution {code} is not configured (configured: {})", codes()))
        }
    }
}

impl Sender<'_> {
    /// Reads and validates one file, sending its rows in batches as they fill.
    async fn send_file(&mut self, file: usize, path: &Path, format: Format, progress: &ProgressBar) -> anyhow::Result<()> {
        let mut lines = Lines::open(path, format).with_context(|| format!("cannot read {}", path.display()))?;
        let mut batch: Vec<Row<Origin>> = Vec::with_capacity(self.batch_size);
        let start_position = progress.position();
        while let Some(line) = lines.next() {
            let line = line.with_context(|| format!("cannot read {}", path.display()))?;
            progress.set_position(start_position + lines.consumed());
            self.tally.read += 1;
            if self.settled_earlier(file, line.number, &line.content)? {
                continue;
            }
            let row = match line.content {
                Err(error) => {
                    self.tally.invalid += 1;
                    self.beside[file].rejects.write(line.number, &error.to_string(), None, Value::Null)?;
                    continue;
                }
                Ok(row) => row,
            };
            match Record::parse(self.infno, &row) {
                Err(errors) => {
                    self.tally.invalid += 1;
                    self.beside[file].rejects.write(line.number, &format!("invalid: {errors}"), None, Value::Object(row))?;
                }
                Ok(record) => {
                    // Within one call the later row of a key wins, as it would at the platform.
                    if let Some(earlier) = batch.iter().position(|r| r.record.key() == record.key()) {
                        batch.remove(earlier);
                        self.tally.superseded += 1;
                    }
                    batch.push(Row { record, source: Origin { line: line.number, data: row } });
                    if batch.len() == self.batch_size {
                        self.dispatch(file, std::mem::take(&mut batch)).await?;
                        progress.set_message(format!("uploaded {}, failed {}", self.tally.uploaded, self.tally.failed()));
                    }
                }
            }
        }
        self.dispatch(file, batch).await
    }

    /// Whether an earlier run settled `line` (accepted it, or had it refused, which goes to
    /// the rejects file again with that refusal).
    fn settled_earlier(
        &mut self,
        file: usize,
        line: u64,
        content: &Result<Map<String, Value>, crate::input::LineError>,
    ) -> anyhow::Result<bool> {
        let beside = &mut self.beside[file];
        if beside.progress.accepted_earlier(line) {
            self.tally.earlier += 1;
            return Ok(true);
        }
        let Some(refusal) = beside.progress.refused_earlier(line) else { return Ok(false) };
        self.tally.refused += 1;
        let reason = format!("refused by the platform (in an earlier run): returnCode {}: {}", refusal.return_code, refusal.message);
        let data = content.as_ref().map_or(Value::Null, |row| Value::Object(row.clone()));
        beside.rejects.write(line, &reason, Some(refusal.return_code), data)?;
        Ok(true)
    }

    /// Starts `rows` of `file` as one flight once it may start (settling what lands
    /// meanwhile), or reports them not uploaded once the run has stopped.
    async fn dispatch(&mut self, file: usize, rows: Vec<Row<Origin>>) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        while self.stopped.is_none() && !self.flights.may_start(&rows) {
            self.land_one().await?;
        }
        if self.flights.cancel_token().is_cancelled() && self.stopped.is_none() {
            self.stopped = Some("interrupted before upload".into());
        }
        match &self.stopped {
            Some(reason) => {
                let reason = format!("not uploaded: {reason}");
                self.give_up(file, rows, &reason)
            }
            None => {
                self.flights.start(Flight::new(file, rows)).await;
                Ok(())
            }
        }
    }

    /// Settles every flight still in the air.
    async fn land_all(&mut self) -> anyhow::Result<()> {
        while !self.flights.is_empty() {
            self.land_one().await?;
        }
        Ok(())
    }

    /// Waits for the next flight to come back and settles what it brings: accepted and
    /// refused rows are recorded, unsettled ones retried or, once the run stops, rejected.
    async fn land_one(&mut self) -> anyhow::Result<()> {
        let Some(Landing { mut flight, superseded, settled, calls }) = self.flights.next_landing().await else { return Ok(()) };
        self.tally.calls += calls;
        self.tally.superseded += superseded.len() as u64;
        self.flights.settled(&superseded);
        let file = flight.file;
        let mut unsettled = None;
        for group in settled {
            match group {
                Settled::Accepted { rows, .. } => {
                    self.tally.uploaded += rows.len() as u64;
                    self.beside[file].progress.accepted(rows.iter().map(|r| r.source.line))?;
                    self.flights.settled(&rows);
                }
                Settled::Refused { row, code, message } => self.refused(file, row, code, &message)?,
                Settled::Unsettled { rows, outcome } => {
                    flight.rows.extend(rows);
                    unsettled = Some(outcome);
                }
            }
        }
        let Some(outcome) = unsettled else { return Ok(()) };
        if self.stopped.is_none() {
            match self.flights.verdict(&mut flight, &outcome) {
                Verdict::Retry(wait) => {
                    self.flights.retry(flight, wait).await;
                    return Ok(());
                }
                Verdict::Stop(reason) => self.stopped = Some(reason),
            }
        }
        let reason = format!("not uploaded: {}", self.stopped.as_deref().unwrap_or_default());
        self.flights.settled(&flight.rows);
        self.give_up(file, std::mem::take(&mut flight.rows), &reason)
    }

    /// Records a row the platform refused: in the progress file and the rejects file.
    fn refused(&mut self, file: usize, row: Row<Origin>, code: u32, message: &str) -> anyhow::Result<()> {
        self.tally.refused += 1;
        self.flights.settled([&row]);
        let beside = &mut self.beside[file];
        beside.progress.refused(row.source.line, code, message)?;
        let reason = format!("refused by the platform: returnCode {code}: {message}");
        beside.rejects.write(row.source.line, &reason, Some(code), Value::Object(row.source.data))
    }

    /// Reports `rows` not uploaded (the caller has let [`Flights`] forget the keys of rows
    /// that were in flight).
    fn give_up(&mut self, file: usize, rows: Vec<Row<Origin>>, reason: &str) -> anyhow::Result<()> {
        for row in rows {
            self.tally.not_uploaded += 1;
            self.beside[file].rejects.write(row.source.line, reason, None, Value::Object(row.source.data))?;
        }
        Ok(())
    }

    fn print_summary(&self, rejects: &[(PathBuf, u64)]) -> anyhow::Result<()> {
        let (t, infno, i) = (&self.tally, self.infno, self.institution);
        let mut out = std::io::stdout().lock();
        writeln!(out, "{infno} ({}) for {} {}", infno.describe(), i.fixmedins_code, i.fixmedins_name)?;
        writeln!(out, "  rows read     {:>8}", t.read)?;
        writeln!(out, "  uploaded      {:>8}", t.uploaded)?;
        if t.earlier > 0 {
            writeln!(out, "  accepted before {:>6}  (by an earlier run, per FILE.progress.jsonl: not sent again)", t.earlier)?;
        }
        writeln!(out, "  superseded    {:>8}  (a later row of the same key came after it)", t.superseded)?;
        writeln!(out, "  invalid       {:>8}", t.invalid)?;
        writeln!(out, "  refused       {:>8}", t.refused)?;
        writeln!(out, "  not uploaded  {:>8}", t.not_uploaded)?;
        writeln!(out, "  upload calls  {:>8}", t.calls)?;
        if let Some(reason) = &self.stopped {
            writeln!(out, "stopped early: {reason}")?;
        }
        for (path, rows) in rejects {
            writeln!(out, "{rows} failed rows with reasons in {}", path.display())?;
        }
        Ok(())
    }
}
