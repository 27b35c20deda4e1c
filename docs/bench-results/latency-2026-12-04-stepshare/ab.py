"""The predicted-latency row alone: the carried-over credit and the last-chunk cost as a
difference of floored service times (base) or as the per-token time, step_share (step).

    python docs/bench-results/latency-2026-12-04-stepshare/ab.py > docs/bench-results/latency-2026-12-04-stepshare/ab.txt

Each run: `python -m epp bench latency --loads 0.9 --duration 60 --warmup 40 --seed N
--routers epp-latency --out DIR`, `base` at f10f0af and `step` at e0f958d, from git worktrees,
alternated (the order flips each seed and round), one at a time under the bench lock, 2026-12-04
21:14-21:51 UTC (run.sh here); the directories are named ARM-sSEED-rROUND.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARMS = ("base", "step")


def main() -> None:
    runs: dict[tuple[int, str], list[dict[str, float]]] = defaultdict(list)
    for path in sorted(HERE.glob("*-s*-r*/*.json")):
        arm, seed, rnd = path.parent.name.split("-")
        result = json.loads(path.read_text())
        [row] = result["phases"][0]["rows"]
        runs[(int(seed[1:]), arm)].append({
            "round": float(rnd[1:]), "attainment": 100 * row["attainment"],
            "chat": 100 * row["attainment_chat"], "long": 100 * row["attainment_long"],
            "p90_long": row["ttft_p90_long"], "p90_chat": row["ttft_p90_chat"],
            "mape": 100 * max(row["ttft_mape_by_pod"].values()),
            "mape_median": 100 * statistics.median(row["ttft_mape_by_pod"].values()),
            "failed": row["requests"] - row["ok"]})
    print("| seed | arm | attainment | chats' attainment | long prefills' attainment | long p90 (s) "
          "| chats' p90 (s) | worst pod TTFT MAPE | median pod TTFT MAPE | failed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (seed, arm), rows in sorted(runs.items()):
        def cell(key: str, fmt: str) -> str:
            return ", ".join(format(r[key], fmt) for r in rows)
        print(f"| {seed} | {arm} | {cell('attainment', '.1f')} | {cell('chat', '.1f')} | {cell('long', '.1f')} "
              f"| {cell('p90_long', '.2f')} | {cell('p90_chat', '.2f')} | {cell('mape', '.0f')} | {cell('mape_median', '.0f')} "
              f"| {cell('failed', '.0f')} |")
    for arm in ARMS:
        rows = [r for (_, a), rs in runs.items() if a == arm for r in rs]
        if not rows:
            continue
        print(f"{arm}: median of {len(rows)} runs: attainment {statistics.median(r['attainment'] for r in rows):.1f}%, "
              f"chats {statistics.median(r['chat'] for r in rows):.1f}%, "
              f"long {statistics.median(r['long'] for r in rows):.1f}%, "
              f"long p90 {statistics.median(r['p90_long'] for r in rows):.2f} s, "
              f"chats' p90 {statistics.median(r['p90_chat'] for r in rows):.2f} s, "
              f"worst pod MAPE {statistics.median(r['mape'] for r in rows):.0f}%, "
              f"median pod MAPE {statistics.median(r['mape_median'] for r in rows):.1f}%, "
              f"failed {sum(r['failed'] for r in rows):.0f}")


if __name__ == "__main__":
    main()
