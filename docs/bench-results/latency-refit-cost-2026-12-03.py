"""One-off (2026-12-03, docs/latency-routing.md "Choosing a pod's model"): median wall time of one
predictor refit, 4 pods x 512 observations of each target plus the pooled models, 60 refits.
Run from the repository root at a commit before fc66e79 and at fc66e79 (the model choice)
side by side: PYTHONPATH=. .venv/bin/python docs/bench-results/latency-refit-cost-2026-12-03.py"""
import random
import statistics
import time

from epp.latency.predictor import N_FEATURES, LatencyPredictor, PredictorConfig

rng = random.Random(1)
p = LatencyPredictor(PredictorConfig(window=512))
for _ in range(512):
    for pod in range(4):
        x = [1.0] + [rng.random() * 10 for _ in range(N_FEATURES - 1)]
        p.observe("ttft", f"p{pod}", x, (0.05 + 0.1 * x[1] + 0.02 * x[4]) * (1 + pod) * (1 + rng.uniform(-0.2, 0.2)))
        p.observe("tpot", f"p{pod}", x, (0.01 + 0.001 * x[4]) * (1 + rng.uniform(-0.2, 0.2)))
times = []
for _ in range(60):
    p._series["ttft"].unfitted = 1  # something new to fit
    t0 = time.perf_counter()
    p.refit()
    times.append(time.perf_counter() - t0)
print(f"refit median {statistics.median(times) * 1000:.2f} ms (min {min(times) * 1000:.2f}, "
      f"max {max(times) * 1000:.2f}) over {len(times)}")
