"""Tables of the 2026-12-04 11:24-12:30 UTC latency-bench runs in this directory (90% load).

Each run's directory name says what ran: base (49875a7, before the engine step time) and new
(493ba18) alternated, the predicted-latency row alone; full-new: all three rows at 493ba18;
var / ship: maxExtraTtftSeconds 0.5 against the shipped 1.0, alternated; workers2: all three
rows with `--epp-workers 2` (79e68b6). Run: python3 summary.py
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    rows: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for path in sorted(HERE.glob("*.json/*.json")):
        data = json.loads(path.read_text())
        tag = path.parent.name.split("-s")[0]
        seed = data["settings"]["seed"]
        for row in data["phases"][0]["rows"]:
            row["run"] = path.parent.name
            rows[(tag, row["router"], seed)].append(row)
    print("| runs | router | seed | attainment per run | median | long TTFT p90 per run (s) | "
          "slow pod TTFT MAPE | worst pod MAPE | failed requests |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (tag, router, seed), group in sorted(rows.items()):
        att = [r["attainment"] * 100 for r in group]
        mape = [r["ttft_mape_by_pod"] for r in group]
        slow = [f"{m['default/vllm-0'] * 100:.0f}%" if m else "-" for m in mape]
        worst = [f"{max(m.values()) * 100:.0f}%" if m else "-" for m in mape]
        p90 = [f"{r['ttft_p90_long']:.2f}" for r in group]
        failed = sum(r["requests"] - r["ok"] for r in group)
        print(f"| {tag} | {router} | {seed} | {', '.join(f'{a:.1f}' for a in att)} | {statistics.median(att):.1f} | "
              f"{', '.join(p90)} | {', '.join(slow)} | {', '.join(worst)} | {failed} |")
    print()
    print("Full runs, predicted latency against round robin and the default in the same run:")
    print("| runs | seed | vs round robin | vs default | long p90, default / ours |")
    print("|---|---|---|---|---|")
    for tag in ("full-new", "workers2"):
        for seed in (1, 2, 3):
            rr, df, lat = (rows.get((tag, r, seed)) for r in ("envoy-rr", "epp-default", "epp-latency"))
            if not (rr and df and lat):
                continue
            a = lat[0]["attainment"] * 100
            print(f"| {tag} | {seed} | {a - rr[0]['attainment'] * 100:+.1f} | {a - df[0]['attainment'] * 100:+.1f} | "
                  f"{df[0]['ttft_p90_long']:.2f} / {lat[0]['ttft_p90_long']:.2f} = "
                  f"{df[0]['ttft_p90_long'] / lat[0]['ttft_p90_long']:.2f}x |")


if __name__ == "__main__":
    main()
