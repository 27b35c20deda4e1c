"""Seeds the latency profile was never tuned on (docs/latency-routing.md, "Held-out seeds"):
two full runs at each of seeds 4-9 (all three rows measured together), the fa49b22 runs at
seeds 1-3 (the same scheduling code, docs/bench-results/first-token-2026-12-05), and the
predicted-latency row with deferral on at seeds 1-9. Per run: attainment, the long-prefill
p90 ratio to the default of the same run, the worst pod's TTFT MAPE, and what any router could
reach (epp.bench.latency_placement: alone on an idle pod, the scheduled bound, the scheduled
bound at the row's own speed). Run from the repository root:

    python docs/bench-results/heldout-2026-12-05/summary.py > docs/bench-results/heldout-2026-12-05/summary.txt
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from epp.bench.latency_placement import placements

HERE = Path(__file__).parent
EARLIER = HERE.parent / "first-token-2026-12-05"
SHORT = {"Envoy round_robin": "rr", "EPP default config": "default", "EPP predicted latency": "latency"}
med = statistics.median


def _load(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]]:
    result = json.loads(path.read_text())
    rows = {SHORT[r["label"]]: r for r in result["phases"][0]["rows"]}
    placed = {SHORT[p.label]: p for p in placements(result)}
    return result, rows, placed


def _seed(path: Path) -> int:
    return int(json.loads(path.read_text())["settings"]["seed"])


def _spread(values: list[float], fmt: str) -> str:
    return f"{format(med(values), fmt)} ({format(min(values), fmt)} to {format(max(values), fmt)})"


def table(paths: list[Path], title: str) -> list[dict[str, Any]]:
    print(title)
    print(f"{'seed':>4} {'run':<9} {'commit':<8} {'rr':>6} {'default':>8} {'ours':>6} {'vs rr':>6} {'vs def':>7} "
          f"{'p90 def':>8} {'p90 ours':>9} {'ratio':>6} {'idle':>6} {'bound':>6} {'own-speed':>9} "
          f"{'best ratio':>10} {'MAPE max':>8}")
    runs: list[dict[str, Any]] = []
    for path in paths:
        result, rows, placed = _load(path)
        rr, de, la = rows["rr"], rows["default"], rows["latency"]
        p = placed["latency"]
        run = {"seed": _seed(path), "vs_rr": (la["attainment"] - rr["attainment"]) * 100,
               "vs_default": (la["attainment"] - de["attainment"]) * 100,
               "ratio": de["ttft_p90_long"] / la["ttft_p90_long"], "best": de["ttft_p90_long"] / p.ttft_p90_scheduled,
               "mape": max(la["ttft_mape_by_pod"].values()) * 100, "default_p90": de["ttft_p90_long"],
               "ours_p90": la["ttft_p90_long"], "ours_attainment": la["attainment"] * 100,
               "unqueued_ms": p.unqueued_s_per_token * 1e3,
               "failed": sum(r["requests"] - r["ok"] for r in rows.values())}
        runs.append(run)
        print(f"{run['seed']:>4} {path.parent.name:<9} {result['commit'][:7]:<8} {rr['attainment'] * 100:>5.1f}% "
              f"{de['attainment'] * 100:>7.1f}% {la['attainment'] * 100:>5.1f}% {run['vs_rr']:>+6.1f} "
              f"{run['vs_default']:>+7.1f} {de['ttft_p90_long']:>7.2f}s {la['ttft_p90_long']:>8.2f}s "
              f"{run['ratio']:>5.2f}x {p.ttft_p90_idle:>5.2f}s {p.ttft_p90_scheduled:>5.2f}s "
              f"{p.ttft_p90_scheduled_floor:>8.2f}s {run['best']:>9.2f}x {run['mape']:>7.0f}%")
    print()
    for name, chosen in (("all runs", runs), ("held-out seeds 4-9", [r for r in runs if r["seed"] >= 4])):
        if not chosen:
            continue
        ratios = [r["ratio"] for r in chosen]
        print(f"{name}, {len(chosen)} runs: vs rr {_spread([r['vs_rr'] for r in chosen], '+.1f')}, "
              f"vs default {_spread([r['vs_default'] for r in chosen], '+.1f')}, "
              f"long p90 ratio {_spread(ratios, '.2f')} ({sum(x >= 1.5 for x in ratios)} at or above 1.5x), "
              f"best possible {_spread([r['best'] for r in chosen], '.2f')} "
              f"({sum(r['best'] < 1.5 for r in chosen)} runs where 1.5x was beyond the scheduled bound), "
              f"worst pod TTFT MAPE {_spread([r['mape'] for r in chosen], '.0f')} "
              f"({sum(r['mape'] > 20 for r in chosen)} runs over 20%), "
              f"requests failed in any row: {sum(r['failed'] for r in chosen)}")
    seeds = sorted({r["seed"] for r in runs})
    per_seed = {s: med([r["ratio"] for r in runs if r["seed"] == s]) for s in seeds}
    print("median ratio per seed: " + ", ".join(f"{s}: {v:.2f}x" for s, v in per_seed.items())
          + f"; median of the per-seed medians {med(per_seed.values()):.2f}x")
    return runs


def main() -> None:
    full = sorted([*HERE.glob("full*-s*/latency-*.json"), *EARLIER.glob("full-s*/latency-*.json")],
                  key=lambda p: (_seed(p), p.parent.name))
    runs = table(full, "Full runs at 90% load (round robin, default, predicted latency measured together)")
    at70 = sorted(HERE.glob("l70-s*/latency-*.json"), key=_seed)
    if at70:
        print()
        table(at70, "Full runs at 70% load")
    print()
    print("Predicted-latency row with deferral on (deferBehindPrefillTokens 8192), alone; 'off' is the")
    print("median of the same seed's full runs above, the ratio is to their default's median p90")
    print(f"{'seed':>4} {'attain':>7} {'off':>6} {'p90':>6} {'off':>6} {'ratio':>6} {'off':>6} "
          f"{'ms/token':>8} {'off':>6}")
    on_ratios, off_ratios = [], []
    for path in sorted(HERE.glob("defer-s*/latency-*.json"), key=_seed):
        _, rows, placed = _load(path)
        seed = _seed(path)
        same = [r for r in runs if r["seed"] == seed]
        default_p90 = med([r["default_p90"] for r in same])
        on = rows["latency"]
        off_p90 = med([r["ours_p90"] for r in same])
        on_ratios.append(default_p90 / on["ttft_p90_long"])
        off_ratios.append(default_p90 / off_p90)
        print(f"{seed:>4} {on['attainment'] * 100:>6.1f}% {med([r['ours_attainment'] for r in same]):>5.1f}% "
              f"{on['ttft_p90_long']:>5.2f}s {off_p90:>5.2f}s {on_ratios[-1]:>5.2f}x {off_ratios[-1]:>5.2f}x "
              f"{placed['latency'].unqueued_s_per_token * 1e3:>8.3f} {med([r['unqueued_ms'] for r in same]):>6.3f}")
    if on_ratios:
        print(f"median ratio: on {med(on_ratios):.2f}x, off {med(off_ratios):.2f}x over {len(on_ratios)} seeds; "
              f"on higher in {sum(a > b for a, b in zip(on_ratios, off_ratios, strict=True))}")


if __name__ == "__main__":
    main()
