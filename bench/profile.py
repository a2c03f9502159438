#!/usr/bin/env python3
"""Summarise a `perf record --call-graph dwarf` profile of els-bridge by pipeline stage.

    python3 bench/profile.py bench/results/latest/drain-worker0.perf.data [more.perf.data...]

For every sample the whole stack (inlined frames included) is matched against the stages
below; a sample counts once for each stage found on its stack (inclusive time), so the
shares do not add up to 100 %. Then the top self symbols (where the CPU actually was) and
the threads. Only the standard library; needs `perf` on PATH.
"""

import collections
import re
import subprocess
import sys

# (stage, regular expression on a frame). The first group is the session's main loop.
STAGES = [
    ("session loop (main thread: select, intake, dispatch)", None),
    ("  Lanes::next_deadline (scans every waiting key)", r"next_deadline"),
    ("  Lanes::add (ready().count() per delivery)", r"lanes::Lanes<T>::add|lanes::\{impl#\d+\}::add|\badd<lapin::message::Delivery>"),
    ("  Lanes::due / take", r"lanes::Lanes<T>::(due|take)|\b(due|take)<lapin::message::Delivery>"),
    ("  event::parse (JSON → validated record)", r"els_bridge::event::parse|event::from_object|input::parse_json_object"),
    ("pipeline (one batch)", r"worker::pipeline::Pipeline::run|pipeline::\{impl#\d+\}::run"),
    ("  ledger claim", r"ledger::Ledger::claim|ledger::\{impl#\d+\}::claim"),
    ("  ledger receipt", r"ledger::Ledger::receipt|ledger::\{impl#\d+\}::receipt|ReceiptRow"),
    ("  ledger release", r"ledger::Ledger::release|ledger::\{impl#\d+\}::release"),
    ("  upload (token, HTTP call, JSON)", r"els_bridge::upload::Uploader|upload::\{impl#\d+\}::upload"),
    ("    platform client (envelope, sign, reqwest)", r"platform::client::PlatformClient|client::\{impl#\d+\}::(call|upload)"),
    ("  settle (acks one delivery at a time)", r"worker::settle::Settler|settle::ack|settle::\{impl#\d+\}"),
    ("ledger stream reader (folds every entry of the fleet)", r"broker::log::read"),
    ("  Index::apply", r"ledger::index::Index"),
    ("lapin I/O loop (frames, socket)", r"lapin::io_loop|lapin::socket_state|amq_protocol::frame"),
    ("lapin delivery/ack handling", r"lapin::(acker|channel::Channel|consumer)"),
    ("hyper / reqwest", r"hyper|reqwest"),
    ("serde_json", r"serde_json"),
    ("tracing", r"tracing_subscriber|tracing_core"),
    ("memory allocation (malloc/free)", r"\b(_int_malloc|_int_free|malloc|cfree|free|realloc|malloc_consolidate|unlink_chunk)\b"),
    ("kernel", r"\[kernel\.kallsyms\]|entry_SYSCALL|do_syscall"),
]


def samples(path):
    """Yields (thread, [frames innermost first]) from `perf script`."""
    text = subprocess.run(
        ["perf", "script", "-F", "comm,tid,ip,sym,dso", "--inline", "-i", path],
        capture_output=True, text=True, errors="replace", check=True,
    ).stdout
    thread, frames = None, []
    for line in text.splitlines():
        if not line.strip():
            if thread is not None:
                yield thread, frames
            thread, frames = None, []
        elif not line.startswith((" ", "\t")):
            thread = line.split()[0]
            frames = []
        else:
            frames.append(line.strip())
    if thread is not None:
        yield thread, frames


def summarise(path):
    compiled = [(name, re.compile(rx) if rx else None) for name, rx in STAGES]
    total = 0
    stage_hits = collections.Counter()
    self_symbols = collections.Counter()
    threads = collections.Counter()
    for thread, frames in samples(path):
        total += 1
        threads[re.sub(r"[-\d]+$", "", thread)] += 1
        if frames:
            top = re.sub(r"^[0-9a-f]+\s+", "", frames[0])
            top = re.sub(r"\+0x[0-9a-f]+.*$", "", top)
            self_symbols[top[:110]] += 1
        stack = "\n".join(frames)
        for name, rx in compiled:
            # The session future is the one `block_on` runs: on the main thread.
            if (rx is None and thread == "els-bridge") or (rx is not None and rx.search(stack)):
                stage_hits[name] += 1
    print(f"# {path}: {total} samples")
    if not total:
        return
    print("\n## inclusive share by stage")
    for name, _ in STAGES:
        if stage_hits[name]:
            print(f"{100.0 * stage_hits[name] / total:6.1f} %  {name}")
    print("\n## top self symbols")
    for symbol, n in self_symbols.most_common(25):
        print(f"{100.0 * n / total:6.1f} %  {symbol}")
    print("\n## threads")
    for thread, n in threads.most_common():
        print(f"{100.0 * n / total:6.1f} %  {thread}")
    print()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for data in sys.argv[1:]:
        summarise(data)
