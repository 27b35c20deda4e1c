#!/bin/bash
# Alternated overhead runs, 64 pods: the latency modules pure Python (EPP_LATENCY_NATIVE=0),
# compiled (the build make install makes, EPP_LATENCY_NATIVE=1), and the default config.
# Run from the checkout, under flock /tmp/bench.lock. As run here:
#   overhead.sh                  TTFT and TPOT targets on every request (the SLO profile),
#                                three rounds of py, compiled, default: overhead-2026*.log
#   PROFILE=docs/bench-results/overhead-2026-12-03-latency-profile.yaml TAG=noslo- ROUNDS="1 2" ARMS="py compiled" overhead.sh
#                                requests without SLO (the latency profile without sloDefaults;
#                                scoreRequestsWithoutSLO routes them by predicted latency): overhead-noslo-*.log
OUT=${OUT:-/tmp/mypyc-ship}
PROFILE=${PROFILE:-docs/bench-results/overhead-2026-12-04-latency-slo-profile.yaml}
ROUNDS=${ROUNDS:-1 2 3}
ARMS=${ARMS:-py compiled default}
cd /work/main
for rnd in $ROUNDS; do
  for arm in $ARMS; do
    ts=$(date -u +%Y-%m-%dT%H%M)
    f=$OUT/overhead-$TAG$ts-$arm-r$rnd.log
    case $arm in
      py) mode=0; args="--config $PROFILE";;
      compiled) mode=1; args="--config $PROFILE";;
      default) mode=auto; args="";;
    esac
    gunzip -c docs/bench-results/overhead-2026-12-03-latency-state.json.gz > /tmp/epp-overhead-latency-state.json
    echo "# $arm, commit $(git rev-parse --short HEAD), EPP_LATENCY_NATIVE=$mode, $(date -u '+%Y-%m-%d %H:%M') UTC, round $rnd: python -m epp bench overhead $args --no-docs --pools 64" > $f
    EPP_LATENCY_NATIVE=$mode .venv/bin/python -m epp bench overhead $args --no-docs --pools 64 >> $f 2>&1
    echo "$(date -u +%H:%M:%S) $arm r$rnd rc=$? $(grep 'pods=64 (median' $f | grep -o '[0-9]* decisions/s per core')"
  done
done
