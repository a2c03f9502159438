#!/usr/bin/env python3
"""Keeps the Chinese operator's guide true to README (issue 20 item 4).

    python3 scripts/check_zh_docs.py [README.md] [docs/zh-CN/README.md]

Compares, in both directions, what the two documents name:

- configuration keys: the first column of README's configuration tables (the `[amqp]` ...
  `[ledger]` keys and the `[[institutions]]` keys) and every `section.key` written in
  backticks anywhere in the text, against the same in the guide (its tables whose first
  column is headed 配置项);
- subcommands: README's `### \\`els-bridge CMD ...\\`` headings under "## Commands" (a heading
  `dlq stats` / `dlq peek` / `dlq replay` gives all three) against every `els-bridge CMD`
  and `dlq SUB` the guide writes; and every `els-bridge CMD` of the guide must be one of
  README's;
- metrics: the first column of README's metric table (Telemetry) against the guide's
  (headed 指标), and every `els_*` name the guide writes must appear in README.

Prints what is missing on which side and exits 1, or prints one line and exits 0.
Standard library only: scripts/check-deploy.sh runs it with the system's python3.
"""

import re
import sys

SECTIONS = ("amqp", "platform", "batch", "retry", "http", "worker", "ledger")
# `section.key` alone in backticks, not part of a longer dotted name (`config.amqp.prefetch` is
# a Helm value, not a key of the file).
DOTTED_KEY = re.compile(r"`((?:%s)\.[a-z][a-z0-9_]*)`" % "|".join(SECTIONS))
BACKTICKED = re.compile(r"`([^`]+)`")
METRIC = re.compile(r"(?<![\w.])(els_[a-z][a-z0-9_]*)")


def tables(text):
    """Each markdown table as (header cells, [first cell of each row])."""
    found, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s|:-]+\|$", lines[i + 1].strip()):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(lines[i].strip().strip("|").split("|")[0].strip())
                i += 1
            found.append((header, rows))
        else:
            i += 1
    return found


def first_column_names(text, header_first, header_len=None):
    names = set()
    for header, rows in tables(text):
        if header[0] == header_first and (header_len is None or len(header) == header_len):
            for cell in rows:
                names.update(BACKTICKED.findall(cell))
    return names


def section(text, title):
    """The text of the `## title` section, up to the next `## ` heading."""
    m = re.search(r"^## %s\s*$(.*?)(?=^## |\Z)" % re.escape(title), text, re.M | re.S)
    if not m:
        raise SystemExit(f"check_zh_docs.py: README has no '## {title}' section")
    return m.group(1)


def readme_facts(text):
    config = section(text, "Configuration")
    keys = first_column_names(config, "key") | set(DOTTED_KEY.findall(text))
    commands = set()
    for heading in re.findall(r"^### (.*)$", section(text, "Commands"), re.M):
        for part in heading.split(" / "):
            m = re.match(r"`(?:els-bridge )?([a-z]+(?: (?:stats|peek|replay))?)", part.strip())
            if m:
                commands.add(m.group(1))
    metrics = set()
    for header, rows in tables(section(text, "Telemetry")):
        if header[0] == "metric":
            for cell in rows:
                metrics.update(BACKTICKED.findall(cell))
    return keys, commands, metrics


def zh_facts(text):
    keys = first_column_names(text, "配置项") | set(DOTTED_KEY.findall(text))
    commands = set(re.findall(r"els-bridge ([a-z]+)\b", text))
    commands |= {"dlq " + sub for sub in re.findall(r"\bdlq (stats|peek|replay)\b", text)}
    metrics = first_column_names(text, "指标")
    return keys, commands, metrics, set(METRIC.findall(text))


def main(argv):
    readme_path = argv[1] if len(argv) > 1 else "README.md"
    zh_path = argv[2] if len(argv) > 2 else "docs/zh-CN/README.md"
    readme = open(readme_path, encoding="utf-8").read()
    zh = open(zh_path, encoding="utf-8").read()
    r_keys, r_commands, r_metrics = readme_facts(readme)
    z_keys, z_commands, z_metrics, z_metric_mentions = zh_facts(zh)
    if not (r_keys and r_commands and r_metrics):
        raise SystemExit(
            f"check_zh_docs.py: found {len(r_keys)} keys, {len(r_commands)} commands, "
            f"{len(r_metrics)} metrics in {readme_path}: did its tables or headings change?"
        )
    problems = []

    def compare(what, readme_side, zh_side):
        for name in sorted(readme_side - zh_side):
            problems.append(f"{what} `{name}` is in {readme_path} but not in {zh_path}")
        for name in sorted(zh_side - readme_side):
            problems.append(f"{what} `{name}` is in {zh_path} but not in {readme_path}")

    compare("configuration key", r_keys, z_keys)
    # The guide names README's subcommands under their own commands: `dlq` alone stands for
    # the group, whose three subcommands README names in one heading.
    compare("subcommand", r_commands | {"dlq"}, z_commands)
    compare("metric", r_metrics, z_metrics)
    for name in sorted(z_metric_mentions - r_metrics - set(METRIC.findall(readme))):
        problems.append(f"metric `{name}` is named in {zh_path} but nowhere in {readme_path}")
    if problems:
        print(f"check_zh_docs.py: {zh_path} and {readme_path} differ:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(
        f"{zh_path} names the {len(r_keys)} configuration keys, {len(r_commands)} subcommands "
        f"and {len(r_metrics)} metrics of {readme_path}, and no other"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
