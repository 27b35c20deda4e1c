"""`epp chaos` (what `make chaos` calls): every fault under streaming load, one table."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any

from epp.chaos.runner import SCENARIOS, ChaosError, Row, Timing, environment_note, run_all, table

BEGIN, END = "<!-- chaos-table:begin -->", "<!-- chaos-table:end -->"


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "chaos", help="run each fault under streaming load through the real Envoy and report",
        description="Faults under streaming load through the real Envoy (loopback only, bounded): "
                    "pod SIGKILL/hang/500s/garbage metrics, EPP SIGKILL (FailClose, FailOpen), EPP "
                    "replica loss, Envoy restart, garbage KV events, Redis down.")
    p.add_argument("--only", action="append", default=[], metavar="TEXT",
                   help="run only the faults whose name contains TEXT (repeatable)")
    p.add_argument("--quick", action="store_true", help="short phases (the CI version)")
    p.add_argument("--write", type=Path, default=None, metavar="FILE",
                   help=f"replace the table between {BEGIN} and {END} in FILE (docs/reliability.md)")
    p.add_argument("--work-dir", type=Path, default=None, help="keep each scenario's logs here")
    p.set_defaults(func=run)


def quick_timing() -> Timing:
    return Timing(warmup=0.6, hold=0.8, after=1.0, concurrency=4, max_tokens=20)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    scenarios = [s for s in SCENARIOS if not args.only or any(t.lower() in s.name.lower() for t in args.only)]
    if not scenarios:
        print(f"error: no fault matches {args.only}; faults: {[s.name for s in SCENARIOS]}", file=sys.stderr)
        return 2
    timing = quick_timing() if args.quick else Timing()

    def progress(row: Row) -> None:
        print(f"{row.fault}: sent {row.sent}, failed not-started {row.failed_not_started}, "
              f"cut in-flight {row.cut_in_flight} ({row.cut_before_first_token} before the first token), "
              f"recovery {row.recovery_s:.2f} s", flush=True)
        for failure in row.failures:
            print(f"    {failure}", flush=True)

    try:
        rows = run_all(scenarios, timing, args.work_dir, progress)
    except ChaosError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    text = table(rows)
    print("\n" + text)
    if args.write is not None:
        write_table(args.write, text, timing)
        print(f"wrote {args.write}")
    return 0


def write_table(path: Path, text: str, timing: Timing) -> None:
    doc = path.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{path}: no {BEGIN} ... {END} markers to put the table between")
    block = (f"{BEGIN}\n_Measured {environment_note()}; load: {timing.concurrency} streaming clients, "
             f"{timing.max_tokens} tokens each, sim time scale {timing.time_scale}; phases {timing.warmup} s "
             f"warm-up, {timing.hold} s fault, {timing.after} s after. Reproduce: `make chaos`._\n\n"
             f"{text}\n{END}")
    path.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, doc, flags=re.S))
