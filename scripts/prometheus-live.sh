#!/usr/bin/env bash
# A real Prometheus scraping a real worker: every query of the Grafana dashboard and every
# rule of the alert rules is run through Prometheus's HTTP API (/api/v1/query); each must
# parse and evaluate, the dashboard's panels must return series, Prometheus must have
# loaded and evaluated the rules file without an error, and the rejected dead letter of
# the day must make ElsDeadLettersGrowing fire (ElsNoWorkerConsuming staying quiet).
#
#   bash scripts/prometheus-live.sh        # about 25 s (the binary built, prometheus installed)
#
# What runs, all on loopback ports of its own and stopped at exit:
# 1. Debian's prometheus (scripts/install-prometheus.sh installs it when missing);
# 2. the RabbitMQ node of RABBITMQ_VERSION (default 4.3; scripts/rabbitmq.sh start only
#    checks a running node), in a vhost of its own (els-prom-PID), deleted at exit;
# 3. `els-bridge simulate` with the two institutions of deploy/compose/els-bridge.toml,
#    refusing one record (so that a rejected dead letter exists), and one `els-bridge
#    worker` (ELS_BRIDGE_BIN, else target/debug/els-bridge, built when missing);
# 4. `prometheus` with its own storage in a temporary folder, scraping the worker every
#    second and loading deploy/prometheus/els-bridge.rules.yml (evaluated every second);
# 5. `els-bridge publish deploy/compose/sample-day.jsonl`, then, once the worker has
#    settled the day and Prometheus has scraped it, the queries.
#
# Every panel must return series, the one reading els_last_accepted_upload_timestamp_seconds
# ("Time since the last accepted upload", also read by ElsNoAcceptedUploadSince) included.
# Exits 1 on the first failure, with the logs' last lines.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
readonly T0=$SECONDS
readonly VERSION=${RABBITMQ_VERSION:-4.3}
readonly CONFIG=$PWD/deploy/compose/els-bridge.toml
work=$(mktemp -d /tmp/els-prom.XXXXXX)
vhost=els-prom-$$
pids=()

say() { printf '\n==> %s\n' "$*" >&2; }
fail() {
    printf '\nprometheus-live.sh: FAILED: %s (after %d s; logs in %s)\n' "$*" "$((SECONDS - T0))" "$work" >&2
    for log in "$work"/*.log; do
        [[ -s $log ]] || continue
        printf -- '--- last lines of %s ---\n' "$log" >&2
        tail -n 15 "$log" >&2
    done
    exit 1
}
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rabbitmqctl -q delete_vhost "$vhost" </dev/null >/dev/null 2>&1 || true
    [[ -n ${KEEP_LOGS:-} ]] || rm -rf "$work"
}
trap cleanup EXIT

# Waits up to $1 seconds for "${@:2}" to succeed.
wait_for() {
    local secs=$1
    shift
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- 1. tools ----------------------------------------------------------------------------
say "prometheus (Debian's package)"
bash scripts/install-prometheus.sh || fail "scripts/install-prometheus.sh"
prometheus --version 2>&1 | head -n 1 >&2
bin=${ELS_BRIDGE_BIN:-$PWD/target/debug/els-bridge}
if [[ ! -x $bin ]]; then
    say "cargo build --bin els-bridge"
    cargo build --quiet --bin els-bridge || fail "cargo build --bin els-bridge"
fi

# --- 2. broker ---------------------------------------------------------------------------
say "RabbitMQ $VERSION, vhost $vhost"
bash scripts/rabbitmq.sh start --version "$VERSION" || fail "scripts/rabbitmq.sh start --version $VERSION"
PATH=$(bash scripts/rabbitmq.sh bin-dir --version "$VERSION"):$PATH
url=$(bash scripts/rabbitmq.sh url --version "$VERSION")
rabbitmqctl -q add_vhost "$vhost" </dev/null >/dev/null || fail "rabbitmqctl add_vhost $vhost"
rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' </dev/null >/dev/null || fail "rabbitmqctl set_permissions"
export ELS_BRIDGE_CONFIG=$CONFIG
export ELS_BRIDGE__AMQP__URL=${url%/*}/$vhost
export ELS_BRIDGE__PLATFORM__TOKEN_FILE=$work/tokens.json
export ELS_BRIDGE__BATCH__LINGER_MS=300
export ELS_BRIDGE_LOG_FORMAT=json

# --- 3. simulator and worker -------------------------------------------------------------
say "simulator and worker"
"$bin" simulate --listen 127.0.0.1:0 >"$work/simulator.out" 2>"$work/simulator.log" &
pids+=($!)
wait_for 20 grep -q "listening on" "$work/simulator.out" || fail "the simulator did not start"
simulator=$(sed -n 's/^listening on //p' "$work/simulator.out")
export ELS_BRIDGE__PLATFORM__URL=http://$simulator/api/commonInterfaca
first_key=$(python3 -c 'import json, sys; print(json.loads(open(sys.argv[1]).readline())["data"]["hosp_purc_mgt_detl"])' \
    deploy/compose/sample-day.jsonl)
curl -fsS -X PUT -H 'content-type: application/json' -d "{\"keys\": [\"$first_key\"], \"return_code\": 15}" \
    "http://$simulator/admin/faults/refusals" >/dev/null || fail "the simulator's fault API"

ELS_BRIDGE__HTTP__LISTEN=127.0.0.1:0 "$bin" worker 2>"$work/worker.log" >/dev/null &
pids+=($!)
# The address the worker logs once it listens (JSON logs: "address" after the message).
worker_address() { sed -n 's/.*serving \/healthz.*"address":"\([0-9.:]*\)".*/\1/p' "$work/worker.log" 2>/dev/null | head -n 1; }
worker_listening() { [[ -n $(worker_address) ]]; }
wait_for 60 worker_listening || fail "the worker did not report its HTTP address"
worker=$(worker_address)
wait_for 60 curl -fsS "http://$worker/readyz" || fail "the worker is not ready (http://$worker/readyz)"

# --- 4. prometheus -----------------------------------------------------------------------
prom_port=$(free_port)
prom=http://127.0.0.1:$prom_port
say "prometheus on $prom scraping the worker at $worker"
cp deploy/prometheus/els-bridge.rules.yml "$work/"
cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $work/els-bridge.rules.yml
scrape_configs:
  - job_name: els-bridge
    static_configs:
      - targets: ["$worker"]
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
    --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$work/prometheus.log" 2>&1 &
pids+=($!)
wait_for 30 curl -fsS "$prom/-/ready" || fail "prometheus did not become ready"
# Scraped before the traffic starts, so that counters are seen rising from 0 (increase()
# over a counter first seen at 1 is 0).
scraped() { curl -fsS "$prom/api/v1/query" --data-urlencode 'query=els_consuming == 1' | grep -q '"result":\[{'; }
wait_for 30 scraped || fail "prometheus did not scrape the worker (els_consuming == 1) within 30 s"

# --- 5. traffic, then the queries --------------------------------------------------------
say "publishing the sample day"
"$bin" publish deploy/compose/sample-day.jsonl >"$work/publish.log" 2>&1 || true # its broken lines on purpose: exit 1
# Settled: the worker holds nothing, and a rejected dead letter and uploads are counted.
settled() {
    curl -fsS "http://$worker/metrics" | python3 -c '
import re, sys
text = sys.stdin.read()
def total(name, where=""):
    return sum(float(v) for v in re.findall(rf"^{name}{{[^}}]*{where}[^}}]*}} (\S+)$", text, re.M))
unsettled = re.search(r"^els_deliveries_unsettled(?:{[^}]*})? (\S+)$", text, re.M)
sys.exit(0 if unsettled and float(unsettled.group(1)) == 0 and total("els_records_total", "outcome=\"uploaded\"") > 200
         and total("els_dead_letters_total", "reason=\"rejected\"") >= 1 else 1)'
}
wait_for 120 settled || fail "the worker did not settle the sample day within 120 s"
sleep 5 # a few more scrapes and rule evaluations after the last upload

say "every dashboard query and every rule through $prom/api/v1/query"
python3 scripts/dashboard_queries.py >"$work/dashboard-queries.jsonl"
curl -fsS "http://$worker/metrics" >"$work/metrics.txt"
python3 - "$prom" "$work/dashboard-queries.jsonl" "$work/metrics.txt" <<'PY' || fail "queries against the live Prometheus (above)"
import json, sys, urllib.parse, urllib.request

prom, queries_file, metrics_file = sys.argv[1:4]
# The silence gauge: set by an accepted upload, so the sample day must bring it.
SILENCE = "els_last_accepted_upload_timestamp_seconds"
failed = []
if SILENCE not in open(metrics_file).read():
    failed.append(SILENCE)
    print(f"    FAILED: the worker's /metrics has no {SILENCE} after the sample day", file=sys.stderr)

def api(path, **params):
    url = f"{prom}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as error:  # 400 for a query that does not parse
        return json.load(error)

def query(what, expr, must_return):
    answer = api("/api/v1/query", query=expr)
    if answer.get("status") != "success":
        failed.append(what)
        print(f"    FAILED: {what}: {answer.get('errorType')}: {answer.get('error')}\n      {expr}", file=sys.stderr)
        return
    result = answer["data"]["result"]
    series = len(result) if isinstance(result, list) else 1
    if must_return and series == 0:
        failed.append(what)
        print(f"    FAILED: {what}: no series\n      {expr}", file=sys.stderr)
    else:
        print(f"    ok: {what}: {series} series", file=sys.stderr)

for line in open(queries_file):
    q = json.loads(line)
    query(f"panel {q['panel']!r} {q['ref']}", q["expr"], must_return=True)

rules = [r for g in api("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
if not rules:
    failed.append("rules")
    print("    FAILED: prometheus loaded no rules", file=sys.stderr)
for rule in rules:
    what = f"{rule['type']} rule {rule['name']}"
    if rule.get("health") != "ok":
        failed.append(what)
        print(f"    FAILED: {what}: health {rule.get('health')!r}: {rule.get('lastError')}", file=sys.stderr)
    # An alert's condition is usually empty (nothing wrong); it must parse and evaluate.
    query(what, rule["query"], must_return=rule["type"] == "recording")

# The day ends with a rejected dead letter, and ElsDeadLettersGrowing has no `for`: it
# fires; the worker consumes, so ElsNoWorkerConsuming is quiet.
for expr, firing in (('ALERTS{alertname="ElsDeadLettersGrowing", reason="rejected", alertstate="firing"}', True),
                     ('ALERTS{alertname="ElsNoWorkerConsuming"}', False)):
    result = api("/api/v1/query", query=expr).get("data", {}).get("result", [])
    if bool(result) != firing:
        failed.append(expr)
        print(f"    FAILED: {expr}: {'not firing' if firing else 'pending or firing'}", file=sys.stderr)
    else:
        print(f"    ok: {expr}: {'firing' if firing else 'quiet'}", file=sys.stderr)
print(f"    {len(failed)} failed of the dashboard's queries, {len(rules)} rules and 2 alert states", file=sys.stderr)
sys.exit(1 if failed else 0)
PY
printf '\nprometheus-live.sh: the dashboard and the rules work against a live Prometheus (%d s)\n' "$((SECONDS - T0))" >&2
