"""Deferral behind a long prefill (docs/latency-routing.md, "Deferral behind a long prefill"):
every run in this directory, its rows' SLO attainment, long-prefill TTFT p90 and the seconds
per prompt token of the long prefills that found no other long prefill ahead on their pod
(epp.bench.latency_placement). Run from the repository root:

    python docs/bench-results/deferral-2026-12-05/summary.py > docs/bench-results/deferral-2026-12-05/summary.txt
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from epp.bench.latency_placement import placements

HERE = Path(__file__).parent
SHORT = {"Envoy round_robin": "rr", "EPP default config": "default", "EPP predicted latency": "latency"}


def main() -> None:
    print(f"{'run':<28} {'commit':<8} {'defer':<6} {'row':<8} {'attain':>7} {'long p90':>9} "
          f"{'ms/token':>9} {'own-speed bound':>16}")
    by: dict[tuple[str, bool], list[tuple[int, float, float]]] = {}
    for path in sorted(HERE.glob("*/latency-*.json")):
        result = json.loads(path.read_text())
        defer = "deferBehindPrefillTokens" in (result.get("latency_config_text") or "")
        seed = result["settings"]["seed"]
        placed = {p.label: p for p in placements(result)}
        for row in result["phases"][0]["rows"]:
            label = SHORT.get(row["label"], row["label"])
            p = placed.get(row["label"])
            rate = p.unqueued_s_per_token * 1e3 if p else float("nan")
            bound = p.ttft_p90_scheduled_floor if p else float("nan")
            print(f"{path.parent.name:<28} {result['commit'][:7]:<8} {'yes' if defer and label == 'latency' else '':<6} "
                  f"{label:<8} {row['attainment'] * 100:>6.1f}% {row['ttft_p90_long']:>8.2f}s {rate:>9.3f} {bound:>15.2f}s")
            if label == "latency":
                by.setdefault((f"seed {seed}", defer), []).append((seed, row["ttft_p90_long"], rate))
    print()
    for defer in (False, True):
        runs = [v for (_, d), vs in sorted(by.items()) if d == defer for v in vs]
        if runs:
            print(f"predicted-latency row, deferral {'on ' if defer else 'off'}: {len(runs)} runs, "
                  f"long p90 by seed {[(s, round(p, 2)) for s, p, _ in runs]}, "
                  f"median ms per prompt token {statistics.median(r for _, _, r in runs):.3f}")


if __name__ == "__main__":
    main()
