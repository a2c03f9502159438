#!/usr/bin/env python3
"""The PromQL queries of a Grafana dashboard, with its variables given values that a plain
Prometheus understands, one JSON object a line:

    {"panel": "Records by outcome", "ref": "A", "expr": "sum by (outcome) (rate(...[1m]))"}

    python3 scripts/dashboard_queries.py [deploy/grafana/els-bridge.json]

Standard library only. scripts/check-deploy.sh parses every query with promtool, and
scripts/prometheus-live.sh runs every query against a live Prometheus.
"""
import json
import re
import sys

# Grafana's built-in interval variables, and the dashboard's own variables ("All" selected).
VALUES = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h", "institution": ".*"}
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def substitute(expr):
    """The query with every $variable replaced; ValueError names one without a value."""
    def value(match):
        name = match.group(1) or match.group(2)
        if name not in VALUES:
            raise ValueError(f"variable ${name} has no value for a plain Prometheus")
        return VALUES[name]
    return VARIABLE.sub(value, expr)


def panels(dashboard):
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard):
    """(panel title, refId, query with variables substituted) of every target."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if "expr" in target:
                yield panel.get("title", ""), target.get("refId", ""), substitute(target["expr"])


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "deploy/grafana/els-bridge.json"
    with open(path, encoding="utf-8") as f:
        dashboard = json.load(f)
    for title, ref, expr in queries(dashboard):
        print(json.dumps({"panel": title, "ref": ref, "expr": expr}, ensure_ascii=False))


if __name__ == "__main__":
    main()
