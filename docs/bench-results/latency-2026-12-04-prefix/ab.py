"""The predicted-latency row alone, with and without the prefix matches before the filter.

    python docs/bench-results/latency-2026-12-04-prefix/ab.py > docs/bench-results/latency-2026-12-04-prefix/ab.txt

Each run: `python -m epp bench latency --loads 0.9 --duration 60 --warmup 40 --seed N
--routers epp-latency --out DIR`, `base` at 15071c6 (the prefix scorer's matches counted once
it has run, after the admitter and the filter) and `prefix` at 86e8ae3 (asked for before the
cycle's first prediction), from git worktrees, alternated, one at a time under the bench lock;
the directories are named ARM-sSEED-rROUND.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARMS = ("base", "prefix")


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
            "mape": 100 * max(row["ttft_mape_by_pod"].values()), "failed": row["requests"] - row["ok"]})
    print("| seed | arm | attainment | chats' attainment | long prefills' attainment | long p90 (s) "
          "| chats' p90 (s) | worst pod TTFT MAPE | failed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (seed, arm), rows in sorted(runs.items()):
        def cell(key: str, fmt: str) -> str:
            return ", ".join(format(r[key], fmt) for r in rows)
        print(f"| {seed} | {arm} | {cell('attainment', '.1f')} | {cell('chat', '.1f')} | {cell('long', '.1f')} "
              f"| {cell('p90_long', '.2f')} | {cell('p90_chat', '.2f')} | {cell('mape', '.0f')} "
              f"| {cell('failed', '.0f')} |")
    for arm in ARMS:
        rows = [r for (_, a), rs in runs.items() if a == arm for r in rs]
        if not rows:
            continue
        print(f"{arm}: median of {len(rows)} runs: attainment {statistics.median(r['attainment'] for r in rows):.1f}%, "
              f"chats {statistics.median(r['chat'] for r in rows):.1f}%, "
              f"long {statistics.median(r['long'] for r in rows):.1f}%, "
              f"long p90 {statistics.median(r['p90_long'] for r in rows):.2f} s, "
              f"chats' p90 {statistics.median(r['p90_chat'] for r in rows):.2f} s")


if __name__ == "__main__":
    main()
