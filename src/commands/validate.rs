//! `els-bridge validate`: placeholder.

/// Options of `els-bridge validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {}

/// Runs the command.
pub async fn run(_args: ValidateArgs) -> anyhow::Result<u8> {
    anyhow::bail!("not built yet")
}
