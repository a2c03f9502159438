#!/usr/bin/env bash
# Fuzzes the parsers of hostile input (issue 14): message bodies, record files, platform
# answers, decimals. See fuzz/README.md for the targets and for a long run.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 20)
#
# 1. installs cargo-fuzz with `cargo install --locked cargo-fuzz` when it is missing
#    (about 30 s on 2 cores); the nightly toolchain must be there (rustup toolchain
#    install nightly);
# 2. cargo +nightly fuzz build: every target, with AddressSanitizer, debug assertions and
#    overflow checks (about 6.5 min the first time on 2 cores, then seconds);
# 3. runs each target for SECONDS_PER_TARGET, one process at a time, from fuzz/seeds/<target>
#    into a scratch corpus (thrown away at the end, unless FUZZ_CORPUS_DIR names a
#    directory to keep it in, one subdirectory per target), and prints per target the
#    executions (libFuzzer's stat::number_of_executed_units).
#
# Exits 1 if any target crashed, panicked, leaked, timed out (10 s for one input) or ran
# out of memory; the input is then in fuzz/artifacts/<target>/, and the line to reproduce
# it is printed. Every target runs even after one failed.
#
# Environment: FUZZ_NICE (default 19) the niceness of build and runs; FUZZ_CORPUS_DIR as
# above; FUZZ_ARGS extra libFuzzer flags for every run (e.g. "-max_len=16384").
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
readonly ROOT=$PWD T0=$SECONDS

step() { printf '\n==> %s\n' "$*" >&2; }
fail() {
    printf '\nfuzz.sh: FAILED: %s (after %d s)\n' "$*" "$((SECONDS - T0))" >&2
    exit 1
}

readonly SECONDS_PER_TARGET=${1:-20}
[[ $SECONDS_PER_TARGET =~ ^[1-9][0-9]*$ ]] || fail "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] (a positive number of seconds, got '$SECONDS_PER_TARGET')"
readonly NICE=${FUZZ_NICE:-19}
read -r -a extra_args <<<"${FUZZ_ARGS:-}"

# --- prerequisites -----------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || fail "cargo not found on PATH"
cargo +nightly --version >/dev/null 2>&1 \
    || fail "the nightly toolchain is missing: cargo-fuzz needs it (rustup toolchain install nightly)"
command -v cc >/dev/null 2>&1 || fail "no C compiler (cc): libFuzzer and ring are built with it (apt-get install gcc g++)"
if ! cargo fuzz --version >/dev/null 2>&1; then
    step "cargo install --locked cargo-fuzz (not installed; takes about 30 s)"
    t=$SECONDS
    nice -n "$NICE" cargo install --locked cargo-fuzz || fail "cargo install --locked cargo-fuzz"
    printf '==> cargo-fuzz installed in %d s\n' "$((SECONDS - t))" >&2
fi

# --- build -------------------------------------------------------------------------------
step "cargo +nightly fuzz build (about 6.5 min the first time on 2 cores, then seconds)"
t=$SECONDS
nice -n "$NICE" cargo +nightly fuzz build || fail "cargo +nightly fuzz build"
printf '==> built in %d s\n' "$((SECONDS - t))" >&2
mapfile -t targets < <(cargo +nightly fuzz list)
((${#targets[@]})) || fail "cargo fuzz list names no target"
readonly BIN_DIR=$ROOT/fuzz/target/x86_64-unknown-linux-gnu/release

# --- runs --------------------------------------------------------------------------------
# Scratch on tmpfs where there is one: corpus, logs, and the file record_lines rewrites
# for every input. libFuzzer's own files (fuzz-N.log with -jobs) would land here too.
scratch_base=/dev/shm
[[ -d $scratch_base && -w $scratch_base ]] || scratch_base=${TMPDIR:-/tmp}
WORK=$(mktemp -d "$scratch_base/els-bridge-fuzz.XXXXXX")
readonly WORK
trap 'rm -rf "$WORK"' EXIT

declare -A executions rate coverage status
failed=()
for target in "${targets[@]}"; do
    seeds=$ROOT/fuzz/seeds/$target
    [[ -d $seeds ]] || fail "no seed corpus fuzz/seeds/$target"
    corpus=${FUZZ_CORPUS_DIR:+$FUZZ_CORPUS_DIR/$target}
    corpus=${corpus:-$WORK/corpus/$target}
    # Inputs that once broke a target are replayed first, with the seeds.
    regressions=$ROOT/fuzz/regressions/$target
    inputs=("$corpus" "$seeds")
    [[ -d $regressions ]] && inputs+=("$regressions")
    mkdir -p "$corpus" "$ROOT/fuzz/artifacts/$target" "$WORK/$target"
    log=$WORK/$target.log
    step "$target: ${SECONDS_PER_TARGET} s from fuzz/seeds/$target ($(find "$seeds" -type f | wc -l) seeds)"
    rc=0
    (cd "$WORK/$target" && ELS_FUZZ_SCRATCH=$WORK/$target nice -n "$NICE" "$BIN_DIR/$target" \
        -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 -timeout=10 \
        -artifact_prefix="$ROOT/fuzz/artifacts/$target/" "${extra_args[@]}" \
        "${inputs[@]}") >"$log" 2>&1 || rc=$?
    executions[$target]=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate[$target]=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    # "#N DONE cov: C ft: F corp: K/SIZE ...": coverage and corpus at the end.
    coverage[$target]=$(sed -n -E 's/^#[0-9]+[[:space:]]+DONE[[:space:]]+cov: ([0-9]+) ft: [0-9]+ corp: ([0-9]+)\/.*/cov \1, corpus \2/p' "$log" | tail -n 1)
    if ((rc == 0)); then
        status[$target]=ok
    else
        status[$target]="FAILED (exit $rc)"
        failed+=("$target")
        # The panic message or sanitizer report, and where libFuzzer wrote the input.
        grep -n -m 1 -E "panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)" "$log" >&2 || true
        grep -A 12 -m 1 -E "panicked at" "$log" | sed -n '1,12p' >&2 || true
        grep -E "^SUMMARY" "$log" >&2 || true
        artifact=$(sed -n 's/.*Test unit written to //p' "$log" | tail -n 1)
        [[ -z $artifact ]] || printf 'reproduce: cargo +nightly fuzz run %s %s\n' "$target" "${artifact#"$ROOT/"}" >&2
        cp "$log" "$ROOT/fuzz/artifacts/$target/last-failure.log"
        printf '(the whole log: fuzz/artifacts/%s/last-failure.log)\n' "$target" >&2
    fi
done

# --- summary -----------------------------------------------------------------------------
total=0
printf '\nfuzz.sh: %d s per target\n' "$SECONDS_PER_TARGET" >&2
for target in "${targets[@]}"; do
    printf '  %-16s %12s executions  %8s exec/s  %-22s %s\n' "$target" "${executions[$target]:-?}" "${rate[$target]:-?}" \
        "${coverage[$target]:-}" "${status[$target]}" >&2
    total=$((total + ${executions[$target]:-0}))
done
printf '  %-16s %12d executions in all\n' total "$total" >&2
if ((${#failed[@]})); then
    fail "${failed[*]}: crash or property violation (inputs in fuzz/artifacts/<target>/)"
fi
printf '\nfuzz.sh: no crash in %d targets, %d executions, in %d s\n' "${#targets[@]}" "$total" "$((SECONDS - T0))" >&2
