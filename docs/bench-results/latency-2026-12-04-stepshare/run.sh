#!/bin/bash
# Alternated A/B of the predicted-latency row: base (f10f0af) vs step (e0f958d).
OUT=/tmp/ab/results
mkdir -p $OUT
for rnd in 1 2 3; do
  for seed in 1 2 3; do
    if [ $(( (rnd + seed) % 2 )) -eq 0 ]; then order="base step"; else order="step base"; fi
    for arm in $order; do
      d=$OUT/$arm-s$seed-r$rnd
      [ -d $d ] && continue
      echo "$(date -u +%H:%M:%S) start $arm s$seed r$rnd"
      (cd /tmp/wt-$arm && flock /tmp/bench.lock .venv/bin/python -m epp bench latency --loads 0.9 --duration 60 --warmup 40 --seed $seed --routers epp-latency --out $d.tmp > $d.log 2>&1 && mv $d.tmp $d)
      echo "$(date -u +%H:%M:%S) done $arm s$seed r$rnd rc=$?"
    done
  done
done
