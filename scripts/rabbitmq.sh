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
while (($#)); do
    case $1 in
        start | stop | status | url | bin-dir) command=$1 ;;
        --version) version=${2:-}; shift ;;
        --version=*) version=${1#--version=} ;;
        -h | --help | help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//p;}' "$0"; exit 0 ;;
        *) printf 'rabbitmq.sh: ERROR: unknown argument %q (expected start, stop, status, url, bin-dir, --version 3.10|4.3)\n' "$1" >&2; exit 2 ;;
    esac
    shift
done

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

log() { printf 'rabbitmq.sh [%s]: %s\n' "$version" "$*" >&2; }
die() { printf 'rabbitmq.sh [%s]: ERROR: %s\n' "$version" "$*" >&2; exit 1; }

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

unmount_chroot() {
    local fs
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

# Bash-only AMQP check: send the 0-9-1 protocol header and expect a Connection.Start
# method frame (frame type 1, channel 0, class 10, method 10) back.
amqp_answers() {
    local reply
    # shellcheck disable=SC2016 # expanded by the inner bash
    reply=$(timeout 5 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "AMQP\x00\x00\x09\x01" >&3
        head -c 11 <&3 | od -An -tx1 | tr -d " \n"
    ' "$AMQP_HOST" "$AMQP_PORT" 2>/dev/null) || return 1
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

case $command in
    start) start ;;
    stop) stop ;;
    status) status ;;
    url) url ;;
    bin-dir) bin_dir ;;
esac
