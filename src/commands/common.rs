//! What the commands share: loading the configuration, pacing, the one SIGTERM/SIGINT
//! handler, and the progress bar.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Loads `--config`, or builds the defaults (with `ELS_BRIDGE__*` overrides) without one.
pub(crate) fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(Some(path))?,
        None => Config::from_toml("", std::env::vars())?,
    })
}

/// Reads `--rate`: a positive number per second.
pub(crate) fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("{text:?} is not a rate: give a positive number per second, e.g. 50 or 0.5")),
    }
}

/// Spaces out events to at most `rate` per second.
pub(crate) struct Pace {
    period: Option<Duration>,
    next: Instant,
}

impl Pace {
    /// No pacing without a rate.
    pub(crate) fn new(rate: Option<f64>) -> Pace {
        Pace { period: rate.map(|r| Duration::from_secs_f64(1.0 / r)), next: Instant::now() }
    }

    /// Waits until the next event may go.
    pub(crate) async fn wait(&mut self) {
        let Some(period) = self.period else { return };
        let now = Instant::now();
        if self.next > now {
            tokio::time::sleep_until(self.next).await;
        }
        self.next = self.next.max(now) + period;
    }
}

/// Installs the SIGTERM (Kubernetes) and SIGINT (Ctrl-C) handlers now, so that a signal
/// right after this returns is not lost, and completes at the first of them.
pub(crate) fn termination() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM received"),
                _ = interrupt.recv() => tracing::info!("SIGINT received"),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("Ctrl-C received");
            } else {
                std::future::pending::<()>().await;
            }
        })
    }
}

/// Cancels `token` at SIGTERM or SIGINT (the handlers are in place when this returns).
pub(crate) fn cancel_on_signal(token: CancellationToken) -> anyhow::Result<()> {
    let signal = anyhow::Context::context(termination(), "cannot install the signal handlers")?;
    tokio::spawn(async move {
        signal.await;
        token.cancel();
    });
    Ok(())
}

/// A progress bar of `len` units (shown only on a terminal): `in_bytes` for a run through
/// files, else a count of `what` (e.g. "read").
pub(crate) fn progress_bar(len: u64, in_bytes: bool, what: &str) -> indicatif::ProgressBar {
    let template = if in_bytes {
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}".to_owned()
    } else {
        format!("{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {what} {{msg}}")
    };
    let style = indicatif::ProgressStyle::with_template(&template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    indicatif::ProgressBar::new(len).with_style(style)
}

/// A spinner counting `what` (e.g. "ledger entries read") for a read of unknown length,
/// shown only on a terminal.
pub(crate) fn progress_spinner(what: &str) -> indicatif::ProgressBar {
    let template = format!("{{spinner}} [{{elapsed_precise}}] {{pos}} {what}");
    let style = indicatif::ProgressStyle::with_template(&template).unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    let spinner = indicatif::ProgressBar::new_spinner().with_style(style);
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    spinner
}
