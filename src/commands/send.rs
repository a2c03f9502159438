//! `els-bridge send`: placeholder.

/// Options of `els-bridge send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {}

/// Runs the command.
pub async fn run(_args: SendArgs) -> anyhow::Result<u8> {
    anyhow::bail!("not built yet")
}
