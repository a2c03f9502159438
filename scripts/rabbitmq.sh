#!/usr/bin/env bash
# The local RabbitMQ node that the integration tests run against.
#
#   scripts/rabbitmq.sh [start]   install Debian's rabbitmq-server if missing, enable the
#                                 plugins, start the node (as root, without systemd), wait
#                                 until AMQP answers on 127.0.0.1:5672
#   scripts/rabbitmq.sh stop      shut the node down (nothing to do if it is not running)
#   scripts/rabbitmq.sh status    exit 0 if the node is up and AMQP answers, 1 otherwise
#
# Idempotent: `start` on a running node only checks it. Needs root (apt-get, and the
# Debian wrappers of rabbitmqctl switch to the `rabbitmq` user themselves).
#
# Configuration is RabbitMQ's default on purpose: guest/guest may log in from loopback
# only, consumer_timeout keeps its default (30 minutes), no rabbitmq.conf is written.
#
# Environment: RABBITMQ_START_TIMEOUT (seconds, default 120),
#              ELS_APT_UPDATED=1 (the caller already ran `apt-get update`).
set -euo pipefail

readonly AMQP_HOST=127.0.0.1
readonly AMQP_PORT=5672
readonly START_TIMEOUT="${RABBITMQ_START_TIMEOUT:-120}"
readonly PLUGINS=(rabbitmq_management rabbitmq_prometheus rabbitmq_stream
                  rabbitmq_consistent_hash_exchange rabbitmq_shovel)

log() { printf 'rabbitmq.sh: %s\n' "$*" >&2; }
die() { printf 'rabbitmq.sh: ERROR: %s\n' "$*" >&2; exit 1; }

show_logs() {
    local f
    for f in /var/log/rabbitmq/*.log; do
        [[ -s $f ]] || continue
        log "--- last lines of $f ---"
        tail -n 30 "$f" >&2 || true
    done
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (installs packages and controls the node); try: sudo $0 $*"
}

installed() { command -v rabbitmqctl >/dev/null 2>&1 && command -v rabbitmq-server >/dev/null 2>&1; }

install() {
    if installed; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "rabbitmq-server is not installed and apt-get is not available"
    local t0=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    local apt_log
    apt_log=$(mktemp)
    if [[ ${ELS_APT_UPDATED:-} != 1 ]]; then
        log "apt-get update"
        apt-get update -qq </dev/null >"$apt_log" 2>&1 || { cat "$apt_log" >&2; die "apt-get update failed"; }
    fi
    log "installing rabbitmq-server (Debian package)"
    apt-get install -y -qq --no-install-recommends rabbitmq-server </dev/null >"$apt_log" 2>&1 \
        || { cat "$apt_log" >&2; die "apt-get install rabbitmq-server failed"; }
    rm -f "$apt_log"
    installed || die "rabbitmq-server was installed but rabbitmqctl is not on PATH"
    log "installed $(dpkg-query -W -f='rabbitmq-server ${Version}' rabbitmq-server) in $((SECONDS - t0)) s"
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

# Is an Erlang node answering (booting, running, or with its application stopped)?
# `rabbitmqctl status` is not used for this: it fails (exit 64) while the node boots.
node_up() { rabbitmq-diagnostics -q ping >/dev/null 2>&1; }

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
node_eval() { rabbitmqctl -q eval "$1" 2>/dev/null | tr -d '[:space:]' || true; }

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
        rabbitmq-plugins -q enable "${PLUGINS[@]}" >/dev/null || die "could not enable plugins ${PLUGINS[*]}"
    else
        rabbitmq-plugins -q enable --offline "${PLUGINS[@]}" >/dev/null || die "could not enable plugins ${PLUGINS[*]}"
    fi
}

# Default credentials, as the tests use them: guest/guest with full rights on vhost "/".
ensure_guest() {
    if ! rabbitmqctl -q authenticate_user guest guest >/dev/null 2>&1; then
        log "user guest/guest does not work; (re)creating it"
        rabbitmqctl -q add_user guest guest >/dev/null 2>&1 || rabbitmqctl -q change_password guest guest >/dev/null
        rabbitmqctl -q set_user_tags guest administrator >/dev/null
    fi
    if ! rabbitmqctl -q list_user_permissions guest 2>/dev/null | awk -F'\t' '$1 == "/" {found = 1} END {exit !found}'; then
        rabbitmqctl -q set_permissions -p / guest '.*' '.*' '.*' >/dev/null
    fi
}

start() {
    need_root start
    install
    ensure_hostname_resolves
    local t0=$SECONDS
    enable_plugins
    if node_up; then
        # A node is there (started earlier, or by the package's init script). Its
        # application may still be booting, or be stopped (rabbitmqctl stop_app).
        if [[ $(node_eval 'rabbit:is_booting().') != true && $(node_eval 'rabbit:is_running().') != true ]]; then
            log "node is up but the RabbitMQ application is stopped; start_app"
            rabbitmqctl -q start_app || { show_logs; die "rabbitmqctl start_app failed"; }
        else
            log "node already running (or booting)"
        fi
    else
        log "starting the node (rabbitmq-server -detached)"
        rabbitmq-server -detached </dev/null >/dev/null 2>&1 || true
        wait_for_node
    fi
    if ! rabbitmqctl -q await_startup --timeout "$START_TIMEOUT" >/dev/null 2>&1; then
        show_logs
        die "the node did not finish booting within ${START_TIMEOUT} s"
    fi
    wait_for_amqp
    ensure_guest
    log "ready: amqp://guest:guest@$AMQP_HOST:$AMQP_PORT/%2f ($(rabbitmqctl -q version 2>/dev/null || echo '?'), up after $((SECONDS - t0)) s)"
}

stop() {
    need_root stop
    if ! installed; then
        log "not installed; nothing to stop"
        return 0
    fi
    if ! node_up; then
        log "not running"
        return 0
    fi
    log "shutting the node down"
    rabbitmqctl -q shutdown >/dev/null || die "rabbitmqctl shutdown failed"
    log "stopped"
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
    log "running ($(rabbitmqctl -q version 2>/dev/null || echo '?')), AMQP answers on $AMQP_HOST:$AMQP_PORT"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    -h | --help | help) sed -n '2,17s/^# \{0,1\}//p' "$0" ;;
    *) die "unknown command '$1' (expected start, stop or status)" ;;
esac
