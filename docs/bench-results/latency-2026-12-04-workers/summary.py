"""Tables of the 2026-12-04 13:29-14:10 UTC latency-bench runs in this directory (90% load),
all at 69312b6, where the EPP workers share their requests (epp/latency/sharing.py).

w2: all three rows with `--epp-workers 2`; w1: the predicted-latency row alone with one
worker, to compare; w2spread (15:05-15:15 UTC, 3d7215d): all three rows with
`--epp-workers 2 --epp-max-streams 2`, the requests spread over both workers. The runs of 79e68b6 with two workers that did not share are in
../latency-2026-12-04-sbs (workers2). Run: python3 summary.py
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    rows: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for path in sorted(HERE.glob("*/*.json")):
        data = json.loads(path.read_text())
        tag = path.parent.name.split("-s")[0]
        seed = data["settings"]["seed"]
        for row in data["phases"][0]["rows"]:
            rows[(tag, row["router"], seed)].append(row)
    print("| runs | router | seed | attainment | long TTFT p90 (s) | TTFT MAPE per pod | decision mean (us) | "
          "failed requests |")
    print("|---|---|---|---|---|---|---|---|")
    for (tag, router, seed), group in sorted(rows.items()):
        for r in group:
            mape = r["ttft_mape_by_pod"]
            pods = ", ".join(f"{k.split('/')[-1]} {v * 100:.0f}%" for k, v in sorted(mape.items())) if mape else "-"
            print(f"| {tag} | {router} | {seed} | {r['attainment'] * 100:.1f} | {r['ttft_p90_long']:.2f} | {pods} | "
                  f"{r['decision_mean_us']:.0f} | {r['requests'] - r['ok']} |")
    print()
    print("Two workers sharing, predicted latency against round robin and the default in the same run:")
    print("| runs | seed | vs round robin | vs default | long p90, default / ours | decisions per worker |")
    print("|---|---|---|---|---|---|")
    for tag in ("w2", "w2spread"):
        gains: list[tuple[float, float, float]] = []
        for seed in (1, 2, 3):
            rr, df, lat = (rows.get((tag, r, seed)) for r in ("envoy-rr", "epp-default", "epp-latency"))
            if not (rr and df and lat):
                continue
            a = lat[0]["attainment"] * 100
            ratio = df[0]["ttft_p90_long"] / lat[0]["ttft_p90_long"]
            gains.append((a - rr[0]["attainment"] * 100, a - df[0]["attainment"] * 100, ratio))
            split = "/".join(str(v) for v in lat[0].get("decisions_by_worker", {}).values()) or "-"
            print(f"| {tag} | {seed} | {gains[-1][0]:+.1f} | {gains[-1][1]:+.1f} | "
                  f"{df[0]['ttft_p90_long']:.2f} / {lat[0]['ttft_p90_long']:.2f} = {ratio:.2f}x | {split} |")
        if gains:
            print(f"| {tag} | median | {statistics.median(g[0] for g in gains):+.1f} | "
                  f"{statistics.median(g[1] for g in gains):+.1f} | {statistics.median(g[2] for g in gains):.2f}x | |")


if __name__ == "__main__":
    main()
