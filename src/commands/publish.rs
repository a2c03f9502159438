//! `els-bridge publish FILE...`: publishes events (contract §1), one JSON object a line, to
//! the events exchange with publisher confirms.
//!
//! Each line is validated first (with a configuration, institution codes are checked
//! against it); invalid lines are reported as `FILE:LINE: field: reason` and skipped, or,
//! with `--strict`, nothing is published when any line is invalid. A valid line is
//! published as it is (its bytes without the line ending, and without a byte-order mark on
//! the first line), persistent, `content_type` `application/json`, routing key
//! `<infno>.<fixmedins_code>` (just `<infno>` for an event that omits the institution
//! when no configuration is given) and `message_id` `<file name>:<line>:<hash>`, the hash
//! being 16 hex digits of FNV-1a over the body: the same line of the same file always
//! gets the same id, so a message published twice is recognisable.
//!
//! Up to [`WINDOW`] messages are in flight (published, not yet confirmed). If the broker
//! connection drops, the command reconnects with backoff (for up to `--max-retry-secs`)
//! and publishes every message of the window again: a message counts as published only
//! once the broker confirmed it, so none is lost, and some may arrive twice.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::ProgressBar;
use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind, PublisherConfirm};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::common::{self, Pace, load_config, parse_rate};
use super::{EXIT_FAILED, EXIT_OK};
use crate::broker;
use crate::broker::outbox::{Confirmed, Outbox, publish_mandatory};
use crate::config::{AmqpSettings, RetrySettings};
use crate::event::{self, Institutions, InvalidEvent};
use crate::input::{RawLine, RawLines};
use crate::retry::Backoff;

/// Messages published and not yet confirmed, at most.
pub const WINDOW: usize = 500;

/// Options of `els-bridge publish`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Each line is an event: {\"infno\": \"ELS7002\", \"fixmedins_code\": \"...\", \"version\": 1, \"data\": {...}}.\n\
Without --config (or ELS_BRIDGE_CONFIG) the broker is amqp://guest:guest@127.0.0.1:5672/%2f (or ELS_BRIDGE__AMQP__URL) and any 12-character institution code is accepted.\n\
Exit status: 0 when every line was published and confirmed, 1 when any line was invalid or not published, 2 on usage or configuration errors.")]
pub struct PublishArgs {
    /// Event files, JSON Lines.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// The configuration file: [amqp] and the institutions events may name.
    #[arg(long, env = "ELS_BRIDGE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Publish nothing when any line is invalid.
    #[arg(long)]
    strict: bool,
    /// Publish at most this many events per second.
    #[arg(long, value_name = "N", value_parser = parse_rate)]
    rate: Option<f64>,
    /// After losing the broker, keep reconnecting for this long before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    max_retry_secs: u64,
}

/// A valid event ready to publish.
struct Outgoing {
    /// `FILE:LINE`, for reports.
    place: String,
    routing_key: String,
    message_id: String,
    body: Vec<u8>,
}

/// Counts for the summary.
#[derive(Debug, Default)]
struct Tally {
    read: u64,
    published: u64,
    invalid: u64,
    not_published: u64,
    resent: u64,
    reconnects: u64,
}

impl Tally {
    /// The summary line that ends a run.
    fn summary(&self) -> String {
        let mut summary = format!(
            "{} lines read: {} published, {} invalid, {} not published",
            self.read, self.published, self.invalid, self.not_published
        );
        if self.reconnects > 0 {
            summary.push_str(&format!(
                " ({} reconnects; {} unconfirmed messages were published again and may arrive twice)",
                self.reconnects, self.resent
            ));
        }
        summary
    }
}

/// Why publishing stopped before the end.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("the broker has been unreachable for {secs}s ({last}); giving up (see --max-retry-secs)")]
    GaveUp { secs: u64, last: String },
    #[error("interrupted")]
    Interrupted,
    #[error("the broker keeps refusing messages; the last refusal: {0}")]
    Refused(String),
    #[error("{0}")]
    Fatal(String),
}

/// The broker side: a confirm-mode channel, reconnected when lost, and the window of
/// events waiting for their confirms.
struct Publishing<'a> {
    amqp: &'a AmqpSettings,
    connection: Option<Connection>,
    channel: Option<Channel>,
    window: Outbox<Outgoing>,
    max_retry: Duration,
    cancel: CancellationToken,
    /// Refusals in a row.
    refusals: u32,
}

/// Refusals in a row (negative confirms, or messages returned as unroutable) after which
/// publishing stops; the waits between them grow from 0.5 s to 16 s ([`REFUSAL_BACKOFF`]).
const MAX_REFUSALS: u32 = 6;
/// The waits after a refusal in a row.
const REFUSAL_BACKOFF: RetrySettings = RetrySettings { initial_backoff_ms: 500, max_backoff_ms: 16_000, max_elapsed_secs: 0 };
/// The waits between attempts to reach the broker again (`--max-retry-secs` in all).
const RECONNECT_BACKOFF: RetrySettings = RetrySettings { initial_backoff_ms: 500, max_backoff_ms: 15_000, max_elapsed_secs: 0 };

impl<'a> Publishing<'a> {
    /// Connects once: a broker that cannot be reached at the start is a configuration
    /// problem, reported at once.
    async fn open(amqp: &'a AmqpSettings, max_retry: Duration, cancel: CancellationToken) -> anyhow::Result<Publishing<'a>> {
        let window = Outbox::new(WINDOW);
        let mut publishing = Publishing { amqp, connection: None, channel: None, window, max_retry, cancel, refusals: 0 };
        match publishing.try_connect().await {
            Ok((connection, channel)) => {
                publishing.connection = Some(connection);
                publishing.channel = Some(channel);
                Ok(publishing)
            }
            Err(Ok(why)) => bail!("cannot connect to the broker: {why}"),
            Err(Err(stop)) => bail!("{stop}"),
        }
    }

    /// Opens a connection and a confirm-mode channel; the exchange must exist. An error
    /// that is worth trying again is `Err(Ok(why))`, a fatal one `Err(Err(stop))`.
    async fn try_connect(&self) -> Result<(Connection, Channel), Result<String, Stop>> {
        let transient = |e: &dyn std::fmt::Display| Ok(e.to_string());
        let connection = broker::connect(self.amqp, "els-bridge publish").await.map_err(|e| transient(&e))?;
        let channel = connection.create_channel().await.map_err(|e| transient(&e))?;
        let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };
        let exchange = self.amqp.exchange.as_str();
        if let Err(error) = channel.exchange_declare(exchange.into(), ExchangeKind::Topic, passive, FieldTable::default()).await {
            if crate::dlq::reader::is_not_found(&error) {
                return Err(Err(Stop::Fatal(format!(
                    "the exchange {exchange} does not exist on the broker: start a worker once (it declares the topology), or check amqp.url's virtual host"
                ))));
            }
            return Err(transient(&error));
        }
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| transient(&e))?;
        Ok((connection, channel))
    }

    /// Connects with backoff until it works, `max_retry` passes or the run is interrupted.
    async fn connect(&mut self) -> Result<(), Stop> {
        if let Some(old) = self.connection.take() {
            // The channel is dropped after the close: see `broker::close_channel`.
            let _channel = self.channel.take();
            broker::close(&old, "reconnecting").await;
        }
        let started = Instant::now();
        let backoff = Backoff::new(&RECONNECT_BACKOFF);
        let mut attempt = 0u32;
        loop {
            match self.try_connect().await {
                Ok((connection, channel)) => {
                    self.connection = Some(connection);
                    self.channel = Some(channel);
                    return Ok(());
                }
                Err(Ok(last)) => {
                    let waited = started.elapsed();
                    if waited >= self.max_retry {
                        return Err(Stop::GaveUp { secs: waited.as_secs(), last });
                    }
                    attempt += 1;
                    let wait = backoff.delay(attempt);
                    tracing::warn!("cannot reach the broker ({last}); trying again in {:.1}s", wait.as_secs_f64());
                    self.pause(wait).await?;
                }
                Err(Err(fatal)) => return Err(fatal),
            }
        }
    }

    /// Waits `wait`, unless the run is interrupted first.
    async fn pause(&self, wait: Duration) -> Result<(), Stop> {
        tokio::select! {
            () = tokio::time::sleep(wait) => Ok(()),
            () = self.cancel.cancelled() => Err(Stop::Interrupted),
        }
    }

    async fn send(&self, event: &Outgoing) -> Result<PublisherConfirm, lapin::Error> {
        send_event(self.channel.as_ref(), &self.amqp.exchange, event).await
    }

    /// Reconnects and publishes the whole window again.
    async fn recover(&mut self, tally: &mut Tally) -> Result<(), Stop> {
        loop {
            tally.reconnects += 1;
            self.connect().await?;
            let Publishing { window, channel, amqp, .. } = self;
            let resending = window.send_all_again(async |event| send_event(channel.as_ref(), &amqp.exchange, event).await);
            match resending.await {
                Ok(resent) => {
                    tally.resent += resent as u64;
                    tracing::info!(resent, "reconnected; unconfirmed messages published again");
                    return Ok(());
                }
                Err(error) => tracing::warn!("lost the broker again while publishing the unconfirmed messages: {error}"),
            }
        }
    }

    /// Publishes one event (after making room in the window).
    async fn publish(&mut self, event: Outgoing, tally: &mut Tally) -> Result<(), Stop> {
        while self.window.is_full() {
            self.settle_oldest(tally).await?;
        }
        let confirm = self.send(&event).await.ok();
        let lost = confirm.is_none();
        self.window.push(event, confirm);
        if lost {
            self.recover(tally).await?;
        }
        Ok(())
    }

    /// Waits for the oldest confirm and counts it.
    async fn settle_oldest(&mut self, tally: &mut Tally) -> Result<(), Stop> {
        let Some((event, answer)) = self.window.settle_oldest().await else { return Ok(()) };
        let refused = match answer {
            Confirmed::Taken => {
                tally.published += 1;
                self.refusals = 0;
                return Ok(());
            }
            Confirmed::Unroutable => format!("no queue is bound to exchange {} for routing key {}", self.amqp.exchange, event.routing_key),
            Confirmed::Refused => "the broker refused it (negative confirm)".to_owned(),
            Confirmed::Lost(error) => {
                tracing::warn!("lost the broker while waiting for confirms: {error}");
                self.window.put_back(event);
                return self.recover(tally).await;
            }
        };
        self.refused(event, refused, tally).await
    }

    /// Refusals happen while a queue is unavailable (a broker that is starting): publish
    /// it again, waiting longer after each refusal in a row; a broker that keeps refusing
    /// stops the run.
    async fn refused(&mut self, event: Outgoing, refused: String, tally: &mut Tally) -> Result<(), Stop> {
        self.refusals += 1;
        if self.refusals > MAX_REFUSALS {
            self.window.put_back(event);
            return Err(Stop::Refused(refused));
        }
        let wait = Backoff::new(&REFUSAL_BACKOFF).delay(self.refusals);
        tracing::warn!("{}: {refused}; publishing it again in {:.1}s", event.place, wait.as_secs_f64());
        if let Err(stop) = self.pause(wait).await {
            self.window.put_back(event);
            return Err(stop);
        }
        let confirm = self.send(&event).await.ok();
        let lost = confirm.is_none();
        self.window.push(event, confirm);
        if lost {
            self.recover(tally).await?;
        }
        Ok(())
    }

    /// Waits until every message in the window is confirmed (or given up).
    async fn flush(&mut self, tally: &mut Tally) -> Result<(), Stop> {
        while !self.window.is_empty() {
            self.settle_oldest(tally).await?;
        }
        Ok(())
    }

    /// Gives up on what is still in flight: reported as not published.
    fn abandon(&mut self, tally: &mut Tally, out: &Report) {
        for event in self.window.drain() {
            tally.not_published += 1;
            out.line(&format!("{}: not published: not confirmed by the broker", event.place));
        }
    }

    async fn close(self) {
        if let Some(connection) = self.connection {
            // lapin can fail to complete a close; everything was confirmed or reported.
            broker::close(&connection, "done").await;
        }
    }
}

/// Publishes one event, persistent, on `channel` (none while disconnected).
async fn send_event(channel: Option<&Channel>, exchange: &str, event: &Outgoing) -> Result<PublisherConfirm, lapin::Error> {
    let Some(channel) = channel else {
        return Err(lapin::Error::from(std::io::Error::other("not connected")));
    };
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(event.message_id.as_str().into());
    publish_mandatory(channel, exchange, &event.routing_key, &event.body, properties).await
}

/// Writes report lines to standard output without tearing the progress bar.
struct Report {
    progress: ProgressBar,
}

impl Report {
    fn line(&self, text: &str) {
        self.progress.suspend(|| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
        });
    }

    fn problems(&self, place: &str, error: &InvalidEvent) {
        for problem in &error.0 {
            let field = if problem.field.is_empty() { String::new() } else { format!(" {}:", problem.field) };
            self.line(&format!("{place}:{field} {}", problem.reason));
        }
    }
}

/// Validates one line; the event to publish or its problems.
fn prepare(path: &Path, line: &RawLine, institutions: Institutions) -> Result<Outgoing, InvalidEvent> {
    let bytes = line.bytes.as_ref().map_err(|too_long| InvalidEvent::from(too_long.clone()))?;
    let event = event::parse_at_most(bytes, event::MAX_EVENT_BYTES, institutions)?;
    let infno = event.record.infno();
    let routing_key = if event.fixmedins_code.is_empty() { infno.to_string() } else { format!("{infno}.{}", event.fixmedins_code) };
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let mut message_id = format!("{name}:{}:{:016x}", line.number, fnv1a(bytes));
    if message_id.len() > 255 {
        // A short string of AMQP: keep the line number and hash, which make it unique.
        let tail = format!(":{}:{:016x}", line.number, fnv1a(bytes));
        message_id = format!("{}{tail}", truncate(&name, 255 - tail.len()));
    }
    Ok(Outgoing { place: format!("{}:{}", path.display(), line.number), routing_key, message_id, body: bytes.clone() })
}

fn truncate(text: &str, max_bytes: usize) -> &str {
    let mut end = max_bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// 64-bit FNV-1a: a stable hash (unlike std's) for message ids.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Publishes the files and prints the summary.
pub async fn run(args: PublishArgs) -> anyhow::Result<u8> {
    let config = load_config(args.config.as_deref())?;
    let codes: Vec<&str> = config.institutions.iter().map(|i| i.fixmedins_code.as_str()).collect();
    let institutions = if codes.is_empty() { Institutions::Any } else { Institutions::Known(&codes) };
    let amqp = config.amqp.clone().unwrap_or_default();
    let mut total_bytes = 0;
    for path in &args.files {
        total_bytes += std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    }
    let progress = common::progress_bar(total_bytes, true, "");
    let report = Report { progress: progress.clone() };
    let mut tally = Tally::default();

    if args.strict {
        let checked = check_all(&args.files, institutions, &report)?;
        if checked.invalid > 0 {
            progress.finish_and_clear();
            println!("{} lines read: {} invalid; nothing was published (--strict)", checked.read, checked.invalid);
            return Ok(EXIT_FAILED);
        }
    }

    let cancel = CancellationToken::new();
    common::cancel_on_signal(cancel.clone())?;
    let mut publishing = Publishing::open(&amqp, Duration::from_secs(args.max_retry_secs), cancel.clone()).await?;
    let mut pace = Pace::new(args.rate);
    let mut stopped: Option<(Stop, String)> = None;
    let mut position = 0;
    'files: for path in &args.files {
        let mut lines = RawLines::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        while let Some(line) = lines.next() {
            let line = line.with_context(|| format!("cannot read {}", path.display()))?;
            progress.set_position(position + lines.consumed());
            let place = format!("{}:{}", path.display(), line.number);
            if cancel.is_cancelled() {
                stopped = Some((Stop::Interrupted, place));
                break 'files;
            }
            tally.read += 1;
            let event = match prepare(path, &line, institutions) {
                Ok(event) => event,
                Err(problems) => {
                    tally.invalid += 1;
                    report.problems(&place, &problems);
                    continue;
                }
            };
            tokio::select! {
                () = pace.wait() => {}
                () = cancel.cancelled() => {
                    stopped = Some((Stop::Interrupted, place));
                    break 'files;
                }
            }
            if let Err(stop) = publishing.publish(event, &mut tally).await {
                stopped = Some((stop, place));
                break 'files;
            }
            progress.set_message(format!("published {}, invalid {}", tally.published, tally.invalid));
        }
        position += lines.consumed();
    }
    // Interrupted between lines: what is in flight is still worth waiting for.
    if matches!(stopped, None | Some((Stop::Interrupted, _)))
        && let Err(stop) = publishing.flush(&mut tally).await
    {
        let place = stopped.take().map_or_else(|| "the end".to_owned(), |(_, place)| place);
        stopped = Some((stop, place));
    }
    publishing.abandon(&mut tally, &report);
    publishing.close().await;
    progress.finish_and_clear();

    if let Some((stop, place)) = &stopped {
        println!("stopped at {place}: {stop}; lines from there on were not published");
    }
    println!("{}", tally.summary());
    let complete = stopped.is_none() && tally.invalid == 0 && tally.not_published == 0;
    Ok(if complete { EXIT_OK } else { EXIT_FAILED })
}

/// `--strict`: every line of every file checked before anything is published, each
/// problem reported; the lines read and found invalid.
fn check_all(files: &[PathBuf], institutions: Institutions, report: &Report) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    for path in files {
        for line in RawLines::open(path).with_context(|| format!("cannot read {}", path.display()))? {
            let line = line.with_context(|| format!("cannot read {}", path.display()))?;
            tally.read += 1;
            if let Err(problems) = prepare(path, &line, institutions) {
                tally.invalid += 1;
                report.problems(&format!("{}:{}", path.display(), line.number), &problems);
            }
        }
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_stable_and_short() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(truncate("靖江", 4), "靖");
    }

    #[test]
    fn lines_keep_their_bytes_and_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, b"\xef\xbb\xbf{\"a\":1}\r\n\n  \n{\"b\":2}").unwrap();
        let lines: Vec<RawLine> = RawLines::open(&path).unwrap().map(Result::unwrap).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[0].number, lines[0].bytes.as_deref().unwrap()), (1, &b"{\"a\":1}"[..]));
        assert_eq!((lines[1].number, lines[1].bytes.as_deref().unwrap()), (4, &b"{\"b\":2}"[..]));
    }

    #[test]
    fn rates_must_be_positive() {
        assert!(parse_rate("2.5").is_ok());
        assert!(parse_rate("0").is_err() && parse_rate("-1").is_err() && parse_rate("x").is_err());
    }
}
