#!/usr/bin/env bash
# The one test command: starts what the tests need and runs the whole test suite.
#
#   scripts/test.sh
#
# 1. makes sure cargo, a C compiler (ring) and the time-zone database are there
#    (installs gcc / tzdata with apt-get when missing and running as root);
# 2. starts the local RabbitMQ node (scripts/rabbitmq.sh) and points the tests at it
#    through ELS_BRIDGE_TEST_AMQP_URL; removes test vhosts a killed earlier run left behind;
# 3. cargo build --all-targets, cargo test --all-targets, cargo test --doc;
# 4. the Beijing-time unit tests once more under two host time zones (UTC and
#    America/New_York): platform times must not depend on the host's zone.
#
# Exits non-zero on the first failure. Integration tests never skip: without a broker
# they fail.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
readonly T0=$SECONDS

step() { printf '\n==> %s\n' "$*" >&2; }
fail() {
    printf '\ntest.sh: FAILED: %s (after %d s)\n' "$*" "$((SECONDS - T0))" >&2
    exit 1
}
trap 'fail "command exited with status $? at line $LINENO: $BASH_COMMAND"' ERR

# --- prerequisites -----------------------------------------------------------------------
# rustup installs into ~/.cargo/bin, which a non-login shell (CI) may not have on PATH.
if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 \
    || fail "cargo not found on PATH (install Rust >= $(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml), e.g. with rustup)"

missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
[[ -e /usr/share/zoneinfo/America/New_York ]] || missing+=(tzdata)
if ((${#missing[@]})); then
    # shellcheck disable=SC2015 # fail exits
    [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1 \
        || fail "missing ${missing[*]}; install them (as root: apt-get install ${missing[*]})"
    step "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null
    export ELS_APT_UPDATED=1 # scripts/rabbitmq.sh need not update again
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
fi

# --- broker ------------------------------------------------------------------------------
step "RabbitMQ (scripts/rabbitmq.sh start)"
t=$SECONDS
bash scripts/rabbitmq.sh start || fail "scripts/rabbitmq.sh start"
broker_secs=$((SECONDS - t))

export ELS_BRIDGE_TEST_AMQP_URL='amqp://guest:guest@127.0.0.1:5672/%2f'

# tests/common/broker.rs creates one vhost per test named els-test-* and deletes it on
# drop; a run that was killed leaves some behind.
stale=$(rabbitmqctl -q list_vhosts name 2>/dev/null | grep '^els-test-' || true)
if [[ -n $stale ]]; then
    step "removing $(wc -l <<<"$stale") test vhost(s) left by an earlier run"
    while read -r vhost; do
        rabbitmqctl -q delete_vhost "$vhost" </dev/null >/dev/null 2>&1 || true # it reads stdin
    done <<<"$stale"
fi

# --- build and tests ---------------------------------------------------------------------
step "cargo build --all-targets"
cargo build --all-targets
bash scripts/check-deploy.sh || fail "scripts/check-deploy.sh: Dockerfile, docker-compose.yml, Helm chart or sample day"

step "cargo test --all-targets"
cargo test --all-targets

step "cargo test --doc"
cargo test --doc

# A filter that matches nothing passes silently: insist that Beijing-time tests ran, and
# that both zones ran the same tests with the same outcome.
declare -A results
for zone in UTC America/New_York; do
    step "TZ=$zone cargo test --lib beijing"
    out=$(TZ=$zone cargo test --lib beijing 2>&1) || { printf '%s\n' "$out" >&2; fail "TZ=$zone cargo test --lib beijing"; }
    results[$zone]=$(grep -E '^test .* \.\.\. ' <<<"$out" | sort || true)
    printf '%s\n' "${results[$zone]}" >&2
    grep -qE '^test result: ok\. [1-9][0-9]* passed' <<<"$out" \
        || fail "TZ=$zone cargo test --lib beijing ran no test (did the beijing tests move?)"
done
[[ ${results[UTC]} == "${results[America/New_York]}" ]] \
    || fail "the beijing tests differ between TZ=UTC and TZ=America/New_York"

trap - ERR
printf '\ntest.sh: ALL TESTS PASSED in %d s (RabbitMQ ready after %d s)\n' "$((SECONDS - T0))" "$broker_secs" >&2
