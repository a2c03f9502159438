//! The generated shell completions and manual pages: bash completes the real subcommands
//! and options, and every subcommand gets a manual page. No broker needed.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_els-bridge");

/// Runs `script` in bash with the completion script sourced and returns its output.
fn bash_with_completions(script: &str) -> String {
    let setup = format!("source <('{BIN}' completions bash) || exit 3\n{script}");
    let out = Command::new("bash").args(["--norc", "-c", &setup]).output().expect("run bash");
    assert!(out.status.success(), "bash failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// What bash offers after the words typed so far (the last one being completed).
fn complete(words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let script = format!(
        "COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}\n\
         func=$(complete -p els-bridge | sed -n 's/.* -F \\([^ ]*\\) .*/\\1/p')\n\
         \"$func\" els-bridge \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        words = quoted.join(" "),
        cword = words.len() - 1,
    );
    bash_with_completions(&script).lines().map(str::to_owned).collect()
}

#[test]
fn bash_registers_a_completion_for_els_bridge() {
    let registered = bash_with_completions("complete -p els-bridge");
    assert!(registered.contains(" -F ") && registered.trim_end().ends_with(" els-bridge"), "{registered}");
}

#[test]
fn bash_completes_subcommands_and_their_options() {
    let commands = complete(&["els-bridge", ""]);
    for expected in ["worker", "send", "validate", "report", "publish", "dlq", "simulate", "completions", "man"] {
        assert!(commands.iter().any(|c| c == expected), "no {expected} in {commands:?}");
    }
    assert_eq!(complete(&["els-bridge", "dl"]), ["dlq"]);
    let dlq = complete(&["els-bridge", "dlq", ""]);
    assert!(["stats", "peek", "replay"].iter().all(|c| dlq.iter().any(|d| d == c)), "{dlq:?}");
    let replay = complete(&["els-bridge", "dlq", "replay", "--"]);
    assert!(replay.iter().any(|o| o == "--dry-run") && replay.iter().any(|o| o == "--reason"), "{replay:?}");
    let shells = complete(&["els-bridge", "completions", ""]);
    assert!(["bash", "zsh", "fish"].iter().all(|s| shells.iter().any(|c| c == s)), "{shells:?}");
}

#[test]
fn zsh_and_fish_scripts_are_generated() {
    for (shell, marker) in [("zsh", "#compdef els-bridge"), ("fish", "complete -c els-bridge")] {
        let out = Command::new(BIN).args(["completions", shell]).output().expect("run els-bridge completions");
        assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains(marker), "{shell}: no {marker:?}");
    }
}

#[test]
fn every_subcommand_gets_a_manual_page() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let out = Command::new(BIN).arg("man").arg(dir.path().join("man1")).output().expect("run els-bridge man");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for page in ["els-bridge", "els-bridge-worker", "els-bridge-send", "els-bridge-dlq-replay", "els-bridge-completions"] {
        let path = dir.path().join("man1").join(format!("{page}.1"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}.1 is not a manual page:\n{text}");
        assert!(text.contains("SYNOPSIS") || text.contains(".SH SYNOPSIS"), "{page}.1 has no synopsis");
    }
}
