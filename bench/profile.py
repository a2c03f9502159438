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
    ("  Lanes::next_deadline (scans every waiting key, every loop turn)", r"next_deadline"),
    ("  Lanes::add (ready().count() per delivery)", r"lanes::Lanes(<[^>]*>)?::add\b|lanes::\{impl#\d+\}::add\b"),
    ("  Lanes::due / take", r"lanes::Lanes(<[^>]*>)?::(due|take)\b|lanes::\{impl#\d+\}::(due|take)\b"),
    ("  Session::intake (validation at the edge)", r"Session::intake|session::\{impl#\d+\}::intake"),
    ("    event::parse (JSON → validated record)", r"els_bridge::event::parse"),
    ("batch tasks (Session::dispatch → pipeline)", r"Session::dispatch::\{\{closure\}\}|worker::pipeline::"),
    ("  upload (rows → JSON, envelope, signature, HTTP)", r"els_bridge::upload::(?!(Row|Settled|claimed::Claimed)\b)|upload::\{impl#\d+\}::attempt"),
    ("  ledger claim / receipt / release (stream appends)", r"ledger::\{impl#\d+\}::(claim|receipt|release)|ledger::Ledger::(claim|receipt|release)|ReceiptRow|publish_and_wait|broker::log::StreamLog.*append"),
    # Not `worker::settle::Settlement`: the type appears in the generic arguments of every
    # batch task's frames.
    ("  settle (one ack per delivery)", r"worker::settle::(?!Settlement\b)|settle::ack"),
    ("ledger stream reader (folds every entry of the fleet)", r"broker::log::read"),
    ("  Index::apply", r"ledger::index::Index"),
    ("lapin I/O loop thread (frames, socket)", r"lapin::io_loop"),
    # Acker's own code, not the type named in the generic arguments of batch tasks' frames.
    ("lapin acks (internal RPC per ack)", r"lapin::internal_rpc|lapin::acker::(Acker(::|\s+as\s)|\{impl)"),
    ("hyper / reqwest", r"hyper|reqwest"),
    ("telemetry (metrics, trace context)", r"telemetry::metrics|BatchTrace::of|prometheus::|opentelemetry_sdk::metrics"),
    ("tracing (logs)", r"tracing_subscriber|tracing_core"),
    ("serde_json (anywhere)", r"serde_json"),
    ("SipHash (HashMap/HashSet of keys)", r"sip::Hasher|hash_one"),
    ("memory allocation (malloc/free)", r"\b(_int_malloc|_int_free|malloc|cfree|free|realloc|malloc_consolidate|unlink_chunk|__GI___libc_free)\b"),
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
