"""The predicted-latency row alone, before and after a change, against side-by-side baselines.

    .venv/bin/python docs/bench-results/latency-2026-12-03-speed-fix.py \\
        --baselines docs/bench-results/latency-2026-12-03T*-sbs.json \\
        --rows docs/bench-results/latency-2026-12-03T*-ab.json docs/bench-results/latency-2026-12-03T*-speed.json

Per row file (one seed, one load, the predicted-latency row only): its commit, attainment, the
long prefills it sent to the slow pod, their TTFT p90, the slow pod's TTFT MAPE (and how many
requests it rests on), the fast pods' range; then attainment over the median round-robin and
default rows of the same seed and load among the side-by-side runs, and the long-prefill p90
ratio against the median default. docs/latency-routing.md ("Why the slow pod got long
prompts") cites the output, the .txt beside this file.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from typing import Any

from epp.bench.latency_placement import placements
from epp.bench.workloads import HETEROGENEOUS_SLOW_POD


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baselines", nargs="+", required=True)
    parser.add_argument("--rows", nargs="+", required=True)
    args = parser.parse_args()
    base: dict[tuple[int, float, str], list[dict[str, Any]]] = defaultdict(list)
    for path in args.baselines:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
        for phase in result["phases"]:
            for row in phase["rows"]:
                base[(result["settings"]["seed"], phase["load"], row["router"])].append(row)
    slow = f"vllm-{HETEROGENEOUS_SLOW_POD}"
    print("| run | commit | load | seed | attainment | vs RR (median side by side) | vs default | long on slow pod "
          "| long p90 (s) | vs default p90 | slow pod TTFT MAPE (requests) | fast pods |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for path in sorted(args.rows, key=lambda p: p.rsplit("/", 1)[-1]):
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
        seed = result["settings"]["seed"]
        by_label = {(p.load, p.label): p for p in placements(result)}
        for phase in result["phases"]:
            row = next(r for r in phase["rows"] if r["router"] == "epp-latency")
            load = phase["load"]
            rr = statistics.median(r["attainment"] for r in base[(seed, load, "envoy-rr")])
            default = statistics.median(r["attainment"] for r in base[(seed, load, "epp-default")])
            default_p90 = statistics.median(r["ttft_p90_long"] for r in base[(seed, load, "epp-default")])
            mape = {k.rsplit("/", 1)[-1]: v for k, v in row["ttft_mape_by_pod"].items()}
            pairs = {k.rsplit("/", 1)[-1]: v for k, v in row["ttft_pairs_by_pod"].items()}
            fast = [100 * v for k, v in mape.items() if k != slow]
            placed = by_label[(load, row["label"])]
            print(f"| {path.rsplit('/', 1)[-1]} | {result['commit']} | {load:.0%} | {seed} "
                  f"| {100 * row['attainment']:.1f}% | {100 * (row['attainment'] - rr):+.1f} "
                  f"| {100 * (row['attainment'] - default):+.1f} | {placed.on_slow_pod} of {placed.longs} "
                  f"| {row['ttft_p90_long']:.2f} | {default_p90 / row['ttft_p90_long']:.2f}x "
                  f"| {100 * mape.get(slow, float('nan')):.0f}% ({pairs.get(slow, 0)}) "
                  f"| {min(fast):.0f}-{max(fast):.0f}% |")


if __name__ == "__main__":
    main()
