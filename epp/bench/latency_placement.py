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

That floor still lets every long prefill have a fast pod to itself, which a burst of them
does not allow. The scheduled bound takes the bursts into account: the lowest p90 any
placement of the long prefills could give, with each pod prefilling one after another
(vLLM fills its step budget first-come first-served, so a long prefill takes whole steps)
and no chat at all. It is a bound, not an estimate: it also lets a router hold requests
and choose their order, and leave the slowest 10% for after everything else.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epp.bench.latency import LatencyBenchSettings, build_workload, prompt_tokens
from epp.bench.stats import percentile
from epp.bench.workloads import HETEROGENEOUS_SLOW_POD, HETEROGENEOUS_SLOWDOWN
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
    ttft_p90_idle: float = math.nan  # each long prefill alone on an idle fast pod
    # The lowest p90 of any placement and order of the long prefills on the pool's pods, each
    # prefilling one after another at its idle speed, without chats (scheduled_percentile_bound).
    ttft_p90_scheduled: float = math.nan
    # The scheduled bound at the seconds per prompt token of the row's unqueued long prefills
    # (chats included) instead of the idle engine's, as ttft_p90_floor is to ttft_p90_idle.
    ttft_p90_scheduled_floor: float = math.nan


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


def engine_seconds(prompt_tokens: int, slowdown: float, chunk_tokens: int = SimPodConfig().max_num_batched_tokens,
                   model: LatencyModel | None = None) -> float:
    """The engine time a prompt's prefill takes on a simulated pod, in model seconds, counting
    its last chunk's step base only for its share of the step (two long prefills back to back
    share the step where one ends and the next begins): at most what it really takes."""
    lat = model or LatencyModel()
    ms = lat.prefill_per_token_ms * prompt_tokens + lat.step_base_ms * prompt_tokens / chunk_tokens
    return ms * slowdown * lat.slowdown / 1000.0


def scheduled_percentile_bound(arrivals: Sequence[float], services: Sequence[Sequence[float]],
                               q: float = 90.0, offset: float = 0.0) -> float:
    """A lower bound on the q-th percentile (linear, as epp.bench.stats.percentile) of the
    TTFTs of jobs arriving at `arrivals`, job j taking `services[j][m]` seconds on machine m
    (one job at a time per machine), its TTFT being its completion - its arrival + `offset`.

    For any schedule, the i-th smallest TTFT is at least least_on_time(i + 1): the smallest T
    for which i + 1 jobs can each finish within T of their arrival (the others put after
    everything, for free). With deadlines all T after the arrivals, a machine's jobs can be
    served in arrival order (an exchange argument), so a depth-first search over each job's
    machine, or leaving it out, decides a T; bisection finds the least one. It bounds the
    routers that send each job on at its arrival (a job they leave late still takes its
    machine's time) as well as those that could hold jobs back."""
    n = len(arrivals)
    if n == 0:
        return math.nan
    if any(len(row) != len(services[0]) for row in services):
        raise ValueError("every job needs a service time on every machine")
    order = sorted(range(n), key=lambda j: arrivals[j])
    rank = (n - 1) * q / 100.0
    low = math.floor(rank)
    frac = rank - low
    sorted_arrivals, sorted_services = [arrivals[j] for j in order], [services[j] for j in order]
    bound = least_on_time(sorted_arrivals, sorted_services, low + 1)
    if frac > 0.0:
        bound += frac * (least_on_time(sorted_arrivals, sorted_services, low + 2) - bound)
    return bound + offset


def least_on_time(arrivals: Sequence[float], services: Sequence[Sequence[float]], on_time: int,
                  tolerance: float = 1e-4) -> float:
    """The least T (within `tolerance`) for which `on_time` of the jobs (sorted by arrival) can
    each finish within T of its arrival: see scheduled_percentile_bound."""
    lo = 0.0
    hi = sum(max(row) for row in services) + (max(arrivals) - min(arrivals) if arrivals else 0.0) + 1.0
    while hi - lo > tolerance:
        mid = (lo + hi) / 2.0
        if _feasible(arrivals, services, on_time, mid):
            hi = mid
        else:
            lo = mid
    return hi


def _feasible(arrivals: Sequence[float], services: Sequence[Sequence[float]], on_time: int, limit: float) -> bool:
    n = len(arrivals)
    spare = n - on_time  # jobs that may be left out
    if spare < 0:
        return False
    machines = len(services[0]) if services else 0
    # Machines with the same service time for every job are interchangeable: one class each.
    columns = [tuple(row[m] for row in services) for m in range(machines)]
    kind = [columns.index(column) for column in columns]
    seen: set[tuple[int, int, tuple[tuple[int, float], ...]]] = set()

    def search(j: int, left_out: int, free: tuple[float, ...]) -> bool:
        if j == n:
            return True
        # Machines free before this arrival are all the same to the rest: as free as can be.
        r = arrivals[j]
        free = tuple(max(f, r) for f in free)
        key = (j, left_out, tuple(sorted((kind[m], round(f, 9)) for m, f in enumerate(free))))
        if key in seen:
            return False
        seen.add(key)
        tried: set[tuple[int, float]] = set()
        for m in range(machines):
            if (kind[m], free[m]) in tried:  # the same as a machine tried already
                continue
            tried.add((kind[m], free[m]))
            done = free[m] + services[j][m]
            if done - r <= limit and search(j + 1, left_out, (*free[:m], done, *free[m + 1:])):
                return True
        # Left out: served after everything else.
        return left_out < spare and search(j + 1, left_out + 1, free)

    return search(0, 0, tuple(-math.inf for _ in range(machines)))


def placements(result: dict[str, Any]) -> list[Placement]:
    st = result["settings"]
    settings = LatencyBenchSettings(max_tokens=st["max_tokens"], seed=st["seed"], duration_s=st["duration_s"])
    slow = f"vllm-{HETEROGENEOUS_SLOW_POD}"
    out: list[Placement] = []
    speeds = [st["slowdown"] * (HETEROGENEOUS_SLOWDOWN if m == HETEROGENEOUS_SLOW_POD else 1.0)
              for m in range(st.get("pods", 4))]
    overhead = LatencyModel().frontend_overhead_ms / 1000.0
    for phase in result["phases"]:
        bounds: dict[tuple[int, ...], float] = {}
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
            # The same long prefills in every row of a phase: their bounds once.
            key = tuple(longs)
            if key not in bounds:
                jobs = [arrival[i] for i in longs], [[engine_seconds(tokens[i], s) for s in speeds] for i in longs]
                bounds[key] = scheduled_percentile_bound(*jobs, 90, offset=overhead)
            placed.ttft_p90_scheduled = bounds[key]
            if unqueued_tokens > 0.0:
                rate = placed.unqueued_s_per_token = unqueued_s / unqueued_tokens
                placed.ttft_p90_floor = percentile([rate * tokens[i] for i in longs], 90)
                at_rate = [[rate * tokens[i] * s / st["slowdown"] for s in speeds] for i in longs]
                placed.ttft_p90_scheduled_floor = scheduled_percentile_bound([arrival[i] for i in longs], at_rate, 90)
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
              f"alone on an idle pod {placed.ttft_p90_idle:.2f} s, "
              f"scheduled bound {placed.ttft_p90_scheduled:.2f} s "
              f"({placed.ttft_p90_scheduled_floor:.2f} s at the row's own speed)")
        if args.verbose:
            print("\n".join(placed.lines))


if __name__ == "__main__":
    main()
