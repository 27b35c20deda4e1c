#!/bin/bash
# Alternated overhead runs, 64 pods, TTFT and TPOT targets on every request (the SLO profile):
# the latency modules pure Python (EPP_LATENCY_NATIVE=0), compiled (the build make install makes,
# EPP_LATENCY_NATIVE=1), and the default config. Run from the checkout, under flock /tmp/bench.lock.
OUT=${OUT:-/tmp/mypyc-ship}
cd /work/main
for rnd in 1 2 3; do
  for arm in py compiled default; do
    ts=$(date -u +%Y-%m-%dT%H%M)
    f=$OUT/overhead-$ts-$arm-r$rnd.log
    case $arm in
      py) mode=0; args="--config docs/bench-results/overhead-2026-12-04-latency-slo-profile.yaml";;
      compiled) mode=1; args="--config docs/bench-results/overhead-2026-12-04-latency-slo-profile.yaml";;
      default) mode=auto; args="";;
    esac
    gunzip -c docs/bench-results/overhead-2026-12-03-latency-state.json.gz > /tmp/epp-overhead-latency-state.json
    echo "# $arm, commit $(git rev-parse --short HEAD), EPP_LATENCY_NATIVE=$mode, $(date -u '+%Y-%m-%d %H:%M') UTC, round $rnd: python -m epp bench overhead $args --no-docs --pools 64" > $f
    EPP_LATENCY_NATIVE=$mode .venv/bin/python -m epp bench overhead $args --no-docs --pools 64 >> $f 2>&1
    echo "$(date -u +%H:%M:%S) $arm r$rnd rc=$? $(grep 'pods=64 (median' $f | grep -o '[0-9]* decisions/s per core')"
  done
done
