#!/bin/bash
# Alternated overhead runs at 64 pods, before (a worktree of the session's base, ac149db, OLD)
# and after (this checkout, NEW) the first-token and deferral changes, with the latency modules compiled:
# the SLO profile (TTFT and TPOT targets on every request) and the default config.
# Run under flock /tmp/bench.lock:  OLD=/tmp/ab-old bash overhead-ab.sh
# Each invocation's runs 2 and 3 come after its long-prompt loads (docs/benchmarks.md).
OUT=${OUT:-$(cd "$(dirname "$0")" && pwd)}
NEW=${NEW:-$(cd "$(dirname "$0")/../../.." && pwd)}  # this checkout
OLD=${OLD:?a worktree of the commit before, with its own build (python -m epp.latency.build_native build)}
PROFILE=docs/bench-results/overhead-2026-12-04-latency-slo-profile.yaml
ROUNDS=${ROUNDS:-1 2 3}
ARMS=${ARMS:-old-slo new-slo old-default new-default}
for rnd in $ROUNDS; do
  for arm in $ARMS; do
    case $arm in old-*) tree=$OLD;; *) tree=$NEW;; esac
    case $arm in *-slo) args="--config $PROFILE";; *) args="";; esac
    ts=$(date -u +%Y-%m-%dT%H%M)
    f=$OUT/overhead-$ts-$arm-r$rnd.log
    gunzip -c "$NEW/docs/bench-results/overhead-2026-12-03-latency-state.json.gz" > /tmp/epp-overhead-latency-state.json
    echo "# $arm, tree $tree at $(git -C "$tree" rev-parse --short HEAD)$(git -C "$tree" diff --quiet HEAD -- epp || echo '+changes'), EPP_LATENCY_NATIVE=1, $(date -u '+%Y-%m-%d %H:%M') UTC, round $rnd: python -m epp bench overhead $args --no-docs --pools 64" > "$f"
    (cd "$tree" && EPP_LATENCY_NATIVE=1 "$NEW/.venv/bin/python" -m epp bench overhead $args --no-docs --pools 64) >> "$f" 2>&1
    echo "$(date -u +%H:%M:%S) $arm r$rnd rc=$? $(grep -o 'pods=64 run [0-9]/3: .*decisions/s per core' "$f" | grep -o '[0-9]* decisions/s per core' | tr '\n' ' ')"
  done
done
