#!/usr/bin/env bash
# The main job end to end on this machine: a local RabbitMQ (installed from the
# distribution if missing), the platform simulator, two workers, and a realistic sample day
# published; ends with a summary of what reached the platform and what was dead-lettered
# and why. Everything runs in a RabbitMQ vhost of its own (els-demo), recreated each run.
#
#   scripts/demo.sh            # build, run, summarise, stop
#   KEEP=1 scripts/demo.sh     # leave the simulator and workers running afterwards
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
export PATH="$HOME/.cargo/bin:$PATH"
work=$(mktemp -d /tmp/els-demo.XXXXXX)
pids=()

say() { printf '\n==> %s\n' "$*"; }
cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then
        echo "left running (KEEP=1): simulator on 127.0.0.1:8097, workers on :9464 and :9465; logs in $work"
        return
    fi
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

say "RabbitMQ"
command -v curl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null; }
bash scripts/rabbitmq.sh start
rabbitmqctl -q delete_vhost els-demo >/dev/null 2>&1 || true
rabbitmqctl -q add_vhost els-demo
rabbitmqctl -q set_permissions -p els-demo guest '.*' '.*' '.*'

say "building els-bridge"
cargo build --quiet --bin els-bridge
bin="$root/target/debug/els-bridge"

# The compose configuration, pointed at this machine.
config="$root/deploy/compose/els-bridge.toml"
export ELS_BRIDGE_CONFIG="$config"
export ELS_BRIDGE__AMQP__URL="amqp://guest:guest@127.0.0.1:5672/els-demo"
export ELS_BRIDGE__PLATFORM__URL="http://127.0.0.1:8097/api/commonInterfaca"
export ELS_BRIDGE__PLATFORM__TOKEN_FILE="$work/tokens.json"
export ELS_BRIDGE__BATCH__LINGER_MS=500

say "simulator on 127.0.0.1:8097"
"$bin" simulate --listen 127.0.0.1:8097 >"$work/simulator.out" 2>"$work/simulator.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$work/simulator.out" 2>/dev/null && break; sleep 0.1; done
grep -q "listening on" "$work/simulator.out" || { cat "$work/simulator.log"; echo "the simulator did not start"; exit 1; }
# A master-data problem the platform will refuse, so that the demo shows a rejection too.
first_key=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["data"]["hosp_purc_mgt_detl"])' deploy/compose/sample-day.jsonl)
curl -fsS -X PUT -H 'content-type: application/json' \
    -d "{\"keys\": [\"$first_key\"], \"return_code\": 15}" http://127.0.0.1:8097/admin/faults/refusals >/dev/null

say "two workers"
for port in 9464 9465; do
    ELS_BRIDGE__HTTP__LISTEN="127.0.0.1:$port" "$bin" worker >"$work/worker-$port.log" 2>&1 &
    pids+=($!)
done
for port in 9464 9465; do
    for _ in $(seq 300); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$work/worker-$port.log"; echo "worker :$port is not ready"; exit 1; }
done

say "publishing the sample day (deploy/compose/sample-day.jsonl)"
"$bin" publish deploy/compose/sample-day.jsonl || true   # exit 1: the day holds a few invalid lines on purpose

say "waiting for the workers to settle everything"
# Quorum queues report their counts a few seconds late: wait for three quiet readings in a row.
quiet=0
for _ in $(seq 300); do
    left=$(rabbitmqctl -q list_queues -p els-demo name messages --formatter json |
        python3 -c 'import json,sys; print(sum(q["messages"] for q in json.load(sys.stdin) if q["name"] == "els.events" or q["name"].startswith("els.delay.")))')
    if [ "$left" = 0 ]; then quiet=$((quiet + 1)); else quiet=0; fi
    [ "$quiet" -ge 3 ] && break
    sleep 2
done

say "what reached the platform (the simulator's records)"
curl -fsS http://127.0.0.1:8097/admin/records | python3 -c '
import json, sys, collections
records = json.load(sys.stdin)["records"]
by = collections.Counter((r["institution"], r["infno"]) for r in records)
for (institution, infno), n in sorted(by.items()):
    print(f"  {institution}  {infno}  {n:5d} records")
print(f"  total {len(records)} records")'

say "dead letters, by reason"
"$bin" dlq stats

say "the report of the day from the receipts ledger"
"$bin" report --from 2026-11-25

echo
echo "Logs: $work. RabbitMQ UI: http://localhost:15672 (guest/guest, vhost els-demo)."
