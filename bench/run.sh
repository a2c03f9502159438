#!/usr/bin/env bash
# The benchmark harness of issue 7 (see BENCHMARKS.md).
#
#   bash bench/run.sh [--quick] [--pass default|tuned|all] [driver options...]
#
# 1. builds els-bridge and the driver (examples/bench.rs) in release;
# 2. starts the local RabbitMQ node (scripts/rabbitmq.sh: needs root, like the tests);
# 3. removes vhosts an interrupted earlier run left behind (els-bench-*, whose driver
#    process is gone);
# 4. runs the driver once per pass; every scenario gets a fresh vhost, its own simulator
#    and real `els-bridge worker` processes. Results go to
#    bench/results/<UTC time>/<pass>/ (results.md, results.json, the configurations and
#    every process's log); bench/results/latest points at the newest run.
#
# Passes:
#   default  the worker's default configuration: linger 2 s, cap 4, and amqp.prefetch as
#            the worker sizes it when unset, 2 institutions x (6 lanes + 4) x 100 = 2000
#            and a quarter more for acks sent together, 2500 (given explicitly so that
#            the minimal consumer of scenario 1 uses the same);
#            every scenario at full size (200 000 events, a backlog of 1 000 000). ~20 min.
#   tuned    the same with amqp.prefetch 5000.
#   all      both (the default).
# --quick shrinks every size (a smoke run of a few minutes).
#
# Driver options are passed to every pass after the pass's own, so they win: e.g.
# `--scenarios 1,2 --events 50000`, `--perf` (profile the worker and the simulator with
# perf; summaries by bench/profile.py), `--cap 8`. `target/release/examples/bench --help`
# lists them all. CARGO_TARGET_DIR is honoured.
#
# The figures depend on what else runs on the machine: the load before and after is
# printed and recorded; take figures for the record only when the load is low (below ~1 on
# 2 cores), and run a scenario again when its numbers look disturbed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

quick=0
pass=all
while (($#)); do
    case $1 in
        --quick) quick=1; shift ;;
        --pass) pass=${2:?--pass needs default, tuned or all}; shift 2 ;;
        --pass=*) pass=${1#--pass=}; shift ;;
        *) break ;;
    esac
done
case $pass in default | tuned | all) ;; *) echo "run.sh: unknown pass '$pass'" >&2; exit 2 ;; esac

if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
target_dir=${CARGO_TARGET_DIR:-target}

printf '==> cargo build --release --bin els-bridge --example bench\n' >&2
cargo build --release --bin els-bridge --example bench

printf '==> RabbitMQ (scripts/rabbitmq.sh start)\n' >&2
bash scripts/rabbitmq.sh start

# A vhost is els-bench-<label>-<driver pid>-<stamp>: one whose driver still runs (another
# benchmark on the same node) is not stale.
stale=$(rabbitmqctl -q list_vhosts name 2>/dev/null | grep '^els-bench-' |
    while read -r vhost; do
        pid=$(awk -F- '{ print $(NF-1) }' <<<"$vhost")
        [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || printf '%s\n' "$vhost"
    done || true)
if [[ -n $stale ]]; then
    printf '==> removing %s vhost(s) left by an interrupted run\n' "$(wc -l <<<"$stale")" >&2
    while read -r vhost; do
        rabbitmqctl -q delete_vhost "$vhost" </dev/null >/dev/null 2>&1 || true
    done <<<"$stale"
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "bench/results/$stamp"
ln -sfn "$stamp" bench/results/latest

if ((quick)); then
    default_args=(--prefetch 2500 --quick)
    tuned_args=(--prefetch 5000 --quick)
else
    default_args=(--prefetch 2500)
    tuned_args=(--prefetch 5000)
fi

run_pass() {
    local name=$1
    shift
    local out="bench/results/$stamp/$name"
    mkdir -p "$out"
    printf '\n==> pass %s: bench %s\n==> load before: %s\n' "$name" "$*" "$(uptime)" >&2
    "$target_dir/release/examples/bench" --bin "$target_dir/release/els-bridge" --out "$out" "$@"
    printf '==> load after: %s\n' "$(uptime)" >&2
}

[[ $pass == tuned ]] || run_pass default "${default_args[@]}" "$@"
[[ $pass == default ]] || run_pass tuned "${tuned_args[@]}" "$@"

for f in bench/results/"$stamp"/*/results.md; do
    printf '\n==> %s\n' "$f" >&2
    cat "$f"
done
