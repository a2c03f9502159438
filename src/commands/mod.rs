//! The subcommands of `els-bridge`, one module each.
//!
//! Each `run` returns the process exit status: [`EXIT_OK`], [`EXIT_FAILED`] when some
//! records failed, or an error that `main` prints and turns into [`EXIT_USAGE`].

pub(crate) mod common;
pub mod completions;
pub mod dlq;
pub mod doctor;
pub mod man;
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
