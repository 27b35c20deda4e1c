"""Where the long prefills of an `epp bench latency` run went, from its raw JSON.

    python -m epp.bench.latency_placement docs/bench-results/latency-....json [-v]

Per router row: the long prefills sent to the slow pod, and the "misplaced" ones: sent to a
fast pod whose remaining long-prefill work at the request's arrival exceeded the least-loaded
fast pod's by more than 1 s. A pod's remaining long-prefill work is read from the observed
first bytes of the long prefills sent to it before (the last one's first byte - now), and
the arrivals and prompt sizes are rebuilt from the run's seed (the workload is a pure
function of it). docs/latency-routing.md reports these counts; -v lists every long prefill.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epp.bench.latency import LatencyBenchSettings, build_workload, prompt_tokens
from epp.bench.workloads import HETEROGENEOUS_SLOW_POD

MISPLACED_MARGIN_S = 1.0


@dataclass(slots=True)
class Placement:
    label: str
    load: float
    longs: int = 0
    on_slow_pod: int = 0
    misplaced: list[int] = field(default_factory=list)
    misplaced_without_slo: int = 0
    lines: list[str] = field(default_factory=list)


def placements(result: dict[str, Any]) -> list[Placement]:
    st = result["settings"]
    settings = LatencyBenchSettings(max_tokens=st["max_tokens"], seed=st["seed"], duration_s=st["duration_s"])
    slow = f"vllm-{HETEROGENEOUS_SLOW_POD}"
    out: list[Placement] = []
    for phase in result["phases"]:
        workload, _ = build_workload(settings, phase["load"], st["duration_s"], st["seed"], "placement")
        tokens = prompt_tokens(workload)
        arrival = [r.arrival_s for r in workload.requests]
        for row in phase["rows"]:
            rows = {p["i"]: p for p in row["per_request"]}
            fast = sorted({p["pod"] for p in rows.values() if p["pod"] and p["pod"] != slow})
            longs = sorted((i for i, p in rows.items() if p["kind"] == "long"), key=lambda i: arrival[i])
            placed = Placement(row["label"], phase["load"], longs=len(longs))
            last_first_byte: dict[str, float] = {}
            for i in longs:
                p, now = rows[i], arrival[i]
                remaining = {pod: max(0.0, last_first_byte.get(pod, 0.0) - now) for pod in fast}
                mark = ""
                if p["pod"] == slow:
                    placed.on_slow_pod += 1
                elif p["pod"] in remaining and remaining[p["pod"]] > min(remaining.values()) + MISPLACED_MARGIN_S:
                    placed.misplaced.append(i)
                    placed.misplaced_without_slo += p["slo_ttft_s"] is None
                    mark = " misplaced"
                if p["ok"]:
                    last_first_byte[p["pod"]] = max(last_first_byte.get(p["pod"], 0.0), now + p["ttft_s"])
                left = ", ".join(f"{pod} {v:.1f}" for pod, v in remaining.items())
                placed.lines.append(f"  #{i} at {now:.1f} s, {tokens[i]} tokens, SLO {p['slo_ttft_s']}, "
                                    f"-> {p['pod']}, TTFT {p['ttft_s']} s (remaining: {left}){mark}")
            out.append(placed)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("result", type=Path)
    parser.add_argument("-v", "--verbose", action="store_true", help="list every long prefill")
    args = parser.parse_args(argv)
    for placed in placements(json.loads(args.result.read_text())):
        print(f"{placed.load:.0%} {placed.label:24s} long prefills {placed.longs}: slow pod {placed.on_slow_pod}, "
              f"misplaced {len(placed.misplaced)} ({placed.misplaced_without_slo} without SLO)")
        if args.verbose:
            print("\n".join(placed.lines))


if __name__ == "__main__":
    main()
