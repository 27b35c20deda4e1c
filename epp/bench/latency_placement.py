"""Where the long prefills of an `epp bench latency` run went, from its raw JSON.

    python -m epp.bench.latency_placement docs/bench-results/latency-....json [-v]

Per router row: the long prefills sent to the slow pod, and the "misplaced" ones: sent to a
fast pod whose remaining long-prefill work at the request's arrival exceeded the least-loaded
fast pod's by more than 1 s. A pod's remaining long-prefill work is read from the observed
first bytes of the long prefills sent to it before (the last one's first byte - now), and
the arrivals and prompt sizes are rebuilt from the run's seed (the workload is a pure
function of it). docs/latency-routing.md reports these counts; -v lists every long prefill.

It also estimates each row's floor of the long prefills' TTFT p90: the p90 the row would
have had if every long prefill had found no other long prefill ahead of it on a fast pod.
The seconds per prompt token come from the row's own long prefills that did find their fast
pod so (their TTFTs over their prompt tokens, both summed: the pod still ran its chats'
steps), and the floor is the p90 of that rate x each long prefill's prompt tokens. No
router can do much better than it on that pool, so it says how far a target on that p90 is
from what routing can reach.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epp.bench.latency import LatencyBenchSettings, build_workload, prompt_tokens
from epp.bench.stats import percentile
from epp.bench.workloads import HETEROGENEOUS_SLOW_POD
from epp.sim.config import LatencyModel, SimPodConfig

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
    ttft_p90: float = math.nan  # the row's long-prefill TTFT p90, as the bench reported it
    # Long prefills that found no earlier long prefill unanswered on their fast pod, and the
    # seconds per prompt token they took; the p90 floor they give (see the module docstring).
    unqueued: int = 0
    unqueued_s_per_token: float = math.nan
    ttft_p90_floor: float = math.nan
    ttft_p90_idle: float = math.nan  # the hard floor: each long prefill alone on an idle fast pod


def idle_ttft_s(prompt_tokens: int, slowdown: float, chunk_tokens: int = SimPodConfig().max_num_batched_tokens,
                model: LatencyModel | None = None) -> float:
    """A prompt's TTFT alone on an idle simulated pod, in model seconds: the frontend overhead,
    then one engine step per chunk of `chunk_tokens` (the pod's max_num_batched_tokens), the
    last one producing the first token."""
    lat = model or LatencyModel()
    steps, tail = divmod(prompt_tokens, chunk_tokens)
    chunks = [chunk_tokens] * steps + ([tail] if tail else [])
    step_ms = sum(lat.step_base_ms + lat.prefill_per_token_ms * c for c in chunks)
    return (lat.frontend_overhead_ms + step_ms * slowdown * lat.slowdown) / 1000.0


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
            placed = Placement(row["label"], phase["load"], longs=len(longs),
                               ttft_p90=row.get("ttft_p90_long", math.nan))
            last_first_byte: dict[str, float] = {}
            unqueued_tokens = unqueued_s = 0.0
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
                if p["ok"] and p["pod"] in remaining and remaining[p["pod"]] == 0.0:
                    placed.unqueued += 1
                    unqueued_tokens += tokens[i]
                    unqueued_s += p["ttft_s"]
                if p["ok"]:
                    last_first_byte[p["pod"]] = max(last_first_byte.get(p["pod"], 0.0), now + p["ttft_s"])
                left = ", ".join(f"{pod} {v:.1f}" for pod, v in remaining.items())
                placed.lines.append(f"  #{i} at {now:.1f} s, {tokens[i]} tokens, SLO {p['slo_ttft_s']}, "
                                    f"-> {p['pod']}, TTFT {p['ttft_s']} s (remaining: {left}){mark}")
            placed.ttft_p90_idle = percentile([idle_ttft_s(tokens[i], st["slowdown"]) for i in longs], 90)
            if unqueued_tokens > 0.0:
                placed.unqueued_s_per_token = unqueued_s / unqueued_tokens
                placed.ttft_p90_floor = percentile([placed.unqueued_s_per_token * tokens[i] for i in longs], 90)
            out.append(placed)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("result", type=Path)
    parser.add_argument("-v", "--verbose", action="store_true", help="list every long prefill")
    args = parser.parse_args(argv)
    for placed in placements(json.loads(args.result.read_text())):
        print(f"{placed.load:.0%} {placed.label:24s} long prefills {placed.longs}: slow pod {placed.on_slow_pod}, "
              f"misplaced {len(placed.misplaced)} ({placed.misplaced_without_slo} without SLO); "
              f"TTFT p90 {placed.ttft_p90:.2f} s, floor {placed.ttft_p90_floor:.2f} s "
              f"({placed.unqueued} without a long prefill ahead: "
              f"{placed.unqueued_s_per_token * 1e3:.3f} ms per prompt token), "
              f"alone on an idle pod {placed.ttft_p90_idle:.2f} s")
        if args.verbose:
            print("\n".join(placed.lines))


if __name__ == "__main__":
    main()
