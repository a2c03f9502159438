#!/usr/bin/env bash
# Makes sure Debian's prometheus package (the server and promtool) is installed, for the
# rule checks of scripts/check-deploy.sh and the live test scripts/prometheus-live.sh.
#
#   bash scripts/install-prometheus.sh     # nothing to do in well under a second when installed;
#                                          # a first install takes 10-30 s
#
# The package would start its own server (an init script): while it installs, a
# policy-rc.d refuses every service start, unless the machine already has one (Debian's
# container images do), and a server it started anyway is stopped. The tests start their
# own server on a loopback port and stop it. Needs root for apt-get. Environment:
# ELS_APT_UPDATED=1 (the caller already ran `apt-get update`).
set -euo pipefail

log() { printf 'install-prometheus.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    die "prometheus and promtool are missing; install Debian's package: apt-get install --no-install-recommends prometheus"
fi

policy=/usr/sbin/policy-rc.d
ours=
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# scripts/install-prometheus.sh: no service starts while it installs\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    ours=1
fi
trap '[[ -z $ours ]] || rm -f "$policy"' EXIT

export DEBIAN_FRONTEND=noninteractive
apt_log=$(mktemp)
if [[ ${ELS_APT_UPDATED:-} != 1 ]]; then
    log "apt-get update"
    apt-get update -qq </dev/null >"$apt_log" 2>&1 || { cat "$apt_log" >&2; die "apt-get update failed"; }
fi
log "installing prometheus (Debian package: the server and promtool)"
apt-get install -y -qq --no-install-recommends prometheus </dev/null >"$apt_log" 2>&1 \
    || { cat "$apt_log" >&2; die "apt-get install prometheus failed"; }
rm -f "$apt_log"
# Without systemd the init script may still have started the packaged server.
if [[ -x /etc/init.d/prometheus ]] && /etc/init.d/prometheus status >/dev/null 2>&1; then
    /etc/init.d/prometheus stop >/dev/null 2>&1 || true
fi
log "installed $(prometheus --version 2>&1 | head -n 1)"
