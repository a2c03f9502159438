//! `els-bridge man DIR`: writes the manual pages (section 1) generated from the command
//! line's definition (clap_mangen): `els-bridge.1` and one page per subcommand.

use std::path::PathBuf;

use anyhow::Context;

use super::EXIT_OK;

/// Options of `els-bridge man`.
#[derive(Debug, clap::Args)]
#[command(after_help = "E.g. els-bridge man /usr/local/share/man/man1 && man els-bridge-worker")]
pub struct ManArgs {
    /// Folder to write the pages to (created if missing); existing pages are replaced.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

/// Writes `els-bridge.1` and `els-bridge-<subcommand>.1` for every subcommand into the folder.
pub fn run(args: ManArgs, command: clap::Command) -> anyhow::Result<u8> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(command, dir).with_context(|| format!("cannot write the manual pages to {}", dir.display()))?;
    eprintln!("manual pages written to {}", dir.display());
    Ok(EXIT_OK)
}
