"""One-off (2026-12-02, docs/latency-routing.md "Scores between the fast pods"): cost of
latency-scorer score() on 4 pods with recent traffic, the shipped profile's parameters
(ttftWeight/tpotWeight 0.5, queueHarmWeight 0.5), for a 20k-token prompt without SLO (ranked
on its own seconds: one LatencyPredictor.decode_tpot per candidate) against the same prompt
with a TTFT target (no decode_tpot), interleaved, 5 rounds of 3000 calls each; prints each
round and the medians. Run from the repository root:
PYTHONPATH=. .venv/bin/python docs/bench-results/latency-decode-tpot-timing-2026-12-02.py"""
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
rt.score_without_slo = True
for i in range(40):  # recent traffic: the pool's dispatch rate > 0
    for ep in pods:
        chat = request("hi there", request_id=f"c{i}-{ep.name}", max_tokens=8)
        rt.on_dispatch(CycleState(), chat, ep)
        rt.on_first_byte(chat, 200)
        rt.on_complete(chat, {"status": 200, "completion_tokens": 8})
assert rt.dispatch_rate() > 0
cases = {"without SLO": t.slo_request(None, prompt_tokens=20_000),
         "TTFT target": t.slo_request(5000, prompt_tokens=20_000)}
scorer = LatencyScorer(ctx=ctx, params=LatencyScorer.Params(ttft_weight=0.5, tpot_weight=0.5, queue_harm_weight=0.5))
results: dict[str, list[float]] = {name: [] for name in cases}
for _ in range(5):
    for name, req in cases.items():
        n = 3000
        t0 = time.perf_counter_ns()
        for _ in range(n):
            scorer.score(CycleState(), req, pods)
        results[name].append((time.perf_counter_ns() - t0) / n / 1000)
for name, runs in results.items():
    print(f"{name}: {' '.join(f'{r:.1f}' for r in runs)} us per score() "
          f"(4 pods, incl. predictions); median {statistics.median(runs):.1f}")
latency_runtime(ctx.services).predictor.stop()
