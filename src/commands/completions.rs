//! `els-bridge completions SHELL`: prints the shell completion script generated from the
//! command line's definition (clap_complete), so it never drifts from the real options.

use std::io::Write;

use anyhow::Context;
use clap_complete::Shell;

use super::EXIT_OK;

/// Options of `els-bridge completions`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Install, e.g.:\n  \
els-bridge completions bash > /etc/bash_completion.d/els-bridge\n  \
els-bridge completions zsh > \"${fpath[1]}/_els-bridge\"\n  \
els-bridge completions fish > ~/.config/fish/completions/els-bridge.fish")]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Writes the completion script of `command` for the chosen shell to standard output.
pub fn run(args: CompletionsArgs, mut command: clap::Command) -> anyhow::Result<u8> {
    let name = command.get_name().to_owned();
    // Generated into memory first: clap_complete panics on a failed write (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, &name, &mut script);
    if args.shell == Shell::Bash {
        script = mend_bash_states(&String::from_utf8_lossy(&script), &name).into_bytes();
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&script).and_then(|()| out.flush()).context("cannot write the completion script to standard output")?;
    Ok(EXIT_OK)
}

/// clap_complete 4.6 names the states of a hyphenated program two ways in bash: the loop
/// over the words reaches `els__bridge__subcmd__dlq`, the case arms read
/// `els__subcmd__bridge__subcmd__dlq`, so nothing after a subcommand completes
/// (clap-rs/clap#6421, open). Spell the arms the way the loop does.
fn mend_bash_states(script: &str, name: &str) -> String {
    let loop_form = name.replace('-', "__");
    let arm_form = name.replace('-', "__subcmd__");
    if loop_form == arm_form { script.to_owned() } else { script.replace(&arm_form, &loop_form) }
}
