"""One-off (2026-12-01, docs/latency-routing.md "Running requests' TPOT"): cost of
latency-scorer score() on 4 pods with 3 TPOT-SLO requests in flight each, runningTpotWeight
1.0 vs 0.0 (trained runtime from the unit tests' helper). Run from the repository root:
PYTHONPATH=. .venv/bin/python docs/bench-results/latency-stall-cost-timing-2026-12-01.py"""
import time

from epp.latency.runtime import latency_runtime
from epp.scheduling.plugins.latency_scorer import LatencyScorer
from epp.scheduling.types import CycleState
from tests.unit.scheduling.plugins import test_latency_plugins as t
from tests.unit.scheduling.sched_fakes import context, endpoint

t.SPEED.update({"p2": 1.0, "p3": 1.5})
ctx = context()
pods = [endpoint("fast", port=8000), endpoint("slow", port=8001), endpoint("p2", port=8002), endpoint("p3", port=8003)]
rt = t.trained_runtime(ctx, pods, samples=40)
for ep in pods:
    t.running_chats(rt, ep, 3, tpot_ms=30)
req = t.slo_request(5000, prompt_tokens=20_000)
for w in (0.0, 1.0, 0.0, 1.0):
    sc = LatencyScorer(ctx=ctx, params=LatencyScorer.Params(running_tpot_weight=w))
    n = 3000
    t0 = time.perf_counter_ns()
    for _ in range(n):
        sc.score(CycleState(), req, pods)
    per_call_us = (time.perf_counter_ns() - t0) / n / 1000
    print(f"runningTpotWeight {w}: {per_call_us:.1f} us per score() (4 pods, incl. predictions)")
latency_runtime(ctx.services).predictor.stop()
