"""Issue 18's targets from `epp bench latency` runs whose three rows ran side by side.

    .venv/bin/python docs/bench-results/latency-2026-12-03-side-by-side.py \\
        docs/bench-results/latency-2026-12-03T*-sbs.json

Each file is one seed at one or more loads, with the round-robin, default-config and
predicted-latency rows measured one after the other in the same run (same commit, same
machine state within minutes). Per run: attainment of each row, the predicted-latency row's
points over round robin and over the default, its long-prefill TTFT p90 against the default's
(the ratio the 1.5x target asks for), the best ratio any router could reach (the default's p90
over the p90 of each long prefill alone on an idle fast pod, epp.bench.latency_placement), and
the worst pod's TTFT MAPE. Then per load: the
medians over all runs and, per seed, the median over that seed's repeats; and the target
check on the median of the per-seed medians, as the earlier sections judged it.
docs/latency-routing.md ("Side by side") cites the output, the .txt beside this file.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from typing import Any

from epp.bench.latency_placement import placements


def _row(phase: dict[str, Any], router: str) -> dict[str, Any]:
    return next(r for r in phase["rows"] if r["router"] == router)


def main(paths: list[str]) -> None:
    by_load: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for path in sorted(paths):
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
        # Each long prefill alone on an idle fast pod: no router's p90 goes below that.
        idle = {placed.load: placed.ttft_p90_idle for placed in placements(result)}
        for phase in result["phases"]:
            rr, default, latency = (_row(phase, r) for r in ("envoy-rr", "epp-default", "epp-latency"))
            mape = latency["ttft_mape_by_pod"]
            worst = max(mape, key=mape.get) if mape else ""
            cost = result.get("decision_cost_in_process_us") or {}
            by_load[phase["load"]].append({
                "file": path.rsplit("/", 1)[-1], "seed": result["settings"]["seed"], "commit": result["commit"],
                "rr": 100 * rr["attainment"], "default": 100 * default["attainment"],
                "latency": 100 * latency["attainment"],
                "vs_rr": 100 * (latency["attainment"] - rr["attainment"]),
                "vs_default": 100 * (latency["attainment"] - default["attainment"]),
                "p90_default": default["ttft_p90_long"], "p90_latency": latency["ttft_p90_long"],
                "p90_ratio": default["ttft_p90_long"] / latency["ttft_p90_long"],
                "p90_idle": idle[phase["load"]], "best_ratio": default["ttft_p90_long"] / idle[phase["load"]],
                "worst_mape": (worst.rsplit("/", 1)[-1], 100 * mape[worst]) if worst else ("-", float("nan")),
                "failed": sum(row["requests"] - row["ok"] for row in (rr, default, latency)),
                "cost": cost,
            })
    for load, runs in sorted(by_load.items()):
        print(f"== load {load:.0%}: {len(runs)} runs")
        print("| run | seed | round robin | default | predicted latency | vs RR | vs default "
              "| long p90 default / predicted / idle floor (s) | ratio | best possible "
              "| worst TTFT MAPE | failed requests |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in runs:
            pod, m = r["worst_mape"]
            print(f"| {r['file']} | {r['seed']} | {r['rr']:.1f}% | {r['default']:.1f}% | {r['latency']:.1f}% "
                  f"| {r['vs_rr']:+.1f} | {r['vs_default']:+.1f} "
                  f"| {r['p90_default']:.2f} / {r['p90_latency']:.2f} / {r['p90_idle']:.2f} "
                  f"| {r['p90_ratio']:.2f}x | {r['best_ratio']:.2f}x | {pod} {m:.0f}% | {r['failed']} |")
        seeds = sorted({r["seed"] for r in runs})
        print()
        print("| seed | runs | vs RR, median (range) | vs default, median (range) "
              "| default p90, median (range) | predicted p90, median (range) | ratio, median (range) |")
        print("|---|---|---|---|---|---|---|")
        per_seed: dict[str, list[float]] = defaultdict(list)
        for seed in seeds:
            mine = [r for r in runs if r["seed"] == seed]
            cells = []
            for key, fmt in (("vs_rr", "{:+.1f}"), ("vs_default", "{:+.1f}"), ("p90_default", "{:.2f}"),
                             ("p90_latency", "{:.2f}"), ("p90_ratio", "{:.2f}x")):
                values = [r[key] for r in mine]
                med = statistics.median(values)
                per_seed[key].append(med)
                cells.append(f"{fmt.format(med)} ({fmt.format(min(values))} to {fmt.format(max(values))})")
            print(f"| {seed} | {len(mine)} | " + " | ".join(cells) + " |")
        print()
        med = {k: statistics.median(v) for k, v in per_seed.items()}
        # The ratio of the medians: each row's p90 taken at its own median over the repeats.
        ratio_of_medians = statistics.median(
            statistics.median(r["p90_default"] for r in runs if r["seed"] == s)
            / statistics.median(r["p90_latency"] for r in runs if r["seed"] == s) for s in seeds)
        print(f"median over seeds of the per-seed medians: vs RR {med['vs_rr']:+.1f} (target +20: "
              f"{'met' if med['vs_rr'] >= 20 else 'MISSED'}), vs default {med['vs_default']:+.1f} (target +10: "
              f"{'met' if med['vs_default'] >= 10 else 'MISSED'}), long p90 ratio {med['p90_ratio']:.2f}x "
              f"(target 1.5x: {'met' if med['p90_ratio'] >= 1.5 else 'MISSED'}); per seed, the default's "
              f"median p90 over the predicted row's: {ratio_of_medians:.2f}x")
        ratios = [r["p90_ratio"] for r in runs]
        print(f"all {len(runs)} runs: long p90 ratio median {statistics.median(ratios):.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}), at or above 1.5x in {sum(x >= 1.5 for x in ratios)}; "
              f"vs RR median {statistics.median(r['vs_rr'] for r in runs):+.1f}, vs default median "
              f"{statistics.median(r['vs_default'] for r in runs):+.1f}; worst-pod TTFT MAPE at or under 20% in "
              f"{sum(r['worst_mape'][1] <= 20 for r in runs)} of {len(runs)}; the default's p90 at 1.5x the idle "
              f"floor or more (the target within any router's reach) in {sum(r['best_ratio'] >= 1.5 for r in runs)}")
        costs = [r["cost"] for r in runs if r["cost"]]
        if costs:
            keys = sorted({k for c in costs for k in c if k.endswith("_median_us")})
            medians = {k.removesuffix("_median_us"): statistics.median(c[k] for c in costs if k in c) for k in keys}
            print("decision cost in process, median of the runs' medians (us): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in medians.items()))
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
