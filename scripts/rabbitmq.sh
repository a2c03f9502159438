#!/usr/bin/env bash
# The local RabbitMQ nodes that the integration tests run against.
#
#   scripts/rabbitmq.sh [start] [--version V]   install, start, wait until AMQP answers
#   scripts/rabbitmq.sh stop    [--version V]   shut the node down (nothing to do if it is not running)
#   scripts/rabbitmq.sh status  [--version V]   exit 0 if the node is up and AMQP answers, 1 otherwise
#   scripts/rabbitmq.sh url     [--version V]   print the node's AMQP URL (guest, vhost /)
#   scripts/rabbitmq.sh bin-dir [--version V]   print a folder whose rabbitmqctl (and rabbitmq-
#                                               diagnostics, -plugins, -queues) drive that node:
#                                               put it first on PATH to point tests at it
#
# The same commands with --cluster drive a three-node cluster of the 4.3 broker instead
# (--cluster implies --version 4.3), and three more address one of its nodes, N = 1, 2, 3:
#
#   start   --cluster   start three fresh nodes, join them (join_cluster), wait until all
#                       three run, see each other and answer AMQP; on a cluster whose three
#                       nodes already run, only checks; on a partly running one, starts afresh
#   stop    --cluster   shut every node of the cluster down (its data stays until `start`)
#   status  --cluster   exit 0 if all three run, are clustered and answer AMQP, 1 otherwise
#   url     --cluster   print the three AMQP URLs, one per line (guest, vhost /)
#   bin-dir --cluster   a folder whose rabbitmqctl (and -diagnostics, -plugins, -queues,
#                       -streams) drive node 1; `rabbitmqctl -n elsc2@localhost ...` another
#   node-stop  N        shut node N down cleanly (rabbitmqctl shutdown)
#   node-kill  N        SIGKILL node N's Erlang VM (the pid in its pid file), as a crash would
#   node-start N        start node N again on its existing data: it rejoins the cluster; waits
#                       until it runs, is clustered and answers AMQP (only checks if it runs)
#
# V (or RABBITMQ_VERSION) is one of
#   3.10  Debian 12's rabbitmq-server (3.10.8, Erlang 25), installed with apt-get, node
#         rabbit@<host>, AMQP on 127.0.0.1:5672, RabbitMQ's default configuration (no
#         rabbitmq.conf is written: guest/guest from loopback only, consumer_timeout 30 min).
#         The default.
#   4.3   Debian forky's rabbitmq-server (4.3.x, Erlang 29) in a chroot of its own, because
#         its Erlang needs a newer libc than Debian 12's. The chroot is built with mmdebstrap
#         when missing (under a minute here) and kept in $ELS_BRIDGE_CACHE/rabbitmq-4.3
#         (default ~/.cache/els-bridge). Node els43@localhost, AMQP on 127.0.0.1:5673,
#         streams 5553, management 15673, prometheus 15693, distribution 25673, so it runs
#         beside the 3.10 node. Its rabbitmq.conf denies the deprecated features an AMQP
#         0-9-1 client can touch (transient non-exclusive queues, global QoS, queue master
#         locator), as operators checking an upgrade do; everything else is the default
#         (delivery limit 20 on quorum queues, consumer_timeout 30 min). Every start of a
#         stopped 4.3 node begins with an empty data directory: it is a test broker, and a
#         node with that setting refuses to boot on data that holds a transient queue.
#
# The cluster: nodes elsc1@localhost, elsc2@localhost and elsc3@localhost in the same chroot
# as the 4.3 node (each with its own RABBITMQ_CONF_ENV_FILE, rabbitmq.conf, data and log
# directories under the chroot's /etc/els-cluster, /var/lib/els-cluster, /var/log/els-cluster,
# and one Erlang cookie of their own in /var/lib/els-cluster, their HOME), the same
# rabbitmq.conf settings as the 4.3 node (deprecated features denied), and node N on
#   AMQP 568N, streams 558N, management 1568N, prometheus 1578N, distribution 2568N
# (5681, 5581, 15681, 15781, 25681 for node 1), beside the single nodes. Measured here (2
# cores, the single 3.10 and 4.3 nodes running, load average about 6 from other test runs):
# `start --cluster` 22-38 s from nothing to three clustered nodes answering AMQP (10-19 s
# of it booting the three in parallel), 3 s when they already run; `stop --cluster` 12-14 s;
# node-kill 2 s; node-start of a killed node 5-8 s until it is clustered again; 130-165 MB
# resident per node (about 450 MB for the cluster).
#
# Idempotent: `start` on a running node only checks it. Needs root (apt-get, chroot, mount;
# the Debian wrappers of rabbitmqctl switch to the `rabbitmq` user themselves).
#
# Environment: RABBITMQ_VERSION (3.10 or 4.3, default 3.10), RABBITMQ_START_TIMEOUT
#              (seconds, default 120), ELS_BRIDGE_CACHE (where the 4.3 chroot is kept),
#              ELS_APT_UPDATED=1 (the caller already ran `apt-get update`).
set -euo pipefail

# --- arguments -----------------------------------------------------------------------------
command=start
version=${RABBITMQ_VERSION:-3.10}
explicit_version=
cluster=
node=
while (($#)); do
    case $1 in
        start | stop | status | url | bin-dir) command=$1 ;;
        node-stop | node-kill | node-start) command=$1; cluster=1; node=${2:-}; shift ;;
        --version) version=${2:-}; explicit_version=$version; shift ;;
        --version=*) version=${1#--version=}; explicit_version=$version ;;
        --cluster) cluster=1 ;;
        -h | --help | help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//p;}' "$0"; exit 0 ;;
        *) printf 'rabbitmq.sh: ERROR: unknown argument %q (expected start, stop, status, url, bin-dir, node-stop N, node-kill N, node-start N, --version 3.10|4.3, --cluster)\n' "$1" >&2; exit 2 ;;
    esac
    shift
done
if [[ -n $cluster ]]; then
    # The cluster is of the 4.3 broker only (see the header).
    case $explicit_version in
        '' | 4.3 | 4) version=4.3 ;;
        *) printf 'rabbitmq.sh: ERROR: the cluster runs RabbitMQ 4.3 only, not %q\n' "$explicit_version" >&2; exit 2 ;;
    esac
    if [[ $command == node-* && ! $node =~ ^[123]$ ]]; then
        printf 'rabbitmq.sh: ERROR: %s needs the node number 1, 2 or 3, not %q\n' "$command" "$node" >&2
        exit 2
    fi
fi
readonly cluster node

readonly AMQP_HOST=127.0.0.1
readonly START_TIMEOUT="${RABBITMQ_START_TIMEOUT:-120}"
readonly PLUGINS=(rabbitmq_management rabbitmq_prometheus rabbitmq_stream
                  rabbitmq_consistent_hash_exchange rabbitmq_shovel)
readonly CACHE=${ELS_BRIDGE_CACHE:-${HOME:-/root}/.cache/els-bridge}
# The 4.3 node: its chroot, CLI wrappers, name and ports (chosen not to clash with a
# default node on the same machine).
readonly CHROOT=$CACHE/rabbitmq-4.3
readonly CHROOT_BIN=$CACHE/rabbitmq-4.3-bin
readonly NODE43=els43@localhost
readonly FORKY_SOURCE="deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian forky main"

case $version in
    3.10 | 3) version=3.10; AMQP_PORT=5672 ;;
    4.3 | 4) version=4.3; AMQP_PORT=5673 ;;
    *) printf 'rabbitmq.sh: ERROR: unknown version %q (expected 3.10 or 4.3)\n' "$version" >&2; exit 2 ;;
esac
readonly version AMQP_PORT

log() { printf 'rabbitmq.sh [%s]: %s\n' "$version${cluster:+ cluster}" "$*" >&2; }
die() { printf 'rabbitmq.sh [%s]: ERROR: %s\n' "$version${cluster:+ cluster}" "$*" >&2; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (installs packages and controls the node); try: sudo $0 $*"
}

# --- the RabbitMQ CLI of the chosen node -----------------------------------------------------
# A command inside the 4.3 chroot, with a clean environment: the CLI finds the node name in
# the chroot's /etc/rabbitmq/rabbitmq-env.conf and the cookie in its /root.
in_chroot() {
    env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 LC_ALL=C.UTF-8 \
        chroot "$CHROOT" "$@"
}
ctl() {
    if [[ -n $cluster ]]; then cctl 1 "$@"; return; fi
    if [[ $version == 4.3 ]]; then in_chroot /usr/lib/rabbitmq/bin/rabbitmqctl "$@"; else rabbitmqctl "$@"; fi
}
diagnostics() {
    if [[ $version == 4.3 ]]; then in_chroot /usr/lib/rabbitmq/bin/rabbitmq-diagnostics "$@"; else rabbitmq-diagnostics "$@"; fi
}
plugins() {
    if [[ $version == 4.3 ]]; then in_chroot /usr/lib/rabbitmq/bin/rabbitmq-plugins "$@"; else rabbitmq-plugins "$@"; fi
}

log_dir() { if [[ $version == 4.3 ]]; then echo "$CHROOT/var/log/rabbitmq"; else echo /var/log/rabbitmq; fi; }

show_logs() {
    local f
    for f in "$(log_dir)"/*.log; do
        [[ -s $f ]] || continue
        log "--- last lines of $f ---"
        tail -n 30 "$f" >&2 || true
    done
}

# --- installation ------------------------------------------------------------------------------
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "$* not installed and apt-get is not available"
    export DEBIAN_FRONTEND=noninteractive
    local apt_log
    apt_log=$(mktemp)
    if [[ ${ELS_APT_UPDATED:-} != 1 ]]; then
        log "apt-get update"
        apt-get update -qq </dev/null >"$apt_log" 2>&1 || { cat "$apt_log" >&2; die "apt-get update failed"; }
        export ELS_APT_UPDATED=1
    fi
    log "installing $* (Debian packages)"
    apt-get install -y -qq --no-install-recommends "$@" </dev/null >"$apt_log" 2>&1 \
        || { cat "$apt_log" >&2; die "apt-get install $* failed"; }
    rm -f "$apt_log"
}

installed() {
    if [[ $version == 4.3 ]]; then
        [[ -x $CHROOT/usr/lib/rabbitmq/bin/rabbitmq-server && -e $CHROOT/.els-complete ]]
    else
        command -v rabbitmqctl >/dev/null 2>&1 && command -v rabbitmq-server >/dev/null 2>&1
    fi
}

install() {
    installed && return 0
    local t0=$SECONDS
    if [[ $version == 3.10 ]]; then
        apt_install rabbitmq-server
        installed || die "rabbitmq-server was installed but rabbitmqctl is not on PATH"
        log "installed $(dpkg-query -W -f='rabbitmq-server ${Version}' rabbitmq-server) in $((SECONDS - t0)) s"
        return 0
    fi
    command -v mmdebstrap >/dev/null 2>&1 || apt_install mmdebstrap
    [[ -e /usr/share/keyrings/debian-archive-keyring.gpg ]] || apt_install debian-archive-keyring
    log "building a Debian forky chroot with rabbitmq-server in $CHROOT (mmdebstrap)"
    mkdir -p "$CACHE"
    rm -rf "$CHROOT.partial"
    local build_log=$CACHE/mmdebstrap.log
    # The mirror's forky Release file is past its Valid-Until date: apt must not check it.
    mmdebstrap --variant=apt --include=rabbitmq-server,procps \
        --aptopt='Acquire::Check-Valid-Until "false"' \
        forky "$CHROOT.partial" "$FORKY_SOURCE" </dev/null >"$build_log" 2>&1 \
        || { tail -n 40 "$build_log" >&2; die "mmdebstrap failed (log: $build_log)"; }
    touch "$CHROOT.partial/.els-complete"
    rm -rf "$CHROOT"
    mv "$CHROOT.partial" "$CHROOT"
    log "built the chroot with $(chroot_package_version) in $((SECONDS - t0)) s"
}

chroot_package_version() {
    in_chroot dpkg-query -W -f='rabbitmq-server ${Version}' rabbitmq-server 2>/dev/null || echo 'rabbitmq-server ?'
}

# The node name is rabbit@<short hostname>; Erlang distribution cannot start if that name
# does not resolve (seen in some containers), so map it to loopback.
ensure_hostname_resolves() {
    local short
    short=$(hostname -s 2>/dev/null || hostname)
    if ! getent hosts "$short" >/dev/null 2>&1; then
        log "host name '$short' does not resolve; adding '127.0.0.1 $short' to /etc/hosts"
        printf '127.0.0.1\t%s\n' "$short" >>/etc/hosts
    fi
}

# --- the 4.3 chroot: mounts and configuration ------------------------------------------------
mounted() { mountpoint -q "$CHROOT/$1"; }

mount_chroot() {
    local fs
    for fs in proc dev sys; do
        mkdir -p "$CHROOT/$fs"
        mounted "$fs" || mount --bind "/$fs" "$CHROOT/$fs" || die "cannot bind-mount /$fs into $CHROOT"
    done
    # Without the host's /etc/hosts `localhost` does not resolve there and epmd is unreachable.
    cp /etc/hosts "$CHROOT/etc/hosts"
}

# Does a process other than an epmd run inside the chroot (the 4.3 node or a cluster node)?
# Then its mounts must stay.
chroot_in_use() {
    local root proc
    root=$(readlink -f "$CHROOT")
    for proc in /proc/[0-9]*; do
        [[ $(readlink "$proc/root" 2>/dev/null) == "$root" ]] || continue
        [[ $(cat "$proc/comm" 2>/dev/null) == epmd ]] && continue
        return 0
    done
    return 1
}

unmount_chroot() {
    local fs
    if chroot_in_use; then
        log "other nodes still run in $CHROOT: its mounts stay"
        return 0
    fi
    for fs in sys dev proc; do
        if mounted "$fs"; then
            umount "$CHROOT/$fs" 2>/dev/null || umount -l "$CHROOT/$fs" || log "warning: could not unmount $CHROOT/$fs"
        fi
    done
}

configure_chroot() {
    cat >"$CHROOT/etc/rabbitmq/rabbitmq-env.conf" <<EOF
# Written by els-bridge scripts/rabbitmq.sh: a test node beside the host's own.
NODENAME=$NODE43
DIST_PORT=25673
EOF
    cat >"$CHROOT/etc/rabbitmq/rabbitmq.conf" <<EOF
# Written by els-bridge scripts/rabbitmq.sh: the RabbitMQ 4.3 test node.
listeners.tcp.default = $AMQP_HOST:$AMQP_PORT
stream.listeners.tcp.1 = $AMQP_HOST:5553
management.tcp.ip = $AMQP_HOST
management.tcp.port = 15673
prometheus.tcp.ip = $AMQP_HOST
prometheus.tcp.port = 15693
# What operators set to check that nothing relies on a feature RabbitMQ will remove.
deprecated_features.permit.transient_nonexcl_queues = false
deprecated_features.permit.global_qos = false
deprecated_features.permit.queue_master_locator = false
EOF
    printf '[%s].\n' "$(IFS=,; echo "${PLUGINS[*]}")" >"$CHROOT/etc/rabbitmq/enabled_plugins"
    # The CLI wrappers that tests and scripts put first on PATH (see `bin-dir`).
    mkdir -p "$CHROOT_BIN"
    local tool
    for tool in rabbitmqctl rabbitmq-diagnostics rabbitmq-plugins rabbitmq-queues; do
        cat >"$CHROOT_BIN/$tool" <<EOF
#!/bin/sh
# $tool of the RabbitMQ 4.3 test node (written by els-bridge scripts/rabbitmq.sh).
exec env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 LC_ALL=C.UTF-8 \\
    chroot "$CHROOT" /usr/lib/rabbitmq/bin/$tool "\$@"
EOF
        chmod +x "$CHROOT_BIN/$tool"
    done
}

# --- node state ---------------------------------------------------------------------------------
# Is an Erlang node answering (booting, running, or with its application stopped)?
# `rabbitmqctl status` is not used for this: it fails (exit 64) while the node boots.
node_up() {
    installed || return 1
    if [[ $version == 4.3 ]] && ! mounted proc; then return 1; fi
    diagnostics -q ping >/dev/null 2>&1
}

wait_for_node() {
    local deadline=$((SECONDS + START_TIMEOUT))
    until node_up; do
        if ((SECONDS >= deadline)); then
            show_logs
            die "no node answered within ${START_TIMEOUT} s after rabbitmq-server -detached"
        fi
        sleep 1
    done
}

# true/false from the running node (empty if the node does not answer).
node_eval() { ctl -q eval "$1" 2>/dev/null | tr -d '[:space:]' || true; }

# Bash-only AMQP check of port $1 (default: the node's): send the 0-9-1 protocol header and expect a Connection.Start
# method frame (frame type 1, channel 0, class 10, method 10) back.
amqp_answers() {
    local port=${1:-$AMQP_PORT} reply
    # shellcheck disable=SC2016 # expanded by the inner bash
    reply=$(timeout 5 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "AMQP\x00\x00\x09\x01" >&3
        head -c 11 <&3 | od -An -tx1 | tr -d " \n"
    ' "$AMQP_HOST" "$port" 2>/dev/null) || return 1
    # type 01, channel 0000, size (4 bytes), class 000a, method 000a
    [[ $reply == 010000????????000a000a ]]
}

wait_for_amqp() {
    local deadline=$((SECONDS + 30))
    until amqp_answers; do
        if ((SECONDS >= deadline)); then
            show_logs
            die "the node is running but AMQP does not answer on $AMQP_HOST:$AMQP_PORT"
        fi
        sleep 1
    done
}

enable_plugins() {
    # Offline before the first start (no restart needed); online on a running node.
    if node_up; then
        plugins -q enable "${PLUGINS[@]}" >/dev/null || die "could not enable plugins ${PLUGINS[*]}"
    else
        plugins -q enable --offline "${PLUGINS[@]}" >/dev/null || die "could not enable plugins ${PLUGINS[*]}"
    fi
}

# Default credentials, as the tests use them: guest/guest with full rights on vhost "/".
ensure_guest() {
    if ! ctl -q authenticate_user guest guest >/dev/null 2>&1; then
        log "user guest/guest does not work; (re)creating it"
        ctl -q add_user guest guest >/dev/null 2>&1 || ctl -q change_password guest guest >/dev/null
        ctl -q set_user_tags guest administrator >/dev/null
    fi
    if ! ctl -q list_user_permissions guest 2>/dev/null | awk -F'\t' '$1 == "/" {found = 1} END {exit !found}'; then
        ctl -q set_permissions -p / guest '.*' '.*' '.*' >/dev/null
    fi
}

# Starts the Erlang node of the chosen version (it is not running).
launch() {
    if [[ $version == 3.10 ]]; then
        enable_plugins
        rabbitmq-server -detached </dev/null >/dev/null 2>&1 || true
        return 0
    fi
    mount_chroot
    configure_chroot
    # A fresh data directory each time: see the header.
    rm -rf "$CHROOT/var/lib/rabbitmq/mnesia"
    rm -f "$CHROOT"/var/log/rabbitmq/*.log
    # Share the host's epmd when there is one, so that it does not live inside the chroot.
    if command -v epmd >/dev/null 2>&1; then epmd -daemon >/dev/null 2>&1 || true; fi
    in_chroot /usr/lib/rabbitmq/bin/rabbitmq-server -detached </dev/null >/dev/null 2>&1 || true
}

start() {
    need_root start
    install
    [[ $version == 3.10 ]] && ensure_hostname_resolves
    local t0=$SECONDS
    if node_up; then
        # A node is there (started earlier, or by the package's init script). Its
        # application may still be booting, or be stopped (rabbitmqctl stop_app).
        [[ $version == 3.10 ]] && enable_plugins
        if [[ $(node_eval 'rabbit:is_booting().') != true && $(node_eval 'rabbit:is_running().') != true ]]; then
            log "node is up but the RabbitMQ application is stopped; start_app"
            ctl -q start_app || { show_logs; die "rabbitmqctl start_app failed"; }
        else
            log "node already running (or booting)"
        fi
    else
        log "starting the node (rabbitmq-server -detached)"
        launch
        wait_for_node
    fi
    if ! ctl -q await_startup --timeout "$START_TIMEOUT" >/dev/null 2>&1; then
        show_logs
        die "the node did not finish booting within ${START_TIMEOUT} s"
    fi
    wait_for_amqp
    ensure_guest
    log "ready: $(url) (RabbitMQ $(ctl -q version 2>/dev/null || echo '?'), up after $((SECONDS - t0)) s)"
}

stop() {
    need_root stop
    if ! installed; then
        log "not installed; nothing to stop"
        return 0
    fi
    if node_up; then
        log "shutting the node down"
        ctl -q shutdown >/dev/null || die "rabbitmqctl shutdown failed"
        log "stopped"
    else
        log "not running"
    fi
    if [[ $version == 4.3 ]]; then unmount_chroot; fi
}

status() {
    if ! installed; then
        log "not installed"
        return 1
    fi
    if ! node_up; then
        log "not running"
        return 1
    fi
    if [[ $(node_eval 'rabbit:is_running().') != true ]]; then
        log "node is up but the RabbitMQ application is not running"
        return 1
    fi
    if ! amqp_answers; then
        log "node is running but AMQP does not answer on $AMQP_HOST:$AMQP_PORT"
        return 1
    fi
    log "running (RabbitMQ $(ctl -q version 2>/dev/null || echo '?')), AMQP answers on $AMQP_HOST:$AMQP_PORT"
}

url() { echo "amqp://guest:guest@$AMQP_HOST:$AMQP_PORT/%2f"; }

bin_dir() {
    if [[ $version == 4.3 ]]; then
        [[ -x $CHROOT_BIN/rabbitmqctl ]] || die "no CLI wrappers in $CHROOT_BIN yet: run '$0 start --version 4.3' first"
        echo "$CHROOT_BIN"
    else
        local ctl_path
        ctl_path=$(command -v rabbitmqctl) || die "rabbitmqctl is not installed: run '$0 start' first"
        dirname "$ctl_path"
    fi
}

# --- the 4.3 cluster ----------------------------------------------------------------------------
# Three nodes in the 4.3 chroot; paths below are inside it. See the header.
readonly CLUSTER_SIZE=3
readonly CLUSTER_HOME=/var/lib/els-cluster # each node's HOME: the shared Erlang cookie
readonly CLUSTER_ETC=/etc/els-cluster
readonly CLUSTER_LOG=/var/log/els-cluster
readonly CLUSTER_BIN=$CACHE/rabbitmq-4.3-cluster-bin

cnode() { echo "elsc$1@localhost"; }
camqp_port() { echo $((5680 + $1)); }
# The file that gives node N its name, ports, data and configuration (RABBITMQ_CONF_ENV_FILE).
cenv_file() { echo "$CLUSTER_ETC/elsc$1-env.conf"; }
cdata() { echo "$CLUSTER_HOME/elsc$1"; }

# A command inside the chroot as node N's tools see it: its env file and the cluster's cookie.
in_cluster_chroot() {
    local n=$1
    shift
    ensure_cluster_cookie
    env -i HOME=$CLUSTER_HOME PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 LC_ALL=C.UTF-8 \
        RABBITMQ_CONF_ENV_FILE="$(cenv_file "$n")" chroot "$CHROOT" "$@"
}
# One cookie for the three nodes and their CLI, written before any of them runs Erlang
# (Erlang would create one itself, and several nodes or CLI calls at once might race).
ensure_cluster_cookie() {
    local cookie=$CHROOT$CLUSTER_HOME/.erlang.cookie
    [[ -s $cookie ]] && return 0
    mkdir -p "$CHROOT$CLUSTER_HOME"
    # (od, not `tr </dev/urandom | head`: a SIGPIPE would fail the pipeline.)
    (umask 077; od -An -N16 -tx1 /dev/urandom | tr -d ' \n' | tr 0-9a-f A-P >"$cookie")
    chmod 400 "$cookie"
}
cctl() {
    local n=$1
    shift
    in_cluster_chroot "$n" /usr/lib/rabbitmq/bin/rabbitmqctl -n "$(cnode "$n")" "$@"
}

cnode_up() {
    installed && mounted proc || return 1
    in_cluster_chroot "$1" /usr/lib/rabbitmq/bin/rabbitmq-diagnostics -n "$(cnode "$1")" -q ping >/dev/null 2>&1
}
# In one CLI call (each costs one to two seconds): `down` if node N does not answer,
# `stopped` if its application does not run, else how many nodes it sees running.
cnode_state() {
    local state
    state=$(cctl "$1" -q eval \
        'case rabbit:is_running() of true -> length(rabbit_nodes:list_running()); false -> stopped end.' \
        2>/dev/null | tr -d '[:space:]') || true
    echo "${state:-down}"
}
cnode_amqp() { amqp_answers "$(camqp_port "$1")"; }

# Node N runs RabbitMQ, sees all three nodes running and answers AMQP.
cnode_healthy() { [[ $(cnode_state "$1") == "$CLUSTER_SIZE" ]] && cnode_amqp "$1"; }

cshow_logs() {
    local f
    for f in "$CHROOT$CLUSTER_LOG/elsc$1"/*.log; do
        [[ -s $f ]] || continue
        log "--- last lines of $f ---"
        tail -n 30 "$f" >&2 || true
    done
}

# Polls "$@" for up to $1 seconds; on timeout shows node $2's logs and dies with $3.
cwait() {
    local timeout=$1 n=$2 what=$3
    shift 3
    local deadline=$((SECONDS + timeout))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            cshow_logs "$n"
            die "node $n ($(cnode "$n")): $what within $timeout s"
        fi
        sleep 1
    done
}

# Writes every node's env file and rabbitmq.conf, the cookie and the CLI wrappers.
configure_cluster() {
    local n port_offset
    mkdir -p "$CHROOT$CLUSTER_ETC" "$CHROOT$CLUSTER_HOME" "$CHROOT$CLUSTER_LOG"
    printf '[%s].\n' "$(IFS=,; echo "${PLUGINS[*]}")" >"$CHROOT$CLUSTER_ETC/enabled_plugins"
    for ((n = 1; n <= CLUSTER_SIZE; n++)); do
        port_offset=$((80 + n))
        cat >"$CHROOT$(cenv_file "$n")" <<EOT
# Written by els-bridge scripts/rabbitmq.sh: node $n of the 4.3 test cluster.
NODENAME=$(cnode "$n")
DIST_PORT=256$port_offset
MNESIA_BASE=$(cdata "$n")
PID_FILE=$(cdata "$n")/pid
LOG_BASE=$CLUSTER_LOG/elsc$n
CONFIG_FILE=$CLUSTER_ETC/elsc$n.conf
ENABLED_PLUGINS_FILE=$CLUSTER_ETC/enabled_plugins
EOT
        cat >"$CHROOT$CLUSTER_ETC/elsc$n.conf" <<EOT
# Written by els-bridge scripts/rabbitmq.sh: node $n of the RabbitMQ 4.3 test cluster.
listeners.tcp.default = $AMQP_HOST:56$port_offset
stream.listeners.tcp.1 = $AMQP_HOST:55$port_offset
management.tcp.ip = $AMQP_HOST
management.tcp.port = 156$port_offset
prometheus.tcp.ip = $AMQP_HOST
prometheus.tcp.port = 157$port_offset
# As on the single 4.3 node: nothing may rely on a feature RabbitMQ will remove.
deprecated_features.permit.transient_nonexcl_queues = false
deprecated_features.permit.global_qos = false
deprecated_features.permit.queue_master_locator = false
EOT
    done
    mkdir -p "$CLUSTER_BIN"
    local tool
    for tool in rabbitmqctl rabbitmq-diagnostics rabbitmq-plugins rabbitmq-queues rabbitmq-streams; do
        cat >"$CLUSTER_BIN/$tool" <<EOT
#!/bin/sh
# $tool of the RabbitMQ 4.3 test cluster (written by els-bridge scripts/rabbitmq.sh): drives
# node 1 ($(cnode 1)); -n elsc2@localhost or -n elsc3@localhost addresses the others.
exec env -i HOME=$CLUSTER_HOME PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 LC_ALL=C.UTF-8 \\
    RABBITMQ_CONF_ENV_FILE=$(cenv_file 1) chroot "$CHROOT" /usr/lib/rabbitmq/bin/$tool "\$@"
EOT
        chmod +x "$CLUSTER_BIN/$tool"
    done
}

# Starts the Erlang VM of node N on its data directory (it is not running); returns at once.
claunch() {
    # Share the host's epmd when there is one, as the single 4.3 node does.
    if command -v epmd >/dev/null 2>&1; then epmd -daemon >/dev/null 2>&1 || true; fi
    in_cluster_chroot "$1" /usr/lib/rabbitmq/bin/rabbitmq-server -detached </dev/null >/dev/null 2>&1 || true
}

# The OS pid of node N's Erlang VM (from its pid file), if that process still runs.
cnode_pid() {
    local pid
    pid=$(cat "$CHROOT$(cdata "$1")/pid" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null) == beam.smp ]] || return 1
    echo "$pid"
}

# Waits until node N's application has booted and it answers AMQP.
cawait_boot() {
    local n=$1
    cwait "$START_TIMEOUT" "$n" "no Erlang node answered" cnode_up "$n"
    cctl "$n" -q await_startup --timeout "$START_TIMEOUT" >/dev/null 2>&1 \
        || { cshow_logs "$n"; die "node $n did not finish booting within $START_TIMEOUT s"; }
    cwait 30 "$n" "AMQP does not answer on $AMQP_HOST:$(camqp_port "$n")" cnode_amqp "$n"
}

cnode_stop() {
    local n=$1
    if cnode_up "$n"; then
        cctl "$n" -q shutdown >/dev/null 2>&1 || log "rabbitmqctl shutdown of node $n failed"
    fi
    local pid
    if pid=$(cnode_pid "$n"); then
        log "node $n (pid $pid) still runs after shutdown: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        cwait 30 "$n" "the killed VM (pid $pid) did not exit" eval "! kill -0 $pid 2>/dev/null"
    fi
}

cluster_start() {
    need_root start
    install
    mount_chroot
    local t0=$SECONDS n all=1
    for ((n = 1; n <= CLUSTER_SIZE; n++)); do cnode_healthy "$n" || { all=; break; }; done
    if [[ -n $all ]]; then
        ensure_guest
        log "already running: $CLUSTER_SIZE nodes clustered, AMQP answers on each"
        return 0
    fi
    for ((n = 1; n <= CLUSTER_SIZE; n++)); do
        if cnode_up "$n" || cnode_pid "$n" >/dev/null; then
            log "node $n runs but the cluster is not whole: stopping it to start afresh"
            cnode_stop "$n"
        fi
    done
    configure_cluster
    # Fresh data for every node: a test cluster, like the single 4.3 node.
    for ((n = 1; n <= CLUSTER_SIZE; n++)); do
        rm -rf "${CHROOT:?}$(cdata "$n")" "${CHROOT:?}$CLUSTER_LOG/elsc$n"
    done
    log "starting $CLUSTER_SIZE nodes ($(cnode 1) .. $(cnode "$CLUSTER_SIZE"))"
    for ((n = 1; n <= CLUSTER_SIZE; n++)); do claunch "$n"; done
    for ((n = 1; n <= CLUSTER_SIZE; n++)); do cawait_boot "$n"; done
    log "nodes booted after $((SECONDS - t0)) s; joining them to $(cnode 1)"
    for ((n = 2; n <= CLUSTER_SIZE; n++)); do
        cctl "$n" -q stop_app >/dev/null || { cshow_logs "$n"; die "stop_app on node $n failed"; }
        cctl "$n" -q join_cluster "$(cnode 1)" >/dev/null || { cshow_logs "$n"; die "node $n could not join $(cnode 1)"; }
        cctl "$n" -q start_app >/dev/null || { cshow_logs "$n"; die "start_app on node $n failed"; }
        cawait_boot "$n"
    done
    for ((n = 1; n <= CLUSTER_SIZE; n++)); do
        cwait 60 "$n" "does not see $CLUSTER_SIZE running nodes" cnode_healthy "$n"
    done
    ensure_guest
    log "ready: $CLUSTER_SIZE nodes clustered (RabbitMQ $(cctl 1 -q version 2>/dev/null || echo '?')), AMQP on ports $(camqp_port 1)-$(camqp_port "$CLUSTER_SIZE"), up after $((SECONDS - t0)) s, $(cluster_memory)"
}

# Resident memory of the nodes' VMs.
cluster_memory() {
    local n pid rss out=
    for ((n = 1; n <= CLUSTER_SIZE; n++)); do
        rss='-'
        if pid=$(cnode_pid "$n"); then rss=$(($(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status") / 1024)); fi
        out+="${out:+, }node $n ${rss} MB"
    done
    echo "resident memory $out"
}

cluster_stop() {
    need_root stop
    if ! installed; then
        log "not installed; nothing to stop"
        return 0
    fi
    mount_chroot
    local n t0=$SECONDS
    for ((n = CLUSTER_SIZE; n >= 1; n--)); do
        if cnode_up "$n" || cnode_pid "$n" >/dev/null; then
            log "shutting node $n down"
            cnode_stop "$n"
        fi
    done
    log "stopped after $((SECONDS - t0)) s"
    unmount_chroot
}

cluster_status() {
    local n state bad=
    if ! installed; then
        log "not installed"
        return 1
    fi
    for ((n = 1; n <= CLUSTER_SIZE; n++)); do
        state=down
        mounted proc && state=$(cnode_state "$n")
        case $state in
            down) log "node $n ($(cnode "$n")): not running" ;;
            stopped) log "node $n ($(cnode "$n")): up but the RabbitMQ application is not running" ;;
            "$CLUSTER_SIZE")
                if cnode_amqp "$n"; then
                    log "node $n ($(cnode "$n")): running, clustered, AMQP answers on $AMQP_HOST:$(camqp_port "$n")"
                    continue
                fi
                log "node $n ($(cnode "$n")): AMQP does not answer on $AMQP_HOST:$(camqp_port "$n")"
                ;;
            *) log "node $n ($(cnode "$n")): sees $state running node(s), not $CLUSTER_SIZE" ;;
        esac
        bad=1
    done
    [[ -z $bad ]]
}

cluster_url() {
    local n
    for ((n = 1; n <= CLUSTER_SIZE; n++)); do echo "amqp://guest:guest@$AMQP_HOST:$(camqp_port "$n")/%2f"; done
}

cluster_bin_dir() {
    [[ -x $CLUSTER_BIN/rabbitmqctl ]] || die "no CLI wrappers in $CLUSTER_BIN yet: run '$0 start --cluster' first"
    echo "$CLUSTER_BIN"
}

node_stop() {
    need_root node-stop
    mount_chroot
    if ! cnode_up "$node" && ! cnode_pid "$node" >/dev/null; then
        log "node $node is not running"
        return 0
    fi
    cnode_stop "$node"
    log "node $node stopped"
}

node_kill() {
    need_root node-kill
    local pid
    pid=$(cnode_pid "$node") || die "node $node is not running (no live pid in $CHROOT$(cdata "$node")/pid)"
    kill -KILL "$pid"
    cwait 30 "$node" "the killed VM (pid $pid) did not exit" eval "! kill -0 $pid 2>/dev/null"
    log "node $node ($(cnode "$node"), pid $pid) killed with SIGKILL"
}

node_start() {
    need_root node-start
    mount_chroot
    [[ -d $CHROOT$(cdata "$node") ]] || die "node $node has no data directory: run '$0 start --cluster' first"
    local t0=$SECONDS
    if cnode_up "$node"; then
        if [[ $(cnode_state "$node") == stopped ]]; then
            log "node $node is up but its application is stopped; start_app"
            cctl "$node" -q start_app >/dev/null || { cshow_logs "$node"; die "start_app on node $node failed"; }
        fi
    else
        log "starting node $node on its data"
        claunch "$node"
    fi
    cawait_boot "$node"
    cwait 60 "$node" "did not rejoin the cluster (sees fewer than $CLUSTER_SIZE running nodes)" cnode_healthy "$node"
    log "node $node running and clustered after $((SECONDS - t0)) s"
}

if [[ -n $cluster ]]; then
    case $command in
        start) cluster_start ;;
        stop) cluster_stop ;;
        status) cluster_status ;;
        url) cluster_url ;;
        bin-dir) cluster_bin_dir ;;
        node-stop) node_stop ;;
        node-kill) node_kill ;;
        node-start) node_start ;;
    esac
    exit
fi
case $command in
    start) start ;;
    stop) stop ;;
    status) status ;;
    url) url ;;
    bin-dir) bin_dir ;;
esac
