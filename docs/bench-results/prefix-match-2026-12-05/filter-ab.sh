#!/bin/bash
# filter_ab.py alternated before (OLD: a worktree of the commit before the one-pass prefix
# match, with its own latency build) and after (NEW, this checkout), latency modules compiled:
# the SLO profile, and the default config. Run under flock /tmp/bench.lock:  OLD=/tmp/ab-old bash filter-ab.sh
HERE=$(cd "$(dirname "$0")" && pwd)
NEW=${NEW:-$(cd "$(dirname "$0")/../../.." && pwd)}  # this checkout
OLD=${OLD:?a worktree of the commit before}
for rnd in ${ROUNDS:-1 2 3}; do
  for arm in old-slo new-slo old-default new-default; do
    tree=$OLD; case $arm in new-*) tree=$NEW;; esac
    cfg=docs/bench-results/overhead-2026-12-04-latency-slo-profile.yaml; case $arm in *-default) cfg=default;; esac
    gunzip -c "$NEW/docs/bench-results/overhead-2026-12-03-latency-state.json.gz" > /tmp/epp-overhead-latency-state.json
    echo "## $arm r$rnd, $(git -C "$tree" rev-parse --short HEAD)$(git -C "$tree" diff --quiet HEAD -- epp || echo '+changes'), $(date -u '+%Y-%m-%d %H:%M') UTC"
    (cd "$tree" && PYTHONPATH="$tree" EPP_LATENCY_NATIVE=1 "$NEW/.venv/bin/python" "$HERE/filter_ab.py" $cfg 2>&1 | grep ' us$')
  done
done
