//! The subcommands of `els-bridge`, one module each.
//!
//! Each `run` returns the process exit status: [`EXIT_OK`], [`EXIT_FAILED`] when some
//! records failed, or an error that `main` prints and turns into [`EXIT_USAGE`].

pub mod dlq;
pub mod publish;
pub mod report;
pub mod send;
pub mod simulate;
pub mod validate;
pub mod worker;

/// Everything worked.
pub const EXIT_OK: u8 = 0;
/// The command ran, but some records failed (invalid, refused, not uploaded).
pub const EXIT_FAILED: u8 = 1;
/// Usage or configuration error: nothing was done.
pub const EXIT_USAGE: u8 = 2;

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
