#!/usr/bin/env python3
"""Offline checks of the alert rules and the Grafana dashboard that promtool cannot do,
run by scripts/check-deploy.sh (with PyYAML from its virtualenv):

    python scripts/check_monitoring.py OUT_DIR

- every alert of deploy/prometheus/els-bridge.rules.yml has a severity (critical or
  warning), a summary, a description and a runbook_url into a section of docs/runbook.md,
  and every section of docs/runbook.md belongs to an alert;
- deploy/grafana/els-bridge.json: unique panel ids, every panel on the ${datasource}
  variable with at least one query, every query's variables known; the queries are written
  to OUT_DIR/dashboard-queries.rules.yml as recording rules, for `promtool check rules` to
  parse them.

Prints one line per problem and exits 1 if there is any.
"""
import json
import os
import re
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dashboard_queries  # noqa: E402 (beside this script)

RULES = "deploy/prometheus/els-bridge.rules.yml"
DASHBOARD = "deploy/grafana/els-bridge.json"
RUNBOOK = "docs/runbook.md"
RUNBOOK_URL = "https://els-bridge.invalid/docs/runbook.md#"


def anchor(heading):
    """The anchor GitHub and most Markdown renderers give a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def check_rules(problems):
    with open(RUNBOOK, encoding="utf-8") as f:
        sections = {anchor(line[3:]) for line in f if line.startswith("## ")}
    with open(RULES, encoding="utf-8") as f:
        groups = yaml.safe_load(f)["groups"]
    linked = set()
    for rule in (r for g in groups for r in g["rules"] if "alert" in r):
        name, labels, notes = rule["alert"], rule.get("labels", {}), rule.get("annotations", {})
        if labels.get("severity") not in ("critical", "warning"):
            problems.append(f"{RULES}: {name}: severity must be critical or warning, not {labels.get('severity')!r}")
        for key in ("summary", "description", "runbook_url"):
            if not notes.get(key):
                problems.append(f"{RULES}: {name}: no {key} annotation")
        url = notes.get("runbook_url", "")
        section = url[len(RUNBOOK_URL):] if url.startswith(RUNBOOK_URL) else None
        if section not in sections:
            problems.append(f"{RULES}: {name}: runbook_url {url!r} is not {RUNBOOK_URL}<a section of {RUNBOOK}>")
        linked.add(section)
    for section in sorted(sections - linked):
        problems.append(f"{RUNBOOK}: section #{section} belongs to no alert")
    return len(linked)


def check_dashboard(problems, out):
    with open(DASHBOARD, encoding="utf-8") as f:
        dashboard = json.load(f)
    panels = list(dashboard_queries.panels(dashboard))
    ids = [p.get("id") for p in panels]
    if len(set(ids)) != len(ids):
        problems.append(f"{DASHBOARD}: panel ids repeat: {ids}")
    for panel in panels:
        if panel.get("type") == "row":
            continue
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{DASHBOARD}: panel {panel.get('title')!r} is not on the ${{datasource}} variable")
        if not [t for t in panel.get("targets", []) if t.get("expr")]:
            problems.append(f"{DASHBOARD}: panel {panel.get('title')!r} has no query")
    rules = []
    try:
        for i, (title, ref, expr) in enumerate(dashboard_queries.queries(dashboard)):
            rules.append({"record": f"dashboard:query_{i}", "expr": expr, "labels": {"panel": title, "ref": ref}})
    except ValueError as error:
        problems.append(f"{DASHBOARD}: {error}")
    with open(os.path.join(out, "dashboard-queries.rules.yml"), "w", encoding="utf-8") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, allow_unicode=True, sort_keys=False)
    return len(panels), len(rules)


def main():
    problems = []
    alerts = check_rules(problems)
    panels, queries = check_dashboard(problems, sys.argv[1])
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{alerts} alerts with runbook sections; {panels} panels, {queries} queries")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
