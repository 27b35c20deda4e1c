#!/bin/bash
# Alternated overhead runs at 8ec4cde's code: pure Python, the four latency modules compiled with mypyc (scratch), and the default config.
OUT=/tmp/attr/overhead
mkdir -p $OUT
for rnd in 1 2 3; do
  for arm in py mypyc default; do
    ts=$(date -u +%H%M)
    f=$OUT/overhead-2026-12-04T$ts-$arm-r$rnd.log
    if [ $arm = mypyc ]; then d=/tmp/wt-mypyc; else d=/work/main; fi
    if [ $arm = default ]; then args="--no-docs"; else args="--config /work/main/docs/bench-results/overhead-2026-12-04-latency-slo-profile.yaml --no-docs"; fi
    gunzip -c /work/main/docs/bench-results/overhead-2026-12-03-latency-state.json.gz > /tmp/epp-overhead-latency-state.json
    echo "# $arm, tree $(git -C $d rev-parse --short HEAD)$( [ $arm = mypyc ] && echo ' + mypyc of epp/latency/{runtime,predictor,steps,slo}.py (two renames: object->Any on two CyclePredictions fields, LatencyPredictor._thread->_trainer_thread)'), 2026-12-04 $(date -u +%H:%M) UTC, round $rnd: python -m epp bench overhead $args" > $f
    (cd $d && flock /tmp/bench.lock .venv/bin/python -m epp bench overhead $args >> $f 2>&1)
    echo "$(date -u +%H:%M:%S) $arm r$rnd rc=$? $(grep -i 'decisions/s' $f | head -3 | tr '\n' ' ')"
  done
done
