#!/usr/bin/env bash
# The runs of this directory, 2026-12-05 04:40-05:07 UTC (docs/latency-routing.md, "Deferral
# behind a long prefill"). The deferral runs and the baselines ran from a worktree at 88110d1;
# full-nodefer-s2-0440 ran at 5a6f094 (the first-token fix) in /work/main.
set -euo pipefail
cd "$(dirname "$0")/../../.."
HERE=docs/bench-results/deferral-2026-12-05
# Full runs (round robin, default, predicted latency) with deferral on in the latency row.
for seed in 2 1 3; do
  .venv/bin/python -m epp bench latency --loads 0.9 --duration 60 --warmup 40 --seed $seed \
    --latency-config $HERE/epp-latency-defer.yaml --out /tmp/defer
done
# The predicted-latency row alone with the shipped profile (deferral off), same window.
for seed in 1 3; do
  .venv/bin/python -m epp bench latency --loads 0.9 --duration 60 --warmup 40 --seed $seed \
    --routers epp-latency --out /tmp/defer/nodefer
done
.venv/bin/python $HERE/summary.py > $HERE/summary.txt
