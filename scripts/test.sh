#!/usr/bin/env bash
# The one test command: starts what the tests need and runs the whole test suite.
#
#   scripts/test.sh
#
# 1. makes sure cargo, a C compiler (ring), the time-zone database, pika for the Python
#    publisher example, a JDK with the RabbitMQ Java client for the Java one and Mono's C#
#    compiler for the C# one are there (installs gcc / tzdata / python3-pika /
#    default-jdk-headless / librabbitmq-client-java / mono-mcs with apt-get when missing
#    and running as root);
# 2. starts two RabbitMQ nodes with scripts/rabbitmq.sh: 4.3 (Debian forky's, in a chroot
#    built on first use and cached, with transient non-exclusive queues, global QoS and the
#    queue master locator denied) on 127.0.0.1:5673, and Debian 12's 3.10.8 on 5672;
#    removes test vhosts a killed earlier run left behind;
# 3. cargo fmt --check and cargo clippy --all-targets -D warnings (before the brokers start),
#    cargo build --all-targets, and the offline checks of the deployment files;
# 4. the whole suite (cargo test --all-targets) on RabbitMQ 4.3, the broker hospitals
#    deploy now; then again on 3.10.8, the oldest supported; each part prints the broker
#    version it ran on and how long it took. The tests reach a node through
#    ELS_BRIDGE_TEST_AMQP_URL and the rabbitmqctl first on PATH (scripts/rabbitmq.sh
#    bin-dir). One test runs on 3.10 only: the in-place upgrade beside the old refresh-lock
#    queues, which a broker that denies transient queues cannot hold;
# 4a. scripts/prometheus-live.sh on the 4.3 node (about 25 s): a real Prometheus on
#    loopback scrapes a real worker (the simulator, the sample day) with the alert rules
#    loaded; every Grafana dashboard query and every rule runs through its HTTP API and
#    must parse, the panels must return series, every rule must be healthy;
# 4b. the cluster tests (tests/cluster.rs, ignored in the suites above as they kill nodes)
#    on a three-node cluster of RabbitMQ 4.3 (scripts/rabbitmq.sh start --version 4.3
#    --cluster, beside the two single nodes): cargo test --test cluster -- --ignored with
#    ELS_BRIDGE_TEST_CLUSTER_URLS, ELS_BRIDGE_TEST_AMQP_URL (node 1) and the cluster's
#    rabbitmqctl first on PATH;
# 5. cargo test --doc, and the Beijing-time unit tests once more under two host time zones
#    (UTC and America/New_York): platform times must not depend on the host's zone;
# 6. scripts/fuzz.sh 20: every fuzz target for 20 s (cargo-fuzz, installed when missing;
#    needs the nightly toolchain, and says so when there is none).
#
# Exits non-zero on the first failure. Integration tests never skip: without a broker
# they fail. The 4.3 node and the cluster are stopped at the end (their data is thrown away
# at every start); the 3.10 node is left running, as the demo and benchmarks use it.
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
# tests/publishers.rs runs the Python publisher example with Debian's python3 and pika.
/usr/bin/python3 -c 'import pika' >/dev/null 2>&1 || missing+=(python3-pika)
# ... and compiles and runs the Java one with Debian's JDK and RabbitMQ Java client.
command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
[[ -e /usr/share/java/amqp-client.jar ]] || missing+=(librabbitmq-client-java)
# ... and compiles the C# one with Mono against the API of RabbitMQ.Client 6.8.1 and runs
# its --print (Debian packages no RabbitMQ.Client with publisher confirms to publish with).
command -v mcs >/dev/null 2>&1 && command -v mono >/dev/null 2>&1 || missing+=(mono-mcs)
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

# --- style -------------------------------------------------------------------------------
# Formatting and lints first: they take seconds and need no broker.
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy >/dev/null 2>&1 || true
step "cargo fmt --check (rustfmt.toml)"
cargo fmt --check || fail "cargo fmt --check: run cargo fmt"
step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings || fail "cargo clippy --all-targets -- -D warnings"

# --- brokers -----------------------------------------------------------------------------
declare -A broker_secs
# 3.10 first: it brings the host's Erlang, whose epmd the 4.3 node then shares (otherwise
# the chroot would start one of its own).
for version in 3.10 4.3; do
    step "RabbitMQ $version (scripts/rabbitmq.sh start --version $version)"
    t=$SECONDS
    bash scripts/rabbitmq.sh start --version "$version" || fail "scripts/rabbitmq.sh start --version $version"
    broker_secs[$version]=$((SECONDS - t))
done
# The cluster first: the 4.3 chroot's mounts go with the last node that runs in it.
trap 'bash scripts/rabbitmq.sh stop --cluster >/dev/null 2>&1 || true
      bash scripts/rabbitmq.sh stop --version 4.3 >/dev/null 2>&1 || true' EXIT

# Runs "$@" against the node of version $1 (its URL and its rabbitmqctl first on PATH).
on_broker() {
    local version=$1
    shift
    local url bin
    url=$(bash scripts/rabbitmq.sh url --version "$version")
    bin=$(bash scripts/rabbitmq.sh bin-dir --version "$version")
    PATH="$bin:$PATH" ELS_BRIDGE_TEST_AMQP_URL="$url" "$@"
}

# tests/common/broker.rs creates one vhost per test named els-test-* and deletes it on
# drop; a run that was killed leaves some behind.
remove_stale_vhosts() {
    local stale vhost
    stale=$(rabbitmqctl -q list_vhosts name 2>/dev/null | grep '^els-test-' || true)
    [[ -n $stale ]] || return 0
    step "removing $(wc -l <<<"$stale") test vhost(s) left by an earlier run"
    while read -r vhost; do
        rabbitmqctl -q delete_vhost "$vhost" </dev/null >/dev/null 2>&1 || true # it reads stdin
    done <<<"$stale"
}
for version in 4.3 3.10; do
    on_broker "$version" remove_stale_vhosts
done

# --- build and tests ---------------------------------------------------------------------
step "cargo build --all-targets"
cargo build --all-targets
bash scripts/check-deploy.sh || fail "scripts/check-deploy.sh: Dockerfile, docker-compose.yml, Helm chart or sample day"

# The in-place upgrade test declares the refresh-lock queue of the release before, a
# transient non-exclusive queue: only a broker that permits those can hold one.
readonly UPGRADE_TEST=an_upgraded_fleet_keeps_tokens_flowing_beside_the_old_lock_queues
declare -A part_secs part_version
for version in 4.3 3.10; do
    part_version[$version]=$(on_broker "$version" rabbitmqctl -q version 2>/dev/null | tr -d '[:space:]')
    skip=()
    if [[ $version == 4.3 ]]; then skip=(--skip "$UPGRADE_TEST"); fi
    step "cargo test --all-targets on RabbitMQ ${part_version[$version]}${skip:+ (without $UPGRADE_TEST)}"
    t=$SECONDS
    on_broker "$version" cargo test --all-targets -- "${skip[@]}" \
        || fail "cargo test --all-targets on RabbitMQ ${part_version[$version]}"
    part_secs[$version]=$((SECONDS - t))
    printf '\n==> the suite passed on RabbitMQ %s in %d s\n' "${part_version[$version]}" "${part_secs[$version]}" >&2
done

# The dashboard and the alert rules against a live Prometheus scraping a live worker.
step "scripts/prometheus-live.sh (a live Prometheus scraping a worker on RabbitMQ ${part_version[4.3]})"
t=$SECONDS
RABBITMQ_VERSION=4.3 bash scripts/prometheus-live.sh || fail "scripts/prometheus-live.sh: dashboard queries or alert rules against a live Prometheus"
live_secs=$((SECONDS - t))

# The cluster tests kill and restart nodes: a cluster of their own, started only now so
# that it does not take memory and cores from the suites.
step "RabbitMQ 4.3 cluster of three nodes (scripts/rabbitmq.sh start --version 4.3 --cluster)"
t=$SECONDS
bash scripts/rabbitmq.sh start --version 4.3 --cluster || fail "scripts/rabbitmq.sh start --version 4.3 --cluster"
cluster_ready_secs=$((SECONDS - t))
cluster_urls=$(bash scripts/rabbitmq.sh url --cluster)
cluster_bin=$(bash scripts/rabbitmq.sh bin-dir --cluster)
cluster_version=$("$cluster_bin/rabbitmqctl" -q version 2>/dev/null | tr -d '[:space:]')
step "cargo test --test cluster -- --ignored on the RabbitMQ $cluster_version cluster"
t=$SECONDS
PATH="$cluster_bin:$PATH" ELS_BRIDGE_TEST_CLUSTER_URLS="$cluster_urls" ELS_BRIDGE_TEST_AMQP_URL="${cluster_urls%%$'\n'*}" \
    cargo test --test cluster -- --ignored \
    || fail "cargo test --test cluster -- --ignored on the RabbitMQ $cluster_version cluster"
cluster_secs=$((SECONDS - t))
printf '\n==> the cluster tests passed on RabbitMQ %s in %d s\n' "$cluster_version" "$cluster_secs" >&2

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

# A short fuzzing run of the hostile-input parsers (fuzz/README.md). cargo-fuzz needs the
# nightly toolchain; a machine without one says so loudly instead of failing the suite.
fuzzed="not run: no nightly toolchain on this machine (cargo-fuzz needs it)"
if cargo +nightly --version >/dev/null 2>&1; then
    step "scripts/fuzz.sh 20 (every fuzz target for 20 s)"
    t=$SECONDS
    bash scripts/fuzz.sh 20 || fail "scripts/fuzz.sh 20: a fuzz target found a crash"
    fuzzed="passed in $((SECONDS - t)) s"
else
    printf '\n==> WARNING: fuzzing %s\n' "$fuzzed" >&2
fi

trap - ERR
printf 'test.sh: fuzzing %s\n' "$fuzzed" >&2
for version in 4.3 3.10; do
    printf 'test.sh: RabbitMQ %s: ready after %d s, the suite took %d s\n' \
        "${part_version[$version]}" "${broker_secs[$version]}" "${part_secs[$version]}" >&2
done
printf 'test.sh: the dashboard and the rules against a live Prometheus took %d s\n' "$live_secs" >&2
printf 'test.sh: RabbitMQ %s cluster of three nodes: ready after %d s, the cluster tests took %d s\n' \
    "$cluster_version" "$cluster_ready_secs" "$cluster_secs" >&2
printf '\ntest.sh: ALL TESTS PASSED in %d s\n' "$((SECONDS - T0))" >&2
