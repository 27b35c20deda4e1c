"""How much CPU each part of a routing benchmark cell used: `python -m epp.bench.cpu_use RUN_DIR`.

Every cell of `python -m epp bench` writes `cpu-use.json` into its run directory
(epp.bench.routers.running_router): CPU seconds of every process of the cell while it ran.
This sums them per router and phase into % of one core (CPU seconds / wall seconds):
the simulated pods, and the router's own processes (Envoy, the EPP, vllm-router). On a
2-core machine a router that needs a large share of a core leaves that much less to the
pods, whose latency is wall-clock; docs/performance.md uses it for the no-sharing gap.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from epp.bench.routers import CPU_USE_FILE

_CELL = re.compile(r"^(?P<workload>.+)-(?P<rate>[0-9.]+)-(?P<router>[a-z0-9-]+?)-r(?P<run>\d+)(?:-try\d+)?$")


def is_pod(process: str) -> bool:
    """A simulated pod or its P/D sidecar (which runs next to the pod, not in the router);
    not vllm-router, which is a router."""
    return process.startswith("vllm-") and process != "vllm-router"


def collect(run_dir: Path) -> dict[tuple[str, str, str], list[tuple[float, float]]]:
    """(workload, rate, router) -> per run (pods % of a core, router % of a core)."""
    out: dict[tuple[str, str, str], list[tuple[float, float]]] = defaultdict(list)
    for path in sorted(run_dir.rglob(CPU_USE_FILE)):
        match = _CELL.match(path.parent.name)
        data = json.loads(path.read_text())
        wall = float(data["wall_s"])
        if match is None or wall <= 0:
            continue
        cpu: dict[str, float] = data["cpu_s"]
        pods = sum(v for k, v in cpu.items() if is_pod(k))
        router = sum(v for k, v in cpu.items() if not is_pod(k))
        out[(match["workload"], match["rate"], data["router"])].append((pods / wall * 100, router / wall * 100))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    rows = collect(args.run_dir)
    if not rows:
        print(f"no {CPU_USE_FILE} under {args.run_dir}", file=sys.stderr)
        return 1
    print("| workload @ rate | router | runs | pods CPU, % of a core (median) | router CPU, % of a core (median) |")
    print("|---|---|---|---|---|")
    for (workload, rate, router), runs in sorted(rows.items(), key=lambda kv: (kv[0][0], float(kv[0][1]), kv[0][2])):
        pods = statistics.median(p for p, _ in runs)
        own = statistics.median(r for _, r in runs)
        print(f"| {workload} @ {rate} | {router} | {len(runs)} | {pods:.0f} | {own:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
