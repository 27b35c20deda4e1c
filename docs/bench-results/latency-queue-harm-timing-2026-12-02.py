"""One-off (2026-12-02, docs/latency-routing.md "Queue harm"): cost of latency-scorer score()
on 4 pods with recent traffic (pool dispatch rate > 0), queueHarmWeight 0.5 vs 0 (trained runtime from
the unit tests' helper), interleaved, 5 rounds of 3000 calls per setting; prints each round
and the medians. Run from the repository root:
PYTHONPATH=. .venv/bin/python docs/bench-results/latency-queue-harm-timing-2026-12-02.py"""
import statistics
import time

from epp.latency.runtime import latency_runtime
from epp.scheduling.plugins.latency_scorer import LatencyScorer
from epp.scheduling.types import CycleState
from tests.unit.scheduling.plugins import test_latency_plugins as t
from tests.unit.scheduling.sched_fakes import context, endpoint, request

t.SPEED.update({"p2": 1.0, "p3": 1.5})
ctx = context()
pods = [endpoint("fast", port=8000), endpoint("slow", port=8001), endpoint("p2", port=8002), endpoint("p3", port=8003)]
rt = t.trained_runtime(ctx, pods, samples=40)
for i in range(40):  # recent traffic: the pool's dispatch rate > 0
    for ep in pods:
        chat = request("hi there", request_id=f"c{i}-{ep.name}", max_tokens=8)
        rt.on_dispatch(CycleState(), chat, ep)
        rt.on_first_byte(chat, 200)
        rt.on_complete(chat, {"status": 200, "completion_tokens": 8})
assert rt.dispatch_rate() > 0
req = t.slo_request(5000, prompt_tokens=20_000)
results: dict[float, list[float]] = {0.0: [], 0.5: []}
for _ in range(5):
    for w in (0.0, 0.5):
        sc = LatencyScorer(ctx=ctx, params=LatencyScorer.Params(queue_harm_weight=w))
        n = 3000
        t0 = time.perf_counter_ns()
        for _ in range(n):
            sc.score(CycleState(), req, pods)
        results[w].append((time.perf_counter_ns() - t0) / n / 1000)
for w, runs in results.items():
    print(f"queueHarmWeight {w}: {' '.join(f'{r:.1f}' for r in runs)} us per score() "
          f"(4 pods, incl. predictions); median {statistics.median(runs):.1f}")
latency_runtime(ctx.services).predictor.stop()
