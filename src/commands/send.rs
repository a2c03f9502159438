//! `els-bridge send --infno ELS700x FILE...`: uploads record files directly, without a
//! broker (back-filling history).
//!
//! Rows are validated, grouped in file order into calls of at most `batch.max_records`,
//! uploaded one call at a time (so a correction later in a file always lands after the row
//! it corrects), retried with backoff on transient failures, and bisected when the platform
//! refuses a call, so that only the refused rows fail. Failed rows go to
//! `FILE.rejects.jsonl` next to each input, one JSON object a line:
//! `{"line": N, "reason": "...", "return_code": 13, "data": {...}}`.
//!
//! The access token is shared with every other sender of the institution: through the
//! broker when `[amqp]` is configured (the worker fleet's token, and every accepted call
//! is claimed and recorded in the receipts ledger like the worker's), else through a local
//! file (other `send` runs of this host).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::ProgressBar;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::common;
use super::{EXIT_FAILED, EXIT_OK};
use crate::broker;
use crate::config::{Config, Institution};
use crate::input::{Format, Lines};
use crate::ledger::{Ledger, Provenance};
use crate::platform::{FileTokenStore, MsgIdSlot, MsgIds, Outcome, PlatformClient, TokenStore, Tokens};
use crate::retry::Backoff;
use crate::spec::{Infno, Record};
use crate::upload::{Row, Settled, Uploader, claimed};

/// Options of `els-bridge send`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Failed rows are written with their reasons to FILE.rejects.jsonl next to each input.\n\
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
}

/// Counts for the summary.
#[derive(Debug, Default)]
struct Tally {
    read: u64,
    uploaded: u64,
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
struct Origin {
    line: u64,
    data: Map<String, Value>,
}

/// File rows carry no version: the later row of a key wins.
impl Provenance for Origin {
    fn version(&self) -> Option<u64> {
        None
    }
}

/// Writes the failed rows of one input file, created on the first failure.
struct Rejects {
    path: PathBuf,
    file: Option<BufWriter<File>>,
    rows: u64,
}

impl Rejects {
    fn next_to(input: &Path) -> Rejects {
        let mut name = input.file_name().unwrap_or_default().to_os_string();
        name.push(".rejects.jsonl");
        Rejects { path: input.with_file_name(name), file: None, rows: 0 }
    }

    fn write(&mut self, line: u64, reason: &str, return_code: Option<u32>, data: Value) -> anyhow::Result<()> {
        if self.file.is_none() {
            let file = File::create(&self.path).with_context(|| format!("cannot write {}", self.path.display()))?;
            self.file = Some(BufWriter::new(file));
        }
        let entry = json!({ "line": line, "reason": reason, "return_code": return_code, "data": data });
        let file = self.file.as_mut().expect("opened above");
        writeln!(file, "{entry}").with_context(|| format!("cannot write {}", self.path.display()))?;
        self.rows += 1;
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<Option<(PathBuf, u64)>> {
        match self.file.take() {
            Some(mut file) => {
                file.flush().with_context(|| format!("cannot write {}", self.path.display()))?;
                Ok(Some((self.path, self.rows)))
            }
            None => {
                // A rejects file of an earlier run would now be misleading.
                let _ = std::fs::remove_file(&self.path);
                Ok(None)
            }
        }
    }
}

/// One `send` run: the uploader and what has happened so far.
struct Sender<'c> {
    config: &'c Config,
    institution: &'c Institution,
    uploader: Uploader,
    /// Tokens, msgid slot and ledger; opened again when a broker connection is lost.
    shared: SharedState,
    backoff: Backoff,
    batch_size: usize,
    cancel: CancellationToken,
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
    for path in &args.files {
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    }

    let shared = SharedState::open(&config).await?;
    let uploader = uploader_for(&config, &shared)?;
    let mut backoff = Backoff::new(&config.retry);
    if let Some(secs) = args.max_retry_secs {
        backoff.max_elapsed = Duration::from_secs(secs);
    }

    let cancel = CancellationToken::new();
    common::cancel_on_signal(cancel.clone())?;

    let mut sender = Sender {
        config: &config,
        institution,
        uploader,
        shared,
        backoff,
        batch_size: config.batch.max_records,
        cancel,
        tally: Tally::default(),
        stopped: None,
    };
    let total: u64 = args.files.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    let progress = common::progress_bar(total, true, "");
    let mut written = Vec::new();
    for path in &args.files {
        let format = args.format.unwrap_or_else(|| Format::guess(path));
        if let Some(rejects) = sender.send_file(path, format, args.infno, &progress).await? {
            written.push(rejects);
        }
    }
    progress.finish_and_clear();
    sender.print_summary(args.infno, &written)?;
    let failed = sender.tally.failed();
    sender.shared.close().await;
    Ok(if failed == 0 { EXIT_OK } else { EXIT_FAILED })
}

/// The uploader of a run: the platform client numbering in the run's msgid slot, with its
/// shared tokens.
fn uploader_for(config: &Config, shared: &SharedState) -> anyhow::Result<Uploader> {
    let client = PlatformClient::new(&config.platform, Arc::new(MsgIds::new(shared.slot)))?;
    let tokens = Tokens::new(Arc::clone(&shared.store), client.clone(), Duration::from_secs(config.platform.token_refresh_lead_secs));
    Ok(Uploader::new(client, tokens))
}

/// Where this run shares tokens and its msgid slot with other processes: the fleet's broker
/// when `[amqp]` is configured, else a file beside the token file (processes of this host).
struct SharedState {
    store: Arc<dyn TokenStore>,
    slot: u16,
    /// The fleet's receipts ledger, with a broker: uploads are claimed and recorded.
    ledger: Option<Ledger>,
    /// Holds the slot: the local lock file, or the broker connection.
    holder: SlotHolder,
    /// With a broker: cancelled when the token or ledger stream is no longer read.
    streams_lost: CancellationToken,
}

enum SlotHolder {
    Local(MsgIdSlot),
    Broker(Box<lapin::Connection>),
}

impl SharedState {
    async fn open(config: &Config) -> anyhow::Result<SharedState> {
        match &config.amqp {
            Some(amqp) => {
                let connection = broker::connect(amqp, "els-bridge send").await.context("cannot connect to the broker of [amqp]")?;
                let store = broker::token_store::start(&connection, &amqp.name_prefix).await?;
                let slot = broker::msgid_slot::claim_msgid_slot(&connection, &amqp.name_prefix).await?;
                let ledger = Ledger::open(&connection, &amqp.name_prefix, &config.ledger).await?;
                let streams_lost = broker::log::any_lost(vec![store.lost(), ledger.lost()]);
                let holder = SlotHolder::Broker(Box::new(connection));
                Ok(SharedState { store, slot, ledger: Some(ledger), holder, streams_lost })
            }
            None => {
                let token_file = config.platform.token_file.clone().unwrap_or_else(FileTokenStore::default_path);
                let state_dir = token_file.parent().unwrap_or(Path::new(".")).to_path_buf();
                let slot =
                    MsgIdSlot::claim_local(&state_dir).with_context(|| format!("cannot claim a msgid slot in {}", state_dir.display()))?;
                let store = Arc::new(FileTokenStore::new(token_file, &config.platform.url));
                Ok(SharedState {
                    store,
                    slot: slot.slot,
                    ledger: None,
                    holder: SlotHolder::Local(slot),
                    streams_lost: CancellationToken::new(),
                })
            }
        }
    }

    /// Whether the broker connection, or a stream on it, was lost (never without a broker).
    fn lost(&self) -> bool {
        match &self.holder {
            SlotHolder::Local(_) => false,
            SlotHolder::Broker(connection) => !connection.status().connected() || self.streams_lost.is_cancelled(),
        }
    }

    /// Releases the slot (and the broker connection).
    async fn close(self) {
        drop(self.ledger);
        match self.holder {
            SlotHolder::Local(slot) => drop(slot),
            SlotHolder::Broker(connection) => {
                broker::close(&connection, "done").await;
            }
        }
    }
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
    /// Reads, validates and uploads one file; returns its rejects file, if any.
    async fn send_file(
        &mut self,
        path: &Path,
        format: Format,
        infno: Infno,
        progress: &ProgressBar,
    ) -> anyhow::Result<Option<(PathBuf, u64)>> {
        let mut lines = Lines::open(path, format).with_context(|| format!("cannot read {}", path.display()))?;
        let mut rejects = Rejects::next_to(path);
        let mut batch: Vec<Row<Origin>> = Vec::with_capacity(self.batch_size);
        let start_position = progress.position();
        while let Some(line) = lines.next() {
            let line = line.with_context(|| format!("cannot read {}", path.display()))?;
            progress.set_position(start_position + lines.consumed());
            self.tally.read += 1;
            let row = match line.content {
                Err(error) => {
                    self.tally.invalid += 1;
                    rejects.write(line.number, &error.to_string(), None, Value::Null)?;
                    continue;
                }
                Ok(row) => row,
            };
            match Record::parse(infno, &row) {
                Err(errors) => {
                    self.tally.invalid += 1;
                    rejects.write(line.number, &format!("invalid: {errors}"), None, Value::Object(row))?;
                }
                Ok(record) => {
                    // Within one call the later row of a key wins, as it would at the platform.
                    if let Some(earlier) = batch.iter().position(|r| r.record.key() == record.key()) {
                        batch.remove(earlier);
                        self.tally.superseded += 1;
                    }
                    batch.push(Row { record, source: Origin { line: line.number, data: row } });
                    if batch.len() == self.batch_size {
                        self.upload(infno, std::mem::take(&mut batch), &mut rejects).await?;
                        progress.set_message(format!("uploaded {}, failed {}", self.tally.uploaded, self.tally.failed()));
                    }
                }
            }
        }
        self.upload(infno, batch, &mut rejects).await?;
        rejects.finish()
    }

    /// Uploads one batch, retrying transient failures; every row ends uploaded or rejected.
    async fn upload(&mut self, infno: Infno, rows: Vec<Row<Origin>>, rejects: &mut Rejects) -> anyhow::Result<()> {
        let mut pending = rows;
        let mut first_failure: Option<Instant> = None;
        let mut attempt = 0;
        while !pending.is_empty() {
            if self.cancel.is_cancelled() && self.stopped.is_none() {
                self.stopped = Some("interrupted before upload".into());
            }
            if let Some(reason) = &self.stopped {
                let reason = format!("not uploaded: {reason}");
                return self.give_up(pending, &reason, rejects);
            }
            let rows = std::mem::take(&mut pending);
            let settled = match self.reconnect_if_lost().await {
                Err(message) => vec![Settled::Unsettled { rows, outcome: Outcome::Transient { code: None, message } }],
                Ok(()) => match &self.shared.ledger {
                    Some(ledger) => {
                        let claimed = claimed::upload(ledger, &self.uploader, self.institution, infno, rows, &mut self.tally.calls).await;
                        self.tally.superseded += claimed.superseded.len() as u64;
                        claimed.settled
                    }
                    None => self.uploader.upload(self.institution, rows, &mut self.tally.calls).await,
                },
            };
            for group in settled {
                match group {
                    Settled::Accepted { rows, .. } => self.tally.uploaded += rows.len() as u64,
                    Settled::Refused { row, code, message } => {
                        self.tally.refused += 1;
                        let reason = format!("refused by the platform: returnCode {code}: {message}");
                        rejects.write(row.source.line, &reason, Some(code), Value::Object(row.source.data))?;
                    }
                    Settled::Unsettled { rows, outcome } => match outcome {
                        Outcome::Misconfigured { .. } | Outcome::DailyLimit => {
                            tracing::error!(institution = %self.institution.fixmedins_code, "stopping: {outcome}");
                            self.stopped = Some(outcome.to_string());
                            pending = rows;
                        }
                        outcome => {
                            let since = *first_failure.get_or_insert_with(Instant::now);
                            if since.elapsed() >= self.backoff.max_elapsed {
                                let reason =
                                    format!("not uploaded: transient failures for {}s, the last: {outcome}", since.elapsed().as_secs());
                                return self.give_up(rows, &reason, rejects);
                            }
                            attempt += 1;
                            let wait = self.backoff.delay(attempt);
                            tracing::warn!(rows = rows.len(), "upload failed, retrying in {:.1}s: {outcome}", wait.as_secs_f64());
                            tokio::select! {
                                () = tokio::time::sleep(wait) => {}
                                () = self.cancel.cancelled() => {}
                            }
                            pending = rows;
                        }
                    },
                }
            }
        }
        Ok(())
    }

    /// With a broker: connects again when the connection (or a stream on it) was lost, and
    /// takes a msgid slot and tokens on the new connection. An error says why the broker
    /// cannot be used yet (the caller retries with backoff).
    async fn reconnect_if_lost(&mut self) -> Result<(), String> {
        if !self.shared.lost() {
            return Ok(());
        }
        tracing::warn!("the broker connection was lost; connecting again");
        let shared = SharedState::open(self.config).await.map_err(|e| format!("the broker of [amqp] cannot be used: {e:#}"))?;
        let uploader = uploader_for(self.config, &shared).map_err(|e| format!("{e:#}"))?;
        std::mem::replace(&mut self.shared, shared).close().await;
        self.uploader = uploader;
        Ok(())
    }

    fn give_up(&mut self, rows: Vec<Row<Origin>>, reason: &str, rejects: &mut Rejects) -> anyhow::Result<()> {
        for row in rows {
            self.tally.not_uploaded += 1;
            rejects.write(row.source.line, reason, None, Value::Object(row.source.data))?;
        }
        Ok(())
    }

    fn print_summary(&self, infno: Infno, rejects: &[(PathBuf, u64)]) -> anyhow::Result<()> {
        let t = &self.tally;
        let mut out = std::io::stdout().lock();
        let i = self.institution;
        writeln!(out, "{infno} ({}) for {} {}", infno.describe(), i.fixmedins_code, i.fixmedins_name)?;
        writeln!(out, "  rows read     {:>8}", t.read)?;
        writeln!(out, "  uploaded      {:>8}", t.uploaded)?;
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
