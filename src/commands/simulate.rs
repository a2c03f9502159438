//! `els-bridge simulate`: placeholder until the simulator lands.

/// Options of `els-bridge simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {}

/// Runs the simulator.
pub async fn run(_args: SimulateArgs) -> anyhow::Result<u8> {
    anyhow::bail!("the simulator is not built yet")
}
