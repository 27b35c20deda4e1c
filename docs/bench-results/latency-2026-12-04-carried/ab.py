"""The predicted-latency row alone, with and without the carried-over credit, alternated.

    python docs/bench-results/latency-2026-12-04-carried/ab.py > docs/bench-results/latency-2026-12-04-carried/ab.txt

Each run: `python -m epp bench latency --loads 0.9 --duration 60 --warmup 40 --seed N
--routers epp-latency`, `base` at 5f375c4 and `new` at 5f375c4 with the change (committed
after), from git worktrees, one at a time under the bench lock; the directories are named
ARM-sSEED-HHMM (UTC). new-s2-1624 ran a first version of the change, which left out a request
that had joined the head's own step; the other `new` runs ran the committed one.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    runs: dict[tuple[int, str], list[tuple[str, float, float, float, float]]] = defaultdict(list)
    for path in sorted(HERE.glob("*-s*-*/*.json")):
        arm, seed, hhmm = path.parent.name.split("-")
        if arm not in ("base", "new"):  # the traced run (trace.py)
            continue
        result = json.loads(path.read_text())
        [row] = result["phases"][0]["rows"]
        mape = max(row["ttft_mape_by_pod"].values())
        runs[(int(seed[1:]), arm)].append((hhmm, 100 * row["attainment"], row["ttft_p90_long"],
                                           100 * row["attainment_long"], 100 * mape))
    print("| seed | arm | runs (UTC) | attainment | median | long p90 (s) | median | worst pod TTFT MAPE |")
    print("|---|---|---|---|---|---|---|---|")
    for (seed, arm), rows in sorted(runs.items()):
        att = [r[1] for r in rows]
        p90 = [r[2] for r in rows]
        print(f"| {seed} | {arm} | {', '.join(r[0] for r in rows)} | {', '.join(f'{a:.1f}%' for a in att)} | "
              f"{statistics.median(att):.1f}% | {', '.join(f'{p:.2f}' for p in p90)} | {statistics.median(p90):.2f} | "
              f"{', '.join(f'{r[4]:.0f}%' for r in rows)} |")
    for arm in ("base", "new"):
        att = [statistics.median(r[1] for r in rows) for (s, a), rows in runs.items() if a == arm]
        p90 = [statistics.median(r[2] for r in rows) for (s, a), rows in runs.items() if a == arm]
        print(f"{arm}: median over seeds of the per-seed medians: attainment {statistics.median(att):.1f}%, "
              f"long p90 {statistics.median(p90):.2f} s")


if __name__ == "__main__":
    main()
